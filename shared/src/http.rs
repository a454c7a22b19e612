//! The HTTP routes, one router for every front door: `connect-flow serve` runs it on a TCP
//! listener, the webhook and platform-api Lambda functions run it through `lambda_http` (API
//! Gateway's HTTP API or a function URL). Every answer, refusals, 405 and the deadline included,
//! becomes a response in one place ([`Answer`]'s `IntoResponse`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use lambda_http::request::RequestContext;
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::platform::{
    ApiError, ApiReply, ApiRequest, MAX_BODY_BYTES as API_BODY_BYTES, PlatformApi, is_public_route,
};
use crate::store::AccountStore;
use crate::webhook::{MAX_BODY_BYTES, Reply, WebhookService};

/// The webhook's path; a webhook-only router answers every path with the webhook.
pub const WEBHOOK_PATH: &str = "/webhooks/stripe";

/// How platform calls prove who they are. The webhook needs nothing: Stripe's signature is its
/// authentication.
#[derive(Clone)]
pub enum PlatformAuth {
    /// `Authorization: Bearer <token>` (`connect-flow serve`); with no token configured, calls are
    /// answered only when `open_without_token` (a loopback listener).
    Bearer {
        /// The configured token.
        token: Option<String>,
        /// Whether calls without a token are answered.
        open_without_token: bool,
    },
    /// API Gateway's `AWS_IAM` authorisation: the request context must name the signing identity,
    /// so that a template mistake that dropped the authorizer cannot open the routes.
    Iam,
}

/// Where refresh links point.
#[derive(Clone)]
pub enum BaseUrl {
    /// Always this origin (`serve`'s listener).
    Fixed(String),
    /// The HTTPS origin API Gateway says the request reached.
    FromRequestContext,
}

/// What one router answers.
pub struct Routes<S, C> {
    /// The webhook pipeline, if this router takes webhooks.
    pub webhook: Option<Arc<WebhookService<S, C>>>,
    /// The platform API, if this router takes platform calls.
    pub platform: Option<Arc<PlatformApi<S, C>>>,
    /// How platform calls authenticate.
    pub auth: PlatformAuth,
    /// Where refresh links point.
    pub base_url: BaseUrl,
    /// A webhook answered 500 at this deadline rather than when Stripe or Lambda gives up.
    pub webhook_deadline: Option<Duration>,
}

/// Every answer a route gives, turned into a response in one place.
pub enum Answer {
    /// The webhook's (JSON).
    Webhook(Reply),
    /// The platform API's (JSON, or the console's HTML, or a redirect).
    Platform(ApiReply),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, content_type, body, location) = match self {
            Self::Webhook(reply) => (reply.status, "application/json", reply.body, None),
            Self::Platform(reply) => (reply.status, reply.content_type, reply.body, reply.location),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
        if let Some(location) = location.and_then(|location| location.parse().ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

/// The router for `routes`: the webhook at [`WEBHOOK_PATH`] (at every path when there is no
/// platform API), and the platform API at every other path.
pub fn router<S: AccountStore, C: Clock + 'static>(routes: Routes<S, C>) -> Router {
    let takes_platform = routes.platform.is_some();
    let routes = Arc::new(routes);
    if takes_platform {
        Router::new().route(WEBHOOK_PATH, any(webhook::<S, C>)).fallback(platform::<S, C>).with_state(routes)
    } else {
        Router::new().fallback(webhook::<S, C>).with_state(routes)
    }
}

/// The declared length is over `limit`: refused before anything is read.
fn declared_over(headers: &HeaderMap, limit: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok())
        .is_some_and(|length| length > limit)
}

async fn webhook<S: AccountStore, C: Clock>(
    State(routes): State<Arc<Routes<S, C>>>,
    request: Request,
) -> Answer {
    match &routes.webhook {
        Some(service) => webhook_answer(service, routes.webhook_deadline, request).await,
        None => Answer::Platform(ApiError::NotFound(request.uri().path().to_owned()).reply()),
    }
}

