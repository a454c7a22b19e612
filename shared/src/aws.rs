//! The AWS SDK settings every Lambda function uses, and the time budget they add up to.
//!
//! The SDK's defaults retry three times with up to 20 s of backoff and set no per-attempt or
//! per-operation timeout, so a hung DynamoDB or SQS connection could hold a webhook past the
//! moment Stripe gives up on it. Here every bound is explicit: standard retries with few attempts
//! and short backoff, and connect, per-attempt and whole-operation timeouts. Settings given to the
//! loader take precedence over `AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE` and the profile file, so the
//! environment cannot loosen them.
//!
//! # The webhook's budget
//!
//! Stripe does not publish its webhook timeout: its support article on "Timed out" deliveries
//! (<https://support.stripe.com/questions/webhooks-how-to-investigate-and-fix-timed-out>) only
//! says the server "took too long" and asks for a prompt 2xx. Public reports put the figure
//! between 10 s and 30 s (most often 20 s or 30 s), so [`STRIPE_WEBHOOK_TIMEOUT_FLOOR`] takes the
//! low end, 10 s. A delivery Stripe gave up on is retried, so running over is never unsafe here
//! (the write is atomic and deduplicated); it only wastes work and delays the event.
//!
//! A webhook makes a handful of calls in sequence (account or step reads, one transactional
//! write, one `SendMessageBatch` per queue), and a payment with many splits makes one read per
//! destination, so the sum of the calls' bounds is not bounded by a constant. Instead each call is
//! bounded by [`SdkBounds::operation_timeout`], which fails a persistent fault quickly, and the
//! whole answer by [`WEBHOOK_DEADLINE`], which [`crate::webhook::WebhookService::handle_within`] enforces. Worst case, warm:
//! [`WEBHOOK_DEADLINE`] = 5 s. Cold: the Secrets Manager read of the signing secrets (one
//! operation, 2.4 s at most) plus an allowance for the runtime's start, plus the deadline: 8.4 s.
//! Both are under the 10 s floor and the webhook Lambda's 10 s timeout (infra/template.yaml).
//!
//! # The workers' budget
//!
//! A step is at most four DynamoDB calls (load the step, check the destination or the transfer,
//! mark it in flight, record the result) and one Stripe call, which the Stripe client bounds at
//! 30 s ([`crate::stripe::client::DEFAULT_TIMEOUT`]); [`WORKER_STEP_WORST_CASE`] is under the
//! workers' 60 s Lambda timeout, so every invocation can finish the first step it starts.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};

/// The conservative floor taken for Stripe's (unpublished) webhook timeout; see the module docs.
#[cfg(test)]
pub(crate) const STRIPE_WEBHOOK_TIMEOUT_FLOOR: Duration = Duration::from_secs(10);
/// The webhook Lambda's `Timeout` in infra/template.yaml.
pub const WEBHOOK_LAMBDA_TIMEOUT: Duration = Duration::from_secs(10);
/// The transfer and payout workers' `Timeout` in infra/template.yaml.
pub const WORKER_LAMBDA_TIMEOUT: Duration = Duration::from_secs(60);
/// What a cold start adds before the first request is handled, besides reading the secret: the
/// runtime's start and the clients' construction, which take tens of milliseconds in practice.
#[cfg(test)]
pub(crate) const COLD_START_ALLOWANCE: Duration = Duration::from_secs(1);
/// The longest a webhook delivery is worked on before it is answered 500 (Stripe then retries).
pub const WEBHOOK_DEADLINE: Duration = Duration::from_secs(5);

/// DynamoDB calls in one worker step (see the module docs).
pub(crate) const WORKER_DYNAMODB_CALLS_PER_STEP: u32 = 4;
/// The longest one worker step takes when nothing conflicts.
pub(crate) const WORKER_STEP_WORST_CASE: Duration = WORKER
    .operation_timeout
    .saturating_mul(WORKER_DYNAMODB_CALLS_PER_STEP)
    .saturating_add(crate::stripe::client::DEFAULT_TIMEOUT);

/// Retry and timeout bounds for one kind of function's AWS clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdkBounds {
    /// Attempts per operation, the first included.
    pub max_attempts: u32,
    /// The backoff before the first retry, before jitter; it doubles for each later retry.
    pub initial_backoff: Duration,
    /// The longest backoff before any one retry.
    pub max_backoff: Duration,
    /// The longest wait for a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// The longest one attempt takes, connection included, until its response is read.
    pub attempt_timeout: Duration,
    /// The longest one operation takes, all attempts and backoffs included.
    pub operation_timeout: Duration,
}

/// The webhook's bounds: three quick attempts, because Stripe's own retry is the outer loop.
/// DynamoDB and SQS answer in milliseconds; 750 ms is a generous attempt, and an account event's
/// two calls fit inside the deadline even at their worst.
pub const WEBHOOK: SdkBounds = SdkBounds {
    max_attempts: 3,
    initial_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(200),
    connect_timeout: Duration::from_millis(400),
    attempt_timeout: Duration::from_millis(750),
    operation_timeout: Duration::from_millis(2_500),
};

/// The workers' bounds: more patient attempts, since a failed step waits for the queue's
/// visibility timeout, but still within the Lambda timeout per step.
pub const WORKER: SdkBounds = SdkBounds {
    max_attempts: 3,
    initial_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(1),
    connect_timeout: Duration::from_secs(1),
    attempt_timeout: Duration::from_millis(1_500),
    operation_timeout: Duration::from_secs(5),
};

