//! Accounts v2 for `POST /accounts` under `CONNECT_FLOW_ACCOUNTS_API=v2`: create a connected account
//! with `POST /v2/core/accounts`, and find the account an ambiguous create made.
//!
//! What Stripe's documentation says, and what follows from it here:
//!
//! - **Bodies are JSON.** "Request and responses use JSON encoding (`application/json`)" in the
//!   `/v2` namespace, where `/v1` takes form encoding; every `/v2` request carries a
//!   `Stripe-Version` ([`STRIPE_V2_VERSION`]). <https://docs.stripe.com/api-v2-overview>
//! - **The create body** (<https://docs.stripe.com/api/v2/core/accounts/create?api-version=2026-01-28.clover>,
//!   and the parameters of stripe-ruby's generated `V2::Core::AccountCreateParams`): the platform's
//!   `country` is `identity.country`, `email` is `contact_email` ("required when configuring the
//!   account as a merchant or recipient"), `dashboard` is `dashboard` (`express`, `full`, `none`),
//!   metadata is `"metadata": {…}`, and `include` is a body field that makes the answer carry the
//!   include-dependent properties (`configuration.*`, `requirements`, …), which are `null` otherwise.
//!   Who pays fees and who bears losses are `defaults.responsibilities.fees_collector`
//!   (`application`, `application_custom`, `application_express`, `stripe`) and
//!   `.losses_collector` (`application`, `stripe`): v1's `controller.fees.payer=account` is
//!   `fees_collector=stripe` (Stripe collects its fees from the account), `application` is
//!   `application`; losses map one to one. Who collects requirements is
//!   `defaults.responsibilities.requirements_collector`, which the account object reports but the
//!   generated create parameters do not have (only `fees_collector` and `losses_collector`; the
//!   2025-11-17 preview's changelog describes setting it,
//!   <https://docs.stripe.com/changelog/clover/2025-11-17/accounts-v2-requirements-collection>), so
//!   the platform API refuses `requirement_collection` under v2 rather than drop it silently.
//! - **Capabilities** are requested per configuration, `configuration.{merchant,recipient}
//!   .capabilities.<name>.requested: true`. The merchant configuration's payment capabilities carry
//!   v1's names (`card_payments`, `sepa_debit_payments`, …; v1's `us_bank_account_ach_payments` is
//!   `ach_debit_payments`), and v1's `transfers` is the recipient's
//!   `stripe_balance.stripe_transfers` ("allows the account to receive /v1/transfers into their
//!   Stripe Balance"). [`v2_capability`] maps them; anything else has no v2 equivalent here.
//! - **Idempotency differs from v1.** Under API v2, for two requests with the same key "within the
//!   last 30 days of each other": "If the first request succeeded, the API skips making new changes
//!   and returns an updated response. If the first request failed (or partially failed), the API
//!   re-executes the failed requests and returns the new response." (v1 replays the first answer,
//!   a 500 included, for 24 hours.) <https://docs.stripe.com/api-v2-overview#idempotency>,
//!   <https://docs.stripe.com/api/idempotent_requests>. So after a 5xx or a timeout the same key is
//!   the safe retry, not a fresh one: [`V2_KEY_REUSE_LIMIT_SECS`].
//! - **Lists** (`GET /v2/core/accounts`, <https://docs.stripe.com/api/v2/core/accounts/list>) take
//!   only `applied_configurations`, `closed`, `limit` and a `page` token: no `created` range and no
//!   metadata search. They page by `next_page_url` (`null` at the end), filters cannot change after
//!   the first page, the reference's example lists newest first, and "lists are eventually
//!   consistent by default" (<https://docs.stripe.com/api-v2-overview>): an account created a moment
//!   ago may be missing, so a lookup that does not find it proves nothing while the key can still be
//!   sent again. No maximum `limit` is documented, so the lookup sends none and takes Stripe's page
//!   size. The list takes no `include`, and the reference's example items carry none of the
//!   include-dependent properties: a found account is retrieved again with
//!   [`V2_ACCOUNT_INCLUDES`] before it is stored.

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Map, Value, json};

