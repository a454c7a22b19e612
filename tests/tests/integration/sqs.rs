//! The SQS queue and the SQS batch handler on moto: steps reach the right FIFO queue once, with
//! the destination as the group and the step id as the deduplication id, in as few requests as
//! SQS allows; and the webhook on DynamoDB, through SQS and the workers' batch handler, pays each
//! planned transfer and reversal exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use integration_tests::stripe_stub::StripeStub;
use integration_tests::{
    NOW, RequestLog, account_updated, batch_failures, dynamo_store, lambda_sqs_event, pipeline, queue_arn,
    signed, sqs_client, sqs_client_logged,
};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::account::AccountId;
use shared::domain::step::{StepKind, StepRef};
use shared::sqs_worker::handle_sqs_batch;
use shared::store::StepQueue;
use shared::store::dynamodb::DynamoStore;
use shared::store::sqs::{MAX_BATCH_ENTRIES, SqsQueue, create_queues};
use shared::stripe::client::StripeClient;
use shared::webhook::WebhookService;
use shared::worker::StepWorker;

/// A queue-name prefix of its own, so that tests do not see each other's messages.
fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("cf-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One `ReceiveMessage` of up to ten messages, with every system attribute, without waiting.
async fn receive(client: &aws_sdk_sqs::Client, url: &str) -> Vec<Message> {
    client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .wait_time_seconds(0)
        .send()
        .await
        .unwrap()
        .messages()
        .to_vec()
}

/// Deletes `messages`, as Lambda does with those a batch did not report as failed.
async fn delete(client: &aws_sdk_sqs::Client, url: &str, messages: &[&Message]) {
    if messages.is_empty() {
        return;
    }
    let mut request = client.delete_message_batch().queue_url(url);
    for (index, message) in messages.iter().enumerate() {
        let entry = DeleteMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .receipt_handle(message.receipt_handle().unwrap())
            .build()
            .unwrap();
        request = request.entries(entry);
    }
    let output = request.send().await.unwrap();
    assert!(output.failed().is_empty(), "{:?}", output.failed());
}

/// Every message on the queue, deleting each batch so that a FIFO group's next messages show.
async fn drain(client: &aws_sdk_sqs::Client, url: &str) -> Vec<Message> {
    let mut all = Vec::new();
    for _ in 0..20 {
        let batch = receive(client, url).await;
        if batch.is_empty() {
            return all;
        }
        delete(client, url, &batch.iter().collect::<Vec<_>>()).await;
        all.extend(batch);
    }
    panic!("the queue did not empty");
}

fn attribute(message: &Message, name: MessageSystemAttributeName) -> &str {
    message.attributes().and_then(|attributes| attributes.get(&name)).map(String::as_str).unwrap_or_default()
}

/// 23 steps for three destinations, interleaved: 18 for the transfers queue (transfers and
/// reversals) and 5 payouts.
fn mixed_steps() -> Vec<StepRef> {
    let destinations = ["acct_1SqsTestA", "acct_1SqsTestB", "acct_1SqsTestC"];
    (0..23)
        .map(|index| {
            let destination = AccountId::parse(destinations[index % 3]).unwrap();
            let payment_key = Some(format!("pi_{index}"));
            let (kind, step_id, payment_key) = match index % 4 {
                0 | 2 => (StepKind::Transfer, format!("tr:pi_{index}:{destination}"), payment_key),
                1 => (StepKind::Reversal, format!("trr:tr:pi_{index}:{destination}:250"), payment_key),
                _ => (StepKind::Payout, format!("po:{destination}:evt_{index}:usd"), None),
            };
            StepRef { kind, step_id: step_id.into(), payment_key: payment_key.map(Into::into), destination }
        })
        .collect()
}

#[tokio::test]
async fn each_step_reaches_its_fifo_queue_once_grouped_by_destination_and_deduplicated_by_id() {
    let log = RequestLog::default();
    let client = sqs_client_logged(log.clone()).await;
    let (transfers_url, payouts_url) = create_queues(&client, &prefix()).await.unwrap();
    let created = log.take();
    for url in [&transfers_url, &payouts_url] {
        let output = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = output.attributes().unwrap();
        assert_eq!(attributes[&QueueAttributeName::FifoQueue], "true");
        assert_eq!(attributes[&QueueAttributeName::ContentBasedDeduplication], "false");
        let redrive: Value = serde_json::from_str(&attributes[&QueueAttributeName::RedrivePolicy]).unwrap();
        let dead_letters = redrive["deadLetterTargetArn"].as_str().unwrap();
        assert!(dead_letters.ends_with("-dlq.fifo"), "{dead_letters}");
        assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "10");
    }
    log.take();
    let queue = SqsQueue::new(client.clone(), &transfers_url, &payouts_url);
    let steps = mixed_steps();
    let (to_payouts, to_transfers): (Vec<&StepRef>, Vec<&StepRef>) =
        steps.iter().partition(|step| step.kind == StepKind::Payout);
    assert_eq!((steps.len(), to_transfers.len(), to_payouts.len()), (23, 18, 5));

    queue.send(&steps).await.unwrap();
    let first_send = log.take();
    // Within the deduplication window a second send of the same steps is accepted and dropped.
    queue.send(&steps).await.unwrap();
    let second_send = log.take();
    let expected_batches =
        to_transfers.len().div_ceil(MAX_BATCH_ENTRIES) + to_payouts.len().div_ceil(MAX_BATCH_ENTRIES);
    println!("creating two queues with their dead-letter queues: {created:?}");
    println!("sending 23 steps (18 to the transfers queue, 5 to payouts): {first_send:?}");
    println!("sending them again: {second_send:?}");
    assert_eq!(expected_batches, 3);
    assert_eq!(first_send, vec!["SendMessageBatch"; expected_batches]);
    assert_eq!(second_send, vec!["SendMessageBatch"; expected_batches]);

    for (url, sent) in [(&transfers_url, &to_transfers), (&payouts_url, &to_payouts)] {
        let received = drain(&client, url).await;
        let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for message in &received {
            let step: StepRef = serde_json::from_str(message.body().unwrap()).unwrap();
            assert_eq!(
                attribute(message, MessageSystemAttributeName::MessageGroupId),
                step.destination.as_str()
            );
            assert_eq!(attribute(message, MessageSystemAttributeName::MessageDeduplicationId), step.step_id);
            by_group.entry(step.destination.as_str().to_owned()).or_default().push(step.step_id.into());
        }
        let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for step in sent.iter() {
            expected.entry(step.destination.as_str().to_owned()).or_default().push(step.step_id.to_string());
        }
        assert_eq!(by_group, expected, "each step once, on its queue, in order within its group");
    }
}

