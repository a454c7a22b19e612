//! The ledger's routes: an account's months, the platform's fees of a month, and an account's US
//! tax-form thresholds for a year (DESIGN.md, "Ledger, disputes and payout policy").

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::request::Query;
use super::{ApiError, ApiReply, PlatformApi};
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::domain::account::AccountId;
use crate::domain::ledger::{LedgerRow, MAX_LEDGER_MONTHS, Month, TaxThresholds, Totals, per_currency};
use crate::store::AccountStore;

/// 1099-K: the USD gross volume (minor units) a year must exceed.
pub const TAX_1099K_GROSS: &str = "CONNECT_FLOW_TAX_1099K_GROSS";
/// 1099-K: the number of payments a year must exceed.
pub const TAX_1099K_COUNT: &str = "CONNECT_FLOW_TAX_1099K_COUNT";
/// 1099-NEC/MISC: the USD amount (minor units) of transfers from 2026 on that makes them reportable.
pub const TAX_1099NEC_AMOUNT: &str = "CONNECT_FLOW_TAX_1099NEC_AMOUNT";

impl TaxThresholds {
    /// Reads the thresholds through `lookup`: each unset or empty variable keeps today's default,
    /// and anything but a whole number of at least 0 is refused, so that a typo stops the start.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let read = |name: &'static str, default: i64| -> Result<i64, ConfigError> {
            match lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty()) {
                None => Ok(default),
                Some(value) => value
                    .parse::<i64>()
                    .ok()
                    .filter(|value| *value >= 0)
                    .ok_or(ConfigError::Invalid { name, reason: "must be a whole number, 0 or more" }),
            }
        };
        let defaults = Self::default();
        Ok(Self {
            k_gross: read(TAX_1099K_GROSS, defaults.k_gross)?,
            k_payments: read(TAX_1099K_COUNT, defaults.k_payments)?,
            nec_amount: read(TAX_1099NEC_AMOUNT, defaults.nec_amount)?,
        })
    }

    /// [`Self::from_lookup`] on the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// A required `yyyy-mm` query parameter.
fn month_param(query: &Query, field: &'static str) -> Result<Month, ApiError> {
    let value =
        query.get(field).ok_or_else(|| ApiError::invalid(field, format!("{field} is required (yyyy-mm)")))?;
    Month::parse(value).ok_or_else(|| ApiError::invalid(field, format!("{field} must be a month, yyyy-mm")))
}

/// An account's totals in one currency, as the ledger route shows them.
fn ledger_json(totals: &Totals) -> Value {
    json!({
        "payments": totals.payments,
        "gross": totals.gross,
        "fees": totals.net_fees(),
        "refunds": totals.refunds,
        "disputes": totals.disputes,
        "net": totals.net(),
        "in_person": {"payments": totals.in_person_payments, "gross": totals.in_person_gross},
        "platform_absorbed_refunds": totals.platform_absorbed_refunds,
        "transfers": totals.transfers,
    })
}

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    /// Judges `1099-K` and `1099-NEC/MISC` by `thresholds` instead of today's defaults (read with
    /// [`TaxThresholds::from_lookup`]).
    pub fn with_tax_thresholds(mut self, thresholds: TaxThresholds) -> Self {
        self.tax_thresholds = thresholds;
        self
    }

    /// An account's rows, or 404 when it is neither stored nor in the ledger.
    async fn ledger_rows(
        &self,
        id: &str,
        from: Month,
        to: Month,
    ) -> Result<(AccountId, Vec<LedgerRow>), ApiError> {
        let account_id = AccountId::parse(id).ok_or_else(|| ApiError::NotFound("no such account".into()))?;
        let rows = self.store.load_ledger_months(&account_id, from, to).await?;
        if rows.is_empty() && self.store.load_account(&account_id).await?.is_none() {
            return Err(ApiError::NotFound("no such account".into()));
        }
        Ok((account_id, rows))
    }

    /// `GET /accounts/{id}/ledger?from=yyyy-mm&to=yyyy-mm`.
    pub(super) async fn get_ledger(&self, id: &str, query: &str) -> Result<ApiReply, ApiError> {
        let query = Query::parse(query);
        let from = month_param(&query, "from")?;
        let to = month_param(&query, "to")?;
        let span = to.months_since(from);
        if span < 1 {
            return Err(ApiError::invalid("to", "to must not be before from"));
        }
        if span > MAX_LEDGER_MONTHS {
            return Err(ApiError::invalid(
                "to",
                format!("a ledger covers at most {MAX_LEDGER_MONTHS} months"),
            ));
        }
        let (account_id, rows) = self.ledger_rows(id, from, to).await?;
        let currencies: BTreeMap<String, Value> = per_currency(&rows)
            .iter()
            .map(|(currency, totals)| (currency.clone(), ledger_json(totals)))
            .collect();
        let body = json!({"account_id": account_id, "from": from, "to": to, "currencies": currencies});
        Ok(ApiReply::of(200, &body))
    }

    /// `GET /reports/fees?month=yyyy-mm`: the platform's application fees of a month.
    pub(super) async fn fee_report(&self, query: &str) -> Result<ApiReply, ApiError> {
        let month = month_param(&Query::parse(query), "month")?;
        let rows = self.store.load_fee_month(month).await?;
        let mut currencies: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        for row in &rows {
            let (fees, refunded, accounts) = currencies.entry(row.bucket.currency.clone()).or_default();
            *fees = fees.saturating_add(row.totals.fees);
            *refunded = refunded.saturating_add(row.totals.fees_refunded);
            *accounts += i64::from(row.totals.fees > 0);
        }
        let currencies: BTreeMap<String, Value> = currencies
            .into_iter()
            .map(|(currency, (fees, refunded, accounts))| {
                let net = fees.saturating_sub(refunded);
                (currency, json!({"fees": fees, "fees_refunded": refunded, "net": net, "accounts": accounts}))
            })
            .collect();
        Ok(ApiReply::of(200, &json!({"month": month, "currencies": currencies})))
    }

    /// `GET /accounts/{id}/tax?year=yyyy`: the year's gross and payments, and which US tax-form
    /// thresholds they cross. Only USD counts toward the thresholds: nothing is converted.
    pub(super) async fn get_tax(&self, id: &str, query: &str) -> Result<ApiReply, ApiError> {
        let query = Query::parse(query);
        let invalid = || ApiError::invalid("year", "year must be a year, yyyy");
        let year_text =
            query.get("year").ok_or_else(|| ApiError::invalid("year", "year is required (yyyy)"))?;
        if year_text.len() != 4 || !year_text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        let year: u32 = year_text.parse().map_err(|_| invalid())?;
        let (Some(from), Some(to)) = (Month::january(year), Month::december(year)) else {
            return Err(invalid());
        };
        let account_id = AccountId::parse(id).ok_or_else(|| ApiError::NotFound("no such account".into()))?;
        let account = self.store.load_account(&account_id).await?;
        let rows = self.store.load_ledger_months(&account_id, from, to).await?;
        if account.is_none() && rows.is_empty() {
            return Err(ApiError::NotFound("no such account".into()));
        }
        let sums = per_currency(&rows);
        let usd = sums.get("usd").copied().unwrap_or_default();
        let flags = self.tax_thresholds.flags(year, &usd);
        let filer = match account.as_ref().and_then(|account| account.fees_payer.as_deref()) {
            Some("account") => "stripe",
            _ => "platform",
        };
        let gross: BTreeMap<&str, i64> =
            sums.iter().map(|(currency, totals)| (currency.as_str(), totals.gross)).collect();
        let transfers: BTreeMap<&str, i64> = sums
            .iter()
            .filter(|(_, totals)| totals.transfers != 0)
            .map(|(currency, totals)| (currency.as_str(), totals.transfers))
            .collect();
        let body = json!({
            "account_id": account_id,
            "year": year,
            "filer": filer,
            "gross": gross,
            "payments": usd.payments,
            "transfers": transfers,
            "thresholds": flags,
        });
        Ok(ApiReply::of(200, &body))
    }
}

