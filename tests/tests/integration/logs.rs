//! Logs name events, never their bodies or the secrets: every delivery path is run with a
//! subscriber that captures each line, and the captured text is searched.

use integration_tests::log_capture::capture_logs;
use integration_tests::{NOW, SECRET, account_updated, pipeline, signed, sqlite_store};
use serde_json::json;
use shared::stripe::signature::{WebhookSecret, sign};

#[test]
fn no_log_line_carries_a_body_or_a_secret() {
    const MARKER: &str = "body_marker_must_not_be_logged";
    let ((), logs) = capture_logs(async {
        let service = pipeline(sqlite_store());
        let mut event = account_updated("evt_log1", "acct_1", NOW - 5, true, &[MARKER]);
        event["data"]["object"]["email"] = json!(MARKER);
        let (header, body) = signed(&event, NOW);
        assert_eq!(service.handle(Some(&header), &body).await.status, 200);
        assert_eq!(service.handle(Some(&header), &body).await.status, 200);
        let forged = header.replace("v1=", "v1=0");
        assert_eq!(service.handle(Some(&forged), &body).await.status, 400);
        let not_json = format!("{{{MARKER}");
        let header = sign(&WebhookSecret::new(SECRET), NOW, not_json.as_bytes());
        let refused = service.handle(Some(&header), not_json.as_bytes()).await;
        assert_eq!((refused.status, refused.body.contains("invalid_json")), (400, true));
        // A thin event's type is logged as a snapshot event's is; the rest of its body is not.
        let thin = json!({"id": "evt_thin", "object": "v2.core.event", "type": "v2.core.account.updated",
            "reason": {"type": "request", "request": {"id": MARKER}},
            "related_object": {"id": "acct_1", "type": "v2.core.account", "url": format!("/v2/core/accounts/{MARKER}")}});
        let (header, body) = signed(&thin, NOW);
        assert_eq!(service.handle(Some(&header), &body).await.status, 200);
    });
    assert!(logs.contains("evt_log1"), "the event id is logged: {logs}");
    assert!(logs.contains("signature_mismatch"), "the refusal reason is logged: {logs}");
    assert!(!logs.contains(MARKER), "a body leaked into the logs: {logs}");
    assert!(!logs.contains(SECRET), "a secret leaked into the logs: {logs}");
    assert!(!logs.contains(&SECRET["whsec_".len()..]), "part of a secret leaked into the logs");
}
