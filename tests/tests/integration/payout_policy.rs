//! Payout policy for accounts on manual payouts (issue 12, part 3), each case on SQLite and on
//! DynamoDB (moto server): balance events through the webhook pipeline, the payout sweep on the
//! test clock, the payout worker against the stand-in Stripe, and `PUT /accounts/{id}/payout_policy`.

use std::collections::BTreeMap;
use std::sync::Arc;

use integration_tests::fund_events::fund_event;
use integration_tests::stripe_stub::{Fault, StripeStub};
use integration_tests::{
    NOW, RecordingQueue, RequestLog, TestClock, dynamo_store_logged, on_both_stores, settings, signed,
};
use serde_json::{Value, json};
use shared::clock::Clock;
use shared::domain::account::AccountId;
use shared::domain::payout::{DAY_SECS, PayoutMethod, PayoutPolicy, PayoutSchedule, PayoutSettings, Weekday};
use shared::domain::step::{Step, StepStatus};
use shared::metrics::{MemorySink, Metrics, MetricsSettings};
use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};
use shared::store::{AccountStore, EventOutcome};
use shared::stripe::client::StripeClient;
use shared::sweep::{PayoutSweepReport, sweep_payouts};
use shared::webhook::{Delivery, WebhookService};
use shared::worker::{Disposition, StepWorker};

const SELLER: &str = "acct_1PolicySeller";

/// Everything one account's payouts go through, on one store and one clock.
struct Payouts<S: AccountStore + Clone> {
    stub: StripeStub,
    store: S,
    clock: TestClock,
    settings: PayoutSettings,
    sink: MemorySink,
    service: WebhookService<S, TestClock>,
    worker: StepWorker<S, TestClock>,
    api: PlatformApi<S, TestClock>,
    queue: RecordingQueue,
}

impl<S: AccountStore + Clone> Payouts<S> {
    async fn start(store: S, policy: PayoutPolicy) -> Self {
        let payouts = PayoutSettings { policy, ..PayoutSettings::default() };
        let stub = StripeStub::start().await;
        stub.set_now(NOW);
        let clock = TestClock::at(NOW);
        let sink = MemorySink::default();
        let metrics_settings =
            MetricsSettings { namespace: "ConnectFlow/test".into(), function_name: "webhook-fn".into() };
        let service = WebhookService::with_clock(store.clone(), &settings(), clock.clone())
            .with_payout_settings(payouts.clone())
            .with_metrics(Metrics::to_sink(metrics_settings, Arc::new(sink.clone())));
        let client = StripeClient::new(stub.client_config()).expect("the client accepts the loopback stub");
        let platform = PlatformSettings { expected_livemode: Some(false), ..PlatformSettings::default() };
        Self {
            worker: StepWorker::with_clock(store.clone(), client, clock.clone()),
            api: PlatformApi::with_clock(store.clone(), None, platform, clock.clone())
                .with_payout_settings(payouts.clone()),
            service,
            stub,
            store,
            clock,
            settings: payouts,
            sink,
            queue: RecordingQueue::default(),
        }
    }

    fn now(&self) -> i64 {
        self.clock.now_unix()
    }

    /// Moves the pipeline's, the worker's and Stripe's clocks forward together.
    fn advance(&self, secs: i64) {
        self.clock.advance(secs);
        self.stub.advance(secs);
    }

    /// Moves every clock to `at`.
    fn advance_to(&self, at: i64) {
        self.advance(at - self.now());
    }

    async fn deliver(&self, event: &Value) -> Delivery {
        let (header, body) = signed(event, self.now());
        self.service.process(Some(&header), &body).await.expect("the pipeline records the event")
    }

    /// The seller on manual payouts, known to Stripe with payouts enabled and `usd` available.
    async fn onboard(&self, extra: Value) {
        let mut account = json!({
            "id": SELLER, "object": "account", "country": "FR", "details_submitted": true,
            "charges_enabled": true, "payouts_enabled": true,
            "requirements": {"currently_due": [], "eventually_due": [], "past_due": [],
                             "pending_verification": [], "disabled_reason": null},
            "capabilities": {"transfers": "active"},
            "settings": {"payouts": {"schedule": {"interval": "manual"}}}
        });
        if let (Some(account), Value::Object(extra)) = (account.as_object_mut(), extra) {
            account.extend(extra);
        }
        let event = fund_event("evt_onboard", "account.updated", NOW - 1000, Some(SELLER), account);
        assert_eq!(self.deliver(&event).await, Delivery::Recorded(EventOutcome::Applied));
        self.stub.add_account(SELLER, true, true);
        self.stub.set_account_balance(SELLER, "usd", 1_000_000);
    }