use super::client::{MAX_LIST_PAGES, StripeClient, StripeError};
use super::onboarding::REFERENCE_METADATA;
use super::v2::{STRIPE_V2_VERSION, V2_ACCOUNT_INCLUDES};
use crate::calendar::parse_rfc3339;
use crate::domain::account::AccountId;

/// How long a v2 idempotency key may be sent again: Stripe treats requests under one key as the
/// same request for 30 days; a day's margin covers clock skew and a slow call.
pub(crate) const V2_KEY_REUSE_LIMIT_SECS: i64 = 29 * 24 * 60 * 60;

/// The list path a lookup pages through; a `next_page_url` elsewhere is refused.
const LIST_PATH: &str = "/v2/core/accounts";

/// The merchant configuration's payment capabilities that keep their v1 names (stripe-ruby's
/// `V2::Core::AccountCreateParams::Configuration::Merchant::Capabilities`).
const MERCHANT_CAPABILITIES: &[&str] = &[
    "acss_debit_payments",
    "affirm_payments",
    "afterpay_clearpay_payments",
    "alma_payments",
    "amazon_pay_payments",
    "au_becs_debit_payments",
    "bacs_debit_payments",
    "bancontact_payments",
    "blik_payments",
    "boleto_payments",
    "card_payments",
    "cartes_bancaires_payments",
    "cashapp_payments",
    "eps_payments",
    "fpx_payments",
    "gb_bank_transfer_payments",
    "grabpay_payments",
    "ideal_payments",
    "jcb_payments",
    "jp_bank_transfer_payments",
    "kakao_pay_payments",
    "klarna_payments",
    "konbini_payments",
    "kr_card_payments",
    "link_payments",
    "mobilepay_payments",
    "multibanco_payments",
    "mx_bank_transfer_payments",
    "naver_pay_payments",
    "oxxo_payments",
    "p24_payments",
    "pay_by_bank_payments",
    "payco_payments",
    "paynow_payments",
    "promptpay_payments",
    "revolut_pay_payments",
    "samsung_pay_payments",
    "sepa_bank_transfer_payments",
    "sepa_debit_payments",
    "swish_payments",
    "twint_payments",
    "us_bank_transfer_payments",
    "zip_payments",
];

/// The v2 capability, as its dotted path under `configuration`, that a v1 capability name asks
/// for: `card_payments` → `merchant.card_payments`, `transfers` →
/// `recipient.stripe_balance.stripe_transfers`. `None` for a name with no v2 equivalent.
pub(crate) fn v2_capability(v1_name: &str) -> Option<String> {
    match v1_name {
        "transfers" => Some(crate::domain::account::V2_TRANSFERS_CAPABILITY.to_owned()),
        "us_bank_account_ach_payments" => Some("merchant.ach_debit_payments".to_owned()),
        name if MERCHANT_CAPABILITIES.contains(&name) => Some(format!("merchant.{name}")),
        _ => None,
    }
}

/// The platform's `fees_payer` as v2's `fees_collector`: an account that pays its own fees has
/// Stripe collect them.
pub(crate) fn v2_fees_collector(fees_payer: &str) -> Option<&'static str> {
    match fees_payer {
        "account" => Some("stripe"),
        "application" => Some("application"),
        _ => None,
    }
}

/// The parameters of `POST /v2/core/accounts`.
#[derive(Debug, Clone, Copy)]
pub struct CreateV2Account<'a> {
    /// ISO 3166-1 alpha-2 country of the account holder: `identity.country`.
    pub country: &'a str,
    /// `contact_email`.
    pub email: Option<&'a str>,
    /// `dashboard`: `express`, `full` or `none`.
    pub dashboard: &'a str,
    /// `defaults.responsibilities.fees_collector`.
    pub fees_collector: Option<&'a str>,
    /// `defaults.responsibilities.losses_collector`.
    pub losses_collector: Option<&'a str>,
    /// Dotted capability paths under `configuration`, as [`v2_capability`] gives them.
    pub capabilities: &'a [String],
    /// `metadata`; put the reference under [`REFERENCE_METADATA`].
    pub metadata: &'a [(&'a str, &'a str)],
}

