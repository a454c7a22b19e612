//! One contract, two stores: every test here runs on embedded SQLite and on DynamoDB (moto server),
//! directly against the store and through the whole webhook pipeline.

use std::sync::Arc;

use integration_tests::{NOW, account_updated, manual_payout_account_updated, pipeline, signed};
use serde_json::{Value, json};
use shared::domain::account::{AccountId, OnboardingStatus};
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::store::AccountQuery;
use shared::store::{
    AccountStore, CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite,
};
use shared::webhook::Delivery;

fn record(event_id: &str, outcome: EventOutcome) -> EventRecord {
    EventRecord {
        event_id: event_id.into(),
        event_type: "account.updated".into(),
        account_id: Some("acct_1".into()),
        created: Some(NOW - 10),
        livemode: Some(false),
        outcome,
        reason: None,
        received_at: NOW,
        expires_at: NOW + DEDUPE_RETENTION_SECS,
        fetch: None,
    }
}

fn account_id(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn outcome(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["outcome"].as_str().unwrap_or_default().to_owned()
}

/// Applies one event through a pipeline and returns the state it produced, for seeding.
async fn seed_state<S: AccountStore>(store: S, event: &Value) -> shared::domain::account::AccountState {
    let service = pipeline(store);
    let (header, body) = signed(event, NOW);
    assert_eq!(
        service.process(Some(&header), &body).await.unwrap(),
        Delivery::Recorded(EventOutcome::Applied)
    );
    let id = event["account"].as_str().unwrap();
    service.store().load_account(&account_id(id)).await.unwrap().unwrap()
}

async fn a_state_commits_once_and_reads_back<S: AccountStore + Clone>(store: S) {
    let state = seed_state(store.clone(), &account_updated("evt_seed", "acct_1", NOW - 60, true, &[])).await;
    assert_eq!(state.version, 1);
    assert_eq!(state.onboarding_status, OnboardingStatus::Active);
    let stored = store.load_event("evt_seed").await.unwrap().unwrap();
    assert_eq!((stored.outcome, stored.account_id.as_deref()), (EventOutcome::Applied, Some("acct_1")));
    assert_eq!(stored.expires_at, NOW + DEDUPE_RETENTION_SECS, "dedupe records expire after 30 days");
    let mut next = state.clone();
    next.version = 2;
    next.charges_enabled = Some(false);
    assert_eq!(
        store
            .commit(&EventWrite::with_account(&record("evt_next", EventOutcome::Applied), Some(&next)))
            .await
            .unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(store.load_account(&account_id("acct_1")).await.unwrap(), Some(next));
}

async fn a_recorded_event_is_a_duplicate_and_writes_nothing<S: AccountStore + Clone>(store: S) {
    let state = seed_state(store.clone(), &account_updated("evt_seed", "acct_1", NOW - 60, true, &[])).await;
    let mut next = state.clone();
    next.version = 2;
    next.charges_enabled = Some(false);
    let replay = record("evt_seed", EventOutcome::Applied);
    assert_eq!(
        store.commit(&EventWrite::with_account(&replay, Some(&next))).await.unwrap(),
        CommitOutcome::Duplicate
    );
    assert_eq!(store.load_account(&account_id("acct_1")).await.unwrap(), Some(state));
    assert_eq!(store.commit(&EventWrite::record_only(&replay)).await.unwrap(), CommitOutcome::Duplicate);
}

async fn a_stale_version_conflicts_and_rolls_back_the_record<S: AccountStore + Clone>(store: S) {
    let state = seed_state(store.clone(), &account_updated("evt_seed", "acct_1", NOW - 60, true, &[])).await;
    for wrong_version in [1, 3] {
        let mut next = state.clone();
        next.version = wrong_version;
        let attempt = record(&format!("evt_v{wrong_version}"), EventOutcome::Applied);
        assert_eq!(
            store.commit(&EventWrite::with_account(&attempt, Some(&next))).await.unwrap(),
            CommitOutcome::Conflict
        );
        assert_eq!(store.load_event(&attempt.event_id).await.unwrap(), None, "the record rolls back too");
    }
    assert_eq!(store.load_account(&account_id("acct_1")).await.unwrap(), Some(state));
}

async fn accounts_are_listed_by_status<S: AccountStore + Clone>(store: S) {
    seed_state(store.clone(), &account_updated("evt_1", "acct_2", NOW - 60, true, &[])).await;
    seed_state(store.clone(), &account_updated("evt_2", "acct_1", NOW - 60, true, &[])).await;
    seed_state(store.clone(), &account_updated("evt_3", "acct_3", NOW - 60, true, &["external_account"]))
        .await;
    let list = |status: Option<OnboardingStatus>, limit: usize, after: Option<&'static str>| {
        let store = store.clone();
        async move {
            let after = after.map(account_id);
            let query = AccountQuery { status, limit, starting_after: after.as_ref() };
            let page = store.list_accounts(&query).await.unwrap();
            let ids: Vec<String> =
                page.accounts.into_iter().map(|account| account.account_id.to_string()).collect();
            (ids, page.has_more)
        }
    };
    assert_eq!(list(None, 50, None).await, (vec!["acct_1".into(), "acct_2".into(), "acct_3".into()], false));
    assert_eq!(
        list(Some(OnboardingStatus::Active), 50, None).await,
        (vec!["acct_1".into(), "acct_2".into()], false)
    );
    assert_eq!(list(Some(OnboardingStatus::ActionRequired), 50, None).await, (vec!["acct_3".into()], false));
    // Pages, with or without a status, follow `starting_after` and say whether more follow.
    assert_eq!(list(None, 2, None).await, (vec!["acct_1".into(), "acct_2".into()], true));
    assert_eq!(list(None, 2, Some("acct_2")).await, (vec!["acct_3".into()], false));
    assert_eq!(list(Some(OnboardingStatus::Active), 1, None).await, (vec!["acct_1".into()], true));
    assert_eq!(list(Some(OnboardingStatus::Active), 1, Some("acct_1")).await, (vec!["acct_2".into()], false));
    assert_eq!(list(Some(OnboardingStatus::Active), 1, Some("acct_2")).await, (vec![], false));
}

async fn a_duplicate_delivered_three_times_concurrently_applies_once<S: AccountStore>(store: S) {
    let service = Arc::new(pipeline(store));
    let (header, body) = signed(&account_updated("evt_dup", "acct_1", NOW - 5, true, &[]), NOW);
    let deliveries = (0..3).map(|_| {
        let (service, header, body) = (Arc::clone(&service), header.clone(), body.clone());
        tokio::spawn(async move { service.handle(Some(&header), &body).await })
    });
    let mut outcomes = Vec::new();
    for delivery in deliveries {
        let reply = delivery.await.unwrap();
        assert_eq!(reply.status, 200);
        outcomes.push(outcome(&reply.body));
    }
    outcomes.sort();
    assert_eq!(outcomes, ["applied", "duplicate", "duplicate"]);
    let replay = service.handle(Some(&header), &body).await;
    assert_eq!(outcome(&replay.body), "duplicate");
    let state = service.store().load_account(&account_id("acct_1")).await.unwrap().unwrap();
    assert_eq!((state.version, state.last_event_id.as_str()), (1, "evt_dup"));
}

async fn concurrent_events_for_one_account_all_apply_and_the_newest_wins<S: AccountStore>(store: S) {
    let service = Arc::new(pipeline(store));
    let events: Vec<Value> = (0..6)
        .map(|i| {
            let due: &[&str] = if i == 5 { &[] } else { &["individual.id_number"] };
            account_updated(&format!("evt_c{i}"), "acct_1", NOW - 100 + i, i == 5, due)
        })
        .collect();
    let deliveries: Vec<_> = events
        .iter()
        .rev()
        .map(|event| {
            let (header, body) = signed(event, NOW);
            let service = Arc::clone(&service);
            tokio::spawn(async move { service.process(Some(&header), &body).await })
        })
        .collect();
    let mut applied_or_stale = 0;
    for delivery in deliveries {
        match delivery.await.unwrap().unwrap() {
            Delivery::Recorded(EventOutcome::Applied | EventOutcome::Stale) => applied_or_stale += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied_or_stale, 6);
    let state = service.store().load_account(&account_id("acct_1")).await.unwrap().unwrap();
    assert_eq!(state.last_event_id, "evt_c5");
    assert_eq!(state.onboarding_status, OnboardingStatus::Active);
    for i in 0..6 {
        assert!(
            service.store().load_event(&format!("evt_c{i}")).await.unwrap().is_some(),
            "evt_c{i} recorded"
        );
    }
}

async fn a_stale_event_is_recorded_and_changes_nothing<S: AccountStore>(store: S) {
    let service = pipeline(store);
    let (header, body) = signed(&account_updated("evt_new", "acct_1", NOW - 10, true, &[]), NOW);
    service.process(Some(&header), &body).await.unwrap();
    let before = service.store().load_account(&account_id("acct_1")).await.unwrap();
    let (header, body) = signed(&account_updated("evt_old", "acct_1", NOW - 20, false, &["x"]), NOW);
    assert_eq!(service.process(Some(&header), &body).await.unwrap(), Delivery::Recorded(EventOutcome::Stale));
    assert_eq!(service.store().load_account(&account_id("acct_1")).await.unwrap(), before);
    let stale = service.store().load_event("evt_old").await.unwrap().unwrap();
    assert_eq!(stale.outcome, EventOutcome::Stale);
}

async fn refused_deliveries_store_nothing<S: AccountStore>(store: S) {
    let service = pipeline(store);
    let event = account_updated("evt_bad", "acct_1", NOW - 10, true, &[]);
    let (header, body) = signed(&event, NOW);
    let forged = header.replace("v1=", "v1=00");
    let (expired, _) = signed(&event, NOW - 301);
    let (not_json_header, not_json) = {
        let body = b"{\"id\": \"evt_bad\", truncated".to_vec();
        (
            shared::stripe::signature::sign(
                &shared::stripe::signature::WebhookSecret::new(integration_tests::SECRET),
                NOW,
                &body,
            ),
            body,
        )
    };
    for (header, body, status, kind) in [
        (Some(forged.as_str()), body.as_slice(), 400, "signature_mismatch"),
        (Some(expired.as_str()), body.as_slice(), 400, "timestamp_outside_tolerance"),
        (None, body.as_slice(), 400, "missing_header"),
        (Some(not_json_header.as_str()), not_json.as_slice(), 400, "invalid_json"),
    ] {
        let reply = service.handle(header, body).await;
        assert_eq!(reply.status, status, "{kind}");
        assert_eq!(serde_json::from_str::<Value>(&reply.body).unwrap()["error"], kind);
    }
    let oversized = vec![b' '; shared::webhook::MAX_BODY_BYTES + 1];
    assert_eq!(service.handle(Some(&header), &oversized).await.status, 413);
    assert_eq!(service.store().load_event("evt_bad").await.unwrap(), None);
    assert_eq!(service.store().load_account(&account_id("acct_1")).await.unwrap(), None);
}

async fn events_that_change_no_account_are_still_recorded<S: AccountStore>(store: S) {
    let mut settings = integration_tests::settings();
    settings.expected_livemode = Some(true);
    let service =
        shared::webhook::WebhookService::with_clock(store, &settings, shared::clock::FixedClock(NOW));
    let unknown = json!({"id": "evt_unknown", "object": "event", "type": "llama.created", "created": NOW,
        "livemode": true, "data": {"object": {"id": "llama_1", "object": "llama"}}});
    let test_mode = json!({"id": "evt_testmode", "object": "event", "type": "account.updated", "created": NOW,
        "livemode": false, "account": "acct_1", "data": {"object": {"id": "acct_1", "object": "account"}}});
    let thin = json!({"id": "evt_thin", "object": "v2.core.event", "type": "v1.billing.meter.no_meter_found",
        "livemode": true, "created": "2025-06-15T00:00:00.000Z", "context": "acct_1"});
    let no_account = json!({"id": "evt_noacct", "object": "event", "type": "account.application.deauthorized",
        "created": NOW, "livemode": true, "data": {"object": {"object": "application"}}});
    for (event, expected) in [
        (&unknown, EventOutcome::Unhandled),
        (&test_mode, EventOutcome::LivemodeMismatch),
        (&thin, EventOutcome::Unhandled),
        (&no_account, EventOutcome::NoAccount),
    ] {
        let (header, body) = signed(event, NOW);
        let reply = service.handle(Some(&header), &body).await;
        assert_eq!((reply.status, outcome(&reply.body)), (200, expected.as_str().to_owned()));
        let id = event["id"].as_str().unwrap();
        assert_eq!(service.store().load_event(id).await.unwrap().unwrap().outcome, expected);
        assert_eq!(outcome(&service.handle(Some(&header), &body).await.body), "duplicate");
    }
    assert_eq!(service.store().load_account(&account_id("acct_1")).await.unwrap(), None);
}

fn transfer_step(payment: &str, destination: &str, amount: i64) -> Step {
    Step {
        step_id: format!("tr:{payment}:{destination}").into(),
        kind: StepKind::Transfer,
        destination: account_id(destination),
        amount,
        currency: "usd".into(),
        source_charge: Some("ch_1".into()),
        transfer_group: Some(payment.into()),
        payment_key: Some(payment.into()),
        reverses_step: None,
        status: StepStatus::Queued,
        reason: None,
        stripe_id: None,
        attempt: 0,
        created_at: NOW,
        updated_at: NOW,
        version: 1,
        livemode: Some(false),
        netted: 0,
        sent_at: None,
        unresolved: None,
        requested: None,
        cause: None,
        gives_back: None,
        by_stripe: false,
        payout: None,
    }
}

async fn steps_commit_with_their_event_and_are_found_by_payment_and_account<S: AccountStore>(store: S) {
    let steps = [transfer_step("pi_1", "acct_A", 7000), transfer_step("pi_1", "acct_B", 2000)];
    let planned = record("evt_pay", EventOutcome::Applied);
    assert_eq!(
        store.commit(&EventWrite::with_steps(&planned, &steps)).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(store.load_payment_steps(&"pi_1".into()).await.unwrap(), steps);
    assert_eq!(store.load_payment_steps(&"pi_2".into()).await.unwrap(), []);
    assert_eq!(store.load_account_steps(&account_id("acct_B")).await.unwrap(), [steps[1].clone()]);
    let replay = EventWrite::with_steps(&planned, &steps);
    assert_eq!(store.commit(&replay).await.unwrap(), CommitOutcome::Duplicate);
    let other_trigger = record("evt_charge", EventOutcome::Applied);
    let again = [transfer_step("pi_1", "acct_C", 1), transfer_step("pi_1", "acct_A", 7000)];
    assert_eq!(
        store.commit(&EventWrite::with_steps(&other_trigger, &again)).await.unwrap(),
        CommitOutcome::Conflict,
        "a step id is written at most once"
    );
    assert_eq!(store.load_event("evt_charge").await.unwrap(), None, "the record rolls back with it");
    assert_eq!(store.load_account_steps(&account_id("acct_C")).await.unwrap(), [], "so does the new step");
}

async fn a_step_moves_only_from_the_version_it_was_read_at<S: AccountStore>(store: S) {
    let queued = transfer_step("pi_9", "acct_A", 500);
    let planned = record("evt_pay9", EventOutcome::Applied);
    store.commit(&EventWrite::with_steps(&planned, std::slice::from_ref(&queued))).await.unwrap();
    let mut in_flight = store.load_step(&queued.reference()).await.unwrap().unwrap();
    in_flight.status = StepStatus::InFlight;
    in_flight.version += 1;
    assert_eq!(store.update_step(&in_flight, &[]).await.unwrap(), CommitOutcome::Committed);
    let mut racing = queued.clone();
    racing.status = StepStatus::Failed;
    racing.version += 1;
    assert_eq!(
        store.update_step(&racing, &[]).await.unwrap(),
        CommitOutcome::Conflict,
        "decided on a stale read"
    );
    assert_eq!(store.load_step(&queued.reference()).await.unwrap(), Some(in_flight));
    let mut payout = transfer_step("unused", "acct_P", 100);
    payout.step_id = "po:acct_P:evt_1:usd".into();
    payout.kind = StepKind::Payout;
    payout.payment_key = None;
    assert_eq!(store.load_step(&payout.reference()).await.unwrap(), None);
    let balance = record("evt_bal", EventOutcome::Applied);
    store.commit(&EventWrite::with_steps(&balance, std::slice::from_ref(&payout))).await.unwrap();
    assert_eq!(store.load_step(&payout.reference()).await.unwrap(), Some(payout));
}

fn fund_event(id: &str, event_type: &str, created: i64, account: Option<&str>, object: Value) -> Value {
    let mut event = json!({"id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "data": {"object": object}});
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

fn payment_intent(id: &str, amount: i64, splits: &[(&str, &str)]) -> Value {
    let metadata: serde_json::Map<String, Value> =
        splits.iter().map(|(account, amount)| (format!("transfer:{account}"), json!(amount))).collect();
    json!({"id": id, "object": "payment_intent", "amount": amount, "amount_received": amount, "currency": "usd",
        "latest_charge": format!("ch_{id}"), "metadata": metadata, "transfer_group": null, "status": "succeeded"})
}

fn refund(payment: &str, amount: i64, refunded: i64) -> Value {
    json!({"id": format!("ch_{payment}"), "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": refunded, "currency": "usd", "payment_intent": payment, "captured": true, "refunded": refunded == amount})
}

async fn fund_flow_events_plan_each_step_once<S: AccountStore>(store: S) {
    let service = pipeline(store);
    let deliver = |event: Value| {
        let service = &service;
        async move {
            let (header, body) = signed(&event, NOW);
            service.process(Some(&header), &body).await.unwrap()
        }
    };
    let applied = Delivery::Recorded(EventOutcome::Applied);
    let unchanged = Delivery::Recorded(EventOutcome::Unchanged);
    for (index, account) in ["acct_A", "acct_B"].iter().enumerate() {
        deliver(account_updated(&format!("evt_acct{index}"), account, NOW - 500, true, &[])).await;
    }
    let pi = payment_intent("pi_1", 10_000, &[("acct_A", "7000"), ("acct_B", "2000")]);
    assert_eq!(deliver(fund_event("evt_pi", "payment_intent.succeeded", NOW - 100, None, pi)).await, applied);
    let charge = json!({"id": "ch_pi_1", "object": "charge", "amount": 10_000, "amount_captured": 10_000,
        "currency": "usd", "payment_intent": "pi_1", "captured": true, "paid": true,
        "metadata": {"transfer:acct_A": "7000", "transfer:acct_B": "2000"}});
    assert_eq!(deliver(fund_event("evt_ch", "charge.succeeded", NOW - 99, None, charge)).await, unchanged);
    let steps = service.store().load_payment_steps(&"pi_1".into()).await.unwrap();
    let amounts: Vec<(&str, i64)> = steps.iter().map(|step| (step.step_id.as_str(), step.amount)).collect();
    assert_eq!(amounts, [("tr:pi_1:acct_A", 7000), ("tr:pi_1:acct_B", 2000)]);
    assert!(steps.iter().all(|step| step.status == StepStatus::Queued && step.source_charge.as_deref() == Some("ch_pi_1")));

    assert_eq!(
        deliver(fund_event("evt_r1", "charge.refunded", NOW - 90, None, refund("pi_1", 10_000, 2_500))).await,
        applied
    );
    assert_eq!(
        deliver(fund_event("evt_r1b", "charge.refunded", NOW - 89, None, refund("pi_1", 10_000, 2_500)))
            .await,
        unchanged
    );
    assert_eq!(
        deliver(fund_event("evt_r2", "charge.refunded", NOW - 80, None, refund("pi_1", 10_000, 10_000)))
            .await,
        applied
    );
    // The transfers were never sent, so the refunds take them back before they go: no reversals,
    // and nothing left to send.
    let steps = service.store().load_payment_steps(&"pi_1".into()).await.unwrap();
    let netted: Vec<(&str, i64, i64, StepStatus)> =
        steps.iter().map(|step| (step.step_id.as_str(), step.amount, step.netted, step.status)).collect();
    assert_eq!(
        netted,
        [("tr:pi_1:acct_A", 0, 7000, StepStatus::Refused), ("tr:pi_1:acct_B", 0, 2000, StepStatus::Refused)],
        "a full refund of unsent transfers nets every transfer out exactly"
    );

    // A refund delivered before its payment is remembered and netted out when the transfers are
    // planned.
    assert_eq!(
        deliver(fund_event("evt_r3", "charge.refunded", NOW - 75, None, refund("pi_3", 1_000, 500))).await,
        applied
    );
    let early = payment_intent("pi_3", 1_000, &[("acct_A", "600")]);
    assert_eq!(
        deliver(fund_event("evt_pi3", "payment_intent.succeeded", NOW - 74, None, early)).await,
        applied
    );
    let planned = service.store().load_payment_steps(&"pi_3".into()).await.unwrap();
    let kinds: Vec<(StepKind, i64, i64)> =
        planned.iter().map(|step| (step.kind, step.amount, step.netted)).collect();
    assert_eq!(kinds, [(StepKind::Transfer, 300, 300)]);
    assert_eq!(
        deliver(fund_event("evt_r3b", "charge.refunded", NOW - 73, None, refund("pi_3", 1_000, 500))).await,
        unchanged
    );

    let over = payment_intent("pi_2", 1_000, &[("acct_A", "700"), ("acct_B", "400")]);
    assert_eq!(
        deliver(fund_event("evt_pi2", "payment_intent.succeeded", NOW - 70, None, over)).await,
        Delivery::Recorded(EventOutcome::Refused)
    );
    let refused = service.store().load_payment_steps(&"pi_2".into()).await.unwrap();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|step| step.status == StepStatus::Refused && step.reason.is_some()));

    let manual = manual_payout_account_updated("evt_m", "acct_M", NOW - 500);
    deliver(manual).await;
    let balance = |usd: i64| json!({"object": "balance", "available": [{"amount": usd, "currency": "usd"}], "pending": []});
    assert_eq!(
        deliver(fund_event("evt_b1", "balance.available", NOW - 50, Some("acct_M"), balance(5_000))).await,
        applied
    );
    assert_eq!(
        deliver(fund_event("evt_b2", "balance.available", NOW - 40, Some("acct_M"), balance(6_000))).await,
        applied,
        "a newer, larger balance pays only what the payout not yet sent leaves"
    );
    assert_eq!(
        deliver(fund_event("evt_b0", "balance.available", NOW - 60, Some("acct_M"), balance(1_000))).await,
        Delivery::Recorded(EventOutcome::Stale)
    );
    let payouts = service.store().load_account_steps(&account_id("acct_M")).await.unwrap();
    assert_eq!(
        payouts.iter().map(|step| (step.kind, step.amount, step.status)).collect::<Vec<_>>(),
        [(StepKind::Payout, 5_000, StepStatus::Queued), (StepKind::Payout, 1_000, StepStatus::Queued)]
    );

    // A report on a payout step that was never sent is not believed, whoever sends it.
    let payout = &payouts[1];
    let failed = json!({"id": "po_1", "object": "payout", "amount": 6_000, "currency": "usd",
        "failure_code": "account_closed", "metadata": {"connect_flow_step": payout.step_id}});
    assert_eq!(
        deliver(fund_event("evt_pf", "payout.failed", NOW - 30, Some("acct_M"), failed)).await,
        Delivery::Recorded(EventOutcome::Refused)
    );
    let settled = service.store().load_step(&payout.reference()).await.unwrap().unwrap();
    assert_eq!(settled.status, StepStatus::Queued);
    let account = service.store().load_account(&account_id("acct_M")).await.unwrap().unwrap();
    assert_eq!(account.payout_failure, None);
}

macro_rules! contract {
    ($store:ident, $make:expr) => {
        mod $store {
            contract!(@tests $make;
                a_state_commits_once_and_reads_back,
                a_recorded_event_is_a_duplicate_and_writes_nothing,
                a_stale_version_conflicts_and_rolls_back_the_record,
                accounts_are_listed_by_status,
                a_duplicate_delivered_three_times_concurrently_applies_once,
                concurrent_events_for_one_account_all_apply_and_the_newest_wins,
                a_stale_event_is_recorded_and_changes_nothing,
                refused_deliveries_store_nothing,
                events_that_change_no_account_are_still_recorded,
                steps_commit_with_their_event_and_are_found_by_payment_and_account,
                a_step_moves_only_from_the_version_it_was_read_at,
                fund_flow_events_plan_each_step_once,
            );
        }
    };
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test($make).await;
            }
        )*
    };
}

contract!(sqlite, integration_tests::sqlite_store());
contract!(dynamodb, integration_tests::dynamo_store().await);
