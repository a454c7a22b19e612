//! The webhook on DynamoDB and SQS, with the deployed functions' SDK settings (`shared::aws`),
//! behind a proxy that throttles, fails, hangs or resets the storage calls of an event.
//!
//! For every storage call of an applied account event, of a payment with splits and of a
//! record-only event, and for every kind of fault:
//! - a fault on one attempt is absorbed by the SDK's retry, and the event applies once;
//! - a fault on every attempt makes the webhook answer 500 after exactly the configured attempts,
//!   within the operation's time bound (measured, not slept);
//! - either way nothing partial is left: the table holds nothing of the event or all of it, and
//!   redelivering it once the fault is lifted applies it exactly once and queues each step once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use integration_tests::fault_proxy::{Fault, FaultProxy};
use integration_tests::stripe_stub::StripeStub;
use integration_tests::{
    NOW, account_updated, dynamodb_client, pipeline, signed, sqs_client, store_planned_steps,
};
use serde_json::{Value, json};
use shared::aws::{WEBHOOK, WEBHOOK_DEADLINE, WEBHOOK_LAMBDA_TIMEOUT, WORKER, WORKER_LAMBDA_TIMEOUT};
use shared::clock::FixedClock;
use shared::domain::account::AccountId;
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::store::dynamodb::{DynamoStore, create_table};
use shared::store::sqs::{SqsQueue, create_queues};
use shared::store::{AccountStore, CommitOutcome, EventOutcome};
use shared::stripe::client::StripeClient;
use shared::webhook::{Reply, WebhookService};
use shared::worker::{Disposition, StepWorker};

/// Every fault the proxy injects.
const FAULTS: [Fault; 5] =
    [Fault::Throttle, Fault::ServerError, Fault::Hang, Fault::Reset, Fault::LoseResponse];
/// What the fault-free calls before the faulted one, and moto, may add to its bound.
const SLACK: Duration = Duration::from_secs(1);

/// One deployment: the webhook through the proxy, and direct clients to look at what it stored.
struct Deployment {
    proxy: FaultProxy,
    service: WebhookService<DynamoStore, FixedClock>,
    direct: DynamoStore,
    table: String,
    sqs: aws_sdk_sqs::Client,
    transfers_url: String,
}

impl Deployment {
    async fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("cf-faults-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dynamodb = dynamodb_client().await;
        create_table(&dynamodb, &name).await.expect("moto creates the table");
        let sqs = sqs_client().await;
        let (transfers_url, payouts_url) = create_queues(&sqs, &name).await.expect("moto creates the queues");
        let proxy = FaultProxy::in_front_of_moto().await;
        let queue = SqsQueue::new(proxy.sqs_client(&WEBHOOK).await, transfers_url.clone(), payouts_url);
        let store = DynamoStore::new(proxy.dynamodb_client(&WEBHOOK).await, name.clone());
        let service = pipeline(store).with_queue(Arc::new(queue));
        Self {
            proxy,
            service,
            direct: DynamoStore::new(dynamodb, name.clone()),
            table: name,
            sqs,
            transfers_url,
        }
    }

    /// Delivers `event` as the Lambda handler does, under the deadline, and times the answer.
    async fn deliver(&self, event: &Value) -> (Reply, Duration) {
        let (header, body) = signed(event, NOW);
        let started = Instant::now();
        let reply = self.service.handle_within(WEBHOOK_DEADLINE, Some(&header), &body).await;
        (reply, started.elapsed())
    }

    /// The ids of the payment's steps in the table.
    async fn stored_step_ids(&self) -> Vec<String> {
        let steps = self.direct.load_payment_steps(&"pi_1".into()).await.unwrap();
        steps.into_iter().map(|step| step.step_id.into()).collect()
    }

    /// Every step id on the transfers queue, each message deleted once read.
    async fn queued_step_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..10 {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.transfers_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await
                .expect("moto receives");
            if received.messages().is_empty() {
                ids.sort();
                return ids;
            }
            for message in received.messages() {
                let body: Value = serde_json::from_str(message.body().unwrap_or_default()).unwrap();
                ids.push(body["step_id"].as_str().unwrap().to_owned());
                let handle = message.receipt_handle().unwrap();
                self.sqs
                    .delete_message()
                    .queue_url(&self.transfers_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .unwrap();
            }
        }
        panic!("the transfers queue did not empty");
    }
}

