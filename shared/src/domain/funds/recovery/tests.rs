use proptest::prelude::*;
use serde_json::json;

use super::super::*;
use super::*;
use crate::domain::account::AccountState;
use crate::store::EventOutcome;
use crate::stripe::event::{ParsedBody, parse_event};

const NOW: i64 = 1_732_000_800;
const A: &str = "acct_1SellerA";
const B: &str = "acct_1SellerB";

fn account_id(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn context(policy: DisputePolicy) -> FundContext<'static> {
    FundContext { event_id: "evt_1", event_type: "test", livemode: Some(false), now: NOW, policy }
}

/// A payment of 10000 usd split 6000 to A and 3000 to B, planned and both transfers made.
fn paid() -> (PaymentRecord, Vec<Step>) {
    let payment = Payment {
        payment_key: "pi_1".into(),
        charge_id: Some("ch_1".into()),
        amount: 10000,
        currency: "usd".into(),
        transfer_group: None,
        splits: [(format!("transfer:{A}"), "6000".to_owned()), (format!("transfer:{B}"), "3000".to_owned())]
            .into_iter()
            .collect(),
        destination: None,
    };
    let plan = plan_payment(&payment, None, &context(DisputePolicy::Reverse));
    assert_eq!(plan.outcome, EventOutcome::Applied);
    let steps = plan.new_steps.into_iter().map(made).collect();
    (plan.payment.unwrap(), steps)
}

/// The step as Stripe made it.
fn made(mut step: Step) -> Step {
    step.status = StepStatus::Succeeded;
    step.stripe_id = Some(format!("obj_{}", step.step_id.replace(':', "_")));
    step.version += 1;
    step
}

fn dispute(status: &str, withdrawn: bool, reinstated: bool, at: i64) -> Dispute {
    Dispute {
        dispute_id: "dp_1".into(),
        charge_id: "ch_1".into(),
        payment_key: "pi_1".into(),
        amount: 10000,
        currency: "usd".into(),
        status: status.into(),
        withdrawn,
        reinstated,
        at,
    }
}

fn snapshot(amount_refunded: i64, created: i64) -> Refund {
    Refund {
        charge_id: "ch_1".into(),
        payment_key: "pi_1".into(),
        amount: 10000,
        amount_refunded,
        currency: "usd".into(),
        created,
    }
}

fn failure(refund_id: &str, amount: i64, refund_created: i64, at: i64) -> RefundFailure {
    RefundFailure {
        refund_id: refund_id.into(),
        charge_id: "ch_1".into(),
        payment_key: "pi_1".into(),
        amount,
        currency: "usd".into(),
        refund_created,
        at,
    }
}

/// Writes a plan into the simulated store, as the conditional write would.
fn apply(record: &mut PaymentRecord, steps: &mut Vec<Step>, plan: FundPlan) {
    assert_ne!(plan.outcome, EventOutcome::Refused, "{:?}", plan.reason);
    if let Some(next) = plan.payment {
        *record = next;
    }
    for update in plan.step_updates {
        let stored =
            steps.iter_mut().find(|step| step.step_id == update.step_id).expect("updates a stored step");
        assert_eq!(stored.version + 1, update.version, "one version up");
        *stored = update;
    }
    for step in plan.new_steps {
        assert!(steps.iter().all(|stored| stored.step_id != step.step_id), "new ids: {}", step.step_id);
        steps.push(step);
    }
}

fn of_kind(steps: &[Step], cause: CauseKind) -> Vec<&Step> {
    steps.iter().filter(|step| step.cause.as_ref().is_some_and(|c| c.kind == cause)).collect()
}

