//! `connect-flow bench`: load on a running `connect-flow serve` over loopback, at each
//! concurrency level in turn, then the exactly-once check of what it stored.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use shared::clock::{Clock, SystemClock};
use shared::config::WEBHOOK_SECRETS;
use shared::store::sqlite::SqliteStore;

use crate::load::check::{Expected, check, observe_records};
use crate::load::mix::Mix;
use crate::load::mix::MixEvent;
use crate::load::observe_http;
use crate::load::run::{Answer, HttpTarget, Limits, Stats, Target, run};
use crate::progress::Bars;
use shared::reconcile::Progress;

/// How many violations are printed; the count is always given in full.
const SHOWN_VIOLATIONS: usize = 20;

/// `connect-flow bench`'s flags.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The server's base URL; only loopback addresses are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    pub url: String,
    /// The signing secret; defaults to the first of STRIPE_WEBHOOK_SECRETS.
    #[arg(long, env = WEBHOOK_SECRETS, hide_env_values = true)]
    pub secret: String,
    /// Concurrent senders; each level is a run of its own, with ids of its own.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub concurrency: Vec<usize>,
    /// The most deliveries per level.
    #[arg(long, default_value_t = 2_000)]
    pub events: usize,
    /// The mix's seed: the same seed sends the same mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The longest a level may run, in seconds; no delivery starts after it.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// Letters and digits put into every id; defaults to one from the clock, so that a rerun
    /// against the same database is still checkable.
    #[arg(long)]
    pub tag: Option<String>,
    /// The server's SQLite file: also check every event's record, which the read API does not serve.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// How many times a delivery answered 5xx is sent again, as Stripe would retry it.
    #[arg(long, default_value_t = 3)]
    pub retries: usize,
    /// Print one JSON object per level instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One level's report.
#[derive(Debug, Serialize)]
struct LevelReport {
    tag: String,
    #[serde(flatten)]
    stats: Stats,
    unique_events: usize,
    records_checked: bool,
    violations: usize,
    first_violations: Vec<String>,
}

/// Runs every level; returns whether every delivery was answered 200 and the check found nothing.
pub async fn bench(args: BenchArgs, secret: &str) -> anyhow::Result<bool> {
    ensure_loopback(&args.url)?;
    let tag = match &args.tag {
        Some(tag) if !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric()) => tag.clone(),
        Some(tag) => anyhow::bail!("--tag {tag:?}: use ASCII letters and digits only"),
        None => format!("L{}", SystemClock.now_unix()),
    };
    let reader = reqwest::Client::new();
    if !args.json {
        println!(
            "concurrency  deliveries  seconds  events/s  p50 ms  p99 ms  p99.9 ms  max ms  errors  retried  exactly-once"
        );
    }
    let mut all_good = true;
    for &concurrency in &args.concurrency {
        let level_tag = format!("{tag}c{concurrency}");
        // A day back, so that no event looks newer than the clock.
        let mix =
            Arc::new(Mix::generate(args.seed, &level_tag, args.events, SystemClock.now_unix() - 86_400));
        let progress = Arc::new(Bars::on_stderr());
        progress.phase(
            &format!("deliveries at concurrency {concurrency}"),
            Some(mix.delivery_count().min(args.events) as u64),
        );
        let target =
            Arc::new(Counted { inner: HttpTarget::new(&args.url, concurrency)?, progress: progress.clone() });
        let limits = Limits {
            max_deliveries: args.events,
            max_duration: Duration::from_secs(args.max_seconds),
            retries: args.retries,
        };
        let result = run(mix.clone(), target, secret, concurrency, limits).await;
        progress.finish();
        let expected = Expected::of(&mix, &result.sent());
        let mut observed = observe_http(&reader, &args.url, &expected).await?;
        if let Some(db) = &args.db {
            let store = SqliteStore::open(db, SystemClock.now_unix())
                .with_context(|| format!("opening {}", db.display()))?;
            observed.records = Some(observe_records(&store, &mix, &expected).await?);
        }
        let violations = check(&mix, &expected, &result.answers, &observed);
        let stats = result.stats(concurrency);
        all_good &= violations.is_empty() && stats.errors == 0;
        let report = LevelReport {
            tag: level_tag,
            unique_events: expected.events.len(),
            records_checked: observed.records.is_some(),
            violations: violations.len(),
            first_violations: violations.iter().take(SHOWN_VIOLATIONS).cloned().collect(),
            stats,
        };
        print_report(&report, args.json)?;
    }
    Ok(all_good)
}

/// A target that counts each answered delivery on a progress bar.
struct Counted<T> {
    inner: T,
    progress: Arc<Bars>,
}

impl<T: Target> Target for Counted<T> {
    async fn deliver(&self, sender: usize, event: &MixEvent, signature: String) -> Answer {
        let answer = self.inner.deliver(sender, event, signature).await;
        self.progress.advance(1);
        answer
    }
}

fn print_report(report: &LevelReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let stats = &report.stats;
    let verdict = match (report.violations, report.records_checked) {
        (0, true) => "ok".to_owned(),
        (0, false) => "ok (records not read: pass --db)".to_owned(),
        (count, _) => format!("{count} VIOLATIONS"),
    };
    println!(
        "{:>11}  {:>10}  {:>7.2}  {:>8.0}  {:>6.2}  {:>6.2}  {:>8.2}  {:>6.2}  {:>6}  {:>7}  {verdict}{}",
        stats.concurrency,
        stats.deliveries,
        stats.seconds,
        stats.events_per_second,
        stats.p50_ms,
        stats.p99_ms,
        stats.p999_ms,
        stats.max_ms,
        stats.errors,
        stats.retried,
        if stats.timed_out { " (time limit reached)" } else { "" },
    );
    for violation in &report.first_violations {
        eprintln!("  {violation}");
    }
    Ok(())
}

/// Load goes to this machine only.
fn ensure_loopback(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url}"))?;
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "--url {url}: bench only loads a server on this machine (127.0.0.1, ::1, localhost)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_loaded() {
        for url in ["http://127.0.0.1:8787", "http://localhost:1", "http://[::1]:2", "http://127.0.0.2:3"] {
            assert!(ensure_loopback(url).is_ok(), "{url}");
        }
        for url in ["http://10.0.0.1:8787", "http://example.com", "http://192.168.1.1", "not a url"] {
            assert!(ensure_loopback(url).is_err(), "{url}");
        }
    }
}
