//! EventBridge intake: Stripe events from the partner bus, through SQS, into the webhook pipeline.
//!
//! Stripe can deliver snapshot and thin events to an Amazon EventBridge partner event source. The
//! stack's rule matches exactly that source and sends each event, wrapped in EventBridge's
//! envelope, to an SQS queue; this function reads the queue. Nothing is signed on this path: IAM
//! (only EventBridge may send to the queue) and the exact-source rule are the trust, so the
//! envelope's `source` is checked again here, in case the queue is ever fed by anything else.
//!
//! Each message is read on its own ([`read_envelope`]). One that is refused goes, unchanged, to
//! the intake dead-letter queue with its reason and is acknowledged: no retry can make it an
//! event. An accepted one runs through [`WebhookService::process_unsigned`]; if storage is
//! unavailable it is handed back for redelivery, and the event's dedupe record makes a
//! redelivery harmless.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::MessageAttributeValue;
use lambda_runtime::LambdaEvent;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::app::{Backend, Wire};
use crate::aws::{WEBHOOK, WEBHOOK_DEADLINE};
use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, WebhookSettings};
use crate::metrics::Metrics;
use crate::sqs_worker::{QueueRunner, handle_sqs_batch_by, invocation_deadline};
use crate::store::sqs;
use crate::store::{AccountStore, BoxFuture, StepQueue, StoreError};
use crate::stripe::event::is_plausible_id;
use crate::webhook::WebhookService;

/// The EventBridge `source` the intake accepts: the Stripe partner event source's name.
pub const EVENTBRIDGE_SOURCE: &str = "CONNECT_FLOW_EVENTBRIDGE_SOURCE";
/// The URL of the SQS queue refused messages are sent to.
pub const INTAKE_DLQ_URL: &str = "CONNECT_FLOW_INTAKE_DLQ_URL";
/// How every Stripe partner event source's name starts (the rest is the event destination's id).
pub(crate) const STRIPE_PARTNER_SOURCE_PREFIX: &str = "aws.partner/stripe.com/";
/// The message attribute that carries a dead-lettered message's [`IntakeRefusal::kind`].
pub const REASON_ATTRIBUTE: &str = "reason";
/// The longest one message is worked on: the webhook's deadline, since it is the webhook's work
/// ([`crate::aws`] shows that an account event's calls fit inside it). Dropping an unfinished
/// message is safe for the same reason as there: its write is atomic and conditional.
pub(crate) const MESSAGE_DEADLINE: Duration = WEBHOOK_DEADLINE;
/// The longest one message takes at worst: its deadline, then one dead-letter send.
pub(crate) const MESSAGE_WORST_CASE: Duration = MESSAGE_DEADLINE.saturating_add(WEBHOOK.operation_timeout);

/// Why a message was not taken as a Stripe event. `kind()` is the stable name logged and put on
/// the dead-lettered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntakeRefusal {
    /// The message body is not JSON.
    #[error("the message body is not JSON")]
    NotJson,
    /// The body is JSON but not an EventBridge event: not an object with string `source` and
    /// `detail-type`.
    #[error("the message body is not an EventBridge event")]
    NotAnEventBridgeEvent,
    /// The event's `source` is not exactly the configured Stripe partner event source.
    #[error("the event's source is not the configured Stripe partner event source")]
    ForeignSource,
    /// The event's `detail` is not a Stripe event (an object, or a string holding one, whose
    /// `object` is `event` or `v2.core.event` and whose `id` is a string), or the pipeline found
    /// it is not one after all.
    #[error("the event's detail is not a Stripe event")]
    DetailNotAStripeEvent,
}

impl IntakeRefusal {
    /// The stable, snake_case name of this refusal.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotJson => "not_json",
            Self::NotAnEventBridgeEvent => "not_an_eventbridge_event",
            Self::ForeignSource => "foreign_source",
            Self::DetailNotAStripeEvent => "detail_not_a_stripe_event",
        }
    }
}

/// The envelope fields the intake reads; every other field is ignored.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "detail-type")]
    detail_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    detail: Option<&'a RawValue>,
}

/// The fields that make a detail a Stripe event.
#[derive(Deserialize)]
struct RawStripeEvent<'a> {
    #[serde(borrow, default)]
    object: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// JSON text whose first character opens an object. Checked before deserializing a struct,
/// because serde also fills a struct from an array, field by field in order.
fn is_json_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

