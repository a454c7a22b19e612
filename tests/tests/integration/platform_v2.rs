//! `POST /accounts` on Accounts v2 (`CONNECT_FLOW_ACCOUNTS_API=v2`), end to end on both stores
//! against the stand-in Stripe: the same guarantees as on v1 (one account per reference, the
//! reference claimed before the call and in the account's metadata, a look-up before any second
//! send, a refusal freeing the reference), with API v2's JSON body and its idempotency.

use std::time::Duration;

use integration_tests::stripe_stub::{Fault, STUB_START_TIME, StripeStub, V2_IDEMPOTENCY_KEY_TTL_SECS};
use integration_tests::{TestClock, on_both_stores};
use serde_json::{Value, json};
use shared::domain::account::{AccountId, AccountsApi};
use shared::domain::reference::{ReferenceKind, ReferenceState};
use shared::platform::{ACCOUNTS_API, ApiRequest, PlatformApi, PlatformSettings};
use shared::store::AccountStore;
use shared::stripe::client::{StripeClient, StripeError};
use shared::stripe::onboarding::REFERENCE_METADATA;
use shared::stripe::v2::{STRIPE_V2_VERSION, V2_ACCOUNT_INCLUDES};
use shared::stripe::v2_accounts::{CreateV2Account, V2AccountLookup};

const START: i64 = 1_767_000_000;
const CREATE_PATH: &str = "/v2/core/accounts";

struct Api<S: AccountStore + Clone> {
    stub: StripeStub,
    api: PlatformApi<S, TestClock>,
}

impl<S: AccountStore + Clone> Api<S> {
    /// The API on `accounts_api`, as `CONNECT_FLOW_ACCOUNTS_API` would set it, against a fresh stub.
    async fn new(store: S, accounts_api: &str) -> Self {
        Self::with_timeout(store, accounts_api, None).await
    }

    async fn with_timeout(store: S, accounts_api: &str, timeout: Option<Duration>) -> Self {
        let stub = StripeStub::start().await;
        stub.set_now(START);
        let mut config = stub.client_config();
        if let Some(timeout) = timeout {
            config.timeout = timeout;
        }
        let stripe = StripeClient::new(config).unwrap();
        let settings =
            PlatformSettings { link_secret: None, public_url: None, expected_livemode: Some(false) };
        let api = PlatformSettings::accounts_api_from_lookup(|name| {
            (name == ACCOUNTS_API).then(|| accounts_api.to_owned())
        })
        .unwrap();
        let api = PlatformApi::with_clock(store, Some(stripe), settings, TestClock::at(START))
            .with_accounts_api(api);
        Self { stub, api }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let request =
            ApiRequest { method, path, query: "", body: body.as_bytes(), base_url: "http://ignored" };
        let reply = self.api.handle(&request).await;
        (reply.status, serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body.clone())))
    }

    async fn create(&self, body: Value) -> (u16, Value) {
        self.call("POST", "/accounts", Some(body)).await
    }

    /// The idempotency keys of every v2 create the stub received, in order.
    fn create_keys(&self) -> Vec<String> {
        self.stub
            .received()
            .into_iter()
            .filter(|request| request.method == "POST" && request.path == CREATE_PATH)
            .map(|request| request.idempotency_key.unwrap_or_default())
            .collect()
    }

    fn posts(&self) -> usize {
        self.stub.received().iter().filter(|request| request.method == "POST").count()
    }
}

fn body(reference: &str) -> Value {
    json!({
        "reference": reference, "country": "us", "email": "seller@example.com", "dashboard": "express",
        "fees_payer": "application", "losses_payer": "application",
        "capabilities": ["transfers", "card_payments"],
    })
}

