//! The [`StepQueue`] on SQS FIFO queues: transfers and reversals on one, payouts on the other.
//!
//! Each message is one [`StepRef`] as JSON. `MessageGroupId` is the destination account, so that
//! one account's steps run in order while other accounts' run in parallel; `MessageDeduplicationId`
//! is the step id, so that a step sent twice within SQS's five-minute window is delivered once.

use std::collections::BTreeSet;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use sha2::{Digest, Sha256};

use super::{BoxFuture, Queue, StepQueue, StoreError};
use crate::domain::fetch::FetchRef;
use crate::domain::step::StepRef;
use crate::worker::MAX_RECEIVES;

/// The URL of the FIFO queue for transfer and reversal steps.
pub const TRANSFERS_QUEUE_URL: &str = "CONNECT_FLOW_TRANSFERS_QUEUE_URL";
/// The URL of the FIFO queue for payout steps.
pub const PAYOUTS_QUEUE_URL: &str = "CONNECT_FLOW_PAYOUTS_QUEUE_URL";
/// The URL of the FIFO queue for thin events' fetch steps.
pub const FETCH_QUEUE_URL: &str = "CONNECT_FLOW_FETCH_QUEUE_URL";
/// SQS's limit on the entries of one `SendMessageBatch`.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// SQS's limit on the length of a `MessageDeduplicationId`.
const MAX_DEDUPLICATION_ID_LEN: usize = 128;

/// Planned steps sent to two SQS FIFO queues, and thin events' fetches to a third.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    transfers_url: String,
    payouts_url: String,
    fetch_url: Option<String>,
}

/// One message: its body, its FIFO group and its deduplication id.
struct Outgoing<'a> {
    body: String,
    group: &'a str,
    deduplication: &'a str,
}

impl SqsQueue {
    /// A queue pair; both queues must already exist and be FIFO queues.
    pub fn new(client: Client, transfers_url: impl Into<String>, payouts_url: impl Into<String>) -> Self {
        Self { client, transfers_url: transfers_url.into(), payouts_url: payouts_url.into(), fetch_url: None }
    }

    /// Sends fetch steps to `fetch_url`, a FIFO queue, when one is given.
    pub fn with_fetch_queue(mut self, fetch_url: Option<String>) -> Self {
        self.fetch_url = fetch_url.map(|url| url.trim().to_owned()).filter(|url| !url.is_empty());
        self
    }

    /// Whether fetch steps have a queue to go to.
    #[cfg(test)]
    pub(crate) fn has_fetch_queue(&self) -> bool {
        self.fetch_url.is_some()
    }

    /// Sends one batch of at most ten messages; returns how many were not accepted, and why.
    async fn send_batch(&self, url: &str, messages: &[Outgoing<'_>]) -> Result<Option<Rejected>, StoreError> {
        let mut request = self.client.send_message_batch().queue_url(url);
        for (index, message) in messages.iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                // Entry ids only pair results with entries, and must be unique within the batch.
                .id(index.to_string())
                .message_body(message.body.clone())
                .message_group_id(message.group)
                .message_deduplication_id(deduplication_id(message.deduplication))
                .build()
                .map_err(build_failed)?;
            request = request.entries(entry);
        }
        match request.send().await {
            Ok(output) if output.failed().is_empty() => Ok(None),
            Ok(output) => Ok(Some(Rejected {
                count: output.failed().len(),
                codes: output.failed().iter().map(|entry| entry.code().to_owned()).collect(),
            })),
            Err(err) => {
                Ok(Some(Rejected { count: messages.len(), codes: BTreeSet::from([sdk_failure(&err)]) }))
            }
        }
    }

