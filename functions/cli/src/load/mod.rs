//! Load runs: a seeded mix of realistic Stripe events, sent concurrently to the webhook, then an
//! exactly-once check of what the store holds. `connect-flow bench` runs it against the local
//! server; the integration tests run it against DynamoDB and SQS on the emulator.

pub mod check;
pub mod mix;
pub mod run;

use std::collections::BTreeMap;

use anyhow::Context;
use shared::domain::account::AccountState;
use shared::domain::step::Step;

use check::{Expected, Observed};

/// Reads what the check needs through the server's read API: `GET /accounts/{id}` and
/// `GET /accounts/{id}/steps`. Event records are not served, so `records` stays `None`.
pub async fn observe_http(
    client: &reqwest::Client,
    base: &str,
    expected: &Expected,
) -> anyhow::Result<Observed> {
    let base = base.trim_end_matches('/');
    let mut observed = Observed::default();
    for id in expected.account_ids() {
        let account: Option<AccountState> = get_json(client, &format!("{base}/accounts/{id}")).await?;
        let steps: Option<Vec<Step>> = get_json(client, &format!("{base}/accounts/{id}/steps")).await?;
        observed.accounts.insert(id.clone(), account);
        observed.steps.insert(id, steps.unwrap_or_default());
    }
    Ok(observed)
}

/// A GET answered 200 with JSON, or 404 as `None`; anything else is an error.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Option<T>> {
    let response = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.with_context(|| format!("reading GET {url}"))?;
    match status {
        200 => Ok(Some(serde_json::from_str(&body).with_context(|| format!("GET {url}: unexpected JSON"))?)),
        404 => Ok(None),
        other => anyhow::bail!("GET {url} answered {other}: {body}"),
    }
}

/// Counts how many times each step id occurs, for [`check::check_queued`].
pub fn count_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.to_owned()).or_default() += 1;
    }
    counts
}
