//! The fund-flow worker: runs one queued step against Stripe, so that no crash, retry or
//! redelivery moves money twice.
//!
//! Every Stripe call carries the step's idempotency key (step id and attempt generation), so a
//! call repeated after a crash replays what Stripe did the first time. Every status change is a
//! conditional write on the step's version.

use crate::clock::{Clock, SystemClock};
use crate::domain::account::AccountId;
use crate::domain::change::step_changes;
use crate::domain::funds::{PAYMENT_METADATA, STEP_METADATA};
use crate::domain::payout::PayoutMethod;
use crate::domain::step::{Step, StepId, StepKind, StepRef, StepStatus, UnresolvedCall};
use crate::metrics::Metrics;
use crate::store::{AccountStore, CommitOutcome, StoreError};
use crate::stripe::api::StripeApi;
use crate::stripe::client::{CreateTransfer, PayoutParams, StripeClient, StripeError, StripeObject};

/// How many times a step is re-read when another writer moved it in between.
const MAX_CONFLICT_RETRIES: usize = 8;

/// Stripe's codes for a refusal that may not hold tomorrow: a balance too small, or a destination
/// that cannot receive yet. The step waits, and retries under its next attempt's key because
/// Stripe caches a refusal under its key for 24 hours.
const REFUSED_FOR_NOW: [&str; 3] =
    ["balance_insufficient", "insufficient_capabilities_for_transfer", "payouts_not_allowed"];

/// How long an idempotency key may be sent again without a lookup first. Stripe prunes keys
/// after 24 hours, and a pruned key creates anew; the hour's margin covers clock skew and a slow
/// call.
pub(crate) const KEY_REUSE_LIMIT_SECS: i64 = 23 * 60 * 60;

/// How far back a payout lookup lists, before the step's first send: Stripe's clock and ours
/// may disagree a little.
const LOOKUP_CLOCK_SLACK_SECS: i64 = 600;

/// What the queue should do with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge: the step is final (or was already).
    Done(StepStatus),
    /// Acknowledge: the step waits in the store, with this reason, until its account can receive
    /// (the account's own event re-queues it) or the sweep re-queues it. Bouncing it through the
    /// queue would only walk it to the dead-letter queue.
    Parked(String),
    /// Leave it for redelivery: Stripe was unreachable, or its answer was ambiguous.
    RetryLater(String),
}

/// The `Outcome` a run is counted under: the final status, `waiting`, `retry_later`, or `error`.
fn outcome(result: &Result<Disposition, WorkerError>) -> &'static str {
    match result {
        Ok(Disposition::Done(status)) => status.as_str(),
        Ok(Disposition::Parked(_)) => StepStatus::Waiting.as_str(),
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
    UnknownStep(StepId),
    /// The step kept changing under the worker.
    #[error("step {0} kept changing concurrently")]
    Contention(StepId),
}

/// Whether a step can be sent now.
enum Readiness {
    /// Send it.
    Ready,
    /// Not yet: park it with the reason.
    Wait(String),
    /// Never: fail it (something Stripe or the store says rules it out).
    Fail(String),
    /// Never: refuse it unsent (this deployment must not send it).
    Refuse(String),
    /// Could not tell (Stripe unreachable): retry the message later.
    Unknown(String),
}

/// Runs steps from the store against Stripe.
pub struct StepWorker<S, C = SystemClock, A = StripeClient> {
    store: S,
    stripe: A,
    clock: C,
    metrics: Metrics,
}

impl<S: AccountStore, A: StripeApi> StepWorker<S, SystemClock, A> {
    /// A worker on the system clock, with metrics as the environment asks ([`Metrics::from_env`]:
    /// on in Lambda, off elsewhere unless `CONNECT_FLOW_METRICS=emf`).
    pub fn new(store: S, stripe: A) -> Self {
        Self::with_clock(store, stripe, SystemClock).with_metrics(Metrics::from_env())
    }
}