/// Reads one SQS message body holding an EventBridge event from `expected_source`, and returns
/// the Stripe event in its `detail`, as bytes for [`WebhookService::process_unsigned`].
pub fn read_envelope(body: &str, expected_source: &str) -> Result<Vec<u8>, IntakeRefusal> {
    read_detail(body, expected_source).map(|detail| detail.bytes)
}

/// A Stripe event read from an envelope: its bytes, and its id for the logs.
struct Detail {
    bytes: Vec<u8>,
    event_id: String,
}

/// [`read_envelope`], keeping the event's id.
fn read_detail(body: &str, expected_source: &str) -> Result<Detail, IntakeRefusal> {
    // The whole body must be JSON before any of it is read: a truncated body is not an event.
    let whole: &RawValue = serde_json::from_str(body).map_err(|_| IntakeRefusal::NotJson)?;
    if !is_json_object(whole.get()) {
        return Err(IntakeRefusal::NotAnEventBridgeEvent);
    }
    // Only a wrongly typed or duplicated field can fail here; a duplicated `source` is refused
    // rather than resolved, so that no reader of the body can see another source than this one.
    let envelope: RawEnvelope<'_> =
        serde_json::from_str(whole.get()).map_err(|_| IntakeRefusal::NotAnEventBridgeEvent)?;
    let (Some(source), Some(_)) = (&envelope.source, &envelope.detail_type) else {
        return Err(IntakeRefusal::NotAnEventBridgeEvent);
    };
    if source.as_ref() != expected_source {
        return Err(IntakeRefusal::ForeignSource);
    }
    let detail = envelope.detail.ok_or(IntakeRefusal::DetailNotAStripeEvent)?;
    stripe_event(detail)
}

/// The Stripe event `detail` holds, as an object or (from pipes that stringify it) as a string.
fn stripe_event(detail: &RawValue) -> Result<Detail, IntakeRefusal> {
    let text = detail.get();
    let event: Cow<'_, str> = if text.starts_with('"') {
        Cow::Owned(serde_json::from_str::<String>(text).map_err(|_| IntakeRefusal::DetailNotAStripeEvent)?)
    } else {
        Cow::Borrowed(text)
    };
    if !is_json_object(&event) {
        return Err(IntakeRefusal::DetailNotAStripeEvent);
    }
    let raw: RawStripeEvent<'_> =
        serde_json::from_str(&event).map_err(|_| IntakeRefusal::DetailNotAStripeEvent)?;
    let is_event = matches!(raw.object.as_deref(), Some("event" | "v2.core.event"));
    let (true, Some(event_id)) = (is_event, raw.id) else {
        return Err(IntakeRefusal::DetailNotAStripeEvent);
    };
    let event_id = event_id.into_owned();
    Ok(Detail { bytes: event.into_owned().into_bytes(), event_id })
}

/// What the intake needs from the environment, read once per cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeSettings {
    /// The only EventBridge `source` accepted.
    pub source: String,
    /// Where refused messages go.
    pub dead_letter_url: String,
    /// The only livemode accepted, or `None` for both (as [`WebhookSettings::expected_livemode`]).
    pub expected_livemode: Option<bool>,
    /// The dispute policy (as [`WebhookSettings::dispute_policy`]).
    pub dispute_policy: crate::domain::funds::DisputePolicy,
}

impl IntakeSettings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, so that tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let source = set(EVENTBRIDGE_SOURCE).ok_or(ConfigError::Missing(EVENTBRIDGE_SOURCE))?;
        // Anything else is a misconfiguration that would accept no Stripe event, or worse, the
        // stack's own `connect-flow` events.
        if source.len() <= STRIPE_PARTNER_SOURCE_PREFIX.len()
            || !source.starts_with(STRIPE_PARTNER_SOURCE_PREFIX)
        {
            return Err(ConfigError::Invalid {
                name: EVENTBRIDGE_SOURCE,
                reason: "expected a Stripe partner event source, aws.partner/stripe.com/…",
            });
        }
        let dead_letter_url = set(INTAKE_DLQ_URL).ok_or(ConfigError::Missing(INTAKE_DLQ_URL))?;
        // The same values as the webhook's, read the same way: one deployment, one livemode.
        let webhook = WebhookSettings::without_signatures(&lookup)?;
        Ok(Self {
            source,
            dead_letter_url,
            expected_livemode: webhook.expected_livemode,
            dispute_policy: webhook.dispute_policy,
        })
    }

    /// The pipeline's settings: no signing secrets, since nothing on this path is signed and
    /// [`WebhookService::process_unsigned`] never consults the verifier (which, with no secrets,
    /// refuses every signature, so a signed path mistakenly given these settings accepts nothing).
    pub fn webhook_settings(&self) -> WebhookSettings {
        WebhookSettings {
            dispute_policy: self.dispute_policy,
            ..WebhookSettings::unsigned(self.expected_livemode)
        }
    }
}