/// What a lookup by reference settled.
#[derive(Debug, Clone, PartialEq)]
pub enum V2AccountLookup {
    /// The account, retrieved with every include.
    Found(Value),
    /// The list ended, or reached accounts older than the bound, without it. The list is
    /// eventually consistent: a create of the last moments may still be missing.
    Absent,
    /// Every allowed page was read and the list went on.
    Unsettled,
}

impl StripeClient {
    /// `POST /v2/core/accounts` with a JSON body and [`V2_ACCOUNT_INCLUDES`], under API v2's
    /// `Stripe-Version`: the created account as Stripe answered it.
    pub async fn create_v2_account(
        &self,
        account: &CreateV2Account<'_>,
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        let body = serde_json::to_vec(&v2_account_body(account)?)
            .map_err(|e| StripeError::Config(format!("the account body could not be encoded: {e}")))?;
        // Built as the form POST every create is, so that the key is checked in one place, then
        // given v2's body, content type and version.
        let mut request = self.post(LIST_PATH, &[], None, idempotency_key)?;
        request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request.headers_mut().insert("stripe-version", HeaderValue::from_static(STRIPE_V2_VERSION));
        *request.body_mut() = Some(body.into());
        let created = self.send("create_v2_account", request).await?;
        if created.get("id").and_then(Value::as_str).is_none() {
            // Stripe did answer 2xx, so the same key returns the account again.
            return Err(StripeError::Retryable {
                status: Some(200),
                message: "a 2xx response without an id".into(),
            });
        }
        Ok(created)
    }

    /// The account whose `metadata[connect_flow_reference]` is `reference`, looked for newest
    /// first among accounts created at or after `created_gte` (unix seconds), at most
    /// [`MAX_LIST_PAGES`] pages, and retrieved again with every include when found.
    pub async fn find_v2_account_by_reference(
        &self,
        reference: &str,
        created_gte: i64,
    ) -> Result<V2AccountLookup, StripeError> {
        if reference.is_empty() {
            return Err(StripeError::Config("a lookup needs a reference".to_owned()));
        }
        let mut target = LIST_PATH.to_owned();
        for _ in 0..MAX_LIST_PAGES {
            let request = self.get_v2(&target, &[], None, STRIPE_V2_VERSION)?;
            match search_v2_page(&self.send("find_v2_account", request).await?, reference, created_gte)? {
                V2PageSearch::Found(id) => {
                    let account = AccountId::parse(&id).ok_or_else(|| StripeError::Retryable {
                        status: Some(200),
                        message: format!("a list page named an account id that is not one: {id:?}"),
                    })?;
                    return Ok(V2AccountLookup::Found(self.retrieve_v2_account(&account, None).await?));
                }
                V2PageSearch::Absent => return Ok(V2AccountLookup::Absent),
                V2PageSearch::Next(next) => target = next,
            }
        }
        Ok(V2AccountLookup::Unsettled)
    }
}

