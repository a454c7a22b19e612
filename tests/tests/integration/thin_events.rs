//! Thin events end to end: a signed `v2.core.event` is recorded with its fetch step, the fetch
//! worker retrieves the object from the stand-in Stripe and applies it through the same decide
//! path as a snapshot event. On both stores.

use std::sync::Arc;

use integration_tests::stripe_stub::{Fault, StripeStub};
use integration_tests::{FetchRecorder, NOW, TestClock, on_both_stores, settings, signed};
use serde_json::{Value, json};
use shared::domain::account::{AccountId, AccountState, AccountsApi, OnboardingStatus};
use shared::domain::fetch::{FetchStatus, FetchTarget};
use shared::fetch::{FETCHED_SUFFIX, FetchDisposition, FetchWorker, MAX_FETCH_ATTEMPTS, Pacer};
use shared::store::{AccountStore, EventOutcome, EventRecord};
use shared::stripe::client::StripeClient;
use shared::webhook::WebhookService;

const V2: &str = "acct_1V2Seller";
const V1: &str = "acct_1V1Seller";

/// A webhook, a fetch worker and the stand-in Stripe on one store and one clock.
struct Rig<S> {
    webhook: WebhookService<S, TestClock>,
    fetcher: FetchWorker<S, TestClock>,
    fetches: Arc<FetchRecorder>,
    stub: StripeStub,
    clock: TestClock,
}

impl<S: AccountStore + Clone> Rig<S> {
    async fn new(store: S) -> Self {
        let clock = TestClock::at(NOW);
        let fetches = Arc::new(FetchRecorder::default());
        let stub = StripeStub::start().await;
        let webhook =
            WebhookService::with_clock(store.clone(), &settings(), clock.clone()).with_queue(fetches.clone());
        let applier =
            WebhookService::with_clock(store, &settings(), clock.clone()).with_queue(fetches.clone());
        let stripe = StripeClient::new(stub.client_config()).expect("client");
        // Fast enough for tests; the pacing itself is tested on its own below.
        let fetcher = FetchWorker::new(applier, stripe).with_pacer(Arc::new(Pacer::per_second(1_000)));
        Self { webhook, fetcher, fetches, stub, clock }
    }

    /// Delivers `event`, signed now, and returns the status and the answer's outcome.
    async fn deliver(&self, event: &Value) -> (u16, String) {
        let (header, body) = signed(event, shared::clock::Clock::now_unix(&self.clock));
        let reply = self.webhook.handle(Some(&header), &body).await;
        let answer: Value = serde_json::from_str(&reply.body).expect("JSON answer");
        (reply.status, answer["outcome"].as_str().unwrap_or_default().to_owned())
    }

    /// Runs every fetch queued so far, in the order given, and returns their dispositions.
    async fn run_fetches(&self) -> Vec<FetchDisposition> {
        let mut done = Vec::new();
        for fetch in self.fetches.take() {
            done.push(self.fetcher.run(&fetch).await.expect("the fetch runs"));
        }
        done
    }

    async fn account(&self, id: &str) -> AccountState {
        self.webhook
            .store()
            .load_account(&AccountId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} is stored"))
    }

