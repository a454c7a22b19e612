//! `GET /console` on `connect-flow serve` with 10,000 accounts: page load time over loopback HTTP,
//! on the file store (WAL, `synchronous=FULL`).
//!
//! The accounts are written straight through the SQLite store (one conditional write each), in a
//! mix of onboarding statuses with requirements, deadlines, failed payouts and disputes, plus open
//! and failed steps with their changes. Then the page is loaded sequentially, after two warm-up
//! loads, and the median, p90, min and max are printed with the page size and its store reads.
//! Loopback only. Run with `cargo bench -p integration-tests --bench console`
//! (`CONSOLE_BENCH_ACCOUNTS` and `CONSOLE_BENCH_LOADS` override 10,000 and 30).

use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{settings, store_planned_steps};
use shared::clock::{Clock, SystemClock};
use shared::domain::account::{AccountDispute, AccountId, AccountState, OnboardingStatus, PayoutFailure};
use shared::domain::change::steps_changes;
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::store::sqlite::SqliteStore;
use shared::store::{
    AccountStore, AccountWrite, CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite,
};
use shared::webhook::WebhookService;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The `n`th account: statuses in proportions a live platform might see.
fn account(n: usize, now: i64) -> AccountState {
    let id = AccountId::parse(&format!("acct_1Bench{n:06}")).unwrap();
    let mut account = AccountState::new(id);
    account.version = 1;
    account.last_event_created = now - (n as i64 % 86_400);
    account.onboarding_status = match n % 100 {
        0..60 => OnboardingStatus::Active,
        60..75 => OnboardingStatus::ActionRequired,
        75..85 => OnboardingStatus::Onboarding,
        85..90 => OnboardingStatus::PendingVerification,
        90..95 => OnboardingStatus::Restricted,
        95..98 => OnboardingStatus::Rejected,
        _ => OnboardingStatus::Deauthorized,
    };
    if account.onboarding_status != OnboardingStatus::Active {
        account.requirements.currently_due =
            vec!["individual.verification.document".into(), "external_account".into()];
        account.requirements.past_due = vec!["tos_acceptance.date".into()];
        account.requirements.current_deadline = (n % 3 != 0).then(|| now + (n as i64 * 37) % 1_000_000);
    }
    if n % 50 == 7 {
        account.payout_failure = Some(PayoutFailure {
            payout_id: format!("po_1Bench{n:06}"),
            failure_code: "account_closed".into(),
            failed_at: now - n as i64,
            step_id: None,
        });
    }
    if n % 100 == 3 {
        account.disputes.cases.insert(
            format!("dp_1Bench{n:06}"),
            AccountDispute {
                charge_id: format!("ch_1Bench{n:06}"),
                status: "needs_response".into(),
                currency: "usd".into(),
                unrecovered: 1000 + n as i64,
            },
        );
        account.disputes.recount();
    }
    account
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let accounts = env_usize("CONSOLE_BENCH_ACCOUNTS", 10_000);
    let loads = env_usize("CONSOLE_BENCH_LOADS", 30).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let path = std::env::temp_dir().join(format!("connect-flow-console-bench-{}.db", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let now = SystemClock.now_unix();
        let store = SqliteStore::open(&path, now).unwrap();
        let seeding = Instant::now();
        for n in 0..accounts {
            let account = account(n, now);
            let write = AccountWrite { account: &account, new_steps: &[], step_updates: &[], changes: &[] };
            assert_eq!(store.commit_account(&write).await.unwrap(), CommitOutcome::Committed);
        }
        // 500 queued and 200 waiting transfers, and 100 failed payouts told by the change feed.
        let open: Vec<Step> = (0..700)
            .map(|n| {
                let destination =
                    AccountId::parse(&format!("acct_1Bench{:06}", n % accounts.max(1))).unwrap();
                let mut step = Step::planned(
                    StepKind::Transfer,
                    format!("tr:pi_1Bench{n:06}:{destination}"),
                    destination,
                    1000,
                    "usd".into(),
                    now - 3600 + n as i64,
                );
                if n >= 500 {
                    step.status = StepStatus::Waiting;
                    step.reason = Some("the destination's transfers capability is not active".into());
                }
                step
            })
            .collect();
        assert_eq!(
            store_planned_steps(&store, "evt_1BenchOpen", &open).await.unwrap(),
            CommitOutcome::Committed
        );
        let failed: Vec<Step> = (0..100)
            .map(|n| {
                let destination =
                    AccountId::parse(&format!("acct_1Bench{:06}", n % accounts.max(1))).unwrap();
                let mut step = Step::planned(
                    StepKind::Payout,
                    format!("po:bench:{n:06}"),
                    destination,
                    500,
                    "usd".into(),
                    now - 1800,
                );
                step.status = StepStatus::Failed;
                step.reason = Some("balance_insufficient".into());
                step.livemode = Some(false);
                step
            })
            .collect();
        let record = EventRecord {
            event_id: "evt_1BenchFailed".into(),
            event_type: "balance.available".into(),
            account_id: None,
            created: Some(now - 1800),
            livemode: Some(false),
            outcome: EventOutcome::Applied,
            reason: None,
            received_at: now - 1800,
            expires_at: now + DEDUPE_RETENTION_SECS,
            fetch: None,
        };
        let changes = steps_changes(&[], &failed, &[], now - 1800);
        let write = EventWrite { changes: &changes, ..EventWrite::with_steps(&record, &failed) };
        assert_eq!(store.commit(&write).await.unwrap(), CommitOutcome::Committed);
        let seeded = seeding.elapsed();

        let service = Arc::new(WebhookService::new(store, &settings()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/console", listener.local_addr().unwrap());
        tokio::spawn(connect_flow::server::serve(listener, service, std::future::pending()));
        let client = reqwest::Client::new();
        let load = || async {
            let sent = Instant::now();
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let page = response.text().await.unwrap();
            (sent.elapsed(), page)
        };
        let (_, page) = load().await;
        load().await;
        let active = (0..accounts).filter(|n| n % 100 < 60).count();
        let expected = format!("data-status=\"active\" data-count=\"{active}\"");
        assert!(page.contains(&expected), "the page counts every account: {expected}");
        let reads = page
            .split(" store reads")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .unwrap_or("?")
            .to_owned();
        let mut latencies = Vec::with_capacity(loads);
        for _ in 0..loads {
            latencies.push(load().await.0);
        }
        latencies.sort();
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        println!(
            "seeded {accounts} accounts, 700 open and 100 failed steps in {:.1} s",
            seeded.as_secs_f64()
        );
        println!(
            "| accounts | loads | median (ms) | p90 (ms) | min (ms) | max (ms) | page (KiB) | store reads |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        println!(
            "| {accounts} | {loads} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {reads} |",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.9)),
            ms(latencies[0]),
            ms(latencies[latencies.len() - 1]),
            page.len() as f64 / 1024.0
        );
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    });
}