impl<S: AccountStore, C: Clock, A: StripeApi> StepWorker<S, C, A> {
    /// A worker on the given clock, without metrics.
    pub fn with_clock(store: S, stripe: A, clock: C) -> Self {
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

    pub(crate) fn clock(&self) -> &C {
        &self.clock
    }

    /// Runs one step to a final status, or says why it must wait, and counts the outcome.
    pub async fn run(&self, step_ref: &StepRef) -> Result<Disposition, WorkerError> {
        let result = self.run_to_disposition(step_ref).await;
        self.metrics.step_finished(step_ref.kind.as_str(), outcome(&result));
        result
    }

    async fn run_to_disposition(&self, step_ref: &StepRef) -> Result<Disposition, WorkerError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let mut step = self
                .store
                .load_step(step_ref)
                .await?
                .ok_or_else(|| WorkerError::UnknownStep(step_ref.step_id.clone()))?;
            if step.status.is_final() {
                return Ok(Disposition::Done(step.status));
            }
            if let Some(reason) = self.livemode_refusal(&step) {
                match self.write(&step, StepStatus::Refused, Some(reason)).await? {
                    Some(_) => return Ok(Disposition::Done(StepStatus::Refused)),
                    None => continue,
                }
            }
            let transfer_id = match self.reversed_transfer(&step).await? {
                Ok(transfer_id) => transfer_id,
                Err(readiness) => match self.settle_unready(&step, readiness).await? {
                    Some(disposition) => return Ok(disposition),
                    None => continue,
                },
            };
            // An in-flight step may already have moved money, and retrying its key after a 5xx
            // only replays the 5xx: look the object up before any call.
            let mut replay = false;
            if step.status == StepStatus::InFlight {
                match self.look_up(&step, transfer_id.as_deref()).await {
                    Ok(Some(object)) => {
                        tracing::info!(step_id = %step.step_id, stripe_id = %object.id, "found what an earlier call made");
                        match self.succeed(&step, &object.id).await? {
                            Some(_) => return Ok(Disposition::Done(StepStatus::Succeeded)),
                            None => continue,
                        }
                    }
                    Ok(None) => {
                        let now = self.clock.now_unix();
                        let key_too_old =
                            step.sent_at.is_none_or(|sent| now.saturating_sub(sent) >= KEY_REUSE_LIMIT_SECS);
                        if step.unresolved == Some(UnresolvedCall::ServerError) || key_too_old {
                            // Nothing was made, and the old key would replay its 5xx (or create
                            // anew once pruned, which is the same as a new key): a new attempt.
                            step.attempt += 1;
                            step.sent_at = None;
                            step.unresolved = None;
                        } else {
                            // No answer yet: the first request may still be running, and only its
                            // own key can tell (409 while it runs, its result once done).
                            replay = true;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(step_id = %step.step_id, %error, "could not look the step's object up");
                        return Ok(Disposition::RetryLater(format!("the lookup failed: {error}")));
                    }
                }
            }
            if !replay {
                let readiness = self.readiness(&step).await?;
                if !matches!(readiness, Readiness::Ready) {
                    match self.settle_unready(&step, readiness).await? {
                        Some(disposition) => return Ok(disposition),
                        None => continue,
                    }
                }
            }
            // Recorded before the call, so a crash mid-call leaves a visible trace that the next
            // run resolves by lookup.
            let mut claim = step.clone();
            claim.sent_at = Some(step.sent_at.unwrap_or_else(|| self.clock.now_unix()));
            let Some(in_flight) = self.write(&claim, StepStatus::InFlight, None).await? else { continue };
            let called = self.call_stripe(&in_flight, transfer_id.as_deref()).await;
            let object = match called {
                Ok(object) => object,
                Err(error) => match self.record_refusal(&in_flight, &error).await? {
                    Some(disposition) => return Ok(disposition),
                    None => continue,
                },
            };
            match self.succeed(&in_flight, &object.id).await? {
                Some(_) => {
                    tracing::info!(step_id = %in_flight.step_id, "step finished");
                    return Ok(Disposition::Done(StepStatus::Succeeded));
                }
                // Another worker recorded it meanwhile: read again and let the status decide.
                None => continue,
            }
        }
        Err(WorkerError::Contention(step_ref.step_id.clone()))
    }

