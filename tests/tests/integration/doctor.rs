//! `connect-flow doctor` (the real binary) and `GET /healthz?deep=1` on `serve`, against the
//! stand-in Stripe's webhook endpoints and event destinations.
//!
//! The binary is the workspace's `target/debug/connect-flow` (or `CONNECT_FLOW_BIN`): `cargo test
//! --workspace` builds it; with `-p integration-tests` alone, run `cargo build -p connect-flow`
//! first. A missing binary fails the test, it never skips.

use std::process::Output;
use std::sync::Arc;

use integration_tests::stripe_stub::{STUB_API_KEY, StripeStub};
use integration_tests::{settings, sqlite_store};
use serde_json::{Value, json};
use shared::clock::SystemClock;
use shared::doctor::{HANDLED_EVENT_TYPES, Listener, SignatureFailureCount};
use shared::platform::{PlatformApi, PlatformSettings};
use shared::stripe::client::{STRIPE_VERSION, StripeClient};
use shared::webhook::WebhookService;

/// A `serve` on loopback whose platform API checks against `stub`, without a token.
struct Deployment {
    base: String,
    failures: SignatureFailureCount,
}

impl Deployment {
    async fn start(stub: &StripeStub, with_key: bool) -> Self {
        let store = sqlite_store();
        let failures = SignatureFailureCount::default();
        let webhook =
            WebhookService::new(store.clone(), &settings()).with_signature_failure_count(failures.clone());
        let stripe = with_key.then(|| StripeClient::new(stub.client_config()).unwrap());
        let platform = PlatformApi::with_clock(store, stripe, PlatformSettings::default(), SystemClock)
            .with_signature_failure_count(failures.clone());
        let app = connect_flow::server::App::new(Arc::new(webhook), platform, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(connect_flow::server::serve_app(listener, app, std::future::pending()));
        Self { base, failures }
    }

    fn webhook_url(&self) -> String {
        format!("{}/webhooks/stripe", self.base)
    }
}

fn handled(listener: Listener) -> Vec<&'static str> {
    HANDLED_EVENT_TYPES.iter().filter(|e| e.listener == listener).map(|e| e.event_type).collect()
}

/// A Connect and an account endpoint at `url`, each as complete as it should be, with `change`
/// applied to the one `change` names.
fn add_endpoints(stub: &StripeStub, url: &str, change: impl Fn(Listener, &mut Value)) -> (String, String) {
    let mut connect = json!({
        "url": url, "application": "ca_stubplatform", "enabled_events": handled(Listener::Connect),
        "api_version": STRIPE_VERSION,
    });
    change(Listener::Connect, &mut connect);
    let mut account =
        json!({"url": url, "enabled_events": handled(Listener::Account), "api_version": STRIPE_VERSION});
    change(Listener::Account, &mut account);
    let connect = if connect.is_null() { String::new() } else { stub.add_webhook_endpoint(connect) };
    let account = if account.is_null() { String::new() } else { stub.add_webhook_endpoint(account) };
    (connect, account)
}

/// Runs `connect-flow doctor ARGS` with the stub's key and base, off the runtime's thread so that
/// the in-process `serve` keeps answering.
async fn doctor(stub: &StripeStub, args: &[&str], with_key: bool) -> (Option<i32>, Vec<String>, String) {
    let mut command = std::process::Command::new(integration_tests::connect_flow_binary());
    command.arg("doctor").args(args);
    command.env_remove("CONNECT_FLOW_API_TOKEN").env("STRIPE_API_BASE", stub.base_url());
    if with_key {
        command.env("STRIPE_API_KEY", STUB_API_KEY);
    } else {
        command.env_remove("STRIPE_API_KEY");
    }
    let output: Output =
        tokio::task::spawn_blocking(move || command.output().expect("the binary runs")).await.unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code(), stdout.lines().map(str::to_owned).collect(), stderr)
}

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

fn lines_starting<'a>(lines: &'a [String], prefix: &str) -> Vec<&'a String> {
    lines.iter().filter(|line| line.starts_with(prefix)).collect()
}

