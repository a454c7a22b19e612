//! The Lambda front end, from the envelopes in `events/lambda/`: IAM identity first, then routes.

use lambda_http::Body;
use serde_json::Value;

use super::lambda::handle;
use super::{PlatformApi, PlatformSettings};
use crate::clock::Clock;
use crate::config::WebhookSettings;
use crate::store::sqlite::SqliteStore;
use crate::webhook::WebhookService;

/// The local-only secret the envelopes are signed with.
const LOCAL_SECRET: &str = "whsec_connect_flow_local_only";

fn envelope(name: &str) -> lambda_http::Request {
    let path = format!("{}/../events/lambda/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    lambda_http::request::from_str(&json).unwrap_or_else(|error| panic!("{path}: {error}"))
}

struct Fixed;

impl Clock for Fixed {
    fn now_unix(&self) -> i64 {
        1_732_000_100
    }
}

/// A store holding the demo account, delivered as its webhook envelope would deliver it.
async fn store_with_demo_account() -> SqliteStore {
    let store = SqliteStore::in_memory().expect("an in-memory store");
    let lookup = |name: &str| match name {
        "STRIPE_WEBHOOK_SECRETS" => Some(LOCAL_SECRET.to_owned()),
        "STRIPE_WEBHOOK_TOLERANCE_SECS" => Some("0".to_owned()),
        _ => None,
    };
    let webhook = WebhookService::with_clock(
        store.clone(),
        &WebhookSettings::from_lookup(lookup).expect("settings"),
        Fixed,
    );
    let delivery = envelope("apigw-v2.account.updated.active");
    let signature = delivery.headers().get("stripe-signature").and_then(|value| value.to_str().ok());
    let reply = webhook.handle(signature, delivery.body().as_ref()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    store
}

async fn answer(api: &PlatformApi<SqliteStore, Fixed>, name: &str) -> (u16, String, Value) {
    let response = handle(api, envelope(name)).await.expect("an answer");
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = match response.body() {
        Body::Text(text) => text.clone(),
        Body::Empty => String::new(),
        Body::Binary(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    };
    (status, content_type, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn api(store: SqliteStore) -> PlatformApi<SqliteStore, Fixed> {
    let settings = PlatformSettings { expected_livemode: Some(false), ..PlatformSettings::default() };
    PlatformApi::with_clock(store.clone(), None, settings, Fixed).with_queue(std::sync::Arc::new(store))
}

#[tokio::test]
async fn signed_requests_reach_the_routes() {
    let api = api(store_with_demo_account().await);
    let (status, _, account) = answer(&api, "apigw-v2.platform.get-account").await;
    assert_eq!((status, account["onboarding_status"].as_str()), (200, Some("active")), "{account}");
    let (status, _, page) = answer(&api, "apigw-v2.platform.list-accounts").await;
    assert_eq!(
        (status, page["data"][0]["account_id"].as_str()),
        (200, Some("acct_1QcFlowDemo0001")),
        "{page}"
    );
    assert_eq!(page["has_more"], false);
    let (status, _, step) = answer(&api, "apigw-v2.platform.create-transfer").await;
    assert_eq!(
        (status, step["kind"].as_str(), step["amount"].as_i64()),
        (202, Some("transfer"), Some(2500)),
        "{step}"
    );
    let (status, _, step_again) = answer(&api, "apigw-v2.platform.create-transfer").await;
    assert_eq!((status, &step_again["step_id"]), (200, &step["step_id"]));
    let (status, _, bad) = answer(&api, "apigw-v2.platform.bad-amount").await;
    assert_eq!(
        (status, bad["error"].as_str(), bad["field"].as_str()),
        (400, Some("invalid_request"), Some("amount"))
    );
    let (status, _, changes) = answer(&api, "apigw-v2.platform.changes").await;
    assert_eq!(status, 200);
    let types: Vec<&str> =
        changes["data"].as_array().expect("a list").iter().filter_map(|c| c["type"].as_str()).collect();
    assert!(
        types.contains(&"account.onboarding_status_changed") && types.contains(&"step.status_changed"),
        "{types:?}"
    );
}

/// A request without an IAM identity in its context (the authorizer dropped from the template)
/// is refused before any route runs, even for an account that exists.
#[tokio::test]
async fn a_request_without_an_iam_identity_is_refused() {
    let api = api(store_with_demo_account().await);
    let (status, content_type, body) = answer(&api, "apigw-v2.platform.no-iam-identity").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthenticated")), "{body}");
    assert_eq!(content_type, "application/json");
    assert!(body.get("account_id").is_none());
}

/// The refresh route needs no IAM identity (a seller's browser follows it), only its own token.
#[tokio::test]
async fn the_refresh_route_answers_a_forged_token_with_a_plain_403() {
    let api = api(store_with_demo_account().await);
    let (status, content_type, body) = answer(&api, "apigw-v2.platform.refresh-forged").await;
    assert_eq!(status, 403, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}
