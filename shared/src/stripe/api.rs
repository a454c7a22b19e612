//! The Stripe ports: what the step worker asks (the calls that move money and the lookups that
//! tell whether an earlier call already did) and what the reconciler reads. [`StripeClient`] is the HTTP adapter;
//! tests can put a scripted Stripe in its place and run the worker without a server.

use std::future::Future;

use serde_json::Value;

use super::client::{CreateTransfer, PayoutParams, StripeClient, StripeError, StripeObject};
use super::events::ListPage;
use crate::domain::account::{AccountId, AccountsApi};
use crate::metrics::Metrics;

/// What the step worker asks of Stripe. Every create carries the caller's idempotency key; every
/// `find_*` answers `Ok(None)` only when Stripe's whole list was read without the object.
pub trait StripeApi: Send + Sync + 'static {
    /// `POST /v1/transfers`.
    fn create_transfer(
        &self,
        transfer: &CreateTransfer<'_>,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<StripeObject, StripeError>> + Send;

    /// `POST /v1/transfers/{id}/reversals`.
    fn create_transfer_reversal(
        &self,
        transfer_id: &str,
        amount: i64,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> impl Future<Output = Result<StripeObject, StripeError>> + Send;

    /// `POST /v1/payouts` as `account`.
    fn create_payout_by(
        &self,
        account: &AccountId,
        amount: i64,
        currency: &str,
        options: PayoutParams<'_>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> impl Future<Output = Result<StripeObject, StripeError>> + Send;

    /// `GET /v1/accounts/{id}`.
    fn retrieve_account(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<Value, StripeError>> + Send;

    /// The transfer `step_id` made, if Stripe has it.
    fn find_transfer(
        &self,
        transfer_group: &str,
        destination: &AccountId,
        step_id: &str,
    ) -> impl Future<Output = Result<Option<StripeObject>, StripeError>> + Send;

    /// The reversal `step_id` made, if Stripe has it.
    fn find_reversal(
        &self,
        transfer_id: &str,
        step_id: &str,
    ) -> impl Future<Output = Result<Option<StripeObject>, StripeError>> + Send;

    /// The payout `step_id` made, if Stripe has it.
    fn find_payout(
        &self,
        account: &AccountId,
        step_id: &str,
        created_gte: i64,
    ) -> impl Future<Output = Result<Option<StripeObject>, StripeError>> + Send;

    /// Whether the key is live (`Some(true)`), test (`Some(false)`), or neither.
    fn livemode(&self) -> Option<bool>;

    /// Records each call's latency in `metrics`.
    fn with_metrics(self, metrics: Metrics) -> Self;
}

impl StripeApi for StripeClient {
    fn create_transfer(
        &self,
        transfer: &CreateTransfer<'_>,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<StripeObject, StripeError>> + Send {
        StripeClient::create_transfer(self, transfer, idempotency_key)
    }

    fn create_transfer_reversal(
        &self,
        transfer_id: &str,
        amount: i64,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> impl Future<Output = Result<StripeObject, StripeError>> + Send {
        StripeClient::create_transfer_reversal(self, transfer_id, amount, metadata, idempotency_key)
    }

    fn create_payout_by(
        &self,
        account: &AccountId,
        amount: i64,
        currency: &str,
        options: PayoutParams<'_>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> impl Future<Output = Result<StripeObject, StripeError>> + Send {
        StripeClient::create_payout_by(self, account, amount, currency, options, metadata, idempotency_key)
    }

    fn retrieve_account(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<Value, StripeError>> + Send {
        StripeClient::retrieve_account(self, account)
    }

    fn find_transfer(
        &self,
        transfer_group: &str,
        destination: &AccountId,
        step_id: &str,
    ) -> impl Future<Output = Result<Option<StripeObject>, StripeError>> + Send {
        StripeClient::find_transfer(self, transfer_group, destination, step_id)
    }

    fn find_reversal(
        &self,
        transfer_id: &str,
        step_id: &str,
    ) -> impl Future<Output = Result<Option<StripeObject>, StripeError>> + Send {
        StripeClient::find_reversal(self, transfer_id, step_id)
    }

    fn find_payout(
        &self,
        account: &AccountId,
        step_id: &str,
        created_gte: i64,
    ) -> impl Future<Output = Result<Option<StripeObject>, StripeError>> + Send {
        StripeClient::find_payout(self, account, step_id, created_gte)
    }

    fn livemode(&self) -> Option<bool> {
        StripeClient::livemode(self)
    }

    fn with_metrics(self, metrics: Metrics) -> Self {
        StripeClient::with_metrics(self, metrics)
    }
}

/// What the reconciler reads from Stripe: the event lists a run replays from, the accounts Stripe
/// created, and one account as it is now.
pub trait StripeReads: Send + Sync + 'static {
    /// One page of `GET /v1/events` created at or after `created_gte`, on `account` when given.
    fn list_events(
        &self,
        account: Option<&AccountId>,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, StripeError>> + Send;

    /// One page of `GET /v2/core/events` created at or after `created_gte`.
    fn list_v2_events(
        &self,
        created_gte: i64,
        next_page: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, StripeError>> + Send;

    /// One page of `GET /v1/accounts` created at or after `created_gte`.
    fn list_accounts_created(
        &self,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, StripeError>> + Send;

    /// The account as it is now, from the API it was created on.
    fn retrieve_account_as(
        &self,
        account: &AccountId,
        api: AccountsApi,
    ) -> impl Future<Output = Result<Value, StripeError>> + Send;

    /// Whether the key is live (`Some(true)`), test (`Some(false)`), or neither.
    fn key_livemode(&self) -> Option<bool>;
}

impl StripeReads for StripeClient {
    fn list_events(
        &self,
        account: Option<&AccountId>,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, StripeError>> + Send {
        StripeClient::list_events(self, account, created_gte, starting_after)
    }

    fn list_v2_events(
        &self,
        created_gte: i64,
        next_page: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, StripeError>> + Send {
        StripeClient::list_v2_events(self, created_gte, next_page)
    }

    fn list_accounts_created(
        &self,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, StripeError>> + Send {
        StripeClient::list_accounts_created(self, created_gte, starting_after)
    }

    async fn retrieve_account_as(&self, account: &AccountId, api: AccountsApi) -> Result<Value, StripeError> {
        match api {
            AccountsApi::V1 => {
                self.retrieve_v1("retrieve_account", &["accounts", account.as_str()], None).await
            }
            AccountsApi::V2 => self.retrieve_v2_account(account, None).await,
        }
    }

    fn key_livemode(&self) -> Option<bool> {
        StripeClient::livemode(self)
    }
}
