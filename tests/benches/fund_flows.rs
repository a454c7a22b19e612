//! Fund flows: what planning costs per event, what one payment costs through the whole pipeline on
//! the embedded store, and what the worker costs per step against the stand-in Stripe.
//!
//! Benchmark names are stable: BENCHMARKS.md quotes them.
//!
//! - `plan_payment`: envelope parse, `read_fund_event` and `plan_transfers` for the
//!   `payment_intent.succeeded` sample with three splits.
//! - `plan_refund`: `read_fund_event` and `plan_reversals` for a partial refund of a charge with
//!   three transfer steps and three earlier reversals.
//! - `plan_dispute`: `read_fund_event` and `plan_dispute` for `charge.dispute.funds_withdrawn` of
//!   the whole charge, against the same three transfers and reversals as `plan_refund`.
//! - `plan_refund_failure`: `read_fund_event` and `plan_refund_failure` for a failed refund of 2,500
//!   whose reversals were made.
//! - `pipeline_payment_sqlite_in_memory`: `WebhookService::handle` of a fresh payment on an
//!   in-memory SQLite store with the embedded queue.
//! - `worker_step_against_stub`: `StepWorker::run` of one queued transfer step, its HTTP round trip
//!   to the stand-in Stripe on loopback included.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use integration_tests::stripe_stub::StripeStub;
use integration_tests::{NOW, account_updated, pipeline, signed, sqlite_store, store_planned_steps};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::funds::{
    DisputePolicy, FundContext, FundEvent, Payment, PaymentRecord, TransferPlan, plan_dispute, plan_payment,
    plan_refund_failure, plan_reversals, plan_transfers, read_fund_event,
};
use shared::domain::step::{Step, StepStatus};
use shared::store::{AccountStore, CommitOutcome, Queue};
use shared::stripe::client::StripeClient;
use shared::stripe::event::{Event, ParsedBody, parse_event};
use shared::webhook::WebhookService;
use shared::worker::{Disposition, StepWorker};
use tokio::runtime::Runtime;

/// The `payment_intent.succeeded` sample, as Stripe would deliver it (its metadata is replaced).
const SAMPLE_PATH: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../events/stripe/payment_intent.succeeded.json");

/// The sample event id's random part, replaced wherever a benchmark needs a new event.
const SAMPLE_EVENT_SUFFIX: &str = "1QcD8NQ5ChAxWWv4SMJZISue";

/// The sample payment intent's random part, shared with its charge (`pi_…`, `ch_…`) and its
/// client secret; replaced wherever a benchmark needs a new payment.
const SAMPLE_PAYMENT_SUFFIX: &str = "3Qc4Mm6UfM1CId1946Rd3Nf6";

/// The three connected accounts the splits pay, and their shares of the 10,000 received.
const SPLITS: [(&str, i64); 3] =
    [("acct_1QcFlowDemo0001", 5_000), ("acct_1QcFlowDemo0002", 2_000), ("acct_1QcFlowDemo0003", 1_500)];

