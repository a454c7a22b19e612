//! The transfer worker Lambda function: wiring only. Batches from the transfers FIFO queue
//! (transfer and reversal steps) go through `shared::sqs_worker`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use shared::config::{self, API_KEY_SECRET_ARN, TABLE_NAME};
use shared::sqs_worker::handle_sqs_batch;
use shared::store::dynamodb::DynamoStore;
use shared::stripe::client::{API_KEY_VAR, StripeClient, StripeClientConfig};
use shared::worker::StepWorker;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init_json_logs();
    let table = config::required(TABLE_NAME)?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    // Deployed, the Stripe key comes from Secrets Manager; locally, from STRIPE_API_KEY.
    let secrets_manager = aws_sdk_secretsmanager::Client::new(&aws);
    let env = shared::secrets::resolve(&secrets_manager, API_KEY_VAR, API_KEY_SECRET_ARN).await?;
    let stripe = StripeClient::new(StripeClientConfig::from_lookup(|name| env.lookup(name))?)?;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
    let worker = Arc::new(StepWorker::new(store, stripe));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = Arc::clone(&worker);
        async move { Ok::<_, lambda_runtime::Error>(handle_sqs_batch(&worker, event.payload).await) }
    }))
    .await
}
