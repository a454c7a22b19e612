//! The notifier Lambda function: the change feed's outbox relay, from the table's stream to the
//! stack's EventBridge bus.
//!
//! The store writes each change in the same transaction as the state it describes, as a `FEED#…`
//! item whose `change` attribute is the change's JSON ([`crate::domain::change::Change`]). The
//! table's stream (`NEW_IMAGE`) hands the inserts of those items to this function, which puts each
//! on the bus with `source: "connect-flow"` and `detail-type` = the change's type. A crash between
//! the commit and the publish therefore loses nothing: the stream keeps the record until this
//! function has reported it done.
//!
//! # Failures and Lambda's retry
//!
//! The event source mapping reports batch item failures, and for a stream Lambda checkpoints
//! before the *lowest* sequence number reported and retries every record from there on
//! (<https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html>).
//! So the only useful answer is the earliest record that was not published, and nothing after it
//! is worth publishing in this invocation: the records of later `PutEvents` calls are left for
//! the retry rather than sent twice. Delivery is at least once (an entry accepted in the same call
//! as a failed one, or a call whose answer was lost, is sent again); consumers dedupe by the
//! change's `id`.
//!
//! A `PutEvents` answer can accept some entries and refuse others (`FailedEntryCount`, with an
//! `ErrorCode` per refused entry). Refused entries with a retryable code are sent again, alone,
//! a few times with exponential backoff and jitter ([`RetryPolicy`]); whole-call failures are
//! left to the SDK's own bounded retries ([`crate::aws::WORKER`]).
//!
//! # Budget
//!
//! No call starts unless [`CALL_WORST_CASE`] plus its backoff and [`DEADLINE_MARGIN`] is left
//! before the invocation's deadline; the records not reached are handed back to Lambda instead, so that the function
//! answers rather than times out (a timeout would fail the whole batch, published records
//! included).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

use crate::config::ConfigError;
use crate::domain::change::Change;
use crate::metrics::{DEFAULT_NAMESPACE, Metrics, MetricsSettings, MetricsSink, NAMESPACE_VAR, StdoutSink};

/// The variable naming the EventBridge bus changes are put on.
pub(crate) const EVENT_BUS_VAR: &str = "CONNECT_FLOW_EVENT_BUS";
/// Every event's `source`.
pub const SOURCE: &str = "connect-flow";
/// The feed item's attribute holding the change's JSON; an item without it is not a change.
pub(crate) const CHANGE_ATTRIBUTE: &str = "change";
/// `PutEvents` takes at most ten entries a call.
pub(crate) const MAX_ENTRIES_PER_CALL: usize = 10;
/// `PutEvents` takes at most 256 KB a call, counted as [`entry_size`] counts.
pub(crate) const MAX_CALL_BYTES: usize = 256 * 1024;
/// The notifier's `Timeout` in infra/template.yaml. A batch of 100 records is ten calls of tens
/// of milliseconds; when EventBridge is slow, the deadline guard answers before the timeout.
#[cfg(test)]
pub(crate) const NOTIFIER_LAMBDA_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one `PutEvents` call takes, the SDK's retries included: the workers' bounds.
pub(crate) const CALL_WORST_CASE: Duration = crate::aws::WORKER.operation_timeout;
/// What is kept back from the deadline besides the call itself: time to log and answer.
pub(crate) const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Entry error codes that fail again however often they are sent (EventBridge's API reference
/// lists only `InternalFailure` and `ThrottlingException` as retryable); anything else is retried.
const PERMANENT_ERROR_CODES: [&str; 7] = [
    "AccessDeniedException",
    "InvalidAccountIdException",
    "InvalidArgument",
    "MalformedDetail",
    "RedactionFailure",
    "NotAuthorizedForSourceException",
    "NotAuthorizedForDetailTypeException",
];

/// How refused entries are sent again within one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls per entry, the first included.
    pub attempts: u32,
    /// The backoff ceiling before the first retry; it doubles for each later one.
    pub initial_backoff: Duration,
    /// The largest backoff ceiling.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Three calls, 100 ms then 200 ms ceilings: under a second of waiting per batch of ten even
    /// when EventBridge throttles, while Lambda's own retry (ten, from the stream) is the outer loop.
    pub(crate) const DEFAULT: Self = Self {
        attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
    };

    /// The ceiling before the `retry`th retry (1-based), before jitter.
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let doubling = 2u32.checked_pow(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(doubling).min(self.max_backoff)
    }

    /// The wait before the `retry`th retry: between half the ceiling and all of it ("equal
    /// jitter"), so that throttled invocations spread out yet always back off.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        // Each RandomState has fresh random keys, so hashing nothing still gives a random number,
        // without a dependency for it.
        let random = std::hash::RandomState::new().build_hasher().finish();
        half + Duration::from_nanos(random % spread.saturating_add(1))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What one batch of stream records came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Changes EventBridge accepted.
    pub published: usize,
    /// Records that are not change items, acknowledged as they are.
    pub skipped: usize,
    /// Records that could not be published: unreadable changes, and changes still refused after
    /// the retries (with the rest of a failed call).
    pub failed: usize,
    /// `PutEvents` calls made, this module's retries included (the SDK's attempts within one call
    /// are not counted).
    pub put_events_calls: usize,
    /// The sequence number of the earliest record not done, from which Lambda must retry: `None`
    /// when every record is done, `Some("")` when that record has none (Lambda then retries the
    /// whole batch, which is safe).
    pub retry_from: Option<String>,
}

