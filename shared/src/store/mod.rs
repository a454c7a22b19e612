//! Storage behind one trait, in two implementations: DynamoDB and embedded SQLite.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::domain::account::{AccountId, AccountState, OnboardingStatus};
use crate::domain::change::Change;
use crate::domain::fetch::{FetchRef, FetchStep};
use crate::domain::funds::PaymentRecord;
use crate::domain::ledger::{LedgerEntry, LedgerPlan, LedgerRow, Month};
use crate::domain::reconcile::ReconcilerState;
use crate::domain::reference::{ReferenceKind, ReferenceRecord};
use crate::domain::step::{PaymentKey, Step, StepKind, StepRef, StepStatus};

pub mod dynamodb;
pub mod sqlite;
pub mod sqs;

/// How long an event's dedupe record is kept: Stripe retries for three days, so 30 is ample.
pub const DEDUPE_RETENTION_SECS: i64 = 30 * 24 * 60 * 60;

/// What became of an event. Stored on its record; stable names, used in answers and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    /// It changed the account's state.
    Applied,
    /// It was older than the stored state of the part it touches.
    Stale,
    /// Its object lacked what its type needs.
    Unreadable,
    /// Its type does not touch account state.
    Unhandled,
    /// Its type touches account state but it names no well-formed account.
    NoAccount,
    /// Its livemode is not the deployment's.
    LivemodeMismatch,
    /// A thin event sent to this snapshot endpoint (kept so that old records still read).
    MisroutedThinEvent,
    /// A thin event whose fetch step is queued: its record's `fetch` says what it retrieves.
    FetchQueued,
    /// A thin event whose fetch kept failing; the reason says how.
    FetchFailed,
    /// A fund-flow event whose plan was refused (a bad split, an impossible refund): recorded,
    /// nothing sent.
    Refused,
    /// A fund-flow event with nothing new to do (no splits, already planned, nothing refunded).
    #[default]
    Unchanged,
    /// A dispute or failed refund of a charge not seen yet: kept on the payment's guard, so that
    /// the charge's own event nets it out when it comes.
    UnknownCharge,
}

impl EventOutcome {
    /// The outcome's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Unreadable => "unreadable",
            Self::Unhandled => "unhandled",
            Self::NoAccount => "no_account",
            Self::LivemodeMismatch => "livemode_mismatch",
            Self::MisroutedThinEvent => "misrouted_thin_event",
            Self::FetchQueued => "fetch_queued",
            Self::FetchFailed => "fetch_failed",
            Self::Refused => "refused",
            Self::Unchanged => "unchanged",
            Self::UnknownCharge => "unknown_charge",
        }
    }

    /// Every outcome, in the order they are declared.
    pub const ALL: [Self; 12] = [
        Self::Applied,
        Self::Stale,
        Self::Unreadable,
        Self::Unhandled,
        Self::NoAccount,
        Self::LivemodeMismatch,
        Self::MisroutedThinEvent,
        Self::FetchQueued,
        Self::FetchFailed,
        Self::Refused,
        Self::Unchanged,
        Self::UnknownCharge,
    ];

    /// Reads an outcome's stable name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.as_str() == name)
    }
}

/// An event's dedupe record: written once, in the same atomic write as any state it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// `evt_…`: the dedupe key.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The account it is about, when it names one.
    pub account_id: Option<String>,
    /// The event's `created`, when it is a snapshot event.
    pub created: Option<i64>,
    /// The event's livemode, when given.
    pub livemode: Option<bool>,
    /// What became of it.
    pub outcome: EventOutcome,
    /// Why it was refused, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix time it was recorded.
    pub received_at: i64,
    /// Unix time after which the record may be deleted (the TTL attribute on DynamoDB).
    pub expires_at: i64,
    /// A thin event's fetch step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchStep>,
}

/// Everything one event writes, atomically: its dedupe record, and the account state and new
/// fund-flow steps it produced.
#[derive(Debug, Clone, Copy)]
pub struct EventWrite<'a> {
    /// The event's record; must not exist yet.
    pub record: &'a EventRecord,
    /// The next state of each account the event changes; each stored one must be at
    /// `version - 1` (or absent for 1).
    pub accounts: &'a [AccountState],
    /// Steps planned by the event; none of them may exist yet.
    pub new_steps: &'a [Step],
    /// Steps the event settles (Stripe reporting a transfer or payout); each stored one must be at
    /// `version - 1`.
    pub step_updates: &'a [Step],
    /// The payment's guard, one version up: the stored one must be at `version - 1` (or absent,
    /// for 1), so that no two plans for one payment commit from the same read.
    pub payment: Option<&'a PaymentRecord>,
    /// What the write changes, for the change feed: written with it, or not at all.
    pub changes: &'a [Change],
}

