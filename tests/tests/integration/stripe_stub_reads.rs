//! The stand-in Stripe API's reads for the thin-event fetch worker: raw v2 accounts filtered by
//! `include[]`, v1 objects served to their owner only, thin events served in their own context,
//! deleted and revoked accounts, `Stripe-Context` checks, and a rate limit with its `Retry-After`.

use integration_tests::stripe_stub::{Fault, STUB_API_KEY, StripeStub};
use serde_json::{Value, json};
use shared::domain::account::AccountId;
use shared::stripe::client::StripeClient;

const OWNER: &str = "acct_1Owner";
const OTHER: &str = "acct_1Other";

/// The phrase the client recognises in a refusal for a connected account the platform has no
/// access to (`NO_ACCOUNT_ACCESS_PHRASE` in shared/src/stripe/client.rs).
const NO_ACCOUNT_ACCESS_PHRASE: &str = "does not have access to account";

fn acct(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

/// One answer of the stub: status, `Retry-After` and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Answer {
    /// `error.code`, or `None`.
    fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// `error.message`, or "".
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    /// Asserts the answer is Stripe's 404 `resource_missing` with `message`.
    fn assert_missing(&self, message: &str) {
        assert_eq!(self.status, 404, "{self:?}");
        assert_eq!(self.body["error"]["type"], "invalid_request_error", "{self:?}");
        assert_eq!(self.code(), Some("resource_missing"), "{self:?}");
        assert_eq!(self.message(), message, "{self:?}");
    }

    /// Asserts the answer is Stripe's 403 for a connected account the platform cannot reach.
    fn assert_no_access(&self, account: &str) {
        assert_eq!(self.status, 403, "{self:?}");
        assert_eq!(self.body["error"]["type"], "invalid_request_error", "{self:?}");
        assert_eq!(self.code(), Some("account_invalid"), "{self:?}");
        let phrase = format!("{NO_ACCOUNT_ACCESS_PHRASE} '{account}'");
        assert!(self.message().contains(&phrase), "{self:?}");
    }
}

/// A GET of `path_and_query` at the stub with the test key and `headers`.
async fn get(stub: &StripeStub, path_and_query: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request =
        reqwest::Client::new().get(format!("{}{path_and_query}", stub.base_url())).bearer_auth(STUB_API_KEY);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
    let body = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    Answer { status, retry_after, body }
}

/// A raw v2 account with every include filled in, as `GET /v2/core/accounts/{id}` returns it
/// when all are asked for.
fn raw_v2_account(id: &str, recipient_status: &str) -> Value {
    let capability = |status: &str| json!({"status": status, "status_details": []});
    json!({
        "id": id, "object": "v2.core.account", "closed": false, "livemode": false,
        "contact_email": "seller@example.com", "dashboard": "express",
        "applied_configurations": ["customer", "merchant", "recipient"],
        "configuration": {
            "customer": {"capabilities": {"automatic_indirect_tax": capability("active")}},
            "merchant": {"capabilities": {"card_payments": capability("active")}},
            "recipient": {"capabilities": {"stripe_balance": {
                "stripe_transfers": capability(recipient_status)}}},
        },
        "requirements": {"entries": [{"awaiting_action_from": "stripe", "description": "Verify identity",
            "minimum_deadline": {"status": "eventually_due"}}]},
        "future_requirements": {"entries": []},
        "identity": {"country": "gb", "entity_type": "company"},
        "defaults": {"currency": "gbp", "locales": ["en-GB"]},
    })
}

const INCLUDE_PROPERTIES: [&str; 4] = ["requirements", "future_requirements", "identity", "defaults"];
const CONFIGURATIONS: [&str; 3] = ["customer", "merchant", "recipient"];

