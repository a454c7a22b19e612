//! Taking money back from sellers, and giving it back: refunds, failed refunds, disputes and
//! reinstated disputes all move a payment's transfers toward one target, the share of the charge
//! that is currently gone from the platform. Every move is computed from that cumulative target
//! and what the stored steps already took back, so any order of events, duplicates included,
//! ends at the same place, and what is reversed never exceeds what was transferred.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::PaymentRecord;
use crate::domain::step::{CauseKind, ChargeId, Step, StepCause, StepKind, StepStatus};

/// What a deployment does when Stripe withdraws a disputed charge's funds from the platform
/// (`CONNECT_FLOW_DISPUTE_POLICY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputePolicy {
    /// Reverse each seller's share of the disputed amount, and transfer it back if the dispute is won.
    #[default]
    Reverse,
    /// Move nothing; record each seller's share on the account as unrecovered.
    Hold,
    /// Move nothing and record no debt; the disputes still show on the account.
    None,
}

impl DisputePolicy {
    /// Reads the setting's value; `None` for anything but `reverse`, `hold` or `none`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "reverse" => Some(Self::Reverse),
            "hold" => Some(Self::Hold),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// One dispute of a payment's charge, as the payment's guard keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeRecord {
    /// The disputed charge.
    pub charge_id: ChargeId,
    /// The disputed amount, in minor units of `currency`.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// Stripe's `status` as of `status_at`.
    pub status: String,
    /// `created` of the event the status was read from.
    pub status_at: i64,
    /// Stripe withdrew the funds (`charge.dispute.funds_withdrawn`, or the dispute was lost).
    pub withdrawn: bool,
    /// Stripe gave them back (`charge.dispute.funds_reinstated`, or the dispute was won).
    pub reinstated: bool,
}

impl DisputeRecord {
    /// Whether the platform is out of this dispute's funds now: withdrawn and not given back.
    /// Inquiries (`warning_*`) never move money.
    pub(crate) fn funds_gone(&self) -> bool {
        self.withdrawn && !self.reinstated && !self.status.starts_with("warning_")
    }
}

/// A refund that failed or was canceled: Stripe put its money back on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRefund {
    /// The refund's amount.
    pub amount: i64,
    /// The refund's own `created`.
    pub refund_created: i64,
    /// `created` of the event that said it failed.
    pub failed_at: i64,
}

/// The share of a charge that is gone from the platform now, which the sellers' transfers are
/// brought to in proportion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clawback {
    /// The charge's captured amount.
    pub amount: i64,
    /// Refunded and not failed.
    pub refunded: i64,
    /// Disputed and not reinstated, under [`DisputePolicy::Reverse`]; 0 otherwise.
    pub disputed: i64,
}

impl Clawback {
    /// A split's target: `floor(split × gone / amount)`, never more than the split. A transfer
    /// Stripe made (a destination charge) is brought to its disputes' share only: refunds reverse
    /// it at Stripe, when the platform asks with `reverse_transfer`.
    pub fn share(&self, split: i64, by_stripe: bool) -> i64 {
        let gone = if by_stripe { self.disputed } else { self.refunded.saturating_add(self.disputed) };
        proportion(split, gone, self.amount)
    }
}

/// `floor(split × part / whole)`, with `part` clamped to `0..=whole`; 0 for a non-positive whole.
pub(crate) fn proportion(split: i64, part: i64, whole: i64) -> i64 {
    if whole <= 0 || split <= 0 {
        return 0;
    }
    let share = i128::from(split) * i128::from(part.clamp(0, whole)) / i128::from(whole);
    // 0 <= share <= split, so it fits.
    i64::try_from(share).unwrap_or(0).clamp(0, split)
}

/// What is refunded now: the newest `charge.refunded` snapshot, less each failed refund that
/// snapshot still counted (one created no later than the snapshot, failed no earlier than it).
pub(crate) fn refunded_now(record: &PaymentRecord) -> i64 {
    let Some(refund) = &record.refund else { return 0 };
    let still_counted: i64 = record
        .failed_refunds
        .values()
        .filter(|failed| failed.refund_created <= refund.created && refund.created <= failed.failed_at)
        .map(|failed| failed.amount.max(0))
        .fold(0, i64::saturating_add);
    refund.amount_refunded.saturating_sub(still_counted).max(0)
}

