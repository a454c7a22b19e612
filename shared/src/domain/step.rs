//! Fund-flow steps: one transfer, reversal or payout each, with a deterministic id.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::account::AccountId;

/// Declares an id newtype over `String`. `#[serde(transparent)]`: stored records, queue messages
/// and Stripe metadata carry the bare string, as they did before the type existed, so nothing
/// stored needs migrating. No check on reading, unlike [`AccountId`]: ids stored before the type
/// existed must still read (a queue message's ids are checked by [`parse_step_message`]).
macro_rules! string_id {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as it is stored and sent.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// The plain id, quoted as a string's is: log lines and test failures read as before.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id! {
    /// A step's id: deterministic from what planned it (`tr:<payment>:<account>`,
    /// `trr:<transfer step>:<target>`, `po:…`), so that the same payment, refund or balance always
    /// plans the same ids. Also the step's storage key and its idempotency key's stem.
    StepId
}

string_id! {
    /// The payment a transfer or reversal step belongs to, and the key its steps and guard are
    /// stored under: the payment intent id (`pi_…`) when there is one, else the charge id
    /// (`ch_…`), or `req:<reference>` for a transfer the platform asked for.
    PaymentKey
}

string_id! {
    /// A charge's id (`ch_…`, or `py_…` for a payment on a connected account): what disputes and
    /// refunds name, and the key a payment's guard is found by when they come before it.
    ChargeId
}

/// What a step moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Platform balance to a connected account (`POST /v1/transfers`).
    Transfer,
    /// Part of a transfer back to the platform (`POST /v1/transfers/{id}/reversals`).
    Reversal,
    /// A connected account's balance to its bank (`POST /v1/payouts` with `Stripe-Account`).
    Payout,
}

impl StepKind {
    /// The kind's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfer => "transfer",
            Self::Reversal => "reversal",
            Self::Payout => "payout",
        }
    }
}

/// Where a step stands. Every change is a conditional write on the step's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Recorded and queued; not yet sent to Stripe.
    Queued,
    /// A worker has claimed it and may have called Stripe.
    InFlight,
    /// The destination cannot receive yet; retried later, not failed.
    Waiting,
    /// Stripe created the object; `stripe_id` names it.
    Succeeded,
    /// Stripe refused it definitively; `reason` holds Stripe's code.
    Failed,
    /// Never sent: the plan was invalid (a bad split, an unknown amount); `reason` says why.
    Refused,
}

impl StepStatus {
    /// The status's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InFlight => "in_flight",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Refused => "refused",
        }
    }

    /// Whether nothing more will happen to a step in this status.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Refused)
    }
}

/// One unit of money movement. Amounts are minor units of `currency`, always positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Deterministic: the same payment, refund or balance always plans the same ids.
    pub step_id: StepId,
    /// Transfer, reversal or payout.
    pub kind: StepKind,
    /// The connected account that receives (transfer, payout) or gives back (reversal).
    pub destination: AccountId,
    /// Minor units, greater than zero.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The charge a transfer is funded from (`source_transaction`), or a reversal undoes.
    pub source_charge: Option<ChargeId>,
    /// The payment's `transfer_group`.
    pub transfer_group: Option<String>,
    /// The payment a transfer or reversal belongs to (its payment intent id, or else its charge
    /// id); `None` for payouts. Steps are stored and looked up under it.
    #[serde(default)]
    pub payment_key: Option<PaymentKey>,
    /// For a reversal: the transfer step it reverses.
    pub reverses_step: Option<StepId>,
    /// Where it stands.
    pub status: StepStatus,
    /// Why it waits, failed or was refused.
    pub reason: Option<String>,
    /// The Stripe object id (`tr_…`, `trr_…`, `po_…`) once known.
    pub stripe_id: Option<String>,
    /// Advances only after a definite refusal, so that a retry gets a fresh idempotency key.
    pub attempt: u32,
    /// Unix time the step was planned.
    pub created_at: i64,
    /// Unix time of its last change.
    pub updated_at: i64,
    /// Bumped by every stored change; the store's conditional write checks it.
    #[serde(default)]
    pub version: u64,
    /// The livemode of the event that planned it: a worker sends it only with a key of the same
    /// mode, and never when it is unknown.
    #[serde(default)]
    pub livemode: Option<bool>,
    /// Minor units a transfer was planned short by, because its payment had already been refunded
    /// that much: `amount + netted` is the split it was planned from.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub netted: i64,
    /// Unix time the current attempt's idempotency key was first sent to Stripe; `None` while
    /// nothing has been sent under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
    /// How the last call under the current attempt ended without a definite answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<UnresolvedCall>,
    /// The platform's request, for a step asked for through the platform API rather than planned
    /// from an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<PlatformRequest>,
    /// Why the step exists: the payment, refund, dispute, balance or request that planned it. Kept
    /// when the step succeeds; `reason` is the why of a wait or a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<StepCause>,
    /// A payout's `method` and `source_type`, and how old its funds are (payout policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<super::payout::PayoutOptions>,
    /// For a re-transfer (a refund that failed, a dispute won): the transfer step whose reversal
    /// it gives back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gives_back: Option<StepId>,
    /// A transfer Stripe made itself (a destination charge's): recorded so that a dispute can
    /// reverse it, never sent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub by_stripe: bool,
}

