//! One API Gateway HTTP API or function URL request, answered as the deployed router answers it
//! (`shared::http`): for tests that hold the pipeline rather than the router.

use lambda_http::{Body, Request, Response};
use shared::aws::WEBHOOK_DEADLINE;
use shared::clock::Clock;
use shared::http::{from_lambda, to_lambda, webhook_answer};
use shared::store::AccountStore;
use shared::webhook::WebhookService;

/// Answers one request. Only `POST` carries a webhook; the body arrives already base64-decoded
/// by `lambda_http` when the envelope says `isBase64Encoded`.
pub async fn handle<S: AccountStore, C: Clock>(
    service: &WebhookService<S, C>,
    request: Request,
) -> Result<Response<Body>, lambda_http::Error> {
    // Answered 500 at the deadline rather than when Stripe or Lambda gives up (shared::aws).
    to_lambda(webhook_answer(service, Some(WEBHOOK_DEADLINE), from_lambda(request)).await).await
}

#[cfg(test)]
mod tests;
