//! Each worker's sample batch in `events/sqs/`, parsed by `aws_lambda_events` as Lambda would, and
//! run through the shared batch handler.

use std::path::Path;

use aws_lambda_events::sqs::SqsEvent;
use integration_tests::store_planned_steps;
use shared::clock::FixedClock;
use shared::domain::step::{Step, StepKind, StepRef, StepStatus};
use shared::sqs_worker::handle_sqs_batch;
use shared::store::sqlite::SqliteStore;
use shared::stripe::client::{ApiKey, StripeClient, StripeClientConfig};
use shared::worker::StepWorker;

/// Each worker's sample batch, the queue it comes from, and the step kinds that queue carries.
const SAMPLES: [(&str, &str, &[StepKind]); 2] = [
    ("transfer-worker.batch.json", "connect-flow-transfers.fifo", &[StepKind::Transfer, StepKind::Reversal]),
    ("payout-worker.batch.json", "connect-flow-payouts.fifo", &[StepKind::Payout]),
];
const NOW: i64 = 1_732_003_600;

fn batch(file: &str) -> SqsEvent {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/sqs").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn step_ref(body: Option<&str>) -> Option<StepRef> {
    serde_json::from_str(body?).ok()
}

/// The step a reference names, already succeeded, so that the worker must not call Stripe.
fn finished(step: &StepRef) -> Step {
    Step {
        step_id: step.step_id.clone(),
        kind: step.kind,
        destination: step.destination.clone(),
        amount: 1_000,
        currency: "usd".to_owned(),
        source_charge: None,
        transfer_group: None,
        payment_key: step.payment_key.clone(),
        reverses_step: None,
        status: StepStatus::Succeeded,
        reason: None,
        stripe_id: Some(format!("obj_{}", step.destination)),
        attempt: 0,
        created_at: NOW,
        updated_at: NOW,
        version: 1,
        livemode: Some(false),
        netted: 0,
        sent_at: Some(NOW),
        unresolved: None,
        requested: None,
        cause: None,
        gives_back: None,
        by_stripe: false,
        payout: None,
    }
}

#[test]
fn each_sample_is_a_fifo_batch_of_step_references_and_one_stray_message() {
    for (file, queue, kinds) in SAMPLES {
        check_sample(&batch(file), queue, kinds);
    }
}

fn check_sample(event: &SqsEvent, queue: &str, kinds: &[StepKind]) {
    assert!(event.records.len() >= 3);
    let mut strays = 0;
    for record in &event.records {
        assert_eq!(
            record.event_source_arn.as_deref(),
            Some(format!("arn:aws:sqs:us-east-1:123456789012:{queue}").as_str())
        );
        let group = record.attributes.get("MessageGroupId").unwrap();
        let deduplication_id = record.attributes.get("MessageDeduplicationId").unwrap();
        match step_ref(record.body.as_deref()) {
            Some(step) => {
                assert!(kinds.contains(&step.kind), "{:?} on {queue}", step.kind);
                assert_eq!(
                    (group.as_str(), deduplication_id.as_str()),
                    (step.destination.as_str(), step.step_id.as_str())
                );
            }
            None => strays += 1,
        }
    }
    assert_eq!(strays, 1);
}

#[tokio::test]
async fn a_stray_body_fails_alone_and_finished_steps_are_acknowledged_without_stripe() {
    for (file, _, _) in SAMPLES {
        stray_fails_alone(batch(file)).await;
    }
}

async fn stray_fails_alone(event: SqsEvent) {
    let steps: Vec<Step> = event
        .records
        .iter()
        .filter_map(|record| step_ref(record.body.as_deref()))
        .map(|s| finished(&s))
        .collect();
    let store = SqliteStore::in_memory().unwrap();
    store_planned_steps(&store, "evt_sample_batch", &steps).await.unwrap();
    // Nothing listens on the discard port: a Stripe call would fail and show up as a failure.
    let mut stripe = StripeClientConfig::new(ApiKey::new("sk_test_unused"));
    stripe.api_base = "http://127.0.0.1:9".to_owned();
    let worker = StepWorker::with_clock(store, StripeClient::new(stripe).unwrap(), FixedClock(NOW));
    let strays: Vec<String> = event
        .records
        .iter()
        .filter(|record| step_ref(record.body.as_deref()).is_none())
        .filter_map(|record| record.message_id.clone())
        .collect();

    let response = handle_sqs_batch(&worker, event).await;
    let failed: Vec<String> =
        response.batch_item_failures.iter().map(|failure| failure.item_identifier.clone()).collect();
    assert_eq!(failed, strays);
}
