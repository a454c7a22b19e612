//! Secrets from Secrets Manager on moto: a secret named by its ARN variable supplies the plain
//! variable's value to `WebhookSettings` and `StripeClientConfig`; a secret that cannot be read is
//! an error naming the ARN variable, never a value; without the ARN the plain variable is used.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_secretsmanager::primitives::Blob;
use integration_tests::DYNAMODB_ENDPOINT;
use integration_tests::stripe_stub::StripeStub;
use shared::config::{API_KEY_SECRET_ARN, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, WEBHOOK_TOLERANCE_SECS};
use shared::domain::account::AccountId;
use shared::secrets::{SecretError, resolve_in};
use shared::stripe::client::{API_BASE_VAR, API_KEY_VAR, StripeClient, StripeClientConfig};
use shared::stripe::signature::{SignatureVerifier, WebhookSecret, sign};

/// A Secrets Manager client for the emulator the test script started (moto serves Secrets Manager
/// on the DynamoDB endpoint). Panics, loudly, without one, like `dynamodb_client`.
async fn secretsmanager_client() -> aws_sdk_secretsmanager::Client {
    let endpoint = std::env::var(DYNAMODB_ENDPOINT).unwrap_or_else(|_| {
        panic!("{DYNAMODB_ENDPOINT} is not set: run the tests with ./scripts/test, which starts moto server")
    });
    assert!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://[::1]:"),
        "the emulator must be on loopback, not {endpoint}"
    );
    // Credentials and region are given here so that the SDK never looks for them off this machine.
    let credentials = aws_sdk_secretsmanager::config::Credentials::new("test", "test", None, None, "tests");
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
        .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

/// A secret name of its own, so that tests (and repeated runs on one moto) do not collide.
fn secret_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("connect-flow-test-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Creates a string secret and returns its full ARN.
async fn create_secret(client: &aws_sdk_secretsmanager::Client, what: &str, value: &str) -> String {
    let created = client
        .create_secret()
        .name(secret_name(what))
        .secret_string(value)
        .send()
        .await
        .expect("the emulator creates the secret");
    created.arn().expect("a created secret has an ARN").to_owned()
}

/// A lookup over fixed variables, standing in for the process environment.
fn env(vars: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars = vars.to_vec();
    move |name| vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.clone())
}

#[tokio::test]
async fn the_secret_named_by_its_arn_supplies_the_webhook_secrets() {
    let client = secretsmanager_client().await;
    let arn = create_secret(&client, "webhook", "whsec_sm_old, whsec_sm_new").await;
    let base = env(&[
        (WEBHOOK_SECRETS_ARN, arn),
        // A stale plain value must lose to the secret.
        (WEBHOOK_SECRETS, "whsec_plain_stale".to_owned()),
        (WEBHOOK_TOLERANCE_SECS, "60".to_owned()),
    ]);

    let overlay = resolve_in(&client, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, &base).await.unwrap();
    assert!(overlay.is_from_secret());
    assert!(!format!("{overlay:?}").contains("whsec_sm"), "the overlay's Debug shows no value");
    let settings =
        shared::config::WebhookSettings::from_lookup(|name| overlay.lookup_in(name, &base)).unwrap();

    assert_eq!(settings.secrets.len(), 2);
    assert_eq!(settings.tolerance_secs, 60, "other variables still come from the environment");
    let verifier = SignatureVerifier::new(&settings.secrets, settings.tolerance_secs);
    let body = br#"{"id":"evt_1"}"#;
    let now = 1_750_000_000;
    for secret in ["whsec_sm_old", "whsec_sm_new"] {
        let header = sign(&WebhookSecret::new(secret), now, body);
        assert_eq!(
            verifier.verify(Some(&header), body, now),
            Ok(now),
            "{secret} from the secret is accepted"
        );
    }
    let stale = sign(&WebhookSecret::new("whsec_plain_stale"), now, body);
    assert!(verifier.verify(Some(&stale), body, now).is_err(), "the plain variable is overridden");
}