    /// `balance.available` now, with these `available[]` entries.
    async fn balance(&self, event_id: &str, available: Value) -> Delivery {
        let balance = json!({"object": "balance", "available": available, "pending": []});
        self.deliver(&fund_event(event_id, "balance.available", self.now(), Some(SELLER), balance)).await
    }

    async fn usd(&self, event_id: &str, amount: i64) -> Delivery {
        self.balance(event_id, json!([{"amount": amount, "currency": "usd"}])).await
    }

    async fn payouts(&self) -> Vec<Step> {
        self.store.load_payouts(&AccountId::parse(SELLER).unwrap()).await.unwrap()
    }

    /// Runs every open payout step, as the payout queue would.
    async fn run_payouts(&self) {
        for step in self.payouts().await.iter().filter(|step| !step.status.is_final()) {
            assert_eq!(
                self.worker.run(&step.reference()).await.unwrap(),
                Disposition::Done(StepStatus::Succeeded),
                "{step:?}"
            );
        }
    }

    /// What the stand-in paid out, in order.
    fn paid(&self) -> Vec<i64> {
        self.stub.payouts().iter().map(|payout| payout.amount).collect()
    }

    async fn sweep(&self) -> PayoutSweepReport {
        sweep_payouts(&self.store, &self.queue, self.now(), &self.settings, 500).await.unwrap()
    }

    /// The account as `GET /accounts/{id}` answers it.
    async fn account_json(&self) -> Value {
        let (status, account) = self.call("GET", &format!("/accounts/{SELLER}"), None).await;
        assert_eq!(status, 200, "{account}");
        account
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let request =
            ApiRequest { method, path, query: "", body: body.as_bytes(), base_url: "http://ignored" };
        let reply = self.api.handle(&request).await;
        (reply.status, serde_json::from_str(&reply.body).unwrap_or(Value::String(reply.body)))
    }
}

/// Funds younger than the hold are not paid; once old enough the sweep pays them (and only
/// them), with nothing else to trigger it.
async fn funds_younger_than_the_hold_are_paid_by_the_sweep_once_old_enough<S: AccountStore + Clone>(
    store: S,
) {
    let flow = Payouts::start(store, PayoutPolicy { hold_days: 7, ..PayoutPolicy::default() }).await;
    flow.onboard(json!({})).await;
    assert_eq!(flow.usd("evt_b1", 5000).await, Delivery::Recorded(EventOutcome::Applied));
    assert_eq!(flow.payouts().await, [], "nothing is old enough");
    let account = flow.account_json().await;
    assert_eq!(account["payout_funds"]["due_at"], json!(NOW + 7 * DAY_SECS), "{account}");
    assert_eq!(account["payout_policy"]["source"], "default");
    assert_eq!(account["payout_policy"]["hold_days"], 7);
    flow.advance(3 * DAY_SECS);
    flow.usd("evt_b2", 8000).await;
    flow.advance_to(NOW + 7 * DAY_SECS - 60);
    assert_eq!(flow.sweep().await, PayoutSweepReport::default(), "not due yet");
    flow.advance(60);
    let report = flow.sweep().await;
    assert_eq!((report.accounts_due, report.payouts_planned), (1, 1));
    let sent = flow.queue.take();
    assert_eq!(sent.len(), 1);
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [5000], "the 3000 of day 3 wait for their own hold");
    assert_eq!(flow.sweep().await, PayoutSweepReport::default());
    flow.advance(3 * DAY_SECS);
    assert_eq!(flow.sweep().await.payouts_planned, 1);
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [5000, 3000]);
    assert_eq!(
        flow.sweep().await,
        PayoutSweepReport::default(),
        "nothing left, and the account left the index"
    );
}

async fn nothing_is_paid_below_the_minimum<S: AccountStore + Clone>(store: S) {
    let minimum = BTreeMap::from([("usd".to_owned(), 1000)]);
    let flow = Payouts::start(store, PayoutPolicy { minimum, ..PayoutPolicy::default() }).await;
    flow.onboard(json!({})).await;
    flow.usd("evt_b1", 999).await;
    assert_eq!(flow.payouts().await, []);
    flow.advance(60);
    flow.usd("evt_b2", 1500).await;
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [1500]);
}

