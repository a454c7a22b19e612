//! Fund flows: the pure planning that turns a platform payment, a refund of it, or a connected
//! account's available balance into transfer, reversal and payout steps.

use std::collections::{BTreeMap, BTreeSet};

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
    /// A platform payment succeeded (`payment_intent.succeeded` or `charge.succeeded`).
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
        "charge.succeeded" if on_platform => read_charge(&object).map(FundEvent::Payment),
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
    /// Where the step is stored.
    pub step: StepRef,
    /// The Stripe object id (`tr_…`, `trr_…`, `po_…`).
    pub stripe_id: String,
    /// What happened to it.
    pub kind: SettlementKind,
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

/// The step's next state after Stripe's report, or `None` when the report changes nothing.
pub fn settle(step: &Step, settlement: &Settlement, now: i64) -> Option<Step> {
    let (status, reason) = match &settlement.kind {
        // A final step keeps its word: Stripe's creation event may trail the worker's own record,
        // and a refused plan never created anything.
        SettlementKind::Created | SettlementKind::PayoutPaid if step.status.is_final() => return None,
        SettlementKind::Created | SettlementKind::PayoutPaid => (StepStatus::Succeeded, None),
        SettlementKind::PayoutFailed(code) => (StepStatus::Failed, Some(code.clone())),
        SettlementKind::PayoutCanceled => (StepStatus::Failed, Some("canceled".to_owned())),
    };
    let unchanged = step.status == status
        && step.reason == reason
        && step.stripe_id.as_deref() == Some(settlement.stripe_id.as_str());
    if unchanged {
        return None;
    }
    let mut next = step.clone();
    next.status = status;
    next.reason = reason;
    next.stripe_id = Some(settlement.stripe_id.clone());
    next.updated_at = now;
    next.version += 1;
    Some(next)
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
pub fn plan_transfers(
    payment: &Payment,
    is_known_account: impl Fn(&AccountId) -> bool,
    now: i64,
) -> TransferPlan {
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
            Some(destination) => {
                if !is_known_account(&destination) {
                    problems.push(format!("{destination} is not a known connected account"));
                }
                splits.push((destination, amount));
            }
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

/// Plans the reversals that bring each of a charge's transfers to its share of the cumulative
/// refund, `floor(transfer × refunded / amount)`, counting the reversals already recorded.
///
/// `transfers` are the payment's transfer steps and `existing_reversals` the reversal steps
/// recorded for them. Transfers that failed or were refused, and transfers funded by another
/// charge, are left alone. An `Err` plans nothing.
pub fn plan_reversals(
    refund: &Refund,
    transfers: &[Step],
    existing_reversals: &[Step],
    now: i64,
) -> Result<Vec<Step>, String> {
    if refund.amount <= 0 {
        return Err(format!(
            "charge {} has amount {}, so no share can be reversed",
            refund.charge_id, refund.amount
        ));
    }
    if refund.amount_refunded < 0 || refund.amount_refunded > refund.amount {
        return Err(format!(
            "charge {} reports {} refunded of {}, which is not a possible refund",
            refund.charge_id, refund.amount_refunded, refund.amount
        ));
    }
    let counts = |step: &Step| !matches!(step.status, StepStatus::Failed | StepStatus::Refused);
    let reversible: Vec<&Step> = transfers
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
    let mut planned = Vec::new();
    for transfer in reversible {
        let target =
            i128::from(transfer.amount) * i128::from(refund.amount_refunded) / i128::from(refund.amount);
        let already: i128 = existing_reversals
            .iter()
            .filter(|reversal| reversal.kind == StepKind::Reversal && counts(reversal) && reversal.amount > 0)
            .filter(|reversal| reversal.reverses_step.as_deref() == Some(transfer.step_id.as_str()))
            .map(|reversal| i128::from(reversal.amount))
            .sum();
        if target <= already {
            continue;
        }
        // Both fit: 0 < target - already <= target <= transfer.amount.
        let (Ok(target), Ok(amount)) = (i64::try_from(target), i64::try_from(target - already)) else {
            return Err(format!("reversal of {} does not fit in i64", transfer.step_id));
        };
        planned.push(Step {
            source_charge: Some(refund.charge_id.clone()),
            transfer_group: transfer.transfer_group.clone(),
            payment_key: Some(refund.payment_key.clone()),
            reverses_step: Some(transfer.step_id.clone()),
            ..Step::planned(
                StepKind::Reversal,
                format!("trr:{}:{target}", transfer.step_id),
                transfer.destination.clone(),
                amount,
                transfer.currency.clone(),
                now,
            )
        });
    }
    Ok(planned)
}

/// Plans a payout of each positive available currency for a known account on manual payouts,
/// skipping currencies that already have an open (queued, in flight or waiting) payout step.
pub fn plan_payouts(
    balance: &BalanceAvailable,
    account: Option<&AccountState>,
    open_payouts: &[Step],
    event_id: &str,
    now: i64,
) -> Vec<Step> {
    let Some(account) = account else { return Vec::new() };
    if account.account_id != balance.account || account.payout_schedule_interval.as_deref() != Some("manual")
    {
        return Vec::new();
    }
    let open = |currency: &str| {
        open_payouts.iter().any(|step| {
            step.kind == StepKind::Payout
                && step.destination == balance.account
                && !step.status.is_final()
                && step.currency.eq_ignore_ascii_case(currency)
        })
    };
    let mut seen = BTreeSet::new();
    let mut planned = Vec::new();
    for (currency, amount) in &balance.available {
        // A currency listed twice is paid out once, from its first entry.
        if !seen.insert(currency.as_str()) || *amount <= 0 || open(currency) {
            continue;
        }
        planned.push(Step::planned(
            StepKind::Payout,
            format!("po:{}:{event_id}:{currency}", balance.account),
            balance.account.clone(),
            *amount,
            currency.clone(),
            now,
        ));
    }
    planned
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

/// The `transfer:` metadata entries. A value that is not a string (Stripe only sends strings) is
/// kept as its JSON text, so that it is refused rather than silently dropped.
fn splits_of(object: &Value) -> BTreeMap<String, String> {
    let Some(metadata) = object.get("metadata").and_then(Value::as_object) else { return BTreeMap::new() };
    metadata
        .iter()
        .filter(|(key, _)| key.starts_with(SPLIT_PREFIX))
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