#[test]
fn a_dispute_whose_funds_were_withdrawn_reverses_each_sellers_share() {
    let (record, steps) = paid();
    let plan = plan_dispute(
        &dispute("needs_response", true, false, NOW),
        Some(&record),
        &steps,
        &[],
        &context(DisputePolicy::Reverse),
    );
    assert_eq!(plan.outcome, EventOutcome::Applied);
    let reversals: Vec<(String, i64)> =
        plan.new_steps.iter().map(|step| (step.destination.to_string(), step.amount)).collect();
    assert_eq!(reversals, [(A.to_owned(), 6000), (B.to_owned(), 3000)]);
    for step in &plan.new_steps {
        assert_eq!(step.kind, StepKind::Reversal);
        assert_eq!(step.cause, Some(StepCause::new(CauseKind::Dispute, "dp_1")));
        assert_eq!(step.status, StepStatus::Queued);
    }
}

#[test]
fn inquiries_and_open_disputes_without_withdrawn_funds_move_nothing() {
    let (record, steps) = paid();
    for event in
        [dispute("warning_needs_response", false, false, NOW), dispute("needs_response", false, false, NOW)]
    {
        let plan = plan_dispute(&event, Some(&record), &steps, &[], &context(DisputePolicy::Reverse));
        assert_eq!(plan.new_steps, [], "{}", event.status);
        assert_eq!(plan.step_updates, []);
    }
    // An inquiry's `lost`-like close is `warning_closed`: still nothing.
    let closed = dispute("warning_closed", true, false, NOW);
    assert_eq!(
        plan_dispute(&closed, Some(&record), &steps, &[], &context(DisputePolicy::Reverse)).new_steps,
        []
    );
}

#[test]
fn a_dispute_won_after_its_reversals_were_made_transfers_them_back() {
    let (mut record, mut steps) = paid();
    let reverse = context(DisputePolicy::Reverse);
    let planned =
        plan_dispute(&dispute("needs_response", true, false, NOW), Some(&record), &steps, &[], &reverse);
    apply(&mut record, &mut steps, planned);
    steps = steps
        .into_iter()
        .map(|step| if step.kind == StepKind::Reversal { made(step) } else { step })
        .collect();
    let plan = plan_dispute(&dispute("won", false, true, NOW + 10), Some(&record), &steps, &[], &reverse);
    let back: Vec<(StepKind, String, i64, Option<StepId>)> = plan
        .new_steps
        .iter()
        .map(|step| (step.kind, step.destination.to_string(), step.amount, step.gives_back.clone()))
        .collect();
    assert_eq!(
        back,
        [
            (StepKind::Transfer, A.to_owned(), 6000, Some(format!("tr:pi_1:{A}").into())),
            (StepKind::Transfer, B.to_owned(), 3000, Some(format!("tr:pi_1:{B}").into())),
        ]
    );
    assert!(
        plan.new_steps.iter().all(|step| step.cause == Some(StepCause::new(CauseKind::DisputeWon, "dp_1")))
    );
    assert!(
        plan.new_steps.iter().all(|step| step.source_charge.is_none()),
        "paid from the reinstated balance"
    );
    // The reinstatement read twice (funds_reinstated, then closed won) moves nothing more.
    apply(&mut record, &mut steps, plan);
    let again = plan_dispute(&dispute("won", true, true, NOW + 20), Some(&record), &steps, &[], &reverse);
    assert_eq!((again.new_steps, again.step_updates), (vec![], vec![]));
}

#[test]
fn a_dispute_won_before_its_reversal_was_sent_cancels_the_reversal_instead() {
    let (mut record, mut steps) = paid();
    let reverse = context(DisputePolicy::Reverse);
    let planned =
        plan_dispute(&dispute("needs_response", true, false, NOW), Some(&record), &steps, &[], &reverse);
    apply(&mut record, &mut steps, planned);
    let plan = plan_dispute(&dispute("won", false, true, NOW + 10), Some(&record), &steps, &[], &reverse);
    assert_eq!(plan.new_steps, []);
    assert_eq!(plan.step_updates.len(), 2);
    for update in &plan.step_updates {
        assert_eq!((update.kind, update.status, update.amount), (StepKind::Reversal, StepStatus::Refused, 0));
    }
}

