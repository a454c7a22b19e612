//! Fund flows: the pure planning that turns a platform payment, a refund of it, or a connected
//! account's available balance into transfer, reversal and payout steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::account::{AccountDispute, AccountId, AccountState, PayoutFailure};
use super::step::{CauseKind, ChargeId, PaymentKey, Step, StepCause, StepId, StepKind, StepRef, StepStatus};
use crate::stripe::event::{Event, is_plausible_id};

pub mod recovery;

pub use recovery::DisputePolicy;
use recovery::{DisputeRecord, FailedRefund, MoveCause, clawback, held_shares, plan_moves};

/// The metadata key prefix that names a split: `transfer:acct_…` = amount in minor units.
const SPLIT_PREFIX: &str = "transfer:";

/// The metadata key every object a step creates carries, so that Stripe's lifecycle events can
/// be matched back to the step.
pub const STEP_METADATA: &str = "connect_flow_step";
/// The payment a transfer or reversal step belongs to (where the step is stored).
pub(crate) const PAYMENT_METADATA: &str = "connect_flow_payment";

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
    /// A dispute of a platform charge (`charge.dispute.*`).
    Dispute(Dispute),
    /// A refund of a platform charge failed or was canceled (`charge.refund.updated`,
    /// `refund.updated`, `refund.failed`): Stripe put its money back.
    RefundFailed(RefundFailure),
}

/// A dispute event, read from its dispute object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    /// `dp_…`.
    pub dispute_id: String,
    /// The disputed charge.
    pub charge_id: ChargeId,
    /// The charge's payment intent id, else the charge id.
    pub payment_key: PaymentKey,
    /// The disputed amount.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// Stripe's `status`.
    pub status: String,
    /// The event said the funds were withdrawn (`funds_withdrawn`).
    pub withdrawn: bool,
    /// The event said the funds were reinstated (`funds_reinstated`).
    pub reinstated: bool,
    /// The event's `created`.
    pub at: i64,
}

/// A refund that failed or was canceled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundFailure {
    /// `re_…`.
    pub refund_id: String,
    /// The refunded charge.
    pub charge_id: ChargeId,
    /// The charge's payment intent id, else the charge id.
    pub payment_key: PaymentKey,
    /// The refund's amount.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The refund's own `created`.
    pub refund_created: i64,
    /// The event's `created`.
    pub at: i64,
}

/// The transfer Stripe makes for a destination charge (`transfer_data.destination`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationTransfer {
    /// The seller it pays.
    pub destination: AccountId,
    /// The charge's `transfer` (`tr_…`), when the event names it.
    pub transfer_id: Option<String>,
    /// What it moves: `transfer_data.amount`, else the amount less the application fee.
    pub amount: i64,
}

/// A succeeded platform payment and the splits its metadata asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The payment intent id when there is one, else the charge id, so that both triggers of one
    /// payment plan the same step ids.
    pub payment_key: PaymentKey,
    /// The charge the transfers are funded from (`source_transaction`), when the event names it.
    pub charge_id: Option<ChargeId>,
    /// Minor units received (`amount_received` or `amount_captured`, else `amount`).
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The payment's `transfer_group`, when set.
    pub transfer_group: Option<String>,
    /// The metadata keys that start with `transfer:`, with their values as sent.
    pub splits: BTreeMap<String, String>,
    /// For a destination charge: the transfer Stripe makes.
    pub destination: Option<DestinationTransfer>,
}

/// A platform charge's refund state; `amount_refunded` is cumulative. Stored per payment, so that
/// transfers planned after it (the refund's event arrived first) are reversed as they are planned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refund {
    /// The refunded charge (`ch_…`).
    pub charge_id: ChargeId,
    /// The charge's payment intent id, else the charge id: the key its transfers were planned under.
    pub payment_key: PaymentKey,
    /// The charge's captured amount (`amount_captured` when positive, else `amount`).
    pub amount: i64,
    /// Everything refunded so far, in minor units.
    pub amount_refunded: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The event's `created`: the newest snapshot decides, since a failed refund lowers
    /// `amount_refunded`.
    #[serde(default)]
    pub created: i64,
}

/// A charge's captured amount, as a payment or refund event said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeAmount {
    /// Minor units captured.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
}

