//! The platform's own references: each creating call names one, and it maps to exactly one object,
//! whatever the number of retries. Written with a conditional write, in the same atomic write as
//! the record it creates.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::account::AccountId;
use super::step::UnresolvedCall;

/// The longest reference accepted.
pub(crate) const MAX_REFERENCE_LEN: usize = 200;

/// What a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceKind {
    /// A connected account created through `POST /accounts`.
    Account,
    /// A transfer step asked for through `POST /transfers`.
    Transfer,
    /// A payout step asked for through `POST /payouts`.
    Payout,
}

impl ReferenceKind {
    /// The kind's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Transfer => "transfer",
            Self::Payout => "payout",
        }
    }
}

/// Where a reference stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceState {
    /// Claimed; the object is being created at Stripe.
    Pending,
    /// Stripe definitely refused to create it: nothing exists, and the caller may try again with
    /// other parameters.
    Refused,
    /// It names `object_id`.
    Bound,
}

/// One reference and what it maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    /// What it names.
    pub kind: ReferenceKind,
    /// The caller's reference.
    pub reference: String,
    /// A digest of the call's parameters: the same reference with other parameters conflicts.
    pub fingerprint: String,
    /// Where it stands.
    pub state: ReferenceState,
    /// The object it names, once bound: `acct_…`, or a step id.
    pub object_id: Option<String>,
    /// For a step: the account it pays, which locates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<AccountId>,
    /// Advances only after a definite refusal or a 5xx, so that the next call gets a fresh key.
    pub attempt: u32,
    /// Unix time the current attempt's key was first sent to Stripe.
    pub sent_at: Option<i64>,
    /// How the last call under the current attempt ended without a definite answer.
    pub unresolved: Option<UnresolvedCall>,
    /// Bumped by every stored change; the store's conditional write checks it.
    pub version: u64,
}

impl ReferenceRecord {
    /// A fresh claim on `reference`, at version 1.
    pub fn claim(kind: ReferenceKind, reference: &str, fingerprint: String) -> Self {
        Self {
            kind,
            reference: reference.to_owned(),
            fingerprint,
            state: ReferenceState::Pending,
            object_id: None,
            destination: None,
            attempt: 0,
            sent_at: None,
            unresolved: None,
            version: 1,
        }
    }

    /// The same record one version up, with `change` applied.
    pub fn next(&self, change: impl FnOnce(&mut Self)) -> Self {
        let mut next = self.clone();
        change(&mut next);
        next.version += 1;
        next
    }

    /// The Idempotency-Key of the current attempt: derived from the kind, the reference and the
    /// attempt, so that a retry of one attempt replays Stripe's answer.
    pub fn idempotency_key(&self) -> String {
        format!("cf-{}-{}-a{}", self.kind.as_str(), digest(&self.reference), self.attempt)
    }
}

/// Whether `reference` is one Connect Flow accepts: 1 to [`MAX_REFERENCE_LEN`] printable ASCII
/// characters, none of them `#` (the DynamoDB key separator).
pub(crate) fn is_valid_reference(reference: &str) -> bool {
    (1..=MAX_REFERENCE_LEN).contains(&reference.len())
        && reference.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'#')
}

/// A short, stable hex digest of `input`: for idempotency keys and parameter fingerprints.
pub fn digest(input: &str) -> String {
    let hash = Sha256::digest(input.as_bytes());
    hex::encode(&hash[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_printable_ascii_without_the_key_separator() {
        assert!(is_valid_reference("seller-42"));
        assert!(is_valid_reference(&"a".repeat(MAX_REFERENCE_LEN)));
        assert!(!is_valid_reference(""));
        assert!(!is_valid_reference(&"a".repeat(MAX_REFERENCE_LEN + 1)));
        assert!(!is_valid_reference("a#b"));
        assert!(!is_valid_reference("a b"));
        assert!(!is_valid_reference("seller\u{e9}"));
    }

    #[test]
    fn keys_differ_by_kind_reference_and_attempt_only() {
        let claim = ReferenceRecord::claim(ReferenceKind::Account, "seller-42", "f".into());
        assert_eq!(claim.idempotency_key(), claim.clone().idempotency_key());
        let retried = claim.next(|record| record.attempt += 1);
        assert_ne!(claim.idempotency_key(), retried.idempotency_key());
        let other = ReferenceRecord::claim(ReferenceKind::Payout, "seller-42", "f".into());
        assert_ne!(claim.idempotency_key(), other.idempotency_key());
        assert!(claim.idempotency_key().len() < 255, "Stripe's key limit");
        assert_eq!(retried.version, 2);
    }
}