async fn a_daily_schedule_pays_at_most_once_per_utc_day<S: AccountStore + Clone>(store: S) {
    let flow =
        Payouts::start(store, PayoutPolicy { schedule: PayoutSchedule::Daily, ..PayoutPolicy::default() })
            .await;
    flow.onboard(json!({})).await;
    flow.usd("evt_b1", 5000).await;
    flow.run_payouts().await;
    flow.advance(3600);
    flow.usd("evt_b2", 2000).await;
    assert!(flow.payouts().await.iter().all(|step| step.status.is_final()), "one payout today");
    let midnight = (NOW / DAY_SECS + 1) * DAY_SECS;
    flow.advance_to(midnight - 1);
    assert_eq!(flow.sweep().await.payouts_planned, 0);
    flow.advance(1);
    assert_eq!(flow.sweep().await.payouts_planned, 1);
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [5000, 2000]);
}

async fn a_weekly_schedule_pays_only_on_its_weekday<S: AccountStore + Clone>(store: S) {
    assert_eq!(Weekday::of(NOW), Weekday::Sunday);
    let weekly =
        PayoutPolicy { schedule: PayoutSchedule::Weekly(Weekday::Tuesday), ..PayoutPolicy::default() };
    let flow = Payouts::start(store, weekly).await;
    flow.onboard(json!({})).await;
    flow.usd("evt_b1", 5000).await;
    let monday = (NOW / DAY_SECS + 1) * DAY_SECS;
    flow.advance_to(monday + 3600);
    flow.usd("evt_b2", 6000).await;
    assert_eq!(flow.payouts().await, [], "not on Sunday or Monday, by event or by sweep");
    assert_eq!(flow.sweep().await.payouts_planned, 0);
    flow.advance_to(monday + DAY_SECS + 60);
    assert_eq!(flow.sweep().await.payouts_planned, 1);
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [6000]);
}

/// A balance split by source type is paid per source type, each payout naming its `source_type`,
/// with distinct step ids.
async fn a_balance_split_by_source_type_is_paid_per_source_type<S: AccountStore + Clone>(store: S) {
    let flow = Payouts::start(store, PayoutPolicy::default()).await;
    flow.onboard(json!({})).await;
    let split =
        json!([{"amount": 9000, "currency": "usd", "source_types": {"card": 7000, "bank_account": 2000}}]);
    flow.balance("evt_b1", split).await;
    let ids: Vec<String> = flow.payouts().await.into_iter().map(|step| step.step_id.into()).collect();
    assert_eq!(ids, [format!("po:{SELLER}:evt_b1:usd:bank_account"), format!("po:{SELLER}:evt_b1:usd:card")]);
    flow.run_payouts().await;
    let mut sent: Vec<(i64, Option<String>)> =
        flow.stub.payouts().iter().map(|payout| (payout.amount, payout.source_type.clone())).collect();
    sent.sort();
    assert_eq!(sent, [(2000, Some("bank_account".into())), (7000, Some("card".into()))]);
}

fn instant_external_account(methods: &[&str]) -> Value {
    json!({"external_accounts": {"object": "list", "data": [{
        "id": "card_1Debit", "object": "card", "last4": "4242", "currency": "usd",
        "default_for_currency": true, "available_payout_methods": methods
    }]}})
}

/// The policy asks for instant: sent as instant where the external account supports it, and
/// when Stripe refuses it, sent again as standard under a fresh key, the reason kept.
async fn an_instant_payout_stripe_refuses_goes_as_standard<S: AccountStore + Clone>(store: S) {
    let instant = PayoutPolicy { method: PayoutMethod::Instant, ..PayoutPolicy::default() };
    let flow = Payouts::start(store, instant).await;
    flow.onboard(instant_external_account(&["standard", "instant"])).await;
    flow.stub.inject("/v1/payouts", Fault::InstantPayoutsUnsupported);
    flow.usd("evt_b1", 5000).await;
    let step = flow.payouts().await.remove(0);
    assert_eq!(step.payout.as_ref().unwrap().method.as_deref(), Some("instant"));
    flow.run_payouts().await;
    let posts: Vec<(Option<String>, Option<String>)> = flow
        .stub
        .received()
        .into_iter()
        .filter(|request| request.method == "POST" && request.path == "/v1/payouts")
        .map(|request| {
            let method =
                request.form.iter().find(|(name, _)| name == "method").map(|(_, value)| value.clone());
            (method, request.idempotency_key)
        })
        .collect();
    assert_eq!(
        posts,
        [
            (Some("instant".into()), Some(format!("connect-flow:{}:0", step.step_id))),
            (Some("standard".into()), Some(format!("connect-flow:{}:1", step.step_id))),
        ]
    );
    assert_eq!(flow.stub.payouts().len(), 1);
    assert_eq!(flow.stub.payouts()[0].method.as_deref(), Some("standard"));
    let done = flow.payouts().await.remove(0);
    assert_eq!(done.status, StepStatus::Succeeded);
    assert!(done.reason.as_deref().unwrap().contains("instant_payouts_unsupported"), "{done:?}");
    // Without the fault, the next one goes instant.
    flow.advance(60);
    flow.usd("evt_b2", 700).await;
    flow.run_payouts().await;
    assert_eq!(flow.stub.payouts()[1].method.as_deref(), Some("instant"));
}

