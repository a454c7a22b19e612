use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::stripe::event::{ParsedBody, parse_event};

/// 2025-06-10 00:00:00 UTC.
const JUNE: i64 = 1_749_513_600;
/// 2025-07-02 00:00:00 UTC.
const JULY: i64 = 1_751_414_400;

fn event(event_type: &str, created: i64, account: Option<&str>, object: Value) -> Event {
    let mut body = json!({"id": "evt_1", "object": "event", "type": event_type, "created": created,
        "data": {"object": object}});
    if let Some(account) = account {
        body["account"] = json!(account);
    }
    match parse_event(body.to_string().as_bytes()) {
        Ok(ParsedBody::Snapshot(event)) => event,
        other => panic!("not a snapshot event: {other:?}"),
    }
}

fn destination_charge(refunded: i64, method: &str) -> Value {
    json!({"id": "ch_d", "object": "charge", "status": "succeeded", "amount": 10_000,
        "amount_captured": 10_000, "amount_refunded": refunded, "currency": "usd", "created": JUNE,
        "application_fee": "fee_d", "application_fee_amount": 1_000, "on_behalf_of": "acct_seller",
        "transfer_data": {"destination": "acct_seller", "amount": null},
        "payment_method_details": {"type": method}})
}

fn fee(id: &str, charge: &str, currency: &str, amount: i64, refunded: i64) -> Value {
    json!({"id": id, "object": "application_fee", "account": "acct_seller", "amount": amount,
        "amount_refunded": refunded, "charge": "py_x", "originating_transaction": charge,
        "currency": currency, "created": JUNE + 5})
}

fn month(text: &str) -> Month {
    Month::parse(text).unwrap()
}

fn seller() -> AccountId {
    AccountId::parse("acct_seller").unwrap()
}

fn bucket(currency: &str, at: &str) -> Bucket {
    Bucket { account: seller(), month: month(at), currency: currency.to_owned() }
}

/// Applies each event in turn as the store would, and returns the entry and every bucket's totals.
fn apply_all(events: &[LedgerEvent]) -> (Option<LedgerEntry>, BTreeMap<Bucket, Totals>) {
    let mut entry: Option<LedgerEntry> = None;
    let mut totals: BTreeMap<Bucket, Totals> = BTreeMap::new();
    for event in events {
        if let LedgerDecision::Apply(plan) = plan_ledger(entry.as_ref(), event) {
            for (bucket, delta) in &plan.deltas {
                let slot = totals.entry(bucket.clone()).or_default();
                *slot = slot.plus(*delta);
            }
            entry = Some(plan.entry);
        }
    }
    totals.retain(|_, totals| !totals.is_zero());
    (entry, totals)
}

#[test]
fn months_parse_strictly_and_count_inclusively() {
    assert_eq!(month("2025-06").to_string(), "2025-06");
    assert_eq!(Month::of_unix(JUNE), Some(month("2025-06")));
    assert_eq!(Month::of_unix(JULY - 1), Some(month("2025-07")));
    assert_eq!(Month::of_unix(1_751_328_000 - 1), Some(month("2025-06")), "the last second of June");
    for bad in
        ["2025-13", "2025-00", "2025-6", "25-06", "2025/06", "2025-06-01", "", "1969-12", "２０２５-06"]
    {
        assert_eq!(Month::parse(bad), None, "{bad}");
    }
    assert_eq!(month("2025-06").months_since(month("2025-06")), 1);
    assert_eq!(month("2026-05").months_since(month("2024-06")), 24);
    assert_eq!(month("2024-06").months_since(month("2025-06")), -11);
    assert_eq!(month("2025-07").start_unix(), 1_751_328_000);
    assert_eq!(Month::of_unix(-1), None);
    let json = serde_json::to_string(&month("2025-06")).unwrap();
    assert_eq!(json, "\"2025-06\"");
    assert!(serde_json::from_str::<Month>("\"2025-13\"").is_err());
}

