//! What each fund-flow event, and each step the worker runs, costs on DynamoDB, counted request by
//! request through the SDK interceptor against moto server, like `dynamodb_requests.rs` does for
//! account events. A change that adds a request fails here; BENCHMARKS.md prices these lists.
//!
//! The pipeline runs without a queue, so only DynamoDB requests are counted: SQS sends are the
//! queue's own cost (one `SendMessageBatch` per queue per event, measured elsewhere).

use integration_tests::stripe_stub::StripeStub;
use integration_tests::{NOW, RequestLog, account_updated, dynamo_store_logged, pipeline, requests_for};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::account::AccountId;
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::store::AccountStore;
use shared::store::dynamodb::DynamoStore;
use shared::stripe::client::StripeClient;
use shared::worker::{Disposition, StepWorker};

/// A platform or connected-account event around `object`.
fn event(id: &str, event_type: &str, created: i64, account: Option<&str>, object: Value) -> Value {
    let mut event = json!({"id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "api_version": "2024-06-20", "data": {"object": object}});
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

/// The splits `pi_1` carries in its metadata: two known connected accounts.
fn splits() -> Value {
    json!({"transfer:acct_A": "7000", "transfer:acct_B": "2000", "order": "1042"})
}

/// `payment_intent.succeeded` for `pi_1`: 10,000 received, two splits.
fn payment_intent() -> Value {
    json!({"id": "pi_1", "object": "payment_intent", "amount": 10_000, "amount_received": 10_000,
        "currency": "usd", "latest_charge": "ch_1", "status": "succeeded", "metadata": splits()})
}

/// `pi_1`'s charge, `amount_refunded` of it refunded so far.
fn charge(amount_refunded: i64) -> Value {
    json!({"id": "ch_1", "object": "charge", "amount": 10_000, "amount_captured": 10_000,
        "amount_refunded": amount_refunded, "captured": true, "currency": "usd", "payment_intent": "pi_1",
        "refunded": amount_refunded == 10_000, "status": "succeeded", "metadata": splits()})
}

/// The DynamoDB requests the worker sends to run `step` to success against the stand-in Stripe.
async fn requests_to_run(
    log: &RequestLog,
    worker: &StepWorker<DynamoStore, FixedClock>,
    step: &Step,
) -> Vec<String> {
    log.take();
    assert_eq!(worker.run(&step.reference()).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    log.take()
}

/// The stored step of `kind` for `pi_1` to `destination`.
async fn payment_step(store: &DynamoStore, kind: StepKind, destination: &str) -> Step {
    store
        .load_payment_steps(&"pi_1".into())
        .await
        .unwrap()
        .into_iter()
        .find(|step| step.kind == kind && step.destination.as_str() == destination)
        .unwrap_or_else(|| panic!("a {} step to {destination}", kind.as_str()))
}

/// One row of the table: the case, the requests it sent and the requests pinned for it.
type Row = (&'static str, Vec<String>, &'static [&'static str]);

/// Records one case; every case is checked at the end, after the whole table is printed.
fn check(rows: &mut Vec<Row>, case: &'static str, requests: &[String], expected: &'static [&'static str]) {
    rows.push((case, requests.to_vec(), expected));
}

#[tokio::test]
async fn each_fund_flow_event_and_step_costs_the_requests_pinned_here() {
    let log = RequestLog::default();
    let store = dynamo_store_logged(log.clone()).await;
    let service = pipeline(store.clone());
    let stub = StripeStub::start().await;
    stub.set_platform_balance("usd", 1_000_000);
    for account in ["acct_A", "acct_B", "acct_M"] {
        stub.add_account(account, true, true);
    }
    stub.set_account_balance("acct_M", "usd", 5_000);
    let worker = StepWorker::with_clock(
        store.clone(),
        StripeClient::new(stub.client_config()).unwrap(),
        FixedClock(NOW),
    );
    // `account_updated` puts every account on manual payouts; acct_M is the one that gets a balance.
    for (id, account) in [("evt_a", "acct_A"), ("evt_b", "acct_B"), ("evt_m", "acct_M")] {
        requests_for(&log, &service, &account_updated(id, account, NOW - 500, true, &[])).await;
    }
    let mut rows = Vec::new();

    let paid = event("evt_pi", "payment_intent.succeeded", NOW - 100, None, payment_intent());
    let requests = requests_for(&log, &service, &paid).await;
    check(
        &mut rows,
        "payment_intent.succeeded, 2 splits",
        &requests,
        // One query of the payment's partition (its guard and its steps), then one write.
        &["Query", "TransactWriteItems"],
    );
    let requests = requests_for(&log, &service, &paid).await;
    check(
        &mut rows,
        "duplicate delivery of that payment",
        &requests,
        // The partition query plans nothing new, the record's conditional put finds the event
        // already written (a duplicate), and a second query finds the steps to send again in case
        // the first delivery committed but failed to queue them.
        &["Query", "PutItem", "Query"],
    );
    let charged = event("evt_ch", "charge.succeeded", NOW - 99, None, charge(0));
    let requests = requests_for(&log, &service, &charged).await;
    check(
        &mut rows,
        "charge.succeeded of the same payment",
        &requests,
        // The partition query finds the payment already planned; only the event record is put.
        &["Query", "PutItem"],
    );

    let transfer = payment_step(&store, StepKind::Transfer, "acct_A").await;
    let requests = requests_to_run(&log, &worker, &transfer).await;
    check(
        &mut rows,
        "worker: transfer step",
        &requests,
        // The step, its destination account, the step claimed in_flight, then the step succeeded
        // with its change for the feed, in one write.
        &["GetItem", "GetItem", "PutItem", "TransactWriteItems"],
    );
    let other = payment_step(&store, StepKind::Transfer, "acct_B").await;
    requests_to_run(&log, &worker, &other).await;
    // Stripe's own word on a transfer the worker has already recorded: nothing to settle.
    let made = stub.transfers().into_iter().find(|t| t.destination == "acct_A").expect("acct_A's transfer");
    let object = json!({"id": made.id, "object": "transfer", "amount": made.amount, "currency": "usd",
        "destination": "acct_A", "metadata": made.metadata});
    let created = event("evt_tr", "transfer.created", NOW - 95, None, object.clone());
    let requests = requests_for(&log, &service, &created).await;
    check(
        &mut rows,
        "transfer.created, step already recorded",
        &requests,
        // The step the transfer's metadata names, then the event record alone.
        &["GetItem", "PutItem"],
    );

    let refunded = event("evt_r1", "charge.refunded", NOW - 90, None, charge(2_500));
    let requests = requests_for(&log, &service, &refunded).await;
    check(
        &mut rows,
        "charge.refunded, partial",
        &requests,
        // One query of the payment's partition (its guard and every step, so no GetItem per
        // transfer), then the record, the reversals and the guard one version up in one write.
        &["Query", "TransactWriteItems"],
    );
    let again = event("evt_r1b", "charge.refunded", NOW - 89, None, charge(2_500));
    let requests = requests_for(&log, &service, &again).await;
    check(
        &mut rows,
        "charge.refunded, same amount again",
        &requests,
        // The partition query shows the refund already planned: only the event record is put.
        &["Query", "PutItem"],
    );

    let reversal = payment_step(&store, StepKind::Reversal, "acct_A").await;
    let requests = requests_to_run(&log, &worker, &reversal).await;
    check(
        &mut rows,
        "worker: reversal step",
        &requests,
        // The step, its account, the step claimed in_flight, then the step succeeded with its
        // change for the feed, in one write.
        &["GetItem", "GetItem", "PutItem", "TransactWriteItems"],
    );

    let undone = stub.reversals().remove(0);
    let mut reversed = object;
    reversed["reversals"] = json!({"object": "list", "data": [{"id": undone.id, "object": "transfer_reversal",
        "amount": undone.amount, "currency": "usd", "transfer": made.id, "metadata": undone.metadata}]});
    let requests =
        requests_for(&log, &service, &event("evt_trr", "transfer.reversed", NOW - 85, None, reversed)).await;
    check(
        &mut rows,
        "transfer.reversed (1 reversal listed), step already recorded",
        &requests,
        // The step the reversal's metadata names, then the event record alone.
        &["GetItem", "PutItem"],
    );

    let balance =
        json!({"object": "balance", "available": [{"amount": 5_000, "currency": "usd"}], "pending": []});
    let available = event("evt_bal", "balance.available", NOW - 80, Some("acct_M"), balance);
    let requests = requests_for(&log, &service, &available).await;
    check(
        &mut rows,
        "balance.available, manual payouts",
        &requests,
        // The account, its open payouts, then record + payout step + account one version up.
        &["GetItem", "Query", "TransactWriteItems"],
    );

    let manual = AccountId::parse("acct_M").unwrap();
    let payout_step = store.load_account_steps(&manual).await.unwrap().remove(0);
    let requests = requests_to_run(&log, &worker, &payout_step).await;
    check(
        &mut rows,
        "worker: payout step",
        &requests,
        // The step, its account, the step claimed in_flight, then the step succeeded with its
        // change for the feed, in one write.
        &["GetItem", "GetItem", "PutItem", "TransactWriteItems"],
    );

    let payout = stub.payouts().remove(0);
    let paid_out = json!({"id": payout.id, "object": "payout", "amount": payout.amount, "currency": "usd",
        "status": "paid", "metadata": payout.metadata});
    let requests =
        requests_for(&log, &service, &event("evt_pp", "payout.paid", NOW - 75, Some("acct_M"), paid_out))
            .await;
    check(
        &mut rows,
        "payout.paid, step already recorded",
        &requests,
        // The step, the account (a paid payout clears an earlier payout's failure; here there is
        // none, so the account is not written), then the event record alone.
        &["GetItem", "GetItem", "PutItem"],
    );
    // A paid payout can still fail later, when the bank returns the funds.
    let failed = json!({"id": payout.id, "object": "payout", "amount": payout.amount, "currency": "usd",
        "status": "failed", "failure_code": "account_closed", "metadata": payout.metadata});
    let requests =
        requests_for(&log, &service, &event("evt_po", "payout.failed", NOW - 70, Some("acct_M"), failed))
            .await;
    check(
        &mut rows,
        "payout.failed (record + account; the step stays succeeded)",
        &requests,
        // The step, the account, then the record and the account's payout_failure in one write.
        &["GetItem", "GetItem", "TransactWriteItems"],
    );

    println!("\n| event | DynamoDB requests |\n|---|---|");
    for (case, requests, _) in &rows {
        println!("| {case} | `{}` |", requests.join(" + "));
    }
    // Sizes for the cost arithmetic: a step item is its JSON plus a few short key attributes.
    let steps = store.load_payment_steps(&"pi_1".into()).await.unwrap();
    let step_bytes: Vec<usize> =
        steps.iter().map(|step| serde_json::to_string(step).unwrap().len()).collect();
    let account = store.load_account(&manual).await.unwrap().unwrap();
    // The failure is on the account and the payout's step, which really ran, stays succeeded.
    assert_eq!(
        account.payout_failure.as_ref().map(|failure| failure.payout_id.as_str()),
        Some(payout.id.as_str())
    );
    let settled = store.load_step(&payout_step.reference()).await.unwrap().expect("the payout step");
    assert_eq!(settled.status, StepStatus::Succeeded);
    println!("step JSON bytes: {step_bytes:?}");
    println!(
        "acct_M state JSON bytes (with its payout failure): {}",
        serde_json::to_string(&account).unwrap().len()
    );
    for (case, requests, expected) in &rows {
        assert_eq!(requests, expected, "{case}");
    }
}