    async fn record(&self, event_id: &str) -> EventRecord {
        self.webhook
            .store()
            .load_event(event_id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{event_id} is recorded"))
    }
}

/// An RFC 3339 timestamp, as API v2 writes them.
fn rfc3339(unix: i64) -> String {
    let seconds = unix.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}.000Z",
        shared::calendar::utc_date(unix),
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn thin(id: &str, event_type: &str, context: Option<&str>, related: Option<(&str, &str)>) -> Value {
    let related =
        related.map(|(id, object_type)| json!({"id": id, "type": object_type, "url": format!("/x/{id}")}));
    json!({"id": id, "object": "v2.core.event", "type": event_type, "created": rfc3339(NOW),
           "livemode": false, "context": context, "related_object": related})
}

fn v2_updated(id: &str) -> Value {
    thin(id, "v2.core.account.updated", None, Some((V2, "v2.core.account")))
}

fn capability(status: &str, code: Option<&str>) -> Value {
    let details: Vec<Value> =
        code.into_iter().map(|code| json!({"code": code, "resolution": "provide_info"})).collect();
    json!({"status": status, "status_details": details})
}

/// A v2 account with merchant card payments and recipient transfers in the given statuses.
fn v2_account(card: Value, transfers: Value, entries: Value) -> Value {
    json!({
        "id": V2, "object": "v2.core.account", "closed": false, "livemode": false,
        "configuration": {
            "merchant": {"capabilities": {"card_payments": card.clone(), "stripe_balance": {"payouts": card}}},
            "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": transfers}}},
            "customer": null
        },
        "requirements": {"entries": entries},
        "future_requirements": {"entries": []},
        "identity": {"country": "us"}, "defaults": {"currency": "usd"}
    })
}

fn due(description: &str) -> Value {
    json!([{"awaiting_action_from": "user", "description": description,
            "minimum_deadline": {"status": "currently_due"}, "impact": {"restricts_capabilities": []}}])
}

async fn a_v2_account_comes_out_as_a_v1_one_does<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    rig.stub.put_v2_account(
        V2,
        v2_account(capability("pending", None), capability("pending", None), due("Business URL")),
    );
    assert_eq!(rig.deliver(&v2_updated("evt_1Thin")).await, (200, "fetch_queued".to_owned()));
    let record = rig.record("evt_1Thin").await;
    let fetch = record.fetch.clone().expect("the fetch step is on the record");
    assert_eq!((fetch.target, fetch.status), (FetchTarget::V2Account, FetchStatus::Queued));
    assert_eq!(record.account_id.as_deref(), Some(V2));
    assert!(rig.stub.received().is_empty(), "the webhook never calls Stripe");

    assert_eq!(rig.run_fetches().await, [FetchDisposition::Done(EventOutcome::Applied)]);
    let account = rig.account(V2).await;
    assert_eq!(account.onboarding_status, OnboardingStatus::Onboarding);
    assert_eq!(account.api, AccountsApi::V2);
    assert_eq!(account.requirements.currently_due, ["Business URL"]);
    assert_eq!(
        (account.charges_enabled, account.payouts_enabled, account.details_submitted),
        (Some(false), Some(false), None)
    );
    let json = serde_json::to_value(&account).unwrap();
    assert_eq!(json["capabilities"]["recipient.stripe_balance.stripe_transfers"], "pending");
    assert_eq!(json["api"], "v2");
    assert_eq!(json["last_event_id"], "evt_1Thin");
    let record = rig.record("evt_1Thin").await;
    assert_eq!(
        (record.outcome, record.fetch.unwrap().status),
        (EventOutcome::Applied, FetchStatus::Succeeded)
    );

    let request = rig
        .stub
        .received()
        .into_iter()
        .find(|request| request.path == format!("/v2/core/accounts/{V2}"))
        .unwrap();
    let query = request.query.unwrap_or_default();
    for include in [
        "configuration.merchant",
        "configuration.recipient",
        "configuration.customer",
        "requirements",
        "identity",
    ] {
        assert!(query.contains(include), "include[] {include} in {query}");
    }

    // Onboarding done at Stripe: the next thin event's fetch reads it.
    rig.clock.advance(60);
    rig.stub
        .put_v2_account(V2, v2_account(capability("active", None), capability("active", None), json!([])));
    assert_eq!(rig.deliver(&v2_updated("evt_2Thin")).await.1, "fetch_queued");
    rig.run_fetches().await;
    let account = rig.account(V2).await;
    assert_eq!(account.onboarding_status, OnboardingStatus::Active);
    assert!(account.can_receive_transfers());
}