#[tokio::test]
async fn a_stored_v2_account_overrides_the_synthesised_one_and_shows_only_what_was_included() {
    let stub = StripeStub::start().await;
    stub.add_account(OWNER, false, false);
    let raw = raw_v2_account(OWNER, "active");
    stub.put_v2_account(OWNER, raw.clone());
    let path = format!("/v2/core/accounts/{OWNER}");

    let bare = get(&stub, &path, &[]).await;
    assert_eq!(bare.status, 200, "{bare:?}");
    for configuration in CONFIGURATIONS {
        assert_eq!(bare.body["configuration"][configuration], Value::Null, "{configuration} not included");
    }
    for property in INCLUDE_PROPERTIES {
        assert_eq!(bare.body[property], Value::Null, "{property} not included");
    }
    // What depends on no include comes back as stored, not as the stub would synthesise it.
    for property in ["id", "object", "closed", "contact_email", "dashboard", "applied_configurations"] {
        assert_eq!(bare.body[property], raw[property], "{property}");
    }

    let some = get(
        &stub,
        &format!("{path}?include%5B0%5D=configuration.recipient&include%5B1%5D=requirements"),
        &[],
    )
    .await;
    assert_eq!(some.status, 200, "{some:?}");
    assert_eq!(some.body["configuration"]["recipient"], raw["configuration"]["recipient"]);
    assert_eq!(some.body["requirements"], raw["requirements"]);
    assert_eq!(some.body["configuration"]["merchant"], Value::Null);
    assert_eq!(some.body["configuration"]["customer"], Value::Null);
    assert_eq!(some.body["identity"], Value::Null);

    // The real client asks for every include, and gets the stored object whole.
    let client = StripeClient::new(stub.client_config()).unwrap();
    assert_eq!(client.retrieve_v2_account(&acct(OWNER), Some(OWNER)).await.unwrap(), raw);

    let refused = get(&stub, &format!("{path}?include%5B0%5D=configuration.everything"), &[]).await;
    assert_eq!((refused.status, refused.body["error"]["param"].as_str()), (400, Some("include")));

    // A second put replaces the account, as when it changed between two fetches.
    stub.put_v2_account(OWNER, raw_v2_account(OWNER, "restricted"));
    let changed = get(&stub, &format!("{path}?include%5B0%5D=configuration.recipient"), &[]).await;
    let transfers = &changed.body["configuration"]["recipient"]["capabilities"]["stripe_balance"];
    assert_eq!(transfers["stripe_transfers"]["status"], "restricted");
}

#[tokio::test]
async fn a_v2_account_only_put_is_known_to_stripe_context() {
    let stub = StripeStub::start().await;
    stub.put_v2_account(OWNER, raw_v2_account(OWNER, "active"));
    let path = format!("/v2/core/accounts/{OWNER}");
    let answer = get(&stub, &path, &[("Stripe-Context", OWNER)]).await;
    assert_eq!((answer.status, &answer.body["id"]), (200, &json!(OWNER)), "{answer:?}");
    // An account the stub never heard of is not.
    get(&stub, &path, &[("Stripe-Context", OTHER)]).await.assert_no_access(OTHER);
}

