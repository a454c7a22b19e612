//! Every log line a piece of code emits, captured as text, so that tests can search it for what
//! must never be logged (bodies, secrets).

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

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

/// Runs `work` to completion on a runtime of its own, with a subscriber that records every event
/// and span at every level (TRACE included, the AWS SDK's too) as JSON lines, and returns what
/// `work` returned with the captured text.
pub fn capture_logs<T>(work: impl Future<Output = T>) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
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
