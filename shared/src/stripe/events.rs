//! The list calls the reconciler makes: v1 events (the platform's and each connected account's),
//! API v2 events, and the connected accounts created in a window.

use serde_json::Value;

use super::client::{StripeClient, StripeError};
use super::v2::STRIPE_V2_VERSION;
use crate::calendar::utc_rfc3339;
use crate::domain::account::AccountId;

/// One page of a list: its objects, newest first as Stripe lists them, and where the next starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    /// The page's objects.
    pub data: Vec<Value>,
    /// A v1 list's `starting_after` for the next page, or a v2 list's `next_page_url`; `None` at
    /// the end.
    pub next: Option<String>,
}

/// A v1 list page: `has_more` and the last object's id say whether and where it goes on.
fn v1_page(mut body: Value) -> Result<ListPage, StripeError> {
    let data = match body.get_mut("data").map(Value::take) {
        Some(Value::Array(data)) => data,
        _ => return Err(unreadable_list("a v1 list without a data array")),
    };
    let has_more = body.get("has_more").and_then(Value::as_bool).unwrap_or(false);
    let last = data.last().and_then(|object| object.get("id")).and_then(Value::as_str).map(str::to_owned);
    Ok(ListPage { next: if has_more { last } else { None }, data })
}

/// A v2 list page: `next_page_url` says where it goes on.
fn v2_page(mut body: Value) -> Result<ListPage, StripeError> {
    let data = match body.get_mut("data").map(Value::take) {
        Some(Value::Array(data)) => data,
        _ => return Err(unreadable_list("a v2 list without a data array")),
    };
    let next = body.get("next_page_url").and_then(Value::as_str).map(str::to_owned);
    Ok(ListPage { data, next })
}

fn unreadable_list(what: &str) -> StripeError {
    StripeError::Retryable { status: Some(200), message: format!("Stripe answered {what}") }
}

impl StripeClient {
    /// `GET /v1/events` created at or after `created_gte`, on `account` (`Stripe-Account`) when
    /// given, one page from `starting_after`.
    pub async fn list_events(
        &self,
        account: Option<&AccountId>,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        self.list_created_since("list_events", "/v1/events", account, created_gte, starting_after).await
    }

    /// `GET /v1/accounts` created at or after `created_gte`, one page from `starting_after`.
    pub(crate) async fn list_accounts_created(
        &self,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        self.list_created_since("list_accounts", "/v1/accounts", None, created_gte, starting_after).await
    }

    /// One page of a v1 list filtered by `created[gte]`.
    async fn list_created_since(
        &self,
        operation: &'static str,
        path: &str,
        account: Option<&AccountId>,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        let url = self.list_url(path, &[("created[gte]", created_gte.to_string())], starting_after)?;
        let request =
            self.request(reqwest::Method::GET, url, account).build().map_err(|e| self.build_error(&e))?;
        v1_page(self.send(operation, request).await?)
    }

    /// `GET /v2/core/events` created at or after `created_gte`, or the page `next_page_url` names
    /// (a path under the API base, as Stripe gives it).
    pub async fn list_v2_events(
        &self,
        created_gte: i64,
        next_page: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        let request = match next_page {
            // Stripe gives the next page as a path and query under the API base.
            Some(next) if next.starts_with("/v2/core/events?") => {
                self.get_v2(next, &[], None, STRIPE_V2_VERSION)?
            }
            Some(_) => return Err(unreadable_list("a next_page_url outside /v2/core/events")),
            None => {
                let query = [
                    ("created[gte]".to_owned(), utc_rfc3339(created_gte)),
                    ("limit".to_owned(), "100".to_owned()),
                ];
                self.get_v2("/v2/core/events", &query, None, STRIPE_V2_VERSION)?
            }
        };
        v2_page(self.send("list_v2_events", request).await?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_v1_page_goes_on_after_its_last_object_only_when_it_has_more() {
        let page = v1_page(json!({"data": [{"id": "evt_2"}, {"id": "evt_1"}], "has_more": true})).unwrap();
        assert_eq!((page.data.len(), page.next.as_deref()), (2, Some("evt_1")));
        let end = v1_page(json!({"data": [{"id": "evt_0"}], "has_more": false})).unwrap();
        assert_eq!(end.next, None);
        assert!(v1_page(json!({"error": {}})).is_err());
    }

    #[test]
    fn a_v2_page_goes_on_at_its_next_page_url() {
        let page = v2_page(json!({"data": [], "next_page_url": "/v2/core/events?page=abc"})).unwrap();
        assert_eq!(page.next.as_deref(), Some("/v2/core/events?page=abc"));
        assert_eq!(v2_page(json!({"data": [], "next_page_url": null})).unwrap().next, None);
    }
}
