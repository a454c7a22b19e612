//! `GET /accounts/{id}` on `connect-flow serve`: p50 and p99 over loopback HTTP, on the file store
//! (WAL, `synchronous=FULL`) holding 1,000 accounts, sequentially and at concurrency 16.
//!
//! Bounded: 5,000 requests per level, on 127.0.0.1 only. Run with
//! `cargo bench -p integration-tests --bench platform_reads`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{account_updated, settings, signed};
use shared::clock::{Clock, SystemClock};
use shared::store::sqlite::SqliteStore;
use shared::webhook::WebhookService;

const ACCOUNTS: usize = 1_000;
const REQUESTS: usize = 5_000;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let path = std::env::temp_dir().join(format!("connect-flow-reads-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let now = SystemClock.now_unix();
        let store = SqliteStore::open(&path, now).unwrap();
        let service = Arc::new(WebhookService::new(store, &settings()));
        for n in 0..ACCOUNTS {
            let event =
                account_updated(&format!("evt_seed_{n}"), &format!("acct_1Read{n:06}"), now - 60, true, &[]);
            let (header, body) = signed(&event, now);
            assert_eq!(service.handle(Some(&header), &body).await.status, 200);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(connect_flow::server::serve(listener, service, std::future::pending()));
        let client = reqwest::Client::new();
        println!("| concurrency | requests | p50 (µs) | p99 (µs) | requests/s |\n|---:|---:|---:|---:|---:|");
        for concurrency in [1usize, 16] {
            let started = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|worker| {
                    let client = client.clone();
                    let base = base.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(REQUESTS / concurrency);
                        for n in (worker..REQUESTS).step_by(concurrency) {
                            let url = format!("{base}/accounts/acct_1Read{:06}", n % ACCOUNTS);
                            let sent = Instant::now();
                            let response = client.get(url).send().await.unwrap();
                            assert_eq!(response.status().as_u16(), 200);
                            response.bytes().await.unwrap();
                            latencies.push(sent.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut latencies = Vec::with_capacity(REQUESTS);
            for task in tasks {
                latencies.extend(task.await.unwrap());
            }
            let elapsed = started.elapsed();
            latencies.sort();
            println!(
                "| {concurrency} | {} | {} | {} | {:.0} |",
                latencies.len(),
                percentile(&latencies, 0.50).as_micros(),
                percentile(&latencies, 0.99).as_micros(),
                latencies.len() as f64 / elapsed.as_secs_f64()
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    });
}
