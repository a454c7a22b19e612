//! The platform API end to end, on both stores, against the stand-in Stripe: accounts created once
//! per reference whatever Stripe answers, onboarding links and their signed refresh route,
//! sessions and login links, money the platform asks for, listing and the change feed.

use std::sync::Arc;

use integration_tests::stripe_stub::{Fault, StripeStub};
use integration_tests::{RecordingQueue, TestClock, on_both_stores};
use serde_json::{Value, json};
use shared::domain::account::AccountId;
use shared::domain::reference::{ReferenceKind, ReferenceState};
use shared::domain::step::{StepKind, StepStatus};
use shared::platform::token::LinkSecret;
use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};
use shared::store::AccountStore;
use shared::stripe::client::StripeClient;
use shared::worker::{Disposition, StepWorker};

const START: i64 = 1_767_000_000;
const PUBLIC: &str = "https://flow.platform.example";

struct Api<S: AccountStore + Clone> {
    stub: StripeStub,
    clock: TestClock,
    queue: Arc<RecordingQueue>,
    api: PlatformApi<S, TestClock>,
}

impl<S: AccountStore + Clone> Api<S> {
    async fn new(store: S) -> Self {
        let stub = StripeStub::start().await;
        stub.set_now(START);
        let clock = TestClock::at(START);
        let stripe = StripeClient::new(stub.client_config()).unwrap();
        let settings = PlatformSettings {
            link_secret: LinkSecret::new("a-link-secret-for-these-tests"),
            public_url: Some(PUBLIC.to_owned()),
            expected_livemode: Some(false),
        };
        let queue = Arc::new(RecordingQueue::default());
        let api = PlatformApi::with_clock(store.clone(), Some(stripe), settings, clock.clone())
            .with_queue(Arc::clone(&queue) as Arc<dyn shared::store::StepQueue>);
        Self { stub, clock, queue, api }
    }

    async fn call(&self, method: &str, target: &str, body: Option<Value>) -> (u16, Value) {
        let reply = self.raw(method, target, body).await;
        let json = serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body.clone()));
        (reply.status, json)
    }

    async fn raw(&self, method: &str, target: &str, body: Option<Value>) -> shared::platform::ApiReply {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let request = ApiRequest { method, path, query, body: body.as_bytes(), base_url: "http://ignored" };
        self.api.handle(&request).await
    }

    /// Creates an account through the API and returns its id.
    async fn seller(&self, reference: &str, dashboard: &str) -> String {
        let (status, account) =
            self.call("POST", "/accounts", Some(account_body(reference, dashboard))).await;
        assert_eq!(status, 201, "{account}");
        account["account_id"].as_str().unwrap().to_owned()
    }

    /// Stripe reports the seller active (transfers active, manual payouts), through the webhook.
    async fn activate(&self, store: &S, seller: &str, event_id: &str) {
        let pipeline = shared::webhook::WebhookService::with_clock(
            store.clone(),
            &integration_tests::settings(),
            self.clock.clone(),
        );
        let event = integration_tests::account_updated(event_id, seller, self.clock_now() + 1, true, &[]);
        let (header, body) = integration_tests::signed(&event, self.clock_now());
        assert_eq!(pipeline.handle(Some(&header), &body).await.status, 200);
    }

    fn clock_now(&self) -> i64 {
        shared::clock::Clock::now_unix(&self.clock)
    }

    fn stripe_posts(&self) -> usize {
        self.stub.received().iter().filter(|request| request.method == "POST").count()
    }
}

fn account_body(reference: &str, dashboard: &str) -> Value {
    json!({
        "reference": reference, "country": "us", "email": "seller@example.com", "dashboard": dashboard,
        "fees_payer": "application", "losses_payer": "application",
        "requirement_collection": if dashboard == "none" { "application" } else { "stripe" },
        "capabilities": ["transfers", "card_payments"],
    })
}