#[test]
fn reinstated_before_withdrawn_ends_with_nothing_moved() {
    let (mut record, mut steps) = paid();
    let reverse = context(DisputePolicy::Reverse);
    let planned = plan_dispute(&dispute("won", false, true, NOW + 10), Some(&record), &steps, &[], &reverse);
    apply(&mut record, &mut steps, planned);
    let plan =
        plan_dispute(&dispute("needs_response", true, false, NOW), Some(&record), &steps, &[], &reverse);
    assert_eq!((plan.new_steps, plan.step_updates), (vec![], vec![]));
    assert_eq!(
        plan.payment.unwrap().disputes["dp_1"].status,
        "won",
        "the older event does not roll the status back"
    );
}

#[test]
fn refunds_and_disputes_share_one_cap_per_transfer() {
    let (mut record, mut steps) = paid();
    let reverse = context(DisputePolicy::Reverse);
    let planned = plan_refund(&snapshot(6000, NOW), Some(&record), &steps, &reverse);
    apply(&mut record, &mut steps, planned);
    // The rest of the charge is disputed, and then, wrongly, all of it: never more than the split.
    let planned =
        plan_dispute(&dispute("needs_response", true, false, NOW + 1), Some(&record), &steps, &[], &reverse);
    apply(&mut record, &mut steps, planned);
    let reversed = |seller: &str| -> i64 {
        steps
            .iter()
            .filter(|step| step.kind == StepKind::Reversal && step.destination.as_str() == seller)
            .map(|step| step.amount)
            .sum()
    };
    assert_eq!((reversed(A), reversed(B)), (6000, 3000));
    assert_eq!(of_kind(&steps, CauseKind::Refund).len(), 2);
}

#[test]
fn a_failed_refund_gives_back_exactly_what_its_reversal_took() {
    let (mut record, mut steps) = paid();
    let reverse = context(DisputePolicy::Reverse);
    let planned = plan_refund(&snapshot(3000, NOW), Some(&record), &steps, &reverse);
    apply(&mut record, &mut steps, planned);
    let planned = plan_refund(&snapshot(5000, NOW + 10), Some(&record), &steps, &reverse);
    apply(&mut record, &mut steps, planned);
    steps = steps
        .into_iter()
        .map(|step| if step.kind == StepKind::Reversal { made(step) } else { step })
        .collect();
    // re_2 (2000 of the 5000) fails: A took back 1200 for it, B 600.
    let plan =
        plan_refund_failure(&failure("re_2", 2000, NOW + 10, NOW + 100), Some(&record), &steps, &reverse);
    let back: Vec<(String, i64)> =
        plan.new_steps.iter().map(|step| (step.destination.to_string(), step.amount)).collect();
    assert_eq!(back, [(A.to_owned(), 1200), (B.to_owned(), 600)]);
    assert!(
        plan.new_steps.iter().all(|step| step.cause == Some(StepCause::new(CauseKind::RefundFailed, "re_2")))
    );
    apply(&mut record, &mut steps, plan);
    // The same failure from the other event type is unchanged.
    let twin =
        plan_refund_failure(&failure("re_2", 2000, NOW + 10, NOW + 100), Some(&record), &steps, &reverse);
    assert_eq!(twin.outcome, EventOutcome::Unchanged);
    // The next refund's snapshot no longer counts re_2 (amount_refunded went down, then up by 1000):
    // only the new 1000 is taken back, and the failed one is not given back twice. The re-transfers
    // are not sent yet, so they shrink instead of being reversed.
    let plan = plan_refund(&snapshot(4000, NOW + 200), Some(&record), &steps, &reverse);
    assert_eq!(plan.outcome, EventOutcome::Applied);
    assert_eq!(plan.new_steps, []);
    let shrunk: Vec<(String, i64)> =
        plan.step_updates.iter().map(|step| (step.destination.to_string(), step.amount)).collect();
    assert_eq!(shrunk, [(A.to_owned(), 600), (B.to_owned(), 300)]);
    // Had they been made, the new 1000 would be reversed instead.
    let made_steps: Vec<Step> =
        steps.iter().cloned().map(|step| if step.gives_back.is_some() { made(step) } else { step }).collect();
    let plan = plan_refund(&snapshot(4000, NOW + 200), Some(&record), &made_steps, &reverse);
    let reversed: Vec<(StepKind, i64)> = plan.new_steps.iter().map(|step| (step.kind, step.amount)).collect();
    assert_eq!(reversed, [(StepKind::Reversal, 600), (StepKind::Reversal, 300)]);
}

