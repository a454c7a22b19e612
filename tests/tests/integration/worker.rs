//! Money safety of the fund-flow worker, on SQLite and on DynamoDB (moto server), against the
//! stand-in Stripe: every planned transfer, reversal and payout is created exactly once through
//! Stripe faults, worker crashes around the Stripe call, duplicate deliveries of events and of
//! queue messages, and shuffled order; a transfer a refund took back before it was sent is netted
//! down instead (refused, never sent, if refunded whole), and one that may have been sent is
//! reversed once it is made.
//!
//! The queue is simulated by a `VecDeque<StepRef>`: a message whose run says `Done` or `Parked`
//! is acknowledged (dropped); `RetryLater` or an error leaves it for redelivery (pushed back). A
//! parked step waits in the store, so a test resumes it by running it again explicitly once its
//! condition changed, as the account's own event or the sweep ([`shared::sweep::sweep`]) would
//! re-queue it. An in-flight step is resolved by a lookup (a GET) at the stand-in Stripe before
//! any new POST, so request counts below include those GETs.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::fund_events::{
    balance_available, charge_refunded, charge_succeeded, payment_succeeded,
};
use integration_tests::stripe_stub::{Fault, StripeStub};
use integration_tests::{NOW, account_updated, pipeline, signed};
use proptest::prelude::*;
use serde_json::Value;
use shared::clock::FixedClock;
use shared::domain::account::{AccountId, AccountState};
use shared::domain::change::Change;
use shared::domain::step::{PaymentKey, Step, StepKind, StepRef, StepStatus, UnresolvedCall};
use shared::store::{AccountStore, CommitOutcome, EventOutcome, EventRecord, EventWrite, StoreError};
use shared::stripe::client::{STRIPE_VERSION, StripeClient, StripeClientConfig};
use shared::sweep::{SweepSettings, sweep};
use shared::webhook::{Delivery, WebhookService};
use shared::worker::{Disposition, StepWorker, WorkerError};

/// The metadata key under which the worker names the step on every Stripe object.
const STEP_METADATA: &str = "connect_flow_step";
/// The reason a step waits after Stripe said the balance was too small.
const BALANCE_INSUFFICIENT: &str = "balance_insufficient";

// ---------------------------------------------------------------------------------------------
// A store that crashes the worker at chosen writes.
// ---------------------------------------------------------------------------------------------

/// What the next `update_step` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Writes normally.
    No,
    /// Fails before writing: the worker dies before it could record anything.
    BeforeWrite,
    /// Writes, then fails: the write landed but the worker never learnt it.
    AfterWrite,
}

/// An [`AccountStore`] that delegates everything, but fails `update_step` with
/// [`StoreError::Unavailable`] as its schedule says: a worker crash between the Stripe call and
/// recording its result, or before marking the step in flight.
#[derive(Clone)]
struct CrashingStore<S> {
    inner: S,
    schedule: Arc<Mutex<VecDeque<Crash>>>,
    crashes: Arc<AtomicUsize>,
}

impl<S: AccountStore> CrashingStore<S> {
    fn new(inner: S) -> Self {
        Self { inner, schedule: Arc::default(), crashes: Arc::default() }
    }

    /// Appends to the schedule: one entry per coming `update_step` call, then writes normally.
    fn crash_next(&self, plan: impl IntoIterator<Item = Crash>) {
        self.schedule.lock().unwrap().extend(plan);
    }

    /// How many `update_step` calls failed so far.
    fn crashes(&self) -> usize {
        self.crashes.load(Ordering::SeqCst)
    }

    fn crash(&self, when: &str) -> StoreError {
        self.crashes.fetch_add(1, Ordering::SeqCst);
        StoreError::Unavailable(format!("injected crash {when} the step write"))
    }
}

impl<S: AccountStore> AccountStore for CrashingStore<S> {
    async fn load_account(&self, account_id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        self.inner.load_account(account_id).await
    }

    async fn commit(&self, write: &EventWrite<'_>) -> Result<CommitOutcome, StoreError> {
        self.inner.commit(write).await
    }

    async fn load_payment_steps(&self, payment_key: &PaymentKey) -> Result<Vec<Step>, StoreError> {
        self.inner.load_payment_steps(payment_key).await
    }

    async fn load_payment(
        &self,
        payment_key: &PaymentKey,
    ) -> Result<shared::store::PaymentState, StoreError> {
        self.inner.load_payment(payment_key).await
    }

    async fn list_open_steps(
        &self,
        status: StepStatus,
        updated_before: i64,
        limit: usize,
    ) -> Result<Vec<Step>, StoreError> {
        self.inner.list_open_steps(status, updated_before, limit).await
    }

    async fn load_payouts(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        self.inner.load_payouts(account_id).await
    }

    async fn load_step(&self, step: &StepRef) -> Result<Option<Step>, StoreError> {
        self.inner.load_step(step).await
    }

    async fn update_step(&self, step: &Step, changes: &[Change]) -> Result<CommitOutcome, StoreError> {
        let crash = self.schedule.lock().unwrap().pop_front().unwrap_or(Crash::No);
        match crash {
            Crash::No => self.inner.update_step(step, changes).await,
            Crash::BeforeWrite => Err(self.crash("before")),
            Crash::AfterWrite => {
                self.inner.update_step(step, changes).await?;
                Err(self.crash("after"))
            }
        }
    }

    async fn load_account_steps(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        self.inner.load_account_steps(account_id).await
    }

    async fn load_event(&self, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
        self.inner.load_event(event_id).await
    }

    integration_tests::pass_platform_methods_through!();
}

// ---------------------------------------------------------------------------------------------
// Events.
// ---------------------------------------------------------------------------------------------