async fn accounts_are_created_once_per_reference<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store).await;
    let (status, first) = api.call("POST", "/accounts", Some(account_body("seller-1", "express"))).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["reference"], "seller-1");
    assert_eq!(first["onboarding_status"], "onboarding");
    let created = api.stub.created_accounts();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, first["account_id"].as_str().unwrap());
    assert_eq!(
        (created[0].dashboard.as_str(), created[0].fees_payer.as_str(), created[0].losses_payments.as_str()),
        ("express", "application", "application")
    );
    assert_eq!(created[0].capabilities, ["card_payments", "transfers"]);
    assert_eq!(created[0].metadata.get("connect_flow_reference").map(String::as_str), Some("seller-1"));
    // Repeated, in any order of capabilities: the same account, and no call to Stripe.
    let posts = api.stripe_posts();
    let mut same = account_body("seller-1", "express");
    same["capabilities"] = json!(["card_payments", "transfers"]);
    let (status, again) = api.call("POST", "/accounts", Some(same)).await;
    assert_eq!((status, &again["account_id"]), (200, &first["account_id"]));
    assert_eq!(api.stripe_posts(), posts);
    // The same reference with other parameters: 409, nothing created, nothing changed.
    let (status, conflict) = api.call("POST", "/accounts", Some(account_body("seller-1", "full"))).await;
    assert_eq!((status, conflict["error"].as_str()), (409, Some("reference_conflict")));
    assert_eq!(api.stub.created_accounts().len(), 1);
    let (status, read) =
        api.call("GET", &format!("/accounts/{}", first["account_id"].as_str().unwrap()), None).await;
    assert_eq!((status, &read["reference"]), (200, &json!("seller-1")));
}

/// Stripe created the account but answered 500, and replays that 500 under the key: the next call
/// finds the account by its reference instead of creating a second one.
async fn an_ambiguous_create_is_looked_up_not_repeated<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store).await;
    api.stub.inject("/v1/accounts", Fault::ServerErrorAfterCreate);
    let (status, error) = api.call("POST", "/accounts", Some(account_body("seller-2", "express"))).await;
    assert_eq!((status, error["error"].as_str()), (503, Some("stripe_unavailable")), "{error}");
    assert_eq!(api.stub.created_accounts().len(), 1, "Stripe made it");
    let (status, account) = api.call("POST", "/accounts", Some(account_body("seller-2", "express"))).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(api.stub.created_accounts().len(), 1, "and only once");
    assert_eq!(account["account_id"].as_str(), Some(api.stub.created_accounts()[0].id.as_str()));
    // Nothing it created before the 500 answered: a fresh key, one create.
    api.stub.inject("/v1/accounts", Fault::ServerErrorBeforeCreate);
    let (status, _) = api.call("POST", "/accounts", Some(account_body("seller-3", "express"))).await;
    assert_eq!(status, 503);
    let (status, account) = api.call("POST", "/accounts", Some(account_body("seller-3", "express"))).await;
    assert_eq!(status, 201, "{account}");
    assert_eq!(api.stub.created_accounts().len(), 2);
    let keys: Vec<Option<String>> = api
        .stub
        .received()
        .into_iter()
        .filter(|request| request.method == "POST" && request.path == "/v1/accounts")
        .map(|request| request.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(Option::is_some), "every create carries a key");
    assert_ne!(keys[1], keys[2], "a 5xx moves the next create to a fresh key");
}

async fn a_refused_create_stores_nothing_and_frees_the_reference<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone()).await;
    // Any definite refusal (a 4xx Stripe caches under the key).
    api.stub.inject("/v1/accounts", Fault::BalanceInsufficient);
    let (status, error) = api.call("POST", "/accounts", Some(account_body("seller-4", "express"))).await;
    assert_eq!((status, error["error"].as_str()), (502, Some("stripe_refused")), "{error}");
    assert_eq!(error["code"], "balance_insufficient", "Stripe's code is passed through: {error}");
    let reference = store.load_reference(ReferenceKind::Account, "seller-4").await.unwrap().unwrap();
    assert_eq!(reference.state, ReferenceState::Refused);
    let page = api.call("GET", "/accounts", None).await.1;
    assert_eq!(page["data"], json!([]), "nothing stored as created");
    // Tried again, the same reference goes through, under a fresh key.
    let (status, account) = api.call("POST", "/accounts", Some(account_body("seller-4", "express"))).await;
    assert_eq!(status, 201, "{account}");
}