impl BatchOutcome {
    /// The answer to Lambda: at most one batch item failure, the earliest, since Lambda retries
    /// from the lowest sequence number reported anyway.
    pub fn response(&self) -> DynamoDbEventResponse {
        let mut response = DynamoDbEventResponse::default();
        if let Some(sequence_number) = &self.retry_from {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence_number.clone());
            response.batch_item_failures.push(failure);
        }
        response
    }
}

/// A record's change, or why it has none.
enum Read {
    /// Not a change item: no `change` attribute.
    NotAChange,
    /// A `change` attribute that is not a change's JSON.
    Unreadable(String),
    /// A change and its JSON as stored, which becomes the event's detail.
    Change(Change, String),
}

/// Reads the `change` attribute of a record's new image.
fn read_change(record: &EventRecord) -> Read {
    let Some(attribute) = record.change.new_image.get(CHANGE_ATTRIBUTE) else {
        return Read::NotAChange;
    };
    // The attribute type is serde_dynamo's, which this crate does not name; its serde form is the
    // DynamoDB JSON `{"S": "…"}`.
    let json = match serde_json::to_value(attribute) {
        Ok(Value::Object(mut typed)) => match typed.remove("S") {
            Some(Value::String(json)) => json,
            _ => return Read::Unreadable("the change attribute is not a string".to_owned()),
        },
        Ok(_) => return Read::Unreadable("the change attribute is not a string".to_owned()),
        Err(error) => return Read::Unreadable(error.to_string()),
    };
    match serde_json::from_str::<Change>(&json) {
        Ok(change) => Read::Change(change, json),
        Err(error) => Read::Unreadable(format!("the change attribute is not a change: {error}")),
    }
}

/// An entry's size as EventBridge counts it against [`MAX_CALL_BYTES`]: 14 bytes for the time,
/// plus the source, detail type, detail and resources in UTF-8.
pub(crate) fn entry_size(entry: &PutEventsRequestEntry) -> usize {
    let text = |value: Option<&str>| value.map_or(0, str::len);
    let time = if entry.time().is_some() { 14 } else { 0 };
    time + text(entry.source())
        + text(entry.detail_type())
        + text(entry.detail())
        + entry.resources().iter().map(String::len).sum::<usize>()
}

/// One change on its way to the bus.
struct Pending {
    /// Its record's position in the batch.
    index: usize,
    change_id: String,
    entry: PutEventsRequestEntry,
    size: usize,
}

/// Puts the changes of stream records on an EventBridge bus.
pub struct Notifier {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    retry: RetryPolicy,
    metrics: NotifierMetrics,
}