fn account_id(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The world: a stand-in Stripe, a webhook pipeline, and a worker over a crashing store.
// ---------------------------------------------------------------------------------------------

struct Flow<S: AccountStore> {
    stub: StripeStub,
    /// What the worker writes through; the pipeline writes to the store beneath it.
    store: CrashingStore<S>,
    service: WebhookService<S, FixedClock>,
    worker: StepWorker<CrashingStore<S>, FixedClock>,
}

impl<S: AccountStore + Clone> Flow<S> {
    async fn start(store: S) -> Self {
        Self::start_with(store, |_| {}).await
    }

    async fn start_with(store: S, configure: impl FnOnce(&mut StripeClientConfig)) -> Self {
        let stub = StripeStub::start().await;
        let mut config = stub.client_config();
        configure(&mut config);
        let client = StripeClient::new(config).expect("the client accepts the loopback stub");
        let crashing = CrashingStore::new(store.clone());
        Self {
            stub,
            service: pipeline(store),
            worker: StepWorker::with_clock(crashing.clone(), client, FixedClock(NOW)),
            store: crashing,
        }
    }

    async fn deliver(&self, event: &Value) -> Delivery {
        let (header, body) = signed(event, NOW);
        self.service.process(Some(&header), &body).await.expect("the pipeline records the event")
    }

    /// A connected account known to our store (via `account.updated`) and to the stand-in Stripe.
    async fn onboard(&self, account: &str, transfers_active: bool) {
        let event =
            account_updated(&format!("evt_onboard_{account}"), account, NOW - 1000, transfers_active, &[]);
        assert_eq!(self.deliver(&event).await, Delivery::Recorded(EventOutcome::Applied));
        self.stub.add_account(account, transfers_active, true);
    }

    async fn payment_steps(&self, payment: &str) -> Vec<Step> {
        self.store.load_payment_steps(&payment.into()).await.unwrap()
    }

    async fn step(&self, step_ref: &StepRef) -> Step {
        self.store.load_step(step_ref).await.unwrap().expect("the step is stored")
    }

    /// The refs of `payment`'s queued steps of `kind`, ordered by id.
    async fn queued(&self, payment: &str, kind: StepKind) -> Vec<StepRef> {
        let steps = self.payment_steps(payment).await;
        steps
            .iter()
            .filter(|s| s.kind == kind && s.status == StepStatus::Queued)
            .map(Step::reference)
            .collect()
    }

    async fn run(&self, step_ref: &StepRef) -> Result<Disposition, WorkerError> {
        self.worker.run(step_ref).await
    }

    /// How many requests the stand-in Stripe has received in all.
    fn stripe_calls(&self) -> usize {
        self.stub.requests().values().sum()
    }

    /// The `Idempotency-Key`s of the POSTs to `path`, in order.
    fn keys_sent_to(&self, path: &str) -> Vec<String> {
        self.stub
            .received()
            .into_iter()
            .filter(|request| request.method == "POST" && request.path == path)
            .map(|request| request.idempotency_key.unwrap_or_default())
            .collect()
    }

    /// The query strings of the GETs (lookups) of `path`, in order.
    fn lookups_of(&self, path: &str) -> Vec<String> {
        self.stub
            .received()
            .into_iter()
            .filter(|request| request.method == "GET" && request.path == path)
            .map(|request| request.query.unwrap_or_default())
            .collect()
    }
}

/// The queue driver: runs each message, drops it on `Done`, pushes it back on `RetryLater` or an
/// error, and delivers each message `copies` times (SQS redelivery). Stops when the queue is empty
/// or after `max_runs` runs; returns what is left.
async fn drain<S: AccountStore>(
    worker: &StepWorker<S, FixedClock>,
    refs: &[StepRef],
    copies: usize,
    max_runs: usize,
) -> Vec<StepRef> {
    let mut queue: VecDeque<StepRef> =
        refs.iter().flat_map(|step_ref| std::iter::repeat_n(step_ref.clone(), copies)).collect();
    for _ in 0..max_runs {
        let Some(step_ref) = queue.pop_front() else { break };
        match worker.run(&step_ref).await {
            Ok(Disposition::Done(_) | Disposition::Parked(_)) => {}
            Ok(Disposition::RetryLater(_)) | Err(_) => queue.push_back(step_ref),
        }
    }
    queue.into()
}

fn step_of(metadata: &BTreeMap<String, String>) -> &str {
    metadata.get(STEP_METADATA).map(String::as_str).expect("every Stripe object names its step")
}

/// Onboards acct_A and acct_B, funds the platform, and records the payment pi_1 of 10 000 with
/// 7 000 to A and 2 000 to B; returns the two transfer refs (A, then B).
async fn pay_a_and_b<S: AccountStore + Clone>(flow: &Flow<S>) -> Vec<StepRef> {
    flow.onboard("acct_A", true).await;
    flow.onboard("acct_B", true).await;
    flow.stub.set_platform_balance("usd", 10_000);
    let splits = [("acct_A", 7000), ("acct_B", 2000)];
    let applied = Delivery::Recorded(EventOutcome::Applied);
    assert_eq!(flow.deliver(&payment_succeeded("evt_pi", "pi_1", 10_000, &splits)).await, applied);
    let transfers = flow.queued("pi_1", StepKind::Transfer).await;
    let ids: Vec<&str> = transfers.iter().map(|r| r.step_id.as_str()).collect();
    assert_eq!(ids, ["tr:pi_1:acct_A", "tr:pi_1:acct_B"]);
    transfers
}

// ---------------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------------

async fn a_payment_transfers_each_split_exactly_once<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    let refs = pay_a_and_b(&flow).await;
    let splits = [("acct_A", 7000), ("acct_B", 2000)];
    // The other trigger and a redelivery plan nothing new.
    assert_eq!(
        flow.deliver(&charge_succeeded("evt_ch", "pi_1", 10_000, &splits)).await,
        Delivery::Recorded(EventOutcome::Unchanged)
    );
    assert_eq!(
        flow.deliver(&payment_succeeded("evt_pi", "pi_1", 10_000, &splits)).await,
        Delivery::Duplicate
    );
    assert_eq!(flow.payment_steps("pi_1").await.len(), 2);

    // Every message is delivered three times.
    assert_eq!(drain(&flow.worker, &refs, 3, 50).await, []);

    let transfers = flow.stub.transfers();
    assert_eq!(transfers.len(), 2, "exactly two transfers: {transfers:#?}");
    for (transfer, (destination, amount)) in transfers.iter().zip(splits) {
        assert_eq!(
            (transfer.destination.as_str(), transfer.amount, transfer.currency.as_str()),
            (destination, amount, "usd")
        );
        assert_eq!(transfer.source_transaction.as_deref(), Some("ch_pi_1"));
        assert_eq!(transfer.transfer_group.as_deref(), Some("group_pi_1"));
        assert_eq!(step_of(&transfer.metadata), format!("tr:pi_1:{destination}"));
    }
    for (step_ref, transfer) in refs.iter().zip(&transfers) {
        let step = flow.step(step_ref).await;
        assert_eq!(step.status, StepStatus::Succeeded);
        assert_eq!(step.stripe_id.as_deref(), Some(transfer.id.as_str()));
        assert_eq!((step.attempt, step.reason.as_deref()), (0, None));
    }
    assert_eq!(
        flow.keys_sent_to("/v1/transfers"),
        ["connect-flow:tr:pi_1:acct_A:0", "connect-flow:tr:pi_1:acct_B:0"],
        "one call per step: the redeliveries found the step succeeded"
    );
    assert!(flow.stub.received().iter().all(|r| r.stripe_version.as_deref() == Some(STRIPE_VERSION)));
    assert!(flow.stub.received().iter().all(|r| r.stripe_account.is_none()), "transfers are the platform's");
    assert_eq!(flow.stub.platform_balance("usd"), 1_000, "the platform keeps the rest");
    assert_eq!(
        (flow.stub.account_balance("acct_A", "usd"), flow.stub.account_balance("acct_B", "usd")),
        (7000, 2000)
    );

    // Running the same refs again calls Stripe zero more times.
    let before = flow.stub.requests();
    for step_ref in &refs {
        assert_eq!(flow.run(step_ref).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    }
    assert_eq!(flow.stub.requests(), before);
}

async fn refunds_reverse_each_share_exactly_once<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    let transfers = pay_a_and_b(&flow).await;
    assert_eq!(drain(&flow.worker, &transfers, 1, 10).await, []);
    let transfer_ids: Vec<String> = flow.stub.transfers().into_iter().map(|t| t.id).collect();

    let applied = Delivery::Recorded(EventOutcome::Applied);
    assert_eq!(flow.deliver(&charge_refunded("evt_r1", "pi_1", 10_000, 2_500, NOW - 90)).await, applied);
    assert_eq!(
        flow.deliver(&charge_refunded("evt_r1", "pi_1", 10_000, 2_500, NOW - 90)).await,
        Delivery::Duplicate
    );
    assert_eq!(
        flow.deliver(&charge_refunded("evt_r1_again", "pi_1", 10_000, 2_500, NOW - 89)).await,
        Delivery::Recorded(EventOutcome::Unchanged),
        "the same cumulative refund reverses nothing more"
    );
    let partial = flow.queued("pi_1", StepKind::Reversal).await;
    assert_eq!(partial.len(), 2);
    assert_eq!(drain(&flow.worker, &partial, 2, 20).await, []);
    let reversals = flow.stub.reversals();
    let got: Vec<(&str, i64)> = reversals.iter().map(|r| (r.transfer.as_str(), r.amount)).collect();
    assert_eq!(got, [(transfer_ids[0].as_str(), 1750), (transfer_ids[1].as_str(), 500)]);

    assert_eq!(flow.deliver(&charge_refunded("evt_r2", "pi_1", 10_000, 10_000, NOW - 80)).await, applied);
    let full = flow.queued("pi_1", StepKind::Reversal).await;
    assert_eq!(full.len(), 2);
    assert_eq!(drain(&flow.worker, &full, 2, 20).await, []);

    let reversals = flow.stub.reversals();
    let got: Vec<(&str, i64)> = reversals.iter().map(|r| (r.transfer.as_str(), r.amount)).collect();
    assert_eq!(
        got,
        [
            (transfer_ids[0].as_str(), 1750),
            (transfer_ids[1].as_str(), 500),
            (transfer_ids[0].as_str(), 5250),
            (transfer_ids[1].as_str(), 1500),
        ]
    );
    let steps: BTreeSet<&str> = reversals.iter().map(|r| step_of(&r.metadata)).collect();
    assert_eq!(steps.len(), 4, "each reversal step created once");
    for transfer in flow.stub.transfers() {
        assert_eq!(transfer.amount_reversed, transfer.amount, "{} fully reversed", transfer.id);
    }
    for step in flow.payment_steps("pi_1").await {
        assert_eq!(step.status, StepStatus::Succeeded, "{}", step.step_id);
        if step.kind == StepKind::Reversal {
            let reversal = reversals.iter().find(|r| step_of(&r.metadata) == step.step_id).unwrap();
            assert_eq!(
                (step.stripe_id.as_deref(), step.amount),
                (Some(reversal.id.as_str()), reversal.amount)
            );
        }
    }
    assert_eq!(flow.stub.platform_balance("usd"), 10_000);
    assert_eq!(
        (flow.stub.account_balance("acct_A", "usd"), flow.stub.account_balance("acct_B", "usd")),
        (0, 0)
    );

    let calls = flow.stripe_calls();
    let all: Vec<StepRef> = flow.payment_steps("pi_1").await.iter().map(Step::reference).collect();
    assert_eq!(drain(&flow.worker, &all, 1, 10).await, []);
    assert_eq!(flow.stripe_calls(), calls, "final steps are acknowledged without calling Stripe");
}