async fn a_v2_account_is_created_once_per_reference<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone(), "v2").await;
    let (status, account) = api.create(body("seller-1")).await;
    assert_eq!(status, 201, "{account}");
    let created = api.stub.created_v2_accounts();
    assert_eq!(created.len(), 1);
    assert!(api.stub.created_accounts().is_empty(), "nothing on /v1/accounts");
    let id = created[0].id.clone();

    // What Stripe received: one JSON create under API v2's version, with a key.
    let received = api.stub.received();
    let sent: Vec<_> = received.iter().filter(|request| request.method == "POST").collect();
    assert_eq!(sent.len(), 1, "{received:?}");
    let sent = sent[0];
    assert_eq!(sent.path, CREATE_PATH);
    assert_eq!(sent.stripe_version.as_deref(), Some(STRIPE_V2_VERSION));
    assert_eq!(sent.content_type.as_deref(), Some("application/json"));
    assert!(sent.idempotency_key.as_deref().is_some_and(|key| !key.is_empty()));
    assert!(sent.form.is_empty());
    assert_eq!(
        sent.json.as_ref(),
        Some(&json!({
            "identity": {"country": "us"},
            "contact_email": "seller@example.com",
            "dashboard": "express",
            "defaults": {"responsibilities": {"fees_collector": "application", "losses_collector": "application"}},
            "configuration": {
                "merchant": {"capabilities": {"card_payments": {"requested": true}}},
                "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}},
            },
            "metadata": {REFERENCE_METADATA: "seller-1"},
            "include": V2_ACCOUNT_INCLUDES,
        }))
    );

    // The answer: the account by the v2 rule, with its reference.
    assert_eq!(account["account_id"], json!(id));
    assert_eq!(account["reference"], "seller-1");
    assert_eq!(account["api"], "v2");
    assert_eq!(account["onboarding_status"], "onboarding", "nothing active, the user owes: {account}");
    assert_eq!(
        account["capabilities"],
        json!({"merchant.card_payments": "restricted", "recipient.stripe_balance.stripe_transfers": "restricted"})
    );
    assert_eq!((&account["charges_enabled"], &account["payouts_enabled"]), (&json!(false), &json!(false)));
    assert_eq!(account["details_submitted"], Value::Null);
    assert_eq!(account["requirements"]["currently_due"].as_array().map(Vec::len), Some(2), "{account}");
    // Stored as answered.
    let (status, read) = api.call("GET", &format!("/accounts/{id}"), None).await;
    assert_eq!((status, &read), (200, &account));
    let stored = store.load_account(&AccountId::parse(&id).unwrap()).await.unwrap().unwrap();
    assert_eq!((stored.api, stored.reference.as_deref()), (AccountsApi::V2, Some("seller-1")));
    // And Stripe serves the created account, reference and all, to the fetch worker's read.
    let stripe = StripeClient::new(api.stub.client_config()).unwrap();
    let fetched = stripe.retrieve_v2_account(&AccountId::parse(&id).unwrap(), None).await.unwrap();
    assert_eq!(fetched["metadata"][REFERENCE_METADATA], "seller-1");
    assert_eq!(fetched["configuration"]["merchant"]["capabilities"]["card_payments"]["status"], "restricted");

    // Repeated, capabilities in another order: the same account, and no call to Stripe.
    let posts = api.posts();
    let mut same = body("seller-1");
    same["capabilities"] = json!(["card_payments", "transfers"]);
    let (status, again) = api.create(same).await;
    assert_eq!((status, &again["account_id"]), (200, &json!(id)));
    assert_eq!(api.posts(), posts);
    // The same reference with other parameters: 409, nothing created.
    let mut other = body("seller-1");
    other["dashboard"] = json!("full");
    let (status, conflict) = api.create(other).await;
    assert_eq!((status, conflict["error"].as_str()), (409, Some("reference_conflict")), "{conflict}");
    assert_eq!((api.stub.created_v2_accounts().len(), api.posts()), (1, posts));
}

/// Stripe created the account and answered 500: the next call finds it by its reference instead
/// of sending again. Nothing created before the 500: the next call sends again under the same key,
/// which API v2 runs again rather than replaying the 500.
async fn an_ambiguous_v2_create_is_looked_up_before_anything_is_sent_again<S: AccountStore + Clone>(
    store: S,
) {
    let api = Api::new(store.clone(), "v2").await;
    api.stub.inject(CREATE_PATH, Fault::ServerErrorAfterCreate);
    let (status, error) = api.create(body("seller-2")).await;
    assert_eq!((status, error["error"].as_str()), (503, Some("stripe_unavailable")), "{error}");
    assert_eq!(api.stub.created_v2_accounts().len(), 1, "Stripe made it");
    let reference = store.load_reference(ReferenceKind::Account, "seller-2").await.unwrap().unwrap();
    assert_eq!(reference.state, ReferenceState::Pending, "marked sent before the call, and still open");
    let (status, account) = api.create(body("seller-2")).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(api.stub.created_v2_accounts().len(), 1, "and only once");
    assert_eq!(account["account_id"].as_str(), Some(api.stub.created_v2_accounts()[0].id.as_str()));
    assert_eq!(
        (account["api"].as_str(), account["onboarding_status"].as_str()),
        (Some("v2"), Some("onboarding"))
    );
    assert_eq!(api.create_keys().len(), 1, "found by the look-up, not sent again");
    let looked = api.stub.received().iter().filter(|r| r.method == "GET" && r.path == CREATE_PATH).count();
    assert_eq!(looked, 1, "one list page");

    api.stub.inject(CREATE_PATH, Fault::ServerErrorBeforeCreate);
    let (status, _) = api.create(body("seller-3")).await;
    assert_eq!(status, 503);
    assert_eq!(api.stub.created_v2_accounts().len(), 1);
    let (status, account) = api.create(body("seller-3")).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(api.stub.created_v2_accounts().len(), 2);
    let keys = api.create_keys();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[1], keys[2], "after a 5xx, API v2 takes the same key again");
    assert_ne!(keys[0], keys[1], "each reference has its own key");
}

