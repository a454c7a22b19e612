//! The fetch worker: runs thin events' fetch steps. Each retrieves the object its event names,
//! paced under Stripe's read limit, and applies it through the webhook pipeline as its snapshot
//! twin, so that a thin event changes state exactly as the snapshot event would.
//!
//! Ordering: a fetch returns the object as it is *now*, so it is ordered by when its request
//! left (and never before its event): two fetches finishing in either order leave the newer
//! read, and a snapshot event older than a fetch is stale against it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::app::{Backend, StartError, Wire};
use crate::clock::{Clock, SystemClock};
use crate::config::WebhookSettings;
use crate::domain::account::AccountId;
use crate::domain::fetch::{FetchRef, FetchStatus, FetchStep, FetchTarget, fetched_as_snapshot, observed_at};
use crate::metrics::Metrics;
use crate::sqs_worker::{QueueRunner, serve_queue, stripe_client_from_env};
use crate::store::{AccountStore, CommitOutcome, EventOutcome, EventRecord, StepQueue, StoreError};
use crate::stripe::client::{StripeClient, StripeError};
use crate::stripe::event::Event;
use crate::webhook::{Delivery, WebhookService};
use crate::worker::MAX_RECEIVES;

/// The variable that sets how many Stripe reads per second one fetch worker makes.
pub(crate) const FETCH_RATE: &str = "CONNECT_FLOW_FETCH_RATE";
/// Reads per second per worker by default. The template runs at most two workers, so a deployment
/// stays under Stripe's 20 per second with room for the transfer workers' lookups.
pub(crate) const DEFAULT_FETCH_RATE: u32 = 9;
/// Attempts without Stripe's definite answer before a fetch step ends `failed`: fewer than the
/// queue's receives ([`MAX_RECEIVES`]), so that it ends in the store, not in the dead-letter queue.
pub const MAX_FETCH_ATTEMPTS: u32 = 5;
/// 429s retried within one attempt, each after its backoff.
const RATE_LIMIT_RETRIES: u32 = 3;
/// The first backoff after a 429, doubled each time.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest one attempt waits after a 429: longer, and the message is redelivered instead.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How many times a record is re-read when another run moved it in between.
const MAX_CONFLICT_RETRIES: usize = 8;
/// The suffix of the record a fetched object is applied under: the thin event's own record
/// holds its fetch step.
pub const FETCHED_SUFFIX: &str = ".fetched";

const _: () = assert!(MAX_FETCH_ATTEMPTS < MAX_RECEIVES);

/// Spaces requests evenly at a fixed rate across every task of one worker, and holds all of them
/// back after Stripe's 429.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    /// At most `rate` requests a second (at least one).
    pub fn per_second(rate: u32) -> Self {
        let now = tokio::time::Instant::now();
        Self { interval: Duration::from_secs(1) / rate.max(1), next: tokio::sync::Mutex::new(now) }
    }

    /// Waits for this request's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Starts no request before `pause` from now.
    async fn hold_off(&self, pause: Duration) {
        let mut next = self.next.lock().await;
        *next = (*next).max(tokio::time::Instant::now() + pause);
    }
}

/// The wait before retry `retry` (from 0) after a 429: Stripe's `Retry-After` when longer, else
/// exponential from [`BACKOFF_BASE`], plus up to half the base in jitter, so that workers that
/// were limited together do not retry together. `seed` picks the jitter. Pure.
pub fn backoff(retry: u32, retry_after: Option<Duration>, seed: u64) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1 << retry.min(8));
    let jitter_range = u64::try_from(BACKOFF_BASE.as_millis() / 2).unwrap_or(1).max(1);
    let jitter = Duration::from_millis(splitmix(seed ^ u64::from(retry)) % jitter_range);
    exponential.max(retry_after.unwrap_or_default()) + jitter
}

/// A well-mixed 64-bit value from `seed` (SplitMix64's finaliser).
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable seed for [`backoff`]'s jitter from an id (FNV-1a).
pub(crate) fn seed_of(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// A failure that is neither Stripe's answer nor the fetch's: the message is retried.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message names an event that is not recorded.
    #[error("no recorded thin event {0}")]
    UnknownEvent(String),
    /// The record kept changing under the worker.
    #[error("thin event {0} kept changing concurrently")]
    Contention(String),
}

/// What the queue should do with a fetch message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchDisposition {
    /// Acknowledge: the fetch step is over, and the thin event's record has this outcome.
    Done(EventOutcome),
    /// Leave it for redelivery: Stripe did not answer definitely.
    RetryLater(String),
}

/// How a fetch ended, when Stripe answered definitely or the fetch step gave up.
enum Ended {
    /// The object, retrieved.
    Retrieved { object: Value, step: FetchStep },
    /// A definite answer that is an outcome, not a retry: recorded with its reason.
    Outcome(EventOutcome, String),
    /// No definite answer: counted as an attempt.
    Transient(String),
}