async fn instant_is_not_asked_of_an_external_account_without_it<S: AccountStore + Clone>(store: S) {
    let instant = PayoutPolicy { method: PayoutMethod::Instant, ..PayoutPolicy::default() };
    let flow = Payouts::start(store, instant).await;
    flow.onboard(instant_external_account(&["standard"])).await;
    flow.usd("evt_b1", 5000).await;
    flow.run_payouts().await;
    assert_eq!(flow.stub.payouts()[0].method, None, "no method sent: standard");
}

/// Funds unpaid past 80% of Stripe's 90-day limit are warned about on the account, in the metric,
/// and by every sweep while they stand; a US account has two years.
async fn stale_funds_are_warned_on_the_account_and_in_the_metric<S: AccountStore + Clone>(store: S) {
    let minimum = BTreeMap::from([("usd".to_owned(), 1_000_000)]);
    let flow = Payouts::start(store, PayoutPolicy { minimum, ..PayoutPolicy::default() }).await;
    flow.onboard(json!({})).await;
    flow.usd("evt_b1", 5000).await;
    flow.advance(71 * DAY_SECS);
    assert_eq!(flow.sweep().await.stale_funds, 0);
    assert_eq!(flow.account_json().await["payout_funds"].get("warnings"), None);
    flow.advance(DAY_SECS);
    let report = flow.sweep().await;
    assert_eq!((report.accounts_due, report.stale_funds), (1, 1));
    let warnings = flow.account_json().await["payout_funds"]["warnings"].clone();
    assert_eq!(
        warnings,
        json!([{"currency": "usd", "amount": 5000, "since": NOW, "limit_days": 90, "warn_after_days": 72}])
    );
    assert_eq!(flow.sweep().await.stale_funds, 1, "every sweep counts it while it stands");
    // A balance event counts it too, in the webhook's metric.
    flow.usd("evt_b2", 5001).await;
    flow.service.metrics().flush();
    let stale: Vec<i64> = flow
        .sink
        .take()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok()?["PayoutFundsStale"].as_i64())
        .collect();
    assert_eq!(stale, [1]);
}

async fn a_us_account_has_two_years<S: AccountStore + Clone>(store: S) {
    let minimum = BTreeMap::from([("usd".to_owned(), 1_000_000)]);
    let flow = Payouts::start(store, PayoutPolicy { minimum, ..PayoutPolicy::default() }).await;
    flow.onboard(json!({"country": "US"})).await;
    flow.usd("evt_b1", 5000).await;
    assert_eq!(flow.account_json().await["payout_funds"]["due_at"], json!(NOW + 584 * DAY_SECS));
    flow.advance(100 * DAY_SECS);
    assert_eq!(flow.sweep().await, PayoutSweepReport::default());
}

/// Pays `amount`, then Stripe fails the payout and gives the funds back: the balance is up again.
async fn pay_and_fail<S: AccountStore + Clone>(flow: &Payouts<S>, amount: i64) {
    flow.usd("evt_b1", amount).await;
    flow.run_payouts().await;
    let step = flow.payouts().await.remove(0);
    let payout = json!({"id": step.stripe_id, "object": "payout", "amount": amount, "currency": "usd",
        "status": "failed", "failure_code": "account_closed", "metadata": {"connect_flow_step": step.step_id}});
    flow.advance(60);
    let failed = fund_event("evt_failed", "payout.failed", flow.now(), Some(SELLER), payout);
    assert_eq!(flow.deliver(&failed).await, Delivery::Recorded(EventOutcome::Applied));
    flow.advance(60);
    assert_eq!(flow.usd("evt_back", amount).await, Delivery::Recorded(EventOutcome::Applied));
    assert_eq!(flow.payouts().await.len(), 1, "the funds back are not paid again");
    flow.advance(DAY_SECS);
    assert_eq!(flow.sweep().await.payouts_planned, 0, "nor by the sweep");
}

