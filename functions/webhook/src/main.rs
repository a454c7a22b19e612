//! The webhook Lambda function: wiring only. The pipeline lives in `shared::webhook`.

mod handler;

use std::sync::Arc;

use shared::config::{StoreLocation, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, WebhookSettings};
use shared::store::AccountStore;
use shared::store::dynamodb::DynamoStore;
use shared::store::sqlite::SqliteStore;
use shared::store::sqs::{self, SqsQueue};
use shared::stripe::signature::{Clock, SystemClock};
use shared::webhook::WebhookService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init_lambda_logs();
    let location = StoreLocation::from_env()?;
    // Bounded retries and timeouts, so that a stuck call fails fast enough for the deadline below.
    let aws = shared::aws::WEBHOOK.load().await;
    // Deployed, the signing secrets come from Secrets Manager; locally, from STRIPE_WEBHOOK_SECRETS.
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&aws);
    let env = shared::secrets::resolve(&secrets_manager, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN).await?;
    let settings = WebhookSettings::from_lookup(|name| env.lookup(name))?;
    match location {
        StoreLocation::DynamoDb(table) => {
            let service =
                WebhookService::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table), &settings);
            match sqs::queue_urls_from_env() {
                Some((transfers, payouts)) => {
                    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), transfers, payouts);
                    serve(service.with_queue(Arc::new(queue))).await
                }
                None => {
                    tracing::warn!(
                        "{} or {} is not set: planned steps stay queued in the table and are not sent",
                        sqs::TRANSFERS_QUEUE_URL,
                        sqs::PAYOUTS_QUEUE_URL
                    );
                    serve(service).await
                }
            }
        }
        // Locally (cargo lambda watch) the embedded store is also the step queue, as in `connect-flow serve`.
        StoreLocation::Sqlite(path) => {
            let store = SqliteStore::open(&path, SystemClock.now_unix())?;
            let queue = Arc::new(store.clone());
            serve(WebhookService::new(store, &settings).with_queue(queue)).await
        }
    }
}

async fn serve<S: AccountStore + Send + Sync + 'static>(
    service: WebhookService<S>,
) -> Result<(), lambda_http::Error> {
    let service = Arc::new(service);
    lambda_http::run(lambda_http::service_fn(move |request| {
        let service = Arc::clone(&service);
        async move { handler::handle(&service, request).await }
    }))
    .await
}