#[test]
fn a_destination_charge_is_booked_against_its_seller_with_its_fee() {
    let read =
        read_ledger_event(&event("charge.succeeded", JUNE, None, destination_charge(0, "card"))).unwrap();
    assert_eq!(read.key, "ch_d");
    let (entry, totals) = apply_all(&[read]);
    let charge = &entry.unwrap().charge.unwrap().part;
    assert!(charge.destination);
    assert_eq!(
        (charge.fee_id.as_deref(), charge.on_behalf_of.as_deref()),
        (Some("fee_d"), Some("acct_seller"))
    );
    let june = totals[&bucket("usd", "2025-06")];
    assert_eq!((june.payments, june.gross, june.fees, june.refunds), (1, 10_000, 1_000, 0));
    assert_eq!((june.net_fees(), june.net()), (1_000, 9_000));
    assert_eq!((june.in_person_payments, june.transfers), (0, 0));
}

#[test]
fn the_fee_object_replaces_the_charges_fee_amount_never_adds_to_it() {
    let charge =
        read_ledger_event(&event("charge.succeeded", JUNE, None, destination_charge(0, "card"))).unwrap();
    let fee_created = read_ledger_event(&event(
        "application_fee.created",
        JUNE + 1,
        None,
        fee("fee_d", "ch_d", "usd", 1_000, 0),
    ))
    .unwrap();
    assert_eq!(fee_created.key, "ch_d", "a destination charge's fee belongs to the platform charge");
    let refunded = read_ledger_event(&event(
        "application_fee.refunded",
        JUNE + 2,
        None,
        fee("fee_d", "ch_d", "usd", 1_000, 400),
    ))
    .unwrap();
    for order in [
        vec![charge.clone(), fee_created.clone(), refunded.clone()],
        vec![refunded.clone(), charge.clone(), fee_created.clone()],
        vec![fee_created.clone(), refunded.clone(), refunded.clone(), charge.clone()],
    ] {
        let (_, totals) = apply_all(&order);
        let june = totals[&bucket("usd", "2025-06")];
        assert_eq!((june.fees, june.fees_refunded, june.net_fees()), (1_000, 400, 600));
    }
}

#[test]
fn a_fee_in_another_currency_is_booked_in_its_own_currency() {
    let charge = json!({"id": "ch_e", "object": "charge", "status": "succeeded", "amount_captured": 5_000,
        "amount_refunded": 0, "currency": "eur", "created": JUNE, "application_fee_amount": 500,
        "application_fee": "fee_e", "transfer_data": {"destination": "acct_seller"}});
    let charge = read_ledger_event(&event("charge.succeeded", JUNE, None, charge)).unwrap();
    let fee =
        read_ledger_event(&event("application_fee.created", JUNE, None, fee("fee_e", "ch_e", "usd", 550, 0)))
            .unwrap();
    let (_, before) = apply_all(std::slice::from_ref(&charge));
    assert_eq!(before[&bucket("eur", "2025-06")].fees, 500, "the charge's fee, until the fee is seen");
    let (_, totals) = apply_all(&[charge, fee]);
    assert_eq!(totals[&bucket("eur", "2025-06")].fees, 0);
    assert_eq!(totals[&bucket("eur", "2025-06")].gross, 5_000);
    assert_eq!(totals[&bucket("usd", "2025-06")].fees, 550, "recorded as is, never converted");
}

