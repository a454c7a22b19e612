//! The webhook pipeline, independent of how the request arrived (Lambda or the local server):
//! verify, parse, decide, one conditional write, answer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::Instrument;

use crate::clock::{Clock, SystemClock};
use crate::config::WebhookSettings;
use crate::domain::account::{AccountDecision, AccountEvent, AccountId, AccountState, NoAccount, decide};
use crate::domain::change::account_changes;
use crate::domain::fetch::{FetchPlan, plan_fetch};
use crate::domain::funds::{DisputePolicy, read_fund_event};
use crate::domain::payout::PayoutSettings;
use crate::domain::step::{Step, StepKind, StepRef, StepStatus};
use crate::metrics::Metrics;
use crate::store::{
    AccountStore, CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite, StepQueue,
    StoreError,
};
use crate::stripe::event::{EnvelopeError, Event, ParsedBody, ThinEvent, parse_event};
use crate::stripe::signature::{SignatureError, SignatureVerifier};

/// The largest body accepted: Stripe's events are far smaller, so anything bigger is refused
/// before it is verified.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

mod funds;
mod ledger;

/// How many times a commit is retried when another writer changed the account in between.
const MAX_CONFLICT_RETRIES: usize = 8;

/// How far ahead of this machine's clock an event may be dated. Stripe's clock and ours agree to
/// well within this; an event dated further ahead would outrank every genuine later one.
pub(crate) const MAX_FUTURE_SKEW_SECS: i64 = 300;

/// Why a delivery was refused. The one place these become HTTP statuses is [`WebhookError::status`].
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    /// The signature header is missing, malformed, wrong or too old.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body is signed but is not an event.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The store could not take the write; Stripe should retry.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WebhookError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::BodyTooLarge => 413,
            Self::Signature(_) | Self::Envelope(_) => 400,
            Self::Store(_) => 500,
        }
    }

    /// The stable, snake_case name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::Signature(error) => error.kind(),
            Self::Envelope(error) => error.kind(),
            Self::Store(_) => "storage_unavailable",
        }
    }
}

/// What happened to an accepted delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// First delivery of this event, recorded with this outcome.
    Recorded(EventOutcome),
    /// The event was already recorded; nothing changed.
    Duplicate,
}

impl Delivery {
    fn as_str(self) -> &'static str {
        match self {
            Self::Recorded(outcome) => outcome.as_str(),
            Self::Duplicate => "duplicate",
        }
    }
}

/// An accepted delivery and the event type it is counted under.
struct Accepted {
    delivery: Delivery,
    event_type: String,
}

/// The `EventType` a thin event without a type is counted under.
const THIN_EVENT_TYPE: &str = "thin_event";

/// The span every line of one delivery is logged in; its fields are filled in as they are learnt.
fn delivery_span() -> tracing::Span {
    tracing::info_span!(
        "delivery",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        account_id = tracing::field::Empty
    )
}

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// A one-line JSON body.
    pub body: String,
}

impl Reply {
    /// The answer for a refused body that was never looked at: too large.
    pub fn body_too_large() -> Self {
        Self::from_error(&WebhookError::BodyTooLarge)
    }

    fn from_error(error: &WebhookError) -> Self {
        let body = json!({ "error": error.kind(), "message": error.to_string() });
        Self { status: error.status(), body: body.to_string() }
    }
}

/// The webhook pipeline over a store.
pub struct WebhookService<S, C = SystemClock> {
    store: S,
    queue: Option<Arc<dyn StepQueue>>,
    verifier: SignatureVerifier,
    expected_livemode: Option<bool>,
    dispute_policy: DisputePolicy,
    payout_settings: PayoutSettings,
    clock: C,
    metrics: Metrics,
    signature_failures: crate::doctor::SignatureFailureCount,
}

impl<S: AccountStore> WebhookService<S> {
    /// A pipeline on the system clock, with metrics as the environment asks ([`Metrics::from_env`]:
    /// on in Lambda, off elsewhere unless `CONNECT_FLOW_METRICS=emf`).
    pub fn new(store: S, settings: &WebhookSettings) -> Self {
        // Checked when the settings were read ([`WebhookSettings::from_lookup`] refuses a bad one).
        let payouts = PayoutSettings::from_env().unwrap_or_default();
        Self::with_clock(store, settings, SystemClock)
            .with_metrics(Metrics::from_env())
            .with_payout_settings(payouts)
    }
}

