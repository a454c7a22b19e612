//! One way to wire a process: the store is chosen here and nowhere else (the DynamoDB table when
//! deployed, the embedded SQLite file locally), together with the step queue that goes with it.
//! Every Lambda function builds its [`Backend`] once per cold start and hands it what it runs
//! ([`Wire`]); the function's own settings (secrets, Stripe, paces) stay with the function.

use std::future::Future;
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::config::{ConfigError, StoreLocation};
use crate::store::dynamodb::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::sqs::{self, SqsQueue};
use crate::store::{AccountStore, StepQueue};

/// A failure to start a function: configuration, a secret, the store or the Stripe client.
pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// What a function runs once its store and queue exist, written once for any store.
pub trait Wire {
    /// What running it gives back (for a Lambda function, its whole life's result).
    type Output;

    /// Runs on `store`, sending planned steps and fetches to `queue` (`None` when the deployed
    /// function has no queue URLs: steps then wait in the table for the reconciler's sweep).
    fn wire<S: AccountStore + Clone>(
        self,
        store: S,
        queue: Option<Arc<dyn StepQueue>>,
    ) -> impl Future<Output = Self::Output>;
}

/// The store and queue of one process, read from its environment once.
pub enum Backend {
    /// Deployed: the table, and the SQS FIFO queues when their URLs are set.
    DynamoDb {
        /// The table.
        store: DynamoStore,
        /// The transfers, payouts and (when set) fetch queues.
        queue: Option<SqsQueue>,
    },
    /// Local (`cargo lambda watch`, `connect-flow`): the SQLite file, which is its own queue.
    Sqlite(SqliteStore),
}

impl Backend {
    /// Reads [`StoreLocation`] and the queue URLs from the process environment.
    pub fn from_env(aws: &aws_config::SdkConfig) -> Result<Self, StartError> {
        Self::from_lookup(aws, |name| std::env::var(name).ok())
    }

    /// Reads [`StoreLocation`] and the queue URLs through `lookup`. The fetch queue is wired
    /// wherever its URL is set, so every function that may plan a fetch can send it.
    pub fn from_lookup(
        aws: &aws_config::SdkConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        Ok(match StoreLocation::from_lookup(&lookup)? {
            StoreLocation::DynamoDb(table) => Self::DynamoDb {
                store: DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), table),
                queue: sqs::queue_urls_from_lookup(&lookup).map(|(transfers, payouts)| {
                    SqsQueue::new(aws_sdk_sqs::Client::new(aws), transfers, payouts)
                        .with_fetch_queue(lookup(sqs::FETCH_QUEUE_URL))
                }),
            },
            StoreLocation::Sqlite(path) => Self::Sqlite(SqliteStore::open(&path, SystemClock.now_unix())?),
        })
    }

    /// Refuses a deployed backend without queues, for a function whose whole job is to send
    /// steps (the reconciler): it would otherwise run and move nothing.
    pub(crate) fn requiring_queues(self) -> Result<Self, ConfigError> {
        match self {
            Self::DynamoDb { queue: None, .. } => Err(ConfigError::Missing(sqs::TRANSFERS_QUEUE_URL)),
            backend => Ok(backend),
        }
    }

    /// Runs `wire` on this backend's store and queue.
    pub async fn run<W: Wire>(self, wire: W) -> W::Output {
        match self {
            Self::DynamoDb { store, queue } => {
                if queue.is_none() {
                    tracing::warn!(
                        "{} or {} is not set: planned steps stay queued in the table and are not sent",
                        sqs::TRANSFERS_QUEUE_URL,
                        sqs::PAYOUTS_QUEUE_URL
                    );
                }
                wire.wire(store, queue.map(|queue| Arc::new(queue) as Arc<dyn StepQueue>)).await
            }
            Self::Sqlite(store) => {
                let queue: Arc<dyn StepQueue> = Arc::new(store.clone());
                wire.wire(store, Some(queue)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws() -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build()
    }

    struct Shape;

    impl Wire for Shape {
        type Output = (&'static str, bool);

        async fn wire<S: AccountStore + Clone>(
            self,
            _: S,
            queue: Option<Arc<dyn StepQueue>>,
        ) -> Self::Output {
            (std::any::type_name::<S>(), queue.is_some())
        }
    }

    fn backend(vars: &[(&str, &str)]) -> Result<Backend, StartError> {
        let vars: Vec<(String, String)> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Backend::from_lookup(&aws(), move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[tokio::test]
    async fn the_table_wins_over_the_file_and_brings_every_queue_whose_url_is_set() {
        let backend = backend(&[
            ("CONNECT_FLOW_TABLE", "accounts"),
            ("CONNECT_FLOW_DB", "/nonexistent/never-opened.db"),
            (sqs::TRANSFERS_QUEUE_URL, "http://127.0.0.1:1/transfers.fifo"),
            (sqs::PAYOUTS_QUEUE_URL, "http://127.0.0.1:1/payouts.fifo"),
            (sqs::FETCH_QUEUE_URL, "http://127.0.0.1:1/fetches.fifo"),
        ])
        .unwrap();
        let Backend::DynamoDb { queue: Some(queue), .. } = &backend else {
            panic!("expected the table with queues")
        };
        assert!(queue.has_fetch_queue(), "the fetch queue is wired wherever its URL is set");
        let (store, has_queue) = backend.run(Shape).await;
        assert!(store.ends_with("DynamoStore") && has_queue);
    }

    #[tokio::test]
    async fn a_table_without_queue_urls_runs_without_a_queue_unless_queues_are_required() {
        let without = || backend(&[("CONNECT_FLOW_TABLE", "accounts")]).unwrap();
        assert!(!without().run(Shape).await.1);
        assert!(matches!(without().requiring_queues(), Err(ConfigError::Missing(sqs::TRANSFERS_QUEUE_URL))));
    }

    #[tokio::test]
    async fn the_file_is_its_own_queue() {
        let dir = std::env::temp_dir().join(format!("connect-flow-app-{}.db", std::process::id()));
        let backend = backend(&[("CONNECT_FLOW_DB", dir.to_str().unwrap())]).unwrap();
        let (store, has_queue) = backend.requiring_queues().unwrap().run(Shape).await;
        assert!(store.ends_with("SqliteStore") && has_queue);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", dir.display()));
        }
    }

    #[test]
    fn no_store_configured_is_a_clear_start_error() {
        let error = backend(&[]).err().expect("no store is an error").to_string();
        assert!(error.contains("is not set"), "{error}");
    }
}
