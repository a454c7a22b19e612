//! The Stripe client against the stand-in Stripe API: objects are created once, idempotency keys
//! replay, faults classify as the workers need, and the key never leaks.

use std::time::Duration;

use integration_tests::stripe_stub::{Fault, STUB_API_KEY, StripeStub};
use shared::domain::account::AccountId;
use shared::stripe::client::{
    ApiKey, CreateTransfer, STRIPE_VERSION, StripeClient, StripeClientConfig, StripeError, StripeObject,
};

const A: &str = "acct_1SellerA";

fn acct(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

/// A stub with one account that can receive transfers and be paid out, and a funded platform.
async fn funded_stub(platform_usd: i64) -> (StripeStub, StripeClient) {
    let stub = StripeStub::start().await;
    stub.add_account(A, true, true);
    stub.set_platform_balance("usd", platform_usd);
    let client = StripeClient::new(stub.client_config()).unwrap();
    (stub, client)
}

async fn transfer(
    client: &StripeClient,
    amount: i64,
    destination: &AccountId,
    key: &str,
) -> Result<StripeObject, StripeError> {
    let params = CreateTransfer {
        amount,
        currency: "usd",
        destination,
        source_transaction: Some("ch_1Source"),
        transfer_group: Some("pi_1Group"),
        metadata: &[("step_id", "step-1")],
    };
    client.create_transfer(&params, key).await
}

#[tokio::test]
async fn each_call_creates_its_object_and_moves_balances() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);

    let created = transfer(&client, 7000, &a, "k-transfer").await.unwrap();
    assert!(created.id.starts_with("tr_"));
    assert_eq!(created.raw["amount"], 7000);
    let transfers = stub.transfers();
    assert_eq!(transfers.len(), 1);
    let recorded = &transfers[0];
    assert_eq!(
        (recorded.id.as_str(), recorded.amount, recorded.currency.as_str()),
        (created.id.as_str(), 7000, "usd")
    );
    assert_eq!(recorded.destination, A);
    assert_eq!(recorded.source_transaction.as_deref(), Some("ch_1Source"));
    assert_eq!(recorded.transfer_group.as_deref(), Some("pi_1Group"));
    assert_eq!(recorded.metadata.get("step_id").map(String::as_str), Some("step-1"));
    assert_eq!((stub.platform_balance("usd"), stub.account_balance(A, "usd")), (3000, 7000));

    let reversal =
        client.create_transfer_reversal(&created.id, 2000, &[("step_id", "rev-1")], "k-rev").await.unwrap();
    assert!(reversal.id.starts_with("trr_"));
    let reversals = stub.reversals();
    assert_eq!(reversals.len(), 1);
    assert_eq!((reversals[0].transfer.as_str(), reversals[0].amount), (created.id.as_str(), 2000));
    assert_eq!(reversals[0].destination, A);
    assert_eq!(stub.transfers()[0].amount_reversed, 2000);
    assert_eq!((stub.platform_balance("usd"), stub.account_balance(A, "usd")), (5000, 5000));

    let payout = client.create_payout(&a, 5000, "usd", &[("step_id", "po-1")], "k-payout").await.unwrap();
    assert!(payout.id.starts_with("po_"));
    let payouts = stub.payouts();
    assert_eq!(payouts.len(), 1);
    assert_eq!(
        (payouts[0].account.as_str(), payouts[0].amount, payouts[0].currency.as_str()),
        (A, 5000, "usd")
    );
    assert_eq!(stub.account_balance(A, "usd"), 0);

    let account = client.retrieve_account(&a).await.unwrap();
    assert_eq!(account["id"], A);
    assert_eq!(account["capabilities"]["transfers"], "active");
    assert_eq!(account["payouts_enabled"], true);

    let received = stub.received();
    assert_eq!(received.len(), 4);
    assert!(received.iter().all(|r| r.stripe_version.as_deref() == Some(STRIPE_VERSION)));
    assert!(received.iter().filter(|r| r.method == "POST").all(|r| r.idempotency_key.is_some()));
    assert_eq!(stub.requests().get("/v1/transfers"), Some(&1));
}