/// A `charge.refunded` event as Stripe renders it at API version 2024-06-20: the sample payment's
/// charge, 6,000 of 10,000 refunded so far (an earlier refund took 2,500).
const REFUND_EVENT: &str = r#"{
  "id": "evt_3Qc4Mm6UfM1CId1946Rd3Nf6R2",
  "object": "event",
  "api_version": "2024-06-20",
  "created": 1732003000,
  "data": {
    "object": {
      "id": "ch_3Qc4Mm6UfM1CId1946Rd3Nf6",
      "object": "charge",
      "amount": 10000,
      "amount_captured": 10000,
      "amount_refunded": 6000,
      "application": null,
      "application_fee": null,
      "application_fee_amount": null,
      "balance_transaction": "txn_3Qc4Mm6UfM1CId1946tQ2bVd",
      "billing_details": {
        "address": {"city": null, "country": "US", "line1": null, "line2": null, "postal_code": "94110", "state": null},
        "email": "buyer@example.com",
        "name": "Jenny Rosen",
        "phone": null
      },
      "calculated_statement_descriptor": "CONNECT FLOW",
      "captured": true,
      "created": 1732000716,
      "currency": "usd",
      "customer": null,
      "description": "Order #1042",
      "destination": null,
      "dispute": null,
      "disputed": false,
      "failure_balance_transaction": null,
      "failure_code": null,
      "failure_message": null,
      "fraud_details": {},
      "invoice": null,
      "livemode": false,
      "metadata": {
        "transfer:acct_1QcFlowDemo0001": "5000",
        "transfer:acct_1QcFlowDemo0002": "2000",
        "transfer:acct_1QcFlowDemo0003": "1500"
      },
      "on_behalf_of": null,
      "outcome": {
        "network_status": "approved_by_network",
        "reason": null,
        "risk_level": "normal",
        "risk_score": 32,
        "seller_message": "Payment complete.",
        "type": "authorized"
      },
      "paid": true,
      "payment_intent": "pi_3Qc4Mm6UfM1CId1946Rd3Nf6",
      "payment_method": "pm_1QcspQVmT2htzihsWaYbNcs7",
      "payment_method_details": {
        "card": {
          "amount_authorized": 10000,
          "brand": "visa",
          "checks": {"address_line1_check": null, "address_postal_code_check": "pass", "cvc_check": "pass"},
          "country": "US",
          "exp_month": 12,
          "exp_year": 2027,
          "extended_authorization": {"status": "disabled"},
          "fingerprint": "Xt5EWLLDS7FJjR1c",
          "funding": "credit",
          "incremental_authorization": {"status": "unavailable"},
          "installments": null,
          "last4": "4242",
          "mandate": null,
          "multicapture": {"status": "unavailable"},
          "network": "visa",
          "network_token": {"used": false},
          "overcapture": {"maximum_amount_capturable": 10000, "status": "unavailable"},
          "three_d_secure": null,
          "wallet": null
        },
        "type": "card"
      },
      "radar_options": {},
      "receipt_email": null,
      "receipt_number": null,
      "receipt_url": "https://pay.stripe.com/receipts/payment/CAcaFwoVYWNjdF8xUWNGbG93RGVtbzAwMDAo",
      "refunded": false,
      "review": null,
      "shipping": null,
      "source": null,
      "source_transfer": null,
      "statement_descriptor": null,
      "statement_descriptor_suffix": null,
      "status": "succeeded",
      "transfer_data": null,
      "transfer_group": null
    },
    "previous_attributes": {"amount_refunded": 2500}
  },
  "livemode": false,
  "pending_webhooks": 1,
  "request": {"id": "req_Qc4RfNd2Hx8kLm", "idempotency_key": "5b1d9a0e-3c47-4f8e-9e1a-2f6d0c8b7a51"},
  "type": "charge.refunded"
}"#;

/// The sample payment with three splits in its metadata, serialised as it would be delivered.
fn payment_body() -> String {
    let text = std::fs::read_to_string(SAMPLE_PATH)
        .expect("the sample event events/stripe/payment_intent.succeeded.json is readable");
    assert!(text.contains(SAMPLE_EVENT_SUFFIX) && text.contains(SAMPLE_PAYMENT_SUFFIX), "the sample's ids");
    let mut event: Value = serde_json::from_str(&text).expect("the sample is JSON");
    let metadata: serde_json::Map<String, Value> = SPLITS
        .iter()
        .map(|(account, amount)| (format!("transfer:{account}"), json!(amount.to_string())))
        .chain([("order".to_owned(), json!("1042"))])
        .collect();
    event["data"]["object"]["metadata"] = Value::Object(metadata);
    event.to_string()
}

/// A random-looking part of the sample ids' length, so that fresh events keep the body's size.
fn fresh_suffix(label: &str, n: u64) -> String {
    let suffix = format!("{label}{n:019}");
    debug_assert_eq!(suffix.len(), SAMPLE_PAYMENT_SUFFIX.len());
    suffix
}