/// The create timed out and was still running at Stripe when the next call came: that one finds
/// nothing, and its same-key send is refused as in use rather than creating a second account.
async fn a_timed_out_v2_create_is_found_once_it_completes<S: AccountStore + Clone>(store: S) {
    let api = Api::with_timeout(store, "v2", Some(Duration::from_millis(200))).await;
    api.stub.inject(CREATE_PATH, Fault::Timeout);
    let (status, error) = api.create(body("seller-t")).await;
    assert_eq!((status, error["error"].as_str()), (503, Some("stripe_unavailable")), "{error}");
    let (status, _) = api.create(body("seller-t")).await;
    assert_eq!(status, 503, "the first is still running under the key");
    assert!(api.stub.created_v2_accounts().is_empty());
    assert_eq!(api.stub.release_held().await, 1);
    assert_eq!(api.stub.created_v2_accounts().len(), 1, "the held create finished");
    let (status, account) = api.create(body("seller-t")).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["account_id"].as_str(), Some(api.stub.created_v2_accounts()[0].id.as_str()));
    assert_eq!(api.stub.created_v2_accounts().len(), 1);
    let keys = api.create_keys();
    assert_eq!(keys.len(), 2, "the third call found it: {keys:?}");
    assert_eq!(keys[0], keys[1]);
}

async fn a_refused_v2_create_frees_the_reference<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone(), "v2").await;
    api.stub.inject(CREATE_PATH, Fault::BalanceInsufficient);
    let (status, error) = api.create(body("seller-4")).await;
    assert_eq!((status, error["error"].as_str()), (502, Some("stripe_refused")), "{error}");
    assert_eq!(error["code"], "balance_insufficient", "Stripe's code is passed through: {error}");
    let reference = store.load_reference(ReferenceKind::Account, "seller-4").await.unwrap().unwrap();
    assert_eq!(reference.state, ReferenceState::Refused);
    assert_eq!(api.call("GET", "/accounts", None).await.1["data"], json!([]), "nothing stored");
    // Corrected and sent again: the same reference goes through, under a fresh key.
    let mut corrected = body("seller-4");
    corrected["dashboard"] = json!("full");
    let (status, account) = api.create(corrected).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["reference"], "seller-4");
    let keys = api.create_keys();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
    assert_eq!(api.stub.created_v2_accounts()[0].body["dashboard"], "full");
}

/// What v2 cannot say is refused before the reference is claimed or Stripe is called.
async fn what_v2_cannot_map_is_refused_before_anything_is_claimed<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone(), "v2").await;
    let mut issuing = body("seller-5");
    issuing["capabilities"] = json!(["card_payments", "card_issuing"]);
    let mut collection = body("seller-5");
    collection["requirement_collection"] = json!("stripe");
    let mut no_email = body("seller-5");
    no_email.as_object_mut().unwrap().remove("email");
    for (bad, field) in
        [(issuing, "capabilities"), (collection, "requirement_collection"), (no_email, "email")]
    {
        let (status, error) = api.create(bad).await;
        assert_eq!(
            (status, error["error"].as_str(), error["field"].as_str()),
            (400, Some("invalid_request"), Some(field)),
            "{error}"
        );
    }
    assert!(api.stub.received().is_empty(), "no call to Stripe");
    assert!(store.load_reference(ReferenceKind::Account, "seller-5").await.unwrap().is_none());
    // Other v1 names map: us_bank_account_ach_payments is v2's ach_debit_payments.
    let mut ach = body("seller-5");
    ach["capabilities"] = json!(["us_bank_account_ach_payments"]);
    let (status, account) = api.create(ach).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(account["capabilities"], json!({"merchant.ach_debit_payments": "restricted"}));
}

/// Unset, `v1` is today's behaviour: `POST /v1/accounts`, `api: v1`.
async fn without_v2_accounts_are_created_on_v1<S: AccountStore + Clone>(store: S) {
    for setting in ["", "v1"] {
        let api = Api::new(store.clone(), setting).await;
        let (status, account) = api.create(body(&format!("seller-v1-{setting}"))).await;
        assert_eq!(status, 201, "{account}");
        assert_eq!(account["api"], "v1");
        assert_eq!((api.stub.created_accounts().len(), api.stub.created_v2_accounts().len()), (1, 0));
    }
}