/// The outcome an answer names.
fn outcome(reply: &Reply) -> String {
    let body: Value =
        serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.body));
    body["outcome"].as_str().unwrap_or_default().to_owned()
}

/// The three kinds of event, each with the storage calls its first delivery makes.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// `account.updated` for a new account: GetItem, then TransactWriteItems (record and state).
    AccountApplied,
    /// `payment_intent.succeeded` with two splits: one Query of the payment's partition (its guard
    /// and steps), TransactWriteItems (record, two transfer steps and the guard), SendMessageBatch.
    PaymentWithSplits,
    /// An event type that touches nothing: one conditional PutItem of its record.
    RecordOnly,
}

const ACCOUNT: &str = "acct_F";
const EVENT_ID: &str = "evt_under_fault";

impl Scenario {
    fn operations(self) -> &'static [&'static str] {
        match self {
            Self::AccountApplied => &["GetItem", "TransactWriteItems"],
            Self::PaymentWithSplits => &["Query", "TransactWriteItems", "SendMessageBatch"],
            Self::RecordOnly => &["PutItem"],
        }
    }

    fn first_outcome(self) -> &'static str {
        match self {
            Self::AccountApplied | Self::PaymentWithSplits => "applied",
            Self::RecordOnly => "unhandled",
        }
    }

    fn event(self) -> Value {
        match self {
            Self::AccountApplied => account_updated(EVENT_ID, ACCOUNT, NOW - 10, true, &[]),
            Self::PaymentWithSplits => json!({
                "id": EVENT_ID, "object": "event", "type": "payment_intent.succeeded", "created": NOW - 10,
                "livemode": false, "api_version": "2024-06-20",
                "data": {"object": {"id": "pi_1", "object": "payment_intent", "amount": 10_000,
                    "amount_received": 10_000, "currency": "usd", "latest_charge": "ch_1",
                    "status": "succeeded",
                    "metadata": {"transfer:acct_A": "7000", "transfer:acct_B": "2000"}}}
            }),
            Self::RecordOnly => json!({
                "id": EVENT_ID, "object": "event", "type": "customer.created", "created": NOW - 10,
                "livemode": false, "api_version": "2024-06-20",
                "data": {"object": {"id": "cus_1", "object": "customer"}}
            }),
        }
    }

    /// A deployment that already knows what the event needs: the payment's two sellers.
    async fn deployment(self) -> Deployment {
        let deployment = Deployment::new().await;
        if let Self::PaymentWithSplits = self {
            let direct = pipeline(deployment.direct.clone());
            for (id, account) in [("evt_seller_a", "acct_A"), ("evt_seller_b", "acct_B")] {
                let (header, body) = signed(&account_updated(id, account, NOW - 500, true, &[]), NOW);
                assert_eq!(direct.handle(Some(&header), &body).await.status, 200);
            }
        }
        deployment
    }

    /// Whether the table holds the event's whole write, after checking that it holds all of it
    /// or none of it.
    async fn written_whole_or_not_at_all(self, deployment: &Deployment, case: &str) -> bool {
        let store = &deployment.direct;
        let record = store.load_event(EVENT_ID).await.unwrap();
        let recorded = record.is_some();
        if let Some(record) = &record {
            assert_eq!(record.outcome.as_str(), self.first_outcome(), "{case}: the record's outcome");
        }
        match self {
            Self::AccountApplied => {
                let account = store.load_account(&AccountId::parse(ACCOUNT).unwrap()).await.unwrap();
                assert_eq!(
                    account.is_some(),
                    recorded,
                    "{case}: the record and the state are written together"
                );
                if let Some(account) = account {
                    assert_eq!((account.version, account.last_event_id.as_str()), (1, EVENT_ID), "{case}");
                }
            }
            Self::PaymentWithSplits => {
                let payment = store.load_payment(&"pi_1".into()).await.unwrap();
                assert_eq!(
                    payment.record.is_some(),
                    recorded,
                    "{case}: the record and the payment's guard are written together"
                );
                if let Some(guard) = &payment.record {
                    assert_eq!(guard.version, 1, "{case}: the guard is written once");
                }
                let steps = payment.steps;
                let planned: Vec<(StepKind, &str, i64)> =
                    steps.iter().map(|step| (step.kind, step.destination.as_str(), step.amount)).collect();
                let expected = if recorded {
                    vec![(StepKind::Transfer, "acct_A", 7000), (StepKind::Transfer, "acct_B", 2000)]
                } else {
                    Vec::new()
                };
                assert_eq!(planned, expected, "{case}: the record and the steps are written together");
                assert!(steps.iter().all(|step| step.status == StepStatus::Queued), "{case}");
            }
            Self::RecordOnly => {}
        }
        recorded
    }

    /// After the first delivery: whatever it left is whole; redelivered with the fault lifted, the
    /// event applies once, and again it is a duplicate that changes nothing.
    async fn check_applied_once(self, deployment: &Deployment, case: &str) {
        let recorded = self.written_whole_or_not_at_all(deployment, case).await;
        deployment.proxy.heal();
        let (reply, _) = deployment.deliver(&self.event()).await;
        assert_eq!(reply.status, 200, "{case}: redelivery: {}", reply.body);
        let expected = if recorded { "duplicate" } else { self.first_outcome() };
        assert_eq!(outcome(&reply), expected, "{case}: redelivery");
        let (reply, _) = deployment.deliver(&self.event()).await;
        assert_eq!((reply.status, outcome(&reply)), (200, "duplicate".to_owned()), "{case}: third delivery");
        assert!(self.written_whole_or_not_at_all(deployment, case).await, "{case}: applied in the end");
        if let Self::PaymentWithSplits = self {
            let stored = deployment.stored_step_ids().await;
            // SQS deduplicates on the step id, so a step sent again is still one message.
            assert_eq!(deployment.queued_step_ids().await, stored, "{case}: each step queued once");
        }
    }
}

