//! `POST /accounts`: creates the seller's connected account at Stripe once per reference,
//! however often the call is repeated and whatever Stripe answered before.
//!
//! The reference is claimed first (a conditional write), then marked sent, then the account is
//! created under a key derived from the reference and the attempt. A 5xx or a timeout settles
//! nothing, since Stripe replays a saved 500 under the same key: the next call looks the account
//! up by the reference in its metadata before it sends anything again, and only then moves to a
//! fresh key.
//!
//! With `CONNECT_FLOW_ACCOUNTS_API=v2` the account is created with `POST /v2/core/accounts`
//! ([`crate::stripe::v2_accounts`]) under the same guarantees, and bound through
//! [`decide`] as the fetch worker applies a fetched v2 account (a `v2.core.account` event), so the
//! stored account follows the v2 rule. Two things differ, both from Stripe's API v2 idempotency:
//! API v2 re-executes a failed request under its key instead of replaying the failure, and lists
//! are only eventually consistent. So after a 5xx or a timeout the lookup still comes first, but
//! when it does not find the account the same key is sent again (which cannot create a second
//! account for 30 days); a fresh key is taken only for a key past that window, and only once the
//! list has said the account is not there.

use serde_json::Value;

use super::request::Fields;
use super::{ApiError, ApiReply, PlatformApi, json_object};
use crate::calendar::parse_rfc3339;
use crate::clock::Clock;
use crate::domain::account::{
    AccountDecision, AccountEvent, AccountEventKind, AccountId, AccountState, AccountsApi, decide,
};
use crate::domain::change::account_changes;
use crate::domain::reference::{ReferenceKind, ReferenceRecord, ReferenceState, digest};
use crate::domain::step::UnresolvedCall;
use crate::store::{AccountStore, CommitOutcome, PlatformWrite};
use crate::stripe::client::StripeError;
use crate::stripe::onboarding::{CreateAccount, REFERENCE_METADATA};
use crate::stripe::v2_accounts::{
    CreateV2Account, V2_KEY_REUSE_LIMIT_SECS, V2AccountLookup, v2_capability, v2_fees_collector,
};
use crate::worker::KEY_REUSE_LIMIT_SECS;

/// How many times a call re-reads after another writer moved the reference or the account.
const MAX_CONFLICT_RETRIES: usize = 8;

/// How far before the first send an account create is looked for: Stripe's `created` and this
/// clock may disagree by a little.
const LOOKUP_SLACK_SECS: i64 = 300;

/// The validated body of `POST /accounts`.
struct AccountParams<'a> {
    reference: &'a str,
    country: String,
    email: Option<&'a str>,
    dashboard: &'static str,
    fees_payer: Option<&'static str>,
    losses_payer: Option<&'static str>,
    requirement_collection: Option<&'static str>,
    capabilities: Vec<&'a str>,
}

