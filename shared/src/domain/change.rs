//! The change feed's records: what changed about an account or a step, derived purely from the
//! state before and after a write, and stored in the same atomic write as that state (an outbox).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::account::{AccountId, AccountState};
use super::step::{Step, StepStatus};

/// `account.onboarding_status_changed`: `data` is `{from, to}`.
pub(crate) const ONBOARDING_STATUS_CHANGED: &str = "account.onboarding_status_changed";
/// `account.capability_changed`: `data` is `{capability, from, to}`.
pub(crate) const CAPABILITY_CHANGED: &str = "account.capability_changed";
/// `account.deauthorized`: `data` is `{}`.
pub(crate) const DEAUTHORIZED: &str = "account.deauthorized";
/// `step.status_changed`: `data` is `{step_id, kind, from, to, reason}`.
pub(crate) const STEP_STATUS_CHANGED: &str = "step.status_changed";
/// `payout.failed`: `data` is `{step_id, failure_code}`.
pub(crate) const PAYOUT_FAILED: &str = "payout.failed";
/// `account.payout_policy_changed`: `data` is `{from, to}`, each the account's own policy or
/// `null` for the deployment's default.
pub(crate) const PAYOUT_POLICY_CHANGED: &str = "account.payout_policy_changed";

/// One change, as `GET /changes` lists it and the notifier publishes it. It carries ids and
/// statuses only: never personal data or secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Stable: derived from what changed and the version it changed at, so that a consumer can
    /// dedupe an at-least-once delivery by it.
    pub id: String,
    /// The feed position, assigned by the store when the change is written; opaque to consumers.
    #[serde(default)]
    pub cursor: String,
    /// One of the change types above.
    #[serde(rename = "type")]
    pub change_type: String,
    /// The connected account it is about.
    pub account_id: AccountId,
    /// Unix time of the write.
    pub at: i64,
    /// The type's fields.
    pub data: Value,
}

impl Change {
    fn new(id: String, change_type: &str, account_id: &AccountId, at: i64, data: Value) -> Self {
        Self {
            id,
            cursor: String::new(),
            change_type: change_type.to_owned(),
            account_id: account_id.clone(),
            at,
            data,
        }
    }
}

/// What changed between an account's stored state (`None` for a new one) and its next state.
pub(crate) fn account_changes(before: Option<&AccountState>, after: &AccountState, at: i64) -> Vec<Change> {
    let account = &after.account_id;
    let version = after.version;
    let mut changes = Vec::new();
    let status_before = before.map(|state| state.onboarding_status);
    if status_before != Some(after.onboarding_status) {
        changes.push(Change::new(
            format!("chg_{account}_v{version}_status"),
            ONBOARDING_STATUS_CHANGED,
            account,
            at,
            json!({ "from": status_before.map(|status| status.as_str()), "to": after.onboarding_status.as_str() }),
        ));
    }
    for (capability, to) in &after.capabilities {
        let from = before.and_then(|state| state.capabilities.get(capability));
        if from != Some(to) {
            changes.push(Change::new(
                format!("chg_{account}_v{version}_cap_{capability}"),
                CAPABILITY_CHANGED,
                account,
                at,
                json!({ "capability": capability, "from": from, "to": to }),
            ));
        }
    }
    if let Some(failure) = &after.payout_failure
        && before.and_then(|state| state.payout_failure.as_ref()) != Some(failure)
    {
        changes.push(Change::new(
            format!("chg_{account}_v{version}_payout_failed"),
            PAYOUT_FAILED,
            account,
            at,
            json!({ "step_id": failure.step_id, "payout_id": failure.payout_id, "failure_code": failure.failure_code }),
        ));
    }
    let policy_before = before.and_then(|state| state.payout_policy.as_ref());
    if policy_before != after.payout_policy.as_ref() {
        changes.push(Change::new(
            format!("chg_{account}_v{version}_payout_policy"),
            PAYOUT_POLICY_CHANGED,
            account,
            at,
            json!({ "from": policy_before, "to": after.payout_policy }),
        ));
    }
    if after.deauthorized && !before.is_some_and(|state| state.deauthorized) {
        changes.push(Change::new(
            format!("chg_{account}_v{version}_deauthorized"),
            DEAUTHORIZED,
            account,
            at,
            json!({}),
        ));
    }
    changes
}

/// What changed between a step's stored state (`None` for a new one) and its next state: its
/// status, except a move to `in_flight`. A payout's failure is told by the account's change ([`account_changes`]), since a paid
/// payout can still fail after its step succeeded.
pub(crate) fn step_changes(before: Option<&Step>, after: &Step, at: i64) -> Vec<Change> {
    let from = before.map(|step| step.status);
    // `in_flight` is the worker's claim before it calls Stripe, not news for the platform; telling
    // it would make every claim a transaction, doubling a step's write cost.
    if from == Some(after.status) || after.status == StepStatus::InFlight {
        return Vec::new();
    }
    let step_id = &after.step_id;
    vec![Change::new(
        format!("chg_{step_id}_v{}", after.version),
        STEP_STATUS_CHANGED,
        &after.destination,
        at,
        json!({
            "step_id": step_id,
            "kind": after.kind.as_str(),
            "from": from.map(StepStatus::as_str),
            "to": after.status.as_str(),
            "reason": after.reason,
        }),
    )]
}

/// The changes of a write that plans `new_steps` and moves `updated` steps, whose stored states
/// are among `stored`.
pub fn steps_changes(stored: &[Step], new_steps: &[Step], updated: &[Step], at: i64) -> Vec<Change> {
    let before = |step: &Step| stored.iter().find(|stored| stored.step_id == step.step_id);
    new_steps
        .iter()
        .map(|step| step_changes(None, step, at))
        .chain(updated.iter().map(|step| step_changes(before(step), step, at)))
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests;
