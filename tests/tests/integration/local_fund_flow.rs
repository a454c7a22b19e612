//! The local fund flow end to end, as `connect-flow serve` runs it: the webhook plans steps and
//! queues them on the embedded queue after the commit, and the in-process worker runs them
//! against the stand-in Stripe, each exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use integration_tests::stripe_stub::StripeStub;
use integration_tests::{
    NOW, account_updated, manual_payout_account_updated, pipeline, signed, sqlite_store,
};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::account::AccountId;
use shared::domain::step::{StepKind, StepRef, StepStatus};
use shared::store::sqlite::SqliteStore;
use shared::store::{AccountStore, BoxFuture, Queue, StepQueue, StoreError};
use shared::stripe::client::StripeClient;
use shared::webhook::WebhookService;
use shared::worker::StepWorker;

fn event(id: &str, event_type: &str, created: i64, account: Option<&str>, object: Value) -> Value {
    let mut event = json!({"id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "data": {"object": object}});
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

fn payment(id: &str, amount: i64, splits: &[(&str, i64)]) -> Value {
    let metadata: serde_json::Map<String, Value> = splits
        .iter()
        .map(|(account, amount)| (format!("transfer:{account}"), json!(amount.to_string())))
        .collect();
    json!({"id": id, "object": "payment_intent", "amount": amount, "amount_received": amount,
        "currency": "usd", "latest_charge": format!("ch_{id}"), "metadata": metadata})
}

fn refund(payment: &str, amount: i64, refunded: i64) -> Value {
    json!({"id": format!("ch_{payment}"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": refunded, "currency": "usd", "payment_intent": payment, "captured": true})
}

async fn deliver<S: AccountStore>(service: &WebhookService<S, FixedClock>, event: &Value) -> (u16, String) {
    let (header, body) = signed(event, NOW);
    let reply = service.handle(Some(&header), &body).await;
    let outcome =
        serde_json::from_str::<Value>(&reply.body).unwrap()["outcome"].as_str().unwrap_or("").to_owned();
    (reply.status, outcome)
}

/// The in-process worker over `store`, calling the stand-in Stripe.
fn worker_for(store: &SqliteStore, stub: &StripeStub) -> StepWorker<SqliteStore, FixedClock> {
    StepWorker::with_clock(store.clone(), StripeClient::new(stub.client_config()).unwrap(), FixedClock(NOW))
}

async fn drain(worker: &StepWorker<SqliteStore, FixedClock>) {
    for _ in 0..10 {
        if worker.drain_embedded().await.unwrap() == 0 {
            return;
        }
    }
    panic!("the embedded queues did not empty");
}

#[tokio::test]
async fn payment_refunds_and_payout_each_move_money_exactly_once() {
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 100_000);
    for account in ["acct_A", "acct_B", "acct_M"] {
        stub.add_account(account, true, true);
    }
    stub.set_account_balance("acct_M", "usd", 5_000);
    let store = sqlite_store();
    let service = pipeline(store.clone()).with_queue(Arc::new(store.clone()));
    let worker = worker_for(&store, &stub);
    deliver(&service, &account_updated("evt_a", "acct_A", NOW - 500, true, &[])).await;
    deliver(&service, &account_updated("evt_b", "acct_B", NOW - 500, true, &[])).await;
    let manual = manual_payout_account_updated("evt_m", "acct_M", NOW - 500);
    deliver(&service, &manual).await;

    let paid = event(
        "evt_pi",
        "payment_intent.succeeded",
        NOW - 100,
        None,
        payment("pi_1", 10_000, &[("acct_A", 7000), ("acct_B", 2000)]),
    );
    assert_eq!(deliver(&service, &paid).await, (200, "applied".into()));
    assert_eq!(deliver(&service, &paid).await, (200, "duplicate".into()));
    drain(&worker).await;
    let transfers = stub.transfers();
    let mut sent: Vec<(&str, i64)> = transfers.iter().map(|t| (t.destination.as_str(), t.amount)).collect();
    sent.sort();
    assert_eq!(sent, [("acct_A", 7000), ("acct_B", 2000)]);
    assert!(
        transfers.iter().all(|t| t.source_transaction.as_deref() == Some("ch_pi_1")
            && t.transfer_group.as_deref() == Some("pi_1"))
    );

    deliver(&service, &event("evt_r1", "charge.refunded", NOW - 90, None, refund("pi_1", 10_000, 2_500)))
        .await;
    drain(&worker).await;
    deliver(&service, &event("evt_r2", "charge.refunded", NOW - 80, None, refund("pi_1", 10_000, 10_000)))
        .await;
    deliver(&service, &event("evt_r2", "charge.refunded", NOW - 80, None, refund("pi_1", 10_000, 10_000)))
        .await;
    drain(&worker).await;
    assert_eq!(stub.reversals().len(), 4, "two partial and two final reversals");
    assert!(
        stub.transfers().iter().all(|t| t.amount_reversed == t.amount),
        "a full refund reverses every transfer exactly"
    );

    let balance =
        json!({"object": "balance", "available": [{"amount": 5_000, "currency": "usd"}], "pending": []});
    assert_eq!(
        deliver(&service, &event("evt_bal", "balance.available", NOW - 70, Some("acct_M"), balance)).await.1,
        "applied"
    );
    drain(&worker).await;
    let payouts = stub.payouts();
    assert_eq!(
        payouts.iter().map(|p| (p.account.as_str(), p.amount)).collect::<Vec<_>>(),
        [("acct_M", 5_000)]
    );

    let calls_before = stub.requests().values().sum::<usize>();
    for account in ["acct_A", "acct_B", "acct_M"] {
        let steps = store.load_account_steps(&AccountId::parse(account).unwrap()).await.unwrap();
        assert!(!steps.is_empty());
        for step in &steps {
            assert_eq!(
                (step.status, step.stripe_id.is_some()),
                (StepStatus::Succeeded, true),
                "{}",
                step.step_id
            );
            assert_eq!(
                worker.run(&step.reference()).await.unwrap(),
                shared::worker::Disposition::Done(StepStatus::Succeeded)
            );
        }
    }
    assert_eq!(
        stub.requests().values().sum::<usize>(),
        calls_before,
        "a finished step never calls Stripe again"
    );
}

/// A queue that refuses the first send, as SQS might when throttled.
struct FlakyQueue {
    inner: SqliteStore,
    failures_left: AtomicUsize,
}

impl StepQueue for FlakyQueue {
    fn send<'a>(&'a self, steps: &'a [StepRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(StoreError::Unavailable("queue throttled".into()));
            }
            self.inner.send(steps).await
        })
    }
}

#[tokio::test]
async fn a_failed_send_answers_500_and_the_retried_delivery_queues_the_steps() {
    let store = sqlite_store();
    let queue = Arc::new(FlakyQueue { inner: store.clone(), failures_left: AtomicUsize::new(1) });
    let service = pipeline(store.clone()).with_queue(queue);
    deliver(&service, &account_updated("evt_a", "acct_A", NOW - 500, true, &[])).await;
    let paid = event(
        "evt_pi",
        "payment_intent.succeeded",
        NOW - 100,
        None,
        payment("pi_9", 1_000, &[("acct_A", 600)]),
    );
    assert_eq!(deliver(&service, &paid).await.0, 500, "Stripe must retry");
    assert_eq!(store.receive(Queue::Transfers, NOW, 30, 10).unwrap(), [], "nothing was queued");
    assert_eq!(deliver(&service, &paid).await, (200, "duplicate".into()));
    let queued = store.receive(Queue::Transfers, NOW, 30, 10).unwrap();
    assert_eq!(
        queued.iter().map(|m| (m.step.kind, m.message_id.as_str())).collect::<Vec<_>>(),
        [(StepKind::Transfer, "tr:pi_9:acct_A")]
    );
}

#[tokio::test]
async fn stripes_lifecycle_events_settle_steps_and_a_failed_payout_shows_on_the_account() {
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 100_000);
    stub.add_account("acct_A", true, true);
    stub.add_account("acct_M", true, true);
    stub.set_account_balance("acct_M", "usd", 800);
    let store = sqlite_store();
    let service = pipeline(store.clone()).with_queue(Arc::new(store.clone()));
    let worker = worker_for(&store, &stub);
    deliver(&service, &account_updated("evt_a", "acct_A", NOW - 500, true, &[])).await;
    let manual = manual_payout_account_updated("evt_m", "acct_M", NOW - 500);
    deliver(&service, &manual).await;
    let paid = event(
        "evt_pi",
        "payment_intent.succeeded",
        NOW - 100,
        None,
        payment("pi_5", 1_000, &[("acct_A", 600)]),
    );
    deliver(&service, &paid).await;

    // A step never sent (still queued) cannot be settled by any event: whoever reports it, it
    // has not moved money, and settling it would lose the transfer.
    let planned = store.load_payment_steps(&"pi_5".into()).await.unwrap().remove(0);
    assert_eq!(planned.status, StepStatus::Queued);
    let transfer = json!({"id": "tr_from_stripe", "object": "transfer", "amount": 600, "currency": "usd",
        "destination": "acct_A", "metadata": {"connect_flow_step": planned.step_id, "connect_flow_payment": "pi_5"}});
    let early = event("evt_tr0", "transfer.created", NOW - 91, None, transfer.clone());
    assert_eq!(deliver(&service, &early).await, (200, "refused".into()));
    let record = store.load_event("evt_tr0").await.unwrap().expect("the refused event is recorded");
    assert!(record.reason.is_some(), "the refusal says why");
    let still = store.load_step(&planned.reference()).await.unwrap().unwrap();
    assert_eq!((still.status, still.stripe_id.as_deref()), (StepStatus::Queued, None));

    // Stripe's transfer.created can arrive before the worker records its own result (a crash
    // between the call and the write, the step left in flight): the event settles the step with
    // the same transfer id.
    let claimed = shared::domain::step::Step {
        status: StepStatus::InFlight,
        version: planned.version + 1,
        ..planned.clone()
    };
    assert_eq!(store.update_step(&claimed, &[]).await.unwrap(), shared::store::CommitOutcome::Committed);
    // A report with the wrong amount is not this step's transfer.
    let mut wrong = transfer.clone();
    wrong["amount"] = json!(6_000);
    let wrong = event("evt_tr1", "transfer.created", NOW - 90, None, wrong);
    assert_eq!(deliver(&service, &wrong).await, (200, "refused".into()));
    let created = event("evt_tr", "transfer.created", NOW - 90, None, transfer);
    assert_eq!(deliver(&service, &created).await, (200, "applied".into()));
    let settled = store.load_step(&planned.reference()).await.unwrap().unwrap();
    assert_eq!(
        (settled.status, settled.stripe_id.as_deref()),
        (StepStatus::Succeeded, Some("tr_from_stripe"))
    );
    drain(&worker).await;
    assert_eq!(stub.transfers().len(), 0, "a settled step is acknowledged without calling Stripe");
    let unknown = json!({"id": "tr_other", "object": "transfer", "destination": "acct_A", "metadata": {}});
    assert_eq!(
        deliver(&service, &event("evt_tr2", "transfer.created", NOW - 89, None, unknown)).await.1,
        "unhandled"
    );

    let balance = json!({"object": "balance", "available": [{"amount": 800, "currency": "usd"}]});
    deliver(&service, &event("evt_bal", "balance.available", NOW - 80, Some("acct_M"), balance)).await;
    drain(&worker).await;
    let payout = stub.payouts().remove(0);
    let failed = json!({"id": payout.id, "object": "payout", "amount": payout.amount, "currency": "usd", "status": "failed",
        "failure_code": "account_closed", "metadata": payout.metadata});
    assert_eq!(
        deliver(&service, &event("evt_po", "payout.failed", NOW - 70, Some("acct_M"), failed.clone()))
            .await
            .1,
        "applied"
    );
    assert_eq!(
        deliver(&service, &event("evt_po", "payout.failed", NOW - 70, Some("acct_M"), failed)).await.1,
        "duplicate"
    );
    // The payout was made, so its step stays succeeded (moving it back could pay it out again);
    // the failure goes on the account.
    assert_eq!(stub.payouts().len(), 1);
    let steps = store.load_account_steps(&AccountId::parse("acct_M").unwrap()).await.unwrap();
    assert_eq!(
        (steps.len(), steps[0].status, steps[0].stripe_id.as_deref()),
        (1, StepStatus::Succeeded, Some(payout.id.as_str()))
    );
    let account = store.load_account(&AccountId::parse("acct_M").unwrap()).await.unwrap().unwrap();
    let failure = account.payout_failure.expect("the failure is visible on the account");
    assert_eq!(
        (failure.payout_id.as_str(), failure.failure_code.as_str()),
        (payout.id.as_str(), "account_closed")
    );
}