/// The payment body with a new event id and a new payment (intent, charge and client secret).
fn fresh_payment(body: &str, n: u64) -> Value {
    let text = body
        .replacen(SAMPLE_EVENT_SUFFIX, &fresh_suffix("bevt_", n), 1)
        .replace(SAMPLE_PAYMENT_SUFFIX, &fresh_suffix("bpay_", n));
    serde_json::from_str(&text).expect("the fresh payment is JSON")
}

/// Parses a body that must be a snapshot event.
fn snapshot(body: &[u8]) -> Event {
    match parse_event(body).expect("the event parses") {
        ParsedBody::Snapshot(event) => event,
        ParsedBody::Thin(_) => panic!("a snapshot event"),
    }
}

/// The payment a fund-flow event must be.
fn payment_of(event: &Event) -> Payment {
    match read_fund_event(event) {
        Some(FundEvent::Payment(payment)) => payment,
        other => panic!("a payment, got {other:?}"),
    }
}

/// The queued transfer steps a payment plans.
fn planned_transfers(payment: &Payment) -> Vec<Step> {
    match plan_transfers(payment, NOW) {
        TransferPlan::Planned(steps) => steps,
        other => panic!("the splits are valid, got {other:?}"),
    }
}

/// The runtime every async benchmark blocks on: two workers, so that the stand-in Stripe's server
/// tasks run beside the benchmark thread.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a multi-thread tokio runtime builds")
}

/// Records each split destination as an active connected account that can receive transfers.
async fn add_destinations<S: AccountStore>(service: &WebhookService<S, FixedClock>) {
    for (n, (account, _)) in SPLITS.iter().enumerate() {
        let (header, body) =
            signed(&account_updated(&format!("evt_acct{n}"), account, NOW - 500, true, &[]), NOW);
        let reply = service.handle(Some(&header), &body).await;
        assert!(reply.body.contains("\"applied\""), "the destination is recorded: {}", reply.body);
    }
}

/// `plan_payment`: parsing the payment and planning its three transfers (pure).
fn bench_plan_payment(c: &mut Criterion) {
    let body = payment_body().into_bytes();
    assert_eq!(planned_transfers(&payment_of(&snapshot(&body))).len(), 3, "three transfers are planned");
    c.bench_function("plan_payment", |b| {
        b.iter(|| {
            let ParsedBody::Snapshot(event) = parse_event(black_box(&body)).expect("parses") else {
                panic!("a snapshot event");
            };
            let Some(FundEvent::Payment(payment)) = read_fund_event(&event) else { panic!("a payment") };
            plan_transfers(&payment, black_box(NOW))
        })
    });
}

/// `plan_refund`: reading the refund and planning reversals against three transfers and the three
/// reversals of the earlier refund (pure).
fn bench_plan_refund(c: &mut Criterion) {
    let (_, steps, event) = refunded_payment();
    assert_eq!(steps.len(), 6, "the earlier refund reversed each transfer");
    let planned = |event: &Event| {
        let Some(FundEvent::Refund(refund)) = read_fund_event(event) else { panic!("a refund") };
        plan_reversals(&refund, &steps, NOW).expect("the refund plans").0
    };
    let amounts: Vec<i64> = planned(&event).iter().map(|step| step.amount).collect();
    // 6,000 of 10,000 refunded: each transfer back to 60% of itself, less what 25% already took.
    assert_eq!(amounts, [1_750, 700, 525], "the new reversals top up to the cumulative share");
    c.bench_function("plan_refund", |b| b.iter(|| planned(black_box(&event))));
}

