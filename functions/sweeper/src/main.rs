//! The sweeper Lambda function: wiring only. Each scheduled invocation runs one step sweep through
//! `shared::sweeper`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::sweeper::run_sweeper_function().await
}
