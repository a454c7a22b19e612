//! A thin client for the only Stripe API calls the fund-flow workers make: create a transfer, a
//! transfer reversal or a payout, retrieve an account, and find the object an earlier call made.
//!
//! Every POST carries an `Idempotency-Key`, so that a retry after any failure either replays what
//! Stripe answered the first time or creates the object for the first time, never a second one.
//! Stripe replays a saved 500 too, and forgets a key after 24 hours, so a retry alone cannot always
//! tell whether the object exists: the `find_*` lookups settle that by listing objects and matching
//! the step id the create call put in their metadata.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use reqwest::{Method, Url};
use serde_json::Value;

use crate::domain::account::AccountId;
use crate::domain::funds::STEP_METADATA;
use crate::metrics::Metrics;

/// Stripe's API host.
pub(crate) const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The API version every request pins, so that response shapes do not change under us.
pub const STRIPE_VERSION: &str = "2024-06-20";
/// How long one request may take, connection included, before it counts as a retryable failure.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The variable that holds the Stripe secret key.
pub const API_KEY_VAR: &str = "STRIPE_API_KEY";
/// The variable that overrides the API base URL (tests point it at a stand-in server).
pub const API_BASE_VAR: &str = "STRIPE_API_BASE";
/// Stripe's limit on the length of an idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// How many objects a lookup asks for per list page: Stripe's maximum.
const LIST_PAGE_LIMIT: &str = "100";
/// How many list pages a lookup reads before it gives up: a thousand objects in one transfer group,
/// on one transfer or in one payout window is far beyond any real flow.
pub(super) const MAX_LIST_PAGES: usize = 10;
/// The phrase of Stripe's refusal when a platform key has no access to one connected account.
const NO_ACCOUNT_ACCESS_PHRASE: &str = "does not have access to account";

/// A Stripe secret key. Its `Debug` is redacted; nothing in this module logs or displays it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a secret key (`sk_live_…`, `sk_test_…` or a restricted `rk_…`).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// `Some(true)` for a live key (`sk_live_`, `rk_live_`), `Some(false)` for a test key
    /// (`sk_test_`, `rk_test_`), `None` for anything else.
    pub fn livemode(&self) -> Option<bool> {
        let key = self.0.trim();
        if ["sk_live_", "rk_live_"].iter().any(|prefix| key.starts_with(prefix)) {
            Some(true)
        } else if ["sk_test_", "rk_test_"].iter().any(|prefix| key.starts_with(prefix)) {
            Some(false)
        } else {
            None
        }
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What a [`StripeClient`] needs: the key, where Stripe is, the pinned version, and the timeout.
#[derive(Debug, Clone)]
pub struct StripeClientConfig {
    /// The secret key, sent only as a bearer token.
    pub api_key: ApiKey,
    /// `https://api.stripe.com`, or a loopback `http://` URL in tests.
    pub api_base: String,
    /// The `Stripe-Version` header.
    pub stripe_version: &'static str,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl StripeClientConfig {
    /// The defaults: Stripe's host, the pinned version, a 30 s timeout.
    pub fn new(api_key: ApiKey) -> Self {
        Self {
            api_key,
            api_base: DEFAULT_API_BASE.to_owned(),
            stripe_version: STRIPE_VERSION,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Reads the key and an optional base URL through `lookup`; errors name the variable only.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, StripeError> {
        let key = lookup(API_KEY_VAR)
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| StripeError::Config(format!("{API_KEY_VAR} is not set")))?;
        let mut config = Self::new(ApiKey::new(key));
        if let Some(base) = lookup(API_BASE_VAR).map(|base| base.trim().to_owned()).filter(|b| !b.is_empty())
        {
            config.api_base = base;
        }
        Ok(config)
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, StripeError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// A Stripe object, created or found: its id, and the whole object for anything else a caller
/// needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeObject {
    /// `tr_…`, `trr_…` or `po_…`.
    pub id: String,
    /// The response body as Stripe sent it.
    pub raw: Value,
}

/// The optional parameters of `POST /v1/payouts`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PayoutParams<'a> {
    /// `method`: `standard` or `instant`; unset is Stripe's default, standard.
    pub method: Option<&'a str>,
    /// `source_type`: the balance paid out from (`card`, `bank_account`, `fpx`); unset is `card`.
    pub source_type: Option<&'a str>,
}

/// The parameters of `POST /v1/transfers`. Amounts are minor units of `currency`.
#[derive(Debug, Clone, Copy)]
pub struct CreateTransfer<'a> {
    /// Minor units, greater than zero.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: &'a str,
    /// The connected account that receives the funds.
    pub destination: &'a AccountId,
    /// The charge that funds the transfer (`ch_…`).
    pub source_transaction: Option<&'a str>,
    /// The payment's transfer group.
    pub transfer_group: Option<&'a str>,
    /// Shown on the transfer in the Dashboard.
    pub description: Option<&'a str>,
    /// Sent as `metadata[key]=value`.
    pub metadata: &'a [(&'a str, &'a str)],
}

/// A failed call, classified by what the worker should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// 429, 5xx, 409 (the key is in use by a request still running), timeouts and connection
    /// errors. Retry later with the same idempotency key: it replays whatever Stripe did.
    #[error("Stripe call failed, retryable ({}): {message}", status_text(*status))]
    Retryable {
        /// The HTTP status, or `None` when no response arrived.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
    /// 429: Stripe's rate limit. Nothing ran; retry after `retry_after` (its `Retry-After`, when
    /// it sent one), with backoff.
    #[error("Stripe rate-limited the call (HTTP 429): {message}")]
    RateLimited {
        /// Stripe's `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// What went wrong.
        message: String,
    },
    /// Any other 4xx: Stripe definitively refused, and replays this refusal under the same key.
    #[error("Stripe refused ({status}, code {}): {message}", code.as_deref().unwrap_or("none"))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Stripe's `error.code`, e.g. `balance_insufficient`.
        code: Option<String>,
        /// Stripe's `error.decline_code`, when there is one.
        decline_code: Option<String>,
        /// Stripe's `error.message`.
        message: String,
    },
    /// The key was used before with other parameters: a bug in key derivation, never retried blindly.
    #[error("Stripe idempotency key reused with other parameters: {message}")]
    IdempotencyMismatch {
        /// Stripe's `error.message`.
        message: String,
    },
    /// The client or a call is misconfigured; nothing was sent.
    #[error("Stripe client configuration: {0}")]
    Config(String),
}

