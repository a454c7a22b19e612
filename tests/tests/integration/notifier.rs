//! The notifier on moto, end to end: change items written to a real table with a stream, read
//! back with the DynamoDB Streams API and turned into the event Lambda would hand over, published
//! by `shared::notifier` to an EventBridge bus, and read off the SQS queue a rule on
//! `source: ["connect-flow"]` targets, as a consumer would see them.
//!
//! Lambda's side is played by the tests: the event source mapping's filter (inserts of `FEED#`
//! items), its batches, and its retry from the reported sequence number. Faults come from the
//! fault proxy (`integration_tests::fault_proxy`) and, for answers that refuse some entries, from
//! [`Refuser`], a proxy here that refuses chosen entries the way EventBridge does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, StreamSpecification, StreamViewType, WriteRequest,
};
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as StreamValue, OperationType, Record as StreamRecord, ShardIteratorType,
};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use integration_tests::fault_proxy::{Fault, FaultProxy};
use integration_tests::{DYNAMODB_ENDPOINT, NOW, RequestLog, dynamodb_client, sqs_client};
use serde_json::{Value, json};
use shared::aws::SdkBounds;
use shared::calendar::utc_date;
use shared::domain::change::Change;
use shared::metrics::{MemorySink, MetricsSettings};
use shared::notifier::{BatchOutcome, Notifier, NotifierMetrics, RetryPolicy, SOURCE};

/// The SDK bounds of the deployed notifier ([`shared::aws::WORKER`]) with millisecond backoffs,
/// so that the SDK's own retries do not slow the tests.
const TEST_BOUNDS: SdkBounds = SdkBounds {
    initial_backoff: Duration::from_millis(1),
    max_backoff: Duration::from_millis(4),
    ..shared::aws::WORKER
};

/// The notifier's retry policy with millisecond backoffs.
const TEST_RETRY: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(1),
    max_backoff: Duration::from_millis(4),
};

/// The event source mapping's batch size when none is set (DynamoDB streams).
const LAMBDA_BATCH_SIZE: usize = 100;

const CHANGE_TYPES: [&str; 5] = [
    "account.onboarding_status_changed",
    "account.capability_changed",
    "account.deauthorized",
    "step.status_changed",
    "payout.failed",
];

/// A name of its own for each test's table, bus and queue.
fn unique(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("cf-notifier-{kind}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn moto_endpoint() -> String {
    std::env::var(DYNAMODB_ENDPOINT).unwrap_or_else(|_| {
        panic!("{DYNAMODB_ENDPOINT} is not set: run the tests with ./scripts/test, which starts moto server")
    })
}

/// `n` changes of every type, as the store would have written them: ids unique, cursors in order.
fn changes(n: usize) -> Vec<Change> {
    (0..n)
        .map(|i| {
            let change_type = CHANGE_TYPES[i % CHANGE_TYPES.len()];
            serde_json::from_value(json!({
                "id": format!("chg_acct_N{i}_v{i}_{}", i % CHANGE_TYPES.len()),
                "cursor": format!("{:020}", i + 1),
                "type": change_type,
                "account_id": format!("acct_N{}", i % 7),
                "at": NOW + i64::try_from(i).unwrap(),
                "data": {"from": "onboarding", "to": "active", "n": i},
            }))
            .unwrap()
        })
        .collect()
}

/// A Unix time in RFC 3339, as EventBridge writes an event's `time`.
fn utc_time(at: i64) -> String {
    let second = at.rem_euclid(86_400);
    format!("{}T{:02}:{:02}:{:02}Z", utc_date(at), second / 3_600, second % 3_600 / 60, second % 60)
}

#[test]
fn feed_partitions_are_utc_dates() {
    assert_eq!(utc_date(NOW), "2025-06-15");
    assert_eq!(utc_date(0), "1970-01-01");
    assert_eq!(utc_date(951_782_400), "2000-02-29");
    assert_eq!(utc_time(NOW + 1), "2025-06-15T15:06:41Z");
}

/// The feed item the store writes for `change`.
fn feed_item(change: &Change) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(format!("FEED#{}", utc_date(change.at)))),
        ("sk".to_owned(), AttributeValue::S(change.cursor.clone())),
        ("change".to_owned(), AttributeValue::S(serde_json::to_string(change).unwrap())),
        ("expires_at".to_owned(), AttributeValue::N((change.at + 30 * 86_400).to_string())),
    ])
}

/// A table with a `NEW_IMAGE` stream, as the deployed one, and its stream read as Lambda reads it.
struct Feed {
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    stream_arn: String,
}

