use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::stripe::event::{ParsedBody, parse_event};

fn event_from_json(envelope: &Value) -> Event {
    match parse_event(envelope.to_string().as_bytes()) {
        Ok(ParsedBody::Snapshot(event)) => event,
        other => panic!("not a snapshot event: {other:?}"),
    }
}

fn sample(name: &str) -> Event {
    let path = format!("{}/../events/stripe/{name}", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    event_from_json(&serde_json::from_slice(&body).unwrap())
}

fn envelope(id: &str, event_type: &str, created: i64, object: Value) -> Event {
    event_from_json(&json!({
        "id": id, "object": "event", "type": event_type, "created": created,
        "account": "acct_1", "data": { "object": object }
    }))
}

/// Applies `event` to `state` as the store would: keep the new state if the decision applies it.
fn apply(state: Option<AccountState>, event: &Event) -> (Option<AccountState>, AccountDecision) {
    let account_event = AccountEvent::from_event(event).unwrap().unwrap();
    let decision = decide(&account_event, state.as_ref());
    let next = match &decision {
        AccountDecision::Apply(next) => Some((**next).clone()),
        _ => state,
    };
    (next, decision)
}

fn apply_all<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<AccountState> {
    events.into_iter().fold(None, |state, event| apply(state, event).0)
}

fn status_after(names: &[&str]) -> OnboardingStatus {
    let events: Vec<Event> = names.iter().map(|name| sample(name)).collect();
    apply_all(&events).unwrap().onboarding_status
}

#[test]
fn each_sample_account_update_gives_its_status() {
    for (file, status) in [
        ("account.updated.onboarding.json", OnboardingStatus::Onboarding),
        ("account.updated.action_required.json", OnboardingStatus::ActionRequired),
        ("account.updated.pending_verification.json", OnboardingStatus::PendingVerification),
        ("account.updated.restricted.json", OnboardingStatus::Restricted),
        ("account.updated.active.json", OnboardingStatus::Active),
        ("account.updated.rejected.json", OnboardingStatus::Rejected),
        ("account.updated.old_api_2017.json", OnboardingStatus::Restricted),
    ] {
        assert_eq!(status_after(&[file]), status, "{file}");
    }
}

#[test]
fn the_active_sample_keeps_every_field_the_interface_promises() {
    let state = apply_all([&sample("account.updated.active.json")]).unwrap();
    assert_eq!(state.account_id.as_str(), "acct_1QcFlowDemo0001");
    assert_eq!(
        (state.charges_enabled, state.payouts_enabled, state.details_submitted),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(state.capabilities.get("transfers").map(String::as_str), Some("active"));
    assert_eq!(state.payout_schedule_interval.as_deref(), Some("manual"));
    assert!(state.future_requirements.is_some());
    assert_eq!(state.external_accounts.keys().collect::<Vec<_>>(), ["ba_1QcFlowDemoBank00"]);
    assert_eq!(
        (state.last_event_id.as_str(), state.last_event_created),
        ("evt_1QcXic3ZRdECX8ViXm5ez2uC", 1_732_000_240)
    );
}

#[test]
fn the_old_2017_shape_reads_fields_needed_and_payout_schedule() {
    let state = apply_all([&sample("account.updated.old_api_2017.json")]).unwrap();
    assert_eq!(state.disabled_reason.as_deref(), Some("fields_needed"));
    assert_eq!(state.requirements.currently_due, ["legal_entity.verification.document"]);
    assert_eq!(state.payout_schedule_interval.as_deref(), Some("manual"));
}

#[test]
fn deauthorization_is_the_latest_word_until_something_newer_arrives() {
    let deauthorized = ["account.updated.active.json", "account.application.deauthorized.json"].map(sample);
    let state = apply_all(&deauthorized).unwrap();
    assert_eq!(state.onboarding_status, OnboardingStatus::Deauthorized);
    let demo = |id: &str, event_type: &str, created: i64, object: Value| {
        event_from_json(&json!({
            "id": id, "type": event_type, "created": created, "account": "acct_1QcFlowDemo0001",
            "data": { "object": object }
        }))
    };
    let account = json!({"id": "acct_1QcFlowDemo0001", "object": "account", "charges_enabled": true,
        "payouts_enabled": true, "details_submitted": true});
    let older_update = demo("evt_old", "account.updated", 1_732_000_500, account.clone());
    let after_older = apply(Some(state.clone()), &older_update).0.unwrap();
    assert_eq!(after_older.onboarding_status, OnboardingStatus::Deauthorized);
    let newer_update = demo("evt_new", "account.updated", 1_732_000_900, account);
    assert_eq!(
        apply(Some(state.clone()), &newer_update).0.unwrap().onboarding_status,
        OnboardingStatus::Active
    );
    let reauthorized =
        demo("evt_auth", "account.application.authorized", 1_732_000_999, json!({"object": "application"}));
    assert_eq!(apply(Some(state), &reauthorized).0.unwrap().onboarding_status, OnboardingStatus::Active);
}

#[test]
fn each_capability_has_its_own_ordering_guard() {
    let account = envelope(
        "evt_a",
        "account.updated",
        100,
        json!({
            "id": "acct_1", "object": "account", "capabilities": {"transfers": "pending", "card_payments": "pending"}
        }),
    );
    let transfers_newer = envelope(
        "evt_t",
        "capability.updated",
        110,
        json!({"id": "transfers", "account": "acct_1", "status": "active"}),
    );
    let cards_older = envelope(
        "evt_c",
        "capability.updated",
        90,
        json!({"id": "card_payments", "account": "acct_1", "status": "inactive"}),
    );
    let tax_older = envelope(
        "evt_x",
        "capability.updated",
        50,
        json!({"id": "tax_reporting_us_1099_k", "account": "acct_1", "status": "active"}),
    );
    let state = apply_all([&account, &transfers_newer]).unwrap();
    assert_eq!(apply(Some(state.clone()), &cards_older).1, AccountDecision::Stale);
    let state = apply(Some(state), &tax_older).0.unwrap();
    assert_eq!(state.capabilities["transfers"], "active");
    assert_eq!(state.capabilities["card_payments"], "pending");
    assert_eq!(state.capabilities["tax_reporting_us_1099_k"], "active");
    assert_eq!((state.last_event_id.as_str(), state.last_event_created), ("evt_t", 110));
    let older_account = envelope(
        "evt_o",
        "account.updated",
        105,
        json!({"id": "acct_1", "object": "account", "capabilities": {"transfers": "inactive"}}),
    );
    let after = apply(Some(state), &older_account).0.unwrap();
    assert_eq!(after.capabilities["transfers"], "active", "the capability's own newer event wins");
}

#[test]
fn an_event_in_the_same_second_as_the_guard_applies() {
    let first = envelope(
        "evt_1",
        "capability.updated",
        100,
        json!({"id": "transfers", "account": "acct_1", "status": "pending"}),
    );
    let second = envelope(
        "evt_2",
        "capability.updated",
        100,
        json!({"id": "transfers", "account": "acct_1", "status": "active"}),
    );
    assert_eq!(apply_all([&first, &second]).unwrap().capabilities["transfers"], "active");
}

#[test]
fn persons_keep_their_own_requirements_and_stay_deleted() {
    let updated = sample("person.updated.json");
    let state = apply_all([&updated]).unwrap();
    let person = &state.persons["person_1QcFlowDemoRep01"];
    assert_eq!(person.requirements.currently_due, ["verification.document"]);
    assert_eq!(person.verification_status.as_deref(), Some("unverified"));
    let deleted = envelope(
        "evt_del",
        "person.deleted",
        updated.created + 1,
        json!({
            "id": "person_1QcFlowDemoRep01", "object": "person", "account": "acct_1QcFlowDemo0001", "deleted": true
        }),
    );
    let state = apply(Some(state), &deleted).0.unwrap();
    assert!(state.persons.is_empty());
    assert_eq!(
        apply(Some(state), &updated).1,
        AccountDecision::Stale,
        "an older update cannot resurrect a person"
    );
}

#[test]
fn external_accounts_are_added_and_removed() {
    let state =
        apply_all(&["account.updated.active.json", "account.external_account.created.json"].map(sample))
            .unwrap();
    assert_eq!(state.external_accounts["ba_1QcFlowDemoBank01"].last4.as_deref(), Some("6789"));
    let state = apply(Some(state), &sample("account.external_account.deleted.json")).0.unwrap();
    assert!(!state.external_accounts.contains_key("ba_1QcFlowDemoBank01"));
    assert!(state.external_accounts.contains_key("ba_1QcFlowDemoBank00"));
}

#[test]
fn an_account_object_lists_external_accounts_under_their_own_guards() {
    let deleted = envelope(
        "evt_1",
        "account.external_account.deleted",
        200,
        json!({"id": "ba_1", "account": "acct_1"}),
    );
    let listed_earlier = envelope(
        "evt_2",
        "account.updated",
        100,
        json!({
            "id": "acct_1", "object": "account", "external_accounts": {"object": "list", "data": [{"id": "ba_1"}, {"id": "ba_2"}]}
        }),
    );
    let state = apply_all([&deleted, &listed_earlier]).unwrap();
    assert_eq!(state.external_accounts.keys().collect::<Vec<_>>(), ["ba_2"]);
}

#[test]
fn the_account_comes_from_the_object_or_the_envelope_and_must_be_well_formed() {
    let platform_update = event_from_json(&json!({
        "id": "evt_1", "type": "account.updated", "created": 1, "data": {"object": {"id": "acct_9", "object": "account"}}
    }));
    assert_eq!(AccountEvent::from_event(&platform_update).unwrap().unwrap().account_id.as_str(), "acct_9");
    let no_account = event_from_json(&json!({
        "id": "evt_2", "type": "account.application.deauthorized", "created": 1, "data": {"object": {}}
    }));
    assert_eq!(AccountEvent::from_event(&no_account).unwrap_err(), NoAccount);
    let bad_id =
        envelope("evt_3", "capability.updated", 1, json!({"id": "transfers", "account": "acct_../../x"}));
    assert_eq!(AccountEvent::from_event(&bad_id).unwrap_err(), NoAccount);
    let unhandled = envelope("evt_4", "payment_intent.succeeded", 1, json!({}));
    assert!(AccountEvent::from_event(&unhandled).unwrap().is_none());
}

#[test]
fn objects_missing_what_their_kind_needs_are_unreadable() {
    for (event_type, object) in [
        ("capability.updated", json!({"account": "acct_1", "status": "active"})),
        ("capability.updated", json!({"id": "transfers", "account": "acct_1", "status": 3})),
        ("person.updated", json!({"account": "acct_1"})),
        ("account.external_account.deleted", json!({"account": "acct_1", "id": ""})),
    ] {
        let event = envelope("evt_u", event_type, 1, object);
        assert_eq!(apply(None, &event).1, AccountDecision::Unreadable, "{event_type}");
    }
}

#[test]
fn the_status_rule_takes_the_first_match() {
    let mut state = AccountState::empty(AccountId::parse("acct_1").unwrap());
    assert_eq!(onboarding_status(&state), OnboardingStatus::Restricted, "nothing known: rule 8");
    state.charges_enabled = Some(true);
    state.payouts_enabled = Some(true);
    assert_eq!(onboarding_status(&state), OnboardingStatus::Active);
    state.requirements.pending_verification = vec!["x".into()];
    assert_eq!(onboarding_status(&state), OnboardingStatus::PendingVerification);
    state.requirements.past_due = vec!["y".into()];
    assert_eq!(onboarding_status(&state), OnboardingStatus::ActionRequired);
    state.disabled_reason = Some("requirements.past_due".into());
    assert_eq!(onboarding_status(&state), OnboardingStatus::Restricted);
    state.details_submitted = Some(false);
    assert_eq!(onboarding_status(&state), OnboardingStatus::Onboarding);
    state.disabled_reason = Some("rejected.terms_of_service".into());
    assert_eq!(onboarding_status(&state), OnboardingStatus::Rejected);
    state.deauthorized = true;
    state.ordering = OrderingGuards { account: Some(5), authorization: Some(5), ..OrderingGuards::default() };
    assert_eq!(onboarding_status(&state), OnboardingStatus::Deauthorized);
}

#[test]
fn account_ids_must_look_like_stripes() {
    assert!(AccountId::parse("acct_1QcFlowDemo0001").is_some());
    for bad in ["", "acct_", "cus_123", "acct_1 2", "acct_1#x", &format!("acct_{}", "a".repeat(300))] {
        assert!(AccountId::parse(bad).is_none(), "{bad:?}");
    }
}

/// One generated event: `created` is assigned later so that every event has a distinct second.
#[derive(Debug, Clone)]
enum Generated {
    Account {
        details_submitted: bool,
        charges: bool,
        due: bool,
        transfers: Option<&'static str>,
        banks: Option<Vec<&'static str>>,
    },
    BankAccount {
        id: &'static str,
        deleted: bool,
    },
    Capability {
        name: &'static str,
        status: &'static str,
    },
    Deauthorized,
    Authorized,
    Person {
        id: &'static str,
        deleted: bool,
        due: bool,
    },
}

fn generated() -> impl Strategy<Value = Generated> {
    let statuses = prop::sample::select(vec!["active", "pending", "inactive"]);
    let capabilities = prop::sample::select(vec!["transfers", "card_payments"]);
    let persons = prop::sample::select(vec!["person_a", "person_b"]);
    prop_oneof![
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(statuses.clone()),
            prop::option::of(prop::sample::subsequence(vec!["ba_1", "ba_2"], 0..=2))
        )
            .prop_map(|(details_submitted, charges, due, transfers, banks)| Generated::Account {
                details_submitted,
                charges,
                due,
                transfers,
                banks
            }),
        (prop::sample::select(vec!["ba_1", "ba_2"]), any::<bool>())
            .prop_map(|(id, deleted)| Generated::BankAccount { id, deleted }),
        (capabilities, statuses).prop_map(|(name, status)| Generated::Capability { name, status }),
        Just(Generated::Deauthorized),
        Just(Generated::Authorized),
        (persons, any::<bool>(), any::<bool>()).prop_map(|(id, deleted, due)| Generated::Person {
            id,
            deleted,
            due
        }),
    ]
}

fn to_event(index: usize, generated: &Generated) -> Event {
    let created = 1_000 + i64::try_from(index).unwrap() * 7;
    let id = format!("evt_{index}");
    let due = |due: bool| if due { json!(["x"]) } else { json!([]) };
    match generated {
        Generated::Account { details_submitted, charges, due: is_due, transfers, banks } => {
            let mut object = json!({
                "id": "acct_1", "object": "account", "details_submitted": details_submitted,
                "charges_enabled": charges, "payouts_enabled": true,
                "requirements": {"currently_due": due(*is_due), "past_due": [], "pending_verification": []}
            });
            if let Some(status) = transfers {
                object["capabilities"] = json!({"transfers": status});
            }
            if let Some(banks) = banks {
                let data: Vec<Value> =
                    banks.iter().map(|bank| json!({"id": bank, "object": "bank_account"})).collect();
                object["external_accounts"] = json!({"object": "list", "data": data, "has_more": false});
            }
            envelope(&id, "account.updated", created, object)
        }
        Generated::BankAccount { id: bank, deleted } => {
            let event_type = if *deleted {
                "account.external_account.deleted"
            } else {
                "account.external_account.updated"
            };
            let object = json!({"id": bank, "object": "bank_account", "account": "acct_1", "last4": "0001"});
            envelope(&id, event_type, created, object)
        }
        Generated::Capability { name, status } => envelope(
            &id,
            "capability.updated",
            created,
            json!({"id": name, "account": "acct_1", "status": status}),
        ),
        Generated::Deauthorized => {
            envelope(&id, "account.application.deauthorized", created, json!({"object": "application"}))
        }
        Generated::Authorized => {
            envelope(&id, "account.application.authorized", created, json!({"object": "application"}))
        }
        Generated::Person { id: person, deleted, due: is_due } => {
            let event_type = if *deleted { "person.deleted" } else { "person.updated" };
            let object = json!({"id": person, "object": "person", "account": "acct_1", "requirements": {"currently_due": due(*is_due)}});
            envelope(&id, event_type, created, object)
        }
    }
}

proptest! {
    #[test]
    fn any_delivery_order_ends_in_the_newest_state(
        (events, order) in prop::collection::vec(generated(), 1..24)
            .prop_flat_map(|events| {
                let indices: Vec<usize> = (0..events.len()).collect();
                (Just(events), Just(indices).prop_shuffle())
            })
    ) {
        let events: Vec<Event> = events.iter().enumerate().map(|(index, g)| to_event(index, g)).collect();
        let in_order = apply_all(&events);
        let shuffled = apply_all(order.iter().map(|&index| &events[index]));
        prop_assert_eq!(shuffled, in_order);
    }

    #[test]
    fn any_object_shape_is_decided_without_panicking(
        kind in prop::sample::select(vec![
            "account.updated", "capability.updated", "person.updated", "person.deleted",
            "account.external_account.created", "account.application.deauthorized",
        ]),
        object in arbitrary_json(),
    ) {
        prop_assume!(!object.is_null(), "a null data.object is not an event");
        let event = envelope("evt_x", kind, 1, object);
        if let Ok(Some(account_event)) = AccountEvent::from_event(&event) {
            let _ = decide(&account_event, None);
        }
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z_]{0,8}".prop_map(Value::from),
        Just(json!("acct_1")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let keys = prop::sample::select(vec![
            "id",
            "object",
            "account",
            "status",
            "requirements",
            "currently_due",
            "capabilities",
            "external_accounts",
            "data",
            "has_more",
            "details_submitted",
            "verification",
            "settings",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// One delivery of a mixed stream: a v1 account's snapshot events and thin events (applied as
/// their fetched twins), and a v2 account's thin events.
#[derive(Debug, Clone)]
enum Mixed {
    /// A v1 `account.updated` snapshot, or a thin `v1.account.updated` whose fetch left
    /// `fetch_delay` seconds after the event and read the same state.
    V1 { charges: bool, due: bool, thin: Option<i64> },
    /// A thin `v2.core.account.*` whose fetch read this v2 account.
    V2 { card: &'static str, transfers: &'static str, due: bool, closed: bool, fetch_delay: i64 },
}

fn mixed() -> impl Strategy<Value = Mixed> {
    let status = || prop::sample::select(vec!["active", "pending", "restricted"]);
    prop_oneof![
        (any::<bool>(), any::<bool>(), prop::option::of(0..7i64))
            .prop_map(|(charges, due, thin)| Mixed::V1 { charges, due, thin }),
        (status(), status(), any::<bool>(), prop::bool::weighted(0.1), 0..7i64).prop_map(
            |(card, transfers, due, closed, fetch_delay)| Mixed::V2 {
                card,
                transfers,
                due,
                closed,
                fetch_delay
            }
        ),
    ]
}

/// Event `index` of the stream as the pipeline applies it: a snapshot as delivered, a thin
/// event as its fetched twin (`crate::domain::fetch`), ordered by when its fetch left.
fn mixed_event(index: usize, generated: &Mixed) -> Event {
    use crate::domain::fetch::{FetchStatus, FetchStep, FetchTarget, fetched_as_snapshot, observed_at};
    let created = 1_000 + i64::try_from(index).unwrap() * 7;
    let id = format!("evt_{index}");
    let (account, target, thin_type, object, fetched_at) = match generated {
        Mixed::V1 { charges, due, thin } => {
            let object = json!({
                "id": "acct_1", "object": "account", "details_submitted": true, "charges_enabled": charges,
                "payouts_enabled": true, "capabilities": {"transfers": if *charges { "active" } else { "pending" }},
                "requirements": {"currently_due": if *due { json!(["x"]) } else { json!([]) }}
            });
            match thin {
                None => return envelope(&id, "account.updated", created, object),
                Some(delay) => {
                    ("acct_1", FetchTarget::Account, "v1.account.updated", object, created + delay)
                }
            }
        }
        Mixed::V2 { card, transfers, due, closed, fetch_delay } => {
            let capability = |status: &str| json!({"status": status, "status_details": []});
            let entries = if *due {
                json!([{"awaiting_action_from": "user", "description": "Tax ID", "minimum_deadline": {"status": "currently_due"}}])
            } else {
                json!([])
            };
            let object = json!({
                "id": "acct_2", "object": "v2.core.account", "closed": closed,
                "configuration": {"merchant": {"capabilities": {"card_payments": capability(card)}},
                                  "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": capability(transfers)}}}},
                "requirements": {"entries": entries}
            });
            ("acct_2", FetchTarget::V2Account, "v2.core.account.updated", object, created + fetch_delay)
        }
    };
    let step = FetchStep {
        target,
        account: AccountId::parse(account),
        context: None,
        status: FetchStatus::Queued,
        attempts: 0,
    };
    let twin = fetched_as_snapshot(&step, thin_type, object);
    event_from_json(&json!({
        "id": id, "object": "event", "type": twin.event_type, "created": observed_at(Some(created), fetched_at),
        "account": account, "data": {"object": twin.object}
    }))
}

/// Folds events into each account's state, as the store keeps one state per account.
fn apply_by_account<'a>(events: impl IntoIterator<Item = &'a Event>) -> BTreeMap<String, AccountState> {
    let mut states: BTreeMap<String, AccountState> = BTreeMap::new();
    for event in events {
        let account = event.account.clone().unwrap();
        let (next, _) = apply(states.remove(&account), event);
        if let Some(next) = next {
            states.insert(account, next);
        }
    }
    states
}

proptest! {
    /// The v1 property above, for streams that mix snapshot events, thin v1 events and thin v2
    /// events, delivered in any order with any of them delivered again.
    #[test]
    fn any_order_of_a_mixed_v1_and_v2_stream_with_redeliveries_ends_in_the_newest_state(
        (events, order) in prop::collection::vec(mixed(), 1..20)
            .prop_flat_map(|events| {
                let indices: Vec<usize> = (0..events.len()).collect();
                let redelivered = prop::collection::vec(0..events.len(), 0..8);
                (Just(events), (Just(indices), redelivered).prop_map(|(mut indices, again)| {
                    indices.extend(again);
                    indices
                }).prop_shuffle())
            })
    ) {
        let events: Vec<Event> = events.iter().enumerate().map(|(index, g)| mixed_event(index, g)).collect();
        let in_order = apply_by_account(&events);
        let shuffled = apply_by_account(order.iter().map(|&index| &events[index]));
        prop_assert_eq!(&shuffled, &in_order);
        if let Some(v2) = in_order.get("acct_2") {
            prop_assert_eq!(v2.api, AccountsApi::V2);
        }
    }
}

/// Decides `object` (JSON text) as an event of `kind` both ways the rules receive objects: read
/// straight from the event's raw JSON, and from a parsed `Value` (the platform API's path).
fn decide_both_ways(
    kind: &str,
    object: &str,
    current: Option<&AccountState>,
) -> Option<(AccountDecision, AccountDecision)> {
    let body = format!(
        r#"{{"id":"evt_w","object":"event","type":"{kind}","created":7,"account":"acct_1","data":{{"object":{object}}}}}"#
    );
    let Ok(ParsedBody::Snapshot(event)) = parse_event(body.as_bytes()) else {
        panic!("not an event: {body}")
    };
    let from_raw = AccountEvent::from_event(&event).ok().flatten()?;
    let value: Value = serde_json::from_str(object).unwrap();
    let from_value = AccountEvent {
        kind: from_raw.kind,
        account_id: from_raw.account_id.clone(),
        event_id: from_raw.event_id,
        created: from_raw.created,
        object: (&value).into(),
    };
    Some((decide(&from_raw, current), decide(&from_value, current)))
}

#[test]
fn escapes_and_repeated_keys_read_as_a_json_value_reads_them() {
    // A repeated key keeps its last value, as `serde_json::Value` does: `requirements` ends up
    // not an object, so the old `verification` shape is read; the second `transfers` wins.
    let object = r#"{"id":"acct_1","object":"account","charges\u005fenabled":true,"payouts_enabled":true,
        "details_submitted":true,"country":"u\u0073",
        "capabilities":{"transfers":"pending","transfers":{"status":"active"},"card_payments":{"status":7}},
        "requirements":{"currently_due":["x"]},"requirements":5,
        "verification":{"fields_needed":["legal_entity.dob",3,"ssn\u005flast_4"],"due_by":12},
        "settings":{"payouts":{"schedule":{"interval":"daily"}}},"settings":{"payouts":{"schedule":{"interval":"manual"}}},
        "external_accounts":{"data":[{"id":"ba_1","last4":"1111"},7,{"id":"ba_1","last4":"2222"}]}}"#;
    let (from_raw, from_value) = decide_both_ways("account.updated", object, None).expect("an account event");
    assert_eq!(from_raw, from_value, "the raw reader and the Value reader disagree");
    let AccountDecision::Apply(state) = from_raw else { panic!("the object applies: {from_raw:?}") };
    assert_eq!(state.charges_enabled, Some(true), "an escaped key is the same key");
    assert_eq!(state.country.as_deref(), Some("US"));
    assert_eq!(state.capabilities.get("transfers").map(String::as_str), Some("active"));
    assert!(!state.capabilities.contains_key("card_payments"), "a status that is not a string is no status");
    assert_eq!(state.requirements.currently_due, ["legal_entity.dob", "ssn_last_4"]);
    assert_eq!(state.requirements.current_deadline, Some(12));
    assert_eq!(state.payout_schedule_interval.as_deref(), Some("manual"));
    assert_eq!(state.external_accounts["ba_1"].last4.as_deref(), Some("2222"), "the later listing wins");
}