impl Notifier {
    /// A notifier on `bus` with [`RetryPolicy::DEFAULT`] and no metrics.
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self { client, bus: bus.into(), retry: RetryPolicy::DEFAULT, metrics: NotifierMetrics::disabled() }
    }

    /// Retries refused entries by `policy` instead.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Records each batch's outcome in `metrics`.
    pub fn with_metrics(mut self, metrics: NotifierMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Publishes the changes of `records`, in order, with no deadline.
    pub async fn publish(&self, records: &[EventRecord]) -> BatchOutcome {
        self.publish_before(records, None).await
    }

    /// Publishes the changes of `records` in order, in calls of up to ten entries, starting no
    /// call that might not finish before `deadline`; stops at the first record that fails.
    pub(crate) async fn publish_before(
        &self,
        records: &[EventRecord],
        deadline: Option<Instant>,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let mut pending = Vec::new();
        // The first unreadable record is a failure point: nothing from it on is published.
        let mut unreadable_at = None;
        for (index, record) in records.iter().enumerate() {
            match read_change(record) {
                Read::NotAChange => outcome.skipped += 1,
                Read::Unreadable(reason) => {
                    tracing::warn!(
                        sequence_number = record.change.sequence_number.as_deref(),
                        %reason,
                        "unreadable change record; reported for Lambda's retry"
                    );
                    outcome.failed += 1;
                    unreadable_at = Some(index);
                    break;
                }
                Read::Change(change, json) => pending.push(self.pending(index, &change, json)),
            }
        }
        let mut failed_at = None;
        let mut rest = pending.as_slice();
        while !rest.is_empty() {
            let count = call_length(rest);
            let (chunk, later) = rest.split_at(count);
            rest = later;
            if let Some(position) = self.put_chunk(chunk, deadline, &mut outcome).await {
                failed_at = Some(chunk[position].index);
                break;
            }
        }
        // Every pending change comes before the unreadable record, so a failed call is earlier.
        outcome.retry_from = failed_at.or(unreadable_at).map(|index| {
            records.get(index).and_then(|record| record.change.sequence_number.clone()).unwrap_or_default()
        });
        outcome
    }

    fn pending(&self, index: usize, change: &Change, json: String) -> Pending {
        let entry = PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(change.change_type.as_str())
            .detail(json)
            .event_bus_name(self.bus.as_str())
            .time(DateTime::from_secs(change.at))
            .build();
        let size = entry_size(&entry);
        Pending { index, change_id: change.id.clone(), entry, size }
    }

    /// Puts one call's entries, retrying those refused with a retryable code; the position of
    /// the earliest entry still not accepted, if any.
    async fn put_chunk(
        &self,
        chunk: &[Pending],
        deadline: Option<Instant>,
        outcome: &mut BatchOutcome,
    ) -> Option<usize> {
        if chunk.len() == 1 && chunk[0].size > MAX_CALL_BYTES {
            tracing::warn!(change_id = %chunk[0].change_id, size = chunk[0].size, "change too large for EventBridge");
            outcome.failed += 1;
            return Some(0);
        }
        let mut todo: Vec<usize> = (0..chunk.len()).collect();
        let mut refused: Vec<usize> = Vec::new();
        for attempt in 1..=self.retry.attempts.max(1) {
            let backoff = if attempt == 1 { Duration::ZERO } else { self.retry.backoff(attempt - 1) };
            if !time_for_a_call(deadline, backoff) {
                tracing::warn!(
                    left = todo.len(),
                    "too little of the invocation's time left; reported for Lambda's retry"
                );
                break;
            }
            if !backoff.is_zero() {
                tokio::time::sleep(backoff).await;
            }
            let entries = todo.iter().map(|&position| chunk[position].entry.clone()).collect();
            outcome.put_events_calls += 1;
            let answer = match self.client.put_events().set_entries(Some(entries)).send().await {
                Ok(answer) => answer,
                Err(error) => {
                    // The SDK has already retried what it deems transient.
                    tracing::warn!(error = %DisplayErrorContext(&error), entries = todo.len(), "PutEvents failed");
                    break;
                }
            };
            let results = answer.entries();
            let mut retry = Vec::new();
            for (sent, &position) in todo.iter().enumerate() {
                // A result missing from the answer is read as a retryable refusal.
                let code = match results.get(sent) {
                    Some(result) => result.error_code(),
                    None => Some("MissingResult"),
                };
                let Some(code) = code else {
                    outcome.published += 1;
                    continue;
                };
                let message = results.get(sent).and_then(|result| result.error_message()).unwrap_or_default();
                tracing::warn!(change_id = %chunk[position].change_id, code, message, attempt, "PutEvents refused an entry");
                if PERMANENT_ERROR_CODES.contains(&code) {
                    refused.push(position);
                } else {
                    retry.push(position);
                }
            }
            todo = retry;
            if todo.is_empty() {
                break;
            }
        }
        refused.extend(todo);
        outcome.failed += refused.len();
        refused.into_iter().min()
    }

    /// One invocation: publishes before `deadline` and records the outcome. A deadline already
    /// past when the batch arrives is not a real one, and is ignored: Lambda's always lies ahead,
    /// while `cargo lambda watch` sends a relative 600000 that reads as 1970.
    pub async fn handle(&self, event: Event, deadline: SystemTime) -> DynamoDbEventResponse {
        let deadline = deadline.duration_since(SystemTime::now()).ok().map(|left| Instant::now() + left);
        let outcome = self.publish_before(&event.records, deadline).await;
        tracing::info!(
            records = event.records.len(),
            published = outcome.published,
            skipped = outcome.skipped,
            failed = outcome.failed,
            put_events_calls = outcome.put_events_calls,
            retry_from = outcome.retry_from.as_deref(),
            "batch published"
        );
        self.metrics.record(&outcome);
        outcome.response()
    }
}

