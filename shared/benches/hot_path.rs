//! The webhook hot path, on the real ~4.5 KB `account.updated` sample event.
//!
//! Benchmark names are stable: BENCHMARKS.md quotes them.
//!
//! - `verify`: signature verification with two configured secrets, the matching one second.
//! - `parse`: envelope parse.
//! - `decide`: `AccountEvent::from_event` and `decide` against an existing state.
//! - `verify_parse_one_secret`: verification with the one signing secret, then the parse.
//! - `json_skip_floor`: one serde_json pass over the body that keeps nothing, for scale.
//! - `verify_parse_decide`: the three together, the figure with a 50 µs target.
//! - `sqlite_commit`, `sqlite_commit_in_memory`: one applied event committed to a SQLite file
//!   (synchronous=FULL, so with fsync) and to an in-memory database.
//! - `pipeline_end_to_end_sqlite_file`: `WebhookService::handle` for a fresh event on the file store.
//!
//! With `HOT_PATH_PEER_LOOP=1` it runs no criterion benchmark: it times verify + parse the way
//! `scripts/bench-peers` times stripe-node and stripe-python (one secret, the real clock, a plain
//! loop per round, the median of the rounds) and prints one JSON line. See that script.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, criterion_group};
use shared::clock::FixedClock;
use shared::config::WebhookSettings;
use shared::domain::account::{AccountDecision, AccountEvent, AccountState, decide};
use shared::store::sqlite::SqliteStore;
use shared::store::{
    AccountStore, CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite,
};
use shared::stripe::event::{Event, ParsedBody, parse_event};
use shared::stripe::signature::{SignatureVerifier, WebhookSecret, sign};
use shared::webhook::WebhookService;
use tokio::runtime::Runtime;

/// The sample event, as Stripe would deliver it.
const SAMPLE_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../events/stripe/account.updated.active.json");

/// The sample event's id, replaced by a fresh one wherever a benchmark needs a new event.
const SAMPLE_EVENT_ID: &str = "evt_1QcXic3ZRdECX8ViXm5ez2uC";

/// The secret being rotated out: configured first, matches nothing.
const OLD_SECRET: &str = "whsec_bench_old_secret_rotated_out";

/// The secret Stripe signs with: configured second, so verification computes both HMACs.
const NEW_SECRET: &str = "whsec_bench_new_secret_in_use";

/// The signing timestamp and the fixed "now": the signature is always fresh.
const NOW: i64 = 1_732_000_300;

/// Signature tolerance, Stripe's default.
const TOLERANCE_SECS: u64 = 300;

/// Reads the sample event from the repository.
fn sample_body() -> Vec<u8> {
    std::fs::read(SAMPLE_PATH)
        .expect("the sample event events/stripe/account.updated.active.json is readable")
}

/// Both secrets, the one that matches last, as during a rotation.
fn secrets() -> Vec<WebhookSecret> {
    vec![WebhookSecret::new(OLD_SECRET), WebhookSecret::new(NEW_SECRET)]
}

/// A verifier with both secrets configured.
fn verifier() -> SignatureVerifier {
    SignatureVerifier::new(&secrets(), TOLERANCE_SECS)
}

/// The `Stripe-Signature` header Stripe would send for `body`.
fn header_for(body: &[u8]) -> String {
    sign(&WebhookSecret::new(NEW_SECRET), NOW, body)
}

/// A fresh event id of the sample id's length, so that the body keeps its size.
fn event_id(n: u64) -> String {
    let id = format!("evt_bench{n:019}");
    debug_assert_eq!(id.len(), SAMPLE_EVENT_ID.len());
    id
}

/// The sample body with its event id replaced by `id`.
fn body_with_id(body: &[u8], id: &str) -> Vec<u8> {
    let text = std::str::from_utf8(body).expect("the sample event is UTF-8");
    assert!(text.contains(SAMPLE_EVENT_ID), "the sample event carries the id {SAMPLE_EVENT_ID}");
    text.replacen(SAMPLE_EVENT_ID, id, 1).into_bytes()
}

