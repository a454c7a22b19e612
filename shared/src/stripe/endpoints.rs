//! The reads `connect-flow doctor` makes: the webhook endpoints (`GET /v1/webhook_endpoints`,
//! paged by `starting_after`) and the event destinations (`GET /v2/core/event_destinations`,
//! API v2, paged by `next_page_url`; a 404 means the account does not have them).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::client::{MAX_LIST_PAGES, StripeClient, StripeError};
use super::v2::STRIPE_V2_VERSION;

/// The v2 list path; a `next_page_url` elsewhere is refused.
const DESTINATIONS_PATH: &str = "/v2/core/event_destinations";
/// Attempts per page: a 429 or a 5xx is tried again, a refusal is not.
const ATTEMPTS: u32 = 3;
/// The wait before a second attempt, doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured; a read-only check does not wait for minutes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

impl StripeClient {
    /// Every webhook endpoint of the account, as Stripe lists them.
    pub(crate) async fn list_webhook_endpoints(&self) -> Result<Vec<Value>, StripeError> {
        let mut endpoints = Vec::new();
        let mut starting_after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let url = self.list_url("/v1/webhook_endpoints", &[], starting_after.as_deref())?;
            let page = self
                .with_retries(|| {
                    let request = self
                        .request(Method::GET, url.clone(), None)
                        .build()
                        .map_err(|e| self.build_error(&e))?;
                    Ok(self.send("list_webhook_endpoints", request))
                })
                .await?;
            let data = page_data(&page)?;
            endpoints.extend(data.iter().cloned());
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                return Ok(endpoints);
            }
            let last = data.last().and_then(|object| object.get("id")).and_then(Value::as_str);
            starting_after =
                Some(last.ok_or_else(|| malformed("with more to come but no cursor"))?.to_owned());
        }
        Err(StripeError::Retryable {
            status: None,
            message: format!("{MAX_LIST_PAGES} pages of webhook endpoints did not reach the end"),
        })
    }

    /// Every event destination, or `None` when the account has no event destinations API (404).
    pub(crate) async fn list_event_destinations(&self) -> Result<Option<Vec<Value>>, StripeError> {
        let mut destinations = Vec::new();
        let mut target = DESTINATIONS_PATH.to_owned();
        for _ in 0..MAX_LIST_PAGES {
            let answer = self
                .with_retries(|| {
                    let request = self.get_v2(&target, &[], None, STRIPE_V2_VERSION)?;
                    Ok(self.send("list_event_destinations", request))
                })
                .await;
            let page = match answer {
                Ok(page) => page,
                Err(StripeError::Refused { status: 404, .. }) if destinations.is_empty() => return Ok(None),
                Err(error) => return Err(error),
            };
            destinations.extend(page_data(&page)?.iter().cloned());
            match page.get("next_page_url") {
                None | Some(Value::Null) => return Ok(Some(destinations)),
                Some(Value::String(next))
                    if next.strip_prefix(DESTINATIONS_PATH).is_some_and(|rest| rest.starts_with('?')) =>
                {
                    target.clone_from(next);
                }
                Some(_) => return Err(malformed("whose next_page_url is not a page of event destinations")),
            }
        }
        Err(StripeError::Retryable {
            status: None,
            message: format!("{MAX_LIST_PAGES} pages of event destinations did not reach the end"),
        })
    }

    /// Runs the call `attempt` makes up to [`ATTEMPTS`] times while it fails retryably, waiting
    /// Stripe's `Retry-After` (capped) or a doubling backoff in between.
    async fn with_retries<F, Fut>(&self, attempt: F) -> Result<Value, StripeError>
    where
        F: Fn() -> Result<Fut, StripeError>,
        Fut: Future<Output = Result<Value, StripeError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 1;
        loop {
            match attempt()?.await {
                Err(error) if error.is_retryable() && tries < ATTEMPTS => {
                    let wait = match &error {
                        StripeError::RateLimited { retry_after: Some(after), .. } => {
                            (*after).min(MAX_RETRY_AFTER).max(backoff)
                        }
                        _ => backoff,
                    };
                    tokio::time::sleep(wait).await;
                    backoff = backoff.saturating_mul(2);
                    tries += 1;
                }
                result => return result,
            }
        }
    }
}

fn malformed(what: &str) -> StripeError {
    StripeError::Retryable { status: Some(200), message: format!("a list page {what}") }
}

fn page_data(page: &Value) -> Result<&Vec<Value>, StripeError> {
    page.get("data").and_then(Value::as_array).ok_or_else(|| malformed("without data"))
}
