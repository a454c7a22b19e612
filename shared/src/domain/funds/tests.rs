use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::stripe::event::{ParsedBody, parse_event};

const NOW: i64 = 1_732_000_800;
const A: &str = "acct_1SellerA";
const B: &str = "acct_1SellerB";

fn event_from_json(envelope: &Value) -> Event {
    match parse_event(envelope.to_string().as_bytes()) {
        Ok(ParsedBody::Snapshot(event)) => event,
        other => panic!("not a snapshot event: {other:?}"),
    }
}

fn platform_event(event_type: &str, object: Value) -> Event {
    event_from_json(&json!({
        "id": "evt_1", "object": "event", "type": event_type, "created": NOW, "data": { "object": object }
    }))
}

fn connected_event(event_type: &str, account: &str, object: Value) -> Event {
    event_from_json(&json!({
        "id": "evt_2", "object": "event", "type": event_type, "created": NOW, "account": account,
        "data": { "object": object }
    }))
}

fn account(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn intent(metadata: Value) -> Value {
    json!({
        "id": "pi_1", "object": "payment_intent", "amount": 10000, "amount_received": 10000,
        "currency": "USD", "latest_charge": "ch_1", "metadata": metadata, "transfer_group": null,
        "status": "succeeded"
    })
}

fn charge(metadata: Value) -> Value {
    json!({
        "id": "ch_1", "object": "charge", "amount": 10000, "amount_captured": 10000, "captured": true,
        "amount_refunded": 0, "currency": "usd", "payment_intent": "pi_1", "metadata": metadata,
        "transfer_group": null, "refunded": false
    })
}

fn read_payment(event: &Event) -> Payment {
    match read_fund_event(event) {
        Some(FundEvent::Payment(payment)) => payment,
        other => panic!("not a payment: {other:?}"),
    }
}

fn payment(splits: &[(&str, &str)]) -> Payment {
    Payment {
        payment_key: "pi_1".into(),
        charge_id: Some("ch_1".into()),
        amount: 10000,
        currency: "usd".into(),
        transfer_group: None,
        splits: splits.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
        destination: None,
    }
}

fn context() -> FundContext<'static> {
    FundContext {
        event_id: "evt_1",
        event_type: "charge.refunded",
        livemode: None,
        now: NOW,
        policy: DisputePolicy::Reverse,
    }
}

fn planned(plan: TransferPlan) -> Vec<Step> {
    match plan {
        TransferPlan::Planned(steps) => steps,
        other => panic!("not planned: {other:?}"),
    }
}

fn refused(plan: TransferPlan) -> (String, Vec<Step>) {
    match plan {
        TransferPlan::Refused { reason, steps } => (reason, steps),
        other => panic!("not refused: {other:?}"),
    }
}

fn transfer_step(destination: &str, amount: i64) -> Step {
    Step {
        step_id: format!("tr:pi_1:{destination}").into(),
        kind: StepKind::Transfer,
        destination: account(destination),
        amount,
        currency: "usd".into(),
        source_charge: Some("ch_1".into()),
        transfer_group: Some("pi_1".into()),
        payment_key: Some("pi_1".into()),
        reverses_step: None,
        status: StepStatus::Queued,
        reason: None,
        stripe_id: None,
        attempt: 0,
        created_at: NOW,
        updated_at: NOW,
        version: 0,
        livemode: None,
        netted: 0,
        sent_at: None,
        unresolved: None,
        requested: None,
        cause: None,
        gives_back: None,
        by_stripe: false,
        payout: None,
    }
}

fn refund(amount: i64, amount_refunded: i64) -> Refund {
    Refund {
        charge_id: "ch_1".into(),
        payment_key: "pi_1".into(),
        amount,
        amount_refunded,
        currency: "usd".into(),
        created: NOW,
    }
}

// Reading events.

