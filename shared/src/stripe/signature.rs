//! `Stripe-Signature` verification, matching stripe-python and stripe-node.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance for a signature's age, in seconds.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// Why a signature header was refused. `kind()` is the stable name used in answers and by
/// `connect-flow verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header, or an empty one.
    #[error("no Stripe-Signature header")]
    MissingHeader,
    /// The header is not `t=…,v1=…`: an item without `=`, or a missing or non-numeric `t`.
    #[error("the Stripe-Signature header is not of the form t=…,v1=…")]
    MalformedHeader,
    /// The header carries no `v1` signature (`v0` never counts).
    #[error("the Stripe-Signature header has no v1 signature")]
    NoV1Signature,
    /// No `v1` signature matches the body under any configured secret.
    #[error("no v1 signature matches the body under any configured secret")]
    SignatureMismatch,
    /// The signature is valid but older than the tolerance allows.
    #[error("the signature's timestamp is older than the tolerance allows")]
    TimestampOutsideTolerance,
}

impl SignatureError {
    /// The stable, snake_case name of this error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::MalformedHeader => "malformed_header",
            Self::NoV1Signature => "no_v1_signature",
            Self::SignatureMismatch => "signature_mismatch",
            Self::TimestampOutsideTolerance => "timestamp_outside_tolerance",
        }
    }
}

/// A webhook endpoint's signing secret (`whsec_…`). Its `Debug` output never shows the value.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// Wraps a secret exactly as given: Stripe keys the HMAC with the whole string, prefix included.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.0.as_bytes()).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Checks `Stripe-Signature` headers against every configured secret.
///
/// Each secret's HMAC is keyed once, at construction; verification clones the keyed state.
pub struct SignatureVerifier {
    keyed: Vec<HmacSha256>,
    tolerance_secs: u64,
}

impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("secrets", &self.keyed.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

/// The parts of a well-formed header that verification uses.
#[derive(Debug, PartialEq, Eq)]
struct ParsedHeader<'a> {
    timestamp: i64,
    v1_signatures: Vec<&'a str>,
}

fn parse_header(header: Option<&str>) -> Result<ParsedHeader<'_>, SignatureError> {
    let header = header.map(str::trim).unwrap_or_default();
    if header.is_empty() {
        return Err(SignatureError::MissingHeader);
    }
    let mut timestamp = None;
    let mut v1_signatures = Vec::new();
    for item in header.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (key, value) = item.split_once('=').ok_or(SignatureError::MalformedHeader)?;
        match key.trim() {
            "t" if timestamp.is_none() => {
                let parsed = value.trim().parse::<i64>();
                timestamp = Some(parsed.map_err(|_| SignatureError::MalformedHeader)?);
            }
            "v1" => v1_signatures.push(value.trim()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MalformedHeader)?;
    if v1_signatures.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(ParsedHeader { timestamp, v1_signatures })
}

fn decode_signature(hex_signature: &str) -> Option<[u8; 32]> {
    let mut decoded = [0u8; 32];
    hex::decode_to_slice(hex_signature, &mut decoded).ok()?;
    Some(decoded)
}

impl SignatureVerifier {
    /// A verifier for these secrets. `tolerance_secs` 0 means no age check, as in stripe-python.
    pub fn new(secrets: &[WebhookSecret], tolerance_secs: u64) -> Self {
        Self { keyed: secrets.iter().map(WebhookSecret::mac).collect(), tolerance_secs }
    }

    /// Verifies `header` for the raw `body` at Unix time `now`, returning the signed timestamp.
    ///
    /// The signature is checked before the age, as the reference SDKs do, so that a forged and
    /// old header reports the forgery. Timestamps in the future pass.
    pub fn verify(&self, header: Option<&str>, body: &[u8], now: i64) -> Result<i64, SignatureError> {
        let parsed = parse_header(header)?;
        let candidates: Vec<[u8; 32]> =
            parsed.v1_signatures.iter().filter_map(|sig| decode_signature(sig)).collect();
        let prefix = format!("{}.", parsed.timestamp);
        let mut matched = subtle::Choice::from(0);
        for keyed in &self.keyed {
            let mut mac = keyed.clone();
            mac.update(prefix.as_bytes());
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            for candidate in &candidates {
                matched |= expected.as_slice().ct_eq(candidate.as_slice());
            }
        }
        if !bool::from(matched) {
            return Err(SignatureError::SignatureMismatch);
        }
        let oldest_allowed = now.saturating_sub(i64::try_from(self.tolerance_secs).unwrap_or(i64::MAX));
        if self.tolerance_secs > 0 && parsed.timestamp < oldest_allowed {
            return Err(SignatureError::TimestampOutsideTolerance);
        }
        Ok(parsed.timestamp)
    }
}