#[cfg(test)]
mod tests {
    use lambda_http::Body;

    use super::*;
    use crate::config::WebhookSettings;
    use crate::platform::PlatformSettings;
    use crate::store::sqlite::SqliteStore;
    use crate::stripe::signature::{WebhookSecret, sign};
    use crate::webhook::WebhookService;

    const SECRET: &str = "whsec_connect_flow_local_only";
    /// Just after the last of the sample month's events (#14–#18 of `events/stripe/README.md`).
    const AFTER_THE_SAMPLES: i64 = 1_732_001_100;

    struct Fixed;

    impl Clock for Fixed {
        fn now_unix(&self) -> i64 {
            AFTER_THE_SAMPLES
        }
    }

    fn sample(dir: &str, name: &str) -> String {
        let path = format!("{}/../events/{dir}/{name}.json", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    /// The Lambda front end of `GET /accounts/{id}/ledger`: the signed envelope reaches the route,
    /// which reads back the sample month as delivered through the webhook.
    #[tokio::test]
    async fn the_ledger_envelope_reads_the_sample_month() {
        let store = SqliteStore::in_memory().expect("an in-memory store");
        let lookup = |name: &str| (name == "STRIPE_WEBHOOK_SECRETS").then(|| SECRET.to_owned());
        let settings = WebhookSettings::from_lookup(lookup).expect("settings");
        let webhook = WebhookService::with_clock(store.clone(), &settings, Fixed);
        for name in [
            "charge.succeeded.destination",
            "application_fee.created",
            "refund.created",
            "application_fee.refunded",
            "charge.succeeded.terminal",
        ] {
            let body = sample("stripe", name);
            let header = sign(&WebhookSecret::new(SECRET), AFTER_THE_SAMPLES, body.as_bytes());
            let reply = webhook.handle(Some(&header), body.as_bytes()).await;
            assert_eq!(reply.status, 200, "{name}: {}", reply.body);
        }
        let api = PlatformApi::with_clock(store, None, PlatformSettings::default(), Fixed);
        let request = lambda_http::request::from_str(&sample("lambda", "apigw-v2.platform.get-ledger"))
            .expect("an API Gateway request");
        let response = crate::platform::lambda::handle(&api, request).await.expect("an answer");
        assert_eq!(response.status().as_u16(), 200);
        let Body::Text(body) = response.body() else { panic!("a text body") };
        let ledger: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!((ledger["from"].as_str(), ledger["to"].as_str()), (Some("2024-11"), Some("2024-11")));
        let usd = &ledger["currencies"]["usd"];
        assert_eq!(
            (usd["payments"].as_i64(), usd["gross"].as_i64(), usd["net"].as_i64()),
            (Some(2), Some(23_500), Some(16_900))
        );
        assert_eq!(usd["platform_absorbed_refunds"], 5_000);
    }
}
