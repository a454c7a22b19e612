//! Fund flows: the pure planning that turns a platform payment, a refund of it, or a connected
//! account's available balance into transfer, reversal and payout steps.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::account::{AccountId, AccountState};
use super::step::{Step, StepKind, StepRef, StepStatus};
use crate::stripe::event::{Event, is_plausible_id};

/// The metadata key prefix that names a split: `transfer:acct_…` = amount in minor units.
const SPLIT_PREFIX: &str = "transfer:";

/// The metadata key every object a step creates carries, so that Stripe's lifecycle events can
/// be matched back to the step.
pub const STEP_METADATA: &str = "connect_flow_step";
/// The payment a transfer or reversal step belongs to (where the step is stored).
pub const PAYMENT_METADATA: &str = "connect_flow_payment";

/// What a fund-flow event asks for, read leniently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FundEvent {
    /// A platform payment succeeded (`payment_intent.succeeded`, `charge.succeeded`, or
    /// `charge.captured` for an authorisation captured later).
    Payment(Payment),
    /// A platform charge was refunded, partly or fully (`charge.refunded`).
    Refund(Refund),
    /// A connected account has money available (`balance.available`).
    BalanceAvailable(BalanceAvailable),
    /// Stripe's word on objects that steps created (`transfer.*`, `payout.*`).
    Settlements(Vec<Settlement>),
}

/// A succeeded platform payment and the splits its metadata asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The payment intent id when there is one, else the charge id, so that both triggers of one
    /// payment plan the same step ids.
    pub payment_key: String,
    /// The charge the transfers are funded from (`source_transaction`), when the event names it.
    pub charge_id: Option<String>,
    /// Minor units received (`amount_received` or `amount_captured`, else `amount`).
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The payment's `transfer_group`, when set.
    pub transfer_group: Option<String>,
    /// The metadata keys that start with `transfer:`, with their values as sent.
    pub splits: BTreeMap<String, String>,
}

/// A platform charge's refund state; `amount_refunded` is cumulative. Stored per payment, so that
/// transfers planned after it (the refund's event arrived first) are reversed as they are planned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refund {
    /// The refunded charge (`ch_…`).
    pub charge_id: String,
    /// The charge's payment intent id, else the charge id: the key its transfers were planned under.
    pub payment_key: String,
    /// The charge's captured amount (`amount_captured` when positive, else `amount`).
    pub amount: i64,
    /// Everything refunded so far, in minor units.
    pub amount_refunded: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
}

/// One payment's guard: every plan for the payment (its transfers, refunds and reversals) reads
/// it and writes it back one version up, in the same conditional write as the steps it plans, so
/// that two plans for one payment can never both commit from the same read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The payment intent id, else the charge id.
    pub payment_key: String,
    /// The trigger whose splits planned the payment's transfers; a twin with other splits loses.
    pub planned_by: Option<PlannedBy>,
    /// The newest refund seen.
    pub refund: Option<Refund>,
    /// Bumped by every plan; the store writes only over `version - 1` (absent for 1).
    pub version: u64,
}

/// The event that planned a payment's transfers, and the splits it planned them from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBy {
    /// `evt_…`.
    pub event_id: String,
    /// `payment_intent.succeeded`, `charge.succeeded` or `charge.captured`.
    pub event_type: String,
    /// The split metadata as it read.
    pub splits: BTreeMap<String, String>,
}

impl PaymentRecord {
    /// The record to write after a plan read `current` (absent for a payment never planned).
    pub fn next(current: Option<&Self>, payment_key: &str) -> Self {
        let mut next = current
            .cloned()
            .unwrap_or_else(|| Self { payment_key: payment_key.to_owned(), ..Self::default() });
        next.version += 1;
        next
    }
}

/// What one fund-flow plan writes besides the event's record, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FundPlan {
    /// What the event did: applied, unchanged, refused or stale.
    pub outcome: crate::store::EventOutcome,
    /// Why it was refused, when it was.
    pub reason: Option<String>,
    /// The payment's guard, one version up.
    pub payment: Option<PaymentRecord>,
    /// Steps it planned.
    pub new_steps: Vec<Step>,
    /// Stored steps it changed, each one version up.
    pub step_updates: Vec<Step>,
}