/// Where refused messages go, so that none is lost and someone can look at it.
pub trait DeadLetters: Send + Sync + 'static {
    /// Sends `body`, unchanged, with the refusal's `reason` kind.
    fn send<'a>(&'a self, body: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl<D: DeadLetters + ?Sized> DeadLetters for Arc<D> {
    fn send<'a>(&'a self, body: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).send(body, reason)
    }
}

/// [`DeadLetters`] on an SQS queue, standard or FIFO.
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    client: aws_sdk_sqs::Client,
    url: String,
    fifo: bool,
}

impl SqsDeadLetters {
    /// Dead letters sent to the queue at `url`, which must exist; a `.fifo` URL is a FIFO queue.
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        let url = url.into();
        let fifo = url.ends_with(".fifo");
        Self { client, url, fifo }
    }
}

impl DeadLetters for SqsDeadLetters {
    fn send<'a>(&'a self, body: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let attribute =
                MessageAttributeValue::builder().data_type("String").string_value(reason).build().map_err(
                    |err| StoreError::Unavailable(format!("could not build an SQS request: {err}")),
                )?;
            let mut request = self
                .client
                .send_message()
                .queue_url(&self.url)
                .message_body(body)
                .message_attributes(REASON_ATTRIBUTE, attribute);
            if self.fifo {
                // Order means nothing to whoever reads refusals, so one group per reason; the
                // body's hash deduplicates a refusal sent again after a redelivery.
                request = request
                    .message_group_id(reason)
                    .message_deduplication_id(hex::encode(Sha256::digest(body.as_bytes())));
            }
            request.send().await.map(|_| ()).map_err(|err| {
                StoreError::Unavailable(format!(
                    "SQS SendMessage to the intake dead-letter queue: {}",
                    sqs::sdk_failure(&err)
                ))
            })
        })
    }
}

/// The intake: the webhook pipeline, where refusals go, and the one source accepted.
pub struct EventBridgeIntake<S, D, C = SystemClock> {
    webhook: WebhookService<S, C>,
    dead_letters: D,
    source: String,
}

impl<S: AccountStore, D: DeadLetters, C: Clock> EventBridgeIntake<S, D, C> {
    /// An intake that accepts events from `source` only, records them through `webhook`, and
    /// sends refused messages to `dead_letters`.
    pub fn new(webhook: WebhookService<S, C>, dead_letters: D, source: impl Into<String>) -> Self {
        Self { webhook, dead_letters, source: source.into() }
    }

    /// The pipeline events are recorded through.
    pub fn webhook(&self) -> &WebhookService<S, C> {
        &self.webhook
    }

    /// Runs one batch before the invocation's `deadline`; see [`Self::handle_by`].
    pub(crate) async fn handle_invocation(&self, event: SqsEvent, deadline: SystemTime) -> SqsBatchResponse {
        self.handle_by(event, invocation_deadline(deadline)).await
    }

    /// Runs one batch with no deadline.
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_by(event, None).await
    }

    /// Runs every message of `event` in order and reports those to be redelivered: an event not
    /// stored because storage is unavailable, a refusal the dead-letter queue did not take, a
    /// message without a body, and any later message of a failed FIFO group. No message starts
    /// once less than [`MESSAGE_WORST_CASE`] is left before `deadline`: those are handed back, so
    /// that the invocation never times out, which would count a receive against all of them.
    pub(crate) async fn handle_by(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        handle_sqs_batch_by(self, event, deadline).await
    }
}

impl<S: AccountStore, D: DeadLetters, C: Clock> QueueRunner for EventBridgeIntake<S, D, C> {
    async fn handle_body(&self, body: &str) -> bool {
        self.handle_record(body).await
    }

    fn metrics(&self) -> &Metrics {
        self.webhook.metrics()
    }