#[tokio::test]
async fn a_failed_send_names_the_count_and_no_message_body() {
    let client = sqs_client().await;
    let missing = format!("{}/000000000000/{}-missing.fifo", endpoint(), prefix());
    let queue = SqsQueue::new(client, &missing, &missing);
    let steps = mixed_steps();
    let error = queue.send(&steps).await.unwrap_err().to_string();
    assert!(error.contains("23 of 23 steps not sent"), "{error}");
    assert!(steps.iter().all(|step| !error.contains(step.step_id.as_str())), "{error}");
}

fn endpoint() -> String {
    std::env::var(integration_tests::DYNAMODB_ENDPOINT).unwrap()
}

fn event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": event_type, "created": created, "livemode": false,
        "data": {"object": object}})
}

async fn deliver(service: &WebhookService<DynamoStore, FixedClock>, event: &Value) -> (u16, String) {
    let (header, body) = signed(event, NOW);
    let reply = service.handle(Some(&header), &body).await;
    let outcome =
        serde_json::from_str::<Value>(&reply.body).unwrap()["outcome"].as_str().unwrap_or("").to_owned();
    (reply.status, outcome)
}

/// Runs the queue through the batch handler as Lambda would: receive, handle, delete the
/// messages not reported as failed. Returns every batch handled.
async fn run_worker(
    client: &aws_sdk_sqs::Client,
    url: &str,
    worker: &StepWorker<DynamoStore, FixedClock>,
) -> Vec<SqsEvent> {
    let arn = queue_arn(client, url).await;
    let mut batches = Vec::new();
    for _ in 0..20 {
        let messages = receive(client, url).await;
        if messages.is_empty() {
            return batches;
        }
        let event = lambda_sqs_event(&messages, &arn);
        let response = handle_sqs_batch(worker, event.clone()).await;
        assert_eq!(batch_failures(&response), Vec::<&str>::new());
        delete(client, url, &messages.iter().collect::<Vec<_>>()).await;
        batches.push(event);
    }
    panic!("the queue did not empty");
}

