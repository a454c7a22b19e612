//! Accounts v2 (`GET /v2/core/accounts/{id}`): what the onboarding rule reads from a v2 account,
//! and the v2 rule itself (DESIGN.md, "Accounts v2 and thin events"). Pure and lenient, like the v1
//! rule: a missing or oddly shaped field reads as unknown, never as a failure.
//!
//! The fetch worker applies a fetched v2 account as a `v2.core.account` event through
//! [`super::decide`].

use std::collections::BTreeMap;

use serde_json::Value;

use super::{AccountState, AccountsApi, OnboardingStatus, Requirements, is_current, set_capability};

/// The capability codes that restrict a capability without being a reason of their own.
const REQUIREMENT_CODES: [&str; 2] = ["requirements_past_due", "requirements_pending_verification"];

/// One v2 capability: its status, and the codes of its `status_details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Capability {
    /// `active`, `pending`, `restricted` or `unsupported`.
    pub status: String,
    /// Each `status_details[].code`.
    pub codes: Vec<String>,
}

/// What the v2 onboarding rule reads from a v2 account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V2Account {
    /// Whether `closed` is true.
    pub closed: bool,
    /// Every capability under `configuration.*.capabilities`, by dotted path
    /// (`merchant.card_payments`, `recipient.stripe_balance.stripe_transfers`).
    pub capabilities: BTreeMap<String, V2Capability>,
    /// The requirement entries' descriptions awaiting the user, by `minimum_deadline.status`, and
    /// those awaiting Stripe as `pending_verification`.
    pub requirements: Requirements,
}

/// Reads a v2 account object.
pub fn read_v2_account(account: &Value) -> V2Account {
    let mut read = V2Account {
        closed: account.get("closed").and_then(Value::as_bool) == Some(true),
        ..V2Account::default()
    };
    if let Some(configurations) = account.get("configuration").and_then(Value::as_object) {
        for (configuration, settings) in configurations {
            if let Some(capabilities) = settings.get("capabilities") {
                collect_capabilities(configuration, capabilities, &mut read.capabilities);
            }
        }
    }
    read.requirements = read_entries(account.get("requirements"));
    read
}

