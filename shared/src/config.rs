//! Configuration from the environment, read and checked once per cold start.

use crate::domain::funds::DisputePolicy;
use crate::stripe::signature::{DEFAULT_TOLERANCE_SECS, WebhookSecret};

/// Every endpoint's signing secret, comma-separated (old and new during a rotation).
pub const WEBHOOK_SECRETS: &str = "STRIPE_WEBHOOK_SECRETS";
/// The ARN of the Secrets Manager secret whose value is [`WEBHOOK_SECRETS`] (deployed functions).
pub const WEBHOOK_SECRETS_ARN: &str = "STRIPE_WEBHOOK_SECRETS_ARN";
/// The ARN of the Secrets Manager secret whose value is the Stripe secret key, the value of
/// [`crate::stripe::client::API_KEY_VAR`] (deployed workers).
pub const API_KEY_SECRET_ARN: &str = "STRIPE_API_KEY_SECRET_ARN";
/// Maximum signature age in seconds; 0 turns the age check off.
pub const WEBHOOK_TOLERANCE_SECS: &str = "STRIPE_WEBHOOK_TOLERANCE_SECS";
/// `true` or `false` to accept only live or only test events; unset accepts both.
pub const LIVEMODE: &str = "CONNECT_FLOW_LIVEMODE";
/// What a dispute whose funds Stripe withdrew does: `reverse` (the default), `hold` or `none`.
pub const DISPUTE_POLICY: &str = "CONNECT_FLOW_DISPUTE_POLICY";
/// The DynamoDB table the Lambda functions use.
pub const TABLE_NAME: &str = "CONNECT_FLOW_TABLE";
/// A SQLite file the Lambda functions use instead of DynamoDB when run locally (`cargo lambda
/// watch`); ignored when [`TABLE_NAME`] is set.
pub(crate) const LOCAL_DB: &str = "CONNECT_FLOW_DB";

/// A configuration value that is missing or cannot be used. Names the variable, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable is set to something unusable.
    #[error("{name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What the webhook needs to accept an event.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Every accepted signing secret.
    pub secrets: Vec<WebhookSecret>,
    /// Maximum signature age; 0 means no age check.
    pub tolerance_secs: u64,
    /// The only livemode accepted, or `None` for both.
    pub expected_livemode: Option<bool>,
    /// What a dispute of a charge whose transfers Connect Flow made does.
    pub dispute_policy: DisputePolicy,
}

impl WebhookSettings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, so that tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let secrets: Vec<WebhookSecret> = lookup(WEBHOOK_SECRETS)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .map(WebhookSecret::new)
            .collect();
        if secrets.is_empty() {
            return Err(ConfigError::Missing(WEBHOOK_SECRETS));
        }
        let tolerance_secs = match lookup(WEBHOOK_TOLERANCE_SECS).filter(|value| !value.trim().is_empty()) {
            None => DEFAULT_TOLERANCE_SECS,
            Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
                name: WEBHOOK_TOLERANCE_SECS,
                reason: "expected a whole number of seconds",
            })?,
        };
        // The services read the payout defaults themselves (`PayoutSettings::from_env`); a bad
        // one stops the start here, with the rest of the settings.
        crate::domain::payout::PayoutSettings::from_lookup(&lookup)?;
        Ok(Self {
            secrets,
            tolerance_secs,
            expected_livemode: expected_livemode(&lookup)?,
            dispute_policy: dispute_policy(&lookup)?,
        })
    }

    /// The settings of a path that takes events already authenticated some other way (fetched
    /// from Stripe, or from the stack's own EventBridge rule): no secrets, the livemode read
    /// through `lookup`.
    pub fn without_signatures(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        crate::domain::payout::PayoutSettings::from_lookup(&lookup)?;
        Ok(Self { dispute_policy: dispute_policy(&lookup)?, ..Self::unsigned(expected_livemode(&lookup)?) })
    }

    /// The settings of such a path, accepting `expected_livemode` only, with the default dispute
    /// policy.
    pub fn unsigned(expected_livemode: Option<bool>) -> Self {
        Self {
            secrets: Vec::new(),
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
            expected_livemode,
            dispute_policy: DisputePolicy::default(),
        }
    }
}

