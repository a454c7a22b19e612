//! The webhook Lambda function: wiring only. The pipeline lives in `shared::webhook`.

mod handler;

use std::sync::Arc;

use shared::config::{self, TABLE_NAME, WebhookSettings};
use shared::store::dynamodb::DynamoStore;
use shared::webhook::WebhookService;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::telemetry::init_json_logs();
    let settings = WebhookSettings::from_env()?;
    let table = config::required(TABLE_NAME)?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
    let service = Arc::new(WebhookService::new(store, &settings));
    lambda_http::run(lambda_http::service_fn(move |request| {
        let service = Arc::clone(&service);
        async move { handler::handle(&service, request).await }
    }))
    .await
}
