//! Sends a mix's deliveries with N concurrent senders, phase after phase, bounded in count and
//! time, and records every answer and its latency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use shared::clock::{Clock, SystemClock};
use shared::stripe::signature::{WebhookSecret, sign};

use super::mix::{Mix, MixEvent};

/// How a delivery was answered: the HTTP status and, for a 200, the `outcome` it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status; 0 when no answer came (a transport error).
    pub status: u16,
    /// The answer's `outcome` (`applied`, `duplicate`, …), or the error's kind.
    pub outcome: Option<String>,
}

impl Answer {
    /// Reads a webhook reply's JSON body.
    pub fn from_reply(status: u16, body: &str) -> Self {
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let outcome = json.get("outcome").or_else(|| json.get("error")).and_then(|value| value.as_str());
        Self { status, outcome: outcome.map(str::to_owned) }
    }

    /// Whether Stripe would deliver again: no answer, or a 5xx.
    pub fn is_retried(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// Where deliveries go: the local server over HTTP, or a pipeline in-process.
pub trait Target: Send + Sync + 'static {
    /// Delivers one signed event; `sender` (0..concurrency) names the concurrent sender, so that
    /// a target can keep one client per sender.
    fn deliver(
        &self,
        sender: usize,
        event: &MixEvent,
        signature: String,
    ) -> impl Future<Output = Answer> + Send;
}

/// How far a run may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most deliveries to send.
    pub max_deliveries: usize,
    /// The longest the run may take; no delivery starts after it.
    pub max_duration: Duration,
    /// How many times a delivery answered 5xx (or not at all) is sent again at once, as Stripe
    /// retries it later.
    pub retries: usize,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// For each unique event of the mix, the answer to each of its deliveries that was sent,
    /// retries included, in the order each sender got them.
    pub answers: Vec<Vec<Answer>>,
    /// Deliveries that were still not answered 200 after their retries.
    pub failed: usize,
    /// Retries sent after a 5xx or no answer.
    pub retried: usize,
    /// The latency of every delivery, in the order they completed.
    pub latencies: Vec<Duration>,
    /// Wall-clock time from the first delivery to the last answer.
    pub elapsed: Duration,
    /// Whether the time limit stopped the run before every delivery was sent.
    pub timed_out: bool,
}

impl RunResult {
    /// Which unique events were sent at least once.
    pub fn sent(&self) -> Vec<bool> {
        self.answers.iter().map(|answers| !answers.is_empty()).collect()
    }

    /// Throughput and latency percentiles.
    pub fn stats(&self, concurrency: usize) -> Stats {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let millis = |quantile: f64| percentile(&sorted, quantile).as_secs_f64() * 1_000.0;
        let seconds = self.elapsed.as_secs_f64();
        Stats {
            concurrency,
            deliveries: sorted.len(),
            seconds,
            events_per_second: if seconds > 0.0 { sorted.len() as f64 / seconds } else { 0.0 },
            p50_ms: millis(0.50),
            p99_ms: millis(0.99),
            p999_ms: millis(0.999),
            max_ms: sorted.last().map_or(0.0, |max| max.as_secs_f64() * 1_000.0),
            errors: self.failed,
            retried: self.retried,
            timed_out: self.timed_out,
        }
    }
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Concurrent senders.
    pub concurrency: usize,
    /// Deliveries sent.
    pub deliveries: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Deliveries answered per second.
    pub events_per_second: f64,
    /// Median latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile latency, in milliseconds.
    pub p999_ms: f64,
    /// The slowest delivery, in milliseconds.
    pub max_ms: f64,
    /// Deliveries not answered 200, even after their retries.
    pub errors: usize,
    /// Retries after a 5xx or no answer (the latencies count each attempt).
    pub retried: usize,
    /// Whether the time limit cut the run short.
    pub timed_out: bool,
}