#[test]
fn the_sample_payment_intent_event_reads_as_a_payment() {
    let path = format!("{}/../events/stripe/payment_intent.succeeded.json", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read(&path).unwrap();
    let Ok(ParsedBody::Snapshot(event)) = parse_event(&body) else { panic!("not a snapshot") };
    let payment = read_payment(&event);
    assert_eq!(payment.payment_key, "pi_3Qc4Mm6UfM1CId1946Rd3Nf6");
    assert_eq!(payment.charge_id.as_deref(), Some("ch_3Qc4Mm6UfM1CId1946Rd3Nf6"));
    assert_eq!(
        (payment.amount, payment.currency.as_str(), payment.transfer_group.as_deref()),
        (10000, "usd", None)
    );
    let steps = planned(plan_transfers(&payment, NOW));
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].step_id, "tr:pi_3Qc4Mm6UfM1CId1946Rd3Nf6:acct_1QcFlowDemo0001");
    assert_eq!(steps[0].amount, 7000);
}

#[test]
fn payment_intent_with_latest_charge_as_a_string() {
    let payment = read_payment(&platform_event(
        "payment_intent.succeeded",
        intent(json!({"transfer:acct_1SellerA": "7000", "order": "42"})),
    ));
    assert_eq!(payment.payment_key, "pi_1");
    assert_eq!(payment.charge_id.as_deref(), Some("ch_1"));
    assert_eq!((payment.amount, payment.currency.as_str()), (10000, "usd"));
    assert_eq!(payment.splits, BTreeMap::from([("transfer:acct_1SellerA".to_owned(), "7000".to_owned())]));
}

#[test]
fn payment_intent_with_latest_charge_expanded() {
    let mut object = intent(json!({}));
    object["latest_charge"] = json!({"id": "ch_9", "object": "charge", "amount": 10000});
    let payment = read_payment(&platform_event("payment_intent.succeeded", object));
    assert_eq!(payment.charge_id.as_deref(), Some("ch_9"));
}

#[test]
fn payment_intent_with_old_charges_data() {
    let mut object = intent(json!({}));
    object.as_object_mut().unwrap().remove("latest_charge");
    object["charges"] =
        json!({"object": "list", "data": [{"id": "ch_old", "object": "charge"}], "has_more": false});
    let payment = read_payment(&platform_event("payment_intent.succeeded", object.clone()));
    assert_eq!(payment.charge_id.as_deref(), Some("ch_old"));

    object["charges"] = json!({"object": "list", "data": []});
    assert_eq!(read_payment(&platform_event("payment_intent.succeeded", object)).charge_id, None);
}

#[test]
fn payment_intent_amount_falls_back_to_amount() {
    let mut object = intent(json!({}));
    object.as_object_mut().unwrap().remove("amount_received");
    object["amount"] = json!(4200);
    assert_eq!(read_payment(&platform_event("payment_intent.succeeded", object)).amount, 4200);
}

#[test]
fn payment_intent_transfer_group_is_kept() {
    let mut object = intent(json!({}));
    object["transfer_group"] = json!("ORDER_42");
    let payment = read_payment(&platform_event("payment_intent.succeeded", object));
    assert_eq!(payment.transfer_group.as_deref(), Some("ORDER_42"));
}

#[test]
fn charge_succeeded_reads_its_payment_intent_and_captured_amount() {
    let mut object = charge(json!({"transfer:acct_1SellerA": "7000"}));
    object["amount_captured"] = json!(9000);
    let payment = read_payment(&platform_event("charge.succeeded", object));
    assert_eq!(payment.payment_key, "pi_1");
    assert_eq!(payment.charge_id.as_deref(), Some("ch_1"));
    assert_eq!(payment.amount, 9000);
}

#[test]
fn charge_without_payment_intent_is_keyed_by_the_charge() {
    let mut object = charge(json!({}));
    object["payment_intent"] = Value::Null;
    object.as_object_mut().unwrap().remove("amount_captured");
    let payment = read_payment(&platform_event("charge.succeeded", object));
    assert_eq!((payment.payment_key.as_str(), payment.amount), ("ch_1", 10000));
}