impl StripeError {
    /// Whether retrying with the same idempotency key may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. } | Self::RateLimited { .. })
    }

    /// Stripe's `error.code` of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Refused { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether Stripe refused because the platform has no access to one connected account (its
    /// owner revoked the application, it was disconnected, or it never was this platform's): a 403
    /// with code `account_invalid` or Stripe's "does not have access to account" message.
    pub fn refused_account_access(&self) -> bool {
        match self {
            Self::Refused { status: 403, code, message, .. } => {
                code.as_deref() == Some("account_invalid") || message.contains(NO_ACCOUNT_ACCESS_PHRASE)
            }
            _ => false,
        }
    }

    /// Whether Stripe refused the platform's key itself: a 401 (an invalid, expired or revoked
    /// key), or a 403 that is not about one connected account (a restricted key lacking a
    /// permission, a request from an IP address the key does not allow).
    pub fn refused_platform_key(&self) -> bool {
        match self {
            Self::Refused { status: 401, .. } => true,
            Self::Refused { status: 403, .. } => !self.refused_account_access(),
            _ => false,
        }
    }

    /// The HTTP status, when a response arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Retryable { status, .. } => *status,
            Self::RateLimited { .. } => Some(429),
            Self::Refused { status, .. } => Some(*status),
            Self::IdempotencyMismatch { .. } => Some(400),
            Self::Config(_) => None,
        }
    }

    /// Replaces `secret` wherever a message repeats it: Stripe masks keys in its messages, but a
    /// proxy or a stand-in server might not.
    fn scrubbed(self, secret: &str) -> Self {
        let scrub = |message: String| {
            if secret.is_empty() || !message.contains(secret) {
                message
            } else {
                message.replace(secret, "<redacted>")
            }
        };
        match self {
            Self::Retryable { status, message } => Self::Retryable { status, message: scrub(message) },
            Self::RateLimited { retry_after, message } => {
                Self::RateLimited { retry_after, message: scrub(message) }
            }
            Self::Refused { status, code, decline_code, message } => {
                Self::Refused { status, code, decline_code, message: scrub(message) }
            }
            Self::IdempotencyMismatch { message } => Self::IdempotencyMismatch { message: scrub(message) },
            Self::Config(message) => Self::Config(scrub(message)),
        }
    }
}

fn status_text(status: Option<u16>) -> String {
    status.map_or_else(|| "no response".to_owned(), |status| format!("HTTP {status}"))
}

