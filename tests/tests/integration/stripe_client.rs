//! The Stripe client against the stand-in Stripe API: objects are created once, idempotency keys
//! replay (saved 500s included) until they are pruned, lookups settle what a 500 left unknown,
//! faults and refusals classify as the workers need, and the key never leaks.

use std::time::Duration;

use integration_tests::stripe_stub::{
    Fault, IDEMPOTENCY_KEY_TTL_SECS, ReceivedRequest, STUB_API_KEY, STUB_START_TIME, StripeStub,
};
use serde_json::Value;
use shared::domain::account::AccountId;
use shared::domain::funds::STEP_METADATA;
use shared::stripe::client::{
    ApiKey, CreateTransfer, STRIPE_VERSION, StripeClient, StripeClientConfig, StripeError, StripeObject,
};

const A: &str = "acct_1SellerA";
const B: &str = "acct_1SellerB";
const GROUP: &str = "pi_1Group";

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

/// A transfer of `amount` to `destination` in [`GROUP`] for step `step-1`.
async fn transfer(
    client: &StripeClient,
    amount: i64,
    destination: &AccountId,
    key: &str,
) -> Result<StripeObject, StripeError> {
    transfer_for_step(client, amount, destination, GROUP, "step-1", key).await
}

async fn transfer_for_step(
    client: &StripeClient,
    amount: i64,
    destination: &AccountId,
    group: &str,
    step_id: &str,
    key: &str,
) -> Result<StripeObject, StripeError> {
    let params = CreateTransfer {
        amount,
        currency: "usd",
        destination,
        source_transaction: Some("ch_1Source"),
        transfer_group: Some(group),
        description: None,
        metadata: &[(STEP_METADATA, step_id)],
    };
    client.create_transfer(&params, key).await
}

/// The requests the stub received from index `from` on.
fn received_since(stub: &StripeStub, from: usize) -> Vec<ReceivedRequest> {
    stub.received().split_off(from)
}

/// A GET of `path_and_query` at the stub with the test key, and its status and JSON body.
async fn get_raw(stub: &StripeStub, path_and_query: &str, account: Option<&str>) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().get(format!("{}{path_and_query}", stub.base_url())).bearer_auth(STUB_API_KEY);
    if let Some(account) = account {
        request = request.header("Stripe-Account", account);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.text().await.unwrap()).unwrap())
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
    assert_eq!(recorded.metadata.get(STEP_METADATA).map(String::as_str), Some("step-1"));
    assert_eq!(recorded.created, STUB_START_TIME);
    assert_eq!(created.raw["created"], STUB_START_TIME);
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
async fn a_500_after_create_is_replayed_under_its_key_and_only_a_lookup_shows_the_transfer() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    stub.inject("/v1/transfers", Fault::ServerErrorAfterCreate);

    let error = transfer(&client, 4000, &a, "k-500").await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.status(), Some(500));
    let created = stub.transfers();
    assert_eq!(created.len(), 1, "the object exists although the answer was 500");
    assert_eq!(stub.pending_faults(), 0);

    // Stripe saved the 500 under the key: the retry replays it, and creates nothing.
    let replayed = transfer(&client, 4000, &a, "k-500").await.unwrap_err();
    assert_eq!(replayed, error);
    assert_eq!(stub.transfers(), created);
    assert_eq!(stub.platform_balance("usd"), 6000);

    // The lookup settles it: the step's transfer exists, with the fields a create answer has.
    let found = client.find_transfer(GROUP, &a, "step-1").await.unwrap().expect("the transfer exists");
    assert_eq!(found.id, created[0].id);
    assert_eq!(found.raw["object"], "transfer");
    assert_eq!(found.raw["amount"], 4000);
    assert_eq!(found.raw["currency"], "usd");
    assert_eq!(found.raw["destination"], A);
    assert_eq!(found.raw["transfer_group"], GROUP);
    assert_eq!(found.raw["source_transaction"], "ch_1Source");
    assert_eq!(found.raw["metadata"][STEP_METADATA], "step-1");
    assert_eq!(found.raw["created"], stub.now());
    assert_eq!(client.find_transfer(GROUP, &a, "step-2").await.unwrap(), None);
    assert_eq!(client.find_transfer("pi_1Other", &a, "step-1").await.unwrap(), None);
    assert_eq!(client.find_transfer(GROUP, &acct(B), "step-1").await.unwrap(), None);
    // An empty group does not filter by group.
    assert_eq!(
        client.find_transfer("", &a, "step-1").await.unwrap().map(|t| t.id),
        Some(created[0].id.clone())
    );

    // A new key, instead, pays a second time: the ledger shows both.
    let second = transfer(&client, 4000, &a, "k-500-new").await.unwrap();
    let transfers = stub.transfers();
    assert_eq!(transfers.len(), 2);
    assert_eq!(
        (transfers[0].id.as_str(), transfers[1].id.as_str()),
        (created[0].id.as_str(), second.id.as_str())
    );
    assert_eq!((stub.platform_balance("usd"), stub.account_balance(A, "usd")), (2000, 8000));
    // Newest first: the lookup now finds the second.
    assert_eq!(client.find_transfer(GROUP, &a, "step-1").await.unwrap(), Some(second));
}

#[tokio::test]
async fn a_saved_500_is_replayed_with_the_idempotent_replayed_header() {
    let (stub, _client) = funded_stub(10_000).await;
    stub.inject("/v1/transfers", Fault::ServerErrorAfterCreate);
    let http = reqwest::Client::new();
    let post = || {
        http.post(format!("{}/v1/transfers", stub.base_url()))
            .bearer_auth(STUB_API_KEY)
            .header("Idempotency-Key", "k-raw")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("amount=100&currency=usd&destination={A}"))
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 500);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();

    let again = post().await.unwrap();
    assert_eq!(again.status(), 500);
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(stub.transfers().len(), 1);
}

#[tokio::test]
async fn a_500_before_create_is_replayed_and_the_lookup_finds_nothing() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    stub.inject("/v1/transfers", Fault::ServerErrorBeforeCreate);

    let error = transfer(&client, 4000, &a, "k-before").await.unwrap_err();
    assert_eq!(error.status(), Some(500));
    assert!(error.is_retryable());
    assert_eq!(transfer(&client, 4000, &a, "k-before").await.unwrap_err(), error, "the 500 is replayed");
    assert!(stub.transfers().is_empty());
    assert_eq!(stub.platform_balance("usd"), 10_000);
    assert_eq!(stub.pending_faults(), 0);
    assert_eq!(client.find_transfer(GROUP, &a, "step-1").await.unwrap(), None);

    // Proven absent, the step may go again under a new key, once.
    let created = transfer(&client, 4000, &a, "k-before-1").await.unwrap();
    assert_eq!(client.find_transfer(GROUP, &a, "step-1").await.unwrap(), Some(created));
    assert_eq!(stub.transfers().len(), 1);
    assert_eq!(stub.platform_balance("usd"), 6000);
}