#[tokio::test]
async fn a_transfer_waits_for_its_destination_and_goes_when_the_capability_is_active() {
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 10_000);
    stub.add_account("acct_W", true, true);
    let store = sqlite_store();
    let service = pipeline(store.clone()).with_queue(Arc::new(store.clone()));
    deliver(&service, &account_updated("evt_w1", "acct_W", NOW - 500, false, &["external_account"])).await;
    let paid = event(
        "evt_pi",
        "payment_intent.succeeded",
        NOW - 100,
        None,
        payment("pi_w", 1_000, &[("acct_W", 400)]),
    );
    deliver(&service, &paid).await;
    drain(&worker_for(&store, &stub)).await;
    let step = store.load_payment_steps(&"pi_w".into()).await.unwrap().remove(0);
    assert_eq!(step.status, StepStatus::Waiting);
    assert!(stub.transfers().is_empty(), "nothing is sent to a destination that cannot receive");
    // The waiting step is parked in the store and its message acknowledged: nothing is left to
    // be redelivered (and dead-lettered) while the destination cannot receive.
    assert_eq!(
        store.receive(Queue::Transfers, NOW + 3_600, 30, 10).unwrap(),
        [],
        "the message was acknowledged"
    );
    assert_eq!(store.dead_letters(Queue::Transfers).unwrap(), Vec::<String>::new());
    drain(&worker_for(&store, &stub)).await;
    assert!(stub.transfers().is_empty(), "still nothing sent");

    deliver(&service, &account_updated("evt_w2", "acct_W", NOW - 50, true, &[])).await;
    // The account's change re-queued it, and the worker sends it.
    drain(&worker_for(&store, &stub)).await;
    assert_eq!(stub.transfers().iter().map(|t| t.amount).collect::<Vec<_>>(), [400]);
    let sent = store.load_step(&step.reference()).await.unwrap().unwrap();
    assert_eq!(sent.status, StepStatus::Succeeded);
}