#[test]
fn an_older_refund_snapshot_is_stale_and_a_lower_newer_one_gives_back() {
    let (mut record, mut steps) = paid();
    let reverse = context(DisputePolicy::Reverse);
    let planned = plan_refund(&snapshot(5000, NOW + 10), Some(&record), &steps, &reverse);
    apply(&mut record, &mut steps, planned);
    assert_eq!(
        plan_refund(&snapshot(3000, NOW), Some(&record), &steps, &reverse).outcome,
        EventOutcome::Stale
    );
    assert_eq!(
        plan_refund(&snapshot(5000, NOW + 10), Some(&record), &steps, &reverse).outcome,
        EventOutcome::Unchanged
    );
}

#[test]
fn a_dispute_for_a_charge_never_seen_is_kept_and_netted_when_the_payment_comes() {
    let reverse = context(DisputePolicy::Reverse);
    let plan = plan_dispute(&dispute("needs_response", true, false, NOW), None, &[], &[], &reverse);
    assert_eq!(plan.outcome, EventOutcome::UnknownCharge);
    assert_eq!(plan.new_steps, []);
    let record = plan.payment.expect("kept on the payment's guard");
    let payment = Payment {
        payment_key: "pi_1".into(),
        charge_id: Some("ch_1".into()),
        amount: 10000,
        currency: "usd".into(),
        transfer_group: None,
        splits: [(format!("transfer:{A}"), "6000".to_owned())].into_iter().collect(),
        destination: None,
    };
    let plan = plan_payment(&payment, Some(&record), &reverse);
    assert_eq!(plan.new_steps.len(), 1);
    assert_eq!(
        (plan.new_steps[0].amount, plan.new_steps[0].status),
        (0, StepStatus::Refused),
        "disputed whole"
    );
}

#[test]
fn hold_records_the_debt_on_each_account_and_moves_nothing() {
    let (mut record, mut steps) = paid();
    let hold = context(DisputePolicy::Hold);
    let accounts = [AccountState::new(account_id(A)), AccountState::new(account_id(B))];
    let plan =
        plan_dispute(&dispute("needs_response", true, false, NOW), Some(&record), &steps, &accounts, &hold);
    assert_eq!((plan.new_steps.len(), plan.step_updates.len()), (0, 0));
    let summaries: Vec<(String, u32, Option<i64>)> = plan
        .accounts
        .iter()
        .map(|account| {
            (
                account.account_id.to_string(),
                account.disputes.open,
                account.disputes.unrecovered.get("usd").copied(),
            )
        })
        .collect();
    assert_eq!(summaries, [(A.to_owned(), 1, Some(6000)), (B.to_owned(), 1, Some(3000))]);
    assert!(plan.accounts.iter().all(|account| account.version == 1));
    apply(&mut record, &mut steps, plan.clone());
    // Won: the debt is gone and the dispute is closed.
    let won =
        plan_dispute(&dispute("won", false, true, NOW + 5), Some(&record), &steps, &plan.accounts, &hold);
    assert!(
        won.accounts
            .iter()
            .all(|account| account.disputes.open == 0 && account.disputes.unrecovered.is_empty())
    );
    // `none` shows the dispute but no debt.
    let none = plan_dispute(
        &dispute("needs_response", true, false, NOW),
        Some(&paid().0),
        &paid().1,
        &accounts,
        &context(DisputePolicy::None),
    );
    assert!(none.new_steps.is_empty());
    assert_eq!(none.accounts[0].disputes.open, 1);
}

