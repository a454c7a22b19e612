//! Signed, expiring onboarding refresh tokens, bound to one account: the only credential on the
//! one platform route a seller's browser follows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::account::AccountId;

/// How long a refresh token lives.
pub(crate) const TOKEN_LIFETIME_SECS: i64 = 7 * 24 * 60 * 60;

/// The HMAC key for refresh tokens (`CONNECT_FLOW_LINK_SECRET`). Never shown.
#[derive(Clone)]
pub struct LinkSecret(Vec<u8>);

impl LinkSecret {
    /// A key from its configured value; `None` when it is too short to be a key.
    pub fn new(value: &str) -> Option<Self> {
        (value.trim().len() >= 16).then(|| Self(value.trim().as_bytes().to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length, so this never fails.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(<redacted>)")
    }
}

/// What a token lets its holder do: ask for a fresh link of one type, for one account, back to
/// one return URL, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkGrant {
    /// The account.
    #[serde(rename = "a")]
    pub account: AccountId,
    /// `account_onboarding` or `account_update`.
    #[serde(rename = "t")]
    pub link_type: String,
    /// Where Stripe sends the seller afterwards.
    #[serde(rename = "r")]
    pub return_url: String,
    /// `currently_due` or `eventually_due`, when given.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<String>,
    /// Unix time after which the token is refused.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

/// Signs `grant`: `base64url(payload).base64url(HMAC-SHA256(payload))`.
pub fn sign(grant: &LinkGrant, secret: &LinkSecret) -> String {
    let payload = serde_json::to_vec(grant).unwrap_or_default();
    let mut mac = secret.mac();
    mac.update(&payload);
    let tag = mac.finalize().into_bytes();
    format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag))
}

/// The grant `token` carries, if its signature is this secret's and it has not expired at `now`.
/// The tag is checked (in constant time) before the payload is parsed.
pub fn verify(token: &str, secret: &LinkSecret, now: i64) -> Option<LinkGrant> {
    let (payload, tag) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    let mut mac = secret.mac();
    mac.update(&payload);
    mac.verify_slice(&tag).ok()?;
    let grant: LinkGrant = serde_json::from_slice(&payload).ok()?;
    (now <= grant.expires_at).then_some(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> LinkSecret {
        LinkSecret::new("link-secret-for-tests-only").expect("long enough")
    }

    fn grant(account: &str) -> LinkGrant {
        LinkGrant {
            account: AccountId::parse(account).expect("an account id"),
            link_type: "account_onboarding".into(),
            return_url: "https://platform.example/done".into(),
            collect: None,
            expires_at: 1_000 + TOKEN_LIFETIME_SECS,
        }
    }

    #[test]
    fn a_signed_grant_verifies_until_it_expires() {
        let token = sign(&grant("acct_1TokenA"), &secret());
        assert_eq!(verify(&token, &secret(), 1_000), Some(grant("acct_1TokenA")));
        assert_eq!(verify(&token, &secret(), 1_000 + TOKEN_LIFETIME_SECS), Some(grant("acct_1TokenA")));
        assert_eq!(verify(&token, &secret(), 1_001 + TOKEN_LIFETIME_SECS), None);
    }

    #[test]
    fn another_secret_an_altered_payload_or_garbage_is_refused() {
        let token = sign(&grant("acct_1TokenA"), &secret());
        let other = LinkSecret::new("another-secret-entirely").expect("long enough");
        assert_eq!(verify(&token, &other, 1_000), None);
        // The same tag on the payload of another account's grant.
        let (_, tag) = token.split_once('.').expect("two parts");
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&grant("acct_1TokenB")).expect("json"));
        assert_eq!(verify(&format!("{forged_payload}.{tag}"), &secret(), 1_000), None);
        for garbage in ["", ".", "abc", "abc.def", "!!!.???", &token.replace('.', "")] {
            assert_eq!(verify(garbage, &secret(), 1_000), None, "{garbage}");
        }
    }

    #[test]
    fn short_secrets_are_not_keys_and_keys_are_not_shown() {
        assert!(LinkSecret::new("short").is_none());
        assert_eq!(format!("{:?}", secret()), "LinkSecret(<redacted>)");
    }
}