async fn redeliveries_are_duplicates_and_requeue_only_an_unfinished_fetch<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    rig.stub
        .put_v2_account(V2, v2_account(capability("active", None), capability("active", None), json!([])));
    rig.deliver(&v2_updated("evt_1Thin")).await;
    assert_eq!(rig.fetches.take().len(), 1);
    // The first delivery's queue send may have failed: Stripe's retry queues it again.
    assert_eq!(rig.deliver(&v2_updated("evt_1Thin")).await, (200, "duplicate".to_owned()));
    let again = rig.fetches.take();
    assert_eq!(again.len(), 1, "a still-queued fetch is queued again");
    for _ in 0..2 {
        rig.fetcher.run(&again[0]).await.unwrap();
    }
    assert_eq!(
        rig.stub.requests().get(&format!("/v2/core/accounts/{V2}")),
        Some(&1),
        "a finished fetch is not repeated"
    );
    assert_eq!(rig.deliver(&v2_updated("evt_1Thin")).await.1, "duplicate");
    assert!(rig.fetches.take().is_empty(), "a finished fetch is not queued again");
}

async fn fetches_finishing_out_of_order_never_regress<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    rig.deliver(&v2_updated("evt_1Old")).await;
    rig.deliver(&v2_updated("evt_2New")).await;
    let fetches = rig.fetches.take();
    // The second event's fetch leaves at NOW + 20 and sees the account active...
    rig.clock.advance(20);
    rig.stub
        .put_v2_account(V2, v2_account(capability("active", None), capability("active", None), json!([])));
    rig.fetcher.run(&fetches[1]).await.unwrap();
    // ...the first one's left earlier, at NOW + 10, and is answered later with what was current
    // then: it must not overwrite the newer read.
    rig.clock.advance(-10);
    rig.stub.put_v2_account(
        V2,
        v2_account(capability("pending", None), capability("pending", None), due("Tax ID")),
    );
    assert_eq!(rig.fetcher.run(&fetches[0]).await.unwrap(), FetchDisposition::Done(EventOutcome::Stale));
    assert_eq!(rig.account(V2).await.onboarding_status, OnboardingStatus::Active);
    // A snapshot-twin read is ordered against snapshot events too: one older than the fetch is
    // stale, one newer applies.
    let v1 = |id: &str, created: i64, charges: bool| {
        integration_tests::account_updated(id, V1, created, charges, &[])
    };
    rig.stub.put_object(None, &format!("/v1/accounts/{V1}"), v1("x", 0, true)["data"]["object"].clone());
    rig.clock.advance(30); // NOW + 40
    rig.deliver(&thin("evt_3V1", "v1.account.updated", Some(V1), Some((V1, "account")))).await;
    rig.run_fetches().await;
    assert_eq!(rig.deliver(&v1("evt_4Older", NOW + 39, false)).await.1, "stale");
    assert_eq!(rig.account(V1).await.charges_enabled, Some(true));
    assert_eq!(rig.deliver(&v1("evt_5Newer", NOW + 41, false)).await.1, "applied");
    assert_eq!(rig.account(V1).await.charges_enabled, Some(false));
}

async fn deleted_and_disconnected_accounts_are_outcomes_not_retries<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    rig.stub
        .put_v2_account(V2, v2_account(capability("active", None), capability("active", None), json!([])));
    rig.stub.delete_account(V2);
    rig.deliver(&v2_updated("evt_1Gone")).await;
    assert_eq!(rig.run_fetches().await, [FetchDisposition::Done(EventOutcome::NoAccount)]);
    let record = rig.record("evt_1Gone").await;
    assert!(record.reason.as_deref().unwrap().contains("deleted"), "{:?}", record.reason);

    rig.stub.add_account(V1, true, true);
    rig.stub.revoke_account_access(V1);
    rig.deliver(&thin("evt_2Revoked", "v1.account.updated", Some(V1), Some((V1, "account")))).await;
    assert_eq!(rig.run_fetches().await, [FetchDisposition::Done(EventOutcome::NoAccount)]);
    assert!(rig.record("evt_2Revoked").await.reason.unwrap().contains("no longer"));
    assert!(rig.webhook.store().load_account(&AccountId::parse(V1).unwrap()).await.unwrap().is_none());
}