/// (a) One faulted attempt: the SDK retries it and the first delivery applies.
async fn transient(scenario: Scenario, operation: &str, fault: Fault) {
    let case = format!("{scenario:?}, one {fault:?} on {operation}");
    let deployment = scenario.deployment().await;
    deployment.proxy.fail_next(operation, 1, fault);
    let (reply, elapsed) = deployment.deliver(&scenario.event()).await;
    assert_eq!(deployment.proxy.injected(operation), 1, "{case}: the fault was injected");
    assert_eq!(reply.status, 200, "{case}: absorbed by the retry: {}", reply.body);
    let first = outcome(&reply);
    if fault == Fault::LoseResponse && ["TransactWriteItems", "PutItem"].contains(&operation) {
        // The write went through but its answer was lost; the retry finds the record and calls
        // it a duplicate (real DynamoDB may instead replay the transaction's success for its
        // ClientRequestToken). Either way it was applied once, which the checks below show.
        assert!([scenario.first_outcome(), "duplicate"].contains(&first.as_str()), "{case}: {first}");
    } else {
        assert_eq!(first, scenario.first_outcome(), "{case}");
    }
    assert!(elapsed < WEBHOOK.operation_worst_case() + SLACK, "{case}: took {elapsed:?}");
    assert!(scenario.written_whole_or_not_at_all(&deployment, &case).await, "{case}: applied at once");
    scenario.check_applied_once(&deployment, &case).await;
    println!("{case}: 200 {first} in {elapsed:?}");
}

/// (b) Every attempt faulted: 500 after exactly the configured attempts, within the bound.
async fn persistent(scenario: Scenario, operation: &str, fault: Fault) {
    let case = format!("{scenario:?}, {fault:?} on every {operation}");
    let deployment = scenario.deployment().await;
    deployment.proxy.fail_every(Some(operation), fault);
    let (reply, elapsed) = deployment.deliver(&scenario.event()).await;
    assert_eq!(reply.status, 500, "{case}: Stripe must retry: {}", reply.body);
    assert_eq!(
        deployment.proxy.injected(operation),
        WEBHOOK.max_attempts as usize,
        "{case}: the SDK tries exactly max_attempts times"
    );
    let bound = WEBHOOK.operation_worst_case() + SLACK;
    assert!(elapsed < bound && elapsed < WEBHOOK_DEADLINE, "{case}: took {elapsed:?}, bound {bound:?}");
    scenario.check_applied_once(&deployment, &case).await;
    println!("{case}: 500 in {elapsed:?}");
}

