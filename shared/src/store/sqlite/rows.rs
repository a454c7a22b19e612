//! Writes prepared by the caller (JSON encoded, ids copied) so that the writer thread, which every
//! write goes through, spends its time on SQLite alone, and so that a write owns what it carries.

use rusqlite::{Connection, params};

use super::{corrupt, fetch_json, unavailable};
use crate::domain::account::AccountState;
use crate::domain::change::Change;
use crate::domain::funds::PaymentRecord;
use crate::domain::step::Step;
use crate::store::{CHANGE_RETENTION_SECS, CommitOutcome, EventRecord, StoreError};

fn version_of(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(corrupt)
}

fn outcome(written: usize) -> CommitOutcome {
    if written == 0 { CommitOutcome::Conflict } else { CommitOutcome::Committed }
}

/// An account's next state, written if the stored one is at `version - 1` (or absent, for 1).
pub(super) struct AccountRow {
    id: String,
    status: &'static str,
    version: i64,
    json: String,
}

impl AccountRow {
    pub(super) fn new(state: &AccountState) -> Result<Self, StoreError> {
        Ok(Self {
            id: state.account_id.as_str().to_owned(),
            status: state.onboarding_status.as_str(),
            version: version_of(state.version)?,
            json: serde_json::to_string(state).map_err(corrupt)?,
        })
    }

    pub(super) fn write(&self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        let written = if self.version == 1 {
            connection
                .prepare_cached(
                    "INSERT INTO accounts (account_id, version, onboarding_status, state) VALUES (?1, 1, ?2, ?3)
                     ON CONFLICT (account_id) DO NOTHING",
                )
                .and_then(|mut statement| statement.execute(params![self.id, self.status, self.json]))
        } else {
            connection
                .prepare_cached(
                    "UPDATE accounts SET version = ?2, onboarding_status = ?3, state = ?4
                     WHERE account_id = ?1 AND version = ?5",
                )
                .and_then(|mut statement| {
                    statement.execute(params![self.id, self.version, self.status, self.json, self.version - 1])
                })
        }
        .map_err(unavailable)?;
        Ok(outcome(written))
    }
}

/// A step, to insert (it must not exist) or to move on (the stored one must be at `version - 1`).
pub(super) struct StepRow {
    step_id: String,
    payment_key: Option<String>,
    destination: String,
    version: i64,
    json: String,
    status: &'static str,
    updated_at: i64,
}

impl StepRow {
    pub(super) fn new(step: &Step) -> Result<Self, StoreError> {
        Ok(Self {
            step_id: step.step_id.as_str().to_owned(),
            payment_key: step.payment_key.as_deref().map(str::to_owned),
            destination: step.destination.as_str().to_owned(),
            version: version_of(step.version)?,
            json: serde_json::to_string(step).map_err(corrupt)?,
            status: step.status.as_str(),
            updated_at: step.updated_at,
        })
    }

    pub(super) fn all(steps: &[Step]) -> Result<Vec<Self>, StoreError> {
        steps.iter().map(Self::new).collect()
    }

    fn insert(&self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        let inserted = connection
            .prepare_cached(
                "INSERT INTO steps (step_id, payment_key, destination, version, step, status, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (step_id) DO NOTHING",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    self.step_id,
                    self.payment_key,
                    self.destination,
                    self.version,
                    self.json,
                    self.status,
                    self.updated_at
                ])
            })
            .map_err(unavailable)?;
        Ok(outcome(inserted))
    }

    pub(super) fn update(&self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        let updated = connection
            .prepare_cached(
                "UPDATE steps SET version = ?2, step = ?3, status = ?5, updated_at = ?6
                 WHERE step_id = ?1 AND version = ?4",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    self.step_id,
                    self.version,
                    self.json,
                    self.version - 1,
                    self.status,
                    self.updated_at
                ])
            })
            .map_err(unavailable)?;
        Ok(if updated == 1 { CommitOutcome::Committed } else { CommitOutcome::Conflict })
    }
}

/// A change for the feed. Its sequence is assigned inside the writer's transaction, so the
/// feed's order is the commit order and no later commit can slip in before a listed one.
pub(super) struct ChangeRow {
    id: String,
    json: String,
    expires_at: i64,
}

impl ChangeRow {
    pub(super) fn all(changes: &[Change]) -> Result<Vec<Self>, StoreError> {
        changes
            .iter()
            .map(|change| {
                Ok(Self {
                    id: change.id.clone(),
                    json: serde_json::to_string(change).map_err(corrupt)?,
                    expires_at: change.at.saturating_add(CHANGE_RETENTION_SECS),
                })
            })
            .collect()
    }