/// The JSON body of an account create.
fn v2_account_body(account: &CreateV2Account<'_>) -> Result<Value, StripeError> {
    let mut body = Map::new();
    body.insert("identity".into(), json!({ "country": account.country.to_ascii_lowercase() }));
    if let Some(email) = account.email {
        body.insert("contact_email".into(), json!(email));
    }
    body.insert("dashboard".into(), json!(account.dashboard));
    let mut responsibilities = Map::new();
    if let Some(collector) = account.fees_collector {
        responsibilities.insert("fees_collector".into(), json!(collector));
    }
    if let Some(collector) = account.losses_collector {
        responsibilities.insert("losses_collector".into(), json!(collector));
    }
    if !responsibilities.is_empty() {
        body.insert("defaults".into(), json!({ "responsibilities": responsibilities }));
    }
    let mut configuration = Value::Object(Map::new());
    for path in account.capabilities {
        let segments: Vec<&str> = path.split('.').collect();
        let well_formed = segments.len() >= 2
            && matches!(segments[0], "merchant" | "recipient")
            && segments.iter().all(|segment| {
                !segment.is_empty()
                    && segment.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if !well_formed {
            return Err(StripeError::Config(format!("{path:?} is not a v2 capability path")));
        }
        let mut node = &mut configuration[segments[0]]["capabilities"];
        for segment in &segments[1..] {
            node = &mut node[*segment];
        }
        *node = json!({ "requested": true });
    }
    if configuration.as_object().is_some_and(|configs| !configs.is_empty()) {
        body.insert("configuration".into(), configuration);
    }
    let mut metadata = Map::new();
    for (key, value) in account.metadata {
        if key.is_empty() {
            return Err(StripeError::Config("a metadata key is empty".to_owned()));
        }
        metadata.insert((*key).to_owned(), json!(value));
    }
    body.insert("metadata".into(), Value::Object(metadata));
    body.insert("include".into(), json!(V2_ACCOUNT_INCLUDES));
    Ok(Value::Object(body))
}

/// What one page of `GET /v2/core/accounts` says about the account a lookup wants.
#[derive(Debug, PartialEq)]
enum V2PageSearch {
    /// Its id.
    Found(String),
    /// Not on this page, and no page that follows can have it.
    Absent,
    /// Not on this page; the next is at this path and query.
    Next(String),
}

fn search_v2_page(page: &Value, reference: &str, created_gte: i64) -> Result<V2PageSearch, StripeError> {
    let malformed =
        |what: &str| StripeError::Retryable { status: Some(200), message: format!("a list page {what}") };
    let data = page.get("data").and_then(Value::as_array).ok_or_else(|| malformed("without data"))?;
    let found = data.iter().find(|account| {
        account.get("metadata").and_then(|m| m.get(REFERENCE_METADATA)).and_then(Value::as_str)
            == Some(reference)
    });
    if let Some(account) = found {
        let id = account
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("with an account without an id"))?;
        return Ok(V2PageSearch::Found(id.to_owned()));
    }
    // Newest first: a page whose every account is older than the bound ends the search. An account
    // whose `created` cannot be read keeps it going, since nothing is known of it.
    let all_older = !data.is_empty()
        && data.iter().all(|account| {
            account
                .get("created")
                .and_then(Value::as_str)
                .and_then(parse_rfc3339)
                .is_some_and(|created| created < created_gte)
        });
    match page.get("next_page_url") {
        _ if all_older => Ok(V2PageSearch::Absent),
        None | Some(Value::Null) => Ok(V2PageSearch::Absent),
        Some(Value::String(next))
            if next.strip_prefix(LIST_PATH).is_some_and(|rest| rest.starts_with('?')) =>
        {
            Ok(V2PageSearch::Next(next.clone()))
        }
        Some(_) => Err(malformed("whose next_page_url is not a page of the accounts list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_capability_names_map_to_v2_paths_or_to_nothing() {
        assert_eq!(v2_capability("card_payments").as_deref(), Some("merchant.card_payments"));
        assert_eq!(v2_capability("transfers").as_deref(), Some("recipient.stripe_balance.stripe_transfers"));
        assert_eq!(
            v2_capability("us_bank_account_ach_payments").as_deref(),
            Some("merchant.ach_debit_payments")
        );
        assert_eq!(v2_capability("klarna_payments").as_deref(), Some("merchant.klarna_payments"));
        for unmapped in ["card_issuing", "treasury", "tax_reporting_us_1099_k", "legacy_payments", ""] {
            assert_eq!(v2_capability(unmapped), None, "{unmapped}");
        }
        assert_eq!(v2_fees_collector("account"), Some("stripe"));
        assert_eq!(v2_fees_collector("application"), Some("application"));
        assert_eq!(v2_fees_collector("platform"), None);
    }

    #[test]
    fn the_create_body_is_json_with_configurations_responsibilities_metadata_and_includes() {
        let capabilities = vec!["merchant.card_payments".to_owned(), V2_TRANSFERS_PATH.to_owned()];
        let account = CreateV2Account {
            country: "US",
            email: Some("seller@example.com"),
            dashboard: "express",
            fees_collector: Some("application"),
            losses_collector: None,
            capabilities: &capabilities,
            metadata: &[(REFERENCE_METADATA, "seller-1")],
        };
        let body = v2_account_body(&account).unwrap();
        assert_eq!(
            body,
            json!({
                "identity": {"country": "us"},
                "contact_email": "seller@example.com",
                "dashboard": "express",
                "defaults": {"responsibilities": {"fees_collector": "application"}},
                "configuration": {
                    "merchant": {"capabilities": {"card_payments": {"requested": true}}},
                    "recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": {"requested": true}}}},
                },
                "metadata": {"connect_flow_reference": "seller-1"},
                "include": V2_ACCOUNT_INCLUDES,
            })
        );
        let bare = CreateV2Account { email: None, fees_collector: None, capabilities: &[], ..account };
        let body = v2_account_body(&bare).unwrap();
        assert!(
            body.get("defaults").is_none()
                && body.get("configuration").is_none()
                && body.get("contact_email").is_none()
        );
        for bad in ["card_payments", "customer.x", "merchant.", "merchant.Card", "merchant.a/b"] {
            let capabilities = vec![bad.to_owned()];
            let account = CreateV2Account { capabilities: &capabilities, ..account };
            assert!(matches!(v2_account_body(&account), Err(StripeError::Config(_))), "{bad}");
        }
    }

    const V2_TRANSFERS_PATH: &str = "recipient.stripe_balance.stripe_transfers";

    #[test]
    fn a_v2_accounts_page_yields_the_account_the_next_page_or_the_end() {
        let account = |id: &str, reference: &str, created: &str| {
            json!({"id": id, "object": "v2.core.account", "created": created,
                   "metadata": {REFERENCE_METADATA: reference}})
        };
        let page = |data: Vec<Value>, next: Value| json!({"data": data, "next_page_url": next, "previous_page_url": null});
        let next = json!("/v2/core/accounts?page=page_2");
        let new = "2025-06-15T15:06:40.000Z"; // 1_750_000_000
        let old = "2025-06-15T15:06:39.000Z";
        let bound = 1_750_000_000;
        let found = search_v2_page(
            &page(vec![account("acct_2", "b", new), account("acct_1", "a", old)], next.clone()),
            "a",
            bound,
        );
        assert_eq!(found.unwrap(), V2PageSearch::Found("acct_1".into()), "found even below the bound");
        assert_eq!(
            search_v2_page(&page(vec![account("acct_2", "b", new)], next.clone()), "a", bound).unwrap(),
            V2PageSearch::Next("/v2/core/accounts?page=page_2".into())
        );
        assert_eq!(
            search_v2_page(&page(vec![account("acct_2", "b", new)], Value::Null), "a", bound).unwrap(),
            V2PageSearch::Absent
        );
        assert_eq!(
            search_v2_page(&page(vec![account("acct_0", "b", old)], next.clone()), "a", bound).unwrap(),
            V2PageSearch::Absent,
            "a page wholly older than the bound ends it"
        );
        assert_eq!(
            search_v2_page(&page(vec![json!({"id": "acct_3", "metadata": {}})], next.clone()), "a", bound)
                .unwrap(),
            V2PageSearch::Next("/v2/core/accounts?page=page_2".into()),
            "an unreadable created proves nothing"
        );
        for malformed in [
            json!({}),
            page(vec![], json!("https://elsewhere.example/v2/core/accounts?page=x")),
            page(vec![], json!("/v2/core/events?page=x")),
            page(vec![json!({"metadata": {REFERENCE_METADATA: "a"}})], Value::Null),
        ] {
            assert!(search_v2_page(&malformed, "a", bound).unwrap_err().is_retryable(), "{malformed}");
        }
    }
}
