//! Cold start, warm invocation and peak memory of the Lambda bootstraps, measured on this machine.
//!
//! Each run starts the function's binary as Lambda would (`AWS_LAMBDA_RUNTIME_API` and the usual
//! Lambda variables, nothing else from this process's environment), against a stand-in Runtime API
//! on loopback, DynamoDB and SQS (and Secrets Manager with `--secrets-manager`) on moto server, and,
//! for the workers and the reconciler, the stand-in Stripe. It hands the function two invocations
//! (for the reconciler, its schedule's payload, with one stranded step in the table and nothing
//! for Stripe's lists to answer) and records:
//!
//! - **init**: from spawning the process to its first poll for an invocation;
//! - **cold**: from spawning the process to the first answer arriving;
//! - **CPU to first answer**: the CPU time the process (all its threads) had used by then, which,
//!   unlike the wall times, hardly depends on the machine's other load;
//! - **warm**: from handing over the second invocation to its answer;
//! - **peak RSS**: the process's `VmHWM` after the second answer.
//!
//! Every answer is checked (a webhook's 200 `applied`, a worker's empty list of failures and the
//! transfer or payout on the stand-in Stripe, the reconciler's report of a run that listed and
//! replayed nothing, corrected nothing and re-sent the one step, after the lists it made, the fetch
//! worker's empty list of failures and both thin events `applied`), so a run that measures a
//! failure fails loudly.
//!
//! ```sh
//! cargo build --release -p webhook -p transfer-worker -p payout-worker -p reconciler -p fetch-worker
//! CONNECT_FLOW_TEST_DYNAMODB_ENDPOINT=http://127.0.0.1:PORT \
//!   cargo run -p integration-tests --bin cold-start -- --profile release --runs 20
//! ```
//!
//! Options: `--profile debug|release` (the binaries in `target/<profile>`, default release),
//! `--bin-dir DIR` (the binaries elsewhere), `--runs N` (default 20), `--function NAME` (repeatable;
//! default webhook, transfer-worker, payout-worker, reconciler, fetch-worker), `--secrets-manager` (the deployed set-up: the
//! webhook secrets and the Stripe key are read from Secrets Manager at start), `--set NAME=VALUE`
//! (repeatable; one more variable for the function, to try a setting).

mod runtime_api;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use integration_tests::stripe_stub::{STUB_API_KEY, StripeStub};
use integration_tests::{
    DYNAMODB_ENDPOINT, NOW, account_updated, dynamodb_client, pipeline, signed, sqs_client,
    store_planned_steps,
};
use serde_json::{Value, json};
use shared::domain::account::AccountId;
use shared::domain::fetch::FetchRef;
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::store::dynamodb::{DynamoStore, create_table};
use shared::store::{AccountStore, CommitOutcome, EventOutcome};
use shared::stripe::signature::{WebhookSecret, sign};

use runtime_api::{Invocation, RuntimeApi, Seen};

/// The signing secret the measured webhook is given; local only.
const WEBHOOK_SECRET: &str = "whsec_connect_flow_cold_start_local_only";
/// How long one run may take before it counts as hung (debug binaries are slow to start).
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How often a run checks whether the function exited while waiting for it.
const EXIT_CHECK: Duration = Duration::from_millis(20);
/// Where the workspace's sample events are.
const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Webhook,
    TransferWorker,
    PayoutWorker,
    Reconciler,
    FetchWorker,
}

impl Function {
    const ALL: [Self; 5] =
        [Self::Webhook, Self::TransferWorker, Self::PayoutWorker, Self::Reconciler, Self::FetchWorker];

    fn binary(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::TransferWorker => "transfer-worker",
            Self::PayoutWorker => "payout-worker",
            Self::Reconciler => "reconciler",
            Self::FetchWorker => "fetch-worker",
        }
    }

    fn parse(name: &str) -> anyhow::Result<Self> {
        Self::ALL.into_iter().find(|function| function.binary() == name).with_context(|| {
            format!("unknown function {name:?}: expected webhook, transfer-worker, payout-worker, reconciler or fetch-worker")
        })
    }
}

