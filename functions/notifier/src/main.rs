//! The notifier Lambda function: wiring only. Publishing lives in `shared::notifier`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::notifier::run_notifier_function().await
}
