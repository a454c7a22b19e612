//! The workers' SQS side: one Lambda batch of step messages in, only the failed message ids out.
//!
//! Each record is parsed and run on its own, so one bad message never fails the batch. On a FIFO
//! queue a failed message also fails the later messages of its group in the same batch: SQS keeps
//! a group in order only if nothing after a redelivered message is acknowledged before it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use tracing::Instrument;

use crate::app::{Backend, Wire};
use crate::aws::WORKER_STEP_WORST_CASE;
use crate::clock::Clock;
use crate::config::API_KEY_SECRET_ARN;
use crate::domain::step::{StepMessageError, parse_step_message};
use crate::metrics::Metrics;
use crate::store::{AccountStore, StepQueue};
use crate::stripe::api::StripeApi;
use crate::stripe::client::{API_KEY_VAR, StripeClient, StripeClientConfig};
use crate::worker::{Disposition, StepWorker};

/// The record attribute that names a FIFO message's group.
const MESSAGE_GROUP_ID: &str = "MessageGroupId";
/// The record attribute that counts a message's receives.
const RECEIVE_COUNT: &str = "ApproximateReceiveCount";

pub use crate::app::StartError;

/// The Stripe client of a deployed function: the key from the secret named by
/// `STRIPE_API_KEY_SECRET_ARN` (deployed) or from `STRIPE_API_KEY` (local).
pub async fn stripe_client_from_env(aws: &aws_config::SdkConfig) -> Result<StripeClient, StartError> {
    let secrets_manager = aws_sdk_secretsmanager::Client::new(aws);
    let env = crate::secrets::resolve(&secrets_manager, API_KEY_VAR, API_KEY_SECRET_ARN).await?;
    Ok(StripeClient::new(StripeClientConfig::from_lookup(|name| env.lookup(name))?)?)
}

/// A queue-fed Lambda function's whole life once it is built (once per cold start, with the
/// bounded SDK settings): every batch the runtime hands over, each before its invocation's
/// deadline. A deadline already past when the batch arrives is not a real one, and is ignored
/// ([`invocation_deadline`]).
pub(crate) async fn serve_queue<R: QueueRunner + 'static>(runner: R) -> Result<(), lambda_runtime::Error> {
    let runner = Arc::new(runner);
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<SqsEvent>| {
        let runner = Arc::clone(&runner);
        async move {
            let deadline = invocation_deadline(event.context.deadline());
            Ok::<_, lambda_runtime::Error>(
                handle_sqs_batch_by(runner.as_ref(), event.payload, deadline).await,
            )
        }
    }))
    .await
}

/// The step worker on whichever store the environment named.
struct DeployedWorker(StripeClient);

impl Wire for DeployedWorker {
    type Output = Result<(), lambda_runtime::Error>;

    async fn wire<S: AccountStore + Clone>(self, store: S, _: Option<Arc<dyn StepQueue>>) -> Self::Output {
        serve_queue(StepWorker::new(store, self.0)).await
    }
}

/// The transfer and payout workers' whole life: logs, the worker read from the environment once
/// per cold start with the bounded SDK settings, then [`serve_queue`].
pub async fn run_worker_function() -> Result<(), lambda_runtime::Error> {
    crate::telemetry::init_lambda_logs();
    // Bounded retries and timeouts, so that one step always fits in the Lambda timeout.
    let aws = crate::aws::WORKER.load().await;
    let backend = Backend::from_env(&aws)?;
    backend.run(DeployedWorker(stripe_client_from_env(&aws).await?)).await
}

/// What runs the messages of one queue: a step worker, or the fetch worker.
pub trait QueueRunner: Send + Sync {
    /// Handles one message body, logging why in the current span; `true` when the message may
    /// be deleted.
    fn handle_body(&self, body: &str) -> impl Future<Output = bool> + Send;

    /// The metrics to flush after each batch.
    fn metrics(&self) -> &Metrics;

    /// The longest one message can take: none starts with less than this left before the
    /// invocation's deadline.
    fn worst_case(&self) -> std::time::Duration {
        WORKER_STEP_WORST_CASE
    }
}

/// The instant of an invocation's `deadline`, or `None` for one already past when the batch
/// arrives, which is not a real one: Lambda's always lies ahead, while `cargo lambda watch` sends a
/// relative 600000 that reads as 1970.
pub(crate) fn invocation_deadline(deadline: SystemTime) -> Option<Instant> {
    deadline.duration_since(SystemTime::now()).ok().map(|left| Instant::now() + left)
}

/// Runs every step message of `event` in order and reports those to be redelivered: a body that
/// is not a step, a step that must wait or could not run, and any later message of a failed group.
pub async fn handle_sqs_batch<R: QueueRunner>(runner: &R, event: SqsEvent) -> SqsBatchResponse {
    handle_sqs_batch_by(runner, event, None).await
}

