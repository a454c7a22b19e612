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
use shared::domain::account::AccountId;
use shared::domain::step::{StepKind, StepRef, StepStatus};
use shared::store::sqlite::SqliteStore;
use shared::store::{AccountStore, BoxFuture, StepQueue, StoreError};
use shared::stripe::client::StripeClient;
use shared::stripe::signature::FixedClock;
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
    assert_eq!(store.receive("transfers", NOW, 30, 10).unwrap(), [], "nothing was queued");
    assert_eq!(deliver(&service, &paid).await, (200, "duplicate".into()));
    let queued = store.receive("transfers", NOW, 30, 10).unwrap();
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

    // Stripe's transfer.created can arrive before the worker records its own result (a crash
    // between the call and the write): the event settles the step with the same transfer id.
    let planned = store.load_payment_steps("pi_5").await.unwrap().remove(0);
    let transfer = json!({"id": "tr_from_stripe", "object": "transfer", "amount": 600, "currency": "usd",
        "destination": "acct_A", "metadata": {"connect_flow_step": planned.step_id, "connect_flow_payment": "pi_5"}});
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
    let failed = json!({"id": payout.id, "object": "payout", "amount": 800, "currency": "usd", "status": "failed",
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
    let steps = store.load_account_steps(&AccountId::parse("acct_M").unwrap()).await.unwrap();
    assert_eq!((steps[0].status, steps[0].reason.as_deref()), (StepStatus::Failed, Some("account_closed")));
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
    let step = store.load_payment_steps("pi_w").await.unwrap().remove(0);
    assert_eq!(step.status, StepStatus::Waiting);
    assert!(stub.transfers().is_empty(), "nothing is sent to a destination that cannot receive");
    // Past the receive limit the message is dead-lettered, like SQS past maxReceiveCount.
    store.dead_letter("transfers", &step.step_id).unwrap();
    assert_eq!(store.dead_letters("transfers").unwrap(), std::slice::from_ref(&step.step_id));

    deliver(&service, &account_updated("evt_w2", "acct_W", NOW - 50, true, &[])).await;
    assert_eq!(
        store.dead_letters("transfers").unwrap(),
        Vec::<String>::new(),
        "the account's change re-queued it"
    );
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
    config.api_key = shared::stripe::client::ApiKey::new("sk_live_revoked");
    let worker = StepWorker::with_clock(store.clone(), StripeClient::new(config).unwrap(), FixedClock(NOW));
    let step = store.load_payment_steps("pi_k").await.unwrap().remove(0);
    assert!(matches!(
        worker.run(&step.reference()).await.unwrap(),
        shared::worker::Disposition::RetryLater(_)
    ));
    let after = store.load_step(&step.reference()).await.unwrap().unwrap();
    assert!(!after.status.is_final(), "a bad key must not fail the step: {:?}", after.status);
    let fixed = worker_for(&store, &stub);
    assert_eq!(
        fixed.run(&step.reference()).await.unwrap(),
        shared::worker::Disposition::Done(StepStatus::Succeeded)
    );
    assert_eq!(stub.transfers().len(), 1);
}
