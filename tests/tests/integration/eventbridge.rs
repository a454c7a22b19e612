//! The EventBridge intake on moto's SQS and DynamoDB through the real AWS SDK: the sample batch in
//! `events/sqs/` is sent to an intake queue, received back as Lambda would receive it, and run
//! through the intake on DynamoDB and on SQLite. Stripe events from the configured source are
//! stored once; everything else lands, unchanged, on the intake dead-letter queue and stores
//! nothing; a refusal the dead-letter queue does not take, or an event storage does not take, is
//! handed back for redelivery.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use integration_tests::log_capture::capture_logs;
use integration_tests::{
    DYNAMODB_ENDPOINT, NOW, batch_failures, dynamo_store, dynamodb_client, lambda_sqs_event, queue_arn,
    sqlite_store, sqs_client,
};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::account::{AccountId, OnboardingStatus};
use shared::eventbridge::{
    DeadLetters, EVENTBRIDGE_SOURCE, EventBridgeIntake, INTAKE_DLQ_URL, IntakeRefusal, IntakeSettings,
    REASON_ATTRIBUTE, SqsDeadLetters, read_envelope,
};
use shared::store::dynamodb::DynamoStore;
use shared::store::sqs::{SqsQueue, create_queue_with_dlq, create_queues};
use shared::store::{AccountStore, BoxFuture, EventOutcome, StepQueue, StoreError};
use shared::webhook::WebhookService;

/// The partner event source the samples come from.
const SOURCE: &str = "aws.partner/stripe.com/ed_test_connectflow";
/// The connected account the sample snapshot events are about.
const ACCOUNT: &str = "acct_1QcFlowDemo0004";
/// The sample snapshot `account.updated`, whose account is active.
const SNAPSHOT_EVENT: &str = "evt_1QcEbr3ZRdECX8ViIntake01";
/// The sample `capability.updated`, whose detail a pipe stringified.
const STRINGIFIED_EVENT: &str = "evt_1QcEbs8Li6v4z9NaIntake02";
/// The sample thin event.
const THIN_EVENT: &str = "evt_test_65RcEbIntakeThin0001ConnectFlowSampleQ7x2";
/// The Stripe event inside the sample from a foreign source: it would restrict the account.
const FOREIGN_EVENT: &str = "evt_1QcEbt4XyZForeignSrc003";

/// The sample batch, as Lambda delivers it.
fn sample_batch() -> SqsEvent {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/sqs/eventbridge-intake.batch.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Each sample record's body, in the file's order.
fn sample_bodies() -> Vec<String> {
    sample_batch().records.into_iter().map(|record| record.body.unwrap()).collect()
}

/// The settings a deployment of the samples would have, with `dead_letter_url`.
fn settings(dead_letter_url: &str) -> IntakeSettings {
    IntakeSettings::from_lookup(|name| match name {
        EVENTBRIDGE_SOURCE => Some(SOURCE.to_owned()),
        INTAKE_DLQ_URL => Some(dead_letter_url.to_owned()),
        _ => None,
    })
    .unwrap()
}

/// A pipeline on `store` on the fixed clock, with the intake's settings (no signing secrets).
fn webhook<S: AccountStore>(store: S, settings: &IntakeSettings) -> WebhookService<S, FixedClock> {
    WebhookService::with_clock(store, &settings.webhook_settings(), FixedClock(NOW))
}

/// A queue-name prefix of its own, so that tests do not see each other's messages.
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("cf-eb-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The queues of one deployment: the intake queue and its dead-letter queue (standard queues, as
/// an EventBridge rule's target is), and the FIFO step and fetch queues.
struct Queues {
    intake: String,
    dead_letters: String,
    transfers: String,
    payouts: String,
    fetch: String,
}

async fn standard_queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client.create_queue().queue_name(name).send().await.unwrap().queue_url().unwrap().to_owned()
}

async fn create_deployment_queues(client: &aws_sdk_sqs::Client) -> Queues {
    let prefix = prefix();
    let (transfers, payouts) = create_queues(client, &prefix).await.unwrap();
    Queues {
        intake: standard_queue(client, &format!("{prefix}-eventbridge-intake")).await,
        dead_letters: standard_queue(client, &format!("{prefix}-eventbridge-intake-dlq")).await,
        transfers,
        payouts,
        fetch: create_queue_with_dlq(client, &format!("{prefix}-fetch")).await.unwrap(),
    }
}

/// Every message on the queue, with every attribute, without waiting: one `ReceiveMessage` after
/// another until one comes back empty. Received messages stay in flight, so none is seen twice.
async fn receive_all(client: &aws_sdk_sqs::Client, url: &str) -> Vec<Message> {
    let mut all = Vec::new();
    for _ in 0..10 {
        let output = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        if output.messages().is_empty() {
            return all;
        }
        all.extend_from_slice(output.messages());
    }
    panic!("the queue did not empty");
}

/// Sends each body to the queue, then receives them all back as the SQS event Lambda's event
/// source mapping would hand the function: the real message ids, receipt handles and attributes.
async fn through_the_queue(client: &aws_sdk_sqs::Client, url: &str, bodies: &[String]) -> SqsEvent {
    for body in bodies {
        client.send_message().queue_url(url).message_body(body).send().await.unwrap();
    }
    let messages = receive_all(client, url).await;
    assert_eq!(messages.len(), bodies.len(), "every sent message is received");
    lambda_sqs_event(&messages, &queue_arn(client, url).await)
}

/// The message id of the record whose body is `body`.
fn message_id<'a>(event: &'a SqsEvent, body: &str) -> &'a str {
    let record = event.records.iter().find(|record| record.body.as_deref() == Some(body)).unwrap();
    record.message_id.as_deref().unwrap()
}