/// The webhook's answer to one request: only `POST` carries a webhook.
pub async fn webhook_answer<S: AccountStore, C: Clock>(
    service: &WebhookService<S, C>,
    deadline: Option<Duration>,
    request: Request,
) -> Answer {
    if request.method() != Method::POST {
        return Answer::Webhook(Reply {
            status: StatusCode::METHOD_NOT_ALLOWED.as_u16(),
            body: r#"{"error":"method_not_allowed","message":"webhooks are POSTed"}"#.into(),
        });
    }
    let (parts, body) = request.into_parts();
    if declared_over(&parts.headers, MAX_BODY_BYTES) {
        return Answer::Webhook(Reply::body_too_large());
    }
    // Reading stops at the limit, so a body without a truthful length is never buffered whole.
    let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else {
        return Answer::Webhook(Reply::body_too_large());
    };
    let signature = parts.headers.get("stripe-signature").and_then(|value| value.to_str().ok());
    Answer::Webhook(match deadline {
        Some(deadline) => service.handle_within(deadline, signature, &body).await,
        None => service.handle(signature, &body).await,
    })
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

/// Whether API Gateway authorised the request with IAM: its context names the signing identity.
pub(crate) fn has_iam_identity<B>(request: &axum::http::Request<B>) -> bool {
    let Some(RequestContext::ApiGatewayV2(context)) = request.extensions().get::<RequestContext>() else {
        return false;
    };
    let Some(iam) = context.authorizer.as_ref().and_then(|authorizer| authorizer.iam.as_ref()) else {
        return false;
    };
    let named = |value: &Option<String>| value.as_deref().is_some_and(|value| !value.trim().is_empty());
    named(&iam.user_arn) || named(&iam.caller_id) || named(&iam.access_key)
}

/// The HTTPS origin API Gateway says the request reached.
fn request_origin<B>(request: &axum::http::Request<B>) -> String {
    match request.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(context)) => {
            context.domain_name.as_deref().map(|domain| format!("https://{domain}")).unwrap_or_default()
        }
        _ => String::new(),
    }
}

async fn platform<S: AccountStore, C: Clock>(
    State(routes): State<Arc<Routes<S, C>>>,
    request: Request,
) -> Answer {
    match &routes.platform {
        Some(api) => platform_answer(api, &routes.auth, &routes.base_url, request).await,
        None => Answer::Platform(ApiError::NotFound(request.uri().path().to_owned()).reply()),
    }
}

/// The platform API's answer to one request: authenticated before anything else is read.
pub(crate) async fn platform_answer<S: AccountStore, C: Clock>(
    api: &PlatformApi<S, C>,
    auth: &PlatformAuth,
    base_url: &BaseUrl,
    request: Request,
) -> Answer {
    let authenticated = match auth {
        PlatformAuth::Bearer { token: Some(token), .. } => bearer_matches(request.headers(), token),
        PlatformAuth::Bearer { token: None, open_without_token } => *open_without_token,
        PlatformAuth::Iam => has_iam_identity(&request),
    };
    if !authenticated && !is_public_route(request.method().as_str(), request.uri().path()) {
        return Answer::Platform(ApiError::Unauthenticated.reply());
    }
    if declared_over(request.headers(), API_BODY_BYTES) {
        return Answer::Platform(ApiError::BodyTooLarge.reply());
    }
    let base_url = match base_url {
        BaseUrl::Fixed(origin) => origin.clone(),
        BaseUrl::FromRequestContext => request_origin(&request),
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, API_BODY_BYTES).await else {
        return Answer::Platform(ApiError::BodyTooLarge.reply());
    };
    let request = ApiRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        body: &body,
        base_url: &base_url,
    };
    Answer::Platform(api.handle(&request).await)
}

/// A Lambda request as the routes read it (what the router does with it when run on Lambda).
pub fn from_lambda(request: lambda_http::Request) -> Request {
    request.map(|body| Body::from(body.to_vec()))
}

/// An answer as a Lambda response.
pub async fn to_lambda(
    answer: Answer,
) -> Result<lambda_http::Response<lambda_http::Body>, lambda_http::Error> {
    let (parts, body) = answer.into_response().into_parts();
    let bytes = to_bytes(body, usize::MAX).await?.to_vec();
    let body = match String::from_utf8(bytes) {
        Ok(text) => lambda_http::Body::Text(text),
        Err(binary) => lambda_http::Body::Binary(binary.into_bytes()),
    };
    Ok(lambda_http::Response::from_parts(parts, body))
}

/// Runs `router` as a Lambda function behind API Gateway or a function URL.
pub async fn run_on_lambda(router: Router) -> Result<(), lambda_http::Error> {
    lambda_http::run(router).await
}

#[cfg(test)]
mod tests {
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;

    use super::*;
    use crate::clock::FixedClock;
    use crate::config::WebhookSettings;
    use crate::platform::PlatformSettings;
    use crate::store::sqlite::SqliteStore;
    use crate::stripe::signature::{WebhookSecret, sign};

