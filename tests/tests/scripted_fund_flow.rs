//! The scripted fund flow of the issue, end to end on each store with the stand-in Stripe:
//! payment, partial refund, full refund, balance available, then the payout paid or failed,
//! once cleanly and once with every fault on. Each run ends with the ledger it should.

use integration_tests::stripe_stub::{Fault, StripeStub};
use integration_tests::{NOW, account_updated, manual_payout_account_updated, pipeline, signed};
use serde_json::{Value, json};
use shared::domain::account::AccountId;
use shared::domain::step::{Step, StepStatus};
use shared::store::{AccountStore, EventOutcome};
use shared::stripe::client::StripeClient;
use shared::stripe::signature::FixedClock;
use shared::webhook::WebhookService;
use shared::worker::{Disposition, StepWorker};

fn event(id: &str, event_type: &str, created: i64, account: Option<&str>, object: Value) -> Value {
    let mut event = json!({"id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "data": {"object": object}});
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

fn charge(refunded: i64) -> Value {
    json!({"id": "ch_s", "object": "charge", "amount": 10_000, "amount_captured": 10_000, "amount_refunded": refunded,
        "currency": "usd", "payment_intent": "pi_s", "captured": true})
}

/// One run of the script: the pipeline, the worker and the stand-in Stripe over one store.
struct Script<S: AccountStore + Clone> {
    stub: StripeStub,
    service: WebhookService<S, FixedClock>,
    worker: StepWorker<S, FixedClock>,
    faults: bool,
}

impl<S: AccountStore + Clone> Script<S> {
    async fn start(store: S, faults: bool) -> Self {
        let stub = StripeStub::start().await;
        stub.set_platform_balance("usd", 9_000);
        for account in ["acct_A", "acct_B", "acct_M"] {
            stub.add_account(account, true, true);
        }
        stub.set_account_balance("acct_M", "usd", 4_000);
        let worker = StepWorker::with_clock(
            store.clone(),
            StripeClient::new(stub.client_config()).unwrap(),
            FixedClock(NOW),
        );
        Self { stub, service: pipeline(store), worker, faults }
    }

    fn store(&self) -> &S {
        self.service.store()
    }

    /// Delivers an event, twice when faults are on (Stripe redelivers), and answers 200 each time.
    async fn deliver(&self, event: &Value) {
        for _ in 0..if self.faults { 2 } else { 1 } {
            let (header, body) = signed(event, NOW);
            assert_eq!(self.service.handle(Some(&header), &body).await.status, 200, "{}", event["type"]);
        }
    }

    /// Runs every unfinished step until all are final, as the queue would redeliver them.
    async fn run_steps(&self, steps: Vec<Step>) {
        for step in steps.iter().filter(|step| !step.status.is_final()) {
            let mut finished = false;
            for _ in 0..8 {
                if let Ok(Disposition::Done(_)) = self.worker.run(&step.reference()).await {
                    finished = true;
                    break;
                }
                // A waiting payout got balance_insufficient: the seller's funds arrive.
                self.stub.set_account_balance("acct_M", "usd", 4_000);
            }
            assert!(finished, "{} never finished", step.step_id);
        }
    }

    async fn payment_steps(&self) -> Vec<Step> {
        self.store().load_payment_steps("pi_s").await.unwrap()
    }

    async fn payout_steps(&self) -> Vec<Step> {
        self.store().load_payouts(&AccountId::parse("acct_M").unwrap()).await.unwrap()
    }

    async fn run(&self, payout_outcome: &str) {
        for (index, account) in ["acct_A", "acct_B"].iter().enumerate() {
            self.deliver(&account_updated(&format!("evt_acct{index}"), account, NOW - 900, true, &[])).await;
        }
        let manual = manual_payout_account_updated("evt_acctM", "acct_M", NOW - 900);
        self.deliver(&manual).await;
        if self.faults {
            self.stub.inject("/v1/transfers", Fault::ServerErrorAfterCreate);
            self.stub.inject("/v1/transfers", Fault::RateLimited);
            self.stub.inject("/v1/payouts", Fault::BalanceInsufficient);
        }
        let payment = json!({"id": "pi_s", "object": "payment_intent", "amount": 10_000, "amount_received": 10_000,
            "currency": "usd", "latest_charge": "ch_s", "metadata": {"transfer:acct_A": "7000", "transfer:acct_B": "2000"}});
        self.deliver(&event("evt_pay", "payment_intent.succeeded", NOW - 500, None, payment)).await;
        self.run_steps(self.payment_steps().await).await;
        self.deliver(&event("evt_ref1", "charge.refunded", NOW - 400, None, charge(2_500))).await;
        self.run_steps(self.payment_steps().await).await;
        self.deliver(&event("evt_ref2", "charge.refunded", NOW - 300, None, charge(10_000))).await;
        self.run_steps(self.payment_steps().await).await;
        let balance = json!({"object": "balance", "available": [{"amount": 4_000, "currency": "usd"}]});
        self.deliver(&event("evt_bal", "balance.available", NOW - 200, Some("acct_M"), balance)).await;
        self.run_steps(self.payout_steps().await).await;
        let payout = self.stub.payouts().remove(0);
        // Settlement must match the step completely, so the event carries the payout's real
        // amount and currency.
        let settled = json!({"id": payout.id, "object": "payout", "amount": payout.amount,
            "currency": payout.currency, "status": payout_outcome.trim_start_matches("payout."),
            "failure_code": if payout_outcome == "payout.failed" { json!("account_closed") } else { Value::Null },
            "metadata": payout.metadata});
        self.deliver(&event("evt_settle", payout_outcome, NOW - 100, Some("acct_M"), settled)).await;
    }

    /// The ledger every run must end with. The payout was made either way, so its step is
    /// succeeded either way; a failed payout shows as the account's `payout_failure`.
    async fn assert_ledger(&self, payout_failed: bool) {
        let mut transfers: Vec<(String, i64, i64)> = self
            .stub
            .transfers()
            .iter()
            .map(|t| (t.destination.clone(), t.amount, t.amount_reversed))
            .collect();
        transfers.sort();
        assert_eq!(transfers, [("acct_A".into(), 7000, 7000), ("acct_B".into(), 2000, 2000)]);
        let mut reversals: Vec<i64> = self.stub.reversals().iter().map(|r| r.amount).collect();
        reversals.sort();
        assert_eq!(reversals, [500, 1500, 1750, 5250], "a quarter, then the rest, of each transfer");
        assert_eq!(self.stub.payouts().iter().map(|p| p.amount).collect::<Vec<_>>(), [4_000]);
        assert_eq!(
            self.stub.platform_balance("usd"),
            9_000,
            "the refunded payment costs the platform nothing"
        );
        assert!(self.payment_steps().await.iter().all(|step| step.status == StepStatus::Succeeded));
        let payouts = self.payout_steps().await;
        assert_eq!(payouts.len(), 1, "one payout step");
        let made = self.stub.payouts().remove(0);
        assert_eq!(
            (payouts[0].status, payouts[0].stripe_id.as_deref()),
            (StepStatus::Succeeded, Some(made.id.as_str()))
        );
        let settle =
            self.store().load_event("evt_settle").await.unwrap().expect("the settlement is recorded");
        assert_ne!(
            settle.outcome,
            EventOutcome::Refused,
            "the settlement matches its step: {:?}",
            settle.reason
        );
        if payout_failed {
            assert_eq!(settle.outcome, EventOutcome::Applied);
        }
        let account = self.store().load_account(&AccountId::parse("acct_M").unwrap()).await.unwrap().unwrap();
        assert_eq!(account.payout_failure.is_some(), payout_failed);
        if let Some(failure) = &account.payout_failure {
            assert_eq!(
                (failure.payout_id.as_str(), failure.failure_code.as_str()),
                (made.id.as_str(), "account_closed")
            );
        }
    }
}

async fn payout_paid<S: AccountStore + Clone>(store: S) {
    let script = Script::start(store, false).await;
    script.run("payout.paid").await;
    script.assert_ledger(false).await;
}

async fn payout_failed<S: AccountStore + Clone>(store: S) {
    let script = Script::start(store, false).await;
    script.run("payout.failed").await;
    script.assert_ledger(true).await;
}

async fn every_fault_on<S: AccountStore + Clone>(store: S) {
    let script = Script::start(store, true).await;
    script.run("payout.paid").await;
    script.assert_ledger(false).await;
    assert_eq!(script.stub.pending_faults(), 0, "every injected fault was hit");
}

macro_rules! on_each_store {
    ($($store:ident => $make:expr),*) => {
        $(
            mod $store {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn payment_refunds_and_a_paid_payout() {
                    super::payout_paid($make).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn payment_refunds_and_a_failed_payout() {
                    super::payout_failed($make).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn payment_refunds_and_payout_with_every_fault_on() {
                    super::every_fault_on($make).await;
                }
            }
        )*
    };
}

on_each_store!(sqlite => integration_tests::sqlite_store(), dynamodb => integration_tests::dynamo_store().await);
