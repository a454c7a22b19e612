//! `connect-flow`: run Connect Flow locally, and check or replay Stripe webhooks by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use connect_flow::{commands, server};
use shared::config::{WEBHOOK_SECRETS, WebhookSettings};
use shared::store::sqlite::SqliteStore;
use shared::stripe::signature::{Clock, DEFAULT_TOLERANCE_SECS, SystemClock};
use shared::webhook::WebhookService;

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
            tracing::info!(addr = %listener.local_addr()?, db = %db.display(), "serving POST /webhooks/stripe");
            let service = Arc::new(WebhookService::new(store, &settings));
            server::serve(listener, service, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(true)
        }
        Command::Send { files, url, secret } => {
            let first_secret = secret.split(',').map(str::trim).find(|s| !s.is_empty());
            let secret = first_secret.with_context(|| format!("pass --secret or set {WEBHOOK_SECRETS}"))?;
            commands::send(&files, &url, secret).await
        }
        Command::Verify { secrets, tolerance, now, header } => {
            let body = commands::read_stdin()?;
            let verdict = commands::verify(&secrets, tolerance, now, &header, &body);
            println!("{}", verdict.line);
            Ok(verdict.valid)
        }
    }
}
