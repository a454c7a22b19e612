//! The webhook Lambda function: wiring only. The pipeline lives in `shared::webhook`.

mod handler;

use std::sync::Arc;

use shared::config::{self, TABLE_NAME, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, WebhookSettings};
use shared::store::dynamodb::DynamoStore;
use shared::store::sqs::{self, SqsQueue};
use shared::webhook::WebhookService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init_json_logs();
    let table = config::required(TABLE_NAME)?;
    // Bounded retries and timeouts, so that a stuck call fails fast enough for the deadline below.
    let aws = shared::aws::WEBHOOK.load().await;
    // Deployed, the signing secrets come from Secrets Manager; locally, from STRIPE_WEBHOOK_SECRETS.
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&aws);
    let env = shared::secrets::resolve(&secrets_manager, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN).await?;
    let settings = WebhookSettings::from_lookup(|name| env.lookup(name))?;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
    let mut service = WebhookService::new(store, &settings);
    match sqs::queue_urls_from_env() {
        Some((transfers, payouts)) => {
            let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), transfers, payouts);
            service = service.with_queue(Arc::new(queue));
        }
        None => tracing::warn!(
            "{} or {} is not set: planned steps stay queued in the table and are not sent",
            sqs::TRANSFERS_QUEUE_URL,
            sqs::PAYOUTS_QUEUE_URL
        ),
    }
    let service = Arc::new(service);
    lambda_http::run(lambda_http::service_fn(move |request| {
        let service = Arc::clone(&service);
        async move { handler::handle(&service, request).await }
    }))
    .await
}