#[test]
fn an_uncaptured_charge_is_not_a_payment_yet() {
    let mut object = charge(json!({"transfer:acct_1SellerA": "7000"}));
    object["captured"] = json!(false);
    object["amount_captured"] = json!(0);
    assert_eq!(read_fund_event(&platform_event("charge.succeeded", object)), None);
}

#[test]
fn intent_and_charge_triggers_plan_identical_steps() {
    let metadata = json!({"transfer:acct_1SellerA": "7000", "transfer:acct_1SellerB": "2000"});
    let by_intent = read_payment(&platform_event("payment_intent.succeeded", intent(metadata.clone())));
    let by_charge = read_payment(&platform_event("charge.succeeded", charge(metadata)));
    assert_eq!(by_intent, by_charge);
    let steps = planned(plan_transfers(&by_intent, NOW));
    assert_eq!(steps, planned(plan_transfers(&by_charge, NOW)));
    let ids: Vec<&str> = steps.iter().map(|step| step.step_id.as_str()).collect();
    assert_eq!(ids, ["tr:pi_1:acct_1SellerA", "tr:pi_1:acct_1SellerB"]);
}

#[test]
fn payment_events_of_connected_accounts_are_not_fund_events() {
    for (event_type, object) in [
        ("payment_intent.succeeded", intent(json!({"transfer:acct_1SellerA": "1"}))),
        ("charge.succeeded", charge(json!({}))),
        ("charge.refunded", charge(json!({}))),
    ] {
        assert_eq!(read_fund_event(&connected_event(event_type, A, object)), None, "{event_type}");
    }
}

#[test]
fn other_types_and_unreadable_objects_are_not_fund_events() {
    assert_eq!(read_fund_event(&platform_event("customer.created", json!({"id": "cus_1"}))), None);
    assert_eq!(read_fund_event(&platform_event("payment_intent.succeeded", json!([1, 2]))), None);
    assert_eq!(read_fund_event(&platform_event("payment_intent.succeeded", json!({"id": "pi_1"}))), None);
    let mut no_currency = intent(json!({}));
    no_currency["currency"] = json!(840);
    assert_eq!(read_fund_event(&platform_event("payment_intent.succeeded", no_currency)), None);
    let mut no_amount = charge(json!({}));
    no_amount["amount"] = json!("10000");
    no_amount["amount_captured"] = Value::Null;
    assert_eq!(read_fund_event(&platform_event("charge.succeeded", no_amount)), None);
    assert_eq!(read_fund_event(&platform_event("charge.refunded", json!({"id": "ch_1"}))), None);
    assert_eq!(read_fund_event(&platform_event("balance.available", json!({"available": []}))), None);
}

#[test]
fn odd_metadata_shapes_never_panic() {
    for metadata in [Value::Null, json!([]), json!("transfer:acct_1SellerA"), json!({})] {
        let payment = read_payment(&platform_event("payment_intent.succeeded", intent(metadata)));
        assert_eq!(plan_transfers(&payment, NOW), TransferPlan::NoSplits);
    }
}

#[test]
fn non_string_metadata_values_are_refused_not_dropped() {
    let metadata = json!({"transfer:acct_1SellerA": null, "transfer:acct_1SellerB": 2.5});
    let payment = read_payment(&platform_event("payment_intent.succeeded", intent(metadata)));
    assert_eq!(payment.splits.len(), 2);
    let (reason, steps) = refused(plan_transfers(&payment, NOW));
    assert!(reason.contains("\"null\"") && reason.contains("\"2.5\""), "{reason}");
    assert_eq!(steps.len(), 2);
}

#[test]
fn charge_refunded_reads_the_cumulative_refund() {
    let mut object = charge(json!({}));
    object["amount_refunded"] = json!(2500);
    object["refunded"] = json!(false);
    let Some(FundEvent::Refund(read)) = read_fund_event(&platform_event("charge.refunded", object)) else {
        panic!("not a refund")
    };
    assert_eq!(read, refund(10000, 2500));
}

