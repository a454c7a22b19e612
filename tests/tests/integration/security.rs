//! Security properties as tests: secrets never in logs or `Debug` output; signatures compared in
//! constant time; one deployment's signature never reaches another's data; the livemode rule;
//! oversized bodies refused before they are read whole.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::fault_proxy::FaultProxy;
use integration_tests::log_capture::capture_logs;
use integration_tests::stripe_stub::{STUB_API_KEY, StripeStub};
use integration_tests::{
    NOW, SECRET, account_updated, dynamo_store, pipeline, settings, signed, sqlite_store,
};
use serde_json::{Value, json};
use shared::aws::WEBHOOK;
use shared::clock::{Clock, FixedClock, SystemClock};
use shared::config::{
    ConfigError, LIVEMODE, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, WEBHOOK_TOLERANCE_SECS, WebhookSettings,
};
use shared::domain::account::AccountId;
use shared::domain::step::StepStatus;
use shared::store::sqlite::SqliteStore;
use shared::store::{AccountStore, EventOutcome, StepQueue};
use shared::stripe::client::{API_BASE_VAR, API_KEY_VAR, ApiKey, StripeClient, StripeClientConfig};
use shared::stripe::signature::{SignatureError, SignatureVerifier, WebhookSecret, sign};
use shared::webhook::{MAX_BODY_BYTES, WebhookService};
use shared::worker::StepWorker;

/// The webhook secret of the deployments whose output is searched: distinctive, so that no part of
/// it can appear by accident (the shared test secret's tail is the test crate's name).
/// Whether `store` holds no account at all (these tests hold a few at most).
async fn no_accounts<S: AccountStore>(store: &S) -> bool {
    let everything = shared::store::AccountQuery { status: None, limit: 100, starting_after: None };
    store.list_accounts(&everything).await.unwrap().accounts.is_empty()
}

const SECRET_UNDER_TEST: &str = "whsec_sec_check_5b1e9d0a";
/// Marks body content that must never reach a log line.
const BODY_MARKER: &str = "body_marker_never_logged";
/// A Stripe key that Stripe (the stub) refuses; its 401 repeats it. A test-mode one, so that the
/// worker sends the test-mode step and Stripe, not the livemode check, refuses it.
const REJECTED_KEY: &str = "rk_test_rejected_key_never_logged";

fn lookup(vars: &[(&'static str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: Vec<(&'static str, String)> =
        vars.iter().map(|(name, value)| (*name, (*value).to_owned())).collect();
    move |name| vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.clone())
}

/// Asserts that `text` shows none of the secrets, nor a recognisable part of one.
fn assert_no_secret(text: &str, what: &str) {
    assert!(!text.contains(SECRET), "{what} shows the tests' webhook secret: {text}");
    for secret in [SECRET_UNDER_TEST, STUB_API_KEY, REJECTED_KEY] {
        let (_, tail) = secret.split_at(secret.find('_').map_or(0, |i| i + 1));
        assert!(!text.contains(secret) && !text.contains(tail), "{what} shows a secret ({secret}): {text}");
    }
}

/// A payment of 9,000 with a split of 7,000 to `acct_A`.
fn payment(id: &str, livemode: bool) -> Value {
    json!({"id": id, "object": "event", "type": "payment_intent.succeeded", "created": NOW - 10,
        "livemode": livemode, "api_version": "2024-06-20",
        "data": {"object": {"id": "pi_1", "object": "payment_intent", "amount": 9_000,
            "amount_received": 9_000, "currency": "usd", "latest_charge": "ch_1", "status": "succeeded",
            "metadata": {"transfer:acct_A": "7000", "note": BODY_MARKER}}}})
}

// ------------------------------------------------------------------------------------------------
// (1) Secrets never in logs or Debug output.
// ------------------------------------------------------------------------------------------------