/// How many of `pending`'s first entries fit in one call: at most ten, and under the size limit
/// (always at least one, so that an oversized entry is met, and refused, on its own).
fn call_length(pending: &[Pending]) -> usize {
    let mut size = 0;
    let mut count = 0;
    for entry in pending.iter().take(MAX_ENTRIES_PER_CALL) {
        if count > 0 && size + entry.size > MAX_CALL_BYTES {
            break;
        }
        size += entry.size;
        count += 1;
    }
    count.max(1)
}

/// Whether a call, after `backoff`, still ends [`DEADLINE_MARGIN`] before `deadline`.
fn time_for_a_call(deadline: Option<Instant>, backoff: Duration) -> bool {
    deadline.is_none_or(|deadline| {
        deadline.saturating_duration_since(Instant::now()) >= CALL_WORST_CASE + backoff + DEADLINE_MARGIN
    })
}

/// Reads the bus name from `lookup`; it must be set and not blank.
pub(crate) fn event_bus_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    lookup(EVENT_BUS_VAR)
        .map(|bus| bus.trim().to_owned())
        .filter(|bus| !bus.is_empty())
        .ok_or(ConfigError::Missing(EVENT_BUS_VAR))
}

/// `ChangesPublished`, `ChangesFailed` and `PutEventsCalls`, one EMF document per invocation by
/// `FunctionName`. Written here rather than in [`crate::metrics`], whose families are closed, but
/// in its format and switched on by the same variables.
#[derive(Clone, Default)]
pub struct NotifierMetrics(Option<(MetricsSettings, Arc<dyn MetricsSink>)>);

impl NotifierMetrics {
    /// Records nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Writes EMF lines to `sink`.
    pub fn to_sink(settings: MetricsSettings, sink: Arc<dyn MetricsSink>) -> Self {
        Self(Some((settings, sink)))
    }

