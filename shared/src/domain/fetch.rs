//! Thin events: which Stripe object each one asks to fetch, and the fetch step recorded with it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::account::AccountId;
use crate::stripe::event::{RelatedObject, ThinEvent};

/// What a fetch-queue message carries: the thin event whose fetch step is stored on its record,
/// and its FIFO group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRef {
    /// The thin event's id: its record holds the fetch step.
    pub event_id: String,
    /// The FIFO group: the account it is about, or the event's own id when it names none.
    pub group: String,
}

/// The Stripe object a thin event's fetch step retrieves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "object", rename_all = "snake_case")]
pub enum FetchTarget {
    /// `GET /v2/core/accounts/{account}` with every include the v2 rule reads.
    V2Account,
    /// The thin event itself (`GET /v2/core/events/{id}`), to learn its `data.account_id`, then
    /// the v2 account: for `v2.core.account_link.returned`, which names no related object.
    V2AccountOfEvent,
    /// `GET /v1/accounts/{account}`.
    Account,
    /// `GET /v1/accounts/{account}/capabilities/{id}`.
    Capability {
        /// The capability's name, e.g. `transfers`.
        id: String,
    },
    /// `GET /v1/accounts/{account}/persons/{id}`.
    Person {
        /// `person_…`.
        id: String,
    },
    /// `GET /v1/accounts/{account}/external_accounts/{id}`.
    ExternalAccount {
        /// `ba_…` or `card_…`.
        id: String,
    },
    /// `GET /v1/payouts/{id}` on the account (`Stripe-Account`).
    Payout {
        /// `po_…`.
        id: String,
    },
    /// `GET /v1/transfers/{id}`: the platform's own object.
    Transfer {
        /// `tr_…`.
        id: String,
    },
    /// `GET /v1/balance` on the account (`Stripe-Account`).
    Balance,
    /// Nothing to fetch: a deleted person, which is applied as its snapshot twin.
    DeletedPerson {
        /// `person_…`.
        id: String,
    },
    /// Nothing to fetch: a deleted external account.
    DeletedExternalAccount {
        /// `ba_…` or `card_…`.
        id: String,
    },
}

impl FetchTarget {
    /// The id of the object it names below the account, when it names one.
    pub(crate) fn object_id(&self) -> Option<&str> {
        match self {
            Self::Capability { id }
            | Self::Person { id }
            | Self::ExternalAccount { id }
            | Self::Payout { id }
            | Self::Transfer { id }
            | Self::DeletedPerson { id }
            | Self::DeletedExternalAccount { id } => Some(id),
            Self::V2Account | Self::V2AccountOfEvent | Self::Account | Self::Balance => None,
        }
    }
}

/// Where a fetch step stands; it is stored on its thin event's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchStatus {
    /// Recorded and queued; not yet applied.
    Queued,
    /// Fetched and applied (the record's outcome says what it did), or settled by Stripe's
    /// definite answer (a 404 or a 403).
    Succeeded,
    /// Stripe kept failing; the record's reason says how.
    Failed,
}

impl FetchStatus {
    /// The status's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// A thin event's fetch step: what to retrieve, on whose behalf, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchStep {
    /// What to retrieve.
    pub target: FetchTarget,
    /// The connected account it is about, when the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountId>,
    /// The event's `context`, sent as `Stripe-Context` on v2 calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Where it stands.
    pub status: FetchStatus,
    /// Attempts that ended without Stripe's definite answer.
    #[serde(default)]
    pub attempts: u32,
}

impl FetchStep {
    /// The queue message for this step of event `event_id`.
    pub fn reference(&self, event_id: &str) -> FetchRef {
        FetchRef { event_id: event_id.to_owned(), group: self.group(event_id) }
    }

    /// The FIFO group: the account, so that one account's fetches run in order; else the event.
    fn group(&self, event_id: &str) -> String {
        self.account.as_ref().map_or_else(|| event_id.to_owned(), |account| account.as_str().to_owned())
    }
}