async fn onboarding_links_refresh_only_for_their_account<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store).await;
    let seller_a = api.seller("seller-a", "express").await;
    let seller_b = api.seller("seller-b", "express").await;
    let body = json!({"return_url": "https://platform.example/back", "collect": "eventually_due"});
    let (status, link) =
        api.call("POST", &format!("/accounts/{seller_a}/onboarding_link"), Some(body.clone())).await;
    assert_eq!(status, 200, "{link}");
    // Asked again a second later (a new token in the refresh URL), within the same minute.
    api.clock.advance(1);
    let (status, again) =
        api.call("POST", &format!("/accounts/{seller_a}/onboarding_link"), Some(body)).await;
    assert_eq!(status, 200, "{again}");
    api.clock.advance(-1);
    assert!(link["url"].as_str().unwrap().starts_with("https://connect.stripe.com/"));
    assert!(link["expires_at"].as_i64().unwrap() > START);
    let sent = api.stub.account_links();
    assert_eq!(
        (sent[0].account.as_str(), sent[0].collect.as_deref()),
        (seller_a.as_str(), Some("eventually_due"))
    );
    let refresh = sent[0].refresh_url.clone();
    let target = refresh.strip_prefix(PUBLIC).expect("the refresh URL is on the public URL");
    assert!(target.starts_with("/onboarding/refresh?token="));

    // The seller comes back after the link expired: a redirect to a fresh link, for the same account.
    api.clock.advance(600);
    let reply = api.raw("GET", target, None).await;
    assert_eq!(reply.status, 302, "{}", reply.body);
    let links = api.stub.account_links();
    assert_eq!(links.len(), 3);
    assert_eq!(reply.location.as_deref(), Some(links[2].url.as_str()));
    assert_eq!(
        (links[2].account.as_str(), links[2].return_url.as_str()),
        (seller_a.as_str(), "https://platform.example/back")
    );

    // Back on the refresh route ten seconds later (the link just handed out was used or reloaded):
    // another fresh link, not a replay of the single-use one.
    api.clock.advance(10);
    let again = api.raw("GET", target, None).await;
    assert_eq!(again.status, 302);
    assert_eq!(api.stub.account_links().len(), 4, "a new link, not Stripe's replay of the last");
    assert_ne!(again.location, reply.location);

    // A's token, its payload rewritten to name B, is refused without a Stripe call; so is garbage.
    let token = target.trim_start_matches("/onboarding/refresh?token=");
    let (payload, tag) = token.split_once('.').unwrap();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut grant: Value = serde_json::from_slice(&engine.decode(payload).unwrap()).unwrap();
    grant["a"] = json!(seller_b);
    let forged = format!("{}.{tag}", engine.encode(grant.to_string()));
    let posts = api.stripe_posts();
    for bad in [forged.as_str(), "", "not-a-token", &format!("{payload}.AAAA")] {
        let reply = api.raw("GET", &format!("/onboarding/refresh?token={bad}"), None).await;
        assert_eq!(reply.status, 403, "{bad}");
        assert!(reply.content_type.starts_with("text/plain"));
        assert!(reply.location.is_none());
    }
    assert_eq!(api.raw("GET", "/onboarding/refresh", None).await.status, 403);
    assert_eq!(api.stripe_posts(), posts, "no Stripe call for a bad token");
    assert!(api.stub.account_links().iter().all(|link| link.account == seller_a));

    // Seven days on, A's own token has expired.
    api.clock.advance(7 * 24 * 60 * 60);
    assert_eq!(api.raw("GET", target, None).await.status, 403);

    // Links for an unknown account, or with a bad return URL, are refused before Stripe.
    let body = json!({"return_url": "https://platform.example/back"});
    assert_eq!(api.call("POST", "/accounts/acct_1Unknown/onboarding_link", Some(body)).await.0, 404);
    let (status, error) = api
        .call(
            "POST",
            &format!("/accounts/{seller_a}/onboarding_link"),
            Some(json!({"return_url": "javascript:x"})),
        )
        .await;
    assert_eq!((status, error["field"].as_str()), (400, Some("return_url")));
    assert_eq!(api.stripe_posts(), posts);
}

