//! `connect-flow serve` over real HTTP on loopback: the webhook route, the read API, and
//! durability of the embedded store across a restart.

use std::path::PathBuf;
use std::sync::Arc;

use integration_tests::{account_updated, settings, signed};
use serde_json::Value;
use shared::store::sqlite::SqliteStore;
use shared::stripe::signature::{Clock, SystemClock};
use shared::webhook::WebhookService;
use tokio::sync::oneshot;

/// A running server: its base URL, and a handle that stops it and waits for it to finish.
struct RunningServer {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    async fn start(db: &std::path::Path) -> Self {
        let store = SqliteStore::open(db, SystemClock.now_unix()).unwrap();
        let service = Arc::new(WebhookService::new(store, &settings()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(connect_flow::server::serve(listener, service, async {
            let _ = stopped.await;
        }));
        Self { base, stop: Some(stop), task }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    async fn post_event(&self, event: &Value) -> (u16, Value) {
        let (header, body) = signed(event, SystemClock.now_unix());
        let response = reqwest::Client::new()
            .post(format!("{}/webhooks/stripe", self.base))
            .header("Stripe-Signature", header)
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), serde_json::from_str(&response.text().await.unwrap()).unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        (response.status().as_u16(), serde_json::from_str(&response.text().await.unwrap()).unwrap())
    }
}

fn temp_db(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("connect-flow-{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

#[tokio::test]
async fn webhooks_update_accounts_that_the_read_api_serves_and_a_restart_keeps() {
    let db = temp_db("serve");
    let server = RunningServer::start(&db).await;
    let now = SystemClock.now_unix();
    let (status, body) =
        server.post_event(&account_updated("evt_s1", "acct_1Serve", now - 20, false, &["x"])).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("applied")));
    server.post_event(&account_updated("evt_s2", "acct_2Serve", now - 10, true, &[])).await;
    assert_eq!(
        server.post_event(&account_updated("evt_s2", "acct_2Serve", now - 10, true, &[])).await.1["outcome"],
        "duplicate"
    );

    let (status, account) = server.get("/accounts/acct_1Serve").await;
    assert_eq!(status, 200);
    assert_eq!(account["onboarding_status"], "action_required");
    for field in [
        "account_id",
        "charges_enabled",
        "payouts_enabled",
        "details_submitted",
        "disabled_reason",
        "requirements",
        "capabilities",
        "payout_schedule_interval",
        "last_event_id",
        "last_event_created",
    ] {
        assert!(account.get(field).is_some(), "GET /accounts/{{id}} lacks {field}");
    }
    assert_eq!(account["requirements"]["currently_due"][0], "x");
    assert_eq!(account["capabilities"]["transfers"], "pending");

    let (_, all) = server.get("/accounts").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, active) = server.get("/accounts?status=active").await;
    assert_eq!(active[0]["account_id"], "acct_2Serve");
    assert_eq!(active.as_array().unwrap().len(), 1);
    assert_eq!(server.get("/accounts?status=sleeping").await.0, 400);
    assert_eq!(server.get("/accounts/acct_never").await.0, 404);
    assert_eq!(server.get("/accounts/not-an-account").await.0, 404);
    assert_eq!(server.get("/accounts/acct_1Serve/steps").await, (200, Value::Array(vec![])));
    assert_eq!(server.get("/healthz").await, (200, serde_json::json!({"status": "ok"})));
    server.stop().await;

    let restarted = RunningServer::start(&db).await;
    let (status, account) = restarted.get("/accounts/acct_2Serve").await;
    assert_eq!((status, account["onboarding_status"].as_str()), (200, Some("active")));
    assert_eq!(
        restarted.post_event(&account_updated("evt_s2", "acct_2Serve", now - 10, true, &[])).await.1["outcome"],
        "duplicate"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn oversized_and_unsigned_posts_are_refused() {
    let server = RunningServer::start(&temp_db("refuse")).await;
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/stripe", server.base);
    let oversized = client.post(&url).header("Stripe-Signature", "t=1,v1=00").body(vec![b'x'; (1 << 20) + 1]);
    let response = oversized.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "body_too_large");
    let unsigned = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 400);
    server.stop().await;
}

#[tokio::test]
async fn send_signs_sample_files_and_posts_them() {
    let server = RunningServer::start(&temp_db("send")).await;
    let events = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events/stripe");
    let files: Vec<PathBuf> =
        ["account.updated.onboarding.json", "account.updated.active.json", "capability.updated.json"]
            .iter()
            .map(|name| events.join(name))
            .collect();
    let url = format!("{}/webhooks/stripe", server.base);
    assert!(connect_flow::commands::send(&files, &url, integration_tests::SECRET).await.unwrap());
    let (_, account) = server.get("/accounts/acct_1QcFlowDemo0001").await;
    assert_eq!(account["onboarding_status"], "active");
    assert_eq!(account["capabilities"]["transfers"], "active");
    assert!(
        !connect_flow::commands::send(&files[..1], &url, "whsec_wrong").await.unwrap(),
        "a wrong secret is refused"
    );
    server.stop().await;
}
