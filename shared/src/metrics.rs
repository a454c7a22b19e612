//! CloudWatch metrics in the Embedded Metric Format (EMF): JSON documents, one a line, on standard
//! output, which CloudWatch Logs turns into metrics with no API call and no agent.
//!
//! Recording only adds to a pending aggregate; [`Metrics::flush`] writes it, once per webhook
//! delivery and once per worker batch, so a batch of ten steps costs one line per distinct set of
//! dimension values. Dimension values are fixed names (outcomes, step kinds, error kinds, Stripe
//! operations) or a Stripe event type: never an account, an amount, a body or a secret, which keeps
//! both the lines clean and the number of metrics (each one billed) small.
//!
//! Off unless asked for: the Lambda functions turn it on (see [`Metrics::from_lookup`]), while
//! `connect-flow serve` and the tests print nothing, or write to a sink of their own.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// `emf` writes metrics to standard output, `off` turns them off; unset means on in Lambda only.
pub(crate) const METRICS_VAR: &str = "CONNECT_FLOW_METRICS";
/// The CloudWatch namespace the metrics go to.
pub(crate) const NAMESPACE_VAR: &str = "CONNECT_FLOW_METRICS_NAMESPACE";
/// The namespace when [`NAMESPACE_VAR`] is unset.
pub(crate) const DEFAULT_NAMESPACE: &str = "ConnectFlow";
/// Set by Lambda in every function; its value is the `FunctionName` dimension.
const FUNCTION_NAME_VAR: &str = "AWS_LAMBDA_FUNCTION_NAME";
/// The `FunctionName` dimension outside Lambda.
const LOCAL_FUNCTION_NAME: &str = "connect-flow";
/// EMF's limit on the values of one metric in one document.
const MAX_VALUES_PER_METRIC: usize = 100;
/// Longest dimension value kept as it is; CloudWatch allows 1024, event types are far shorter.
const MAX_DIMENSION_VALUE_LEN: usize = 100;

/// Metric names, as they appear in CloudWatch.
pub mod names {
    /// Accepted webhook deliveries, by `EventType` and `Outcome`.
    pub(crate) const EVENTS_RECEIVED: &str = "EventsReceived";
    /// Deliveries of an event already recorded.
    pub(crate) const DUPLICATES: &str = "Duplicates";
    /// Events older than the stored state they touch.
    pub(crate) const STALE: &str = "Stale";
    /// Deliveries refused for their signature, by `Reason`.
    pub(crate) const SIGNATURE_FAILURES: &str = "SignatureFailures";
    /// Deliveries refused or failed for anything but the signature, by `Reason`.
    pub(crate) const WEBHOOK_ERRORS: &str = "WebhookErrors";
    /// Steps sent to the queue, by `Kind`.
    pub(crate) const STEPS_QUEUED: &str = "StepsQueued";
    /// Worker runs of a step, by `Kind` and `Outcome`.
    pub(crate) const STEPS_FINISHED: &str = "StepsFinished";
    /// Stripe API call latency, by `Operation` and `StatusClass`.
    pub(crate) const STRIPE_CALL_LATENCY: &str = "StripeCallLatency";
    /// Steps the sweep sent back to the queue, by the `Status` it found them in.
    pub(crate) const STEPS_SWEPT: &str = "StepsSwept";
    /// Currencies of manual-payout accounts whose funds have sat unpaid past the configured share
    /// of Stripe's manual-payout limit, counted each time a plan finds them so.
    pub(crate) const PAYOUT_FUNDS_STALE: &str = "PayoutFundsStale";
    /// Listed events a reconciler run found unrecorded and fed through the pipeline.
    pub(crate) const EVENTS_REPLAYED: &str = "EventsReplayed";
    /// Steps a reconciler run's sweep sent back to their queue.
    pub(crate) const STEPS_RESUMED: &str = "StepsResumed";
    /// Accounts whose stored state a reconciler run's drift check found different and corrected.
    pub(crate) const ACCOUNTS_CORRECTED: &str = "AccountsCorrected";
    /// Seconds between a reconciler run and the cursor it left: alarmed on past 25 days, before
    /// Stripe's 30-day event window closes.
    pub const RECONCILE_CURSOR_AGE: &str = "ReconcileCursorAgeSeconds";
}