async fn a_failed_payout_waits_for_a_changed_external_account<S: AccountStore + Clone>(store: S) {
    let flow = Payouts::start(store, PayoutPolicy::default()).await;
    flow.onboard(json!({})).await;
    pay_and_fail(&flow, 5000).await;
    let bank = json!({"id": "ba_1New", "object": "bank_account", "account": SELLER, "last4": "6789",
        "currency": "usd", "status": "new", "default_for_currency": true});
    let changed = fund_event("evt_bank", "account.external_account.created", flow.now(), Some(SELLER), bank);
    assert_eq!(flow.deliver(&changed).await, Delivery::Recorded(EventOutcome::Applied));
    assert_eq!(flow.sweep().await.payouts_planned, 1);
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [5000, 5000]);
}

async fn a_failed_payout_waits_for_the_policys_retry<S: AccountStore + Clone>(store: S) {
    let flow = Payouts::start(store, PayoutPolicy { retry_after_days: 2, ..PayoutPolicy::default() }).await;
    flow.onboard(json!({})).await;
    pay_and_fail(&flow, 5000).await;
    flow.advance(DAY_SECS);
    assert_eq!(flow.sweep().await.payouts_planned, 1, "two days after the failure");
    flow.run_payouts().await;
    assert_eq!(flow.paid(), [5000, 5000]);
}

/// The route stores the account's own policy (conditionally, once), shows it and the default
/// elsewhere, puts the change on the feed, and refuses bad input field by field.
async fn the_payout_policy_route_stores_shows_and_refuses<S: AccountStore + Clone>(store: S) {
    let flow = Payouts::start(store, PayoutPolicy { hold_days: 2, ..PayoutPolicy::default() }).await;
    flow.onboard(json!({})).await;
    let path = format!("/accounts/{SELLER}/payout_policy");
    let body =
        json!({"hold_days": 7, "minimum": {"usd": 1000}, "schedule": "weekly:friday", "method": "instant"});
    let (status, account) = flow.call("PUT", &path, Some(body.clone())).await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(
        account["payout_policy"],
        json!({"source": "account", "hold_days": 7, "minimum": {"usd": 1000}, "schedule": "weekly:friday",
               "method": "instant", "retry_after_days": 3})
    );
    assert_eq!(flow.account_json().await["payout_policy"], account["payout_policy"]);
    let version = flow.store.load_account(&AccountId::parse(SELLER).unwrap()).await.unwrap().unwrap().version;
    let (status, again) = flow.call("PUT", &path, Some(body)).await;
    assert_eq!((status, &again["payout_policy"]), (200, &account["payout_policy"]));
    let stored = flow.store.load_account(&AccountId::parse(SELLER).unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.version, version, "the same policy again writes nothing");
    flow.advance(60);
    let (_, changes) = flow.call("GET", "/changes", None).await;
    let changed: Vec<&Value> = changes["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|change| change["type"] == "account.payout_policy_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changes}");
    assert_eq!(
        (changed[0]["data"]["from"].clone(), changed[0]["data"]["to"]["hold_days"].clone()),
        (Value::Null, json!(7))
    );
    // The account's policy now applies: a 7-day hold, not the default's 2.
    flow.usd("evt_b1", 5000).await;
    assert_eq!(flow.account_json().await["payout_funds"]["due_at"], json!(flow.now() + 7 * DAY_SECS));

    for (body, field) in [
        (json!({"hold_days": 366}), "hold_days"),
        (json!({"hold_days": -1}), "hold_days"),
        (json!({"minimum": {"usd": -100}}), "minimum"),
        (json!({"minimum": {"usd": 10.5}}), "minimum"),
        (json!({"minimum": {"usd": "1000"}}), "minimum"),
        (json!({"minimum": {"zzz": 100}}), "minimum"),
        (json!({"schedule": "hourly"}), "schedule"),
        (json!({"schedule": "weekly:someday"}), "schedule"),
        (json!({"method": "express"}), "method"),
        (json!({"hold_days": 1, "holdays": 2}), "body"),
        (json!([1, 2]), "body"),
    ] {
        let (status, error) = flow.call("PUT", &path, Some(body.clone())).await;
        assert_eq!(
            (status, error["error"].as_str(), error["field"].as_str()),
            (400, Some("invalid_request"), Some(field)),
            "{body}: {error}"
        );
    }
    let (status, error) = flow.call("PUT", "/accounts/acct_1Unknown/payout_policy", Some(json!({}))).await;
    assert_eq!((status, error["error"].as_str()), (404, Some("not_found")));
    let (status, _) = flow.call("POST", &path, Some(json!({}))).await;
    assert_eq!(status, 405);
    let stored = flow.store.load_account(&AccountId::parse(SELLER).unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.payout_policy.unwrap().policy.hold_days, 7, "no refusal changed it");
}

