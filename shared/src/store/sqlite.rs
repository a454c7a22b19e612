//! The embedded store: one SQLite file, the local default.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AccountPage, AccountQuery, AccountStore, AccountWrite, BoxFuture, ChangePage, CommitOutcome,
    EventOutcome, EventRecord, EventWrite, MAX_PAGE, PaymentState, PlatformWrite, Queue, StepQueue,
    StoreError,
};
use crate::domain::account::{AccountId, AccountState};
use crate::domain::change::Change;
use crate::domain::fetch::FetchRef;
use crate::domain::funds::PaymentRecord;
use crate::domain::ledger::{LedgerEntry, LedgerPlan, LedgerRow, Month};
use crate::domain::reconcile::ReconcilerState;
use crate::domain::reference::{ReferenceKind, ReferenceRecord};
use crate::domain::step::{PaymentKey, Step, StepRef, StepStatus};

mod ledger;
mod reconcile;
mod rows;
#[cfg(test)]
mod tests;
mod writer;

use rows::{AccountRow, ChangeRow, EventCommit, Finish, StepRow};
pub use writer::GroupCommitStats;
use writer::Workers;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    onboarding_status TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS accounts_by_status ON accounts (onboarding_status, account_id);
CREATE INDEX IF NOT EXISTS accounts_by_payout_due ON accounts (json_extract(state, '$.payout_funds.due_at'))
    WHERE json_extract(state, '$.payout_funds.due_at') IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    account_id TEXT,
    created INTEGER,
    livemode INTEGER,
    outcome TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS events_by_expiry ON events (expires_at);
CREATE TABLE IF NOT EXISTS steps (
    step_id TEXT PRIMARY KEY,
    payment_key TEXT,
    destination TEXT NOT NULL,
    version INTEGER NOT NULL,
    step TEXT NOT NULL,
    status TEXT,
    updated_at INTEGER
);
CREATE INDEX IF NOT EXISTS steps_by_payment ON steps (payment_key, step_id);
CREATE INDEX IF NOT EXISTS steps_by_destination ON steps (destination, step_id);
CREATE TABLE IF NOT EXISTS payments (
    payment_key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    kind TEXT NOT NULL,
    reference TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (kind, reference)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    change_id TEXT NOT NULL UNIQUE,
    change TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_expiry ON changes (expires_at);
CREATE TABLE IF NOT EXISTS queue (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, message_id)
);
CREATE INDEX IF NOT EXISTS queue_by_visibility ON queue (queue, dead, visible_at);
";

/// Columns added after the first release, with what fills them in on a file that predates them.
const ADDED_COLUMNS: [(&str, &str, &str); 4] = [
    ("events", "reason", "NULL"),
    ("events", "fetch", "NULL"),
    ("steps", "status", "json_extract(step, '$.status')"),
    ("steps", "updated_at", "json_extract(step, '$.updated_at')"),
];

/// The sweep's index, created once its columns exist.
const OPEN_STEPS_INDEX: &str = "CREATE INDEX IF NOT EXISTS steps_by_status ON steps (status, updated_at);";

/// A message taken from the embedded queue, invisible to others until its visibility timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// The step id, which is also the deduplication key.
    pub message_id: String,
    /// The step to run.
    pub step: StepRef,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

/// Connected-account state in a SQLite file, safe to share between tasks.
///
/// Every write goes to one writer thread, which commits whatever writes are waiting in one
/// transaction (group commit: one fsync for many deliveries) and answers each only after that
/// commit; see [`writer`]. Reads run on reader threads with connections of their own. No call
/// blocks the async runtime's threads, except the few synchronous methods of the embedded queue.
/// `BEGIN IMMEDIATE` makes a second process wait for the write lock instead of failing half way.
#[derive(Clone)]
pub struct SqliteStore {
    workers: Arc<Workers>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {error}"))
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("sqlite: {error}"))
}

/// How a connection is set up. WAL lets readers proceed during a write; synchronous=FULL makes
/// every acknowledged event survive a power cut, since Stripe will not resend what we answered
/// 200 to.
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";

/// Enough cached statements for every statement the writer runs, so none is parsed twice.
const STATEMENT_CACHE: usize = 64;

fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(corrupt)
}

fn parse_all<T: serde::de::DeserializeOwned>(rows: Vec<String>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(|json| parse_json(json)).collect()
}

