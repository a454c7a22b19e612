//! The reconciler's state on the embedded store: one row, written conditionally on its version.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, corrupt, unavailable};
use crate::domain::reconcile::ReconcilerState;
use crate::store::{CommitOutcome, StoreError};

/// The reconciler's table, created with the rest of the schema.
pub(super) const RECONCILER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reconciler (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);
";

/// The one row's key.
const ROW: &str = "state";

impl SqliteStore {
    pub(super) async fn load_reconciler_now(&self) -> Result<Option<ReconcilerState>, StoreError> {
        let json: Option<String> = self
            .workers
            .read(|connection| {
                connection
                    .query_row("SELECT state FROM reconciler WHERE name = ?1", params![ROW], |row| row.get(0))
                    .optional()
                    .map_err(unavailable)
            })
            .await?;
        json.map(|json| serde_json::from_str(&json).map_err(corrupt)).transpose()
    }

    pub(super) async fn save_reconciler_now(
        &self,
        state: &ReconcilerState,
        replace_unreadable: bool,
    ) -> Result<CommitOutcome, StoreError> {
        let json = serde_json::to_string(state).map_err(corrupt)?;
        let version = i64::try_from(state.version).map_err(corrupt)?;
        self.workers
            .write(move |connection| {
                let written = if replace_unreadable {
                    connection.execute(
                        "INSERT INTO reconciler (name, version, state) VALUES (?1, ?2, ?3)
                         ON CONFLICT (name) DO UPDATE SET version = excluded.version, state = excluded.state",
                        params![ROW, version, json],
                    )
                } else if version == 1 {
                    connection.execute(
                        "INSERT INTO reconciler (name, version, state) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                        params![ROW, version, json],
                    )
                } else {
                    connection.execute(
                        "UPDATE reconciler SET version = ?2, state = ?3 WHERE name = ?1 AND version = ?2 - 1",
                        params![ROW, version, json],
                    )
                }
                .map_err(unavailable)?;
                Ok(if written == 1 { CommitOutcome::Committed } else { CommitOutcome::Conflict })
            })
            .await
    }

    /// Overwrites the stored state with bytes that are not a state, for tests of the reconciler's
    /// recovery from a corrupt row.
    #[doc(hidden)]
    pub fn corrupt_reconciler_for_test(&self, bytes: &str) -> Result<(), StoreError> {
        let bytes = bytes.to_owned();
        self.workers.write_blocking(move |connection| {
            connection
                .execute(
                    "INSERT INTO reconciler (name, version, state) VALUES (?1, 1, ?2)
                     ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                    params![ROW, bytes],
                )
                .map_err(unavailable)?;
            Ok(())
        })
    }
}