#[test]
fn refund_of_a_partly_captured_charge_is_out_of_the_captured_amount() {
    let mut object = charge(json!({}));
    object["amount_captured"] = json!(6000);
    object["amount_refunded"] = json!(6000);
    object["payment_intent"] = Value::Null;
    let Some(FundEvent::Refund(read)) = read_fund_event(&platform_event("charge.refunded", object)) else {
        panic!("not a refund")
    };
    assert_eq!((read.payment_key.as_str(), read.amount, read.amount_refunded), ("ch_1", 6000, 6000));
}

#[test]
fn balance_available_reads_each_currency_of_a_connected_account() {
    let object = json!({
        "object": "balance",
        "available": [
            {"amount": 7000, "currency": "usd", "source_types": {"card": 7000}},
            {"amount": "oops", "currency": "eur"},
            {"amount": 300, "currency": "GBP"},
            "junk"
        ],
        "pending": [{"amount": 5, "currency": "usd"}]
    });
    let Some(FundEvent::BalanceAvailable(read)) =
        read_fund_event(&connected_event("balance.available", A, object))
    else {
        panic!("not a balance")
    };
    assert_eq!(read.account, account(A));
    let available: Vec<(&str, i64)> =
        read.entries.iter().map(|entry| (entry.currency.as_str(), entry.amount)).collect();
    assert_eq!(available, [("usd", 7000), ("gbp", 300)]);
}

#[test]
fn balance_available_needs_a_valid_connected_account() {
    let object = json!({"available": [{"amount": 7000, "currency": "usd"}]});
    assert_eq!(read_fund_event(&platform_event("balance.available", object.clone())), None);
    assert_eq!(read_fund_event(&connected_event("balance.available", "cus_1", object.clone())), None);
    assert_eq!(read_fund_event(&connected_event("balance.available", "acct_", object)), None);
}

// Planning transfers.

#[test]
fn planned_transfers_carry_every_field() {
    let mut payment = payment(&[("transfer:acct_1SellerA", "7000"), ("transfer:acct_1SellerB", "2000")]);
    payment.transfer_group = Some("ORDER_42".into());
    let steps = planned(plan_transfers(&payment, NOW));
    let mut expected_a = transfer_step(A, 7000);
    expected_a.transfer_group = Some("ORDER_42".into());
    expected_a.cause = Some(StepCause::new(CauseKind::Payment, "pi_1"));
    let mut expected_b = transfer_step(B, 2000);
    expected_b.transfer_group = Some("ORDER_42".into());
    expected_b.cause = Some(StepCause::new(CauseKind::Payment, "pi_1"));
    assert_eq!(steps, [expected_a, expected_b]);
}

#[test]
fn transfer_group_defaults_to_the_payment_key() {
    let steps = planned(plan_transfers(&payment(&[("transfer:acct_1SellerA", "1")]), NOW));
    assert_eq!(steps[0].transfer_group.as_deref(), Some("pi_1"));
}

#[test]
fn no_splits_plans_nothing() {
    assert_eq!(plan_transfers(&payment(&[]), NOW), TransferPlan::NoSplits);
}

#[test]
fn splits_up_to_the_amount_are_planned_and_the_platform_keeps_the_rest() {
    let exact = payment(&[("transfer:acct_1SellerA", "8000"), ("transfer:acct_1SellerB", "2000")]);
    assert_eq!(planned(plan_transfers(&exact, NOW)).len(), 2);
    let under = payment(&[("transfer:acct_1SellerA", "1")]);
    assert_eq!(planned(plan_transfers(&under, NOW))[0].amount, 1);
}