    fn worst_case(&self) -> Duration {
        MESSAGE_WORST_CASE
    }
}

impl<S: AccountStore, D: DeadLetters, C: Clock> EventBridgeIntake<S, D, C> {
    /// Handles one message body; `true` when the message may be deleted.
    async fn handle_record(&self, body: &str) -> bool {
        let detail = match read_detail(body, &self.source) {
            Ok(detail) => detail,
            Err(refusal) => return self.dead_letter(body, refusal, None).await,
        };
        // Named here as well as in the pipeline's span, so that every line of this message,
        // its outcome's included, carries it; an implausible id is the pipeline's to refuse.
        if is_plausible_id(&detail.event_id) {
            tracing::Span::current().record("event_id", detail.event_id.as_str());
        }
        match tokio::time::timeout(MESSAGE_DEADLINE, self.webhook.process_unsigned(&detail.bytes)).await {
            Ok(Ok(_delivery)) => true,
            Ok(Err(error)) if error.status() >= 500 => {
                tracing::error!(%error, "event not stored; left for redelivery");
                false
            }
            // The detail looked like an event but the pipeline's parser disagreed: no retry can
            // change that. Its kind, not its message, is logged, as serde may quote the input.
            Ok(Err(error)) => {
                self.dead_letter(body, IntakeRefusal::DetailNotAStripeEvent, Some(error.kind())).await
            }
            Err(_) => {
                tracing::error!(
                    deadline_ms = MESSAGE_DEADLINE.as_millis(),
                    "storage did not answer in time; left for redelivery"
                );
                false
            }
        }
    }

    /// Sends a refused message to the dead-letter queue; `true` once it is there, so that the
    /// message is acknowledged only when it cannot be lost.
    async fn dead_letter(
        &self,
        body: &str,
        refusal: IntakeRefusal,
        pipeline_error: Option<&'static str>,
    ) -> bool {
        let reason = refusal.kind();
        match self.dead_letters.send(body, reason).await {
            Ok(()) => {
                tracing::warn!(
                    reason,
                    pipeline_error,
                    "message refused; sent to the intake dead-letter queue"
                );
                true
            }
            Err(error) => {
                tracing::error!(
                    reason,
                    pipeline_error,
                    %error,
                    "message refused, but the intake dead-letter queue did not take it; left for redelivery"
                );
                false
            }
        }
    }
}

/// The EventBridge intake Lambda function's whole life: logs, the settings and the store read
/// once per cold start, then every batch the runtime hands over, each before its deadline.
///
/// Boxed because the future nests the runtime's, the pipeline's and the AWS SDK's for both
/// stores, too deep for the compiler to lay out inside the binary's `main` otherwise; `main`
/// blocks on it, so it need not be `Send`.
pub fn run_eventbridge_intake_function() -> Pin<Box<dyn Future<Output = Result<(), lambda_runtime::Error>>>> {
    Box::pin(run())
}

/// [`run_eventbridge_intake_function`], unboxed.
async fn run() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init_lambda_logs();
    let settings = IntakeSettings::from_env()?;
    // The webhook's bounds, because each message is the webhook's work under the webhook's
    // deadline ([`MESSAGE_DEADLINE`]): under the workers' 5 s per call, one slow call would use
    // the whole deadline, where the webhook's let a retry or a second call fit inside it.
    let aws = WEBHOOK.load().await;
    let backend = Backend::from_env(&aws)?;
    let dead_letters = SqsDeadLetters::new(aws_sdk_sqs::Client::new(&aws), settings.dead_letter_url.clone());
    let webhook_settings = settings.webhook_settings();
    tracing::info!(source = settings.source.as_str(), "accepting events from this EventBridge source only");
    backend.run(Intake { settings: webhook_settings, dead_letters, source: settings.source }).await
}

/// The intake on whichever store the environment named.
struct Intake {
    settings: WebhookSettings,
    dead_letters: SqsDeadLetters,
    source: String,
}

impl Wire for Intake {
    type Output = Result<(), lambda_runtime::Error>;

    async fn wire<S: AccountStore + Clone>(
        self,
        store: S,
        queue: Option<Arc<dyn StepQueue>>,
    ) -> Self::Output {
        let service = WebhookService::new(store, &self.settings).with_queue_if_any(queue);
        serve(EventBridgeIntake::new(service, self.dead_letters, self.source)).await
    }
}