/// Parses a body that must be a snapshot event.
fn snapshot(body: &[u8]) -> Event {
    match parse_event(body).expect("the sample event parses") {
        ParsedBody::Snapshot(event) => event,
        ParsedBody::Thin(_) => panic!("the sample event is a snapshot event"),
    }
}

/// The state the sample event leads to from nothing: the "known account" the other benches update.
fn existing_state(event: &Event) -> AccountState {
    let account_event =
        AccountEvent::from_event(event).expect("the sample names an account").expect("an account event");
    match decide(&account_event, None) {
        AccountDecision::Apply(state) => AccountState { version: 1, ..*state },
        other => panic!("the sample event applies to a new account, got {other:?}"),
    }
}

/// The single-threaded runtime the async store calls run on.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().build().expect("a current-thread tokio runtime builds")
}

/// A unique path in the temporary directory for a benchmark's SQLite file.
fn temp_db_path(label: &str) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    std::env::temp_dir().join(format!("connect-flow-bench-{label}-{}-{nanos}.sqlite", std::process::id()))
}

/// Deletes a SQLite file and its WAL companions; missing files are fine.
fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// `verify`: signature verification only, two secrets, the matching one second.
fn bench_verify(c: &mut Criterion) {
    let body = sample_body();
    let header = header_for(&body);
    let verifier = verifier();
    assert_eq!(verifier.verify(Some(&header), &body, NOW), Ok(NOW), "the sample signature verifies");
    c.bench_function("verify", |b| {
        b.iter(|| verifier.verify(black_box(Some(header.as_str())), black_box(&body), black_box(NOW)))
    });
}

/// `parse`: the envelope parse.
fn bench_parse(c: &mut Criterion) {
    let body = sample_body();
    c.bench_function("parse", |b| b.iter(|| parse_event(black_box(&body))));
}

/// `verify_parse_one_secret`: verify with the one secret Stripe signs with, then parse: the
/// figure `scripts/bench-peers` sets beside stripe-node's and stripe-python's.
fn bench_verify_parse_one_secret(c: &mut Criterion) {
    let body = sample_body();
    let header = header_for(&body);
    let verifier = SignatureVerifier::new(&[WebhookSecret::new(NEW_SECRET)], TOLERANCE_SECS);
    c.bench_function("verify_parse_one_secret", |b| {
        b.iter(|| {
            verifier.verify(black_box(Some(header.as_str())), black_box(&body), NOW).expect("verifies");
            parse_event(black_box(&body)).expect("parses")
        })
    });
}

/// `json_skip_floor`: serde_json reading the whole body and keeping nothing (`IgnoredAny`): the
/// least any one serde_json pass over these bytes costs, which `parse` and `decide` each pay once.
fn bench_json_skip_floor(c: &mut Criterion) {
    let body = sample_body();
    c.bench_function("json_skip_floor", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).expect("the sample is JSON")
        })
    });
}

/// `decide`: reading the event as an account event and deciding it against a known account.
fn bench_decide(c: &mut Criterion) {
    let event = snapshot(&sample_body());
    let state = existing_state(&event);
    c.bench_function("decide", |b| {
        b.iter(|| {
            let account_event = AccountEvent::from_event(black_box(&event))
                .expect("names an account")
                .expect("account event");
            decide(&account_event, Some(black_box(&state)))
        })
    });
}

/// `verify_parse_decide`: everything before the store, on one core.
fn bench_verify_parse_decide(c: &mut Criterion) {
    let body = sample_body();
    let header = header_for(&body);
    let verifier = verifier();
    let state = existing_state(&snapshot(&body));
    c.bench_function("verify_parse_decide", |b| {
        b.iter(|| {
            verifier.verify(black_box(Some(header.as_str())), black_box(&body), NOW).expect("verifies");
            let ParsedBody::Snapshot(event) = parse_event(black_box(&body)).expect("parses") else {
                panic!("a snapshot event");
            };
            let account_event =
                AccountEvent::from_event(&event).expect("names an account").expect("account event");
            let decision = decide(&account_event, Some(black_box(&state)));
            assert!(matches!(decision, AccountDecision::Apply(_)), "the update applies");
            decision
        })
    });
}

