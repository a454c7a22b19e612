//! Helpers shared by the integration tests: stores on SQLite and on the DynamoDB emulator, and
//! signed deliveries.

pub mod fault_proxy;
pub mod fund_events;
pub mod log_capture;
pub mod stripe_stub;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::config::WebhookSettings;
use shared::store::dynamodb::{DynamoStore, create_table};
use shared::store::sqlite::SqliteStore;
use shared::store::{
    CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite, StoreError,
};
use shared::stripe::signature::{WebhookSecret, sign};
use shared::webhook::WebhookService;

/// The signing secret every test deployment uses.
pub const SECRET: &str = "whsec_integration_tests";
/// The fixed "now" of every test pipeline.
pub const NOW: i64 = 1_750_000_000;
/// The variable that names the DynamoDB emulator's endpoint (set by the test script).
pub const DYNAMODB_ENDPOINT: &str = "CONNECT_FLOW_TEST_DYNAMODB_ENDPOINT";

/// Settings with the test secret, the default tolerance and no livemode restriction.
pub fn settings() -> WebhookSettings {
    WebhookSettings {
        secrets: vec![WebhookSecret::new(SECRET)],
        tolerance_secs: 300,
        expected_livemode: None,
        dispute_policy: Default::default(),
    }
}

/// A pipeline over `store` on the fixed clock.
pub fn pipeline<S: shared::store::AccountStore>(store: S) -> WebhookService<S, FixedClock> {
    WebhookService::with_clock(store, &settings(), FixedClock(NOW))
}

/// A fresh in-memory SQLite store.
pub fn sqlite_store() -> SqliteStore {
    SqliteStore::in_memory().expect("in-memory SQLite opens")
}

/// Records the operation of every HTTP request the DynamoDB client sends, retries included, as
/// AWS bills them.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    /// Takes the operations recorded so far, leaving the log empty.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // DynamoDB's JSON protocol names the operation in this header: "DynamoDB_20120810.GetItem".
        let target = context.request().headers().get("x-amz-target").unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        self.0.lock().unwrap().push(operation);
        Ok(())
    }
}

/// A DynamoDB client for the emulator the test script started. Panics, loudly, without one: a
/// test that needs the emulator must never pass by skipping.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    dynamodb_client_logged(RequestLog::default()).await
}

/// [`dynamodb_client`], recording every request in `log`.
pub async fn dynamodb_client_logged(log: RequestLog) -> aws_sdk_dynamodb::Client {
    let endpoint = std::env::var(DYNAMODB_ENDPOINT).unwrap_or_else(|_| {
        panic!("{DYNAMODB_ENDPOINT} is not set: run the tests with ./scripts/test, which starts moto server")
    });
    assert!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://[::1]:"),
        "the emulator must be on loopback, not {endpoint}"
    );
    // Credentials and region are given here so that the SDK never looks for them off this machine.
    let credentials = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests");
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .interceptor(log)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A DynamoDB store on a table of its own, so that tests do not see each other's items.
pub async fn dynamo_store() -> DynamoStore {
    dynamo_store_logged(RequestLog::default()).await
}