/// A pipeline on `store` that accepts [`SECRET_UNDER_TEST`].
fn under_test<S: AccountStore>(store: S) -> WebhookService<S, FixedClock> {
    WebhookService::with_clock(store, &settings_with(&[SECRET_UNDER_TEST]), FixedClock(NOW))
}

/// `event` signed with [`SECRET_UNDER_TEST`].
fn signed_under_test(event: &Value, timestamp: i64) -> (String, Vec<u8>) {
    let body = event.to_string().into_bytes();
    (sign(&WebhookSecret::new(SECRET_UNDER_TEST), timestamp, &body), body)
}

#[test]
fn no_log_line_of_any_path_shows_a_secret_a_key_or_a_body() {
    let ((), logs) = capture_logs(async {
        // The webhook on the embedded store: valid, duplicate, forged, malformed, not JSON, stale,
        // oversized; then the worker paying the planned transfer with the API key.
        let store = sqlite_store();
        let queue: Arc<dyn StepQueue> = Arc::new(store.clone());
        let service = under_test(store.clone()).with_queue(queue);
        let mut account = account_updated("evt_sec_account", "acct_A", NOW - 100, true, &[]);
        account["data"]["object"]["email"] = json!(BODY_MARKER);
        for event in [&account, &account, &payment("evt_sec_payment", false)] {
            let (header, body) = signed_under_test(event, NOW);
            assert_eq!(service.handle(Some(&header), &body).await.status, 200);
        }
        let (header, body) = signed_under_test(&account, NOW);
        for refused in [
            header.replace("v1=", "v1=ff"),
            "t=oops,v1=00".to_owned(),
            "v0=00".to_owned(),
            sign(&WebhookSecret::new(SECRET_UNDER_TEST), NOW - 10_000, &body),
        ] {
            assert_eq!(service.handle(Some(&refused), &body).await.status, 400);
        }
        assert_eq!(service.handle(None, &body).await.status, 400);
        let not_json = format!("{{\"{BODY_MARKER}\"");
        let header = sign(&WebhookSecret::new(SECRET_UNDER_TEST), NOW, not_json.as_bytes());
        assert_eq!(service.handle(Some(&header), not_json.as_bytes()).await.status, 400);
        let oversized = BODY_MARKER.repeat(MAX_BODY_BYTES / BODY_MARKER.len() + 1);
        assert_eq!(service.handle(Some(&header), oversized.as_bytes()).await.status, 413);

        let stub = StripeStub::start().await;
        stub.add_account("acct_A", true, true);
        stub.set_platform_balance("usd", 1_000_000);
        let worker = StepWorker::with_clock(
            store.clone(),
            StripeClient::new(stub.client_config()).unwrap(),
            FixedClock(NOW),
        );
        assert!(worker.drain_embedded().await.unwrap() > 0);
        let steps = store.load_account_steps(&AccountId::parse("acct_A").unwrap()).await.unwrap();
        assert_eq!(steps.iter().map(|step| step.status).collect::<Vec<_>>(), [StepStatus::Succeeded]);
        assert_eq!(stub.transfers().len(), 1);

        // A key Stripe refuses: its 401 repeats the key, which must not reach a log or a step.
        let mut rejected = stub.client_config();
        rejected.api_key = ApiKey::new(REJECTED_KEY);
        let (header, body) = signed_under_test(&payment("evt_sec_payment_2", false), NOW);
        let other_store = sqlite_store();
        let other_queue: Arc<dyn StepQueue> = Arc::new(other_store.clone());
        let other = under_test(other_store.clone()).with_queue(other_queue);
        let (account_header, account_body) = signed_under_test(&account, NOW);
        assert_eq!(other.handle(Some(&account_header), &account_body).await.status, 200);
        assert_eq!(other.handle(Some(&header), &body).await.status, 200);
        let refused_worker = StepWorker::with_clock(
            other_store.clone(),
            StripeClient::new(rejected).unwrap(),
            FixedClock(NOW),
        );
        refused_worker.drain_embedded().await.unwrap();
        let steps = other_store.load_account_steps(&AccountId::parse("acct_A").unwrap()).await.unwrap();
        assert_eq!(steps.len(), 1);
        assert_no_secret(&format!("{steps:?}"), "a step refused for its key");

        // The signing secrets read from Secrets Manager (moto) with the deployed SDK settings,
        // the SDK logging at TRACE.
        let proxy = FaultProxy::in_front_of_moto().await;
        let secrets_manager = aws_sdk_secretsmanager::Client::new(&proxy.sdk_config(&WEBHOOK).await);
        let name = format!("cf-security-{}", std::process::id());
        let created = secrets_manager
            .create_secret()
            .name(&name)
            .secret_string(SECRET_UNDER_TEST)
            .send()
            .await
            .unwrap();
        let arn = created.arn().unwrap().to_owned();
        let overlay = shared::secrets::resolve_in(
            &secrets_manager,
            WEBHOOK_SECRETS,
            WEBHOOK_SECRETS_ARN,
            lookup(&[(WEBHOOK_SECRETS_ARN, &arn)]),
        )
        .await
        .unwrap();
        let from_secret = WebhookSettings::from_lookup(|name| overlay.lookup_in(name, |_| None)).unwrap();
        assert_eq!(from_secret.secrets.len(), 1);
        tracing::info!(?overlay, ?from_secret, "resolved");
    });
    assert!(logs.contains("evt_sec_account"), "the capture works: {logs}");
    assert!(logs.contains("signature_mismatch") && logs.contains("body_too_large"), "refusals are logged");
    assert!(logs.contains("Stripe refused the API key"), "the rejected key's failure is logged");
    assert!(logs.contains("GetSecretValue"), "the SDK's TRACE lines are captured");
    assert!(!logs.contains(BODY_MARKER), "a body leaked into the logs");
    assert_no_secret(&logs, "the logs");
}

