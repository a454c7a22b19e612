//! Logging set-up shared by every binary.
//!
//! The Lambda functions follow Lambda's advanced logging controls as `lambda_runtime`'s own
//! subscriber reads them: `AWS_LAMBDA_LOG_FORMAT` of `JSON` (any case) gives one JSON object a
//! line, anything else plain text; the level is `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else
//! `info`. A JSON line carries, at its top level, the fields of every span it was logged in, so
//! every line of a delivery has its `event_id`, `event_type` and `account_id`, and every line of a
//! step its `step_id`, `kind` and `account_id`.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Set by Lambda to the function's log format, `JSON` or `Text`.
pub(crate) const LOG_FORMAT_VAR: &str = "AWS_LAMBDA_LOG_FORMAT";
/// Set by Lambda to the function's application log level.
pub(crate) const LOG_LEVEL_VAR: &str = "AWS_LAMBDA_LOG_LEVEL";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, span fields at the top level.
    Json,
    /// `tracing`'s plain text, without colours or time (Lambda adds its own).
    Text,
}

impl LogFormat {
    /// `JSON` in any case is [`LogFormat::Json`]; anything else, or nothing, is text, as in
    /// `lambda_runtime`.
    pub fn from_value(value: Option<&str>) -> Self {
        if value.is_some_and(|value| value.trim().eq_ignore_ascii_case("json")) {
            Self::Json
        } else {
            Self::Text
        }
    }
}

/// The filter for `AWS_LAMBDA_LOG_LEVEL` (a level: `TRACE` … `ERROR`, and Lambda's `FATAL`, read as
/// `ERROR`) or, when that is unset, `RUST_LOG` (directives, e.g. `shared=debug,info`); `info` when
/// neither is set or usable.
pub fn log_filter(lambda_level: Option<&str>, rust_log: Option<&str>) -> EnvFilter {
    let lambda_level = lambda_level.map(str::trim).filter(|level| !level.is_empty());
    if let Some(level) = lambda_level {
        let level = if level.eq_ignore_ascii_case("fatal") { "error" } else { level };
        return EnvFilter::default()
            .add_directive(LevelFilter::from_str(level).unwrap_or(LevelFilter::INFO).into());
    }
    rust_log
        .map(str::trim)
        .filter(|directives| !directives.is_empty())
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// A subscriber in `format`, filtered by `filter`, writing to `writer`: what the Lambda functions
/// install, and what tests install to capture the same lines.
pub fn lambda_subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false);
    match format {
        Json => Box::new(builder.fmt_fields(JsonFields::new()).event_format(FlatJson).finish()),
        Text => Box::new(builder.without_time().finish()),
    }
}

use LogFormat::{Json, Text};

/// Installs the Lambda functions' subscriber, on standard output, as the environment asks.
pub fn init_lambda_logs() {
    let format = LogFormat::from_value(std::env::var(LOG_FORMAT_VAR).ok().as_deref());
    let filter =
        log_filter(std::env::var(LOG_LEVEL_VAR).ok().as_deref(), std::env::var("RUST_LOG").ok().as_deref());
    // Only fails when a subscriber is already installed, which then keeps logging.
    let _ = tracing::subscriber::set_global_default(lambda_subscriber(format, filter, std::io::stdout));
}

/// Human-readable logs for the `connect-flow` command, on standard error.
pub fn init_text_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
}

/// One JSON object a line: `timestamp` (RFC 3339, which Lambda's log-level filtering reads),
/// `level`, `message`, the event's fields, and the fields of every span it is in.
struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        // Outermost span first, so that an inner span's field wins over an outer one's.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else { continue };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&fields.fields) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut FieldVisitor(&mut line));
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::from(event.metadata().level().as_str()));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields as JSON values.
struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl FieldVisitor<'_> {
    fn insert(&mut self, field: &Field, value: Value) {
        self.0.insert(field.name().to_owned(), value);
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(
            field,
            serde_json::Number::from_f64(value).map_or_else(|| value.to_string().into(), Value::Number),
        );
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, filter: EnvFilter, log: impl FnOnce()) -> String {
        let lines = Lines::default();
        let writer = lines.clone();
        tracing::subscriber::with_default(lambda_subscriber(format, filter, move || writer.clone()), log);
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_format_follows_lambda_runtime() {
        assert_eq!(LogFormat::from_value(Some("JSON")), Json);
        assert_eq!(LogFormat::from_value(Some(" json ")), Json);
        assert_eq!(LogFormat::from_value(Some("Text")), Text);
        assert_eq!(LogFormat::from_value(Some("")), Text);
        assert_eq!(LogFormat::from_value(None), Text);
    }

    #[test]
    fn the_lambda_level_wins_over_rust_log_and_fatal_means_error() {
        let level = |lambda, rust_log| log_filter(lambda, rust_log).max_level_hint();
        assert_eq!(level(Some("WARN"), Some("debug")), Some(LevelFilter::WARN));
        assert_eq!(level(Some("FATAL"), None), Some(LevelFilter::ERROR));
        assert_eq!(level(Some("TRACE"), None), Some(LevelFilter::TRACE));
        assert_eq!(level(Some("loud"), None), Some(LevelFilter::INFO));
        assert_eq!(level(None, Some("debug")), Some(LevelFilter::DEBUG));
        assert_eq!(level(None, None), Some(LevelFilter::INFO));
        assert_eq!(level(Some(" "), Some("")), Some(LevelFilter::INFO));
    }

    #[test]
    fn json_lines_carry_every_enclosing_span_field_at_the_top_level() {
        let logs = capture(Json, log_filter(Some("INFO"), None), || {
            let outer =
                tracing::info_span!("delivery", event_id = "evt_1", account_id = tracing::field::Empty);
            let _outer = outer.enter();
            tracing::info!(attempt = 2_u64, ok = true, "first");
            tracing::Span::current().record("account_id", "acct_1");
            let inner = tracing::info_span!("step", step_id = "tr:pi_1:acct_1", account_id = "acct_2");
            inner.in_scope(|| tracing::warn!(reason = "signature_mismatch", "second"));
            tracing::debug!("filtered out");
        });
        let lines: Vec<Value> = logs.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{logs}");
        assert_eq!(lines[0]["message"], "first");
        assert_eq!((lines[0]["event_id"].as_str(), lines[0]["attempt"].as_u64()), (Some("evt_1"), Some(2)));
        assert_eq!((lines[0]["level"].as_str(), lines[0]["ok"].as_bool()), (Some("INFO"), Some(true)));
        assert!(lines[0].get("account_id").is_none(), "an unrecorded field is absent: {logs}");
        assert!(lines[0]["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')));
        assert_eq!(
            (lines[1]["level"].as_str(), lines[1]["event_id"].as_str()),
            (Some("WARN"), Some("evt_1"))
        );
        assert_eq!(lines[1]["step_id"], "tr:pi_1:acct_1");
        assert_eq!(lines[1]["account_id"], "acct_2", "the inner span's value wins");
        assert_eq!(lines[1]["reason"], "signature_mismatch");
    }

    #[test]
    fn text_lines_have_no_colours_and_keep_span_fields() {
        let logs = capture(Text, log_filter(None, None), || {
            tracing::info_span!("delivery", event_id = "evt_1").in_scope(|| tracing::info!("handled"));
        });
        assert!(logs.contains("event_id") && logs.contains("evt_1") && logs.contains("handled"), "{logs}");
        assert!(!logs.contains('\u{1b}'), "no ANSI escapes: {logs:?}");
        assert!(!logs.trim_start().starts_with('{'), "{logs}");
    }
}