/// Dimension names, as they appear in CloudWatch.
pub mod dimensions {
    /// The Lambda function's name (`connect-flow` outside Lambda).
    pub(crate) const FUNCTION_NAME: &str = "FunctionName";
    /// A Stripe event type, e.g. `account.updated`.
    pub(crate) const EVENT_TYPE: &str = "EventType";
    /// What happened: an event's or a step's outcome.
    pub(crate) const OUTCOME: &str = "Outcome";
    /// Why a delivery was refused: the error kind.
    pub(crate) const REASON: &str = "Reason";
    /// A step's kind: `transfer`, `reversal` or `payout`.
    pub const KIND: &str = "Kind";
    /// A Stripe call: `create_transfer`, `create_transfer_reversal`, `create_payout`, `retrieve_account`,
    /// and the lookups `find_transfer`, `find_reversal`, `find_payout`.
    pub(crate) const OPERATION: &str = "Operation";
    /// How a Stripe call ended: `2xx`, `4xx`, `auth_refused` (the platform key), `account_refused`
    /// (one connected account's access), `rate_limited`, `5xx`, `no_response`.
    pub(crate) const STATUS_CLASS: &str = "StatusClass";
    /// A step's status when the sweep found it: `queued`, `in_flight` or `waiting`.
    pub(crate) const STATUS: &str = "Status";
}

use dimensions::{EVENT_TYPE, FUNCTION_NAME, KIND, OPERATION, OUTCOME, REASON, STATUS, STATUS_CLASS};

/// A CloudWatch unit. Counts are summed before they are written; latencies are written one by one,
/// so that CloudWatch can compute percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A number of things.
    Count,
    /// A duration.
    Milliseconds,
}