#[tokio::test]
async fn keys_are_pruned_after_24_hours_and_a_pruned_key_executes_anew() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    assert_eq!(stub.now(), STUB_START_TIME);

    let first = transfer(&client, 1000, &a, "k-day").await.unwrap();
    assert_eq!(first.raw["created"], STUB_START_TIME);
    stub.advance(IDEMPOTENCY_KEY_TTL_SECS - 1);
    assert_eq!(transfer(&client, 1000, &a, "k-day").await.unwrap(), first, "still remembered");
    assert_eq!(stub.transfers().len(), 1);

    stub.advance(1);
    let anew = transfer(&client, 1000, &a, "k-day").await.unwrap();
    assert_ne!(anew.id, first.id, "a pruned key creates a new object");
    assert_eq!(anew.raw["created"], STUB_START_TIME + IDEMPOTENCY_KEY_TTL_SECS);
    let transfers = stub.transfers();
    assert_eq!(transfers.len(), 2);
    assert_eq!(transfers[1].created, STUB_START_TIME + IDEMPOTENCY_KEY_TTL_SECS);
    // The new result is remembered from now on.
    assert_eq!(transfer(&client, 1000, &a, "k-day").await.unwrap(), anew);

    // A saved 500 goes the same way: replayed for a day, then the request runs.
    stub.inject("/v1/transfers", Fault::ServerErrorBeforeCreate);
    assert_eq!(transfer(&client, 1000, &a, "k-500-day").await.unwrap_err().status(), Some(500));
    stub.advance(IDEMPOTENCY_KEY_TTL_SECS - 1);
    assert_eq!(transfer(&client, 1000, &a, "k-500-day").await.unwrap_err().status(), Some(500));
    assert_eq!(stub.transfers().len(), 2);
    stub.advance(1);
    transfer(&client, 1000, &a, "k-500-day").await.unwrap();
    assert_eq!(stub.transfers().len(), 3);
    assert_eq!(stub.platform_balance("usd"), 7000);

    stub.set_now(1_800_000_000);
    let later = transfer(&client, 1000, &a, "k-later").await.unwrap();
    assert_eq!(later.raw["created"], 1_800_000_000);
    assert_eq!(stub.transfers()[3].created, 1_800_000_000);
}

#[tokio::test]
async fn lookups_page_through_long_lists_newest_first() {
    let (stub, client) = funded_stub(1_000_000).await;
    stub.add_account(B, true, true);
    let (a, b) = (acct(A), acct(B));
    for i in 0..105 {
        transfer_for_step(&client, 1, &a, GROUP, &format!("step-{i}"), &format!("k-{i}")).await.unwrap();
    }
    // The same step id elsewhere: another destination, another group.
    transfer_for_step(&client, 1, &b, GROUP, "step-0", "k-b").await.unwrap();
    transfer_for_step(&client, 1, &a, "pi_1Other", "step-0", "k-other").await.unwrap();
    let transfers = stub.transfers();

    // The oldest is on the second page of a hundred.
    let before = stub.received().len();
    let oldest = client.find_transfer(GROUP, &a, "step-0").await.unwrap().expect("found on page two");
    assert_eq!(oldest.id, transfers[0].id);
    let lookups = received_since(&stub, before);
    assert_eq!(lookups.len(), 2, "{lookups:#?}");
    assert!(
        lookups.iter().all(|r| r.method == "GET" && r.path == "/v1/transfers" && r.stripe_account.is_none())
    );
    assert!(lookups.iter().all(|r| r.idempotency_key.is_none()));
    assert_eq!(
        lookups[0].query.as_deref(),
        Some("transfer_group=pi_1Group&destination=acct_1SellerA&limit=100")
    );
    // Page one held the group's transfers to A from the newest down to the sixth oldest.
    let second_page = format!(
        "transfer_group=pi_1Group&destination=acct_1SellerA&limit=100&starting_after={}",
        transfers[5].id
    );
    assert_eq!(lookups[1].query.as_deref(), Some(second_page.as_str()));

    // The newest is on the first page; an absent one costs both pages.
    let before = stub.received().len();
    assert_eq!(
        client.find_transfer(GROUP, &a, "step-104").await.unwrap().map(|t| t.id),
        Some(transfers[104].id.clone())
    );
    assert_eq!(received_since(&stub, before).len(), 1);
    let before = stub.received().len();
    assert_eq!(client.find_transfer(GROUP, &a, "step-none").await.unwrap(), None);
    assert_eq!(received_since(&stub, before).len(), 2);
    assert_eq!(
        client.find_transfer(GROUP, &b, "step-0").await.unwrap().map(|t| t.id),
        Some(transfers[105].id.clone())
    );
}