/// [`dynamo_store`], recording every request in `log` (table creation included).
pub async fn dynamo_store_logged(log: RequestLog) -> DynamoStore {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let table = format!("connect-flow-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let client = dynamodb_client_logged(log).await;
    create_table(&client, &table).await.expect("the emulator creates the table");
    DynamoStore::new(client, table)
}

/// The requests one signed delivery of `event` sends through the clients `log` watches; the
/// delivery must be answered 200.
pub async fn requests_for<S: shared::store::AccountStore>(
    log: &RequestLog,
    service: &WebhookService<S, FixedClock>,
    event: &Value,
) -> Vec<String> {
    log.take();
    let (header, body) = signed(event, NOW);
    let reply = service.handle(Some(&header), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    log.take()
}

/// Stores `steps` as the test-mode payment event `event_id` planned them at [`NOW`], in one commit
/// as the webhook makes it (a step without a livemode gets the event's): how tests and benchmarks
/// give a worker steps to run.
pub async fn store_planned_steps<S: shared::store::AccountStore>(
    store: &S,
    event_id: &str,
    steps: &[shared::domain::step::Step],
) -> Result<CommitOutcome, StoreError> {
    let record = EventRecord {
        event_id: event_id.to_owned(),
        event_type: "payment_intent.succeeded".to_owned(),
        account_id: None,
        created: Some(NOW),
        livemode: Some(false),
        outcome: EventOutcome::Applied,
        reason: None,
        received_at: NOW,
        expires_at: NOW + DEDUPE_RETENTION_SECS,
        fetch: None,
    };
    let steps: Vec<_> = steps
        .iter()
        .map(|step| shared::domain::step::Step { livemode: step.livemode.or(Some(false)), ..step.clone() })
        .collect();
    store.commit(&EventWrite::with_steps(&record, &steps)).await
}

/// A signed delivery: the header and the body bytes.
pub fn signed(event: &Value, timestamp: i64) -> (String, Vec<u8>) {
    let body = event.to_string().into_bytes();
    (sign(&WebhookSecret::new(SECRET), timestamp, &body), body)
}

/// An active `account.updated` for an account on manual payouts, the only kind that gets payouts.
pub fn manual_payout_account_updated(id: &str, account: &str, created: i64) -> Value {
    let mut event = account_updated(id, account, created, true, &[]);
    event["data"]["object"]["settings"]["payouts"]["schedule"]["interval"] = json!("manual");
    event
}

/// An `account.updated` event for `account` with the given onboarding-relevant fields.
pub fn account_updated(
    id: &str,
    account: &str,
    created: i64,
    charges_enabled: bool,
    currently_due: &[&str],
) -> Value {
    json!({
        "id": id, "object": "event", "type": "account.updated", "created": created, "livemode": false,
        "api_version": "2024-06-20", "account": account,
        "data": { "object": {
            "id": account, "object": "account", "details_submitted": true,
            "charges_enabled": charges_enabled, "payouts_enabled": true,
            "requirements": { "currently_due": currently_due, "eventually_due": [], "past_due": [],
                              "pending_verification": [], "disabled_reason": null, "current_deadline": null },
            "capabilities": { "transfers": if charges_enabled { "active" } else { "pending" } },
            "settings": { "payouts": { "schedule": { "interval": "manual" } } }
        }}
    })
}

/// An SQS client for the emulator the test script started (moto serves SQS on the DynamoDB
/// endpoint). Panics, loudly, without one, like [`dynamodb_client`].
pub async fn sqs_client() -> aws_sdk_sqs::Client {
    sqs_client_logged(RequestLog::default()).await
}

/// [`sqs_client`], recording every request in `log` (SQS's JSON protocol names the operation in the
/// same header as DynamoDB's: "AmazonSQS.SendMessageBatch").
pub async fn sqs_client_logged(log: RequestLog) -> aws_sdk_sqs::Client {
    let endpoint = std::env::var(DYNAMODB_ENDPOINT).unwrap_or_else(|_| {
        panic!("{DYNAMODB_ENDPOINT} is not set: run the tests with ./scripts/test, which starts moto server")
    });
    assert!(
        endpoint.starts_with("http://127.0.0.1:") || endpoint.starts_with("http://[::1]:"),
        "the emulator must be on loopback, not {endpoint}"
    );
    // Credentials and region are given here so that the SDK never looks for them off this machine.
    let credentials = aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "tests");
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .interceptor(log)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// Runs each named `async fn name(store)` on both stores, as `sqlite::name` on a fresh in-memory
/// SQLite store and `dynamodb::name` on a fresh table of the emulator.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::sqlite_store()).await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test($crate::dynamo_store().await).await;
                }
            )*
        }
    };
}

/// A clock a test moves: every pipeline and worker given a clone reads the same time.
#[derive(Debug, Clone)]
pub struct TestClock(Arc<std::sync::atomic::AtomicI64>);

impl TestClock {
    /// A clock that reads `now`.
    pub fn at(now: i64) -> Self {
        Self(Arc::new(std::sync::atomic::AtomicI64::new(now)))
    }

    /// Moves the clock `secs` forward.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl shared::clock::Clock for TestClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A queue that keeps what is sent to it, for a test to run or inspect.
#[derive(Debug, Default)]
pub struct RecordingQueue(pub Mutex<Vec<shared::domain::step::StepRef>>);

impl RecordingQueue {
    /// Takes everything sent so far.
    pub fn take(&self) -> Vec<shared::domain::step::StepRef> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl shared::store::StepQueue for RecordingQueue {
    fn send<'a>(
        &'a self,
        steps: &'a [shared::domain::step::StepRef],
    ) -> shared::store::BoxFuture<'a, Result<(), StoreError>> {
        self.0.lock().unwrap().extend_from_slice(steps);
        Box::pin(async { Ok(()) })
    }
}

