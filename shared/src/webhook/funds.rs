//! The fund-flow part of the pipeline: plan the steps an event asks for and record them with the
//! event, in one conditional write.

use std::collections::HashSet;

use super::{Delivery, MAX_CONFLICT_RETRIES, WebhookError, WebhookService};
use crate::domain::account::{AccountId, AccountState, PayoutFailure};
use crate::domain::funds::{
    FundEvent, Refund, Settlement, SettlementKind, TransferPlan, plan_payouts, plan_reversals,
    plan_transfers, settle,
};
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::store::{AccountStore, CommitOutcome, EventOutcome, EventRecord, EventWrite, StoreError};
use crate::stripe::event::Event;
use crate::stripe::signature::Clock;

/// What one fund-flow event writes besides its record.
#[derive(Default)]
struct FundPlan {
    outcome: EventOutcome,
    account: Option<AccountState>,
    steps: Vec<Step>,
    step_updates: Vec<Step>,
    refund: Option<Refund>,
}

impl FundPlan {
    fn nothing(outcome: EventOutcome) -> Self {
        Self { outcome, ..Self::default() }
    }

    fn new_steps(outcome: EventOutcome, steps: Vec<Step>) -> Self {
        Self { outcome, steps, ..Self::default() }
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
            let write = EventWrite {
                record: &record,
                account: plan.account.as_ref(),
                new_steps: &plan.steps,
                step_updates: &plan.step_updates,
                refund: plan.refund.as_ref(),
            };
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

    /// Settles the steps Stripe reports on; a failed or canceled payout is also recorded on its
    /// account.
    async fn plan_settlements(
        &self,
        settlements: &[Settlement],
        event: &Event,
    ) -> Result<FundPlan, StoreError> {
        let mut plan = FundPlan::nothing(EventOutcome::Unchanged);
        for settlement in settlements {
            let Some(step) = self.store.load_step(&settlement.step).await? else {
                tracing::warn!(step_id = %settlement.step.step_id, "Stripe reports on a step that is not stored");
                continue;
            };
            let Some(next) = settle(&step, settlement, event.created) else { continue };
            plan.outcome = EventOutcome::Applied;
            let failure_code = match &settlement.kind {
                SettlementKind::PayoutFailed(code) => Some(code.as_str()),
                SettlementKind::PayoutCanceled => Some("canceled"),
                SettlementKind::Created | SettlementKind::PayoutPaid => None,
            };
            if let Some(failure_code) = failure_code
                && let Some(mut account) = self.store.load_account(&step.destination).await?
            {
                account.payout_failure = Some(PayoutFailure {
                    payout_id: settlement.stripe_id.clone(),
                    failure_code: failure_code.to_owned(),
                    failed_at: event.created,
                });
                account.version += 1;
                plan.account = Some(account);
            }
            plan.step_updates.push(next);
        }
        Ok(plan)
    }

    /// The reversals owed by a refund recorded before the payment's transfers were planned.
    async fn reversals_of_earlier_refund(
        &self,
        payment_key: &str,
        transfers: &[Step],
        now: i64,
    ) -> Result<Vec<Step>, StoreError> {
        let Some(refund) = self.store.load_refund(payment_key).await? else { return Ok(Vec::new()) };
        Ok(plan_reversals(&refund, transfers, &[], now).unwrap_or_else(|reason| {
            tracing::warn!(reason, "earlier refund not reversed");
            Vec::new()
        }))
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
                    TransferPlan::Planned(transfers) => {
                        let reversals =
                            self.reversals_of_earlier_refund(&payment.payment_key, &transfers, now).await?;
                        FundPlan::new_steps(
                            EventOutcome::Applied,
                            transfers.into_iter().chain(reversals).collect(),
                        )
                    }
                    TransferPlan::Refused { reason, steps } => {
                        tracing::warn!(reason, "payment split refused; nothing will be transferred");
                        FundPlan::new_steps(EventOutcome::Refused, steps)
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
                // Remembered so that transfers planned later (the payment's event came second)
                // are reversed as they are planned.
                let stored = self.store.load_refund(&refund.payment_key).await?;
                let newer = stored.is_none_or(|stored| stored.amount_refunded < refund.amount_refunded);
                let mut plan = match plan_reversals(refund, &transfers, &reversals, now) {
                    Ok(steps) => FundPlan::new_steps(EventOutcome::Applied, steps),
                    Err(reason) => {
                        tracing::warn!(reason, "refund not reversed");
                        return Ok(FundPlan::nothing(EventOutcome::Refused));
                    }
                };
                if newer {
                    plan.refund = Some(refund.clone());
                } else if plan.steps.is_empty() {
                    plan.outcome = EventOutcome::Unchanged;
                }
                Ok(plan)
            }
            FundEvent::Settlements(settlements) => self.plan_settlements(settlements, event).await,
            FundEvent::BalanceAvailable(balance) => {
                let Some(account) = self.store.load_account(&balance.account).await? else {
                    return Ok(FundPlan::nothing(EventOutcome::Unchanged));
                };
                if account.ordering.balance.is_some_and(|newest| event.created < newest) {
                    return Ok(FundPlan::nothing(EventOutcome::Stale));
                }
                let open: Vec<Step> = self.store.load_payouts(&balance.account).await?;
                let steps = plan_payouts(balance, Some(&account), &open, &event.id, now);
                if steps.is_empty() {
                    return Ok(FundPlan::nothing(EventOutcome::Unchanged));
                }
                // Writing the account too makes two balance events for one account conflict, so
                // that the second sees the first's payout as open instead of planning another.
                let mut next = account;
                next.ordering.balance = Some(event.created);
                next.version += 1;
                Ok(FundPlan {
                    outcome: EventOutcome::Applied,
                    account: Some(next),
                    steps,
                    ..FundPlan::default()
                })
            }
        }
    }
}
