//! The embedded store: one SQLite file, the local default.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{AccountStore, CommitOutcome, EventOutcome, EventRecord, EventWrite, StoreError};
use crate::domain::account::{AccountId, AccountState, OnboardingStatus};
use crate::domain::step::{Step, StepRef};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    onboarding_status TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS accounts_by_status ON accounts (onboarding_status, account_id);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    account_id TEXT,
    created INTEGER,
    livemode INTEGER,
    outcome TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_expiry ON events (expires_at);
CREATE TABLE IF NOT EXISTS steps (
    step_id TEXT PRIMARY KEY,
    payment_key TEXT,
    destination TEXT NOT NULL,
    version INTEGER NOT NULL,
    step TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_by_payment ON steps (payment_key, step_id);
CREATE INDEX IF NOT EXISTS steps_by_destination ON steps (destination, step_id);
";

/// Connected-account state in a SQLite file, safe to share between tasks.
///
/// One connection behind a mutex: every operation is a short transaction, and SQLite serialises
/// writers anyway. `BEGIN IMMEDIATE` makes a second process wait for the write lock instead of
/// failing half way through.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
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

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, and drops event records past their expiry.
    pub fn open(path: impl AsRef<Path>, now: i64) -> Result<Self, StoreError> {
        Self::from_connection(Connection::open(path).map_err(unavailable)?, now)
    }

    /// A store that lives only in memory, for tests and benchmarks.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory().map_err(unavailable)?, 0)
    }

    fn from_connection(connection: Connection, now: i64) -> Result<Self, StoreError> {
        // WAL lets readers proceed during a write; synchronous=FULL makes every acknowledged
        // event survive a power cut, since Stripe will not resend what we answered 200 to.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
            )
            .map_err(unavailable)?;
        connection.execute_batch(SCHEMA).map_err(unavailable)?;
        connection.execute("DELETE FROM events WHERE expires_at < ?1", [now]).map_err(unavailable)?;
        Ok(Self { connection: Arc::new(Mutex::new(connection)) })
    }

    /// Checks that the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.lock()?.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.connection.lock().map_err(|_| StoreError::Unavailable("sqlite: connection lock poisoned".into()))
    }

    fn commit_now(&self, write: &EventWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let record = write.record;
        let mut connection = self.lock()?;
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
        let inserted = transaction
            .execute(
                "INSERT INTO events (event_id, event_type, account_id, created, livemode, outcome, received_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (event_id) DO NOTHING",
                params![
                    record.event_id,
                    record.event_type,
                    record.account_id,
                    record.created,
                    record.livemode,
                    record.outcome.as_str(),
                    record.received_at,
                    record.expires_at,
                ],
            )
            .map_err(unavailable)?;
        if inserted == 0 {
            return Ok(CommitOutcome::Duplicate);
        }
        if let Some(state) = write.account {
            let json = serde_json::to_string(state).map_err(corrupt)?;
            let id = state.account_id.as_str();
            let status = state.onboarding_status.as_str();
            let version = i64::try_from(state.version).map_err(corrupt)?;
            let written = if version == 1 {
                transaction.execute(
                    "INSERT INTO accounts (account_id, version, onboarding_status, state) VALUES (?1, 1, ?2, ?3)
                     ON CONFLICT (account_id) DO NOTHING",
                    params![id, status, json],
                )
            } else {
                transaction.execute(
                    "UPDATE accounts SET version = ?2, onboarding_status = ?3, state = ?4
                     WHERE account_id = ?1 AND version = ?5",
                    params![id, version, status, json, version - 1],
                )
            }
            .map_err(unavailable)?;
            if written == 0 {
                // Dropping the transaction rolls the event record back with it.
                return Ok(CommitOutcome::Conflict);
            }
        }
        for step in write.new_steps {
            let json = serde_json::to_string(step).map_err(corrupt)?;
            let version = i64::try_from(step.version).map_err(corrupt)?;
            let inserted = transaction
                .execute(
                    "INSERT INTO steps (step_id, payment_key, destination, version, step) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (step_id) DO NOTHING",
                    params![step.step_id, step.payment_key, step.destination.as_str(), version, json],
                )
                .map_err(unavailable)?;
            if inserted == 0 {
                return Ok(CommitOutcome::Conflict);
            }
        }
        transaction.commit().map_err(unavailable)?;
        Ok(CommitOutcome::Committed)
    }

    fn query_steps(&self, sql: &str, key: &str) -> Result<Vec<Step>, StoreError> {
        let connection = self.lock()?;
        let mut statement = connection.prepare_cached(sql).map_err(unavailable)?;
        let rows = statement.query_map([key], |row| row.get::<_, String>(0)).map_err(unavailable)?;
        rows.map(|json| serde_json::from_str(&json.map_err(unavailable)?).map_err(corrupt)).collect()
    }

    fn read_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<(EventRecord, String)> {
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
        };
        Ok((record, outcome))
    }
}

