//! The DynamoDB store: one table holding account states and event dedupe records.
//!
//! Items: an account is `pk = ACCT#<account_id>`, `sk = STATE`; an event record is
//! `pk = EVT#<event_id>`, `sk = EVENT`, expired by the TTL attribute `expires_at`; a payment's
//! guard is `pk = PAY#<payment_key>`, `sk = PAYMENT`, beside its steps (`sk = STEP#<step_id>`); a
//! payout step lives under its account. A platform reference is `pk = REF#<kind>#<reference>`,
//! `sk = REF`. A change is `pk = FEED#<yyyy-mm-dd>`, `sk = <cursor>`, which the table's stream
//! hands to the notifier. Four indexes: `steps_by_destination` (an account's steps), the sparse
//! `open_steps` (steps not yet final, for the sweep), `accounts_by_status` (the listing) and the
//! sparse `payouts_due` (accounts whose payout funds are due, for the payout sweep).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{BuildError, DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::builders::PutBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ScalarAttributeType, StreamSpecification,
    StreamViewType, TimeToLiveSpecification, TransactWriteItem,
};

use super::{
    AccountPage, AccountQuery, AccountStore, AccountWrite, CHANGE_RETENTION_SECS, ChangePage, CommitOutcome,
    EventOutcome, EventRecord, EventWrite, MAX_PAGE, PaymentState, PlatformWrite, StoreError,
};
use crate::domain::account::{AccountId, AccountState, OnboardingStatus};
use crate::domain::change::Change;
use crate::domain::funds::PaymentRecord;
use crate::domain::ledger::{LedgerEntry, LedgerPlan, LedgerRow, Month};
use crate::domain::reconcile::ReconcilerState;
use crate::domain::reference::{ReferenceKind, ReferenceRecord};
use crate::domain::step::{PaymentKey, Step, StepRef, StepStatus};

type Item = HashMap<String, AttributeValue>;

mod ledger;
mod reconcile;

const PK: &str = "pk";
const SK: &str = "sk";
const ACCOUNT_PREFIX: &str = "ACCT#";
const ACCOUNT_SK: &str = "STATE";
const EVENT_PREFIX: &str = "EVT#";
const EVENT_SK: &str = "EVENT";
const PAYMENT_PREFIX: &str = "PAY#";
const STEP_SK_PREFIX: &str = "STEP#";
/// The index that lists an account's steps: keys `destination` and `step_id`.
const STEPS_BY_DESTINATION: &str = "steps_by_destination";
const DESTINATION: &str = "destination";
const STEP_ID: &str = "step_id";
const STEP: &str = "step";
const PAYMENT_SK: &str = "PAYMENT";
/// Where a payment's newest refund was kept before payments had a guard; read until rewritten.
const LEGACY_REFUND_SK: &str = "REFUND";
const LEGACY_REFUND: &str = "refund";
const PAYMENT_RECORD: &str = "record";
/// The sparse index of steps that are not final, for the sweep: keys `open_status` (present only
/// while a step is queued, in flight or waiting) and `updated_at`.
const OPEN_STEPS: &str = "open_steps";
const OPEN_STATUS: &str = "open_status";
const UPDATED_AT: &str = "updated_at";

/// The listing index: keys `onboarding_status` and `account_id`, on account items only.
const ACCOUNTS_BY_STATUS: &str = "accounts_by_status";
/// The sparse index of accounts whose payout funds are due for the sweep: keys `payout_sweep`
/// (always [`PAYOUT_SWEEP_DUE`], present only while the account has a due time) and
/// `payout_due_at`.
const PAYOUTS_DUE: &str = "payouts_due";
const PAYOUT_SWEEP: &str = "payout_sweep";
const PAYOUT_SWEEP_DUE: &str = "due";
const PAYOUT_DUE_AT: &str = "payout_due_at";
const REFERENCE_PREFIX: &str = "REF#";
const REFERENCE_SK: &str = "REF";
const REFERENCE_RECORD: &str = "record";
const FEED_PREFIX: &str = "FEED#";
const CHANGE: &str = "change";

/// How long after its `at` a change may still be committing: the longest any writer's DynamoDB
/// operation can take after it stamps the change (the webhook's 5 s deadline, a worker's 5 s
/// operation timeout), with margin. The feed lists a change only once this has passed, so that a
/// consumer's cursor never moves past a change still being written with an earlier cursor.
pub const FEED_SETTLE_SECS: i64 = 15;

const VERSION: &str = "version";
const ONBOARDING_STATUS: &str = "onboarding_status";
const STATE: &str = "state";

const EVENT_TYPE: &str = "event_type";
const ACCOUNT_ID: &str = "account_id";
const CREATED: &str = "created";
const LIVEMODE: &str = "livemode";
const OUTCOME: &str = "outcome";
const RECEIVED_AT: &str = "received_at";
const REASON: &str = "reason";
const EXPIRES_AT: &str = "expires_at";
const FETCH: &str = "fetch";

const NOT_YET_WRITTEN: &str = "attribute_not_exists(pk)";
const CONDITIONAL_CHECK_FAILED: &str = "ConditionalCheckFailed";