struct Options {
    bin_dir: PathBuf,
    runs: usize,
    functions: Vec<Function>,
    secrets_manager: bool,
    extra_env: Vec<(String, String)>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut profile = "release".to_owned();
        let mut bin_dir = None;
        let mut runs = 20;
        let mut functions = Vec::new();
        let mut secrets_manager = false;
        let mut extra_env = Vec::new();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--profile" => profile = value()?,
                "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
                "--runs" => runs = value()?.parse().context("--runs takes a whole number")?,
                "--function" => functions.push(Function::parse(&value()?)?),
                "--secrets-manager" => secrets_manager = true,
                "--set" => {
                    let assignment = value()?;
                    let (name, value) = assignment.split_once('=').context("--set takes NAME=VALUE")?;
                    extra_env.push((name.to_owned(), value.to_owned()));
                }
                other => {
                    bail!("unknown argument {other:?}; see the comment at the top of cold-start/main.rs")
                }
            }
        }
        ensure!(runs > 0, "--runs must be at least 1");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let bin_dir = bin_dir.unwrap_or_else(|| target.join(profile));
        let bin_dir = bin_dir.canonicalize().with_context(|| format!("{} is missing", bin_dir.display()))?;
        if functions.is_empty() {
            functions = Function::ALL.to_vec();
        }
        Ok(Self { bin_dir, runs, functions, secrets_manager, extra_env })
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    init: Duration,
    cold: Duration,
    /// CPU time the process had used, all its threads together, when its first answer arrived:
    /// unlike the wall times, this hardly depends on what else the machine is running.
    cold_cpu: Duration,
    warm: Duration,
    peak_rss_kib: u64,
}

/// What one run saw.
struct Watched {
    init: Duration,
    cold: Duration,
    cold_cpu: Duration,
    warm: Duration,
    answers: Vec<Vec<u8>>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse(std::env::args().skip(1))?;
    let endpoint = std::env::var(DYNAMODB_ENDPOINT)
        .with_context(|| format!("{DYNAMODB_ENDPOINT} is not set: start moto server on loopback first"))?;
    ensure!(endpoint.starts_with("http://127.0.0.1:"), "moto server must be on 127.0.0.1, not {endpoint}");
    let moto_round_trip = moto_round_trip().await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "binaries: {}; {} runs each; secrets from {}; moto GetItem round trip from this process: median {:.2} ms; load average: {}",
        options.bin_dir.display(),
        options.runs,
        if options.secrets_manager { "Secrets Manager on moto" } else { "the environment" },
        ms(moto_round_trip),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    println!();
    println!(
        "| function | bootstrap | init median / p90 (ms) | cold start median / p90 (ms) | CPU to first answer median / p90 (ms) | warm median / p90 (ms) | peak RSS median / max (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for function in &options.functions {
        let binary = options.bin_dir.join(function.binary());
        let size = std::fs::metadata(&binary)
            .with_context(|| format!("{} is missing: build it first", binary.display()))?
            .len();
        let mut bench = Bench::set_up(*function, &endpoint, options.secrets_manager).await?;
        bench.env.extend(options.extra_env.iter().cloned());
        let mut samples = Vec::with_capacity(options.runs);
        for run in 0..options.runs {
            let sample = bench.run(&binary, run).await.with_context(|| format!("{function:?}, run {run}"))?;
            samples.push(sample);
        }
        let pick = |field: fn(&Sample) -> Duration| -> Vec<Duration> { samples.iter().map(field).collect() };
        let (init, cold, warm) = (pick(|s| s.init), pick(|s| s.cold), pick(|s| s.warm));
        let cold_cpu = pick(|s| s.cold_cpu);
        let mut rss: Vec<u64> = samples.iter().map(|sample| sample.peak_rss_kib).collect();
        rss.sort_unstable();
        let rss_median = (rss[(rss.len() - 1) / 2] + rss[rss.len() / 2]) as f64 / 2.0;
        println!(
            "| `{}` | {} B ({:.2} MiB) | {} | {} | {} | {} | {:.1} / {:.1} |",
            function.binary(),
            size,
            mib(size),
            median_p90(init),
            median_p90(cold),
            median_p90(cold_cpu),
            median_p90(warm),
            rss_median / 1024.0,
            rss[rss.len() - 1] as f64 / 1024.0,
        );
    }
    Ok(())
}