#[cfg(test)]
impl Step {
    /// A queued test-mode transfer of 500 usd to `destination` out of `ch_1` (payment `pi_1`),
    /// planned at `now`: the one step fixture the library's unit tests share.
    pub(crate) fn queued_transfer(step_id: &str, destination: &str, now: i64) -> Self {
        Self {
            step_id: step_id.into(),
            kind: StepKind::Transfer,
            destination: AccountId::parse(destination).expect("a test account id"),
            amount: 500,
            currency: "usd".to_owned(),
            source_charge: Some("ch_1".into()),
            transfer_group: Some("pi_1".to_owned()),
            payment_key: Some("pi_1".into()),
            reverses_step: None,
            status: StepStatus::Queued,
            reason: None,
            stripe_id: None,
            attempt: 0,
            created_at: now,
            updated_at: now,
            version: 1,
            livemode: Some(false),
            netted: 0,
            sent_at: None,
            unresolved: None,
            requested: None,
            cause: None,
            gives_back: None,
            by_stripe: false,
            payout: None,
        }
    }
}

/// What planned a step, and the Stripe (or caller) id of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCause {
    /// The kind of cause.
    #[serde(rename = "type")]
    pub kind: CauseKind,
    /// `pi_…`/`ch_…` for a payment or refund, `re_…` for a failed refund, `dp_…` for a dispute,
    /// `evt_…` for a balance, the caller's reference for a platform request.
    pub id: String,
}

impl StepCause {
    /// A cause of `kind` with `id`.
    pub fn new(kind: CauseKind, id: impl Into<String>) -> Self {
        Self { kind, id: id.into() }
    }
}

/// The kinds of [`StepCause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    /// A platform payment's split.
    Payment,
    /// A refund of a platform charge.
    Refund,
    /// A refund that failed, whose reversal is given back.
    RefundFailed,
    /// A dispute whose funds Stripe withdrew from the platform.
    Dispute,
    /// A dispute won: its funds were reinstated.
    DisputeWon,
    /// `POST /transfers` or `POST /payouts`.
    PlatformRequest,
    /// A connected account's available balance.
    Balance,
}

/// A step the platform asked for (`POST /transfers`, `POST /payouts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRequest {
    /// The caller's reference.
    pub reference: String,
    /// A transfer's `description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A payout's `method`: `standard` or `instant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// A call whose outcome Stripe did not say, which only a lookup can settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnresolvedCall {
    /// Stripe answered 5xx. Stripe saves that answer under the key and replays it, so a retry
    /// under the same key learns nothing.
    ServerError,
    /// No answer arrived (a timeout, a dropped connection, a crash mid-call, or 409 while the key
    /// was still in use): the request may still be running at Stripe.
    NoAnswer,
}

/// Where a step is stored: what a queue message carries, enough to load the step without a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    /// What it moves, which decides its queue.
    pub kind: StepKind,
    /// The step's id.
    pub step_id: StepId,
    /// Its payment, for transfers and reversals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_key: Option<PaymentKey>,
    /// Its destination account.
    pub destination: AccountId,
}