#[tokio::test]
async fn a_rejected_api_key_leaves_steps_to_retry_instead_of_failing_them() {
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 10_000);
    stub.add_account("acct_K", true, true);
    let store = sqlite_store();
    let service = pipeline(store.clone()).with_queue(Arc::new(store.clone()));
    deliver(&service, &account_updated("evt_k", "acct_K", NOW - 500, true, &[])).await;
    deliver(
        &service,
        &event(
            "evt_pi",
            "payment_intent.succeeded",
            NOW - 100,
            None,
            payment("pi_k", 1_000, &[("acct_K", 300)]),
        ),
    )
    .await;
    let mut config = stub.client_config();
    // A test-mode key (so the step's mode matches) that Stripe rejects with 401: a revoked
    // restricted key. The stand-in Stripe accepts only `sk_test_…` keys.
    config.api_key = shared::stripe::client::ApiKey::new("rk_test_revoked");
    let worker = StepWorker::with_clock(store.clone(), StripeClient::new(config).unwrap(), FixedClock(NOW));
    let step = store.load_payment_steps(&"pi_k".into()).await.unwrap().remove(0);
    assert!(matches!(
        worker.run(&step.reference()).await.unwrap(),
        shared::worker::Disposition::RetryLater(_)
    ));
    assert!(stub.transfers().is_empty(), "nothing was made with the rejected key");
    let after = store.load_step(&step.reference()).await.unwrap().unwrap();
    assert_eq!(after.status, StepStatus::InFlight, "a bad key must not fail the step");
    let fixed = worker_for(&store, &stub);
    assert_eq!(
        fixed.run(&step.reference()).await.unwrap(),
        shared::worker::Disposition::Done(StepStatus::Succeeded)
    );
    assert_eq!(stub.transfers().len(), 1);
    assert_eq!(
        fixed.run(&step.reference()).await.unwrap(),
        shared::worker::Disposition::Done(StepStatus::Succeeded)
    );
    assert_eq!(stub.transfers().len(), 1, "a rerun makes no second transfer");
}