#[test]
fn a_malformed_key_refuses_the_whole_plan() {
    for key in ["transfer:", "transfer:cus_1", "transfer:acct_", "transfer:acct_1 ", "transfer:acct_1-2"] {
        let payment = payment(&[(key, "100"), ("transfer:acct_1SellerA", "100")]);
        let (reason, steps) = refused(plan_transfers(&payment, NOW));
        assert!(reason.contains("does not name a connected account"), "{key}: {reason}");
        assert_eq!(steps.len(), 1, "{key}: only the well-formed split is recorded");
        assert_eq!(steps[0].destination, account(A));
        assert_eq!(
            (steps[0].status, steps[0].reason.as_deref()),
            (StepStatus::Refused, Some(reason.as_str()))
        );
    }
}

#[test]
fn a_bad_amount_refuses_the_whole_plan() {
    for raw in
        ["", "0", "000", "-1", "+1", "1.5", "1.0", " 1", "1 ", "1e3", "abc", "9223372036854775808", "１"]
    {
        let payment = payment(&[("transfer:acct_1SellerA", raw), ("transfer:acct_1SellerB", "100")]);
        let (reason, steps) = refused(plan_transfers(&payment, NOW));
        assert!(reason.contains("not a positive whole number"), "{raw:?}: {reason}");
        let amounts: Vec<i64> = steps.iter().map(|step| step.amount).collect();
        assert_eq!(amounts, [0, 100], "{raw:?}");
        assert!(steps.iter().all(|step| step.status == StepStatus::Refused));
    }
}

#[test]
fn leading_zeros_and_the_largest_amount_are_plain_integers() {
    assert_eq!(parse_amount("007"), Some(7));
    assert_eq!(parse_amount("9223372036854775807"), Some(i64::MAX));
}

#[test]
fn splits_over_the_amount_are_refused() {
    let payment = payment(&[("transfer:acct_1SellerA", "7000"), ("transfer:acct_1SellerB", "3001")]);
    let (reason, steps) = refused(plan_transfers(&payment, NOW));
    assert!(reason.contains("total 10001 usd, more than the payment's 10000"), "{reason}");
    assert_eq!(steps.iter().map(|step| step.amount).collect::<Vec<_>>(), [7000, 3001]);
}

#[test]
fn splits_whose_sum_overflows_i64_are_refused_not_wrapped() {
    let max = i64::MAX.to_string();
    let mut payment = payment(&[("transfer:acct_1SellerA", &max), ("transfer:acct_1SellerB", &max)]);
    payment.amount = i64::MAX;
    let (reason, _) = refused(plan_transfers(&payment, NOW));
    assert!(reason.contains("more than the payment's"), "{reason}");
}

#[test]
fn a_payment_without_a_charge_is_refused() {
    let mut payment = payment(&[("transfer:acct_1SellerA", "7000")]);
    payment.charge_id = None;
    let (reason, steps) = refused(plan_transfers(&payment, NOW));
    assert!(reason.contains("no charge to use as source_transaction"), "{reason}");
    assert_eq!((steps.len(), steps[0].source_charge.as_deref()), (1, None));
}

#[test]
fn an_unknown_destination_is_planned_for_the_worker_to_check() {
    let payment = payment(&[("transfer:acct_1SellerA", "7000"), ("transfer:acct_1Stranger", "100")]);
    let steps = planned(plan_transfers(&payment, NOW));
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[1].step_id.as_str(), steps[1].status), ("tr:pi_1:acct_1Stranger", StepStatus::Queued));
}

#[test]
fn a_refusal_names_every_problem() {
    let mut payment = payment(&[
        ("transfer:bad", "5"),
        ("transfer:acct_1SellerA", "x"),
        ("transfer:acct_1Nobody", "20000"),
    ]);
    payment.charge_id = None;
    let (reason, steps) = refused(plan_transfers(&payment, NOW));
    for part in [
        "\"transfer:bad\" does not name",
        "\"transfer:acct_1SellerA\" has amount \"x\"",
        "total 20005",
        "no charge",
    ] {
        assert!(reason.contains(part), "missing {part:?} in {reason}");
    }
    assert_eq!(steps.len(), 2);
}

// Planning reversals.

