//! The transfer worker Lambda function: wiring only. Batches from the transfers FIFO queue
//! (transfer and reversal steps) go through `shared::sqs_worker`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::sqs_worker::run_worker_function().await
}