/// Builds a `Stripe-Signature` header for `body` at `timestamp`, as Stripe does.
pub fn sign(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FixedClock};

    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const NOW: i64 = 1_700_000_000;

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::new(s)
    }

    fn verifier(secrets: &[&str], tolerance: u64) -> SignatureVerifier {
        SignatureVerifier::new(&secrets.iter().map(|s| secret(s)).collect::<Vec<_>>(), tolerance)
    }

    #[test]
    fn a_header_signed_with_any_configured_secret_passes() {
        let header = sign(&secret("whsec_new"), NOW, BODY);
        assert_eq!(verifier(&["whsec_old", "whsec_new"], 300).verify(Some(&header), BODY, NOW), Ok(NOW));
    }

    #[test]
    fn any_matching_v1_passes_whatever_its_position() {
        let good = sign(&secret("whsec_a"), NOW, BODY);
        let good_sig = good.split("v1=").nth(1).unwrap();
        let header = format!("t={NOW},v1=deadbeef,v1={good_sig},v0=00");
        assert_eq!(verifier(&["whsec_a"], 300).verify(Some(&header), BODY, NOW), Ok(NOW));
    }

    #[test]
    fn a_changed_body_or_secret_is_a_mismatch() {
        let header = sign(&secret("whsec_a"), NOW, BODY);
        let v = verifier(&["whsec_a"], 300);
        assert_eq!(v.verify(Some(&header), b"{}", NOW), Err(SignatureError::SignatureMismatch));
        let other = verifier(&["whsec_a "], 300);
        assert_eq!(other.verify(Some(&header), BODY, NOW), Err(SignatureError::SignatureMismatch));
    }

    #[test]
    fn v0_alone_is_no_v1_signature() {
        let header = sign(&secret("whsec_a"), NOW, BODY).replace("v1=", "v0=");
        let got = verifier(&["whsec_a"], 300).verify(Some(&header), BODY, NOW);
        assert_eq!(got, Err(SignatureError::NoV1Signature));
    }

    #[test]
    fn header_shapes_map_to_their_error_kinds() {
        let v = verifier(&["whsec_a"], 300);
        for (header, want) in [
            (None, SignatureError::MissingHeader),
            (Some(""), SignatureError::MissingHeader),
            (Some("bad_header"), SignatureError::MalformedHeader),
            (Some("t="), SignatureError::MalformedHeader),
            (Some("v1,t=1"), SignatureError::MalformedHeader),
            (Some("t=abc,v1=00"), SignatureError::MalformedHeader),
            (Some("v1=00"), SignatureError::MalformedHeader),
            (Some("t=1"), SignatureError::NoV1Signature),
        ] {
            assert_eq!(v.verify(header, BODY, NOW), Err(want), "header {header:?}");
        }
    }

    #[test]
    fn age_is_checked_only_after_the_signature_and_only_into_the_past() {
        let v = verifier(&["whsec_a"], 300);
        let old = sign(&secret("whsec_a"), NOW - 301, BODY);
        assert_eq!(v.verify(Some(&old), BODY, NOW), Err(SignatureError::TimestampOutsideTolerance));
        let edge = sign(&secret("whsec_a"), NOW - 300, BODY);
        assert_eq!(v.verify(Some(&edge), BODY, NOW), Ok(NOW - 300));
        let future = sign(&secret("whsec_a"), NOW + 10_000, BODY);
        assert_eq!(v.verify(Some(&future), BODY, NOW), Ok(NOW + 10_000));
        let forged_and_old = format!("t={},v1={}", NOW - 10_000, "ab".repeat(32));
        assert_eq!(v.verify(Some(&forged_and_old), BODY, NOW), Err(SignatureError::SignatureMismatch));
    }

    #[test]
    fn tolerance_zero_disables_the_age_check_and_huge_tolerances_do_not_overflow() {
        let ancient = sign(&secret("whsec_a"), 12_345, BODY);
        assert_eq!(verifier(&["whsec_a"], 0).verify(Some(&ancient), BODY, NOW), Ok(12_345));
        let huge = verifier(&["whsec_a"], u64::MAX);
        assert_eq!(huge.verify(Some(&ancient), BODY, NOW), Ok(12_345));
    }

    #[test]
    fn the_fixed_clock_drives_the_age_check() {
        let header = sign(&secret("whsec_a"), 1_000, BODY);
        let v = verifier(&["whsec_a"], 10);
        assert!(v.verify(Some(&header), BODY, FixedClock(1_010).now_unix()).is_ok());
        assert!(v.verify(Some(&header), BODY, FixedClock(1_011).now_unix()).is_err());
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let s = secret("whsec_supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
        let v = SignatureVerifier::new(&[s], 300);
        assert!(!format!("{v:?}").contains("supersecret"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic(header in ".{0,200}", body in proptest::collection::vec(0u8.., 0..64)) {
            let _ = verifier(&["whsec_a"], 300).verify(Some(&header), &body, NOW);
        }

        #[test]
        fn signing_then_verifying_round_trips(t in 0i64..4_000_000_000, body in proptest::collection::vec(0u8.., 0..256)) {
            let header = sign(&secret("whsec_p"), t, &body);
            proptest::prop_assert_eq!(verifier(&["whsec_p"], 0).verify(Some(&header), &body, NOW), Ok(t));
        }
    }
}