#[test]
fn configuration_errors_name_the_variable_never_its_value() {
    let bad_tolerance = WebhookSettings::from_lookup(lookup(&[
        (WEBHOOK_SECRETS, SECRET_UNDER_TEST),
        (WEBHOOK_TOLERANCE_SECS, SECRET_UNDER_TEST),
    ]));
    let bad_livemode = WebhookSettings::from_lookup(lookup(&[
        (WEBHOOK_SECRETS, SECRET_UNDER_TEST),
        (LIVEMODE, SECRET_UNDER_TEST),
    ]));
    for error in [bad_tolerance.unwrap_err(), bad_livemode.unwrap_err()] {
        assert!(matches!(error, ConfigError::Invalid { .. }));
        assert_no_secret(&format!("{error} {error:?}"), "a configuration error");
    }
    let insecure_base = StripeClientConfig::from_lookup(lookup(&[
        (API_KEY_VAR, STUB_API_KEY),
        (API_BASE_VAR, "http://stripe.example.com"),
    ]))
    .and_then(StripeClient::new);
    let unparsable_base = StripeClientConfig::from_lookup(lookup(&[
        (API_KEY_VAR, STUB_API_KEY),
        (API_BASE_VAR, &format!("{STUB_API_KEY}:::")),
    ]))
    .and_then(StripeClient::new);
    for error in [insecure_base.unwrap_err(), unparsable_base.unwrap_err()] {
        assert_no_secret(&format!("{error} {error:?}"), "a Stripe configuration error");
    }
}