/// The three sent transfers of the sample payment, the reversals of an earlier refund of 2,500, and
/// the payment's guard, with the refund recorded.
fn refunded_payment() -> (PaymentRecord, Vec<Step>, Event) {
    let payment = payment_of(&snapshot(payment_body().as_bytes()));
    let context = fund_context();
    let mut record = plan_payment(&payment, None, &context).payment.expect("the payment plans");
    let mut transfers = planned_transfers(&payment);
    for (n, transfer) in transfers.iter_mut().enumerate() {
        transfer.status = StepStatus::Succeeded;
        transfer.stripe_id = Some(format!("tr_1QcFlowBench{n:010}"));
        transfer.version = 2;
    }
    let event = snapshot(REFUND_EVENT.as_bytes());
    let Some(FundEvent::Refund(refund)) = read_fund_event(&event) else { panic!("a refund") };
    let earlier = shared::domain::funds::Refund { amount_refunded: 2_500, ..refund };
    let (mut reversals, reduced) = plan_reversals(&earlier, &transfers, NOW).expect("the first refund plans");
    assert!(reduced.is_empty(), "every transfer was sent");
    for reversal in &mut reversals {
        reversal.status = StepStatus::Succeeded;
    }
    record.refund = Some(earlier);
    (record, transfers.into_iter().chain(reversals).collect(), event)
}

fn fund_context() -> FundContext<'static> {
    FundContext {
        event_id: "evt_bench",
        event_type: "bench",
        livemode: Some(false),
        now: NOW,
        policy: DisputePolicy::Reverse,
    }
}

/// An event about the refund event's charge, of `event_type`, with `object`'s fields added.
fn about_the_charge(refund_event: &Event, event_type: &str, mut object: Value) -> Event {
    let Some(FundEvent::Refund(refund)) = read_fund_event(refund_event) else { panic!("a refund") };
    object["charge"] = json!(refund.charge_id);
    object["payment_intent"] = json!(refund.payment_key);
    let body = json!({"id": "evt_1QcFlowBenchDispute", "object": "event", "type": event_type,
        "created": refund_event.created + 100, "livemode": false, "data": {"object": object}});
    snapshot(body.to_string().as_bytes())
}

/// `plan_dispute`: the whole charge disputed, its funds withdrawn, after a refund of 25% (pure).
fn bench_plan_dispute(c: &mut Criterion) {
    let (record, steps, refund_event) = refunded_payment();
    let event = about_the_charge(
        &refund_event,
        "charge.dispute.funds_withdrawn",
        json!({"id": "dp_1QcFlowBench", "object": "dispute", "amount": 7_500, "currency": "usd",
            "status": "needs_response", "reason": "fraudulent"}),
    );
    let context = fund_context();
    let planned = |event: &Event| {
        let Some(FundEvent::Dispute(dispute)) = read_fund_event(event) else { panic!("a dispute") };
        plan_dispute(&dispute, Some(&record), &steps, &[], &context)
    };
    let plan = planned(&event);
    assert_eq!(plan.new_steps.len(), 3, "each transfer's share of the dispute is reversed");
    c.bench_function("plan_dispute", |b| b.iter(|| planned(black_box(&event))));
}

/// `plan_refund_failure`: the earlier refund of 2,500 failed; its reversals are transferred back (pure).
fn bench_plan_refund_failure(c: &mut Criterion) {
    let (record, steps, refund_event) = refunded_payment();
    // Made before the refund snapshot that counted it, failed after it.
    let refund_created = refund_event.created - 10;
    let event = about_the_charge(
        &refund_event,
        "refund.updated",
        json!({"id": "re_1QcFlowBench", "object": "refund", "amount": 2_500, "currency": "usd",
            "status": "failed", "created": refund_created}),
    );
    let context = fund_context();
    let planned = |event: &Event| {
        let Some(FundEvent::RefundFailed(failure)) = read_fund_event(event) else {
            panic!("a failed refund")
        };
        plan_refund_failure(&failure, Some(&record), &steps, &context)
    };
    let plan = planned(&event);
    assert_eq!(plan.new_steps.len(), 3, "each reversal is transferred back");
    c.bench_function("plan_refund_failure", |b| b.iter(|| planned(black_box(&event))));
}