#[tokio::test]
async fn a_complete_set_up_prints_only_ok_lines_and_exits_0() {
    let stub = StripeStub::start().await;
    let deployment = Deployment::start(&stub, true).await;
    add_endpoints(&stub, &deployment.webhook_url(), |_, _| {});
    stub.add_event_destination(
        json!({"webhook_endpoint": {"url": deployment.webhook_url(), "signing_secret": null}}),
    );
    let (code, lines, stderr) = doctor(&stub, &["--url", &deployment.base], true).await;
    assert_eq!(code, Some(0), "{lines:#?}\n{stderr}");
    assert!(lines.iter().all(|line| line.starts_with("ok ")), "{lines:#?}");
    for expected in [
        "ok Connect endpoint we_",
        "ok account endpoint we_",
        "ok Connect endpoint: all 14 handled event types are enabled",
        "ok account endpoint: all 15 handled event types are enabled",
        "ok event destination ed_",
        "ok signature failures: 0 since serve started",
    ] {
        assert_eq!(
            lines_starting(&lines, expected).len(),
            1 + usize::from(expected.ends_with("we_")) * 2,
            "{expected} in {lines:#?}"
        );
    }
    // Both lists were read from Stripe, the destinations on API v2's version.
    let received = stub.received();
    let destinations = received.iter().find(|r| r.path == "/v2/core/event_destinations").unwrap();
    assert_eq!(destinations.stripe_version.as_deref(), Some(shared::stripe::v2::STRIPE_V2_VERSION));
    assert!(received.iter().any(|r| r.path == "/v1/webhook_endpoints"));
}

#[tokio::test]
async fn each_problem_prints_its_line_with_the_fix_and_exits_1() {
    struct Case {
        name: &'static str,
        change: fn(Listener, &mut Value),
        expect_prefix: &'static str,
        expect_in_fix: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "no Connect endpoint",
            change: |listener, endpoint| {
                if listener == Listener::Connect {
                    *endpoint = Value::Null;
                }
            },
            expect_prefix: "missing Connect endpoint at http://127.0.0.1:",
            expect_in_fix: &[
                "fix: curl https://api.stripe.com/v1/webhook_endpoints -u \"$STRIPE_API_KEY:\" -d url=http://127.0.0.1:",
                "-d connect=true",
                "'enabled_events[]=account.updated'",
                "STRIPE_WEBHOOK_SECRETS",
            ],
        },
        Case {
            name: "capability.updated not enabled",
            change: |listener, endpoint| {
                if listener == Listener::Connect {
                    let events: Vec<&str> = handled(Listener::Connect)
                        .into_iter()
                        .filter(|e| *e != "capability.updated")
                        .collect();
                    endpoint["enabled_events"] = json!(events);
                }
            },
            expect_prefix: "missing Connect endpoint we_",
            expect_in_fix: &[
                "does not receive capability.updated; fix: curl https://api.stripe.com/v1/webhook_endpoints/we_",
                "'enabled_events[]=capability.updated'",
                "'enabled_events[]=account.updated'",
            ],
        },
        Case {
            name: "the account default API version",
            change: |listener, endpoint| {
                if listener == Listener::Account {
                    endpoint["api_version"] = Value::Null;
                }
            },
            expect_prefix: "wrong account endpoint we_",
            expect_in_fix: &["has no api_version", "-d api_version=2024-06-20", "-X DELETE"],
        },
        Case {
            name: "another API version",
            change: |listener, endpoint| {
                if listener == Listener::Connect {
                    endpoint["api_version"] = json!("2019-02-19");
                }
            },
            expect_prefix: "wrong Connect endpoint we_",
            expect_in_fix: &["renders events as 2019-02-19, not 2024-06-20", "-d connect=true", "-X DELETE"],
        },
        Case {
            name: "a disabled endpoint",
            change: |listener, endpoint| {
                if listener == Listener::Account {
                    endpoint["status"] = json!("disabled");
                }
            },
            expect_prefix: "wrong account endpoint we_",
            expect_in_fix: &[
                "is disabled: Stripe delivers nothing to it; fix: curl https://api.stripe.com/v1/webhook_endpoints/we_",
                "-d disabled=false",
            ],
        },
    ];
    for case in cases {
        let stub = StripeStub::start().await;
        let deployment = Deployment::start(&stub, true).await;
        add_endpoints(&stub, &deployment.webhook_url(), case.change);
        let (code, lines, stderr) = doctor(&stub, &["--url", &deployment.base], true).await;
        assert_eq!(code, Some(1), "{}: {lines:#?}\n{stderr}", case.name);
        let bad: Vec<&String> = lines.iter().filter(|line| !line.starts_with("ok ")).collect();
        assert_eq!(bad.len(), 1, "{}: exactly one problem in {lines:#?}", case.name);
        assert!(bad[0].starts_with(case.expect_prefix), "{}: {}", case.name, bad[0]);
        for part in case.expect_in_fix {
            assert!(bad[0].contains(part), "{}: {part:?} in {}", case.name, bad[0]);
        }
        assert!(!bad[0].contains(STUB_API_KEY), "the key is never printed");
    }
}