/// What one function's runs share: the table, the accounts, the stand-in Stripe, the environment.
struct Bench {
    function: Function,
    store: DynamoStore,
    stripe: Option<StripeStub>,
    env: Vec<(String, String)>,
    destination: AccountId,
    log: PathBuf,
}

impl Bench {
    async fn set_up(function: Function, endpoint: &str, secrets_manager: bool) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let table = format!("connect-flow-cold-start-{pid}-{}", function.binary());
        let client = dynamodb_client().await;
        create_table(&client, &table).await.context("moto creates the table")?;
        let store = DynamoStore::new(client, table.clone());
        let name = format!("connect-flow-{}", function.binary());
        let scratch = std::env::temp_dir();
        let mut env: Vec<(&'static str, String)> = vec![
            ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON".to_owned()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/22/[$LATEST]0123456789abcdef".to_owned()),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
            ("_HANDLER", "bootstrap".to_owned()),
            ("LANG", "en_US.UTF-8".to_owned()),
            ("TZ", ":UTC".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            // Every AWS client the function builds goes to moto on loopback.
            ("AWS_ENDPOINT_URL", endpoint.to_owned()),
            // No HOME, as on Lambda: the SDK finds no profile file to read.
            ("CONNECT_FLOW_TABLE", table),
        ];
        let destination =
            AccountId::parse(&format!("acct_coldstart{pid}")).context("a well-formed account id")?;
        let stripe = match function {
            Function::Reconciler => {
                let (transfers, payouts) = shared::store::sqs::create_queues(
                    &sqs_client().await,
                    &format!("cold-start-{pid}-reconcile"),
                )
                .await?;
                env.push((shared::store::sqs::TRANSFERS_QUEUE_URL, transfers));
                env.push((shared::store::sqs::PAYOUTS_QUEUE_URL, payouts));
                // Known to Stripe, so that listing its events (it has an open step) is answered;
                // it has no event, and the platform none, so every list is empty.
                let stub = StripeStub::start().await;
                stub.add_account(destination.as_str(), true, true);
                env.push(("STRIPE_API_BASE", stub.base_url().to_owned()));
                let (plain, arn) = (shared::stripe::client::API_KEY_VAR, shared::config::API_KEY_SECRET_ARN);
                env.push(secret_variable(secrets_manager, plain, arn, STUB_API_KEY).await?);
                Some(stub)
            }
            Function::Webhook => {
                let (transfers, payouts) =
                    shared::store::sqs::create_queues(&sqs_client().await, &format!("cold-start-{pid}"))
                        .await?;
                env.push((shared::store::sqs::TRANSFERS_QUEUE_URL, transfers));
                env.push((shared::store::sqs::PAYOUTS_QUEUE_URL, payouts));
                let (plain, arn) = (shared::config::WEBHOOK_SECRETS, shared::config::WEBHOOK_SECRETS_ARN);
                env.push(secret_variable(secrets_manager, plain, arn, WEBHOOK_SECRET).await?);
                None
            }
            Function::FetchWorker => {
                let stub = StripeStub::start().await;
                let active = json!({"status": "active", "status_details": []});
                stub.put_v2_account(
                    destination.as_str(),
                    json!({"id": destination.as_str(), "object": "v2.core.account", "closed": false,
                           "configuration": {"recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": active}}}},
                           "requirements": {"entries": []}}),
                );
                env.push(("STRIPE_API_BASE", stub.base_url().to_owned()));
                let (plain, arn) = (shared::stripe::client::API_KEY_VAR, shared::config::API_KEY_SECRET_ARN);
                env.push(secret_variable(secrets_manager, plain, arn, STUB_API_KEY).await?);
                Some(stub)
            }
            Function::TransferWorker | Function::PayoutWorker => {
                let stub = StripeStub::start().await;
                stub.add_account(destination.as_str(), true, true);
                env.push(("STRIPE_API_BASE", stub.base_url().to_owned()));
                let (plain, arn) = (shared::stripe::client::API_KEY_VAR, shared::config::API_KEY_SECRET_ARN);
                env.push(secret_variable(secrets_manager, plain, arn, STUB_API_KEY).await?);
                let (header, body) = signed(
                    &account_updated("evt_coldstartdest", destination.as_str(), NOW - 500, true, &[]),
                    NOW,
                );
                let reply = pipeline(store.clone()).handle(Some(&header), &body).await;
                ensure!(reply.body.contains("\"applied\""), "the destination is recorded: {}", reply.body);
                Some(stub)
            }
        };
        let log = scratch.join(format!("connect-flow-cold-start-{pid}-{}.log", function.binary()));
        let env = env.into_iter().map(|(name, value)| (name.to_owned(), value)).collect();
        Ok(Self { function, store, stripe, env, destination, log })
    }

    /// One cold start and one warm invocation of a fresh process.
    async fn run(&self, binary: &Path, run: usize) -> anyhow::Result<Sample> {
        let invocations = [self.invocation(run, 0).await?, self.invocation(run, 1).await?];
        let arn =
            format!("arn:aws:lambda:us-east-1:123456789012:function:connect-flow-{}", self.function.binary());
        let mut api = RuntimeApi::start(invocations.to_vec(), arn).await?;
        let objects_before = self.stripe_objects();
        let requests_before = self.stripe.as_ref().map_or(0, |stripe| stripe.received().len());
        let log = File::create(&self.log)?;
        let started = Instant::now();
        let mut child = Command::new(binary)
            .env_clear()
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .env("AWS_LAMBDA_RUNTIME_API", api.address())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{} starts", binary.display()))?;
        let watched = watch(&mut api, &mut child, started, &invocations).await;
        let peak_rss_kib = if watched.is_ok() { peak_rss_kib(child.id()) } else { Ok(0) };
        // Lambda freezes and later discards an idle environment; nothing is left to flush here.
        let _ = child.kill();
        let _ = child.wait();
        let Watched { init, cold, cold_cpu, warm, answers } =
            watched.map_err(|error| self.with_log(error))?;
        for answer in &answers {
            self.check(answer)?;
        }
        if self.function == Function::Reconciler {
            self.check_reconciler_lists(requests_before, &answers)?;
        }
        if self.function == Function::FetchWorker {
            for k in 0..2 {
                let event_id = format!("evt_coldthin{}r{run}k{k}", std::process::id());
                let record = self.store.load_event(&event_id).await?.context("the thin event's record")?;
                ensure!(record.outcome == EventOutcome::Applied, "{event_id} ended {:?}", record.outcome);
            }
        }
        let (made, expected) = (self.stripe_objects() - objects_before, self.expected_stripe_objects());
        ensure!(made == expected, "the stand-in Stripe got {made} new objects, not {expected}");
        Ok(Sample { init, cold, cold_cpu, warm, peak_rss_kib: peak_rss_kib? })
    }

    /// The `k`th invocation of run `run`: a new account's event for the webhook (then an update
    /// to it), a new queued step for the workers, the schedule's payload for the reconciler (with
    /// one stranded step in the table for both of a run's sweeps).
    async fn invocation(&self, run: usize, k: usize) -> anyhow::Result<Invocation> {
        let pid = std::process::id();
        let request_id = format!("c01dc01d-{pid:08x}-{run:04x}-{k:04x}-000000000000");
        let body = match self.function {
            Function::Webhook => {
                webhook_event(&format!("acct_cold{pid}r{run}"), &format!("evt_cold{pid}r{run}k{k}"), k)?
            }
            Function::TransferWorker | Function::PayoutWorker => {
                let step = self.queued_step(run, k).await?;
                sqs_event(self.function, &step, &request_id)?
            }
            Function::FetchWorker => {
                let fetch = self.recorded_thin_event(run, k).await?;
                let mut batch = sqs_event_of(self.function, &request_id)?;
                let record = &mut batch["Records"][0];
                record["body"] = json!(serde_json::to_string(&fetch)?);
                record["attributes"]["MessageGroupId"] = json!(fetch.group);
                record["attributes"]["MessageDeduplicationId"] = json!(fetch.event_id);
                batch
            }
            Function::Reconciler => {
                if k == 0 {
                    self.strand_one_step(run).await?;
                }
                let path = format!("{EVENTS}/scheduler/reconciler.json");
                serde_json::from_str(&std::fs::read_to_string(&path).context(path)?)?
            }
        };
        Ok(Invocation { request_id, body: serde_json::to_vec(&body)? })
    }

    /// Records invocation `k` of run `run`'s thin event through the webhook pipeline, its fetch
    /// step queued, and returns the fetch message the function is handed.
    async fn recorded_thin_event(&self, run: usize, k: usize) -> anyhow::Result<FetchRef> {
        let event_id = format!("evt_coldthin{}r{run}k{k}", std::process::id());
        let thin = json!({"id": event_id, "object": "v2.core.event", "type": "v2.core.account.updated",
            "livemode": false, "created": "2025-06-15T15:00:00.000Z", "context": null,
            "related_object": {"id": self.destination.as_str(), "type": "v2.core.account"}});
        let (header, body) = signed(&thin, NOW);
        let reply = pipeline(self.store.clone()).handle(Some(&header), &body).await;
        ensure!(reply.body.contains("\"fetch_queued\""), "the thin event is recorded: {}", reply.body);
        Ok(FetchRef { event_id, group: self.destination.as_str().to_owned() })
    }

    async fn queued_step(&self, run: usize, k: usize) -> anyhow::Result<Step> {
        let pid = std::process::id();
        let payment = format!("pi_cold{pid}r{run}k{k}");
        let (kind, step_id, payment_key) = match self.function {
            Function::PayoutWorker => {
                (StepKind::Payout, format!("po:{}:evt_cold{pid}r{run}k{k}:usd", self.destination), None)
            }
            _ => (StepKind::Transfer, format!("tr:{payment}:{}", self.destination), Some(payment)),
        };
        let step = Step {
            payment_key: payment_key.map(Into::into),
            ..Step::planned(kind, step_id, self.destination.clone(), 1_000, "usd".to_owned(), NOW)
        };
        if let Some(stripe) = &self.stripe {
            stripe.set_platform_balance("usd", 1_000_000_000);
            stripe.set_account_balance(self.destination.as_str(), "usd", 1_000_000_000);
        }
        let event_id = format!("evt_coldplan{pid}r{run}k{k}");
        let committed = store_planned_steps(&self.store, &event_id, std::slice::from_ref(&step)).await?;
        ensure!(committed == CommitOutcome::Committed, "the step is stored: {committed:?}");
        Ok(step)
    }

    /// Leaves run `run`'s transfer step queued in the table, long unchanged and never sent, as a
    /// failed send would, and settles the previous run's, so that each sweep finds exactly one.
    async fn strand_one_step(&self, run: usize) -> anyhow::Result<()> {
        if let Some(previous) = run.checked_sub(1) {
            let reference = self.stranded_step(previous).reference();
            let stored = self.store.load_step(&reference).await?.context("the previous run's step")?;
            let settled = Step {
                status: StepStatus::Succeeded,
                stripe_id: Some(format!("tr_sweep{}r{previous}", std::process::id())),
                version: stored.version + 1,
                ..stored
            };
            let committed = self.store.update_step(&settled, &[]).await?;
            ensure!(
                committed == CommitOutcome::Committed,
                "the previous run's step is settled: {committed:?}"
            );
        }
        let event_id = format!("evt_sweepplan{}r{run}", std::process::id());
        let step = self.stranded_step(run);
        let committed = store_planned_steps(&self.store, &event_id, std::slice::from_ref(&step)).await?;
        ensure!(committed == CommitOutcome::Committed, "the step is stored: {committed:?}");
        Ok(())
    }

    /// Run `run`'s stranded step, planned at [`NOW`]: long before the sweep's now, well past the
    /// queued steps' grace.
    fn stranded_step(&self, run: usize) -> Step {
        let payment = format!("pi_sweep{}r{run}", std::process::id());
        let step_id = format!("tr:{payment}:{}", self.destination);
        Step {
            payment_key: Some(payment.into()),
            ..Step::planned(
                StepKind::Transfer,
                step_id,
                self.destination.clone(),
                1_000,
                "usd".to_owned(),
                NOW,
            )
        }
    }

    fn stripe_objects(&self) -> usize {
        self.stripe.as_ref().map_or(0, |stripe| stripe.transfers().len() + stripe.payouts().len())
    }

    fn expected_stripe_objects(&self) -> usize {
        match self.function {
            Function::TransferWorker | Function::PayoutWorker => 2,
            Function::Webhook | Function::Reconciler | Function::FetchWorker => 0,
        }
    }

    /// Fails unless the answer is the one this function gives when everything worked.
    fn check(&self, answer: &[u8]) -> anyhow::Result<()> {
        let answer: Value = serde_json::from_slice(answer).context("the answer is JSON")?;
        match self.function {
            Function::Webhook => {
                let reply: Value =
                    answer["body"].as_str().map(serde_json::from_str).transpose()?.unwrap_or_default();
                ensure!(answer["statusCode"] == 200, "the webhook answered {answer}");
                match reply["outcome"].as_str() {
                    Some("applied") => {}
                    // The SDK retried a transaction that had committed (an attempt timed out on a
                    // loaded machine): recorded once all the same, but this run's times include it.
                    Some("duplicate") => {
                        eprintln!("note: a write was retried in this run; its times include the retry")
                    }
                    _ => bail!("the webhook answered {answer}"),
                }
            }
            Function::TransferWorker | Function::PayoutWorker | Function::FetchWorker => {
                ensure!(answer == json!({ "batchItemFailures": [] }), "the worker answered {answer}");
            }
            Function::Reconciler => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
                let started_at = answer["started_at"].as_i64().context("the report's started_at")?;
                ensure!(
                    (now - RUN_LIMIT.as_secs() as i64..=now).contains(&started_at),
                    "the reconciler answered {answer}"
                );
                let expected = [
                    ("events_listed", json!(0)),
                    ("events_replayed", json!(0)),
                    ("steps_resumed", json!(1)),
                    ("accounts_checked", json!(0)),
                    ("accounts_corrected", json!(0)),
                    // A run that finished leaves its start as the next run's cursor.
                    ("cursor", json!(started_at)),
                ];
                for (field, value) in expected {
                    ensure!(
                        answer[field] == value,
                        "the reconciler answered {answer}: {field} is not {value}"
                    );
                }
                ensure!(answer.get("error").is_none(), "the reconciler answered {answer}");
            }
        }
        Ok(())
    }

    /// Fails unless each of the reconciler's two runs listed the platform's events, API v2's, the
    /// accounts created since its cursor and the events of the one account with an open step,
    /// once each, and counted in its report exactly the requests the stand-in Stripe received.
    fn check_reconciler_lists(&self, requests_before: usize, answers: &[Vec<u8>]) -> anyhow::Result<()> {
        let stripe = self.stripe.as_ref().context("the reconciler's stand-in Stripe")?;
        let received = stripe.received().split_off(requests_before);
        let mut reported = 0;
        for answer in answers {
            let answer: Value = serde_json::from_slice(answer)?;
            reported += answer["stripe_requests"].as_u64().context("the report's stripe_requests")?;
        }
        ensure!(
            reported == received.len() as u64,
            "the reconciler reported {reported} Stripe requests; the stand-in received {}",
            received.len()
        );
        let destination = Some(self.destination.as_str().to_owned());
        for (path, account) in [
            ("/v1/events", None),
            ("/v2/core/events", None),
            ("/v1/accounts", None),
            ("/v1/events", destination),
        ] {
            let calls = received
                .iter()
                .filter(|request| {
                    request.method == "GET" && request.path == path && request.stripe_account == account
                })
                .count();
            ensure!(
                calls == answers.len(),
                "GET {path} (Stripe-Account {account:?}) came {calls} times in {} runs",
                answers.len()
            );
        }
        Ok(())
    }

    fn with_log(&self, error: anyhow::Error) -> anyhow::Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
        error.context(format!("the function's last log lines ({}):\n{}", self.log.display(), tail.join("\n")))
    }
}