impl Feed {
    async fn create() -> Self {
        let dynamodb = dynamodb_client().await;
        let table = unique("table");
        let key = |name: &str, key_type| {
            KeySchemaElement::builder().attribute_name(name).key_type(key_type).build().unwrap()
        };
        let string = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        let created = dynamodb
            .create_table()
            .table_name(&table)
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .attribute_definitions(string("pk"))
            .attribute_definitions(string("sk"))
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewImage)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("moto creates the table");
        let stream_arn = created
            .table_description()
            .and_then(|table| table.latest_stream_arn())
            .expect("the table has a stream")
            .to_owned();
        let streams = streams_client().await;
        Self { dynamodb, streams, table, stream_arn }
    }

    /// Writes `items` in order, 25 a request.
    async fn put(&self, items: Vec<HashMap<String, AttributeValue>>) {
        for chunk in items.chunks(25) {
            let requests = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item.clone())).build().unwrap();
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            let written = self
                .dynamodb
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .expect("moto writes the items");
            assert!(written.unprocessed_items().is_none_or(HashMap::is_empty), "moto left items unwritten");
        }
    }

    /// Commits `changes` as the store does: one feed item each.
    async fn commit(&self, changes: &[Change]) {
        self.put(changes.iter().map(feed_item).collect()).await;
    }

    /// Every record of the stream so far, oldest first, from the Streams API.
    async fn stream(&self) -> Vec<StreamRecord> {
        let described =
            self.streams.describe_stream().stream_arn(&self.stream_arn).send().await.expect("DescribeStream");
        let shards = described.stream_description().map(|stream| stream.shards()).unwrap_or_default();
        assert_eq!(shards.len(), 1, "moto keeps one shard per table");
        let shard_id = shards[0].shard_id().expect("a shard has an id");
        let mut iterator = self
            .streams
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("GetShardIterator")
            .shard_iterator
            .expect("an iterator");
        let mut records = Vec::new();
        // Bounded: a page is up to 1000 records, and no test writes more than a few thousand.
        for _ in 0..20 {
            let page = self.streams.get_records().shard_iterator(&iterator).send().await.expect("GetRecords");
            if page.records().is_empty() {
                return records;
            }
            records.extend_from_slice(page.records());
            iterator = page.next_shard_iterator().expect("an open shard has a next iterator").to_owned();
        }
        panic!("the stream did not end within 20 pages");
    }

    /// The stream records the deployed event source mapping passes to the notifier (its filter:
    /// inserts of `FEED#` items), as Lambda hands them over.
    async fn lambda_records(&self) -> Vec<EventRecord> {
        let feed_insert = |record: &&StreamRecord| {
            record.event_name() == Some(&OperationType::Insert)
                && record
                    .dynamodb()
                    .and_then(|stream| stream.keys())
                    .and_then(|keys| keys.get("pk"))
                    .is_some_and(|pk| matches!(pk, StreamValue::S(pk) if pk.starts_with("FEED#")))
        };
        self.stream()
            .await
            .iter()
            .filter(feed_insert)
            .map(|record| lambda_record(record, &self.stream_arn))
            .collect()
    }

    /// Every record of the stream, unfiltered, as Lambda would hand them over.
    async fn all_lambda_records(&self) -> Vec<EventRecord> {
        self.stream().await.iter().map(|record| lambda_record(record, &self.stream_arn)).collect()
    }
}