/// The reversals a refund plans against `transfers` taken as sent (a queued one is marked
/// succeeded) and the reversals `existing` already recorded.
fn plan_reversals_of(
    refund: &Refund,
    transfers: &[Step],
    existing: &[Step],
    now: i64,
) -> Result<Vec<Step>, String> {
    let steps: Vec<Step> = transfers
        .iter()
        .map(|transfer| match transfer.status {
            StepStatus::Queued => Step { status: StepStatus::Succeeded, ..transfer.clone() },
            _ => transfer.clone(),
        })
        .chain(existing.iter().cloned())
        .collect();
    let (reversals, reduced) = plan_reversals(refund, &steps, now)?;
    assert_eq!(reduced, [], "every transfer was sent");
    Ok(reversals)
}

#[test]
fn a_partial_refund_reverses_each_share_rounded_down() {
    let transfers = [transfer_step(A, 7001), transfer_step(B, 2000)];
    let steps = plan_reversals_of(&refund(10000, 2500), &transfers, &[], NOW).unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].step_id, "trr:tr:pi_1:acct_1SellerA:1750");
    assert_eq!(
        (steps[0].kind, steps[0].amount, steps[0].destination.as_str()),
        (StepKind::Reversal, 1750, A)
    );
    assert_eq!(steps[0].reverses_step.as_deref(), Some("tr:pi_1:acct_1SellerA"));
    assert_eq!(steps[0].source_charge.as_deref(), Some("ch_1"));
    assert_eq!(steps[0].transfer_group.as_deref(), Some("pi_1"));
    assert_eq!(steps[0].payment_key.as_deref(), Some("pi_1"));
    assert_eq!((steps[0].status, steps[0].attempt, steps[0].created_at), (StepStatus::Queued, 0, NOW));
    assert_eq!((steps[1].step_id.as_str(), steps[1].amount), ("trr:tr:pi_1:acct_1SellerB:500", 500));
}

#[test]
fn a_full_refund_after_a_partial_one_reverses_the_rest() {
    let transfers = [transfer_step(A, 7001)];
    let first = plan_reversals_of(&refund(10000, 2500), &transfers, &[], NOW).unwrap();
    let rest = plan_reversals_of(&refund(10000, 10000), &transfers, &first, NOW).unwrap();
    assert_eq!((rest[0].step_id.as_str(), rest[0].amount), ("trr:tr:pi_1:acct_1SellerA:7001", 5251));
}

#[test]
fn a_repeated_refund_event_plans_nothing_new() {
    let transfers = [transfer_step(A, 7000)];
    let first = plan_reversals_of(&refund(10000, 5000), &transfers, &[], NOW).unwrap();
    assert_eq!(plan_reversals_of(&refund(10000, 5000), &transfers, &first, NOW + 5).unwrap(), []);
    // A lower cumulative refund (a refund failed; `plan_refund` lets only a newer snapshot get here)
    // gives back: the reversal not sent yet shrinks to the new share.
    let sent: Vec<Step> =
        transfers.iter().cloned().map(|step| Step { status: StepStatus::Succeeded, ..step }).collect();
    let steps: Vec<Step> = sent.into_iter().chain(first).collect();
    let (new_steps, shrunk) = plan_reversals(&refund(10000, 1000), &steps, NOW + 5).unwrap();
    assert_eq!(new_steps, []);
    assert_eq!((shrunk.len(), shrunk[0].amount, shrunk[0].status), (1, 700, StepStatus::Queued));
}

#[test]
fn failed_and_refused_steps_do_not_count() {
    let mut failed_transfer = transfer_step(B, 2000);
    failed_transfer.status = StepStatus::Failed;
    let mut refused_transfer = transfer_step("acct_1SellerC", 500);
    refused_transfer.status = StepStatus::Refused;
    let transfers = [transfer_step(A, 7000), failed_transfer, refused_transfer];
    let mut failed_reversal = plan_reversals_of(&refund(10000, 5000), &transfers, &[], NOW).unwrap();
    assert_eq!(failed_reversal.len(), 1);
    failed_reversal[0].status = StepStatus::Failed;
    let again = plan_reversals_of(&refund(10000, 10000), &transfers, &failed_reversal, NOW).unwrap();
    assert_eq!((again.len(), again[0].amount), (1, 7000));
}

