//! The platform API's one error type, and the one place it becomes an HTTP answer.

use serde_json::json;

use super::ApiReply;
use crate::store::StoreError;
use crate::stripe::client::StripeError;

/// Why a platform call was refused. Kinds are stable snake_case (DESIGN.md, "Platform API").
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or the wrong ones.
    #[error("authentication required")]
    Unauthenticated,
    /// The request is malformed; `field` names the culprit.
    #[error("{message}")]
    InvalidRequest {
        /// The offending field (or `body`).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No such account, step or route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("this route does not take {0}")]
    MethodNotAllowed(String),
    /// The reference names an object made with other parameters.
    #[error("this reference was already used with other parameters")]
    ReferenceConflict,
    /// A login link for an account without the Express dashboard.
    #[error("only accounts with the Express dashboard have login links")]
    NotExpress,
    /// The refresh token is missing, forged, altered or expired.
    #[error("this link is not valid")]
    ForbiddenLink,
    /// Stripe definitively refused the call.
    #[error("Stripe refused: {message}")]
    StripeRefused {
        /// Stripe's `error.code`.
        code: Option<String>,
        /// Stripe's message.
        message: String,
    },
    /// Stripe did not answer definitively (5xx, 429, a timeout): retry the same call later.
    #[error("Stripe did not answer; retry the same request later")]
    StripeUnavailable,
    /// The body is over [`super::MAX_BODY_BYTES`].
    #[error("the body is larger than {} bytes", super::MAX_BODY_BYTES)]
    BodyTooLarge,
    /// Something this deployment lacks (a Stripe key, the link secret).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// A malformed `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest { field, message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::InvalidRequest { .. } => 400,
            Self::ForbiddenLink => 403,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::ReferenceConflict | Self::NotExpress => 409,
            Self::BodyTooLarge => 413,
            Self::StripeRefused { .. } => 502,
            Self::StripeUnavailable | Self::NotConfigured(_) | Self::Store(_) => 503,
        }
    }

    /// The stable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::ReferenceConflict => "reference_conflict",
            Self::NotExpress => "not_express",
            Self::ForbiddenLink => "forbidden",
            Self::StripeRefused { .. } => "stripe_refused",
            Self::StripeUnavailable => "stripe_unavailable",
            Self::BodyTooLarge => "body_too_large",
            Self::NotConfigured(_) => "not_configured",
            Self::Store(_) => "storage_unavailable",
        }
    }

    /// The answer: JSON for the API's callers, a plain page for a browser following a refresh link.
    pub fn reply(&self) -> ApiReply {
        match self {
            Self::Store(error) => tracing::error!(%error, "platform call failed on the store"),
            Self::StripeUnavailable => tracing::warn!("platform call: Stripe did not answer"),
            other => tracing::info!(kind = other.kind(), "platform call refused"),
        }
        if matches!(self, Self::ForbiddenLink) {
            return ApiReply {
                status: 403,
                content_type: "text/plain; charset=utf-8",
                body: "This onboarding link is not valid or has expired. Ask the platform for a new one.\n"
                    .to_owned(),
                location: None,
            };
        }
        let mut body = json!({ "error": self.kind(), "message": self.to_string() });
        match self {
            Self::InvalidRequest { field, .. } => body["field"] = json!(field),
            Self::StripeRefused { code, .. } => body["code"] = json!(code),
            // The store's message may name internals; the log has it.
            Self::Store(_) => body["message"] = json!("the store could not be reached; retry later"),
            _ => {}
        }
        ApiReply::json(self.status(), body.to_string())
    }
}

impl From<StripeError> for ApiError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::Refused { code, message, .. } => Self::StripeRefused { code, message },
            StripeError::IdempotencyMismatch { message } => {
                Self::StripeRefused { code: Some("idempotency_error".to_owned()), message }
            }
            StripeError::Retryable { .. } | StripeError::RateLimited { .. } => Self::StripeUnavailable,
            StripeError::Config(message) => {
                tracing::error!(message, "the Stripe client is misconfigured");
                Self::NotConfigured("the Stripe client is misconfigured")
            }
        }
    }
}