    /// Sends every message to `url` in batches; every batch is tried even after one fails, so
    /// that a retry has less to resend. Returns how many were not sent, and SQS's reasons.
    async fn send_all(
        &self,
        url: &str,
        messages: &[Outgoing<'_>],
    ) -> Result<(usize, BTreeSet<String>), StoreError> {
        let mut not_sent = 0;
        let mut codes = BTreeSet::new();
        for batch in messages.chunks(MAX_BATCH_ENTRIES) {
            if let Some(rejected) = self.send_batch(url, batch).await? {
                not_sent += rejected.count;
                codes.extend(rejected.codes);
            }
        }
        Ok((not_sent, codes))
    }
}

fn serialized(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize a queue message: {err}")))
}

fn not_sent_error(not_sent: usize, total: usize, what: &str, codes: BTreeSet<String>) -> StoreError {
    let codes: Vec<String> = codes.into_iter().collect();
    StoreError::Unavailable(format!(
        "SQS SendMessageBatch: {not_sent} of {total} {what} not sent ({})",
        codes.join(", ")
    ))
}

/// Entries SQS did not accept, counted, with SQS's reasons (never the message bodies).
struct Rejected {
    count: usize,
    codes: BTreeSet<String>,
}

impl StepQueue for SqsQueue {
    fn send<'a>(&'a self, steps: &'a [StepRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut not_sent = 0;
            let mut routed = 0;
            let mut codes = BTreeSet::new();
            // One routing rule for both stores ([`Queue::of`]).
            for (queue, url) in [(Queue::Transfers, &self.transfers_url), (Queue::Payouts, &self.payouts_url)]
            {
                let for_queue = steps
                    .iter()
                    .filter(|step| Queue::of(step.kind) == queue)
                    .map(|step| {
                        Ok(Outgoing {
                            body: serialized(step)?,
                            group: step.destination.as_str(),
                            deduplication: &step.step_id,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                routed += for_queue.len();
                let (failed, failure_codes) = self.send_all(url, &for_queue).await?;
                not_sent += failed;
                codes.extend(failure_codes);
            }
            if routed != steps.len() {
                not_sent += steps.len() - routed;
                codes.insert("no queue for the step's kind".to_owned());
            }
            if not_sent == 0 {
                return Ok(());
            }
            Err(not_sent_error(not_sent, steps.len(), "steps", codes))
        })
    }

    fn send_fetches<'a>(&'a self, fetches: &'a [FetchRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let Some(url) = &self.fetch_url else {
                return Err(StoreError::Unavailable(format!("{FETCH_QUEUE_URL} is not set: no fetch queue")));
            };
            let messages = fetches
                .iter()
                .map(|fetch| {
                    Ok(Outgoing {
                        body: serialized(fetch)?,
                        group: &fetch.group,
                        deduplication: &fetch.event_id,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            match self.send_all(url, &messages).await? {
                (0, _) => Ok(()),
                (not_sent, codes) => Err(not_sent_error(not_sent, fetches.len(), "fetches", codes)),
            }
        })
    }
}

/// The two queue URLs read through `lookup`, when both are set and not blank.
pub(crate) fn queue_urls_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let read = |name| lookup(name).map(|url| url.trim().to_owned()).filter(|url| !url.is_empty());
    Some((read(TRANSFERS_QUEUE_URL)?, read(PAYOUTS_QUEUE_URL)?))
}

/// Creates `{prefix}-transfers.fifo` and `{prefix}-payouts.fifo`, each with its dead-letter queue
/// `{prefix}-…-dlq.fifo`, and returns the two main queues' URLs (transfers, payouts); for tests
/// and local runs, since deployments get the queues from the template.
pub async fn create_queues(client: &Client, prefix: &str) -> Result<(String, String), StoreError> {
    let transfers = create_queue_with_dlq(client, &format!("{prefix}-transfers")).await?;
    let payouts = create_queue_with_dlq(client, &format!("{prefix}-payouts")).await?;
    Ok((transfers, payouts))
}

/// Creates the FIFO queue `{name}.fifo` with its dead-letter queue `{name}-dlq.fifo`, and returns
/// its URL; for tests and local runs.
pub async fn create_queue_with_dlq(client: &Client, name: &str) -> Result<String, StoreError> {
    let dlq_url = create_fifo_queue(client, &format!("{name}-dlq.fifo"), None).await?;
    let attributes = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|err| unavailable("GetQueueAttributes", &err))?;
    let dlq_arn = attributes
        .attributes()
        .and_then(|attributes| attributes.get(&QueueAttributeName::QueueArn))
        .ok_or_else(|| StoreError::Unavailable("SQS GetQueueAttributes: no QueueArn".to_owned()))?;
    // SQS, like the embedded queue, dead-letters a message once it has been received this often.
    let redrive = serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVES });
    create_fifo_queue(client, &format!("{name}.fifo"), Some(redrive.to_string())).await
}

async fn create_fifo_queue(
    client: &Client,
    name: &str,
    redrive_policy: Option<String>,
) -> Result<String, StoreError> {
    let mut request = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        // The step id is the deduplication id: two sends of one step must be one message even
        // if their bodies ever differ.
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
    if let Some(policy) = redrive_policy {
        request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
    }
    let output = request.send().await.map_err(|err| unavailable("CreateQueue", &err))?;
    output
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Unavailable("SQS CreateQueue: no queue URL".to_owned()))
}

/// The step id, unless it is longer than SQS allows: then its SHA-256, just as deterministic.
pub fn deduplication_id(step_id: &str) -> String {
    if step_id.len() <= MAX_DEDUPLICATION_ID_LEN {
        step_id.to_owned()
    } else {
        hex::encode(Sha256::digest(step_id.as_bytes()))
    }
}

/// SQS's error code for a service error; otherwise what kept the request from completing. Never
/// the request, which holds the body.
pub(crate) fn sdk_failure<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => service.code().unwrap_or("unknown SQS error").to_owned(),
        None => DisplayErrorContext(err).to_string(),
    }
}

fn unavailable<E, R>(action: &str, err: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(format!("SQS {action}: {}", sdk_failure(err)))
}

fn build_failed(err: BuildError) -> StoreError {
    StoreError::Unavailable(format!("could not build an SQS request: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplication_ids_are_step_ids_unless_too_long() {
        assert_eq!(deduplication_id("tr:pi_1:acct_A"), "tr:pi_1:acct_A");
        let long = "x".repeat(MAX_DEDUPLICATION_ID_LEN + 1);
        assert_eq!(deduplication_id(&long).len(), 64);
        assert_eq!(deduplication_id(&long), deduplication_id(&long));
    }

    #[test]
    fn queue_urls_need_both_variables() {
        let urls = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> =
                vars.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
            queue_urls_from_lookup(move |name| {
                vars.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone())
            })
        };
        assert_eq!(urls(&[(TRANSFERS_QUEUE_URL, "t")]), None);
        assert_eq!(urls(&[(TRANSFERS_QUEUE_URL, "t"), (PAYOUTS_QUEUE_URL, " ")]), None);
        assert_eq!(
            urls(&[(TRANSFERS_QUEUE_URL, "t"), (PAYOUTS_QUEUE_URL, "p")]),
            Some(("t".to_owned(), "p".to_owned()))
        );
    }
}
