//! The sweeper Lambda function: one step sweep ([`crate::sweep`]) per scheduled invocation.
//!
//! An EventBridge Scheduler schedule invokes it every 15 minutes (infra/template.yaml,
//! `SweepSchedule`); the payload is ignored. The store and the queues are built once per cold start
//! from the variables the webhook reads: `CONNECT_FLOW_TABLE` and the two queue URLs when deployed,
//! or the embedded store (which is its own queue) when `CONNECT_FLOW_DB` names one, as under
//! `cargo lambda watch` ([`StoreLocation`]). Each invocation answers the [`SweepReport`] as JSON,
//! logs it and records it as the `StepsSwept` metric.
//!
//! # Budget
//!
//! A sweep is three queries of the open-steps index, one read per distinct destination of the
//! waiting steps it found, and one `SendMessageBatch` per ten steps re-sent: a few seconds for a
//! full batch of 500 steps per status, each call bounded by the workers' SDK settings
//! ([`crate::aws::WORKER`]). Then the payout sweep ([`sweep_payouts`]): one query of the
//! `payouts_due` index, and per due account (at most the same batch) one query of its payouts and
//! at most one write. A sweep still running [`DEADLINE_MARGIN`] before the invocation's
//! deadline is abandoned with an error rather than timed out; the next run starts again from the
//! oldest steps, and every re-send is safe (the queue deduplicates by step id).

use std::time::{Duration, Instant, SystemTime};

use lambda_runtime::LambdaEvent;
use serde::de::IgnoredAny;

use crate::config::{ConfigError, StoreLocation};
use crate::domain::payout::PayoutSettings;
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::dynamodb::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::sqs::{self, SqsQueue};
use crate::stripe::signature::{Clock, SystemClock};
use crate::sweep::{SweepReport, SweepSettings, sweep, sweep_payouts};

/// The sweeper's `Timeout` in infra/template.yaml.
pub const SWEEPER_LAMBDA_TIMEOUT: Duration = Duration::from_secs(120);
/// How long before the invocation's deadline an unfinished sweep is abandoned, so that the
/// failure is answered and logged rather than cut off by Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// A failure to start the sweeper: its configuration or the embedded store.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Why one sweep did not finish. Either way the next scheduled run sweeps again.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store or the queue failed.
    #[error("sweep failed: {0}")]
    Store(#[from] StoreError),
    /// The invocation's deadline came first.
    #[error("sweep abandoned {DEADLINE_MARGIN:?} before the invocation's deadline")]
    DeadlineExceeded,
}

/// The store the sweep reads and the queue it sends to.
pub enum SweepTarget {
    /// The deployed table and the two SQS FIFO queues.
    DynamoDb {
        /// The table.
        store: DynamoStore,
        /// The transfers and payouts queues.
        queue: SqsQueue,
    },
    /// The embedded store, which is also the step queue, for local runs.
    Sqlite(SqliteStore),
}

impl SweepTarget {
    /// Reads [`SweepTarget::from_lookup`] from the process environment.
    pub fn from_env(aws: &aws_config::SdkConfig) -> Result<Self, StartError> {
        Self::from_lookup(aws, |name| std::env::var(name).ok())
    }

    /// The table and both queue URLs, all required (a sweep that cannot send does nothing), or
    /// else the embedded store.
    pub fn from_lookup(
        aws: &aws_config::SdkConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        Ok(match StoreLocation::from_lookup(&lookup)? {
            StoreLocation::DynamoDb(table) => {
                let (transfers, payouts) = sqs::queue_urls_from_lookup(&lookup).ok_or_else(|| {
                    let set = |name| lookup(name).is_some_and(|url| !url.trim().is_empty());
                    let missing = if set(sqs::TRANSFERS_QUEUE_URL) {
                        sqs::PAYOUTS_QUEUE_URL
                    } else {
                        sqs::TRANSFERS_QUEUE_URL
                    };
                    ConfigError::Missing(missing)
                })?;
                Self::DynamoDb {
                    store: DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), table),
                    queue: SqsQueue::new(aws_sdk_sqs::Client::new(aws), transfers, payouts),
                }
            }
            StoreLocation::Sqlite(path) => Self::Sqlite(SqliteStore::open(&path, SystemClock.now_unix())?),
        })
    }

    async fn sweep(
        &self,
        now: i64,
        settings: &SweepSettings,
        payouts: &PayoutSettings,
    ) -> Result<SweepReport, StoreError> {
        let (mut report, planned) = match self {
            Self::DynamoDb { store, queue } => (
                sweep(store, queue, now, settings).await?,
                sweep_payouts(store, queue, now, payouts, settings.batch).await?,
            ),
            Self::Sqlite(store) => (
                sweep(store, store, now, settings).await?,
                sweep_payouts(store, store, now, payouts, settings.batch).await?,
            ),
        };
        report.payouts = planned;
        Ok(report)
    }
}