#[test]
fn refunds_with_and_without_a_transfer_reversal() {
    let charge =
        read_ledger_event(&event("charge.succeeded", JUNE, None, destination_charge(0, "card"))).unwrap();
    let refund = |id: &str, amount: i64, reversal: Value, status: &str, at: i64| {
        let object = json!({"id": id, "object": "refund", "amount": amount, "charge": "ch_d",
            "currency": "usd", "status": status, "transfer_reversal": reversal, "created": JULY});
        read_ledger_event(&event("refund.updated", at, None, object)).unwrap()
    };
    let refunded =
        read_ledger_event(&event("charge.refunded", JULY, None, destination_charge(7_000, "card"))).unwrap();
    let reversed = refund("re_1", 3_000, json!("trr_1"), "succeeded", JULY);
    let absorbed = refund("re_2", 4_000, Value::Null, "succeeded", JULY);
    let (_, totals) = apply_all(&[charge.clone(), refunded.clone(), reversed.clone(), absorbed.clone()]);
    let june = totals[&bucket("usd", "2025-06")];
    assert_eq!(june.refunds, 7_000, "booked in the payment's month");
    assert_eq!(june.platform_absorbed_refunds, 4_000, "only the refund that reversed no transfer");
    assert_eq!(june.net(), 10_000 - 1_000 - 7_000);
    // The absorbed refund fails: Stripe puts the money back and lowers amount_refunded.
    let failed = refund("re_2", 4_000, Value::Null, "failed", JULY + 10);
    let lowered =
        read_ledger_event(&event("charge.refunded", JULY + 10, None, destination_charge(3_000, "card")))
            .unwrap();
    let (_, totals) = apply_all(&[charge, refunded, reversed, absorbed, failed, lowered]);
    let june = totals[&bucket("usd", "2025-06")];
    assert_eq!((june.refunds, june.platform_absorbed_refunds), (3_000, 0));
}

#[test]
fn a_refund_newer_than_the_charges_snapshot_counts_as_refunded() {
    let charge =
        read_ledger_event(&event("charge.succeeded", JUNE, None, destination_charge(0, "card"))).unwrap();
    let refund = json!({"id": "re_1", "object": "refund", "amount": 2_500, "charge": "ch_d", "currency": "usd",
        "status": "pending", "transfer_reversal": "trr_1", "created": JULY});
    let refund = read_ledger_event(&event("refund.created", JULY, None, refund)).unwrap();
    let (_, totals) = apply_all(&[charge.clone(), refund.clone()]);
    let june = totals[&bucket("usd", "2025-06")];
    assert_eq!((june.refunds, june.platform_absorbed_refunds), (2_500, 0));
    let (entry, _) = apply_all(std::slice::from_ref(&refund));
    assert_eq!(entry, None, "a refund of a charge never recorded is not kept");
    // The charge's own cumulative figure, once it says more, wins.
    let refunded =
        read_ledger_event(&event("charge.refunded", JULY + 1, None, destination_charge(4_000, "card")))
            .unwrap();
    let (_, totals) = apply_all(&[refunded, refund, charge]);
    assert_eq!(totals[&bucket("usd", "2025-06")].refunds, 4_000);
}

#[test]
fn a_charges_listed_refunds_say_whether_the_transfer_was_reversed() {
    let mut charge = destination_charge(2_000, "card");
    charge["refunds"] = json!({"object": "list", "data": [
        {"id": "re_9", "object": "refund", "amount": 2_000, "charge": "ch_d", "currency": "usd",
         "status": "succeeded", "transfer_reversal": null}]});
    let (_, totals) = apply_all(&[read_ledger_event(&event("charge.refunded", JULY, None, charge)).unwrap()]);
    assert_eq!(totals[&bucket("usd", "2025-06")].platform_absorbed_refunds, 2_000);
}

#[test]
fn a_direct_charge_is_booked_on_its_account_and_in_person_kept_apart() {
    let charge = json!({"id": "ch_t", "object": "charge", "status": "succeeded", "amount": 2_500,
        "amount_captured": 2_500, "amount_refunded": 0, "currency": "cad", "created": JUNE,
        "application_fee_amount": 100, "payment_method_details": {"type": "interac_present"}});
    let read = read_ledger_event(&event("charge.captured", JUNE, Some("acct_seller"), charge)).unwrap();
    let (entry, totals) = apply_all(&[read]);
    assert!(!entry.unwrap().charge.unwrap().part.destination);
    let june = totals[&bucket("cad", "2025-06")];
    assert_eq!((june.payments, june.gross, june.fees), (1, 2_500, 100));
    assert_eq!((june.in_person_payments, june.in_person_gross), (1, 2_500));
    // A platform charge with no destination is not a seller's.
    let platform = json!({"id": "ch_p", "object": "charge", "status": "succeeded", "amount_captured": 1,
        "currency": "usd", "created": JUNE});
    assert_eq!(read_ledger_event(&event("charge.succeeded", JUNE, None, platform)), None);
}

