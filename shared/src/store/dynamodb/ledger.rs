//! The ledger on DynamoDB, in the same single table.
//!
//! Items:
//! - an entry (a payment and what belongs to it): `pk = LENTRY#<key>`, `sk = ENTRY`, its JSON and
//!   `version`, written with a condition on the version;
//! - an account's month in one currency: `pk = LEDGER#<account_id>`,
//!   `sk = MONTH#<yyyy-mm>#<currency>`, one number attribute per [`Totals`] field, moved with
//!   `ADD` in the entry's own transaction, so that twelve months are one `Query` of the account's
//!   partition;
//! - an account's fees of a month, for the platform's fee report: `pk = LFEE#<yyyy-mm>#<shard>`,
//!   `sk = <currency>#<account_id>`, with `fees` and `fees_refunded`, in the same transaction. The
//!   month's fee items are spread over [`FEE_SHARDS`] partitions by account, so that 1,000 fee
//!   events a second never meet on one partition; the report is one `Query` per shard.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::{DynamoStore, Item, build_failed, number_attr, string_attr, unavailable, versioned};
use crate::domain::account::AccountId;
use crate::domain::ledger::{Bucket, LedgerEntry, LedgerPlan, LedgerRow, Month, Totals};
use crate::store::{CommitOutcome, StoreError};

const ENTRY_PREFIX: &str = "LENTRY#";
const ENTRY_SK: &str = "ENTRY";
const ENTRY: &str = "entry";
const LEDGER_PREFIX: &str = "LEDGER#";
const MONTH_SK_PREFIX: &str = "MONTH#";
const FEE_PREFIX: &str = "LFEE#";
/// Attribute names of a bucket's key, kept apart from the names the table's indexes use.
const LEDGER_ACCOUNT: &str = "ledger_account";
const LEDGER_MONTH: &str = "ledger_month";
const LEDGER_CURRENCY: &str = "ledger_currency";

/// How many partitions one month's fee items are spread over. Part of the stored layout: a
/// change moves accounts to other shards, whose old items the report would no longer read.
pub const FEE_SHARDS: u32 = 8;

/// The shard of an account's fee items: FNV-1a of its id, stable across builds and platforms.
pub fn fee_shard(account: &AccountId) -> u32 {
    let hash = account
        .as_str()
        .bytes()
        .fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193));
    hash % FEE_SHARDS
}

fn entry_pk(key: &str) -> String {
    format!("{ENTRY_PREFIX}{key}")
}

fn ledger_pk(account: &AccountId) -> String {
    format!("{LEDGER_PREFIX}{account}")
}

fn month_sk(month: Month, currency: &str) -> String {
    format!("{MONTH_SK_PREFIX}{month}#{currency}")
}

fn fee_pk(month: Month, shard: u32) -> String {
    format!("{FEE_PREFIX}{month}#{shard:02}")
}

fn key(pk: String, sk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (super::PK.to_owned(), AttributeValue::S(pk)),
        (super::SK.to_owned(), AttributeValue::S(sk)),
    ])
}

