//! `POST /accounts`: creates the seller's connected account at Stripe once per reference,
//! however often the call is repeated and whatever Stripe answered before.
//!
//! The reference is claimed first (a conditional write), then marked sent, then the account is
//! created under a key derived from the reference and the attempt. A 5xx or a timeout settles
//! nothing, since Stripe replays a saved 500 under the same key: the next call looks the account
//! up by the reference in its metadata before it sends anything again, and only then moves to a
//! fresh key.

use serde_json::Value;

use super::request::Fields;
use super::{ApiError, ApiReply, PlatformApi, json_object};
use crate::domain::account::{
    AccountDecision, AccountEvent, AccountEventKind, AccountId, AccountState, decide,
};
use crate::domain::change::account_changes;
use crate::domain::reference::{ReferenceKind, ReferenceRecord, ReferenceState, digest};
use crate::domain::step::UnresolvedCall;
use crate::store::{AccountStore, CommitOutcome, PlatformWrite};
use crate::stripe::client::StripeError;
use crate::stripe::onboarding::{CreateAccount, REFERENCE_METADATA};
use crate::stripe::signature::Clock;
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
}

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    pub(super) async fn create_account(&self, body: &[u8]) -> Result<ApiReply, ApiError> {
        let object = json_object(body)?;
        let params = AccountParams::read(&Fields(&object))?;
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
                    return Ok(ApiReply::of(200, &self.known_account(id).await?));
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
                    if let Some(account) =
                        stripe.find_account_by_reference(params.reference, created_gte).await?
                    {
                        return self.bind(&record, &account).await;
                    }
                    let fresh_key = record.unresolved == Some(UnresolvedCall::ServerError)
                        || now.saturating_sub(sent_at) >= KEY_REUSE_LIMIT_SECS;
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
            let capabilities: Vec<&str> = params.capabilities.clone();
            let metadata = [(REFERENCE_METADATA, params.reference)];
            let create = CreateAccount {
                country: &params.country,
                email: params.email,
                dashboard: params.dashboard,
                fees_payer: params.fees_payer,
                losses_payer: params.losses_payer,
                requirement_collection: params.requirement_collection,
                capabilities: &capabilities,
                metadata: &metadata,
            };
            return match stripe.create_account(&create, &record.idempotency_key()).await {
                Ok(account) => self.bind(&record, &account).await,
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
    /// webhook may have stored the account first: its state is kept and the reference added.
    async fn bind(&self, record: &ReferenceRecord, object: &Value) -> Result<ApiReply, ApiError> {
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
        let created = object.get("created").and_then(Value::as_i64).unwrap_or_else(|| self.clock.now_unix());
        for _ in 0..MAX_CONFLICT_RETRIES {
            let current = self.store.load_account(&account_id).await?;
            let event = AccountEvent {
                kind: AccountEventKind::AccountUpdated,
                account_id: account_id.clone(),
                event_id: "",
                created,
                object: object.clone(),
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
                CommitOutcome::Committed => return Ok(ApiReply::of(201, &next)),
                _ => {
                    // The account moved (a webhook), or the reference did: a concurrent call bound
                    // it, or marked it sent again while this one was at Stripe. Read both again.
                    match self.store.load_reference(ReferenceKind::Account, &record.reference).await? {
                        Some(stored) if stored.state == ReferenceState::Bound => {
                            let id = stored.object_id.as_deref().unwrap_or_default();
                            return Ok(ApiReply::of(200, &self.known_account(id).await?));
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