/// What a thin event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchPlan {
    /// Retrieve this and apply it.
    Fetch(FetchStep),
    /// Its type touches an account, but it names none.
    NoAccount,
    /// Its type is not one Connect Flow handles (pings included).
    Unhandled,
}

/// Decides a thin event's fetch step from its type, `context` and `related_object`. Pure.
pub(crate) fn plan_fetch(thin: &ThinEvent) -> FetchPlan {
    let Some(event_type) = thin.event_type.as_deref() else { return FetchPlan::Unhandled };
    let related = thin.related_object.as_ref();
    let related_id = related.map(|related| related.id.clone());
    let related_account = related.and_then(|related| AccountId::parse(&related.id));
    let context_account = thin.context.as_deref().and_then(AccountId::parse);
    let (target, account) = if is_v2_account_type(event_type) {
        match related_account.or_else(|| context_account.clone()) {
            Some(account) => (FetchTarget::V2Account, Some(account)),
            None if event_type == "v2.core.account_link.returned" => (FetchTarget::V2AccountOfEvent, None),
            None => return FetchPlan::NoAccount,
        }
    } else if let Some(v1_type) = event_type.strip_prefix("v1.") {
        let Some(target) = v1_target(v1_type, related_id) else {
            return if is_v1_account_type(v1_type) { FetchPlan::NoAccount } else { FetchPlan::Unhandled };
        };
        let account = match &target {
            FetchTarget::Account => related_account.or(context_account),
            // A capability's related object is named by its path, `/v1/accounts/acct_…/capabilities/…`.
            FetchTarget::Capability { .. } => context_account.or_else(|| account_in_url(related)),
            FetchTarget::Transfer { .. } => None,
            _ => context_account,
        };
        if account.is_none() && !matches!(target, FetchTarget::Transfer { .. }) {
            return FetchPlan::NoAccount;
        }
        (target, account)
    } else {
        return FetchPlan::Unhandled;
    };
    FetchPlan::Fetch(FetchStep {
        target,
        account,
        context: thin.context.clone(),
        status: FetchStatus::Queued,
        attempts: 0,
    })
}

/// `v2.core.account.*`, `v2.core.account[…].…` and `v2.core.account_link.returned`; not the
/// account's persons, which the v2 rule does not read.
fn is_v2_account_type(event_type: &str) -> bool {
    event_type == "v2.core.account_link.returned"
        || event_type
            .strip_prefix("v2.core.account")
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The v1 thin types that concern a connected account, handled like their snapshot twins.
fn is_v1_account_type(v1_type: &str) -> bool {
    ["account.", "capability.", "person.", "payout.", "balance."]
        .iter()
        .any(|prefix| v1_type.starts_with(prefix))
}

fn v1_target(v1_type: &str, related_id: Option<String>) -> Option<FetchTarget> {
    let id = || related_id.clone();
    Some(match v1_type {
        "account.updated" => FetchTarget::Account,
        "capability.updated" => FetchTarget::Capability { id: id()? },
        "person.created" | "person.updated" => FetchTarget::Person { id: id()? },
        "person.deleted" => FetchTarget::DeletedPerson { id: id()? },
        "account.external_account.created" | "account.external_account.updated" => {
            FetchTarget::ExternalAccount { id: id()? }
        }
        "account.external_account.deleted" => FetchTarget::DeletedExternalAccount { id: id()? },
        "balance.available" => FetchTarget::Balance,
        payout if payout.starts_with("payout.") => FetchTarget::Payout { id: id()? },
        transfer if transfer.starts_with("transfer.") => FetchTarget::Transfer { id: id()? },
        _ => return None,
    })
}

fn account_in_url(related: Option<&RelatedObject>) -> Option<AccountId> {
    let url = related?.url.as_deref()?;
    AccountId::parse(url.strip_prefix("/v1/accounts/")?.split('/').next()?)
}

/// The snapshot event a fetched object is applied as: the same decide-and-conditional-write path
/// as a delivery of its snapshot twin.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fetched {
    /// The snapshot type, e.g. `account.updated` or `v2.core.account`.
    pub event_type: String,
    /// The event's `account`: the connected account, or `None` for the platform's own objects.
    pub account: Option<AccountId>,
    /// The object as Stripe returned it (or, for a deletion, its id).
    pub object: Value,
}