/// The JSON column of every row `sql` selects with `key` as its one parameter.
fn query_json(connection: &Connection, sql: &str, key: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = connection.prepare_cached(sql).map_err(unavailable)?;
    let rows = statement.query_map([key], |row| row.get::<_, String>(0)).map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, and drops event records past their expiry.
    pub fn open(path: impl AsRef<Path>, now: i64) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let connection = Connection::open(&path).map_err(unavailable)?;
        let in_memory = connection.path().is_none_or(str::is_empty);
        Self::prepare(&connection, now)?;
        let open_reader = || -> Result<Connection, StoreError> {
            let reader = Connection::open(&path).map_err(unavailable)?;
            reader
                .execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = 1;")
                .map_err(unavailable)?;
            reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            Ok(reader)
        };
        let open_reader: Option<&dyn Fn() -> Result<Connection, StoreError>> =
            if in_memory { None } else { Some(&open_reader) };
        Ok(Self { workers: Arc::new(Workers::start(connection, open_reader)?) })
    }

    /// A store that lives only in memory, for tests and benchmarks.
    pub fn in_memory() -> Result<Self, StoreError> {
        let connection = Connection::open_in_memory().map_err(unavailable)?;
        Self::prepare(&connection, 0)?;
        // No second connection can see this database: reads go to the writer thread.
        Ok(Self { workers: Arc::new(Workers::start(connection, None)?) })
    }

    /// How many transactions the writer committed and how many writes they carried, since open.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.workers.stats()
    }

    fn prepare(connection: &Connection, now: i64) -> Result<(), StoreError> {
        connection.execute_batch(PRAGMAS).map_err(unavailable)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        connection.execute_batch(SCHEMA).map_err(unavailable)?;
        connection.execute_batch(ledger::LEDGER_SCHEMA).map_err(unavailable)?;
        connection.execute_batch(reconcile::RECONCILER_SCHEMA).map_err(unavailable)?;
        for (table, column, backfill) in ADDED_COLUMNS {
            let present: bool = connection
                .query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                    params![table, column],
                    |row| row.get(0),
                )
                .map_err(unavailable)?;
            if !present {
                connection
                    .execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column}; UPDATE {table} SET {column} = {backfill};"
                    ))
                    .map_err(unavailable)?;
            }
        }
        connection.execute_batch(OPEN_STEPS_INDEX).map_err(unavailable)?;
        Self::migrate_legacy_refunds(connection)?;
        connection.execute("DELETE FROM events WHERE expires_at < ?1", [now]).map_err(unavailable)?;
        connection.execute("DELETE FROM changes WHERE expires_at < ?1", [now]).map_err(unavailable)?;
        Ok(())
    }

    /// Moves the refunds an earlier version kept in their own table into each payment's guard
    /// (at version 0: no plan has read it yet), once.
    fn migrate_legacy_refunds(connection: &Connection) -> Result<(), StoreError> {
        let present: bool = connection
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'refunds'",
                [],
                |row| row.get(0),
            )
            .map_err(unavailable)?;
        if !present {
            return Ok(());
        }
        let refunds: Vec<String> = {
            let mut statement = connection.prepare("SELECT refund FROM refunds").map_err(unavailable)?;
            let rows = statement.query_map([], |row| row.get(0)).map_err(unavailable)?;
            rows.collect::<Result<_, _>>().map_err(unavailable)?
        };
        for json in refunds {
            let refund: crate::domain::funds::Refund = serde_json::from_str(&json).map_err(corrupt)?;
            let record = PaymentRecord {
                payment_key: refund.payment_key.clone(),
                refund: Some(refund),
                ..PaymentRecord::default()
            };
            connection
                .execute(
                    "INSERT INTO payments (payment_key, version, record) VALUES (?1, 0, ?2)
                     ON CONFLICT (payment_key) DO NOTHING",
                    params![record.payment_key.as_str(), serde_json::to_string(&record).map_err(corrupt)?],
                )
                .map_err(unavailable)?;
        }
        connection.execute_batch("DROP TABLE refunds").map_err(unavailable)
    }

    /// Checks that the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.workers
            .read_blocking(|connection| connection.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable))
    }

    /// Takes up to `max` visible step messages from `queue`, hiding each for `visibility_secs`.
    pub fn receive(
        &self,
        queue: Queue,
        now: i64,
        visibility_secs: i64,
        max: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.receive_bodies(queue, now, visibility_secs, max)?
            .into_iter()
            .map(|(message_id, body, receive_count)| {
                let step = serde_json::from_str(&body).map_err(corrupt)?;
                Ok(QueuedMessage { message_id, step, receive_count })
            })
            .collect()
    }

    /// Takes up to `max` visible fetch messages from [`Queue::Fetches`], as [`Self::receive`] does.
    pub fn receive_fetches(
        &self,
        now: i64,
        visibility_secs: i64,
        max: usize,
    ) -> Result<Vec<(FetchRef, u32)>, StoreError> {
        self.receive_bodies(Queue::Fetches, now, visibility_secs, max)?
            .into_iter()
            .map(|(_, body, receive_count)| {
                Ok((serde_json::from_str(&body).map_err(corrupt)?, receive_count))
            })
            .collect()
    }

    /// Message id, body and receive count (this one included) of up to `max` visible messages.
    fn receive_bodies(
        &self,
        queue: Queue,
        now: i64,
        visibility_secs: i64,
        max: usize,
    ) -> Result<Vec<(String, String, u32)>, StoreError> {
        let queue = queue.as_str();
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.workers.write_blocking(move |connection| {
            let rows: Vec<(String, String, u32)> = {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT message_id, body, receive_count FROM queue
                         WHERE queue = ?1 AND dead = 0 AND visible_at <= ?2 ORDER BY visible_at, message_id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = statement
                    .query_map(params![queue, now, limit], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            let mut hide = connection
                .prepare_cached(
                    "UPDATE queue SET visible_at = ?3, receive_count = receive_count + 1 WHERE queue = ?1 AND message_id = ?2",
                )
                .map_err(unavailable)?;
            let mut messages = Vec::with_capacity(rows.len());
            for (message_id, body, receive_count) in rows {
                hide.execute(params![queue, message_id, now.saturating_add(visibility_secs)])
                    .map_err(unavailable)?;
                messages.push((message_id, body, receive_count + 1));
            }
            Ok(messages)
        })
    }

    /// Deletes a handled message.
    pub fn acknowledge(&self, queue: Queue, message_id: &str) -> Result<(), StoreError> {
        let (queue, message_id) = (queue.as_str(), message_id.to_owned());
        self.workers.write_blocking(move |connection| {
            connection
                .prepare_cached("DELETE FROM queue WHERE queue = ?1 AND message_id = ?2")
                .and_then(|mut statement| statement.execute(params![queue, message_id]))
                .map_err(unavailable)?;
            Ok(())
        })
    }

    /// Moves a message that failed too often to the dead-letter side, where nothing receives it.
    pub fn dead_letter(&self, queue: Queue, message_id: &str) -> Result<(), StoreError> {
        let (queue, message_id) = (queue.as_str(), message_id.to_owned());
        self.workers.write_blocking(move |connection| {
            connection
                .prepare_cached("UPDATE queue SET dead = 1 WHERE queue = ?1 AND message_id = ?2")
                .and_then(|mut statement| statement.execute(params![queue, message_id]))
                .map_err(unavailable)?;
            Ok(())
        })
    }

    /// Every dead-lettered message of `queue`, by message id.
    pub fn dead_letters(&self, queue: Queue) -> Result<Vec<String>, StoreError> {
        let queue = queue.as_str();
        self.workers.read_blocking(move |connection| {
            query_json(
                connection,
                "SELECT message_id FROM queue WHERE queue = ?1 AND dead = 1 ORDER BY message_id",
                queue,
            )
        })
    }

    async fn enqueue(&self, steps: &[StepRef]) -> Result<(), StoreError> {
        let messages = steps
            .iter()
            .map(|step| {
                Ok((
                    Queue::of(step.kind).as_str(),
                    step.step_id.as_str().to_owned(),
                    serde_json::to_string(step).map_err(corrupt)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.enqueue_messages(messages).await
    }

    async fn enqueue_fetches(&self, fetches: &[FetchRef]) -> Result<(), StoreError> {
        let messages = fetches
            .iter()
            .map(|fetch| {
                Ok((
                    Queue::Fetches.as_str(),
                    fetch.event_id.clone(),
                    serde_json::to_string(fetch).map_err(corrupt)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.enqueue_messages(messages).await
    }

    /// Queues each `(queue, message id, body)`.
    async fn enqueue_messages(
        &self,
        messages: Vec<(&'static str, String, String)>,
    ) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.workers
            .write(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        // A message already queued (or in flight) is the same step: keep it, as SQS
                        // FIFO drops a send with a deduplication id it has seen. A dead-lettered one
                        // is revived, as a redrive would.
                        "INSERT INTO queue (queue, message_id, body, visible_at) VALUES (?1, ?2, ?3, 0)
                         ON CONFLICT (queue, message_id) DO UPDATE SET dead = 0, visible_at = 0, receive_count = 0
                         WHERE dead = 1",
                    )
                    .map_err(unavailable)?;
                for (queue, message_id, body) in &messages {
                    statement.execute(params![queue, message_id, body]).map_err(unavailable)?;
                }
                Ok(())
            })
            .await
    }

    /// The steps `sql` selects with `key` as its one parameter.
    async fn query_steps(&self, sql: &'static str, key: &str) -> Result<Vec<Step>, StoreError> {
        let key = key.to_owned();
        parse_all(self.workers.read(move |connection| query_json(connection, sql, &key)).await?)
    }

    fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<(EventRecord, String, Option<String>)> {
        let outcome: String = row.get(5)?;
        let record = EventRecord {
            event_id: row.get(0)?,
            event_type: row.get(1)?,
            account_id: row.get(2)?,
            created: row.get(3)?,
            livemode: row.get(4)?,
            outcome: EventOutcome::Applied,
            received_at: row.get(6)?,
            expires_at: row.get(7)?,
            reason: row.get(8)?,
            fetch: None,
        };
        Ok((record, outcome, row.get(9)?))
    }
}

impl StepQueue for SqliteStore {
    fn send<'a>(&'a self, steps: &'a [StepRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.enqueue(steps))
    }

    fn send_fetches<'a>(&'a self, fetches: &'a [FetchRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.enqueue_fetches(fetches))
    }
}

const PAYMENT_STEPS: &str = "SELECT step FROM steps WHERE payment_key = ?1 ORDER BY step_id";

impl AccountStore for SqliteStore {
    async fn load_reconciler(&self) -> Result<Option<ReconcilerState>, StoreError> {
        self.load_reconciler_now().await
    }

    async fn save_reconciler(
        &self,
        state: &ReconcilerState,
        replace_unreadable: bool,
    ) -> Result<CommitOutcome, StoreError> {
        self.save_reconciler_now(state, replace_unreadable).await
    }

    async fn load_ledger_entry(&self, key: &str) -> Result<Option<LedgerEntry>, StoreError> {
        self.load_ledger_entry_now(key).await
    }

    async fn commit_ledger(&self, plan: &LedgerPlan) -> Result<CommitOutcome, StoreError> {
        self.commit_ledger_now(plan).await
    }

    async fn load_ledger_months(
        &self,
        account_id: &AccountId,
        from: Month,
        to: Month,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        self.load_ledger_months_now(account_id, from, to).await
    }

    async fn load_fee_month(&self, month: Month) -> Result<Vec<LedgerRow>, StoreError> {
        self.load_fee_month_now(month).await
    }

    async fn load_account(&self, account_id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        let id = account_id.as_str().to_owned();
        let json = self
            .workers
            .read(move |connection| {
                connection
                    .prepare_cached("SELECT state FROM accounts WHERE account_id = ?1")
                    .and_then(|mut statement| {
                        statement.query_row([id], |row| row.get::<_, String>(0)).optional()
                    })
                    .map_err(unavailable)
            })
            .await?;
        json.map(|json| parse_json(&json)).transpose()
    }

    async fn commit(&self, write: &EventWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let commit = EventCommit::new(write)?;
        self.workers.write(move |connection| commit.write(connection)).await
    }

    async fn load_payment_steps(&self, payment_key: &PaymentKey) -> Result<Vec<Step>, StoreError> {
        self.query_steps(PAYMENT_STEPS, payment_key).await
    }

    async fn load_payment(&self, payment_key: &PaymentKey) -> Result<PaymentState, StoreError> {
        let key = payment_key.as_str().to_owned();
        let (record, steps) = self
            .workers
            .read(move |connection| {
                // One read transaction, so that the guard and the steps come from one snapshot.
                let snapshot = connection.unchecked_transaction().map_err(unavailable)?;
                let record: Option<String> = snapshot
                    .prepare_cached("SELECT record FROM payments WHERE payment_key = ?1")
                    .and_then(|mut statement| statement.query_row([&key], |row| row.get(0)).optional())
                    .map_err(unavailable)?;
                let steps = query_json(&snapshot, PAYMENT_STEPS, &key)?;
                snapshot.finish().map_err(unavailable)?;
                Ok((record, steps))
            })
            .await?;
        let record: Option<PaymentRecord> = record.map(|json| parse_json(&json)).transpose()?;
        Ok(PaymentState { record, steps: parse_all(steps)? })
    }

    async fn list_open_steps(
        &self,
        status: StepStatus,
        updated_before: i64,
        limit: usize,
    ) -> Result<Vec<Step>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .workers
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT step FROM steps WHERE status = ?1 AND updated_at < ?2 ORDER BY updated_at, step_id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = statement
                    .query_map(params![status.as_str(), updated_before, limit], |row| row.get::<_, String>(0))
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        parse_all(rows)
    }

    async fn load_step(&self, step: &StepRef) -> Result<Option<Step>, StoreError> {
        Ok(self.query_steps("SELECT step FROM steps WHERE step_id = ?1", &step.step_id).await?.pop())
    }

    async fn update_step(&self, step: &Step, changes: &[Change]) -> Result<CommitOutcome, StoreError> {
        let row = StepRow::new(step)?;
        let changes = ChangeRow::all(changes)?;
        self.workers
            .write(move |connection| {
                if row.update(connection)? == CommitOutcome::Conflict {
                    return Ok(CommitOutcome::Conflict);
                }
                ChangeRow::insert_all(&changes, connection)?;
                Ok(CommitOutcome::Committed)
            })
            .await
    }

    async fn load_payouts(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        self.query_steps(
            "SELECT step FROM steps WHERE destination = ?1 AND payment_key IS NULL ORDER BY step_id",
            account_id.as_str(),
        )
        .await
    }

    async fn load_account_steps(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        self.query_steps(
            "SELECT step FROM steps WHERE destination = ?1 ORDER BY step_id",
            account_id.as_str(),
        )
        .await
    }

    async fn load_event(&self, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let event_id = event_id.to_owned();
        let row = self
            .workers
            .read(move |connection| {
                connection
                    .prepare_cached(
                        "SELECT event_id, event_type, account_id, created, livemode, outcome, received_at, expires_at, reason, fetch
                         FROM events WHERE event_id = ?1",
                    )
                    .and_then(|mut statement| statement.query_row([event_id], Self::read_event).optional())
                    .map_err(unavailable)
            })
            .await?;
        row.map(|(mut record, outcome, fetch)| {
            record.outcome = EventOutcome::parse(&outcome).ok_or_else(|| corrupt("unknown event outcome"))?;
            record.fetch = fetch.map(|json| parse_json(&json)).transpose()?;
            Ok(record)
        })
        .transpose()
    }

    async fn update_fetch(
        &self,
        previous: &EventRecord,
        next: &EventRecord,
    ) -> Result<CommitOutcome, StoreError> {
        let event_id = next.event_id.clone();
        let outcome = next.outcome.as_str();
        let reason = next.reason.clone();
        let (next_fetch, previous_fetch) = (fetch_json(next)?, fetch_json(previous)?);
        self.workers
            .write(move |connection| {
                let written = connection
                    .prepare_cached(
                        "UPDATE events SET outcome = ?2, reason = ?3, fetch = ?4
                         WHERE event_id = ?1 AND outcome = ?5 AND fetch IS ?6",
                    )
                    .and_then(|mut statement| {
                        statement.execute(params![
                            event_id,
                            outcome,
                            reason,
                            next_fetch,
                            EventOutcome::FetchQueued.as_str(),
                            previous_fetch,
                        ])
                    })
                    .map_err(unavailable)?;
                Ok(if written == 1 { CommitOutcome::Committed } else { CommitOutcome::Conflict })
            })
            .await
    }

    async fn list_accounts(&self, query: &AccountQuery<'_>) -> Result<AccountPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let status = query.status.map(|status| status.as_str());
        let after = query.starting_after.map_or("", AccountId::as_str).to_owned();
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let rows = self
            .workers
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT state FROM accounts WHERE (?1 IS NULL OR onboarding_status = ?1) AND account_id > ?2
                         ORDER BY account_id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = statement
                    .query_map(params![status, after, fetch], |row| row.get::<_, String>(0))
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        let mut accounts: Vec<AccountState> = parse_all(rows)?;
        let has_more = accounts.len() > limit;
        accounts.truncate(limit);
        Ok(AccountPage { accounts, has_more })
    }

    async fn commit_platform(&self, write: &PlatformWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let reference = write.reference;
        let json = serde_json::to_string(reference).map_err(corrupt)?;
        let version = i64::try_from(reference.version).map_err(corrupt)?;
        let kind = reference.kind.as_str();
        let name = reference.reference.clone();
        let account = write.account.map(AccountRow::new).transpose()?;
        let finish = Finish::new(write.new_steps, &[], write.changes)?;
        self.workers
            .write(move |connection| {
                let written = if version == 1 {
                    connection
                        .prepare_cached(
                            "INSERT INTO refs (kind, reference, version, record) VALUES (?1, ?2, 1, ?3)
                             ON CONFLICT (kind, reference) DO NOTHING",
                        )
                        .and_then(|mut statement| statement.execute(params![kind, name, json]))
                } else {
                    connection
                        .prepare_cached(
                            "UPDATE refs SET version = ?3, record = ?4 WHERE kind = ?1 AND reference = ?2 AND version = ?5",
                        )
                        .and_then(|mut statement| statement.execute(params![kind, name, version, json, version - 1]))
                }
                .map_err(unavailable)?;
                if written == 0 {
                    return Ok(CommitOutcome::Conflict);
                }
                if let Some(account) = &account
                    && account.write(connection)? == CommitOutcome::Conflict
                {
                    return Ok(CommitOutcome::Conflict);
                }
                finish.write(connection)
            })
            .await
    }

    async fn load_reference(
        &self,
        kind: ReferenceKind,
        reference: &str,
    ) -> Result<Option<ReferenceRecord>, StoreError> {
        let reference = reference.to_owned();
        let json: Option<String> = self
            .workers
            .read(move |connection| {
                connection
                    .prepare_cached("SELECT record FROM refs WHERE kind = ?1 AND reference = ?2")
                    .and_then(|mut statement| {
                        statement.query_row(params![kind.as_str(), reference], |row| row.get(0)).optional()
                    })
                    .map_err(unavailable)
            })
            .await?;
        json.map(|json| parse_json(&json)).transpose()
    }

    /// Cursors are the feed's sequence numbers, zero-padded so that they also sort as text.
    async fn list_changes(
        &self,
        after: Option<&str>,
        limit: usize,
        _now: i64,
    ) -> Result<Option<ChangePage>, StoreError> {
        let after_seq = match after {
            None => 0,
            Some(cursor) => match parse_sequence_cursor(cursor) {
                Some(seq) => seq,
                None => return Ok(None),
            },
        };
        let limit = i64::try_from(limit.clamp(1, MAX_PAGE)).unwrap_or(1);
        let rows = self
            .workers
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached("SELECT seq, change FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                    .map_err(unavailable)?;
                let rows = statement
                    .query_map(params![after_seq, limit], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                    })
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        let mut page = ChangePage { changes: Vec::new(), next: after.unwrap_or_default().to_owned() };
        for (seq, json) in rows {
            let mut change: Change = parse_json(&json)?;
            change.cursor = sequence_cursor(seq);
            page.next.clone_from(&change.cursor);
            page.changes.push(change);
        }
        Ok(Some(page))
    }

    async fn commit_account(&self, write: &AccountWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let account = AccountRow::new(write.account)?;
        let finish = Finish::new(write.new_steps, write.step_updates, write.changes)?;
        self.workers
            .write(move |connection| {
                if account.write(connection)? == CommitOutcome::Conflict {
                    return Ok(CommitOutcome::Conflict);
                }
                finish.write(connection)
            })
            .await
    }

    /// Reads the partial index on `payout_funds.due_at`, which holds only accounts with a due time.
    async fn list_payouts_due(&self, due_by: i64, limit: usize) -> Result<Vec<AccountState>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .workers
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(
                        "SELECT state FROM accounts
                         WHERE json_extract(state, '$.payout_funds.due_at') IS NOT NULL
                           AND json_extract(state, '$.payout_funds.due_at') <= ?1
                         ORDER BY json_extract(state, '$.payout_funds.due_at'), account_id LIMIT ?2",
                    )
                    .map_err(unavailable)?;
                let rows = statement
                    .query_map(params![due_by, limit], |row| row.get::<_, String>(0))
                    .map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        parse_all(rows)
    }
}

/// A record's fetch step as stored: JSON, or NULL.
fn fetch_json(record: &EventRecord) -> Result<Option<String>, StoreError> {
    record.fetch.as_ref().map(|fetch| serde_json::to_string(fetch).map_err(corrupt)).transpose()
}

fn sequence_cursor(seq: i64) -> String {
    format!("{seq:020}")
}

fn parse_sequence_cursor(cursor: &str) -> Option<i64> {
    if cursor.len() != 20 || !cursor.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    cursor.parse().ok()
}