#[test]
fn a_destination_charge_records_stripes_transfer_and_only_disputes_reverse_it() {
    let event = match parse_event(
        json!({
            "id": "evt_d", "object": "event", "type": "charge.succeeded", "created": NOW,
            "data": { "object": {
                "id": "ch_d", "object": "charge", "amount": 10000, "amount_captured": 10000, "captured": true,
                "currency": "usd", "payment_intent": "pi_d", "application_fee_amount": 1000,
                "transfer": "tr_stripe", "transfer_data": { "destination": A }, "metadata": {}
            } }
        })
        .to_string()
        .as_bytes(),
    ) {
        Ok(ParsedBody::Snapshot(event)) => event,
        other => panic!("{other:?}"),
    };
    let Some(FundEvent::Payment(payment)) = read_fund_event(&event) else { panic!("a payment") };
    let reverse = context(DisputePolicy::Reverse);
    let plan = plan_payment(&payment, None, &reverse);
    assert_eq!(plan.new_steps.len(), 1);
    let transfer = &plan.new_steps[0];
    assert_eq!(
        (transfer.status, transfer.amount, transfer.stripe_id.as_deref(), transfer.by_stripe),
        (StepStatus::Succeeded, 9000, Some("tr_stripe"), true)
    );
    let (record, steps) = (plan.payment.unwrap(), plan.new_steps);
    let refund = Refund { charge_id: "ch_d".into(), payment_key: "pi_d".into(), ..snapshot(10000, NOW + 1) };
    let refunded = plan_refund(&refund, Some(&record), &steps, &reverse);
    assert_eq!(refunded.new_steps, [], "Stripe reverses a destination charge's transfer for refunds");
    let disputed = Dispute {
        charge_id: "ch_d".into(),
        payment_key: "pi_d".into(),
        ..dispute("lost", false, false, NOW + 2)
    };
    let plan = plan_dispute(&disputed, Some(&record), &steps, &[], &reverse);
    assert_eq!(plan.new_steps.len(), 1);
    assert_eq!(
        (plan.new_steps[0].amount, plan.new_steps[0].reverses_step.as_deref()),
        (9000, Some("tr:pi_d:acct_1SellerA"))
    );
}

/// One thing that can happen to the payment of [`paid`], with the time it happened.
#[derive(Debug, Clone)]
enum Happening {
    Refunded { cumulative: i64, at: i64 },
    RefundFailed { id: u8, amount: i64, created: i64, at: i64 },
    Disputed { withdrawn: bool, reinstated: bool, at: i64 },
}

fn happenings() -> impl Strategy<Value = Vec<Happening>> {
    let one = prop_oneof![
        (0i64..=10000, 0i64..1000).prop_map(|(cumulative, at)| Happening::Refunded { cumulative, at }),
        (0u8..3, 1i64..=5000, 0i64..1000, 0i64..1000).prop_map(|(id, amount, created, at)| {
            Happening::RefundFailed { id, amount, created, at: created.max(at) }
        }),
        (any::<bool>(), any::<bool>(), 0i64..1000)
            .prop_map(|(withdrawn, reinstated, at)| Happening::Disputed { withdrawn, reinstated, at }),
    ];
    proptest::collection::vec(one, 1..12)
}