/// Watches one run until the second answer: its times and its answers.
async fn watch(
    api: &mut RuntimeApi,
    child: &mut Child,
    started: Instant,
    invocations: &[Invocation; 2],
) -> anyhow::Result<Watched> {
    let mut first_poll = None;
    let mut cold_cpu = None;
    let mut handed = Vec::new();
    let mut answered = Vec::new();
    while answered.len() < invocations.len() {
        ensure!(started.elapsed() < RUN_LIMIT, "no answer within {RUN_LIMIT:?}");
        if let Some(status) = child.try_wait()? {
            bail!("the function exited with {status} before answering");
        }
        match api.next_seen(EXIT_CHECK).await {
            None => {}
            Some(Seen::Polled { at }) => {
                first_poll.get_or_insert(at);
            }
            Some(Seen::Handed { request_id, at }) => {
                let expected = &invocations[handed.len()].request_id;
                ensure!(&request_id == expected, "handed out {request_id}, expected {expected}");
                handed.push(at);
            }
            Some(Seen::Answered { request_id, body, at }) => {
                let expected = &invocations[answered.len()].request_id;
                ensure!(&request_id == expected, "an answer to {request_id}, expected {expected}");
                answered.push((at, body.to_vec()));
                if cold_cpu.is_none() {
                    cold_cpu = Some(cpu_time(child.id())?);
                }
            }
            Some(Seen::Failed { request_id, body }) => {
                bail!("invocation {request_id} failed: {}", String::from_utf8_lossy(&body))
            }
            Some(Seen::InitFailed { body }) => {
                bail!("the function failed to start: {}", String::from_utf8_lossy(&body))
            }
            Some(Seen::Unexpected { method, uri }) => bail!("the function called {method} {uri}"),
        }
    }
    let first_poll = first_poll.context("answers without a poll")?;
    ensure!(handed.len() == 2, "{} invocations handed out for 2 answers", handed.len());
    Ok(Watched {
        init: first_poll - started,
        cold: answered[0].0 - started,
        cold_cpu: cold_cpu.context("no CPU time read")?,
        warm: answered[1].0 - handed[1],
        answers: answered.into_iter().map(|(_, body)| body).collect(),
    })
}

