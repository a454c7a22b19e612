//! The reconciler against the stand-in Stripe, on both stores. The stand-in emits a day's events
//! (onboarding, split payments, refunds); one store is given every delivery, the other loses a
//! third of them. One reconciler run must leave the second equal to the first (every account,
//! step and ledger row) and a second run must change nothing. Around that: a key that may not
//! list events, an API version the parsers do not read, a corrupt cursor, drift with no event at
//! all, Stripe's rate limit, a step that waits a whole day, and the `connect-flow reconcile`
//! binary itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use integration_tests::fund_events::{charge_refunded, charge_succeeded};
use integration_tests::stripe_stub::StripeStub;
use integration_tests::{
    NOW, RecordingQueue, TestClock, account_updated, dynamo_store, pipeline, settings, sqlite_store,
};
use serde_json::{Value, json};
use shared::clock::{Clock, FixedClock};
use shared::domain::account::AccountId;
use shared::domain::ledger::Month;
use shared::domain::reconcile::{FIRST_RUN_LOOKBACK_SECS, ReconcileRun};
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::reconcile::{ReconcileError, ReconcileSettings, Reconciler};
use shared::store::{AccountStore, EventOutcome, EventRecord, StepQueue};
use shared::stripe::client::StripeClient;
use shared::webhook::WebhookService;

const ACCOUNTS: usize = 12;
const PAYMENTS: usize = 6;

fn account(k: usize) -> String {
    format!("acct_rec{k:02}")
}

/// The day's events, oldest first, and each account's object as Stripe holds it at the end.
struct Day {
    events: Vec<Value>,
    latest: BTreeMap<String, Value>,
}

/// Three onboarding steps per account (due, complete, a new requirement for every other one),
/// six payments split between two sellers each, and a partial refund of the first three.
fn day() -> Day {
    let mut events = Vec::new();
    let mut latest = BTreeMap::new();
    for phase in 0..3_i64 {
        for k in 0..ACCOUNTS {
            let created = NOW - 7_200 + phase * 1_800 + i64::try_from(k).unwrap() * 10;
            let due: &[&str] = match phase {
                0 => &["external_account", "tos_acceptance.date"],
                2 if k % 2 == 0 => &["individual.verification.document"],
                _ => &[],
            };
            let event =
                account_updated(&format!("evt_acct_{phase}_{k:02}"), &account(k), created, phase > 0, due);
            latest.insert(account(k), event["data"]["object"].clone());
            events.push(event);
        }
    }
    for j in 0..PAYMENTS {
        let pi = format!("pi_rec{j}");
        let sellers = (account(2 * j), account(2 * j + 1));
        let splits = [(sellers.0.as_str(), 400), (sellers.1.as_str(), 300)];
        let mut charge = charge_succeeded(&format!("evt_charge_{j}"), &pi, 1_000, &splits);
        charge["created"] = json!(NOW - 3_000 + i64::try_from(j).unwrap() * 60);
        events.push(charge);
        if j < 3 {
            let created = NOW - 1_500 + i64::try_from(j).unwrap() * 60;
            events.push(charge_refunded(&format!("evt_refund_{j}"), &pi, 1_000, 500, created));
        }
    }
    events.sort_by_key(|event| event["created"].as_i64());
    Day { events, latest }
}

/// Whether the store that loses deliveries gets event `index`: two of every three.
fn delivered(index: usize) -> bool {
    index % 3 != 1
}

/// The stand-in with the day emitted, each account listed and holding its latest object.
async fn stub_with(day: &Day) -> StripeStub {
    let stub = StripeStub::start().await;
    stub.set_now(NOW);
    for (index, event) in day.events.iter().enumerate() {
        stub.emit_event(event.clone(), delivered(index));
    }
    for (id, object) in &day.latest {
        stub.add_listed_account(id, NOW - 8_000);
        stub.put_object(None, &format!("/v1/accounts/{id}"), object.clone());
    }
    stub
}

