//! The fund-flow worker: runs one queued step against Stripe, so that no crash, retry or
//! redelivery moves money twice.
//!
//! Every Stripe call carries the step's idempotency key (step id and attempt generation), so a
//! call repeated after a crash replays what Stripe did the first time. Every status change is a
//! conditional write on the step's version.

use tracing::Instrument;

use crate::domain::funds::{PAYMENT_METADATA, STEP_METADATA};
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::metrics::Metrics;
use crate::store::{AccountStore, CommitOutcome, StoreError};
use crate::stripe::client::{CreateTransfer, StripeClient, StripeError, StripeObject};
use crate::stripe::signature::{Clock, SystemClock};

/// How many times a step is re-read when another writer moved it in between.
const MAX_CONFLICT_RETRIES: usize = 8;

/// Stripe's codes for a refusal that may not hold tomorrow: a balance too small, or a destination
/// that cannot receive yet. The step waits, and retries under its next attempt's key because
/// Stripe caches a refusal under its key for 24 hours.
const REFUSED_FOR_NOW: [&str; 3] =
    ["balance_insufficient", "insufficient_capabilities_for_transfer", "payouts_not_allowed"];

/// What the queue should do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge: the step is final (or was already).
    Done(StepStatus),
    /// Leave it for redelivery: Stripe was unreachable, or the step waits for something.
    RetryLater(String),
}

/// The `Outcome` a run is counted under: the final status, `retry_later`, or `error`.
fn outcome(result: &Result<Disposition, WorkerError>) -> &'static str {
    match result {
        Ok(Disposition::Done(status)) => status.as_str(),
        Ok(Disposition::RetryLater(_)) => "retry_later",
        Err(_) => "error",
    }
}

/// A failure that is neither Stripe's answer nor the step's: the message is retried.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message names a step that is not stored.
    #[error("no stored step {0}")]
    UnknownStep(String),
    /// The step kept changing under the worker.
    #[error("step {0} kept changing concurrently")]
    Contention(String),
}

/// Whether a step can be sent now.
enum Readiness {
    /// Send it; for a reversal, to this transfer.
    Ready { transfer_id: Option<String> },
    /// Not yet: retry later.
    Wait(String),
    /// Never: fail it.
    Fail(String),
}

/// Runs steps from the store against Stripe.
pub struct StepWorker<S, C = SystemClock> {
    store: S,
    stripe: StripeClient,
    clock: C,
    metrics: Metrics,
}

impl<S: AccountStore> StepWorker<S> {
    /// A worker on the system clock, with metrics as the environment asks ([`Metrics::from_env`]:
    /// on in Lambda, off elsewhere unless `CONNECT_FLOW_METRICS=emf`).
    pub fn new(store: S, stripe: StripeClient) -> Self {
        Self::with_clock(store, stripe, SystemClock).with_metrics(Metrics::from_env())
    }
}

impl<S: AccountStore, C: Clock> StepWorker<S, C> {
    /// A worker on the given clock, without metrics.
    pub fn with_clock(store: S, stripe: StripeClient, clock: C) -> Self {
        Self { store, stripe, clock, metrics: Metrics::disabled() }
    }

    /// Records each run's outcome and each Stripe call's latency in `metrics`; whoever runs a
    /// batch flushes them ([`StepWorker::metrics`]).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.stripe = self.stripe.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// The metrics this worker records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store this worker reads and writes.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Runs one step to a final status, or says why it must wait, and counts the outcome.
    pub async fn run(&self, step_ref: &StepRef) -> Result<Disposition, WorkerError> {
        let result = self.run_to_disposition(step_ref).await;
        self.metrics.step_finished(step_ref.kind.as_str(), outcome(&result));
        result
    }

