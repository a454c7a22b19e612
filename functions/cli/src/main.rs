//! `connect-flow`: run Connect Flow locally, and check or replay Stripe webhooks by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use connect_flow::envelope::{EnvelopeKind, lambda_envelope};
use connect_flow::{bench, commands, reconcile, server};
use shared::clock::{Clock, SystemClock};
use shared::config::{WEBHOOK_SECRETS, WebhookSettings};
use shared::fetch::FetchWorker;
use shared::metrics::Metrics;
use shared::platform::{PlatformApi, PlatformSettings};
use shared::store::StepQueue;
use shared::store::sqlite::SqliteStore;
use shared::stripe::client::{API_KEY_VAR, StripeClient, StripeClientConfig};
use shared::stripe::signature::{DEFAULT_TOLERANCE_SECS, WebhookSecret, sign};
use shared::webhook::WebhookService;
use shared::worker::StepWorker;

#[derive(Parser)]
#[command(name = "connect-flow", version, about = "Connect Flow: Stripe Connect webhooks, kept true.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook and the account API on the embedded store.
    Serve {
        /// The SQLite file.
        #[arg(long, default_value = "connect-flow.db")]
        db: PathBuf,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        addr: String,
    },
    /// Sign sample event files with the current time and POST them.
    Send {
        /// Stripe event JSON files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to post them.
        #[arg(long, default_value = "http://127.0.0.1:8787/webhooks/stripe")]
        url: String,
        /// The signing secret; defaults to the first of STRIPE_WEBHOOK_SECRETS.
        #[arg(long, env = WEBHOOK_SECRETS, hide_env_values = true)]
        secret: String,
    },
    /// Sign an event file: print its Stripe-Signature header, or a whole Lambda request envelope.
    Sign {
        /// A Stripe event JSON file.
        file: PathBuf,
        /// The signing secret; defaults to the first of STRIPE_WEBHOOK_SECRETS.
        #[arg(long, env = WEBHOOK_SECRETS, hide_env_values = true)]
        secret: String,
        /// The signature's Unix time; defaults to now.
        #[arg(long)]
        timestamp: Option<i64>,
        /// Print a Lambda request envelope of this kind (apigw-v2 or function-url) instead of the header.
        #[arg(long, value_parser = parse_envelope_kind)]
        envelope: Option<EnvelopeKind>,
        /// Base64-encode the body inside the envelope, as API Gateway does for binary media types.
        #[arg(long, requires = "envelope")]
        base64: bool,
    },
    /// Load a running `serve` over loopback with a seeded mix of signed events, then check
    /// that each was applied exactly once.
    Bench(bench::BenchArgs),
    /// Check the Stripe set-up (webhook endpoints, event destinations, enabled events, API
    /// version) with STRIPE_API_KEY; print one line per finding, exit 1 unless all are ok.
    Doctor(connect_flow::doctor::DoctorArgs),
    /// Replay the events deliveries missed, correct accounts that drifted from Stripe, and sweep
    /// the steps nothing else would move; prints one JSON report.
    Reconcile(reconcile::ReconcileArgs),
    /// Check a Stripe-Signature header for the body on standard input.
    Verify {
        /// A signing secret; repeat for several.
        #[arg(long = "secret", required = true)]
        secrets: Vec<String>,
        /// Maximum age in seconds; 0 turns the age check off.
        #[arg(long, default_value_t = DEFAULT_TOLERANCE_SECS)]
        tolerance: u64,
        /// The Unix time to check against, instead of the clock.
        #[arg(long, allow_negative_numbers = true)]
        now: Option<i64>,
        /// The Stripe-Signature header's value.
        #[arg(long, allow_hyphen_values = true)]
        header: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("connect-flow: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Serve { db, addr } => {
            shared::telemetry::init_text_logs();
            let settings = WebhookSettings::from_env()?;
            let store = SqliteStore::open(&db, SystemClock.now_unix())
                .with_context(|| format!("opening {}", db.display()))?;
            let listener =
                tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("listening on {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, db = %db.display(), "serving POST /webhooks/stripe and the platform API");
            let (waking_queue, wake) = server::WakingQueue::new(store.clone());
            let queue: Arc<dyn StepQueue> = waking_queue;
            let stripe = match std::env::var(API_KEY_VAR) {
                Ok(_) => {
                    let stripe = StripeClient::new(StripeClientConfig::from_env()?)?;
                    let worker = StepWorker::new(store.clone(), stripe.clone());
                    let applier =
                        WebhookService::new(store.clone(), &settings).with_queue(Arc::clone(&queue));
                    let fetcher = FetchWorker::new(applier, stripe.clone()).with_metrics(Metrics::from_env());
                    tokio::spawn(server::run_workers(worker, fetcher, wake, async {
                        let _ = tokio::signal::ctrl_c().await;
                    }));
                    Some(stripe)
                }
                Err(_) => {
                    tracing::warn!("{API_KEY_VAR} is not set: planned steps stay queued until it is");
                    None
                }
            };
            let platform_settings = PlatformSettings::from_lookup(|name| std::env::var(name).ok());
            let accounts_api = PlatformSettings::accounts_api_from_lookup(|name| std::env::var(name).ok())?;
            // `PlatformApi::new` reads the tax thresholds itself; a bad one stops the start here.
            shared::domain::ledger::TaxThresholds::from_env()?;
            // One count for the webhook to add to and `healthz?deep=1` to read.
            let signature_failures = shared::doctor::SignatureFailureCount::default();
            let platform = PlatformApi::new(store.clone(), stripe, platform_settings)
                .with_accounts_api(accounts_api)
                .with_queue(Arc::clone(&queue))
                .with_signature_failure_count(signature_failures.clone());
            let service = Arc::new(
                WebhookService::new(store, &settings)
                    .with_queue(queue)
                    .with_signature_failure_count(signature_failures),
            );
            let app = server::App::new(service, platform, std::env::var(shared::platform::API_TOKEN).ok());
            server::serve_app(listener, app, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(true)
        }
        Command::Doctor(args) => connect_flow::doctor::doctor(&args, &mut std::io::stdout().lock()).await,
        Command::Send { files, url, secret } => commands::send(&files, &url, first_secret(&secret)?).await,
        Command::Bench(args) => {
            let secret = first_secret(&args.secret)?.to_owned();
            bench::bench(args, &secret).await
        }
        Command::Reconcile(args) => {
            shared::telemetry::init_text_logs();
            emit(&reconcile::reconcile(&args).await?);
            Ok(true)
        }
        Command::Sign { file, secret, timestamp, envelope, base64 } => {
            let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let secret = first_secret(&secret)?;
            let header =
                sign(&WebhookSecret::new(secret), timestamp.unwrap_or_else(|| SystemClock.now_unix()), &body);
            match envelope {
                None => emit(&header),
                Some(kind) => emit(&format!("{:#}", lambda_envelope(kind, &body, &header, base64))),
            }
            Ok(true)
        }
        Command::Verify { secrets, tolerance, now, header } => {
            let body = commands::read_stdin()?;
            let verdict = commands::verify(&secrets, tolerance, now, &header, &body);
            emit(&verdict.line);
            Ok(verdict.valid)
        }
    }
}

/// The first of a comma-separated list of secrets, as STRIPE_WEBHOOK_SECRETS holds them.
fn first_secret(secrets: &str) -> anyhow::Result<&str> {
    secrets
        .split(',')
        .map(str::trim)
        .find(|secret| !secret.is_empty())
        .with_context(|| format!("pass --secret or set {WEBHOOK_SECRETS}"))
}

fn parse_envelope_kind(name: &str) -> Result<EnvelopeKind, String> {
    EnvelopeKind::parse(name).ok_or_else(|| format!("{name}: expected apigw-v2 or function-url"))
}

/// Prints one line; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn emit(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