/// The requirement entries' descriptions awaiting the user, by `minimum_deadline.status`, and
/// those awaiting Stripe as `pending_verification`.
fn read_entries(requirements: Option<&Value>) -> Requirements {
    let mut read = Requirements::default();
    let entries = requirements
        .and_then(|requirements| requirements.get("entries"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for entry in entries {
        let description =
            entry.get("description").and_then(Value::as_str).unwrap_or("unnamed requirement").to_owned();
        let awaiting = entry.get("awaiting_action_from").and_then(Value::as_str);
        let deadline = entry.pointer("/minimum_deadline/status").and_then(Value::as_str);
        let list = match (awaiting, deadline) {
            (Some("stripe"), _) => &mut read.pending_verification,
            (Some("user"), Some("past_due")) => &mut read.past_due,
            (Some("user"), Some("currently_due")) => &mut read.currently_due,
            (Some("user"), Some("eventually_due")) => &mut read.eventually_due,
            _ => continue,
        };
        list.push(description);
    }
    read
}

impl V2Account {
    /// What the v2 rule reads, as stored on the account: `closed` is kept as its
    /// deauthorisation, which the caller passes on its own.
    pub fn of_state(state: &AccountState) -> Self {
        let capabilities = state
            .capabilities
            .iter()
            .map(|(path, status)| {
                let codes = state.capability_codes.get(path).cloned().unwrap_or_default();
                (path.clone(), V2Capability { status: status.clone(), codes })
            })
            .collect();
        Self { closed: false, capabilities, requirements: state.requirements.clone() }
    }
}

/// Overwrites the account from a fetched v2 account object, ordered like a v1 account object:
/// each capability on its own guard, the rest on the account's. Returns whether any part was
/// current.
pub(super) fn apply_v2_account_object(state: &mut AccountState, account: &Value, created: i64) -> bool {
    let read = read_v2_account(account);
    state.api = AccountsApi::V2;
    let mut changed = false;
    for (path, capability) in &read.capabilities {
        if set_capability(state, path, &capability.status, created) {
            changed = true;
            if capability.codes.is_empty() {
                state.capability_codes.remove(path);
            } else {
                state.capability_codes.insert(path.clone(), capability.codes.clone());
            }
        }
    }
    // `closed` is the v2 word on the relationship, ordered like v1's (de)authorisation events.
    if is_current(state.ordering.authorization, created) {
        state.ordering.authorization = Some(created);
        state.deauthorized = read.closed;
        changed = true;
    }
    if !is_current(state.ordering.account, created) {
        return changed;
    }
    state.ordering.account = Some(created);
    state.charges_enabled = Some(v2_charges_enabled(&read));
    state.payouts_enabled = Some(v2_payouts_enabled(&read));
    state.details_submitted = None;
    state.disabled_reason = v2_onboarding_status(&read, false).1;
    state.future_requirements =
        account.get("future_requirements").filter(|r| r.is_object()).map(|r| read_entries(Some(r)));
    state.requirements = read.requirements;
    true
}

/// A capability is any object with a string `status`; groups (`stripe_balance`) nest them.
fn collect_capabilities(path: &str, node: &Value, into: &mut BTreeMap<String, V2Capability>) {
    let Some(object) = node.as_object() else { return };
    if let Some(status) = object.get("status").and_then(Value::as_str) {
        let codes = object
            .get("status_details")
            .and_then(Value::as_array)
            .map(|details| {
                details
                    .iter()
                    .filter_map(|detail| detail.get("code").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        into.insert(path.to_owned(), V2Capability { status: status.to_owned(), codes });
        return;
    }
    for (name, child) in object {
        collect_capabilities(&format!("{path}.{name}"), child, into);
    }
}

/// The v2 rule, first match wins, and the `disabled_reason` it names. `closed_event_newest` is
/// whether `v2.core.account.closed` is the newest word on the account.
pub fn v2_onboarding_status(
    account: &V2Account,
    closed_event_newest: bool,
) -> (OnboardingStatus, Option<String>) {
    let capabilities = || account.capabilities.values();
    if account.closed || closed_event_newest {
        return (OnboardingStatus::Deauthorized, None);
    }
    let rejected = capabilities()
        .flat_map(|capability| &capability.codes)
        .find(|code| code.starts_with("rejected") || *code == "unsupported_business");
    if let Some(code) = rejected {
        return (OnboardingStatus::Rejected, Some(code.clone()));
    }
    let user_due =
        !account.requirements.currently_due.is_empty() || !account.requirements.past_due.is_empty();
    if user_due && !capabilities().any(|capability| capability.status == "active") {
        return (OnboardingStatus::Onboarding, None);
    }
    let restriction = capabilities()
        .filter(|capability| capability.status == "restricted")
        .flat_map(|capability| &capability.codes)
        .find(|code| !REQUIREMENT_CODES.contains(&code.as_str()));
    if let Some(code) = restriction {
        return (OnboardingStatus::Restricted, Some(code.clone()));
    }
    if user_due {
        return (OnboardingStatus::ActionRequired, None);
    }
    let verifying = !account.requirements.pending_verification.is_empty()
        || capabilities().any(|capability| {
            capability.codes.iter().any(|code| code == "requirements_pending_verification")
        });
    if verifying {
        return (OnboardingStatus::PendingVerification, None);
    }
    if capabilities().next().is_some() && capabilities().all(|capability| capability.status == "active") {
        return (OnboardingStatus::Active, None);
    }
    (OnboardingStatus::Restricted, None)
}

/// `charges_enabled` for a v2 account: `merchant.card_payments` is active.
pub fn v2_charges_enabled(account: &V2Account) -> bool {
    account.capabilities.get("merchant.card_payments").is_some_and(|capability| capability.status == "active")
}

/// `payouts_enabled` for a v2 account: either configuration's `stripe_balance.payouts` is active.
pub fn v2_payouts_enabled(account: &V2Account) -> bool {
    ["merchant.stripe_balance.payouts", "recipient.stripe_balance.payouts"]
        .iter()
        .any(|path| account.capabilities.get(*path).is_some_and(|capability| capability.status == "active"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn capability(status: &str, codes: &[&str]) -> Value {
        let details: Vec<Value> =
            codes.iter().map(|code| json!({"code": code, "resolution": "provide_info"})).collect();
        json!({"status": status, "status_details": details})
    }

    fn entry(awaiting: &str, deadline: &str, description: &str) -> Value {
        json!({"awaiting_action_from": awaiting, "minimum_deadline": {"status": deadline}, "description": description,
               "impact": {"restricts_capabilities": []}})
    }

    fn account(card: Value, transfers: Value, entries: Vec<Value>) -> Value {
        json!({
            "id": "acct_1V2", "object": "v2.core.account", "closed": false,
            "configuration": {
                "merchant": {"capabilities": {"card_payments": card}},
                "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": transfers.clone(),
                                                                  "payouts": transfers}}}
            },
            "requirements": {"entries": entries}
        })
    }

    #[test]
    fn capabilities_are_read_by_their_dotted_paths() {
        let read =
            read_v2_account(&account(capability("active", &[]), capability("pending", &["x"]), vec![]));
        let paths: Vec<&str> = read.capabilities.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "merchant.card_payments",
                "recipient.stripe_balance.payouts",
                "recipient.stripe_balance.stripe_transfers"
            ]
        );
        assert_eq!(read.capabilities["recipient.stripe_balance.stripe_transfers"].codes, ["x"]);
        assert!(v2_charges_enabled(&read) && !v2_payouts_enabled(&read));
        let paying = read_v2_account(&account(capability("pending", &[]), capability("active", &[]), vec![]));
        assert!(!v2_charges_enabled(&paying) && v2_payouts_enabled(&paying));
    }

    #[test]
    fn requirements_are_listed_by_deadline_and_who_must_act() {
        let read = read_v2_account(&account(
            capability("pending", &[]),
            capability("pending", &[]),
            vec![
                entry("user", "currently_due", "Business URL"),
                entry("user", "past_due", "Tax ID"),
                entry("user", "eventually_due", "Statement descriptor"),
                entry("stripe", "currently_due", "Identity document"),
                json!({"description": "no fields at all"}),
                json!(42),
            ],
        ));
        let requirements = read.requirements;
        assert_eq!(requirements.currently_due, ["Business URL"]);
        assert_eq!(requirements.past_due, ["Tax ID"]);
        assert_eq!(requirements.eventually_due, ["Statement descriptor"]);
        assert_eq!(requirements.pending_verification, ["Identity document"]);
    }

    /// DESIGN.md's v2 rule, one row per status, first match wins.
    #[test]
    fn each_status_of_the_rule() {
        let active = || capability("active", &[]);
        let due = || vec![entry("user", "currently_due", "Business URL")];
        let closed = {
            let mut closed = account(active(), active(), vec![]);
            closed["closed"] = json!(true);
            closed
        };
        let cases: Vec<(&str, Value, bool, OnboardingStatus, Option<&str>)> = vec![
            ("closed", closed, false, OnboardingStatus::Deauthorized, None),
            (
                "closed by its event",
                account(active(), active(), vec![]),
                true,
                OnboardingStatus::Deauthorized,
                None,
            ),
            (
                "rejected",
                account(capability("restricted", &["rejected.fraud"]), active(), due()),
                false,
                OnboardingStatus::Rejected,
                Some("rejected.fraud"),
            ),
            (
                "unsupported business",
                account(capability("unsupported", &["unsupported_business"]), active(), vec![]),
                false,
                OnboardingStatus::Rejected,
                Some("unsupported_business"),
            ),
            (
                "onboarding: nothing active, the user owes something",
                account(capability("pending", &[]), capability("pending", &[]), due()),
                false,
                OnboardingStatus::Onboarding,
                None,
            ),
            (
                "restricted for a reason of its own",
                account(capability("restricted", &["paused.inactivity"]), active(), vec![]),
                false,
                OnboardingStatus::Restricted,
                Some("paused.inactivity"),
            ),
            (
                "action required: something active, the user owes something",
                account(capability("restricted", &["requirements_past_due"]), active(), due()),
                false,
                OnboardingStatus::ActionRequired,
                None,
            ),
            (
                "pending verification: awaiting Stripe",
                account(active(), active(), vec![entry("stripe", "currently_due", "ID document")]),
                false,
                OnboardingStatus::PendingVerification,
                None,
            ),
            (
                "pending verification: a capability's code",
                account(capability("restricted", &["requirements_pending_verification"]), active(), vec![]),
                false,
                OnboardingStatus::PendingVerification,
                None,
            ),
            ("active", account(active(), active(), vec![]), false, OnboardingStatus::Active, None),
            (
                "otherwise restricted",
                account(capability("pending", &[]), active(), vec![]),
                false,
                OnboardingStatus::Restricted,
                None,
            ),
            ("no capabilities at all", json!({"id": "acct_1V2"}), false, OnboardingStatus::Restricted, None),
        ];
        for (case, object, closed_event, status, reason) in cases {
            let read = read_v2_account(&object);
            assert_eq!(
                v2_onboarding_status(&read, closed_event),
                (status, reason.map(str::to_owned)),
                "{case}"
            );
        }
    }

    #[test]
    fn odd_shapes_read_as_unknown() {
        for object in [
            json!(null),
            json!([]),
            json!({"configuration": 7}),
            json!({"requirements": {"entries": "x"}}),
            json!({"configuration": {"merchant": {"capabilities": {"card_payments": {"status": 5}}}}}),
        ] {
            let read = read_v2_account(&object);
            assert_eq!(v2_onboarding_status(&read, false).0, OnboardingStatus::Restricted, "{object}");
        }
    }
}
