//! `connect-flow reconcile`: one reconciler run on the embedded store, against `STRIPE_API_BASE`
//! with `STRIPE_API_KEY`, then the thin events it found fetched and applied.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use shared::clock::{Clock, SystemClock};
use shared::config::WebhookSettings;
use shared::domain::payout::PayoutSettings;
use shared::fetch::FetchWorker;
use shared::reconcile::{ReconcileSettings, Reconciler};
use shared::store::StepQueue;
use shared::store::sqlite::SqliteStore;
use shared::stripe::client::{StripeClient, StripeClientConfig};
use shared::webhook::WebhookService;

use crate::progress::Bars;

/// `connect-flow reconcile`'s flags.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The SQLite file `serve` uses.
    #[arg(long, default_value = "connect-flow.db")]
    pub db: PathBuf,
    /// List events created at or after this Unix time, instead of from the stored cursor.
    #[arg(long, allow_negative_numbers = true)]
    pub since: Option<i64>,
}

/// Runs once and returns the report as one line of JSON; an error names the call Stripe refused.
pub async fn reconcile(args: &ReconcileArgs) -> anyhow::Result<String> {
    let lookup = |name: &str| std::env::var(name).ok();
    let settings = ReconcileSettings::from_lookup(lookup)?;
    let webhook_settings = WebhookSettings::without_signatures(lookup)?;
    let payouts = PayoutSettings::from_lookup(lookup)?;
    let stripe = StripeClient::new(StripeClientConfig::from_env()?)?;
    let store = SqliteStore::open(&args.db, SystemClock.now_unix())
        .with_context(|| format!("opening {}", args.db.display()))?;
    let queue: Arc<dyn StepQueue> = Arc::new(store.clone());
    let pipeline = || {
        WebhookService::new(store.clone(), &webhook_settings)
            .with_payout_settings(payouts.clone())
            .with_queue(Arc::clone(&queue))
    };
    let reconciler = Reconciler::new(pipeline(), stripe.clone(), Arc::clone(&queue), settings)
        .with_progress(Arc::new(Bars::on_stderr()));
    let report = reconciler.run(args.since, None).await?;
    // The thin events it replayed wait on the embedded fetch queue: `serve` would fetch them, and
    // so does this, so that one run leaves what full delivery would have.
    FetchWorker::new(pipeline(), stripe).drain_embedded().await?;
    Ok(serde_json::to_string(&report)?)
}