impl<'a> EventWrite<'a> {
    /// Only the event record.
    pub fn record_only(record: &'a EventRecord) -> Self {
        Self { record, accounts: &[], new_steps: &[], step_updates: &[], payment: None, changes: &[] }
    }

    /// The event record and, if given, the account's next state.
    pub fn with_account(record: &'a EventRecord, account: Option<&'a AccountState>) -> Self {
        let accounts = account.map(std::slice::from_ref).unwrap_or_default();
        Self { record, accounts, new_steps: &[], step_updates: &[], payment: None, changes: &[] }
    }

    /// The event record and the steps it planned.
    pub fn with_steps(record: &'a EventRecord, new_steps: &'a [Step]) -> Self {
        Self { record, accounts: &[], new_steps, step_updates: &[], payment: None, changes: &[] }
    }
}

/// Everything one platform call writes, atomically: its reference (conditional on its version),
/// and the account or steps it creates, with their changes.
#[derive(Debug, Clone, Copy)]
pub struct PlatformWrite<'a> {
    /// The reference, one version up: the stored one must be at `version - 1` (or absent, for 1).
    pub reference: &'a ReferenceRecord,
    /// The account's next state, conditional on its version as in [`EventWrite::account`].
    pub account: Option<&'a AccountState>,
    /// New steps; none of them may exist yet.
    pub new_steps: &'a [Step],
    /// What the write changes, for the change feed.
    pub changes: &'a [Change],
}

/// An account's next state and the payout steps planned with it, written atomically without an
/// event record: what the payout sweep and `PUT /accounts/{id}/payout_policy` write.
#[derive(Debug, Clone, Copy)]
pub struct AccountWrite<'a> {
    /// The account's next state; the stored one must be at `version - 1`.
    pub account: &'a AccountState,
    /// Steps planned with it; none of them may exist yet.
    pub new_steps: &'a [Step],
    /// Stored steps it moves (payouts a plan superseded); each stored one must be at `version - 1`.
    pub step_updates: &'a [Step],
    /// What the write changes, for the change feed.
    pub changes: &'a [Change],
}

/// Which accounts [`AccountStore::list_accounts`] lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccountQuery<'a> {
    /// Only accounts in this status.
    pub status: Option<OnboardingStatus>,
    /// At most this many (the store caps it at [`MAX_PAGE`]).
    pub limit: usize,
    /// Only accounts whose id sorts after this one.
    pub starting_after: Option<&'a AccountId>,
}

/// The most items one page holds.
pub(crate) const MAX_PAGE: usize = 100;

/// One page of accounts, ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountPage {
    /// The accounts.
    pub accounts: Vec<AccountState>,
    /// Whether more follow the last one.
    pub has_more: bool,
}

/// One page of the change feed, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// The changes, each with its cursor.
    pub changes: Vec<Change>,
    /// Where the next page starts: the last change's cursor, or the cursor asked after.
    pub next: String,
}

/// How long a change item is kept: a consumer further behind than this must re-read the accounts.
pub(crate) const CHANGE_RETENTION_SECS: i64 = 30 * 24 * 60 * 60;

/// A payment as stored: its guard (absent until its first plan) and its steps, ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentState {
    /// The guard every plan for the payment bumps.
    pub record: Option<PaymentRecord>,
    /// Its transfers and reversals.
    pub steps: Vec<Step>,
}

/// What an attempted commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The record (and state, if any) were written.
    Committed,
    /// The event was already recorded: nothing was written.
    Duplicate,
    /// The account's stored version was not the one the state was decided against, or a step
    /// already exists: nothing was written; decide again on a fresh read.
    Conflict,
}