/// The CPU time a running process has used so far, summed over its threads, from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on the CPU; threads that already ended are not counted).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let schedstat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let on_cpu: u64 = schedstat.split_whitespace().next().context("an empty schedstat")?.parse()?;
        total += on_cpu;
    }
    Ok(Duration::from_nanos(total))
}

/// The peak resident set of a running process so far, from `/proc/<pid>/status`.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line =
        status.lines().find(|line| line.starts_with("VmHWM:")).context("VmHWM in /proc/<pid>/status")?;
    let kib = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim();
    Ok(kib.parse()?)
}

/// The API Gateway sample `events/lambda/apigw-v2.account.updated.active.json`, its Stripe event
/// given a new id and account (the `k`th event of that account) and signed now with [`WEBHOOK_SECRET`].
fn webhook_event(account: &str, event_id: &str, k: usize) -> anyhow::Result<Value> {
    let path = format!("{EVENTS}/lambda/apigw-v2.account.updated.active.json");
    let mut envelope: Value = serde_json::from_str(&std::fs::read_to_string(&path).context(path)?)?;
    let mut event: Value = serde_json::from_str(envelope["body"].as_str().context("the sample has a body")?)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    event["id"] = json!(event_id);
    event["account"] = json!(account);
    event["data"]["object"]["id"] = json!(account);
    event["created"] = json!(now - 10 + k as i64);
    let body = serde_json::to_string_pretty(&event)?;
    let signature = sign(&WebhookSecret::new(WEBHOOK_SECRET), now, body.as_bytes());
    envelope["body"] = json!(body);
    envelope["isBase64Encoded"] = json!(false);
    envelope["headers"]["stripe-signature"] = json!(signature);
    Ok(envelope)
}