/// Disputed and not given back, in `currency`.
pub(crate) fn disputed_now(record: &PaymentRecord) -> i64 {
    record
        .disputes
        .values()
        .filter(|dispute| dispute.funds_gone())
        .map(|dispute| dispute.amount.max(0))
        .fold(0, i64::saturating_add)
}

/// The payment's clawback under `policy`, when the charge's amount is known.
pub(crate) fn clawback(record: &PaymentRecord, policy: DisputePolicy) -> Option<Clawback> {
    let amount = record.charge_amount()?;
    let disputed = if policy == DisputePolicy::Reverse { disputed_now(record) } else { 0 };
    Some(Clawback { amount, refunded: refunded_now(record), disputed })
}

/// The moves that bring a payment's transfers to their target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// New reversals and re-transfers.
    pub new_steps: Vec<Step>,
    /// Stored steps changed before they were sent (netted, shrunk or re-queued), each one version up.
    pub step_updates: Vec<Step>,
}

/// Whether a step's money counts: it is, or may become, a real Stripe object.
fn counts(step: &Step) -> bool {
    !matches!(step.status, StepStatus::Failed | StepStatus::Refused) && step.amount > 0
}

/// Whether a step can still be changed in the store without anything at Stripe changing.
fn unsent(step: &Step) -> bool {
    matches!(step.status, StepStatus::Queued | StepStatus::Waiting) && !step.may_have_been_sent()
}

/// The transfers whose splits are brought to the target: the payment's own planned transfers and
/// the one Stripe made for a destination charge, funded by this charge. Re-transfers are not
/// splits, and a transfer refused for a bad split was never owed.
fn splits<'s>(steps: &'s [Step], charge_id: Option<&str>) -> impl Iterator<Item = &'s Step> {
    steps.iter().filter(move |step| {
        step.kind == StepKind::Transfer
            && step.gives_back.is_none()
            && step.amount.saturating_add(step.netted) > 0
            && (step.status != StepStatus::Refused || is_netted_away(step))
            && step.status != StepStatus::Failed
            && match (step.source_charge.as_deref(), charge_id) {
                (Some(source), Some(charge)) => source == charge,
                _ => true,
            }
    })
}

/// A transfer the plan refused only because a refund or dispute took it back whole before it was
/// sent: it comes back if that money does.
fn is_netted_away(step: &Step) -> bool {
    step.status == StepStatus::Refused && step.amount == 0 && step.netted > 0 && step.stripe_id.is_none()
}

