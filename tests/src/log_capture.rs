//! Every log line a piece of code emits, captured as text, so that tests can search it for what
//! must never be logged (bodies, secrets).

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use shared::telemetry::{LogFormat, lambda_subscriber, log_filter};

/// A writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `work` to completion on a runtime of its own, with the Lambda functions' own JSON
/// subscriber recording every event and span at every level (TRACE included, the AWS SDK's too),
/// and returns what `work` returned with the captured text.
pub fn capture_logs<T>(work: impl Future<Output = T>) -> (T, String) {
    capture_logs_at("TRACE", work)
}

/// A global default that records nothing but keeps every callsite asking: tracing caches each
/// callsite's interest process-wide, computed by whichever thread reaches it first, and a test
/// thread with no subscriber would cache "never" and hide that line from a capture running on
/// another thread (tokio-rs/tracing's interest cache; the capture tests were flaky without this).
struct KeepsEveryCallsiteAsking;

impl tracing::Subscriber for KeepsEveryCallsiteAsking {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {}

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// [`capture_logs`] at a Lambda log level (`AWS_LAMBDA_LOG_LEVEL`'s values).
pub fn capture_logs_at<T>(level: &str, work: impl Future<Output = T>) -> (T, String) {
    static KEEPER: std::sync::Once = std::sync::Once::new();
    // Another global default (a test binary's own) would do the same job; this one is only the
    // fallback, so its refusal is fine.
    KEEPER.call_once(|| drop(tracing::subscriber::set_global_default(KeepsEveryCallsiteAsking)));
    tracing::callsite::rebuild_interest_cache();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        lambda_subscriber(LogFormat::Json, log_filter(Some(level), None), move || writer.clone());
    let output = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime starts");
        runtime.block_on(work)
    });
    let bytes = captured.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
    (output, String::from_utf8_lossy(&bytes).into_owned())
}
