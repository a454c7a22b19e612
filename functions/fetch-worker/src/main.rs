//! The fetch-worker Lambda function: wiring only. The logic lives in `shared::fetch`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::fetch::run_fetch_worker_function().await
}
