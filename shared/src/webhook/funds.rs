//! The fund-flow part of the pipeline: plan the steps an event asks for and record them with the
//! event, in one conditional write.

use super::{Delivery, MAX_CONFLICT_RETRIES, WebhookError, WebhookService};
use crate::clock::Clock;
use crate::domain::account::AccountState;
use crate::domain::change::{account_changes, steps_changes};
use crate::domain::funds::{
    FundContext, FundEvent, FundPlan, Settlement, plan_dispute, plan_payment, plan_refund,
    plan_refund_failure, record_payout_outcome, settle,
};
use crate::domain::payout::{PayoutTrigger, is_stale_balance, plan_payouts};
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::store::{AccountStore, CommitOutcome, EventOutcome, EventRecord, EventWrite, StoreError};
use crate::stripe::event::Event;

/// What a plan was decided on: the stored steps and accounts it read, so that the write can say
/// what it changed.
#[derive(Default)]
struct Read {
    steps: Vec<Step>,
    accounts: Vec<AccountState>,
}

/// A plan and what it was decided on.
struct Planned {
    plan: FundPlan,
    read: Read,
}

impl Planned {
    fn nothing(outcome: EventOutcome) -> Self {
        Self { plan: FundPlan::nothing(outcome), read: Read::default() }
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
            let Planned { plan, read } = self.plan(fund_event, event, now).await?;
            record.outcome = plan.outcome;
            record.reason.clone_from(&plan.reason);
            let mut changes = steps_changes(&read.steps, &plan.new_steps, &plan.step_updates, now);
            for next in &plan.accounts {
                let before = read.accounts.iter().find(|account| account.account_id == next.account_id);
                changes.extend(account_changes(before, next, now));
            }
            let write = EventWrite {
                record: &record,
                accounts: &plan.accounts,
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
                    // A transfer netted away and back is queued again by its update.
                    let requeued = plan.step_updates.iter().filter(|step| {
                        step.status == StepStatus::Queued
                            && read
                                .steps
                                .iter()
                                .any(|was| was.step_id == step.step_id && was.status != StepStatus::Queued)
                    });
                    let queued: Vec<Step> = plan.new_steps.iter().chain(requeued).cloned().collect();
                    self.send(&queued).await?;
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
            if let Some(next) = &settled.step {
                plan.outcome = EventOutcome::Applied;
                plan.step_updates.push(next.clone());
            }
            if settled.payout_failure.is_none() && settled.payout_paid.is_none() {
                continue;
            }
            let Some(account) = self.store.load_account(&step.destination).await? else { continue };
            if let Some(next) = record_payout_outcome(&account, &settled, event.created, &step.step_id) {
                plan.outcome = EventOutcome::Applied;
                plan.accounts.push(next);
            }
            read.accounts.push(account);
        }
        if plan.outcome != EventOutcome::Applied && !refusals.is_empty() {
            plan = FundPlan::refused(refusals.join("; "));
        } else if !refusals.is_empty() {
            tracing::warn!(reasons = refusals.join("; "), "some settlements refused");
        }
        Ok(Planned { plan, read })
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
            FundEvent::Dispute(dispute) => self.store.load_payment_steps(&dispute.payment_key).await,
            FundEvent::RefundFailed(failure) => self.store.load_payment_steps(&failure.payment_key).await,
            FundEvent::BalanceAvailable(balance) => self.store.load_payouts(&balance.account).await,
        }
    }

    /// The plan for one event, from one read of what it depends on, and the account it changes.
    async fn plan(&self, fund_event: &FundEvent, event: &Event, now: i64) -> Result<Planned, StoreError> {
        let context = FundContext {
            event_id: &event.id,
            event_type: &event.event_type,
            livemode: event.livemode,
            now,
            policy: self.dispute_policy,
        };
        Ok(match fund_event {
            FundEvent::Payment(payment) => {
                let stored = self.store.load_payment(&payment.payment_key).await?;
                // Planned before payments had a guard: its transfers stand as they are.
                let unguarded = stored.record.as_ref().is_none_or(|record| record.planned_by.is_none());
                if unguarded && stored.steps.iter().any(|step| step.kind == StepKind::Transfer) {
                    return Ok(Planned::nothing(EventOutcome::Unchanged));
                }
                let plan = plan_payment(payment, stored.record.as_ref(), &context);
                Planned { plan, read: Read { steps: stored.steps, accounts: Vec::new() } }
            }
            FundEvent::Refund(refund) => {
                let stored = self.store.load_payment(&refund.payment_key).await?;
                let plan = plan_refund(refund, stored.record.as_ref(), &stored.steps, &context);
                Planned { plan, read: Read { steps: stored.steps, accounts: Vec::new() } }
            }
            FundEvent::RefundFailed(failure) => {
                let stored = self.store.load_payment(&failure.payment_key).await?;
                let plan = plan_refund_failure(failure, stored.record.as_ref(), &stored.steps, &context);
                Planned { plan, read: Read { steps: stored.steps, accounts: Vec::new() } }
            }
            FundEvent::Dispute(dispute) => {
                let stored = self.store.load_payment(&dispute.payment_key).await?;
                let mut sellers: Vec<_> = stored
                    .steps
                    .iter()
                    .filter(|step| step.kind == StepKind::Transfer)
                    .map(|step| step.destination.clone())
                    .collect();
                sellers.sort();
                sellers.dedup();
                let mut accounts = Vec::new();
                for seller in &sellers {
                    accounts.extend(self.store.load_account(seller).await?);
                }
                let plan = plan_dispute(dispute, stored.record.as_ref(), &stored.steps, &accounts, &context);
                Planned { plan, read: Read { steps: stored.steps, accounts } }
            }
            FundEvent::Settlements(settlements) => self.plan_settlements(settlements, event).await?,
            FundEvent::BalanceAvailable(balance) => {
                let Some(account) = self.store.load_account(&balance.account).await? else {
                    return Ok(Planned::nothing(EventOutcome::Unchanged));
                };
                if is_stale_balance(&account, event.created) {
                    return Ok(Planned::nothing(EventOutcome::Stale));
                }
                let payouts = self.store.load_payouts(&balance.account).await?;
                let trigger = PayoutTrigger::Balance {
                    event_id: &event.id,
                    created: event.created,
                    entries: &balance.entries,
                };
                let planned =
                    plan_payouts(&trigger, &account, &self.payout_settings, &payouts, event.livemode, now);
                // The account is written with every plan (its held balances and the ordering
                // guard), which makes two balance events for one account conflict: the second
                // sees the first's payout as open instead of planning another.
                let Some(next) = planned.account else {
                    return Ok(Planned::nothing(EventOutcome::Unchanged));
                };
                if !next.payout_funds.warnings.is_empty() {
                    self.metrics.payout_funds_stale(next.payout_funds.warnings.len());
                }
                let plan = FundPlan {
                    outcome: EventOutcome::Applied,
                    new_steps: planned.new_steps,
                    step_updates: planned.superseded,
                    accounts: vec![next],
                    ..FundPlan::default()
                };
                Planned { plan, read: Read { steps: payouts, accounts: vec![account] } }
            }
        })
    }
}