async fn rate_limits_are_waited_out_and_failures_end_in_the_record<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    rig.stub
        .put_v2_account(V2, v2_account(capability("active", None), capability("active", None), json!([])));
    let path = format!("/v2/core/accounts/{V2}");
    rig.stub.inject_get(&path, Fault::RateLimitedFor(0));
    rig.stub.inject_get(&path, Fault::RateLimitedFor(0));
    rig.deliver(&v2_updated("evt_1Limited")).await;
    assert_eq!(
        rig.run_fetches().await,
        [FetchDisposition::Done(EventOutcome::Applied)],
        "429s retried in the same run"
    );
    assert_eq!(rig.stub.requests().get(&path), Some(&3));

    // Stripe keeps failing: each run is an attempt, and the last one ends the step `failed`.
    rig.deliver(&v2_updated("evt_2Failing")).await;
    let fetch = rig.fetches.take().pop().unwrap();
    for attempt in 1..=MAX_FETCH_ATTEMPTS {
        rig.stub.inject_get(&path, Fault::ServerErrorBeforeCreate);
        let disposition = rig.fetcher.run(&fetch).await.unwrap();
        if attempt < MAX_FETCH_ATTEMPTS {
            assert!(
                matches!(disposition, FetchDisposition::RetryLater(_)),
                "attempt {attempt}: {disposition:?}"
            );
            assert_eq!(rig.record("evt_2Failing").await.fetch.unwrap().attempts, attempt);
        } else {
            assert_eq!(disposition, FetchDisposition::Done(EventOutcome::FetchFailed));
        }
    }
    let record = rig.record("evt_2Failing").await;
    assert_eq!(
        (record.outcome, record.fetch.unwrap().status),
        (EventOutcome::FetchFailed, FetchStatus::Failed)
    );
    assert!(record.reason.unwrap().contains("after 5 attempts"));
}

async fn v1_thin_events_are_handled_like_their_snapshot_twins<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    let account =
        integration_tests::account_updated("x", V1, 0, true, &["external_account"])["data"]["object"].clone();
    rig.stub.put_object(None, &format!("/v1/accounts/{V1}"), account);
    rig.stub.put_object(
        None,
        &format!("/v1/accounts/{V1}/capabilities/card_payments"),
        json!({"id": "card_payments", "object": "capability", "account": V1, "status": "active"}),
    );
    rig.stub.put_object(
        None,
        &format!("/v1/accounts/{V1}/persons/person_1"),
        json!({"id": "person_1", "object": "person", "account": V1, "requirements": {"currently_due": ["id_number"]}}),
    );
    rig.stub.put_object(
        None,
        &format!("/v1/accounts/{V1}/external_accounts/ba_1"),
        json!({"id": "ba_1", "object": "bank_account", "account": V1, "last4": "6789", "currency": "usd", "status": "new"}),
    );
    for (id, event_type, related) in [
        ("evt_1", "v1.account.updated", (V1, "account")),
        ("evt_2", "v1.capability.updated", ("card_payments", "capability")),
        ("evt_3", "v1.person.updated", ("person_1", "person")),
        ("evt_4", "v1.account.external_account.created", ("ba_1", "bank_account")),
    ] {
        assert_eq!(
            rig.deliver(&thin(id, event_type, Some(V1), Some(related))).await.1,
            "fetch_queued",
            "{event_type}"
        );
    }
    assert_eq!(rig.run_fetches().await, vec![FetchDisposition::Done(EventOutcome::Applied); 4]);
    let stored = rig.account(V1).await;
    assert_eq!(stored.onboarding_status, OnboardingStatus::ActionRequired);
    assert_eq!(stored.capabilities.get("card_payments").map(String::as_str), Some("active"));
    assert_eq!(stored.persons["person_1"].requirements.currently_due, ["id_number"]);
    assert_eq!(stored.external_accounts["ba_1"].last4.as_deref(), Some("6789"));
    let path_of = |request: &integration_tests::stripe_stub::ReceivedRequest| request.path.clone();
    let paths: Vec<String> = rig.stub.received().iter().map(path_of).collect();
    assert!(paths.contains(&format!("/v1/accounts/{V1}/persons/person_1")), "{paths:?}");
    // Deletions need no fetch: applied straight from the event.
    rig.clock.advance(5);
    rig.deliver(&thin(
        "evt_5",
        "v1.account.external_account.deleted",
        Some(V1),
        Some(("ba_1", "bank_account")),
    ))
    .await;
    rig.run_fetches().await;
    assert!(!rig.account(V1).await.external_accounts.contains_key("ba_1"));
    assert_eq!(
        rig.record(&format!("evt_5{FETCHED_SUFFIX}")).await.outcome,
        EventOutcome::Applied,
        "the twin's own record"
    );
}

