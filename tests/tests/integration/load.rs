//! Load on the AWS code path: the webhook pipeline on DynamoDB with the SQS queue, on moto, driven
//! by eight concurrent senders, each with clients of its own (bounded as the deployed webhook's)
//! as a concurrent Lambda instance has. Afterwards every event must be recorded once with its
//! outcome, every account must show its newest events, every planned step must be stored once and
//! sent to SQS once. Every DynamoDB and SQS request is counted per event type and answer.
//!
//! These tests start a moto of their own that serves one request at a time
//! (`scripts/serial_moto.py`). DynamoDB makes each request atomic; moto's threaded server does not: its `TransactWriteItems` deep-copies the table
//! while other threads write to it (a 500), and a cancelled transaction restores that copy, undoing
//! other requests' writes. Eight concurrent writers on one table hit both within seconds, so an
//! exactly-once check against the threaded server would be checking moto.
//!
//! The short run is part of the normal test run. The figures come from the longer one:
//! `cargo test -p integration-tests --test integration load:: -- --ignored --nocapture` (about 3 minutes).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use connect_flow::load::check::{Expected, check, check_queued, observe_store};
use connect_flow::load::count_ids;
use connect_flow::load::mix::{Mix, MixEvent};
use connect_flow::load::run::{Answer, Limits, Target, run};
use integration_tests::{RequestLog, SECRET, settings};
use shared::clock::{Clock, SystemClock};
use shared::domain::step::{StepRef, StepStatus};
use shared::store::dynamodb::{DynamoStore, create_table};
use shared::store::sqs::{SqsQueue, create_queues};
use shared::webhook::WebhookService;

const CONCURRENCY: usize = 8;

/// The requests of every delivery with one event type and answer.
#[derive(Debug, Default)]
struct Tally {
    deliveries: usize,
    requests: BTreeMap<String, usize>,
}

/// One pipeline per sender, each with its own logged DynamoDB and SQS clients, on one table and
/// one pair of queues. A sender sends one delivery at a time, so what its logs hold after a
/// delivery is exactly what that delivery cost.
struct Lambdas {
    services: Vec<WebhookService<DynamoStore>>,
    dynamodb_logs: Vec<RequestLog>,
    sqs_logs: Vec<RequestLog>,
    tallies: Mutex<BTreeMap<String, Tally>>,
}

impl Target for Lambdas {
    async fn deliver(&self, sender: usize, event: &MixEvent, signature: String) -> Answer {
        let reply = self.services[sender].handle(Some(&signature), &event.body).await;
        let answer = Answer::from_reply(reply.status, &reply.body);
        let dynamodb = self.dynamodb_logs[sender].take();
        let sqs = self.sqs_logs[sender].take();
        let key = format!("{} {}", event.event_type, answer.outcome.as_deref().unwrap_or("-"));
        let mut tallies = self.tallies.lock().unwrap();
        let tally = tallies.entry(key).or_default();
        tally.deliveries += 1;
        for (service, operations) in [("DynamoDB", dynamodb), ("SQS", sqs)] {
            for operation in operations {
                *tally.requests.entry(format!("{service} {operation}")).or_default() += 1;
            }
        }
        answer
    }
}

/// moto serving one request at a time on a port of its own, stopped when dropped.
struct SerialMoto {
    child: Child,
    endpoint: String,
}