/// Plans the moves that bring each split to its share of `clawback`. `steps` are all the
/// payment's steps; `cause` names the event the new steps are for (the reversal's cause when money
/// is taken back, the re-transfer's when it is given back).
///
/// A split not sent yet is netted instead. Money taken back shrinks a re-transfer not sent yet
/// before it reverses; money given back shrinks a reversal not sent yet before it re-transfers.
/// Stripe-made transfers (destination charges) are only reversed for disputes: Stripe itself
/// reverses them for refunds made with `reverse_transfer`.
pub(crate) fn plan_moves(
    clawback: &Clawback,
    steps: &[Step],
    charge_id: Option<&str>,
    cause: &MoveCause,
    version: u64,
    now: i64,
) -> Result<Moves, String> {
    let mut moves = Moves::default();
    for split in splits(steps, charge_id) {
        let Some(split_amount) = split.amount.checked_add(split.netted) else {
            return Err(format!("transfer {} does not fit in i64", split.step_id));
        };
        let target = clawback.share(split_amount, split.by_stripe);
        let family: Vec<&Step> = std::iter::once(split)
            .chain(steps.iter().filter(|step| step.gives_back.as_deref() == Some(split.step_id.as_str())))
            .collect();
        let reversals_of = |transfer: &Step| -> Vec<&Step> {
            steps
                .iter()
                .filter(|step| step.kind == StepKind::Reversal && counts(step))
                .filter(|step| step.reverses_step.as_deref() == Some(transfer.step_id.as_str()))
                .collect()
        };
        let reversed: i64 = family
            .iter()
            .flat_map(|transfer| reversals_of(transfer))
            .map(|step| step.amount)
            .fold(0, i64::saturating_add);
        let given_back: i64 = family
            .iter()
            .skip(1)
            .filter(|step| counts(step))
            .map(|step| step.amount)
            .fold(0, i64::saturating_add);
        let moved = reversed.saturating_sub(given_back);
        let mut netted = split.netted;
        // A split not sent yet is netted, counting what reversals planned while it was in flight
        // (it may have been refused since) already take back once it is made.
        if !split.by_stripe && (unsent(split) || is_netted_away(split)) {
            netted = target.saturating_sub(moved).clamp(0, split_amount);
            if let Some(next) = renet(split, split_amount, netted, cause, now) {
                moves.step_updates.push(next);
            }
        }
        let taken = netted.saturating_add(moved);
        let mut owed = target.saturating_sub(taken);
        let mover = Mover { split, target, cause, version, steps, now };
        if owed > 0 {
            // Take back: first what a re-transfer has not sent yet, then by reversing.
            for retransfer in family.iter().skip(1).filter(|step| unsent(step)).rev() {
                let cut = owed.min(retransfer.amount);
                moves.step_updates.push(shrink(retransfer, cut, "taken back again before it was sent", now));
                owed -= cut;
                if owed == 0 {
                    break;
                }
            }
            for transfer in family.iter().filter(|step| step.may_have_been_sent()) {
                if owed == 0 {
                    break;
                }
                let left = transfer.amount.saturating_sub(
                    reversals_of(transfer).iter().map(|step| step.amount).fold(0, i64::saturating_add),
                );
                let amount = owed.min(left);
                if amount <= 0 {
                    continue;
                }
                moves.new_steps.push(mover.reversal(transfer, amount));
                owed -= amount;
            }
            if owed > 0 {
                return Err(format!(
                    "transfer {} has {owed} {} more to take back than is left to reverse",
                    split.step_id, split.currency
                ));
            }
        } else if owed < 0 {
            // Give back: first what a reversal has not sent yet, then by transferring again.
            let mut back = -owed;
            let mut unsent_reversals: Vec<&Step> = family
                .iter()
                .flat_map(|transfer| reversals_of(transfer))
                .filter(|step| unsent(step))
                .collect();
            unsent_reversals.sort_by(|a, b| b.step_id.cmp(&a.step_id));
            for reversal in unsent_reversals {
                let cut = back.min(reversal.amount);
                moves.step_updates.push(shrink(
                    reversal,
                    cut,
                    "no longer owed: the money came back first",
                    now,
                ));
                back -= cut;
                if back == 0 {
                    break;
                }
            }
            if back > 0 {
                moves.new_steps.push(mover.retransfer(back));
            }
        }
    }
    Ok(moves)
}

/// Why new moves are planned: the event's kind and the Stripe id it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MoveCause {
    /// A refund snapshot (`ch_…`) or a failed refund (`re_…`).
    Refund {
        /// The charge, for a snapshot.
        charge_id: ChargeId,
        /// The refund that failed, when one did.
        failed_refund: Option<String>,
    },
    /// A dispute (`dp_…`).
    Dispute(String),
}

impl MoveCause {
    /// The cause a step taking money back carries.
    fn taking_back(&self) -> StepCause {
        match self {
            Self::Refund { charge_id, .. } => StepCause::new(CauseKind::Refund, charge_id.as_str()),
            Self::Dispute(dispute) => StepCause::new(CauseKind::Dispute, dispute),
        }
    }

    /// The cause a step giving money back carries.
    fn giving_back(&self) -> StepCause {
        match self {
            Self::Refund { failed_refund: Some(refund), .. } => {
                StepCause::new(CauseKind::RefundFailed, refund)
            }
            Self::Refund { charge_id, failed_refund: None } => {
                StepCause::new(CauseKind::RefundFailed, charge_id.as_str())
            }
            Self::Dispute(dispute) => StepCause::new(CauseKind::DisputeWon, dispute),
        }
    }
}