#[test]
fn a_payment_intents_word_on_its_charge_yields_to_the_charge() {
    let intent = json!({"id": "pi_d", "object": "payment_intent", "status": "succeeded", "amount": 10_000,
        "amount_received": 10_000, "currency": "usd", "created": JUNE, "latest_charge": "ch_d",
        "application_fee_amount": 1_000, "payment_method_types": ["card_present"],
        "transfer_data": {"destination": "acct_seller"}});
    let intent = read_ledger_event(&event("payment_intent.succeeded", JUNE + 60, None, intent)).unwrap();
    assert_eq!(intent.key, "ch_d");
    let charge =
        read_ledger_event(&event("charge.refunded", JUNE, None, destination_charge(500, "card"))).unwrap();
    for order in [vec![intent.clone(), charge.clone()], vec![charge.clone(), intent.clone()]] {
        let (entry, totals) = apply_all(&order);
        assert_eq!(entry.unwrap().charge.unwrap().rank, 2);
        let june = totals[&bucket("usd", "2025-06")];
        assert_eq!((june.payments, june.gross, june.refunds, june.in_person_payments), (1, 10_000, 500, 0));
    }
    let (_, alone) = apply_all(&[intent]);
    assert_eq!(alone[&bucket("usd", "2025-06")].in_person_gross, 10_000);
}

#[test]
fn disputes_count_net_of_reinstatement_and_only_against_a_recorded_charge() {
    let dispute = json!({"id": "dp_1", "object": "dispute", "charge": "ch_d", "amount": 10_000,
        "currency": "usd", "status": "needs_response"});
    let withdrawn =
        read_ledger_event(&event("charge.dispute.funds_withdrawn", JULY, None, dispute.clone())).unwrap();
    let reinstated =
        read_ledger_event(&event("charge.dispute.funds_reinstated", JULY + 5, None, dispute)).unwrap();
    let (entry, totals) = apply_all(std::slice::from_ref(&withdrawn));
    assert_eq!((entry, totals.is_empty()), (None, true), "a dispute of a charge never recorded: nothing");
    let charge =
        read_ledger_event(&event("charge.succeeded", JUNE, None, destination_charge(0, "card"))).unwrap();
    let (_, totals) = apply_all(&[charge.clone(), withdrawn.clone()]);
    assert_eq!(totals[&bucket("usd", "2025-06")].disputes, 10_000);
    assert_eq!(totals[&bucket("usd", "2025-06")].net(), -1_000);
    // A late withdrawal never undoes the reinstatement.
    let (_, totals) = apply_all(&[charge, reinstated, withdrawn]);
    assert_eq!(totals[&bucket("usd", "2025-06")].disputes, 0);
}

#[test]
fn transfers_count_toward_nec_except_a_destination_charges_own() {
    let transfer = |id: &str, source: Value, reversed: i64| {
        json!({"id": id, "object": "transfer", "destination": "acct_seller", "amount": 7_000,
            "amount_reversed": reversed, "currency": "usd", "created": JULY, "source_transaction": source})
    };
    let separate =
        read_ledger_event(&event("transfer.created", JULY, None, transfer("tr_1", json!("ch_s"), 0)))
            .unwrap();
    let reversed = read_ledger_event(&event(
        "transfer.reversed",
        JULY + 1,
        None,
        transfer("tr_1", json!("ch_s"), 1_750),
    ))
    .unwrap();
    assert_eq!(separate.key, "ch_s");
    let (_, totals) = apply_all(&[reversed, separate]);
    let july = totals[&bucket("usd", "2025-07")];
    assert_eq!((july.transfers, july.gross, july.payments), (5_250, 0, 0));
    let own = read_ledger_event(&event("transfer.created", JUNE, None, transfer("tr_2", json!("ch_d"), 0)))
        .unwrap();
    let charge =
        read_ledger_event(&event("charge.succeeded", JUNE, None, destination_charge(0, "card"))).unwrap();
    let (_, totals) = apply_all(&[own, charge]);
    assert_eq!(totals.values().map(|totals| totals.transfers).sum::<i64>(), 0);
    let unsourced =
        read_ledger_event(&event("transfer.created", JULY, None, transfer("tr_3", Value::Null, 0))).unwrap();
    assert_eq!(unsourced.key, "tr_3");
}

