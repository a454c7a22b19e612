//! The ledger part of the pipeline: after an event's own commit, merge what it says into its
//! payment's ledger entry and move the totals by the difference, in one conditional write.
//!
//! The write comes after the event's record, so a crash in between leaves the record and no
//! ledger change; Stripe's retry is then a duplicate, which redoes the ledger write. That is safe
//! because the write is idempotent: the entry keeps the newest snapshot of each object, and the
//! totals move only by what the entry's contribution changed.

use super::{Delivery, MAX_CONFLICT_RETRIES, WebhookError, WebhookService};
use crate::clock::Clock;
use crate::domain::ledger::{LedgerDecision, LedgerEvent, plan_ledger, read_ledger_event, unread_outcome};
use crate::store::{AccountStore, CommitOutcome, StoreError};
use crate::stripe::event::Event;

impl<S: AccountStore, C: Clock> WebhookService<S, C> {
    /// Records `event` (as [`Self::record_event`] does) and then writes what it says to the
    /// ledger. An event refused for its livemode or its date touches no ledger. An event handled
    /// only for the ledger (`application_fee.*`) is recorded with what the ledger made of it.
    pub(super) async fn record_with_ledger(
        &self,
        event: &Event,
        record_id: &str,
        now: i64,
    ) -> Result<Delivery, WebhookError> {
        if self.refused_for_ledger(event, now) {
            return self.record_event(event, record_id, now, None).await;
        }
        let Some(ledger) = read_ledger_event(event) else {
            return self.record_event(event, record_id, now, unread_outcome(event)).await;
        };
        let stored = self.store.load_ledger_entry(&ledger.key).await?;
        let decision = plan_ledger(stored.as_ref(), &ledger);
        let delivery = self.record_event(event, record_id, now, Some(decision.outcome())).await?;
        self.write_ledger(&ledger, decision).await?;
        Ok(delivery)
    }

    /// Whether [`Self::refusal`] refuses the event: its record is then all it writes.
    fn refused_for_ledger(&self, event: &Event, now: i64) -> bool {
        self.refusal(&super::snapshot_record(event, &event.id, now), now).is_some()
    }

    /// Commits the plan; when another delivery moved the entry first, merges again on a fresh read.
    async fn write_ledger(
        &self,
        ledger: &LedgerEvent,
        mut decision: LedgerDecision,
    ) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let LedgerDecision::Apply(plan) = &decision else { return Ok(()) };
            match self.store.commit_ledger(plan).await? {
                CommitOutcome::Committed | CommitOutcome::Duplicate => {
                    tracing::debug!(entry = ledger.key, buckets = plan.deltas.len(), "ledger entry written");
                    return Ok(());
                }
                CommitOutcome::Conflict => {
                    tracing::debug!(entry = ledger.key, "ledger entry changed concurrently; merging again");
                    let stored = self.store.load_ledger_entry(&ledger.key).await?;
                    decision = plan_ledger(stored.as_ref(), ledger);
                }
            }
        }
        Err(StoreError::Unavailable("the ledger entry kept changing concurrently".into()))
    }
}