/// Benchmarks committing an applied event to `store`: a new event id and the next version each time.
fn bench_commit(c: &mut Criterion, name: &str, store: &SqliteStore) {
    let runtime = runtime();
    let event = snapshot(&sample_body());
    let mut state = existing_state(&event);
    let account_id = state.account_id.to_string();
    let record_for = |n: u64| EventRecord {
        event_id: event_id(n),
        event_type: event.event_type.clone(),
        account_id: Some(account_id.clone()),
        created: Some(event.created),
        livemode: event.livemode,
        outcome: EventOutcome::Applied,
        reason: None,
        received_at: NOW,
        expires_at: NOW + DEDUPE_RETENTION_SECS,
        fetch: None,
    };
    let first = record_for(0);
    let outcome = runtime
        .block_on(store.commit(&EventWrite::with_account(&first, Some(&state))))
        .expect("the first commit succeeds");
    assert_eq!(outcome, CommitOutcome::Committed, "the account is created");
    // Inputs are made and consumed in order, so each commit finds the version before its own.
    let mut n = 0;
    c.bench_function(name, |b| {
        b.iter_batched(
            || {
                n += 1;
                state.version += 1;
                (record_for(n), state.clone())
            },
            |(record, next)| {
                let outcome = runtime
                    .block_on(store.commit(&EventWrite::with_account(&record, Some(&next))))
                    .expect("commit succeeds");
                assert_eq!(outcome, CommitOutcome::Committed, "the conditional write succeeds");
            },
            BatchSize::SmallInput,
        )
    });
}

/// `sqlite_commit`: one applied event committed to a SQLite file, fsync included (synchronous=FULL).
fn bench_sqlite_commit(c: &mut Criterion) {
    let path = temp_db_path("commit");
    let store = SqliteStore::open(&path, NOW).expect("the temporary SQLite file opens");
    bench_commit(c, "sqlite_commit", &store);
    drop(store);
    remove_db(&path);
}

/// `sqlite_commit_in_memory`: the same commit without a file, so without fsync.
fn bench_sqlite_commit_in_memory(c: &mut Criterion) {
    let store = SqliteStore::in_memory().expect("an in-memory SQLite store opens");
    bench_commit(c, "sqlite_commit_in_memory", &store);
}

/// `pipeline_end_to_end_sqlite_file`: `WebhookService::handle` for a fresh, freshly signed event.
///
/// Re-signing happens in the batch setup, outside the measurement.
fn bench_pipeline_end_to_end(c: &mut Criterion) {
    let runtime = runtime();
    let sample = sample_body();
    let path = temp_db_path("pipeline");
    let store = SqliteStore::open(&path, NOW).expect("the temporary SQLite file opens");
    let settings = WebhookSettings {
        secrets: secrets(),
        tolerance_secs: TOLERANCE_SECS,
        ..WebhookSettings::unsigned(None)
    };
    let service = WebhookService::with_clock(store, &settings, FixedClock(NOW));
    let mut n = 0;
    let mut fresh_delivery = || {
        n += 1;
        let body = body_with_id(&sample, &event_id(n));
        (header_for(&body), body)
    };
    let (header, body) = fresh_delivery();
    let reply = runtime.block_on(service.handle(Some(&header), &body));
    assert_eq!(reply.status, 200, "the first delivery is accepted: {}", reply.body);
    assert!(reply.body.contains("\"applied\""), "the first delivery applies: {}", reply.body);
    c.bench_function("pipeline_end_to_end_sqlite_file", |b| {
        b.iter_batched(
            &mut fresh_delivery,
            |(header, body)| {
                let reply = runtime.block_on(service.handle(Some(&header), &body));
                assert_eq!(reply.status, 200, "the delivery is accepted");
                reply
            },
            BatchSize::SmallInput,
        )
    });
    let (header, body) = fresh_delivery();
    let reply = runtime.block_on(service.handle(Some(&header), &body));
    assert!(reply.body.contains("\"applied\""), "deliveries still apply after the run: {}", reply.body);
    drop(service);
    remove_db(&path);
}