/// The route through the `platform-api` function's handler from its envelope: with the HTTP
/// API's IAM identity it answers, without one it is refused before anything runs.
#[tokio::test]
async fn the_route_needs_an_iam_identity_on_lambda() {
    let store = integration_tests::sqlite_store();
    let api = PlatformApi::with_clock(store.clone(), None, PlatformSettings::default(), TestClock::at(NOW));
    let account =
        integration_tests::manual_payout_account_updated("evt_demo", "acct_1QcFlowDemo0001", NOW - 10);
    let pipeline = integration_tests::pipeline(store.clone());
    let (header, body) = signed(&account, NOW);
    assert_eq!(pipeline.handle(Some(&header), &body).await.status, 200);
    let path =
        format!("{}/../events/lambda/apigw-v2.platform.put-payout-policy.json", env!("CARGO_MANIFEST_DIR"));
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let answer = |envelope: Value| {
        let api = &api;
        async move {
            let request = lambda_http::request::from_str(&envelope.to_string()).unwrap();
            let response = shared::platform::lambda::handle(api, request).await.unwrap();
            let body = match response.body() {
                lambda_http::Body::Text(text) => text.clone(),
                _ => String::new(),
            };
            (response.status().as_u16(), serde_json::from_str::<Value>(&body).unwrap())
        }
    };
    let mut anonymous = envelope.clone();
    anonymous["requestContext"].as_object_mut().unwrap().remove("authorizer");
    let (status, refused) = answer(anonymous).await;
    assert_eq!((status, refused["error"].as_str()), (401, Some("unauthenticated")));
    let stored =
        store.load_account(&AccountId::parse("acct_1QcFlowDemo0001").unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.payout_policy, None);
    let (status, account) = answer(envelope).await;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["payout_policy"]["source"], "account");
    assert_eq!(account["payout_policy"]["schedule"], "weekly:friday");
}

