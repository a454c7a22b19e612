//! What metrics and structured logs cost per event.
//!
//! - `emf_event_discarded`: one delivery's metrics recorded and flushed into a sink that drops the
//!   line: aggregation and serialisation only.
//! - `emf_event_dev_null`: the same, written to `/dev/null` with one `write` per line, as Lambda's
//!   standard output (a pipe) takes it.
//! - `emf_worker_batch_of_ten`: a batch of ten steps (ten outcomes, ten Stripe latencies) recorded
//!   and flushed to `/dev/null`: the figure per batch, not per step.
//! - `pipeline_in_memory_metrics_off` / `pipeline_in_memory_metrics_on`: `WebhookService::handle`
//!   for a fresh event on the in-memory store (no fsync, so the difference is not lost in it),
//!   without and with metrics written to `/dev/null`.
//! - `json_log_line` / `json_log_line_nested_fields`: one `info!` inside a delivery span through the
//!   Lambda functions' flattened JSON subscriber, and through `tracing_subscriber`'s stock JSON with
//!   the current span, both into a sink.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use shared::clock::FixedClock;
use shared::config::WebhookSettings;
use shared::metrics::{Metrics, MetricsSettings, MetricsSink};
use shared::store::sqlite::SqliteStore;
use shared::stripe::signature::{WebhookSecret, sign};
use shared::telemetry::{LogFormat, lambda_subscriber, log_filter};
use shared::webhook::WebhookService;

const SAMPLE_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../events/stripe/account.updated.active.json");
const SAMPLE_EVENT_ID: &str = "evt_1QcXic3ZRdECX8ViXm5ez2uC";
const SECRET: &str = "whsec_bench_observability";
const NOW: i64 = 1_732_000_300;

/// Drops every line.
struct Discard;

impl MetricsSink for Discard {
    fn write_line(&self, line: &str) {
        black_box(line);
    }
}

/// One `write` of the line and its newline to `/dev/null`, as a pipe would take it.
struct DevNull(Mutex<File>);

impl DevNull {
    fn open() -> Self {
        Self(Mutex::new(File::create("/dev/null").expect("/dev/null opens")))
    }
}

impl MetricsSink for DevNull {
    fn write_line(&self, line: &str) {
        let mut buffer = Vec::with_capacity(line.len() + 1);
        buffer.extend_from_slice(line.as_bytes());
        buffer.push(b'\n');
        self.0.lock().unwrap().write_all(&buffer).expect("/dev/null takes the line");
    }
}

fn metrics(sink: impl MetricsSink + 'static) -> Metrics {
    let settings = MetricsSettings {
        namespace: "ConnectFlow".into(),
        function_name: "connect-flow-WebhookFunction-AbC123".into(),
    };
    Metrics::to_sink(settings, Arc::new(sink))
}

fn bench_emf(c: &mut Criterion) {
    let discarded = metrics(Discard);
    c.bench_function("emf_event_discarded", |b| {
        b.iter(|| {
            discarded.event_received(black_box("account.updated"), black_box("applied"));
            discarded.flush();
        })
    });
    let dev_null = metrics(DevNull::open());
    c.bench_function("emf_event_dev_null", |b| {
        b.iter(|| {
            dev_null.event_received(black_box("account.updated"), black_box("applied"));
            dev_null.flush();
        })
    });
    c.bench_function("emf_worker_batch_of_ten", |b| {
        b.iter(|| {
            for n in 0..10_u64 {
                dev_null.step_finished("transfer", "succeeded");
                dev_null.stripe_call("create_transfer", Some(200), Duration::from_micros(180_000 + n));
            }
            dev_null.flush();
        })
    });
}

fn bench_pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime starts");
    let sample = std::fs::read_to_string(SAMPLE_PATH).expect("the sample event is readable");
    let settings =
        WebhookSettings { secrets: vec![WebhookSecret::new(SECRET)], ..WebhookSettings::unsigned(None) };
    for (name, recorder) in [
        ("pipeline_in_memory_metrics_off", Metrics::disabled()),
        ("pipeline_in_memory_metrics_on", metrics(DevNull::open())),
    ] {
        let store = SqliteStore::in_memory().expect("an in-memory store opens");
        let service = WebhookService::with_clock(store, &settings, FixedClock(NOW)).with_metrics(recorder);
        let mut n = 0_u64;
        let mut fresh = || {
            n += 1;
            let body = sample.replacen(SAMPLE_EVENT_ID, &format!("evt_bench{n:019}"), 1).into_bytes();
            (sign(&WebhookSecret::new(SECRET), NOW, &body), body)
        };
        c.bench_function(name, |b| {
            b.iter_batched(
                &mut fresh,
                |(header, body)| {
                    let reply = runtime.block_on(service.handle(Some(&header), &body));
                    assert_eq!(reply.status, 200, "the delivery is accepted: {}", reply.body);
                    reply
                },
                BatchSize::SmallInput,
            )
        });
    }
}

fn log_one_line() {
    let span = tracing::info_span!(
        "delivery",
        event_id = "evt_1QcXic3ZRdECX8ViXm5ez2uC",
        event_type = "account.updated",
        account_id = "acct_1Nv0FGQ9RKHgCVdK"
    );
    let _entered = span.enter();
    tracing::info!(outcome = "applied", "event handled");
}

fn bench_logs(c: &mut Criterion) {
    let flat = lambda_subscriber(LogFormat::Json, log_filter(Some("INFO"), None), std::io::sink);
    tracing::subscriber::with_default(flat, || c.bench_function("json_log_line", |b| b.iter(log_one_line)));
    let nested = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .without_time()
        .with_target(false)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(nested, || {
        c.bench_function("json_log_line_nested_fields", |b| b.iter(log_one_line))
    });
}

/// Short runs, medians over 50 samples, as in `hot_path`.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = observability;
    config = config();
    targets = bench_emf, bench_pipeline, bench_logs
}
criterion_main!(observability);
