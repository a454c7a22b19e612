//! The reconciler against a scripted Stripe ([`StripeReads`]), no HTTP: a missed event is
//! replayed once, a refused list applies nothing.

use std::sync::Mutex;

use serde_json::{Value, json};

use super::*;
use crate::clock::FixedClock;
use crate::config::WebhookSettings;
use crate::domain::account::{OnboardingStatus, onboarding_status};
use crate::store::sqlite::SqliteStore;

const NOW: i64 = 1_750_000_000;
const SELLER: &str = "acct_1ScriptedSeller2";

struct Scripted {
    platform_events: Vec<Value>,
    refuse_platform_list: bool,
    requests: Mutex<Vec<String>>,
}

impl Scripted {
    fn seen(&self, request: &str) {
        self.requests.lock().unwrap().push(request.to_owned());
    }
}

fn page(data: Vec<Value>) -> ListPage {
    ListPage { data, next: None }
}

impl StripeReads for Scripted {
    async fn list_events(
        &self,
        account: Option<&AccountId>,
        _: i64,
        _: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        self.seen(&format!("events {}", account.map_or("platform", AccountId::as_str)));
        match account {
            None if self.refuse_platform_list => Err(StripeError::Refused {
                status: 403,
                code: None,
                decline_code: None,
                message: "this restricted key may not list events".into(),
            }),
            None => Ok(page(self.platform_events.clone())),
            Some(_) => Ok(page(Vec::new())),
        }
    }

    async fn list_v2_events(&self, _: i64, _: Option<&str>) -> Result<ListPage, StripeError> {
        self.seen("v2 events");
        Err(StripeError::Refused { status: 404, code: None, decline_code: None, message: "no v2".into() })
    }

    async fn list_accounts_created(&self, _: i64, _: Option<&str>) -> Result<ListPage, StripeError> {
        self.seen("accounts");
        Ok(page(Vec::new()))
    }

    async fn retrieve_account_as(&self, account: &AccountId, _: AccountsApi) -> Result<Value, StripeError> {
        self.seen(&format!("account {account}"));
        Ok(active_account())
    }

    fn key_livemode(&self) -> Option<bool> {
        Some(false)
    }
}

fn active_account() -> Value {
    json!({"id": SELLER, "object": "account", "charges_enabled": true, "payouts_enabled": true,
           "details_submitted": true, "capabilities": {"transfers": "active", "card_payments": "active"},
           "requirements": {"currently_due": [], "eventually_due": [], "past_due": [], "disabled_reason": null}})
}

fn missed_update() -> Value {
    json!({"id": "evt_1ScriptedMissed01", "object": "event", "type": "account.updated",
           "api_version": crate::stripe::client::STRIPE_VERSION, "created": NOW - 600, "livemode": false,
           "account": SELLER, "data": {"object": active_account()}})
}

fn reconciler(stripe: Scripted) -> Reconciler<SqliteStore, FixedClock, Scripted> {
    let store = SqliteStore::in_memory().unwrap();
    let queue: Arc<dyn StepQueue> = Arc::new(store.clone());
    let webhook = WebhookService::with_clock(store, &WebhookSettings::unsigned(None), FixedClock(NOW))
        .with_queue(Arc::clone(&queue));
    let settings = ReconcileSettings { requests_per_second: 1_000, ..ReconcileSettings::default() };
    Reconciler::new(webhook, stripe, queue, settings)
}

#[tokio::test]
async fn a_missed_event_is_replayed_once_and_the_second_run_replays_nothing() {
    let stripe = Scripted {
        platform_events: vec![missed_update()],
        refuse_platform_list: false,
        requests: Mutex::default(),
    };
    let reconciler = reconciler(stripe);
    let first = reconciler.run(None, None).await.unwrap();
    assert_eq!(first.events_replayed, 1);
    let seller = AccountId::parse(SELLER).unwrap();
    let stored =
        reconciler.webhook.store().load_account(&seller).await.unwrap().expect("the replayed account");
    assert_eq!(onboarding_status(&stored), OnboardingStatus::Active);
    let second = reconciler.run(None, None).await.unwrap();
    assert_eq!((second.events_listed, second.events_replayed, second.accounts_corrected), (1, 0, 0));
}

#[tokio::test]
async fn a_refused_list_stops_the_run_before_anything_is_applied() {
    let stripe = Scripted {
        platform_events: vec![missed_update()],
        refuse_platform_list: true,
        requests: Mutex::default(),
    };
    let reconciler = reconciler(stripe);
    let error = reconciler.run(None, None).await.expect_err("a refused key stops the run");
    assert!(error.to_string().contains("GET /v1/events"), "{error}");
    let seller = AccountId::parse(SELLER).unwrap();
    assert!(reconciler.webhook.store().load_account(&seller).await.unwrap().is_none());
    let requests = reconciler.stripe.requests.lock().unwrap().clone();
    assert_eq!(requests, vec!["events platform".to_owned()], "nothing else was asked after the refusal");
}