/// `serve` with a token: the route wants the bearer token like every platform route.
#[tokio::test]
async fn the_route_needs_the_bearer_token_on_serve() {
    let store = integration_tests::sqlite_store();
    let pipeline = integration_tests::pipeline(store.clone());
    let account = integration_tests::manual_payout_account_updated("evt_serve", SELLER, NOW - 10);
    let (header, body) = signed(&account, NOW);
    assert_eq!(pipeline.handle(Some(&header), &body).await.status, 200);
    let platform = PlatformApi::new(store.clone(), None, PlatformSettings::default());
    let webhook = Arc::new(WebhookService::new(store, &settings()));
    let app = connect_flow::server::App::new(webhook, platform, Some("s3cret-token".to_owned()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(connect_flow::server::serve_app(listener, app, std::future::pending()));
    let url = format!("{base}/accounts/{SELLER}/payout_policy");
    let client = reqwest::Client::new();
    let body = json!({"hold_days": 3}).to_string();
    let unauthenticated = client.put(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    let wrong = client.put(&url).bearer_auth("wrong").body(body.clone()).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let answered = client.put(&url).bearer_auth("s3cret-token").body(body).send().await.unwrap();
    assert_eq!(answered.status().as_u16(), 200);
    let account: Value = serde_json::from_str(&answered.text().await.unwrap()).unwrap();
    assert_eq!(account["payout_policy"]["hold_days"], 3);
}

/// DynamoDB requests per balance event and per payout sweep (BENCHMARKS.md, "Payout policy").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_requests_per_balance_event_and_per_sweep() {
    const ACCOUNTS: usize = 20;
    let log = RequestLog::default();
    let store = dynamo_store_logged(log.clone()).await;
    let hold = PayoutPolicy { hold_days: 1, ..PayoutPolicy::default() };
    let settings = PayoutSettings { policy: hold.clone(), ..PayoutSettings::default() };
    let clock = TestClock::at(NOW);
    let service = WebhookService::with_clock(store.clone(), &integration_tests::settings(), clock.clone())
        .with_payout_settings(settings.clone());
    let deliver = |event: Value| {
        let service = &service;
        async move {
            let (header, body) = signed(&event, NOW);
            assert_eq!(service.handle(Some(&header), &body).await.status, 200);
        }
    };
    let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct_1Bench{i:04}")).collect();
    for (i, account) in accounts.iter().chain([&"acct_1BenchNow".to_owned()]).enumerate() {
        deliver(integration_tests::manual_payout_account_updated(&format!("evt_a{i}"), account, NOW - 100))
            .await;
    }
    log.take();
    let balance = |id: &str, account: &str, created: i64| {
        fund_event(
            id,
            "balance.available",
            created,
            Some(account),
            json!({"object": "balance", "available": [{"amount": 5000, "currency": "usd"}]}),
        )
    };
    deliver(balance("evt_held0", &accounts[0], NOW - 50)).await;
    let held = log.take();
    for (i, account) in accounts.iter().enumerate().skip(1) {
        deliver(balance(&format!("evt_held{i}"), account, NOW - 50)).await;
    }
    log.take();
    clock.advance(DAY_SECS);
    let queue = RecordingQueue::default();
    let report = sweep_payouts(&store, &queue, NOW + DAY_SECS, &settings, 500).await.unwrap();
    let swept = log.take();
    assert_eq!((report.accounts_due, report.payouts_planned), (ACCOUNTS, ACCOUNTS));
    let idle = sweep_payouts(&store, &queue, NOW + DAY_SECS + 900, &settings, 500).await.unwrap();
    let idle_requests = log.take();
    assert_eq!(idle, PayoutSweepReport::default());
    // Without a hold the event plans the payout itself.
    let paying = WebhookService::with_clock(store.clone(), &integration_tests::settings(), clock.clone());
    let (header, body) = signed(&balance("evt_paid", "acct_1BenchNow", NOW + DAY_SECS), clock.now_unix());
    assert_eq!(paying.handle(Some(&header), &body).await.status, 200);
    let paid = log.take();
    fn count(requests: &[String]) -> BTreeMap<&str, usize> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for request in requests {
            *counts.entry(request.as_str()).or_default() += 1;
        }
        counts
    }
    let account = store.load_account(&AccountId::parse(&accounts[1]).unwrap()).await.unwrap().unwrap();
    log.take();
    println!(
        "account state JSON bytes, funds planned by the sweep: {}",
        serde_json::to_string(&account).unwrap().len()
    );
    println!("balance event, funds held: {:?}", count(&held));
    println!("balance event, payout planned: {:?}", count(&paid));
    println!("sweep of {ACCOUNTS} due accounts: {:?}", count(&swept));
    println!("sweep with nothing due: {:?}", count(&idle_requests));
    assert_eq!(held, ["GetItem", "Query", "TransactWriteItems"]);
    assert_eq!(paid, ["GetItem", "Query", "TransactWriteItems"]);
    assert_eq!(
        count(&swept),
        BTreeMap::from([("Query", 1 + ACCOUNTS), ("TransactWriteItems", ACCOUNTS)]),
        "one index query, then per account one query of its payouts and one write"
    );
    assert_eq!(idle_requests, ["Query"], "nothing due: one index query");
}

on_both_stores!(
    funds_younger_than_the_hold_are_paid_by_the_sweep_once_old_enough,
    nothing_is_paid_below_the_minimum,
    a_daily_schedule_pays_at_most_once_per_utc_day,
    a_weekly_schedule_pays_only_on_its_weekday,
    a_balance_split_by_source_type_is_paid_per_source_type,
    an_instant_payout_stripe_refuses_goes_as_standard,
    instant_is_not_asked_of_an_external_account_without_it,
    stale_funds_are_warned_on_the_account_and_in_the_metric,
    a_us_account_has_two_years,
    a_failed_payout_waits_for_a_changed_external_account,
    a_failed_payout_waits_for_the_policys_retry,
    the_payout_policy_route_stores_shows_and_refuses,
);
