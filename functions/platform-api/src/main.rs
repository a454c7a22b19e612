//! The platform API Lambda function: wiring only. The routes live in `shared::platform`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::platform::lambda::run_platform_api_function().await
}