#[tokio::test]
async fn a_key_without_the_permission_names_the_refused_call_and_exits_non_zero() {
    let stub = StripeStub::start().await;
    let deployment = Deployment::start(&stub, true).await;
    add_endpoints(&stub, &deployment.webhook_url(), |_, _| {});
    stub.deny_permission("/v1/webhook_endpoints");
    let (code, lines, stderr) = doctor(&stub, &["--url", &deployment.base], true).await;
    assert_eq!(code, Some(1), "{lines:#?}\n{stderr}");
    let refused = lines_starting(&lines, "wrong GET /v1/webhook_endpoints was refused");
    assert_eq!(refused.len(), 1, "{lines:#?}");
    assert!(refused[0].contains("403"), "{}", refused[0]);
    assert!(
        refused[0].contains("fix: use the platform's secret key, or give the restricted key"),
        "{}",
        refused[0]
    );
    assert!(!refused[0].contains(STUB_API_KEY), "the key is masked: {}", refused[0]);
    // The other checks still ran: nothing was guessed about the endpoints.
    assert!(lines.iter().all(|line| !line.contains("Connect endpoint")), "{lines:#?}");
    assert_eq!(lines_starting(&lines, "ok event destinations").len(), 1, "{lines:#?}");
}

#[tokio::test]
async fn without_a_url_or_destinations_the_doctor_says_what_it_did_not_check() {
    let stub = StripeStub::start().await;
    add_endpoints(&stub, "https://somewhere.example/webhooks/stripe", |_, _| {});
    stub.remove_event_destinations_api();
    let (code, lines, stderr) = doctor(&stub, &[], true).await;
    assert_eq!(code, Some(0), "{lines:#?}\n{stderr}");
    assert_eq!(
        lines_starting(&lines, "ok Connect endpoint we_")
            .iter()
            .filter(|l| l.contains("the URL was not checked"))
            .count(),
        1,
        "{lines:#?}"
    );
    let unavailable = "ok event destinations: GET /v2/core/event_destinations is not available";
    assert!(lines.iter().any(|l| l.starts_with(unavailable)), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.starts_with("ok signature failures: not checked (pass --url")),
        "{lines:#?}"
    );
    // No key at all: one missing line, exit 1, no Stripe call.
    let before = stub.received().len();
    let (code, lines, _) = doctor(&stub, &[], false).await;
    assert_eq!(code, Some(1));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0]
            .starts_with("missing a Stripe client: Stripe client configuration: STRIPE_API_KEY is not set"),
        "{}",
        lines[0]
    );
    assert_eq!(stub.received().len(), before);
}

