//! The worker against a scripted Stripe ([`StripeApi`]), no HTTP: the answers Stripe really gives
//! under its idempotency rules (a key's first answer, a 500 included, is replayed), and the
//! lookups that must decide before any retry.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::*;
use crate::clock::FixedClock;
use crate::store::sqlite::SqliteStore;
use crate::store::{EventOutcome, EventRecord, EventWrite};

const NOW: i64 = 1_750_000_000;
const SELLER: &str = "acct_1ScriptedSeller1";

/// What the next create does, in order; once the script is used up, creates succeed.
#[derive(Clone, Copy)]
enum Create {
    /// Stripe answers 500 and keeps that answer under the key.
    ServerError,
    /// Stripe makes the transfer, but the answer never arrives.
    MadeButLost,
}

#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<Create>>,
    /// Each key's first answer, replayed for every later call with the same key.
    answers: Mutex<HashMap<String, Result<StripeObject, StripeError>>>,
    /// Transfers made, by the step id in their metadata.
    transfers: Mutex<Vec<(String, StripeObject)>>,
    creates: Mutex<Vec<String>>,
}

impl Scripted {
    fn with(script: &[Create]) -> Self {
        Self { script: Mutex::new(script.iter().copied().collect()), ..Self::default() }
    }

    fn made(&self) -> usize {
        self.transfers.lock().unwrap().len()
    }

    fn keys(&self) -> Vec<String> {
        self.creates.lock().unwrap().clone()
    }
}

fn server_error() -> StripeError {
    StripeError::Retryable { status: Some(500), message: "api_error".into() }
}

impl StripeApi for Scripted {
    async fn create_transfer(
        &self,
        transfer: &CreateTransfer<'_>,
        key: &str,
    ) -> Result<StripeObject, StripeError> {
        self.creates.lock().unwrap().push(key.to_owned());
        if let Some(answer) = self.answers.lock().unwrap().get(key) {
            return answer.clone();
        }
        let step_id = transfer.metadata.iter().find(|(name, _)| *name == STEP_METADATA).map(|(_, id)| *id);
        let make = || {
            let id = format!("tr_{}", self.made() + 1);
            let object = StripeObject { id: id.clone(), raw: json!({"id": id, "amount": transfer.amount}) };
            self.transfers.lock().unwrap().push((step_id.unwrap_or_default().to_owned(), object.clone()));
            object
        };
        let next = self.script.lock().unwrap().pop_front();
        let answer = match next {
            Some(Create::ServerError) => Err(server_error()),
            Some(Create::MadeButLost) => {
                make();
                return Err(StripeError::Retryable { status: None, message: "connection reset".into() });
            }
            None => Ok(make()),
        };
        self.answers.lock().unwrap().insert(key.to_owned(), answer.clone());
        answer
    }

    async fn create_transfer_reversal(
        &self,
        _: &str,
        _: i64,
        _: &[(&str, &str)],
        _: &str,
    ) -> Result<StripeObject, StripeError> {
        Err(StripeError::Config("no reversal in these tests".into()))
    }

    async fn create_payout_by(
        &self,
        _: &AccountId,
        _: i64,
        _: &str,
        _: PayoutParams<'_>,
        _: &[(&str, &str)],
        _: &str,
    ) -> Result<StripeObject, StripeError> {
        Err(StripeError::Config("no payout in these tests".into()))
    }

    async fn retrieve_account(&self, account: &AccountId) -> Result<Value, StripeError> {
        Ok(json!({"id": account.as_str(), "capabilities": {"transfers": "active"}}))
    }

    async fn find_transfer(
        &self,
        _: &str,
        _: &AccountId,
        step_id: &str,
    ) -> Result<Option<StripeObject>, StripeError> {
        let transfers = self.transfers.lock().unwrap();
        Ok(transfers.iter().find(|(made_by, _)| made_by == step_id).map(|(_, object)| object.clone()))
    }

    async fn find_reversal(&self, _: &str, _: &str) -> Result<Option<StripeObject>, StripeError> {
        Ok(None)
    }

    async fn find_payout(&self, _: &AccountId, _: &str, _: i64) -> Result<Option<StripeObject>, StripeError> {
        Ok(None)
    }

    fn livemode(&self) -> Option<bool> {
        Some(false)
    }

    fn with_metrics(self, _: Metrics) -> Self {
        self
    }
}

fn transfer_step() -> Step {
    Step { amount: 700, ..Step::queued_transfer("tr:pi_scripted:acct_1ScriptedSeller1", SELLER, NOW) }
}

async fn worker(stripe: Scripted) -> (StepWorker<SqliteStore, FixedClock, Scripted>, StepRef) {
    let store = SqliteStore::in_memory().unwrap();
    let step = transfer_step();
    let record = EventRecord {
        event_id: "evt_scripted".to_owned(),
        event_type: "payment_intent.succeeded".to_owned(),
        account_id: None,
        created: Some(NOW),
        livemode: Some(false),
        outcome: EventOutcome::Applied,
        reason: None,
        received_at: NOW,
        expires_at: NOW + 1,
        fetch: None,
    };
    store.commit(&EventWrite::with_steps(&record, std::slice::from_ref(&step))).await.unwrap();
    (StepWorker::with_clock(store, stripe, FixedClock(NOW)), step.reference())
}

async fn status(worker: &StepWorker<SqliteStore, FixedClock, Scripted>, step: &StepRef) -> Step {
    worker.store().load_step(step).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_transfer_made_but_unanswered_is_found_by_lookup_and_never_made_twice() {
    let (worker, step) = worker(Scripted::with(&[Create::MadeButLost])).await;
    assert!(matches!(worker.run(&step).await.unwrap(), Disposition::RetryLater(_)));
    assert_eq!(status(&worker, &step).await.status, StepStatus::InFlight);
    assert!(matches!(worker.run(&step).await.unwrap(), Disposition::Done(StepStatus::Succeeded)));
    let done = status(&worker, &step).await;
    assert_eq!(done.stripe_id.as_deref(), Some("tr_1"));
    assert_eq!(worker.stripe.made(), 1, "one transfer, however many runs");
    assert_eq!(worker.stripe.keys().len(), 1, "the lookup decided: no second create");
    // A third delivery of the same message changes nothing.
    assert!(matches!(worker.run(&step).await.unwrap(), Disposition::Done(StepStatus::Succeeded)));
    assert_eq!(worker.stripe.keys().len(), 1);
}

#[tokio::test]
async fn a_replayed_500_is_not_retried_under_its_key_but_under_the_next_attempt_after_a_lookup() {
    let (worker, step) = worker(Scripted::with(&[Create::ServerError])).await;
    assert!(matches!(worker.run(&step).await.unwrap(), Disposition::RetryLater(_)));
    let after_500 = status(&worker, &step).await;
    assert_eq!(after_500.unresolved, Some(UnresolvedCall::ServerError));
    assert!(matches!(worker.run(&step).await.unwrap(), Disposition::Done(StepStatus::Succeeded)));
    let keys = worker.stripe.keys();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "the first key would only replay its 500");
    assert_eq!(worker.stripe.made(), 1);
    assert_eq!(status(&worker, &step).await.attempt, 1);
}

#[tokio::test]
async fn every_create_carries_the_steps_deterministic_key() {
    let (worker, step) = worker(Scripted::default()).await;
    worker.run(&step).await.unwrap();
    let stored = status(&worker, &step).await;
    assert_eq!(worker.stripe.keys(), vec![transfer_step().idempotency_key()]);
    assert_eq!(stored.status, StepStatus::Succeeded);
}