async fn a_balance_plans_payouts_as_balance_available_does<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    // A manual-payout account, known from its snapshot event.
    rig.deliver(&integration_tests::manual_payout_account_updated("evt_0Account", V1, NOW - 60)).await;
    rig.stub.put_object(
        Some(V1),
        "/v1/balance",
        json!({"object": "balance", "livemode": false, "available": [{"amount": 4_000, "currency": "usd"}], "pending": []}),
    );
    assert_eq!(
        rig.deliver(&thin("evt_1Balance", "v1.balance.available", Some(V1), None)).await.1,
        "fetch_queued"
    );
    assert_eq!(rig.run_fetches().await, [FetchDisposition::Done(EventOutcome::Applied)]);
    let payouts = rig.webhook.store().load_payouts(&AccountId::parse(V1).unwrap()).await.unwrap();
    assert_eq!(
        payouts.iter().map(|step| (step.amount, step.currency.as_str())).collect::<Vec<_>>(),
        [(4_000, "usd")]
    );
    let balance_read = rig.stub.received().into_iter().find(|request| request.path == "/v1/balance").unwrap();
    assert_eq!(balance_read.stripe_account.as_deref(), Some(V1), "the account's balance, not the platform's");
}

async fn closed_accounts_read_as_deauthorized_and_returned_links_only_fetch<S: AccountStore + Clone>(
    store: S,
) {
    let rig = Rig::new(store).await;
    rig.stub.put_v2_account(
        V2,
        v2_account(capability("pending", None), capability("pending", None), due("Business URL")),
    );
    // The link's return names no related object: the event's data says which account it was.
    let returned = thin("evt_1Returned", "v2.core.account_link.returned", None, None);
    let mut fetched_event = returned.clone();
    fetched_event["data"] =
        json!({"account_id": V2, "configurations": ["recipient"], "use_case": "account_onboarding"});
    rig.stub.put_thin_event(fetched_event);
    assert_eq!(rig.deliver(&returned).await.1, "fetch_queued");
    rig.run_fetches().await;
    assert_eq!(
        rig.account(V2).await.onboarding_status,
        OnboardingStatus::Onboarding,
        "a return is not completion"
    );

    rig.clock.advance(10);
    let mut closed = v2_account(capability("active", None), capability("active", None), json!([]));
    closed["closed"] = json!(true);
    rig.stub.put_v2_account(V2, closed);
    rig.deliver(&thin("evt_2Closed", "v2.core.account.closed", None, Some((V2, "v2.core.account")))).await;
    rig.run_fetches().await;
    let account = rig.account(V2).await;
    assert_eq!(account.onboarding_status, OnboardingStatus::Deauthorized);
    assert!(!account.can_receive_transfers());
}

