//! The eventbridge-intake Lambda function: wiring only. The logic lives in `shared::eventbridge`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::eventbridge::run_eventbridge_intake_function().await
}