/// Classifies a non-2xx response from its status, its `Retry-After` and Stripe's
/// `{"error": {...}}` body.
fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> StripeError {
    let error =
        serde_json::from_slice::<Value>(body).ok().and_then(|mut v| v.get_mut("error").map(Value::take));
    let field =
        |name: &str| error.as_ref().and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
    let message = field("message").unwrap_or_else(|| format!("HTTP {status} without a Stripe error body"));
    let code = field("code");
    match status {
        429 => StripeError::RateLimited { retry_after, message },
        // Stripe answers 409 while another request with the same key is still executing.
        409 | 500..=599 => StripeError::Retryable { status: Some(status), message },
        400 if field("type").as_deref() == Some("idempotency_error") => {
            StripeError::IdempotencyMismatch { message }
        }
        400..=499 => StripeError::Refused { status, code, decline_code: field("decline_code"), message },
        // Redirects are not followed and 1xx never reaches here; the outcome is unknown, and the
        // same key makes a retry safe.
        _ => StripeError::Retryable { status: Some(status), message },
    }
}

/// Describes a transport failure by its causes, never with the URL, a header or a body.
fn transport_error(error: &reqwest::Error) -> StripeError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "response body could not be read"
    } else {
        "request failed"
    };
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    StripeError::Retryable { status: None, message }
}

/// Appends `metadata[key]=value` pairs, Stripe's encoding of a hash in a form body.
pub(super) fn push_metadata(
    params: &mut Vec<(String, String)>,
    metadata: &[(&str, &str)],
) -> Result<(), StripeError> {
    for (key, value) in metadata {
        if key.is_empty() || key.contains(['[', ']']) {
            return Err(StripeError::Config(format!("metadata key {key:?} is empty or contains brackets")));
        }
        params.push((format!("metadata[{key}]"), (*value).to_owned()));
    }
    Ok(())
}

/// The form parameters of a transfer.
fn transfer_params(transfer: &CreateTransfer<'_>) -> Result<Vec<(String, String)>, StripeError> {
    let mut params = vec![
        ("amount".to_owned(), transfer.amount.to_string()),
        ("currency".to_owned(), transfer.currency.to_owned()),
        ("destination".to_owned(), transfer.destination.as_str().to_owned()),
    ];
    if let Some(charge) = transfer.source_transaction {
        params.push(("source_transaction".to_owned(), charge.to_owned()));
    }
    if let Some(group) = transfer.transfer_group {
        params.push(("transfer_group".to_owned(), group.to_owned()));
    }
    if let Some(description) = transfer.description {
        params.push(("description".to_owned(), description.to_owned()));
    }
    push_metadata(&mut params, transfer.metadata)?;
    Ok(params)
}

/// The object among a list page's `data` whose `metadata[connect_flow_step]` is `step_id`, and the
/// cursor for the next page when there is one.
fn search_page(page: &Value, step_id: &str) -> Result<PageSearch, StripeError> {
    let malformed =
        |what: &str| StripeError::Retryable { status: Some(200), message: format!("a list page {what}") };
    let data = page.get("data").and_then(Value::as_array).ok_or_else(|| malformed("without data"))?;
    let found = data.iter().find(|object| {
        object.get("metadata").and_then(|m| m.get(STEP_METADATA)).and_then(Value::as_str) == Some(step_id)
    });
    if let Some(object) = found {
        let id = object.get("id").and_then(Value::as_str).ok_or_else(|| malformed("object without an id"))?;
        return Ok(PageSearch::Found(StripeObject { id: id.to_owned(), raw: object.clone() }));
    }
    if page.get("has_more").and_then(Value::as_bool) != Some(true) {
        return Ok(PageSearch::Exhausted);
    }
    let last = data.last().and_then(|object| object.get("id")).and_then(Value::as_str);
    last.map(|id| PageSearch::Next(id.to_owned())).ok_or_else(|| malformed("with more to come but no cursor"))
}

/// What one list page says about the object a lookup wants.
#[derive(Debug, PartialEq)]
enum PageSearch {
    /// It is on this page.
    Found(StripeObject),
    /// It is not on this page, and no page follows: it does not exist.
    Exhausted,
    /// It is not on this page; the next starts after this id.
    Next(String),
}

/// A Stripe object id that is safe to put in a URL path.
pub(super) fn checked_id<'a>(what: &str, id: &'a str) -> Result<&'a str, StripeError> {
    let well_formed =
        !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if well_formed { Ok(id) } else { Err(StripeError::Config(format!("{what} {id:?} is not a Stripe id"))) }
}

/// The Stripe API over HTTPS, with rustls on the aws-lc-rs provider the AWS SDK already uses.
#[derive(Debug, Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    api_key: ApiKey,
    api_base: Url,
    stripe_version: &'static str,
    metrics: Metrics,
}