async fn sessions_and_login_links<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone()).await;
    let express = api.seller("seller-e", "express").await;
    let full = api.seller("seller-f", "full").await;
    let components = json!({"components": {"account_onboarding": {"enabled": true},
                                            "payments": {"enabled": true, "features": {"refund_management": true}}}});
    let (status, session) = api.call("POST", &format!("/accounts/{express}/session"), Some(components)).await;
    assert_eq!(status, 200, "{session}");
    let secret = session["client_secret"].as_str().unwrap();
    assert_eq!(api.stub.account_sessions()[0].client_secret, secret);
    assert_eq!(
        api.stub.account_sessions()[0].components["payments"]["features"]["refund_management"],
        json!(true)
    );
    // The client secret is never stored.
    let stored =
        serde_json::to_string(&store.load_account(&AccountId::parse(&express).unwrap()).await.unwrap())
            .unwrap();
    assert!(!stored.contains(secret));
    for bad in [json!({}), json!({"components": {}}), json!({"components": {"payments": {"enabled": "yes"}}})]
    {
        let (status, error) = api.call("POST", &format!("/accounts/{express}/session"), Some(bad)).await;
        assert_eq!((status, error["field"].as_str()), (400, Some("components")), "{error}");
    }

    let (status, login) = api.call("POST", &format!("/accounts/{express}/login_link"), None).await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["url"].as_str(), Some(api.stub.login_links()[0].url.as_str()));
    // A second login link a few seconds on is a new one: they are single-use.
    api.clock.advance(5);
    let (_, second) = api.call("POST", &format!("/accounts/{express}/login_link"), None).await;
    assert_eq!(api.stub.login_links().len(), 2);
    assert_ne!(second["url"], login["url"]);
    let (status, error) = api.call("POST", &format!("/accounts/{full}/login_link"), None).await;
    assert_eq!((status, error["error"].as_str()), (409, Some("not_express")), "{error}");
    assert_eq!(api.call("POST", "/accounts/acct_1Unknown/login_link", None).await.0, 404);
}

async fn platform_transfers_are_validated_stored_and_queued_once<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone()).await;
    let seller = api.seller("seller-t", "express").await;
    api.activate(&store, &seller, "evt_active_t").await;
    api.stub.add_account(&seller, true, true);
    api.stub.set_platform_balance("usd", 100_000);
    let body = json!({"reference": "topup-1", "destination": seller, "amount": 2500, "currency": "USD",
                      "description": "weekly earnings"});
    let (status, step) = api.call("POST", "/transfers", Some(body.clone())).await;
    assert_eq!(status, 202, "{step}");
    assert_eq!((step["kind"].as_str(), step["status"].as_str()), (Some("transfer"), Some("queued")));
    assert_eq!((step["amount"].as_i64(), step["currency"].as_str()), (Some(2500), Some("usd")));
    assert_eq!(step["source_charge"], Value::Null);
    let queued = api.queue.take();
    assert_eq!(queued.len(), 1);
    // Repeated: the same step, 200; with other parameters: 409, nothing new stored.
    let (status, again) = api.call("POST", "/transfers", Some(body.clone())).await;
    assert_eq!((status, &again["step_id"]), (200, &step["step_id"]));
    let mut other = body.clone();
    other["amount"] = json!(2501);
    assert_eq!(api.call("POST", "/transfers", Some(other)).await.0, 409);
    let steps = api.call("GET", &format!("/accounts/{seller}/steps"), None).await.1;
    assert_eq!(steps.as_array().unwrap().len(), 1);

    // The worker runs it like any transfer: no source_transaction unless one was named.
    let worker = StepWorker::with_clock(
        store.clone(),
        StripeClient::new(api.stub.client_config()).unwrap(),
        api.clock.clone(),
    );
    assert!(matches!(worker.run(&queued[0]).await.unwrap(), Disposition::Done(_)));
    let transfers = api.stub.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!((transfers[0].amount, transfers[0].destination.as_str()), (2500, seller.as_str()));
    assert_eq!(transfers[0].source_transaction, None);
    let sent = api.stub.received().into_iter().find(|request| request.path == "/v1/transfers").unwrap();
    assert!(sent.form.contains(&("description".to_owned(), "weekly earnings".to_owned())), "{:?}", sent.form);
    let steps = api.call("GET", &format!("/accounts/{seller}/steps"), None).await.1;
    assert_eq!(steps[0]["status"], "succeeded");
    // A repeat after it ran still answers the one step, and sends nothing more.
    assert_eq!(api.call("POST", "/transfers", Some(body)).await.0, 200);
    assert!(worker.run(&queued[0]).await.is_ok());
    assert_eq!(api.stub.transfers().len(), 1);
}

