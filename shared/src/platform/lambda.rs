//! The `platform-api` Lambda function: behind the HTTP API's `AWS_IAM` authorization, and
//! refusing any request whose context carries no IAM identity, so that a template mistake that
//! dropped the authorizer cannot open the platform routes.

use std::sync::Arc;

use lambda_http::{Body, Request, Response};

use super::{LINK_SECRET, LINK_SECRET_ARN, PlatformApi, PlatformSettings};
use crate::app::{Backend, Wire};
use crate::clock::Clock;
use crate::config::API_KEY_SECRET_ARN;
use crate::http::{BaseUrl, PlatformAuth, Routes, from_lambda, platform_answer, router, to_lambda};
use crate::store::{AccountStore, StepQueue};
use crate::stripe::client::{StripeClient, StripeClientConfig};

pub use crate::app::StartError;

/// Answers one Lambda request as the deployed function does: IAM identity first, then the route.
pub async fn handle<S: AccountStore, C: Clock>(
    api: &PlatformApi<S, C>,
    request: Request,
) -> Result<Response<Body>, lambda_http::Error> {
    to_lambda(
        platform_answer(api, &PlatformAuth::Iam, &BaseUrl::FromRequestContext, from_lambda(request)).await,
    )
    .await
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
    Backend::from_env(&aws)?.run(Platform { stripe, settings, accounts_api }).await
}

/// The platform API on whichever store the environment named.
struct Platform {
    stripe: Option<StripeClient>,
    settings: PlatformSettings,
    accounts_api: crate::domain::account::AccountsApi,
}

impl Wire for Platform {
    type Output = Result<(), lambda_http::Error>;

    async fn wire<S: AccountStore + Clone>(
        self,
        store: S,
        queue: Option<Arc<dyn StepQueue>>,
    ) -> Self::Output {
        let api = PlatformApi::new(store, self.stripe, self.settings)
            .with_accounts_api(self.accounts_api)
            .with_queue_if_any(queue);
        serve(api).await
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
    crate::http::run_on_lambda(router(Routes {
        webhook: None,
        platform: Some(Arc::new(api)),
        auth: PlatformAuth::Iam,
        base_url: BaseUrl::FromRequestContext,
        webhook_deadline: None,
    }))
    .await
}