#[tokio::test]
async fn a_v1_object_is_served_to_its_owner_only() {
    let stub = StripeStub::start().await;
    stub.add_account(OTHER, true, true);
    let payout =
        json!({"id": "po_1", "object": "payout", "amount": 1200, "currency": "usd", "status": "paid"});
    stub.put_object(Some(OWNER), "/v1/payouts/po_1", payout.clone());

    let owned = get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OWNER)]).await;
    assert_eq!((owned.status, &owned.body), (200, &payout));
    // Stripe-Context supersedes Stripe-Account, on v1 too.
    assert_eq!(get(&stub, "/v1/payouts/po_1", &[("Stripe-Context", OWNER)]).await.body, payout);
    get(&stub, "/v1/payouts/po_1", &[]).await.assert_missing("No such payout: 'po_1'");
    get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OTHER)])
        .await
        .assert_missing("No such payout: 'po_1'");

    // A platform object is retrieved without Stripe-Account, and not with one.
    let transfer = json!({"id": "tr_1", "object": "transfer", "amount": 500, "destination": OWNER});
    stub.put_object(None, "/v1/transfers/tr_1", transfer.clone());
    assert_eq!(get(&stub, "/v1/transfers/tr_1", &[]).await.body, transfer);
    get(&stub, "/v1/transfers/tr_1", &[("Stripe-Account", OWNER)])
        .await
        .assert_missing("No such transfer: 'tr_1'");

    // Objects under an account, and the balance, which differs per account.
    let capability = json!({"id": "transfers", "object": "capability", "account": OWNER, "status": "active"});
    let person = json!({"id": "person_1", "object": "person", "account": OWNER});
    let bank = json!({"id": "ba_1", "object": "bank_account", "account": OWNER, "last4": "6789"});
    stub.put_object(None, &format!("/v1/accounts/{OWNER}/capabilities/transfers"), capability.clone());
    stub.put_object(None, &format!("/v1/accounts/{OWNER}/persons/person_1"), person.clone());
    stub.put_object(None, &format!("/v1/accounts/{OWNER}/external_accounts/ba_1"), bank.clone());
    let owner_balance = json!({"object": "balance", "available": [{"amount": 700, "currency": "usd"}]});
    let platform_balance = json!({"object": "balance", "available": [{"amount": 9000, "currency": "usd"}]});
    stub.put_object(Some(OWNER), "/v1/balance", owner_balance.clone());
    stub.put_object(None, "/v1/balance", platform_balance.clone());
    let under = |rest: &str| format!("/v1/accounts/{OWNER}/{rest}");
    assert_eq!(get(&stub, &under("capabilities/transfers"), &[]).await.body, capability);
    assert_eq!(get(&stub, &under("persons/person_1"), &[]).await.body, person);
    assert_eq!(get(&stub, &under("external_accounts/ba_1"), &[]).await.body, bank);
    get(&stub, &under("persons/person_2"), &[]).await.assert_missing("No such person: 'person_2'");
    get(&stub, &under("external_accounts/ba_2"), &[])
        .await
        .assert_missing("No such external account: 'ba_2'");
    get(&stub, &under("capabilities/card_payments"), &[])
        .await
        .assert_missing("No such capability: 'card_payments'");
    assert_eq!(get(&stub, "/v1/balance", &[("Stripe-Account", OWNER)]).await.body, owner_balance);
    assert_eq!(get(&stub, "/v1/balance", &[]).await.body, platform_balance);
    get(&stub, "/v1/balance", &[("Stripe-Account", OTHER)])
        .await
        .assert_missing("No such balance: 'balance'");

    // A retrieve takes no parameters, and a path shaped like no retrieve is 404 without a code.
    let expand = get(&stub, "/v1/payouts/po_1?expand%5B%5D=destination", &[("Stripe-Account", OWNER)]).await;
    assert_eq!((expand.status, expand.code()), (400, Some("parameter_unknown")), "{expand:?}");
    let list = get(&stub, &under("persons"), &[]).await;
    assert_eq!((list.status, list.code()), (404, None), "{list:?}");
}

#[tokio::test]
async fn a_put_object_replaces_the_last_and_a_removed_one_is_missing() {
    let stub = StripeStub::start().await;
    let path = "/v1/payouts/po_1";
    let headers = [("Stripe-Account", OWNER)];
    stub.put_object(Some(OWNER), path, json!({"id": "po_1", "object": "payout", "status": "pending"}));
    assert_eq!(get(&stub, path, &headers).await.body["status"], "pending");
    stub.put_object(Some(OWNER), path, json!({"id": "po_1", "object": "payout", "status": "paid"}));
    assert_eq!(get(&stub, path, &headers).await.body["status"], "paid");

    stub.remove_object(path);
    get(&stub, path, &headers).await.assert_missing("No such payout: 'po_1'");
    stub.put_object(Some(OWNER), path, json!({"id": "po_1", "object": "payout", "status": "failed"}));
    assert_eq!(get(&stub, path, &headers).await.body["status"], "failed");
}

#[tokio::test]
async fn a_stored_v1_account_overrides_the_synthesised_one_until_removed() {
    let stub = StripeStub::start().await;
    stub.add_account(OWNER, true, true);
    let path = format!("/v1/accounts/{OWNER}");
    let synthesised = get(&stub, &path, &[]).await;
    assert_eq!(synthesised.body["capabilities"]["transfers"], "active", "{synthesised:?}");

    let stored = json!({"id": OWNER, "object": "account", "charges_enabled": false,
        "capabilities": {"transfers": "inactive"}, "email": "seller@example.com"});
    stub.put_object(None, &path, stored.clone());
    let client = StripeClient::new(stub.client_config()).unwrap();
    assert_eq!(client.retrieve_account(&acct(OWNER)).await.unwrap(), stored);
    // Stored for the platform, so a request as the account itself finds nothing.
    get(&stub, &path, &[("Stripe-Account", OWNER)])
        .await
        .assert_missing(&format!("No such account: '{OWNER}'"));

    stub.remove_object(&path);
    get(&stub, &path, &[]).await.assert_missing(&format!("No such account: '{OWNER}'"));
}