impl Unit {
    /// CloudWatch's name for the unit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// One metric of a document.
struct MetricDefinition {
    name: &'static str,
    unit: Unit,
}

/// One entry of `_aws.CloudWatchMetrics`: metrics and the dimension sets they are published under.
struct Directive {
    dimension_sets: &'static [&'static [&'static str]],
    metrics: &'static [MetricDefinition],
}

const fn count(name: &'static str) -> MetricDefinition {
    MetricDefinition { name, unit: Unit::Count }
}

const EVENTS: &[Directive] = &[
    Directive {
        dimension_sets: &[&[FUNCTION_NAME, OUTCOME], &[FUNCTION_NAME, EVENT_TYPE, OUTCOME]],
        metrics: &[count(names::EVENTS_RECEIVED)],
    },
    Directive {
        dimension_sets: &[&[FUNCTION_NAME]],
        metrics: &[count(names::DUPLICATES), count(names::STALE)],
    },
];
const SIGNATURE_FAILURES: &[Directive] = &[Directive {
    dimension_sets: &[&[FUNCTION_NAME], &[FUNCTION_NAME, REASON]],
    metrics: &[count(names::SIGNATURE_FAILURES)],
}];
const WEBHOOK_ERRORS: &[Directive] =
    &[Directive { dimension_sets: &[&[FUNCTION_NAME, REASON]], metrics: &[count(names::WEBHOOK_ERRORS)] }];
const STEPS_QUEUED: &[Directive] =
    &[Directive { dimension_sets: &[&[FUNCTION_NAME, KIND]], metrics: &[count(names::STEPS_QUEUED)] }];
const STEPS_FINISHED: &[Directive] = &[Directive {
    dimension_sets: &[&[FUNCTION_NAME, OUTCOME], &[FUNCTION_NAME, KIND, OUTCOME]],
    metrics: &[count(names::STEPS_FINISHED)],
}];
const STRIPE_CALLS: &[Directive] = &[Directive {
    dimension_sets: &[&[FUNCTION_NAME, STATUS_CLASS], &[FUNCTION_NAME, OPERATION, STATUS_CLASS]],
    metrics: &[MetricDefinition { name: names::STRIPE_CALL_LATENCY, unit: Unit::Milliseconds }],
}];
const STEPS_SWEPT: &[Directive] = &[Directive {
    dimension_sets: &[&[FUNCTION_NAME], &[FUNCTION_NAME, STATUS]],
    metrics: &[count(names::STEPS_SWEPT)],
}];
const PAYOUT_FUNDS_STALE: &[Directive] =
    &[Directive { dimension_sets: &[&[FUNCTION_NAME]], metrics: &[count(names::PAYOUT_FUNDS_STALE)] }];

const RECONCILED: &[Directive] = &[Directive {
    dimension_sets: &[&[FUNCTION_NAME]],
    metrics: &[
        count(names::EVENTS_REPLAYED),
        count(names::STEPS_RESUMED),
        count(names::ACCOUNTS_CORRECTED),
        count(names::RECONCILE_CURSOR_AGE),
    ],
}];

/// The kinds of document written: each has fixed dimensions and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Events,
    SignatureFailures,
    WebhookErrors,
    StepsQueued,
    StepsFinished,
    StripeCalls,
    StepsSwept,
    PayoutFundsStale,
    Reconciled,
}

impl Family {
    const ALL: [Self; 9] = [
        Self::Events,
        Self::SignatureFailures,
        Self::WebhookErrors,
        Self::StepsQueued,
        Self::StepsFinished,
        Self::StripeCalls,
        Self::StepsSwept,
        Self::PayoutFundsStale,
        Self::Reconciled,
    ];

    /// The dimensions whose values each data point carries, besides `FunctionName`.
    fn dimensions(self) -> &'static [&'static str] {
        match self {
            Self::Events => &[EVENT_TYPE, OUTCOME],
            Self::SignatureFailures | Self::WebhookErrors => &[REASON],
            Self::StepsQueued => &[KIND],
            Self::StepsFinished => &[KIND, OUTCOME],
            Self::StripeCalls => &[OPERATION, STATUS_CLASS],
            Self::StepsSwept => &[STATUS],
            Self::PayoutFundsStale | Self::Reconciled => &[],
        }
    }

    /// What CloudWatch extracts. A set without the finer dimensions is there for alarms on a total.
    fn directives(self) -> &'static [Directive] {
        match self {
            Self::Events => EVENTS,
            Self::SignatureFailures => SIGNATURE_FAILURES,
            Self::WebhookErrors => WEBHOOK_ERRORS,
            Self::StepsQueued => STEPS_QUEUED,
            Self::StepsFinished => STEPS_FINISHED,
            Self::StripeCalls => STRIPE_CALLS,
            Self::StepsSwept => STEPS_SWEPT,
            Self::PayoutFundsStale => PAYOUT_FUNDS_STALE,
            Self::Reconciled => RECONCILED,
        }
    }

    fn metrics(self) -> impl Iterator<Item = &'static MetricDefinition> {
        self.directives().iter().flat_map(|directive| directive.metrics)
    }
}

/// Where finished EMF lines go.
pub trait MetricsSink: Send + Sync {
    /// Writes one document, without its line break.
    fn write_line(&self, line: &str);
}

/// Standard output, where Lambda sends every line to CloudWatch Logs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StdoutSink;

impl MetricsSink for StdoutSink {
    fn write_line(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        // A metric that cannot be written must not fail the delivery or the step it counts.
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
    }
}

/// Keeps the lines in memory, for tests and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<String>>>);