#[test]
fn outcomes_say_whether_the_event_told_the_ledger_anything() {
    let created =
        read_ledger_event(&event("application_fee.created", JUNE, None, fee("fee_1", "ch_1", "usd", 100, 0)))
            .unwrap();
    let refunded = read_ledger_event(&event(
        "application_fee.refunded",
        JUNE + 9,
        None,
        fee("fee_1", "ch_1", "usd", 100, 50),
    ))
    .unwrap();
    let first = plan_ledger(None, &refunded);
    assert_eq!(first.outcome(), EventOutcome::Applied);
    let LedgerDecision::Apply(plan) = first else { panic!("applies") };
    assert_eq!(plan.entry.version, 1);
    assert_eq!(
        plan_ledger(Some(&plan.entry), &refunded),
        LedgerDecision::Unchanged,
        "the same snapshot again"
    );
    assert_eq!(plan_ledger(Some(&plan.entry), &created).outcome(), EventOutcome::Stale, "an older snapshot");
    let later_same = read_ledger_event(&event(
        "application_fee.refunded",
        JUNE + 20,
        None,
        fee("fee_1", "ch_1", "usd", 100, 50),
    ))
    .unwrap();
    let LedgerDecision::Apply(bump) = plan_ledger(Some(&plan.entry), &later_same) else { panic!("kept") };
    assert!(bump.deltas.is_empty() && !bump.news && bump.entry.version == 2);
    let unread = event(
        "application_fee.refund.updated",
        JUNE,
        None,
        json!({"id": "fr_1", "object": "fee_refund", "fee": "fee_1"}),
    );
    assert_eq!((read_ledger_event(&unread), unread_outcome(&unread)), (None, Some(EventOutcome::Unchanged)));
    let garbled =
        event("application_fee.created", JUNE, None, json!({"id": "fee_2", "object": "application_fee"}));
    assert_eq!(
        (read_ledger_event(&garbled), unread_outcome(&garbled)),
        (None, Some(EventOutcome::Unreadable))
    );
    assert_eq!(unread_outcome(&event("charge.succeeded", JUNE, None, json!({}))), None);
}

#[test]
fn malformed_objects_are_not_read() {
    for (event_type, object) in [
        (
            "charge.succeeded",
            json!({"id": "ch_1", "object": "charge", "amount_captured": "100", "currency": "usd",
            "created": JUNE, "transfer_data": {"destination": "acct_1"}}),
        ),
        (
            "charge.succeeded",
            json!({"id": "ch_1", "object": "charge", "amount_captured": 100, "currency": "usd",
            "created": JUNE, "transfer_data": {"destination": "not-an-account"}}),
        ),
        (
            "charge.succeeded",
            json!({"id": "ch_1", "object": "charge", "status": "failed", "amount_captured": 0,
            "currency": "usd", "created": JUNE, "transfer_data": {"destination": "acct_1"}}),
        ),
        (
            "application_fee.created",
            json!({"id": "fee_1", "object": "application_fee", "account": "acct_1",
            "amount": 1.5, "currency": "usd", "created": JUNE}),
        ),
        (
            "charge.dispute.funds_withdrawn",
            json!({"id": "dp_1", "object": "dispute", "amount": 1, "currency": "usd"}),
        ),
        (
            "transfer.created",
            json!({"id": "tr_1", "object": "transfer", "destination": "acct_1", "amount": 1,
            "currency": "usd", "created": -5}),
        ),
        ("refund.created", json!([1, 2])),
    ] {
        assert_eq!(
            read_ledger_event(&event(event_type, JUNE, None, object.clone())),
            None,
            "{event_type} {object}"
        );
    }
}