async fn thin_events_naming_nothing_handled_are_recorded_not_fetched<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store).await;
    let ping = json!({"id": "evt_1Ping", "object": "v2.core.event", "type": "v2.core.event_destination.ping",
                      "created": "2024-03-07T18:27:56.000Z", "livemode": true});
    assert_eq!(rig.deliver(&ping).await, (200, "unhandled".to_owned()));
    let meter = json!({"id": "evt_2Meter", "object": "v2.core.event", "type": "v1.billing.meter.no_meter_found",
                       "livemode": false, "created": "2022-02-15T00:27:45.330Z", "context": null});
    assert_eq!(rig.deliver(&meter).await, (200, "unhandled".to_owned()));
    let nobody = thin("evt_3Nobody", "v2.core.account.updated", None, None);
    assert_eq!(rig.deliver(&nobody).await, (200, "no_account".to_owned()));
    let untyped =
        json!({"id": "evt_4Untyped", "object": "v2.core.event", "related_object": 7, "context": {"x": 1}});
    assert_eq!(rig.deliver(&untyped).await, (200, "unhandled".to_owned()));
    assert!(rig.fetches.take().is_empty());
    assert_eq!(rig.record("evt_3Nobody").await.outcome, EventOutcome::NoAccount);
    let future = json!({"id": "evt_5Future", "object": "v2.core.event", "type": "v2.core.account.updated",
                        "created": rfc3339(NOW + 3_600), "related_object": {"id": V2, "type": "v2.core.account"}});
    assert_eq!(rig.deliver(&future).await, (200, "refused".to_owned()));
    assert!(rig.fetches.take().is_empty());
}

on_both_stores!(
    a_v2_account_comes_out_as_a_v1_one_does,
    redeliveries_are_duplicates_and_requeue_only_an_unfinished_fetch,
    fetches_finishing_out_of_order_never_regress,
    deleted_and_disconnected_accounts_are_outcomes_not_retries,
    rate_limits_are_waited_out_and_failures_end_in_the_record,
    v1_thin_events_are_handled_like_their_snapshot_twins,
    a_balance_plans_payouts_as_balance_available_does,
    closed_accounts_read_as_deauthorized_and_returned_links_only_fetch,
    thin_events_naming_nothing_handled_are_recorded_not_fetched,
    a_payout_thin_event_settles_the_payout_on_its_account,
);

#[tokio::test]
async fn the_pacer_spaces_requests_at_its_rate() {
    let pacer = Pacer::per_second(200);
    let started = std::time::Instant::now();
    for _ in 0..21 {
        pacer.wait().await;
    }
    // The first goes at once; the next twenty wait 5 ms each, at the least.
    assert!(started.elapsed() >= std::time::Duration::from_millis(100), "{:?}", started.elapsed());
}

#[test]
fn backoff_honours_retry_after_grows_and_is_jittered() {
    use shared::fetch::backoff;
    use std::time::Duration;
    assert!(backoff(0, Some(Duration::from_secs(3)), 1) >= Duration::from_secs(3));
    assert!(backoff(2, None, 1) >= Duration::from_secs(1), "250 ms doubled twice");
    assert!(backoff(0, None, 1) < Duration::from_millis(375), "the base plus at most half of it");
    let spread: std::collections::BTreeSet<Duration> = (0..50).map(|seed| backoff(0, None, seed)).collect();
    assert!(spread.len() > 10, "jitter spreads retries: {spread:?}");
}