#[tokio::test]
async fn a_created_transfer_and_payout_are_retrievable() {
    let stub = StripeStub::start().await;
    stub.add_account(OWNER, true, true);
    stub.set_platform_balance("usd", 10_000);
    stub.set_account_balance(OWNER, "usd", 3000);
    let client = StripeClient::new(stub.client_config()).unwrap();
    let params = shared::stripe::client::CreateTransfer {
        amount: 1000,
        currency: "usd",
        destination: &acct(OWNER),
        source_transaction: None,
        transfer_group: Some("pi_1Group"),
        description: None,
        metadata: &[],
    };
    let transfer = client.create_transfer(&params, "k-transfer").await.unwrap();
    let payout = client.create_payout(&acct(OWNER), 500, "usd", &[], "k-payout").await.unwrap();

    let got = get(&stub, &format!("/v1/transfers/{}", transfer.id), &[]).await;
    assert_eq!((got.status, got.body["amount"].as_i64()), (200, Some(1000)), "{got:?}");
    let got = get(&stub, &format!("/v1/payouts/{}", payout.id), &[("Stripe-Account", OWNER)]).await;
    assert_eq!((got.status, got.body["amount"].as_i64()), (200, Some(500)), "{got:?}");
    get(&stub, &format!("/v1/payouts/{}", payout.id), &[])
        .await
        .assert_missing(&format!("No such payout: '{}'", payout.id));
    // A removed path hides what the stub created.
    stub.remove_object(&format!("/v1/transfers/{}", transfer.id));
    get(&stub, &format!("/v1/transfers/{}", transfer.id), &[])
        .await
        .assert_missing(&format!("No such transfer: '{}'", transfer.id));
}

fn thin_event(id: &str, context: Option<&str>) -> Value {
    json!({
        "id": id, "object": "v2.core.event", "type": "v2.core.account[requirements].updated",
        "livemode": false, "created": "2025-06-15T15:06:40.000Z", "context": context,
        "related_object": {"id": OWNER, "type": "v2.core.account", "url": format!("/v2/core/accounts/{OWNER}")},
    })
}

#[tokio::test]
async fn a_thin_event_is_served_in_its_own_context_only() {
    let stub = StripeStub::start().await;
    stub.add_account(OTHER, true, true);
    let connected = thin_event("evt_1Connected", Some(OWNER));
    let platform = thin_event("evt_1Platform", None);
    stub.put_thin_event(connected.clone());
    stub.put_thin_event(platform.clone());

    let answer = get(&stub, "/v2/core/events/evt_1Connected", &[("Stripe-Context", OWNER)]).await;
    assert_eq!((answer.status, &answer.body), (200, &connected));
    let missing = "No such event: 'evt_1Connected'";
    get(&stub, "/v2/core/events/evt_1Connected", &[]).await.assert_missing(missing);
    get(&stub, "/v2/core/events/evt_1Connected", &[("Stripe-Context", OTHER)]).await.assert_missing(missing);

    assert_eq!(get(&stub, "/v2/core/events/evt_1Platform", &[]).await.body, platform);
    get(&stub, "/v2/core/events/evt_1Platform", &[("Stripe-Context", OTHER)])
        .await
        .assert_missing("No such event: 'evt_1Platform'");
    get(&stub, "/v2/core/events/evt_1Unknown", &[]).await.assert_missing("No such event: 'evt_1Unknown'");
    let refused = get(&stub, "/v2/core/events/evt_1Platform?include%5B0%5D=data", &[]).await;
    assert_eq!((refused.status, refused.code()), (400, Some("parameter_unknown")), "{refused:?}");

    // A second put with the same id replaces the event.
    stub.put_thin_event(
        json!({"id": "evt_1Platform", "object": "v2.core.event", "type": "v1.account.updated",
        "context": null}),
    );
    assert_eq!(get(&stub, "/v2/core/events/evt_1Platform", &[]).await.body["type"], "v1.account.updated");
}