/// The platform API's store methods (and the ledger's), passed through to `self.inner`: for the
/// test wrappers that intercept the webhook's and the worker's calls, not these.
#[macro_export]
macro_rules! pass_platform_methods_through {
    () => {
        async fn list_accounts(
            &self,
            query: &shared::store::AccountQuery<'_>,
        ) -> Result<shared::store::AccountPage, StoreError> {
            self.inner.list_accounts(query).await
        }

        async fn commit_platform(
            &self,
            write: &shared::store::PlatformWrite<'_>,
        ) -> Result<CommitOutcome, StoreError> {
            self.inner.commit_platform(write).await
        }

        async fn load_reference(
            &self,
            kind: shared::domain::reference::ReferenceKind,
            reference: &str,
        ) -> Result<Option<shared::domain::reference::ReferenceRecord>, StoreError> {
            self.inner.load_reference(kind, reference).await
        }

        async fn list_changes(
            &self,
            after: Option<&str>,
            limit: usize,
            now: i64,
        ) -> Result<Option<shared::store::ChangePage>, StoreError> {
            self.inner.list_changes(after, limit, now).await
        }

        async fn update_fetch(
            &self,
            previous: &shared::store::EventRecord,
            next: &shared::store::EventRecord,
        ) -> Result<CommitOutcome, StoreError> {
            self.inner.update_fetch(previous, next).await
        }

        async fn load_ledger_entry(
            &self,
            key: &str,
        ) -> Result<Option<shared::domain::ledger::LedgerEntry>, StoreError> {
            self.inner.load_ledger_entry(key).await
        }

        async fn commit_ledger(
            &self,
            plan: &shared::domain::ledger::LedgerPlan,
        ) -> Result<CommitOutcome, StoreError> {
            self.inner.commit_ledger(plan).await
        }

        async fn load_ledger_months(
            &self,
            account_id: &shared::domain::account::AccountId,
            from: shared::domain::ledger::Month,
            to: shared::domain::ledger::Month,
        ) -> Result<Vec<shared::domain::ledger::LedgerRow>, StoreError> {
            self.inner.load_ledger_months(account_id, from, to).await
        }

        async fn load_fee_month(
            &self,
            month: shared::domain::ledger::Month,
        ) -> Result<Vec<shared::domain::ledger::LedgerRow>, StoreError> {
            self.inner.load_fee_month(month).await
        }

        async fn commit_account(
            &self,
            write: &shared::store::AccountWrite<'_>,
        ) -> Result<CommitOutcome, StoreError> {
            self.inner.commit_account(write).await
        }

        async fn list_payouts_due(
            &self,
            due_by: i64,
            limit: usize,
        ) -> Result<Vec<shared::domain::account::AccountState>, StoreError> {
            self.inner.list_payouts_due(due_by, limit).await
        }
    };
}

/// A queue that keeps the fetch steps sent to it (and drops steps), for a test to run them in
/// the order it chooses.
#[derive(Debug, Default)]
pub struct FetchRecorder(pub Mutex<Vec<shared::domain::fetch::FetchRef>>);

impl FetchRecorder {
    /// Takes everything sent so far.
    pub fn take(&self) -> Vec<shared::domain::fetch::FetchRef> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl shared::store::StepQueue for FetchRecorder {
    fn send<'a>(
        &'a self,
        _steps: &'a [shared::domain::step::StepRef],
    ) -> shared::store::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn send_fetches<'a>(
        &'a self,
        fetches: &'a [shared::domain::fetch::FetchRef],
    ) -> shared::store::BoxFuture<'a, Result<(), StoreError>> {
        self.0.lock().unwrap().extend_from_slice(fetches);
        Box::pin(async { Ok(()) })
    }
}

/// The ARN of the queue at `url`, for the SQS events built from it.
pub async fn queue_arn(client: &aws_sdk_sqs::Client, url: &str) -> String {
    use aws_sdk_sqs::types::QueueAttributeName;
    let output = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    output.attributes().unwrap()[&QueueAttributeName::QueueArn].clone()
}

/// The event Lambda's SQS event source would hand a function for `messages` received from the
/// queue `arn`: their real message ids, receipt handles and attributes.
pub fn lambda_sqs_event(
    messages: &[aws_sdk_sqs::types::Message],
    arn: &str,
) -> aws_lambda_events::sqs::SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|message| {
            let attributes: serde_json::Map<String, Value> = message
                .attributes()
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.as_str().to_owned(), json!(value)))
                .collect();
            json!({"messageId": message.message_id(), "receiptHandle": message.receipt_handle(),
                "body": message.body(), "md5OfBody": message.md5_of_body(), "attributes": attributes,
                "messageAttributes": {}, "eventSource": "aws:sqs", "eventSourceARN": arn,
                "awsRegion": "us-east-1"})
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// The message ids a batch answer hands back for redelivery.
pub fn batch_failures(response: &aws_lambda_events::sqs::SqsBatchResponse) -> Vec<&str> {
    response.batch_item_failures.iter().map(|failure| failure.item_identifier.as_str()).collect()
}

/// The workspace's `connect-flow` binary, next to the running test's own (or `CONNECT_FLOW_BIN`):
/// `cargo test --workspace` builds it; with `-p integration-tests` alone, run
/// `cargo build -p connect-flow` first. A missing binary fails the test, it never skips.
pub fn connect_flow_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CONNECT_FLOW_BIN") {
        return std::path::PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("tests run from target/<profile>/deps");
    let path = dir.join(format!("connect-flow{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing: run `cargo build -p connect-flow` first", path.display());
    path
}