impl FundPlan {
    /// Nothing to write but the record, with this outcome.
    pub fn nothing(outcome: crate::store::EventOutcome) -> Self {
        Self { outcome, ..Self::default() }
    }

    /// Refused, with the reason recorded and nothing else written.
    pub fn refused(reason: String) -> Self {
        Self { outcome: crate::store::EventOutcome::Refused, reason: Some(reason), ..Self::default() }
    }
}

/// A connected account's available balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceAvailable {
    /// The connected account the balance belongs to.
    pub account: AccountId,
    /// `(lowercase currency, minor units)` for each entry of `available[]` that could be read.
    pub available: Vec<(String, i64)>,
}

/// The outcome of planning a payment's transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferPlan {
    /// The payment's metadata asks for no transfers.
    NoSplits,
    /// One queued transfer step per split.
    Planned(Vec<Step>),
    /// The splits are invalid; nothing is sent, and each split to a well-formed account is
    /// recorded as a refused step so that the refusal shows on that account.
    Refused {
        /// Every problem found, in one line.
        reason: String,
        /// Refused steps, one per split whose key names a well-formed account.
        steps: Vec<Step>,
    },
}

/// Reads a fund-flow event; `None` for other event types and for objects that cannot be read.
///
/// Payments and refunds are taken only from the platform's own events (no `account`): a charge on
/// a connected account cannot fund a transfer from the platform's balance.
pub fn read_fund_event(event: &Event) -> Option<FundEvent> {
    let object: Value = serde_json::from_str(event.object.get()).ok()?;
    let on_platform = event.account.is_none();
    match event.event_type.as_str() {
        "payment_intent.succeeded" if on_platform => read_intent(&object).map(FundEvent::Payment),
        "charge.succeeded" | "charge.captured" if on_platform => read_charge(&object).map(FundEvent::Payment),
        "charge.refunded" if on_platform => read_refund(&object).map(FundEvent::Refund),
        "balance.available" => read_balance(event, &object).map(FundEvent::BalanceAvailable),
        "transfer.created" | "transfer.updated" | "transfer.reversed" | "payout.paid" | "payout.failed"
        | "payout.canceled" => {
            let settlements = read_settlements(event, &object);
            (!settlements.is_empty()).then_some(FundEvent::Settlements(settlements))
        }
        _ => None,
    }
}

/// What Stripe reports about an object a step created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettlementKind {
    /// The transfer or reversal exists.
    Created,
    /// The payout reached the bank.
    PayoutPaid,
    /// The payout failed, with Stripe's `failure_code`.
    PayoutFailed(String),
    /// The payout was canceled.
    PayoutCanceled,
}

/// One step's object as Stripe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Where the step is stored, as the object's metadata names it.
    pub step: StepRef,
    /// The Stripe object id (`tr_…`, `trr_…`, `po_…`).
    pub stripe_id: String,
    /// What happened to it.
    pub kind: SettlementKind,
    /// The connected account the event came from (`account`), `None` for the platform's own.
    pub from_account: Option<String>,
    /// The object's amount, in minor units.
    pub amount: Option<i64>,
    /// The object's currency, lowercase.
    pub currency: Option<String>,
}

/// What a settlement that matches its step changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// The step's next state, when it changes.
    pub step: Option<Step>,
    /// A payout that failed or was canceled after Stripe created it: `(payout id, code)`.
    pub payout_failure: Option<(String, String)>,
    /// A payout that reached the bank.
    pub payout_paid: Option<String>,
}