/// [`DISPUTE_POLICY`]: `reverse`, `hold` or `none`; unset is `reverse`.
fn dispute_policy(lookup: &impl Fn(&str) -> Option<String>) -> Result<DisputePolicy, ConfigError> {
    match lookup(DISPUTE_POLICY).as_deref().map(str::trim) {
        None | Some("") => Ok(DisputePolicy::default()),
        Some(value) => DisputePolicy::parse(value).ok_or(ConfigError::Invalid {
            name: DISPUTE_POLICY,
            reason: "expected reverse, hold or none (unset means reverse)",
        }),
    }
}

/// [`LIVEMODE`]: `true`, `false`, or unset for both.
fn expected_livemode(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<bool>, ConfigError> {
    match lookup(LIVEMODE).as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ConfigError::Invalid { name: LIVEMODE, reason: "expected true, false or unset" }),
    }
}

/// Where a Lambda function keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreLocation {
    /// The deployed store: this DynamoDB table.
    DynamoDb(String),
    /// The embedded store, for running the functions locally: this SQLite file.
    Sqlite(std::path::PathBuf),
}

impl StoreLocation {
    /// The table wins, so that a deployed function (which always has one) never falls back to a
    /// file that would vanish with its sandbox.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        match (set(TABLE_NAME), set(LOCAL_DB)) {
            (Some(table), _) => Ok(Self::DynamoDb(table)),
            (None, Some(path)) => Ok(Self::Sqlite(path.into())),
            (None, None) => Err(ConfigError::Missing(TABLE_NAME)),
        }
    }
}

/// Reads a required variable.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty()).ok_or(ConfigError::Missing(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<WebhookSettings, ConfigError> {
        WebhookSettings::from_lookup(|name| {
            vars.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn secrets_are_split_on_commas_and_defaults_apply() {
        let read = settings(&[(WEBHOOK_SECRETS, "whsec_old, whsec_new,")]).unwrap();
        assert_eq!(read.secrets.len(), 2);
        assert_eq!((read.tolerance_secs, read.expected_livemode), (300, None));
    }

    #[test]
    fn missing_or_invalid_values_are_named_without_their_values() {
        assert_eq!(settings(&[]).unwrap_err(), ConfigError::Missing(WEBHOOK_SECRETS));
        assert_eq!(settings(&[(WEBHOOK_SECRETS, " , ")]).unwrap_err(), ConfigError::Missing(WEBHOOK_SECRETS));
        let bad_tolerance = settings(&[(WEBHOOK_SECRETS, "whsec_a"), (WEBHOOK_TOLERANCE_SECS, "-1")]);
        assert!(matches!(bad_tolerance, Err(ConfigError::Invalid { name: WEBHOOK_TOLERANCE_SECS, .. })));
        let bad_livemode = settings(&[(WEBHOOK_SECRETS, "whsec_a"), (LIVEMODE, "yes")]);
        assert!(matches!(bad_livemode, Err(ConfigError::Invalid { name: LIVEMODE, .. })));
    }

    #[test]
    fn the_table_wins_over_the_local_file() {
        let location = |vars: &[(&str, &str)]| {
            StoreLocation::from_lookup(|name| {
                vars.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
            })
        };
        assert_eq!(location(&[(LOCAL_DB, "local.db")]), Ok(StoreLocation::Sqlite("local.db".into())));
        assert_eq!(
            location(&[(TABLE_NAME, "connect-flow"), (LOCAL_DB, "local.db")]),
            Ok(StoreLocation::DynamoDb("connect-flow".into()))
        );
        assert_eq!(location(&[(TABLE_NAME, " "), (LOCAL_DB, "")]), Err(ConfigError::Missing(TABLE_NAME)));
    }

    #[test]
    fn livemode_and_tolerance_are_read() {
        let read =
            settings(&[(WEBHOOK_SECRETS, "whsec_a"), (WEBHOOK_TOLERANCE_SECS, "0"), (LIVEMODE, "true")])
                .unwrap();
        assert_eq!((read.tolerance_secs, read.expected_livemode), (0, Some(true)));
        assert!(!format!("{read:?}").contains("whsec_a"));
    }
}