impl StripeClient {
    /// Builds the client. Plain `http://` is accepted only for a loopback base URL, so that the
    /// key never crosses a network in clear.
    pub fn new(config: StripeClientConfig) -> Result<Self, StripeError> {
        if config.api_key.expose().trim().is_empty() {
            return Err(StripeError::Config("the API key is empty".to_owned()));
        }
        let api_base = Url::parse(config.api_base.trim_end_matches('/'))
            .map_err(|e| StripeError::Config(format!("the API base URL is invalid: {e}")))?;
        let host = api_base.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match api_base.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(StripeError::Config(
                    "the API base URL must be https (or http on loopback)".into(),
                ));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("connect-flow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Config(format!("the HTTP client could not be built: {e}")))?;
        Ok(Self {
            http,
            api_key: config.api_key,
            api_base,
            stripe_version: config.stripe_version,
            metrics: Metrics::disabled(),
        })
    }

    /// Records every call's latency in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// `POST /v1/transfers`: moves platform funds to a connected account.
    pub async fn create_transfer(
        &self,
        transfer: &CreateTransfer<'_>,
        idempotency_key: &str,
    ) -> Result<StripeObject, StripeError> {
        let request = self.post("/v1/transfers", &transfer_params(transfer)?, None, idempotency_key)?;
        self.send_create("create_transfer", request).await
    }

    /// `POST /v1/transfers/{id}/reversals`: takes `amount` of a transfer back to the platform.
    pub async fn create_transfer_reversal(
        &self,
        transfer_id: &str,
        amount: i64,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<StripeObject, StripeError> {
        let path = format!("/v1/transfers/{}/reversals", checked_id("transfer id", transfer_id)?);
        let mut params = vec![("amount".to_owned(), amount.to_string())];
        push_metadata(&mut params, metadata)?;
        let request = self.post(&path, &params, None, idempotency_key)?;
        self.send_create("create_transfer_reversal", request).await
    }

    /// `POST /v1/payouts` as `account` (`Stripe-Account`): pays its balance out to its bank.
    pub async fn create_payout(
        &self,
        account: &AccountId,
        amount: i64,
        currency: &str,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<StripeObject, StripeError> {
        self.create_payout_by(account, amount, currency, PayoutParams::default(), metadata, idempotency_key)
            .await
    }

    /// [`Self::create_payout`] with a `method` (`standard` or `instant`) and a `source_type`
    /// (`card`, `bank_account`, `fpx`: the balance it draws from) when they are given.
    pub(crate) async fn create_payout_by(
        &self,
        account: &AccountId,
        amount: i64,
        currency: &str,
        options: PayoutParams<'_>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<StripeObject, StripeError> {
        let mut params =
            vec![("amount".to_owned(), amount.to_string()), ("currency".to_owned(), currency.to_owned())];
        if let Some(method) = options.method {
            params.push(("method".to_owned(), method.to_owned()));
        }
        if let Some(source_type) = options.source_type {
            params.push(("source_type".to_owned(), source_type.to_owned()));
        }
        push_metadata(&mut params, metadata)?;
        let request = self.post("/v1/payouts", &params, Some(account), idempotency_key)?;
        self.send_create("create_payout", request).await
    }

    /// `GET /v1/accounts/{id}`: the account as the platform sees it (capabilities, payouts).
    pub async fn retrieve_account(&self, account: &AccountId) -> Result<Value, StripeError> {
        let path = format!("/v1/accounts/{}", checked_id("account id", account.as_str())?);
        let request =
            self.request(Method::GET, self.url(&path)?, None).build().map_err(|e| self.build_error(&e))?;
        self.send("retrieve_account", request).await
    }

    /// The transfer to `destination` in `transfer_group` (any group if empty) that `step_id` made.
    pub async fn find_transfer(
        &self,
        transfer_group: &str,
        destination: &AccountId,
        step_id: &str,
    ) -> Result<Option<StripeObject>, StripeError> {
        let mut filters = vec![("destination", checked_id("account id", destination.as_str())?.to_owned())];
        if !transfer_group.is_empty() {
            filters.insert(0, ("transfer_group", transfer_group.to_owned()));
        }
        self.find("find_transfer", "/v1/transfers", &filters, None, step_id).await
    }

    /// The reversal of transfer `transfer_id` that `step_id` made.
    pub async fn find_reversal(
        &self,
        transfer_id: &str,
        step_id: &str,
    ) -> Result<Option<StripeObject>, StripeError> {
        let path = format!("/v1/transfers/{}/reversals", checked_id("transfer id", transfer_id)?);
        self.find("find_reversal", &path, &[], None, step_id).await
    }

    /// The payout of `account` created at or after `created_gte` (unix seconds) that `step_id` made.
    pub async fn find_payout(
        &self,
        account: &AccountId,
        step_id: &str,
        created_gte: i64,
    ) -> Result<Option<StripeObject>, StripeError> {
        checked_id("account id", account.as_str())?;
        let filters = [("created[gte]", created_gte.to_string())];
        self.find("find_payout", "/v1/payouts", &filters, Some(account), step_id).await
    }

    /// Whether the key is a live one (`Some(true)`), a test one (`Some(false)`), or neither.
    pub fn livemode(&self) -> Option<bool> {
        self.api_key.livemode()
    }

    /// Pages through a list, newest first, for the object whose metadata names `step_id`. `None`
    /// only when the list ended without it; reading [`MAX_LIST_PAGES`] pages without reaching the
    /// end proves nothing, and is a retryable error.
    async fn find(
        &self,
        operation: &'static str,
        path: &str,
        filters: &[(&str, String)],
        account: Option<&AccountId>,
        step_id: &str,
    ) -> Result<Option<StripeObject>, StripeError> {
        if step_id.is_empty() {
            return Err(StripeError::Config("a lookup needs a step id".to_owned()));
        }
        let mut starting_after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let url = self.list_url(path, filters, starting_after.as_deref())?;
            let request =
                self.request(Method::GET, url, account).build().map_err(|e| self.build_error(&e))?;
            match search_page(&self.send(operation, request).await?, step_id)? {
                PageSearch::Found(object) => return Ok(Some(object)),
                PageSearch::Exhausted => return Ok(None),
                PageSearch::Next(cursor) => starting_after = Some(cursor),
            }
        }
        Err(StripeError::Retryable {
            status: None,
            message: format!("{MAX_LIST_PAGES} list pages did not settle whether the step's object exists"),
        })
    }

    /// `path` under the API base with `filters`, Stripe's page limit and the cursor in its query
    /// string, each pair form-urlencoded.
    pub(super) fn list_url(
        &self,
        path: &str,
        filters: &[(&str, String)],
        starting_after: Option<&str>,
    ) -> Result<Url, StripeError> {
        let mut url = self.url(path)?;
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in filters {
                query.append_pair(name, value);
            }
            query.append_pair("limit", LIST_PAGE_LIMIT);
            if let Some(cursor) = starting_after {
                query.append_pair("starting_after", cursor);
            }
        }
        Ok(url)
    }

    /// `path` under the API base.
    pub(super) fn url(&self, path: &str) -> Result<Url, StripeError> {
        Url::parse(&format!("{}{path}", self.api_base.as_str().trim_end_matches('/')))
            .map_err(|e| StripeError::Config(format!("the request URL is invalid: {e}")))
    }

    /// A GET of API v2, under its own `Stripe-Version`, and with `Stripe-Context` when given.
    pub(super) fn get_v2(
        &self,
        path: &str,
        query: &[(String, String)],
        context: Option<&str>,
        version: &str,
    ) -> Result<reqwest::Request, StripeError> {
        let mut url = self.url(path)?;
        url.query_pairs_mut().extend_pairs(query);
        let mut builder =
            self.http.get(url).bearer_auth(self.api_key.expose()).header("Stripe-Version", version);
        if let Some(context) = context {
            builder = builder.header("Stripe-Context", context);
        }
        builder.build().map_err(|e| self.build_error(&e))
    }

    /// A request with the headers every call carries.
    pub(super) fn request(
        &self,
        method: Method,
        url: Url,
        account: Option<&AccountId>,
    ) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(method, url)
            .bearer_auth(self.api_key.expose())
            .header("Stripe-Version", self.stripe_version);
        if let Some(account) = account {
            builder = builder.header("Stripe-Account", account.as_str());
        }
        builder
    }