/// Short runs: these machines are noisy, and medians over 50 samples are what BENCHMARKS.md quotes.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// One setting of the peer loop, from the environment `scripts/bench-peers` sets.
fn peer_setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by scripts/bench-peers"))
}

/// The peer loop: `verify` with the one secret, then `parse_event`, as the webhook does before
/// deciding; and, for this side only, the same followed by `from_event` + `decide`.
fn peer_loop() {
    let body = std::fs::read(peer_setting("PEER_BODY")).expect("the body file is readable");
    let header = peer_setting("PEER_HEADER");
    let secret = WebhookSecret::new(peer_setting("PEER_SECRET"));
    let tolerance: u64 = peer_setting("PEER_TOLERANCE").parse().expect("a tolerance in seconds");
    let iterations: u32 = peer_setting("PEER_ITERATIONS").parse().expect("an iteration count");
    let rounds: usize = peer_setting("PEER_ROUNDS").parse().expect("a round count");
    let verifier = SignatureVerifier::new(std::slice::from_ref(&secret), tolerance);
    let now = || {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs());
        i64::try_from(since_epoch).expect("the clock is in range")
    };
    let state = existing_state(&snapshot(&body));
    let verify_parse = |now: i64| {
        verifier
            .verify(Some(black_box(header.as_str())), black_box(&body), now)
            .expect("the header verifies");
        let ParsedBody::Snapshot(event) = parse_event(black_box(&body)).expect("parses") else {
            panic!("a snapshot event");
        };
        event
    };
    let verify_parse_decide = |now: i64| {
        let event = verify_parse(now);
        let account_event =
            AccountEvent::from_event(&event).expect("names an account").expect("account event");
        matches!(decide(&account_event, Some(black_box(&state))), AccountDecision::Apply(_))
    };
    let time_round = |step: &dyn Fn(i64) -> bool| {
        let now = now();
        let start = std::time::Instant::now();
        let mut applied = 0;
        for _ in 0..iterations {
            applied += u32::from(black_box(step(now)));
        }
        let elapsed = start.elapsed();
        assert!(applied == iterations, "every iteration verifies and parses");
        elapsed.as_secs_f64() * 1e6 / f64::from(iterations)
    };
    let median_of_rounds = |step: &dyn Fn(i64) -> bool| {
        time_round(step);
        let mut per_round: Vec<f64> = (0..rounds).map(|_| time_round(step)).collect();
        let in_order = per_round.clone();
        per_round.sort_by(f64::total_cmp);
        (per_round[per_round.len() / 2], in_order)
    };
    let (median, per_round) = median_of_rounds(&|now| verify_parse(now).created > 0);
    let (decided_median, _) = median_of_rounds(&verify_parse_decide);
    println!(
        "{{\"peer\":\"connect-flow (shared::stripe, rustc release)\",\"call\":\"SignatureVerifier::verify + parse_event\",\"iterations\":{iterations},\"median_us\":{median:.3},\"rounds_us\":{per_round:?},\"verify_parse_decide_median_us\":{decided_median:.3}}}"
    );
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = bench_verify, bench_parse, bench_verify_parse_one_secret, bench_json_skip_floor, bench_decide, bench_verify_parse_decide,
        bench_sqlite_commit, bench_sqlite_commit_in_memory, bench_pipeline_end_to_end
}

fn main() {
    if std::env::var_os("HOT_PATH_PEER_LOOP").is_some() {
        peer_loop();
        return;
    }
    hot_path();
    Criterion::default().configure_from_args().final_summary();
}