#[tokio::test]
async fn a_deleted_account_is_missing_and_no_context_any_more() {
    let stub = StripeStub::start().await;
    stub.add_account(OWNER, true, true);
    stub.put_v2_account(OWNER, raw_v2_account(OWNER, "active"));
    stub.put_object(None, &format!("/v1/accounts/{OWNER}/persons/person_1"), json!({"id": "person_1"}));
    stub.put_object(Some(OWNER), "/v1/payouts/po_1", json!({"id": "po_1", "object": "payout"}));
    stub.delete_account(OWNER);

    let missing = format!("No such account: '{OWNER}'");
    get(&stub, &format!("/v1/accounts/{OWNER}"), &[]).await.assert_missing(&missing);
    get(&stub, &format!("/v2/core/accounts/{OWNER}"), &[]).await.assert_missing(&missing);
    get(&stub, &format!("/v1/accounts/{OWNER}/persons/person_1"), &[]).await.assert_missing(&missing);
    get(&stub, &format!("/v2/core/accounts/{OWNER}"), &[("Stripe-Context", OWNER)])
        .await
        .assert_no_access(OWNER);
    get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OWNER)]).await.assert_no_access(OWNER);

    // The client reads the 404 as a missing object, not a lost account.
    let client = StripeClient::new(stub.client_config()).unwrap();
    let error = client.retrieve_account(&acct(OWNER)).await.unwrap_err();
    assert_eq!((error.status(), error.code()), (Some(404), Some("resource_missing")), "{error:?}");
    assert!(!error.refused_account_access(), "{error:?}");
    // Adding it again does not bring it back.
    stub.add_account(OWNER, true, true);
    get(&stub, &format!("/v1/accounts/{OWNER}"), &[]).await.assert_missing(&missing);
}

#[tokio::test]
async fn an_unknown_context_is_refused_on_every_read() {
    let stub = StripeStub::start().await;
    stub.add_account(OWNER, true, true);
    stub.put_object(Some(OWNER), "/v1/payouts/po_1", json!({"id": "po_1", "object": "payout"}));
    stub.put_thin_event(thin_event("evt_1Connected", Some(OWNER)));
    let stranger = "acct_1Stranger";
    for path in [
        format!("/v2/core/accounts/{OWNER}"),
        "/v2/core/events/evt_1Connected".to_owned(),
        "/v1/payouts/po_1".to_owned(),
        format!("/v1/accounts/{OWNER}"),
        "/v1/transfers".to_owned(),
    ] {
        get(&stub, &path, &[("Stripe-Context", stranger)]).await.assert_no_access(stranger);
    }
    // The client classifies it as a lost account.
    let client = StripeClient::new(stub.client_config()).unwrap();
    let error = client.retrieve_v2_account(&acct(OWNER), Some(stranger)).await.unwrap_err();
    assert!(error.refused_account_access(), "{error:?}");
    // An owner known only from a stored object, or a thin event's context, may be named.
    let owner_only = "acct_1OwnerOnly";
    stub.put_object(Some(owner_only), "/v1/payouts/po_2", json!({"id": "po_2", "object": "payout"}));
    assert_eq!(get(&stub, "/v1/payouts/po_2", &[("Stripe-Context", owner_only)]).await.status, 200);
    stub.put_thin_event(thin_event("evt_1Elsewhere", Some("acct_1Elsewhere")));
    let event = get(&stub, "/v2/core/events/evt_1Elsewhere", &[("Stripe-Context", "acct_1Elsewhere")]).await;
    assert_eq!(event.status, 200, "{event:?}");
}

#[tokio::test]
async fn a_revoked_account_and_its_objects_are_refused() {
    let stub = StripeStub::start().await;
    stub.add_account(OWNER, true, true);
    stub.put_v2_account(OWNER, raw_v2_account(OWNER, "active"));
    stub.put_object(Some(OWNER), "/v1/payouts/po_1", json!({"id": "po_1", "object": "payout"}));
    stub.put_object(
        None,
        &format!("/v1/accounts/{OWNER}/capabilities/transfers"),
        json!({"id": "transfers"}),
    );
    stub.put_thin_event(thin_event("evt_1Connected", Some(OWNER)));
    stub.revoke_account_access(OWNER);

    let refused = [
        get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OWNER)]).await,
        get(&stub, "/v1/payouts/po_1", &[("Stripe-Context", OWNER)]).await,
        get(&stub, &format!("/v1/accounts/{OWNER}"), &[]).await,
        get(&stub, &format!("/v1/accounts/{OWNER}/capabilities/transfers"), &[]).await,
        get(&stub, &format!("/v2/core/accounts/{OWNER}"), &[]).await,
        get(&stub, "/v2/core/events/evt_1Connected", &[("Stripe-Context", OWNER)]).await,
    ];
    for answer in &refused {
        answer.assert_no_access(OWNER);
    }
    let client = StripeClient::new(stub.client_config()).unwrap();
    let error = client.retrieve_v2_account(&acct(OWNER), Some(OWNER)).await.unwrap_err();
    assert!(error.refused_account_access() && !error.refused_platform_key(), "{error:?}");

    stub.restore_account_access(OWNER);
    assert_eq!(get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OWNER)]).await.status, 200);
}