/// Each dead-lettered body, with the reason attribute it carries.
fn dead_lettered(messages: &[Message]) -> BTreeMap<String, String> {
    messages
        .iter()
        .map(|message| {
            let reason = message.message_attributes().and_then(|attributes| attributes.get(REASON_ATTRIBUTE));
            let reason = reason.and_then(|value| value.string_value()).unwrap_or_default();
            (message.body().unwrap().to_owned(), reason.to_owned())
        })
        .collect()
}

/// The sample batch, end to end: sent to the intake queue, received, handled on `store` with the
/// step queue `step_queue` builds, and handled again as a redelivery.
async fn the_sample_batch_end_to_end<S: AccountStore>(
    store: S,
    step_queue: impl FnOnce(&S, &aws_sdk_sqs::Client, &Queues) -> Arc<dyn StepQueue>,
) {
    let client = sqs_client().await;
    let queues = create_deployment_queues(&client).await;
    let settings = settings(&queues.dead_letters);
    let queue = step_queue(&store, &client, &queues);
    let intake = EventBridgeIntake::new(
        webhook(store, &settings).with_queue(queue),
        SqsDeadLetters::new(client.clone(), &settings.dead_letter_url),
        settings.source.clone(),
    );
    let bodies = sample_bodies();
    let event = through_the_queue(&client, &queues.intake, &bodies).await;

    let response = intake.handle(event.clone()).await;
    assert_eq!(batch_failures(&response), Vec::<&str>::new(), "every message is acknowledged");

    let store = intake.webhook().store();
    let account_id = AccountId::parse(ACCOUNT).unwrap();
    let account =
        store.load_account(&account_id).await.unwrap().expect("the snapshot event's account is stored");
    // The foreign-source event would have restricted it; it is active, as the snapshot says.
    assert_eq!(account.onboarding_status, OnboardingStatus::Active);
    assert_eq!(account.capabilities.get("transfers").map(String::as_str), Some("active"));
    for id in [SNAPSHOT_EVENT, STRINGIFIED_EVENT] {
        let record = store.load_event(id).await.unwrap().unwrap_or_else(|| panic!("{id} is recorded"));
        assert_eq!(record.outcome, EventOutcome::Applied, "{id}");
        assert_eq!(record.account_id.as_deref(), Some(ACCOUNT), "{id}");
    }
    // The thin event's outcome belongs to the thin-event path and is tested with it; here it is
    // enough that the intake handed it to the pipeline, which recorded it without applying it.
    let thin = store.load_event(THIN_EVENT).await.unwrap().expect("the thin event is recorded");
    assert_ne!(thin.outcome, EventOutcome::Applied);
    assert_eq!(store.load_event(FOREIGN_EVENT).await.unwrap(), None, "the foreign event stored nothing");
    // The detail that is not an event is an account object: its id is the account's.
    assert_eq!(store.load_event(ACCOUNT).await.unwrap(), None, "the non-event stored nothing");

    let expected = BTreeMap::from([
        (bodies[2].clone(), IntakeRefusal::ForeignSource.kind().to_owned()),
        (bodies[3].clone(), IntakeRefusal::DetailNotAStripeEvent.kind().to_owned()),
    ]);
    let refused = receive_all(&client, &queues.dead_letters).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(
        dead_lettered(&refused),
        expected,
        "the refusals are on the dead-letter queue, bodies unchanged"
    );

    // Lambda redelivers a batch it never heard back about: nothing is stored twice.
    let changes = store.list_changes(None, 100, NOW).await.unwrap();
    let mut records = Vec::new();
    for id in [SNAPSHOT_EVENT, STRINGIFIED_EVENT, THIN_EVENT] {
        records.push((id, store.load_event(id).await.unwrap()));
    }
    let response = intake.handle(event).await;
    assert_eq!(batch_failures(&response), Vec::<&str>::new());
    assert_eq!(store.load_account(&account_id).await.unwrap(), Some(account), "the account is unchanged");
    for (id, record) in records {
        assert_eq!(store.load_event(id).await.unwrap(), record, "{id} is unchanged");
    }
    assert_eq!(store.list_changes(None, 100, NOW).await.unwrap(), changes, "the change feed has nothing new");
    // A refusal is dead-lettered at least once: the redelivery sends it again rather than lose it.
    let again = receive_all(&client, &queues.dead_letters).await;
    assert_eq!(dead_lettered(&again), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sample_batch_on_dynamodb_and_sqs() {
    the_sample_batch_end_to_end(dynamo_store().await, |_, client, queues| {
        let queue = SqsQueue::new(client.clone(), &queues.transfers, &queues.payouts)
            .with_fetch_queue(Some(queues.fetch.clone()));
        Arc::new(queue)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sample_batch_on_sqlite() {
    // The embedded store is its own step queue, as under `cargo lambda watch`; refusals still go
    // to the dead-letter queue on SQS.
    the_sample_batch_end_to_end(sqlite_store(), |store, _, _| Arc::new(store.clone())).await;
}

/// The sample snapshot event and the sample whose detail is not an event, through the queue.
async fn stored_and_refused(client: &aws_sdk_sqs::Client, queues: &Queues) -> (SqsEvent, String, String) {
    let bodies = sample_bodies();
    let (stored, refused) = (bodies[0].clone(), bodies[3].clone());
    let event = through_the_queue(client, &queues.intake, &[stored.clone(), refused.clone()]).await;
    (event, stored, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_the_dead_letter_queue_does_not_take_is_handed_back() {
    let client = sqs_client().await;
    let queues = create_deployment_queues(&client).await;
    let endpoint = std::env::var(DYNAMODB_ENDPOINT).unwrap();
    let missing = format!("{endpoint}/123456789012/cf-eb-{}-no-such-queue", std::process::id());
    let settings = settings(&missing);
    let intake = EventBridgeIntake::new(
        webhook(sqlite_store(), &settings),
        SqsDeadLetters::new(client.clone(), &settings.dead_letter_url),
        settings.source.clone(),
    );
    let (event, _, refused) = stored_and_refused(&client, &queues).await;
    let response = intake.handle(event.clone()).await;
    assert_eq!(batch_failures(&response), [message_id(&event, &refused)], "only the refusal comes back");
    let stored = intake.webhook().store().load_event(SNAPSHOT_EVENT).await.unwrap();
    assert_eq!(stored.map(|record| record.outcome), Some(EventOutcome::Applied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_storage_does_not_take_is_handed_back_and_refusals_still_go() {
    let client = sqs_client().await;
    let queues = create_deployment_queues(&client).await;
    let settings = settings(&queues.dead_letters);
    // A table that does not exist: every DynamoDB call fails, as when DynamoDB is unavailable.
    let store =
        DynamoStore::new(dynamodb_client().await, format!("cf-eb-{}-no-such-table", std::process::id()));
    let intake = EventBridgeIntake::new(
        webhook(store, &settings),
        SqsDeadLetters::new(client.clone(), &settings.dead_letter_url),
        settings.source.clone(),
    );
    let (event, stored, refused) = stored_and_refused(&client, &queues).await;
    let response = intake.handle(event.clone()).await;
    assert_eq!(batch_failures(&response), [message_id(&event, &stored)], "the event is redelivered");
    let letters = receive_all(&client, &queues.dead_letters).await;
    assert_eq!(dead_lettered(&letters).keys().collect::<Vec<_>>(), [&refused]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifo_dead_letter_queue_takes_each_refusal_once() {
    let client = sqs_client().await;
    let url = create_queue_with_dlq(&client, &format!("{}-intake-refusals", prefix())).await.unwrap();
    let dead_letters = SqsDeadLetters::new(client.clone(), &url);
    let body = sample_bodies()[2].clone();
    // Sent twice, as after a redelivery: the body's hash is the deduplication id.
    for _ in 0..2 {
        dead_letters.send(&body, IntakeRefusal::ForeignSource.kind()).await.unwrap();
    }
    let letters = receive_all(&client, &url).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].body(), Some(body.as_str()));
    let group = letters[0]
        .attributes()
        .and_then(|attributes| attributes.get(&MessageSystemAttributeName::MessageGroupId));
    assert_eq!(group.map(String::as_str), Some("foreign_source"));
}

#[test]
fn each_sample_record_reads_as_its_place_in_the_batch_says() {
    let batch = sample_batch();
    let bodies = sample_bodies();
    let read: Vec<Result<Value, IntakeRefusal>> = bodies
        .iter()
        .map(|body| read_envelope(body, SOURCE).map(|bytes| serde_json::from_slice(&bytes).unwrap()))
        .collect();
    assert_eq!(read.len(), 5);
    assert_eq!(read[0].as_ref().unwrap()["id"], SNAPSHOT_EVENT);
    assert_eq!(read[1].as_ref().unwrap()["object"], "v2.core.event");
    assert_eq!(read[1].as_ref().unwrap()["related_object"]["id"], "acct_1QcFlowDemo0005");
    assert_eq!(read[2], Err(IntakeRefusal::ForeignSource));
    assert_eq!(read[3], Err(IntakeRefusal::DetailNotAStripeEvent));
    assert_eq!(read[4].as_ref().unwrap()["id"], STRINGIFIED_EVENT);
    let stringified: Value = serde_json::from_str(&bodies[4]).unwrap();
    assert!(stringified["detail"].is_string(), "the last sample's detail is a string, as some pipes send it");
    // The foreign sample's detail is a genuine event: only its source keeps it out.
    assert!(read_envelope(&bodies[2], "aws.partner/stripe.com/ed_test_someoneelse").is_ok());

    // The snapshot event has the shape of the webhook's sample, under ids of its own.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/stripe/account.updated.active.json");
    let webhook_sample: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let snapshot = read[0].as_ref().unwrap();
    let keys = |value: &Value| value.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(snapshot), keys(&webhook_sample));
    assert_eq!(keys(&snapshot["data"]["object"]), keys(&webhook_sample["data"]["object"]));
    assert_ne!(snapshot["id"], webhook_sample["id"]);
    assert_eq!(snapshot["account"], ACCOUNT);

    for record in &batch.records {
        assert_eq!(record.event_source.as_deref(), Some("aws:sqs"));
        assert!(record.message_id.is_some() && record.receipt_handle.is_some());
    }
}

/// Dead letters kept in memory, for the logging test, which runs without the emulator.
#[derive(Default)]
struct Kept(Mutex<Vec<String>>);

impl DeadLetters for Kept {
    fn send<'a>(&'a self, body: &'a str, _reason: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.lock().unwrap().push(body.to_owned());
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn no_log_line_carries_a_body() {
    const MARKER: &str = "body_marker_must_not_be_logged";
    let kept = Arc::new(Kept::default());
    let mut bodies: Vec<String> =
        sample_bodies().iter().map(|body| body.replace("ada.okafor", MARKER)).collect();
    assert!(bodies[0].contains(MARKER) && bodies[2].contains(MARKER));
    bodies.push(format!("{{\"{MARKER}\": "));
    bodies.push(json!({"source": MARKER, "detail-type": MARKER, "detail": {}}).to_string());
    let records: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(index, body)| json!({"messageId": format!("m{index}"), "body": body, "attributes": {}}))
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    let (response, logs) = capture_logs(async {
        let settings = settings("http://127.0.0.1:9/unused");
        let intake = EventBridgeIntake::new(webhook(sqlite_store(), &settings), Arc::clone(&kept), SOURCE);
        intake.handle(event).await
    });
    assert_eq!(batch_failures(&response), Vec::<&str>::new());
    assert_eq!(kept.0.lock().unwrap().len(), 4, "foreign, not an event, not JSON, foreign");
    for logged in ["m0", SNAPSHOT_EVENT, "foreign_source", "detail_not_a_stripe_event", "not_json"] {
        assert!(logs.contains(logged), "{logged} is logged: {logs}");
    }
    assert!(!logs.contains(MARKER), "a body leaked into the logs: {logs}");
}
