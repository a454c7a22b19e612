use serde_json::json;

use super::*;
use crate::domain::account::{OnboardingStatus, PayoutFailure};
use crate::domain::step::StepKind;

fn account(status: OnboardingStatus, version: u64) -> AccountState {
    let mut state: AccountState = serde_json::from_value(json!({
        "account_id": "acct_1ChangeA",
        "onboarding_status": status.as_str(),
        "charges_enabled": null, "payouts_enabled": null, "details_submitted": null,
        "disabled_reason": null,
        "requirements": {"currently_due": [], "eventually_due": [], "past_due": [],
                         "pending_verification": [], "current_deadline": null},
        "capabilities": {}, "payout_schedule_interval": null, "deauthorized": false,
        "persons": {}, "external_accounts": {}, "last_event_id": "", "last_event_created": 0,
        "ordering": {"account": null, "capabilities": {}, "persons": {}, "external_accounts": {}},
    }))
    .expect("a well-formed state");
    state.version = version;
    state
}

fn types(changes: &[Change]) -> Vec<&str> {
    changes.iter().map(|change| change.change_type.as_str()).collect()
}

#[test]
fn a_new_account_reports_its_status_from_null() {
    let changes = account_changes(None, &account(OnboardingStatus::Onboarding, 1), 100);
    assert_eq!(types(&changes), [ONBOARDING_STATUS_CHANGED]);
    assert_eq!(changes[0].data, json!({"from": null, "to": "onboarding"}));
    assert_eq!(changes[0].at, 100);
    assert_eq!(changes[0].account_id.as_str(), "acct_1ChangeA");
}

#[test]
fn an_unchanged_account_reports_nothing() {
    let before = account(OnboardingStatus::Active, 3);
    let after = AccountState { version: 4, ..before.clone() };
    assert_eq!(account_changes(Some(&before), &after, 100), []);
}

#[test]
fn status_capabilities_deauthorization_and_payout_failures_are_each_reported() {
    let mut before = account(OnboardingStatus::Onboarding, 3);
    before.capabilities.insert("transfers".into(), "inactive".into());
    before.capabilities.insert("card_payments".into(), "active".into());
    let mut after = before.clone();
    after.version = 4;
    after.onboarding_status = OnboardingStatus::Deauthorized;
    after.deauthorized = true;
    after.capabilities.insert("transfers".into(), "active".into());
    after.capabilities.insert("tax_reporting_us_1099_k".into(), "pending".into());
    after.payout_failure = Some(PayoutFailure {
        payout_id: "po_1".into(),
        failure_code: "account_closed".into(),
        failed_at: 90,
        step_id: Some("po:acct_1ChangeA:evt_1:usd".into()),
    });
    let changes = account_changes(Some(&before), &after, 100);
    assert_eq!(
        types(&changes),
        [ONBOARDING_STATUS_CHANGED, CAPABILITY_CHANGED, CAPABILITY_CHANGED, PAYOUT_FAILED, DEAUTHORIZED]
    );
    assert_eq!(
        changes[1].data,
        json!({"capability": "tax_reporting_us_1099_k", "from": null, "to": "pending"})
    );
    assert_eq!(changes[2].data, json!({"capability": "transfers", "from": "inactive", "to": "active"}));
    assert_eq!(
        changes[3].data,
        json!({"step_id": "po:acct_1ChangeA:evt_1:usd", "payout_id": "po_1", "failure_code": "account_closed"})
    );
    let ids: std::collections::BTreeSet<&str> = changes.iter().map(|change| change.id.as_str()).collect();
    assert_eq!(ids.len(), changes.len(), "ids are unique within a write");
    assert_eq!(account_changes(Some(&before), &after, 100), changes, "ids are stable");
    // The same failure, still on the account at the next version, is not reported again.
    let later = AccountState { version: 5, ..after.clone() };
    assert_eq!(account_changes(Some(&after), &later, 200), []);
}

fn step(status: StepStatus, version: u64) -> Step {
    let mut step = Step::planned(
        StepKind::Payout,
        "po:acct_1ChangeA:evt_1:usd",
        AccountId::parse("acct_1ChangeA").expect("an account id"),
        700,
        "usd".into(),
        10,
    );
    step.status = status;
    step.version = version;
    step
}

#[test]
fn a_step_reports_each_status_it_moves_to_and_nothing_else() {
    let queued = step(StepStatus::Queued, 0);
    let created = step_changes(None, &queued, 10);
    assert_eq!(created[0].data["from"], json!(null));
    assert_eq!(created[0].data["to"], json!("queued"));
    let mut failed = step(StepStatus::Failed, 1);
    failed.reason = Some("balance_insufficient".into());
    let changes = step_changes(Some(&queued), &failed, 20);
    assert_eq!(types(&changes), [STEP_STATUS_CHANGED]);
    assert_eq!(
        changes[0].data,
        json!({"step_id": "po:acct_1ChangeA:evt_1:usd", "kind": "payout", "from": "queued", "to": "failed",
               "reason": "balance_insufficient"})
    );
    let retried = Step { attempt: 1, version: 2, ..failed.clone() };
    assert_eq!(step_changes(Some(&failed), &retried, 30), []);
    let claimed = step(StepStatus::InFlight, 1);
    assert_eq!(step_changes(Some(&queued), &claimed, 15), [], "a claim is not news");
    let succeeded = step(StepStatus::Succeeded, 2);
    assert_eq!(step_changes(Some(&claimed), &succeeded, 16)[0].data["from"], "in_flight");
    assert_ne!(created[0].id, changes[0].id);
}

#[test]
fn a_write_reports_new_steps_and_moved_ones_against_what_it_read() {
    let stored = step(StepStatus::Queued, 0);
    let moved = Step { status: StepStatus::Refused, version: 1, ..stored.clone() };
    let new = Step { step_id: "po:acct_1ChangeA:evt_2:usd".into(), ..step(StepStatus::Queued, 0) };
    let changes = steps_changes(std::slice::from_ref(&stored), std::slice::from_ref(&new), &[moved], 40);
    let moves: Vec<(&Value, &Value)> =
        changes.iter().map(|change| (&change.data["from"], &change.data["to"])).collect();
    assert_eq!(moves, [(&json!(null), &json!("queued")), (&json!("queued"), &json!("refused"))]);
}