    /// On exactly when [`Metrics::from_env`] is, to standard output, in the same namespace.
    pub fn from_env() -> Self {
        if !Metrics::from_env().is_enabled() {
            return Self::disabled();
        }
        let namespace = std::env::var(NAMESPACE_VAR)
            .ok()
            .map(|namespace| namespace.trim().to_owned())
            .filter(|namespace| {
                !namespace.is_empty() && namespace.len() <= 255 && !namespace.starts_with("AWS/")
            })
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let function_name = std::env::var("AWS_LAMBDA_FUNCTION_NAME")
            .ok()
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| MetricsSettings::default().function_name);
        Self::to_sink(MetricsSettings { namespace, function_name }, Arc::new(StdoutSink))
    }

    /// One document for one batch; zeros too, so that every invocation has its point.
    pub fn record(&self, outcome: &BatchOutcome) {
        let Some((settings, sink)) = &self.0 else { return };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        let metrics: Vec<Value> = ["ChangesPublished", "ChangesFailed", "PutEventsCalls"]
            .iter()
            .map(|name| json!({ "Name": name, "Unit": "Count" }))
            .collect();
        let document = json!({
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": settings.namespace,
                    "Dimensions": [["FunctionName"]],
                    "Metrics": metrics,
                }],
            },
            "FunctionName": settings.function_name,
            "ChangesPublished": outcome.published,
            "ChangesFailed": outcome.failed,
            "PutEventsCalls": outcome.put_events_calls,
        });
        sink.write_line(&document.to_string());
    }
}

