//! The reconciler's state on DynamoDB: one item, written with one conditional `PutItem`.

use aws_sdk_dynamodb::types::AttributeValue;

use super::{DynamoStore, Item, PK, SK, VERSION, put_outcome, string_attr, unavailable};
use crate::domain::reconcile::ReconcilerState;
use crate::store::{CommitOutcome, StoreError};

const RECONCILER_PK: &str = "RECONCILER";
const RECONCILER_SK: &str = "STATE";
const STATE: &str = "state";

fn reconciler_key() -> Item {
    Item::from([
        (PK.to_owned(), AttributeValue::S(RECONCILER_PK.to_owned())),
        (SK.to_owned(), AttributeValue::S(RECONCILER_SK.to_owned())),
    ])
}

impl DynamoStore {
    /// One strongly consistent `GetItem`.
    pub(super) async fn load_reconciler_now(&self) -> Result<Option<ReconcilerState>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(reconciler_key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| unavailable("GetItem", &err))?;
        let Some(item) = output.item() else { return Ok(None) };
        let state = serde_json::from_str(string_attr(item, STATE)?).map_err(|err| {
            StoreError::Corrupt(format!("the reconciler's state is unreadable: {}", super::json_error(&err)))
        })?;
        Ok(Some(state))
    }

    /// One `PutItem`, conditional on the stored version unless an unreadable item is replaced.
    pub(super) async fn save_reconciler_now(
        &self,
        state: &ReconcilerState,
        replace_unreadable: bool,
    ) -> Result<CommitOutcome, StoreError> {
        let json = serde_json::to_string(state).map_err(|err| {
            StoreError::Unavailable(format!("could not serialize the reconciler's state: {err}"))
        })?;
        let mut item = reconciler_key();
        item.insert(VERSION.to_owned(), AttributeValue::N(state.version.to_string()));
        item.insert(STATE.to_owned(), AttributeValue::S(json));
        if replace_unreadable {
            let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
            return put_outcome(put.send().await, CommitOutcome::Conflict);
        }
        self.put_versioned(item, state.version).await
    }

    /// Overwrites the stored state with bytes that are not a state, for tests of the reconciler's
    /// recovery from a corrupt item.
    #[doc(hidden)]
    pub async fn corrupt_reconciler_for_test(&self, bytes: &str) -> Result<(), StoreError> {
        let mut item = reconciler_key();
        item.insert(VERSION.to_owned(), AttributeValue::N("1".to_owned()));
        item.insert(STATE.to_owned(), AttributeValue::S(bytes.to_owned()));
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
        put.send().await.map_err(|err| unavailable("PutItem", &err))?;
        Ok(())
    }
}