    /// A change id already in the feed (the same version's change) is kept as first written.
    pub(super) fn insert_all(changes: &[Self], connection: &Connection) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut statement = connection
            .prepare_cached(
                "INSERT INTO changes (change_id, change, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (change_id) DO NOTHING",
            )
            .map_err(unavailable)?;
        for change in changes {
            statement.execute(params![change.id, change.json, change.expires_at]).map_err(unavailable)?;
        }
        Ok(())
    }
}

/// What every kind of commit ends with: new steps, moved steps and changes.
pub(super) struct Finish {
    new_steps: Vec<StepRow>,
    step_updates: Vec<StepRow>,
    changes: Vec<ChangeRow>,
}

impl Finish {
    pub(super) fn new(
        new_steps: &[Step],
        step_updates: &[Step],
        changes: &[Change],
    ) -> Result<Self, StoreError> {
        Ok(Self {
            new_steps: StepRow::all(new_steps)?,
            step_updates: StepRow::all(step_updates)?,
            changes: ChangeRow::all(changes)?,
        })
    }

    /// A step that exists, or moved since it was read, makes the whole write a conflict.
    pub(super) fn write(&self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        for step in &self.new_steps {
            if step.insert(connection)? == CommitOutcome::Conflict {
                return Ok(CommitOutcome::Conflict);
            }
        }
        for step in &self.step_updates {
            if step.update(connection)? == CommitOutcome::Conflict {
                return Ok(CommitOutcome::Conflict);
            }
        }
        ChangeRow::insert_all(&self.changes, connection)?;
        Ok(CommitOutcome::Committed)
    }
}

/// A payment's guard, one version up.
struct PaymentRow {
    key: String,
    version: i64,
    json: String,
}

impl PaymentRow {
    fn new(payment: &PaymentRecord) -> Result<Self, StoreError> {
        Ok(Self {
            key: payment.payment_key.as_str().to_owned(),
            version: version_of(payment.version)?,
            json: serde_json::to_string(payment).map_err(corrupt)?,
        })
    }

    fn write(&self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        let written = if self.version == 1 {
            // Absent, or migrated from an earlier version's refund at version 0.
            connection
                .prepare_cached(
                    "INSERT INTO payments (payment_key, version, record) VALUES (?1, 1, ?2)
                     ON CONFLICT (payment_key) DO UPDATE SET version = 1, record = ?2 WHERE payments.version = 0",
                )
                .and_then(|mut statement| statement.execute(params![self.key, self.json]))
        } else {
            connection
                .prepare_cached(
                    "UPDATE payments SET version = ?2, record = ?3 WHERE payment_key = ?1 AND version = ?4",
                )
                .and_then(|mut statement| {
                    statement.execute(params![self.key, self.version, self.json, self.version - 1])
                })
        }
        .map_err(unavailable)?;
        Ok(outcome(written))
    }
}

/// Everything one event writes: its record first (a duplicate stops there), then the rest.
pub(super) struct EventCommit {
    record: EventRecord,
    fetch: Option<String>,
    accounts: Vec<AccountRow>,
    payment: Option<PaymentRow>,
    finish: Finish,
}

impl EventCommit {
    pub(super) fn new(write: &crate::store::EventWrite<'_>) -> Result<Self, StoreError> {
        Ok(Self {
            record: write.record.clone(),
            fetch: fetch_json(write.record)?,
            accounts: write.accounts.iter().map(AccountRow::new).collect::<Result<_, _>>()?,
            payment: write.payment.map(PaymentRow::new).transpose()?,
            finish: Finish::new(write.new_steps, write.step_updates, write.changes)?,
        })
    }

    pub(super) fn write(&self, connection: &Connection) -> Result<CommitOutcome, StoreError> {
        let record = &self.record;
        let inserted = connection
            .prepare_cached(
                "INSERT INTO events (event_id, event_type, account_id, created, livemode, outcome, received_at, expires_at, reason, fetch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (event_id) DO NOTHING",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    record.event_id,
                    record.event_type,
                    record.account_id,
                    record.created,
                    record.livemode,
                    record.outcome.as_str(),
                    record.received_at,
                    record.expires_at,
                    record.reason,
                    self.fetch,
                ])
            })
            .map_err(unavailable)?;
        if inserted == 0 {
            return Ok(CommitOutcome::Duplicate);
        }
        for account in &self.accounts {
            if account.write(connection)? == CommitOutcome::Conflict {
                return Ok(CommitOutcome::Conflict);
            }
        }
        if let Some(payment) = &self.payment
            && payment.write(connection)? == CommitOutcome::Conflict
        {
            return Ok(CommitOutcome::Conflict);
        }
        self.finish.write(connection)
    }
}
