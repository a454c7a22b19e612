//! The ledger on the embedded store: one row per entry, one row per account, month and currency,
//! both written in one transaction.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, corrupt, unavailable};
use crate::domain::account::AccountId;
use crate::domain::ledger::{Bucket, LedgerEntry, LedgerPlan, LedgerRow, Month, Totals};
use crate::store::{CommitOutcome, StoreError};

/// The ledger's tables, created with the rest of the schema.
pub(super) const LEDGER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_entries (
    entry_key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_months (
    account_id TEXT NOT NULL,
    month TEXT NOT NULL,
    currency TEXT NOT NULL,
    payments INTEGER NOT NULL DEFAULT 0,
    gross INTEGER NOT NULL DEFAULT 0,
    fees INTEGER NOT NULL DEFAULT 0,
    fees_refunded INTEGER NOT NULL DEFAULT 0,
    refunds INTEGER NOT NULL DEFAULT 0,
    disputes INTEGER NOT NULL DEFAULT 0,
    platform_absorbed_refunds INTEGER NOT NULL DEFAULT 0,
    in_person_payments INTEGER NOT NULL DEFAULT 0,
    in_person_gross INTEGER NOT NULL DEFAULT 0,
    transfers INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, month, currency)
);
CREATE INDEX IF NOT EXISTS ledger_months_by_month ON ledger_months (month, currency);
";

/// `INSERT … ON CONFLICT DO UPDATE` adding every field of a delta to its bucket.
fn add_to_bucket_sql() -> String {
    let names = Totals::FIELDS.join(", ");
    let placeholders: Vec<String> =
        (0..Totals::FIELDS.len()).map(|index| format!("?{}", index + 4)).collect();
    let sums: Vec<String> =
        Totals::FIELDS.iter().map(|field| format!("{field} = {field} + excluded.{field}")).collect();
    format!(
        "INSERT INTO ledger_months (account_id, month, currency, {names}) VALUES (?1, ?2, ?3, {})
         ON CONFLICT (account_id, month, currency) DO UPDATE SET {}",
        placeholders.join(", "),
        sums.join(", ")
    )
}

fn select_rows_sql(filter: &str) -> String {
    format!(
        "SELECT account_id, month, currency, {} FROM ledger_months WHERE {filter} ORDER BY month, currency, account_id",
        Totals::FIELDS.join(", ")
    )
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, Vec<i64>)> {
    let mut values = Vec::with_capacity(Totals::FIELDS.len());
    for index in 0..Totals::FIELDS.len() {
        values.push(row.get(index + 3)?);
    }
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, values))
}

fn to_ledger_row(
    (account, month, currency, values): (String, String, String, Vec<i64>),
) -> Result<LedgerRow, StoreError> {
    let account = AccountId::parse(&account).ok_or_else(|| corrupt("a ledger row's account"))?;
    let month = Month::parse(&month).ok_or_else(|| corrupt("a ledger row's month"))?;
    let mut values = values.into_iter();
    let totals = Totals::from_fields(|_| values.next().unwrap_or(0));
    Ok(LedgerRow { bucket: Bucket { account, month, currency }, totals })
}

impl SqliteStore {
    pub(super) async fn load_ledger_entry_now(&self, key: &str) -> Result<Option<LedgerEntry>, StoreError> {
        let key = key.to_owned();
        let json: Option<String> = self
            .workers
            .read(move |connection| {
                connection
                    .prepare_cached("SELECT entry FROM ledger_entries WHERE entry_key = ?1")
                    .and_then(|mut statement| statement.query_row([key], |row| row.get(0)).optional())
                    .map_err(unavailable)
            })
            .await?;
        json.map(|json| serde_json::from_str(&json).map_err(corrupt)).transpose()
    }

    pub(super) async fn commit_ledger_now(&self, plan: &LedgerPlan) -> Result<CommitOutcome, StoreError> {
        let entry = &plan.entry;
        let json = serde_json::to_string(entry).map_err(corrupt)?;
        let version = i64::try_from(entry.version).map_err(corrupt)?;
        if version == 0 {
            return Err(StoreError::Unavailable("refusing to store a ledger entry at version 0".into()));
        }
        let key = entry.key.clone();
        let deltas: Vec<(String, String, String, Vec<i64>)> = plan
            .deltas
            .iter()
            .map(|(bucket, delta)| {
                let values = delta.fields().iter().map(|(_, value)| *value).collect();
                (
                    bucket.account.as_str().to_owned(),
                    bucket.month.to_string(),
                    bucket.currency.clone(),
                    values,
                )
            })
            .collect();
        self.workers
            .write(move |connection| {
                let written = if version == 1 {
                    connection
                        .prepare_cached(
                            "INSERT INTO ledger_entries (entry_key, version, entry) VALUES (?1, 1, ?2)
                             ON CONFLICT (entry_key) DO NOTHING",
                        )
                        .and_then(|mut statement| statement.execute(params![key, json]))
                } else {
                    connection
                        .prepare_cached(
                            "UPDATE ledger_entries SET version = ?2, entry = ?3 WHERE entry_key = ?1 AND version = ?4",
                        )
                        .and_then(|mut statement| statement.execute(params![key, version, json, version - 1]))
                }
                .map_err(unavailable)?;
                if written == 0 {
                    // Rolled back to the write's savepoint.
                    return Ok(CommitOutcome::Conflict);
                }
                if !deltas.is_empty() {
                    let mut statement = connection.prepare_cached(&add_to_bucket_sql()).map_err(unavailable)?;
                    for (account, month, currency, fields) in &deltas {
                        let mut values: Vec<&dyn rusqlite::ToSql> = vec![account, month, currency];
                        values.extend(fields.iter().map(|value| value as &dyn rusqlite::ToSql));
                        statement.execute(rusqlite::params_from_iter(values)).map_err(unavailable)?;
                    }
                }
                Ok(CommitOutcome::Committed)
            })
            .await
    }

    pub(super) async fn load_ledger_months_now(
        &self,
        account_id: &AccountId,
        from: Month,
        to: Month,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let (account, from, to) = (account_id.as_str().to_owned(), from.to_string(), to.to_string());
        let rows = self
            .workers
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(&select_rows_sql("account_id = ?1 AND month BETWEEN ?2 AND ?3"))
                    .map_err(unavailable)?;
                let rows = statement.query_map(params![account, from, to], read_row).map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        rows.into_iter().map(to_ledger_row).collect()
    }

    pub(super) async fn load_fee_month_now(&self, month: Month) -> Result<Vec<LedgerRow>, StoreError> {
        let month = month.to_string();
        let rows = self
            .workers
            .read(move |connection| {
                let mut statement = connection
                    .prepare_cached(&select_rows_sql("month = ?1 AND (fees != 0 OR fees_refunded != 0)"))
                    .map_err(unavailable)?;
                let rows = statement.query_map(params![month], read_row).map_err(unavailable)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                let row = to_ledger_row(row)?;
                let fees_only = Totals {
                    fees: row.totals.fees,
                    fees_refunded: row.totals.fees_refunded,
                    ..Totals::default()
                };
                Ok(LedgerRow { totals: fees_only, ..row })
            })
            .collect()
    }
}