/// How long `create_table` waits for a new table to become active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// The [`AccountStore`] on one DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store on `table`, which must already exist.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into() }
    }

    /// The steps stored under one partition (a payment's, or an account's payouts), read
    /// consistently because planning decides on them.
    async fn partition_steps(&self, pk: String) -> Result<Vec<Step>, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :step)")
            .expression_attribute_values(":pk", AttributeValue::S(pk))
            .expression_attribute_values(":step", AttributeValue::S(STEP_SK_PREFIX.to_owned()));
        collect_steps(query).await
    }

    async fn event_exists(&self, event_id: &str) -> Result<bool, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(event_pk(event_id)))
            .key(SK, AttributeValue::S(EVENT_SK.to_owned()))
            .projection_expression(PK)
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        Ok(output.item().is_some())
    }

    /// Tells a duplicate event from a version conflict after a cancelled transaction whose items
    /// are, in order, the event record and the account.
    async fn cancelled_outcome(
        &self,
        record: &EventRecord,
        reasons: &[CancellationReason],
    ) -> Result<CommitOutcome, StoreError> {
        if reasons.is_empty() {
            // Some emulators omit the reasons: then the event record alone tells the two apart.
            return Ok(if self.event_exists(&record.event_id).await? {
                CommitOutcome::Duplicate
            } else {
                CommitOutcome::Conflict
            });
        }
        let failed_check = |reason: &CancellationReason| reason.code() == Some(CONDITIONAL_CHECK_FAILED);
        if reasons.first().is_some_and(failed_check) {
            Ok(CommitOutcome::Duplicate)
        } else if reasons.iter().skip(1).any(failed_check) {
            // The account's version moved, or another delivery planned the same steps first.
            Ok(CommitOutcome::Conflict)
        } else {
            let codes: Vec<&str> = reasons.iter().map(|reason| reason.code().unwrap_or("unknown")).collect();
            Err(StoreError::Unavailable(format!("DynamoDB transaction cancelled: {}", codes.join(", "))))
        }
    }
}

/// An index keyed `hash` and `range`, projecting every attribute.
fn index(name: &str, hash: &str, range: &str) -> Result<GlobalSecondaryIndex, StoreError> {
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder().attribute_name(name).key_type(key_type).build().map_err(build_failed)
    };
    GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash)?)
        .key_schema(key(range, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(build_failed)
}

/// Creates `table` (on demand, keys `pk` and `sk`) unless it exists, and enables TTL on
/// `expires_at`; for tests and local runs, since deployments get the table from the template.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let attribute = |name: &str| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder().attribute_name(name).key_type(key_type).build()
    };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(PK).map_err(build_failed)?)
        .attribute_definitions(attribute(SK).map_err(build_failed)?)
        .key_schema(key(PK, KeyType::Hash).map_err(build_failed)?)
        .key_schema(key(SK, KeyType::Range).map_err(build_failed)?)
        .attribute_definitions(attribute(DESTINATION).map_err(build_failed)?)
        .attribute_definitions(attribute(STEP_ID).map_err(build_failed)?)
        .attribute_definitions(attribute(OPEN_STATUS).map_err(build_failed)?)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(UPDATED_AT)
                .attribute_type(ScalarAttributeType::N)
                .build()
                .map_err(build_failed)?,
        )
        .global_secondary_indexes(index(OPEN_STEPS, OPEN_STATUS, UPDATED_AT)?)
        .attribute_definitions(attribute(ONBOARDING_STATUS).map_err(build_failed)?)
        .attribute_definitions(attribute(ACCOUNT_ID).map_err(build_failed)?)
        .global_secondary_indexes(index(ACCOUNTS_BY_STATUS, ONBOARDING_STATUS, ACCOUNT_ID)?)
        .attribute_definitions(attribute(PAYOUT_SWEEP).map_err(build_failed)?)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(PAYOUT_DUE_AT)
                .attribute_type(ScalarAttributeType::N)
                .build()
                .map_err(build_failed)?,
        )
        .global_secondary_indexes(index(PAYOUTS_DUE, PAYOUT_SWEEP, PAYOUT_DUE_AT)?)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(build_failed)?,
        )
        .global_secondary_indexes(index(STEPS_BY_DESTINATION, DESTINATION, STEP_ID)?)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(err) if err.as_service_error().is_some_and(CreateTableError::is_resource_in_use_exception) => {}
        Err(err) => return Err(unavailable("CreateTable", &err)),
    }
    // DynamoDB refuses UpdateTimeToLive while the table is still being created.
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(TABLE_ACTIVE_TIMEOUT)
        .await
        .map_err(|err| unavailable("waiting for the table", &err))?;
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(EXPIRES_AT)
        .build()
        .map_err(build_failed)?;
    match client.update_time_to_live().table_name(table).time_to_live_specification(ttl).send().await {
        Ok(_) => Ok(()),
        // DynamoDB answers a repeated enable with a ValidationException, not with success.
        Err(err) if err.message().is_some_and(|message| message.contains("already enabled")) => Ok(()),
        Err(err) => Err(unavailable("UpdateTimeToLive", &err)),
    }
}

