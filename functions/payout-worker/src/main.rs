//! The payout worker Lambda function: wiring only. Batches from the payouts FIFO queue
//! (payout steps) go through `shared::sqs_worker`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use shared::config::{self, TABLE_NAME};
use shared::sqs_worker::handle_sqs_batch;
use shared::store::dynamodb::DynamoStore;
use shared::stripe::client::{StripeClient, StripeClientConfig};
use shared::worker::StepWorker;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init_json_logs();
    let table = config::required(TABLE_NAME)?;
    let stripe = StripeClient::new(StripeClientConfig::from_env()?)?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
    let worker = Arc::new(StepWorker::new(store, stripe));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = Arc::clone(&worker);
        async move { Ok::<_, lambda_runtime::Error>(handle_sqs_batch(&worker, event.payload).await) }
    }))
    .await
}

#[cfg(test)]
mod tests;