fn reconciler<S: AccountStore, C: Clock>(
    webhook: WebhookService<S, C>,
    stub: &StripeStub,
    queue: Arc<RecordingQueue>,
) -> Reconciler<S, C> {
    // Loopback answers at once: the tests pace at 200 a second, the rate-limit test at the default.
    let settings = ReconcileSettings { requests_per_second: 200, ..ReconcileSettings::default() };
    reconciler_with(webhook, stub, queue, settings)
}

fn reconciler_with<S: AccountStore, C: Clock>(
    webhook: WebhookService<S, C>,
    stub: &StripeStub,
    queue: Arc<RecordingQueue>,
    settings: ReconcileSettings,
) -> Reconciler<S, C> {
    let queue: Arc<dyn StepQueue> = queue;
    let webhook = webhook.with_queue(Arc::clone(&queue));
    Reconciler::new(webhook, StripeClient::new(stub.client_config()).unwrap(), queue, settings)
}

async fn deliver<S: AccountStore>(service: &WebhookService<S, FixedClock>, event: &Value) {
    service.process_unsigned(event.to_string().as_bytes()).await.expect("the delivery is taken");
}

/// Everything a run may change, read back: each account without its version (which counts
/// applies, and a late event applied out of order is one apply fewer), its steps and its month.
async fn snapshot<S: AccountStore>(store: &S) -> Value {
    let month = Month::of_unix(NOW).unwrap();
    let mut accounts = serde_json::Map::new();
    for k in 0..ACCOUNTS {
        let id = AccountId::parse(&account(k)).unwrap();
        let mut state = serde_json::to_value(store.load_account(&id).await.unwrap()).unwrap();
        if let Some(state) = state.as_object_mut() {
            state.remove("version");
        }
        let steps: Vec<Step> = store.load_account_steps(&id).await.unwrap();
        let ledger = store.load_ledger_months(&id, month, month).await.unwrap();
        accounts
            .insert(id.to_string(), json!({"state": state, "steps": steps, "ledger": format!("{ledger:?}")}));
    }
    Value::Object(accounts)
}

async fn full_and_partial_delivery_converge_after_one_run<S: AccountStore + Clone>(full: S, partial: S) {
    let day = day();
    let stub = stub_with(&day).await;
    let everything = pipeline(full.clone());
    let two_thirds = pipeline(partial.clone());
    for (index, event) in day.events.iter().enumerate() {
        deliver(&everything, event).await;
        if delivered(index) {
            deliver(&two_thirds, event).await;
        }
    }
    let dropped = (0..day.events.len()).filter(|index| !delivered(*index)).count();
    assert_ne!(snapshot(&full).await, snapshot(&partial).await, "a third of the deliveries were lost");

    let mut stored = 0;
    for k in 0..ACCOUNTS {
        stored += usize::from(
            partial.load_account(&AccountId::parse(&account(k)).unwrap()).await.unwrap().is_some(),
        );
    }
    assert!(stored < ACCOUNTS, "some accounts lost every delivery, and are known only to Stripe's list");
    let queue = Arc::new(RecordingQueue::default());
    let reconciler = reconciler(pipeline(partial.clone()), &stub, Arc::clone(&queue));
    let first = reconciler.run(None, None).await.expect("the run succeeds");
    assert_eq!(first.events_listed, day.events.len() as u64, "{first:?}");
    assert_eq!(first.events_replayed, dropped as u64, "{first:?}");
    assert_eq!(first.accounts_corrected, 0, "replay alone restores every account: {first:?}");
    assert_eq!(first.accounts_checked, stored as u64, "the drift check reads the stored accounts: {first:?}");
    assert_eq!(first.cursor, NOW, "{first:?}");
    assert_eq!(snapshot(&partial).await, snapshot(&full).await, "one run restores what full delivery left");
    // What the replayed payments planned went to the queue, as a delivery's would.
    assert!(queue.take().iter().any(|step| step.kind == StepKind::Transfer));

    // One more event, delivered and listed: it falls in the next run's overlap, and its dedupe
    // record makes listing it again a no-op.
    let late = account_updated("evt_late", &account(0), NOW - 300, true, &[]);
    deliver(&two_thirds, &late).await;
    deliver(&everything, &late).await;
    stub.put_object(None, &format!("/v1/accounts/{}", account(0)), late["data"]["object"].clone());
    stub.emit_event(late, true);
    let before = snapshot(&partial).await;
    let second = reconciler.run(None, None).await.expect("the second run succeeds");
    assert_eq!(
        (second.events_replayed, second.steps_resumed, second.accounts_corrected),
        (0, 0, 0),
        "a second run straight after changes nothing: {second:?}"
    );
    assert_eq!(second.events_listed, 1, "the second run lists from its cursor less the overlap");
    assert_eq!(snapshot(&partial).await, before);
    assert_eq!(snapshot(&partial).await, snapshot(&full).await);
    assert!(queue.take().is_empty(), "nothing was sent again");
    let state = partial.load_reconciler().await.unwrap().unwrap();
    assert_eq!(state.version, 2);
    assert_eq!(state.runs.len(), 2);
    assert_eq!(state.runs[0], second, "the newest run comes first");
}