async fn every_call_under(scenario: Scenario, fault: Fault) {
    for operation in scenario.operations() {
        transient(scenario, operation, fault).await;
        persistent(scenario, operation, fault).await;
    }
}

#[tokio::test]
async fn account_event_under_throttling() {
    every_call_under(Scenario::AccountApplied, Fault::Throttle).await;
}

#[tokio::test]
async fn account_event_under_server_errors() {
    every_call_under(Scenario::AccountApplied, Fault::ServerError).await;
}

#[tokio::test]
async fn account_event_under_hangs() {
    every_call_under(Scenario::AccountApplied, Fault::Hang).await;
}

#[tokio::test]
async fn account_event_under_resets() {
    every_call_under(Scenario::AccountApplied, Fault::Reset).await;
}

#[tokio::test]
async fn account_event_under_lost_responses() {
    every_call_under(Scenario::AccountApplied, Fault::LoseResponse).await;
}

#[tokio::test]
async fn payment_under_throttling() {
    every_call_under(Scenario::PaymentWithSplits, Fault::Throttle).await;
}

#[tokio::test]
async fn payment_under_server_errors() {
    every_call_under(Scenario::PaymentWithSplits, Fault::ServerError).await;
}

#[tokio::test]
async fn payment_under_hangs() {
    every_call_under(Scenario::PaymentWithSplits, Fault::Hang).await;
}

#[tokio::test]
async fn payment_under_resets() {
    every_call_under(Scenario::PaymentWithSplits, Fault::Reset).await;
}

#[tokio::test]
async fn payment_under_lost_responses() {
    every_call_under(Scenario::PaymentWithSplits, Fault::LoseResponse).await;
}

#[tokio::test]
async fn record_only_event_under_every_fault() {
    for fault in FAULTS {
        every_call_under(Scenario::RecordOnly, fault).await;
    }
}

/// Every storage call failing at once, the way a region-wide outage looks: the first call fails
/// within its bound, nothing is written, and the event applies once after.
#[tokio::test]
async fn everything_hanging_is_answered_500_within_one_operation_bound() {
    let scenario = Scenario::PaymentWithSplits;
    let deployment = scenario.deployment().await;
    deployment.proxy.fail_every(None, Fault::Hang);
    let (reply, elapsed) = deployment.deliver(&scenario.event()).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(deployment.proxy.injected_total(), WEBHOOK.max_attempts as usize);
    assert!(elapsed < WEBHOOK.operation_worst_case() + SLACK, "took {elapsed:?}");
    scenario.check_applied_once(&deployment, "every call hanging").await;
    println!("every call hanging: 500 in {elapsed:?}");
}

/// The budget in `shared::aws` is computed against the template's Lambda timeouts: they must agree.
#[test]
fn the_budgets_lambda_timeouts_are_the_templates() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let template = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];
    let timeout = |function: &str| {
        let seconds = template["Resources"][function]["Properties"]["Timeout"].as_i64();
        Duration::from_secs(
            seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or_else(|| panic!("{function}")),
        )
    };
    assert_eq!(timeout("WebhookFunction"), WEBHOOK_LAMBDA_TIMEOUT);
    assert_eq!(timeout("TransferWorkerFunction"), WORKER_LAMBDA_TIMEOUT);
    assert_eq!(timeout("PayoutWorkerFunction"), WORKER_LAMBDA_TIMEOUT);
}

/// A sanity check of the proxy itself: with no fault it is invisible, and it counts what it saw.
#[tokio::test]
async fn without_faults_the_proxy_only_counts() {
    let scenario = Scenario::PaymentWithSplits;
    let deployment = scenario.deployment().await;
    let (reply, _) = deployment.deliver(&scenario.event()).await;
    assert_eq!((reply.status, outcome(&reply)), (200, "applied".to_owned()), "{}", reply.body);
    // One query of the payment's partition (no read per seller), one write, one send.
    let seen: Vec<usize> = ["Query", "GetItem", "TransactWriteItems", "SendMessageBatch"]
        .iter()
        .map(|operation| deployment.proxy.seen(operation))
        .collect();
    assert_eq!(seen, [1, 0, 1, 1]);
    assert_eq!(deployment.proxy.injected_total(), 0);
    let record = deployment.direct.load_event(EVENT_ID).await.unwrap().unwrap();
    assert_eq!(record.outcome, EventOutcome::Applied);
    assert_eq!(deployment.queued_step_ids().await.len(), 2);
}

