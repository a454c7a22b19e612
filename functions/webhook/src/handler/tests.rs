//! The handler on the Lambda envelopes in `events/lambda/`, through `lambda_http`'s own parser.

use std::path::{Path, PathBuf};

use lambda_http::http::StatusCode;
use lambda_http::{Body, Request};
use serde_json::Value;
use shared::clock::FixedClock;
use shared::config::WebhookSettings;
use shared::domain::account::{AccountId, OnboardingStatus};
use shared::store::AccountStore;
use shared::store::sqlite::SqliteStore;
use shared::stripe::signature::WebhookSecret;
use shared::webhook::{MAX_BODY_BYTES, WebhookService};

use super::handle;

/// The local-only secret the envelopes are signed with (see events/lambda/README.md).
const LOCAL_SECRET: &str = "whsec_connect_flow_local_only";
/// An hour after the newest sample event; with tolerance 0 the clock only stamps records.
const NOW: i64 = 1_732_003_600;
const DEMO_ACCOUNT: &str = "acct_1QcFlowDemo0001";

fn events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/lambda")
}

fn service() -> WebhookService<SqliteStore, FixedClock> {
    let settings = WebhookSettings {
        secrets: vec![WebhookSecret::new(LOCAL_SECRET)],
        tolerance_secs: 0,
        ..WebhookSettings::unsigned(None)
    };
    WebhookService::with_clock(SqliteStore::in_memory().unwrap(), &settings, FixedClock(NOW))
}

fn envelope(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(events_dir().join(name)).unwrap()).unwrap()
}

fn request(envelope: &Value) -> Request {
    lambda_http::request::from_str(&envelope.to_string()).unwrap()
}

/// Sends one envelope; answers the status and the JSON body.
async fn send(service: &WebhookService<SqliteStore, FixedClock>, envelope: &Value) -> (StatusCode, Value) {
    let response = handle(service, request(envelope)).await.unwrap();
    let body = match response.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a text body, got {other:?}"),
    };
    (response.status(), body)
}

/// The status each file's name promises; see events/lambda/README.md.
fn expected_status(file_name: &str) -> StatusCode {
    if file_name.contains("forged") || file_name.contains("not-json") {
        StatusCode::BAD_REQUEST
    } else if file_name.contains("get-request") {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::OK
    }
}

/// The Stripe event id inside an envelope's (possibly base64) body.
fn event_id(envelope: &Value) -> String {
    let request = request(envelope);
    let event: Value = serde_json::from_slice(request.body().as_ref()).unwrap();
    event["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_lambda_event_gets_the_status_its_name_promises() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(events_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        // The platform API's envelopes are for the platform-api function (shared/src/platform/tests.rs).
        .filter(|path| {
            !path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("apigw-v2.platform."))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 11, "expected the sample envelopes in {}", events_dir().display());
    for path in files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let (status, body) = send(&service(), &envelope(name)).await;
        assert_eq!(status, expected_status(name), "{name}: {body}");
        if status == StatusCode::OK {
            assert_eq!(body["received"], true, "{name}: {body}");
        } else {
            assert!(body["error"].is_string(), "{name}: {body}");
        }
    }
}

#[tokio::test]
async fn active_account_update_leaves_the_account_active_through_either_front_door() {
    for name in ["apigw-v2.account.updated.active.json", "function-url.account.updated.active.json"] {
        let service = service();
        let (status, body) = send(&service, &envelope(name)).await;
        assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("applied")), "{name}");
        let account = AccountId::parse(DEMO_ACCOUNT).unwrap();
        let state = service.store().load_account(&account).await.unwrap().expect("account stored");
        assert_eq!(state.onboarding_status, OnboardingStatus::Active, "{name}");
    }
}

#[tokio::test]
async fn base64_payment_intent_to_an_unseen_seller_is_planned_and_its_replay_is_a_duplicate() {
    let envelope = envelope("apigw-v2.payment_intent.succeeded.json");
    assert_eq!(envelope["isBase64Encoded"], true);
    let service = service();
    // The split names the demo account, which this fresh store has never heard of: the transfer
    // is planned, and the worker asks Stripe whether the account can receive before sending.
    let (status, body) = send(&service, &envelope).await;
    assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("applied")));
    let account = AccountId::parse(DEMO_ACCOUNT).unwrap();
    let steps = service.store().load_account_steps(&account).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].status, shared::domain::step::StepStatus::Queued);
    let (status, body) = send(&service, &envelope).await;
    assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("duplicate")));
    let record = service.store().load_event(&event_id(&envelope)).await.unwrap().expect("event recorded");
    assert_eq!(record.event_type, "payment_intent.succeeded");
}