#[test]
fn a_capability_repeated_without_a_status_hides_the_earlier_one() {
    let object = r#"{"id":"acct_1","object":"account","capabilities":{"transfers":"active","transfers":{}}}"#;
    let (from_raw, from_value) = decide_both_ways("account.updated", object, None).expect("an account event");
    assert_eq!(from_raw, from_value);
    let AccountDecision::Apply(state) = from_raw else { panic!("applies") };
    assert!(state.capabilities.is_empty(), "{:?}", state.capabilities);
}

#[test]
fn an_event_that_changes_nothing_new_still_applies_and_keeps_the_state() {
    let sample = sample("account.updated.active.json");
    let first = apply_all([&sample]).unwrap();
    let (again, decision) = apply(Some(first.clone()), &sample);
    assert_eq!(decision, AccountDecision::Apply(Box::new(first.clone())));
    assert_eq!(again.unwrap(), first);
    let older = envelope(
        "evt_older",
        "account.updated",
        first.last_event_created - 1,
        json!({"id": "acct_1QcFlowDemo0001", "object": "account", "charges_enabled": false}),
    );
    assert_eq!(apply(Some(first), &older).1, AccountDecision::Stale);
}

proptest! {
    /// Whatever the object's shape, reading it from the raw JSON and from a parsed `Value` decide
    /// alike, from nothing and against a known account.
    #[test]
    fn the_raw_and_the_value_readers_decide_alike(
        kind in prop::sample::select(vec![
            "account.updated", "capability.updated", "person.updated", "person.deleted",
            "account.external_account.created", "account.external_account.deleted",
            "account.application.deauthorized",
        ]),
        object in arbitrary_json(),
    ) {
        prop_assume!(!object.is_null(), "a null data.object is not an event");
        let text = object.to_string();
        let known = apply_all([&sample("account.updated.active.json")]).unwrap();
        let known = AccountState { account_id: AccountId::parse("acct_1").unwrap(), ..known };
        for current in [None, Some(&known)] {
            if let Some((from_raw, from_value)) = decide_both_ways(kind, &text, current) {
                prop_assert_eq!(from_raw, from_value);
            }
        }
    }
}