#[tokio::test]
async fn the_transfer_list_is_stripe_shaped_and_validates_its_parameters() {
    let (stub, client) = funded_stub(100_000).await;
    let a = acct(A);
    let mut created = Vec::new();
    for i in 0..12 {
        created.push(
            transfer_for_step(&client, 100, &a, GROUP, &format!("s{i}"), &format!("k{i}")).await.unwrap(),
        );
        stub.advance(10);
    }

    let (status, list) = get_raw(&stub, "/v1/transfers?transfer_group=pi_1Group", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!((list["object"].as_str(), list["url"].as_str()), (Some("list"), Some("/v1/transfers")));
    assert_eq!(list["has_more"], true);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 10, "the default limit");
    // Newest first, each exactly as its create answer was.
    assert_eq!(data[0], created[11].raw);
    assert_eq!(data[9], created[2].raw);

    let (_, rest) =
        get_raw(&stub, &format!("/v1/transfers?limit=100&starting_after={}", created[2].id), None).await;
    assert_eq!(rest["has_more"], false);
    let rest: Vec<&Value> = rest["data"].as_array().unwrap().iter().collect();
    assert_eq!(rest, [&created[1].raw, &created[0].raw]);

    // created[gte] and created[lte] bound the list by the stub's clock.
    let (_, window) = get_raw(
        &stub,
        &format!(
            "/v1/transfers?created%5Bgte%5D={}&created%5Blte%5D={}",
            STUB_START_TIME + 30,
            STUB_START_TIME + 50
        ),
        None,
    )
    .await;
    let ids: Vec<&str> =
        window["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [created[5].id.as_str(), created[4].id.as_str(), created[3].id.as_str()]);

    // A reversal shows in the listed transfer.
    client.create_transfer_reversal(&created[11].id, 100, &[], "k-rev").await.unwrap();
    let (_, reversed) = get_raw(&stub, "/v1/transfers?limit=1", None).await;
    assert_eq!(
        (reversed["data"][0]["amount_reversed"].as_i64(), reversed["data"][0]["reversed"].as_bool()),
        (Some(100), Some(true))
    );

    for (bad, code) in [
        ("/v1/transfers?limit=0", "parameter_invalid_integer"),
        ("/v1/transfers?limit=101", "parameter_invalid_integer"),
        ("/v1/transfers?limit=ten", "parameter_invalid_integer"),
        ("/v1/transfers?starting_after=tr_1Nope", "resource_missing"),
        ("/v1/transfers?metadata%5Bx%5D=y", "parameter_unknown"),
        ("/v1/transfers?status=paid", "parameter_unknown"),
        ("/v1/transfers/tr_1Nope/reversals", "resource_missing"),
        ("/v1/transfers/tr_1Nope/reversals?created%5Bgte%5D=1", "parameter_unknown"),
    ] {
        let (status, body) = get_raw(&stub, bad, None).await;
        assert!(status == 400 || status == 404, "{bad}: {status}");
        assert_eq!(body["error"]["code"], code, "{bad}: {body}");
    }
    let (status, _) = get_raw(&stub, "/v1/transfers", Some(A)).await;
    assert_eq!(status, 400, "the platform's transfers only");
}

#[tokio::test]
async fn find_reversal_finds_each_reversal_of_a_transfer_by_its_step() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);
    let first = transfer_for_step(&client, 5000, &a, GROUP, "t-1", "k-t1").await.unwrap();
    let other = transfer_for_step(&client, 1000, &a, GROUP, "t-2", "k-t2").await.unwrap();
    let r1 =
        client.create_transfer_reversal(&first.id, 1000, &[(STEP_METADATA, "rev-1")], "k-r1").await.unwrap();
    // A 500 after creating the second: only the lookup shows it.
    stub.inject("/v1/transfers/", Fault::ServerErrorAfterCreate);
    let error = client
        .create_transfer_reversal(&first.id, 2000, &[(STEP_METADATA, "rev-2")], "k-r2")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(500));
    let elsewhere =
        client.create_transfer_reversal(&other.id, 500, &[(STEP_METADATA, "rev-3")], "k-r3").await.unwrap();

    assert_eq!(client.find_reversal(&first.id, "rev-1").await.unwrap(), Some(r1));
    let r2 = client.find_reversal(&first.id, "rev-2").await.unwrap().expect("created before the 500");
    assert_eq!(r2.id, stub.reversals()[1].id);
    assert_eq!(
        (r2.raw["object"].as_str(), r2.raw["amount"].as_i64()),
        (Some("transfer_reversal"), Some(2000))
    );
    assert_eq!(r2.raw["transfer"], first.id.as_str());
    assert_eq!(client.find_reversal(&first.id, "rev-3").await.unwrap(), None, "another transfer's");
    assert_eq!(client.find_reversal(&other.id, "rev-3").await.unwrap(), Some(elsewhere));

    let missing = client.find_reversal("tr_1Missing", "rev-1").await.unwrap_err();
    assert_eq!((missing.status(), missing.code()), (Some(404), Some("resource_missing")));
    assert!(matches!(client.find_reversal("tr_1/../x", "rev-1").await, Err(StripeError::Config(_))));
    assert!(matches!(client.find_reversal(&first.id, "").await, Err(StripeError::Config(_))));
    let lookups: Vec<_> = stub.received().into_iter().filter(|r| r.method == "GET").collect();
    assert!(lookups.iter().all(|r| r.stripe_account.is_none()));
    assert_eq!(lookups[0].path, format!("/v1/transfers/{}/reversals", first.id));
}

#[tokio::test]
async fn find_payout_looks_among_the_account_s_payouts_from_a_time_on() {
    let (stub, client) = funded_stub(0).await;
    stub.add_account(B, true, true);
    stub.set_account_balance(A, "usd", 10_000);
    stub.set_account_balance(B, "usd", 10_000);
    let (a, b) = (acct(A), acct(B));
    let t0 = stub.now();

    stub.inject("/v1/payouts", Fault::ServerErrorAfterCreate);
    let error =
        client.create_payout(&a, 1000, "usd", &[(STEP_METADATA, "po-1")], "k-po-1").await.unwrap_err();
    assert_eq!(error.status(), Some(500));
    assert_eq!(
        client.create_payout(&a, 1000, "usd", &[(STEP_METADATA, "po-1")], "k-po-1").await.unwrap_err(),
        error
    );
    stub.advance(600);
    let second = client.create_payout(&a, 2000, "usd", &[(STEP_METADATA, "po-2")], "k-po-2").await.unwrap();
    client.create_payout(&b, 500, "usd", &[(STEP_METADATA, "po-2")], "k-po-b").await.unwrap();
    assert_eq!(stub.payouts().len(), 3);
    assert_eq!(stub.account_balance(A, "usd"), 7000);

    let before = stub.received().len();
    let first = client.find_payout(&a, "po-1", t0).await.unwrap().expect("created before the 500");
    assert_eq!(first.id, stub.payouts()[0].id);
    assert_eq!(
        (first.raw["object"].as_str(), first.raw["status"].as_str()),
        (Some("payout"), Some("pending"))
    );
    assert_eq!((first.raw["amount"].as_i64(), first.raw["created"].as_i64()), (Some(1000), Some(t0)));
    let lookup = &received_since(&stub, before)[0];
    assert_eq!((lookup.method.as_str(), lookup.path.as_str()), ("GET", "/v1/payouts"));
    assert_eq!(lookup.stripe_account.as_deref(), Some(A), "a payout is looked up as its account");
    assert_eq!(lookup.query.as_deref(), Some(format!("created%5Bgte%5D={t0}&limit=100").as_str()));

    assert_eq!(client.find_payout(&a, "po-1", t0 + 1).await.unwrap(), None, "created before the window");
    assert_eq!(client.find_payout(&a, "po-2", t0 + 600).await.unwrap(), Some(second));
    assert_eq!(client.find_payout(&b, "po-1", t0).await.unwrap(), None, "another account's payouts");
    assert_eq!(
        client.find_payout(&b, "po-2", t0).await.unwrap().map(|p| p.id),
        Some(stub.payouts()[2].id.clone())
    );
}