impl<S: AccountStore, C: Clock> WebhookService<S, C> {
    /// A pipeline on the given clock, without metrics.
    pub fn with_clock(store: S, settings: &WebhookSettings, clock: C) -> Self {
        Self {
            store,
            queue: None,
            verifier: SignatureVerifier::new(&settings.secrets, settings.tolerance_secs),
            expected_livemode: settings.expected_livemode,
            dispute_policy: settings.dispute_policy,
            payout_settings: PayoutSettings::default(),
            clock,
            metrics: Metrics::disabled(),
            signature_failures: Default::default(),
        }
    }

    /// Counts deliveries refused for their signature in `count` too, for `healthz?deep=1`.
    pub fn with_signature_failure_count(mut self, count: crate::doctor::SignatureFailureCount) -> Self {
        self.signature_failures = count;
        self
    }

    /// Records each delivery's metrics in `metrics`, written when the delivery is answered.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Plans payouts by `settings` (the deployment's default payout policy) instead of the
    /// built-in default.
    pub fn with_payout_settings(mut self, settings: PayoutSettings) -> Self {
        self.payout_settings = settings;
        self
    }

    /// Sends planned steps to `queue` once they are committed. Without a queue they stay
    /// queued in the store, for a sweep or a later configuration to send.
    pub fn with_queue(mut self, queue: Arc<dyn StepQueue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// [`Self::with_queue`] when there is a queue (how [`crate::app::Backend`] hands it over).
    pub fn with_queue_if_any(mut self, queue: Option<Arc<dyn StepQueue>>) -> Self {
        self.queue = queue.or(self.queue);
        self
    }

    /// The store this pipeline writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The metrics this pipeline records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The clock this pipeline dates records by.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Handles one delivery and answers it, and writes its metrics. Never panics on input.
    pub async fn handle(&self, signature: Option<&str>, body: &[u8]) -> Reply {
        let span = delivery_span();
        let accepted = self.accept(signature, body).instrument(span.clone()).await;
        let reply = span.in_scope(|| self.answer(accepted));
        self.metrics.flush();
        reply
    }

    /// [`Self::handle`], answered 500 `deadline_exceeded` once `deadline` has passed (the Lambda
    /// function's [`crate::aws::WEBHOOK_DEADLINE`]). Dropping the unfinished delivery is safe: its
    /// write is atomic and conditional, and a delivery that committed but did not finish queueing
    /// is finished by Stripe's retry, which finds the record.
    pub async fn handle_within(&self, deadline: Duration, signature: Option<&str>, body: &[u8]) -> Reply {
        match tokio::time::timeout(deadline, self.handle(signature, body)).await {
            Ok(reply) => reply,
            Err(_) => {
                tracing::error!(
                    deadline_ms = deadline.as_millis(),
                    "webhook deadline passed; Stripe will retry"
                );
                self.metrics.webhook_error("deadline_exceeded");
                self.metrics.flush();
                let body =
                    json!({ "error": "deadline_exceeded", "message": "storage did not answer in time" });
                Reply { status: 500, body: body.to_string() }
            }
        }
    }

    /// Verifies, parses, decides and records one delivery.
    pub async fn process(&self, signature: Option<&str>, body: &[u8]) -> Result<Delivery, WebhookError> {
        let accepted = self.accept(signature, body).instrument(delivery_span()).await;
        accepted.map(|accepted| accepted.delivery)
    }

    /// The one place a delivery's result becomes its log line, its metrics and its answer.
    fn answer(&self, accepted: Result<Accepted, WebhookError>) -> Reply {
        match accepted {
            Ok(Accepted { delivery, event_type }) => {
                tracing::info!(outcome = delivery.as_str(), "event handled");
                self.metrics.event_received(&event_type, delivery.as_str());
                Reply {
                    status: 200,
                    body: json!({ "received": true, "outcome": delivery.as_str() }).to_string(),
                }
            }
            Err(error) => {
                match &error {
                    WebhookError::Store(store_error) => {
                        tracing::error!(error = %store_error, "event not stored; Stripe will retry");
                    }
                    other => tracing::warn!(reason = other.kind(), "webhook refused"),
                }
                match &error {
                    WebhookError::Signature(_) => {
                        self.metrics.signature_failure(error.kind());
                        self.signature_failures.record();
                    }
                    _ => self.metrics.webhook_error(error.kind()),
                }
                Reply::from_error(&error)
            }
        }
    }

    /// [`WebhookService::process`], naming the event in the current span as soon as it is read.
    async fn accept(&self, signature: Option<&str>, body: &[u8]) -> Result<Accepted, WebhookError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(WebhookError::BodyTooLarge);
        }
        let now = self.clock.now_unix();
        self.verifier.verify(signature, body, now)?;
        self.accept_verified(body, now).await
    }

    /// Records an event whose authenticity was established some other way than a signature:
    /// delivered through the stack's own EventBridge rule, which matches only the Stripe partner
    /// source (see [`crate::eventbridge`]). Everything after the signature check is the same.
    pub async fn process_unsigned(&self, body: &[u8]) -> Result<Delivery, WebhookError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(WebhookError::BodyTooLarge);
        }
        let now = self.clock.now_unix();
        let span = delivery_span();
        let accepted = self.accept_verified(body, now).instrument(span.clone()).await;
        span.in_scope(|| match &accepted {
            Ok(Accepted { delivery, event_type }) => {
                tracing::info!(outcome = delivery.as_str(), "event handled");
                self.metrics.event_received(event_type, delivery.as_str());
            }
            Err(error) => self.metrics.webhook_error(error.kind()),
        });
        self.metrics.flush();
        accepted.map(|accepted| accepted.delivery)
    }

    /// Records a listed snapshot event without deciding anything from it, as unhandled with
    /// `reason`: what the reconciler does with an event rendered in an API version the parsers do
    /// not read, rather than guess at its fields. A thin event carries no API version of its own,
    /// so it is processed as a delivery.
    pub(crate) async fn record_unread(&self, body: &[u8], reason: String) -> Result<Delivery, WebhookError> {
        let now = self.clock.now_unix();
        let ParsedBody::Snapshot(event) = parse_event(body)? else {
            return self.process_unsigned(body).await;
        };
        let mut record = snapshot_record(&event, &event.id, now);
        record.reason = Some(reason);
        self.commit_record(&record).await
    }

    async fn accept_verified(&self, body: &[u8], now: i64) -> Result<Accepted, WebhookError> {
        let span = tracing::Span::current();
        let event = match parse_event(body)? {
            ParsedBody::Snapshot(event) => event,
            ParsedBody::Thin(thin) => {
                span.record("event_id", thin.id.as_str());
                let event_type = thin.event_type.clone().unwrap_or_else(|| THIN_EVENT_TYPE.to_owned());
                span.record("event_type", event_type.as_str());
                let delivery = self.record_thin(&thin, now).await?;
                return Ok(Accepted { delivery, event_type });
            }
        };
        span.record("event_id", event.id.as_str());
        span.record("event_type", event.event_type.as_str());
        if let Some(account) = &event.account {
            span.record("account_id", account.as_str());
        }
        let delivery = self.record_snapshot(&event, now).await?;
        Ok(Accepted { delivery, event_type: event.event_type })
    }

    /// Records a thin event with its fetch step, in one write, and queues the fetch. Stripe is
    /// never called from here: the fetch worker retrieves the object.
    async fn record_thin(&self, thin: &ThinEvent, now: i64) -> Result<Delivery, WebhookError> {
        let mut record = EventRecord {
            event_id: thin.id.clone(),
            event_type: thin.event_type.clone().unwrap_or_default(),
            account_id: thin.context.clone(),
            created: thin.created,
            livemode: thin.livemode,
            outcome: EventOutcome::Unhandled,
            reason: None,
            received_at: now,
            expires_at: now + DEDUPE_RETENTION_SECS,
            fetch: None,
        };
        if let Some(refusal) = self.refusal(&record, now) {
            record.outcome = refusal.0;
            record.reason = refusal.1;
            return self.commit_record(&record).await;
        }
        match plan_fetch(thin) {
            FetchPlan::Fetch(step) => {
                if let Some(account) = &step.account {
                    tracing::Span::current().record("account_id", account.as_str());
                    record.account_id = Some(account.to_string());
                }
                record.outcome = EventOutcome::FetchQueued;
                record.fetch = Some(step);
            }
            FetchPlan::NoAccount => record.outcome = EventOutcome::NoAccount,
            FetchPlan::Unhandled => {}
        }
        let delivery = self.commit_record(&record).await?;
        let queued = match delivery {
            Delivery::Recorded(EventOutcome::FetchQueued) => Some(record),
            // The first delivery may have committed and then failed to queue (and answered 500):
            // Stripe's retry queues the fetch again while it is still queued.
            Delivery::Duplicate => self
                .store
                .load_event(&thin.id)
                .await?
                .filter(|stored| stored.outcome == EventOutcome::FetchQueued),
            Delivery::Recorded(_) => None,
        };
        if let Some(fetch) =
            queued.as_ref().and_then(|record| Some(record.fetch.as_ref()?.reference(&record.event_id)))
        {
            match &self.queue {
                Some(queue) => queue.send_fetches(std::slice::from_ref(&fetch)).await?,
                None => tracing::warn!("no queue: the fetch step stays queued in the store"),
            }
        }
        Ok(delivery)
    }

    /// Why an event is recorded without being applied: its livemode is not the deployment's, or
    /// it is dated too far ahead of this clock.
    fn refusal(&self, record: &EventRecord, now: i64) -> Option<(EventOutcome, Option<String>)> {
        if let (Some(expected), Some(actual)) = (self.expected_livemode, record.livemode)
            && expected != actual
        {
            return Some((EventOutcome::LivemodeMismatch, None));
        }
        let created = record.created?;
        if created > now.saturating_add(MAX_FUTURE_SKEW_SECS) {
            let reason = format!(
                "the event is dated {} s ahead of this clock, more than the {MAX_FUTURE_SKEW_SECS} s allowed",
                created - now
            );
            tracing::warn!(reason, "event refused");
            return Some((EventOutcome::Refused, Some(reason)));
        }
        None
    }

    async fn record_snapshot(&self, event: &Event, now: i64) -> Result<Delivery, WebhookError> {
        self.record_with_ledger(event, &event.id, now).await
    }

    /// Applies an object a thin event's fetch step retrieved, as its snapshot twin `event`,
    /// recorded under `record_id` (not the thin event's own id, whose record holds the fetch
    /// step). Queues what it plans, as a delivery would.
    pub(crate) async fn apply_fetched(
        &self,
        event: &Event,
        record_id: &str,
        now: i64,
    ) -> Result<Delivery, WebhookError> {
        let span = delivery_span();
        span.record("event_id", event.id.as_str());
        span.record("event_type", event.event_type.as_str());
        self.record_with_ledger(event, record_id, now).instrument(span).await
    }

    /// Records `event` under `record_id` and applies it: the one path every snapshot takes (through
    /// [`Self::record_with_ledger`]). An event that touches neither funds nor an account is
    /// recorded with `ledger_outcome` when the ledger has one for it, else as unhandled.
    async fn record_event(
        &self,
        event: &Event,
        record_id: &str,
        now: i64,
        ledger_outcome: Option<EventOutcome>,
    ) -> Result<Delivery, WebhookError> {
        let mut record = snapshot_record(event, record_id, now);
        if let Some(refusal) = self.refusal(&record, now) {
            record.outcome = refusal.0;
            record.reason = refusal.1;
            return self.commit_record(&record).await;
        }
        if let Some(fund_event) = read_fund_event(event) {
            return self.record_fund_event(record, &fund_event, event, now).await;
        }
        let account_event = match AccountEvent::from_event(event) {
            Ok(Some(account_event)) => account_event,
            Ok(None) => {
                record.outcome = ledger_outcome.unwrap_or(EventOutcome::Unhandled);
                return self.commit_record(&record).await;
            }
            Err(NoAccount) => {
                record.outcome = EventOutcome::NoAccount;
                return self.commit_record(&record).await;
            }
        };
        tracing::Span::current().record("account_id", account_event.account_id.as_str());
        record.account_id = Some(account_event.account_id.to_string());
        for _ in 0..MAX_CONFLICT_RETRIES {
            let current = self.store.load_account(&account_event.account_id).await?;
            let decision = decide(&account_event, current.as_ref());
            let next = match decision {
                AccountDecision::Apply(mut next) => {
                    next.version = current.as_ref().map_or(0, |state| state.version) + 1;
                    record.outcome = EventOutcome::Applied;
                    Some(next)
                }
                AccountDecision::Stale => {
                    record.outcome = EventOutcome::Stale;
                    None
                }
                AccountDecision::Unreadable => {
                    record.outcome = EventOutcome::Unreadable;
                    None
                }
            };
            let changes =
                next.as_deref().map(|next| account_changes(current.as_ref(), next, now)).unwrap_or_default();
            let write =
                EventWrite { changes: &changes, ..EventWrite::with_account(&record, next.as_deref()) };
            // A stale or unreadable event needs no version check: guards only move forward, so
            // what was stale against this read is stale against any later one.
            match self.store.commit(&write).await? {
                CommitOutcome::Committed => {
                    if let Some(next) = &next
                        && became_able_to_receive(current.as_ref(), next)
                    {
                        self.resend_waiting_steps(&account_event.account_id).await?;
                    }
                    return Ok(Delivery::Recorded(record.outcome));
                }
                CommitOutcome::Duplicate => return Ok(Delivery::Duplicate),
                CommitOutcome::Conflict => tracing::debug!("account changed concurrently; deciding again"),
            }
        }
        Err(StoreError::Unavailable("the account kept changing concurrently".into()).into())
    }

    /// Steps that waited for this account to be able to receive go back on the queue. The
    /// account is committed first, so a send that fails answers 500 and Stripe's retry (a
    /// duplicate) is the only thing lost; the steps stay waiting for the next change or a sweep.
    async fn resend_waiting_steps(&self, account_id: &AccountId) -> Result<(), StoreError> {
        let Some(queue) = &self.queue else { return Ok(()) };
        let waiting: Vec<StepRef> = self
            .store
            .load_account_steps(account_id)
            .await?
            .iter()
            .filter(|step| step.status == StepStatus::Waiting)
            .map(Step::reference)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        tracing::info!(steps = waiting.len(), "account can receive now; re-queueing its waiting steps");
        self.enqueue(queue.as_ref(), &waiting).await
    }

    /// Sends steps to the queue and counts them, by kind, once the queue has taken them.
    async fn enqueue(&self, queue: &dyn StepQueue, steps: &[StepRef]) -> Result<(), StoreError> {
        queue.send(steps).await?;
        for kind in [StepKind::Transfer, StepKind::Reversal, StepKind::Payout] {
            let count = steps.iter().filter(|step| step.kind == kind).count();
            if count > 0 {
                self.metrics.steps_queued(kind.as_str(), count);
            }
        }
        Ok(())
    }

    async fn commit_record(&self, record: &EventRecord) -> Result<Delivery, WebhookError> {
        Ok(match self.store.commit(&EventWrite::record_only(record)).await? {
            CommitOutcome::Duplicate => Delivery::Duplicate,
            CommitOutcome::Committed | CommitOutcome::Conflict => Delivery::Recorded(record.outcome),
        })
    }
}

/// A snapshot event's record under `record_id`, before anything is decided.
fn snapshot_record(event: &Event, record_id: &str, now: i64) -> EventRecord {
    EventRecord {
        event_id: record_id.to_owned(),
        event_type: event.event_type.clone(),
        account_id: event.account.clone(),
        created: Some(event.created),
        livemode: event.livemode,
        outcome: EventOutcome::Unhandled,
        reason: None,
        received_at: now,
        expires_at: now + DEDUPE_RETENTION_SECS,
        fetch: None,
    }
}

/// Whether this change made the account able to receive a transfer or a payout it could not before
/// (a capability, payouts, or the platform's authorization came back).
fn became_able_to_receive(before: Option<&AccountState>, after: &AccountState) -> bool {
    let transfers_active = AccountState::can_receive_transfers;
    let payouts_enabled = AccountState::can_receive_payouts;
    (transfers_active(after) && !before.is_some_and(transfers_active))
        || (payouts_enabled(after) && !before.is_some_and(payouts_enabled))
}