    /// A form-encoded POST. The idempotency key is required: no POST leaves without one.
    pub(super) fn post(
        &self,
        path: &str,
        params: &[(String, String)],
        account: Option<&AccountId>,
        idempotency_key: &str,
    ) -> Result<reqwest::Request, StripeError> {
        let key_ok = !idempotency_key.is_empty()
            && idempotency_key.len() <= MAX_IDEMPOTENCY_KEY_LEN
            && HeaderValue::from_str(idempotency_key).is_ok();
        if !key_ok {
            return Err(StripeError::Config(
                "the idempotency key is empty, too long or not ASCII".to_owned(),
            ));
        }
        self.request(Method::POST, self.url(path)?, account)
            .header("Idempotency-Key", idempotency_key)
            .form(params)
            .build()
            .map_err(|e| self.build_error(&e))
    }

    pub(super) fn build_error(&self, error: &reqwest::Error) -> StripeError {
        StripeError::Config(format!("the request could not be built: {error}"))
            .scrubbed(self.api_key.expose())
    }

    /// Sends a create call and takes the new object's id.
    pub(super) async fn send_create(
        &self,
        operation: &'static str,
        request: reqwest::Request,
    ) -> Result<StripeObject, StripeError> {
        let raw = self.send(operation, request).await?;
        match raw.get("id").and_then(Value::as_str) {
            Some(id) => Ok(StripeObject { id: id.to_owned(), raw }),
            // Stripe did answer 2xx, so a retry under the same key replays the object whole.
            None => {
                Err(StripeError::Retryable { status: None, message: "a 2xx response without an id".into() })
            }
        }
    }