/// A key that may not list events: the run names the call and applies nothing at all, though
/// the account list it could read holds everything needed to go on.
async fn a_key_that_may_not_list_events_applies_nothing<S: AccountStore + Clone>(store: S) {
    let day = day();
    let stub = stub_with(&day).await;
    stub.deny_permission("/v1/events");
    let reconciler = reconciler(pipeline(store.clone()), &stub, Arc::default());
    let error = reconciler.run(None, None).await.expect_err("the run fails");
    assert!(matches!(error, ReconcileError::Refused { call: "GET /v1/events", .. }), "{error}");
    assert!(error.to_string().contains("GET /v1/events"), "{error}");
    for event in &day.events {
        assert_eq!(store.load_event(event["id"].as_str().unwrap()).await.unwrap(), None);
    }
    // The failed run is kept, with its reason, and the cursor is not moved.
    let state = store.load_reconciler().await.unwrap().unwrap();
    assert_eq!(state.cursor, 0);
    assert!(state.runs[0].error.as_deref().is_some_and(|error| error.contains("GET /v1/events")));
}

/// An event rendered in an API version the parsers were never tested with is recorded
/// unhandled, with the version, and decides nothing.
async fn an_unread_api_version_is_recorded_unhandled<S: AccountStore + Clone>(store: S) {
    let stub = StripeStub::start().await;
    let mut event = account_updated("evt_future_version", "acct_future", NOW - 600, true, &[]);
    event["api_version"] = json!("2026-07-29.dahlia");
    stub.emit_event(event, false);
    stub.add_listed_account("acct_future", NOW - 900);
    let run = reconciler_for(&store, &stub).run(None, None).await.unwrap();
    assert_eq!(run.events_replayed, 1);
    let record: EventRecord = store.load_event("evt_future_version").await.unwrap().unwrap();
    assert_eq!(record.outcome, EventOutcome::Unhandled);
    assert!(
        record.reason.as_deref().is_some_and(|reason| reason.contains("2026-07-29.dahlia")),
        "{record:?}"
    );
    assert_eq!(store.load_account(&AccountId::parse("acct_future").unwrap()).await.unwrap(), None);
}

fn reconciler_for<S: AccountStore + Clone>(store: &S, stub: &StripeStub) -> Reconciler<S, FixedClock> {
    reconciler(pipeline(store.clone()), stub, Arc::default())
}