/// The dispute samples through the Lambda envelope: a dispute of a charge never seen is kept as
/// `unknown_charge`; after the payment, its funds withdrawn net the unsent transfer away and are on
/// the account; the reinstatement gives the transfer back whole.
#[tokio::test]
async fn a_dispute_through_the_lambda_envelope_moves_the_sellers_share_and_back() {
    use shared::domain::step::StepStatus;
    let service = service();
    let account = AccountId::parse(DEMO_ACCOUNT).unwrap();
    let withdrawn = envelope("apigw-v2.charge.dispute.funds_withdrawn.json");
    let (status, body) = send(&service, &withdrawn).await;
    assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("unknown_charge")), "{body}");
    for name in ["apigw-v2.account.updated.active.json", "apigw-v2.payment_intent.succeeded.json"] {
        let (status, body) = send(&service, &envelope(name)).await;
        assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("applied")), "{name}: {body}");
    }
    let steps = service.store().load_account_steps(&account).await.unwrap();
    assert_eq!(
        (steps[0].status, steps[0].amount, steps[0].netted),
        (StepStatus::Refused, 0, 7000),
        "the dispute, kept before the payment, nets its transfer away: {steps:?}"
    );
    let (status, body) = send(&service, &envelope("apigw-v2.charge.dispute.funds_reinstated.json")).await;
    assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("applied")), "{body}");
    let steps = service.store().load_account_steps(&account).await.unwrap();
    assert_eq!((steps[0].status, steps[0].amount), (StepStatus::Queued, 7000), "{steps:?}");
    let state = service.store().load_account(&account).await.unwrap().expect("account stored");
    assert_eq!(state.disputes.cases["dp_1QcFlowDemoDispute01"].status, "won");
    let (status, body) = send(&service, &envelope("apigw-v2.refund.updated.failed.json")).await;
    assert_eq!((status, body["received"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
}

#[tokio::test]
async fn forged_signature_is_refused_and_stores_nothing() {
    let envelope = envelope("apigw-v2.forged-signature.json");
    let service = service();
    let (status, body) = send(&service, &envelope).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("signature_mismatch")));
    assert!(service.store().load_event(&event_id(&envelope)).await.unwrap().is_none());
    let account = AccountId::parse(DEMO_ACCOUNT).unwrap();
    assert!(service.store().load_account(&account).await.unwrap().is_none());
}

#[tokio::test]
async fn signed_body_that_is_not_json_is_refused() {
    let (status, body) = send(&service(), &envelope("apigw-v2.not-json.json")).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
}

#[tokio::test]
async fn get_request_is_not_allowed() {
    let (status, body) = send(&service(), &envelope("apigw-v2.get-request.json")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

#[tokio::test]
async fn signature_header_name_is_case_insensitive() {
    let original = envelope("apigw-v2.account.updated.active.json");
    for spelling in ["Stripe-Signature", "STRIPE-SIGNATURE", "stripe-signature"] {
        let mut envelope = original.clone();
        let headers = envelope["headers"].as_object_mut().unwrap();
        let signature = headers.remove("stripe-signature").unwrap();
        headers.insert(spelling.to_owned(), signature);
        let (status, body) = send(&service(), &envelope).await;
        assert_eq!((status, body["outcome"].as_str()), (StatusCode::OK, Some("applied")), "{spelling}");
    }
}

#[tokio::test]
async fn missing_signature_header_is_refused() {
    let mut envelope = envelope("apigw-v2.account.updated.active.json");
    envelope["headers"].as_object_mut().unwrap().remove("stripe-signature");
    let (status, body) = send(&service(), &envelope).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("missing_header")));
}

#[tokio::test]
async fn body_over_one_mebibyte_is_too_large_and_one_at_the_limit_is_not() {
    let template = envelope("apigw-v2.account.updated.active.json");
    let with_body = |len: usize| {
        let mut envelope = template.clone();
        envelope["body"] = Value::String("x".repeat(len));
        envelope["headers"]["content-length"] = Value::String(len.to_string());
        envelope
    };
    let service = service();
    let (status, body) = send(&service, &with_body(MAX_BODY_BYTES + 1)).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));
    // At the limit the body is looked at, and this one is not what the signature covers.
    let (status, body) = send(&service, &with_body(MAX_BODY_BYTES)).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("signature_mismatch")));
}
