//! The embedded store's queues, drained in-process: how `connect-flow serve` and `cargo lambda
//! watch` run the steps and fetches that SQS hands to the workers when deployed.

use tracing::Instrument;

use crate::clock::Clock;
use crate::fetch::{FetchDisposition, FetchWorker};
use crate::store::sqlite::SqliteStore;
use crate::store::{Queue, StoreError};
use crate::stripe::api::StripeApi;
use crate::worker::{Disposition, MAX_RECEIVES, StepWorker};

/// How long a received message stays hidden before the embedded queue offers it again.
const VISIBILITY_SECS: i64 = 30;

/// How many messages one pass takes from each embedded queue, as one SQS batch would.
const BATCH: usize = 10;

impl<C: Clock, A: StripeApi> StepWorker<SqliteStore, C, A> {
    /// One pass over both embedded queues: runs every visible message once, acknowledges the
    /// finished ones and dead-letters those received too often. Returns how many it handled.
    pub async fn drain_embedded(&self) -> Result<usize, StoreError> {
        let now = self.clock().now_unix();
        let mut handled = 0;
        for queue in Queue::STEPS {
            for message in self.store().receive(queue, now, VISIBILITY_SECS, BATCH)? {
                handled += 1;
                let span = tracing::info_span!(
                    "step",
                    step_id = %message.message_id,
                    kind = message.step.kind.as_str(),
                    account_id = message.step.destination.as_str(),
                    queue = queue.as_str()
                );
                let outcome = self.run(&message.step).instrument(span.clone()).await;
                let _entered = span.enter();
                match outcome {
                    Ok(Disposition::Done(_)) => {
                        self.store().acknowledge(queue, &message.message_id)?;
                        continue;
                    }
                    Ok(Disposition::Parked(reason)) => {
                        tracing::info!(reason, "step waits in the store");
                        self.store().acknowledge(queue, &message.message_id)?;
                        continue;
                    }
                    Ok(Disposition::RetryLater(reason)) => tracing::info!(reason, "step will be retried"),
                    Err(error) => tracing::warn!(%error, "step not run; will be retried"),
                }
                if message.receive_count >= MAX_RECEIVES {
                    tracing::error!(receives = message.receive_count, "step dead-lettered");
                    self.store().dead_letter(queue, &message.message_id)?;
                }
            }
        }
        self.metrics().flush();
        Ok(handled)
    }
}

impl<C: Clock> FetchWorker<SqliteStore, C> {
    /// One pass over the embedded fetch queue, as [`crate::worker::StepWorker::drain_embedded`]
    /// does for steps. Returns how many messages it handled.
    pub async fn drain_embedded(&self) -> Result<usize, StoreError> {
        let now = self.clock().now_unix();
        let store = self.store();
        let messages = store.receive_fetches(now, VISIBILITY_SECS, BATCH)?;
        for (fetch, receives) in &messages {
            let span = tracing::info_span!("fetch", event_id = %fetch.event_id, receives);
            let done =
                matches!(self.run(fetch).instrument(span.clone()).await, Ok(FetchDisposition::Done(_)));
            let _entered = span.enter();
            if done {
                store.acknowledge(Queue::Fetches, &fetch.event_id)?;
            } else if *receives >= MAX_RECEIVES {
                tracing::error!(receives, "fetch dead-lettered");
                store.dead_letter(Queue::Fetches, &fetch.event_id)?;
            }
        }
        self.metrics().flush();
        Ok(messages.len())
    }
}