impl SerialMoto {
    fn start() -> Self {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(python.exists(), "{} is missing: run ./scripts/test, which installs moto", python.display());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/serial_moto.py");
        let mut child = Command::new(python)
            .arg(script)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut port).unwrap();
        let port: u16 = port.trim().parse().unwrap_or_else(|_| panic!("moto did not start: {port:?}"));
        Self { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// The SDK's default configuration pointed at this moto, with credentials and region given so
    /// that nothing is looked up elsewhere. Not the deployed webhook's 750 ms attempt timeout:
    /// requests queue here behind seven others on a server a hundred times slower than DynamoDB,
    /// and a timed-out attempt that moto still commits is retried into a cancelled transaction,
    /// because moto ignores the `ClientRequestToken` that makes DynamoDB answer such a retry
    /// with the first attempt's success.
    async fn sdk_config(&self) -> aws_config::SdkConfig {
        let credentials = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(&self.endpoint)
            .load()
            .await
    }

    async fn dynamodb(&self, log: RequestLog) -> aws_sdk_dynamodb::Client {
        let config =
            aws_sdk_dynamodb::config::Builder::from(&self.sdk_config().await).interceptor(log).build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    async fn sqs(&self, log: RequestLog) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::config::Builder::from(&self.sdk_config().await).interceptor(log).build();
        aws_sdk_sqs::Client::from_conf(config)
    }
}

impl Drop for SerialMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message on a FIFO queue, deleting each batch so that each group's next message shows.
async fn drain(client: &aws_sdk_sqs::Client, url: &str, most: usize) -> Vec<StepRef> {
    let mut steps = Vec::new();
    for _ in 0..most / 10 + 10 {
        let output = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        let messages = output.messages();
        if messages.is_empty() {
            return steps;
        }
        let mut delete = client.delete_message_batch().queue_url(url);
        for (index, message) in messages.iter().enumerate() {
            steps.push(serde_json::from_str(message.body().unwrap()).unwrap());
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .receipt_handle(message.receipt_handle().unwrap())
                .build()
                .unwrap();
            delete = delete.entries(entry);
        }
        assert!(delete.send().await.unwrap().failed().is_empty());
    }
    panic!("{url} held more than {most} messages");
}

/// Loads the pipeline with `deliveries` deliveries at concurrency 8, checks exactly-once, and
/// prints the figures.
async fn load_on_the_emulator(tag: &str, seed: u64, deliveries: usize) {
    let moto = SerialMoto::start();
    let table = format!("connect-flow-load-{tag}");
    let dynamodb = moto.dynamodb(RequestLog::default()).await;
    create_table(&dynamodb, &table).await.expect("the emulator creates the table");
    let sqs = moto.sqs(RequestLog::default()).await;
    let (transfers, payouts) = create_queues(&sqs, &format!("cf-load-{tag}")).await.unwrap();
    let mut lambdas = Lambdas {
        services: Vec::new(),
        dynamodb_logs: Vec::new(),
        sqs_logs: Vec::new(),
        tallies: Mutex::default(),
    };
    for _ in 0..CONCURRENCY {
        let (dynamodb_log, sqs_log) = (RequestLog::default(), RequestLog::default());
        let store = DynamoStore::new(moto.dynamodb(dynamodb_log.clone()).await, &table);
        let queue = SqsQueue::new(moto.sqs(sqs_log.clone()).await, &transfers, &payouts);
        lambdas.services.push(WebhookService::new(store, &settings()).with_queue(Arc::new(queue)));
        lambdas.dynamodb_logs.push(dynamodb_log);
        lambdas.sqs_logs.push(sqs_log);
    }
    let lambdas = Arc::new(lambdas);
    let mix = Arc::new(Mix::generate(seed, tag, deliveries, SystemClock.now_unix() - 86_400));
    let limits = Limits { max_deliveries: deliveries, max_duration: Duration::from_secs(600), retries: 5 };
    let result = run(mix.clone(), lambdas.clone(), SECRET, CONCURRENCY, limits).await;
    let stats = result.stats(CONCURRENCY);
    assert!(!stats.timed_out, "the run did not finish in time");
    let refused: Vec<String> = (result.answers.iter().zip(&mix.events))
        .flat_map(|(answers, event)| answers.iter().map(move |answer| (answer, event)))
        .filter(|(answer, _)| answer.status != 200)
        .map(|(answer, event)| format!("{} {} {:?}", event.event_type, answer.status, answer.outcome))
        .collect();
    assert_eq!((stats.errors, stats.retried), (0, 0), "{stats:?}: {refused:?}");
    assert_eq!(stats.deliveries, mix.delivery_count());

    let expected = Expected::of(&mix, &result.sent());
    let store = DynamoStore::new(dynamodb, &table);
    let observed = observe_store(&store, &mix, &expected).await.unwrap();
    assert_eq!(check(&mix, &expected, &result.answers, &observed), Vec::<String>::new());
    let most = expected.steps.len() + 10;
    let mut queued = drain(&sqs, &transfers, most).await;
    queued.extend(drain(&sqs, &payouts, most).await);
    let sent = count_ids(queued.iter().map(|step| step.step_id.as_str()));
    assert_eq!(check_queued(&expected, &sent), Vec::<String>::new());
    let queued_steps = expected.steps.values().filter(|step| step.status == StepStatus::Queued).count();
    // check_queued holds each queued step to one message and a refused one (a refund took it back
    // whole, perhaps after it was queued) to at most one.
    assert!(queued_steps > 0 && sent.len() >= queued_steps);

    println!(
        "moto, concurrency {CONCURRENCY}: {} deliveries of {} unique events in {:.2} s = {:.1} events/s; \
         latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; errors {}, 5xx retried {}; {} steps stored, {} sent to SQS once each",
        stats.deliveries,
        expected.events.len(),
        stats.seconds,
        stats.events_per_second,
        stats.p50_ms,
        stats.p99_ms,
        stats.p999_ms,
        stats.max_ms,
        stats.errors,
        stats.retried,
        expected.steps.len(),
        sent.len(),
    );
    let tallies = lambdas.tallies.lock().unwrap();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    println!("| event, answer | deliveries | requests per delivery |");
    println!("|---|---:|---|");
    for (key, tally) in tallies.iter() {
        let per_delivery: Vec<String> = tally
            .requests
            .iter()
            .map(|(operation, count)| format!("{operation} {:.2}", *count as f64 / tally.deliveries as f64))
            .collect();
        println!("| {key} | {} | {} |", tally.deliveries, per_delivery.join(", "));
        for (operation, count) in &tally.requests {
            *totals.entry(operation.as_str()).or_default() += count;
        }
    }
    let per_delivery: Vec<String> = totals
        .iter()
        .map(|(operation, count)| format!("{operation} {:.3}", *count as f64 / stats.deliveries as f64))
        .collect();
    println!("| all | {} | {} |", stats.deliveries, per_delivery.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_senders_on_dynamodb_and_sqs_apply_each_event_once() {
    load_on_the_emulator("Short", 5, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the figures' run: 500 deliveries, about 3 minutes on moto; run with --ignored --nocapture"]
async fn five_hundred_deliveries_on_dynamodb_and_sqs_apply_each_event_once() {
    // moto copies the whole table for every transaction, so a run slows as the table grows: a
    // thousand deliveries did not finish in 10 minutes.
    load_on_the_emulator("Full", 1, 500).await;
}
