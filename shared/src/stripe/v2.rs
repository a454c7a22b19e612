//! The reads a thin event's fetch step makes: API v2 accounts and events, and v1 objects.

use serde_json::Value;

use super::client::{StripeClient, StripeError, checked_id};
use crate::domain::account::AccountId;

/// The API version v2 requests carry: v2 endpoints need a release that has them.
pub const STRIPE_V2_VERSION: &str = "2026-01-28.clover";

/// Every `include[]` the v2 onboarding rule reads (DESIGN.md, "Accounts v2 and thin events"): a
/// property that depends on `include` comes back `null` without it.
pub const V2_ACCOUNT_INCLUDES: [&str; 7] = [
    "configuration.merchant",
    "configuration.recipient",
    "configuration.customer",
    "requirements",
    "future_requirements",
    "identity",
    "defaults",
];

impl StripeClient {
    /// `GET /v2/core/accounts/{id}` with [`V2_ACCOUNT_INCLUDES`], and `Stripe-Context` from the
    /// thin event's `context` when it has one.
    pub async fn retrieve_v2_account(
        &self,
        account: &AccountId,
        context: Option<&str>,
    ) -> Result<Value, StripeError> {
        let path = format!("/v2/core/accounts/{}", checked_id("account id", account.as_str())?);
        let query: Vec<(String, String)> = V2_ACCOUNT_INCLUDES
            .iter()
            .enumerate()
            .map(|(index, include)| (format!("include[{index}]"), (*include).to_owned()))
            .collect();
        let request = self.get_v2(&path, &query, context, STRIPE_V2_VERSION)?;
        self.send("retrieve_v2_account", request).await
    }
}

impl StripeClient {
    /// `GET /v2/core/events/{id}`: the thin event with its `data`, with `Stripe-Context` when the
    /// event had one.
    pub(crate) async fn retrieve_v2_event(
        &self,
        event_id: &str,
        context: Option<&str>,
    ) -> Result<Value, StripeError> {
        let path = format!("/v2/core/events/{}", checked_id("event id", event_id)?);
        let request = self.get_v2(&path, &[], context, STRIPE_V2_VERSION)?;
        self.send("retrieve_v2_event", request).await
    }

    /// `GET /v1/{segments…}`, on `account` (`Stripe-Account`) when given: one v1 object. Every
    /// segment is checked as an id, so no event can steer the path.
    pub(crate) async fn retrieve_v1(
        &self,
        operation: &'static str,
        segments: &[&str],
        account: Option<&AccountId>,
    ) -> Result<Value, StripeError> {
        let mut path = String::from("/v1");
        for segment in segments {
            path.push('/');
            path.push_str(checked_id("path segment", segment)?);
        }
        let request = self
            .request(reqwest::Method::GET, self.url(&path)?, account)
            .build()
            .map_err(|e| self.build_error(&e))?;
        self.send(operation, request).await
    }
}