#[tokio::test]
async fn the_same_key_replays_the_same_object_and_moves_money_once() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);

    let first = transfer(&client, 4000, &a, "k-same").await.unwrap();
    let again = transfer(&client, 4000, &a, "k-same").await.unwrap();
    assert_eq!(first, again);
    assert_eq!(stub.transfers().len(), 1);
    assert_eq!((stub.platform_balance("usd"), stub.account_balance(A, "usd")), (6000, 4000));

    let reversal = client.create_transfer_reversal(&first.id, 1000, &[], "k-rev").await.unwrap();
    let reversal_again = client.create_transfer_reversal(&first.id, 1000, &[], "k-rev").await.unwrap();
    assert_eq!(reversal.id, reversal_again.id);
    assert_eq!(stub.reversals().len(), 1);

    let payout = client.create_payout(&a, 3000, "usd", &[], "k-po").await.unwrap();
    let payout_again = client.create_payout(&a, 3000, "usd", &[], "k-po").await.unwrap();
    assert_eq!(payout.id, payout_again.id);
    assert_eq!(stub.payouts().len(), 1);
    assert_eq!((stub.platform_balance("usd"), stub.account_balance(A, "usd")), (7000, 0));
    assert_eq!(stub.requests().get("/v1/transfers"), Some(&2));
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_an_idempotency_mismatch() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    transfer(&client, 1000, &a, "k-reused").await.unwrap();

    let error = transfer(&client, 2000, &a, "k-reused").await.unwrap_err();
    assert!(matches!(error, StripeError::IdempotencyMismatch { .. }), "{error:?}");
    assert!(!error.is_retryable());
    assert_eq!(stub.transfers().len(), 1);
    assert_eq!(stub.platform_balance("usd"), 9000);
}

#[tokio::test]
async fn a_500_after_create_then_a_retry_with_the_same_key_returns_the_first_object() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    stub.inject("/v1/transfers", Fault::ServerErrorAfterCreate);

    let error = transfer(&client, 7000, &a, "k-500").await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.status(), Some(500));
    assert_eq!(stub.transfers().len(), 1, "the object exists although the answer was 500");

    let retried = transfer(&client, 7000, &a, "k-500").await.unwrap();
    let transfers = stub.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(retried.id, transfers[0].id);
    assert_eq!(stub.platform_balance("usd"), 3000);
}

#[tokio::test]
async fn a_429_is_retryable_and_creates_nothing() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    stub.inject("/v1/payouts", Fault::RateLimited);
    stub.set_account_balance(A, "usd", 500);

    let error = client.create_payout(&a, 500, "usd", &[], "k-429").await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.status(), Some(429));
    assert!(stub.payouts().is_empty());
    assert_eq!(stub.pending_faults(), 0);

    client.create_payout(&a, 500, "usd", &[], "k-429").await.unwrap();
    assert_eq!(stub.payouts().len(), 1);
}

#[tokio::test]
async fn a_timeout_is_retryable_and_the_retry_with_the_same_key_creates_no_second_transfer() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    let mut impatient = stub.client_config();
    impatient.timeout = Duration::from_millis(300);
    let impatient = StripeClient::new(impatient).unwrap();
    stub.inject("/v1/transfers", Fault::Timeout);

    let error = transfer(&impatient, 7000, &a, "k-timeout").await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(error.status(), None);

    // The first request still runs at "Stripe": the same key is in use, and retryable.
    let in_use = transfer(&client, 7000, &a, "k-timeout").await.unwrap_err();
    assert!(in_use.is_retryable());
    assert_eq!(in_use.status(), Some(409));

    assert_eq!(stub.release_held().await, 1);
    assert_eq!(stub.transfers().len(), 1);

    let retried = transfer(&client, 7000, &a, "k-timeout").await.unwrap();
    let transfers = stub.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(retried.id, transfers[0].id);
    assert_eq!(stub.platform_balance("usd"), 3000);
}

#[tokio::test]
async fn balance_insufficient_is_refused_replayed_under_its_key_and_a_new_key_succeeds_after_top_up() {
    let (stub, client) = funded_stub(500).await;
    let a = acct(A);

    let refused = transfer(&client, 1000, &a, "k-attempt-0").await.unwrap_err();
    assert!(matches!(refused, StripeError::Refused { status: 400, .. }), "{refused:?}");
    assert_eq!(refused.code(), Some("balance_insufficient"));
    assert!(!refused.is_retryable());
    assert!(stub.transfers().is_empty());

    stub.set_platform_balance("usd", 5000);
    let replayed = transfer(&client, 1000, &a, "k-attempt-0").await.unwrap_err();
    assert_eq!(replayed, refused, "Stripe replays a cached 4xx under the same key");
    assert!(stub.transfers().is_empty());

    let created = transfer(&client, 1000, &a, "k-attempt-1").await.unwrap();
    assert_eq!(stub.transfers().len(), 1);
    assert_eq!(stub.transfers()[0].id, created.id);
    assert_eq!(stub.platform_balance("usd"), 4000);
}

#[tokio::test]
async fn an_injected_balance_insufficient_refuses_without_creating() {
    let (stub, client) = funded_stub(10_000).await;
    stub.inject("/v1/transfers", Fault::BalanceInsufficient);

    let refused = transfer(&client, 1000, &acct(A), "k-fault").await.unwrap_err();
    assert_eq!(refused.code(), Some("balance_insufficient"));
    assert!(stub.transfers().is_empty());
    assert_eq!(stub.platform_balance("usd"), 10_000);
}