/// [`handle_sqs_batch`], starting no step once less than a step's worst case
/// ([`WORKER_STEP_WORST_CASE`]) is left before `deadline`: those messages are handed back for
/// redelivery, so that a batch of slow steps never times the invocation out, which would count a
/// receive against every message in it, finished or not.
pub(crate) async fn handle_sqs_batch_by<R: QueueRunner>(
    runner: &R,
    event: SqsEvent,
    deadline: Option<Instant>,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let mut failed_groups: HashSet<String> = HashSet::new();
    for record in &event.records {
        // Lambda reads an empty identifier as "the whole batch failed": safe, since every step is
        // idempotent, so a record without an id is never silently acknowledged.
        let message_id = record.message_id.clone().unwrap_or_default();
        let group = record.attributes.get(MESSAGE_GROUP_ID);
        let span = tracing::info_span!(
            "queue_message",
            message_id = %message_id,
            step_id = tracing::field::Empty,
            event_id = tracing::field::Empty,
            kind = tracing::field::Empty,
            account_id = tracing::field::Empty,
            receives = record.attributes.get(RECEIVE_COUNT).map(String::as_str),
        );
        let blocked = if group.is_some_and(|group| failed_groups.contains(group)) {
            Some("an earlier message of its group failed; left for redelivery in order")
        } else if deadline
            .is_some_and(|deadline| deadline.saturating_duration_since(Instant::now()) < runner.worst_case())
        {
            Some("too little of the invocation's time left to handle a message; left for redelivery")
        } else {
            None
        };
        let handled = handle_record(runner, record, blocked).instrument(span).await;
        if !handled {
            response.add_failure(message_id);
            if let Some(group) = group {
                failed_groups.insert(group.clone());
            }
        }
    }
    runner.metrics().flush();
    response
}

/// Runs one record; `true` when the message may be deleted.
async fn handle_record<R: QueueRunner>(
    runner: &R,
    record: &SqsMessage,
    blocked: Option<&'static str>,
) -> bool {
    if let Some(why) = blocked {
        tracing::info!("{why}");
        return false;
    }
    let Some(body) = record.body.as_deref() else {
        tracing::warn!("message has no body; left for redelivery and, in the end, the dead-letter queue");
        return false;
    };
    runner.handle_body(body).await
}