impl AccountStore for DynamoStore {
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
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(account_pk(account_id)))
            .key(SK, AttributeValue::S(ACCOUNT_SK.to_owned()))
            // A stale read would only fail the conditional write, but the retry would read it again.
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        output.item().map(account_from_item).transpose()
    }

    async fn commit(&self, write: &EventWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let record = write.record;
        let only_the_record = write.accounts.is_empty()
            && write.new_steps.is_empty()
            && write.step_updates.is_empty()
            && write.payment.is_none()
            && write.changes.is_empty();
        if only_the_record {
            // Nothing but the record: a plain conditional put, at half a transaction's cost.
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(event_item(record)?))
                .condition_expression(NOT_YET_WRITTEN)
                .send()
                .await;
            return put_outcome(put, CommitOutcome::Duplicate);
        }
        let put = |item: Item| Put::builder().table_name(&self.table).set_item(Some(item));
        let event_put = put(event_item(record)?).condition_expression(NOT_YET_WRITTEN);
        let mut puts = vec![event_put];
        for state in write.accounts {
            puts.push(versioned(put(account_item(state)?), state.version)?);
        }
        for step in write.new_steps {
            puts.push(put(step_item(step)?).condition_expression(NOT_YET_WRITTEN));
        }
        for step in write.step_updates {
            puts.push(step_update(put(step_item(step)?), step)?);
        }
        if let Some(payment) = write.payment {
            puts.push(versioned(put(payment_item(payment)?), payment.version)?);
        }
        for change in write.changes {
            puts.push(change_put(put(change_item(change)?)));
        }
        match self.transact(puts).await? {
            None => Ok(CommitOutcome::Committed),
            Some(reasons) => self.cancelled_outcome(record, &reasons).await,
        }
    }

    async fn load_payment_steps(&self, payment_key: &PaymentKey) -> Result<Vec<Step>, StoreError> {
        self.partition_steps(format!("{PAYMENT_PREFIX}{payment_key}")).await
    }

    /// One consistent query of the payment's partition: its guard and its steps together.
    async fn load_payment(&self, payment_key: &PaymentKey) -> Result<PaymentState, StoreError> {
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S(format!("{PAYMENT_PREFIX}{payment_key}")))
            .into_paginator()
            .items()
            .send();
        let mut payment = PaymentState::default();
        let mut legacy_refund = None;
        while let Some(item) = items.next().await {
            let item = item.map_err(|err| unavailable("Query", &err))?;
            match string_attr(&item, SK)? {
                PAYMENT_SK => payment.record = Some(payment_from_item(&item)?),
                LEGACY_REFUND_SK => legacy_refund = Some(legacy_refund_from_item(&item)?),
                sk if sk.starts_with(STEP_SK_PREFIX) => payment.steps.push(step_from_item(&item)?),
                _ => {}
            }
        }
        // A refund recorded by an earlier version, and no guard yet: the guard starts from it, at
        // version 0, so that its first write is conditioned on no guard existing.
        if payment.record.is_none()
            && let Some(refund) = legacy_refund
        {
            payment.record = Some(PaymentRecord {
                payment_key: payment_key.clone(),
                refund: Some(refund),
                ..PaymentRecord::default()
            });
        }
        payment.steps.sort_by(|a, b| a.step_id.cmp(&b.step_id));
        Ok(payment)
    }

    /// Reads the sparse open-steps index, which DynamoDB keeps eventually consistent: the sweep
    /// only resumes steps, and the worker re-reads each one consistently.
    async fn list_open_steps(
        &self,
        status: StepStatus,
        updated_before: i64,
        limit: usize,
    ) -> Result<Vec<Step>, StoreError> {
        let page_size = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_STEPS)
            .key_condition_expression("#status = :status AND #updated < :before")
            .expression_attribute_names("#status", OPEN_STATUS)
            .expression_attribute_names("#updated", UPDATED_AT)
            .expression_attribute_values(":status", AttributeValue::S(status.as_str().to_owned()))
            .expression_attribute_values(":before", AttributeValue::N(updated_before.to_string()))
            .limit(page_size)
            .into_paginator()
            .items()
            .send();
        let mut steps = Vec::new();
        while steps.len() < limit
            && let Some(item) = items.next().await
        {
            steps.push(step_from_item(&item.map_err(|err| unavailable("Query", &err))?)?);
        }
        Ok(steps)
    }

    async fn load_step(&self, step: &StepRef) -> Result<Option<Step>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(step_ref_pk(step)))
            .key(SK, AttributeValue::S(format!("{STEP_SK_PREFIX}{}", step.step_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        output.item().map(step_from_item).transpose()
    }

    async fn update_step(&self, step: &Step, changes: &[Change]) -> Result<CommitOutcome, StoreError> {
        if !changes.is_empty() {
            let put = |item: Item| Put::builder().table_name(&self.table).set_item(Some(item));
            let mut puts = vec![step_update(put(step_item(step)?), step)?];
            for change in changes {
                puts.push(change_put(put(change_item(change)?)));
            }
            return Ok(match self.transact(puts).await? {
                None => CommitOutcome::Committed,
                Some(_) => CommitOutcome::Conflict,
            });
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(step_item(step)?))
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":expected", AttributeValue::N(previous_version(step)?.to_string()))
            .send()
            .await;
        put_outcome(put, CommitOutcome::Conflict)
    }

    async fn load_payouts(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        self.partition_steps(account_pk(account_id)).await
    }

    /// Reads the destination index, which DynamoDB keeps eventually consistent: fine for listing.
    async fn load_account_steps(&self, account_id: &AccountId) -> Result<Vec<Step>, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(STEPS_BY_DESTINATION)
            .key_condition_expression("#destination = :destination")
            .expression_attribute_names("#destination", DESTINATION)
            .expression_attribute_values(":destination", AttributeValue::S(account_id.to_string()));
        collect_steps(query).await
    }

    async fn update_fetch(
        &self,
        previous: &EventRecord,
        next: &EventRecord,
    ) -> Result<CommitOutcome, StoreError> {
        let Some(previous_fetch) = fetch_json(previous)? else {
            return Ok(CommitOutcome::Conflict);
        };
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(event_item(next)?))
            .condition_expression("#outcome = :queued AND #fetch = :previous")
            .expression_attribute_names("#outcome", OUTCOME)
            .expression_attribute_names("#fetch", FETCH)
            .expression_attribute_values(
                ":queued",
                AttributeValue::S(EventOutcome::FetchQueued.as_str().to_owned()),
            )
            .expression_attribute_values(":previous", AttributeValue::S(previous_fetch))
            .send()
            .await;
        put_outcome(put, CommitOutcome::Conflict)
    }

    async fn load_event(&self, event_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(event_pk(event_id)))
            .key(SK, AttributeValue::S(EVENT_SK.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        output.item().map(|item| event_from_item(event_id, item)).transpose()
    }

    /// Reads the listing index, which DynamoDB keeps eventually consistent: fine for listing. With
    /// no status, one query per status, merged.
    async fn list_accounts(&self, query: &AccountQuery<'_>) -> Result<AccountPage, StoreError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        let statuses = match query.status {
            Some(status) => vec![status],
            None => OnboardingStatus::ALL.to_vec(),
        };
        let mut accounts = Vec::new();
        for status in statuses {
            accounts.extend(self.accounts_in_status(status, query.starting_after, limit + 1).await?);
        }
        accounts.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        let has_more = accounts.len() > limit;
        accounts.truncate(limit);
        Ok(AccountPage { accounts, has_more })
    }

    async fn commit_platform(&self, write: &PlatformWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let put = |item: Item| Put::builder().table_name(&self.table).set_item(Some(item));
        let reference = write.reference;
        let mut puts = vec![versioned(put(reference_item(reference)?), reference.version)?];
        if let Some(state) = write.account {
            puts.push(versioned(put(account_item(state)?), state.version)?);
        }
        for step in write.new_steps {
            puts.push(put(step_item(step)?).condition_expression(NOT_YET_WRITTEN));
        }
        for change in write.changes {
            puts.push(change_put(put(change_item(change)?)));
        }
        if puts.len() == 1 {
            // Only the reference: a plain conditional put, at half a transaction's cost.
            return self.put_versioned(reference_item(reference)?, reference.version).await;
        }
        Ok(match self.transact(puts).await? {
            None => CommitOutcome::Committed,
            Some(_) => CommitOutcome::Conflict,
        })
    }

    async fn load_reference(
        &self,
        kind: ReferenceKind,
        reference: &str,
    ) -> Result<Option<ReferenceRecord>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(reference_pk(kind, reference)))
            .key(SK, AttributeValue::S(REFERENCE_SK.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        output
            .item()
            .map(|item| {
                serde_json::from_str(string_attr(item, REFERENCE_RECORD)?).map_err(|err| {
                    StoreError::Corrupt(format!(
                        "reference `{REFERENCE_RECORD}` is unreadable: {}",
                        json_error(&err)
                    ))
                })
            })
            .transpose()
    }

    /// Walks the day partitions from the cursor's day to the horizon's, one consistent query each,
    /// and lists only changes at least [`FEED_SETTLE_SECS`] old.
    async fn list_changes(
        &self,
        after: Option<&str>,
        limit: usize,
        now: i64,
    ) -> Result<Option<ChangePage>, StoreError> {
        let after_at = match after {
            None => None,
            Some(cursor) => match feed_cursor_at(cursor) {
                Some(at) => Some(at),
                None => return Ok(None),
            },
        };
        let limit = limit.clamp(1, MAX_PAGE);
        let horizon = now - FEED_SETTLE_SECS;
        // Nothing older than the retention is kept: a cursor from before it (or a forged one from
        // 1970) starts at the oldest kept day, never walks the years between.
        let oldest_kept = now - CHANGE_RETENTION_SECS;
        let first_day = after_at.unwrap_or(oldest_kept).max(oldest_kept).div_euclid(DAY_SECS);
        let last_day = horizon.div_euclid(DAY_SECS);
        // Every cursor of a change at or before the horizon sorts below this.
        let upper = format!("{:012}/", horizon);
        let mut page = ChangePage { changes: Vec::new(), next: after.unwrap_or_default().to_owned() };
        for day in first_day..=last_day {
            let remaining = limit - page.changes.len();
            if remaining == 0 {
                break;
            }
            let lower = match after {
                Some(cursor) if day == first_day => cursor.to_owned(),
                _ => String::new(),
            };
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("pk = :pk AND sk BETWEEN :lower AND :upper")
                .expression_attribute_values(":pk", AttributeValue::S(feed_pk(day)))
                .expression_attribute_values(":lower", AttributeValue::S(format!("{lower}\u{1}")))
                .expression_attribute_values(":upper", AttributeValue::S(upper.clone()))
                .limit(i32::try_from(remaining).unwrap_or(1))
                .send()
                .await
                .map_err(|err| unavailable("Query", &err))?;
            for item in output.items() {
                let change = change_from_item(item)?;
                page.next.clone_from(&change.cursor);
                page.changes.push(change);
            }
        }
        Ok(Some(page))
    }

    async fn commit_account(&self, write: &AccountWrite<'_>) -> Result<CommitOutcome, StoreError> {
        let state = write.account;
        if write.new_steps.is_empty() && write.step_updates.is_empty() && write.changes.is_empty() {
            // Only the account: a plain conditional put, at half a transaction's cost.
            return self.put_versioned(account_item(state)?, state.version).await;
        }
        let put = |item: Item| Put::builder().table_name(&self.table).set_item(Some(item));
        let mut puts = vec![versioned(put(account_item(state)?), state.version)?];
        for step in write.new_steps {
            puts.push(put(step_item(step)?).condition_expression(NOT_YET_WRITTEN));
        }
        for step in write.step_updates {
            puts.push(step_update(put(step_item(step)?), step)?);
        }
        for change in write.changes {
            puts.push(change_put(put(change_item(change)?)));
        }
        Ok(match self.transact(puts).await? {
            None => CommitOutcome::Committed,
            Some(_) => CommitOutcome::Conflict,
        })
    }

    /// One page of the sparse `payouts_due` index, which DynamoDB keeps eventually consistent:
    /// the sweep's write is conditional on the version it read, and retries on a consistent read.
    async fn list_payouts_due(&self, due_by: i64, limit: usize) -> Result<Vec<AccountState>, StoreError> {
        let page_size = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PAYOUTS_DUE)
            .key_condition_expression("#sweep = :due AND #due_at <= :by")
            .expression_attribute_names("#sweep", PAYOUT_SWEEP)
            .expression_attribute_names("#due_at", PAYOUT_DUE_AT)
            .expression_attribute_values(":due", AttributeValue::S(PAYOUT_SWEEP_DUE.to_owned()))
            .expression_attribute_values(":by", AttributeValue::N(due_by.to_string()))
            .limit(page_size)
            .into_paginator()
            .items()
            .send();
        let mut accounts = Vec::new();
        while accounts.len() < limit
            && let Some(item) = items.next().await
        {
            accounts.push(account_from_item(&item.map_err(|err| unavailable("Query", &err))?)?);
        }
        Ok(accounts)
    }
}