async fn bad_money_requests_store_nothing<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone()).await;
    let seller = api.seller("seller-m", "express").await;
    let base = json!({"reference": "r-1", "destination": seller, "amount": 100, "currency": "usd"});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("amount", json!(0)), "amount"),
        (with("amount", json!(-100)), "amount"),
        (with("amount", json!(10.5)), "amount"),
        (with("amount", json!("100")), "amount"),
        (with("amount", json!(u64::MAX)), "amount"),
        (with("currency", json!("xyz")), "currency"),
        (with("reference", json!("has space")), "reference"),
        (with("destination", json!("not_an_account")), "destination"),
        (with("source_transaction", json!("pi_123")), "source_transaction"),
        (with("surprise", json!(1)), "body"),
    ];
    for (body, field) in cases {
        let (status, error) = api.call("POST", "/transfers", Some(body.clone())).await;
        assert_eq!((status, error["field"].as_str()), (400, Some(field)), "{body} -> {error}");
    }
    let huge = format!(
        r#"{{"reference":"r-2","destination":"{seller}","amount":92233720368547758080,"currency":"usd"}}"#
    );
    let request =
        ApiRequest { method: "POST", path: "/transfers", query: "", body: huge.as_bytes(), base_url: "" };
    assert_eq!(api.api.handle(&request).await.status, 400);
    let request =
        ApiRequest { method: "POST", path: "/transfers", query: "", body: b"{not json", base_url: "" };
    assert_eq!(api.api.handle(&request).await.status, 400);
    let (status, _) =
        api.call("POST", "/transfers", Some(with("destination", json!("acct_1NeverSeen")))).await;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            "POST",
            "/payouts",
            Some(json!({"reference": "p", "account": "acct_1NeverSeen", "amount": 5, "currency": "usd"})),
        )
        .await;
    assert_eq!(status, 404);
    let big = vec![b' '; shared::platform::MAX_BODY_BYTES + 1];
    let request = ApiRequest { method: "POST", path: "/transfers", query: "", body: &big, base_url: "" };
    assert_eq!(api.api.handle(&request).await.status, 413);
    assert_eq!(store.load_account_steps(&AccountId::parse(&seller).unwrap()).await.unwrap(), []);
    assert!(store.load_reference(ReferenceKind::Transfer, "r-1").await.unwrap().is_none());
    assert!(api.queue.take().is_empty());
}