#[tokio::test]
async fn payouts_send_the_stripe_account_header_and_are_refused_beyond_the_balance() {
    let (stub, client) = funded_stub(0).await;
    let a = acct(A);
    stub.set_account_balance(A, "usd", 1000);

    let refused = client.create_payout(&a, 1500, "usd", &[], "k-po-big").await.unwrap_err();
    assert_eq!(refused.code(), Some("balance_insufficient"));
    client.create_payout(&a, 1000, "usd", &[], "k-po-ok").await.unwrap();

    let payouts: Vec<_> = stub.received().into_iter().filter(|r| r.path == "/v1/payouts").collect();
    assert_eq!(payouts.len(), 2);
    assert!(payouts.iter().all(|r| r.stripe_account.as_deref() == Some(A)));
    assert_eq!(stub.payouts()[0].account, A);

    let disabled = "acct_1NoPayouts";
    stub.add_account(disabled, true, false);
    stub.set_account_balance(disabled, "usd", 1000);
    let refused = client.create_payout(&acct(disabled), 1000, "usd", &[], "k-po-off").await.unwrap_err();
    assert_eq!(refused.code(), Some("payouts_not_allowed"));
    assert_eq!(stub.payouts().len(), 1);
}

#[tokio::test]
async fn an_account_that_cannot_receive_refuses_transfers_and_says_so_when_retrieved() {
    let (stub, client) = funded_stub(10_000).await;
    let pending = acct("acct_1Pending");
    stub.add_account(pending.as_str(), false, false);

    let refused = transfer(&client, 1000, &pending, "k-pending").await.unwrap_err();
    assert_eq!(refused.code(), Some("insufficient_capabilities_for_transfer"));
    assert!(stub.transfers().is_empty());

    let account = client.retrieve_account(&pending).await.unwrap();
    assert_eq!(account["capabilities"]["transfers"], "inactive");
    assert_eq!(account["payouts_enabled"], false);

    let missing = client.retrieve_account(&acct("acct_1Unknown")).await.unwrap_err();
    assert_eq!(missing.code(), Some("resource_missing"));
}

#[tokio::test]
async fn a_reversal_beyond_the_unreversed_amount_is_refused() {
    let (stub, client) = funded_stub(10_000).await;
    let created = transfer(&client, 3000, &acct(A), "k-t").await.unwrap();
    client.create_transfer_reversal(&created.id, 2000, &[], "k-r1").await.unwrap();

    let refused = client.create_transfer_reversal(&created.id, 1001, &[], "k-r2").await.unwrap_err();
    assert!(matches!(refused, StripeError::Refused { status: 400, .. }), "{refused:?}");
    assert_eq!(stub.reversals().len(), 1);
    assert_eq!(stub.platform_balance("usd"), 9000);
}

#[tokio::test]
async fn the_stub_refuses_posts_without_an_idempotency_key_or_a_test_key() {
    let stub = StripeStub::start().await;
    let http = reqwest::Client::new();
    let post = |key: Option<&str>, auth: &str| {
        let mut request = http
            .post(format!("{}/v1/transfers", stub.base_url()))
            .bearer_auth(auth)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=1&currency=usd&destination=acct_1X");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    assert_eq!(post(None, STUB_API_KEY).await.unwrap().status(), 400);
    assert_eq!(post(Some("k"), "sk_live_nope").await.unwrap().status(), 401);
    assert_eq!(stub.requests().get("/v1/transfers"), Some(&2));
}

#[tokio::test]
async fn the_api_key_never_appears_in_debug_or_in_any_error() {
    const SECRET: &str = "sk_live_do_not_leak_4242";
    let stub = StripeStub::start().await;
    stub.add_account(A, true, true);
    let mut config = StripeClientConfig::new(ApiKey::new(SECRET));
    config.api_base = stub.base_url().to_owned();
    assert!(!format!("{config:?}").contains(SECRET));
    let client = StripeClient::new(config.clone()).unwrap();
    assert!(!format!("{client:?}").contains(SECRET));

    // The stub repeats a rejected key unmasked; the client must not.
    let unauthorized = transfer(&client, 1000, &acct(A), "k-leak").await.unwrap_err();
    assert_eq!(unauthorized.status(), Some(401));

    let mut bad_base = config.clone();
    bad_base.api_base = "http://stripe.example.com".to_owned();
    let config_error = StripeClient::new(bad_base).unwrap_err();

    let mut unreachable = config;
    unreachable.api_base = "http://127.0.0.1:1".to_owned();
    let connect_error =
        transfer(&StripeClient::new(unreachable).unwrap(), 1000, &acct(A), "k-x").await.unwrap_err();
    assert!(connect_error.is_retryable());

    for error in [unauthorized, config_error, connect_error] {
        assert!(!error.to_string().contains(SECRET), "{error}");
        assert!(!format!("{error:?}").contains(SECRET));
    }
}
