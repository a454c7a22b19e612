//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// Structured JSON logs for Lambda, honouring `AWS_LAMBDA_LOG_LEVEL` (or `RUST_LOG`).
pub fn init_json_logs() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .map(|level| EnvFilter::new(level.to_lowercase()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .without_time()
        .with_target(false)
        .init();
}

/// Human-readable logs for the `connect-flow` command, on standard error.
pub fn init_text_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
}