async fn platform_payouts_run_for_manual_accounts_only<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone()).await;
    let seller = api.seller("seller-p", "express").await;
    // Stripe reports the account on manual payouts.
    let pipeline = shared::webhook::WebhookService::with_clock(
        store.clone(),
        &integration_tests::settings(),
        api.clock.clone(),
    );
    let event = integration_tests::manual_payout_account_updated("evt_manual", &seller, START + 1);
    let (header, body) = integration_tests::signed(&event, START);
    assert_eq!(pipeline.handle(Some(&header), &body).await.status, 200);
    api.clock.advance(5);
    let body = json!({"reference": "payout-1", "account": seller, "amount": 700, "currency": "usd", "method": "standard"});
    let (status, step) = api.call("POST", "/payouts", Some(body)).await;
    assert_eq!(status, 202, "{step}");
    assert_eq!(step["kind"], "payout");
    api.stub.add_account(&seller, true, true);
    api.stub.set_account_balance(&seller, "usd", 1_000);
    let worker = StepWorker::with_clock(
        store.clone(),
        StripeClient::new(api.stub.client_config()).unwrap(),
        api.clock.clone(),
    );
    let queued = api.queue.take();
    assert_eq!(queued[0].kind, StepKind::Payout);
    assert!(matches!(worker.run(&queued[0]).await.unwrap(), Disposition::Done(_)));
    let payouts = api.stub.payouts();
    assert_eq!((payouts.len(), payouts[0].amount), (1, 700));
    let received = api.stub.received();
    let sent = received
        .iter()
        .find(|request| request.path == "/v1/payouts")
        .unwrap_or_else(|| panic!("{received:?}"));
    assert!(sent.form.contains(&("method".to_owned(), "standard".to_owned())), "{:?}", sent.form);
    // An account Stripe pays out on a schedule gets no on-demand payout.
    let scheduled = api.seller("seller-s", "express").await;
    let mut event = integration_tests::account_updated("evt_sched", &scheduled, START + 2, true, &[]);
    event["data"]["object"]["settings"]["payouts"]["schedule"]["interval"] = json!("daily");
    let (header, body) = integration_tests::signed(&event, START);
    assert_eq!(pipeline.handle(Some(&header), &body).await.status, 200);
    let body = json!({"reference": "payout-2", "account": scheduled, "amount": 700, "currency": "usd"});
    let (status, error) = api.call("POST", "/payouts", Some(body)).await;
    assert_eq!((status, error["field"].as_str()), (400, Some("account")), "{error}");
}