impl DynamoStore {
    /// Puts `item` if the stored one is at `version - 1` (or absent, for 1).
    async fn put_versioned(&self, item: Item, version: u64) -> Result<CommitOutcome, StoreError> {
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        let put = match version {
            0 => return Err(StoreError::Unavailable("refusing to store an item at version 0".to_owned())),
            1 => put.condition_expression(NOT_YET_WRITTEN),
            version => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", VERSION)
                .expression_attribute_values(":expected", AttributeValue::N((version - 1).to_string())),
        };
        put_outcome(put.send().await, CommitOutcome::Conflict)
    }

    /// Runs one transaction: `None` when it committed, or the cancellation reasons.
    async fn transact(&self, puts: Vec<PutBuilder>) -> Result<Option<Vec<CancellationReason>>, StoreError> {
        let items = puts
            .into_iter()
            .map(|put| Ok(TransactWriteItem::builder().put(put.build().map_err(build_failed)?).build()))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let written = self.client.transact_write_items().set_transact_items(Some(items)).send().await;
        match written {
            Ok(_) => Ok(None),
            Err(err) => match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    Ok(Some(cancelled.cancellation_reasons().to_vec()))
                }
                _ => Err(unavailable("TransactWriteItems", &err)),
            },
        }
    }

    async fn accounts_in_status(
        &self,
        status: OnboardingStatus,
        starting_after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountState>, StoreError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(ACCOUNTS_BY_STATUS)
            .expression_attribute_names("#status", ONBOARDING_STATUS)
            .expression_attribute_values(":status", AttributeValue::S(status.as_str().to_owned()))
            .limit(i32::try_from(limit).unwrap_or(1));
        query = match starting_after {
            Some(after) => query
                .key_condition_expression("#status = :status AND #id > :after")
                .expression_attribute_names("#id", ACCOUNT_ID)
                .expression_attribute_values(":after", AttributeValue::S(after.to_string())),
            None => query.key_condition_expression("#status = :status"),
        };
        let output = query.send().await.map_err(|err| unavailable("Query", &err))?;
        output.items().iter().map(account_from_item).collect()
    }
}

