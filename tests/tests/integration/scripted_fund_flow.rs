//! The scripted fund flow of the issue, end to end on each store with the stand-in Stripe:
//! payment, partial refund, full refund, balance available, then the payout paid or failed,
//! once cleanly and once with every fault on. Each run ends with the ledger it should.

use integration_tests::stripe_stub::{Fault, StripeStub};
use integration_tests::{NOW, account_updated, manual_payout_account_updated, pipeline, signed};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::account::AccountId;
use shared::domain::step::{Step, StepStatus};
use shared::store::{AccountStore, EventOutcome};
use shared::stripe::client::StripeClient;
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
        self.store().load_payment_steps(&"pi_s".into()).await.unwrap()
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

fn charge_of(id: &str, intent: &str, refunded: i64) -> Value {
    json!({"id": id, "object": "charge", "amount": 10_000, "amount_captured": 10_000, "amount_refunded": refunded,
        "currency": "usd", "payment_intent": intent, "captured": true})
}

fn dispute_of(charge: &str, intent: &str, status: &str) -> Value {
    json!({"id": format!("dp_{charge}"), "object": "dispute", "amount": 10_000, "currency": "usd",
        "charge": charge, "payment_intent": intent, "status": status, "reason": "fraudulent"})
}

impl<S: AccountStore + Clone> Script<S> {
    /// A payment of 10 000 split 7 000 to A and 2 000 to B, paid out.
    async fn paid(&self, intent: &str, charge: &str, at: i64) {
        let payment = json!({"id": intent, "object": "payment_intent", "amount": 10_000, "amount_received": 10_000,
            "currency": "usd", "latest_charge": charge,
            "metadata": {"transfer:acct_A": "7000", "transfer:acct_B": "2000"}});
        self.deliver(&event(&format!("evt_{intent}"), "payment_intent.succeeded", at, None, payment)).await;
        self.run_steps(self.store().load_payment_steps(&intent.into()).await.unwrap()).await;
    }

    async fn settle_steps_of(&self, intent: &str) -> Vec<Step> {
        let steps = self.store().load_payment_steps(&intent.into()).await.unwrap();
        self.run_steps(steps).await;
        self.store().load_payment_steps(&intent.into()).await.unwrap()
    }

