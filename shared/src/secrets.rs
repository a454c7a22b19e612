//! Secrets from AWS Secrets Manager, fetched once per cold start.
//!
//! A deployed function gets the ARN of a secret (`STRIPE_WEBHOOK_SECRETS_ARN`,
//! `STRIPE_API_KEY_SECRET_ARN`) instead of the secret itself. [`resolve`] fetches the secret's
//! string value and returns a [`SecretOverlay`]: a lookup that answers the plain variable
//! (`STRIPE_WEBHOOK_SECRETS`, `STRIPE_API_KEY`) with the fetched value and every other variable from
//! the environment, so that the usual `from_lookup` constructors read it unchanged. Without the ARN
//! variable the overlay is the environment itself: local runs set the plain variable.
//!
//! The value is never logged, never displayed, and never in a `Debug`; errors name the variable.

use std::fmt;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;

/// A secret that could not be resolved. Names the ARN variable, never the secret's value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// `GetSecretValue` failed: no such secret, access denied, the network, ...
    #[error("{arn_var}: the secret cannot be read: {reason}")]
    Unreadable {
        /// The variable that holds the secret's ARN.
        arn_var: &'static str,
        /// Secrets Manager's error code and message, or what kept the request from completing.
        reason: String,
    },
    /// The secret has no string value (a binary secret) or an empty one.
    #[error("{arn_var}: the secret has no string value; store the value of {name_var} as its SecretString")]
    NoString {
        /// The variable that holds the secret's ARN.
        arn_var: &'static str,
        /// The variable whose value the secret holds.
        name_var: &'static str,
    },
}

/// The environment with one variable answered from Secrets Manager (when its ARN variable was set).
///
/// Its `Debug` shows which variable it overrides, never the value.
#[derive(Clone)]
pub struct SecretOverlay {
    name_var: &'static str,
    value: Option<String>,
}

impl SecretOverlay {
    /// An overlay that overrides nothing: every lookup goes to the environment.
    pub(crate) fn passthrough(name_var: &'static str) -> Self {
        Self { name_var, value: None }
    }

    /// An overlay that answers `name_var` with `value`.
    pub fn with_value(name_var: &'static str, value: impl Into<String>) -> Self {
        Self { name_var, value: Some(value.into()) }
    }

    /// Whether the variable's value came from Secrets Manager.
    pub fn is_from_secret(&self) -> bool {
        self.value.is_some()
    }

    /// Looks `name` up: the fetched value for the overridden variable, the process environment for
    /// everything else (and for the overridden variable when no ARN was set).
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.lookup_in(name, |name| std::env::var(name).ok())
    }

    /// [`lookup`](Self::lookup) over `base` instead of the process environment.
    pub fn lookup_in(&self, name: &str, base: impl Fn(&str) -> Option<String>) -> Option<String> {
        match &self.value {
            Some(value) if name == self.name_var => Some(value.clone()),
            _ => base(name),
        }
    }
}

impl fmt::Debug for SecretOverlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.is_from_secret() { "<from Secrets Manager, redacted>" } else { "<environment>" };
        f.debug_struct("SecretOverlay").field("name_var", &self.name_var).field("value", &source).finish()
    }
}

/// Resolves `name_var` from the process environment: when `arn_var` is set (and not blank), fetches
/// that secret's string value with `client`; otherwise the plain `name_var` is read as usual.
pub async fn resolve(
    client: &Client,
    name_var: &'static str,
    arn_var: &'static str,
) -> Result<SecretOverlay, SecretError> {
    resolve_in(client, name_var, arn_var, |name| std::env::var(name).ok()).await
}

/// [`resolve`], reading `arn_var` through `lookup` instead of the process environment.
pub async fn resolve_in(
    client: &Client,
    name_var: &'static str,
    arn_var: &'static str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<SecretOverlay, SecretError> {
    let Some(arn) = lookup(arn_var).map(|arn| arn.trim().to_owned()).filter(|arn| !arn.is_empty()) else {
        return Ok(SecretOverlay::passthrough(name_var));
    };
    let output = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|err| SecretError::Unreadable { arn_var, reason: sdk_failure(&err) })?;
    match output.secret_string() {
        Some(value) if !value.trim().is_empty() => {
            tracing::info!("{name_var} read from the secret named by {arn_var}");
            Ok(SecretOverlay::with_value(name_var, value))
        }
        _ => Err(SecretError::NoString { arn_var, name_var }),
    }
}

/// Secrets Manager's error code and message for a service error (neither carries the secret's
/// value); for anything else, what kept the request from completing. A response that could not
/// be read is not described, so that nothing of its body can reach a log.
fn sdk_failure<R: fmt::Debug>(err: &SdkError<GetSecretValueError, R>) -> String {
    match err {
        SdkError::ServiceError(context) => {
            let service = context.err();
            let code = service.code().unwrap_or("unknown Secrets Manager error");
            match service.message() {
                Some(message) => format!("{code}: {message}"),
                None => code.to_owned(),
            }
        }
        SdkError::ResponseError(_) => "the response could not be read".to_owned(),
        _ => DisplayErrorContext(err).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(name: &str) -> Option<String> {
        match name {
            "PLAIN" => Some("from-env".to_owned()),
            "OTHER" => Some("other".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn the_overlay_answers_only_its_variable_from_the_secret() {
        let overlay = SecretOverlay::with_value("PLAIN", "from-secret");
        assert_eq!(overlay.lookup_in("PLAIN", base).as_deref(), Some("from-secret"));
        assert_eq!(overlay.lookup_in("OTHER", base).as_deref(), Some("other"));
        assert_eq!(overlay.lookup_in("UNSET", base), None);
        let passthrough = SecretOverlay::passthrough("PLAIN");
        assert_eq!(passthrough.lookup_in("PLAIN", base).as_deref(), Some("from-env"));
        assert!(!passthrough.is_from_secret());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let overlay = SecretOverlay::with_value("PLAIN", "whsec_do_not_print");
        let shown = format!("{overlay:?}");
        assert!(shown.contains("PLAIN") && !shown.contains("whsec_do_not_print"), "{shown}");
    }
}