proptest! {
    /// Any events of refunds, failed refunds and a dispute, in any order, duplicated, with Stripe
    /// making steps at any point: no transfer is ever reversed past what was transferred, and
    /// nothing is given back that was not taken.
    #[test]
    fn reversals_never_exceed_what_was_transferred(
        events in happenings(),
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 1..24),
        made_after in proptest::collection::vec(any::<bool>(), 24),
    ) {
        let (mut record, mut steps) = paid();
        let reverse = context(DisputePolicy::Reverse);
        for (turn, index) in order.iter().enumerate() {
            let happening = index.get(&events);
            let plan = match happening {
                Happening::Refunded { cumulative, at } => plan_refund(&snapshot(*cumulative, NOW + at), Some(&record), &steps, &reverse),
                Happening::RefundFailed { id, amount, created, at } => plan_refund_failure(
                    &failure(&format!("re_{id}"), *amount, NOW + created, NOW + at), Some(&record), &steps, &reverse),
                Happening::Disputed { withdrawn, reinstated, at } => plan_dispute(
                    &dispute("needs_response", *withdrawn, *reinstated, NOW + at), Some(&record), &steps, &[], &reverse),
            };
            prop_assert_ne!(plan.outcome, EventOutcome::Refused, "{:?}", plan.reason);
            apply(&mut record, &mut steps, plan);
            if made_after[turn % made_after.len()] {
                steps = steps.into_iter().map(|step| if step.status == StepStatus::Queued { made(step) } else { step }).collect();
            }
            for transfer in steps.iter().filter(|step| step.kind == StepKind::Transfer && counts(step)) {
                let reversed: i64 = steps
                    .iter()
                    .filter(|step| step.kind == StepKind::Reversal && counts(step))
                    .filter(|step| step.reverses_step.as_deref() == Some(transfer.step_id.as_str()))
                    .map(|step| step.amount)
                    .sum();
                prop_assert!(reversed <= transfer.amount, "{} reversed {reversed} of {}", transfer.step_id, transfer.amount);
            }
            for split in splits(&steps, Some("ch_1")) {
                let given_back: i64 = steps
                    .iter()
                    .filter(|step| step.gives_back.as_deref() == Some(split.step_id.as_str()) && counts(step))
                    .map(|step| step.amount)
                    .sum();
                let reversed: i64 = steps
                    .iter()
                    .filter(|step| step.kind == StepKind::Reversal && counts(step))
                    .filter(|step| step.reverses_step.as_deref().is_some_and(|id| id.starts_with(split.step_id.as_str())))
                    .map(|step| step.amount)
                    .sum();
                let taken = reversed - given_back;
                prop_assert!((0..=split.amount).contains(&taken), "{}: taken {taken}", split.step_id);
                // At rest, each split is exactly at its share of what is gone now.
                let target = clawback(&record, DisputePolicy::Reverse).unwrap().share(split.amount, false);
                prop_assert_eq!(taken, target, "{} at {:?}", split.step_id, happening);
            }
        }
    }
}

/// Found by the worker's interleaving property test: a reversal planned while its transfer was in
/// flight, then the transfer refused for now (balance_insufficient, so never made) and the payment
/// refunded whole. The transfer must still go for what the reversal takes back, or the reversal
/// would wait forever on a transfer that was refused.
#[test]
fn a_reversal_planned_while_its_transfer_was_in_flight_is_counted_when_the_transfer_is_netted() {
    let (mut record, steps) = paid();
    let mut steps: Vec<Step> = steps
        .into_iter()
        .map(|step| Step { status: StepStatus::InFlight, stripe_id: None, ..step })
        .collect();
    let reverse = context(DisputePolicy::Reverse);
    let planned = plan_refund(&snapshot(2500, NOW), Some(&record), &steps, &reverse);
    apply(&mut record, &mut steps, planned);
    assert_eq!(steps.iter().filter(|step| step.kind == StepKind::Reversal).count(), 2);
    for step in steps.iter_mut().filter(|step| step.kind == StepKind::Transfer) {
        step.status = StepStatus::Waiting;
        step.attempt += 1;
        step.version += 1;
    }
    let plan = plan_refund(&snapshot(10000, NOW + 5), Some(&record), &steps, &reverse);
    apply(&mut record, &mut steps, plan);
    for seller in [A, B] {
        let transfer = steps
            .iter()
            .find(|step| step.kind == StepKind::Transfer && step.destination.as_str() == seller)
            .unwrap();
        let reversed: i64 = steps
            .iter()
            .filter(|step| step.kind == StepKind::Reversal && step.destination.as_str() == seller)
            .map(|step| step.amount)
            .sum();
        assert_eq!(transfer.status, StepStatus::Waiting, "{seller}: still to be made, for its reversal");
        assert_eq!(transfer.amount, reversed, "{seller}: made and reversed, it nets to nothing");
    }
}