#[test]
fn debug_output_of_every_holder_of_a_secret_is_redacted() {
    let settings = WebhookSettings::from_lookup(lookup(&[(
        WEBHOOK_SECRETS,
        &format!("{SECRET_UNDER_TEST},whsec_second"),
    )]))
    .unwrap();
    let secret = WebhookSecret::new(SECRET_UNDER_TEST);
    let verifier = SignatureVerifier::new(&settings.secrets, 300);
    let key = ApiKey::new(STUB_API_KEY);
    let mut config = StripeClientConfig::new(key.clone());
    config.api_base = "http://127.0.0.1:9".to_owned();
    let client = StripeClient::new(config.clone()).unwrap();
    let overlay = shared::secrets::SecretOverlay::with_value(API_KEY_VAR, STUB_API_KEY);
    let shown = [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{secret:?}"),
        format!("{verifier:?}"),
        format!("{key:?}"),
        format!("{config:?}"),
        format!("{client:?}"),
        format!("{overlay:?}"),
    ];
    for text in &shown {
        assert_no_secret(text, "a Debug");
        assert!(!text.contains("whsec_second"), "{text}");
    }
}

// ------------------------------------------------------------------------------------------------
// (2) Constant-time comparison.
// ------------------------------------------------------------------------------------------------

/// The body of `SignatureVerifier::verify`, from the verifier's source.
fn verify_source() -> &'static str {
    let source = include_str!("../../../shared/src/stripe/signature.rs");
    let start = source.find("pub fn verify(").expect("signature.rs defines verify");
    let body = &source[start..];
    &body[..body.find("\n    }\n").expect("verify ends")]
}

#[test]
fn signatures_are_compared_with_subtle_never_with_equality() {
    let verify = verify_source();
    assert!(verify.contains(".ct_eq("), "verify compares with subtle's ConstantTimeEq:\n{verify}");
    assert!(verify.contains("subtle::Choice"), "matches accumulate in a subtle::Choice:\n{verify}");
    for line in verify.lines().filter(|line| line.contains("expected") || line.contains("candidate")) {
        assert!(!line.contains("==") && !line.contains("!="), "a signature compared with equality: {line}");
        assert!(
            !line.contains("starts_with") && !line.contains(".cmp("),
            "a signature compared early-out: {line}"
        );
    }
    // Every secret and every candidate is compared before the verdict: no early return inside.
    let loops = &verify[verify.find("for keyed").unwrap()..verify.find("if !bool::from(matched)").unwrap()];
    assert!(!loops.contains("return") && !loops.contains("break"), "the comparison exits early:\n{loops}");
}

