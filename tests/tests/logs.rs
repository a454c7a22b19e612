//! Logs name events, never their bodies or the secrets: every delivery path is run with a
//! subscriber that captures each line, and the captured text is searched.

use std::io::Write;
use std::sync::{Arc, Mutex};

use integration_tests::{NOW, SECRET, account_updated, pipeline, signed, sqlite_store};
use serde_json::json;
use shared::stripe::signature::{WebhookSecret, sign};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_log_line_carries_a_body_or_a_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    const MARKER: &str = "body_marker_must_not_be_logged";
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
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
            let thin = json!({"id": "evt_thin", "object": "v2.core.event", "type": MARKER});
            let (header, body) = signed(&thin, NOW);
            assert_eq!(service.handle(Some(&header), &body).await.status, 200);
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("evt_log1"), "the event id is logged: {logs}");
    assert!(logs.contains("signature_mismatch"), "the refusal reason is logged: {logs}");
    assert!(!logs.contains(MARKER), "a body leaked into the logs: {logs}");
    assert!(!logs.contains(SECRET), "a secret leaked into the logs: {logs}");
    assert!(!logs.contains(&SECRET["whsec_".len()..]), "part of a secret leaked into the logs");
}