const DAY_SECS: i64 = 24 * 60 * 60;

/// The partition of a day's changes (`day` counts days since 1970).
fn feed_pk(day: i64) -> String {
    format!("{FEED_PREFIX}{}", crate::calendar::utc_date(day * DAY_SECS))
}

/// A change's cursor: its time, zero-padded so that cursors sort by time, then its id, which is
/// unique, so that two changes of one second are still strictly ordered.
fn feed_cursor(change: &Change) -> String {
    format!("{:012}.{}", change.at, change.id)
}

fn feed_cursor_at(cursor: &str) -> Option<i64> {
    let (at, id) = cursor.split_once('.')?;
    if at.len() != 12 || !at.bytes().all(|byte| byte.is_ascii_digit()) || id.is_empty() {
        return None;
    }
    at.parse().ok()
}

fn change_item(change: &Change) -> Result<Item, StoreError> {
    let mut change = change.clone();
    change.cursor = feed_cursor(&change);
    let json = serde_json::to_string(&change)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize a change: {err}")))?;
    Ok(HashMap::from([
        (PK.to_owned(), AttributeValue::S(feed_pk(change.at.div_euclid(DAY_SECS)))),
        (SK.to_owned(), AttributeValue::S(change.cursor)),
        (CHANGE.to_owned(), AttributeValue::S(json)),
        (
            EXPIRES_AT.to_owned(),
            AttributeValue::N(change.at.saturating_add(CHANGE_RETENTION_SECS).to_string()),
        ),
    ]))
}

/// A change is written once: its id and time fix its cursor, so a second write of the same
/// change (a retried commit of the same version) would only fail the write it belongs to.
fn change_put(put: PutBuilder) -> PutBuilder {
    put.condition_expression(NOT_YET_WRITTEN)
}

fn change_from_item(item: &Item) -> Result<Change, StoreError> {
    serde_json::from_str(string_attr(item, CHANGE)?)
        .map_err(|err| StoreError::Corrupt(format!("change `{CHANGE}` is unreadable: {}", json_error(&err))))
}