#[test]
fn tax_flags_follow_the_thresholds_and_the_year() {
    let thresholds = TaxThresholds::default();
    let usd = |gross: i64, payments: i64, transfers: i64| Totals {
        gross,
        payments,
        transfers,
        ..Totals::default()
    };
    let flags = |year, totals: &Totals| {
        let flags = thresholds.flags(year, totals);
        (flags.us_1099_k, flags.us_1099_nec)
    };
    assert_eq!(flags(2026, &usd(2_000_001, 201, 0)), (true, false));
    assert_eq!(flags(2026, &usd(2_000_000, 500, 0)), (false, false), "not above $20,000");
    assert_eq!(flags(2026, &usd(9_000_000, 200, 0)), (false, false), "not above 200 payments");
    assert_eq!(flags(2026, &usd(0, 0, 200_000)), (false, true));
    assert_eq!(flags(2026, &usd(0, 0, 199_999)), (false, false));
    assert_eq!(flags(2025, &usd(0, 0, 60_000)), (false, true), "before 2026 the old $600");
}

/// One object's snapshots, as a test generates them.
#[derive(Debug, Clone)]
enum Object {
    Charge { rank: u8, refunded: i64, method: &'static str },
    Fee { refunded: i64, currency: &'static str },
    Refund { id: usize, amount: i64, failed: bool, reversed: bool },
    Dispute { id: usize, reinstated: bool },
    Transfer { id: usize, to_seller: bool, reversed: i64 },
}

fn object_strategy() -> impl Strategy<Value = Object> {
    prop_oneof![
        (1u8..=2, 0i64..=10_000, prop::sample::select(vec!["card", "card_present", "interac_present"]))
            .prop_map(|(rank, refunded, method)| Object::Charge { rank, refunded, method }),
        (0i64..=1_000, prop::sample::select(vec!["usd", "eur"]))
            .prop_map(|(refunded, currency)| Object::Fee { refunded, currency }),
        (0usize..3, 1i64..=5_000, any::<bool>(), any::<bool>())
            .prop_map(|(id, amount, failed, reversed)| Object::Refund { id, amount, failed, reversed }),
        (0usize..2, any::<bool>()).prop_map(|(id, reinstated)| Object::Dispute { id, reinstated }),
        (0usize..2, any::<bool>(), 0i64..=3_000).prop_map(|(id, to_seller, reversed)| Object::Transfer {
            id,
            to_seller,
            reversed
        }),
    ]
}

fn part_of(object: &Object, as_of: i64) -> LedgerPart {
    let seller = seller();
    let june = month("2025-06");
    match object.clone() {
        Object::Charge { rank, refunded, method } => LedgerPart::Charge(Snapshot {
            rank,
            as_of,
            part: ChargePart {
                account: seller,
                destination: true,
                currency: "usd".into(),
                month: june,
                captured: 10_000,
                refunded,
                method: Some(method.into()),
                fee_amount: Some(1_000),
                fee_id: Some("fee_1".into()),
                on_behalf_of: None,
            },
        }),
        Object::Fee { refunded, currency } => LedgerPart::Fee(Snapshot {
            rank: 2,
            as_of,
            part: FeePart {
                fee_id: "fee_1".into(),
                account: seller,
                currency: currency.into(),
                month: june,
                amount: 1_000,
                refunded,
            },
        }),
        Object::Refund { id, amount, failed, reversed } => LedgerPart::Refund(
            format!("re_{id}"),
            Snapshot {
                rank: 1,
                as_of,
                part: RefundPart {
                    amount,
                    currency: "usd".into(),
                    status: if failed { "failed" } else { "succeeded" }.into(),
                    transfer_reversed: reversed,
                },
            },
        ),
        Object::Dispute { id, reinstated } => LedgerPart::Dispute(
            format!("dp_{id}"),
            Snapshot {
                rank: if reinstated { 2 } else { 1 },
                as_of,
                part: DisputePart { amount: 4_000, currency: "usd".into(), reinstated },
            },
        ),
        Object::Transfer { id, to_seller, reversed } => LedgerPart::Transfer(
            format!("tr_{id}"),
            Snapshot {
                rank: 1,
                as_of,
                part: TransferPart {
                    account: if to_seller { seller } else { AccountId::parse("acct_other").unwrap() },
                    currency: "usd".into(),
                    month: month("2025-07"),
                    amount: 7_000,
                    reversed,
                },
            },
        ),
    }
}

proptest! {
    /// Any sequence of deliveries after the charge's first (duplicates, any order, cumulative
    /// snapshots going up and down) ends at the totals of applying only the newest snapshot of each
    /// object, once.
    #[test]
    fn any_delivery_order_ends_at_the_newest_snapshots_totals(
        first_charge in (1u8..=2, 0i64..=10_000, 0i64..6),
        snapshots in prop::collection::vec((object_strategy(), 0i64..6), 1..14),
        order in prop::collection::vec(any::<prop::sample::Index>(), 1..40),
    ) {
        let (rank, refunded, at) = first_charge;
        let charge = Object::Charge { rank, refunded, method: "card" };
        let first = LedgerEvent { key: "ch_d".into(), parts: vec![part_of(&charge, JUNE + at)] };
        let mut events: Vec<LedgerEvent> = snapshots
            .iter()
            .map(|(object, at)| LedgerEvent { key: "ch_d".into(), parts: vec![part_of(object, JUNE + at)] })
            .collect();
        events.push(first.clone());
        // Every snapshot at least once, then repeats in any order.
        let mut deliveries: Vec<LedgerEvent> = order.iter().map(|index| events[index.index(events.len())].clone()).collect();
        deliveries.extend(events.iter().cloned());
        let rotate = order[0].index(deliveries.len());
        deliveries.rotate_left(rotate);
        // Stripe sends a charge when it is made, long before its refunds and disputes: one of its
        // snapshots comes first, and everything after it in any order, again and again.
        deliveries.insert(0, first);

        let (entry, totals) = apply_all(&deliveries);
        let entry = entry.expect("something was applied");

        let mut newest = LedgerEntry::new("ch_d");
        for event in &events {
            for part in &event.parts {
                newest.merge(part);
            }
        }
        let strip = |entry: &LedgerEntry| LedgerEntry { version: 0, ..entry.clone() };
        prop_assert_eq!(strip(&entry), strip(&newest));
        prop_assert_eq!(&totals, &contribution(&newest));
        // And the newest snapshot of each part is the greatest one generated.
        if let Some(charge) = &newest.charge {
            let greatest = events.iter().flat_map(|event| &event.parts).filter_map(|part| match part {
                LedgerPart::Charge(snapshot) => Some(snapshot),
                _ => None,
            }).max();
            prop_assert_eq!(Some(charge), greatest);
        }
    }

    #[test]
    fn arbitrary_objects_never_panic(object in prop::collection::vec(any::<i64>(), 6),
                                     event_type in prop::sample::select(vec!["charge.succeeded", "application_fee.created",
                                         "refund.updated", "charge.dispute.funds_withdrawn", "transfer.created", "payment_intent.succeeded"])) {
        let body = json!({"id": "x_1", "object": event_type.split('.').next().unwrap(), "amount": object[0],
            "amount_captured": object[1], "amount_refunded": object[2], "created": object[3], "currency": "usd",
            "charge": "ch_1", "account": "acct_1", "destination": "acct_1", "amount_received": object[4],
            "latest_charge": "ch_1", "transfer_data": {"destination": "acct_1"}, "amount_reversed": object[5]});
        if let Some(read) = read_ledger_event(&event(event_type, object[3], None, body)) {
            let _ = plan_ledger(None, &read);
        }
    }
}
