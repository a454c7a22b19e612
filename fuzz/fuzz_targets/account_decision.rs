//! The account decision, fed a sequence of events parsed from the input (one JSON body a line).
//!
//! Each event is decided against the state the earlier ones left for its account. Checks that the
//! decision is deterministic and idempotent, that no ordering guard or last-event time ever goes
//! back, that the stored status is the rule's, and that the state survives storage as JSON.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shared::domain::account::{
    AccountDecision, AccountEvent, AccountId, AccountState, OrderingGuards, decide, onboarding_status,
};
use shared::stripe::event::{ParsedBody, parse_event};

/// The most events one input may carry, so that one slow input cannot stall the run.
const MAX_EVENTS: usize = 64;

fn guard_kept(before: Option<i64>, after: Option<i64>) -> bool {
    before.is_none_or(|before| after.is_some_and(|after| after >= before))
}

fn guards_kept(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>) -> bool {
    before.iter().all(|(key, &before)| after.get(key).is_some_and(|&after| after >= before))
}

/// No guard is lost or moved back: a later, older event could otherwise undo a newer one.
fn assert_guards_never_regress(before: &OrderingGuards, after: &OrderingGuards) {
    assert!(guard_kept(before.account, after.account), "account guard {before:?} -> {after:?}");
    assert!(guard_kept(before.authorization, after.authorization), "authorization guard regressed");
    assert!(guard_kept(before.balance, after.balance), "balance guard regressed");
    assert!(guards_kept(&before.capabilities, &after.capabilities), "a capability guard regressed");
    assert!(guards_kept(&before.persons, &after.persons), "a person guard regressed");
    assert!(
        guards_kept(&before.external_accounts, &after.external_accounts),
        "an external account guard regressed"
    );
}

fn check_applied(event: &AccountEvent<'_>, current: Option<&AccountState>, next: &AccountState) {
    assert_eq!(next.account_id, event.account_id);
    assert_eq!(next.onboarding_status, onboarding_status(next), "status is not the rule's");
    if let Some(current) = current {
        assert_guards_never_regress(&current.ordering, &next.ordering);
        assert!(next.last_event_created >= current.last_event_created, "last event time went back");
        assert_eq!(next.version, current.version, "the decision leaves versioning to the store");
        if event.created >= current.last_event_created {
            assert_eq!(next.last_event_id, event.event_id);
        }
    } else {
        assert_eq!(next.last_event_id, event.event_id);
    }
    let stored = serde_json::to_string(next).expect("a state serialises");
    let loaded: AccountState = serde_json::from_str(&stored).expect("a stored state loads");
    assert_eq!(&loaded, next, "the state changed through storage");
}

fuzz_target!(|data: &[u8]| {
    let mut states: BTreeMap<AccountId, AccountState> = BTreeMap::new();
    for line in data.split(|&b| b == b'\n').take(MAX_EVENTS) {
        let Ok(ParsedBody::Snapshot(event)) = parse_event(line) else { continue };
        let Ok(Some(event)) = AccountEvent::from_event(&event) else { continue };
        let current = states.get(&event.account_id);
        let decision = decide(&event, current);
        assert_eq!(decision, decide(&event, current), "the decision is not deterministic");
        match decision {
            AccountDecision::Apply(next) => {
                check_applied(&event, current, &next);
                // A redelivery that got past the dedupe record changes nothing more.
                let again = decide(&event, Some(&next));
                assert_eq!(again, AccountDecision::Apply(next.clone()), "deciding twice is not idempotent");
                states.insert(event.account_id.clone(), *next);
            }
            AccountDecision::Stale => {
                assert!(current.is_some(), "an event for an unseen account was stale");
            }
            AccountDecision::Unreadable => {}
        }
    }
});