#[tokio::test]
async fn revoked_account_access_is_refused_as_stripe_does_and_told_apart_from_a_bad_key() {
    let (stub, client) = funded_stub(10_000).await;
    stub.add_account(B, true, true);
    stub.set_account_balance(B, "usd", 5000);
    let (a, b) = (acct(A), acct(B));
    assert_eq!(client.livemode(), Some(false));
    stub.revoke_account_access(B);

    let refusals = [
        client.create_payout(&b, 1000, "usd", &[], "k-po-b").await.unwrap_err(),
        transfer(&client, 1000, &b, "k-tr-b").await.unwrap_err(),
        client.retrieve_account(&b).await.unwrap_err(),
        client.find_payout(&b, "po-1", 0).await.unwrap_err(),
    ];
    for error in &refusals {
        assert_eq!((error.status(), error.code()), (Some(403), Some("account_invalid")), "{error:?}");
        assert!(error.refused_account_access(), "{error:?}");
        assert!(!error.refused_platform_key());
        assert!(!error.is_retryable());
        let message = error.to_string();
        assert!(message.contains(&format!("does not have access to account '{B}'")), "{message}");
        assert!(message.contains("Application access may have been revoked."), "{message}");
        let masked = format!("'sk_test_{}stub'", "*".repeat("connect_flow_".len()));
        assert!(message.contains(&masked), "the key is masked: {message}");
        assert!(!message.contains(STUB_API_KEY));
    }
    assert!(stub.transfers().is_empty() && stub.payouts().is_empty());
    assert_eq!((stub.platform_balance("usd"), stub.account_balance(B, "usd")), (10_000, 5000));
    // Other accounts are unaffected.
    transfer(&client, 1000, &a, "k-tr-a").await.unwrap();
    assert_eq!(client.retrieve_account(&a).await.unwrap()["id"], A);

    // Nothing was saved under the refused keys: once access is back, they execute.
    stub.restore_account_access(B);
    client.create_payout(&b, 1000, "usd", &[], "k-po-b").await.unwrap();
    transfer(&client, 1000, &b, "k-tr-b").await.unwrap();
    assert_eq!((stub.payouts().len(), stub.transfers().len()), (1, 2));

    // A key Stripe does not accept is the platform's problem, on a create and on a lookup alike.
    let mut config = stub.client_config();
    config.api_key = ApiKey::new("sk_live_not_accepted_here");
    let bad = StripeClient::new(config).unwrap();
    assert_eq!(bad.livemode(), Some(true));
    for error in [
        transfer(&bad, 1000, &a, "k-bad").await.unwrap_err(),
        bad.find_transfer(GROUP, &a, "step-1").await.unwrap_err(),
    ] {
        assert_eq!(error.status(), Some(401));
        assert!(error.refused_platform_key(), "{error:?}");
        assert!(!error.refused_account_access());
    }
}

#[tokio::test]
async fn a_fault_for_creates_spares_lookups_and_a_fault_for_lookups_spares_creates() {
    let (stub, client) = funded_stub(10_000).await;
    let a = acct(A);

    stub.inject("/v1/transfers", Fault::ServerErrorBeforeCreate);
    assert_eq!(client.find_transfer(GROUP, &a, "step-1").await.unwrap(), None);
    assert_eq!(stub.pending_faults(), 1, "a POST fault is not spent on a GET");

    stub.inject_get("/v1/transfers", Fault::RateLimited);
    assert_eq!(transfer(&client, 1000, &a, "k-1").await.unwrap_err().status(), Some(500));
    assert_eq!(stub.pending_faults(), 1, "a GET fault is not spent on a POST");
    let created = transfer(&client, 1000, &a, "k-2").await.unwrap();

    let limited = client.find_transfer(GROUP, &a, "step-1").await.unwrap_err();
    assert!(limited.is_retryable());
    assert_eq!(limited.status(), Some(429));
    assert_eq!(stub.pending_faults(), 0);
    assert_eq!(client.find_transfer(GROUP, &a, "step-1").await.unwrap(), Some(created));

    stub.inject_get("/v1/transfers", Fault::ServerErrorBeforeCreate);
    assert_eq!(client.find_transfer(GROUP, &a, "step-1").await.unwrap_err().status(), Some(500));
    assert!(client.find_transfer(GROUP, &a, "step-1").await.unwrap().is_some());
    stub.inject_get("/v1/accounts/", Fault::ServerErrorAfterCreate);
    assert_eq!(client.retrieve_account(&a).await.unwrap_err().status(), Some(500));
    assert_eq!(client.retrieve_account(&a).await.unwrap()["id"], A);
    assert_eq!(stub.transfers().len(), 1);
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

// Onboarding: accounts with controller properties, Account Links, Account Sessions, login links.

use serde_json::json;
use shared::stripe::onboarding::{
    AccountLink, CreateAccount, CreateAccountLink, REFERENCE_METADATA, form_params,
};

const RETURN_URL: &str = "https://platform.example/onboarded";
const REFRESH_URL: &str = "https://platform.example/onboarding/refresh?token=t1";

async fn onboarding_stub() -> (StripeStub, StripeClient) {
    let stub = StripeStub::start().await;
    let client = StripeClient::new(stub.client_config()).unwrap();
    (stub, client)
}

/// An Express account for `reference`: the platform pays fees and bears losses, Stripe collects
/// requirements.
fn express<'a>(metadata: &'a [(&'a str, &'a str)]) -> CreateAccount<'a> {
    CreateAccount {
        country: "US",
        email: Some("seller@example.com"),
        dashboard: "express",
        fees_payer: Some("application"),
        losses_payer: Some("application"),
        requirement_collection: Some("stripe"),
        capabilities: &["card_payments", "transfers"],
        metadata,
    }
}

/// An account without a Stripe-hosted dashboard whose requirements the platform collects.
fn platform_collected<'a>(metadata: &'a [(&'a str, &'a str)]) -> CreateAccount<'a> {
    CreateAccount {
        dashboard: "none",
        requirement_collection: Some("application"),
        capabilities: &["transfers"],
        ..express(metadata)
    }
}

/// Creates `account` and parses its id.
async fn created(client: &StripeClient, account: &CreateAccount<'_>, key: &str) -> AccountId {
    let raw = client.create_account(account, key).await.unwrap();
    acct(raw["id"].as_str().unwrap())
}

fn link<'a>(account: &'a AccountId, link_type: &'a str, collect: Option<&'a str>) -> CreateAccountLink<'a> {
    CreateAccountLink { account, link_type, return_url: RETURN_URL, refresh_url: REFRESH_URL, collect }
}

