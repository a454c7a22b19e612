//! One reconciler run over a missed backlog, against the stand-in Stripe on loopback: its wall
//! time, its Stripe requests (and what they take at Stripe's 20 a second), and, on moto, its
//! DynamoDB requests by operation. Then the steady-state run straight after.
//!
//! `cargo bench -p integration-tests --bench reconcile -- [ACCOUNTS EVENTS DYNAMODB_ACCOUNTS]`,
//! by default 10,000 accounts, 50,000 events, and a tenth of both on DynamoDB (moto serves one
//! request at a time, so the full size would take most of an hour there; requests scale with
//! accounts and events, per run). Each account gets its events spread over the last 60 hours;
//! the store saw only each account's first one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use integration_tests::stripe_stub::StripeStub;
use integration_tests::{
    DYNAMODB_ENDPOINT, NOW, RecordingQueue, RequestLog, account_updated, dynamo_store_logged, pipeline,
    settings as webhook_settings,
};
use serde_json::Value;
use shared::clock::FixedClock;
use shared::domain::reconcile::ReconcileRun;
use shared::reconcile::{ReconcileSettings, Reconciler};
use shared::store::StepQueue;
use shared::store::sqlite::SqliteStore;
use shared::stripe::client::StripeClient;
use shared::webhook::WebhookService;

/// Stripe's read limit for the reconciler, to say how long the requests take against the real API.
const STRIPE_RATE: f64 = 20.0;

fn backlog(accounts: usize, events: usize) -> Vec<(Value, bool)> {
    let per_account = events.div_ceil(accounts).max(1);
    let mut backlog = Vec::with_capacity(accounts * per_account);
    for index in 0..per_account {
        for account in 0..accounts {
            let created = NOW - 60 * 3_600 + i64::try_from(index * 3_600 + account % 3_000).unwrap_or(0);
            let id = format!("acct_bench{account:06}");
            let due: &[&str] = if index + 1 == per_account { &[] } else { &["external_account"] };
            let event =
                account_updated(&format!("evt_bench_{account:06}_{index}"), &id, created, index > 0, due);
            backlog.push((event, index == 0));
        }
    }
    backlog.sort_by_key(|(event, _)| event["created"].as_i64());
    backlog
}

async fn stub_with(backlog: &[(Value, bool)]) -> StripeStub {
    let stub = StripeStub::start().await;
    stub.set_now(NOW);
    let mut latest = BTreeMap::new();
    for (event, delivered) in backlog {
        stub.emit_event(event.clone(), *delivered);
        latest.insert(
            event["account"].as_str().unwrap_or_default().to_owned(),
            event["data"]["object"].clone(),
        );
    }
    for (account, object) in latest {
        stub.put_object(None, &format!("/v1/accounts/{account}"), object);
    }
    stub
}

fn line(label: &str, run: &ReconcileRun, seconds: f64) {
    // Request counts stay far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let at_stripe = run.stripe_requests as f64 / STRIPE_RATE;
    println!(
        "{label}: {seconds:.1} s wall; {} events listed, {} replayed; {} accounts listed, {} checked, {} corrected; \
         {} Stripe requests ({at_stripe:.0} s at Stripe's {STRIPE_RATE} a second)",
        run.events_listed,
        run.events_replayed,
        run.accounts_listed,
        run.accounts_checked,
        run.accounts_corrected,
        run.stripe_requests,
    );
}

async fn run_twice<S: shared::store::AccountStore + Clone>(
    label: &str,
    store: S,
    backlog: &[(Value, bool)],
    log: Option<&RequestLog>,
) {
    let stub = stub_with(backlog).await;
    let seed = pipeline(store.clone());
    for (event, delivered) in backlog {
        if *delivered {
            seed.process_unsigned(event.to_string().as_bytes()).await.expect("the delivery is taken");
        }
    }
    let queue: Arc<dyn StepQueue> = Arc::new(RecordingQueue::default());
    // Loopback answers at once: pace far above Stripe's limit and count the requests instead.
    let settings = ReconcileSettings {
        requests_per_second: 10_000,
        max_account_lists: usize::MAX,
        ..Default::default()
    };
    // The run comes a schedule period after the deliveries, as on AWS: the DynamoDB change feed
    // lists a change only once it has settled.
    let later = WebhookService::with_clock(store, &webhook_settings(), FixedClock(NOW + 900));
    let reconciler = Reconciler::new(
        later.with_queue(Arc::clone(&queue)),
        StripeClient::new(stub.client_config()).expect("a client"),
        queue,
        settings,
    );
    for pass in ["backlog", "steady state"] {
        if let Some(log) = log {
            log.take();
        }
        let started = Instant::now();
        let run = reconciler.run(None, None).await.expect("the run succeeds");
        line(&format!("{label}, {pass}"), &run, started.elapsed().as_secs_f64());
        if let Some(log) = log {
            let mut operations: BTreeMap<String, usize> = BTreeMap::new();
            for operation in log.take() {
                *operations.entry(operation).or_default() += 1;
            }
            let total: usize = operations.values().sum();
            println!("  DynamoDB requests: {total} {operations:?}");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect();
    let accounts = numbers.first().copied().unwrap_or(10_000);
    let events = numbers.get(1).copied().unwrap_or(50_000);
    let dynamodb_accounts = numbers.get(2).copied().unwrap_or(accounts / 10);

    let dir = std::env::temp_dir().join(format!("connect-flow-bench-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let store = SqliteStore::open(dir.join("bench.db"), NOW).expect("the SQLite file opens");
    let backlog_full = backlog(accounts, events);
    run_twice(
        &format!("SQLite file, {accounts} accounts, {} events", backlog_full.len()),
        store,
        &backlog_full,
        None,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);

    if std::env::var(DYNAMODB_ENDPOINT).is_ok() && dynamodb_accounts > 0 {
        let log = RequestLog::default();
        let store = dynamo_store_logged(log.clone()).await;
        let scaled = backlog(dynamodb_accounts, events * dynamodb_accounts / accounts);
        let label = format!("DynamoDB (moto), {dynamodb_accounts} accounts, {} events", scaled.len());
        run_twice(&label, store, &scaled, Some(&log)).await;
    } else {
        println!("DynamoDB: skipped, {DYNAMODB_ENDPOINT} is not set (start moto as scripts/test does)");
    }
}
