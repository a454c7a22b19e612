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

/// [`capture_logs`] at a Lambda log level (`AWS_LAMBDA_LOG_LEVEL`'s values).
pub fn capture_logs_at<T>(level: &str, work: impl Future<Output = T>) -> (T, String) {
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
