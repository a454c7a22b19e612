//! `Stripe-Signature` parsing and verification on arbitrary headers and bodies.
//!
//! Input: the header up to the first newline, the raw body after it. Checks that a header is
//! accepted only when it carries a real v1 signature of the body, and that a real signature is
//! accepted whatever else the header carries, as long as every item is `key=value`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::stripe::signature::{SignatureError, SignatureVerifier, WebhookSecret, sign};

const NOW: i64 = 1_732_000_000;
const TOLERANCE_SECS: u64 = 300;
const SECRETS: [&str; 2] = ["whsec_fuzz_retiring", "whsec_fuzz_current"];

fn secrets() -> Vec<WebhookSecret> {
    SECRETS.iter().map(|secret| WebhookSecret::new(*secret)).collect()
}

/// The hex `v1` signature `secret` gives `body` at `timestamp`.
fn expected_v1(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> String {
    let header = sign(secret, timestamp, body);
    header.rsplit_once("v1=").map(|(_, hex)| hex.to_owned()).unwrap_or_default()
}

fn items(header: &str) -> impl Iterator<Item = &str> {
    header.split(',').map(str::trim).filter(|item| !item.is_empty())
}

/// Every non-empty item is `key=value`: otherwise the header is malformed whatever it carries.
fn all_items_have_values(header: &str) -> bool {
    items(header).all(|item| item.contains('='))
}

fuzz_target!(|data: &[u8]| {
    let (header_bytes, body) = match data.iter().position(|&b| b == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header_bytes);
    let secrets = secrets();
    let verifier = SignatureVerifier::new(&secrets, TOLERANCE_SECS);
    let no_age_check = SignatureVerifier::new(&secrets, 0);

    // Soundness: whatever the fuzzer wrote, acceptance means the header holds `t=` and a `v1=`
    // that really is the HMAC of this body at that time under one of the secrets.
    for (verifier, tolerance) in [(&verifier, TOLERANCE_SECS), (&no_age_check, 0)] {
        let result = verifier.verify(Some(&header), body, NOW);
        assert_eq!(result, verifier.verify(Some(&header), body, NOW), "verification is deterministic");
        if let Ok(timestamp) = result {
            let has_t = items(&header).any(|item| {
                item.split_once('=')
                    .is_some_and(|(k, v)| k.trim() == "t" && v.trim().parse() == Ok(timestamp))
            });
            assert!(has_t, "accepted timestamp {timestamp} is not in the header {header:?}");
            let genuine = secrets.iter().map(|secret| expected_v1(secret, timestamp, body)).any(|want| {
                items(&header).any(|item| {
                    item.split_once('=')
                        .is_some_and(|(k, v)| k.trim() == "v1" && v.trim().eq_ignore_ascii_case(&want))
                })
            });
            assert!(genuine, "accepted a header with no genuine v1 signature: {header:?}");
            if tolerance > 0 {
                assert!(timestamp >= NOW - TOLERANCE_SECS as i64, "accepted a stale timestamp {timestamp}");
            }
        }
    }
    assert_eq!(verifier.verify(None, body, NOW), Err(SignatureError::MissingHeader));

    // Completeness: a genuine signature from the newest secret, put first, passes whatever
    // follows it, unless the rest has an item without `=`.
    let timestamp = items(&header)
        .find_map(|item| item.strip_prefix("t=").and_then(|t| t.trim().parse::<i64>().ok()))
        .unwrap_or(NOW);
    let good = sign(&secrets[1], timestamp, body);
    let combined = format!("{good},{header}");
    let want_age = if timestamp >= NOW - TOLERANCE_SECS as i64 {
        Ok(timestamp)
    } else {
        Err(SignatureError::TimestampOutsideTolerance)
    };
    let (want, want_no_age) = if all_items_have_values(&header) {
        (want_age, Ok(timestamp))
    } else {
        (Err(SignatureError::MalformedHeader), Err(SignatureError::MalformedHeader))
    };
    assert_eq!(verifier.verify(Some(&combined), body, NOW), want, "header {combined:?}");
    assert_eq!(no_age_check.verify(Some(&combined), body, NOW), want_no_age, "header {combined:?}");
});