async fn streams_client() -> aws_sdk_dynamodbstreams::Client {
    let config = aws_sdk_dynamodbstreams::Config::builder()
        .behavior_version(aws_sdk_dynamodbstreams::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodbstreams::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodbstreams::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(moto_endpoint())
        .build();
    aws_sdk_dynamodbstreams::Client::from_conf(config)
}

/// A Streams API attribute value as DynamoDB JSON, the form Lambda's event carries.
fn attribute_json(value: &StreamValue) -> Value {
    match value {
        StreamValue::S(text) => json!({ "S": text }),
        StreamValue::N(number) => json!({ "N": number }),
        StreamValue::Bool(flag) => json!({ "BOOL": flag }),
        StreamValue::Null(flag) => json!({ "NULL": flag }),
        StreamValue::M(map) => json!({ "M": item_json(map) }),
        StreamValue::L(list) => json!({ "L": list.iter().map(attribute_json).collect::<Vec<_>>() }),
        StreamValue::Ss(strings) => json!({ "SS": strings }),
        StreamValue::Ns(numbers) => json!({ "NS": numbers }),
        other => panic!("no test writes {other:?}"),
    }
}

fn item_json(item: &HashMap<String, StreamValue>) -> Value {
    Value::Object(item.iter().map(|(name, value)| (name.clone(), attribute_json(value))).collect())
}

/// One Streams API record as the Lambda event's record: the JSON Lambda sends, read by the same
/// `aws_lambda_events` types the function reads it with.
fn lambda_record(record: &StreamRecord, stream_arn: &str) -> EventRecord {
    let stream = record.dynamodb().expect("a stream record has its change");
    let created = stream.approximate_creation_date_time().map_or(0.0, |at| at.as_secs_f64());
    let mut change = json!({
        "ApproximateCreationDateTime": created,
        "Keys": item_json(stream.keys().expect("a record has keys")),
        "SequenceNumber": stream.sequence_number().expect("a record has a sequence number"),
        "SizeBytes": stream.size_bytes().expect("a record has a size"),
        "StreamViewType": stream.stream_view_type().expect("a record has a view type").as_str(),
    });
    if let Some(image) = stream.new_image() {
        change["NewImage"] = item_json(image);
    }
    let lambda = json!({
        "eventID": record.event_id().expect("a record has an id"),
        "eventName": record.event_name().expect("a record has a name").as_str(),
        "eventVersion": record.event_version(),
        "eventSource": record.event_source(),
        "awsRegion": record.aws_region().expect("a record has a region"),
        "eventSourceARN": stream_arn,
        "dynamodb": change,
    });
    serde_json::from_value(lambda).expect("the Lambda event types read the record")
}

fn sequence_number(record: &EventRecord) -> String {
    record.change.sequence_number.clone().expect("stream records have sequence numbers")
}

/// A bus, a rule on `source: ["connect-flow"]`, and the SQS queue it targets: the consumer.
struct Bus {
    name: String,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl Bus {
    async fn create() -> Self {
        let events = eventbridge_client(&moto_endpoint(), RequestLog::default());
        let name = unique("bus");
        events.create_event_bus().name(&name).send().await.expect("moto creates the bus");
        let sqs = sqs_client().await;
        let queue_url = sqs
            .create_queue()
            .queue_name(unique("consumer"))
            .send()
            .await
            .expect("moto creates the queue")
            .queue_url
            .expect("a queue has a URL");
        let queue_arn = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("GetQueueAttributes")
            .attributes()
            .and_then(|attributes| attributes.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
            .expect("a queue has an ARN");
        let rule = unique("rule");
        events
            .put_rule()
            .name(&rule)
            .event_bus_name(&name)
            .event_pattern(json!({ "source": [SOURCE] }).to_string())
            .send()
            .await
            .expect("moto creates the rule");
        let target =
            aws_sdk_eventbridge::types::Target::builder().id("consumer").arn(queue_arn).build().unwrap();
        let targeted = events
            .put_targets()
            .rule(&rule)
            .event_bus_name(&name)
            .targets(target)
            .send()
            .await
            .expect("moto adds the target");
        assert_eq!(targeted.failed_entry_count(), 0);
        Self { name, sqs, queue_url }
    }

    /// Every event delivered since the last call, in the order received, each deleted once read
    /// (as a consumer does; moto's queue also slows down as it fills). Drained until a receive
    /// comes back empty: moto delivers to the queue inside `PutEvents`, so nothing is in transit.
    async fn deliveries(&self) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..1_000 {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .visibility_timeout(600)
                .wait_time_seconds(0)
                .send()
                .await
                .expect("ReceiveMessage");
            if received.messages().is_empty() {
                return events;
            }
            let mut delete = self.sqs.delete_message_batch().queue_url(&self.queue_url);
            for (n, message) in received.messages().iter().enumerate() {
                events.push(serde_json::from_str(message.body().expect("a message has a body")).unwrap());
                let entry = aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .receipt_handle(message.receipt_handle().expect("a received message has a handle"))
                    .build()
                    .unwrap();
                delete = delete.entries(entry);
            }
            let deleted = delete.send().await.expect("DeleteMessageBatch");
            assert!(deleted.failed().is_empty(), "{:?}", deleted.failed());
        }
        panic!("the queue did not drain");
    }
}

/// An EventBridge client for `endpoint` with [`TEST_BOUNDS`], logging every HTTP request it sends.
fn eventbridge_client(endpoint: &str, log: RequestLog) -> aws_sdk_eventbridge::Client {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let config = aws_sdk_eventbridge::Config::builder()
        .behavior_version(aws_sdk_eventbridge::config::BehaviorVersion::latest())
        .region(aws_sdk_eventbridge::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_eventbridge::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(endpoint)
        .retry_config(TEST_BOUNDS.retry_config())
        .timeout_config(TEST_BOUNDS.timeout_config())
        // A retry quota of its own, so that one test's injected faults cannot use up another's.
        .retry_partition(aws_sdk_eventbridge::config::retry::RetryPartition::new(format!(
            "notifier-test-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
        .interceptor(log)
        .build();
    aws_sdk_eventbridge::Client::from_conf(config)
}

fn put_events_calls(log: &RequestLog) -> usize {
    log.take().iter().filter(|operation| *operation == "PutEvents").count()
}

/// Deliveries per change id.
fn tally(deliveries: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in deliveries {
        let id = event["detail"]["id"].as_str().expect("every detail is a change with an id");
        *counts.entry(id.to_owned()).or_default() += 1;
    }
    counts
}

fn ids(changes: &[Change]) -> Vec<String> {
    changes.iter().map(|change| change.id.clone()).collect()
}

/// Lambda's checkpoint after an answer: the reported record, or the end of the batch.
fn resume_at(records: &[EventRecord], batch_end: usize, response: &DynamoDbEventResponse) -> usize {
    match response.batch_item_failures.as_slice() {
        [] => batch_end,
        [failure] => {
            let reported = failure.item_identifier.as_deref().expect("a failure names its record");
            records
                .iter()
                .position(|record| record.change.sequence_number.as_deref() == Some(reported))
                .expect("the reported sequence number is one of the batch's")
        }
        many => panic!("only the earliest failure is reported, not {many:?}"),
    }
}

fn deadline() -> SystemTime {
    SystemTime::now() + Duration::from_secs(60)
}

fn event(records: &[EventRecord]) -> Event {
    let mut event = Event::default();
    event.records = records.to_vec();
    event
}

// (a) Every change arrives once, as specified, in one call per ten.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_as_specified_in_one_call_per_ten() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let committed = changes(25);
    feed.commit(&committed).await;
    let records = feed.lambda_records().await;
    assert_eq!(records.len(), 25, "one stream record per committed change");

    let log = RequestLog::default();
    let sink = MemorySink::default();
    let settings =
        MetricsSettings { namespace: "ConnectFlow/test".into(), function_name: "notifier-fn".into() };
    let notifier = Notifier::new(eventbridge_client(&moto_endpoint(), log.clone()), &bus.name)
        .with_retry(TEST_RETRY)
        .with_metrics(NotifierMetrics::to_sink(settings, Arc::new(sink.clone())));
    let response = notifier.handle(event(&records), deadline()).await;

    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(put_events_calls(&log), 3, "25 entries are three calls of at most ten");
    let deliveries = bus.deliveries().await;
    assert_eq!(deliveries.len(), 25);
    let by_id: HashMap<&str, &Value> =
        deliveries.iter().map(|event| (event["detail"]["id"].as_str().unwrap(), event)).collect();
    assert_eq!(by_id.len(), 25, "no change twice");
    for change in &committed {
        let event = by_id.get(change.id.as_str()).unwrap_or_else(|| panic!("{} never arrived", change.id));
        assert_eq!(event["source"], "connect-flow");
        assert_eq!(event["detail-type"], change.change_type.as_str());
        assert_eq!(
            event["detail"],
            serde_json::to_value(change).unwrap(),
            "the detail is the change, cursor included"
        );
        assert_eq!(event["resources"], json!([]));
        assert_eq!(event["time"], utc_time(change.at), "the change's time, not the publish time");
    }

    let documents: Vec<Value> = sink.take().iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(documents.len(), 1, "one EMF document per invocation");
    let document = &documents[0];
    assert_eq!(document["FunctionName"], "notifier-fn");
    assert_eq!(
        (&document["ChangesPublished"], &document["ChangesFailed"], &document["PutEventsCalls"]),
        (&json!(25), &json!(0), &json!(3))
    );
    assert_eq!(document["_aws"]["CloudWatchMetrics"][0]["Namespace"], "ConnectFlow/test");
}

// (b) A crash between commit and publish loses nothing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_loses_nothing() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let committed = changes(25);
    feed.commit(&committed).await;
    let records = feed.lambda_records().await;
    assert_eq!(records.len(), 25);

    // The first invocation: its first call goes through, the second reaches EventBridge but its
    // answer is lost, and every later attempt gets a 500.
    let proxy = FaultProxy::in_front_of_moto().await;
    proxy.fail_next("PutEvents", 1, Fault::Slow(Duration::ZERO));
    proxy.fail_next("PutEvents", 1, Fault::LoseResponse);
    proxy.fail_every(Some("PutEvents"), Fault::ServerError);
    let log = RequestLog::default();
    let notifier =
        Notifier::new(eventbridge_client(&proxy.url(), log.clone()), &bus.name).with_retry(TEST_RETRY);
    let first = notifier.publish(&records).await;

    assert_eq!(first.retry_from.as_deref(), Some(sequence_number(&records[10]).as_str()), "{first:?}");
    assert_eq!(
        resume_at(&records, records.len(), &first.response()),
        10,
        "the earliest failed record is reported, the first of the failed call"
    );
    assert_eq!((first.published, first.failed, first.put_events_calls), (10, 10, 2), "{first:?}");
    assert_eq!(
        proxy.seen("PutEvents"),
        1 + TEST_BOUNDS.max_attempts as usize,
        "the SDK retried the failed call within its bounds, and the third call was never made"
    );
    let after_crash = tally(&bus.deliveries().await);
    let sent_in_lost_call: HashSet<String> = ids(&committed[10..20]).into_iter().collect();
    let expected_first: BTreeMap<String, usize> =
        ids(&committed[..20]).into_iter().map(|id| (id, 1)).collect();
    assert_eq!(after_crash, expected_first, "the lost answer's entries did reach the bus");

    // Lambda retries from the reported record, EventBridge healthy again.
    proxy.heal();
    let retried = &records[10..];
    let second = notifier.handle(event(retried), deadline()).await;
    assert!(second.batch_item_failures.is_empty(), "{second:?}");
    assert_eq!(put_events_calls(&log), 1 + 3 + 2, "a call, one with two SDK retries, then two");

    let mut raw = after_crash;
    for (id, count) in tally(&bus.deliveries().await) {
        *raw.entry(id).or_default() += count;
    }
    let consumer: HashSet<&String> = raw.keys().collect();
    let missing: Vec<&String> =
        committed.iter().map(|change| &change.id).filter(|id| !consumer.contains(id)).collect();
    assert!(missing.is_empty(), "missing after the retry: {missing:?}");
    assert_eq!(consumer.len(), 25, "deduped by id, every change once");
    let duplicated: HashSet<String> =
        raw.iter().filter(|(_, count)| **count > 1).map(|(id, _)| id.clone()).collect();
    assert_eq!(
        duplicated, sent_in_lost_call,
        "at least once: only what was sent before the failure was noticed is sent again"
    );
    assert!(raw.values().all(|count| *count <= 2), "{raw:?}");
    for change in &committed[..10] {
        assert_eq!(raw[&change.id], 1, "records before the failure point are checkpointed, never re-sent");
    }
}

// (c) Entries a PutEvents answer refuses.

/// A proxy in front of moto that answers `PutEvents` as EventBridge does when it refuses some
/// entries: the others are forwarded, and the answer has `FailedEntryCount` and, in each refused
/// entry's place, an `ErrorCode`. Which entries, how often, and with which code, is told per
/// change id; it also keeps how many entries each call carried.
#[derive(Clone, Default)]
struct Refuser(Arc<Mutex<RefuserState>>);

#[derive(Default)]
struct RefuserState {
    /// Change id → (refusals left, error code).
    refusals: HashMap<String, (usize, &'static str)>,
    entries_per_call: Vec<usize>,
}

impl Refuser {
    /// Refuses the entry of change `id` `times` times with `code`.
    fn refuse(&self, id: &str, times: usize, code: &'static str) {
        self.0.lock().unwrap().refusals.insert(id.to_owned(), (times, code));
    }

    fn heal(&self) {
        self.0.lock().unwrap().refusals.clear();
    }

    fn entries_per_call(&self) -> Vec<usize> {
        std::mem::take(&mut self.0.lock().unwrap().entries_per_call)
    }

    /// Starts it on a loopback port; its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = (self.clone(), reqwest::Client::builder().no_proxy().build().unwrap(), moto_endpoint());
        let app = axum::Router::new().fallback(forward).with_state(Arc::new(state));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// Each of a request's entries: to forward, or refused with a code.
    fn split(&self, entries: &[Value]) -> Vec<Result<Value, &'static str>> {
        let mut state = self.0.lock().unwrap();
        state.entries_per_call.push(entries.len());
        entries
            .iter()
            .map(|entry| {
                let detail: Value =
                    serde_json::from_str(entry["Detail"].as_str().unwrap_or("{}")).unwrap_or_default();
                let id = detail["id"].as_str().unwrap_or_default();
                match state.refusals.get_mut(id) {
                    Some((left, code)) if *left > 0 => {
                        *left -= 1;
                        Err(*code)
                    }
                    _ => Ok(entry.clone()),
                }
            })
            .collect()
    }
}

type RefuserApp = Arc<(Refuser, reqwest::Client, String)>;

async fn forward(
    axum::extract::State(app): axum::extract::State<RefuserApp>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let (refuser, http, upstream) = &*app;
    let send = |body: Vec<u8>| {
        let mut request = http.request(method.clone(), format!("{upstream}{uri}"));
        for (name, value) in &headers {
            if name != "host" && name != "content-length" {
                request = request.header(name.as_str(), value.as_bytes());
            }
        }
        request.body(body).send()
    };
    let relay = |response: reqwest::Response| async move {
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in response.headers() {
            if name != "content-length" && name != "transfer-encoding" && name != "connection" {
                headers.insert(
                    axum::http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                    axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                );
            }
        }
        (status, headers, response.bytes().await.unwrap())
    };
    let target = headers.get("x-amz-target").and_then(|target| target.to_str().ok()).unwrap_or_default();
    if target != "AWSEvents.PutEvents" {
        return relay(send(body.to_vec()).await.unwrap()).await;
    }
    let mut request: Value = serde_json::from_slice(&body).unwrap();
    let split = refuser.split(request["Entries"].as_array().unwrap());
    let accepted: Vec<Value> = split.iter().filter_map(|entry| entry.clone().ok()).collect();
    let mut answered: Vec<Value> = Vec::new();
    if !accepted.is_empty() {
        request["Entries"] = Value::from(accepted);
        let (status, _, bytes) = relay(send(serde_json::to_vec(&request).unwrap()).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        answered = answer["Entries"].as_array().unwrap().clone();
    }
    let mut answered = answered.into_iter();
    let mut failed = 0;
    let entries: Vec<Value> = split
        .iter()
        .map(|entry| match entry {
            Ok(_) => answered.next().expect("moto answers every entry it was sent"),
            Err(code) => {
                failed += 1;
                json!({ "ErrorCode": code, "ErrorMessage": "refused (injected)" })
            }
        })
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
    let body = json!({ "FailedEntryCount": failed, "Entries": entries }).to_string();
    (StatusCode::OK, headers, Bytes::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_entries_are_sent_again_alone_and_arrive_once() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let committed = changes(10);
    feed.commit(&committed).await;
    let records = feed.lambda_records().await;
    let refuser = Refuser::default();
    refuser.refuse(&committed[3].id, 1, "ThrottlingException");
    refuser.refuse(&committed[6].id, 2, "InternalFailure");
    let log = RequestLog::default();
    let notifier = Notifier::new(eventbridge_client(&refuser.start().await, log.clone()), &bus.name)
        .with_retry(TEST_RETRY);

    let outcome = notifier.publish(&records).await;

    assert_eq!(
        outcome,
        BatchOutcome { published: 10, skipped: 0, failed: 0, put_events_calls: 3, retry_from: None },
        "both retried, the second twice"
    );
    assert_eq!(refuser.entries_per_call(), [10, 2, 1], "only the refused entries are sent again");
    assert_eq!(put_events_calls(&log), 3);
    let expected: BTreeMap<String, usize> = ids(&committed).into_iter().map(|id| (id, 1)).collect();
    assert_eq!(tally(&bus.deliveries().await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_refused_on_every_attempt_are_reported_from_the_earliest() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let committed = changes(25);
    feed.commit(&committed).await;
    let records = feed.lambda_records().await;
    let refuser = Refuser::default();
    refuser.refuse(&committed[14].id, usize::MAX, "InternalFailure");
    refuser.refuse(&committed[12].id, usize::MAX, "ThrottlingException");
    let log = RequestLog::default();
    let notifier = Notifier::new(eventbridge_client(&refuser.start().await, log.clone()), &bus.name)
        .with_retry(TEST_RETRY);

    let first = notifier.publish(&records).await;

    assert_eq!(first.retry_from.as_deref(), Some(sequence_number(&records[12]).as_str()), "{first:?}");
    assert_eq!((first.published, first.failed), (18, 2), "{first:?}");
    assert_eq!(
        refuser.entries_per_call(),
        [10, 10, 2, 2],
        "three attempts for the refused pair, and no call for the records after the failure point"
    );
    assert_eq!(put_events_calls(&log), 4);
    let mut raw = tally(&bus.deliveries().await);
    assert_eq!(raw.len(), 18);
    assert!(!raw.contains_key(&committed[12].id) && !raw.contains_key(&committed[14].id));

    // Lambda retries from record 13, and EventBridge takes everything this time.
    refuser.heal();
    let resume = resume_at(&records, records.len(), &first.response());
    assert_eq!(resume, 12);
    let second = notifier.publish(&records[resume..]).await;
    assert_eq!(second.retry_from, None, "{second:?}");
    assert_eq!(refuser.entries_per_call(), [10, 3]);
    for (id, count) in tally(&bus.deliveries().await) {
        *raw.entry(id).or_default() += count;
    }
    assert_eq!(raw.len(), 25, "none missing");
    let duplicated: Vec<&String> = raw.iter().filter(|(_, count)| **count > 1).map(|(id, _)| id).collect();
    let accepted_beside_the_failures: Vec<&String> =
        [13, 15, 16, 17, 18, 19].iter().map(|index| &committed[*index].id).collect();
    assert_eq!(
        duplicated, accepted_beside_the_failures,
        "only the entries accepted in the failed call, after the failure point, arrive twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_moto_refuses_for_good_is_reported_without_retries() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let mut committed = changes(5);
    // EventBridge (and moto) refuse an entry without a detail type: InvalidArgument, for good.
    committed[2].change_type = String::new();
    feed.commit(&committed).await;
    let records = feed.lambda_records().await;
    let log = RequestLog::default();
    let notifier =
        Notifier::new(eventbridge_client(&moto_endpoint(), log.clone()), &bus.name).with_retry(TEST_RETRY);

    let outcome = notifier.publish(&records).await;

    assert_eq!(
        outcome,
        BatchOutcome {
            published: 4,
            skipped: 0,
            failed: 1,
            put_events_calls: 1,
            retry_from: Some(sequence_number(&records[2]))
        },
        "moto answered FailedEntryCount 1 with InvalidArgument, which no retry would change"
    );
    assert_eq!(put_events_calls(&log), 1);
    let delivered = tally(&bus.deliveries().await);
    let expected: BTreeMap<String, usize> =
        [0, 1, 3, 4].iter().map(|index| (committed[*index].id.clone(), 1)).collect();
    assert_eq!(delivered, expected);
}

// (d) Records that are not changes, and changes that cannot be read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_changes_are_skipped_and_unreadable_ones_reported_in_order() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let committed = changes(4);
    let text = |value: &str| AttributeValue::S(value.to_owned());
    let feed_key = |cursor: &str| {
        HashMap::from([("pk".to_owned(), text("FEED#2025-06-15")), ("sk".to_owned(), text(cursor))])
    };
    // An account item: no `change`, and every attribute type the converter knows.
    let account = HashMap::from([
        ("pk".to_owned(), text("ACCOUNT#acct_N1")),
        ("sk".to_owned(), text("STATE")),
        ("version".to_owned(), AttributeValue::N("3".to_owned())),
        ("deauthorized".to_owned(), AttributeValue::Bool(false)),
        ("reason".to_owned(), AttributeValue::Null(true)),
        (
            "capabilities".to_owned(),
            AttributeValue::M(HashMap::from([("transfers".to_owned(), text("active"))])),
        ),
        ("due".to_owned(), AttributeValue::L(vec![text("external_account")])),
    ]);
    let mut not_json = feed_key("90000000000000000001");
    not_json.insert("change".to_owned(), text("{not json"));
    let mut not_a_string = feed_key("90000000000000000002");
    not_a_string.insert("change".to_owned(), AttributeValue::N("7".to_owned()));
    let mut not_a_change = feed_key("90000000000000000003");
    not_a_change.insert("change".to_owned(), text(r#"{"id": "chg_x", "type": "account.deauthorized"}"#));
    feed.put(vec![
        feed_item(&committed[0]),
        account,
        feed_item(&committed[1]),
        not_json,
        feed_item(&committed[2]),
        not_a_string,
        not_a_change,
        feed_item(&committed[3]),
    ])
    .await;
    // Unfiltered: the notifier must cope with what the filter would have kept from it.
    let records = feed.all_lambda_records().await;
    assert_eq!(records.len(), 8);
    let log = RequestLog::default();
    let notifier =
        Notifier::new(eventbridge_client(&moto_endpoint(), log.clone()), &bus.name).with_retry(TEST_RETRY);

    // Lambda's side: batches from the checkpoint, and for a record that keeps failing, the first
    // failure and LAMBDA_RETRIES retries before it goes to the on-failure destination and the
    // shard moves on past it (bisecting at the reported record, so nothing else goes with it).
    const LAMBDA_RETRIES: usize = 2;
    let mut start = 0;
    let mut failures = 0;
    let mut outcomes = Vec::new();
    while start < records.len() {
        let outcome = notifier.publish(&records[start..]).await;
        let resume = start + resume_at(&records[start..], records.len() - start, &outcome.response());
        if resume > start {
            failures = usize::from(outcome.retry_from.is_some());
            start = resume;
        } else {
            failures += 1;
        }
        if failures > LAMBDA_RETRIES {
            failures = 0;
            start += 1;
        }
        outcomes.push(outcome);
        assert!(outcomes.len() < 50, "the shard never got past a record");
    }

    let summary: Vec<(usize, usize, usize, Option<usize>)> = outcomes
        .iter()
        .map(|outcome| {
            let at = outcome.retry_from.as_ref().map(|reported| {
                records
                    .iter()
                    .position(|record| record.change.sequence_number.as_ref() == Some(reported))
                    .unwrap()
            });
            (outcome.published, outcome.skipped, outcome.failed, at)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (2, 1, 1, Some(3)), // change, account item skipped, change, then `{not json`
            (0, 0, 1, Some(3)), // Lambda's retries: the same record fails again, nothing is sent
            (0, 0, 1, Some(3)),
            (1, 0, 1, Some(5)), // past it: a change, then an N attribute
            (0, 0, 1, Some(5)),
            (0, 0, 1, Some(5)),
            (0, 0, 1, Some(6)), // JSON, but not a change
            (0, 0, 1, Some(6)),
            (0, 0, 1, Some(6)),
            (1, 0, 0, None), // the last change
        ]
    );
    assert_eq!(put_events_calls(&log), 3, "one call per run of readable changes; none for a poison record");
    let expected: BTreeMap<String, usize> = ids(&committed).into_iter().map(|id| (id, 1)).collect();
    assert_eq!(
        tally(&bus.deliveries().await),
        expected,
        "every readable change once, none lost behind a bad one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_an_image_or_a_sequence_number_do_not_panic() {
    let bus = Bus::create().await;
    let log = RequestLog::default();
    let notifier =
        Notifier::new(eventbridge_client(&moto_endpoint(), log.clone()), &bus.name).with_retry(TEST_RETRY);
    // A REMOVE (a feed item's TTL expiry) carries no new image: nothing to publish.
    let removal: EventRecord = serde_json::from_value(json!({
        "eventID": "1", "eventName": "REMOVE", "awsRegion": "us-east-1",
        "dynamodb": {"Keys": {"pk": {"S": "FEED#2025-06-15"}}, "SequenceNumber": "1", "SizeBytes": 10}
    }))
    .unwrap();
    // An unreadable change with no sequence number: reported with an empty identifier, which
    // Lambda reads as the whole batch failed.
    let nameless: EventRecord = serde_json::from_value(json!({
        "eventID": "2", "eventName": "INSERT", "awsRegion": "us-east-1",
        "dynamodb": {"NewImage": {"change": {"S": "[]"}}, "SizeBytes": 10}
    }))
    .unwrap();

    assert_eq!(notifier.publish(&[]).await, BatchOutcome::default());
    let outcome = notifier.publish(&[removal.clone(), nameless]).await;
    assert_eq!(
        outcome,
        BatchOutcome {
            published: 0,
            skipped: 1,
            failed: 1,
            put_events_calls: 0,
            retry_from: Some(String::new())
        }
    );
    let response = serde_json::to_value(outcome.response()).unwrap();
    assert_eq!(response, json!({"batchItemFailures": [{"itemIdentifier": ""}]}));
    let response = notifier.handle(event(&[removal]), deadline()).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(put_events_calls(&log), 0);
    assert!(bus.deliveries().await.is_empty());
}

// The figure for BENCHMARKS.md.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the figure's run: 1,000 changes, about 30 s on moto; run with --ignored --nocapture"]
async fn a_thousand_changes_take_a_hundred_put_events_calls() {
    let (feed, bus) = (Feed::create().await, Bus::create().await);
    let committed = changes(1_000);
    let started = std::time::Instant::now();
    feed.commit(&committed).await;
    let records = feed.lambda_records().await;
    assert_eq!(records.len(), 1_000);
    println!("1000 changes committed and read from the stream in {:?}", started.elapsed());
    let log = RequestLog::default();
    let notifier =
        Notifier::new(eventbridge_client(&moto_endpoint(), log.clone()), &bus.name).with_retry(TEST_RETRY);

    let started = std::time::Instant::now();
    let mut invocations = 0;
    let mut deliveries = Vec::new();
    for batch in records.chunks(LAMBDA_BATCH_SIZE) {
        let response = notifier.handle(event(batch), deadline()).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        invocations += 1;
        // Drained as it goes: moto's queue slows down as it fills.
        deliveries.extend(bus.deliveries().await);
    }
    let elapsed = started.elapsed();
    let calls = put_events_calls(&log);
    println!(
        "1000 changes: {invocations} invocations of {LAMBDA_BATCH_SIZE}, {calls} PutEvents calls, \
         {elapsed:?} on moto, consumer's reads included"
    );
    assert_eq!(calls, 100);
    let delivered = tally(&deliveries);
    assert_eq!(delivered.len(), 1_000);
    assert!(delivered.values().all(|count| *count == 1));
}

// (e) End to end: the changes the store itself writes, with the state they describe, reach the bus.

/// Platform calls and webhook deliveries on the DynamoDB store write their changes in their own
/// transactions; the stream, filtered as the deployed mapping filters it, carries exactly those
/// items; and the bus receives every change `GET /changes` lists, once, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_the_store_commits_are_the_ones_the_bus_receives() {
    use integration_tests::TestClock;
    use integration_tests::stripe_stub::StripeStub;
    use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};
    use shared::store::dynamodb::{DynamoStore, FEED_SETTLE_SECS, create_table};

    let client = dynamodb_client().await;
    let table = unique("e2e");
    create_table(&client, &table).await.expect("the emulator creates the table");
    let store = DynamoStore::new(client.clone(), &table);
    let stub = StripeStub::start().await;
    let clock = TestClock::at(stub.now());
    let settings = PlatformSettings { expected_livemode: Some(false), ..PlatformSettings::default() };
    let stripe = shared::stripe::client::StripeClient::new(stub.client_config()).unwrap();
    let api = PlatformApi::with_clock(store.clone(), Some(stripe), settings, clock.clone());
    let call = |path: &'static str, body: Value| {
        let api = &api;
        async move {
            let body = body.to_string();
            let request = ApiRequest { method: "POST", path, query: "", body: body.as_bytes(), base_url: "" };
            let reply = api.handle(&request).await;
            assert!(reply.status < 300, "{path}: {}", reply.body);
            serde_json::from_str::<Value>(&reply.body).unwrap()
        }
    };
    let mut sellers = Vec::new();
    for n in 0..3 {
        let body = json!({"reference": format!("seller-{n}"), "country": "US", "dashboard": "express",
                          "capabilities": ["transfers"]});
        sellers.push(call("/accounts", body).await["account_id"].as_str().unwrap().to_owned());
    }
    for (n, seller) in sellers.iter().enumerate() {
        let body = json!({"reference": format!("t-{n}"), "destination": seller, "amount": 100 + n, "currency": "usd"});
        call("/transfers", body).await;
    }
    // A webhook delivery activates one seller: its status and capability changes ride in its write.
    let webhook = shared::webhook::WebhookService::with_clock(
        store.clone(),
        &integration_tests::settings(),
        clock.clone(),
    );
    let event = integration_tests::account_updated("evt_e2e", &sellers[0], stub.now() + 1, true, &[]);
    let (header, body) = integration_tests::signed(&event, stub.now());
    assert_eq!(webhook.handle(Some(&header), &body).await.status, 200);

    clock.advance(FEED_SETTLE_SECS + 1);
    let now = shared::clock::Clock::now_unix(&clock);
    let listed =
        shared::store::AccountStore::list_changes(&store, None, 100, now).await.unwrap().unwrap().changes;
    // Per seller its status and its one capability; per transfer its step; the activation two more.
    assert_eq!(listed.len(), 3 * 2 + 3 + 2, "{listed:?}");

    let described = client.describe_table().table_name(&table).send().await.unwrap();
    let stream_arn =
        described.table().and_then(|table| table.latest_stream_arn()).expect("the table has a stream");
    let feed = Feed {
        dynamodb: client.clone(),
        streams: streams_client().await,
        table,
        stream_arn: stream_arn.to_owned(),
    };
    let records = feed.lambda_records().await;
    assert_eq!(records.len(), listed.len(), "the filter passes the change items and nothing else");

    let bus = Bus::create().await;
    let notifier = Notifier::new(eventbridge_client(&moto_endpoint(), RequestLog::default()), &bus.name)
        .with_retry(TEST_RETRY);
    let response = notifier.handle(event_of(&records), deadline()).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let delivered: BTreeMap<String, Value> = bus
        .deliveries()
        .await
        .into_iter()
        .map(|event| (event["detail"]["id"].as_str().unwrap().to_owned(), event["detail"].clone()))
        .collect();
    let expected: BTreeMap<String, Value> =
        listed.iter().map(|change| (change.id.clone(), serde_json::to_value(change).unwrap())).collect();
    assert_eq!(delivered, expected, "the bus gets exactly what the feed lists, cursors included");
}

fn event_of(records: &[EventRecord]) -> Event {
    event(records)
}