/// A cursor that cannot be read: the run lists the three days Stripe retries in, and leaves a
/// readable cursor.
async fn a_corrupt_cursor_lists_the_last_three_days<S: AccountStore + Clone>(
    store: S,
    corrupt: impl std::future::Future<Output = ()>,
) {
    corrupt.await;
    assert!(matches!(store.load_reconciler().await, Err(shared::store::StoreError::Corrupt(_))));
    let stub = StripeStub::start().await;
    let older =
        account_updated("evt_older", "acct_window", NOW - FIRST_RUN_LOOKBACK_SECS - 60, false, &["x"]);
    let inside = account_updated("evt_inside", "acct_window", NOW - FIRST_RUN_LOOKBACK_SECS + 60, true, &[]);
    stub.emit_event(older, false);
    stub.emit_event(inside, false);
    stub.add_listed_account("acct_window", NOW - 2 * 86_400);
    stub.put_object(
        None,
        "/v1/accounts/acct_window",
        account_updated("x", "acct_window", 0, true, &[])["data"]["object"].clone(),
    );
    let run = reconciler_for(&store, &stub).run(None, None).await.unwrap();
    assert_eq!((run.events_listed, run.events_replayed), (1, 1), "{run:?}");
    assert_eq!(store.load_event("evt_older").await.unwrap(), None, "older than Stripe's retries: not listed");
    assert!(store.load_event("evt_inside").await.unwrap().is_some());
    assert_eq!(store.load_reconciler().await.unwrap().unwrap().cursor, NOW);
}

/// An account Stripe changed without any event reaching us: the drift check corrects it through
/// the decide path, once.
async fn drift_with_no_event_is_corrected_once<S: AccountStore + Clone>(store: S) {
    let stub = StripeStub::start().await;
    let id = AccountId::parse("acct_drift").unwrap();
    deliver(
        &pipeline(store.clone()),
        &account_updated("evt_drift_0", "acct_drift", NOW - 900, false, &["external_account"]),
    )
    .await;
    stub.put_object(
        None,
        "/v1/accounts/acct_drift",
        account_updated("x", "acct_drift", 0, true, &[])["data"]["object"].clone(),
    );
    let reconciler = reconciler_for(&store, &stub);
    let first = reconciler.run(None, None).await.unwrap();
    assert_eq!((first.accounts_checked, first.accounts_corrected), (1, 1), "{first:?}");
    let state = store.load_account(&id).await.unwrap().unwrap();
    assert_eq!(state.charges_enabled, Some(true));
    assert!(state.requirements.currently_due.is_empty());
    let second = reconciler.run(None, None).await.unwrap();
    assert_eq!((second.accounts_checked, second.accounts_corrected), (1, 0), "{second:?}");
}

/// Under Stripe's rate limit the run slows down (`Retry-After` honoured) and still finishes;
/// within it, the pacing alone keeps every request under the limit.
#[tokio::test]
async fn the_run_keeps_under_stripe_s_rate_limit_and_rides_out_429s() {
    let day = day();
    let stub = stub_with(&day).await;
    stub.set_rate_limit(Some(25));
    let store = sqlite_store();
    let at_default = |store: &shared::store::sqlite::SqliteStore, stub: &StripeStub| {
        reconciler_with(pipeline(store.clone()), stub, Arc::default(), ReconcileSettings::default())
    };
    let run = at_default(&store, &stub).run(None, None).await.unwrap();
    assert_eq!(stub.rate_limited_count(), 0, "20 a second never meets a limit of 25");
    assert_eq!(run.events_replayed, day.events.len() as u64);
    // The platform's events, v2's, the new accounts, and each account's events.
    assert_eq!(run.stripe_requests, 3 + ACCOUNTS as u64, "{run:?}");

    let stub = stub_with(&day).await;
    stub.set_rate_limit(Some(8));
    let store = sqlite_store();
    let run = at_default(&store, &stub).run(None, None).await.expect("429s are retried after Retry-After");
    assert!(stub.rate_limited_count() > 0, "a limit of 8 a second is met");
    assert_eq!(run.events_replayed, day.events.len() as u64);
}