/// Every sample in events/thin/ is answered as its README says, on the embedded store.
#[tokio::test]
async fn the_thin_samples_get_their_documented_answers() {
    let rig = Rig::new(integration_tests::sqlite_store()).await;
    let dir = format!("{}/../events/thin", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for (file, answer) in [
        ("v2.core.account.updated.json", "fetch_queued"),
        ("v2.core.account.requirements.updated.json", "fetch_queued"),
        ("v2.core.account_link.returned.json", "fetch_queued"),
        ("v2.core.account.closed.json", "fetch_queued"),
        ("v1.account.updated.json", "fetch_queued"),
        ("v1.payout.paid.json", "fetch_queued"),
        ("v2.core.event_destination.ping.json", "unhandled"),
    ] {
        let sample: Value = serde_json::from_slice(&std::fs::read(format!("{dir}/{file}")).unwrap()).unwrap();
        // Dated now, so that the samples' fixed dates are neither stale nor ahead of the clock.
        let mut sample = sample;
        sample["created"] = json!(rfc3339(NOW));
        assert_eq!(rig.deliver(&sample).await, (200, answer.to_owned()), "{file}");
        seen += 1;
    }
    let files = std::fs::read_dir(&dir).unwrap().filter(|entry| {
        entry.as_ref().unwrap().path().extension().is_some_and(|extension| extension == "json")
    });
    assert_eq!(files.count(), seen, "every sample is checked");
    assert_eq!(rig.fetches.take().len(), 6);
}

/// A thin `v1.payout.failed` is fetched on the paying account and settles Connect Flow's own payout
/// as `payout.failed` does: the failure shows on the account.
async fn a_payout_thin_event_settles_the_payout_on_its_account<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store.clone()).await;
    rig.deliver(&integration_tests::manual_payout_account_updated("evt_0Account", V1, NOW - 60)).await;
    rig.stub.add_account(V1, true, true);
    rig.stub.set_account_balance(V1, "usd", 4_000);
    rig.stub.put_object(
        Some(V1),
        "/v1/balance",
        json!({"object": "balance", "available": [{"amount": 4_000, "currency": "usd"}], "pending": []}),
    );
    rig.deliver(&thin("evt_1Balance", "v1.balance.available", Some(V1), None)).await;
    rig.run_fetches().await;
    let planned =
        store.load_payouts(&AccountId::parse(V1).unwrap()).await.unwrap().pop().expect("a payout step");
    let worker = shared::worker::StepWorker::with_clock(
        store.clone(),
        StripeClient::new(rig.stub.client_config()).unwrap(),
        rig.clock.clone(),
    );
    worker.run(&planned.reference()).await.unwrap();
    let paid_out = rig.stub.payouts().pop().expect("the worker created the payout");
    // The bank refused it since: Stripe's payout now says so, and only says so.
    let metadata: serde_json::Map<String, Value> =
        paid_out.metadata.iter().map(|(key, value)| (key.clone(), json!(value))).collect();
    rig.stub.put_object(
        Some(V1),
        &format!("/v1/payouts/{}", paid_out.id),
        json!({"id": paid_out.id, "object": "payout", "amount": paid_out.amount, "currency": paid_out.currency,
               "status": "failed", "failure_code": "account_closed", "metadata": metadata}),
    );
    rig.clock.advance(60);
    let event = thin("evt_2Failed", "v1.payout.failed", Some(V1), Some((paid_out.id.as_str(), "payout")));
    assert_eq!(rig.deliver(&event).await.1, "fetch_queued");
    assert_eq!(rig.run_fetches().await, [FetchDisposition::Done(EventOutcome::Applied)]);
    let failure = rig.account(V1).await.payout_failure.expect("the failure is on the account");
    assert_eq!(
        (failure.payout_id.as_str(), failure.failure_code.as_str()),
        (paid_out.id.as_str(), "account_closed")
    );
    let read = rig
        .stub
        .received()
        .into_iter()
        .find(|request| request.path == format!("/v1/payouts/{}", paid_out.id));
    assert_eq!(
        read.and_then(|request| request.stripe_account).as_deref(),
        Some(V1),
        "read on the paying account"
    );
}