#[tokio::test]
async fn the_webhook_on_dynamodb_queues_to_sqs_and_the_batch_handler_moves_each_amount_once() {
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 100_000);
    stub.add_account("acct_A", true, true);
    stub.add_account("acct_B", true, true);
    let store = dynamo_store().await;
    let client = sqs_client().await;
    let (transfers_url, payouts_url) = create_queues(&client, &prefix()).await.unwrap();
    let queue = SqsQueue::new(client.clone(), &transfers_url, &payouts_url);
    let service = pipeline(store.clone()).with_queue(Arc::new(queue));
    let worker = StepWorker::with_clock(
        store.clone(),
        StripeClient::new(stub.client_config()).unwrap(),
        FixedClock(NOW),
    );
    deliver(&service, &account_updated("evt_a", "acct_A", NOW - 500, true, &[])).await;
    deliver(&service, &account_updated("evt_b", "acct_B", NOW - 500, true, &[])).await;

    let payment = json!({"id": "pi_sqs", "object": "payment_intent", "amount": 10_000,
        "amount_received": 10_000, "currency": "usd", "latest_charge": "ch_pi_sqs",
        "metadata": {"transfer:acct_A": "7000", "transfer:acct_B": "2000"}});
    let paid = event("evt_pi_sqs", "payment_intent.succeeded", NOW - 100, payment);
    assert_eq!(deliver(&service, &paid).await, (200, "applied".into()));
    assert_eq!(deliver(&service, &paid).await, (200, "duplicate".into()));
    let batches = run_worker(&client, &transfers_url, &worker).await;
    assert_eq!(batches.iter().map(|batch| batch.records.len()).sum::<usize>(), 2, "one message per transfer");
    let mut transfers: Vec<(String, i64)> =
        stub.transfers().into_iter().map(|transfer| (transfer.destination, transfer.amount)).collect();
    transfers.sort();
    assert_eq!(transfers, [("acct_A".to_owned(), 7000), ("acct_B".to_owned(), 2000)]);

    // SQS redelivering a whole batch, after the steps finished, calls Stripe no more.
    let calls = stub.requests().values().sum::<usize>();
    for batch in batches {
        assert_eq!(batch_failures(&handle_sqs_batch(&worker, batch).await), Vec::<&str>::new());
    }
    assert_eq!(stub.requests().values().sum::<usize>(), calls);

    let refund = json!({"id": "ch_pi_sqs", "object": "charge", "amount": 10_000, "amount_captured": 10_000,
        "amount_refunded": 2_500, "currency": "usd", "payment_intent": "pi_sqs", "captured": true});
    assert_eq!(deliver(&service, &event("evt_refund", "charge.refunded", NOW - 90, refund)).await.0, 200);
    run_worker(&client, &transfers_url, &worker).await;
    let mut reversals: Vec<(String, i64)> =
        stub.reversals().into_iter().map(|reversal| (reversal.destination, reversal.amount)).collect();
    reversals.sort();
    assert_eq!(reversals, [("acct_A".to_owned(), 1750), ("acct_B".to_owned(), 500)]);
    assert_eq!(stub.transfers().len(), 2, "still exactly the planned transfers");
    assert!(receive(&client, &payouts_url).await.is_empty(), "nothing was paid out");
}

/// The platform API on DynamoDB with the SQS queues, as deployed: `POST /transfers` and
/// `POST /payouts` each put their one step on its FIFO queue, a repeat adds nothing, and the
/// transfer worker's batch handler makes the transfer once.
#[tokio::test]
async fn platform_requests_reach_their_fifo_queues_once_and_the_worker_pays_once() {
    use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};

    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 100_000);
    stub.add_account("acct_P", true, true);
    let store = dynamo_store().await;
    let client = sqs_client().await;
    let (transfers_url, payouts_url) = create_queues(&client, &prefix()).await.unwrap();
    let queue = Arc::new(SqsQueue::new(client.clone(), &transfers_url, &payouts_url));
    let service = pipeline(store.clone());
    deliver(&service, &integration_tests::manual_payout_account_updated("evt_p", "acct_P", NOW - 500)).await;
    let settings = PlatformSettings { expected_livemode: Some(false), ..PlatformSettings::default() };
    let api = PlatformApi::with_clock(store.clone(), None, settings, FixedClock(NOW)).with_queue(queue);
    let post = |path: &'static str, body: Value| {
        let api = &api;
        async move {
            let body = body.to_string();
            let request = ApiRequest { method: "POST", path, query: "", body: body.as_bytes(), base_url: "" };
            api.handle(&request).await.status
        }
    };
    let transfer = json!({"reference": "sqs-t", "destination": "acct_P", "amount": 1234, "currency": "usd"});
    let payout = json!({"reference": "sqs-p", "account": "acct_P", "amount": 55, "currency": "usd"});
    assert_eq!(post("/transfers", transfer.clone()).await, 202);
    assert_eq!(post("/transfers", transfer).await, 200);
    assert_eq!(post("/payouts", payout.clone()).await, 202);
    assert_eq!(post("/payouts", payout).await, 200);

    let payouts = drain(&client, &payouts_url).await;
    assert_eq!(payouts.len(), 1, "one payout message, deduplicated by its step id");
    let worker = StepWorker::with_clock(
        store.clone(),
        StripeClient::new(stub.client_config()).unwrap(),
        FixedClock(NOW),
    );
    let batches = run_worker(&client, &transfers_url, &worker).await;
    assert_eq!(batches.iter().map(|batch| batch.records.len()).sum::<usize>(), 1, "one transfer message");
    let transfers: Vec<(String, i64)> =
        stub.transfers().into_iter().map(|transfer| (transfer.destination, transfer.amount)).collect();
    assert_eq!(transfers, [("acct_P".to_owned(), 1234)]);
}