#[test]
fn a_signature_wrong_in_its_first_or_its_last_byte_is_refused() {
    let secret = WebhookSecret::new(SECRET);
    let verifier = SignatureVerifier::new(std::slice::from_ref(&secret), 300);
    let body = br#"{"id":"evt_ct","object":"event"}"#;
    let header = sign(&secret, NOW, body);
    assert_eq!(verifier.verify(Some(&header), body, NOW), Ok(NOW));
    let signature = header.split_once("v1=").unwrap().1.to_owned();
    // Changes one hex digit: the first digit is in the first byte, the last in the last.
    let flip = |hex: &str, at: usize| {
        let mut digits: Vec<char> = hex.chars().collect();
        digits[at] = if digits[at] == '0' { '1' } else { '0' };
        digits.into_iter().collect::<String>()
    };
    assert_eq!(signature.len(), 64);
    for wrong in
        [flip(&signature, 0), flip(&signature, 63), signature[..62].to_owned(), format!("{signature}00")]
    {
        let forged = format!("t={NOW},v1={wrong}");
        assert_eq!(
            verifier.verify(Some(&forged), body, NOW),
            Err(SignatureError::SignatureMismatch),
            "{wrong}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// (3) One deployment's signature never reaches another deployment's data.
// ------------------------------------------------------------------------------------------------

const SECRET_A: &str = "whsec_deployment_a";
const SECRET_B_OLD: &str = "whsec_deployment_b_old";
const SECRET_B_NEW: &str = "whsec_deployment_b_new";

fn settings_with(secrets: &[&str]) -> WebhookSettings {
    WebhookSettings { secrets: secrets.iter().map(|s| WebhookSecret::new(*s)).collect(), ..settings() }
}

/// Signs `event` for deployment A: with A's secret alone, and alongside a v1 that is B's secret's
/// signature of another body.
fn signed_for_a(event: &Value) -> (Vec<String>, Vec<u8>) {
    let body = event.to_string().into_bytes();
    let for_a = sign(&WebhookSecret::new(SECRET_A), NOW, &body);
    let b_of_other = sign(&WebhookSecret::new(SECRET_B_NEW), NOW, b"{}");
    let mixed = format!("{for_a},v1={}", b_of_other.split_once("v1=").unwrap().1);
    (vec![for_a, mixed], body)
}

/// A's event, posted to B in every form, is refused 400 and leaves B's store as it was; posted to
/// A, it applies.
async fn cross_deployment<S: AccountStore + Clone>(a: S, b: S) {
    let service_a = WebhookService::with_clock(a.clone(), &settings_with(&[SECRET_A]), FixedClock(NOW));
    let service_b =
        WebhookService::with_clock(b.clone(), &settings_with(&[SECRET_B_OLD, SECRET_B_NEW]), FixedClock(NOW));
    let event = account_updated("evt_for_a", "acct_A", NOW - 10, true, &[]);
    let (headers, body) = signed_for_a(&event);
    for header in &headers {
        let reply = service_b.handle(Some(header), &body).await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(reply.body.contains("signature_mismatch"), "{}", reply.body);
    }
    assert_eq!(b.load_event("evt_for_a").await.unwrap(), None);
    assert_eq!(b.load_account(&AccountId::parse("acct_A").unwrap()).await.unwrap(), None);
    assert!(no_accounts(&b).await);
    assert_eq!(service_a.handle(Some(&headers[0]), &body).await.status, 200);
    assert!(a.load_account(&AccountId::parse("acct_A").unwrap()).await.unwrap().is_some());
    // A's data now exists; B still sees none of it.
    assert!(no_accounts(&b).await);
    assert_eq!(b.load_event("evt_for_a").await.unwrap(), None);
}

fn temp_db(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("connect-flow-security-{name}-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[tokio::test]
async fn a_signature_for_one_deployment_never_reaches_another_on_sqlite_files() {
    let (path_a, path_b) = (temp_db("a"), temp_db("b"));
    let a = SqliteStore::open(&path_a, NOW).unwrap();
    let b = SqliteStore::open(&path_b, NOW).unwrap();
    cross_deployment(a.clone(), b.clone()).await;
    // B's read API, over HTTP as `connect-flow serve` answers it, never shows A's account.
    for (store, expected) in [(a, 200), (b, 404)] {
        let service = Arc::new(WebhookService::new(store, &settings_with(&[SECRET_B_NEW])));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(connect_flow::server::serve(listener, service, async {
            let _ = stopped.await;
        }));
        let account = reqwest::get(format!("{base}/accounts/acct_A")).await.unwrap();
        assert_eq!(account.status().as_u16(), expected);
        let steps = reqwest::get(format!("{base}/accounts/acct_A/steps")).await.unwrap();
        assert_eq!(steps.status().as_u16(), expected);
        let list = reqwest::get(format!("{base}/accounts")).await.unwrap().text().await.unwrap();
        let list: Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list["data"].as_array().unwrap().len(), usize::from(expected == 200), "{list}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
    let _ = (std::fs::remove_file(path_a), std::fs::remove_file(path_b));
}

#[tokio::test]
async fn a_signature_for_one_deployment_never_reaches_another_on_dynamodb_tables() {
    cross_deployment(dynamo_store().await, dynamo_store().await).await;
}

// ------------------------------------------------------------------------------------------------
// (4) The livemode rule: an event of the other mode is answered 200, recorded, and ignored.
// ------------------------------------------------------------------------------------------------

async fn livemode_rule<S: AccountStore + Clone>(store: S) {
    let test_mode_only = WebhookSettings { expected_livemode: Some(false), ..settings() };
    let service = WebhookService::with_clock(store.clone(), &test_mode_only, FixedClock(NOW));
    let account_id = AccountId::parse("acct_A").unwrap();
    let deliver = |event: Value| {
        let service = &service;
        async move {
            let (header, body) = signed(&event, NOW);
            let reply = service.handle(Some(&header), &body).await;
            let answer: Value = serde_json::from_str(&reply.body).unwrap();
            (reply.status, answer["outcome"].as_str().unwrap_or_default().to_owned())
        }
    };
    // A live event for an account never seen: recorded, no account.
    let mut live_account = account_updated("evt_live_1", "acct_A", NOW - 50, true, &[]);
    live_account["livemode"] = json!(true);
    assert_eq!(deliver(live_account.clone()).await, (200, "livemode_mismatch".to_owned()));
    let record = store.load_event("evt_live_1").await.unwrap().unwrap();
    assert_eq!((record.outcome, record.livemode), (EventOutcome::LivemodeMismatch, Some(true)));
    assert_eq!(store.load_account(&account_id).await.unwrap(), None);
    assert_eq!(deliver(live_account).await, (200, "duplicate".to_owned()));
    // A test event applies; a newer live one changes nothing of it.
    assert_eq!(
        deliver(account_updated("evt_test_1", "acct_A", NOW - 40, true, &[])).await,
        (200, "applied".to_owned())
    );
    let before = store.load_account(&account_id).await.unwrap().unwrap();
    let mut newer_live = account_updated("evt_live_2", "acct_A", NOW - 5, false, &["external_account"]);
    newer_live["livemode"] = json!(true);
    assert_eq!(deliver(newer_live).await, (200, "livemode_mismatch".to_owned()));
    assert_eq!(store.load_account(&account_id).await.unwrap().unwrap(), before);
    // A live payment plans no transfer.
    assert_eq!(deliver(payment("evt_live_pay", true)).await, (200, "livemode_mismatch".to_owned()));
    assert!(store.load_payment_steps(&"pi_1".into()).await.unwrap().is_empty());
    assert!(store.load_account_steps(&account_id).await.unwrap().is_empty());
    // The same payment in test mode does.
    assert_eq!(deliver(payment("evt_test_pay", false)).await, (200, "applied".to_owned()));
    assert_eq!(store.load_payment_steps(&"pi_1".into()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_livemode_rule_holds_on_sqlite() {
    livemode_rule(sqlite_store()).await;
}

#[tokio::test]
async fn the_livemode_rule_holds_on_dynamodb() {
    livemode_rule(dynamo_store().await).await;
}

#[tokio::test]
async fn a_live_deployment_ignores_test_events_and_an_unset_one_takes_both() {
    let live_only = WebhookSettings { expected_livemode: Some(true), ..settings() };
    let store = sqlite_store();
    let service = WebhookService::with_clock(store.clone(), &live_only, FixedClock(NOW));
    let (header, body) = signed(&account_updated("evt_test", "acct_A", NOW - 5, true, &[]), NOW);
    assert!(service.handle(Some(&header), &body).await.body.contains("livemode_mismatch"));
    assert!(no_accounts(&store).await);
    let either = pipeline(sqlite_store());
    let mut live = account_updated("evt_live", "acct_B", NOW - 5, true, &[]);
    live["livemode"] = json!(true);
    for event in [live, account_updated("evt_test", "acct_C", NOW - 5, true, &[])] {
        let (header, body) = signed(&event, NOW);
        assert!(either.handle(Some(&header), &body).await.body.contains("\"applied\""));
    }
}

// ------------------------------------------------------------------------------------------------
// (5) Bodies over the limit are refused before they are read whole.
// ------------------------------------------------------------------------------------------------

/// `connect-flow serve` on a fresh embedded store, on a loopback port, until the test ends.
async fn serve() -> (std::net::SocketAddr, SqliteStore) {
    let store =
        SqliteStore::open(temp_db(&format!("limit-{}", rand_suffix())), SystemClock.now_unix()).unwrap();
    let service = Arc::new(WebhookService::new(store.clone(), &settings()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(connect_flow::server::serve(listener, service, std::future::pending()));
    (addr, store)
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The most a peer can have in flight that the server never read: the kernel's largest receive
/// and send buffers on loopback.
fn socket_buffers_max() -> usize {
    let max = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.split_whitespace().last().and_then(|n| n.parse::<usize>().ok()))
            .unwrap_or(64 << 20)
    };
    max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem")
}

/// What the client managed to write before the server stopped it, and the answer it read.
struct Streamed {
    written: usize,
    answer: String,
}

/// Streams a chunked body of up to `total` bytes (blocking I/O, on its own thread) while reading
/// the answer; stops when the server closes the connection.
fn stream_chunked(addr: std::net::SocketAddr, total: usize) -> Streamed {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    });
    let head = "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: t=1,v1=00\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let framed = [format!("{:x}\r\n", chunk.len()).into_bytes(), chunk, b"\r\n".to_vec()].concat();
    let mut written = 0;
    while written < total {
        if stream.write_all(&framed).is_err() {
            break;
        }
        written += framed.len();
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Streamed { written, answer: answer.join().unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_streaming_past_the_limit_is_cut_off_with_413() {
    let (addr, store) = serve().await;
    const TOTAL: usize = 1 << 30;
    let streamed = tokio::task::spawn_blocking(move || stream_chunked(addr, TOTAL)).await.unwrap();
    assert!(streamed.answer.starts_with("HTTP/1.1 413"), "{}", streamed.answer);
    assert!(streamed.answer.contains("body_too_large"), "{}", streamed.answer);
    // The server stopped reading at the limit and closed: the client could only fill the socket
    // buffers beyond it, never send the whole gibibyte.
    let bound = MAX_BODY_BYTES + socket_buffers_max();
    assert!(streamed.written < bound, "{} bytes sent, bound {bound}", streamed.written);
    assert!(no_accounts(&store).await);
    println!("chunked: 413 after the client sent {} bytes of {TOTAL} (bound {bound})", streamed.written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let (addr, _store) = serve().await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: t=1,v1=00\r\n\
             Content-Length: {}\r\n\r\n",
            10u64 << 30
        );
        stream.write_all(head.as_bytes()).unwrap();
        // Not one byte of the body is sent: the answer cannot have waited for it.
        let mut answer = vec![0u8; 4096];
        let read = stream.read(&mut answer).unwrap();
        String::from_utf8_lossy(&answer[..read]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_under_the_limit_reads_only_that_much() {
    let (addr, store) = serve().await;
    let (header, body) =
        signed(&account_updated("evt_short", "acct_S", NOW - 5, true, &[]), SystemClock.now_unix());
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The length covers the first 100 bytes of a signed body: those are all the server reads
        // as the body, so the signature (over the whole body) no longer matches.
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: {header}\r\n\
             Content-Length: 100\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(&body);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("signature_mismatch"), "{answer}");
    assert!(no_accounts(&store).await);
}

/// The Lambda front door gets the body already read by API Gateway (at most 10 MB) and Lambda (at
/// most 6 MB); the pipeline refuses anything over the limit before verifying or storing it, so an
/// oversized body signed correctly is still 413 and stores nothing.
#[tokio::test]
async fn the_pipeline_refuses_an_oversized_body_even_when_correctly_signed() {
    let store = sqlite_store();
    let service = pipeline(store.clone());
    let mut event = account_updated("evt_big", "acct_big", NOW - 5, true, &[]);
    event["data"]["object"]["padding"] = json!("x".repeat(MAX_BODY_BYTES));
    let (header, body) = signed(&event, NOW);
    assert!(body.len() > MAX_BODY_BYTES);
    let reply = service.handle(Some(&header), &body).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.body.contains("body_too_large"));
    assert_eq!(store.load_event("evt_big").await.unwrap(), None);
    assert!(no_accounts(&store).await);
}
