//! The payout worker Lambda function: wiring only. Batches from the payouts FIFO queue
//! (payout steps) go through `shared::sqs_worker`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use shared::sqs_worker::DeployedWorker;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::telemetry::init_lambda_logs();
    // Bounded retries and timeouts, so that one step always fits in the Lambda timeout.
    let aws = shared::aws::WORKER.load().await;
    let worker = Arc::new(DeployedWorker::from_env(&aws).await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = Arc::clone(&worker);
        async move { Ok::<_, lambda_runtime::Error>(worker.handle(event.payload, event.context.deadline()).await) }
    }))
    .await
}
