//! Thin events on `connect-flow serve` against the stand-in Stripe, over loopback HTTP, on the
//! file store (WAL, `synchronous=FULL`) with the fetch worker running beside the webhook as in
//! `serve`:
//! - how fast the webhook answers a thin event (p50, p99), sequentially;
//! - how long from a thin event's delivery until its account is readable, one event at a time,
//!   spaced wider than the fetch worker's pace (9 reads a second) so that pacing adds nothing.
//!
//! - how long the fetch worker takes to work off the deliveries' backlog: its pace.
//!
//! Bounded: 500 deliveries and 200 timed fetches, on 127.0.0.1 only. Run with
//! `cargo bench -p integration-tests --bench thin_events`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_flow::server::{WakingQueue, run_workers};
use integration_tests::stripe_stub::StripeStub;
use integration_tests::{settings, signed};
use serde_json::{Value, json};
use shared::clock::{Clock, SystemClock};
use shared::domain::account::AccountId;
use shared::fetch::FetchWorker;
use shared::store::AccountStore;
use shared::store::sqlite::SqliteStore;
use shared::stripe::client::StripeClient;
use shared::webhook::WebhookService;
use shared::worker::StepWorker;

const DELIVERIES: usize = 500;
const ACCOUNTS: usize = 100;
const TIMED_FETCHES: usize = 200;
/// Wider than the pacer's 111 ms, so that each timed fetch starts as soon as it is queued.
const SPACING: Duration = Duration::from_millis(120);

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn v2_account(id: &str) -> Value {
    let active = json!({"status": "active", "status_details": []});
    json!({"id": id, "object": "v2.core.account", "closed": false,
           "configuration": {"merchant": {"capabilities": {"card_payments": active.clone(),
                                                           "stripe_balance": {"payouts": active.clone()}}},
                             "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": active}}}},
           "requirements": {"entries": []}})
}

fn thin(id: &str, account: &str) -> Value {
    json!({"id": id, "object": "v2.core.event", "type": "v2.core.account.updated", "livemode": false,
           "created": "2026-01-01T00:00:00.000Z", "context": null,
           "related_object": {"id": account, "type": "v2.core.account", "url": format!("/v2/core/accounts/{account}")}})
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let path = std::env::temp_dir().join(format!("connect-flow-thin-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path, SystemClock.now_unix()).unwrap();
        let stub = StripeStub::start().await;
        for n in 0..ACCOUNTS {
            let id = format!("acct_1Thin{n:06}");
            stub.put_v2_account(&id, v2_account(&id));
        }
        for n in 0..TIMED_FETCHES {
            let id = format!("acct_1Fresh{n:06}");
            stub.put_v2_account(&id, v2_account(&id));
        }
        let (queue, wake) = WakingQueue::new(store.clone());
        let service = Arc::new(WebhookService::new(store.clone(), &settings()).with_queue(queue.clone()));
        let stripe = StripeClient::new(stub.client_config()).unwrap();
        let applier = WebhookService::new(store.clone(), &settings()).with_queue(queue);
        let fetcher = FetchWorker::new(applier, stripe.clone());
        tokio::spawn(run_workers(
            StepWorker::new(store.clone(), stripe),
            fetcher,
            wake,
            std::future::pending(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/stripe", listener.local_addr().unwrap());
        tokio::spawn(connect_flow::server::serve(listener, service, std::future::pending()));
        let client = reqwest::Client::new();
        let deliver = |event: Value| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let (header, body) = signed(&event, SystemClock.now_unix());
                let sent = Instant::now();
                let response =
                    client.post(url).header("stripe-signature", header).body(body).send().await.unwrap();
                let status = response.status().as_u16();
                let answer = response.text().await.unwrap();
                assert_eq!(status, 200, "{answer}");
                assert!(answer.contains("fetch_queued"), "{answer}");
                sent.elapsed()
            }
        };

        let delivering = Instant::now();
        let mut answers = Vec::with_capacity(DELIVERIES);
        for n in 0..DELIVERIES {
            answers.push(
                deliver(thin(&format!("evt_bench_{n}"), &format!("acct_1Thin{:06}", n % ACCOUNTS))).await,
            );
        }
        let delivering = delivering.elapsed();
        answers.sort();
        let backlog = Instant::now();
        // The embedded queue hands messages out by id, not by arrival: wait for every one.
        for n in 0..DELIVERIES {
            let id = format!("evt_bench_{n}");
            while store.load_event(&id).await.unwrap().is_none_or(|record| {
                record.fetch.is_some_and(|fetch| fetch.status == shared::domain::fetch::FetchStatus::Queued)
            }) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let backlog = backlog.elapsed();

        let mut readable = Vec::with_capacity(TIMED_FETCHES);
        for n in 0..TIMED_FETCHES {
            tokio::time::sleep(SPACING).await;
            let account = AccountId::parse(&format!("acct_1Fresh{n:06}")).unwrap();
            let started = Instant::now();
            deliver(thin(&format!("evt_fresh_{n}"), account.as_str())).await;
            while store.load_account(&account).await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            readable.push(started.elapsed());
        }
        readable.sort();

        println!("| measure | count | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|");
        for (name, latencies) in
            [("webhook answers a thin event", &answers), ("delivery to readable state", &readable)]
        {
            println!(
                "| {name} | {} | {} | {} |",
                latencies.len(),
                percentile(latencies, 0.50).as_micros(),
                percentile(latencies, 0.99).as_micros()
            );
        }
        println!(
            "backlog of {DELIVERIES} fetches worked off {:.1} s after the last delivery: {:.1} fetches a second",
            backlog.as_secs_f64(),
            DELIVERIES as f64 / (backlog.as_secs_f64() + delivering.as_secs_f64())
        );
        let reads = stub.requests().values().sum::<usize>();
        println!("Stripe reads: {reads} for {} thin events", DELIVERIES + TIMED_FETCHES);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    });
}