async fn accounts_list_in_pages_and_the_feed_lists_every_change_in_order<S: AccountStore + Clone>(store: S) {
    let api = Api::new(store.clone()).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(api.seller(&format!("seller-{n}"), "express").await);
    }
    ids.sort();
    let (status, page) = api.call("GET", "/accounts?limit=2", None).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|a| a["account_id"].as_str().unwrap()).collect();
    assert_eq!((listed, page["has_more"].as_bool()), (vec![ids[0].as_str(), ids[1].as_str()], Some(true)));
    let (_, rest) = api.call("GET", &format!("/accounts?limit=2&starting_after={}", ids[1]), None).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["has_more"], false);
    let (_, onboarding) = api.call("GET", "/accounts?status=onboarding", None).await;
    assert_eq!(onboarding["data"].as_array().unwrap().len(), 3);
    for bad in
        ["/accounts?status=sleepy", "/accounts?limit=0", "/accounts?limit=101", "/accounts?starting_after=x"]
    {
        assert_eq!(api.call("GET", bad, None).await.0, 400, "{bad}");
    }

    // Something moves money too: a transfer step, queued then failed by the worker.
    api.activate(&store, &ids[0], "evt_active_0").await;
    api.stub.add_account(&ids[0], true, true);
    let body = json!({"reference": "t-1", "destination": ids[0], "amount": 10, "currency": "usd"});
    assert_eq!(api.call("POST", "/transfers", Some(body)).await.0, 202);
    let worker = StepWorker::with_clock(
        store.clone(),
        StripeClient::new(api.stub.client_config()).unwrap(),
        api.clock.clone(),
    );
    api.stub.inject("/v1/transfers", Fault::BalanceInsufficient);
    let queued = api.queue.take();
    let _ = worker.run(&queued[0]).await.unwrap();

    // Past the feed's settling time, everything is listed, oldest first, each change once.
    api.clock.advance(60);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let target = match &cursor {
            Some(cursor) => format!("/changes?limit=2&after={cursor}"),
            None => "/changes?limit=2".to_owned(),
        };
        let (status, page) = api.call("GET", &target, None).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap().clone();
        if data.is_empty() {
            assert_eq!(page["next"].as_str(), cursor.as_deref().or(Some("")));
            break;
        }
        assert!(data.len() <= 2);
        cursor = page["next"].as_str().map(str::to_owned);
        assert_eq!(cursor.as_deref(), data.last().unwrap()["cursor"].as_str());
        seen.extend(data);
    }
    let types: Vec<&str> = seen.iter().map(|change| change["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "account.onboarding_status_changed").count(), 4, "{types:?}");
    assert!(types.contains(&"account.capability_changed"), "{types:?}");
    let step_moves: Vec<(&Value, &Value)> = seen
        .iter()
        .filter(|change| change["type"] == "step.status_changed")
        .map(|change| (&change["data"]["from"], &change["data"]["to"]))
        .collect();
    assert_eq!(step_moves.first(), Some(&(&Value::Null, &json!("queued"))), "{step_moves:?}");
    assert!(
        step_moves.iter().any(|(_, to)| **to == json!("failed") || **to == json!("waiting")),
        "{step_moves:?}"
    );
    let cursors: Vec<&str> = seen.iter().map(|change| change["cursor"].as_str().unwrap()).collect();
    assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "strictly ordered: {cursors:?}");
    let ids: std::collections::BTreeSet<&str> =
        seen.iter().map(|change| change["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), seen.len(), "each change once");
    let serialized = serde_json::to_string(&seen).unwrap();
    assert!(!serialized.contains("seller@example.com"), "no personal data in the feed");
    assert_eq!(api.call("GET", "/changes?after=garbage", None).await.0, 400);
    assert_eq!(StepStatus::Queued.as_str(), "queued");
}

on_both_stores!(
    accounts_are_created_once_per_reference,
    an_ambiguous_create_is_looked_up_not_repeated,
    a_refused_create_stores_nothing_and_frees_the_reference,
    onboarding_links_refresh_only_for_their_account,
    sessions_and_login_links,
    platform_transfers_are_validated_stored_and_queued_once,
    bad_money_requests_store_nothing,
    platform_payouts_run_for_manual_accounts_only,
    accounts_list_in_pages_and_the_feed_lists_every_change_in_order,
);

/// On DynamoDB a change is listed only once every writer that could still be committing an
/// earlier one has given up: a consumer's cursor never passes a change still being written.
#[tokio::test]
async fn the_dynamodb_feed_waits_out_writers_still_committing() {
    let api = Api::new(integration_tests::dynamo_store().await).await;
    let _ = api.seller("seller-late", "express").await;
    let (_, fresh) = api.call("GET", "/changes", None).await;
    assert_eq!(fresh["data"], json!([]), "too fresh to list");
    api.clock.advance(shared::store::dynamodb::FEED_SETTLE_SECS + 1);
    let (_, settled) = api.call("GET", "/changes", None).await;
    assert_eq!(settled["data"].as_array().unwrap().len(), 1 + 2, "status and two capabilities");
}

/// Every platform route through the `platform-api` Lambda function's handler, from the envelopes
/// in `events/lambda/`, against the stand-in Stripe: what API Gateway hands the deployed function.
#[tokio::test]
async fn every_route_answers_through_the_lambda_function_from_its_envelope() {
    let store = integration_tests::sqlite_store();
    let api = Api::new(store.clone()).await;
    let invoke = |name: &'static str| {
        let api = &api;
        async move {
            let path =
                format!("{}/../events/lambda/apigw-v2.platform.{name}.json", env!("CARGO_MANIFEST_DIR"));
            let request = lambda_http::request::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let response = shared::platform::lambda::handle(&api.api, request).await.unwrap();
            let body = match response.body() {
                lambda_http::Body::Text(text) => text.clone(),
                _ => String::new(),
            };
            (response.status().as_u16(), serde_json::from_str::<Value>(&body).unwrap_or(Value::String(body)))
        }
    };
    let (status, account) = invoke("create-account").await;
    assert_eq!((status, account["account_id"].as_str()), (201, Some("acct_stub0000000001")), "{account}");
    assert_eq!(invoke("create-account").await.0, 200, "the same reference again");
    let (status, link) = invoke("onboarding-link").await;
    assert_eq!(status, 200, "{link}");
    // No public URL configured for the deployed function: the refresh link is on the API's own
    // domain, from the request's context.
    let api_without_public_url = PlatformApi::with_clock(
        store.clone(),
        Some(StripeClient::new(api.stub.client_config()).unwrap()),
        PlatformSettings {
            public_url: None,
            link_secret: LinkSecret::new("another-link-secret-1234"),
            expected_livemode: Some(false),
        },
        api.clock.clone(),
    );
    let path =
        format!("{}/../events/lambda/apigw-v2.platform.onboarding-link.json", env!("CARGO_MANIFEST_DIR"));
    let request = lambda_http::request::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        shared::platform::lambda::handle(&api_without_public_url, request).await.unwrap().status(),
        200
    );
    let refresh = api.stub.account_links().last().unwrap().refresh_url.clone();
    assert!(
        refresh
            .starts_with("https://c0nf10wapi.execute-api.us-east-1.amazonaws.com/onboarding/refresh?token="),
        "{refresh}"
    );

    let (status, session) = invoke("account-session").await;
    assert_eq!(status, 200, "{session}");
    assert!(session["client_secret"].as_str().unwrap().contains("_secret_"));
    let (status, login) = invoke("login-link").await;
    assert_eq!((status, login["url"].as_str().is_some()), (200, true), "{login}");
    let (status, steps) = invoke("get-steps").await;
    assert_eq!((status, steps), (200, json!([])));
    api.activate(&store, "acct_stub0000000001", "evt_lambda_manual").await;
    let (status, payout) = invoke("create-payout").await;
    assert_eq!((status, payout["kind"].as_str()), (202, Some("payout")), "{payout}");
    assert_eq!(invoke("healthz").await, (200, json!({"status": "ok"})));
    let (status, denied) = invoke("no-iam-identity").await;
    assert_eq!((status, denied["error"].as_str()), (401, Some("unauthenticated")));
}

