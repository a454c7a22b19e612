//! The `platform-api` Lambda function: behind the HTTP API's `AWS_IAM` authorization, and
//! refusing any request whose context carries no IAM identity, so that a template mistake that
//! dropped the authorizer cannot open the platform routes.

use std::sync::Arc;

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use super::{
    ApiError, ApiReply, ApiRequest, LINK_SECRET, LINK_SECRET_ARN, PlatformApi, PlatformSettings,
    is_public_route,
};
use crate::config::{API_KEY_SECRET_ARN, StoreLocation};
use crate::store::AccountStore;
use crate::store::dynamodb::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::sqs::{self, SqsQueue};
use crate::stripe::client::{StripeClient, StripeClientConfig};
use crate::stripe::signature::{Clock, SystemClock};

/// A failure to start the function.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Whether API Gateway authorised the request with IAM: its context names the signing identity.
pub fn has_iam_identity(request: &Request) -> bool {
    let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else { return false };
    let Some(iam) = context.authorizer.as_ref().and_then(|authorizer| authorizer.iam.as_ref()) else {
        return false;
    };
    let named = |value: &Option<String>| value.as_deref().is_some_and(|value| !value.trim().is_empty());
    named(&iam.user_arn) || named(&iam.caller_id) || named(&iam.access_key)
}

/// The HTTPS origin the request reached, for refresh links when no public URL is configured.
fn base_url(request: &Request) -> String {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => {
            context.domain_name.as_deref().map(|domain| format!("https://{domain}")).unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Answers one Lambda request: identity first, then the route.
pub async fn handle<S: AccountStore, C: Clock>(
    api: &PlatformApi<S, C>,
    request: Request,
) -> Result<Response<Body>, lambda_http::Error> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let reply = if !is_public_route(&method, &path) && !has_iam_identity(&request) {
        ApiError::Unauthenticated.reply()
    } else {
        let base = base_url(&request);
        let api_request = ApiRequest {
            method: &method,
            path: &path,
            query: request.uri().query().unwrap_or_default(),
            body: request.body().as_ref(),
            base_url: &base,
        };
        api.handle(&api_request).await
    };
    to_response(reply)
}

fn to_response(reply: ApiReply) -> Result<Response<Body>, lambda_http::Error> {
    let mut response = Response::builder().status(reply.status).header("content-type", reply.content_type);
    if let Some(location) = &reply.location {
        response = response.header("location", location);
    }
    Ok(response.body(Body::Text(reply.body))?)
}

/// The function's whole life: settings and clients once per cold start, then every request.
pub async fn run_platform_api_function() -> Result<(), lambda_http::Error> {
    crate::telemetry::init_lambda_logs();
    let aws = crate::aws::WORKER.load().await;
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&aws);
    // Both secrets at once: each is a round trip on the cold start.
    let (key, link) = tokio::try_join!(
        crate::secrets::resolve(&secrets_manager, crate::stripe::client::API_KEY_VAR, API_KEY_SECRET_ARN),
        crate::secrets::resolve(&secrets_manager, LINK_SECRET, LINK_SECRET_ARN),
    )?;
    let lookup = |name: &str| if name == LINK_SECRET { link.lookup(name) } else { key.lookup(name) };
    let stripe = stripe_client(&lookup)?;
    let accounts_api = PlatformSettings::accounts_api_from_lookup(lookup)?;
    // `PlatformApi::new` reads the payout defaults itself; a bad one stops the start here.
    crate::domain::payout::PayoutSettings::from_lookup(lookup)?;
    crate::domain::ledger::TaxThresholds::from_lookup(lookup)?;
    let settings = PlatformSettings::from_lookup(lookup);
    match StoreLocation::from_env()? {
        StoreLocation::DynamoDb(table) => {
            let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
            let mut api = PlatformApi::new(store, stripe, settings).with_accounts_api(accounts_api);
            if let Some((transfers, payouts)) = sqs::queue_urls_from_env() {
                api = api.with_queue(Arc::new(SqsQueue::new(
                    aws_sdk_sqs::Client::new(&aws),
                    transfers,
                    payouts,
                )));
            }
            serve(api).await
        }
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(&path, SystemClock.now_unix())?;
            let queue = Arc::new(store.clone());
            serve(PlatformApi::new(store, stripe, settings).with_accounts_api(accounts_api).with_queue(queue))
                .await
        }
    }
}

/// The Stripe client, or `None` when no key is configured: the routes that need Stripe then
/// answer `not_configured`, and the rest still work.
pub fn stripe_client(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<StripeClient>, StartError> {
    let configured = lookup(crate::stripe::client::API_KEY_VAR).is_some_and(|key| !key.trim().is_empty());
    if !configured {
        tracing::warn!("no Stripe API key: account, link and session routes will answer not_configured");
        return Ok(None);
    }
    Ok(Some(StripeClient::new(StripeClientConfig::from_lookup(lookup)?)?))
}

async fn serve<S: AccountStore>(api: PlatformApi<S>) -> Result<(), lambda_http::Error> {
    let api = Arc::new(api);
    lambda_http::run(lambda_http::service_fn(move |request| {
        let api = Arc::clone(&api);
        async move { handle(&api, request).await }
    }))
    .await
}