/// A form POST of `body` to `path` at the stub with the test key, and its status and JSON body.
async fn post_raw(stub: &StripeStub, path: &str, body: &str, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", stub.base_url()))
        .bearer_auth(STUB_API_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("Idempotency-Key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_str(&response.text().await.unwrap()).unwrap())
}

fn pairs(request: &ReceivedRequest) -> Vec<(&str, &str)> {
    request.form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The refusal's status, code and message, or a panic naming what came back instead.
fn refusal(error: &StripeError) -> (u16, Option<&str>, &str) {
    match error {
        StripeError::Refused { status, code, message, .. } => (*status, code.as_deref(), message.as_str()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn create_account_sends_controller_properties_and_gets_an_account_still_to_onboard() {
    let (stub, client) = onboarding_stub().await;
    let metadata = [(REFERENCE_METADATA, "seller-1")];
    let raw = client.create_account(&express(&metadata), "k-acct-1").await.unwrap();

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/accounts"));
    assert_eq!(request.idempotency_key.as_deref(), Some("k-acct-1"));
    assert_eq!(request.stripe_version.as_deref(), Some(STRIPE_VERSION));
    assert_eq!(request.stripe_account, None);
    assert_eq!(request.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(
        pairs(request),
        [
            ("country", "US"),
            ("email", "seller@example.com"),
            ("controller[stripe_dashboard][type]", "express"),
            ("controller[fees][payer]", "application"),
            ("controller[losses][payments]", "application"),
            ("controller[requirement_collection]", "stripe"),
            ("capabilities[card_payments][requested]", "true"),
            ("capabilities[transfers][requested]", "true"),
            ("metadata[connect_flow_reference]", "seller-1"),
        ]
    );

    let id = raw["id"].as_str().unwrap();
    assert!(AccountId::parse(id).is_some(), "{id}");
    assert_eq!(raw["object"], "account");
    assert_eq!(raw["type"], "express");
    assert_eq!(raw["country"], "US");
    assert_eq!(raw["email"], "seller@example.com");
    assert_eq!(raw["created"], STUB_START_TIME);
    assert_eq!(raw["metadata"][REFERENCE_METADATA], "seller-1");
    assert_eq!(raw["controller"]["stripe_dashboard"]["type"], "express");
    assert_eq!(raw["controller"]["fees"]["payer"], "application");
    assert_eq!(raw["controller"]["losses"]["payments"], "application");
    assert_eq!(raw["controller"]["requirement_collection"], "stripe");
    assert_eq!(raw["capabilities"], json!({"card_payments": "inactive", "transfers": "inactive"}));
    assert_eq!(
        (&raw["details_submitted"], &raw["charges_enabled"], &raw["payouts_enabled"]),
        (&json!(false), &json!(false), &json!(false))
    );
    assert!(raw["requirements"]["currently_due"].as_array().is_some_and(|due| !due.is_empty()));

    let accounts = stub.created_accounts();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].id, id);
    assert_eq!(accounts[0].capabilities, ["card_payments", "transfers"]);

    // Retrieval shows the same account; once onboarded (the stub's `add_account`), it is enabled.
    let a = acct(id);
    assert_eq!(client.retrieve_account(&a).await.unwrap(), raw);
    stub.add_account(id, true, true);
    let onboarded = client.retrieve_account(&a).await.unwrap();
    assert_eq!(onboarded["capabilities"]["transfers"], "active");
    assert_eq!((&onboarded["charges_enabled"], &onboarded["payouts_enabled"]), (&json!(true), &json!(true)));
    assert_eq!(onboarded["requirements"]["currently_due"], json!([]));
}

#[tokio::test]
async fn create_account_leaves_out_what_is_not_given_and_stripe_applies_its_defaults() {
    let (stub, client) = onboarding_stub().await;
    let account = CreateAccount {
        country: "FR",
        email: None,
        dashboard: "full",
        fees_payer: None,
        losses_payer: None,
        requirement_collection: None,
        capabilities: &[],
        metadata: &[],
    };
    let raw = client.create_account(&account, "k-defaults").await.unwrap();
    assert_eq!(
        pairs(&stub.received()[0]),
        [("country", "FR"), ("controller[stripe_dashboard][type]", "full")]
    );
    assert_eq!(raw["controller"]["fees"]["payer"], "account");
    assert_eq!(raw["controller"]["losses"]["payments"], "stripe");
    assert_eq!(raw["controller"]["requirement_collection"], "stripe");
    assert_eq!(raw["type"], "standard");
    assert_eq!(raw["email"], Value::Null);
    assert_eq!(raw["capabilities"], json!({}));

    let custom = client.create_account(&platform_collected(&[]), "k-custom").await.unwrap();
    assert_eq!(custom["type"], "custom");
}

#[tokio::test]
async fn the_same_account_key_replays_the_same_account_and_other_parameters_are_a_mismatch() {
    let (stub, client) = onboarding_stub().await;
    let metadata = [(REFERENCE_METADATA, "seller-1")];
    let first = client.create_account(&express(&metadata), "k-acct").await.unwrap();
    let again = client.create_account(&express(&metadata), "k-acct").await.unwrap();
    assert_eq!(again, first);
    assert_eq!(stub.created_accounts().len(), 1);

    let other = CreateAccount { country: "GB", ..express(&metadata) };
    let error = client.create_account(&other, "k-acct").await.unwrap_err();
    assert!(matches!(error, StripeError::IdempotencyMismatch { .. }), "{error:?}");
    assert_eq!(stub.created_accounts().len(), 1);

    let second = client.create_account(&express(&metadata), "k-acct-2").await.unwrap();
    assert_ne!(second["id"], first["id"]);
    assert_eq!(stub.created_accounts().len(), 2);
}

#[tokio::test]
async fn an_account_create_answered_500_is_replayed_and_found_by_its_reference() {
    let (stub, client) = onboarding_stub().await;
    let metadata = [(REFERENCE_METADATA, "seller-500")];
    stub.inject("/v1/accounts", Fault::ServerErrorAfterCreate);
    let error = client.create_account(&express(&metadata), "k-500").await.unwrap_err();
    assert_eq!((error.is_retryable(), error.status()), (true, Some(500)));
    let accounts = stub.created_accounts();
    assert_eq!(accounts.len(), 1, "the account exists although the answer was 500");

    // The same key replays the 500, so only the lookup settles it.
    let replayed = client.create_account(&express(&metadata), "k-500").await.unwrap_err();
    assert_eq!(replayed, error);
    assert_eq!(stub.created_accounts(), accounts);
    let before = stub.received().len();
    let found = client.find_account_by_reference("seller-500", STUB_START_TIME).await.unwrap();
    let found = found.expect("the account the 500 hid exists");
    assert_eq!(found["id"], accounts[0].id.as_str());
    assert_eq!(found["controller"]["stripe_dashboard"]["type"], "express");
    let lookup = received_since(&stub, before);
    assert_eq!(lookup.len(), 1);
    assert_eq!((lookup[0].method.as_str(), lookup[0].path.as_str()), ("GET", "/v1/accounts"));
    assert_eq!(lookup[0].query.as_deref(), Some("created%5Bgte%5D=1750000000&limit=100"));
    assert_eq!(lookup[0].idempotency_key, None);

    assert_eq!(client.find_account_by_reference("seller-other", STUB_START_TIME).await.unwrap(), None);
    // An account created before the window is not looked at.
    assert_eq!(client.find_account_by_reference("seller-500", STUB_START_TIME + 1).await.unwrap(), None);

    // A 500 before anything was created leaves nothing to find.
    stub.inject("/v1/accounts", Fault::ServerErrorBeforeCreate);
    let metadata = [(REFERENCE_METADATA, "seller-never")];
    assert!(client.create_account(&express(&metadata), "k-500-b").await.unwrap_err().is_retryable());
    assert_eq!(stub.created_accounts().len(), 1);
    assert_eq!(client.find_account_by_reference("seller-never", STUB_START_TIME).await.unwrap(), None);
}

#[tokio::test]
async fn find_account_by_reference_pages_newest_first_and_gives_up_after_ten_pages() {
    let (stub, client) = onboarding_stub().await;
    let mut ids = Vec::new();
    for i in 0..1001 {
        let reference = format!("seller-{i}");
        let metadata = [(REFERENCE_METADATA, reference.as_str())];
        let account = CreateAccount { capabilities: &[], ..express(&metadata) };
        ids.push(created(&client, &account, &format!("k-{i}")).await);
    }
    // The 901st newest is on page ten: found; the oldest would be on page eleven.
    let before = stub.received().len();
    let found = client.find_account_by_reference("seller-100", STUB_START_TIME).await.unwrap();
    assert_eq!(found.map(|a| a["id"].clone()), Some(json!(ids[100].as_str())));
    let pages = received_since(&stub, before);
    assert_eq!(pages.len(), 10);
    let second = format!("created%5Bgte%5D={STUB_START_TIME}&limit=100&starting_after={}", ids[901].as_str());
    assert_eq!(pages[1].query.as_deref(), Some(second.as_str()));

    let error = client.find_account_by_reference("seller-0", STUB_START_TIME).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(matches!(
        client.find_account_by_reference("", STUB_START_TIME).await,
        Err(StripeError::Config(_))
    ));
}

#[tokio::test]
async fn account_validation_refusals_are_stripe_s_and_leave_the_key_free() {
    let (stub, client) = onboarding_stub().await;
    let metadata = [(REFERENCE_METADATA, "seller-1")];
    let bad_dashboard = CreateAccount { dashboard: "mobile", ..express(&metadata) };
    let error = client.create_account(&bad_dashboard, "k-bad").await.unwrap_err();
    let (status, code, message) = refusal(&error);
    assert_eq!((status, code), (400, None));
    assert!(message.contains("controller[stripe_dashboard][type]"), "{message}");
    // A refused create saved nothing under its key: the corrected request creates the account.
    client.create_account(&express(&metadata), "k-bad").await.unwrap();
    assert_eq!(stub.created_accounts().len(), 1);

    let no_capabilities = CreateAccount { capabilities: &[], ..platform_collected(&[]) };
    let error = client.create_account(&no_capabilities, "k-nocap").await.unwrap_err();
    assert_eq!(refusal(&error).0, 400);
    assert_eq!(error.code(), Some("parameter_missing"));
    let unknown = CreateAccount { capabilities: &["telepathy_payments"], ..express(&[]) };
    let error = client.create_account(&unknown, "k-unknown").await.unwrap_err();
    assert_eq!(error.code(), Some("parameter_unknown"));
    let bad_fees = CreateAccount { fees_payer: Some("nobody"), ..express(&[]) };
    assert_eq!(refusal(&client.create_account(&bad_fees, "k-fees").await.unwrap_err()).0, 400);
    assert_eq!(stub.created_accounts().len(), 1);

    // Stripe's error names the parameter; a missing country is the platform's own.
    let (status, body) = post_raw(&stub, "/v1/accounts", "country=usa", "k-raw-1").await;
    assert_eq!(
        (status, &body["error"]["type"], &body["error"]["param"]),
        (400, &json!("invalid_request_error"), &json!("country"))
    );
    let (status, body) =
        post_raw(&stub, "/v1/accounts", "controller%5Bstripe_dashboard%5D%5Btype%5D=mobile", "k-raw-2").await;
    assert_eq!((status, &body["error"]["param"]), (400, &json!("controller[stripe_dashboard][type]")));
    let (status, body) = post_raw(&stub, "/v1/accounts", "", "k-raw-3").await;
    assert_eq!((status, &body["country"], &body["type"]), (200, &json!("US"), &json!("standard")));
}

#[tokio::test]
async fn account_links_carry_their_parameters_and_expire_in_five_minutes() {
    let (stub, client) = onboarding_stub().await;
    let a = created(&client, &express(&[]), "k-acct").await;
    stub.advance(60);
    let before = stub.received().len();
    let AccountLink { url, expires_at } = client
        .create_account_link(&link(&a, "account_onboarding", Some("eventually_due")), "k-link")
        .await
        .unwrap();

    let request = &received_since(&stub, before)[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/account_links"));
    assert_eq!(request.idempotency_key.as_deref(), Some("k-link"));
    assert_eq!(
        pairs(request),
        [
            ("account", a.as_str()),
            ("type", "account_onboarding"),
            ("return_url", RETURN_URL),
            ("refresh_url", REFRESH_URL),
            ("collection_options[fields]", "eventually_due"),
        ]
    );
    assert!(url.starts_with("https://connect.stripe.com/setup/s/"), "{url}");
    assert_eq!(expires_at, STUB_START_TIME + 60 + 300);
    let links = stub.account_links();
    assert_eq!(links.len(), 1);
    assert_eq!((links[0].url.as_str(), links[0].collect.as_deref()), (url.as_str(), Some("eventually_due")));
    assert_eq!((links[0].return_url.as_str(), links[0].refresh_url.as_str()), (RETURN_URL, REFRESH_URL));

    // The same key replays the same link; a new key is a new, different link.
    let same = link(&a, "account_onboarding", Some("eventually_due"));
    assert_eq!(client.create_account_link(&same, "k-link").await.unwrap().url, url);
    assert_eq!(stub.account_links().len(), 1);
    let fresh = client.create_account_link(&link(&a, "account_onboarding", None), "k-link-2").await.unwrap();
    assert_ne!(fresh.url, url);
    assert!(!pairs(stub.received().last().unwrap()).iter().any(|(k, _)| k.starts_with("collection_options")));

    // The platform collects this one's requirements and it has no dashboard: it may be updated.
    let custom = created(&client, &platform_collected(&[]), "k-custom").await;
    client.create_account_link(&link(&custom, "account_update", None), "k-update").await.unwrap();
    assert_eq!(stub.account_links().len(), 3);
}

#[tokio::test]
async fn account_link_refusals_come_back_as_stripe_answers_them() {
    let (stub, client) = onboarding_stub().await;
    let a = created(&client, &express(&[]), "k-acct").await;

    // Stripe collects this account's requirements: it refuses `account_update`.
    let error = client.create_account_link(&link(&a, "account_update", None), "k-update").await.unwrap_err();
    let (status, code, message) = refusal(&error);
    assert_eq!((status, code), (400, None));
    assert_eq!(message, r#"Invalid type: must be one of ["account_onboarding"]"#);
    let standard = CreateAccount { dashboard: "full", fees_payer: None, losses_payer: None, ..express(&[]) };
    let full = created(&client, &standard, "k-full").await;
    assert!(client.create_account_link(&link(&full, "account_update", None), "k-update-2").await.is_err());

    let ghost = acct("acct_1Ghost");
    let error =
        client.create_account_link(&link(&ghost, "account_onboarding", None), "k-ghost").await.unwrap_err();
    assert_eq!((refusal(&error).0, error.code()), (400, Some("resource_missing")));
    assert_eq!(refusal(&error).2, "No such account: 'acct_1Ghost'");
    let error = client.create_account_link(&link(&a, "account_renewal", None), "k-type").await.unwrap_err();
    assert_eq!(refusal(&error).0, 400);
    let error = client.create_account_link(&link(&a, "account_onboarding", Some("all")), "k-collect").await;
    assert_eq!(refusal(&error.unwrap_err()).0, 400);
    let bad_url =
        CreateAccountLink { return_url: "platform.example", ..link(&a, "account_onboarding", None) };
    let error = client.create_account_link(&bad_url, "k-url").await.unwrap_err();
    assert_eq!(error.code(), Some("url_invalid"));

    for (missing, body) in [
        ("return_url", format!("account={a}&type=account_onboarding&refresh_url=https%3A%2F%2Fx")),
        ("refresh_url", format!("account={a}&type=account_onboarding&return_url=https%3A%2F%2Fx")),
        (
            "account",
            "type=account_onboarding&return_url=https%3A%2F%2Fx&refresh_url=https%3A%2F%2Fx".to_owned(),
        ),
    ] {
        let (status, reply) = post_raw(&stub, "/v1/account_links", &body, &format!("k-{missing}")).await;
        assert_eq!(status, 400, "{missing}");
        assert_eq!(reply["error"]["code"], "parameter_missing", "{missing}");
        assert_eq!(reply["error"]["param"], missing);
    }
    assert!(stub.account_links().is_empty());

    // A revoked account is refused before anything runs, as for every other call.
    stub.revoke_account_access(a.as_str());
    let error =
        client.create_account_link(&link(&a, "account_onboarding", None), "k-revoked").await.unwrap_err();
    assert!(error.refused_account_access(), "{error:?}");
}

#[tokio::test]
async fn account_sessions_flatten_components_and_keep_the_secret_out_of_debug() {
    let (stub, client) = onboarding_stub().await;
    let a = created(&client, &express(&[]), "k-acct").await;
    let components = json!({
        "payments": {"enabled": true, "features": {"refund_management": true, "dispute_management": false}},
        "account_onboarding": {"enabled": true},
    });
    let before = stub.received().len();
    let session = client.create_account_session(&a, &components, "k-session").await.unwrap();

    let request = &received_since(&stub, before)[0];
    assert_eq!(request.path, "/v1/account_sessions");
    assert_eq!(request.idempotency_key.as_deref(), Some("k-session"));
    let mut form = pairs(request);
    form.sort_unstable();
    assert_eq!(
        form,
        [
            ("account", a.as_str()),
            ("components[account_onboarding][enabled]", "true"),
            ("components[payments][enabled]", "true"),
            ("components[payments][features][dispute_management]", "false"),
            ("components[payments][features][refund_management]", "true"),
        ]
    );
    let sessions = stub.account_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].components, components, "the stub rebuilt the same components");
    assert_eq!(session.client_secret.expose(), sessions[0].client_secret);
    assert!(session.client_secret.expose().starts_with(&format!("{a}_secret_")));
    assert_eq!(session.expires_at, STUB_START_TIME + 1800);
    let debug = format!("{session:?}");
    assert!(!debug.contains(session.client_secret.expose()), "{debug}");
    assert!(debug.contains("ClientSecret(<redacted>)"), "{debug}");

    // Replayed under its key: the same secret; a new key, a new one.
    let replayed = client.create_account_session(&a, &components, "k-session").await.unwrap();
    assert_eq!(replayed, session);
    let fresh = client.create_account_session(&a, &components, "k-session-2").await.unwrap();
    assert_ne!(fresh.client_secret, session.client_secret);

    let error =
        client.create_account_session(&acct("acct_1Ghost"), &components, "k-ghost").await.unwrap_err();
    assert_eq!((refusal(&error).0, error.code()), (400, Some("resource_missing")));
    let unknown = json!({"crystal_ball": {"enabled": true}});
    let error = client.create_account_session(&a, &unknown, "k-unknown").await.unwrap_err();
    assert_eq!(error.code(), Some("parameter_unknown"));
    let error = client
        .create_account_session(
            &a,
            &json!({"payments": {"features": {"refund_management": true}}}),
            "k-no-enabled",
        )
        .await;
    assert_eq!(error.unwrap_err().code(), Some("parameter_missing"));
    assert_eq!(stub.account_sessions().len(), 2);
}

#[tokio::test]
async fn calls_the_client_refuses_never_reach_stripe() {
    let (stub, client) = onboarding_stub().await;
    let a = acct("acct_1Anyone");
    for components in [json!({"payments": {"enabled": null}}), json!(["payments"]), json!({"a[b]": true})] {
        let error = client.create_account_session(&a, &components, "k").await.unwrap_err();
        assert!(matches!(error, StripeError::Config(_)), "{components}: {error:?}");
    }
    let bracketed = CreateAccount { capabilities: &["transfers][x"], ..express(&[]) };
    assert!(matches!(client.create_account(&bracketed, "k").await, Err(StripeError::Config(_))));
    let bad_key = CreateAccount { metadata: &[("a]", "b")], ..express(&[]) };
    assert!(matches!(client.create_account(&bad_key, "k").await, Err(StripeError::Config(_))));
    assert!(matches!(client.create_login_link(&a, "").await, Err(StripeError::Config(_))));
    let onboarding = link(&a, "account_onboarding", None);
    assert!(matches!(client.create_account_link(&onboarding, "bad\nkey").await, Err(StripeError::Config(_))));
    assert!(stub.received().is_empty(), "{:#?}", stub.received());
}

#[test]
fn form_params_flatten_nested_objects_arrays_and_scalars() {
    let value = json!({
        "payments": {"enabled": true, "features": {"refund_management": true}},
        "payouts": {"enabled": false, "limit": 25, "ratio": 0.5, "label": "a b&c"},
        "list": [1, {"x": "y"}],
    });
    let mut params = form_params("components", &value).unwrap();
    params.sort_unstable();
    let expected = [
        ("components[list][0]", "1"),
        ("components[list][1][x]", "y"),
        ("components[payments][enabled]", "true"),
        ("components[payments][features][refund_management]", "true"),
        ("components[payouts][enabled]", "false"),
        ("components[payouts][label]", "a b&c"),
        ("components[payouts][limit]", "25"),
        ("components[payouts][ratio]", "0.5"),
    ];
    assert_eq!(params, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
    assert!(form_params("components", &json!({})).unwrap().is_empty());
    assert!(matches!(form_params("components", &json!({"a": [null]})), Err(StripeError::Config(_))));
}

#[tokio::test]
async fn login_links_are_for_express_dashboards_only() {
    let (stub, client) = onboarding_stub().await;
    let a = created(&client, &express(&[]), "k-acct").await;
    let before = stub.received().len();
    let login = client.create_login_link(&a, "k-login").await.unwrap();
    assert!(login.url.starts_with(&format!("https://connect.stripe.com/express/{a}/")), "{}", login.url);
    let request = &received_since(&stub, before)[0];
    assert_eq!(request.path, format!("/v1/accounts/{a}/login_links"));
    assert_eq!((request.idempotency_key.as_deref(), request.form.is_empty()), (Some("k-login"), true));
    assert_eq!(stub.login_links().len(), 1);
    assert_eq!(stub.login_links()[0].account, a.as_str());

    for dashboard in ["full", "none"] {
        let account = CreateAccount { dashboard, ..platform_collected(&[]) };
        let other = created(&client, &account, &format!("k-{dashboard}")).await;
        let error = client.create_login_link(&other, &format!("k-login-{dashboard}")).await.unwrap_err();
        let (status, code, message) = refusal(&error);
        assert_eq!((status, code), (400, None), "{dashboard}");
        assert_eq!(
            message,
            format!("Cannot create an edit link for the account {other}, which is not an Express account.")
        );
    }
    let error = client.create_login_link(&acct("acct_1Ghost"), "k-ghost").await.unwrap_err();
    assert_eq!((refusal(&error).0, error.code()), (404, Some("resource_missing")));
    assert_eq!(stub.login_links().len(), 1);
}

#[tokio::test]
async fn the_account_list_is_stripe_shaped() {
    let (stub, client) = onboarding_stub().await;
    let first = created(&client, &express(&[]), "k-1").await;
    stub.advance(10);
    let second = created(&client, &express(&[]), "k-2").await;
    stub.advance(10);
    let third = created(&client, &express(&[]), "k-3").await;

    let (status, page) = get_raw(&stub, "/v1/accounts?limit=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&page["object"], &page["url"], &page["has_more"]),
        (&json!("list"), &json!("/v1/accounts"), &json!(true))
    );
    let ids =
        |page: &Value| page["data"].as_array().unwrap().iter().map(|a| a["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&page), [json!(third.as_str()), json!(second.as_str())]);
    let (_, next) = get_raw(&stub, &format!("/v1/accounts?limit=2&starting_after={second}"), None).await;
    assert_eq!((ids(&next), &next["has_more"]), (vec![json!(first.as_str())], &json!(false)));
    let from = STUB_START_TIME + 10;
    let (_, recent) = get_raw(&stub, &format!("/v1/accounts?created%5Bgte%5D={from}"), None).await;
    assert_eq!(ids(&recent), [json!(third.as_str()), json!(second.as_str())]);
    let (status, refused) = get_raw(&stub, "/v1/accounts?email=x", None).await;
    assert_eq!((status, &refused["error"]["code"]), (400, &json!("parameter_unknown")));
    // Retrieval of one still answers for accounts only added to the stub.
    stub.add_account(A, true, false);
    assert_eq!(client.retrieve_account(&acct(A)).await.unwrap()["capabilities"]["transfers"], "active");
}

/// `GET /v2/core/accounts/{id}`: every include the v2 rule reads is asked for, `Stripe-Context`
/// and the v2 version go with it, and the answer reads through the v2 onboarding rule.
#[tokio::test]
async fn a_v2_account_is_retrieved_with_its_includes_and_read_by_the_v2_rule() {
    use shared::domain::account::OnboardingStatus;
    use shared::domain::account::v2::{read_v2_account, v2_charges_enabled, v2_onboarding_status};
    use shared::stripe::v2::{STRIPE_V2_VERSION, V2_ACCOUNT_INCLUDES};

    let stub = StripeStub::start().await;
    let client = StripeClient::new(stub.client_config()).unwrap();
    stub.add_account("acct_V2Ready", true, true);
    stub.add_account("acct_V2Due", false, false);
    let ready = client.retrieve_v2_account(&acct("acct_V2Ready"), Some("acct_V2Ready")).await.unwrap();
    assert_eq!(ready["object"], "v2.core.account");
    let read = read_v2_account(&ready);
    assert_eq!(v2_onboarding_status(&read, false), (OnboardingStatus::Active, None));
    assert!(v2_charges_enabled(&read));
    let due = read_v2_account(&client.retrieve_v2_account(&acct("acct_V2Due"), None).await.unwrap());
    assert_eq!(v2_onboarding_status(&due, false).0, OnboardingStatus::Onboarding);
    assert_eq!(due.requirements.currently_due, ["Provide the business's URL"]);

    let sent = stub.received();
    assert_eq!(sent[0].path, "/v2/core/accounts/acct_V2Ready");
    assert_eq!(sent[0].stripe_context.as_deref(), Some("acct_V2Ready"));
    assert_eq!(sent[1].stripe_context, None);
    assert_eq!(sent[0].stripe_version.as_deref(), Some(STRIPE_V2_VERSION));
    let query = sent[0].query.clone().unwrap_or_default();
    for (index, include) in V2_ACCOUNT_INCLUDES.iter().enumerate() {
        assert!(query.contains(&format!("include%5B{index}%5D={include}")), "{include} in {query}");
    }
}

/// Without an include, a configuration comes back null and the rule sees no capability; an
/// unknown account is 404, one no longer connected 403, and a rate limit retryable.
#[tokio::test]
async fn v2_account_refusals_come_back_as_stripe_answers_them() {
    let stub = StripeStub::start().await;
    let client = StripeClient::new(stub.client_config()).unwrap();
    let (status, bare) = get_raw(&stub, "/v2/core/accounts/acct_Missing", None).await;
    assert_eq!((status, bare["error"]["code"].as_str()), (404, Some("resource_missing")));
    stub.add_account("acct_V2", true, true);
    let (status, bare) = get_raw(&stub, "/v2/core/accounts/acct_V2", None).await;
    assert_eq!(status, 200);
    assert_eq!(bare["configuration"]["merchant"], Value::Null, "not included, so null");
    let (status, refused) = get_raw(&stub, "/v2/core/accounts/acct_V2?include%5B0%5D=everything", None).await;
    assert_eq!((status, refused["error"]["param"].as_str()), (400, Some("include")));

    let missing = client.retrieve_v2_account(&acct("acct_Missing"), None).await.unwrap_err();
    assert_eq!((missing.status(), missing.code()), (Some(404), Some("resource_missing")));
    stub.revoke_account_access("acct_V2");
    let revoked = client.retrieve_v2_account(&acct("acct_V2"), Some("acct_V2")).await.unwrap_err();
    assert!(revoked.refused_account_access(), "{revoked:?}");
    stub.restore_account_access("acct_V2");
    stub.inject_get("/v2/core/accounts", Fault::RateLimited);
    let limited = client.retrieve_v2_account(&acct("acct_V2"), None).await.unwrap_err();
    assert!(limited.is_retryable() && limited.status() == Some(429), "{limited:?}");
    assert!(client.retrieve_v2_account(&acct("acct_V2"), None).await.is_ok(), "the fault is used up");
}