impl MemorySink {
    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Takes the lines written so far, leaving none.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl MetricsSink for MemorySink {
    fn write_line(&self, line: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(line.to_owned());
    }
}

/// The namespace and the `FunctionName` dimension of every document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// The CloudWatch namespace.
    pub namespace: String,
    /// The `FunctionName` dimension's value.
    pub function_name: String,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { namespace: DEFAULT_NAMESPACE.to_owned(), function_name: LOCAL_FUNCTION_NAME.to_owned() }
    }
}

/// The data points of one family and set of dimension values, waiting for the flush.
struct Pending {
    family: Family,
    dimension_values: Vec<String>,
    /// The values of each of the family's metrics, in [`Family::metrics`] order.
    values: Vec<Vec<f64>>,
}

struct Recorder {
    settings: MetricsSettings,
    sink: Arc<dyn MetricsSink>,
    /// Per family (in [`Family::ALL`] order), its `CloudWatchMetrics` array, serialised once.
    directives: Vec<String>,
    /// `"FunctionName":"…"`, serialised once.
    function_name_member: String,
    /// A handful of entries at most between two flushes, so a list beats a map.
    pending: Mutex<Vec<Pending>>,
}

/// Records metrics and writes them as EMF. Cheap to clone; the disabled handle does nothing.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Recorder>>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(recorder) => f.debug_tuple("Metrics").field(&recorder.settings).finish(),
            None => f.write_str("Metrics(disabled)"),
        }
    }
}

impl Metrics {
    /// Records nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Writes EMF lines to `sink`.
    pub fn to_sink(settings: MetricsSettings, sink: Arc<dyn MetricsSink>) -> Self {
        let directives =
            Family::ALL.iter().map(|family| directives_json(&settings.namespace, *family)).collect();
        let function_name_member =
            format!("{}:{}", Value::from(FUNCTION_NAME), Value::from(settings.function_name.as_str()));
        Self(Some(Arc::new(Recorder {
            settings,
            sink,
            directives,
            function_name_member,
            pending: Mutex::default(),
        })))
    }

