//! The fund-flow part of the pipeline: plan the steps an event asks for and record them with the
//! event, in one conditional write.

use std::collections::HashSet;

use super::{Delivery, MAX_CONFLICT_RETRIES, WebhookError, WebhookService};
use crate::domain::account::{AccountId, AccountState};
use crate::domain::funds::{FundEvent, TransferPlan, plan_payouts, plan_reversals, plan_transfers};
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::store::{AccountStore, CommitOutcome, EventOutcome, EventRecord, EventWrite, StoreError};
use crate::stripe::event::Event;
use crate::stripe::signature::Clock;

/// What one fund-flow event writes besides its record.
struct FundPlan {
    outcome: EventOutcome,
    account: Option<AccountState>,
    steps: Vec<Step>,
}

impl FundPlan {
    fn nothing(outcome: EventOutcome) -> Self {
        Self { outcome, account: None, steps: Vec::new() }
    }
}

impl<S: AccountStore, C: Clock> WebhookService<S, C> {
    /// Records a fund-flow event with the steps it plans. A conflict (another delivery planned the
    /// same steps, or moved the account) means deciding again on a fresh read.
    pub(super) async fn record_fund_event(
        &self,
        mut record: EventRecord,
        fund_event: &FundEvent,
        event: &Event,
        now: i64,
    ) -> Result<Delivery, WebhookError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let plan = self.plan(fund_event, event, now).await?;
            record.outcome = plan.outcome;
            let write =
                EventWrite { record: &record, account: plan.account.as_ref(), new_steps: &plan.steps };
            match self.store.commit(&write).await? {
                CommitOutcome::Committed => {
                    tracing::info!(steps = plan.steps.len(), "fund-flow steps recorded");
                    self.send(&plan.steps).await?;
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

    /// Sends the steps that are still queued, after their commit.
    async fn send(&self, steps: &[Step]) -> Result<(), StoreError> {
        let Some(queue) = &self.queue else { return Ok(()) };
        let queued: Vec<StepRef> =
            steps.iter().filter(|step| step.status == StepStatus::Queued).map(Step::reference).collect();
        if queued.is_empty() {
            return Ok(());
        }
        queue.send(&queued).await
    }

    /// The stored steps a fund-flow event concerns.
    async fn steps_of(&self, fund_event: &FundEvent) -> Result<Vec<Step>, StoreError> {
        match fund_event {
            FundEvent::Payment(payment) => self.store.load_payment_steps(&payment.payment_key).await,
            FundEvent::Refund(refund) => self.store.load_payment_steps(&refund.payment_key).await,
            FundEvent::BalanceAvailable(balance) => self.store.load_account_steps(&balance.account).await,
        }
    }

    async fn plan(&self, fund_event: &FundEvent, event: &Event, now: i64) -> Result<FundPlan, StoreError> {
        match fund_event {
            FundEvent::Payment(payment) => {
                let existing = self.store.load_payment_steps(&payment.payment_key).await?;
                // The other trigger of the same payment (payment_intent or charge) planned it.
                if existing.iter().any(|step| step.kind == StepKind::Transfer) {
                    return Ok(FundPlan::nothing(EventOutcome::Unchanged));
                }
                let mut known = HashSet::new();
                for key in payment.splits.keys() {
                    let Some(account_id) = key.strip_prefix("transfer:").and_then(AccountId::parse) else {
                        continue;
                    };
                    if self.store.load_account(&account_id).await?.is_some() {
                        known.insert(account_id);
                    }
                }
                Ok(match plan_transfers(payment, |account_id| known.contains(account_id), now) {
                    TransferPlan::NoSplits => FundPlan::nothing(EventOutcome::Unchanged),
                    TransferPlan::Planned(steps) => {
                        FundPlan { outcome: EventOutcome::Applied, account: None, steps }
                    }
                    TransferPlan::Refused { reason, steps } => {
                        tracing::warn!(reason, "payment split refused; nothing will be transferred");
                        FundPlan { outcome: EventOutcome::Refused, account: None, steps }
                    }
                })
            }
            FundEvent::Refund(refund) => {
                let (transfers, reversals): (Vec<Step>, Vec<Step>) = self
                    .store
                    .load_payment_steps(&refund.payment_key)
                    .await?
                    .into_iter()
                    .partition(|step| step.kind == StepKind::Transfer);
                Ok(match plan_reversals(refund, &transfers, &reversals, now) {
                    Ok(steps) if steps.is_empty() => FundPlan::nothing(EventOutcome::Unchanged),
                    Ok(steps) => FundPlan { outcome: EventOutcome::Applied, account: None, steps },
                    Err(reason) => {
                        tracing::warn!(reason, "refund not reversed");
                        FundPlan::nothing(EventOutcome::Refused)
                    }
                })
            }
            FundEvent::BalanceAvailable(balance) => {
                let Some(account) = self.store.load_account(&balance.account).await? else {
                    return Ok(FundPlan::nothing(EventOutcome::Unchanged));
                };
                if account.ordering.balance.is_some_and(|newest| event.created < newest) {
                    return Ok(FundPlan::nothing(EventOutcome::Stale));
                }
                let open: Vec<Step> = self.store.load_account_steps(&balance.account).await?;
                let steps = plan_payouts(balance, Some(&account), &open, &event.id, now);
                if steps.is_empty() {
                    return Ok(FundPlan::nothing(EventOutcome::Unchanged));
                }
                // Writing the account too makes two balance events for one account conflict, so
                // that the second sees the first's payout as open instead of planning another.
                let mut next = account;
                next.ordering.balance = Some(event.created);
                next.version += 1;
                Ok(FundPlan { outcome: EventOutcome::Applied, account: Some(next), steps })
            }
        }
    }
}
