//! The ledger: what reading and planning costs per event kind, pure (no storage).
//!
//! Each benchmark is the envelope parse, `read_ledger_event` and `plan_ledger` of one delivery
//! against the entry stored before it, as the webhook does it before its commit. Benchmark names
//! are stable: BENCHMARKS.md quotes them.
//!
//! - `ledger_destination_charge`: `charge.succeeded` of a destination charge with a fee (sample #14),
//!   no entry yet.
//! - `ledger_terminal_charge`: a direct `card_present` charge on a connected account (sample #18).
//! - `ledger_payment_intent`: `payment_intent.succeeded` of a destination charge whose charge is
//!   not expanded (what the intent says of it), no entry yet.
//! - `ledger_fee_created`: `application_fee.created` (sample #15) against the charge's entry.
//! - `ledger_fee_refunded`: `application_fee.refunded` (sample #17) against the entry holding the
//!   charge, its fee and a refund.
//! - `ledger_refund`: `refund.created` without a transfer reversal (sample #16) against the charge's
//!   entry with its fee.
//! - `ledger_dispute`: `charge.dispute.funds_withdrawn` against the same entry.
//! - `ledger_transfer`: `transfer.created` of a separate charge's transfer, no entry yet.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use shared::domain::ledger::{LedgerDecision, LedgerEntry, plan_ledger, read_ledger_event};
use shared::stripe::event::{Event, ParsedBody, parse_event};

fn sample(name: &str) -> Vec<u8> {
    let path = format!("{}/../events/stripe/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn event(body: &[u8]) -> Event {
    match parse_event(body) {
        Ok(ParsedBody::Snapshot(event)) => event,
        other => panic!("not a snapshot event: {other:?}"),
    }
}

/// The entry after applying `bodies` in order.
fn entry_after(bodies: &[&[u8]]) -> Option<LedgerEntry> {
    let mut entry = None;
    for body in bodies {
        let read = read_ledger_event(&event(body)).expect("a ledger event");
        if let LedgerDecision::Apply(plan) = plan_ledger(entry.as_ref(), &read) {
            entry = Some(plan.entry);
        }
    }
    entry
}

fn envelope(event_type: &str, object: Value) -> Vec<u8> {
    json!({"id": "evt_1QcBenchLedger00000001", "object": "event", "api_version": "2024-06-20",
        "created": 1_732_001_000, "livemode": false, "type": event_type, "data": {"object": object}})
    .to_string()
    .into_bytes()
}

fn bench_one(c: &mut Criterion, name: &str, body: &[u8], stored: Option<&LedgerEntry>) {
    assert!(
        matches!(
            plan_ledger(stored, &read_ledger_event(&event(body)).expect("readable")),
            LedgerDecision::Apply(_)
        ),
        "{name} changes the ledger"
    );
    c.bench_function(name, |b| {
        b.iter(|| {
            let event = event(black_box(body));
            let read = read_ledger_event(&event).expect("readable");
            black_box(plan_ledger(stored, &read))
        })
    });
}

fn bench_ledger(c: &mut Criterion) {
    let charge = sample("charge.succeeded.destination");
    let fee = sample("application_fee.created");
    let refund = sample("refund.created");
    let fee_refunded = sample("application_fee.refunded");
    let terminal = sample("charge.succeeded.terminal");
    let charged = entry_after(&[&charge]);
    let with_fee = entry_after(&[&charge, &fee]);
    let refunded = entry_after(&[&charge, &fee, &refund]);
    let intent = envelope(
        "payment_intent.succeeded",
        json!({"id": "pi_3Qc7Lg2DsT4Fh1946Dest0002", "object": "payment_intent", "status": "succeeded",
            "amount": 20_000, "amount_received": 20_000, "currency": "usd", "created": 1_732_000_990,
            "latest_charge": "ch_3Qc7Lg2DsT4Fh1946Dest0002", "application_fee_amount": 2_000,
            "payment_method_types": ["card"], "transfer_data": {"destination": "acct_1QcFlowDemo0001"}}),
    );
    let dispute = envelope(
        "charge.dispute.funds_withdrawn",
        json!({"id": "dp_1Qc7Lg2DsT4Fh19Dispute01", "object": "dispute", "amount": 20_000, "currency": "usd",
            "charge": "ch_3Qc7Lg2DsT4Fh1946Dest0001", "status": "needs_response", "created": 1_732_000_995}),
    );
    let transfer = envelope(
        "transfer.created",
        json!({"id": "tr_1Qc7Lg2DsT4Fh19Transfer1", "object": "transfer", "amount": 7_000, "amount_reversed": 0,
            "currency": "usd", "destination": "acct_1QcFlowDemo0001", "created": 1_732_000_995,
            "source_transaction": "ch_3Qc4Mm6UfM1CId1946Rd3Nf6"}),
    );
    bench_one(c, "ledger_destination_charge", &charge, None);
    bench_one(c, "ledger_terminal_charge", &terminal, None);
    bench_one(c, "ledger_payment_intent", &intent, None);
    bench_one(c, "ledger_fee_created", &fee, charged.as_ref());
    bench_one(c, "ledger_fee_refunded", &fee_refunded, refunded.as_ref());
    bench_one(c, "ledger_refund", &refund, with_fee.as_ref());
    bench_one(c, "ledger_dispute", &dispute, with_fee.as_ref());
    bench_one(c, "ledger_transfer", &transfer, None);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = ledger;
    config = config();
    targets = bench_ledger
}
criterion_main!(ledger);