/// The notifier Lambda function's whole life: logs, the bus from [`EVENT_BUS_VAR`] and the
/// EventBridge client built once per cold start with the workers' bounded SDK settings, then one
/// [`Notifier::handle`] per batch of stream records.
pub async fn run_notifier_function() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init_lambda_logs();
    let bus = event_bus_from_lookup(|name| std::env::var(name).ok())?;
    // Bounded retries and timeouts: no call can hold a batch past CALL_WORST_CASE.
    let aws = crate::aws::WORKER.load().await;
    let notifier = Arc::new(
        Notifier::new(aws_sdk_eventbridge::Client::new(&aws), bus).with_metrics(NotifierMetrics::from_env()),
    );
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<Event>| {
        let notifier = Arc::clone(&notifier);
        async move {
            Ok::<_, lambda_runtime::Error>(notifier.handle(event.payload, event.context.deadline()).await)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_inside_the_upper_half() {
        let policy = RetryPolicy::DEFAULT;
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.ceiling(9), Duration::from_secs(1));
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(1));
        for retry in 1..6 {
            let ceiling = policy.ceiling(retry);
            let waits: Vec<Duration> = (0..50).map(|_| policy.backoff(retry)).collect();
            assert!(waits.iter().all(|wait| *wait >= ceiling / 2 && *wait <= ceiling), "{waits:?}");
            assert!(waits.iter().any(|wait| *wait != waits[0]), "jittered: {waits:?}");
        }
    }

    #[test]
    fn a_call_and_all_its_retries_fit_inside_the_lambda_timeout() {
        let policy = RetryPolicy::DEFAULT;
        let waits: Duration = (1..policy.attempts).map(|retry| policy.ceiling(retry)).sum();
        let one_call = CALL_WORST_CASE * policy.attempts + waits;
        assert!(one_call + DEADLINE_MARGIN < NOTIFIER_LAMBDA_TIMEOUT, "{one_call:?}");
        // Later calls are the deadline guard's business: none starts that could end past it.
        let enough = CALL_WORST_CASE + DEADLINE_MARGIN + Duration::from_millis(100);
        assert!(time_for_a_call(Some(Instant::now() + enough), Duration::ZERO));
        assert!(!time_for_a_call(Some(Instant::now() + enough), Duration::from_millis(200)));
        assert!(!time_for_a_call(Some(Instant::now() + CALL_WORST_CASE), Duration::ZERO));
        assert!(time_for_a_call(None, Duration::from_secs(3600)));
    }

    fn record(sequence_number: &str, change: Option<&str>) -> EventRecord {
        let image = change.map_or_else(|| json!({}), |change| json!({ "change": { "S": change } }));
        serde_json::from_value(json!({
            "eventID": sequence_number, "eventName": "INSERT", "awsRegion": "us-east-1",
            "dynamodb": { "NewImage": image, "SequenceNumber": sequence_number, "SizeBytes": 10 },
        }))
        .unwrap()
    }

    fn change_json(id: &str) -> String {
        json!({ "id": id, "cursor": "1", "type": "account.deauthorized", "account_id": "acct_1", "at": 1, "data": {} })
            .to_string()
    }

    /// A client for a port nothing listens on: any call it made would fail.
    fn unreachable_client() -> aws_sdk_eventbridge::Client {
        let config = aws_sdk_eventbridge::Config::builder()
            .behavior_version(aws_sdk_eventbridge::config::BehaviorVersion::latest())
            .region(aws_sdk_eventbridge::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_eventbridge::config::Credentials::new(
                "t", "t", None, None, "tests",
            ))
            .endpoint_url("http://127.0.0.1:9")
            .build();
        aws_sdk_eventbridge::Client::from_conf(config)
    }

    #[tokio::test]
    async fn a_batch_too_close_to_its_deadline_is_handed_back_without_a_call() {
        let notifier = Notifier::new(unreachable_client(), "bus");
        let records = [
            record("7", None),
            record("8", Some(&change_json("chg_1"))),
            record("9", Some(&change_json("chg_2"))),
        ];
        let outcome = notifier.publish_before(&records, Some(Instant::now() + Duration::from_secs(1))).await;
        assert_eq!(
            outcome,
            BatchOutcome {
                published: 0,
                skipped: 1,
                failed: 2,
                put_events_calls: 0,
                retry_from: Some("8".to_owned())
            }
        );
    }

    #[tokio::test]
    async fn an_unreadable_change_stops_the_batch_before_any_call() {
        let notifier = Notifier::new(unreachable_client(), "bus");
        for bad in ["", "null", "{\"id\": 3}", "[1]"] {
            let records = [record("1", Some(bad)), record("2", Some(&change_json("chg_1")))];
            let outcome = notifier.publish(&records).await;
            assert_eq!(
                outcome,
                BatchOutcome { failed: 1, retry_from: Some("1".to_owned()), ..BatchOutcome::default() },
                "{bad}"
            );
        }
    }

    fn pending(size: usize) -> Pending {
        let entry =
            PutEventsRequestEntry::builder().source(SOURCE).detail_type("t").detail("x".repeat(size)).build();
        let size = entry_size(&entry);
        Pending { index: 0, change_id: String::new(), entry, size }
    }

    #[test]
    fn calls_hold_ten_entries_and_stay_under_256_kb() {
        let small: Vec<Pending> = (0..25).map(|_| pending(100)).collect();
        assert_eq!(call_length(&small), 10);
        assert_eq!(call_length(&small[20..]), 5);
        let large: Vec<Pending> = (0..5).map(|_| pending(100 * 1024)).collect();
        assert_eq!(call_length(&large), 2, "three would pass 256 KB");
        assert_eq!(call_length(&[pending(300 * 1024)]), 1, "an oversized entry goes alone, to be refused");
        assert_eq!(entry_size(&pending(10).entry), SOURCE.len() + 1 + 10);
    }

    #[test]
    fn the_response_names_only_the_earliest_failure() {
        assert!(BatchOutcome::default().response().batch_item_failures.is_empty());
        let outcome = BatchOutcome { retry_from: Some("42".to_owned()), ..BatchOutcome::default() };
        let response = serde_json::to_value(outcome.response()).unwrap();
        assert_eq!(response, json!({"batchItemFailures": [{"itemIdentifier": "42"}]}));
    }

    #[test]
    fn the_bus_must_be_named() {
        assert_eq!(
            event_bus_from_lookup(|_| None).unwrap_err().to_string(),
            "CONNECT_FLOW_EVENT_BUS is not set"
        );
        assert!(event_bus_from_lookup(|_| Some(" ".to_owned())).is_err());
        assert_eq!(event_bus_from_lookup(|_| Some("bus".to_owned())).unwrap(), "bus");
    }
}
