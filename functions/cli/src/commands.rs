//! The `connect-flow` subcommands other than `serve`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use shared::clock::{Clock, SystemClock};
use shared::stripe::event::peek_event;
use shared::stripe::signature::{SignatureVerifier, WebhookSecret, sign};

/// What `verify` concluded: the line to print and whether the header was valid for the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// One line: `EVENT_ID TYPE` when valid, `KIND: message` when not.
    pub line: String,
    /// Whether the header was valid for the body.
    pub valid: bool,
}

/// `connect-flow verify`: checks a header for a body as Stripe's SDKs' `construct_event` does.
pub fn verify(
    secrets: &[String],
    tolerance_secs: u64,
    now: Option<i64>,
    header: &str,
    body: &[u8],
) -> Verdict {
    let secrets: Vec<WebhookSecret> = secrets.iter().map(WebhookSecret::new).collect();
    let now = now.unwrap_or_else(|| SystemClock.now_unix());
    let refused = |kind: &str, message: String| Verdict { line: format!("{kind}: {message}"), valid: false };
    if let Err(error) = SignatureVerifier::new(&secrets, tolerance_secs).verify(Some(header), body, now) {
        return refused(error.kind(), error.to_string());
    }
    match peek_event(body) {
        Ok((id, event_type)) => Verdict {
            line: format!("{} {}", id.as_deref().unwrap_or("-"), event_type.as_deref().unwrap_or("-")),
            valid: true,
        },
        Err(error) => refused(error.kind(), error.to_string()),
    }
}

/// Reads all of standard input.
pub fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).context("reading the body from standard input")?;
    Ok(body)
}

/// `connect-flow send`: signs each file with the current time and POSTs it, printing each status.
/// Returns whether every delivery was answered 2xx.
pub async fn send(files: &[PathBuf], url: &str, secret: &str) -> anyhow::Result<bool> {
    let client = reqwest::Client::new();
    let secret = WebhookSecret::new(secret);
    let mut all_accepted = true;
    for file in files {
        let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let header = sign(&secret, SystemClock.now_unix(), &body);
        let response = client
            .post(url)
            .header("Stripe-Signature", header)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("posting {} to {url}", file.display()))?;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        println!("{} {} {}", file.display(), status.as_u16(), answer.trim());
        all_accepted &= status.is_success();
    }
    Ok(all_accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"account.updated"}"#;

    #[test]
    fn a_valid_header_prints_the_id_and_type() {
        let header = sign(&WebhookSecret::new("whsec_b"), 100, BODY);
        let verdict = verify(&["whsec_a".into(), "whsec_b".into()], 300, Some(100), &header, BODY);
        assert_eq!(verdict, Verdict { line: "evt_1 account.updated".into(), valid: true });
    }

    #[test]
    fn each_refusal_starts_with_its_kind() {
        let secrets = ["whsec_a".to_owned()];
        let thin = br#"{"id":"evt_2","object":"v2.core.event"}"#;
        for (header, body, now, kind) in [
            (String::new(), BODY, 100, "missing_header"),
            ("nonsense".into(), BODY, 100, "malformed_header"),
            ("t=100,v0=ab".into(), BODY, 100, "no_v1_signature"),
            ("t=100,v1=ab".into(), BODY, 100, "signature_mismatch"),
            (sign(&WebhookSecret::new("whsec_a"), 100, BODY), BODY, 401, "timestamp_outside_tolerance"),
            (sign(&WebhookSecret::new("whsec_a"), 100, b"nope"), &b"nope"[..], 100, "invalid_json"),
            (
                sign(&WebhookSecret::new("whsec_a"), 100, thin),
                &thin[..],
                100,
                "thin_event_passed_to_snapshot_parser",
            ),
        ] {
            let verdict = verify(&secrets, 300, Some(now), &header, body);
            assert!(!verdict.valid && verdict.line.starts_with(&format!("{kind}: ")), "{verdict:?}");
        }
    }
}