fn reference_pk(kind: ReferenceKind, reference: &str) -> String {
    format!("{REFERENCE_PREFIX}{}#{reference}", kind.as_str())
}

fn reference_item(reference: &ReferenceRecord) -> Result<Item, StoreError> {
    let json = serde_json::to_string(reference)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize a reference: {err}")))?;
    Ok(HashMap::from([
        (PK.to_owned(), AttributeValue::S(reference_pk(reference.kind, &reference.reference))),
        (SK.to_owned(), AttributeValue::S(REFERENCE_SK.to_owned())),
        (VERSION.to_owned(), AttributeValue::N(reference.version.to_string())),
        (REFERENCE_RECORD.to_owned(), AttributeValue::S(json)),
    ]))
}

/// What a conditional `PutItem` did: written, or `on_condition_failed` when its condition failed.
fn put_outcome<R>(
    put: Result<
        R,
        aws_sdk_dynamodb::error::SdkError<PutItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
    >,
    on_condition_failed: CommitOutcome,
) -> Result<CommitOutcome, StoreError> {
    match put {
        Ok(_) => Ok(CommitOutcome::Committed),
        Err(err)
            if err.as_service_error().is_some_and(PutItemError::is_conditional_check_failed_exception) =>
        {
            Ok(on_condition_failed)
        }
        Err(err) => Err(unavailable("PutItem", &err)),
    }
}

/// A step update is conditional on the stored step being at the version it was read at (steps
/// are planned at version 0, so unlike accounts there is no "absent" case).
fn step_update(put: PutBuilder, step: &Step) -> Result<PutBuilder, StoreError> {
    Ok(put
        .condition_expression("#version = :expected")
        .expression_attribute_names("#version", VERSION)
        .expression_attribute_values(":expected", AttributeValue::N(previous_version(step)?.to_string())))
}

fn previous_version(step: &Step) -> Result<u64, StoreError> {
    step.version
        .checked_sub(1)
        .ok_or_else(|| StoreError::Unavailable("a step update must bump its version".into()))
}

/// Conditions a put on the stored item being at `version - 1`, or absent for version 1.
fn versioned(put: PutBuilder, version: u64) -> Result<PutBuilder, StoreError> {
    Ok(match version {
        0 => return Err(StoreError::Unavailable("refusing to store an item at version 0".to_owned())),
        1 => put.condition_expression(NOT_YET_WRITTEN),
        version => put
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":expected", AttributeValue::N((version - 1).to_string())),
    })
}

async fn collect_steps(query: QueryFluentBuilder) -> Result<Vec<Step>, StoreError> {
    let mut items = query.into_paginator().items().send();
    let mut steps = Vec::new();
    while let Some(item) = items.next().await {
        let item = item.map_err(|err| unavailable("Query", &err))?;
        steps.push(step_from_item(&item)?);
    }
    steps.sort_by(|a, b| a.step_id.cmp(&b.step_id));
    Ok(steps)
}

/// Transfers and reversals live under their payment, payouts under their account, so that
/// planning reads one partition.
fn step_pk(step: &Step) -> String {
    step_ref_pk(&step.reference())
}

fn step_ref_pk(step: &StepRef) -> String {
    match &step.payment_key {
        Some(payment_key) => format!("{PAYMENT_PREFIX}{payment_key}"),
        None => account_pk(&step.destination),
    }
}

fn step_item(step: &Step) -> Result<Item, StoreError> {
    let json = serde_json::to_string(step)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize a step: {err}")))?;
    let mut item = HashMap::from([
        (PK.to_owned(), AttributeValue::S(step_pk(step))),
        (SK.to_owned(), AttributeValue::S(format!("{STEP_SK_PREFIX}{}", step.step_id))),
        (STEP_ID.to_owned(), AttributeValue::S(step.step_id.to_string())),
        (DESTINATION.to_owned(), AttributeValue::S(step.destination.to_string())),
        (VERSION.to_owned(), AttributeValue::N(step.version.to_string())),
        (UPDATED_AT.to_owned(), AttributeValue::N(step.updated_at.to_string())),
        (STEP.to_owned(), AttributeValue::S(json)),
    ]);
    // Only open steps are in the sweep's index, so that it never grows with history.
    if !step.status.is_final() {
        item.insert(OPEN_STATUS.to_owned(), AttributeValue::S(step.status.as_str().to_owned()));
    }
    Ok(item)
}

fn payment_item(payment: &PaymentRecord) -> Result<Item, StoreError> {
    let json = serde_json::to_string(payment)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize a payment: {err}")))?;
    Ok(HashMap::from([
        (PK.to_owned(), AttributeValue::S(format!("{PAYMENT_PREFIX}{}", payment.payment_key))),
        (SK.to_owned(), AttributeValue::S(PAYMENT_SK.to_owned())),
        (VERSION.to_owned(), AttributeValue::N(payment.version.to_string())),
        (PAYMENT_RECORD.to_owned(), AttributeValue::S(json)),
    ]))
}

fn legacy_refund_from_item(item: &Item) -> Result<crate::domain::funds::Refund, StoreError> {
    serde_json::from_str(string_attr(item, LEGACY_REFUND)?).map_err(|err| {
        StoreError::Corrupt(format!("refund `{LEGACY_REFUND}` is unreadable: {}", json_error(&err)))
    })
}