/// The nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `mix` to `target` with `concurrency` senders, each delivery signed with `secret` at the
/// moment it is sent. Each phase finishes before the next starts.
pub async fn run<T: Target>(
    mix: Arc<Mix>,
    target: Arc<T>,
    secret: &str,
    concurrency: usize,
    limits: Limits,
) -> RunResult {
    let started = Instant::now();
    let deadline = started + limits.max_duration;
    let budget = Arc::new(AtomicUsize::new(limits.max_deliveries));
    let mut answers = vec![Vec::new(); mix.events.len()];
    let mut latencies = Vec::with_capacity(mix.delivery_count().min(limits.max_deliveries));
    let (mut failed, mut retried, mut timed_out) = (0, 0, false);
    for phase in 0..mix.phases.len() {
        let next = Arc::new(AtomicUsize::new(0));
        let mut senders = tokio::task::JoinSet::new();
        for sender in 0..concurrency.max(1) {
            let (mix, target, next, budget) = (mix.clone(), target.clone(), next.clone(), budget.clone());
            let secret = WebhookSecret::new(secret);
            senders.spawn(async move {
                let deliveries = &mix.phases[phase];
                let mut done = Vec::new();
                let (mut failed, mut retried, mut timed_out) = (0, 0, false);
                loop {
                    let position = next.fetch_add(1, Ordering::Relaxed);
                    if position >= deliveries.len() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        timed_out = true;
                        break;
                    }
                    if budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
                        .is_err()
                    {
                        break;
                    }
                    let index = deliveries[position].event;
                    let event = &mix.events[index];
                    for attempt in 0..=limits.retries {
                        let signature = sign(&secret, SystemClock.now_unix(), &event.body);
                        let sent = Instant::now();
                        let answer = target.deliver(sender, event, signature).await;
                        let again = answer.is_retried();
                        let accepted = answer.status == 200;
                        done.push((index, answer, sent.elapsed()));
                        if !again || attempt == limits.retries {
                            failed += usize::from(!accepted);
                            break;
                        }
                        retried += 1;
                    }
                }
                (done, failed, retried, timed_out)
            });
        }
        while let Some(joined) = senders.join_next().await {
            // A sender task only panics if the target does; that is a bug to surface, not hide.
            let (done, sender_failed, sender_retried, sender_timed_out) =
                joined.expect("a load sender panicked");
            failed += sender_failed;
            retried += sender_retried;
            timed_out |= sender_timed_out;
            for (event, answer, latency) in done {
                answers[event].push(answer);
                latencies.push(latency);
            }
        }
        if timed_out {
            break;
        }
    }
    RunResult { answers, latencies, elapsed: started.elapsed(), failed, retried, timed_out }
}

/// The local server's webhook over loopback HTTP.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    client: reqwest::Client,
    webhook_url: String,
}

impl HttpTarget {
    /// Posts to `{base}/webhooks/stripe`, keeping up to `concurrency` connections open.
    pub fn new(base: &str, concurrency: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client, webhook_url: format!("{}/webhooks/stripe", base.trim_end_matches('/')) })
    }
}

impl Target for HttpTarget {
    async fn deliver(&self, _sender: usize, event: &MixEvent, signature: String) -> Answer {
        let response = self
            .client
            .post(&self.webhook_url)
            .header("Stripe-Signature", signature)
            .header("Content-Type", "application/json")
            .body(event.body.clone())
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(body) => Answer::from_reply(status, &body),
                    Err(_) => Answer { status: 0, outcome: Some("body_not_read".to_owned()) },
                }
            }
            Err(error) => Answer {
                status: 0,
                outcome: Some(if error.is_timeout() { "timeout" } else { "transport_error" }.to_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(500));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(990));
        assert_eq!(percentile(&sorted, 0.999), Duration::from_millis(999));
        assert_eq!(percentile(&sorted[..1], 0.999), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn answers_read_the_outcome_or_the_error() {
        assert_eq!(
            Answer::from_reply(200, r#"{"received":true,"outcome":"duplicate"}"#).outcome.as_deref(),
            Some("duplicate")
        );
        assert_eq!(
            Answer::from_reply(500, r#"{"error":"storage_unavailable"}"#).outcome.as_deref(),
            Some("storage_unavailable")
        );
        assert_eq!(Answer::from_reply(502, "<html>").outcome, None);
    }
}