/// Why a queue message body is not a step reference.
#[derive(Debug, thiserror::Error)]
pub enum StepMessageError {
    /// Not JSON, or JSON that is not a step reference. serde's message may quote the body, so
    /// callers log only its classification and position.
    #[error("the message body is not a step reference")]
    NotAStep(#[source] serde_json::Error),
    /// A step reference the planner could not have written: its step id or payment key is empty or
    /// not printable ASCII. These become storage keys. (A destination that is not an account id
    /// is refused while deserialising, as [`NotAStep`](Self::NotAStep).)
    #[error("the step reference's {0} is malformed")]
    MalformedField(&'static str),
}

/// What the planner writes as a step id or payment key: no length limit, since step ids nest.
fn is_printable_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads a queue message body as the step reference it carries.
pub fn parse_step_message(body: &str) -> Result<StepRef, StepMessageError> {
    let step: StepRef = serde_json::from_str(body).map_err(StepMessageError::NotAStep)?;
    if !is_printable_key(&step.step_id) {
        return Err(StepMessageError::MalformedField("step_id"));
    }
    if step.payment_key.as_deref().is_some_and(|key| !is_printable_key(key)) {
        return Err(StepMessageError::MalformedField("payment_key"));
    }
    Ok(step)
}

impl Step {
    /// A newly planned step: queued, attempt 0, version 0, nothing sent; the caller fills in what
    /// its kind links it to (charge, transfer group, payment, the transfer it reverses).
    pub fn planned(
        kind: StepKind,
        step_id: impl Into<StepId>,
        destination: AccountId,
        amount: i64,
        currency: String,
        now: i64,
    ) -> Self {
        Self {
            step_id: step_id.into(),
            kind,
            destination,
            amount,
            currency,
            source_charge: None,
            transfer_group: None,
            payment_key: None,
            reverses_step: None,
            status: StepStatus::Queued,
            reason: None,
            stripe_id: None,
            attempt: 0,
            created_at: now,
            updated_at: now,
            version: 0,
            livemode: None,
            netted: 0,
            sent_at: None,
            unresolved: None,
            requested: None,
            cause: None,
            payout: None,
            gives_back: None,
            by_stripe: false,
        }
    }

    /// Whether a call under the current attempt's key may have reached Stripe.
    pub(crate) fn may_have_been_sent(&self) -> bool {
        self.status == StepStatus::InFlight || self.status == StepStatus::Succeeded
    }

    /// Where this step is stored.
    pub fn reference(&self) -> StepRef {
        StepRef {
            kind: self.kind,
            step_id: self.step_id.clone(),
            payment_key: self.payment_key.clone(),
            destination: self.destination.clone(),
        }
    }

    /// The `Idempotency-Key` for this step's Stripe call: stable across retries and crashes,
    /// fresh after a definite refusal.
    pub fn idempotency_key(&self) -> String {
        format!("connect-flow:{}:{}", self.step_id, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_message_reads_back_the_reference_it_was_written_from() {
        let step = Step::planned(
            StepKind::Transfer,
            "tr:pi_1:acct_1".to_owned(),
            AccountId::parse("acct_1").unwrap(),
            500,
            "usd".to_owned(),
            1,
        );
        let reference = StepRef { payment_key: Some("pi_1".into()), ..step.reference() };
        let body = serde_json::to_string(&reference).unwrap();
        assert_eq!(parse_step_message(&body).unwrap(), reference);
    }

    /// The ids were `String`s before they were newtypes: stored steps, payment records and queue
    /// messages must read and write exactly as they did.
    #[test]
    fn ids_are_written_as_the_bare_strings_they_were() {
        let reference = StepRef {
            kind: StepKind::Reversal,
            step_id: "trr:tr:pi_1:acct_1:500".into(),
            payment_key: Some("pi_1".into()),
            destination: AccountId::parse("acct_1").unwrap(),
        };
        let body = r#"{"kind":"reversal","step_id":"trr:tr:pi_1:acct_1:500","payment_key":"pi_1","destination":"acct_1"}"#;
        assert_eq!(serde_json::to_string(&reference).unwrap(), body);
        assert_eq!(serde_json::from_str::<StepRef>(body).unwrap(), reference);
        assert_eq!(
            format!("{:?} {}", reference.step_id, reference.step_id),
            r#""trr:tr:pi_1:acct_1:500" trr:tr:pi_1:acct_1:500"#
        );
        // Reading checks nothing: an id stored by any earlier version still reads.
        assert_eq!(serde_json::from_str::<PaymentKey>(r#""req:a b""#).unwrap(), "req:a b");
    }

    #[test]
    fn bodies_that_are_not_step_references_are_refused() {
        for body in ["", "not json", "{}", r#"{"kind":"refund","step_id":"x","destination":"acct_1"}"#] {
            assert!(matches!(parse_step_message(body), Err(StepMessageError::NotAStep(_))), "body {body:?}");
        }
    }

    /// Found by the `step_message` fuzz target: `AccountId` used to deserialise without its check.
    #[test]
    fn a_destination_that_is_not_an_account_id_is_refused() {
        for destination in ["accd_1QcFDowlemo0001", "acct_", "acct_1 2", ""] {
            let body =
                format!(r#"{{"kind":"transfer","step_id":"tr:pi_1:acct_1","destination":"{destination}"}}"#);
            assert!(
                matches!(parse_step_message(&body), Err(StepMessageError::NotAStep(_))),
                "{destination:?}"
            );
        }
    }

    #[test]
    fn empty_or_unprintable_ids_are_refused() {
        for (body, field) in [
            (r#"{"kind":"payout","step_id":"","destination":"acct_1"}"#, "step_id"),
            (r#"{"kind":"payout","step_id":"po:1 2","destination":"acct_1"}"#, "step_id"),
            (
                r#"{"kind":"transfer","step_id":"tr:1","payment_key":"","destination":"acct_1"}"#,
                "payment_key",
            ),
            (
                r#"{"kind":"transfer","step_id":"tr:1","payment_key":"pi_\n","destination":"acct_1"}"#,
                "payment_key",
            ),
        ] {
            let got = parse_step_message(body);
            assert!(matches!(got, Err(StepMessageError::MalformedField(f)) if f == field), "{body}: {got:?}");
        }
    }
}