/// Reads the steps a lifecycle event speaks of; objects Connect Flow did not create are ignored.
fn read_settlements(event: &Event, object: &Value) -> Vec<Settlement> {
    let settlement = |object: &Value, kind: StepKind, destination: Option<&str>, outcome: SettlementKind| {
        let metadata = object.get("metadata")?;
        let step_id = metadata.get(STEP_METADATA)?.as_str().filter(|id| is_plausible_id(id))?;
        let payment_key = metadata.get(PAYMENT_METADATA).and_then(Value::as_str).map(str::to_owned);
        let stripe_id = object.get("id")?.as_str().filter(|id| is_plausible_id(id))?;
        Some(Settlement {
            step: StepRef {
                kind,
                step_id: step_id.to_owned(),
                payment_key,
                destination: AccountId::parse(destination?)?,
            },
            stripe_id: stripe_id.to_owned(),
            kind: outcome,
            from_account: event.account.clone(),
            amount: i64_at(object, "amount"),
            currency: currency_at(object),
        })
    };
    let transfer_destination = id_of(object.get("destination"));
    match event.event_type.as_str() {
        "transfer.created" | "transfer.updated" => {
            settlement(object, StepKind::Transfer, transfer_destination.as_deref(), SettlementKind::Created)
                .into_iter()
                .collect()
        }
        "transfer.reversed" => value_at(object, &["reversals", "data"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|reversal| {
                settlement(
                    reversal,
                    StepKind::Reversal,
                    transfer_destination.as_deref(),
                    SettlementKind::Created,
                )
            })
            .collect(),
        payout_event => {
            let outcome = match payout_event {
                "payout.paid" => SettlementKind::PayoutPaid,
                "payout.canceled" => SettlementKind::PayoutCanceled,
                _ => SettlementKind::PayoutFailed(
                    object.get("failure_code").and_then(Value::as_str).unwrap_or("failed").to_owned(),
                ),
            };
            settlement(object, StepKind::Payout, event.account.as_deref(), outcome).into_iter().collect()
        }
    }
}

/// What Stripe's report changes about the step it names, or why it may not settle that step.
///
/// Step ids are predictable and a connected account can put any metadata on its own objects, so a
/// report settles a step only when it matches it completely: the right sender (the platform for
/// transfers and reversals, the step's own account for a payout), the step's kind, destination,
/// amount and currency, the step's Stripe object once it has one, and a step that may have been
/// sent at all. A succeeded step is never moved back: a payout that fails after Stripe created it
/// is the account's `payout_failure`, and its money is back on the balance for the next payout.
pub fn settle(step: &Step, settlement: &Settlement, now: i64) -> Result<Settled, String> {
    let object = &settlement.stripe_id;
    if step.kind != settlement.step.kind {
        return Err(format!(
            "{object} is a {} but step {} is a {}",
            settlement.step.kind.as_str(),
            step.step_id,
            step.kind.as_str()
        ));
    }
    let sender_ok = match step.kind {
        StepKind::Transfer | StepKind::Reversal => settlement.from_account.is_none(),
        StepKind::Payout => settlement.from_account.as_deref() == Some(step.destination.as_str()),
    };
    if !sender_ok {
        let sender = settlement.from_account.as_deref().unwrap_or("the platform");
        return Err(format!("{object} was reported by {sender}, which cannot settle step {}", step.step_id));
    }
    if settlement.step.destination != step.destination {
        return Err(format!(
            "{object} is for {} but step {} is for {}",
            settlement.step.destination, step.step_id, step.destination
        ));
    }
    let same_money = settlement.amount == Some(step.amount)
        && settlement
            .currency
            .as_deref()
            .is_some_and(|currency| currency.eq_ignore_ascii_case(&step.currency));
    if !same_money {
        return Err(format!(
            "{object} moves {:?} {:?} but step {} moves {} {}",
            settlement.amount, settlement.currency, step.step_id, step.amount, step.currency
        ));
    }
    if step.stripe_id.as_ref().is_some_and(|id| id != object) {
        return Err(format!(
            "step {} was made as {}, not {object}",
            step.step_id,
            step.stripe_id.as_deref().unwrap_or_default()
        ));
    }
    if !step.may_have_been_sent() {
        return Err(format!(
            "step {} is {} and was never sent, so {object} cannot be its",
            step.step_id,
            step.status.as_str()
        ));
    }
    let mut settled = Settled::default();
    match &settlement.kind {
        SettlementKind::Created => {}
        SettlementKind::PayoutPaid => settled.payout_paid = Some(object.clone()),
        SettlementKind::PayoutFailed(code) => settled.payout_failure = Some((object.clone(), code.clone())),
        SettlementKind::PayoutCanceled => {
            settled.payout_failure = Some((object.clone(), "canceled".to_owned()))
        }
    }
    if step.status != StepStatus::Succeeded {
        let mut next = step.clone();
        next.status = StepStatus::Succeeded;
        next.reason = None;
        next.unresolved = None;
        next.stripe_id = Some(object.clone());
        next.updated_at = now;
        next.version += 1;
        settled.step = Some(next);
    }
    Ok(settled)
}

fn read_intent(intent: &Value) -> Option<Payment> {
    let payment_key = id_of(intent.get("id"))?;
    // `latest_charge` replaced `charges` in API version 2022-11-15.
    let charge_id = id_of(intent.get("latest_charge"))
        .or_else(|| id_of(value_at(intent, &["charges", "data"]).and_then(|data| data.get(0))));
    Some(Payment {
        payment_key,
        charge_id,
        amount: i64_at(intent, "amount_received").or_else(|| i64_at(intent, "amount"))?,
        currency: currency_at(intent)?,
        transfer_group: id_of(intent.get("transfer_group")),
        splits: splits_of(intent),
    })
}

fn read_charge(charge: &Value) -> Option<Payment> {
    // An authorisation without capture also says `charge.succeeded`; no money has moved yet.
    if charge.get("captured").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let charge_id = id_of(charge.get("id"))?;
    Some(Payment {
        payment_key: id_of(charge.get("payment_intent")).unwrap_or_else(|| charge_id.clone()),
        amount: i64_at(charge, "amount_captured").or_else(|| i64_at(charge, "amount"))?,
        currency: currency_at(charge)?,
        transfer_group: id_of(charge.get("transfer_group")),
        splits: splits_of(charge),
        charge_id: Some(charge_id),
    })
}

fn read_refund(charge: &Value) -> Option<Refund> {
    let charge_id = id_of(charge.get("id"))?;
    // A partly captured charge can refund only what was captured, and its transfers were planned
    // from the captured amount; `amount` would under-reverse a full refund.
    let amount = i64_at(charge, "amount_captured")
        .filter(|captured| *captured > 0)
        .or_else(|| i64_at(charge, "amount"))?;
    Some(Refund {
        payment_key: id_of(charge.get("payment_intent")).unwrap_or_else(|| charge_id.clone()),
        charge_id,
        amount,
        amount_refunded: i64_at(charge, "amount_refunded")?,
        currency: currency_at(charge)?,
    })
}

fn read_balance(event: &Event, balance: &Value) -> Option<BalanceAvailable> {
    let account = event.account.as_deref().and_then(AccountId::parse)?;
    let available = balance
        .get("available")?
        .as_array()?
        .iter()
        .filter_map(|entry| Some((currency_at(entry)?, i64_at(entry, "amount")?)))
        .collect();
    Some(BalanceAvailable { account, available })
}

/// Plans one transfer step per split, or refuses the whole plan with every reason found.
///
/// A destination this deployment has not heard of yet is planned like any other: the worker
/// retrieves it from Stripe before sending, and the step waits while it cannot receive.
pub fn plan_transfers(payment: &Payment, now: i64) -> TransferPlan {
    if payment.splits.is_empty() {
        return TransferPlan::NoSplits;
    }
    let mut problems = Vec::new();
    let mut splits = Vec::new();
    let mut total: i128 = 0;
    for (key, raw_amount) in &payment.splits {
        let amount = parse_amount(raw_amount);
        match amount {
            Some(amount) => total += i128::from(amount),
            None => problems.push(format!(
                "{key:?} has amount {raw_amount:?}, which is not a positive whole number of minor units"
            )),
        }
        match key.strip_prefix(SPLIT_PREFIX).and_then(AccountId::parse) {
            None => problems.push(format!("{key:?} does not name a connected account (transfer:acct_…)")),
            Some(destination) => splits.push((destination, amount)),
        }
    }
    if total > i128::from(payment.amount) {
        problems.push(format!(
            "the splits total {total} {currency}, more than the payment's {amount}",
            currency = payment.currency,
            amount = payment.amount
        ));
    }
    if payment.charge_id.is_none() {
        problems.push("the payment names no charge to use as source_transaction".to_owned());
    }
    let transfer = |destination: AccountId, amount: i64, status: StepStatus, reason: Option<String>| Step {
        source_charge: payment.charge_id.clone(),
        transfer_group: Some(payment.transfer_group.clone().unwrap_or_else(|| payment.payment_key.clone())),
        payment_key: Some(payment.payment_key.clone()),
        status,
        reason,
        ..Step::planned(
            StepKind::Transfer,
            format!("tr:{}:{destination}", payment.payment_key),
            destination,
            amount,
            payment.currency.clone(),
            now,
        )
    };
    if problems.is_empty() {
        let steps = splits
            .into_iter()
            .filter_map(|(destination, amount)| {
                Some(transfer(destination, amount?, StepStatus::Queued, None))
            })
            .collect();
        return TransferPlan::Planned(steps);
    }
    let reason = format!("split of {} refused: {}", payment.payment_key, problems.join("; "));
    // An amount that could not be read is recorded as 0: the step is never sent.
    let steps = splits
        .into_iter()
        .map(|(destination, amount)| {
            transfer(destination, amount.unwrap_or(0), StepStatus::Refused, Some(reason.clone()))
        })
        .collect();
    TransferPlan::Refused { reason, steps }
}

/// A plain positive integer of ASCII digits that fits `i64`: no sign, point, exponent or space.
fn parse_amount(raw: &str) -> Option<i64> {
    let digits_only = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    digits_only.then(|| raw.parse::<i64>().ok()).flatten().filter(|amount| *amount > 0)
}

/// Plans a payment's transfers from one of its triggers, against the payment's guard.
///
/// The first trigger with splits to commit decides: a twin with the same splits is `unchanged`,
/// one with other splits is `refused` with the reason, since paying both would pay twice. A
/// refund already known is netted out: a transfer is planned short by its share, and one the
/// refund took back whole is refused, never sent to be reversed.
pub fn plan_payment(
    payment: &Payment,
    record: Option<&PaymentRecord>,
    trigger: (&str, &str),
    livemode: Option<bool>,
    now: i64,
) -> FundPlan {
    use crate::store::EventOutcome;
    let (event_id, event_type) = trigger;
    if payment.splits.is_empty() {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    if let Some(planned) = record.and_then(|record| record.planned_by.as_ref()) {
        if planned.splits == payment.splits {
            return FundPlan::nothing(EventOutcome::Unchanged);
        }
        return FundPlan::refused(format!(
            "the splits of {event_type} {event_id} differ from those of {} {}, which planned payment {} \
             first; the first trigger to be recorded decides",
            planned.event_type, planned.event_id, payment.payment_key
        ));
    }
    let mut next = PaymentRecord::next(record, &payment.payment_key);
    next.planned_by = Some(PlannedBy {
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        splits: payment.splits.clone(),
    });
    let (outcome, reason, mut steps) = match plan_transfers(payment, now) {
        TransferPlan::NoSplits => return FundPlan::nothing(EventOutcome::Unchanged),
        TransferPlan::Planned(steps) => (EventOutcome::Applied, None, steps),
        TransferPlan::Refused { reason, steps } => (EventOutcome::Refused, Some(reason), steps),
    };
    if let Some(refund) = next.refund.as_ref().filter(|_| outcome == EventOutcome::Applied) {
        for transfer in &mut steps {
            let share = refunded_share(transfer.amount, refund);
            net_out(transfer, share);
        }
    }
    for step in &mut steps {
        step.livemode = livemode;
    }
    FundPlan { outcome, reason, payment: Some(next), new_steps: steps, step_updates: Vec::new() }
}

/// A transfer's share of a cumulative refund, `floor(split × refunded / amount)`; 0 for a refund
/// that is not a possible one (checked by [`plan_refund`] before it is stored).
fn refunded_share(split: i64, refund: &Refund) -> i64 {
    if refund.amount <= 0 || !(0..=refund.amount).contains(&refund.amount_refunded) {
        return 0;
    }
    let share = i128::from(split) * i128::from(refund.amount_refunded) / i128::from(refund.amount);
    // 0 <= share <= split, so it fits.
    i64::try_from(share).unwrap_or(0)
}

/// Takes `share` off a transfer that has not been sent; one left with nothing is refused.
fn net_out(transfer: &mut Step, share: i64) {
    let share = share.clamp(0, transfer.amount);
    if share == 0 {
        return;
    }
    transfer.amount -= share;
    transfer.netted += share;
    if transfer.amount == 0 {
        transfer.status = StepStatus::Refused;
        transfer.reason = Some("the payment was refunded before this transfer was sent".to_owned());
    }
}

/// Plans what a refund takes back from a payment's transfers, against the payment's guard:
/// each transfer is brought to its share of the cumulative refund, counting what was netted out
/// and reversed already. A transfer not yet sent is planned short instead (a conditional update
/// of the step, so that a worker claiming it meanwhile makes the write conflict); one that may
/// have been sent gets a reversal step. A refund no newer than the stored one is `unchanged`.
pub fn plan_refund(refund: &Refund, record: Option<&PaymentRecord>, steps: &[Step], now: i64) -> FundPlan {
    use crate::store::EventOutcome;
    if refund.amount <= 0 {
        return FundPlan::refused(format!(
            "charge {} has amount {}, so no share can be reversed",
            refund.charge_id, refund.amount
        ));
    }
    if refund.amount_refunded < 0 || refund.amount_refunded > refund.amount {
        return FundPlan::refused(format!(
            "charge {} reports {} refunded of {}, which is not a possible refund",
            refund.charge_id, refund.amount_refunded, refund.amount
        ));
    }
    let stored = record.and_then(|record| record.refund.as_ref());
    if stored.is_some_and(|stored| stored.amount_refunded >= refund.amount_refunded) {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    let (reversals, step_updates) = match plan_reversals(refund, steps, now) {
        Ok(plan) => plan,
        Err(reason) => return FundPlan::refused(reason),
    };
    let mut next = PaymentRecord::next(record, &refund.payment_key);
    next.refund = Some(refund.clone());
    FundPlan {
        outcome: EventOutcome::Applied,
        reason: None,
        payment: Some(next),
        new_steps: reversals,
        step_updates,
    }
}

/// The reversals, and the reduced unsent transfers, that bring each of a charge's transfers to
/// its share of the cumulative refund. `steps` are all the payment's steps. Transfers that failed
/// or were refused, and transfers funded by another charge, are left alone. An `Err` plans nothing.
pub fn plan_reversals(refund: &Refund, steps: &[Step], now: i64) -> Result<(Vec<Step>, Vec<Step>), String> {
    let counts = |step: &Step| !matches!(step.status, StepStatus::Failed | StepStatus::Refused);
    let reversible: Vec<&Step> = steps
        .iter()
        .filter(|transfer| transfer.kind == StepKind::Transfer && counts(transfer) && transfer.amount > 0)
        .filter(|transfer| transfer.source_charge.as_deref().is_none_or(|charge| charge == refund.charge_id))
        .collect();
    if let Some(transfer) =
        reversible.iter().find(|transfer| !transfer.currency.eq_ignore_ascii_case(&refund.currency))
    {
        return Err(format!(
            "charge {} is in {} but transfer {} is in {}",
            refund.charge_id, refund.currency, transfer.step_id, transfer.currency
        ));
    }
    let mut reversals = Vec::new();
    let mut reduced = Vec::new();
    for transfer in reversible {
        let Some(split) = transfer.amount.checked_add(transfer.netted) else {
            return Err(format!("transfer {} does not fit in i64", transfer.step_id));
        };
        let target = refunded_share(split, refund);
        let reversed: i64 = steps
            .iter()
            .filter(|reversal| reversal.kind == StepKind::Reversal && counts(reversal) && reversal.amount > 0)
            .filter(|reversal| reversal.reverses_step.as_deref() == Some(transfer.step_id.as_str()))
            .map(|reversal| reversal.amount)
            .fold(0i64, i64::saturating_add);
        let owed = target.saturating_sub(transfer.netted).saturating_sub(reversed);
        if owed <= 0 {
            continue;
        }
        if !transfer.may_have_been_sent() {
            let mut next = transfer.clone();
            net_out(&mut next, owed);
            next.updated_at = now;
            next.version += 1;
            reduced.push(next);
            continue;
        }
        reversals.push(Step {
            source_charge: Some(refund.charge_id.clone()),
            transfer_group: transfer.transfer_group.clone(),
            payment_key: Some(refund.payment_key.clone()),
            reverses_step: Some(transfer.step_id.clone()),
            livemode: transfer.livemode,
            ..Step::planned(
                StepKind::Reversal,
                format!("trr:{}:{target}", transfer.step_id),
                transfer.destination.clone(),
                owed,
                transfer.currency.clone(),
                now,
            )
        });
    }
    Ok((reversals, reduced))
}

/// Plans a payout of each positive available currency for a known account on manual payouts.
///
/// A currency whose payout may be moving money (in flight) is skipped. A payout planned from an
/// older balance and not sent under its current key (queued, or waiting after a definite refusal
/// such as `balance_insufficient`) is superseded: refused, with the reason, in the same write that
/// plans the new one. Returns the new steps and the superseded ones.
pub fn plan_payouts(
    balance: &BalanceAvailable,
    account: Option<&AccountState>,
    payouts: &[Step],
    event_id: &str,
    livemode: Option<bool>,
    now: i64,
) -> (Vec<Step>, Vec<Step>) {
    let Some(account) = account else { return (Vec::new(), Vec::new()) };
    if account.account_id != balance.account || account.payout_schedule_interval.as_deref() != Some("manual")
    {
        return (Vec::new(), Vec::new());
    }
    let mut seen = BTreeSet::new();
    let mut planned = Vec::new();
    let mut superseded = Vec::new();
    for (currency, amount) in &balance.available {
        // A currency listed twice is paid out once, from its first entry.
        if !seen.insert(currency.as_str()) || *amount <= 0 {
            continue;
        }
        let open: Vec<&Step> = payouts
            .iter()
            .filter(|step| {
                step.kind == StepKind::Payout
                    && step.destination == balance.account
                    && !step.status.is_final()
                    && step.currency.eq_ignore_ascii_case(currency)
            })
            .collect();
        // A payout the platform asked for is the platform's to decide: a balance neither
        // supersedes it nor pays out beside it, which would spend the same balance twice.
        if open.iter().any(|step| step.may_have_been_sent() || step.requested.is_some()) {
            continue;
        }
        let step_id = format!("po:{}:{event_id}:{currency}", balance.account);
        for old in open {
            let mut next = old.clone();
            next.status = StepStatus::Refused;
            next.reason = Some(format!("superseded by the newer balance of {event_id} ({step_id})"));
            next.updated_at = now;
            next.version += 1;
            superseded.push(next);
        }
        planned.push(Step {
            livemode,
            ..Step::planned(
                StepKind::Payout,
                step_id,
                balance.account.clone(),
                *amount,
                currency.clone(),
                now,
            )
        });
    }
    (planned, superseded)
}

fn value_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, key| value.get(key))
}

fn i64_at(value: &Value, key: &str) -> Option<i64> {
    value.get(key).and_then(Value::as_i64)
}

/// An id given as a string or as an expanded object with an `id`; only plausible ids count.
fn id_of(value: Option<&Value>) -> Option<String> {
    let id = match value? {
        Value::String(id) => id.as_str(),
        Value::Object(object) => object.get("id")?.as_str()?,
        _ => return None,
    };
    is_plausible_id(id).then(|| id.to_owned())
}

fn currency_at(value: &Value) -> Option<String> {
    value
        .get("currency")
        .and_then(Value::as_str)
        .filter(|currency| is_plausible_id(currency))
        .map(str::to_ascii_lowercase)
}

/// Whether a metadata key is, or looks like, a split: `transfer:acct_…` exactly, or a near miss
/// (`Transfer:`, `transfers:`, `transfer_acct_…`, a stray space) that must refuse the payment
/// rather than be dropped while the other splits are paid.
fn claims_a_split(key: &str) -> bool {
    let trimmed = key.trim().as_bytes();
    let looks_like_transfer = trimmed.get(..8).is_some_and(|head| head.eq_ignore_ascii_case(b"transfer"));
    let names_an_account = trimmed.windows(5).any(|window| window.eq_ignore_ascii_case(b"acct_"));
    key.starts_with(SPLIT_PREFIX) || (looks_like_transfer && names_an_account)
}

/// The split metadata entries, near misses included (see [`claims_a_split`]). A value that is not
/// a string (Stripe only sends strings) is kept as its JSON text, so that it is refused rather
/// than silently dropped.
fn splits_of(object: &Value) -> BTreeMap<String, String> {
    let Some(metadata) = object.get("metadata").and_then(Value::as_object) else { return BTreeMap::new() };
    metadata
        .iter()
        .filter(|(key, _)| claims_a_split(key))
        .map(|(key, value)| {
            let raw = match value {
                Value::String(raw) => raw.clone(),
                other => other.to_string(),
            };
            (key.clone(), raw)
        })
        .collect()
}

#[cfg(test)]
mod tests;