    const NOW: i64 = 1_732_000_000;
    const SECRET: &str = "whsec_router_test";

    fn routes(platform: bool, auth: PlatformAuth) -> Router {
        let store = SqliteStore::in_memory().unwrap();
        let settings =
            WebhookSettings { secrets: vec![WebhookSecret::new(SECRET)], ..WebhookSettings::unsigned(None) };
        let webhook = WebhookService::with_clock(store.clone(), &settings, FixedClock(NOW));
        let api = PlatformApi::with_clock(store, None, PlatformSettings::default(), FixedClock(NOW));
        router(Routes {
            webhook: Some(Arc::new(webhook)),
            platform: platform.then(|| Arc::new(api)),
            auth,
            base_url: BaseUrl::Fixed("http://127.0.0.1:1".into()),
            webhook_deadline: Some(Duration::from_secs(5)),
        })
    }

    async fn answer(router: Router, request: HttpRequest<Body>) -> (StatusCode, String, String) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    }

    fn event() -> Vec<u8> {
        serde_json::json!({
            "id": "evt_router_1", "object": "event", "type": "account.updated", "created": NOW - 10,
            "livemode": false, "account": "acct_1RouterTest01",
            "data": {"object": {"id": "acct_1RouterTest01", "object": "account", "charges_enabled": true,
                                "payouts_enabled": true, "details_submitted": true}}
        })
        .to_string()
        .into_bytes()
    }

    fn post(path: &str, body: Vec<u8>, signature: Option<String>) -> HttpRequest<Body> {
        let mut request = HttpRequest::post(path);
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        request.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn a_webhook_only_router_takes_a_signed_event_at_any_path_and_answers_json() {
        let body = event();
        let signature = sign(&WebhookSecret::new(SECRET), NOW, &body);
        let (status, content_type, reply) =
            answer(routes(false, PlatformAuth::Iam), post("/", body, Some(signature))).await;
        assert_eq!((status, content_type.as_str()), (StatusCode::OK, "application/json"), "{reply}");
        assert!(reply.contains("applied"), "{reply}");
    }

    #[tokio::test]
    async fn get_on_the_webhook_is_a_json_405_on_both_routers() {
        for platform in [false, true] {
            let request = HttpRequest::get(WEBHOOK_PATH).body(Body::empty()).unwrap();
            let (status, content_type, reply) = answer(routes(platform, PlatformAuth::Iam), request).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(content_type, "application/json");
            assert!(reply.contains("method_not_allowed"), "{reply}");
        }
    }

    #[tokio::test]
    async fn a_webhook_declaring_more_than_the_limit_is_refused_unread() {
        let request = HttpRequest::post(WEBHOOK_PATH)
            .header(header::CONTENT_LENGTH, (MAX_BODY_BYTES + 1).to_string())
            .body(Body::from(vec![b' '; 16]))
            .unwrap();
        let (status, _, _) = answer(routes(true, PlatformAuth::Iam), request).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn platform_calls_are_authenticated_before_anything_else() {
        let call = || HttpRequest::get("/accounts/acct_1RouterTest01").body(Body::empty()).unwrap();
        let bearer =
            |token: &str| PlatformAuth::Bearer { token: Some(token.into()), open_without_token: false };
        // No IAM identity in the request context: refused, however open the route would be.
        assert_eq!(answer(routes(true, PlatformAuth::Iam), call()).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(answer(routes(true, bearer("right")), call()).await.0, StatusCode::UNAUTHORIZED);
        let wrong = HttpRequest::get("/accounts/acct_1RouterTest01")
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .unwrap();
        assert_eq!(answer(routes(true, bearer("right")), wrong).await.0, StatusCode::UNAUTHORIZED);
        let right = HttpRequest::get("/accounts/acct_1RouterTest01")
            .header(header::AUTHORIZATION, "Bearer right")
            .body(Body::empty())
            .unwrap();
        let (status, _, reply) = answer(routes(true, bearer("right")), right).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "authenticated, the unknown account is looked up: {reply}");
        let open = PlatformAuth::Bearer { token: None, open_without_token: true };
        assert_eq!(answer(routes(true, open), call()).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_public_refresh_route_needs_no_credentials() {
        let request = HttpRequest::get("/onboarding/refresh?token=x").body(Body::empty()).unwrap();
        let (status, _, _) = answer(routes(true, PlatformAuth::Iam), request).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED);
    }
}