/// A transfer waiting a whole simulated day for its seller: 96 runs, 15 minutes apart, never put
/// it on the queue (so it can never reach the dead-letter queue); the event that lets the seller
/// receive, missed by the webhook, is replayed by the next run, which sends it at once.
#[tokio::test]
async fn a_waiting_step_stays_off_the_queue_for_a_day_then_goes_when_its_account_can_receive() {
    let store = sqlite_store();
    let clock = TestClock::at(NOW);
    let webhook = || WebhookService::with_clock(store.clone(), &settings(), clock.clone());
    let restricted = account_updated("evt_wait_0", "acct_wait", NOW - 60, false, &["external_account"]);
    webhook().process_unsigned(restricted.to_string().as_bytes()).await.unwrap();
    let mut step = Step::planned(
        StepKind::Transfer,
        "tr_wait_step",
        AccountId::parse("acct_wait").unwrap(),
        700,
        "usd".into(),
        NOW,
    );
    step.status = StepStatus::Waiting;
    integration_tests::store_planned_steps(&store, "evt_wait_plan", std::slice::from_ref(&step))
        .await
        .unwrap();
    let stub = StripeStub::start().await;
    stub.put_object(None, "/v1/accounts/acct_wait", restricted["data"]["object"].clone());
    let queue = Arc::new(RecordingQueue::default());
    let reconciler = reconciler(webhook(), &stub, Arc::clone(&queue));
    let mut runs: Vec<ReconcileRun> = Vec::new();
    for _ in 0..96 {
        clock.advance(900);
        runs.push(reconciler.run(None, None).await.unwrap());
    }
    assert!(queue.take().is_empty(), "a day of runs sent the waiting step nowhere");
    assert!(runs.iter().all(|run| run.steps_resumed == 0 && run.events_replayed == 0));
    let waiting = store.load_account_steps(&AccountId::parse("acct_wait").unwrap()).await.unwrap();
    assert_eq!(waiting[0].status, StepStatus::Waiting);

    let able = account_updated("evt_wait_1", "acct_wait", clock.now_unix() - 30, true, &[]);
    stub.emit_event(able.clone(), false);
    stub.put_object(None, "/v1/accounts/acct_wait", able["data"]["object"].clone());
    clock.advance(900);
    let run = reconciler.run(None, None).await.unwrap();
    assert_eq!(run.events_replayed, 1, "{run:?}");
    let sent = queue.take();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].step_id.as_str(), "tr_wait_step");
}