#[tokio::test]
async fn signature_failures_at_serve_make_the_doctor_and_healthz_fail() {
    let stub = StripeStub::start().await;
    let deployment = Deployment::start(&stub, true).await;
    add_endpoints(&stub, &deployment.webhook_url(), |_, _| {});
    let client = reqwest::Client::new();
    let deep = format!("{}/healthz?deep=1", deployment.base);
    let response = client.get(&deep).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = json_of(response).await;
    assert_eq!(body["status"], "ok", "{body:#}");
    assert_eq!(body["signature_failures"], 0);
    assert!(
        body["findings"].as_array().unwrap().iter().all(|f| f["level"] == "ok" && f["fix"].is_null()),
        "{body:#}"
    );
    // Plain /healthz stays as it was: it calls no Stripe.
    let calls = stub.received().len();
    let plain: Value =
        json_of(client.get(format!("{}/healthz", deployment.base)).send().await.unwrap()).await;
    assert_eq!(plain, json!({"status": "ok"}));
    assert_eq!(stub.received().len(), calls);

    let refused = client
        .post(deployment.webhook_url())
        .header("Stripe-Signature", "t=1,v1=00")
        .body(r#"{"id":"evt_1","object":"event"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert_eq!(deployment.failures.get(), 1);
    let response = client.get(&deep).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = json_of(response).await;
    assert_eq!((body["status"].as_str(), body["signature_failures"].as_u64()), (Some("failing"), Some(1)));
    let (code, lines, _) = doctor(&stub, &["--url", &deployment.base], true).await;
    assert_eq!(code, Some(1));
    let bad: Vec<&String> = lines.iter().filter(|line| !line.starts_with("ok ")).collect();
    assert_eq!(bad.len(), 1, "{lines:#?}");
    assert!(bad[0].starts_with("wrong signature failures: 1 deliveries refused"), "{}", bad[0]);
    assert!(bad[0].contains("fix: add each endpoint's whsec_ signing secret"), "{}", bad[0]);
}

#[tokio::test]
async fn healthz_deep_answers_503_with_the_findings_or_without_a_key() {
    let stub = StripeStub::start().await;
    let deployment = Deployment::start(&stub, true).await;
    add_endpoints(&stub, &deployment.webhook_url(), |listener, endpoint| {
        if listener == Listener::Connect {
            endpoint["status"] = json!("disabled");
        }
    });
    let response = reqwest::get(format!("{}/healthz?deep=1", deployment.base)).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = json_of(response).await;
    let bad: Vec<&Value> =
        body["findings"].as_array().unwrap().iter().filter(|f| f["level"] != "ok").collect();
    assert_eq!(bad.len(), 1, "{body:#}");
    assert_eq!(bad[0]["level"], "wrong");
    assert!(bad[0]["what"].as_str().unwrap().ends_with("is disabled: Stripe delivers nothing to it"));
    assert!(bad[0]["fix"].as_str().unwrap().ends_with("-d disabled=false"));

    let keyless = Deployment::start(&stub, false).await;
    let response = reqwest::get(format!("{}/healthz?deep=1", keyless.base)).await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = json_of(response).await;
    assert_eq!(body["findings"][0]["level"], "missing", "{body:#}");
    assert!(body["findings"][0]["what"].as_str().unwrap().contains("STRIPE_API_KEY is not configured"));
}

#[tokio::test]
async fn every_page_is_read_and_a_429_or_a_500_is_tried_again() {
    let stub = StripeStub::start().await;
    let deployment = Deployment::start(&stub, true).await;
    // Ours are the oldest: the newest-first list shows them only past the first 100.
    add_endpoints(&stub, &deployment.webhook_url(), |_, _| {});
    for n in 0..120 {
        stub.add_webhook_endpoint(json!({
            "url": format!("https://other{n}.example/webhooks/stripe"), "api_version": STRIPE_VERSION,
        }));
    }
    for n in 0..12 {
        stub.add_event_destination(
            json!({"webhook_endpoint": {"url": format!("https://other{n}.example/hook")}}),
        );
    }
    stub.add_event_destination(json!({
        "status": "disabled", "webhook_endpoint": {"url": deployment.webhook_url(), "signing_secret": null},
    }));
    stub.inject_get("/v1/webhook_endpoints", integration_tests::stripe_stub::Fault::RateLimitedFor(0));
    stub.inject_get(
        "/v2/core/event_destinations",
        integration_tests::stripe_stub::Fault::ServerErrorBeforeCreate,
    );
    let (code, lines, stderr) = doctor(&stub, &[], true).await;
    assert_eq!(stub.pending_faults(), 0, "both faults were met");
    assert_eq!(code, Some(1), "{lines:#?}\n{stderr}");
    let bad: Vec<&String> = lines.iter().filter(|line| !line.starts_with("ok ")).collect();
    assert_eq!(bad.len(), 1, "only the disabled destination, on the second page: {lines:#?}");
    assert!(bad[0].starts_with("wrong event destination ed_"), "{}", bad[0]);
    assert!(bad[0].contains("/enable -H \"Authorization: Bearer $STRIPE_API_KEY\""), "{}", bad[0]);
    // Without --url every endpoint counts: 2 of ours and 120 account endpoints elsewhere.
    assert_eq!(lines_starting(&lines, "ok account endpoint we_").len(), 121 * 3, "{}", lines.len());
    let received = stub.received();
    let pages = |path: &str| received.iter().filter(|r| r.path == path).count();
    assert_eq!(pages("/v1/webhook_endpoints"), 1 + 2, "a 429, then two pages of 100");
    assert_eq!(pages("/v2/core/event_destinations"), 1 + 2, "a 500, then two pages of 10");
}