/// Storage that answers every read, but slowly: each call is within its bounds, yet together they
/// would outlast the deadline, so the answer is a 500 at the deadline, with nothing written.
///
/// A payment now costs one read (its partition's Query), so the event here is one that reads per
/// object: a `transfer.reversed` listing nine reversals, each a GetItem of the in-flight reversal
/// step it settles.
#[tokio::test]
async fn slow_but_answering_storage_is_cut_off_at_the_deadline() {
    let deployment = Deployment::new().await;
    let destination = AccountId::parse("acct_A").unwrap();
    let steps: Vec<Step> = (0..9)
        .map(|n| Step {
            step_id: format!("rv:pi_1:acct_A:{n}").into(),
            kind: StepKind::Reversal,
            destination: destination.clone(),
            amount: 100 + n,
            currency: "usd".to_owned(),
            source_charge: Some("ch_1".into()),
            transfer_group: Some("pi_1".to_owned()),
            payment_key: Some("pi_1".into()),
            reverses_step: Some("tr:pi_1:acct_A".into()),
            // Claimed and sent, their results not yet recorded: what a settlement may settle.
            status: StepStatus::InFlight,
            reason: None,
            stripe_id: None,
            attempt: 0,
            created_at: NOW - 100,
            updated_at: NOW - 60,
            version: 1,
            livemode: Some(false),
            netted: 0,
            sent_at: Some(NOW - 60),
            unresolved: None,
            requested: None,
            cause: None,
            gives_back: None,
            by_stripe: false,
            payout: None,
        })
        .collect();
    assert_eq!(
        store_planned_steps(&deployment.direct, "evt_planned", &steps).await.unwrap(),
        CommitOutcome::Committed
    );
    let reversals: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(n, step)| {
            json!({"id": format!("trr_{n}"), "object": "transfer_reversal", "amount": step.amount,
                "currency": "usd", "transfer": "tr_1",
                "metadata": {"connect_flow_step": step.step_id, "connect_flow_payment": "pi_1"}})
        })
        .collect();
    let event = json!({
        "id": EVENT_ID, "object": "event", "type": "transfer.reversed", "created": NOW - 10,
        "livemode": false, "api_version": "2024-06-20",
        "data": {"object": {"id": "tr_1", "object": "transfer", "amount": 10_000, "currency": "usd",
            "destination": "acct_A", "metadata": {},
            "reversals": {"object": "list", "data": reversals}}}
    });
    // Nine reads (one per reversal) at 600 ms each: 5.4 s, each under its 750 ms attempt.
    let slow = Duration::from_millis(600);
    assert!(slow < WEBHOOK.attempt_timeout && slow * 9 > WEBHOOK_DEADLINE);
    deployment.proxy.fail_every(Some("GetItem"), Fault::Slow(slow));
    let (reply, elapsed) = deployment.deliver(&event).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(reply.body.contains("deadline_exceeded"), "{}", reply.body);
    assert!(elapsed >= WEBHOOK_DEADLINE && elapsed < WEBHOOK_DEADLINE + SLACK, "took {elapsed:?}");
    assert!(deployment.proxy.injected("GetItem") >= 8, "the reads really were slowed");
    assert_eq!(deployment.proxy.seen("TransactWriteItems"), 0, "cut off before the write");
    assert_eq!(deployment.direct.load_event(EVENT_ID).await.unwrap(), None);
    let stored = deployment.direct.load_payment_steps(&"pi_1".into()).await.unwrap();
    assert!(stored.iter().all(|step| step.status == StepStatus::InFlight && step.stripe_id.is_none()));
    deployment.proxy.heal();
    let (reply, _) = deployment.deliver(&event).await;
    assert_eq!((reply.status, outcome(&reply)), (200, "applied".to_owned()), "{}", reply.body);
    let mut settled: Vec<(String, StepStatus, Option<String>)> = deployment
        .direct
        .load_payment_steps(&"pi_1".into())
        .await
        .unwrap()
        .into_iter()
        .map(|step| (step.step_id.into(), step.status, step.stripe_id))
        .collect();
    settled.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, StepStatus, Option<String>)> = (0..9)
        .map(|n| (format!("rv:pi_1:acct_A:{n}"), StepStatus::Succeeded, Some(format!("trr_{n}"))))
        .collect();
    assert_eq!(settled, expected, "each reversal settled once, by its own object");
    let (reply, _) = deployment.deliver(&event).await;
    assert_eq!((reply.status, outcome(&reply)), (200, "duplicate".to_owned()), "{}", reply.body);
    println!("slow storage: 500 deadline_exceeded in {elapsed:?}");
}