/// One payment's guard: every plan for the payment (its transfers, refunds and reversals) reads
/// it and writes it back one version up, in the same conditional write as the steps it plans, so
/// that two plans for one payment can never both commit from the same read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    /// The payment intent id, else the charge id.
    pub payment_key: PaymentKey,
    /// The trigger whose splits planned the payment's transfers; a twin with other splits loses.
    pub planned_by: Option<PlannedBy>,
    /// The newest refund seen.
    pub refund: Option<Refund>,
    /// The charge's amount, once an event has said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<ChargeAmount>,
    /// The charge's disputes, by `dp_…`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disputes: BTreeMap<String, DisputeRecord>,
    /// The charge's refunds that failed or were canceled, by `re_…`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_refunds: BTreeMap<String, FailedRefund>,
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
    pub fn next(current: Option<&Self>, payment_key: &PaymentKey) -> Self {
        let mut next =
            current.cloned().unwrap_or_else(|| Self { payment_key: payment_key.clone(), ..Self::default() });
        next.version += 1;
        next
    }

    /// The charge's captured amount, from its payment or else its refund.
    pub(crate) fn charge_amount(&self) -> Option<i64> {
        self.charge.as_ref().map(|charge| charge.amount).or(self.refund.as_ref().map(|refund| refund.amount))
    }

    /// Whether anything is known of the payment itself (its transfers planned, or a refund read).
    fn knows_the_charge(&self) -> bool {
        self.planned_by.is_some() || self.charge.is_some() || self.refund.is_some()
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
    /// Accounts whose dispute summary it changed, each one version up.
    pub accounts: Vec<AccountState>,
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
    /// Each entry of `available[]` that could be read, with its split by source type.
    pub entries: Vec<super::payout::BalanceEntry>,
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
        "charge.refunded" if on_platform => {
            read_refund(&object).map(|refund| FundEvent::Refund(Refund { created: event.created, ..refund }))
        }
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.closed"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated"
            if on_platform =>
        {
            read_dispute(event, &object).map(FundEvent::Dispute)
        }
        "charge.refund.updated" | "refund.updated" | "refund.failed" if on_platform => {
            read_refund_failure(event, &object).map(FundEvent::RefundFailed)
        }
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
        let payment_key = metadata.get(PAYMENT_METADATA).and_then(Value::as_str).map(PaymentKey::from);
        let stripe_id = object.get("id")?.as_str().filter(|id| is_plausible_id(id))?;
        Some(Settlement {
            step: StepRef {
                kind,
                step_id: step_id.into(),
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

/// The account after Stripe reported on one of its payouts, when that changes it: a failure is
/// recorded; a later payout reaching the bank clears an earlier one's failure, while the same
/// payout's failure stands, since Stripe can fail a payout after paying it.
pub(crate) fn record_payout_outcome(
    account: &AccountState,
    settled: &Settled,
    at: i64,
    step_id: &StepId,
) -> Option<AccountState> {
    let mut next = account.clone();
    match (&settled.payout_failure, &settled.payout_paid) {
        (Some((payout_id, failure_code)), _) => {
            next.payout_failure = Some(PayoutFailure {
                payout_id: payout_id.clone(),
                failure_code: failure_code.clone(),
                failed_at: at,
                step_id: Some(step_id.clone()),
            });
        }
        (None, Some(paid)) => {
            let cleared = next
                .payout_failure
                .as_ref()
                .is_some_and(|failure| failure.payout_id != *paid && failure.failed_at <= at);
            if !cleared {
                return None;
            }
            next.payout_failure = None;
        }
        (None, None) => return None,
    }
    next.version += 1;
    Some(next)
}

fn read_intent(intent: &Value) -> Option<Payment> {
    let payment_key = id_of(intent.get("id"))?.into();
    // `latest_charge` replaced `charges` in API version 2022-11-15.
    let charge_id = id_of(intent.get("latest_charge"))
        .or_else(|| id_of(value_at(intent, &["charges", "data"]).and_then(|data| data.get(0))));
    let amount = i64_at(intent, "amount_received").or_else(|| i64_at(intent, "amount"))?;
    Some(Payment {
        payment_key,
        charge_id: charge_id.map(ChargeId::from),
        amount,
        currency: currency_at(intent)?,
        transfer_group: id_of(intent.get("transfer_group")),
        splits: splits_of(intent),
        destination: destination_of(intent, amount, None),
    })
}

/// A destination charge's transfer: `transfer_data.destination`, for `transfer_data.amount` or
/// else the amount less `application_fee_amount`.
fn destination_of(object: &Value, amount: i64, transfer_id: Option<String>) -> Option<DestinationTransfer> {
    let transfer_data = object.get("transfer_data")?;
    let destination = AccountId::parse(&id_of(transfer_data.get("destination"))?)?;
    let fee = i64_at(object, "application_fee_amount").unwrap_or(0).max(0);
    let amount = i64_at(transfer_data, "amount").unwrap_or_else(|| amount.saturating_sub(fee)).max(0);
    Some(DestinationTransfer { destination, transfer_id, amount })
}

fn read_dispute(event: &Event, dispute: &Value) -> Option<Dispute> {
    let charge_id = id_of(dispute.get("charge"))?;
    Some(Dispute {
        dispute_id: id_of(dispute.get("id"))?,
        payment_key: id_of(dispute.get("payment_intent")).unwrap_or_else(|| charge_id.clone()).into(),
        charge_id: charge_id.into(),
        amount: i64_at(dispute, "amount").filter(|amount| *amount >= 0)?,
        currency: currency_at(dispute)?,
        status: dispute
            .get("status")
            .and_then(Value::as_str)
            .filter(|status| is_plausible_id(status))?
            .to_owned(),
        withdrawn: event.event_type == "charge.dispute.funds_withdrawn",
        reinstated: event.event_type == "charge.dispute.funds_reinstated",
        at: event.created,
    })
}

/// A refund object whose `status` is `failed` or `canceled`; `None` for any other status.
fn read_refund_failure(event: &Event, refund: &Value) -> Option<RefundFailure> {
    let status = refund.get("status").and_then(Value::as_str)?;
    if status != "failed" && status != "canceled" {
        return None;
    }
    let charge_id = id_of(refund.get("charge"))?;
    Some(RefundFailure {
        refund_id: id_of(refund.get("id"))?,
        payment_key: id_of(refund.get("payment_intent")).unwrap_or_else(|| charge_id.clone()).into(),
        charge_id: charge_id.into(),
        amount: i64_at(refund, "amount").filter(|amount| *amount > 0)?,
        currency: currency_at(refund)?,
        refund_created: i64_at(refund, "created").unwrap_or(event.created),
        at: event.created,
    })
}

fn read_charge(charge: &Value) -> Option<Payment> {
    // An authorisation without capture also says `charge.succeeded`; no money has moved yet.
    if charge.get("captured").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let charge_id = id_of(charge.get("id"))?;
    let amount = i64_at(charge, "amount_captured").or_else(|| i64_at(charge, "amount"))?;
    Some(Payment {
        payment_key: id_of(charge.get("payment_intent")).unwrap_or_else(|| charge_id.clone()).into(),
        amount,
        currency: currency_at(charge)?,
        transfer_group: id_of(charge.get("transfer_group")),
        splits: splits_of(charge),
        destination: destination_of(charge, amount, id_of(charge.get("transfer"))),
        charge_id: Some(charge_id.into()),
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
        payment_key: id_of(charge.get("payment_intent")).unwrap_or_else(|| charge_id.clone()).into(),
        charge_id: charge_id.into(),
        amount,
        amount_refunded: i64_at(charge, "amount_refunded")?,
        currency: currency_at(charge)?,
        created: 0,
    })
}

fn read_balance(event: &Event, balance: &Value) -> Option<BalanceAvailable> {
    let account = event.account.as_deref().and_then(AccountId::parse)?;
    balance.get("available")?.as_array()?;
    Some(BalanceAvailable { account, entries: super::payout::read_balance_entries(balance) })
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
        transfer_group: Some(
            payment.transfer_group.clone().unwrap_or_else(|| payment.payment_key.to_string()),
        ),
        payment_key: Some(payment.payment_key.clone()),
        status,
        reason,
        cause: Some(StepCause::new(CauseKind::Payment, payment.payment_key.clone())),
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

/// What a fund-flow plan knows of the event it plans for, besides its object.
#[derive(Debug, Clone, Copy)]
pub struct FundContext<'a> {
    /// `evt_…`.
    pub event_id: &'a str,
    /// The event's type.
    pub event_type: &'a str,
    /// The event's livemode, which the steps it plans carry.
    pub livemode: Option<bool>,
    /// Unix time now.
    pub now: i64,
    /// The deployment's dispute policy.
    pub policy: DisputePolicy,
}

/// Plans a payment's transfers from one of its triggers, against the payment's guard.
///
/// The first trigger with splits to commit decides: a twin with the same splits is `unchanged`,
/// one with other splits is `refused` with the reason, since paying both would pay twice. What a
/// refund or dispute already took back is netted out: a transfer is planned short by its share,
/// and one taken back whole is refused, never sent to be reversed. A destination charge plans no
/// transfer (Stripe makes it): the one Stripe made is recorded, so that a dispute can reverse it.
pub fn plan_payment(
    payment: &Payment,
    record: Option<&PaymentRecord>,
    context: &FundContext<'_>,
) -> FundPlan {
    use crate::store::EventOutcome;
    if let Some(destination) = &payment.destination {
        return plan_destination_charge(payment, destination, record, context);
    }
    if payment.splits.is_empty() {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    if let Some(refusal) = twin_refusal(payment, record, context) {
        return refusal;
    }
    let mut next = planned_record(payment, record, context);
    let (outcome, reason, mut steps) = match plan_transfers(payment, context.now) {
        TransferPlan::NoSplits => return FundPlan::nothing(EventOutcome::Unchanged),
        TransferPlan::Planned(steps) => (EventOutcome::Applied, None, steps),
        TransferPlan::Refused { reason, steps } => (EventOutcome::Refused, Some(reason), steps),
    };
    if outcome == EventOutcome::Applied
        && let Some(clawback) = clawback(&next, context.policy)
    {
        for transfer in &mut steps {
            let share = clawback.share(transfer.amount, false);
            net_out(transfer, share);
        }
    }
    for step in &mut steps {
        step.livemode = context.livemode;
    }
    next.charge.get_or_insert(ChargeAmount { amount: payment.amount, currency: payment.currency.clone() });
    FundPlan { outcome, reason, payment: Some(next), new_steps: steps, ..FundPlan::default() }
}

/// `Some` when the payment's transfers were planned already: unchanged for a twin with the same
/// splits, refused for one with other splits.
fn twin_refusal(
    payment: &Payment,
    record: Option<&PaymentRecord>,
    context: &FundContext<'_>,
) -> Option<FundPlan> {
    use crate::store::EventOutcome;
    let planned = record?.planned_by.as_ref()?;
    if planned.splits == payment.splits {
        return Some(FundPlan::nothing(EventOutcome::Unchanged));
    }
    Some(FundPlan::refused(format!(
        "the splits of {} {} differ from those of {} {}, which planned payment {} first; the first \
         trigger to be recorded decides",
        context.event_type, context.event_id, planned.event_type, planned.event_id, payment.payment_key
    )))
}

/// The payment's guard, one version up, naming this trigger as the one that planned it.
fn planned_record(
    payment: &Payment,
    record: Option<&PaymentRecord>,
    context: &FundContext<'_>,
) -> PaymentRecord {
    let mut next = PaymentRecord::next(record, &payment.payment_key);
    next.planned_by = Some(PlannedBy {
        event_id: context.event_id.to_owned(),
        event_type: context.event_type.to_owned(),
        splits: payment.splits.clone(),
    });
    next.charge = Some(ChargeAmount { amount: payment.amount, currency: payment.currency.clone() });
    next
}

/// Records the transfer Stripe made for a destination charge, as a succeeded step that is never
/// sent. Split metadata on a destination charge is refused: Stripe already paid the seller.
fn plan_destination_charge(
    payment: &Payment,
    destination: &DestinationTransfer,
    record: Option<&PaymentRecord>,
    context: &FundContext<'_>,
) -> FundPlan {
    use crate::store::EventOutcome;
    let step_id = format!("tr:{}:{}", payment.payment_key, destination.destination);
    if record.is_some_and(|record| record.planned_by.is_some()) {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    let mut next = planned_record(payment, record, context);
    let transfer = Step {
        status: StepStatus::Succeeded,
        stripe_id: destination.transfer_id.clone(),
        source_charge: payment.charge_id.clone(),
        transfer_group: payment.transfer_group.clone(),
        payment_key: Some(payment.payment_key.clone()),
        livemode: context.livemode,
        by_stripe: true,
        cause: Some(StepCause::new(CauseKind::Payment, payment.payment_key.clone())),
        ..Step::planned(
            StepKind::Transfer,
            step_id,
            destination.destination.clone(),
            destination.amount,
            payment.currency.clone(),
            context.now,
        )
    };
    let reason = (!payment.splits.is_empty()).then(|| {
        format!(
            "{} is a destination charge: Stripe paid {} itself, so its transfer: metadata is not paid",
            payment.payment_key, destination.destination
        )
    });
    let mut new_steps = vec![transfer];
    // A dispute read before the payment: reverse its share now.
    if let Some(clawback) = clawback(&next, context.policy)
        && let Some((cause, _)) = next.disputes.iter().next()
        && let Ok(moves) = plan_moves(
            &clawback,
            &new_steps,
            payment.charge_id.as_deref(),
            &MoveCause::Dispute(cause.clone()),
            next.version,
            context.now,
        )
    {
        new_steps.extend(moves.new_steps);
    }
    next.charge.get_or_insert(ChargeAmount { amount: payment.amount, currency: payment.currency.clone() });
    FundPlan { outcome: EventOutcome::Applied, reason, payment: Some(next), new_steps, ..FundPlan::default() }
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

/// Plans what a refund snapshot changes, against the payment's guard: each transfer is brought to
/// its share of what is gone from the charge now ([`plan_moves`]). The newest snapshot decides,
/// since a failed refund lowers `amount_refunded`: an older one is `stale`, one of the same second
/// that refunds no more is `unchanged`.
pub fn plan_refund(
    refund: &Refund,
    record: Option<&PaymentRecord>,
    steps: &[Step],
    context: &FundContext<'_>,
) -> FundPlan {
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
    if let Some(stored) = record.and_then(|record| record.refund.as_ref()) {
        if refund.created < stored.created {
            return FundPlan::nothing(EventOutcome::Stale);
        }
        if refund.created == stored.created && refund.amount_refunded <= stored.amount_refunded {
            return FundPlan::nothing(EventOutcome::Unchanged);
        }
    }
    let mut next = PaymentRecord::next(record, &refund.payment_key);
    next.refund = Some(refund.clone());
    // A newer snapshot of the same amount changes nothing, unless it no longer counts a refund
    // that failed in between (another refund of the same size made up for it).
    if let Some(record) = record
        && record.refund.as_ref().is_some_and(|stored| stored.amount_refunded == refund.amount_refunded)
        && recovery::refunded_now(record) == recovery::refunded_now(&next)
    {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    let cause = MoveCause::Refund { charge_id: refund.charge_id.clone(), failed_refund: None };
    replan(next, steps, Some(&refund.charge_id), &refund.currency, &cause, context)
}

/// Plans what a failed or canceled refund gives back: the sellers' share of it, re-transferred
/// (or netted back onto a transfer not sent yet). A refund already known to have failed is
/// `unchanged`; one for a charge never seen is kept for the charge's later events.
pub fn plan_refund_failure(
    failure: &RefundFailure,
    record: Option<&PaymentRecord>,
    steps: &[Step],
    context: &FundContext<'_>,
) -> FundPlan {
    use crate::store::EventOutcome;
    if record.is_some_and(|record| record.failed_refunds.contains_key(&failure.refund_id)) {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    let mut next = PaymentRecord::next(record, &failure.payment_key);
    next.failed_refunds.insert(
        failure.refund_id.clone(),
        FailedRefund {
            amount: failure.amount,
            refund_created: failure.refund_created,
            failed_at: failure.at,
        },
    );
    let cause = MoveCause::Refund {
        charge_id: failure.charge_id.clone(),
        failed_refund: Some(failure.refund_id.clone()),
    };
    replan(next, steps, Some(&failure.charge_id), &failure.currency, &cause, context)
}

/// Plans what a dispute event changes: the dispute's state on the payment's guard (withdrawn and
/// reinstated only ever become true, so events in any order end the same), the moves that bring
/// each transfer to its share under the policy, and each seller's dispute summary.
pub fn plan_dispute(
    dispute: &Dispute,
    record: Option<&PaymentRecord>,
    steps: &[Step],
    accounts: &[AccountState],
    context: &FundContext<'_>,
) -> FundPlan {
    use crate::store::EventOutcome;
    let mut next = PaymentRecord::next(record, &dispute.payment_key);
    let entry = next.disputes.entry(dispute.dispute_id.clone()).or_insert_with(|| DisputeRecord {
        charge_id: dispute.charge_id.clone(),
        amount: dispute.amount,
        currency: dispute.currency.clone(),
        status: dispute.status.clone(),
        status_at: dispute.at,
        withdrawn: false,
        reinstated: false,
    });
    if dispute.at >= entry.status_at {
        entry.status.clone_from(&dispute.status);
        entry.status_at = dispute.at;
        entry.amount = dispute.amount;
    }
    let inquiry = dispute.status.starts_with("warning_");
    entry.withdrawn |= !inquiry && (dispute.withdrawn || dispute.status == "lost");
    entry.reinstated |= !inquiry && (dispute.reinstated || dispute.status == "won");
    let after = entry.clone();
    if record.is_some_and(|record| record.disputes.get(&dispute.dispute_id) == Some(&after)) {
        return FundPlan::nothing(EventOutcome::Unchanged);
    }
    let cause = MoveCause::Dispute(dispute.dispute_id.clone());
    let mut plan = replan(next, steps, Some(&dispute.charge_id), &dispute.currency, &cause, context);
    if let Some(next) = &plan.payment {
        plan.accounts = dispute_summaries(next, steps, accounts, context.policy);
    }
    plan
}

/// Brings every transfer of the payment to its target after `next` changed, with `next` as the
/// guard to write. A charge never seen (no transfers, no amount) is kept as `unknown_charge`:
/// its payment event nets out what is gone when it comes.
fn replan(
    next: PaymentRecord,
    steps: &[Step],
    charge_id: Option<&str>,
    currency: &str,
    cause: &MoveCause,
    context: &FundContext<'_>,
) -> FundPlan {
    use crate::store::EventOutcome;
    if !next.knows_the_charge() && steps.is_empty() {
        return FundPlan { outcome: EventOutcome::UnknownCharge, payment: Some(next), ..FundPlan::default() };
    }
    let Some(clawback) = clawback(&next, context.policy) else {
        return FundPlan::refused(format!(
            "the amount of charge {} is not recorded, so no share can be moved",
            charge_id.unwrap_or("?")
        ));
    };
    if let Some(reason) = currency_mismatch(steps, charge_id, currency) {
        return FundPlan::refused(reason);
    }
    match plan_moves(&clawback, steps, charge_id, cause, next.version, context.now) {
        Ok(moves) => FundPlan {
            outcome: EventOutcome::Applied,
            reason: None,
            payment: Some(next),
            new_steps: moves.new_steps,
            step_updates: moves.step_updates,
            accounts: Vec::new(),
        },
        Err(reason) => FundPlan::refused(reason),
    }
}

/// Why a charge in `currency` cannot move its transfers: one of them is in another currency.
fn currency_mismatch(steps: &[Step], charge_id: Option<&str>, currency: &str) -> Option<String> {
    let transfer = steps.iter().find(|step| {
        step.kind == StepKind::Transfer
            && step.source_charge.as_deref().is_none_or(|source| Some(source) == charge_id)
            && !step.currency.eq_ignore_ascii_case(currency)
    })?;
    Some(format!(
        "charge {} is in {currency} but transfer {} is in {}",
        charge_id.unwrap_or("?"),
        transfer.step_id,
        transfer.currency
    ))
}

/// Each known seller's dispute summary after the payment's disputes changed, one version up where
/// it changed: every dispute of the payment that reaches the seller, and what of it is unrecovered.
fn dispute_summaries(
    record: &PaymentRecord,
    steps: &[Step],
    accounts: &[AccountState],
    policy: DisputePolicy,
) -> Vec<AccountState> {
    let held = held_shares(record, steps, policy);
    let mut changed = Vec::new();
    for account in accounts {
        let Some(shares) = held.get(account.account_id.as_str()) else { continue };
        let mut next = account.clone();
        for (dispute_id, unrecovered) in shares {
            let Some(dispute) = record.disputes.get(dispute_id) else { continue };
            next.disputes.cases.insert(
                dispute_id.clone(),
                AccountDispute {
                    charge_id: dispute.charge_id.to_string(),
                    status: dispute.status.clone(),
                    currency: dispute.currency.clone(),
                    unrecovered: *unrecovered,
                },
            );
        }
        next.disputes.recount();
        if next.disputes != account.disputes {
            next.version += 1;
            changed.push(next);
        }
    }
    changed
}

/// The reversals, and the reduced unsent transfers, that bring each of a charge's transfers to
/// its share of a cumulative refund alone (no disputes, no failed refunds). `steps` are all the
/// payment's steps. An `Err` plans nothing.
pub fn plan_reversals(refund: &Refund, steps: &[Step], now: i64) -> Result<(Vec<Step>, Vec<Step>), String> {
    let clawback =
        recovery::Clawback { amount: refund.amount, refunded: refund.amount_refunded, disputed: 0 };
    if let Some(reason) = currency_mismatch(steps, Some(&refund.charge_id), &refund.currency) {
        return Err(reason);
    }
    let cause = MoveCause::Refund { charge_id: refund.charge_id.clone(), failed_refund: None };
    let moves = plan_moves(&clawback, steps, Some(&refund.charge_id), &cause, 0, now)?;
    Ok((moves.new_steps, moves.step_updates))
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