/// `pipeline_payment_sqlite_in_memory`: a fresh payment with three splits through
/// `WebhookService::handle` on an in-memory store with the embedded queue. Each iteration is a new
/// event of a new payment, signed in the batch setup; the reply is asserted `applied`.
fn bench_pipeline_payment(c: &mut Criterion) {
    let runtime = runtime();
    let template = payment_body();
    let store = sqlite_store();
    let service = pipeline(store.clone()).with_queue(Arc::new(store.clone()));
    runtime.block_on(add_destinations(&service));
    let mut n = 0;
    let mut fresh_delivery = || {
        n += 1;
        signed(&fresh_payment(&template, n), NOW)
    };
    let (header, body) = fresh_delivery();
    let reply = runtime.block_on(service.handle(Some(&header), &body));
    assert!(reply.body.contains("\"applied\""), "a fresh payment plans its transfers: {}", reply.body);
    let queued = store.receive(Queue::Transfers, NOW, 30, 10).expect("the embedded queue reads");
    assert_eq!(queued.len(), 3, "the three transfers are queued after the commit");
    c.bench_function("pipeline_payment_sqlite_in_memory", |b| {
        b.iter_batched(
            &mut fresh_delivery,
            |(header, body)| {
                let reply = runtime.block_on(service.handle(Some(&header), &body));
                assert!(reply.body.contains("\"applied\""), "the payment applies");
                reply
            },
            BatchSize::SmallInput,
        )
    });
}

/// `worker_step_against_stub`: `StepWorker::run` of one queued transfer step to success: read the
/// step and its destination, record it in flight, create the transfer on the stand-in Stripe over
/// loopback HTTP, record it succeeded. Each step is new, committed in the batch setup with
/// `EventWrite::with_steps`; the platform balance is topped up there too.
fn bench_worker_step(c: &mut Criterion) {
    let runtime = runtime();
    let stub = runtime.block_on(StripeStub::start());
    for (account, _) in SPLITS {
        stub.add_account(account, true, true);
    }
    let store = sqlite_store();
    runtime.block_on(add_destinations(&pipeline(store.clone())));
    let stripe = StripeClient::new(stub.client_config()).expect("the stub's client configuration is valid");
    let worker = StepWorker::with_clock(store.clone(), stripe, FixedClock(NOW));
    let template = payment_body();
    let mut n = 0;
    let mut fresh_step = || {
        n += 1;
        stub.set_platform_balance("usd", 1_000_000_000);
        let event = fresh_payment(&template, n);
        let step = planned_transfers(&payment_of(&snapshot(event.to_string().as_bytes()))).remove(0);
        let event_id = event["id"].as_str().expect("the event has an id");
        let committed = runtime.block_on(store_planned_steps(&store, event_id, std::slice::from_ref(&step)));
        assert_eq!(committed.expect("the step commits"), CommitOutcome::Committed);
        step.reference()
    };
    let first = fresh_step();
    let done = runtime.block_on(worker.run(&first)).expect("the worker runs the step");
    assert_eq!(done, Disposition::Done(StepStatus::Succeeded), "the transfer is made");
    assert_eq!(stub.transfers().len(), 1, "one transfer on the stand-in Stripe");
    c.bench_function("worker_step_against_stub", |b| {
        b.iter_batched(
            &mut fresh_step,
            |step| {
                let done = runtime.block_on(worker.run(&step)).expect("the worker runs the step");
                assert_eq!(done, Disposition::Done(StepStatus::Succeeded), "the transfer is made");
            },
            BatchSize::SmallInput,
        )
    });
    let transfers = stub.transfers();
    assert_eq!(transfers.len() as u64, n, "every step set up made exactly one transfer");
}

/// Short runs: these are slower per iteration than the hot path, and medians are what BENCHMARKS.md
/// quotes.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = fund_flows;
    config = config();
    targets = bench_plan_payment, bench_plan_refund, bench_plan_dispute, bench_plan_refund_failure,
        bench_pipeline_payment, bench_worker_step
}
criterion_main!(fund_flows);
