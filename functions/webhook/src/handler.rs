//! Turns an API Gateway HTTP API or function URL request into a pipeline call and back.

use lambda_http::http::{Method, StatusCode, header};
use lambda_http::{Body, Request, Response};
use shared::aws::WEBHOOK_DEADLINE;
use shared::store::AccountStore;
use shared::stripe::signature::Clock;
use shared::webhook::{Reply, WebhookService};

/// Answers one request. Only `POST` carries a webhook; the body arrives already base64-decoded
/// by `lambda_http` when the envelope says `isBase64Encoded`.
pub async fn handle<S: AccountStore, C: Clock>(
    service: &WebhookService<S, C>,
    request: Request,
) -> Result<Response<Body>, lambda_http::Error> {
    let reply = if request.method() != Method::POST {
        Reply {
            status: StatusCode::METHOD_NOT_ALLOWED.as_u16(),
            body: r#"{"error":"method_not_allowed","message":"webhooks are POSTed"}"#.into(),
        }
    } else {
        let signature = request.headers().get("stripe-signature").and_then(|value| value.to_str().ok());
        // Answered 500 at the deadline rather than when Stripe or Lambda gives up (shared::aws).
        service.handle_within(WEBHOOK_DEADLINE, signature, request.body().as_ref()).await
    };
    Ok(Response::builder()
        .status(reply.status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(reply.body))?)
}

#[cfg(test)]
mod tests;