/// The worker's sample batch in `events/sqs/`, cut to its first record, carrying `step`.
fn sqs_event(function: Function, step: &Step, message_id: &str) -> anyhow::Result<Value> {
    let mut batch = sqs_event_of(function, message_id)?;
    let record = &mut batch["Records"][0];
    record["body"] = json!(serde_json::to_string(&step.reference())?);
    record["attributes"]["MessageGroupId"] = json!(step.destination.as_str());
    record["attributes"]["MessageDeduplicationId"] = json!(step.step_id);
    Ok(batch)
}

/// A batch of the first record of the function's sample in `events/sqs/`, with `message_id`.
fn sqs_event_of(function: Function, message_id: &str) -> anyhow::Result<Value> {
    let path = format!("{EVENTS}/sqs/{}.batch.json", function.binary());
    let batch: Value = serde_json::from_str(&std::fs::read_to_string(&path).context(path)?)?;
    let mut record = batch["Records"][0].clone();
    record["messageId"] = json!(message_id);
    Ok(json!({ "Records": [record] }))
}

/// The variable that gives the function `value`: `plain` itself, or `arn_variable` naming a secret
/// on moto that holds it.
async fn secret_variable(
    secrets_manager: bool,
    plain: &'static str,
    arn_variable: &'static str,
    value: &str,
) -> anyhow::Result<(&'static str, String)> {
    if !secrets_manager {
        return Ok((plain, value.to_owned()));
    }
    let endpoint = std::env::var(DYNAMODB_ENDPOINT)?;
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "cold-start",
        ))
        .endpoint_url(endpoint)
        .build();
    let created = aws_sdk_secretsmanager::Client::from_conf(config)
        .create_secret()
        .name(format!("connect-flow-cold-start-{}-{plain}", std::process::id()))
        .secret_string(value)
        .send()
        .await
        .context("moto creates the secret")?;
    Ok((arn_variable, created.arn().context("a created secret has an ARN")?.to_owned()))
}

/// The median round trip of a `GetItem` to moto, for scale: part of every figure below is moto's.
async fn moto_round_trip() -> anyhow::Result<Duration> {
    let client = dynamodb_client().await;
    let table = format!("connect-flow-cold-start-{}-probe", std::process::id());
    create_table(&client, &table).await?;
    let key = |value: &str| aws_sdk_dynamodb::types::AttributeValue::S(value.to_owned());
    let mut times = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        client.get_item().table_name(&table).key("pk", key("probe")).key("sk", key("probe")).send().await?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(median(&times))
}

/// `median / p90` in milliseconds (p90 by nearest rank).
fn median_p90(mut times: Vec<Duration>) -> String {
    times.sort_unstable();
    let p90 = times[(times.len() * 9).div_ceil(10) - 1];
    format!("{:.1} / {:.1}", ms(median(&times)), ms(p90))
}

/// The median of sorted times.
fn median(sorted: &[Duration]) -> Duration {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 { (sorted[middle - 1] + sorted[middle]) / 2 } else { sorted[middle] }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