fn payment_from_item(item: &Item) -> Result<PaymentRecord, StoreError> {
    let record: PaymentRecord = serde_json::from_str(string_attr(item, PAYMENT_RECORD)?).map_err(|err| {
        StoreError::Corrupt(format!("payment `{PAYMENT_RECORD}` is unreadable: {}", json_error(&err)))
    })?;
    let version: u64 = number_attr(item, VERSION)?;
    if version != record.version {
        return Err(StoreError::Corrupt(format!(
            "payment {} has version {version} but its record says {}",
            record.payment_key, record.version
        )));
    }
    Ok(record)
}

fn step_from_item(item: &Item) -> Result<Step, StoreError> {
    let json = string_attr(item, STEP)?;
    serde_json::from_str(json)
        .map_err(|err| StoreError::Corrupt(format!("step `{STEP}` is unreadable: {}", json_error(&err))))
}

fn account_pk(account_id: &AccountId) -> String {
    format!("{ACCOUNT_PREFIX}{account_id}")
}

fn event_pk(event_id: &str) -> String {
    format!("{EVENT_PREFIX}{event_id}")
}

fn unavailable(action: &str, err: &(dyn std::error::Error + 'static)) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB {action}: {}", DisplayErrorContext(err)))
}

fn build_failed(err: BuildError) -> StoreError {
    StoreError::Unavailable(format!("could not build a DynamoDB request: {err}"))
}

fn account_item(state: &AccountState) -> Result<Item, StoreError> {
    let json = serde_json::to_string(state)
        .map_err(|err| StoreError::Unavailable(format!("could not serialize an account state: {err}")))?;
    let mut item = HashMap::from([
        (PK.to_owned(), AttributeValue::S(account_pk(&state.account_id))),
        (SK.to_owned(), AttributeValue::S(ACCOUNT_SK.to_owned())),
        (VERSION.to_owned(), AttributeValue::N(state.version.to_string())),
        (ONBOARDING_STATUS.to_owned(), AttributeValue::S(state.onboarding_status.as_str().to_owned())),
        (ACCOUNT_ID.to_owned(), AttributeValue::S(state.account_id.to_string())),
        (STATE.to_owned(), AttributeValue::S(json)),
    ]);
    // Only accounts with payout funds due are in the sweep's index.
    if let Some(due_at) = state.payout_funds.due_at {
        item.insert(PAYOUT_SWEEP.to_owned(), AttributeValue::S(PAYOUT_SWEEP_DUE.to_owned()));
        item.insert(PAYOUT_DUE_AT.to_owned(), AttributeValue::N(due_at.to_string()));
    }
    Ok(item)
}

fn account_from_item(item: &Item) -> Result<AccountState, StoreError> {
    let json = string_attr(item, STATE)?;
    let state: AccountState = serde_json::from_str(json).map_err(|err| {
        StoreError::Corrupt(format!("account `{STATE}` is unreadable: {}", json_error(&err)))
    })?;
    let version: u64 = number_attr(item, VERSION)?;
    // The conditional write checks the attribute, the caller decides on the JSON: they must agree.
    if version != state.version {
        return Err(StoreError::Corrupt(format!(
            "account {} has version {version} but its state says {}",
            state.account_id, state.version
        )));
    }
    Ok(state)
}

fn event_item(record: &EventRecord) -> Result<Item, StoreError> {
    let mut item = HashMap::from([
        (PK.to_owned(), AttributeValue::S(event_pk(&record.event_id))),
        (SK.to_owned(), AttributeValue::S(EVENT_SK.to_owned())),
        (EVENT_TYPE.to_owned(), AttributeValue::S(record.event_type.clone())),
        (OUTCOME.to_owned(), AttributeValue::S(record.outcome.as_str().to_owned())),
        (RECEIVED_AT.to_owned(), AttributeValue::N(record.received_at.to_string())),
        (EXPIRES_AT.to_owned(), AttributeValue::N(record.expires_at.to_string())),
    ]);
    if let Some(account_id) = &record.account_id {
        item.insert(ACCOUNT_ID.to_owned(), AttributeValue::S(account_id.clone()));
    }
    if let Some(created) = record.created {
        item.insert(CREATED.to_owned(), AttributeValue::N(created.to_string()));
    }
    if let Some(livemode) = record.livemode {
        item.insert(LIVEMODE.to_owned(), AttributeValue::Bool(livemode));
    }
    if let Some(reason) = &record.reason {
        item.insert(REASON.to_owned(), AttributeValue::S(reason.clone()));
    }
    if let Some(fetch) = fetch_json(record)? {
        item.insert(FETCH.to_owned(), AttributeValue::S(fetch));
    }
    Ok(item)
}

/// A record's fetch step as stored: JSON in a string attribute, compared whole by
/// [`AccountStore::update_fetch`]'s condition.
fn fetch_json(record: &EventRecord) -> Result<Option<String>, StoreError> {
    record
        .fetch
        .as_ref()
        .map(|fetch| {
            serde_json::to_string(fetch)
                .map_err(|err| StoreError::Corrupt(format!("fetch step: {}", json_error(&err))))
        })
        .transpose()
}

fn event_from_item(event_id: &str, item: &Item) -> Result<EventRecord, StoreError> {
    let outcome = string_attr(item, OUTCOME)?;
    let outcome = EventOutcome::parse(outcome)
        .ok_or_else(|| StoreError::Corrupt(format!("event record `{OUTCOME}` is not a known outcome")))?;
    let livemode = match item.get(LIVEMODE) {
        None => None,
        Some(value) => Some(*value.as_bool().map_err(|_| wrong_type(LIVEMODE, "a boolean"))?),
    };
    Ok(EventRecord {
        event_id: event_id.to_owned(),
        event_type: string_attr(item, EVENT_TYPE)?.to_owned(),
        account_id: item
            .contains_key(ACCOUNT_ID)
            .then(|| string_attr(item, ACCOUNT_ID))
            .transpose()?
            .map(str::to_owned),
        created: item.contains_key(CREATED).then(|| number_attr(item, CREATED)).transpose()?,
        livemode,
        outcome,
        received_at: number_attr(item, RECEIVED_AT)?,
        expires_at: number_attr(item, EXPIRES_AT)?,
        reason: item.contains_key(REASON).then(|| string_attr(item, REASON)).transpose()?.map(str::to_owned),
        fetch: item
            .contains_key(FETCH)
            .then(|| {
                serde_json::from_str(string_attr(item, FETCH)?)
                    .map_err(|err| StoreError::Corrupt(format!("fetch step: {}", json_error(&err))))
            })
            .transpose()?,
    })
}

fn string_attr<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|value| value.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| wrong_type(name, "a string"))
}