#[test]
fn transfers_of_another_charge_are_left_alone() {
    let mut other = transfer_step(B, 2000);
    other.source_charge = Some("ch_other".into());
    let steps = plan_reversals_of(&refund(10000, 10000), &[transfer_step(A, 7000), other], &[], NOW).unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].destination, account(A));
}

#[test]
fn impossible_refunds_plan_nothing() {
    let transfers = [transfer_step(A, 7000)];
    for (amount, refunded, needle) in [
        (0, 0, "has amount 0"),
        (-5, 0, "has amount -5"),
        (10000, -1, "-1 refunded"),
        (10000, 10001, "10001 refunded of 10000"),
    ] {
        let plan = plan_refund(&refund(amount, refunded), None, &transfers, &context());
        assert_eq!(plan.outcome, crate::store::EventOutcome::Refused);
        let reason = plan.reason.unwrap_or_default();
        assert!(reason.contains(needle), "{reason}");
        assert_eq!((plan.payment, plan.new_steps, plan.step_updates), (None, vec![], vec![]));
    }
}

#[test]
fn a_currency_mismatch_plans_nothing() {
    let mut euro = refund(10000, 10000);
    euro.currency = "eur".into();
    let error = plan_reversals_of(&euro, &[transfer_step(A, 7000)], &[], NOW).unwrap_err();
    assert!(error.contains("is in eur but transfer tr:pi_1:acct_1SellerA is in usd"), "{error}");
}

#[test]
fn huge_amounts_do_not_overflow() {
    let transfers = [transfer_step(A, i64::MAX)];
    let steps = plan_reversals_of(&refund(i64::MAX, i64::MAX - 1), &transfers, &[], NOW).unwrap();
    assert_eq!(steps[0].amount, i64::MAX - 1);
}

// Properties.

fn amounts_reversed(stored: &[Step], transfer: &Step) -> i128 {
    stored
        .iter()
        .filter(|step| step.reverses_step.as_deref() == Some(transfer.step_id.as_str()))
        .map(|step| i128::from(step.amount))
        .sum()
}

fn share(transfer: &Step, refunded: i64, amount: i64) -> i128 {
    i128::from(transfer.amount) * i128::from(refunded) / i128::from(amount)
}

prop_compose! {
    /// A charge amount, transfers that fit in it, and refund events (cumulative amounts) in any
    /// order, repeated at will.
    fn refund_history()(amount in prop_oneof![1i64..=20_000, 1i64..=i64::MAX])(
        amount in Just(amount),
        transfers in proptest::collection::vec(1i64..=amount, 1..5),
        refunds in proptest::collection::vec(prop_oneof![0i64..=amount, Just(amount)], 1..12),
    ) -> (i64, Vec<i64>, Vec<i64>) {
        (amount, transfers, refunds)
    }
}