/// Runs fetch steps against Stripe and applies what they retrieve through the webhook pipeline.
pub struct FetchWorker<S, C = SystemClock> {
    webhook: WebhookService<S, C>,
    stripe: StripeClient,
    pacer: Arc<Pacer>,
    metrics: Metrics,
}

impl<S: AccountStore, C: Clock> FetchWorker<S, C> {
    /// A worker that applies through `webhook` (its store, clock and queue for the steps an
    /// applied event plans) and reads from `stripe`, at [`DEFAULT_FETCH_RATE`].
    pub fn new(webhook: WebhookService<S, C>, stripe: StripeClient) -> Self {
        Self {
            webhook,
            stripe,
            pacer: Arc::new(Pacer::per_second(DEFAULT_FETCH_RATE)),
            metrics: Metrics::disabled(),
        }
    }

    /// Paces this worker's reads with `pacer`.
    pub fn with_pacer(mut self, pacer: Arc<Pacer>) -> Self {
        self.pacer = pacer;
        self
    }

    /// Records each run's outcome and each Stripe call's latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.stripe = self.stripe.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// The store this worker reads and writes.
    pub fn store(&self) -> &S {
        self.webhook.store()
    }

    /// The metrics this worker records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn clock(&self) -> &C {
        self.webhook.clock()
    }

    /// Runs one fetch step to its end, or says why it must be retried, and counts the outcome.
    pub async fn run(&self, fetch: &FetchRef) -> Result<FetchDisposition, FetchError> {
        let result = self.run_to_disposition(fetch).await;
        let outcome = match &result {
            Ok(FetchDisposition::Done(outcome)) => outcome.as_str(),
            Ok(FetchDisposition::RetryLater(_)) => "retry_later",
            Err(_) => "error",
        };
        self.metrics.step_finished("fetch", outcome);
        result
    }

    async fn run_to_disposition(&self, fetch: &FetchRef) -> Result<FetchDisposition, FetchError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let record = self
                .store()
                .load_event(&fetch.event_id)
                .await?
                .ok_or_else(|| FetchError::UnknownEvent(fetch.event_id.clone()))?;
            let Some(step) = record.fetch.clone().filter(|_| record.outcome == EventOutcome::FetchQueued)
            else {
                // Already applied, failed or never a fetch: nothing to do twice.
                return Ok(FetchDisposition::Done(record.outcome));
            };
            let sent_at = self.webhook.clock().now_unix();
            let next = match self.retrieve(&record, step.clone()).await {
                Ended::Retrieved { object, step } => {
                    let outcome = self.apply(&record, &step, object, sent_at).await?;
                    finished(&record, step, outcome, None, FetchStatus::Succeeded)
                }
                Ended::Outcome(outcome, reason) => {
                    tracing::info!(outcome = outcome.as_str(), reason, "Stripe's answer ends the fetch");
                    finished(&record, step, outcome, Some(reason), FetchStatus::Succeeded)
                }
                Ended::Transient(reason) if step.attempts + 1 >= MAX_FETCH_ATTEMPTS => {
                    tracing::error!(reason, attempts = step.attempts + 1, "fetch failed for good");
                    let reason = format!("after {MAX_FETCH_ATTEMPTS} attempts: {reason}");
                    finished(&record, step, EventOutcome::FetchFailed, Some(reason), FetchStatus::Failed)
                }
                Ended::Transient(reason) => {
                    let mut next = record.clone();
                    next.reason = Some(reason);
                    next.fetch = Some(FetchStep { attempts: step.attempts + 1, ..step });
                    next
                }
            };
            match self.store().update_fetch(&record, &next).await? {
                CommitOutcome::Committed if next.outcome == EventOutcome::FetchQueued => {
                    return Ok(FetchDisposition::RetryLater(next.reason.unwrap_or_default()));
                }
                CommitOutcome::Committed => return Ok(FetchDisposition::Done(next.outcome)),
                CommitOutcome::Conflict | CommitOutcome::Duplicate => {
                    tracing::debug!("the record moved concurrently; reading it again");
                }
            }
        }
        Err(FetchError::Contention(fetch.event_id.clone()))
    }

    /// Applies the retrieved object as its snapshot twin, under its own record, and returns what
    /// it did. A crash after this and before the thin record is settled repeats the fetch; the
    /// twin's record then makes the second apply a duplicate, and its outcome is read back.
    async fn apply(
        &self,
        record: &EventRecord,
        step: &FetchStep,
        object: Value,
        sent_at: i64,
    ) -> Result<EventOutcome, FetchError> {
        let fetched = fetched_as_snapshot(step, &record.event_type, object);
        let event = Event {
            id: record.event_id.clone(),
            event_type: fetched.event_type,
            created: observed_at(record.created, sent_at),
            livemode: record.livemode,
            api_version: None,
            account: fetched.account.map(String::from),
            object: serde_json::value::to_raw_value(&fetched.object).map_err(|err| {
                StoreError::Corrupt(format!("a fetched object could not be re-encoded: {err}"))
            })?,
            previous_attributes: None,
        };
        let twin_id = format!("{}{FETCHED_SUFFIX}", record.event_id);
        let now = self.webhook.clock().now_unix();
        match self.webhook.apply_fetched(&event, &twin_id, now).await {
            Ok(Delivery::Recorded(outcome)) => Ok(outcome),
            Ok(Delivery::Duplicate) => {
                let twin = self.store().load_event(&twin_id).await?;
                Ok(twin.map_or(EventOutcome::Applied, |twin| twin.outcome))
            }
            Err(crate::webhook::WebhookError::Store(error)) => Err(error.into()),
            Err(error) => {
                Err(StoreError::Corrupt(format!("a fetched object was refused: {}", error.kind())).into())
            }
        }
    }

    /// Retrieves the step's object: paced, with 429s retried after their backoff.
    async fn retrieve(&self, record: &EventRecord, mut step: FetchStep) -> Ended {
        let seed = seed_of(&record.event_id) ^ u64::from(step.attempts);
        let context = step.context.clone();
        if step.target == FetchTarget::V2AccountOfEvent && step.account.is_none() {
            let event = match self
                .paced(seed, || self.stripe.retrieve_v2_event(&record.event_id, context.as_deref()))
                .await
            {
                Ok(event) => event,
                Err(error) => return ended_by(&error, true),
            };
            match event.pointer("/data/account_id").and_then(Value::as_str).and_then(AccountId::parse) {
                Some(account) => step.account = Some(account),
                None => {
                    return Ended::Outcome(
                        EventOutcome::NoAccount,
                        "the event's data names no account".to_owned(),
                    );
                }
            }
        }
        let account = step.account.clone();
        let object_id = step.target.object_id().unwrap_or_default().to_owned();
        let result = match (&step.target, account.as_ref()) {
            (FetchTarget::DeletedPerson { .. } | FetchTarget::DeletedExternalAccount { .. }, _) => {
                Ok(Value::Null)
            }
            (FetchTarget::V2Account | FetchTarget::V2AccountOfEvent, Some(account)) => {
                self.paced(seed, || self.stripe.retrieve_v2_account(account, context.as_deref())).await
            }
            (FetchTarget::Account, Some(account)) => {
                let path = ["accounts", account.as_str()];
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_account", &path, None)).await
            }
            (FetchTarget::Capability { .. }, Some(account)) => {
                let path = ["accounts", account.as_str(), "capabilities", object_id.as_str()];
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_capability", &path, None)).await
            }
            (FetchTarget::Person { .. }, Some(account)) => {
                let path = ["accounts", account.as_str(), "persons", object_id.as_str()];
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_person", &path, None)).await
            }
            (FetchTarget::ExternalAccount { .. }, Some(account)) => {
                let path = ["accounts", account.as_str(), "external_accounts", object_id.as_str()];
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_external_account", &path, None)).await
            }
            (FetchTarget::Payout { .. }, Some(account)) => {
                let path = ["payouts", object_id.as_str()];
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_payout", &path, Some(account))).await
            }
            (FetchTarget::Balance, Some(account)) => {
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_balance", &["balance"], Some(account)))
                    .await
            }
            (FetchTarget::Transfer { .. }, _) => {
                let path = ["transfers", object_id.as_str()];
                self.paced(seed, || self.stripe.retrieve_v1("retrieve_transfer", &path, None)).await
            }
            (_, None) => {
                return Ended::Outcome(EventOutcome::NoAccount, "the event names no account".to_owned());
            }
        };
        let is_account = matches!(
            step.target,
            FetchTarget::V2Account | FetchTarget::V2AccountOfEvent | FetchTarget::Account
        );
        match result {
            Ok(object) => Ended::Retrieved { object, step },
            Err(error) => ended_by(&error, is_account),
        }
    }

    /// One request in its pacing slot, retried after a 429 while the backoff is short enough.
    async fn paced<F, Fut>(&self, seed: u64, call: F) -> Result<Value, StripeError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Value, StripeError>>,
    {
        paced(&self.pacer, seed, call).await
    }
}