/// Hands every batch the runtime delivers to `intake`.
async fn serve<S: AccountStore, D: DeadLetters>(
    intake: EventBridgeIntake<S, D>,
) -> Result<(), lambda_runtime::Error> {
    let intake = Arc::new(intake);
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let intake = Arc::clone(&intake);
        async move {
            Ok::<_, lambda_runtime::Error>(
                intake.handle_invocation(event.payload, event.context.deadline()).await,
            )
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::config::LIVEMODE;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::FixedClock;
    use crate::domain::account::{AccountId, OnboardingStatus};
    use crate::store::EventOutcome;
    use crate::store::sqlite::SqliteStore;

    const SOURCE: &str = "aws.partner/stripe.com/ed_test_connectflow";
    const NOW: i64 = 1_750_000_000;

    fn envelope(source: &str, detail: Value) -> String {
        json!({"version": "0", "id": "2f5b0a8e-3c1d-4e7f-9a6b-0d1c2e3f4a5b", "detail-type": "account.updated",
            "source": source, "account": "123456789012", "time": "2025-06-15T15:06:40Z",
            "region": "us-east-1", "resources": [], "detail": detail})
        .to_string()
    }

    fn account_updated(id: &str, account: &str) -> Value {
        json!({"id": id, "object": "event", "type": "account.updated", "created": NOW - 60,
            "livemode": false, "api_version": "2024-06-20", "account": account,
            "data": {"object": {"id": account, "object": "account", "details_submitted": true,
                "charges_enabled": true, "payouts_enabled": true,
                "requirements": {"currently_due": [], "eventually_due": [], "past_due": [],
                    "pending_verification": [], "disabled_reason": null, "current_deadline": null},
                "capabilities": {"transfers": "active"}}}})
    }

    fn thin() -> Value {
        json!({"id": "evt_test_65RThin0001", "object": "v2.core.event", "type": "v2.core.account.updated",
            "livemode": false, "created": "2025-06-15T15:06:40.000Z",
            "related_object": {"id": "acct_1Thin", "type": "v2.core.account", "url": "/v2/core/accounts/acct_1Thin"}})
    }

    fn refusal(body: &str) -> Option<&'static str> {
        read_envelope(body, SOURCE).err().map(|refusal| refusal.kind())
    }

    #[test]
    fn an_object_detail_is_returned_byte_for_byte() {
        let detail =
            r#"{"id":"evt_1","object":"event","type":"account.updated","data":{"object":{"é":"\u00e9"}}}"#;
        let body = format!(r#"{{"detail-type":"account.updated","source":"{SOURCE}","detail":{detail}}}"#);
        assert_eq!(read_envelope(&body, SOURCE).unwrap(), detail.as_bytes());
        let thin = thin();
        let read: Value =
            serde_json::from_slice(&read_envelope(&envelope(SOURCE, thin.clone()), SOURCE).unwrap()).unwrap();
        assert_eq!(read, thin);
    }

    #[test]
    fn a_stringified_detail_is_unwrapped() {
        let event = account_updated("evt_1", "acct_1");
        let body = envelope(SOURCE, json!(event.to_string()));
        let read: Value = serde_json::from_slice(&read_envelope(&body, SOURCE).unwrap()).unwrap();
        assert_eq!(read, event);
    }

    #[test]
    fn a_body_that_is_not_json_is_refused_as_such() {
        for body in ["", "not json", "{\"source\":", "{} trailing", "\u{feff}{}"] {
            assert_eq!(refusal(body), Some("not_json"), "{body:?}");
        }
    }

    #[test]
    fn json_that_is_not_an_eventbridge_event_is_refused_as_such() {
        let event = account_updated("evt_1", "acct_1");
        let bodies = [
            "[]".to_owned(),
            "\"a string\"".to_owned(),
            "null".to_owned(),
            "{}".to_owned(),
            // A Stripe event straight on the queue, not wrapped by EventBridge.
            event.to_string(),
            json!({"source": SOURCE, "detail": event}).to_string(),
            json!({"detail-type": "account.updated", "detail": event}).to_string(),
            json!({"source": 7, "detail-type": "account.updated", "detail": event}).to_string(),
            json!({"source": SOURCE, "detail-type": null, "detail": event}).to_string(),
            // An array would fill the envelope's fields in order if it were read as one.
            json!([SOURCE, "account.updated", event]).to_string(),
            // Two sources: whichever a reader took, another might take the other.
            format!(r#"{{"source":"{SOURCE}","source":"{SOURCE}","detail-type":"x","detail":{event}}}"#),
        ];
        for body in bodies {
            assert_eq!(refusal(&body), Some("not_an_eventbridge_event"), "{body}");
        }
    }

    #[test]
    fn only_the_configured_source_is_accepted() {
        let event = account_updated("evt_1", "acct_1");
        for source in [
            "aws.partner/stripe.com/ed_test_other",
            "aws.partner/stripe.com/ed_test_connectflow2",
            "aws.partner/stripe.com/ed_test_connectflo",
            "AWS.PARTNER/STRIPE.COM/ED_TEST_CONNECTFLOW",
            " aws.partner/stripe.com/ed_test_connectflow",
            "connect-flow",
            "",
        ] {
            assert_eq!(refusal(&envelope(source, event.clone())), Some("foreign_source"), "{source:?}");
        }
        // An escaped source is the same string once decoded.
        let escaped = envelope(SOURCE, event).replace("stripe.com", "stripe\\u002ecom");
        assert!(read_envelope(&escaped, SOURCE).is_ok());
    }

    #[test]
    fn a_detail_that_is_not_a_stripe_event_is_refused_as_such() {
        let mut no_id = account_updated("evt_1", "acct_1");
        no_id.as_object_mut().unwrap().remove("id");
        let details = [
            Value::Null,
            json!(7),
            json!([]),
            json!({}),
            json!(["event", "evt_1"]),
            json!({"id": "acct_1", "object": "account", "charges_enabled": true}),
            json!({"id": 7, "object": "event"}),
            json!({"id": "evt_1", "object": "v1.event"}),
            json!({"id": "evt_1"}),
            no_id,
            json!("not json"),
            json!("[\"event\",\"evt_1\"]"),
            json!(json!({"id": "acct_1", "object": "account"}).to_string()),
            json!(json!(account_updated("evt_1", "acct_1").to_string()).to_string()),
        ];
        for detail in details {
            assert_eq!(
                refusal(&envelope(SOURCE, detail.clone())),
                Some("detail_not_a_stripe_event"),
                "{detail}"
            );
        }
        let missing = json!({"source": SOURCE, "detail-type": "account.updated"}).to_string();
        assert_eq!(refusal(&missing), Some("detail_not_a_stripe_event"));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in any::<String>()) {
            let _ = read_envelope(&body, SOURCE);
        }

        #[test]
        fn arbitrary_bytes_read_as_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_envelope(&String::from_utf8_lossy(&bytes), SOURCE);
        }

        #[test]
        fn bodies_assembled_from_envelope_fragments_never_panic(
            fragments in proptest::collection::vec(prop_oneof![
                Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"), Just(" "), Just("null"),
                Just("1"), Just("\"source\""), Just("\"detail-type\""), Just("\"detail\""),
                Just("\"aws.partner/stripe.com/ed_test_connectflow\""), Just("\"object\""),
                Just("\"event\""), Just("\"v2.core.event\""), Just("\"id\""), Just("\"evt_1\""),
                Just("\"{\\\"object\\\":\\\"event\\\",\\\"id\\\":\\\"evt_1\\\"}\""),
                Just("\"\\u0000\""), Just("\"\\ud800\""),
            ], 0..48),
        ) {
            let body = fragments.concat();
            if let Ok(bytes) = read_envelope(&body, SOURCE) {
                let read: Value = serde_json::from_slice(&bytes).unwrap();
                prop_assert!(matches!(read["object"].as_str(), Some("event" | "v2.core.event")));
            }
        }

        #[test]
        fn an_accepted_detail_is_always_a_stripe_event(
            object in prop_oneof![
                Just("event".to_owned()),
                Just("v2.core.event".to_owned()),
                Just("account".to_owned()),
                "[a-z.]{0,12}",
            ],
            id in prop_oneof![Just(json!("evt_1")), Just(json!(1)), Just(Value::Null), "[ -~]{0,8}".prop_map(Value::from)],
            stringify in any::<bool>(),
            extra in "[ -~]{0,16}",
        ) {
            let event = json!({"object": object, "id": id, "extra": extra});
            let detail = if stringify { json!(event.to_string()) } else { event.clone() };
            match read_envelope(&envelope(SOURCE, detail), SOURCE) {
                Ok(bytes) => {
                    let read: Value = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(&read, &event);
                    prop_assert!(matches!(read["object"].as_str(), Some("event" | "v2.core.event")));
                    prop_assert!(read["id"].is_string());
                }
                Err(refusal) => prop_assert_eq!(refusal, IntakeRefusal::DetailNotAStripeEvent),
            }
        }
    }

    fn settings(vars: &[(&str, &str)]) -> Result<IntakeSettings, ConfigError> {
        IntakeSettings::from_lookup(|name| {
            vars.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn the_source_and_the_dead_letter_queue_are_required() {
        const DLQ: &str = "http://127.0.0.1:9/123456789012/intake-dlq";
        assert_eq!(settings(&[(INTAKE_DLQ_URL, DLQ)]), Err(ConfigError::Missing(EVENTBRIDGE_SOURCE)));
        assert_eq!(settings(&[(EVENTBRIDGE_SOURCE, SOURCE)]), Err(ConfigError::Missing(INTAKE_DLQ_URL)));
        for source in ["connect-flow", "aws.partner/stripe.com/", "aws.partner/other.com/ed_1"] {
            let read = settings(&[(EVENTBRIDGE_SOURCE, source), (INTAKE_DLQ_URL, DLQ)]);
            assert!(matches!(read, Err(ConfigError::Invalid { name: EVENTBRIDGE_SOURCE, .. })), "{source}");
        }
        let bad_livemode =
            settings(&[(EVENTBRIDGE_SOURCE, SOURCE), (INTAKE_DLQ_URL, DLQ), (LIVEMODE, "yes")]);
        assert!(matches!(bad_livemode, Err(ConfigError::Invalid { name: LIVEMODE, .. })));
        let read =
            settings(&[(EVENTBRIDGE_SOURCE, SOURCE), (INTAKE_DLQ_URL, DLQ), (LIVEMODE, "false")]).unwrap();
        assert_eq!(
            read,
            IntakeSettings {
                source: SOURCE.to_owned(),
                dead_letter_url: DLQ.to_owned(),
                expected_livemode: Some(false),
                dispute_policy: Default::default(),
            }
        );
        let webhook = read.webhook_settings();
        assert!(webhook.secrets.is_empty());
        assert_eq!(webhook.expected_livemode, Some(false));
    }

    /// Keeps every dead letter, or refuses them all.
    #[derive(Default)]
    struct Kept {
        letters: Mutex<Vec<(String, String)>>,
        refuse: bool,
    }

    impl DeadLetters for Kept {
        fn send<'a>(&'a self, body: &'a str, reason: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
            Box::pin(async move {
                if self.refuse {
                    return Err(StoreError::Unavailable("the dead-letter queue is down".to_owned()));
                }
                self.letters.lock().unwrap().push((body.to_owned(), reason.to_owned()));
                Ok(())
            })
        }
    }

    fn intake(refuse: bool) -> (EventBridgeIntake<SqliteStore, Arc<Kept>, FixedClock>, Arc<Kept>) {
        let kept = Arc::new(Kept { refuse, ..Kept::default() });
        let store = SqliteStore::in_memory().unwrap();
        let settings = IntakeSettings {
            source: SOURCE.to_owned(),
            dead_letter_url: String::new(),
            expected_livemode: None,
            dispute_policy: Default::default(),
        };
        let webhook = WebhookService::with_clock(store, &settings.webhook_settings(), FixedClock(NOW));
        (EventBridgeIntake::new(webhook, Arc::clone(&kept), SOURCE), kept)
    }

    fn batch(records: &[(&str, Option<&str>, &str)]) -> SqsEvent {
        let records: Vec<Value> = records
            .iter()
            .map(|(message_id, group, body)| {
                let mut attributes = json!({"ApproximateReceiveCount": "1"});
                if let Some(group) = group {
                    attributes["MessageGroupId"] = json!(group);
                }
                json!({"messageId": message_id, "receiptHandle": format!("rh-{message_id}"), "body": body,
                    "attributes": attributes, "messageAttributes": {}, "eventSource": "aws:sqs",
                    "awsRegion": "us-east-1",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:connect-flow-eventbridge-intake"})
            })
            .collect();
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    fn failures(response: &SqsBatchResponse) -> Vec<&str> {
        response.batch_item_failures.iter().map(|failure| failure.item_identifier.as_str()).collect()
    }

    #[tokio::test]
    async fn accepted_events_are_stored_and_refusals_dead_lettered_and_acknowledged() {
        let (intake, kept) = intake(false);
        let stored = envelope(SOURCE, account_updated("evt_1", "acct_1Stored"));
        let foreign = envelope("aws.partner/stripe.com/ed_other", account_updated("evt_2", "acct_1Foreign"));
        // Past the intake's check, but no event to the pipeline's parser: no type, no created.
        let hollow = envelope(SOURCE, json!({"id": "evt_3", "object": "event"}));
        let response = intake
            .handle(batch(&[
                ("m1", None, &stored),
                ("m2", None, &foreign),
                ("m3", None, "{"),
                ("m4", None, &hollow),
            ]))
            .await;
        assert_eq!(failures(&response), Vec::<&str>::new());
        let store = intake.webhook().store();
        let account = store.load_account(&AccountId::parse("acct_1Stored").unwrap()).await.unwrap().unwrap();
        assert_eq!(account.onboarding_status, OnboardingStatus::Active);
        assert_eq!(store.load_event("evt_1").await.unwrap().unwrap().outcome, EventOutcome::Applied);
        for id in ["evt_2", "evt_3"] {
            assert_eq!(store.load_event(id).await.unwrap(), None, "{id}");
        }
        assert_eq!(store.load_account(&AccountId::parse("acct_1Foreign").unwrap()).await.unwrap(), None);
        let letters = kept.letters.lock().unwrap().clone();
        assert_eq!(
            letters,
            [
                (foreign, "foreign_source".to_owned()),
                ("{".to_owned(), "not_json".to_owned()),
                (hollow, "detail_not_a_stripe_event".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn a_refusal_the_dead_letter_queue_does_not_take_is_redelivered_and_fails_its_group() {
        let (intake, _) = intake(true);
        let first = envelope(SOURCE, account_updated("evt_1", "acct_1A"));
        let second = envelope(SOURCE, account_updated("evt_2", "acct_1A"));
        let other = envelope(SOURCE, account_updated("evt_3", "acct_1B"));
        let response = intake
            .handle(batch(&[
                ("m1", Some("g1"), "not json"),
                ("m2", Some("g1"), &first),
                ("m3", Some("g2"), &other),
                ("m4", None, &second),
            ]))
            .await;
        assert_eq!(failures(&response), ["m1", "m2"]);
        let store = intake.webhook().store();
        assert_eq!(store.load_event("evt_1").await.unwrap(), None, "m2 waits for m1, in order");
        assert!(store.load_event("evt_2").await.unwrap().is_some());
        assert!(store.load_event("evt_3").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_redelivered_event_changes_nothing_and_is_acknowledged() {
        let (intake, _) = intake(false);
        let body = envelope(SOURCE, account_updated("evt_1", "acct_1Again"));
        for _ in 0..2 {
            assert_eq!(failures(&intake.handle(batch(&[("m1", None, &body)])).await), Vec::<&str>::new());
        }
        let account = intake.webhook().store().load_account(&AccountId::parse("acct_1Again").unwrap()).await;
        assert_eq!(account.unwrap().unwrap().version, 1);
    }

    #[tokio::test]
    async fn no_message_starts_once_too_little_time_is_left_and_a_bodiless_one_is_redelivered() {
        let (intake, kept) = intake(false);
        let body = envelope(SOURCE, account_updated("evt_1", "acct_1Late"));
        let almost_out = Some(Instant::now() + MESSAGE_WORST_CASE / 2);
        let response = intake.handle_by(batch(&[("m1", None, &body), ("m2", None, "{")]), almost_out).await;
        assert_eq!(failures(&response), ["m1", "m2"]);
        assert_eq!(intake.webhook().store().load_event("evt_1").await.unwrap(), None);
        assert!(kept.letters.lock().unwrap().is_empty());

        let mut no_body = batch(&[("m3", None, "")]);
        no_body.records[0].body = None;
        assert_eq!(failures(&intake.handle(no_body).await), ["m3"]);
        assert!(kept.letters.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_deadline_already_past_is_ignored() {
        let (intake, _) = intake(false);
        let body = envelope(SOURCE, account_updated("evt_1", "acct_1Watch"));
        let response = intake.handle_invocation(batch(&[("m1", None, &body)]), SystemTime::UNIX_EPOCH).await;
        assert_eq!(failures(&response), Vec::<&str>::new());
    }
}