#[tokio::test]
async fn rate_limited_for_answers_429_with_its_retry_after_and_is_used_up() {
    let stub = StripeStub::start().await;
    stub.put_thin_event(thin_event("evt_1Platform", None));
    stub.inject_get("/v2/core/events", Fault::RateLimitedFor(7));
    stub.inject_get("/v2/core/events", Fault::RateLimitedFor(0));
    stub.inject_get("/v2/core/events", Fault::RateLimited);

    for expected in ["7", "0", "1"] {
        let limited = get(&stub, "/v2/core/events/evt_1Platform", &[]).await;
        assert_eq!(limited.status, 429, "{limited:?}");
        assert_eq!(limited.retry_after.as_deref(), Some(expected), "{limited:?}");
        assert_eq!(limited.body["error"]["type"], "invalid_request_error");
        assert_eq!(limited.code(), Some("rate_limit"));
    }
    assert_eq!(stub.pending_faults(), 0);
    let answer = get(&stub, "/v2/core/events/evt_1Platform", &[]).await;
    assert_eq!((answer.status, answer.retry_after), (200, None));

    // Aimed at GETs, so a POST under the prefix leaves it queued; the client's read sees a
    // retryable 429.
    stub.add_account(OWNER, true, true);
    stub.inject_get("/v1/accounts/", Fault::RateLimitedFor(3));
    let client = StripeClient::new(stub.client_config()).unwrap();
    client.create_login_link(&acct(OWNER), "k-login").await.unwrap();
    assert_eq!(stub.pending_faults(), 1, "a GET fault is not spent on a POST");
    let error = client.retrieve_account(&acct(OWNER)).await.unwrap_err();
    assert!(error.is_retryable() && error.status() == Some(429), "{error:?}");
    assert_eq!(stub.pending_faults(), 0);
}

#[tokio::test]
async fn the_reads_are_counted_and_recorded() {
    let stub = StripeStub::start().await;
    stub.put_v2_account(OWNER, raw_v2_account(OWNER, "active"));
    stub.put_object(Some(OWNER), "/v1/payouts/po_1", json!({"id": "po_1"}));
    stub.put_thin_event(thin_event("evt_1Connected", Some(OWNER)));
    get(&stub, "/v2/core/events/evt_1Connected", &[("Stripe-Context", OWNER)]).await;
    get(&stub, "/v2/core/events/evt_1Connected", &[]).await;
    get(&stub, &format!("/v2/core/accounts/{OWNER}?include%5B0%5D=identity"), &[]).await;
    get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OWNER)]).await;
    stub.inject_get("/v1/payouts", Fault::RateLimitedFor(2));
    get(&stub, "/v1/payouts/po_1", &[("Stripe-Account", OWNER)]).await;

    let counts = stub.requests();
    assert_eq!(counts.get("/v2/core/events/evt_1Connected"), Some(&2));
    assert_eq!(counts.get(&format!("/v2/core/accounts/{OWNER}")), Some(&1));
    assert_eq!(counts.get("/v1/payouts/po_1"), Some(&2), "the rate-limited one counts too");
    let received = stub.received();
    assert_eq!(received.len(), 5);
    assert!(received.iter().all(|request| request.method == "GET"));
    assert_eq!(received[0].stripe_context.as_deref(), Some(OWNER));
    assert_eq!(received[1].stripe_context, None);
    assert_eq!(received[2].query.as_deref(), Some("include%5B0%5D=identity"));
    assert_eq!(received[3].stripe_account.as_deref(), Some(OWNER));
}
