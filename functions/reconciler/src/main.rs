//! The reconciler Lambda function: wiring only. Each scheduled invocation runs one reconciler run
//! through `shared::reconcile`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::reconcile::run_reconciler_function().await
}