/// Runs `call` in its slot on `pacer`, retrying a 429 after its backoff ([`backoff`], Stripe's
/// `Retry-After` honoured) at most [`RATE_LIMIT_RETRIES`] times, and holding every other request on
/// the pacer back meanwhile. `seed` picks the jitter.
pub(crate) async fn paced<T, F, Fut>(pacer: &Pacer, seed: u64, call: F) -> Result<T, StripeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StripeError>>,
{
    let mut retry = 0;
    loop {
        pacer.wait().await;
        match call().await {
            Err(StripeError::RateLimited { retry_after, message }) => {
                let wait = backoff(retry, retry_after, seed);
                if retry >= RATE_LIMIT_RETRIES || wait > MAX_BACKOFF {
                    return Err(StripeError::RateLimited { retry_after, message });
                }
                tracing::info!(wait_ms = wait.as_millis(), "Stripe rate-limited a read; backing off");
                pacer.hold_off(wait).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

/// What a failed read means for the fetch step. Stripe's 404 for an account and its 403 for one
/// no longer connected are outcomes; so is a 404 for any other object, which is gone (its own
/// deletion event says so). Anything else may pass: 429, 5xx, no answer, a refused key.
fn ended_by(error: &StripeError, about_the_account: bool) -> Ended {
    if error.refused_account_access() {
        return Ended::Outcome(
            EventOutcome::NoAccount,
            "Stripe refused access to the account: it is not, or no longer, connected to this platform"
                .to_owned(),
        );
    }
    if error.status() == Some(404) {
        return if about_the_account {
            Ended::Outcome(EventOutcome::NoAccount, "Stripe has no such account: it was deleted".to_owned())
        } else {
            Ended::Outcome(EventOutcome::Stale, "Stripe no longer has the object: it was deleted".to_owned())
        };
    }
    Ended::Transient(error.to_string())
}

/// The thin event's record once its fetch step is over.
fn finished(
    record: &EventRecord,
    step: FetchStep,
    outcome: EventOutcome,
    reason: Option<String>,
    status: FetchStatus,
) -> EventRecord {
    let mut next = record.clone();
    next.outcome = outcome;
    next.reason = reason;
    next.fetch = Some(FetchStep { status, ..step });
    next
}

impl<S: AccountStore, C: Clock> QueueRunner for FetchWorker<S, C> {
    async fn handle_body(&self, body: &str) -> bool {
        let fetch: FetchRef = match serde_json::from_str(body) {
            Ok(fetch) => fetch,
            Err(error) => {
                tracing::warn!(
                    error_kind = ?error.classify(),
                    "message body is not a fetch; left for redelivery and, in the end, the dead-letter queue"
                );
                return false;
            }
        };
        let span = tracing::Span::current();
        span.record("event_id", fetch.event_id.as_str());
        span.record("kind", "fetch");
        match self.run(&fetch).await {
            Ok(FetchDisposition::Done(outcome)) => {
                tracing::info!(outcome = outcome.as_str(), "fetch done; message acknowledged");
                true
            }
            Ok(FetchDisposition::RetryLater(reason)) => {
                tracing::info!(reason, "fetch will be retried");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "fetch not run; will be retried");
                false
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The fetch worker a Lambda function runs, on whichever store its environment names.
struct DeployedFetchWorker {
    stripe: StripeClient,
    pacer: Arc<Pacer>,
    settings: WebhookSettings,
}

impl DeployedFetchWorker {
    /// Reads the Stripe key, the pace and the webhook settings the applied objects go through.
    async fn from_env(aws: &aws_config::SdkConfig) -> Result<Self, StartError> {
        let stripe = stripe_client_from_env(aws).await?;
        let rate = match std::env::var(FETCH_RATE) {
            Ok(rate) => rate.trim().parse().map_err(|_| format!("{FETCH_RATE} is not a whole number"))?,
            Err(_) => DEFAULT_FETCH_RATE,
        };
        let settings = WebhookSettings::without_signatures(|name| std::env::var(name).ok())?;
        Ok(Self { stripe, pacer: Arc::new(Pacer::per_second(rate)), settings })
    }
}

impl Wire for DeployedFetchWorker {
    type Output = Result<(), lambda_runtime::Error>;

    async fn wire<S: AccountStore + Clone>(
        self,
        store: S,
        queue: Option<Arc<dyn StepQueue>>,
    ) -> Self::Output {
        // The steps an applied event plans (payouts after a balance, waiting steps an account can
        // now receive) are queued as the webhook queues them.
        let webhook = WebhookService::new(store, &self.settings).with_queue_if_any(queue);
        serve_queue(
            FetchWorker::new(webhook, self.stripe).with_pacer(self.pacer).with_metrics(Metrics::from_env()),
        )
        .await
    }
}

/// The fetch worker Lambda function's whole life: logs, the worker read from the environment once
/// per cold start, then every batch of the fetch queue before its invocation's deadline.
pub async fn run_fetch_worker_function() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init_lambda_logs();
    let aws = crate::aws::WORKER.load().await;
    let backend = Backend::from_env(&aws)?;
    backend.run(DeployedFetchWorker::from_env(&aws).await?).await
}