/// A burst of the same call: however the calls interleave at the store and at Stripe, one account
/// is created, and every call that answers success names it.
async fn a_burst_of_one_account_call_creates_one_account<S: AccountStore + Clone>(store: S) {
    let api = Arc::new(Api::new(store).await);
    let calls = (0..8).map(|_| {
        let api = Arc::clone(&api);
        tokio::spawn(
            async move { api.call("POST", "/accounts", Some(account_body("burst", "express"))).await },
        )
    });
    let answers: Vec<(u16, Value)> = futures_join(calls).await;
    let created = api.stub.created_accounts();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (status, body) in &answers {
        match status {
            200 | 201 => assert_eq!(body["account_id"].as_str(), Some(created[0].id.as_str())),
            // Stripe's "key in use" while the first call was still at Stripe: retried later.
            503 => assert_eq!(body["error"], "stripe_unavailable"),
            other => panic!("{other}: {body}"),
        }
    }
    // Whatever each call answered, the next one names the one account.
    let (status, body) = api.call("POST", "/accounts", Some(account_body("burst", "express"))).await;
    assert_eq!((status, body["account_id"].as_str()), (200, Some(created[0].id.as_str())));
    assert_eq!(api.stub.created_accounts().len(), 1);
}

/// The same for money: one step, however many identical requests race.
async fn a_burst_of_one_transfer_call_stores_one_step<S: AccountStore + Clone>(store: S) {
    let api = Arc::new(Api::new(store.clone()).await);
    let seller = api.seller("seller-burst", "express").await;
    let body = json!({"reference": "burst-t", "destination": seller, "amount": 300, "currency": "usd"});
    let calls = (0..8).map(|_| {
        let (api, body) = (Arc::clone(&api), body.clone());
        tokio::spawn(async move { api.call("POST", "/transfers", Some(body)).await })
    });
    let answers = futures_join(calls).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(statuses.iter().filter(|status| **status == 202).count(), 1, "{answers:?}");
    assert!(statuses.iter().all(|status| *status == 202 || *status == 200), "{answers:?}");
    let ids: std::collections::BTreeSet<&str> =
        answers.iter().map(|(_, step)| step["step_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1);
    let steps = store.load_account_steps(&AccountId::parse(&seller).unwrap()).await.unwrap();
    assert_eq!(steps.len(), 1);
}

async fn futures_join<T: Send + 'static>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut answers = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        answers.push(task.await.unwrap());
    }
    answers
}

mod bursts {
    use super::*;
    on_both_stores!(
        a_burst_of_one_account_call_creates_one_account,
        a_burst_of_one_transfer_call_stores_one_step
    );
}