/// The transactional write commits at DynamoDB but every answer to it is lost: the webhook answers
/// 500, and Stripe's redelivery is a duplicate that applies nothing twice and sends the steps the
/// first delivery never got to send.
#[tokio::test]
async fn a_committed_write_whose_answer_is_lost_is_finished_by_the_redelivery() {
    let scenario = Scenario::PaymentWithSplits;
    let deployment = scenario.deployment().await;
    deployment.proxy.fail_every(Some("TransactWriteItems"), Fault::LoseResponse);
    let (reply, _) = deployment.deliver(&scenario.event()).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(deployment.proxy.seen("SendMessageBatch"), 0, "nothing was sent before the answer");
    assert!(scenario.written_whole_or_not_at_all(&deployment, "lost answer").await, "the write committed");
    deployment.proxy.heal();
    let (reply, _) = deployment.deliver(&scenario.event()).await;
    assert_eq!((reply.status, outcome(&reply)), (200, "duplicate".to_owned()), "{}", reply.body);
    assert_eq!(deployment.proxy.seen("SendMessageBatch"), 1, "the duplicate sends the queued steps");
    let stored = deployment.stored_step_ids().await;
    assert_eq!(stored.len(), 2);
    assert_eq!(deployment.queued_step_ids().await, stored);
}

/// The worker with its deployed settings (`shared::aws::WORKER`) on storage that hangs, then on
/// storage that loses every answer to its writes: each run ends within one operation's bound, and
/// once the fault is lifted each transfer is made exactly once.
#[tokio::test]
async fn the_worker_fails_within_its_bound_and_pays_once_after() {
    let scenario = Scenario::PaymentWithSplits;
    let deployment = scenario.deployment().await;
    let (reply, _) = deployment.deliver(&scenario.event()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 1_000_000);
    for account in ["acct_A", "acct_B"] {
        stub.add_account(account, true, true);
    }
    let store = DynamoStore::new(deployment.proxy.dynamodb_client(&WORKER).await, deployment.table.clone());
    let worker =
        StepWorker::with_clock(store, StripeClient::new(stub.client_config()).unwrap(), FixedClock(NOW));
    let steps = deployment.direct.load_payment_steps(&"pi_1".into()).await.unwrap();
    let step = steps[0].reference();

    deployment.proxy.fail_every(Some("GetItem"), Fault::Hang);
    let started = Instant::now();
    assert!(worker.run(&step).await.is_err(), "a hung read is an error, and the message is retried");
    let elapsed = started.elapsed();
    assert_eq!(deployment.proxy.injected("GetItem"), WORKER.max_attempts as usize);
    assert!(elapsed < WORKER.operation_worst_case() + SLACK, "took {elapsed:?}");
    assert!(stub.transfers().is_empty());
    println!("worker, Hang on every GetItem: error in {elapsed:?}");

    // The claim (queued to in flight) commits, but neither it nor its retries are answered.
    deployment.proxy.heal();
    deployment.proxy.fail_every(Some("PutItem"), Fault::LoseResponse);
    assert!(worker.run(&step).await.is_err());
    assert!(stub.transfers().is_empty(), "Stripe is never called before the claim is known");
    let claimed = deployment.direct.load_step(&step).await.unwrap().unwrap();
    assert_eq!(claimed.status, StepStatus::InFlight);

    deployment.proxy.heal();
    for step in &steps {
        let run = worker.run(&step.reference()).await.unwrap();
        assert_eq!(run, Disposition::Done(StepStatus::Succeeded));
        assert_eq!(worker.run(&step.reference()).await.unwrap(), run, "a rerun changes nothing");
    }
    let mut paid: Vec<(String, i64)> =
        stub.transfers().into_iter().map(|transfer| (transfer.destination, transfer.amount)).collect();
    paid.sort();
    assert_eq!(paid, [("acct_A".to_owned(), 7000), ("acct_B".to_owned(), 2000)], "each transfer made once");
}