    async fn run_to_disposition(&self, step_ref: &StepRef) -> Result<Disposition, WorkerError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let step = self
                .store
                .load_step(step_ref)
                .await?
                .ok_or_else(|| WorkerError::UnknownStep(step_ref.step_id.clone()))?;
            if step.status.is_final() {
                return Ok(Disposition::Done(step.status));
            }
            // An in-flight step may already have moved money: replay its call under the same key
            // rather than re-checking our view of the destination, which may lag Stripe's.
            let readiness = if step.status == StepStatus::InFlight && step.kind != StepKind::Reversal {
                Readiness::Ready { transfer_id: None }
            } else {
                self.readiness(&step).await?
            };
            let transfer_id = match readiness {
                Readiness::Ready { transfer_id } => transfer_id,
                Readiness::Wait(reason) => {
                    // Waiting again for the same reason changes nothing worth a write.
                    let unchanged =
                        step.status == StepStatus::Waiting && step.reason.as_deref() == Some(&reason);
                    if unchanged
                        || self
                            .transition(&step, StepStatus::Waiting, Some(&reason), None, step.attempt)
                            .await?
                            .is_some()
                    {
                        return Ok(Disposition::RetryLater(reason));
                    }
                    continue;
                }
                Readiness::Fail(reason) => {
                    if self
                        .transition(&step, StepStatus::Failed, Some(&reason), None, step.attempt)
                        .await?
                        .is_some()
                    {
                        return Ok(Disposition::Done(StepStatus::Failed));
                    }
                    continue;
                }
            };
            // Recorded before the call, so a crash mid-call leaves a visible trace; the retry
            // replays the call under the same key.
            let in_flight =
                match self.transition(&step, StepStatus::InFlight, None, None, step.attempt).await? {
                    Some(in_flight) => in_flight,
                    None => continue,
                };
            let called = self.call_stripe(&in_flight, transfer_id.as_deref()).await;
            let (status, reason, stripe_id, attempt) = match &called {
                Ok(object) => (StepStatus::Succeeded, None, Some(object.id.as_str()), in_flight.attempt),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(step_id = %in_flight.step_id, status = error.status(), "Stripe unavailable; retrying later");
                    return Ok(Disposition::RetryLater("Stripe did not answer".into()));
                }
                // A rejected key is this deployment's problem, not the step's: failing every step
                // over it would strand real money, so they wait for the key to be fixed.
                Err(error @ StripeError::Refused { status: 401 | 403, .. }) => {
                    tracing::error!(step_id = %in_flight.step_id, status = error.status(), "Stripe refused the API key");
                    return Ok(Disposition::RetryLater("Stripe refused the API key".into()));
                }
                Err(StripeError::IdempotencyMismatch { .. }) => {
                    (StepStatus::Failed, Some("idempotency_error"), None, in_flight.attempt)
                }
                Err(error) if error.code().is_some_and(|code| REFUSED_FOR_NOW.contains(&code)) => {
                    (StepStatus::Waiting, error.code(), None, in_flight.attempt + 1)
                }
                Err(error) => (
                    StepStatus::Failed,
                    Some(error.code().unwrap_or("refused_by_stripe")),
                    None,
                    in_flight.attempt,
                ),
            };
            match self.transition(&in_flight, status, reason, stripe_id, attempt).await? {
                Some(_) if status == StepStatus::Waiting => {
                    return Ok(Disposition::RetryLater(reason.unwrap_or_default().to_owned()));
                }
                Some(_) => {
                    tracing::info!(step_id = %in_flight.step_id, status = status.as_str(), "step finished");
                    return Ok(Disposition::Done(status));
                }
                // Another worker recorded it meanwhile: read again and let the status decide.
                None => continue,
            }
        }
        Err(WorkerError::Contention(step_ref.step_id.clone()))
    }

    async fn readiness(&self, step: &Step) -> Result<Readiness, WorkerError> {
        match step.kind {
            StepKind::Transfer => {
                let account = self.store.load_account(&step.destination).await?;
                let active = account
                    .as_ref()
                    .and_then(|account| account.capabilities.get("transfers"))
                    .is_some_and(|status| status == "active");
                Ok(if active {
                    Readiness::Ready { transfer_id: None }
                } else {
                    Readiness::Wait("the destination's transfers capability is not active".into())
                })
            }
            StepKind::Payout => {
                let account = self.store.load_account(&step.destination).await?;
                let enabled = account.as_ref().and_then(|account| account.payouts_enabled) == Some(true);
                Ok(if enabled {
                    Readiness::Ready { transfer_id: None }
                } else {
                    Readiness::Wait("payouts are not enabled on the account".into())
                })
            }
            StepKind::Reversal => {
                let Some(transfer_step_id) = step.reverses_step.clone() else {
                    return Ok(Readiness::Fail("a reversal without its transfer".into()));
                };
                let transfer_ref = StepRef {
                    kind: StepKind::Transfer,
                    step_id: transfer_step_id,
                    payment_key: step.payment_key.clone(),
                    destination: step.destination.clone(),
                };
                let transfer = self.store.load_step(&transfer_ref).await?;
                Ok(match transfer {
                    Some(Step { status: StepStatus::Succeeded, stripe_id: Some(transfer_id), .. }) => {
                        Readiness::Ready { transfer_id: Some(transfer_id) }
                    }
                    Some(transfer) if transfer.status.is_final() => {
                        Readiness::Fail("the transfer it reverses was never made".into())
                    }
                    Some(_) => Readiness::Wait("the transfer it reverses has not been made yet".into()),
                    None => Readiness::Fail("the transfer it reverses is not recorded".into()),
                })
            }
        }
    }

    async fn call_stripe(&self, step: &Step, transfer_id: Option<&str>) -> Result<StripeObject, StripeError> {
        let key = step.idempotency_key();
        let mut metadata = vec![(STEP_METADATA, step.step_id.as_str())];
        if let Some(payment_key) = &step.payment_key {
            metadata.push((PAYMENT_METADATA, payment_key.as_str()));
        }
        match (step.kind, transfer_id) {
            (StepKind::Transfer, _) => {
                let transfer = CreateTransfer {
                    amount: step.amount,
                    currency: &step.currency,
                    destination: &step.destination,
                    source_transaction: step.source_charge.as_deref(),
                    transfer_group: step.transfer_group.as_deref(),
                    metadata: &metadata,
                };
                self.stripe.create_transfer(&transfer, &key).await
            }
            (StepKind::Reversal, Some(transfer_id)) => {
                self.stripe.create_transfer_reversal(transfer_id, step.amount, &metadata, &key).await
            }
            (StepKind::Reversal, None) => {
                Err(StripeError::Config("a reversal needs its transfer's id".into()))
            }
            (StepKind::Payout, _) => {
                self.stripe
                    .create_payout(&step.destination, step.amount, &step.currency, &metadata, &key)
                    .await
            }
        }
    }

    /// Writes the step's next status; `None` when another writer moved it first.
    async fn transition(
        &self,
        step: &Step,
        status: StepStatus,
        reason: Option<&str>,
        stripe_id: Option<&str>,
        attempt: u32,
    ) -> Result<Option<Step>, WorkerError> {
        let mut next = step.clone();
        next.status = status;
        next.reason = reason.map(str::to_owned);
        if let Some(stripe_id) = stripe_id {
            next.stripe_id = Some(stripe_id.to_owned());
        }
        next.attempt = attempt;
        next.updated_at = self.clock.now_unix();
        next.version += 1;
        Ok(match self.store.update_step(&next).await? {
            CommitOutcome::Conflict => None,
            _ => Some(next),
        })
    }
}

