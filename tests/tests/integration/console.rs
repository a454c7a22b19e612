//! `GET /console` on `connect-flow serve` over loopback HTTP: behind the bearer token, HTML only,
//! seeded through signed deliveries and store commits, with markup in the data kept as text.

use std::sync::Arc;

use integration_tests::fund_events::payment_succeeded;
use integration_tests::{account_updated, settings, signed};
use serde_json::{Value, json};
use shared::clock::{Clock, SystemClock};
use shared::domain::account::AccountId;
use shared::domain::change::steps_changes;
use shared::domain::reconcile::{ReconcileRun, ReconcilerState};
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::platform::{PlatformApi, PlatformSettings};
use shared::store::sqlite::SqliteStore;
use shared::store::{
    AccountStore, CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite,
};
use shared::webhook::WebhookService;

const TOKEN: &str = "console-test-token";
const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(2)>";

fn temp_db(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("connect-flow-{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// `serve` with [`TOKEN`] on a free loopback port: its base URL and its store.
async fn start() -> (String, SqliteStore) {
    let store = SqliteStore::open(temp_db("console"), SystemClock.now_unix()).unwrap();
    let webhook = Arc::new(WebhookService::new(store.clone(), &settings()));
    let platform = PlatformApi::new(store.clone(), None, PlatformSettings::default());
    let app = connect_flow::server::App::new(webhook, platform, Some(TOKEN.to_owned()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_flow::server::serve_app(listener, app, std::future::pending()));
    (base, store)
}

async fn deliver(base: &str, event: &Value) {
    let (header, body) = signed(event, SystemClock.now_unix());
    let response = reqwest::Client::new()
        .post(format!("{base}/webhooks/stripe"))
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{event}");
}

/// A waiting step and a failed one, both with markup in their reason, committed with their
/// changes as the webhook commits a plan.
async fn commit_steps(store: &SqliteStore, now: i64) {
    commit_steps_on(store, now).await;
}

#[tokio::test]
async fn console_needs_the_token_and_shows_seeded_accounts_steps_and_runs_with_markup_as_text() {
    let (base, store) = start().await;
    let now = SystemClock.now_unix();
    // Through the webhook: an account that owes requirements (one of them markup), an active one,
    // one still onboarding, and a payment that plans a transfer to the active one.
    deliver(
        &base,
        &account_updated("evt_1Due", "acct_1ConsoleDue", now - 50, false, &["individual.id_number", SCRIPT]),
    )
    .await;
    let mut onboarding = account_updated("evt_1New", "acct_1ConsoleNew", now - 40, false, &[]);
    onboarding["data"]["object"]["details_submitted"] = json!(false);
    onboarding["data"]["object"]["requirements"]["current_deadline"] = json!(now + 86_400);
    deliver(&base, &onboarding).await;
    deliver(&base, &account_updated("evt_1Ok", "acct_1ConsoleOk", now - 30, true, &[])).await;
    deliver(&base, &payment_succeeded("evt_1Pay", "pi_1Console", 2000, &[("acct_1ConsoleOk", 700)])).await;
    commit_steps(&store, now).await;
    let mut reconciler = ReconcilerState { version: 1, cursor: now - 900, ..Default::default() };
    reconciler.push_run(ReconcileRun {
        started_at: now - 960,
        finished_at: now - 900,
        events_listed: 42,
        events_replayed: 7,
        error: Some(IMG.to_owned()),
        ..Default::default()
    });
    assert_eq!(store.save_reconciler(&reconciler, false).await.unwrap(), CommitOutcome::Committed);

    let client = reqwest::Client::new();
    for authorization in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let mut request = client.get(format!("{base}/console"));
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{authorization:?}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "unauthenticated");
    }
    let post = client.post(format!("{base}/console")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(post.status().as_u16(), 405, "read-only");

    let response = client.get(format!("{base}/console")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let page = response.text().await.unwrap();
    for (status, count) in [("action_required", 1), ("onboarding", 1), ("active", 1), ("restricted", 0)] {
        let bar = format!("data-status=\"{status}\" data-count=\"{count}\"");
        assert!(page.contains(&bar), "{bar}");
    }
    for id in ["acct_1ConsoleDue", "acct_1ConsoleNew", "individual.id_number", "tr:pi_1Wait:acct_1ConsoleOk"]
    {
        assert!(page.contains(id), "{id} missing");
    }
    // The planned transfer is queued (no Stripe key), the committed ones waiting and failed.
    for (status, count) in [("queued", "1"), ("waiting", "1"), ("failed", "1")] {
        assert!(page.contains(&format!("data-step-status=\"{status}\">{count}<")), "{status}: {count}");
    }
    assert!(page.contains("tr:pi_1Console:acct_1ConsoleOk"), "the queued transfer");
    assert!(page.contains("po:acct_1ConsoleOk:usd:1"), "the failed payout step");
    assert!(page.contains(">42<") && page.contains(">7<"), "the reconciler's run");
    // Markup from the data is there, as text only.
    for markup in [SCRIPT, IMG] {
        assert!(!page.contains(markup), "{markup} unescaped");
        assert!(page.contains(&shared::platform::console::escape(markup)), "{markup} not shown");
    }
    assert!(!page.to_ascii_lowercase().contains("<script"));
    assert!(!page.contains("<img"));
    // Nothing is fetched: no link, no source, no URL but the SVG namespace.
    assert!(!page.contains("href=") && !page.contains("src=\""));
    assert_eq!(page.matches("http://").count(), page.matches("http://www.w3.org/2000/svg").count());
    assert!(!page.contains("https://"));
}

/// Without a token configured, loopback `serve` answers the console like every other route.
#[tokio::test]
async fn console_on_loopback_without_a_token_renders_an_empty_store() {
    let store = SqliteStore::open(temp_db("console-open"), SystemClock.now_unix()).unwrap();
    let service = Arc::new(WebhookService::new(store, &settings()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_flow::server::serve(listener, service, std::future::pending()));
    let response = reqwest::get(format!("{base}/console")).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("data-status=\"active\" data-count=\"0\""));
    assert!(page.contains("It has not run yet."));
}

/// The same gathering on DynamoDB (moto): the same counts and rows, from queries and one item
/// read only, never a scan, in a number of requests the page states.
#[tokio::test]
async fn console_view_on_dynamodb_reads_indexes_only() {
    use shared::domain::account::{AccountState, OnboardingStatus};
    use shared::platform::console::{ReconcilerView, gather};
    let log = integration_tests::RequestLog::default();
    let store = integration_tests::dynamo_store_logged(log.clone()).await;
    let now = SystemClock.now_unix();
    for (id, status, deadline) in [
        ("acct_1DynDue", OnboardingStatus::ActionRequired, Some(now + 500)),
        ("acct_1DynDueLater", OnboardingStatus::ActionRequired, Some(now + 900)),
        ("acct_1DynOk", OnboardingStatus::Active, None),
        ("acct_1ConsoleOk", OnboardingStatus::Active, None),
    ] {
        let mut account = AccountState::new(AccountId::parse(id).unwrap());
        account.onboarding_status = status;
        account.requirements.current_deadline = deadline;
        account.requirements.currently_due = vec![SCRIPT.to_owned()];
        account.version = 1;
        let write = shared::store::AccountWrite {
            account: &account,
            new_steps: &[],
            step_updates: &[],
            changes: &[],
        };
        assert_eq!(store.commit_account(&write).await.unwrap(), CommitOutcome::Committed);
    }
    // DynamoDB lists a change only once it has settled, so the test looks from a little later.
    let later = now + shared::store::dynamodb::FEED_SETTLE_SECS + 1;
    commit_steps_on(&store, now).await;
    log.take();
    let view = gather(&store, later).await.unwrap();
    let requests = log.take();
    let counts: Vec<(&str, usize)> =
        view.accounts.iter().map(|group| (group.status.as_str(), group.count.value)).collect();
    assert!(counts.contains(&("action_required", 2)) && counts.contains(&("active", 2)), "{counts:?}");
    let due = view.accounts.iter().find(|group| group.status == OnboardingStatus::ActionRequired).unwrap();
    let ids: Vec<&str> = due.stuck.rows.iter().map(|row| row.account_id.as_str()).collect();
    assert_eq!(ids, ["acct_1DynDue", "acct_1DynDueLater"], "oldest deadline first");
    let waiting = view.steps.iter().find(|group| group.status == StepStatus::Waiting).unwrap();
    assert_eq!(waiting.count.value, 1);
    assert_eq!((view.failed_steps.found, view.failed_steps.complete), (1, true));
    assert_eq!(view.failed_steps.rows[0].step_id, "po:acct_1ConsoleOk:usd:1");
    assert_eq!(view.reconciler, ReconcilerView::NeverRun);
    assert!(requests.iter().all(|operation| operation == "Query" || operation == "GetItem"), "{requests:?}");
    assert_eq!(requests.iter().filter(|operation| *operation == "GetItem").count(), 1, "the reconciler item");
    // Seven status pages, three open-step queries, the feed (one query per day of its 30-day
    // window, 31 at most) and the reconciler's item.
    assert!(requests.len() <= 7 + 3 + 31 + 1, "{} requests: {requests:?}", requests.len());
    println!("DynamoDB requests for one console view: {}", requests.len());
}

/// [`commit_steps`] on any store.
async fn commit_steps_on<S: AccountStore>(store: &S, now: i64) {
    let destination = AccountId::parse("acct_1ConsoleOk").unwrap();
    let mut waiting = Step::planned(
        StepKind::Transfer,
        "tr:pi_1Wait:acct_1ConsoleOk",
        destination.clone(),
        1234,
        "usd".into(),
        now - 7200,
    );
    waiting.status = StepStatus::Waiting;
    waiting.reason = Some(format!("capability inactive {IMG}"));
    waiting.livemode = Some(false);
    let mut failed = Step::planned(
        StepKind::Payout,
        "po:acct_1ConsoleOk:usd:1",
        destination,
        555,
        "usd".into(),
        now - 3600,
    );
    failed.status = StepStatus::Failed;
    failed.reason = Some(format!("balance_insufficient {SCRIPT}"));
    failed.livemode = Some(false);
    let record = EventRecord {
        event_id: "evt_1ConsolePlan".into(),
        event_type: "payment_intent.succeeded".into(),
        account_id: None,
        created: Some(now - 7200),
        livemode: Some(false),
        outcome: EventOutcome::Applied,
        reason: None,
        received_at: now - 7200,
        expires_at: now + DEDUPE_RETENTION_SECS,
        fetch: None,
    };
    let steps = [waiting, failed];
    let changes = steps_changes(&[], &steps, &[], now - 3600);
    let write = EventWrite { changes: &changes, ..EventWrite::with_steps(&record, &steps) };
    assert_eq!(store.commit(&write).await.unwrap(), CommitOutcome::Committed);
}