/// Why a transfer never sent is refused once its payment is refunded whole.
const NETTED_OUT: &str = "the payment was refunded before this transfer was sent";
/// Why a reversal waits.
const TRANSFER_NOT_MADE: &str = "the transfer it reverses has not been made yet";

async fn a_refund_nets_unsent_transfers_and_reverses_only_after_the_transfer<S: AccountStore + Clone>(
    store: S,
) {
    let flow = Flow::start(store).await;
    let transfers = pay_a_and_b(&flow).await;
    // A's call gets a 500 before Stripe made anything: it is in flight, so it may have been sent.
    flow.stub.inject("/v1/transfers", Fault::ServerErrorBeforeCreate);
    assert!(matches!(flow.run(&transfers[0]).await.unwrap(), Disposition::RetryLater(_)));
    assert_eq!(flow.step(&transfers[0]).await.status, StepStatus::InFlight);
    assert!(flow.stub.transfers().is_empty());

    // The full refund: B's transfer, still queued, is netted to nothing and never sent; A's, which
    // may have been sent, gets a reversal instead.
    let refund = charge_refunded("evt_r", "pi_1", 10_000, 10_000, NOW - 90);
    assert_eq!(flow.deliver(&refund).await, Delivery::Recorded(EventOutcome::Applied));
    let netted = flow.step(&transfers[1]).await;
    assert_eq!(
        (netted.status, netted.amount, netted.netted, netted.reason.as_deref()),
        (StepStatus::Refused, 0, 2000, Some(NETTED_OUT))
    );
    let [reversal] = flow.queued("pi_1", StepKind::Reversal).await.try_into().unwrap();
    assert_eq!(reversal.step_id, "trr:tr:pi_1:acct_A:7000");
    assert_eq!(flow.step(&reversal).await.amount, 7000);

    let calls = flow.stripe_calls();
    for _ in 0..2 {
        assert_eq!(flow.run(&reversal).await.unwrap(), Disposition::Parked(TRANSFER_NOT_MADE.into()));
        assert_eq!(flow.step(&reversal).await.status, StepStatus::Waiting);
    }
    assert_eq!(flow.run(&transfers[1]).await.unwrap(), Disposition::Done(StepStatus::Refused));
    assert_eq!(flow.stripe_calls(), calls, "nothing is reversed before it is transferred, nor netted sent");

    // The sweep resumes A's transfer: the lookup finds nothing, and after a 500 the old key would
    // only replay it, so the transfer goes under a new one.
    assert_eq!(flow.run(&transfers[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(flow.lookups_of("/v1/transfers").len(), 1);
    assert_eq!(
        flow.keys_sent_to("/v1/transfers"),
        ["connect-flow:tr:pi_1:acct_A:0", "connect-flow:tr:pi_1:acct_A:1"]
    );
    let made = flow.stub.transfers();
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!((made[0].destination.as_str(), made[0].amount), ("acct_A", 7000));

    // ... and then the parked reversal, which now finds its transfer made.
    assert_eq!(flow.run(&reversal).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    let reversals = flow.stub.reversals();
    assert_eq!(reversals.len(), 1, "{reversals:#?}");
    assert_eq!((reversals[0].transfer.as_str(), reversals[0].amount), (made[0].id.as_str(), 7000));
    assert_eq!(step_of(&reversals[0].metadata), reversal.step_id);
    assert_eq!(flow.step(&reversal).await.stripe_id.as_deref(), Some(reversals[0].id.as_str()));
    assert!(flow.stub.transfers().iter().all(|t| t.amount_reversed == t.amount));
    assert_eq!(flow.stub.platform_balance("usd"), 10_000);
    assert_eq!(
        (flow.stub.account_balance("acct_A", "usd"), flow.stub.account_balance("acct_B", "usd")),
        (0, 0)
    );
}

async fn an_inactive_destination_waits_without_calling_stripe<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    // charges_enabled false: the `transfers` capability is "pending" in our store.
    flow.onboard("acct_P", false).await;
    flow.stub.set_platform_balance("usd", 10_000);
    let pay = payment_succeeded("evt_pi", "pi_1", 10_000, &[("acct_P", 5000)]);
    assert_eq!(flow.deliver(&pay).await, Delivery::Recorded(EventOutcome::Applied));
    let [transfer] = flow.queued("pi_1", StepKind::Transfer).await.try_into().unwrap();

    let Disposition::Parked(reason) = flow.run(&transfer).await.unwrap() else { panic!("it must park") };
    let waiting = flow.step(&transfer).await;
    assert_eq!((waiting.status, waiting.reason.as_deref()), (StepStatus::Waiting, Some(reason.as_str())));
    assert!(reason.contains("capability"), "{reason}");
    assert_eq!(waiting.attempt, 0, "nothing was sent, so its key is unused");
    assert_eq!(flow.run(&transfer).await.unwrap(), Disposition::Parked(reason));
    assert_eq!(flow.step(&transfer).await, waiting, "waiting again writes nothing");
    assert_eq!(flow.stripe_calls(), 0, "nothing is sent to Stripe");
    assert!(flow.stub.transfers().is_empty());

    // Once the capability is active, the account's event re-queues it and it goes through.
    flow.stub.add_account("acct_P", true, true);
    let active = account_updated("evt_active", "acct_P", NOW - 10, true, &[]);
    assert_eq!(flow.deliver(&active).await, Delivery::Recorded(EventOutcome::Applied));
    assert_eq!(flow.run(&transfer).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(flow.stub.transfers().len(), 1);
    assert_eq!(flow.stub.transfers()[0].amount, 5000);
    assert_eq!(flow.keys_sent_to("/v1/transfers"), ["connect-flow:tr:pi_1:acct_P:0"]);
    assert_eq!(flow.stripe_calls(), 1, "a waiting step is not in flight, so no lookup");
}

async fn balance_insufficient_waits_and_retries_under_a_new_key<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    flow.onboard("acct_A", true).await;
    flow.stub.set_platform_balance("usd", 10_000);
    let pay = payment_succeeded("evt_pi", "pi_1", 10_000, &[("acct_A", 7000)]);
    assert_eq!(flow.deliver(&pay).await, Delivery::Recorded(EventOutcome::Applied));
    let [transfer] = flow.queued("pi_1", StepKind::Transfer).await.try_into().unwrap();

    flow.stub.inject("/v1/transfers", Fault::BalanceInsufficient);
    assert_eq!(flow.run(&transfer).await.unwrap(), Disposition::Parked(BALANCE_INSUFFICIENT.into()));
    let waiting = flow.step(&transfer).await;
    assert_eq!(
        (waiting.status, waiting.reason.as_deref(), waiting.attempt),
        (StepStatus::Waiting, Some(BALANCE_INSUFFICIENT), 1)
    );
    assert!(flow.stub.transfers().is_empty());

    // Topped up; the sweep re-queues the parked step.
    flow.stub.set_platform_balance("usd", 10_000);
    assert_eq!(flow.run(&transfer).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    let done = flow.step(&transfer).await;
    assert_eq!((done.attempt, done.reason.as_deref()), (1, None));
    assert_eq!(
        flow.keys_sent_to("/v1/transfers"),
        ["connect-flow:tr:pi_1:acct_A:0", "connect-flow:tr:pi_1:acct_A:1"],
        "Stripe caches the refusal under the first key, so the retry needs a new one"
    );
    let transfers = flow.stub.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(done.stripe_id.as_deref(), Some(transfers[0].id.as_str()));

    // A real shortage: every retry is refused under a fresh key and creates nothing, until the
    // platform is topped up.
    let pay = payment_succeeded("evt_pi2", "pi_2", 5_000, &[("acct_A", 5000)]);
    assert_eq!(flow.deliver(&pay).await, Delivery::Recorded(EventOutcome::Applied));
    let [second] = flow.queued("pi_2", StepKind::Transfer).await.try_into().unwrap();
    assert_eq!(flow.stub.platform_balance("usd"), 3_000);
    for attempt in 1..=2 {
        assert_eq!(flow.run(&second).await.unwrap(), Disposition::Parked(BALANCE_INSUFFICIENT.into()));
        assert_eq!(flow.step(&second).await.attempt, attempt);
    }
    assert_eq!(flow.stub.transfers().len(), 1);
    flow.stub.set_platform_balance("usd", 5_000);
    assert_eq!(flow.run(&second).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(
        flow.keys_sent_to("/v1/transfers"),
        [
            "connect-flow:tr:pi_1:acct_A:0",
            "connect-flow:tr:pi_1:acct_A:1",
            "connect-flow:tr:pi_2:acct_A:0",
            "connect-flow:tr:pi_2:acct_A:1",
            "connect-flow:tr:pi_2:acct_A:2",
        ]
    );
    assert!(flow.lookups_of("/v1/transfers").is_empty(), "a parked step was never left in flight");
    let amounts: Vec<i64> = flow.stub.transfers().iter().map(|t| t.amount).collect();
    assert_eq!(amounts, [7000, 5000]);
    assert_eq!(flow.stub.platform_balance("usd"), 0);
    assert_eq!(flow.stub.account_balance("acct_A", "usd"), 12_000);
}

async fn a_definite_refusal_fails_the_step_with_stripes_code<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    flow.onboard("acct_C", true).await;
    // Our store says both are active; Stripe says C cannot receive and has never heard of D.
    flow.stub.add_account("acct_C", false, true);
    let d = account_updated("evt_onboard_acct_D", "acct_D", NOW - 1000, true, &[]);
    assert_eq!(flow.deliver(&d).await, Delivery::Recorded(EventOutcome::Applied));
    flow.stub.set_platform_balance("usd", 10_000);
    let pay = payment_succeeded("evt_pi", "pi_1", 10_000, &[("acct_C", 3000), ("acct_D", 4000)]);
    assert_eq!(flow.deliver(&pay).await, Delivery::Recorded(EventOutcome::Applied));
    let refs = flow.queued("pi_1", StepKind::Transfer).await;

    // C cannot receive *yet*: it waits under its next key. D is unknown to Stripe: a definite refusal.
    assert_eq!(
        flow.run(&refs[0]).await.unwrap(),
        Disposition::Parked("insufficient_capabilities_for_transfer".into())
    );
    assert_eq!(flow.run(&refs[1]).await.unwrap(), Disposition::Done(StepStatus::Failed));
    let waiting = flow.step(&refs[0]).await;
    assert_eq!(
        (waiting.status, waiting.reason.as_deref(), waiting.stripe_id.as_deref(), waiting.attempt),
        (StepStatus::Waiting, Some("insufficient_capabilities_for_transfer"), None, 1)
    );
    let missing = flow.step(&refs[1]).await;
    assert_eq!((missing.status, missing.reason.as_deref()), (StepStatus::Failed, Some("resource_missing")));
    assert_eq!(missing.attempt, 0, "a definite refusal keeps its key");
    let calls = flow.stripe_calls();
    assert_eq!(flow.run(&refs[1]).await.unwrap(), Disposition::Done(StepStatus::Failed));
    assert_eq!(flow.stripe_calls(), calls, "a failed step is acknowledged without calling Stripe");
    assert!(flow.stub.transfers().is_empty());
    assert_eq!(flow.stub.platform_balance("usd"), 10_000);
    // Once C can receive, the sweep re-queues the parked step and it goes under the new key.
    flow.stub.add_account("acct_C", true, true);
    assert_eq!(flow.run(&refs[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    let made = flow.stub.transfers();
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!((made[0].destination.as_str(), made[0].amount), ("acct_C", 3000));
    assert_eq!(
        flow.keys_sent_to("/v1/transfers"),
        ["connect-flow:tr:pi_1:acct_C:0", "connect-flow:tr:pi_1:acct_D:0", "connect-flow:tr:pi_1:acct_C:1"]
    );
    // A refund reverses only the transfer that was made.
    assert_eq!(
        flow.deliver(&charge_refunded("evt_r", "pi_1", 10_000, 10_000, NOW - 90)).await,
        Delivery::Recorded(EventOutcome::Applied)
    );
    let reversal_destinations: Vec<String> = flow
        .store
        .load_payment_steps(&"pi_1".into())
        .await
        .unwrap()
        .into_iter()
        .filter(|step| step.kind == StepKind::Reversal)
        .map(|step| step.destination.to_string())
        .collect();
    assert_eq!(reversal_destinations, ["acct_C"]);
}

async fn a_500_after_create_is_found_by_lookup_not_repeated<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    let refs = pay_a_and_b(&flow).await;
    flow.stub.inject("/v1/transfers", Fault::ServerErrorAfterCreate);
    assert!(matches!(flow.run(&refs[0]).await.unwrap(), Disposition::RetryLater(_)));
    let in_flight = flow.step(&refs[0]).await;
    assert_eq!((in_flight.status, in_flight.stripe_id.as_deref()), (StepStatus::InFlight, None));
    assert_eq!(in_flight.unresolved, Some(UnresolvedCall::ServerError));
    let created = flow.stub.transfers();
    assert_eq!(created.len(), 1, "Stripe created it before failing");

    // SQS redelivers: the worker looks the transfer up (its key would only replay the 500), finds
    // it by its step id, and records it without a second POST.
    assert_eq!(flow.run(&refs[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    let lookups = flow.lookups_of("/v1/transfers");
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert!(
        lookups[0].contains("transfer_group=group_pi_1") && lookups[0].contains("destination=acct_A"),
        "{lookups:?}"
    );
    // And again: the step is final, so nothing reaches Stripe.
    let calls = flow.stripe_calls();
    assert_eq!(flow.run(&refs[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(flow.stripe_calls(), calls);
    assert_eq!(flow.stub.transfers(), created, "the lookup found the one transfer; none made again");
    assert_eq!(flow.step(&refs[0]).await.stripe_id.as_deref(), Some(created[0].id.as_str()));
    assert_eq!(flow.keys_sent_to("/v1/transfers"), ["connect-flow:tr:pi_1:acct_A:0"], "one POST");

    // The same on a reversal.
    assert_eq!(drain(&flow.worker, &refs[1..], 1, 5).await, []);
    assert_eq!(
        flow.deliver(&charge_refunded("evt_r", "pi_1", 10_000, 10_000, NOW - 90)).await,
        Delivery::Recorded(EventOutcome::Applied)
    );
    let reversals = flow.queued("pi_1", StepKind::Reversal).await;
    let ids: Vec<&str> = reversals.iter().map(|r| r.step_id.as_str()).collect();
    assert_eq!(ids, ["trr:tr:pi_1:acct_A:7000", "trr:tr:pi_1:acct_B:2000"]);
    // A's reversal is made, then answered 500; B's is rate limited before anything ran.
    flow.stub.inject("/v1/transfers/", Fault::ServerErrorAfterCreate);
    flow.stub.inject("/v1/transfers/", Fault::RateLimited);
    assert_eq!(drain(&flow.worker, &reversals, 2, 20).await, []);
    assert_eq!(flow.stub.pending_faults(), 0);
    let made = flow.stub.reversals();
    assert_eq!(made.len(), 2, "{made:#?}");
    let transfers = flow.stub.transfers();
    let by_step: BTreeMap<&str, _> = made.iter().map(|r| (step_of(&r.metadata), r)).collect();
    for (reversal, (transfer, amount)) in reversals.iter().zip([(&transfers[0], 7000), (&transfers[1], 2000)])
    {
        let stub = by_step[reversal.step_id.as_str()];
        assert_eq!((stub.transfer.as_str(), stub.amount), (transfer.id.as_str(), amount));
        assert_eq!(flow.step(reversal).await.stripe_id.as_deref(), Some(stub.id.as_str()));
        let path = format!("/v1/transfers/{}/reversals", transfer.id);
        // Each in-flight reversal was looked up once before anything was sent again.
        assert_eq!(flow.lookups_of(&path).len(), 1, "{path}");
        let key = format!("connect-flow:{}:0", reversal.step_id);
        let expected = if amount == 7000 {
            // Found by the lookup: its key, which would replay the 500, is not sent again.
            vec![key]
        } else {
            // Not found after a 429 (nothing ran) with a young key: the same key again.
            vec![key.clone(), key]
        };
        assert_eq!(flow.keys_sent_to(&path), expected, "{path}");
    }
    assert!(flow.stub.transfers().iter().all(|t| t.amount_reversed == t.amount));
    assert_eq!(flow.stub.platform_balance("usd"), 10_000);
}

async fn a_crash_around_the_stripe_call_is_found_by_lookup_not_repeated<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    let refs = pay_a_and_b(&flow).await;

    // Crash before marking in flight: nothing reaches Stripe.
    flow.store.crash_next([Crash::BeforeWrite]);
    assert!(matches!(flow.run(&refs[0]).await, Err(WorkerError::Store(StoreError::Unavailable(_)))));
    assert_eq!(flow.step(&refs[0]).await.status, StepStatus::Queued);
    assert_eq!(flow.stripe_calls(), 0);

    // Crash after the Stripe call, before recording its result.
    flow.store.crash_next([Crash::No, Crash::BeforeWrite]);
    assert!(matches!(flow.run(&refs[0]).await, Err(WorkerError::Store(_))));
    let in_flight = flow.step(&refs[0]).await;
    assert_eq!((in_flight.status, in_flight.stripe_id.as_deref()), (StepStatus::InFlight, None));
    let created = flow.stub.transfers();
    assert_eq!(created.len(), 1);
    // The redelivery finds the step in flight and looks it up before any call.
    assert_eq!(flow.run(&refs[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(flow.stub.transfers(), created, "the lookup found the transfer; none made again");
    assert_eq!(flow.step(&refs[0]).await.stripe_id.as_deref(), Some(created[0].id.as_str()));
    assert_eq!(flow.lookups_of("/v1/transfers").len(), 1);
    assert_eq!(flow.keys_sent_to("/v1/transfers"), ["connect-flow:tr:pi_1:acct_A:0"]);

    // The result is written but the worker dies before acknowledging: the redelivery finds it done.
    flow.store.crash_next([Crash::No, Crash::AfterWrite]);
    assert!(matches!(flow.run(&refs[1]).await, Err(WorkerError::Store(_))));
    assert_eq!(flow.step(&refs[1]).await.status, StepStatus::Succeeded);
    let calls = flow.stripe_calls();
    assert_eq!(flow.run(&refs[1]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(flow.stripe_calls(), calls);
    assert_eq!(
        flow.keys_sent_to("/v1/transfers"),
        ["connect-flow:tr:pi_1:acct_A:0", "connect-flow:tr:pi_1:acct_B:0"]
    );

    // A reversal crashed after its call; the next run finds it by lookup and crashes recording it.
    let refund = charge_refunded("evt_r", "pi_1", 10_000, 10_000, NOW - 90);
    assert_eq!(flow.deliver(&refund).await, Delivery::Recorded(EventOutcome::Applied));
    let reversals = flow.queued("pi_1", StepKind::Reversal).await;
    flow.store.crash_next([Crash::No, Crash::BeforeWrite, Crash::BeforeWrite]);
    assert!(flow.run(&reversals[0]).await.is_err());
    assert!(flow.run(&reversals[0]).await.is_err());
    assert_eq!(flow.store.crashes(), 5);
    assert_eq!(flow.step(&reversals[0]).await.status, StepStatus::InFlight);
    assert_eq!(flow.stub.reversals().len(), 1);
    assert_eq!(drain(&flow.worker, &reversals, 2, 10).await, []);
    assert_eq!(flow.stub.transfers().len(), 2);
    assert_eq!(flow.stub.reversals().len(), 2, "{:#?}", flow.stub.reversals());
    let path = format!("/v1/transfers/{}/reversals", created[0].id);
    assert_eq!(flow.keys_sent_to(&path), [format!("connect-flow:{}:0", reversals[0].step_id)]);
    assert_eq!(flow.lookups_of(&path).len(), 2, "one lookup per run after the crash");
    assert_eq!(
        flow.step(&reversals[0]).await.stripe_id.as_deref(),
        flow.stub
            .reversals()
            .iter()
            .find(|r| step_of(&r.metadata) == reversals[0].step_id)
            .map(|r| r.id.as_str())
    );
    assert!(flow.stub.transfers().iter().all(|t| t.amount_reversed == t.amount));
    assert_eq!(flow.stub.platform_balance("usd"), 10_000);
}

async fn a_timed_out_call_is_replayed_once_stripe_finishes<S: AccountStore + Clone>(store: S) {
    // The client gives up quickly; the stand-in Stripe holds the request until released.
    let flow = Flow::start_with(store, |config| config.timeout = Duration::from_millis(300)).await;
    let refs = pay_a_and_b(&flow).await;
    flow.stub.inject("/v1/transfers", Fault::Timeout);
    assert!(matches!(flow.run(&refs[0]).await.unwrap(), Disposition::RetryLater(_)));
    assert_eq!(flow.step(&refs[0]).await.status, StepStatus::InFlight);
    // Retried while Stripe is still working on it: 409, retry later, nothing created twice.
    assert!(matches!(flow.run(&refs[0]).await.unwrap(), Disposition::RetryLater(_)));
    assert!(flow.stub.transfers().is_empty());
    assert_eq!(flow.stub.release_held().await, 1);
    assert_eq!(flow.stub.transfers().len(), 1);
    assert_eq!(flow.run(&refs[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    let transfers = flow.stub.transfers();
    assert_eq!(transfers.len(), 1);
    assert_eq!(flow.step(&refs[0]).await.stripe_id.as_deref(), Some(transfers[0].id.as_str()));
}

async fn a_manual_payout_account_is_paid_out_once<S: AccountStore + Clone>(store: S) {
    let flow = Flow::start(store).await;
    flow.onboard("acct_M", true).await;
    flow.stub.set_account_balance("acct_M", "usd", 5_000);
    let balance = balance_available("evt_b1", "acct_M", 5_000);
    assert_eq!(flow.deliver(&balance).await, Delivery::Recorded(EventOutcome::Applied));
    assert_eq!(flow.deliver(&balance).await, Delivery::Duplicate);
    let steps = flow.store.load_account_steps(&account_id("acct_M")).await.unwrap();
    let refs: Vec<StepRef> = steps.iter().map(Step::reference).collect();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].step_id, "po:acct_M:evt_b1:usd");

    flow.stub.inject("/v1/payouts", Fault::ServerErrorAfterCreate);
    assert_eq!(drain(&flow.worker, &refs, 3, 20).await, []);
    let payouts = flow.stub.payouts();
    assert_eq!(payouts.len(), 1, "{payouts:#?}");
    assert_eq!(
        (payouts[0].account.as_str(), payouts[0].amount, payouts[0].currency.as_str()),
        ("acct_M", 5000, "usd")
    );
    assert_eq!(step_of(&payouts[0].metadata), "po:acct_M:evt_b1:usd");
    assert_eq!(flow.stub.account_balance("acct_M", "usd"), 0);
    let requests: Vec<_> = flow.stub.received().into_iter().filter(|r| r.path == "/v1/payouts").collect();
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["POST", "GET"], "the created-then-500 call, then the lookup that found it");
    for request in &requests {
        assert_eq!(
            request.stripe_account.as_deref(),
            Some("acct_M"),
            "a payout is made and listed as the account"
        );
    }
    assert_eq!(requests[0].idempotency_key.as_deref(), Some("connect-flow:po:acct_M:evt_b1:usd:0"));
    let step = flow.step(&refs[0]).await;
    assert_eq!(
        (step.status, step.stripe_id.as_deref()),
        (StepStatus::Succeeded, Some(payouts[0].id.as_str()))
    );
    let calls = flow.stripe_calls();
    assert_eq!(flow.run(&refs[0]).await.unwrap(), Disposition::Done(StepStatus::Succeeded));
    assert_eq!(flow.stripe_calls(), calls);
}

integration_tests::on_both_stores!(
    a_payment_transfers_each_split_exactly_once,
    refunds_reverse_each_share_exactly_once,
    a_refund_nets_unsent_transfers_and_reverses_only_after_the_transfer,
    an_inactive_destination_waits_without_calling_stripe,
    balance_insufficient_waits_and_retries_under_a_new_key,
    a_definite_refusal_fails_the_step_with_stripes_code,
    a_500_after_create_is_found_by_lookup_not_repeated,
    a_crash_around_the_stripe_call_is_found_by_lookup_not_repeated,
    a_timed_out_call_is_replayed_once_stripe_finishes,
    a_manual_payout_account_is_paid_out_once,
);

// ---------------------------------------------------------------------------------------------
// Random interleavings.
// ---------------------------------------------------------------------------------------------

/// SplitMix64: the interleaving's own randomness, from one seed proptest chooses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// One random run: what fails, and in which order things happen.
#[derive(Debug, Clone)]
struct Interleaving {
    /// Faults queued at the stand-in Stripe before anything runs, each for a path prefix.
    faults: Vec<(&'static str, Fault)>,
    /// One entry per `update_step` call of the worker, in order; then no more crashes.
    crashes: Vec<Crash>,
    /// Drives event order, duplicates, queue order, redeliveries and concurrent runs.
    seed: u64,
    /// Whether the platform starts without enough balance for the transfers.
    platform_short: bool,
}

fn interleavings() -> impl Strategy<Value = Interleaving> {
    let prefix = prop::sample::select(vec!["/v1/", "/v1/transfers", "/v1/transfers/", "/v1/payouts"]);
    let fault = prop::sample::select(vec![
        Fault::ServerErrorAfterCreate,
        Fault::RateLimited,
        Fault::BalanceInsufficient,
    ]);
    let crash =
        prop::sample::select(vec![Crash::No, Crash::No, Crash::No, Crash::BeforeWrite, Crash::AfterWrite]);
    (
        prop::collection::vec((prefix, fault), 0..8),
        prop::collection::vec(crash, 0..40),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(faults, crashes, seed, platform_short)| Interleaving {
            faults,
            crashes,
            seed,
            platform_short,
        })
}

/// The sweep with no age thresholds: every open step is old enough.
const SWEEP_EVERYTHING: SweepSettings =
    SweepSettings { queued_after_secs: 0, in_flight_after_secs: 0, waiting_after_secs: 0, batch: 500 };

/// The largest cumulative refund the interleaving delivers (the full refund, always delivered).
const MAX_REFUNDED: i64 = 10_000;

/// What the platform is topped up by whenever a step waits for its balance.
const TOP_UP: i64 = 1_000_000;
/// A bound on queue work, far above what any interleaving needs: the run must finish under it.
const MAX_TICKS: usize = 5_000;

/// Payment of 10 000 (7 000 to A, 2 000 to B) → partial refund of 2 500 → full refund, and a
/// balance of 4 000 available on the manual-payout account M, delivered in a shuffled order with
/// duplicates (the payment's first trigger always first), interleaved with worker runs of
/// shuffled, redelivered and sometimes concurrent queue messages, through random Stripe faults and
/// worker crashes. Parked messages are dropped, as the queue driver acknowledges them; when the
/// queue runs dry the sweep re-queues what waits or is stranded. A transfer not yet sent when a
/// refund arrives is netted down (or refused, refunded whole) instead of reversed, so the money
/// is the invariant: per seller, what was transferred less what was reversed at the stand-in Stripe
/// is its split less its share of the largest refund, and no step's object exists twice.
async fn random_interleaving<S: AccountStore + Clone>(store: S, case: Interleaving) {
    let flow = Flow::start(store).await;
    let mut rng = Rng(case.seed);
    for account in ["acct_A", "acct_B", "acct_M"] {
        flow.onboard(account, true).await;
    }
    let initial_platform = if case.platform_short { 5_000 } else { 9_000 };
    flow.stub.set_platform_balance("usd", initial_platform);
    flow.stub.set_account_balance("acct_M", "usd", 4_000);
    for (prefix, fault) in &case.faults {
        flow.stub.inject(prefix, *fault);
    }
    flow.store.crash_next(case.crashes.iter().copied());

    let splits = [("acct_A", 7000), ("acct_B", 2000)];
    let mut triggers = vec![
        payment_succeeded("evt_pi", "pi_1", 10_000, &splits),
        charge_succeeded("evt_ch", "pi_1", 10_000, &splits),
    ];
    if rng.one_in(2) {
        triggers.swap(0, 1);
    }
    let mut rest = vec![
        triggers.pop().unwrap(),
        charge_refunded("evt_r1", "pi_1", 10_000, 2_500, NOW - 90),
        charge_refunded("evt_r2", "pi_1", 10_000, 10_000, NOW - 80),
        balance_available("evt_b1", "acct_M", 4_000),
    ];
    // Redeliveries, each after its original.
    let mut events = triggers;
    while !rest.is_empty() {
        let event = rest.remove(rng.below(rest.len()));
        if rng.one_in(2) {
            rest.push(event.clone());
        }
        events.push(event);
    }

    let mut delivered = 0;
    let mut enqueued = HashSet::new();
    let mut queue: Vec<StepRef> = Vec::new();
    let mut top_ups = 0;
    let mut runs = 0;
    let mut sweeps = 0;
    for _ in 0..MAX_TICKS {
        if delivered < events.len() && (queue.is_empty() || rng.one_in(3)) {
            let delivery = flow.deliver(&events[delivered]).await;
            assert!(
                matches!(
                    delivery,
                    // Stale: the partial refund's snapshot, delivered after the full one's.
                    Delivery::Duplicate
                        | Delivery::Recorded(
                            EventOutcome::Applied | EventOutcome::Unchanged | EventOutcome::Stale
                        )
                ),
                "{delivery:?} for {}",
                events[delivered]["id"]
            );
            delivered += 1;
            // What the pipeline queues after its commit, in no particular order.
            let mut steps = flow.payment_steps("pi_1").await;
            steps.extend(flow.store.load_account_steps(&account_id("acct_M")).await.unwrap());
            for step in steps {
                if enqueued.insert(step.step_id.clone()) {
                    assert_eq!(step.status, StepStatus::Queued, "{step:?}");
                    queue.insert(rng.below(queue.len() + 1), step.reference());
                }
            }
            continue;
        }
        if queue.is_empty() && delivered == events.len() {
            // The queue ran dry: the sweep sends back whatever waits or was stranded.
            let swept = integration_tests::RecordingQueue::default();
            let report = sweep(&flow.store, &swept, NOW + 1, &SWEEP_EVERYTHING).await.unwrap();
            sweeps += 1;
            if report.total() == 0 {
                break;
            }
            queue.extend(swept.take());
            continue;
        }
        let Some(step_ref) = (!queue.is_empty()).then(|| queue.remove(rng.below(queue.len()))) else { break };
        if rng.one_in(6) {
            // SQS delivers a copy of the message again later.
            queue.insert(rng.below(queue.len() + 1), step_ref.clone());
        }
        let results = if rng.one_in(5) {
            // Two consumers got the same message at once.
            let (first, second) = tokio::join!(flow.run(&step_ref), flow.run(&step_ref));
            vec![first, second]
        } else {
            vec![flow.run(&step_ref).await]
        };
        runs += results.len();
        let mut redeliver = false;
        for result in results {
            match result {
                Ok(Disposition::Done(StepStatus::Succeeded)) => {}
                Ok(Disposition::Done(StepStatus::Refused)) => {
                    // Only a transfer the refund took back whole before it was sent.
                    let step = flow.step(&step_ref).await;
                    assert_eq!(
                        (step.kind, step.amount, step.reason.as_deref()),
                        (StepKind::Transfer, 0, Some(NETTED_OUT)),
                        "{step:?}"
                    );
                }
                Ok(Disposition::Done(status)) => panic!("{} ended {status:?}", step_ref.step_id),
                Ok(Disposition::Parked(reason)) => {
                    // Acknowledged: the step waits in the store until the sweep sends it back.
                    if reason == BALANCE_INSUFFICIENT {
                        flow.stub.set_platform_balance("usd", flow.stub.platform_balance("usd") + TOP_UP);
                        top_ups += 1;
                    } else {
                        assert_eq!(reason, TRANSFER_NOT_MADE, "{}", step_ref.step_id);
                    }
                }
                Ok(Disposition::RetryLater(_)) => redeliver = true,
                Err(WorkerError::Store(_) | WorkerError::Contention(_)) => redeliver = true,
                Err(error @ WorkerError::UnknownStep(_)) => panic!("{error}"),
            }
        }
        if redeliver {
            queue.insert(rng.below(queue.len() + 1), step_ref);
        }
    }
    assert!(
        delivered == events.len() && queue.is_empty(),
        "the run did not finish in {MAX_TICKS} ticks: {delivered}/{} events, queue {queue:?}",
        events.len()
    );

    // Every planned step is final: succeeded, or a transfer netted out whole before it was sent.
    let mut steps = flow.payment_steps("pi_1").await;
    let payout_steps = flow.store.load_account_steps(&account_id("acct_M")).await.unwrap();
    steps.extend(payout_steps.iter().cloned());
    for step in &steps {
        match step.status {
            StepStatus::Succeeded => assert!(step.stripe_id.is_some(), "{step:?}"),
            StepStatus::Refused => {
                assert_eq!(
                    (step.kind, step.amount, step.reason.as_deref(), step.stripe_id.as_deref()),
                    (StepKind::Transfer, 0, Some(NETTED_OUT), None),
                    "{step:?}"
                );
            }
            status => panic!("{status:?}: {step:?}"),
        }
    }
    let planned = |kind: StepKind| -> BTreeMap<String, Step> {
        steps.iter().filter(|s| s.kind == kind).map(|s| (s.step_id.to_string(), s.clone())).collect()
    };
    let (planned_transfers, planned_reversals, planned_payouts) =
        (planned(StepKind::Transfer), planned(StepKind::Reversal), planned(StepKind::Payout));
    let made = |steps: &BTreeMap<String, Step>| -> Vec<String> {
        steps.values().filter(|s| s.status == StepStatus::Succeeded).map(|s| s.step_id.to_string()).collect()
    };

    // The planned transfers are the splits: what was netted plus what was left to send.
    let split_of: BTreeMap<&str, i64> = splits.iter().copied().collect();
    let planned_splits: Vec<(&str, i64)> =
        planned_transfers.values().map(|s| (s.destination.as_str(), s.amount + s.netted)).collect();
    assert_eq!(planned_splits, splits);

    // Transfers: one per transfer step that succeeded, none for a netted-out one.
    let transfers = flow.stub.transfers();
    let by_step: BTreeMap<&str, _> = transfers.iter().map(|t| (step_of(&t.metadata), t)).collect();
    assert_eq!(by_step.len(), transfers.len(), "a transfer step was created twice: {transfers:#?}");
    assert_eq!(by_step.keys().map(|id| (*id).to_owned()).collect::<Vec<_>>(), made(&planned_transfers));
    for transfer in &transfers {
        let step = &planned_transfers[step_of(&transfer.metadata)];
        assert_eq!(step.stripe_id.as_deref(), Some(transfer.id.as_str()));
        assert_eq!(
            (transfer.amount, transfer.destination.as_str(), transfer.currency.as_str()),
            (step.amount, step.destination.as_str(), "usd")
        );
        assert_eq!(transfer.source_transaction.as_deref(), Some("ch_pi_1"));
        assert_eq!(transfer.transfer_group.as_deref(), Some("group_pi_1"));
    }

    // Reversals: exactly the planned ones, each once, each of its step's transfer.
    let reversals = flow.stub.reversals();
    let by_step: BTreeMap<&str, _> = reversals.iter().map(|r| (step_of(&r.metadata), r)).collect();
    assert_eq!(by_step.len(), reversals.len(), "a reversal step was created twice: {reversals:#?}");
    assert_eq!(by_step.keys().map(|id| (*id).to_owned()).collect::<Vec<_>>(), made(&planned_reversals));
    assert_eq!(made(&planned_reversals).len(), planned_reversals.len());
    for reversal in &reversals {
        let step = &planned_reversals[step_of(&reversal.metadata)];
        let transfer_step = &planned_transfers[step.reverses_step.as_deref().unwrap()];
        assert_eq!(step.stripe_id.as_deref(), Some(reversal.id.as_str()));
        assert_eq!(reversal.amount, step.amount);
        assert_eq!(Some(reversal.transfer.as_str()), transfer_step.stripe_id.as_deref());
    }
    for transfer in &transfers {
        let reversed: i64 = reversals.iter().filter(|r| r.transfer == transfer.id).map(|r| r.amount).sum();
        assert_eq!(transfer.amount_reversed, reversed, "{}", transfer.id);
    }

    // The money: per seller, transferred less reversed is the split less its share of the refund.
    for (seller, split) in &split_of {
        let transferred: i64 = transfers.iter().filter(|t| t.destination == *seller).map(|t| t.amount).sum();
        let reversed: i64 = reversals.iter().filter(|r| r.destination == *seller).map(|r| r.amount).sum();
        let kept = split - split * MAX_REFUNDED / 10_000;
        assert_eq!(transferred - reversed, kept, "{seller}: {transfers:#?} {reversals:#?}");
        assert_eq!(flow.stub.account_balance(seller, "usd"), kept, "{seller}");
    }

    // Payouts: the one planned, made as acct_M.
    let payouts = flow.stub.payouts();
    assert_eq!(payouts.len(), 1, "{payouts:#?}");
    assert_eq!((payouts[0].account.as_str(), payouts[0].amount), ("acct_M", 4_000));
    assert_eq!(planned_payouts.len(), 1);
    let payout_step = planned_payouts.values().next().unwrap();
    assert_eq!(step_of(&payouts[0].metadata), payout_step.step_id);
    assert_eq!(payout_step.stripe_id.as_deref(), Some(payouts[0].id.as_str()));

    // Not one cent moved twice: every balance is back where it started, plus the top-ups.
    assert_eq!(flow.stub.platform_balance("usd"), initial_platform + top_ups * TOP_UP);
    assert_eq!(flow.stub.account_balance("acct_M", "usd"), 0);
    assert!(runs > 0 && sweeps > 0);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

mod interleavings {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn sqlite_random_interleavings_move_each_cent_once(case in interleavings()) {
            runtime().block_on(random_interleaving(integration_tests::sqlite_store(), case));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

        #[test]
        fn dynamodb_random_interleavings_move_each_cent_once(case in interleavings()) {
            runtime().block_on(async { random_interleaving(integration_tests::dynamo_store().await, case).await });
        }
    }
}

/// Events Stripe delivers out of order: each test states the behaviour money safety needs.
mod delivery_order {
    use super::*;

    /// A `charge.refunded` delivered before the payment's `payment_intent.succeeded` (Stripe does
    /// not order deliveries, and retries a failed one hours later) is remembered, so that the
    /// transfers planned afterwards are netted out in the same write that plans them: refunded
    /// whole, they are refused and never sent, so nothing needs reversing.
    #[tokio::test]
    async fn a_refund_delivered_before_its_payment_nets_its_transfers_out() {
        let flow = Flow::start(integration_tests::sqlite_store()).await;
        flow.onboard("acct_A", true).await;
        flow.onboard("acct_B", true).await;
        flow.stub.set_platform_balance("usd", 10_000);
        let refund = charge_refunded("evt_r", "pi_1", 10_000, 10_000, NOW - 80);
        flow.deliver(&refund).await;
        let splits = [("acct_A", 7000), ("acct_B", 2000)];
        flow.deliver(&payment_succeeded("evt_pi", "pi_1", 10_000, &splits)).await;
        flow.deliver(&refund).await;
        let all: Vec<StepRef> = flow.payment_steps("pi_1").await.iter().map(Step::reference).collect();
        assert_eq!(drain(&flow.worker, &all, 1, 20).await, []);
        let steps = flow.payment_steps("pi_1").await;
        let got: Vec<_> = steps
            .iter()
            .map(|s| (s.kind, s.destination.as_str(), s.status, s.amount, s.netted, s.reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (StepKind::Transfer, "acct_A", StepStatus::Refused, 0, 7000, Some(NETTED_OUT)),
                (StepKind::Transfer, "acct_B", StepStatus::Refused, 0, 2000, Some(NETTED_OUT)),
            ]
        );
        assert!(flow.stub.transfers().is_empty(), "{:#?}", flow.stub.transfers());
        assert!(flow.stub.reversals().is_empty());
        assert_eq!(flow.stripe_calls(), 0, "nothing of a fully refunded charge reaches Stripe");
        assert_eq!(flow.stub.platform_balance("usd"), 10_000, "the platform paid out for a refunded charge");
    }
}