on_both_stores!(
    a_v2_account_is_created_once_per_reference,
    an_ambiguous_v2_create_is_looked_up_before_anything_is_sent_again,
    a_timed_out_v2_create_is_found_once_it_completes,
    a_refused_v2_create_frees_the_reference,
    what_v2_cannot_map_is_refused_before_anything_is_claimed,
    without_v2_accounts_are_created_on_v1,
);

#[test]
fn a_bogus_accounts_api_is_refused_at_settings_time() {
    let read = |value: &str| {
        PlatformSettings::accounts_api_from_lookup(|name| (name == ACCOUNTS_API).then(|| value.to_owned()))
    };
    let error = read("bogus").unwrap_err();
    assert_eq!(error.to_string(), "CONNECT_FLOW_ACCOUNTS_API is invalid: must be v1 or v2 (unset means v1)");
    assert_eq!(PlatformSettings::accounts_api_from_lookup(|_| None), Ok(AccountsApi::V1));
    assert_eq!(read("v2"), Ok(AccountsApi::V2));
}

/// A v2 create with `reference` in its metadata, straight through the client.
async fn create_v2(stripe: &StripeClient, reference: &str, key: &str) -> Result<Value, StripeError> {
    let capabilities = vec!["merchant.card_payments".to_owned()];
    let metadata = [(REFERENCE_METADATA, reference)];
    let account = CreateV2Account {
        country: "US",
        email: Some("a@example.com"),
        dashboard: "none",
        fees_collector: Some("application"),
        losses_collector: Some("application"),
        capabilities: &capabilities,
        metadata: &metadata,
    };
    stripe.create_v2_account(&account, key).await
}

/// The stand-in's API v2 idempotency, through the client: a key that created returns the account,
/// a key whose call failed runs again (a 500 is not replayed), another body under a key is refused,
/// and a key past 30 days creates anew.
#[tokio::test]
async fn the_stub_keeps_api_v2_idempotency() {
    let stub = StripeStub::start().await;
    let stripe = StripeClient::new(stub.client_config()).unwrap();
    let first = create_v2(&stripe, "r-1", "key-1").await.unwrap();
    let again = create_v2(&stripe, "r-1", "key-1").await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["defaults"]["responsibilities"]["requirements_collector"], "application");
    assert_eq!(stub.created_v2_accounts().len(), 1);
    let other = create_v2(&stripe, "r-2", "key-1").await.unwrap_err();
    assert!(matches!(other, StripeError::IdempotencyMismatch { .. }), "{other:?}");

    stub.inject(CREATE_PATH, Fault::ServerErrorAfterCreate);
    let error = create_v2(&stripe, "r-3", "key-3").await.unwrap_err();
    assert_eq!(error.status(), Some(500));
    let completed = create_v2(&stripe, "r-3", "key-3").await.unwrap();
    assert_eq!(
        completed["id"].as_str(),
        Some(stub.created_v2_accounts()[1].id.as_str()),
        "not a replayed 500"
    );
    assert_eq!(stub.created_v2_accounts().len(), 2);

    stub.advance(V2_IDEMPOTENCY_KEY_TTL_SECS);
    let anew = create_v2(&stripe, "r-1", "key-1").await.unwrap();
    assert_ne!(anew["id"], first["id"], "a pruned key creates anew");
    assert_eq!(stub.created_v2_accounts().len(), 3);
}

/// The look-up pages through `GET /v2/core/accounts` newest first by `next_page_url`, and stops at
/// the first page wholly older than its bound.
#[tokio::test]
async fn the_v2_lookup_pages_newest_first_and_stops_at_its_bound() {
    let stub = StripeStub::start().await;
    let stripe = StripeClient::new(stub.client_config()).unwrap();
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(create_v2(&stripe, &format!("r-{n}"), &format!("key-{n}")).await.unwrap()["id"].clone());
        stub.advance(1);
    }
    let lists = |stub: &StripeStub| {
        stub.received()
            .iter()
            .filter(|request| request.method == "GET" && request.path == CREATE_PATH)
            .count()
    };
    // The oldest is on the second page of the stand-in's ten.
    match stripe.find_v2_account_by_reference("r-0", STUB_START_TIME).await.unwrap() {
        V2AccountLookup::Found(account) => {
            assert_eq!(account["id"], ids[0]);
            assert!(account["requirements"].is_object(), "retrieved with its includes: {account}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(lists(&stub), 2);
    let lookup = stripe.find_v2_account_by_reference("r-none", STUB_START_TIME).await.unwrap();
    assert_eq!((lookup, lists(&stub)), (V2AccountLookup::Absent, 4), "to the end of the list");
    let lookup = stripe.find_v2_account_by_reference("r-none", STUB_START_TIME + 20).await.unwrap();
    assert_eq!((lookup, lists(&stub)), (V2AccountLookup::Absent, 5), "every account is older than the bound");
}