/// A split not sent yet, netted by `netted`; `None` when it already is.
fn renet(split: &Step, split_amount: i64, netted: i64, cause: &MoveCause, now: i64) -> Option<Step> {
    if netted == split.netted {
        return None;
    }
    let mut next = split.clone();
    next.netted = netted;
    next.amount = split_amount - netted;
    if next.amount == 0 {
        next.status = StepStatus::Refused;
        let what = match cause {
            MoveCause::Refund { .. } => "refunded",
            MoveCause::Dispute(_) => "disputed",
        };
        next.reason = Some(format!("the payment was {what} before this transfer was sent"));
    } else if is_netted_away(split) {
        next.status = StepStatus::Queued;
        next.reason = None;
    }
    next.updated_at = now;
    next.version += 1;
    Some(next)
}

/// A step not sent yet, `cut` smaller; refused, with `why`, when nothing is left.
fn shrink(step: &Step, cut: i64, why: &str, now: i64) -> Step {
    let mut next = step.clone();
    next.amount -= cut.clamp(0, step.amount);
    if next.amount == 0 {
        next.status = StepStatus::Refused;
        next.reason = Some(why.to_owned());
    }
    next.updated_at = now;
    next.version += 1;
    next
}

/// A deterministic id for a new move: `base`, or `base:v{version}` when a step already has it
/// (a target the payment came back to after it moved away).
fn fresh_id(base: String, version: u64, steps: &[Step]) -> String {
    if steps.iter().any(|step| step.step_id == base) { format!("{base}:v{version}") } else { base }
}

/// Builds the new moves of one split toward its target.
struct Mover<'a> {
    split: &'a Step,
    target: i64,
    cause: &'a MoveCause,
    version: u64,
    steps: &'a [Step],
    now: i64,
}

impl Mover<'_> {
    /// A reversal of `amount` of `transfer` (the split, or one of its re-transfers).
    fn reversal(&self, transfer: &Step, amount: i64) -> Step {
        let id = format!("trr:{}:{}", transfer.step_id, self.target);
        Step {
            source_charge: self.split.source_charge.clone(),
            reverses_step: Some(transfer.step_id.clone()),
            ..self.step(StepKind::Reversal, id, transfer, amount, self.cause.taking_back())
        }
    }

    /// A re-transfer of `amount` to the split's seller, paid from the platform's balance.
    fn retransfer(&self, amount: i64) -> Step {
        let id = format!("{}:back:{}", self.split.step_id, self.target);
        Step {
            gives_back: Some(self.split.step_id.clone()),
            ..self.step(StepKind::Transfer, id, self.split, amount, self.cause.giving_back())
        }
    }

    fn step(&self, kind: StepKind, id: String, of: &Step, amount: i64, cause: StepCause) -> Step {
        Step {
            transfer_group: of.transfer_group.clone(),
            payment_key: self.split.payment_key.clone(),
            livemode: self.split.livemode,
            cause: Some(cause),
            ..Step::planned(
                kind,
                fresh_id(id, self.version, self.steps),
                of.destination.clone(),
                amount,
                of.currency.clone(),
                self.now,
            )
        }
    }
}

/// Each split's destination and its share of the disputes the platform is out of, for the
/// accounts' dispute summaries under `hold` and `none` (under `reverse`, the reversals are the
/// record, and nothing is left unrecovered).
pub(crate) fn held_shares(
    record: &PaymentRecord,
    steps: &[Step],
    policy: DisputePolicy,
) -> BTreeMap<String, BTreeMap<String, i64>> {
    let mut held: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let Some(amount) = record.charge_amount() else { return held };
    for (dispute_id, dispute) in &record.disputes {
        for split in splits(steps, Some(dispute.charge_id.as_str())) {
            let share = if policy == DisputePolicy::Reverse || !dispute.funds_gone() {
                0
            } else {
                proportion(split.amount.saturating_add(split.netted), dispute.amount, amount)
            };
            let entry =
                held.entry(split.destination.to_string()).or_default().entry(dispute_id.clone()).or_default();
            *entry = entry.saturating_add(share);
        }
    }
    held
}

#[cfg(test)]
mod tests;