    /// Disputes, a failed refund and destination charges: every kind of money coming back.
    async fn run_money_back(&self) {
        for (index, account) in ["acct_A", "acct_B"].iter().enumerate() {
            self.deliver(&account_updated(&format!("evt_acct{index}"), account, NOW - 900, true, &[])).await;
        }
        self.stub.set_platform_balance("usd", 40_000);
        if self.faults {
            self.stub.inject("/v1/transfers", Fault::ServerErrorAfterCreate);
            // The first reversal finds the seller's balance short: it waits, then goes.
            self.stub.inject("/v1/transfers/", Fault::BalanceInsufficient);
        }

        // Lost: the inquiry-free dispute opens (nothing moves), its funds are withdrawn (each
        // seller's share is reversed), it is lost (nothing more).
        self.paid("pi_lost", "ch_lost", NOW - 800).await;
        self.deliver(&event(
            "evt_l1",
            "charge.dispute.created",
            NOW - 790,
            None,
            dispute_of("ch_lost", "pi_lost", "needs_response"),
        ))
        .await;
        assert_eq!(self.stub.reversals().len(), 0, "an open dispute moves nothing until its funds go");
        self.deliver(&event(
            "evt_l2",
            "charge.dispute.funds_withdrawn",
            NOW - 789,
            None,
            dispute_of("ch_lost", "pi_lost", "needs_response"),
        ))
        .await;
        self.settle_steps_of("pi_lost").await;
        self.deliver(&event(
            "evt_l3",
            "charge.dispute.closed",
            NOW - 700,
            None,
            dispute_of("ch_lost", "pi_lost", "lost"),
        ))
        .await;
        let lost = self.settle_steps_of("pi_lost").await;
        assert!(lost.iter().all(|step| step.status == StepStatus::Succeeded), "{lost:?}");
        let causes: Vec<(String, String)> = lost
            .iter()
            .filter_map(|step| {
                step.cause.as_ref().map(|cause| {
                    (
                        step.kind.as_str().to_owned(),
                        serde_json::to_value(cause).unwrap()["type"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect();
        assert_eq!(causes.iter().filter(|(kind, cause)| kind == "reversal" && cause == "dispute").count(), 2);

        // Won: withdrawn, then reinstated: the reversals are made, then transferred back.
        self.paid("pi_won", "ch_won", NOW - 600).await;
        self.deliver(&event(
            "evt_w1",
            "charge.dispute.funds_withdrawn",
            NOW - 590,
            None,
            dispute_of("ch_won", "pi_won", "needs_response"),
        ))
        .await;
        self.settle_steps_of("pi_won").await;
        self.deliver(&event(
            "evt_w2",
            "charge.dispute.funds_reinstated",
            NOW - 500,
            None,
            dispute_of("ch_won", "pi_won", "won"),
        ))
        .await;
        self.deliver(&event(
            "evt_w3",
            "charge.dispute.closed",
            NOW - 499,
            None,
            dispute_of("ch_won", "pi_won", "won"),
        ))
        .await;
        let won = self.settle_steps_of("pi_won").await;
        let back: Vec<(String, i64)> = won
            .iter()
            .filter(|step| step.gives_back.is_some())
            .map(|step| (step.destination.to_string(), step.amount))
            .collect();
        assert_eq!(back, [("acct_A".into(), 7000), ("acct_B".into(), 2000)]);

        // A refund that fails: half refunded and reversed, then the refund fails and the sellers get
        // their share back; the next refund's snapshot (lower, then higher) reverses only what is new.
        self.paid("pi_fail", "ch_fail", NOW - 400).await;
        self.deliver(&event(
            "evt_f1",
            "charge.refunded",
            NOW - 390,
            None,
            charge_of("ch_fail", "pi_fail", 5_000),
        ))
        .await;
        self.settle_steps_of("pi_fail").await;
        let failed = json!({"id": "re_fail", "object": "refund", "amount": 5_000, "currency": "usd", "charge": "ch_fail",
            "payment_intent": "pi_fail", "status": "failed", "failure_reason": "expired_or_canceled_card", "created": NOW - 390});
        self.deliver(&event("evt_f2", "charge.refund.updated", NOW - 300, None, failed.clone())).await;
        self.deliver(&event("evt_f3", "refund.updated", NOW - 300, None, failed)).await;
        self.settle_steps_of("pi_fail").await;
        self.deliver(&event(
            "evt_f4",
            "charge.refunded",
            NOW - 200,
            None,
            charge_of("ch_fail", "pi_fail", 1_000),
        ))
        .await;
        let refund_failed = self.settle_steps_of("pi_fail").await;
        assert!(refund_failed.iter().all(|step| step.status == StepStatus::Succeeded), "{refund_failed:?}");

        // Destination charges: Stripe made the transfer; a refund plans nothing whether or not the
        // platform asked Stripe to reverse it, and a lost dispute reverses Stripe's transfer.
        for (charge, intent, transfer) in
            [("ch_d1", "pi_d1", "tr_d1"), ("ch_d2", "pi_d2", "tr_d2"), ("ch_d3", "pi_d3", "tr_d3")]
        {
            self.stub.add_destination_transfer(transfer, "acct_A", 9_000, "usd", charge);
            let destination = json!({"id": charge, "object": "charge", "amount": 10_000, "amount_captured": 10_000,
                "currency": "usd", "payment_intent": intent, "captured": true, "application_fee_amount": 1_000,
                "transfer": transfer, "transfer_data": {"destination": "acct_A"}, "amount_refunded": 0,
                "status": "succeeded", "created": NOW - 150});
            self.deliver(&event(&format!("evt_{charge}"), "charge.succeeded", NOW - 150, None, destination))
                .await;
        }
        let refunded = json!({"id": "ch_d1", "object": "charge", "amount": 10_000, "amount_captured": 10_000,
            "currency": "usd", "payment_intent": "pi_d1", "captured": true, "amount_refunded": 10_000, "status": "succeeded", "created": NOW - 150,
            "application_fee_amount": 1_000,
            "transfer": "tr_d1", "transfer_data": {"destination": "acct_A"}});
        self.deliver(&event("evt_d1r", "charge.refunded", NOW - 140, None, refunded)).await;
        // d1's refund left the transfer alone (the platform keeps the loss); d3's asked Stripe to
        // reverse it, which Stripe did itself.
        let refund = |id: &str, charge: &str, intent: &str, reversal: Value| {
            json!({"id": id, "object": "refund", "amount": 10_000, "currency": "usd", "charge": charge,
                "payment_intent": intent, "status": "succeeded", "transfer_reversal": reversal, "created": NOW - 140})
        };
        self.deliver(&event(
            "evt_d1re",
            "refund.created",
            NOW - 140,
            None,
            refund("re_d1", "ch_d1", "pi_d1", Value::Null),
        ))
        .await;
        self.stub.reverse_as_stripe("tr_d3", 9_000);
        let refunded_d3 = json!({"id": "ch_d3", "object": "charge", "amount": 10_000, "amount_captured": 10_000,
            "currency": "usd", "payment_intent": "pi_d3", "captured": true, "amount_refunded": 10_000, "status": "succeeded", "created": NOW - 150,
            "application_fee_amount": 1_000,
            "transfer": "tr_d3", "transfer_data": {"destination": "acct_A"}});
        self.deliver(&event("evt_d3r", "charge.refunded", NOW - 139, None, refunded_d3)).await;
        self.deliver(&event(
            "evt_d3re",
            "refund.created",
            NOW - 139,
            None,
            refund("re_d3", "ch_d3", "pi_d3", json!("trr_by_stripe")),
        ))
        .await;
        for intent in ["pi_d1", "pi_d3"] {
            let steps = self.store().load_payment_steps(&intent.into()).await.unwrap();
            assert_eq!(steps.len(), 1, "only Stripe's own transfer: {steps:?}");
            assert!(steps[0].by_stripe && steps[0].status == StepStatus::Succeeded);
        }
        self.deliver(&event(
            "evt_d2x",
            "charge.dispute.funds_withdrawn",
            NOW - 130,
            None,
            dispute_of("ch_d2", "pi_d2", "needs_response"),
        ))
        .await;
        self.settle_steps_of("pi_d2").await;

        // A dispute of a charge never seen is recorded and answered unknown_charge.
        self.deliver(&event(
            "evt_u",
            "charge.dispute.funds_withdrawn",
            NOW - 100,
            None,
            dispute_of("ch_unseen", "pi_unseen", "needs_response"),
        ))
        .await;
        let unknown = self.store().load_event("evt_u").await.unwrap().unwrap();
        assert_eq!(unknown.outcome, EventOutcome::UnknownCharge);
    }

    /// What the sellers hold after [`Self::run_money_back`]: the lost dispute and the refund that
    /// stands took their shares, the won dispute and the failed refund gave theirs back.
    async fn assert_money_back(&self) {
        use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};
        // A: lost 0, won 7000, the refund that stands (10%) leaves 6300, d1 9000, d2 reversed 0.
        assert_eq!(self.stub.net_transferred_to("acct_A"), 7_000 + 6_300 + 9_000);
        assert_eq!(self.stub.net_transferred_to("acct_B"), 2_000 + 1_800);
        let tr_d2 = self.stub.transfers().into_iter().find(|t| t.id == "tr_d2").unwrap();
        assert_eq!(tr_d2.amount_reversed, 9_000, "the lost destination charge's transfer came back");
        let tr_d1 = self.stub.transfers().into_iter().find(|t| t.id == "tr_d1").unwrap();
        assert_eq!(tr_d1.amount_reversed, 0, "Connect Flow never reverses a destination charge for a refund");
        let by_connect_flow =
            self.stub.reversals().iter().filter(|r| r.transfer == "tr_d3" && !r.metadata.is_empty()).count();
        assert_eq!(by_connect_flow, 0, "Stripe reversed tr_d3 itself; Connect Flow added nothing");
        // The seller's ledger: three destination charges, two refunded, one disputed and lost, and
        // only d1's refund kept by the platform.
        let api =
            PlatformApi::with_clock(self.store().clone(), None, PlatformSettings::default(), FixedClock(NOW));
        let reply = api
            .handle(&ApiRequest {
                method: "GET",
                path: "/accounts/acct_A/ledger",
                query: "from=2025-06&to=2025-06",
                body: b"",
                base_url: "",
            })
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let usd = serde_json::from_str::<Value>(&reply.body).unwrap()["currencies"]["usd"].clone();
        assert_eq!(
            (usd["payments"].as_i64(), usd["gross"].as_i64(), usd["fees"].as_i64(), usd["refunds"].as_i64()),
            (Some(3), Some(30_000), Some(3_000), Some(20_000)),
            "{usd}"
        );
        assert_eq!(
            (usd["disputes"].as_i64(), usd["platform_absorbed_refunds"].as_i64()),
            (Some(10_000), Some(10_000)),
            "{usd}"
        );
    }
}

async fn money_back<S: AccountStore + Clone>(store: S, faults: bool) {
    let script = Script::start(store, faults).await;
    script.run_money_back().await;
    script.assert_money_back().await;
    assert_eq!(script.stub.pending_faults(), 0, "every injected fault was hit");
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

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn disputes_lost_and_won_a_failed_refund_and_destination_charges() {
                    super::money_back($make, false).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn money_back_with_faults_and_redeliveries() {
                    super::money_back($make, true).await;
                }
            }
        )*
    };
}

on_each_store!(sqlite => integration_tests::sqlite_store(), dynamodb => integration_tests::dynamo_store().await);

/// A month of fees through the scripted flow, every event delivered twice: two destination charges
/// and a direct one with their application fees (one refunded partly, then fully, the partial
/// snapshot arriving again late; one in another currency than its charge), and a separate
/// payment's transfers; read back from `GET /accounts/{id}/ledger` and `GET /reports/fees`.
async fn a_month_of_fees_reads_back_from_the_ledger<S: AccountStore + Clone>(store: S) {
    use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};

    let script = Script::start(store, true).await;
    for (index, account) in ["acct_A", "acct_B"].iter().enumerate() {
        script.deliver(&account_updated(&format!("evt_acct{index}"), account, NOW - 900, true, &[])).await;
    }
    let june = NOW - 5 * 86_400;
    for (charge, amount, fee) in [("ch_m1", 10_000, 1_000), ("ch_m2", 20_000, 1_500)] {
        script.stub.add_destination_transfer(&format!("tr_{charge}"), "acct_A", amount - fee, "usd", charge);
        let destination = json!({"id": charge, "object": "charge", "status": "succeeded", "amount": amount,
            "amount_captured": amount, "amount_refunded": 0, "captured": true, "currency": "usd", "created": june,
            "payment_intent": format!("pi_{charge}"), "application_fee": format!("fee_{charge}"),
            "application_fee_amount": fee, "transfer": format!("tr_{charge}"),
            "transfer_data": {"destination": "acct_A"}, "payment_method_details": {"type": "card"}});
        script.deliver(&event(&format!("evt_{charge}"), "charge.succeeded", june, None, destination)).await;
    }
    let direct = json!({"id": "ch_m4", "object": "charge", "status": "succeeded", "amount": 5_000,
        "amount_captured": 5_000, "amount_refunded": 0, "captured": true, "currency": "usd", "created": june,
        "application_fee": "fee_ch_m4", "application_fee_amount": 300, "payment_method_details": {"type": "card_present"}});
    script.deliver(&event("evt_ch_m4", "charge.succeeded", june, Some("acct_B"), direct)).await;
    let fee = |charge: &str, account: &str, currency: &str, amount: i64, refunded: i64| {
        json!({"id": format!("fee_{charge}"), "object": "application_fee", "account": account, "amount": amount,
            "amount_refunded": refunded, "charge": if account == "acct_B" { json!(charge) } else { json!(format!("py_{charge}")) },
            "originating_transaction": if account == "acct_B" { Value::Null } else { json!(charge) },
            "currency": currency, "created": june + 1})
    };
    script
        .deliver(&event(
            "evt_fee1",
            "application_fee.created",
            june + 1,
            None,
            fee("ch_m1", "acct_A", "usd", 1_000, 0),
        ))
        .await;
    script
        .deliver(&event(
            "evt_fee2",
            "application_fee.created",
            june + 1,
            None,
            fee("ch_m2", "acct_A", "usd", 1_500, 0),
        ))
        .await;
    // The direct charge's fee was taken in another currency: booked as is.
    script
        .deliver(&event(
            "evt_fee4",
            "application_fee.created",
            june + 1,
            None,
            fee("ch_m4", "acct_B", "eur", 280, 0),
        ))
        .await;
    let partly = event(
        "evt_fee1r1",
        "application_fee.refunded",
        june + 100,
        None,
        fee("ch_m1", "acct_A", "usd", 1_000, 400),
    );
    script.deliver(&partly).await;
    script
        .deliver(&event(
            "evt_fee1r2",
            "application_fee.refunded",
            june + 200,
            None,
            fee("ch_m1", "acct_A", "usd", 1_000, 1_000),
        ))
        .await;
    let late = event(
        "evt_fee1r1b",
        "application_fee.refunded",
        june + 100,
        None,
        fee("ch_m1", "acct_A", "usd", 1_000, 400),
    );
    script.deliver(&late).await;
    assert_eq!(script.store().load_event("evt_fee1r1b").await.unwrap().unwrap().outcome, EventOutcome::Stale);
    // A separate payment: its transfers are payments to the sellers (1099-NEC), not their gross.
    script.paid("pi_m3", "ch_m3", NOW - 800).await;
    for transfer in script.stub.transfers().into_iter().filter(|transfer| !transfer.id.starts_with("tr_ch_m"))
    {
        let object = json!({"id": transfer.id, "object": "transfer", "amount": transfer.amount, "amount_reversed": 0,
            "currency": "usd", "destination": transfer.destination, "created": NOW - 790,
            "source_transaction": "ch_m3", "metadata": transfer.metadata});
        script
            .deliver(&event(&format!("evt_{}", transfer.id), "transfer.created", NOW - 790, None, object))
            .await;
    }

    let api =
        PlatformApi::with_clock(script.store().clone(), None, PlatformSettings::default(), FixedClock(NOW));
    let get = |target: &'static str| {
        let api = &api;
        async move {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let reply = api.handle(&ApiRequest { method: "GET", path, query, body: b"", base_url: "" }).await;
            assert_eq!(reply.status, 200, "{target}: {}", reply.body);
            serde_json::from_str::<Value>(&reply.body).unwrap()
        }
    };
    let a = get("/accounts/acct_A/ledger?from=2025-06&to=2025-06").await;
    assert_eq!(
        a["currencies"],
        json!({"usd": {"payments": 2, "gross": 30_000, "fees": 1_500, "refunds": 0, "disputes": 0, "net": 28_500,
            "in_person": {"payments": 0, "gross": 0}, "platform_absorbed_refunds": 0, "transfers": 7_000}})
    );
    let b = get("/accounts/acct_B/ledger?from=2025-06&to=2025-06").await;
    assert_eq!(
        (b["currencies"]["usd"]["gross"].as_i64(), b["currencies"]["usd"]["fees"].as_i64()),
        (Some(5_000), Some(0))
    );
    assert_eq!(b["currencies"]["usd"]["in_person"], json!({"payments": 1, "gross": 5_000}));
    assert_eq!(b["currencies"]["usd"]["transfers"], 2_000);
    assert_eq!(b["currencies"]["eur"]["fees"], 280);
    let report = get("/reports/fees?month=2025-06").await;
    assert_eq!(
        report["currencies"],
        json!({"usd": {"fees": 2_500, "fees_refunded": 1_000, "net": 1_500, "accounts": 1},
            "eur": {"fees": 280, "fees_refunded": 0, "net": 280, "accounts": 1}})
    );
}

mod a_month_of_fees {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite() {
        super::a_month_of_fees_reads_back_from_the_ledger(integration_tests::sqlite_store()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_dynamodb() {
        super::a_month_of_fees_reads_back_from_the_ledger(integration_tests::dynamo_store().await).await;
    }
}