/// The snapshot twin of a fetched object. `thin_type` is the thin event's type.
pub(crate) fn fetched_as_snapshot(step: &FetchStep, thin_type: &str, object: Value) -> Fetched {
    let account = step.account.clone();
    let (event_type, account, object) = match &step.target {
        FetchTarget::V2Account | FetchTarget::V2AccountOfEvent => {
            ("v2.core.account".to_owned(), account, object)
        }
        FetchTarget::Account => ("account.updated".to_owned(), account, object),
        FetchTarget::Capability { .. } => ("capability.updated".to_owned(), account, object),
        FetchTarget::Person { .. } => ("person.updated".to_owned(), account, object),
        FetchTarget::ExternalAccount { .. } => {
            ("account.external_account.updated".to_owned(), account, object)
        }
        FetchTarget::Balance => ("balance.available".to_owned(), account, object),
        FetchTarget::DeletedPerson { id } => (
            "person.deleted".to_owned(),
            account.clone(),
            json!({"id": id, "object": "person", "account": account}),
        ),
        FetchTarget::DeletedExternalAccount { id } => (
            "account.external_account.deleted".to_owned(),
            account.clone(),
            json!({"id": id, "object": "external_account", "account": account}),
        ),
        // The payout's status now, which may be newer than the event's: a paid payout can fail.
        FetchTarget::Payout { .. } => {
            let event_type = match object.get("status").and_then(Value::as_str) {
                Some("paid") => "payout.paid",
                Some("failed") => "payout.failed",
                Some("canceled") => "payout.canceled",
                _ => "payout.updated",
            };
            (event_type.to_owned(), account, object)
        }
        // Transfers are the platform's objects: their twin events carry no `account`.
        FetchTarget::Transfer { .. } => {
            let event_type =
                if thin_type == "v1.transfer.reversed" { "transfer.reversed" } else { "transfer.updated" };
            (event_type.to_owned(), None, object)
        }
    };
    Fetched { event_type, account, object }
}