/// How long a received message stays hidden before the embedded queue offers it again.
const VISIBILITY_SECS: i64 = 30;

/// After this many receives a message is dead-lettered, as SQS does past `maxReceiveCount`.
pub const MAX_RECEIVES: u32 = 10;

/// How many messages one pass takes from each embedded queue, as one SQS batch would.
const BATCH: usize = 10;

impl<C: Clock> StepWorker<crate::store::sqlite::SqliteStore, C> {
    /// One pass over both embedded queues: runs every visible message once, acknowledges the
    /// finished ones and dead-letters those received too often. Returns how many it handled.
    pub async fn drain_embedded(&self) -> Result<usize, StoreError> {
        let now = self.clock.now_unix();
        let mut handled = 0;
        for queue in ["transfers", "payouts"] {
            for message in self.store.receive(queue, now, VISIBILITY_SECS, BATCH)? {
                handled += 1;
                let span = tracing::info_span!(
                    "step",
                    step_id = %message.message_id,
                    kind = message.step.kind.as_str(),
                    account_id = message.step.destination.as_str(),
                    queue
                );
                let outcome = self.run(&message.step).instrument(span.clone()).await;
                let _entered = span.enter();
                match outcome {
                    Ok(Disposition::Done(_)) => {
                        self.store.acknowledge(queue, &message.message_id)?;
                        continue;
                    }
                    Ok(Disposition::RetryLater(reason)) => tracing::info!(reason, "step will be retried"),
                    Err(error) => tracing::warn!(%error, "step not run; will be retried"),
                }
                if message.receive_count >= MAX_RECEIVES {
                    tracing::error!(receives = message.receive_count, "step dead-lettered");
                    self.store.dead_letter(queue, &message.message_id)?;
                }
            }
        }
        self.metrics.flush();
        Ok(handled)
    }
}