/// One sweep per invocation, on one target, with its metrics.
pub struct Sweeper {
    target: SweepTarget,
    settings: SweepSettings,
    payouts: PayoutSettings,
    metrics: Metrics,
}

impl Sweeper {
    /// A sweeper with [`SweepSettings::default`], the default payout policy and no metrics.
    pub fn new(target: SweepTarget) -> Self {
        Self {
            target,
            settings: SweepSettings::default(),
            payouts: PayoutSettings::default(),
            metrics: Metrics::disabled(),
        }
    }

    /// Plans payouts by `settings` (the deployment's default payout policy).
    pub fn with_payout_settings(mut self, settings: PayoutSettings) -> Self {
        self.payouts = settings;
        self
    }

    /// Sweeps with `settings` instead.
    pub fn with_settings(mut self, settings: SweepSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Records each sweep's report in `metrics`, and flushes them after it.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The store and queue swept.
    pub fn target(&self) -> &SweepTarget {
        &self.target
    }

    /// One sweep at `now`, abandoned [`DEADLINE_MARGIN`] before `deadline`; logs and records
    /// the report.
    pub async fn run(&self, now: i64, deadline: Option<Instant>) -> Result<SweepReport, SweepError> {
        // Boxed: the DynamoDB sweep's future nests deep enough, inside the runtime's, to pass the
        // compiler's default query depth when laid out inline.
        let swept = Box::pin(self.target.sweep(now, &self.settings, &self.payouts));
        let report = match deadline {
            None => swept.await?,
            Some(deadline) => {
                let stop = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
                match tokio::time::timeout_at(stop.into(), swept).await {
                    Ok(report) => report?,
                    Err(_) => return Err(SweepError::DeadlineExceeded),
                }
            }
        };
        tracing::info!(
            queued = report.queued,
            in_flight = report.in_flight,
            waiting = report.waiting,
            total = report.total(),
            payout_accounts_due = report.payouts.accounts_due,
            payouts_planned = report.payouts.payouts_planned,
            stale_funds = report.payouts.stale_funds,
            "sweep finished"
        );
        self.metrics.steps_swept("queued", report.queued);
        self.metrics.steps_swept("in_flight", report.in_flight);
        self.metrics.steps_swept("waiting", report.waiting);
        self.metrics.payout_funds_stale(report.payouts.stale_funds);
        self.metrics.flush();
        Ok(report)
    }

    /// One invocation: a sweep on the system clock, before `deadline`. A deadline already past
    /// when the invocation arrives is not a real one, and is ignored: Lambda's always lies ahead,
    /// while `cargo lambda watch` sends a relative 600000 that reads as 1970.
    pub async fn handle(&self, deadline: SystemTime) -> Result<SweepReport, SweepError> {
        let deadline = deadline.duration_since(SystemTime::now()).ok().map(|left| Instant::now() + left);
        let result = self.run(SystemClock.now_unix(), deadline).await;
        if let Err(error) = &result {
            tracing::warn!(%error, "sweep failed; the next scheduled run sweeps again");
        }
        result
    }
}

/// The sweeper Lambda function's whole life: logs, the store and queues read from the environment
/// once per cold start with the workers' bounded SDK settings, then one sweep per invocation,
/// whatever its payload.
pub async fn run_sweeper_function() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init_lambda_logs();
    // Bounded retries and timeouts, as the workers': no call can hold a sweep for long.
    let aws = crate::aws::WORKER.load().await;
    let payouts = PayoutSettings::from_env()?;
    let sweeper = std::sync::Arc::new(
        Sweeper::new(SweepTarget::from_env(&aws)?)
            .with_payout_settings(payouts)
            .with_metrics(Metrics::from_env()),
    );
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<IgnoredAny>| {
        let sweeper = std::sync::Arc::clone(&sweeper);
        async move { sweeper.handle(event.context.deadline()).await.map_err(lambda_runtime::Error::from) }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::domain::account::AccountId;
    use crate::domain::step::{Step, StepId, StepKind, StepStatus};
    use crate::metrics::{MemorySink, MetricsSettings};
    use crate::store::{AccountStore, EventOutcome, EventRecord, EventWrite};

    const NOW: i64 = 1_750_000_000;

    fn step(step_id: &str, kind: StepKind, status: StepStatus, updated_at: i64) -> Step {
        Step {
            status,
            updated_at,
            ..Step::planned(
                kind,
                step_id.to_owned(),
                AccountId::parse("acct_A").unwrap(),
                500,
                "usd".into(),
                updated_at,
            )
        }
    }

    async fn store_with(steps: &[Step]) -> SqliteStore {
        let store = SqliteStore::in_memory().unwrap();
        let record = EventRecord {
            event_id: "evt_planned".to_owned(),
            event_type: "payment_intent.succeeded".to_owned(),
            account_id: None,
            created: Some(NOW),
            livemode: Some(false),
            outcome: EventOutcome::Applied,
            reason: None,
            received_at: NOW,
            expires_at: NOW + 1,
            fetch: None,
        };
        store.commit(&EventWrite::with_steps(&record, steps)).await.unwrap();
        store
    }

    fn sqlite(sweeper: &Sweeper) -> &SqliteStore {
        match sweeper.target() {
            SweepTarget::Sqlite(store) => store,
            SweepTarget::DynamoDb { .. } => unreachable!("the tests sweep the embedded store"),
        }
    }

    #[tokio::test]
    async fn a_run_resends_stranded_steps_and_records_its_report() {
        let old = NOW - 3_600;
        let stranded = step("tr:pi_1:acct_A", StepKind::Transfer, StepStatus::Queued, old);
        let fresh = step("tr:pi_2:acct_A", StepKind::Transfer, StepStatus::Queued, NOW - 5);
        let stuck = step("po:evt_1:acct_A:usd", StepKind::Payout, StepStatus::InFlight, old);
        let store = store_with(&[stranded.clone(), fresh, stuck.clone()]).await;
        let sink = MemorySink::default();
        let settings =
            MetricsSettings { namespace: "ConnectFlow/test".into(), function_name: "sweeper-fn".into() };
        let sweeper = Sweeper::new(SweepTarget::Sqlite(store))
            .with_metrics(Metrics::to_sink(settings, Arc::new(sink.clone())));

        let report = sweeper.run(NOW, Some(Instant::now() + Duration::from_secs(60))).await.unwrap();
        assert_eq!(report, SweepReport { queued: 1, in_flight: 1, waiting: 0, ..SweepReport::default() });
        assert_eq!(
            serde_json::to_value(report).unwrap(),
            json!({"queued": 1, "in_flight": 1, "waiting": 0,
                   "payouts": {"accounts_due": 0, "payouts_planned": 0, "stale_funds": 0}})
        );

        let sent = |queue| -> Vec<StepId> {
            let messages = sqlite(&sweeper).receive(queue, NOW, 30, 10).unwrap();
            messages.into_iter().map(|message| message.step.step_id).collect()
        };
        assert_eq!(sent("transfers"), [stranded.step_id]);
        assert_eq!(sent("payouts"), [stuck.step_id]);

        let documents: Vec<Value> =
            sink.take().iter().map(|line| serde_json::from_str(line).unwrap()).collect();
        let stale: Vec<i64> =
            documents.iter().filter_map(|document| document["PayoutFundsStale"].as_i64()).collect();
        assert_eq!(stale, [0], "one point per run, zero included");
        let mut swept: Vec<(String, i64)> = documents
            .iter()
            .filter(|document| document.get("StepsSwept").is_some())
            .map(|document| {
                assert_eq!(document["FunctionName"], "sweeper-fn");
                (document["Status"].as_str().unwrap().to_owned(), document["StepsSwept"].as_i64().unwrap())
            })
            .collect();
        swept.sort();
        let expected =
            [("in_flight", 1), ("queued", 1), ("waiting", 0)].map(|(status, n)| (status.to_owned(), n));
        assert_eq!(swept, expected, "one point per status, zeros included");
    }

    #[tokio::test]
    async fn a_deadline_already_past_is_ignored() {
        let stranded = step("tr:pi_1:acct_A", StepKind::Transfer, StepStatus::Queued, NOW - 3_600);
        let sweeper = Sweeper::new(SweepTarget::Sqlite(store_with(&[stranded]).await));
        let report = sweeper.handle(SystemTime::UNIX_EPOCH + Duration::from_secs(600)).await.unwrap();
        assert_eq!(report.queued, 1);
    }

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
    }