/// The guard a fetched object is ordered by: no earlier than the event, and no earlier than the
/// moment the request left, since the object Stripe returns is at least that new. Our clock and
/// Stripe's agree to well within a second or two.
pub(crate) fn observed_at(event_created: Option<i64>, request_sent_at: i64) -> i64 {
    event_created.map_or(request_sent_at, |created| created.max(request_sent_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::event::{ParsedBody, parse_event};

    fn thin(body: Value) -> ThinEvent {
        match parse_event(body.to_string().as_bytes()) {
            Ok(ParsedBody::Thin(thin)) => thin,
            other => panic!("not a thin event: {other:?}"),
        }
    }

    fn event(event_type: &str, context: Value, related: Value) -> ThinEvent {
        thin(
            json!({"id": "evt_1", "object": "v2.core.event", "type": event_type, "created": "2026-01-01T00:00:00.000Z",
                    "livemode": false, "context": context, "related_object": related}),
        )
    }

    fn related(id: &str, object_type: &str, url: &str) -> Value {
        json!({"id": id, "type": object_type, "url": url})
    }

    fn planned(thin: &ThinEvent) -> (FetchTarget, Option<&'static str>) {
        match plan_fetch(thin) {
            FetchPlan::Fetch(step) => {
                assert_eq!(step.status, FetchStatus::Queued);
                let account =
                    step.account.map(|account| &*Box::leak(account.as_str().to_owned().into_boxed_str()));
                (step.target, account)
            }
            other => panic!("{:?} planned {other:?}", thin.event_type),
        }
    }

    /// Each handled thin type, the object it fetches and the account it is about.
    #[test]
    fn each_handled_type_fetches_its_object() {
        let account = related("acct_1V2", "v2.core.account", "/v2/core/accounts/acct_1V2");
        let cases: Vec<(ThinEvent, FetchTarget, Option<&str>)> = vec![
            (
                event("v2.core.account.updated", Value::Null, account.clone()),
                FetchTarget::V2Account,
                Some("acct_1V2"),
            ),
            (
                event("v2.core.account.closed", Value::Null, account.clone()),
                FetchTarget::V2Account,
                Some("acct_1V2"),
            ),
            (
                event("v2.core.account[requirements].updated", Value::Null, account.clone()),
                FetchTarget::V2Account,
                Some("acct_1V2"),
            ),
            (
                event(
                    "v2.core.account[configuration.merchant].capability_status_updated",
                    Value::Null,
                    account,
                ),
                FetchTarget::V2Account,
                Some("acct_1V2"),
            ),
            (
                event("v2.core.account_link.returned", json!("acct_1L"), Value::Null),
                FetchTarget::V2Account,
                Some("acct_1L"),
            ),
            (
                event("v2.core.account_link.returned", Value::Null, Value::Null),
                FetchTarget::V2AccountOfEvent,
                None,
            ),
            (
                event(
                    "v1.account.updated",
                    json!("acct_1"),
                    related("acct_1", "account", "/v1/accounts/acct_1"),
                ),
                FetchTarget::Account,
                Some("acct_1"),
            ),
            (
                event(
                    "v1.capability.updated",
                    Value::Null,
                    related("transfers", "capability", "/v1/accounts/acct_1/capabilities/transfers"),
                ),
                FetchTarget::Capability { id: "transfers".into() },
                Some("acct_1"),
            ),
            (
                event(
                    "v1.person.updated",
                    json!("acct_1"),
                    related("person_1", "person", "/v1/accounts/acct_1/persons/person_1"),
                ),
                FetchTarget::Person { id: "person_1".into() },
                Some("acct_1"),
            ),
            (
                event(
                    "v1.person.deleted",
                    json!("acct_1"),
                    related("person_1", "person", "/v1/accounts/acct_1/persons/person_1"),
                ),
                FetchTarget::DeletedPerson { id: "person_1".into() },
                Some("acct_1"),
            ),
            (
                event(
                    "v1.account.external_account.created",
                    json!("acct_1"),
                    related("ba_1", "bank_account", "/v1/accounts/acct_1/external_accounts/ba_1"),
                ),
                FetchTarget::ExternalAccount { id: "ba_1".into() },
                Some("acct_1"),
            ),
            (
                event(
                    "v1.account.external_account.deleted",
                    json!("acct_1"),
                    related("ba_1", "bank_account", ""),
                ),
                FetchTarget::DeletedExternalAccount { id: "ba_1".into() },
                Some("acct_1"),
            ),
            (
                event("v1.payout.paid", json!("acct_1"), related("po_1", "payout", "/v1/payouts/po_1")),
                FetchTarget::Payout { id: "po_1".into() },
                Some("acct_1"),
            ),
            (
                event("v1.transfer.created", Value::Null, related("tr_1", "transfer", "/v1/transfers/tr_1")),
                FetchTarget::Transfer { id: "tr_1".into() },
                None,
            ),
            (
                event("v1.balance.available", json!("acct_1"), Value::Null),
                FetchTarget::Balance,
                Some("acct_1"),
            ),
        ];
        for (thin, target, account) in cases {
            assert_eq!(planned(&thin), (target, account), "{:?}", thin.event_type);
        }
    }

    #[test]
    fn account_events_naming_no_account_are_no_account_and_others_unhandled() {
        for (event_type, context, related_object) in [
            ("v2.core.account.updated", Value::Null, Value::Null),
            ("v2.core.account.updated", json!("not_an_account"), related("x_1", "thing", "")),
            ("v1.account.updated", Value::Null, Value::Null),
            ("v1.payout.paid", Value::Null, related("po_1", "payout", "")),
            ("v1.balance.available", Value::Null, Value::Null),
            ("v1.person.updated", json!("acct_1"), Value::Null),
        ] {
            assert_eq!(
                plan_fetch(&event(event_type, context, related_object)),
                FetchPlan::NoAccount,
                "{event_type}"
            );
        }
        for event_type in [
            "v2.core.event_destination.ping",
            "v1.billing.meter.no_meter_found",
            "llama.created",
            "v2.core.account_person.updated",
            "v2.core.accounting",
        ] {
            assert_eq!(
                plan_fetch(&event(event_type, Value::Null, Value::Null)),
                FetchPlan::Unhandled,
                "{event_type}"
            );
        }
        let untyped = thin(json!({"id": "evt_1", "object": "v2.core.event"}));
        assert_eq!(plan_fetch(&untyped), FetchPlan::Unhandled);
    }

    #[test]
    fn fetched_objects_become_their_snapshot_twins() {
        let step = |target: FetchTarget| FetchStep {
            target,
            account: AccountId::parse("acct_1"),
            context: Some("acct_1".into()),
            status: FetchStatus::Queued,
            attempts: 0,
        };
        let payout = |status: &str| json!({"id": "po_1", "object": "payout", "status": status});
        for (status, twin) in [
            ("paid", "payout.paid"),
            ("failed", "payout.failed"),
            ("canceled", "payout.canceled"),
            ("in_transit", "payout.updated"),
        ] {
            let fetched = fetched_as_snapshot(
                &step(FetchTarget::Payout { id: "po_1".into() }),
                "v1.payout.paid",
                payout(status),
            );
            assert_eq!(
                (fetched.event_type.as_str(), fetched.account.as_ref().map(AccountId::as_str)),
                (twin, Some("acct_1"))
            );
        }
        let transfer = fetched_as_snapshot(
            &step(FetchTarget::Transfer { id: "tr_1".into() }),
            "v1.transfer.reversed",
            json!({}),
        );
        assert_eq!(
            (transfer.event_type.as_str(), transfer.account),
            ("transfer.reversed", None),
            "a platform object"
        );
        let deleted = fetched_as_snapshot(
            &step(FetchTarget::DeletedPerson { id: "person_1".into() }),
            "v1.person.deleted",
            Value::Null,
        );
        assert_eq!(deleted.event_type, "person.deleted");
        assert_eq!(deleted.object, json!({"id": "person_1", "object": "person", "account": "acct_1"}));
        let v2 = fetched_as_snapshot(
            &step(FetchTarget::V2Account),
            "v2.core.account.closed",
            json!({"id": "acct_1"}),
        );
        assert_eq!(v2.event_type, "v2.core.account");
    }

    #[test]
    fn a_fetch_is_ordered_by_when_it_was_sent_and_never_before_its_event() {
        assert_eq!(observed_at(Some(100), 250), 250);
        assert_eq!(observed_at(Some(300), 250), 300, "our clock a little behind Stripe's");
        assert_eq!(observed_at(None, 250), 250);
    }

    #[test]
    fn a_fetch_steps_group_is_its_account_or_else_its_event() {
        let mut step = FetchStep {
            target: FetchTarget::Balance,
            account: AccountId::parse("acct_1"),
            context: None,
            status: FetchStatus::Queued,
            attempts: 0,
        };
        assert_eq!(step.reference("evt_1"), FetchRef { event_id: "evt_1".into(), group: "acct_1".into() });
        step.account = None;
        assert_eq!(step.reference("evt_1").group, "evt_1");
        let stored: FetchStep = serde_json::from_value(serde_json::to_value(&step).unwrap()).unwrap();
        assert_eq!(stored, step);
    }
}