impl<S: AccountStore, C: Clock, A: StripeApi> QueueRunner for StepWorker<S, C, A> {
    async fn handle_body(&self, body: &str) -> bool {
        let step = match parse_step_message(body) {
            Ok(step) => step,
            Err(StepMessageError::NotAStep(error)) => {
                // serde's message may quote the body: only where and how parsing failed is logged.
                tracing::warn!(
                    error_kind = ?error.classify(),
                    line = error.line(),
                    column = error.column(),
                    "message body is not a step; left for redelivery and, in the end, the dead-letter queue"
                );
                return false;
            }
            Err(error @ StepMessageError::MalformedField(_)) => {
                tracing::warn!(%error, "left for redelivery and, in the end, the dead-letter queue");
                return false;
            }
        };
        let span = tracing::Span::current();
        span.record("step_id", step.step_id.as_str());
        span.record("kind", step.kind.as_str());
        span.record("account_id", step.destination.as_str());
        match self.run(&step).await {
            Ok(Disposition::Done(status)) => {
                tracing::debug!(status = status.as_str(), "step done; message acknowledged");
                true
            }
            Ok(Disposition::Parked(reason)) => {
                tracing::info!(reason, "step waits in the store; message acknowledged");
                true
            }
            Ok(Disposition::RetryLater(reason)) => {
                tracing::info!(reason, "step will be retried");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "step not run; will be retried");
                false
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        StepWorker::metrics(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::clock::FixedClock;
    use crate::domain::step::{Step, StepStatus};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{EventOutcome, EventRecord, EventWrite};
    use crate::stripe::client::{ApiKey, StripeClient, StripeClientConfig};

    const NOW: i64 = 1_750_000_000;

    fn step(step_id: &str, destination: &str, status: StepStatus) -> Step {
        Step {
            status,
            stripe_id: (status == StepStatus::Succeeded).then(|| format!("tr_{destination}")),
            ..Step::queued_transfer(step_id, destination, NOW)
        }
    }

    /// A worker whose Stripe is a loopback port nothing listens on: any call would fail.
    async fn worker(steps: &[Step]) -> StepWorker<SqliteStore, FixedClock> {
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
        let mut config = StripeClientConfig::new(ApiKey::new("sk_test_unused"));
        config.api_base = "http://127.0.0.1:9".to_owned();
        StepWorker::with_clock(store, StripeClient::new(config).unwrap(), FixedClock(NOW))
    }

    fn record(message_id: &str, group: &str, body: Value) -> Value {
        let body = match body {
            Value::String(raw) => raw,
            step => step.to_string(),
        };
        json!({"messageId": message_id, "receiptHandle": format!("rh-{message_id}"), "body": body,
            "attributes": {"MessageGroupId": group, "MessageDeduplicationId": message_id,
                           "ApproximateReceiveCount": "1", "SequenceNumber": "1"},
            "messageAttributes": {}, "eventSource": "aws:sqs", "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:connect-flow-transfers.fifo"})
    }

    fn reference(step: &Step) -> Value {
        serde_json::to_value(step.reference()).unwrap()
    }

    fn failures(response: &SqsBatchResponse) -> Vec<&str> {
        response.batch_item_failures.iter().map(|failure| failure.item_identifier.as_str()).collect()
    }

    #[tokio::test]
    async fn a_failure_fails_the_rest_of_its_group_only() {
        let done_a = step("tr:pi_1:acct_A", "acct_A", StepStatus::Succeeded);
        let done_a2 = step("tr:pi_2:acct_A", "acct_A", StepStatus::Succeeded);
        let done_b = step("tr:pi_1:acct_B", "acct_B", StepStatus::Succeeded);
        let unknown_a = step("tr:pi_9:acct_A", "acct_A", StepStatus::Queued);
        let worker = worker(&[done_a.clone(), done_a2.clone(), done_b.clone()]).await;
        let event: SqsEvent = serde_json::from_value(json!({"Records": [
            record("m1", "acct_A", reference(&done_a)),
            record("m2", "acct_A", reference(&unknown_a)),
            record("m3", "acct_B", reference(&done_b)),
            record("m4", "acct_A", reference(&done_a2)),
        ]}))
        .unwrap();
        let response = handle_sqs_batch(&worker, event).await;
        assert_eq!(failures(&response), ["m2", "m4"]);
    }

    #[tokio::test]
    async fn bad_bodies_fail_alone_and_unanswered_lookups_are_retried() {
        let done = step("tr:pi_1:acct_A", "acct_A", StepStatus::Succeeded);
        // No stored account for acct_C: the worker asks Stripe, which does not answer, so the
        // message is retried and the step stays queued.
        let waiting = step("tr:pi_1:acct_C", "acct_C", StepStatus::Queued);
        let worker = worker(&[done.clone(), waiting.clone()]).await;
        let mut no_body = record("m4", "acct_D", Value::Null);
        no_body.as_object_mut().unwrap().remove("body");
        let event: SqsEvent = serde_json::from_value(json!({"Records": [
            record("m1", "acct_B", json!("not json at all")),
            record("m2", "acct_A", reference(&done)),
            record("m3", "acct_C", reference(&waiting)),
            no_body,
            record("m5", "acct_E", json!({"kind": "refund", "step_id": "x", "destination": "acct_E"})),
        ]}))
        .unwrap();
        let response = handle_sqs_batch(&worker, event).await;
        assert_eq!(failures(&response), ["m1", "m3", "m4", "m5"]);
        let stored = worker.store().load_step(&waiting.reference()).await.unwrap().unwrap();
        assert_eq!(stored.status, StepStatus::Queued);
    }

    #[tokio::test]
    async fn no_step_starts_once_too_little_time_is_left() {
        let queued = step("tr:pi_1:acct_A", "acct_A", StepStatus::Queued);
        let done = step("tr:pi_1:acct_B", "acct_B", StepStatus::Succeeded);
        let worker = worker(&[queued.clone(), done.clone()]).await;
        let batch = || -> SqsEvent {
            serde_json::from_value(json!({"Records": [
                record("m1", "acct_B", reference(&done)),
                record("m2", "acct_A", reference(&queued)),
            ]}))
            .unwrap()
        };
        let almost_out = Some(Instant::now() + WORKER_STEP_WORST_CASE / 2);
        assert_eq!(failures(&handle_sqs_batch_by(&worker, batch(), almost_out).await), ["m1", "m2"]);
        let untouched = worker.store().load_step(&queued.reference()).await.unwrap().unwrap();
        assert_eq!((untouched.status, untouched.version), (StepStatus::Queued, queued.version));
        let plenty = Some(Instant::now() + WORKER_STEP_WORST_CASE * 2);
        assert_eq!(failures(&handle_sqs_batch_by(&worker, batch(), plenty).await), ["m2"], "acct_A waits");
    }

    #[tokio::test]
    async fn a_failed_record_without_a_message_id_fails_the_whole_batch() {
        let worker = worker(&[]).await;
        let mut anonymous = record("m1", "acct_A", json!("{}"));
        anonymous.as_object_mut().unwrap().remove("messageId");
        let event: SqsEvent = serde_json::from_value(json!({"Records": [anonymous]})).unwrap();
        assert_eq!(failures(&handle_sqs_batch(&worker, event).await), [""]);
    }
}