/// `connect-flow reconcile`, the binary: a JSON report and exit 0, zeros straight after, and a
/// refused list named with a non-zero exit.
#[tokio::test]
async fn the_reconcile_command_reports_json_and_names_a_refused_call() {
    let day = day();
    let stub = stub_with(&day).await;
    let dir = std::env::temp_dir().join(format!("connect-flow-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("reconcile.db");
    let _ = std::fs::remove_file(&db);
    let (binary, base) = (integration_tests::connect_flow_binary(), stub.base_url().to_owned());
    let since = (NOW - 86_400).to_string();
    let run = move || {
        let (binary, base, db, since) = (binary.clone(), base.clone(), db.clone(), since.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary)
                .args(["reconcile", "--db", db.to_str().unwrap(), "--since", &since])
                .env("STRIPE_API_KEY", integration_tests::stripe_stub::STUB_API_KEY)
                .env("STRIPE_API_BASE", base)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
    };
    let first = run().await.unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["events_replayed"], json!(day.events.len()), "{report}");
    for field in ["steps_resumed", "accounts_corrected", "cursor"] {
        assert!(report.get(field).is_some(), "{report}");
    }
    let second = run().await.unwrap();
    let report: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(
        (&report["events_replayed"], &report["steps_resumed"], &report["accounts_corrected"]),
        (&json!(0), &json!(0), &json!(0)),
        "{report}"
    );
    stub.deny_permission("/v1/events");
    let refused = run().await.unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("GET /v1/events"), "{stderr}");
    assert!(refused.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_full_and_partial_delivery_converge_after_one_run() {
    full_and_partial_delivery_converge_after_one_run(sqlite_store(), sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_full_and_partial_delivery_converge_after_one_run() {
    full_and_partial_delivery_converge_after_one_run(dynamo_store().await, dynamo_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_key_that_may_not_list_events_applies_nothing() {
    a_key_that_may_not_list_events_applies_nothing(sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_a_key_that_may_not_list_events_applies_nothing() {
    a_key_that_may_not_list_events_applies_nothing(dynamo_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_an_unread_api_version_is_recorded_unhandled() {
    an_unread_api_version_is_recorded_unhandled(sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_an_unread_api_version_is_recorded_unhandled() {
    an_unread_api_version_is_recorded_unhandled(dynamo_store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_corrupt_cursor_lists_the_last_three_days() {
    let store = sqlite_store();
    let corrupted = store.clone();
    a_corrupt_cursor_lists_the_last_three_days(store, async move {
        corrupted.corrupt_reconciler_for_test("{not a state").unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_a_corrupt_cursor_lists_the_last_three_days() {
    let store = dynamo_store().await;
    let corrupted = store.clone();
    a_corrupt_cursor_lists_the_last_three_days(store, async move {
        corrupted.corrupt_reconciler_for_test("{not a state").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_drift_with_no_event_is_corrected_once() {
    drift_with_no_event_is_corrected_once(sqlite_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_drift_with_no_event_is_corrected_once() {
    drift_with_no_event_is_corrected_once(dynamo_store().await).await;
}

/// More active accounts than a run may list: the ones with open steps come first, the rest are
/// counted as skipped, and their events wait (the drift check still reads them).
#[tokio::test]
async fn a_run_lists_at_most_its_limit_of_accounts_open_steps_first() {
    let store = sqlite_store();
    let day = day();
    let stub = stub_with(&day).await;
    let step = Step::planned(
        StepKind::Transfer,
        "tr_cap_step",
        AccountId::parse(&account(7)).unwrap(),
        100,
        "usd".into(),
        NOW,
    );
    integration_tests::store_planned_steps(&store, "evt_cap_plan", std::slice::from_ref(&step))
        .await
        .unwrap();
    let settings =
        ReconcileSettings { requests_per_second: 200, max_account_lists: 1, ..ReconcileSettings::default() };
    let run = reconciler_with(pipeline(store.clone()), &stub, Arc::default(), settings)
        .run(None, None)
        .await
        .unwrap();
    assert_eq!((run.accounts_listed, run.accounts_skipped), (1, ACCOUNTS as u64 - 1), "{run:?}");
    let listed: Vec<_> = stub.received().into_iter().filter(|request| request.path == "/v1/events").collect();
    let on_accounts: Vec<_> = listed.iter().filter_map(|request| request.stripe_account.clone()).collect();
    assert_eq!(on_accounts, [account(7)], "the account with an open step is listed first");
    assert!(store.load_event("evt_acct_0_07").await.unwrap().is_some());
    assert_eq!(store.load_event("evt_acct_0_00").await.unwrap(), None, "a skipped account's events wait");
}

/// A seller's own charge, listed under its account, whose body names no account and carries
/// `transfer:` metadata as one of the platform's would: replayed as that account's event, it
/// plans no transfer from the platform.
#[tokio::test]
async fn an_event_listed_under_a_connected_account_is_that_account_s_whatever_its_body_says() {
    let store = sqlite_store();
    let stub = StripeStub::start().await;
    let seller = account(3);
    let mut forged =
        charge_succeeded("evt_sellers_own_charge", "pi_sellers_own", 5_000, &[(seller.as_str(), 4_900)]);
    forged["created"] = json!(NOW - 600);
    stub.emit_event_on(&seller, forged);
    stub.add_listed_account(&seller, NOW - 900);
    let queue = Arc::new(RecordingQueue::default());
    let run = reconciler(pipeline(store.clone()), &stub, Arc::clone(&queue)).run(None, None).await.unwrap();
    assert_eq!(run.events_replayed, 1, "{run:?}");
    let record = store.load_event("evt_sellers_own_charge").await.unwrap().unwrap();
    assert_eq!(record.account_id.as_deref(), Some(seller.as_str()), "{record:?}");
    assert!(queue.take().is_empty(), "no transfer was planned from the seller's own charge");
    let steps = store.load_account_steps(&AccountId::parse(&seller).unwrap()).await.unwrap();
    assert!(steps.is_empty(), "{steps:?}");
}