    /// Sends one request, classifies the answer and records how long `operation` took.
    pub(super) async fn send(
        &self,
        operation: &'static str,
        request: reqwest::Request,
    ) -> Result<Value, StripeError> {
        let method = request.method().clone();
        let path = request.url().path().to_owned();
        let started = Instant::now();
        let result = self.exchange(request).await.map_err(|e| e.scrubbed(self.api_key.expose()));
        match &result {
            // One connected account refusing us is not the platform key failing: it must not
            // trip the key's alarm.
            Err(error) if error.refused_account_access() => {
                self.metrics.stripe_call_refused_by_account(operation, started.elapsed());
            }
            result => {
                let status = result.as_ref().map_or_else(StripeError::status, |_| Some(200));
                self.metrics.stripe_call(operation, status, started.elapsed());
            }
        }
        match &result {
            Ok(_) => tracing::debug!(%method, path, "stripe call succeeded"),
            Err(error) => tracing::debug!(%method, path, status = error.status(), "stripe call failed"),
        }
        result
    }

    async fn exchange(&self, request: reqwest::Request) -> Result<Value, StripeError> {
        let response = self.http.execute(request).await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        // Stripe sends whole seconds; an HTTP date is not worth parsing for a hint.
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        if status.is_success() {
            // A 2xx whose body is unreadable still created the object; a retry under the same key
            // replays it.
            serde_json::from_slice(&body).map_err(|_| StripeError::Retryable {
                status: Some(status.as_u16()),
                message: "a 2xx response whose body is not JSON".into(),
            })
        } else {
            Err(classify(status.as_u16(), retry_after, &body))
        }
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::CONTENT_TYPE;
    use serde_json::json;

    use super::*;

    fn client() -> StripeClient {
        let mut config = StripeClientConfig::new(ApiKey::new("sk_test_unit_secret"));
        config.api_base = "http://127.0.0.1:9".to_owned();
        StripeClient::new(config).unwrap()
    }

    fn acct(id: &str) -> AccountId {
        AccountId::parse(id).unwrap()
    }

    fn body(request: &reqwest::Request) -> String {
        String::from_utf8(request.body().unwrap().as_bytes().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn client_form_encodes_nested_metadata_as_bracketed_keys() {
        let destination = acct("acct_1Dest");
        let transfer = CreateTransfer {
            amount: 7000,
            currency: "usd",
            destination: &destination,
            source_transaction: Some("ch_1Src"),
            transfer_group: Some("group pi_1"),
            description: None,
            metadata: &[("step_id", "st_1"), ("note", "a&b=c")],
        };
        let params = transfer_params(&transfer).unwrap();
        assert!(params.contains(&("metadata[step_id]".to_owned(), "st_1".to_owned())));
        let request = client().post("/v1/transfers", &params, None, "connect-flow:st_1:0").unwrap();
        assert_eq!(
            body(&request),
            "amount=7000&currency=usd&destination=acct_1Dest&source_transaction=ch_1Src\
             &transfer_group=group+pi_1&metadata%5Bstep_id%5D=st_1&metadata%5Bnote%5D=a%26b%3Dc"
        );
        assert_eq!(request.headers().get(CONTENT_TYPE).unwrap(), "application/x-www-form-urlencoded");
    }

    #[test]
    fn client_rejects_metadata_keys_that_would_nest_further() {
        let mut params = Vec::new();
        assert!(matches!(push_metadata(&mut params, &[("a[b]", "x")]), Err(StripeError::Config(_))));
        assert!(matches!(push_metadata(&mut params, &[("", "x")]), Err(StripeError::Config(_))));
    }

    #[test]
    fn client_posts_carry_auth_version_idempotency_key_and_account_headers() {
        let account = acct("acct_1Pay");
        let request = client().post("/v1/payouts", &[], Some(&account), "key-1").unwrap();
        let header = |name: &str| request.headers().get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("authorization"), "Bearer sk_test_unit_secret");
        assert!(request.headers().get("authorization").unwrap().is_sensitive());
        assert_eq!(header("stripe-version"), STRIPE_VERSION);
        assert_eq!(header("idempotency-key"), "key-1");
        assert_eq!(header("stripe-account"), "acct_1Pay");
        assert_eq!(request.url().as_str(), "http://127.0.0.1:9/v1/payouts");

        let platform = client().post("/v1/transfers", &[], None, "key-2").unwrap();
        assert!(platform.headers().get("stripe-account").is_none());
    }

    #[test]
    fn client_refuses_to_post_without_a_usable_idempotency_key() {
        for key in ["", "bad\nkey", &"k".repeat(256)] {
            assert!(matches!(client().post("/v1/transfers", &[], None, key), Err(StripeError::Config(_))));
        }
    }

    #[test]
    fn client_classifies_errors_by_status_and_body() {
        let refusal = br#"{"error":{"type":"invalid_request_error","code":"balance_insufficient",
            "message":"You have insufficient available funds in your Stripe account."}}"#;
        let error = classify(400, None, refusal);
        assert_eq!(error.code(), Some("balance_insufficient"));
        assert!(!error.is_retryable());
        assert!(matches!(error, StripeError::Refused { status: 400, .. }));

        let declined =
            br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"do_not_honor",
            "message":"Declined"}}"#;
        assert!(matches!(
            classify(402, None, declined),
            StripeError::Refused { decline_code: Some(ref d), .. } if d == "do_not_honor"
        ));

        let mismatch = br#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#;
        assert!(matches!(classify(400, None, mismatch), StripeError::IdempotencyMismatch { .. }));
        assert!(!classify(400, None, mismatch).is_retryable());

        for status in [409, 429, 500, 502, 503] {
            let error = classify(status, None, b"<html>oops</html>");
            assert!(error.is_retryable(), "{status}");
            assert_eq!(error.status(), Some(status));
        }
        let missing = classify(404, None, br#"{"error":{"type":"invalid_request_error","code":"resource_missing","message":"No such transfer"}}"#);
        assert_eq!(missing.code(), Some("resource_missing"));
        assert!(matches!(classify(401, None, b""), StripeError::Refused { status: 401, code: None, .. }));
    }

    #[test]
    fn client_scrubs_the_key_from_messages_and_debug() {
        let error = StripeError::Refused {
            status: 401,
            code: None,
            decline_code: None,
            message: "Invalid API Key provided: sk_test_unit_secret".to_owned(),
        }
        .scrubbed("sk_test_unit_secret");
        assert!(!error.to_string().contains("sk_test_unit_secret"));
        assert!(!format!("{:?}", client()).contains("sk_test_unit_secret"));
        assert!(
            !format!("{:?}", StripeClientConfig::new(ApiKey::new("sk_test_unit_secret"))).contains("secret")
        );
    }

    #[test]
    fn client_config_reads_the_key_and_base_and_accepts_only_safe_bases() {
        let config = StripeClientConfig::from_lookup(|name| match name {
            API_KEY_VAR => Some("sk_test_x".to_owned()),
            API_BASE_VAR => Some("http://127.0.0.1:4242".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.api_base, "http://127.0.0.1:4242");
        assert!(matches!(StripeClientConfig::from_lookup(|_| None), Err(StripeError::Config(_))));
        for base in ["http://api.stripe.com", "ftp://127.0.0.1", "not a url"] {
            let mut config = StripeClientConfig::new(ApiKey::new("sk_test_x"));
            config.api_base = base.to_owned();
            assert!(matches!(StripeClient::new(config), Err(StripeError::Config(_))), "{base}");
        }
        assert!(StripeClient::new(StripeClientConfig::new(ApiKey::new("sk_test_x"))).is_ok());
    }

    #[test]
    fn client_tells_a_refused_account_from_a_refused_platform_key() {
        // What Stripe answers once a connected account's owner revoked the platform's access.
        let revoked = br#"{"error":{"type":"invalid_request_error","code":"account_invalid",
            "doc_url":"https://stripe.com/docs/error-codes/account-invalid",
            "message":"The provided key 'sk_test_********1234' does not have access to account 'acct_1Gone' (or that account does not exist). Application access may have been revoked."}}"#;
        let error = classify(403, None, revoked);
        assert!(error.refused_account_access(), "{error:?}");
        assert!(!error.refused_platform_key());
        assert!(!error.is_retryable());
        // The message alone is enough, should the code be missing.
        let no_code = br#"{"error":{"type":"invalid_request_error","message":"The provided key 'sk_live_***abcd' does not have access to account 'acct_1Gone' (or that account does not exist). Application access may have been revoked."}}"#;
        assert!(classify(403, None, no_code).refused_account_access());
        // The code alone too.
        let code_only =
            br#"{"error":{"type":"invalid_request_error","code":"account_invalid","message":"x"}}"#;
        assert!(classify(403, None, code_only).refused_account_access());

        let bad_key = br#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_test_****abcd"}}"#;
        let unauthorized = classify(401, None, bad_key);
        assert!(unauthorized.refused_platform_key());
        assert!(!unauthorized.refused_account_access());
        // A 401 is the key's fault whatever its body says.
        assert!(classify(401, None, revoked).refused_platform_key());
        assert!(!classify(401, None, revoked).refused_account_access());

        let restricted = br#"{"error":{"type":"invalid_request_error","message":"The provided key 'rk_live_***j4va7j' does not have the required permissions for this endpoint on account 'acct_1Plat'. Having the 'rak_transfer_write' permission would allow this request to continue."}}"#;
        let forbidden = classify(403, None, restricted);
        assert!(forbidden.refused_platform_key(), "{forbidden:?}");
        assert!(!forbidden.refused_account_access());

        // Neither: an ordinary refusal, a 400 with the same code, a retryable failure, a mismatch.
        let insufficient =
            br#"{"error":{"type":"invalid_request_error","code":"balance_insufficient","message":"no"}}"#;
        for error in [
            classify(400, None, insufficient),
            classify(400, None, code_only),
            classify(404, None, revoked),
            classify(500, None, revoked),
            StripeError::Retryable { status: None, message: "timed out".into() },
            StripeError::IdempotencyMismatch { message: "other parameters".into() },
            StripeError::Config("x".into()),
        ] {
            assert!(!error.refused_account_access(), "{error:?}");
            assert!(!error.refused_platform_key(), "{error:?}");
        }
    }

    #[test]
    fn api_key_livemode_follows_the_key_prefix() {
        for (key, livemode) in [
            ("sk_live_abc", Some(true)),
            ("rk_live_abc", Some(true)),
            ("sk_test_abc", Some(false)),
            ("rk_test_abc", Some(false)),
            (" sk_live_padded ", Some(true)),
            ("pk_live_abc", None),
            ("pk_test_abc", None),
            ("whsec_abc", None),
            ("sk_abc", None),
            ("", None),
            ("SK_LIVE_abc", None),
        ] {
            assert_eq!(ApiKey::new(key).livemode(), livemode, "{key:?}");
        }
        assert_eq!(client().livemode(), Some(false));
        let mut live = StripeClientConfig::new(ApiKey::new("rk_live_x"));
        live.api_base = "http://127.0.0.1:9".to_owned();
        assert_eq!(StripeClient::new(live).unwrap().livemode(), Some(true));
    }

    #[test]
    fn client_list_urls_encode_filters_the_page_limit_and_the_cursor() {
        let filters =
            [("transfer_group", "group pi_1&x=y".to_owned()), ("created[gte]", "1750000000".to_owned())];
        let url = client().list_url("/v1/transfers", &filters, Some("tr_1Last")).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/v1/transfers?transfer_group=group+pi_1%26x%3Dy&created%5Bgte%5D=1750000000\
             &limit=100&starting_after=tr_1Last"
        );
        let first = client().list_url("/v1/transfers/tr_1/reversals", &[], None).unwrap();
        assert_eq!(first.as_str(), "http://127.0.0.1:9/v1/transfers/tr_1/reversals?limit=100");
    }

    #[test]
    fn a_list_page_yields_the_step_s_object_the_next_cursor_or_the_end() {
        let object = |id: &str, step: &str| json!({"id": id, "metadata": {STEP_METADATA: step}});
        let page =
            |data: Vec<Value>, has_more: bool| json!({"object": "list", "data": data, "has_more": has_more});

        let found = search_page(&page(vec![object("tr_2", "b"), object("tr_1", "a")], true), "a").unwrap();
        assert_eq!(found, PageSearch::Found(StripeObject { id: "tr_1".into(), raw: object("tr_1", "a") }));
        let next = search_page(&page(vec![object("tr_2", "b"), object("tr_1", "c")], true), "a").unwrap();
        assert_eq!(next, PageSearch::Next("tr_1".into()));
        let end = search_page(&page(vec![object("tr_2", "b")], false), "a").unwrap();
        assert_eq!(end, PageSearch::Exhausted);
        assert_eq!(search_page(&page(vec![], false), "a").unwrap(), PageSearch::Exhausted);
        // Other metadata keys never match, nor does a missing `has_more` mean more.
        let other_key = json!({"data": [{"id": "tr_1", "metadata": {"step_id": "a"}}]});
        assert_eq!(search_page(&other_key, "a").unwrap(), PageSearch::Exhausted);

        // Malformed pages are retryable failures, never a "not found".
        for malformed in [
            json!({"object": "list"}),
            page(vec![], true),
            page(vec![json!({"metadata": {STEP_METADATA: "a"}})], false),
            page(vec![json!({"metadata": {}})], true),
        ] {
            let error = search_page(&malformed, "a").unwrap_err();
            assert!(error.is_retryable(), "{malformed}");
        }
    }

    #[test]
    fn client_refuses_ids_that_would_escape_the_path() {
        assert!(checked_id("transfer id", "tr_1Abc").is_ok());
        assert!(matches!(checked_id("transfer id", "tr_1/../x"), Err(StripeError::Config(_))));
    }
}