proptest! {
    #[test]
    fn reversals_add_up_exactly_and_never_over_reverse((amount, transfer_amounts, mut refunds) in refund_history()) {
        // Cumulative snapshots in the order Stripe made them; recovery/tests.rs drives any order.
        refunds.sort_unstable();
        let transfers: Vec<Step> = transfer_amounts
            .iter()
            .enumerate()
            .map(|(index, transfer_amount)| transfer_step(&format!("acct_1Seller{index}"), *transfer_amount))
            .collect();
        let mut stored: Vec<Step> = Vec::new();
        let mut most_refunded = 0;
        for refunded in refunds.iter().copied().chain([amount]) {
            most_refunded = most_refunded.max(refunded);
            let planned = plan_reversals_of(&refund(amount, refunded), &transfers, &stored, NOW).unwrap();
            prop_assert_eq!(&planned, &plan_reversals_of(&refund(amount, refunded), &transfers, &stored, NOW).unwrap());
            for step in planned {
                prop_assert!(step.amount > 0);
                prop_assert!(stored.iter().all(|earlier| earlier.step_id != step.step_id), "id reused: {}", step.step_id);
                stored.push(step);
            }
            for transfer in &transfers {
                let reversed = amounts_reversed(&stored, transfer);
                prop_assert_eq!(reversed, share(transfer, most_refunded, amount));
                prop_assert!(reversed <= i128::from(transfer.amount));
            }
            prop_assert_eq!(plan_reversals_of(&refund(amount, refunded), &transfers, &stored, NOW + 1).unwrap(), vec![]);
        }
        for transfer in &transfers {
            prop_assert_eq!(amounts_reversed(&stored, transfer), i128::from(transfer.amount));
        }
    }

    #[test]
    fn reversal_ids_are_deterministic_across_histories(
        (amount, transfer_amounts, mut refunds) in refund_history(),
    ) {
        refunds.sort_unstable();
        let transfers: Vec<Step> = transfer_amounts
            .iter()
            .enumerate()
            .map(|(index, transfer_amount)| transfer_step(&format!("acct_1Seller{index}"), *transfer_amount))
            .collect();
        let run = |now: i64| {
            let mut stored: Vec<Step> = Vec::new();
            for refunded in &refunds {
                stored.extend(plan_reversals_of(&refund(amount, *refunded), &transfers, &stored, now).unwrap());
            }
            stored.into_iter().map(|step| (step.step_id, step.amount)).collect::<Vec<_>>()
        };
        prop_assert_eq!(run(NOW), run(NOW + 1000));
    }

    #[test]
    fn split_parsing_never_panics_on_arbitrary_metadata(
        metadata in proptest::collection::btree_map(
            prop_oneof![
                "transfer:acct_[A-Za-z0-9]{1,6}",
                "transfer:\\PC{0,10}",
                "\\PC{0,12}",
                "\\PC{0,6}transfer:acct_1",
            ],
            prop_oneof!["[0-9]{1,20}", "[-+ .0-9e]{0,8}", "\\PC{0,12}", any::<i64>().prop_map(|n| n.to_string())],
            0..8,
        ),
        amount in prop_oneof![any::<i64>(), 0i64..100_000],
        with_charge in any::<bool>(),
    ) {
        let mut object = intent(json!(metadata));
        object["amount_received"] = json!(amount);
        if !with_charge {
            object["latest_charge"] = Value::Null;
        }
        let payment = read_payment(&platform_event("payment_intent.succeeded", object));
        let splits = payment.splits.len();
        // A key is a split, or a near miss (` transfer:`, `Transfer:`) kept so that it refuses the
        // payment rather than being dropped while the other splits are paid.
        let near_miss = |key: &str| !key.starts_with("transfer:");
        let looks_like_transfer =
            |key: &str| key.trim().get(..8).is_some_and(|head| head.eq_ignore_ascii_case("transfer"));
        let all_claim_a_split = payment.splits.keys().all(|key| !near_miss(key) || looks_like_transfer(key));
        prop_assert!(all_claim_a_split);
        let has_near_miss = payment.splits.keys().any(|key| near_miss(key));
        match plan_transfers(&payment, NOW) {
            TransferPlan::NoSplits => prop_assert_eq!(splits, 0),
            TransferPlan::Planned(steps) => {
                prop_assert!(with_charge && !has_near_miss);
                prop_assert_eq!(steps.len(), splits);
                prop_assert!(steps.iter().all(|step| step.amount > 0 && step.status == StepStatus::Queued));
                let total: i128 = steps.iter().map(|step| i128::from(step.amount)).sum();
                prop_assert!(total <= i128::from(amount));
            }
            TransferPlan::Refused { reason, steps } => {
                prop_assert!(!reason.is_empty());
                prop_assert!(steps.len() <= splits);
                prop_assert!(steps.iter().all(|step| step.status == StepStatus::Refused && step.reason.as_deref() == Some(reason.as_str())));
            }
        }
    }
}
