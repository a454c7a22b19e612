//! `connect-flow serve` over real HTTP on loopback: the webhook route, the read API, and
//! durability of the embedded store across a restart.

use std::path::PathBuf;
use std::sync::Arc;

use integration_tests::{account_updated, settings, signed};
use serde_json::Value;
use shared::clock::{Clock, SystemClock};
use shared::store::sqlite::SqliteStore;
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
    assert_eq!((all["data"].as_array().unwrap().len(), &all["has_more"]), (2, &Value::Bool(false)));
    let (_, active) = server.get("/accounts?status=active").await;
    assert_eq!(active["data"][0]["account_id"], "acct_2Serve");
    assert_eq!(active["data"].as_array().unwrap().len(), 1);
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

/// The dispute samples through `connect-flow send` and `serve` (no Stripe key, so the transfer is
/// still queued): the withdrawn dispute nets the transfer away before it is sent and shows on the
/// account; the reinstatement queues it again whole.
#[tokio::test]
async fn a_dispute_and_its_reinstatement_through_serve() {
    let server = RunningServer::start(&temp_db("dispute")).await;
    let events = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events/stripe");
    let url = format!("{}/webhooks/stripe", server.base);
    let send = |names: &[&str]| {
        let files: Vec<PathBuf> = names.iter().map(|name| events.join(name)).collect();
        let url = url.clone();
        async move {
            assert!(connect_flow::commands::send(&files, &url, integration_tests::SECRET).await.unwrap())
        }
    };
    send(&[
        "account.updated.active.json",
        "payment_intent.succeeded.json",
        "charge.dispute.funds_withdrawn.json",
    ])
    .await;
    let (_, account) = server.get("/accounts/acct_1QcFlowDemo0001").await;
    assert_eq!(account["disputes"]["open"], 1, "{account}");
    assert_eq!(account["disputes"]["cases"]["dp_1QcFlowDemoDispute01"]["status"], "needs_response");
    let (_, steps) = server.get("/accounts/acct_1QcFlowDemo0001/steps").await;
    let transfer = &steps[0];
    assert_eq!(
        (transfer["kind"].as_str(), transfer["status"].as_str(), transfer["amount"].as_i64()),
        (Some("transfer"), Some("refused"), Some(0)),
        "{steps}"
    );
    assert_eq!(transfer["reason"], "the payment was disputed before this transfer was sent");
    assert_eq!(
        transfer["cause"],
        serde_json::json!({"type": "payment", "id": "pi_3Qc4Mm6UfM1CId1946Rd3Nf6"})
    );
    send(&["charge.dispute.funds_reinstated.json"]).await;
    let (_, steps) = server.get("/accounts/acct_1QcFlowDemo0001/steps").await;
    assert_eq!(
        (steps[0]["status"].as_str(), steps[0]["amount"].as_i64()),
        (Some("queued"), Some(7000)),
        "{steps}"
    );
    let (_, account) = server.get("/accounts/acct_1QcFlowDemo0001").await;
    assert_eq!(account["disputes"]["open"], 0, "won: {account}");
    server.stop().await;
}

/// `serve` with `CONNECT_FLOW_API_TOKEN`: every platform route wants the token before it does
/// anything; the webhook and the signed refresh route do not.
#[tokio::test]
async fn platform_routes_need_the_bearer_token_and_the_webhook_does_not() {
    let store = SqliteStore::open(temp_db("token"), SystemClock.now_unix()).unwrap();
    let webhook = Arc::new(WebhookService::new(store.clone(), &settings()));
    let platform =
        shared::platform::PlatformApi::new(store, None, shared::platform::PlatformSettings::default());
    let app = connect_flow::server::App::new(webhook, platform, Some("s3cret-token".to_owned()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_flow::server::serve_app(listener, app, std::future::pending()));
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/accounts"),
        ("GET", "/accounts/acct_1Token"),
        ("GET", "/changes"),
        ("POST", "/accounts"),
        ("POST", "/transfers"),
        ("POST", "/accounts/acct_1Token/session"),
        ("GET", "/healthz"),
        ("GET", "/no/such/route"),
    ] {
        for authorization in
            [None, Some("Bearer wrong-token"), Some("s3cret-token"), Some("Bearer s3cret-token2")]
        {
            let mut request = client.request(method.parse().unwrap(), format!("{base}{path}")).body("{}");
            if let Some(authorization) = authorization {
                request = request.header("Authorization", authorization);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 401, "{method} {path} with {authorization:?}");
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["error"], "unauthenticated");
        }
    }
    let authorized = |path: &str| client.get(format!("{base}{path}")).bearer_auth("s3cret-token");
    assert_eq!(authorized("/accounts").send().await.unwrap().status().as_u16(), 200);
    assert_eq!(authorized("/accounts/acct_1Token").send().await.unwrap().status().as_u16(), 404);
    // Over 64 KiB on a platform route: 413, once authenticated.
    let big =
        client.post(format!("{base}/transfers")).bearer_auth("s3cret-token").body(vec![b' '; 64 * 1024 + 1]);
    assert_eq!(big.send().await.unwrap().status().as_u16(), 413);
    // The refresh route answers a browser without the token: a plain 403 for a bad link.
    let refresh = client.get(format!("{base}/onboarding/refresh?token=forged")).send().await.unwrap();
    assert_eq!(refresh.status().as_u16(), 403);
    // The webhook needs no token: only Stripe's signature.
    let unsigned = client.post(format!("{base}/webhooks/stripe")).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 400);
}

/// Without a token `serve` answers the platform routes only when it listens on loopback.
#[test]
fn without_a_token_the_platform_api_is_closed_off_loopback() {
    use connect_flow::server::answers_without_token;
    for (addr, open) in [
        ("127.0.0.1:8787", true),
        ("[::1]:8787", true),
        ("0.0.0.0:8787", false),
        ("10.0.0.5:8787", false),
        ("[::]:8787", false),
    ] {
        assert_eq!(answers_without_token(None, addr.parse().unwrap()), open, "{addr}");
        assert!(
            !answers_without_token(Some("token"), addr.parse().unwrap()),
            "a token is always required once set"
        );
    }
}