impl SdkBounds {
    /// Standard-mode retries with these attempts and backoffs.
    pub fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
    }

    /// Every timeout the SDK has, set; the read timeout is the attempt's.
    pub fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.attempt_timeout)
            .operation_attempt_timeout(self.attempt_timeout)
            .operation_timeout(self.operation_timeout)
            .build()
    }

    /// The longest backoff before the `retry`th retry (1-based): the SDK's exponential backoff,
    /// at its largest jitter.
    pub(crate) fn backoff_before_retry(&self, retry: u32) -> Duration {
        let doubling = 2u32.checked_pow(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(doubling).min(self.max_backoff)
    }

    /// The longest every attempt and backoff of one operation take, before the operation
    /// timeout cuts them short.
    pub(crate) fn attempts_worst_case(&self) -> Duration {
        let backoffs =
            (1..self.max_attempts).fold(Duration::ZERO, |sum, retry| sum + self.backoff_before_retry(retry));
        self.attempt_timeout.saturating_mul(self.max_attempts) + backoffs
    }

    /// The longest one operation takes.
    pub fn operation_worst_case(&self) -> Duration {
        self.attempts_worst_case().min(self.operation_timeout)
    }

    /// Applies these bounds to a loader, so that tests can point the same settings elsewhere.
    pub fn apply(&self, loader: ConfigLoader) -> ConfigLoader {
        loader.retry_config(self.retry_config()).timeout_config(self.timeout_config())
    }

    /// The shared SDK configuration with these bounds, everything else from the environment.
    pub async fn load(&self) -> SdkConfig {
        self.apply(aws_config::defaults(BehaviorVersion::latest())).load().await
    }
}

/// The webhook's worst-case answer time on a cold start: the secret's read, the runtime's start,
/// and the deadline.
#[cfg(test)]
pub(crate) fn webhook_cold_worst_case() -> Duration {
    WEBHOOK.operation_worst_case() + COLD_START_ALLOWANCE + WEBHOOK_DEADLINE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(WEBHOOK.backoff_before_retry(1), Duration::from_millis(50));
        assert_eq!(WEBHOOK.backoff_before_retry(2), Duration::from_millis(100));
        assert_eq!(WEBHOOK.backoff_before_retry(3), Duration::from_millis(200));
        assert_eq!(WEBHOOK.backoff_before_retry(9), Duration::from_millis(200));
        assert_eq!(WEBHOOK.backoff_before_retry(u32::MAX), Duration::from_millis(200));
    }

    #[test]
    fn every_attempt_fits_inside_the_operation_timeout() {
        // Otherwise the operation timeout, not the attempt count, would end a persistent fault,
        // and the last attempt would be cut mid-request.
        for bounds in [WEBHOOK, WORKER] {
            assert!(bounds.attempts_worst_case() <= bounds.operation_timeout, "{bounds:?}");
            assert!(bounds.connect_timeout < bounds.attempt_timeout, "{bounds:?}");
            assert!((2..=3).contains(&bounds.max_attempts), "{bounds:?}");
        }
        assert_eq!(WEBHOOK.attempts_worst_case(), Duration::from_millis(2_400));
        assert_eq!(WORKER.attempts_worst_case(), Duration::from_millis(4_800));
    }

    #[test]
    fn the_webhook_answers_well_inside_stripes_timeout_and_its_lambda_timeout() {
        let warm = WEBHOOK_DEADLINE;
        let cold = webhook_cold_worst_case();
        assert_eq!(cold, Duration::from_millis(8_400));
        assert!(warm * 2 <= STRIPE_WEBHOOK_TIMEOUT_FLOOR, "warm {warm:?}");
        assert!(cold < STRIPE_WEBHOOK_TIMEOUT_FLOOR, "cold {cold:?}");
        assert!(cold < WEBHOOK_LAMBDA_TIMEOUT, "cold {cold:?}");
        // An account event (one read, one write) fits whole, even with every call at its bound.
        assert!(WEBHOOK.operation_worst_case() * 2 <= WEBHOOK_DEADLINE);
    }

    #[test]
    fn a_worker_step_fits_inside_the_worker_lambda_timeout() {
        assert_eq!(WORKER_STEP_WORST_CASE, Duration::from_secs(50));
        assert!(WORKER_STEP_WORST_CASE < WORKER_LAMBDA_TIMEOUT);
        // The Secrets Manager read happens in Lambda's 10 s init phase.
        assert!(WORKER.operation_worst_case() < Duration::from_secs(10));
    }

    #[test]
    fn the_configs_carry_every_bound() {
        let retry = WEBHOOK.retry_config();
        assert_eq!(retry.mode(), aws_config::retry::RetryMode::Standard);
        assert_eq!(
            (retry.max_attempts(), retry.initial_backoff(), retry.max_backoff()),
            (3, Duration::from_millis(50), Duration::from_millis(200))
        );
        let timeouts = WEBHOOK.timeout_config();
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_millis(400)));
        assert_eq!(timeouts.read_timeout(), Some(Duration::from_millis(750)));
        assert_eq!(timeouts.operation_attempt_timeout(), Some(Duration::from_millis(750)));
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_millis(2_500)));
    }
}