impl AccountStore for SqliteStore {
    async fn load_account(&self, account_id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        let json: Option<String> = self
            .lock()?
            .query_row("SELECT state FROM accounts WHERE account_id = ?1", [account_id.as_str()], |row| {
                row.get(0)
            })
            .optional()
            .map_err(unavailable)?;
        json.map(|json| serde_json::from_str(&json).map_err(corrupt)).transpose()
    }

    async fn commit(&self, write: &EventWrite<'_>) -> Result<CommitOutcome, StoreError> {
        self.commit_now(write)
    }

    async fn load_payment_steps(&self, payment_key: &str) -> Result<Vec<Step>, StoreError> {
        self.query_steps("SELECT step FROM steps WHERE payment_key = ?1 ORDER BY step_id", payment_key)
    }

    async fn load_step(&self, step: &StepRef) -> Result<Option<Step>, StoreError> {
        Ok(self.query_steps("SELECT step FROM steps WHERE step_id = ?1", &step.step_id)?.pop())
    }

    async fn update_step(&self, step: &Step) -> Result<CommitOutcome, StoreError> {
        let json = serde_json::to_string(step).map_err(corrupt)?;
        let version = i64::try_from(step.version).map_err(corrupt)?;
        let updated = self
            .lock()?
            .execute(
                "UPDATE steps SET version = ?2, step = ?3 WHERE step_id = ?1 AND version = ?4",
                params![step.step_id, version, json, version - 1],
            )
            .map_err(unavailable)?;
        Ok(if updated == 1 { CommitOutcome::Committed } else { CommitOutcome::Conflict })
    }

    async fn load_account_steps(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        self.query_steps(
            "SELECT step FROM steps WHERE destination = ?1 ORDER BY step_id",
            account_id.as_str(),
        )
    }

    async fn load_event(&self, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let row = self
            .lock()?
            .query_row(
                "SELECT event_id, event_type, account_id, created, livemode, outcome, received_at, expires_at
                 FROM events WHERE event_id = ?1",
                [event_id],
                Self::read_event,
            )
            .optional()
            .map_err(unavailable)?;
        row.map(|(mut record, outcome)| {
            record.outcome = EventOutcome::parse(&outcome).ok_or_else(|| corrupt("unknown event outcome"))?;
            Ok(record)
        })
        .transpose()
    }

    async fn list_accounts(&self, status: Option<OnboardingStatus>) -> Result<Vec<AccountState>, StoreError> {
        let connection = self.lock()?;
        let mut statement = connection
            .prepare_cached(
                "SELECT state FROM accounts WHERE ?1 IS NULL OR onboarding_status = ?1 ORDER BY account_id",
            )
            .map_err(unavailable)?;
        let rows = statement
            .query_map([status.map(OnboardingStatus::as_str)], |row| row.get::<_, String>(0))
            .map_err(unavailable)?;
        rows.map(|json| serde_json::from_str(&json.map_err(unavailable)?).map_err(corrupt)).collect()
    }
}