#[tokio::test]
async fn the_secret_named_by_its_arn_supplies_the_stripe_key() {
    let stub = StripeStub::start().await;
    stub.add_account("acct_1", true, true);
    let client = secretsmanager_client().await;
    // The stub accepts only sk_test_ keys: a call succeeds only with the fetched key.
    let arn = create_secret(&client, "stripe-key", "sk_test_from_secrets_manager").await;
    let base = env(&[
        (API_KEY_SECRET_ARN, arn),
        (API_KEY_VAR, "rk_plain_stale".to_owned()),
        (API_BASE_VAR, stub.base_url().to_owned()),
    ]);

    let overlay = resolve_in(&client, API_KEY_VAR, API_KEY_SECRET_ARN, &base).await.unwrap();
    let config = StripeClientConfig::from_lookup(|name| overlay.lookup_in(name, &base)).unwrap();
    assert!(!format!("{config:?}").contains("sk_test_from_secrets_manager"));
    let stripe = StripeClient::new(config).unwrap();
    stripe.retrieve_account(&AccountId::parse("acct_1").unwrap()).await.expect("the fetched key is accepted");
}

#[tokio::test]
async fn a_missing_secret_is_an_error_naming_the_arn_variable() {
    let client = secretsmanager_client().await;
    let missing =
        format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{}-AbCdEf", secret_name("gone"));
    let base = env(&[(WEBHOOK_SECRETS_ARN, missing), (WEBHOOK_SECRETS, "whsec_plain".to_owned())]);

    let err = resolve_in(&client, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, &base).await.unwrap_err();

    let SecretError::Unreadable { arn_var, reason } = &err else { panic!("unexpected error: {err:?}") };
    assert_eq!(*arn_var, WEBHOOK_SECRETS_ARN);
    assert!(reason.contains("ResourceNotFoundException"), "{reason}");
    let shown = err.to_string();
    assert!(shown.starts_with("STRIPE_WEBHOOK_SECRETS_ARN: the secret cannot be read"), "{shown}");
    assert!(!shown.contains("whsec_plain"), "{shown}");
}

#[tokio::test]
async fn a_binary_or_empty_secret_is_refused_without_its_value() {
    let client = secretsmanager_client().await;
    let binary = client
        .create_secret()
        .name(secret_name("binary"))
        .secret_binary(Blob::new(b"sk_test_binary".to_vec()))
        .send()
        .await
        .expect("the emulator creates the secret");
    let binary_arn = binary.arn().unwrap().to_owned();
    let blank_arn = create_secret(&client, "blank", "  ").await;

    for arn in [binary_arn, blank_arn] {
        let base = env(&[(API_KEY_SECRET_ARN, arn)]);
        let err = resolve_in(&client, API_KEY_VAR, API_KEY_SECRET_ARN, &base).await.unwrap_err();
        assert_eq!(err, SecretError::NoString { arn_var: API_KEY_SECRET_ARN, name_var: API_KEY_VAR });
        assert!(!err.to_string().contains("sk_test_binary"));
    }
}

#[tokio::test]
async fn without_an_arn_the_plain_variable_is_used() {
    let client = secretsmanager_client().await;
    for arn in [None, Some("  ")] {
        let mut vars = vec![(WEBHOOK_SECRETS, "whsec_plain".to_owned())];
        vars.extend(arn.map(|arn| (WEBHOOK_SECRETS_ARN, arn.to_owned())));
        let base = env(&vars);

        let overlay = resolve_in(&client, WEBHOOK_SECRETS, WEBHOOK_SECRETS_ARN, &base).await.unwrap();

        assert!(!overlay.is_from_secret());
        assert_eq!(overlay.lookup_in(WEBHOOK_SECRETS, &base).as_deref(), Some("whsec_plain"));
        let settings =
            shared::config::WebhookSettings::from_lookup(|name| overlay.lookup_in(name, &base)).unwrap();
        let verifier = SignatureVerifier::new(&settings.secrets, settings.tolerance_secs);
        let header = sign(&WebhookSecret::new("whsec_plain"), 1_750_000_000, b"{}");
        assert!(verifier.verify(Some(&header), b"{}", 1_750_000_000).is_ok());
    }
}
