//! The step sweep: finds steps that nothing will move on its own and puts them back on the queue.
//!
//! Three kinds of step can be stranded. A step `queued` in the store but not on the queue (the
//! send after its commit failed, or the message was dead-lettered). A step `in_flight` past its
//! bound (Stripe was down longer than the queue's patience, or a worker died mid-call): the worker
//! resolves it by lookup before any call. And a step `waiting` in the store whose account can now
//! receive (waiting steps are parked rather than bounced through the queue). Re-sending is always
//! safe: the queue deduplicates by step id, and the worker acknowledges a final step untouched.
//!
//! The payout sweep ([`sweep_payouts`]) plans the payouts that time alone has made due on accounts
//! on manual payouts (a hold that ended, a schedule's day, a failed payout's retry), since no
//! balance event may come to plan them.

use std::collections::HashMap;

use crate::domain::account::{AccountId, AccountState};
use crate::domain::change::{account_changes, steps_changes};
use crate::domain::payout::{PayoutSettings, PayoutTrigger, plan_payouts};
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::store::{AccountStore, AccountWrite, CommitOutcome, StepQueue, StoreError};

/// How many times one account's payout plan is retried when the account moved in between.
const MAX_CONFLICT_RETRIES: usize = 8;

/// How old each kind of open step must be before the sweep touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepSettings {
    /// A queued step older than this is sent again: its first send had ample time to arrive.
    pub queued_after_secs: i64,
    /// An in-flight step older than this is resumed: longer than any one worker's run of it.
    pub in_flight_after_secs: i64,
    /// A waiting step is looked at once it has waited this long.
    pub waiting_after_secs: i64,
    /// At most this many steps of each status per run, oldest first.
    pub batch: usize,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self { queued_after_secs: 120, in_flight_after_secs: 900, waiting_after_secs: 60, batch: 500 }
    }
}

/// What one sweep sent back to the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Queued steps sent again.
    pub queued: usize,
    /// In-flight steps resumed.
    pub in_flight: usize,
    /// Waiting steps whose account can receive now.
    pub waiting: usize,
    /// What the payout sweep did, when it ran with this one.
    pub payouts: PayoutSweepReport,
}

impl SweepReport {
    /// Every step sent back (payouts newly planned are not counted).
    pub fn total(&self) -> usize {
        self.queued + self.in_flight + self.waiting
    }
}

/// Whether a waiting step's account can take it now, by what the store knows. An account the
/// store has not heard of is the worker's to ask Stripe about; a reversal waits on its transfer,
/// which only the worker reads.
pub(crate) fn can_receive_now(step: &Step, account: Option<&AccountState>) -> bool {
    match (step.kind, account) {
        (StepKind::Reversal, _) => true,
        (_, Some(account)) if account.deauthorized => false,
        (StepKind::Transfer, Some(account)) => account.can_receive_transfers(),
        (StepKind::Transfer, None) => true,
        (StepKind::Payout, Some(account)) => account.can_receive_payouts(),
        (StepKind::Payout, None) => false,
    }
}

/// One sweep at `now`: re-sends stranded queued and in-flight steps and the waiting steps whose
/// account can receive now.
pub async fn sweep<S: AccountStore>(
    store: &S,
    queue: &dyn StepQueue,
    now: i64,
    settings: &SweepSettings,
) -> Result<SweepReport, StoreError> {
    let older_than = |secs: i64| now.saturating_sub(secs);
    let queued = store
        .list_open_steps(StepStatus::Queued, older_than(settings.queued_after_secs), settings.batch)
        .await?;
    let in_flight = store
        .list_open_steps(StepStatus::InFlight, older_than(settings.in_flight_after_secs), settings.batch)
        .await?;
    let waiting = store
        .list_open_steps(StepStatus::Waiting, older_than(settings.waiting_after_secs), settings.batch)
        .await?;
    let mut accounts: HashMap<AccountId, Option<AccountState>> = HashMap::new();
    let mut ready = Vec::new();
    for step in waiting {
        if !accounts.contains_key(&step.destination) {
            let account = store.load_account(&step.destination).await?;
            accounts.insert(step.destination.clone(), account);
        }
        if can_receive_now(&step, accounts.get(&step.destination).and_then(Option::as_ref)) {
            ready.push(step);
        }
    }
    let report = SweepReport {
        queued: queued.len(),
        in_flight: in_flight.len(),
        waiting: ready.len(),
        payouts: PayoutSweepReport::default(),
    };
    let refs: Vec<StepRef> = queued.iter().chain(&in_flight).chain(&ready).map(Step::reference).collect();
    if !refs.is_empty() {
        queue.send(&refs).await?;
        tracing::info!(
            queued = report.queued,
            in_flight = report.in_flight,
            waiting = report.waiting,
            "sweep re-sent steps"
        );
    }
    Ok(report)
}

/// What one payout sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PayoutSweepReport {
    /// Accounts whose payout funds were due.
    pub accounts_due: usize,
    /// Payout steps planned (and sent to the queue).
    pub payouts_planned: usize,
    /// Currencies found with funds unpaid past the warning share of Stripe's limit.
    pub stale_funds: usize,
}

/// One payout sweep at `now`: for each of up to `limit` accounts whose payout funds are due, plans
/// by its policy in one conditional write of the account and its new payout steps, then sends the
/// new steps.
///
/// DynamoDB requests: one `Query` of the `payouts_due` index per 1000 accounts, then per due
/// account one `Query` of its payouts and, when something changed, one write (a `PutItem` for the
/// account alone, a `TransactWriteItems` with its new steps), plus a `GetItem` and a retry after a
/// conflict; and one `SendMessageBatch` per ten payouts planned.
pub async fn sweep_payouts<S: AccountStore>(
    store: &S,
    queue: &dyn StepQueue,
    now: i64,
    settings: &PayoutSettings,
    limit: usize,
) -> Result<PayoutSweepReport, StoreError> {
    let mut report = PayoutSweepReport::default();
    let mut planned: Vec<StepRef> = Vec::new();
    for listed in store.list_payouts_due(now, limit).await? {
        report.accounts_due += 1;
        let mut account = listed;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let payouts = store.load_payouts(&account.account_id).await?;
            let plan = plan_payouts(&PayoutTrigger::Sweep, &account, settings, &payouts, None, now);
            let Some(next) = plan.account else {
                report.stale_funds += account.payout_funds.warnings.len();
                break;
            };
            let mut changes = steps_changes(&payouts, &plan.new_steps, &plan.superseded, now);
            changes.extend(account_changes(Some(&account), &next, now));
            let write = AccountWrite {
                account: &next,
                new_steps: &plan.new_steps,
                step_updates: &plan.superseded,
                changes: &changes,
            };
            if store.commit_account(&write).await? == CommitOutcome::Committed {
                report.stale_funds += next.payout_funds.warnings.len();
                report.payouts_planned += plan.new_steps.len();
                planned.extend(plan.new_steps.iter().map(Step::reference));
                break;
            }
            // The index is eventually consistent and the account may have moved since: plan
            // again on a consistent read.
            match store.load_account(&account.account_id).await? {
                Some(fresh) => account = fresh,
                None => break,
            }
        }
    }
    if !planned.is_empty() {
        // Committed first: a failed send leaves them queued in the store for the step sweep.
        queue.send(&planned).await?;
        tracing::info!(payouts = planned.len(), "payout sweep planned payouts");
    }
    Ok(report)
}