    /// Reads [`Metrics::from_lookup`] from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// EMF on standard output when [`METRICS_VAR`] is `emf`, or when it is unset and this runs in
    /// Lambda (`AWS_LAMBDA_FUNCTION_NAME` is set); otherwise off. The namespace is
    /// [`NAMESPACE_VAR`] or [`DEFAULT_NAMESPACE`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let function_name = lookup(FUNCTION_NAME_VAR).filter(|name| !name.trim().is_empty());
        let enabled = match lookup(METRICS_VAR).as_deref().map(str::trim) {
            None | Some("") => function_name.is_some(),
            Some(value) if value.eq_ignore_ascii_case("emf") => true,
            Some(value) if value.eq_ignore_ascii_case("off") => false,
            Some(_) => {
                tracing::warn!("{METRICS_VAR} is neither `emf` nor `off`: metrics are off");
                false
            }
        };
        if !enabled {
            return Self::disabled();
        }
        let namespace = match lookup(NAMESPACE_VAR).map(|namespace| namespace.trim().to_owned()) {
            None => DEFAULT_NAMESPACE.to_owned(),
            Some(namespace) if is_valid_namespace(&namespace) => namespace,
            Some(_) => {
                tracing::warn!("{NAMESPACE_VAR} is not a CloudWatch namespace: using {DEFAULT_NAMESPACE}");
                DEFAULT_NAMESPACE.to_owned()
            }
        };
        let function_name = function_name.unwrap_or_else(|| LOCAL_FUNCTION_NAME.to_owned());
        Self::to_sink(MetricsSettings { namespace, function_name }, Arc::new(StdoutSink))
    }

    /// Whether anything is recorded.
    pub(crate) fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// An accepted delivery and what became of it (`applied`, `duplicate`, `stale`, …).
    pub fn event_received(&self, event_type: &str, outcome: &str) {
        let duplicate = f64::from(u8::from(outcome == "duplicate"));
        let stale = f64::from(u8::from(outcome == "stale"));
        self.add(Family::Events, &[event_type, outcome], &[1.0, duplicate, stale]);
    }

    /// A delivery refused for its signature, with the error kind.
    pub fn signature_failure(&self, reason: &str) {
        self.add(Family::SignatureFailures, &[reason], &[1.0]);
    }

    /// A delivery refused or failed for anything else, with the error kind.
    pub fn webhook_error(&self, reason: &str) {
        self.add(Family::WebhookErrors, &[reason], &[1.0]);
    }

    /// `count` steps of `kind` sent to the queue.
    pub fn steps_queued(&self, kind: &str, count: usize) {
        // A batch never nears 2^53 steps, so the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        self.add(Family::StepsQueued, &[kind], &[count as f64]);
    }

    /// A worker's run of a step of `kind` ended with `outcome`.
    pub fn step_finished(&self, kind: &str, outcome: &str) {
        self.add(Family::StepsFinished, &[kind, outcome], &[1.0]);
    }

    /// A Stripe call that took `elapsed` and answered `status` (`None`: no answer).
    pub fn stripe_call(&self, operation: &str, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(200..=299) => "2xx",
            Some(401 | 403) => "auth_refused",
            Some(429) => "rate_limited",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "no_response",
        };
        self.add(Family::StripeCalls, &[operation, class], &[elapsed.as_secs_f64() * 1000.0]);
    }

    /// `count` steps found in `status` (`queued`, `in_flight`, `waiting`) and sent back to the
    /// queue by one sweep; zero counts too, so that the metric has a point for every run.
    pub fn steps_swept(&self, status: &str, count: usize) {
        // A sweep never nears 2^53 steps, so the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        self.add(Family::StepsSwept, &[status], &[count as f64]);
    }

    /// What one reconciler run did, and how old the cursor it left is.
    pub fn reconciled(&self, run: &crate::domain::reconcile::ReconcileRun) {
        // Counts and ages this small are exact in an f64.
        #[allow(clippy::cast_precision_loss)]
        let values = [
            run.events_replayed as f64,
            run.steps_resumed as f64,
            run.accounts_corrected as f64,
            run.finished_at.saturating_sub(run.cursor).max(0) as f64,
        ];
        self.add(Family::Reconciled, &[], &values);
    }

    /// `count` currencies of manual-payout accounts found with funds unpaid past the configured
    /// share of Stripe's manual-payout limit.
    pub fn payout_funds_stale(&self, count: usize) {
        // Never near 2^53, so the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        self.add(Family::PayoutFundsStale, &[], &[count as f64]);
    }

    /// A Stripe call that took `elapsed` and was refused because the platform has no access to the
    /// connected account it named.
    pub(crate) fn stripe_call_refused_by_account(&self, operation: &str, elapsed: Duration) {
        self.add(Family::StripeCalls, &[operation, "account_refused"], &[elapsed.as_secs_f64() * 1000.0]);
    }

    /// Writes everything recorded since the last flush, one line per family and dimension values.
    pub fn flush(&self) {
        let Some(recorder) = &self.0 else { return };
        let pending = std::mem::take(&mut *recorder.lock());
        if pending.is_empty() {
            return;
        }
        let timestamp = unix_millis();
        for entry in &pending {
            recorder.write(entry, timestamp);
        }
    }

    fn add(&self, family: Family, dimension_values: &[&str], values: &[f64]) {
        let Some(recorder) = &self.0 else { return };
        let mut pending = recorder.lock();
        let found = pending.iter().position(|entry| {
            entry.family == family
                && entry
                    .dimension_values
                    .iter()
                    .map(String::as_str)
                    .eq(dimension_values.iter().map(|v| dimension_value(v)))
        });
        let Some(index) = found else {
            pending.push(Pending {
                family,
                dimension_values: dimension_values
                    .iter()
                    .map(|value| dimension_value(value).to_owned())
                    .collect(),
                values: values.iter().map(|value| vec![*value]).collect(),
            });
            return;
        };
        let mut full = false;
        for ((slot, value), metric) in pending[index].values.iter_mut().zip(values).zip(family.metrics()) {
            match (metric.unit, slot.first_mut()) {
                (Unit::Count, Some(sum)) => *sum += value,
                _ => slot.push(*value),
            }
            full |= slot.len() >= MAX_VALUES_PER_METRIC;
        }
        if full {
            let entry = pending.swap_remove(index);
            recorder.write(&entry, unix_millis());
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One EMF document: `_aws` metadata, then every dimension and metric value at the top level.
    /// Only the metadata and the function name can need escaping, and both were serialised once;
    /// dimension values are plain names ([`dimension_value`]) and metric names are ours.
    fn write(&self, entry: &Pending, timestamp: u64) {
        use std::fmt::Write as _;
        let family_index = Family::ALL.iter().position(|family| *family == entry.family).unwrap_or(0);
        let mut line = String::with_capacity(640);
        // Writing to a String cannot fail.
        let _ = write!(
            line,
            "{{\"_aws\":{{\"Timestamp\":{timestamp},\"CloudWatchMetrics\":{}}},{}",
            self.directives[family_index], self.function_name_member
        );
        for (name, value) in entry.family.dimensions().iter().zip(&entry.dimension_values) {
            let _ = write!(line, ",\"{name}\":\"{value}\"");
        }
        for (metric, values) in entry.family.metrics().zip(&entry.values) {
            let _ = write!(line, ",\"{}\":", metric.name);
            match values.as_slice() {
                [one] => push_number(&mut line, *one),
                many => {
                    line.push('[');
                    for (n, value) in many.iter().enumerate() {
                        if n > 0 {
                            line.push(',');
                        }
                        push_number(&mut line, *value);
                    }
                    line.push(']');
                }
            }
        }
        line.push('}');
        self.sink.write_line(&line);
    }
}

/// A family's `CloudWatchMetrics` array.
fn directives_json(namespace: &str, family: Family) -> String {
    let directives: Vec<Value> = family
        .directives()
        .iter()
        .map(|directive| {
            let metrics: Vec<Value> = directive
                .metrics
                .iter()
                .map(|metric| json!({ "Name": metric.name, "Unit": metric.unit.as_str() }))
                .collect();
            json!({ "Namespace": namespace, "Dimensions": directive.dimension_sets, "Metrics": metrics })
        })
        .collect();
    Value::from(directives).to_string()
}

/// A whole number as an integer (`3`, not `3.0`), anything else to the microsecond. Values are
/// counts and durations, always finite.
fn push_number(line: &mut String, value: f64) {
    use std::fmt::Write as _;
    // Counts and millisecond latencies stay far below 2^53, where these conversions are exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let _ = if value.fract() == 0.0 && (0.0..9.0e15).contains(&value) {
        write!(line, "{}", value as u64)
    } else if value.is_finite() {
        write!(line, "{}", (value * 1000.0).round() / 1000.0)
    } else {
        write!(line, "0")
    };
}

/// A dimension value as written: names made of letters, digits, `.`, `_` and `-` pass; anything
/// else (never expected: values are our own names or Stripe's event types) becomes `other`, so
/// that no stray input reaches a line or multiplies the metrics.
fn dimension_value(value: &str) -> &str {
    let plain = !value.is_empty()
        && value.len() <= MAX_DIMENSION_VALUE_LEN
        && value.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if plain { value } else { "other" }
}

/// CloudWatch's rule: at most 255 of letters, digits and `.-_/#:` and space, not all spaces, and
/// not in the reserved `AWS/` namespaces.
fn is_valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 255
        && !namespace.starts_with("AWS/")
        && namespace.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_' | b'/' | b'#' | b':' | b' ')
        })
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