    /// A step whose livemode is not the key's, or is unknown, is never sent: a test-mode event
    /// must not move live money, nor a live one go nowhere under a test key.
    fn livemode_refusal(&self, step: &Step) -> Option<String> {
        let mode = |livemode: Option<bool>| match livemode {
            Some(true) => "live mode",
            Some(false) => "test mode",
            None => "an unknown mode",
        };
        let key = self.stripe.livemode();
        (step.livemode.is_none() || step.livemode != key).then(|| {
            format!("the step is in {} but this worker's key is in {}", mode(step.livemode), mode(key))
        })
    }

    /// Writes what an unready step becomes; `None` when another writer moved it first.
    async fn settle_unready(
        &self,
        step: &Step,
        readiness: Readiness,
    ) -> Result<Option<Disposition>, WorkerError> {
        let (status, reason) = match readiness {
            Readiness::Ready => return Ok(None),
            Readiness::Unknown(reason) => return Ok(Some(Disposition::RetryLater(reason))),
            Readiness::Wait(reason) => (StepStatus::Waiting, reason),
            Readiness::Fail(reason) => (StepStatus::Failed, reason),
            Readiness::Refuse(reason) => (StepStatus::Refused, reason),
        };
        // Waiting again for the same reason changes nothing worth a write.
        let unchanged = step.status == status && step.reason.as_deref() == Some(reason.as_str());
        if !unchanged && self.write(step, status, Some(reason.clone())).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(match status {
            StepStatus::Waiting => Disposition::Parked(reason),
            status => Disposition::Done(status),
        }))
    }

    /// What a refused or unanswered call leaves the step as; `None` when another writer moved it.
    async fn record_refusal(
        &self,
        step: &Step,
        error: &StripeError,
    ) -> Result<Option<Disposition>, WorkerError> {
        let step_id = &step.step_id;
        if error.is_retryable() {
            tracing::warn!(%step_id, status = error.status(), "Stripe did not answer definitely; retrying later");
            let unresolved = match error.status() {
                // Rate limited before anything ran: the key is still unused.
                Some(429) => None,
                Some(500..=599) => Some(UnresolvedCall::ServerError),
                _ => Some(UnresolvedCall::NoAnswer),
            };
            if let Some(unresolved) = unresolved.filter(|unresolved| step.unresolved != Some(*unresolved)) {
                let mut next = step.clone();
                next.unresolved = Some(unresolved);
                if self.write(&next, StepStatus::InFlight, None).await?.is_none() {
                    return Ok(None);
                }
            }
            return Ok(Some(Disposition::RetryLater("Stripe did not answer".into())));
        }
        // Access to this one connected account was refused (it disconnected, or never was ours):
        // the step waits, under a new key, and the platform key is not to blame.
        if error.refused_account_access() {
            tracing::warn!(%step_id, "Stripe refused access to the connected account");
            return self.refused_for_now(step, "Stripe refused access to the connected account").await;
        }
        // A rejected key is this deployment's problem, not the step's: failing every step over it
        // would strand real money, so they wait for the key to be fixed.
        if error.refused_platform_key() {
            tracing::error!(%step_id, status = error.status(), "Stripe refused the API key");
            return Ok(Some(Disposition::RetryLater("Stripe refused the API key".into())));
        }
        if is_policy_instant_payout(step) && !matches!(error, StripeError::IdempotencyMismatch { .. }) {
            return self.instead_as_standard(step, error.code().unwrap_or("refused_by_stripe")).await;
        }
        if let Some(code) = error.code().filter(|code| REFUSED_FOR_NOW.contains(code)) {
            return self.refused_for_now(step, code).await;
        }
        let code = match error {
            StripeError::IdempotencyMismatch { .. } => "idempotency_error",
            error => error.code().unwrap_or("refused_by_stripe"),
        };
        Ok(self.write(step, StepStatus::Failed, Some(code.to_owned())).await?.map(|_| {
            tracing::info!(%step_id, code, "step failed");
            Disposition::Done(StepStatus::Failed)
        }))
    }

    /// A payout the policy sent as instant that Stripe definitely refused (the external account
    /// cannot take one, the instant balance is short, a limit): queued again as a standard payout,
    /// under its next attempt's key since Stripe keeps the refusal under the old one. Always
    /// `None`, so that the run goes on with the standard payout (or with whatever moved it).
    async fn instead_as_standard(&self, step: &Step, code: &str) -> Result<Option<Disposition>, WorkerError> {
        let mut next = step.clone();
        next.attempt += 1;
        next.sent_at = None;
        next.unresolved = None;
        let options = next.payout.get_or_insert_with(Default::default);
        options.method = Some(PayoutMethod::Standard.as_str().to_owned());
        options.instant_refused = Some(code.to_owned());
        tracing::info!(step_id = %step.step_id, code, "instant payout refused; sending it as a standard payout");
        self.write(&next, StepStatus::Queued, Some(fell_back(code))).await?;
        Ok(None)
    }

    /// Parks a step that Stripe definitely refused for now, under its next attempt's key.
    async fn refused_for_now(&self, step: &Step, reason: &str) -> Result<Option<Disposition>, WorkerError> {
        let mut next = step.clone();
        next.attempt += 1;
        next.sent_at = None;
        next.unresolved = None;
        Ok(self
            .write(&next, StepStatus::Waiting, Some(reason.to_owned()))
            .await?
            .map(|_| Disposition::Parked(reason.to_owned())))
    }

    /// For a reversal: the id of the transfer it reverses once that transfer is made; `Ok(None)`
    /// for other kinds.
    async fn reversed_transfer(&self, step: &Step) -> Result<Result<Option<String>, Readiness>, WorkerError> {
        if step.kind != StepKind::Reversal {
            return Ok(Ok(None));
        }
        let Some(transfer_step_id) = step.reverses_step.clone() else {
            return Ok(Err(Readiness::Fail("a reversal without its transfer".into())));
        };
        let transfer_ref = StepRef {
            kind: StepKind::Transfer,
            step_id: transfer_step_id,
            payment_key: step.payment_key.clone(),
            destination: step.destination.clone(),
        };
        Ok(match self.store.load_step(&transfer_ref).await? {
            Some(Step { status: StepStatus::Succeeded, stripe_id: Some(transfer_id), .. }) => {
                Ok(Some(transfer_id))
            }
            Some(transfer) if transfer.status.is_final() => {
                Err(Readiness::Fail("the transfer it reverses was never made".into()))
            }
            Some(_) => Err(Readiness::Wait("the transfer it reverses has not been made yet".into())),
            None => Err(Readiness::Fail("the transfer it reverses is not recorded".into())),
        })
    }

    async fn readiness(&self, step: &Step) -> Result<Readiness, WorkerError> {
        let account = match step.kind {
            StepKind::Reversal => return Ok(Readiness::Ready),
            StepKind::Transfer | StepKind::Payout => self.store.load_account(&step.destination).await?,
        };
        if account.as_ref().is_some_and(|account| account.deauthorized) {
            return Ok(Readiness::Wait("the account has deauthorized this platform".into()));
        }
        Ok(match (step.kind, account) {
            (StepKind::Transfer, Some(account)) => {
                if account.can_receive_transfers() {
                    Readiness::Ready
                } else {
                    Readiness::Wait("the destination's transfers capability is not active".into())
                }
            }
            (StepKind::Transfer, None) => self.readiness_at_stripe(&step.destination).await,
            (StepKind::Payout, Some(account)) => {
                if account.payout_schedule_interval.as_deref() != Some("manual") {
                    Readiness::Refuse("the account's payouts are no longer on a manual schedule".into())
                } else if account.can_receive_payouts() {
                    Readiness::Ready
                } else {
                    Readiness::Wait("payouts are not enabled on the account".into())
                }
            }
            (StepKind::Payout, None) => Readiness::Wait("the account is not known to this deployment".into()),
            (StepKind::Reversal, _) => Readiness::Ready,
        })
    }

    /// A destination this deployment has not heard of yet (every seller, on the day of the first
    /// deploy): Stripe's own word on whether it can receive.
    async fn readiness_at_stripe(&self, destination: &AccountId) -> Readiness {
        match self.stripe.retrieve_account(destination).await {
            Ok(account) => {
                let transfers = account.pointer("/capabilities/transfers").and_then(|status| status.as_str());
                if transfers == Some("active") {
                    Readiness::Ready
                } else {
                    Readiness::Wait("the destination's transfers capability is not active at Stripe".into())
                }
            }
            Err(error) if error.is_retryable() => {
                Readiness::Unknown("Stripe did not answer the account lookup".into())
            }
            Err(error) if error.refused_account_access() => {
                Readiness::Wait("Stripe refused access to the destination account".into())
            }
            Err(error) if error.refused_platform_key() => {
                Readiness::Unknown("Stripe refused the API key".into())
            }
            Err(error) => Readiness::Wait(format!(
                "Stripe does not know the destination account ({})",
                error.code().unwrap_or("refused")
            )),
        }
    }

    /// Finds the object an earlier call for this step made, by the step id in its metadata.
    async fn look_up(
        &self,
        step: &Step,
        transfer_id: Option<&str>,
    ) -> Result<Option<StripeObject>, StripeError> {
        match step.kind {
            StepKind::Transfer => {
                let group = step.transfer_group.as_deref().unwrap_or_default();
                self.stripe.find_transfer(group, &step.destination, &step.step_id).await
            }
            StepKind::Reversal => {
                let transfer_id = transfer_id
                    .ok_or_else(|| StripeError::Config("a reversal needs its transfer's id".into()))?;
                self.stripe.find_reversal(transfer_id, &step.step_id).await
            }
            StepKind::Payout => {
                let since = step.sent_at.unwrap_or(step.created_at).min(step.created_at);
                self.stripe
                    .find_payout(
                        &step.destination,
                        &step.step_id,
                        since.saturating_sub(LOOKUP_CLOCK_SLACK_SECS),
                    )
                    .await
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
                    description: step.requested.as_ref().and_then(|request| request.description.as_deref()),
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
                let options = step.payout.as_ref();
                let params = PayoutParams {
                    method: options
                        .and_then(|options| options.method.as_deref())
                        .or_else(|| step.requested.as_ref().and_then(|request| request.method.as_deref())),
                    source_type: options.and_then(|options| options.source_type.as_deref()),
                };
                self.stripe
                    .create_payout_by(&step.destination, step.amount, &step.currency, params, &metadata, &key)
                    .await
            }
        }
    }

    /// Records that Stripe made the step's object; a payout sent as standard after its instant
    /// refusal keeps saying so.
    async fn succeed(&self, step: &Step, stripe_id: &str) -> Result<Option<Step>, WorkerError> {
        let mut next = step.clone();
        next.stripe_id = Some(stripe_id.to_owned());
        next.unresolved = None;
        let reason =
            step.payout.as_ref().and_then(|options| options.instant_refused.as_deref()).map(fell_back);
        self.write(&next, StepStatus::Succeeded, reason).await
    }

    /// Writes `step` (with whatever the caller changed) in `status`, one version up; `None` when
    /// another writer moved it first.
    async fn write(
        &self,
        step: &Step,
        status: StepStatus,
        reason: Option<String>,
    ) -> Result<Option<Step>, WorkerError> {
        let mut next = step.clone();
        next.status = status;
        next.reason = reason;
        next.updated_at = self.clock.now_unix();
        next.version += 1;
        let changes = step_changes(Some(step), &next, next.updated_at);
        Ok(match self.store.update_step(&next, &changes).await? {
            CommitOutcome::Conflict => None,
            _ => Some(next),
        })
    }
}

/// Whether `step` is a payout its account's payout policy sent as instant (not one the platform
/// asked for with `POST /payouts`, whose method is the platform's call).
fn is_policy_instant_payout(step: &Step) -> bool {
    step.kind == StepKind::Payout
        && step.requested.is_none()
        && step.payout.as_ref().and_then(|options| options.method.as_deref())
            == Some(PayoutMethod::Instant.as_str())
}

/// The reason a payout that fell back to standard carries.
fn fell_back(code: &str) -> String {
    format!("Stripe refused it as an instant payout ({code}); sent as a standard payout")
}

/// After this many receives a message is dead-lettered, as SQS does past `maxReceiveCount`.
pub const MAX_RECEIVES: u32 = 10;

#[cfg(test)]
mod tests;