/// `SET` the bucket's key attributes and `ADD` each nonzero field of `delta`.
fn add_update(
    table: &str,
    item_key: HashMap<String, AttributeValue>,
    bucket: &Bucket,
    fields: &[(&'static str, i64)],
) -> Result<Update, StoreError> {
    let mut update = Update::builder()
        .table_name(table)
        .set_key(Some(item_key))
        .expression_attribute_names("#account", LEDGER_ACCOUNT)
        .expression_attribute_names("#month", LEDGER_MONTH)
        .expression_attribute_names("#currency", LEDGER_CURRENCY)
        .expression_attribute_values(":account", AttributeValue::S(bucket.account.to_string()))
        .expression_attribute_values(":month", AttributeValue::S(bucket.month.to_string()))
        .expression_attribute_values(":currency", AttributeValue::S(bucket.currency.clone()));
    let mut adds = Vec::new();
    for (index, (name, value)) in fields.iter().enumerate().filter(|(_, (_, value))| *value != 0) {
        adds.push(format!("#f{index} :f{index}"));
        update = update
            .expression_attribute_names(format!("#f{index}"), *name)
            .expression_attribute_values(format!(":f{index}"), AttributeValue::N(value.to_string()));
    }
    let mut expression = "SET #account = :account, #month = :month, #currency = :currency".to_owned();
    if !adds.is_empty() {
        expression.push_str(" ADD ");
        expression.push_str(&adds.join(", "));
    }
    update.update_expression(expression).build().map_err(build_failed)
}

fn entry_item(entry: &LedgerEntry) -> Result<Item, StoreError> {
    let json = serde_json::to_string(entry)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize a ledger entry: {err}")))?;
    let mut item = key(entry_pk(&entry.key), ENTRY_SK.to_owned());
    item.insert(super::VERSION.to_owned(), AttributeValue::N(entry.version.to_string()));
    item.insert(ENTRY.to_owned(), AttributeValue::S(json));
    Ok(item)
}

fn entry_from_item(item: &Item) -> Result<LedgerEntry, StoreError> {
    let entry: LedgerEntry = serde_json::from_str(string_attr(item, ENTRY)?).map_err(|err| {
        StoreError::Corrupt(format!("ledger entry `{ENTRY}` is unreadable: {}", super::json_error(&err)))
    })?;
    let version: u64 = number_attr(item, super::VERSION)?;
    if version != entry.version {
        return Err(StoreError::Corrupt(format!(
            "ledger entry {} has version {version} but its JSON says {}",
            entry.key, entry.version
        )));
    }
    Ok(entry)
}

/// A bucket's row from its item; a field never added is 0.
fn row_from_item(item: &Item) -> Result<LedgerRow, StoreError> {
    let account = AccountId::parse(string_attr(item, LEDGER_ACCOUNT)?).ok_or_else(|| {
        StoreError::Corrupt(format!("stored attribute `{LEDGER_ACCOUNT}` is not an account"))
    })?;
    let month = Month::parse(string_attr(item, LEDGER_MONTH)?)
        .ok_or_else(|| StoreError::Corrupt(format!("stored attribute `{LEDGER_MONTH}` is not a month")))?;
    let currency = string_attr(item, LEDGER_CURRENCY)?.to_owned();
    let mut unreadable = None;
    let totals = Totals::from_fields(|name| {
        if !item.contains_key(name) {
            return 0;
        }
        number_attr(item, name).unwrap_or_else(|err| {
            unreadable = Some(err);
            0
        })
    });
    match unreadable {
        Some(err) => Err(err),
        None => Ok(LedgerRow { bucket: Bucket { account, month, currency }, totals }),
    }
}

impl DynamoStore {
    pub(super) async fn load_ledger_entry_now(
        &self,
        entry_key: &str,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(entry_pk(entry_key), ENTRY_SK.to_owned())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        output.item().map(entry_from_item).transpose()
    }

    /// One conditional `PutItem` when nothing moves in the totals, else one `TransactWriteItems`:
    /// the entry's conditional put and an `ADD` per bucket (and per fee item) it changes.
    pub(super) async fn commit_ledger_now(&self, plan: &LedgerPlan) -> Result<CommitOutcome, StoreError> {
        let entry = &plan.entry;
        if plan.deltas.is_empty() {
            return self.put_versioned(entry_item(entry)?, entry.version).await;
        }
        let put = Put::builder().table_name(&self.table).set_item(Some(entry_item(entry)?));
        let put = versioned(put, entry.version)?.build().map_err(build_failed)?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        for (bucket, delta) in &plan.deltas {
            let month_key = key(ledger_pk(&bucket.account), month_sk(bucket.month, &bucket.currency));
            let update = add_update(&self.table, month_key, bucket, &delta.fields())?;
            items.push(TransactWriteItem::builder().update(update).build());
            if delta.fees != 0 || delta.fees_refunded != 0 {
                let fee_key = key(
                    fee_pk(bucket.month, fee_shard(&bucket.account)),
                    format!("{}#{}", bucket.currency, bucket.account),
                );
                let fields = [("fees", delta.fees), ("fees_refunded", delta.fees_refunded)];
                let update = add_update(&self.table, fee_key, bucket, &fields)?;
                items.push(TransactWriteItem::builder().update(update).build());
            }
        }
        let written = self.client.transact_write_items().set_transact_items(Some(items)).send().await;
        match written {
            Ok(_) => Ok(CommitOutcome::Committed),
            Err(err) => match err.as_service_error() {
                // The entry moved (its condition), or another transaction held a bucket at the
                // same moment (`TransactionConflict`): read again and retry.
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled))
                    if cancelled.cancellation_reasons().iter().all(|reason| {
                        matches!(
                            reason.code(),
                            None | Some("None" | "ConditionalCheckFailed" | "TransactionConflict")
                        )
                    }) =>
                {
                    Ok(CommitOutcome::Conflict)
                }
                _ => Err(unavailable("TransactWriteItems", &err)),
            },
        }
    }

    /// One `Query` of the account's ledger partition, its month items from `from` to `to`.
    /// Eventually consistent: a report may trail the newest event by a moment, never by a write.
    pub(super) async fn load_ledger_months_now(
        &self,
        account_id: &AccountId,
        from: Month,
        to: Month,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", AttributeValue::S(ledger_pk(account_id)))
            .expression_attribute_values(":from", AttributeValue::S(format!("{MONTH_SK_PREFIX}{from}#")))
            // `~` sorts after every currency code.
            .expression_attribute_values(":to", AttributeValue::S(format!("{MONTH_SK_PREFIX}{to}#~")))
            .into_paginator()
            .items()
            .send();
        let mut rows = Vec::new();
        while let Some(item) = items.next().await {
            rows.push(row_from_item(&item.map_err(|err| unavailable("Query", &err))?)?);
        }
        Ok(rows)
    }

    /// One `Query` per fee shard of the month.
    pub(super) async fn load_fee_month_now(&self, month: Month) -> Result<Vec<LedgerRow>, StoreError> {
        let mut rows = Vec::new();
        for shard in 0..FEE_SHARDS {
            let mut items = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(fee_pk(month, shard)))
                .into_paginator()
                .items()
                .send();
            while let Some(item) = items.next().await {
                let row = row_from_item(&item.map_err(|err| unavailable("Query", &err))?)?;
                if row.totals.fees != 0 || row.totals.fees_refunded != 0 {
                    rows.push(row);
                }
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_shards_are_stable_and_spread() {
        // Pinned: a change would strand every stored fee item on its old shard.
        assert_eq!(
            fee_shard(&AccountId::parse("acct_1").unwrap()),
            fee_shard(&AccountId::parse("acct_1").unwrap())
        );
        let shards: std::collections::BTreeSet<u32> =
            (0..64).map(|n| fee_shard(&AccountId::parse(&format!("acct_{n}")).unwrap())).collect();
        assert_eq!(shards.len(), FEE_SHARDS as usize, "64 accounts reach every shard");
        assert!(shards.iter().all(|shard| *shard < FEE_SHARDS));
    }

    #[test]
    fn month_keys_sort_by_month_then_currency() {
        let june = Month::parse("2025-06").unwrap();
        let july = Month::parse("2025-07").unwrap();
        assert!(month_sk(june, "usd") < month_sk(july, "aud"));
        assert!(format!("{MONTH_SK_PREFIX}{june}#") < month_sk(june, "aud"));
        assert!(month_sk(june, "zwl") < format!("{MONTH_SK_PREFIX}{june}#~"));
        assert_eq!(fee_pk(june, 3), "LFEE#2025-06#03");
        assert!(!fee_pk(june, 3).starts_with("FEED#"), "the notifier's stream filter must not match");
    }
}