    fn missing(pairs: &[(&str, &str)]) -> String {
        let aws = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        match SweepTarget::from_lookup(&aws, lookup(pairs)) {
            Ok(SweepTarget::DynamoDb { .. }) => "nothing: DynamoDB".to_owned(),
            Ok(SweepTarget::Sqlite(_)) => "nothing: SQLite".to_owned(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn the_deployed_sweeper_needs_the_table_and_both_queues() {
        let (table, transfers, payouts) = (
            ("CONNECT_FLOW_TABLE", "connect-flow"),
            ("CONNECT_FLOW_TRANSFERS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/t.fifo"),
            ("CONNECT_FLOW_PAYOUTS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/p.fifo"),
        );
        assert_eq!(missing(&[]), "CONNECT_FLOW_TABLE is not set");
        assert_eq!(missing(&[table]), "CONNECT_FLOW_TRANSFERS_QUEUE_URL is not set");
        assert_eq!(missing(&[table, payouts]), "CONNECT_FLOW_TRANSFERS_QUEUE_URL is not set");
        assert_eq!(
            missing(&[table, transfers, ("CONNECT_FLOW_PAYOUTS_QUEUE_URL", " ")]),
            "CONNECT_FLOW_PAYOUTS_QUEUE_URL is not set"
        );
        assert_eq!(missing(&[table, transfers, payouts]), "nothing: DynamoDB");
        assert_eq!(missing(&[("CONNECT_FLOW_DB", ":memory:")]), "nothing: SQLite");
    }
}
