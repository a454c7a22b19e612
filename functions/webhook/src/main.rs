//! The webhook Lambda function: wiring only. The pipeline lives in `shared::webhook`.

#[cfg(test)]
mod handler;

use std::sync::Arc;

use shared::app::{Backend, Wire};
use shared::config::{WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, WebhookSettings};
use shared::http::{BaseUrl, PlatformAuth, Routes};
use shared::store::{AccountStore, StepQueue};
use shared::webhook::WebhookService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init_lambda_logs();
    // Bounded retries and timeouts, so that a stuck call fails fast enough for the deadline below.
    let aws = shared::aws::WEBHOOK.load().await;
    let backend = Backend::from_env(&aws)?;
    // Deployed, the signing secrets come from Secrets Manager; locally, from STRIPE_WEBHOOK_SECRETS.
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&aws);
    let env = shared::secrets::resolve(&secrets_manager, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN).await?;
    let settings = WebhookSettings::from_lookup(|name| env.lookup(name))?;
    backend.run(Webhook(settings)).await
}

/// The webhook pipeline on whichever store the environment named, answering API Gateway or a
/// function URL.
struct Webhook(WebhookSettings);

impl Wire for Webhook {
    type Output = Result<(), lambda_http::Error>;

    async fn wire<S: AccountStore + Clone>(
        self,
        store: S,
        queue: Option<Arc<dyn StepQueue>>,
    ) -> Self::Output {
        let service = WebhookService::new(store, &self.0).with_queue_if_any(queue);
        shared::http::run_on_lambda(shared::http::router(Routes {
            webhook: Some(Arc::new(service)),
            platform: None,
            auth: PlatformAuth::Iam,
            base_url: BaseUrl::FromRequestContext,
            // Answered 500 at the deadline rather than when Stripe or Lambda gives up (shared::aws).
            webhook_deadline: Some(shared::aws::WEBHOOK_DEADLINE),
        }))
        .await
    }
}
