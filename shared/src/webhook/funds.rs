//! The fund-flow part of the pipeline: plan the steps an event asks for and record them with the
//! event, in one conditional write.

use super::{Delivery, MAX_CONFLICT_RETRIES, WebhookError, WebhookService};
use crate::domain::account::{AccountState, PayoutFailure};
use crate::domain::change::{account_changes, steps_changes};
use crate::domain::funds::{
    FundEvent, FundPlan, Settlement, plan_payment, plan_payouts, plan_refund, settle,
};
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::store::{AccountStore, CommitOutcome, EventOutcome, EventRecord, EventWrite, StoreError};
use crate::stripe::event::Event;
use crate::stripe::signature::Clock;

/// What a plan was decided on: the stored steps and account it read, so that the write can say
/// what it changed.
#[derive(Default)]
struct Read {
    steps: Vec<Step>,
    account: Option<AccountState>,
}

/// A plan, the account state it writes, and what it was decided on.
struct Planned {
    plan: FundPlan,
    account: Option<AccountState>,
    read: Read,
}

impl Planned {
    fn nothing(outcome: EventOutcome) -> Self {
        Self { plan: FundPlan::nothing(outcome), account: None, read: Read::default() }
    }
}

impl<S: AccountStore, C: Clock> WebhookService<S, C> {
    /// Records a fund-flow event with the steps it plans. A conflict (another delivery planned for
    /// the same payment, moved the account, or a worker claimed a step the plan changes) means
    /// deciding again on a fresh read.
    pub(super) async fn record_fund_event(
        &self,
        mut record: EventRecord,
        fund_event: &FundEvent,
        event: &Event,
        now: i64,
    ) -> Result<Delivery, WebhookError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Planned { plan, account, read } = self.plan(fund_event, event, now).await?;
            record.outcome = plan.outcome;
            record.reason.clone_from(&plan.reason);
            let mut changes = steps_changes(&read.steps, &plan.new_steps, &plan.step_updates, now);
            if let Some(next) = &account {
                changes.extend(account_changes(read.account.as_ref(), next, now));
            }
            let write = EventWrite {
                record: &record,
                account: account.as_ref(),
                new_steps: &plan.new_steps,
                step_updates: &plan.step_updates,
                payment: plan.payment.as_ref(),
                changes: &changes,
            };
            match self.store.commit(&write).await? {
                CommitOutcome::Committed => {
                    if let Some(reason) = &plan.reason {
                        tracing::warn!(reason, "fund-flow event refused; nothing will be sent for it");
                    }
                    tracing::info!(steps = plan.new_steps.len(), "fund-flow steps recorded");
                    self.send(&plan.new_steps).await?;
                    return Ok(Delivery::Recorded(record.outcome));
                }
                CommitOutcome::Duplicate => {
                    // The first delivery may have committed and then failed to queue (and answered
                    // 500): Stripe's retry sends whatever is still queued.
                    let steps = self.steps_of(fund_event).await?;
                    self.send(&steps).await?;
                    return Ok(Delivery::Duplicate);
                }
                CommitOutcome::Conflict => tracing::debug!("planned concurrently; planning again"),
            }
        }
        Err(StoreError::Unavailable("the payment kept changing concurrently".into()).into())
    }

    /// Settles the steps Stripe reports on, each only if the report matches it completely
    /// ([`settle`]); a payout that failed or was paid is also recorded on its account.
    async fn plan_settlements(
        &self,
        settlements: &[Settlement],
        event: &Event,
    ) -> Result<Planned, StoreError> {
        let mut plan = FundPlan::nothing(EventOutcome::Unchanged);
        let mut account = None;
        let mut read = Read::default();
        let mut refusals = Vec::new();
        for settlement in settlements {
            let Some(step) = self.store.load_step(&settlement.step).await? else {
                // Steps are stored before anything is sent, so this object is not one of ours.
                refusals.push(format!(
                    "{} names step {}, which is not stored",
                    settlement.stripe_id, settlement.step.step_id
                ));
                continue;
            };
            read.steps.push(step.clone());
            let settled = match settle(&step, settlement, event.created) {
                Ok(settled) => settled,
                Err(reason) => {
                    refusals.push(reason);
                    continue;
                }
            };
            if let Some(next) = settled.step {
                plan.outcome = EventOutcome::Applied;
                plan.step_updates.push(next);
            }
            if settled.payout_failure.is_none() && settled.payout_paid.is_none() {
                continue;
            }
            let Some(mut next) = self.store.load_account(&step.destination).await? else { continue };
            read.account = Some(next.clone());
            let changed = match (&settled.payout_failure, &settled.payout_paid) {
                (Some((payout_id, failure_code)), _) => {
                    next.payout_failure = Some(PayoutFailure {
                        payout_id: payout_id.clone(),
                        failure_code: failure_code.clone(),
                        failed_at: event.created,
                        step_id: Some(step.step_id.clone()),
                    });
                    true
                }
                // A later payout reaching the bank clears an earlier one's failure; the same
                // payout's failure stands, since Stripe can fail a payout after paying it.
                (None, Some(paid)) => {
                    let cleared = next.payout_failure.as_ref().is_some_and(|failure| {
                        failure.payout_id != *paid && failure.failed_at <= event.created
                    });
                    if cleared {
                        next.payout_failure = None;
                    }
                    cleared
                }
                (None, None) => false,
            };
            if changed {
                next.version += 1;
                plan.outcome = EventOutcome::Applied;
                account = Some(next);
            }
        }
        if plan.outcome != EventOutcome::Applied && !refusals.is_empty() {
            plan = FundPlan::refused(refusals.join("; "));
        } else if !refusals.is_empty() {
            tracing::warn!(reasons = refusals.join("; "), "some settlements refused");
        }
        Ok(Planned { plan, account, read })
    }

    /// Sends the steps that are still queued, after their commit.
    async fn send(&self, steps: &[Step]) -> Result<(), StoreError> {
        let Some(queue) = &self.queue else { return Ok(()) };
        let queued: Vec<StepRef> =
            steps.iter().filter(|step| step.status == StepStatus::Queued).map(Step::reference).collect();
        if queued.is_empty() {
            return Ok(());
        }
        self.enqueue(queue.as_ref(), &queued).await
    }

    /// The stored steps a fund-flow event concerns.
    async fn steps_of(&self, fund_event: &FundEvent) -> Result<Vec<Step>, StoreError> {
        match fund_event {
            FundEvent::Payment(payment) => self.store.load_payment_steps(&payment.payment_key).await,
            FundEvent::Settlements(_) => Ok(Vec::new()),
            FundEvent::Refund(refund) => self.store.load_payment_steps(&refund.payment_key).await,
            FundEvent::BalanceAvailable(balance) => self.store.load_payouts(&balance.account).await,
        }
    }

    /// The plan for one event, from one read of what it depends on, and the account it changes.
    async fn plan(&self, fund_event: &FundEvent, event: &Event, now: i64) -> Result<Planned, StoreError> {
        Ok(match fund_event {
            FundEvent::Payment(payment) => {
                let stored = self.store.load_payment(&payment.payment_key).await?;
                // Planned before payments had a guard: its transfers stand as they are.
                let unguarded = stored.record.as_ref().is_none_or(|record| record.planned_by.is_none());
                if unguarded && stored.steps.iter().any(|step| step.kind == StepKind::Transfer) {
                    return Ok(Planned::nothing(EventOutcome::Unchanged));
                }
                let trigger = (event.id.as_str(), event.event_type.as_str());
                let plan = plan_payment(payment, stored.record.as_ref(), trigger, event.livemode, now);
                Planned { plan, account: None, read: Read { steps: stored.steps, account: None } }
            }
            FundEvent::Refund(refund) => {
                let stored = self.store.load_payment(&refund.payment_key).await?;
                let plan = plan_refund(refund, stored.record.as_ref(), &stored.steps, now);
                Planned { plan, account: None, read: Read { steps: stored.steps, account: None } }
            }
            FundEvent::Settlements(settlements) => self.plan_settlements(settlements, event).await?,
            FundEvent::BalanceAvailable(balance) => {
                let Some(account) = self.store.load_account(&balance.account).await? else {
                    return Ok(Planned::nothing(EventOutcome::Unchanged));
                };
                // Two balance events of one second cannot be ordered, and the second may predate
                // a payout the first planned: only a strictly newer balance plans.
                if account.ordering.balance.is_some_and(|newest| event.created <= newest) {
                    return Ok(Planned::nothing(EventOutcome::Stale));
                }
                let payouts = self.store.load_payouts(&balance.account).await?;
                let (steps, superseded) =
                    plan_payouts(balance, Some(&account), &payouts, &event.id, event.livemode, now);
                if steps.is_empty() {
                    return Ok(Planned::nothing(EventOutcome::Unchanged));
                }
                // Writing the account too makes two balance events for one account conflict, so
                // that the second sees the first's payout as open instead of planning another.
                let mut next = account.clone();
                next.ordering.balance = Some(event.created);
                next.version += 1;
                let plan = FundPlan {
                    outcome: EventOutcome::Applied,
                    new_steps: steps,
                    step_updates: superseded,
                    ..FundPlan::default()
                };
                Planned { plan, account: Some(next), read: Read { steps: payouts, account: Some(account) } }
            }
        })
    }
}