fn number_attr<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    item.get(name)
        .and_then(|value| value.as_n().ok())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| wrong_type(name, "an integer"))
}

/// Where and what kind, without serde's message, which can quote stored values.
fn json_error(err: &serde_json::Error) -> String {
    format!("{:?} error at line {}, column {}", err.classify(), err.line(), err.column())
}

/// Names the attribute but never shows its value.
fn wrong_type(name: &str, expected: &str) -> StoreError {
    StoreError::Corrupt(format!("stored attribute `{name}` is missing or not {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EventRecord {
        EventRecord {
            event_id: "evt_123".to_owned(),
            event_type: "account.updated".to_owned(),
            account_id: Some("acct_1".to_owned()),
            created: Some(1_700_000_000),
            livemode: Some(false),
            outcome: EventOutcome::Applied,
            received_at: 1_700_000_005,
            expires_at: 1_702_592_005,
            reason: None,
            fetch: None,
        }
    }

    fn state(version: u64) -> AccountState {
        let json = serde_json::json!({
            "account_id": "acct_1",
            "onboarding_status": "active",
            "charges_enabled": true,
            "payouts_enabled": true,
            "details_submitted": true,
            "disabled_reason": null,
            "requirements": {
                "currently_due": [], "eventually_due": [], "past_due": [],
                "pending_verification": [], "current_deadline": null
            },
            "capabilities": {"card_payments": "active"},
            "payout_schedule_interval": "daily",
            "deauthorized": false,
            "persons": {},
            "external_accounts": {},
            "last_event_id": "evt_123",
            "last_event_created": 1_700_000_000,
            "ordering": {"account": 1_700_000_000, "capabilities": {}, "persons": {}, "external_accounts": {}},
            "version": version
        });
        serde_json::from_value(json).expect("test state is well formed")
    }

    #[test]
    fn event_records_round_trip() {
        let full = record();
        assert_eq!(event_from_item("evt_123", &event_item(&full).unwrap()).expect("readable"), full);
        let bare = EventRecord { account_id: None, created: None, livemode: None, ..record() };
        let item = event_item(&bare).unwrap();
        assert!(
            !item.contains_key(ACCOUNT_ID) && !item.contains_key(CREATED) && !item.contains_key(LIVEMODE)
        );
        assert_eq!(event_from_item("evt_123", &item).expect("readable"), bare);
    }

    #[test]
    fn event_record_keys_and_ttl() {
        let item = event_item(&record()).unwrap();
        assert_eq!(item.get(PK), Some(&AttributeValue::S("EVT#evt_123".to_owned())));
        assert_eq!(item.get(SK), Some(&AttributeValue::S("EVENT".to_owned())));
        assert_eq!(item.get(EXPIRES_AT), Some(&AttributeValue::N("1702592005".to_owned())));
    }

    #[test]
    fn garbled_event_records_are_corrupt() {
        let mut item = event_item(&record()).unwrap();
        item.insert(OUTCOME.to_owned(), AttributeValue::S("exploded".to_owned()));
        assert!(matches!(event_from_item("evt_123", &item), Err(StoreError::Corrupt(_))));
        let mut item = event_item(&record()).unwrap();
        item.insert(CREATED.to_owned(), AttributeValue::S("yesterday".to_owned()));
        assert!(matches!(event_from_item("evt_123", &item), Err(StoreError::Corrupt(_))));
        let mut item = event_item(&record()).unwrap();
        item.remove(RECEIVED_AT);
        assert!(matches!(event_from_item("evt_123", &item), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn account_items_round_trip() {
        let state = state(3);
        let item = account_item(&state).expect("serializable");
        assert_eq!(item.get(PK), Some(&AttributeValue::S("ACCT#acct_1".to_owned())));
        assert_eq!(item.get(VERSION), Some(&AttributeValue::N("3".to_owned())));
        assert_eq!(item.get(ONBOARDING_STATUS), Some(&AttributeValue::S("active".to_owned())));
        assert_eq!(account_from_item(&item).expect("readable"), state);
    }

    #[test]
    fn disagreeing_versions_are_corrupt() {
        let mut item = account_item(&state(3)).expect("serializable");
        item.insert(VERSION.to_owned(), AttributeValue::N("4".to_owned()));
        assert!(matches!(account_from_item(&item), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn corrupt_messages_do_not_show_values() {
        let mut item = account_item(&state(3)).expect("serializable");
        item.insert(STATE.to_owned(), AttributeValue::S("secret-garbage".to_owned()));
        let Err(StoreError::Corrupt(message)) = account_from_item(&item) else { panic!("expected Corrupt") };
        assert!(!message.contains("secret-garbage"));
    }
}