impl<'a> AccountParams<'a> {
    fn read(fields: &Fields<'a>) -> Result<Self, ApiError> {
        fields.only(&[
            "reference",
            "country",
            "email",
            "dashboard",
            "fees_payer",
            "losses_payer",
            "requirement_collection",
            "capabilities",
        ])?;
        let country = fields.required_str("country")?;
        if country.len() != 2 || !country.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            return Err(ApiError::invalid("country", "country must be a two-letter ISO 3166-1 code"));
        }
        let capabilities = match fields.0.get("capabilities") {
            Some(Value::Array(names)) => names
                .iter()
                .map(|name| match name.as_str() {
                    Some(name)
                        if !name.is_empty()
                            && name.len() <= 64
                            && name.bytes().all(|byte| {
                                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'
                            }) =>
                    {
                        Ok(name)
                    }
                    _ => Err(ApiError::invalid(
                        "capabilities",
                        "each capability must be a name like card_payments",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(ApiError::invalid("capabilities", "capabilities must be a list of names")),
        };
        Ok(Self {
            reference: fields.reference()?,
            country: country.to_ascii_uppercase(),
            email: fields.optional_str("email")?,
            dashboard: fields.optional_choice("dashboard", &["express", "full", "none"])?.ok_or_else(
                || ApiError::invalid("dashboard", "dashboard is required: express, full or none"),
            )?,
            fees_payer: fields.optional_choice("fees_payer", &["account", "application"])?,
            losses_payer: fields.optional_choice("losses_payer", &["application", "stripe"])?,
            requirement_collection: fields
                .optional_choice("requirement_collection", &["stripe", "application"])?,
            capabilities,
        })
    }

    /// Everything that makes two calls the same call, in a fixed order.
    fn fingerprint(&self) -> String {
        let mut capabilities = self.capabilities.clone();
        capabilities.sort_unstable();
        capabilities.dedup();
        let canonical = serde_json::json!([
            self.country,
            self.email,
            self.dashboard,
            self.fees_payer,
            self.losses_payer,
            self.requirement_collection,
            capabilities
        ]);
        digest(&canonical.to_string())
    }

    /// What Accounts v2 needs of the body, checked before anything is claimed or sent: the
    /// capabilities as v2 paths (sorted, so that a repeat sends the same body), each mapped or
    /// refused; no `requirement_collection`, which v2's create does not take; and an email,
    /// which v2 requires of an account with a merchant or recipient configuration.
    fn v2_capabilities(&self) -> Result<Vec<String>, ApiError> {
        if self.requirement_collection.is_some() {
            return Err(ApiError::invalid(
                "requirement_collection",
                "Accounts v2 (CONNECT_FLOW_ACCOUNTS_API=v2) does not take requirement_collection: Stripe \
                 decides who collects requirements; leave it out",
            ));
        }
        let mut paths = Vec::new();
        for name in &self.capabilities {
            let path = v2_capability(name).ok_or_else(|| {
                ApiError::invalid(
                    "capabilities",
                    format!(
                        "{name} has no Accounts v2 capability (CONNECT_FLOW_ACCOUNTS_API=v2): card_payments, \
                         transfers and the payment methods' *_payments have"
                    ),
                )
            })?;
            paths.push(path);
        }
        paths.sort_unstable();
        paths.dedup();
        if !paths.is_empty() && self.email.is_none() {
            return Err(ApiError::invalid(
                "email",
                "Accounts v2 (CONNECT_FLOW_ACCOUNTS_API=v2) requires an email for an account with capabilities",
            ));
        }
        Ok(paths)
    }
}

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    pub(super) async fn create_account(&self, body: &[u8]) -> Result<ApiReply, ApiError> {
        let object = json_object(body)?;
        let params = AccountParams::read(&Fields(&object))?;
        // `Some` on Accounts v2: the capabilities it requests.
        let v2_capabilities = match self.accounts_api {
            AccountsApi::V1 => None,
            AccountsApi::V2 => Some(params.v2_capabilities()?),
        };
        let api = self.accounts_api;
        let fingerprint = params.fingerprint();
        let stripe = self.stripe()?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let stored = self.store.load_reference(ReferenceKind::Account, params.reference).await?;
            let now = self.clock.now_unix();
            // The record to write before sending: exactly one version above the stored one.
            let record = match stored {
                None => {
                    let mut claim =
                        ReferenceRecord::claim(ReferenceKind::Account, params.reference, fingerprint.clone());
                    claim.sent_at = Some(now);
                    claim
                }
                Some(record)
                    if record.state != ReferenceState::Refused && record.fingerprint != fingerprint =>
                {
                    return Err(ApiError::ReferenceConflict);
                }
                Some(record) if record.state == ReferenceState::Bound => {
                    let id = record.object_id.as_deref().unwrap_or_default();
                    return Ok(ApiReply::of(200, &self.shown_account(self.known_account(id).await?)));
                }
                // Nothing was created under a refused reference: it may be tried again, with any
                // parameters, under the fresh key its refusal moved it to.
                Some(record) if record.state == ReferenceState::Refused => record.next(|record| {
                    record.state = ReferenceState::Pending;
                    record.fingerprint.clone_from(&fingerprint);
                    record.sent_at = Some(now);
                }),
                Some(record) => {
                    // An earlier call may have created it: look before sending anything again.
                    let sent_at = record.sent_at.unwrap_or(now);
                    let created_gte = sent_at.saturating_sub(LOOKUP_SLACK_SECS);
                    let age = now.saturating_sub(sent_at);
                    let fresh_key = match api {
                        AccountsApi::V1 => {
                            if let Some(account) =
                                stripe.find_account_by_reference(params.reference, created_gte).await?
                            {
                                return self.bind(&record, &account, api).await;
                            }
                            record.unresolved == Some(UnresolvedCall::ServerError)
                                || age >= KEY_REUSE_LIMIT_SECS
                        }
                        AccountsApi::V2 => {
                            match stripe.find_v2_account_by_reference(params.reference, created_gte).await? {
                                V2AccountLookup::Found(account) => {
                                    return self.bind(&record, &account, api).await;
                                }
                                // Within the key's window the same key is safe whatever the list
                                // says; past it, only the list's word lets a fresh key go out.
                                V2AccountLookup::Absent => age >= V2_KEY_REUSE_LIMIT_SECS,
                                V2AccountLookup::Unsettled if age < V2_KEY_REUSE_LIMIT_SECS => false,
                                V2AccountLookup::Unsettled => return Err(ApiError::StripeUnavailable),
                            }
                        }
                    };
                    record.next(|record| {
                        if fresh_key {
                            record.attempt += 1;
                            record.sent_at = Some(now);
                        }
                        record.sent_at.get_or_insert(now);
                        record.unresolved = None;
                    })
                }
            };
            if self.store.commit_platform(&reference_only(&record)).await? == CommitOutcome::Conflict {
                tracing::debug!("reference moved concurrently; reading again");
                continue;
            }
            let metadata = [(REFERENCE_METADATA, params.reference)];
            let created = match &v2_capabilities {
                None => {
                    let create = CreateAccount {
                        country: &params.country,
                        email: params.email,
                        dashboard: params.dashboard,
                        fees_payer: params.fees_payer,
                        losses_payer: params.losses_payer,
                        requirement_collection: params.requirement_collection,
                        capabilities: &params.capabilities,
                        metadata: &metadata,
                    };
                    stripe.create_account(&create, &record.idempotency_key()).await
                }
                Some(capabilities) => {
                    let create = CreateV2Account {
                        country: &params.country,
                        email: params.email,
                        dashboard: params.dashboard,
                        fees_collector: params.fees_payer.and_then(v2_fees_collector),
                        losses_collector: params.losses_payer,
                        capabilities,
                        metadata: &metadata,
                    };
                    stripe.create_v2_account(&create, &record.idempotency_key()).await
                }
            };
            return match created {
                Ok(account) => self.bind(&record, &account, api).await,
                Err(error) => {
                    self.record_failure(&record, &error).await?;
                    Err(error.into())
                }
            };
        }
        Err(ApiError::Store(crate::store::StoreError::Unavailable(
            "the reference kept changing concurrently".into(),
        )))
    }

    /// After a definite refusal the reference is free again, at a fresh key; after no definite
    /// answer it stays pending, marked so that the next call looks first.
    async fn record_failure(&self, record: &ReferenceRecord, error: &StripeError) -> Result<(), ApiError> {
        let next = match error {
            // A rate-limited call never ran, but it is looked up like an unanswered one.
            StripeError::RateLimited { .. } => {
                record.next(|record| record.unresolved = Some(UnresolvedCall::NoAnswer))
            }
            StripeError::Retryable { status, .. } => record.next(|record| {
                record.unresolved = Some(match status {
                    Some(status) if *status >= 500 => UnresolvedCall::ServerError,
                    _ => UnresolvedCall::NoAnswer,
                });
            }),
            _ => record.next(|record| {
                record.state = ReferenceState::Refused;
                record.attempt += 1;
                record.sent_at = None;
                record.unresolved = None;
            }),
        };
        // A conflict means another call moved the reference on; it records its own outcome.
        self.store.commit_platform(&reference_only(&next)).await?;
        Ok(())
    }

    /// Binds the reference to the account Stripe made and stores the account, in one write. A
    /// webhook may have stored the account first: its state is kept and the reference added. A v2
    /// account goes through [`decide`] as a fetched `v2.core.account`, the way the fetch worker
    /// applies one, so that its state follows the v2 rule and says `api: v2`.
    async fn bind(
        &self,
        record: &ReferenceRecord,
        object: &Value,
        api: AccountsApi,
    ) -> Result<ApiReply, ApiError> {
        let account_id = object.get("id").and_then(Value::as_str).and_then(AccountId::parse).ok_or(
            ApiError::StripeRefused { code: None, message: "Stripe answered without an account id".into() },
        )?;
        let bind_to = |record: &ReferenceRecord| {
            record.next(|record| {
                record.state = ReferenceState::Bound;
                record.object_id = Some(account_id.to_string());
                record.unresolved = None;
            })
        };
        let mut bound = bind_to(record);
        // v1 writes `created` as unix seconds, v2 as an RFC 3339 timestamp.
        let created = object
            .get("created")
            .and_then(|created| created.as_i64().or_else(|| created.as_str().and_then(parse_rfc3339)))
            .unwrap_or_else(|| self.clock.now_unix());
        let kind = match api {
            AccountsApi::V1 => AccountEventKind::AccountUpdated,
            AccountsApi::V2 => AccountEventKind::V2AccountFetched,
        };
        for _ in 0..MAX_CONFLICT_RETRIES {
            let current = self.store.load_account(&account_id).await?;
            let event = AccountEvent {
                kind,
                account_id: account_id.clone(),
                event_id: "",
                created,
                object: object.into(),
            };
            let mut next = match decide(&event, current.as_ref()) {
                AccountDecision::Apply(next) => *next,
                AccountDecision::Stale | AccountDecision::Unreadable => {
                    current.clone().unwrap_or_else(|| AccountState::new(account_id.clone()))
                }
            };
            next.reference = Some(record.reference.clone());
            next.version = current.as_ref().map_or(0, |state| state.version) + 1;
            let changes = account_changes(current.as_ref(), &next, self.clock.now_unix());
            let write =
                PlatformWrite { reference: &bound, account: Some(&next), new_steps: &[], changes: &changes };
            match self.store.commit_platform(&write).await? {
                CommitOutcome::Committed => return Ok(ApiReply::of(201, &self.shown_account(next))),
                _ => {
                    // The account moved (a webhook), or the reference did: a concurrent call bound
                    // it, or marked it sent again while this one was at Stripe. Read both again.
                    match self.store.load_reference(ReferenceKind::Account, &record.reference).await? {
                        Some(stored) if stored.state == ReferenceState::Bound => {
                            let id = stored.object_id.as_deref().unwrap_or_default();
                            return Ok(ApiReply::of(200, &self.shown_account(self.known_account(id).await?)));
                        }
                        Some(stored) if stored.fingerprint == record.fingerprint => bound = bind_to(&stored),
                        _ => {}
                    }
                }
            }
        }
        Err(ApiError::Store(crate::store::StoreError::Unavailable(
            "the account kept changing concurrently".into(),
        )))
    }
}

fn reference_only(record: &ReferenceRecord) -> PlatformWrite<'_> {
    PlatformWrite { reference: record, account: None, new_steps: &[], changes: &[] }
}