/// A storage failure. The webhook answers 500 so that Stripe retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store could not be reached or refused the request.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored item could not be read back.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// Connected-account state and event records, with one atomic, conditional write per event.
///
/// Implementations must guarantee, under any concurrency: an event id is recorded at most once;
/// a state is written only if the stored version is `state.version - 1` (or absent, for version
/// 1); a step id is written at most once; and an event's record, state and steps are written
/// together or not at all.
pub trait AccountStore: Send + Sync + 'static {
    /// The stored state of one account.
    fn load_account(
        &self,
        account_id: &AccountId,
    ) -> impl Future<Output = Result<Option<AccountState>, StoreError>> + Send;

    /// Writes everything in `write` in one conditional write.
    fn commit(
        &self,
        write: &EventWrite<'_>,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Every step of one payment (its transfers and their reversals), ordered by id.
    fn load_payment_steps(
        &self,
        payment_key: &PaymentKey,
    ) -> impl Future<Output = Result<Vec<Step>, StoreError>> + Send;

    /// A payment's guard and all its steps, in one consistent read (one query on DynamoDB).
    fn load_payment(
        &self,
        payment_key: &PaymentKey,
    ) -> impl Future<Output = Result<PaymentState, StoreError>> + Send;

    /// Up to `limit` steps in `status` (one that is not final) last changed before
    /// `updated_before`, oldest first: what the sweep resumes.
    fn list_open_steps(
        &self,
        status: StepStatus,
        updated_before: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Step>, StoreError>> + Send;

    /// One step.
    fn load_step(&self, step: &StepRef) -> impl Future<Output = Result<Option<Step>, StoreError>> + Send;

    /// Writes a step's next state if the stored one is at `step.version - 1`, with its changes:
    /// `Committed`, or `Conflict` when another writer moved it first.
    fn update_step(
        &self,
        step: &Step,
        changes: &[Change],
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// The payout steps of one account, ordered by id: a strongly consistent read of its own
    /// partition, not of its whole step history.
    fn load_payouts(
        &self,
        account_id: &AccountId,
    ) -> impl Future<Output = Result<Vec<Step>, StoreError>> + Send;

    /// Every step whose destination is `account_id`, ordered by id.
    fn load_account_steps(
        &self,
        account_id: &AccountId,
    ) -> impl Future<Output = Result<Vec<Step>, StoreError>> + Send;

    /// Replaces a thin event's record with `next` (its fetch step's progress or its end) if the
    /// stored one is still exactly `previous` and its fetch is queued: `Committed`, or `Conflict`
    /// when another run moved it first.
    fn update_fetch(
        &self,
        previous: &EventRecord,
        next: &EventRecord,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// One event's record.
    fn load_event(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<EventRecord>, StoreError>> + Send;

    /// One page of accounts, ordered by id, read from an index (never a scan of the table).
    fn list_accounts(
        &self,
        query: &AccountQuery<'_>,
    ) -> impl Future<Output = Result<AccountPage, StoreError>> + Send;

    /// Writes a platform call's reference and what it creates in one conditional write:
    /// `Committed`, or `Conflict` when the reference, the account or a step moved first.
    fn commit_platform(
        &self,
        write: &PlatformWrite<'_>,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// One reference.
    fn load_reference(
        &self,
        kind: ReferenceKind,
        reference: &str,
    ) -> impl Future<Output = Result<Option<ReferenceRecord>, StoreError>> + Send;

    /// Up to `limit` changes after `after` (from the start when `None`), oldest first, as of `now`;
    /// `None` when `after` is not a cursor this store wrote. A change is listed only once every
    /// change before it is visible, so that a consumer following `next` never skips one.
    fn list_changes(
        &self,
        after: Option<&str>,
        limit: usize,
        now: i64,
    ) -> impl Future<Output = Result<Option<ChangePage>, StoreError>> + Send;

    /// One ledger entry (a payment and what belongs to it), read consistently. The default is
    /// for a store that keeps no ledger: it refuses, so that a ledger event is answered 500.
    fn load_ledger_entry(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<LedgerEntry>, StoreError>> + Send {
        let _ = key;
        async { Err(no_ledger()) }
    }

    /// Writes a ledger entry's next version if the stored one is at `version - 1` (or absent,
    /// for 1), and adds its deltas to their buckets, in one atomic write: `Committed`, or
    /// `Conflict` when another writer moved the entry (or, on DynamoDB, a bucket) first.
    fn commit_ledger(
        &self,
        plan: &LedgerPlan,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send {
        let _ = plan;
        async { Err(no_ledger()) }
    }

    /// One account's buckets from `from` to `to`, both included, in one read of its ledger.
    fn load_ledger_months(
        &self,
        account_id: &AccountId,
        from: Month,
        to: Month,
    ) -> impl Future<Output = Result<Vec<LedgerRow>, StoreError>> + Send {
        let _ = (account_id, from, to);
        async { Err(no_ledger()) }
    }

    /// Every account's fees of `month`: one row per account and currency, with `fees` and
    /// `fees_refunded` filled in.
    fn load_fee_month(
        &self,
        month: Month,
    ) -> impl Future<Output = Result<Vec<LedgerRow>, StoreError>> + Send {
        let _ = month;
        async { Err(no_ledger()) }
    }

    /// The reconciler's state: `None` before its first run, `Corrupt` when it cannot be read (the
    /// reconciler then starts over from [`crate::domain::reconcile::FIRST_RUN_LOOKBACK_SECS`]).
    /// The default is for a store that keeps none: it refuses.
    fn load_reconciler(&self) -> impl Future<Output = Result<Option<ReconcilerState>, StoreError>> + Send {
        async { Err(StoreError::Unavailable("this store keeps no reconciler state".to_owned())) }
    }

    /// Writes the reconciler's state if the stored one is at `state.version - 1` (or absent, for
    /// version 1), or over whatever is stored with `replace_unreadable`: `Committed`, or
    /// `Conflict` when another run wrote first.
    fn save_reconciler(
        &self,
        state: &ReconcilerState,
        replace_unreadable: bool,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send {
        let _ = (state, replace_unreadable);
        async { Err(StoreError::Unavailable("this store keeps no reconciler state".to_owned())) }
    }

    /// Writes everything in `write` in one conditional write: `Committed`, or `Conflict` when the
    /// account or a step moved first (or a new step exists already).
    fn commit_account(
        &self,
        write: &AccountWrite<'_>,
    ) -> impl Future<Output = Result<CommitOutcome, StoreError>> + Send;

    /// Up to `limit` accounts whose payout funds are due (`payout_funds.due_at`) at or before
    /// `due_by`, soonest first, read from an index that holds only such accounts (never a scan):
    /// what the payout sweep plans for. The index may lag a write; the sweep's own write is
    /// conditional on the account's version.
    fn list_payouts_due(
        &self,
        due_by: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AccountState>, StoreError>> + Send;
}

/// What a store that keeps no ledger answers.
fn no_ledger() -> StoreError {
    StoreError::Unavailable("this store keeps no ledger".to_owned())
}

/// A boxed future, so that [`StepQueue`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The queues planned work goes to: SQS FIFO queues when deployed, the embedded store's queue
/// table locally, under the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// Transfer and reversal steps.
    Transfers,
    /// Payout steps: their own queue, so that a slow payout never holds up a transfer.
    Payouts,
    /// Thin events' fetch steps.
    Fetches,
}

impl Queue {
    /// The two queues steps go to.
    pub(crate) const STEPS: [Self; 2] = [Self::Transfers, Self::Payouts];

    /// The queue a step of `kind` goes to.
    pub fn of(kind: StepKind) -> Self {
        match kind {
            StepKind::Transfer | StepKind::Reversal => Self::Transfers,
            StepKind::Payout => Self::Payouts,
        }
    }

    /// The queue's name in the embedded store (and in logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transfers => "transfers",
            Self::Payouts => "payouts",
            Self::Fetches => "fetches",
        }
    }
}

/// Where planned steps go to be run: SQS FIFO queues on AWS, a table in the embedded store.
///
/// Sending is at-least-once: a step is sent again after a failed send or a redelivered event, and
/// the step id deduplicates it (SQS `MessageDeduplicationId`; the embedded queue's key), while the
/// worker acknowledges a step that is already final without calling Stripe.
pub trait StepQueue: Send + Sync + 'static {
    /// Sends each step to its queue: transfers and reversals to one, payouts to the other.
    fn send<'a>(&'a self, steps: &'a [StepRef]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Sends thin events' fetch steps to the fetch queue, deduplicated by event id. A queue with
    /// no fetch queue refuses, so that the thin event is answered 500 and Stripe retries it.
    fn send_fetches<'a>(&'a self, fetches: &'a [FetchRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            Err(StoreError::Unavailable(format!(
                "no fetch queue is configured for {} fetches",
                fetches.len()
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::EventOutcome;

    #[test]
    fn every_outcome_reads_back_from_its_name_which_is_its_serde_name() {
        for outcome in EventOutcome::ALL {
            assert_eq!(EventOutcome::parse(outcome.as_str()), Some(outcome));
            assert_eq!(serde_json::to_value(outcome).unwrap(), serde_json::json!(outcome.as_str()));
        }
        assert_eq!(EventOutcome::parse("applied "), None);
    }
}
