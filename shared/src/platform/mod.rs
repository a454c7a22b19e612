//! The platform API: the routes the platform's own back end calls to onboard sellers, manage
//! their accounts, pay them and follow every change (DESIGN.md, "Platform API"). Independent of
//! how the request arrived: `connect-flow serve` and the `platform-api` Lambda function
//! authenticate it, then hand it to [`PlatformApi::handle`].

use std::sync::Arc;

use serde_json::{Value, json};

use crate::clock::{Clock, SystemClock};
use crate::config::ConfigError;
use crate::domain::account::{AccountId, AccountState, AccountsApi, OnboardingStatus};
use crate::domain::payout::PayoutSettings;
use crate::domain::step::{Step, StepRef, StepStatus};
use crate::store::{AccountQuery, AccountStore, MAX_PAGE, StepQueue};
use crate::stripe::client::StripeClient;

mod accounts;
pub mod console;
pub mod error;
pub mod lambda;
pub mod ledger;
mod links;
mod money;
pub mod payout_policy;
mod request;
pub mod token;

pub use error::ApiError;
use token::LinkSecret;

/// The largest body a platform route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The HMAC key for onboarding refresh tokens.
pub(crate) const LINK_SECRET: &str = "CONNECT_FLOW_LINK_SECRET";
/// Its Secrets Manager ARN, deployed.
pub(crate) const LINK_SECRET_ARN: &str = "CONNECT_FLOW_LINK_SECRET_ARN";
/// The public base URL of this deployment, for the refresh links it hands Stripe.
pub(crate) const PUBLIC_URL: &str = "CONNECT_FLOW_PUBLIC_URL";
/// The bearer token `serve` requires on the platform routes.
pub const API_TOKEN: &str = "CONNECT_FLOW_API_TOKEN";
/// Which Accounts API `POST /accounts` creates accounts with: `v1` (the default) or `v2`.
pub const ACCOUNTS_API: &str = "CONNECT_FLOW_ACCOUNTS_API";

/// An HTTP answer: status, content type, body, and a redirect target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiReply {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// The `Location` of a redirect.
    pub location: Option<String>,
}

impl ApiReply {
    /// A JSON answer.
    pub fn json(status: u16, body: String) -> Self {
        Self { status, content_type: "application/json", body, location: None }
    }

    fn of(status: u16, value: &impl serde::Serialize) -> Self {
        Self::json(status, serde_json::to_string(value).unwrap_or_default())
    }
}

/// One authenticated (or refresh-route) request, as either front end read it.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    /// The raw body.
    pub body: &'a [u8],
    /// This deployment's public base URL as the request reached it (`https://host`), used when
    /// [`PUBLIC_URL`] is not configured.
    pub base_url: &'a str,
}

/// Whether a route is the one platform route without the API's authentication: the refresh link,
/// which carries its own signed token.
pub(crate) fn is_public_route(method: &str, path: &str) -> bool {
    method == "GET" && path.trim_end_matches('/') == "/onboarding/refresh"
}

/// What the platform API needs besides its store.
#[derive(Debug, Clone, Default)]
pub struct PlatformSettings {
    /// The key refresh tokens are signed with; without it, onboarding links are refused.
    pub link_secret: Option<LinkSecret>,
    /// [`PUBLIC_URL`], when set.
    pub public_url: Option<String>,
    /// The only livemode the deployment acts on (`CONNECT_FLOW_LIVEMODE`).
    pub expected_livemode: Option<bool>,
}

impl PlatformSettings {
    /// Reads the settings through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        Self {
            link_secret: set(LINK_SECRET).and_then(|value| LinkSecret::new(&value)),
            public_url: set(PUBLIC_URL).map(|url| url.trim_end_matches('/').to_owned()),
            expected_livemode: match set(crate::config::LIVEMODE).as_deref() {
                Some("true") => Some(true),
                Some("false") => Some(false),
                _ => None,
            },
        }
    }

    /// Reads [`ACCOUNTS_API`] through `lookup`: unset or empty is `v1`, and anything but `v1` or
    /// `v2` is refused, so that a typo stops the start instead of creating accounts on the API
    /// the platform did not mean. Kept apart from [`Self::from_lookup`], which cannot fail.
    pub fn accounts_api_from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AccountsApi, ConfigError> {
        let value = lookup(ACCOUNTS_API).map(|value| value.trim().to_ascii_lowercase()).unwrap_or_default();
        match value.as_str() {
            "" | "v1" => Ok(AccountsApi::V1),
            "v2" => Ok(AccountsApi::V2),
            _ => {
                Err(ConfigError::Invalid { name: ACCOUNTS_API, reason: "must be v1 or v2 (unset means v1)" })
            }
        }
    }
}

/// The platform API over a store.
pub struct PlatformApi<S, C = SystemClock> {
    store: S,
    stripe: Option<StripeClient>,
    queue: Option<Arc<dyn StepQueue>>,
    settings: PlatformSettings,
    accounts_api: AccountsApi,
    payout_settings: PayoutSettings,
    tax_thresholds: crate::domain::ledger::TaxThresholds,
    clock: C,
    signature_failures: Option<crate::doctor::SignatureFailureCount>,
}

impl<S: AccountStore> PlatformApi<S> {
    /// The API on the system clock.
    pub fn new(store: S, stripe: Option<StripeClient>, settings: PlatformSettings) -> Self {
        // Checked at start ([`PayoutSettings::from_lookup`] refuses a bad one).
        let payouts = PayoutSettings::from_env().unwrap_or_default();
        // Checked at start, as the payout defaults are ([`TaxThresholds::from_lookup`]).
        let tax = crate::domain::ledger::TaxThresholds::from_env().unwrap_or_default();
        Self::with_clock(store, stripe, settings, SystemClock)
            .with_payout_settings(payouts)
            .with_tax_thresholds(tax)
    }
}

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    /// The API on the given clock.
    pub fn with_clock(store: S, stripe: Option<StripeClient>, settings: PlatformSettings, clock: C) -> Self {
        Self {
            store,
            stripe,
            queue: None,
            settings,
            accounts_api: AccountsApi::V1,
            payout_settings: PayoutSettings::default(),
            tax_thresholds: Default::default(),
            clock,
            signature_failures: None,
        }
    }

    /// Answers `healthz?deep=1` with the webhook's in-process count of signature failures (`serve`);
    /// without it, the answer says the count is CloudWatch's.
    pub fn with_signature_failure_count(mut self, count: crate::doctor::SignatureFailureCount) -> Self {
        self.signature_failures = Some(count);
        self
    }

    /// Shows `settings` (the deployment's default payout policy) on accounts without their own,
    /// instead of the built-in default.
    pub fn with_payout_settings(mut self, settings: PayoutSettings) -> Self {
        self.payout_settings = settings;
        self
    }

    /// Creates accounts on `api` (read with [`PlatformSettings::accounts_api_from_lookup`]);
    /// without this, on v1.
    pub fn with_accounts_api(mut self, api: AccountsApi) -> Self {
        self.accounts_api = api;
        self
    }

    /// Sends the steps it stores to `queue`; without one they wait in the store for a sweep.
    pub fn with_queue(mut self, queue: Arc<dyn StepQueue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// [`Self::with_queue`] when there is a queue (how [`crate::app::Backend`] hands it over).
    pub fn with_queue_if_any(mut self, queue: Option<Arc<dyn StepQueue>>) -> Self {
        self.queue = queue.or(self.queue);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Answers one request. Never panics on input.
    pub async fn handle(&self, request: &ApiRequest<'_>) -> ApiReply {
        let span = tracing::info_span!("platform", method = request.method, path = request.path);
        let _entered = span.enter();
        match self.route(request).await {
            Ok(reply) => reply,
            Err(error) => error.reply(),
        }
    }

    async fn route(&self, request: &ApiRequest<'_>) -> Result<ApiReply, ApiError> {
        if request.body.len() > MAX_BODY_BYTES {
            return Err(ApiError::BodyTooLarge);
        }
        let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
        let post = request.method == "POST";
        let get = request.method == "GET";
        let put = request.method == "PUT";
        let wrong_method = || Err(ApiError::MethodNotAllowed(request.method.to_owned()));
        match segments.as_slice() {
            ["accounts"] if post => self.create_account(request.body).await,
            ["accounts"] if get => self.list_accounts(request.query).await,
            ["accounts", id] if get => self.get_account(id).await,
            ["accounts", id, "steps"] if get => self.get_steps(id).await,
            ["accounts", id, "onboarding_link"] if post => self.onboarding_link(id, request).await,
            ["accounts", id, "session"] if post => self.account_session(id, request.body).await,
            ["accounts", id, "login_link"] if post => self.login_link(id).await,
            ["accounts", id, "payout_policy"] if put => self.put_payout_policy(id, request.body).await,
            ["accounts", id, "ledger"] if get => self.get_ledger(id, request.query).await,
            ["accounts", id, "tax"] if get => self.get_tax(id, request.query).await,
            ["reports", "fees"] if get => self.fee_report(request.query).await,
            ["transfers"] if post => self.request_transfer(request.body).await,
            ["payouts"] if post => self.request_payout(request.body).await,
            ["changes"] if get => self.list_changes(request.query).await,
            ["onboarding", "refresh"] if get => self.refresh_link(request).await,
            ["console"] if get => self.console().await,
            ["healthz"] if get && crate::doctor::asks_deep(request.query) => {
                self.store.load_event("healthz").await?;
                let base_url = self.settings.public_url.as_deref().unwrap_or(request.base_url);
                let count = self.signature_failures.as_ref();
                let (status, body) = crate::doctor::deep_health(self.stripe.as_ref(), base_url, count).await;
                Ok(ApiReply::json(status, body.to_string()))
            }
            ["healthz"] if get => {
                self.store.load_event("healthz").await?;
                Ok(ApiReply::json(200, json!({ "status": "ok" }).to_string()))
            }
            ["accounts"] | ["accounts", _] | ["accounts", _, "steps"] | ["changes"] | ["healthz"] => {
                wrong_method()
            }
            ["accounts", _, "onboarding_link" | "session" | "login_link"] | ["transfers"] | ["payouts"] => {
                wrong_method()
            }
            ["accounts", _, "payout_policy"] => wrong_method(),
            ["console"] => wrong_method(),
            ["accounts", _, "ledger" | "tax"] | ["reports", "fees"] => wrong_method(),
            _ => Err(ApiError::NotFound("no such route".to_owned())),
        }
    }

    /// The stored account `id` names, or 404.
    async fn known_account(&self, id: &str) -> Result<AccountState, ApiError> {
        let account_id = AccountId::parse(id).ok_or_else(|| ApiError::NotFound("no such account".into()))?;
        self.store
            .load_account(&account_id)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such account".into()))
    }

    async fn get_account(&self, id: &str) -> Result<ApiReply, ApiError> {
        Ok(ApiReply::of(200, &self.shown_account(self.known_account(id).await?)))
    }

    async fn get_steps(&self, id: &str) -> Result<ApiReply, ApiError> {
        let account_id = AccountId::parse(id).ok_or_else(|| ApiError::NotFound("no such account".into()))?;
        let steps = self.store.load_account_steps(&account_id).await?;
        if steps.is_empty() && self.store.load_account(&account_id).await?.is_none() {
            return Err(ApiError::NotFound("no such account".into()));
        }
        Ok(ApiReply::of(200, &steps))
    }

    async fn list_accounts(&self, query: &str) -> Result<ApiReply, ApiError> {
        let params = request::Query::parse(query);
        let status = match params.get("status") {
            None => None,
            Some(name) => Some(
                OnboardingStatus::parse(name)
                    .ok_or_else(|| ApiError::invalid("status", "not an onboarding status"))?,
            ),
        };
        let limit = params.limit(50)?;
        let starting_after = match params.get("starting_after") {
            None => None,
            Some(id) => Some(
                AccountId::parse(id)
                    .ok_or_else(|| ApiError::invalid("starting_after", "not an account id"))?,
            ),
        };
        let page = self
            .store
            .list_accounts(&AccountQuery { status, limit, starting_after: starting_after.as_ref() })
            .await?;
        let accounts: Vec<AccountState> =
            page.accounts.into_iter().map(|account| self.shown_account(account)).collect();
        Ok(ApiReply::of(200, &json!({ "data": accounts, "has_more": page.has_more })))
    }

    async fn list_changes(&self, query: &str) -> Result<ApiReply, ApiError> {
        let params = request::Query::parse(query);
        let limit = params.limit(MAX_PAGE)?;
        let page = self
            .store
            .list_changes(params.get("after"), limit, self.clock.now_unix())
            .await?
            .ok_or_else(|| ApiError::invalid("after", "not a cursor from this feed"))?;
        Ok(ApiReply::of(200, &json!({ "data": page.changes, "next": page.next })))
    }

    /// Sends a stored step to its queue. The step is committed first: a send that fails leaves it
    /// queued in the store, where the sweep finds it, so the caller's request still stands.
    async fn send(&self, step: &Step) {
        if step.status != StepStatus::Queued {
            return;
        }
        let Some(queue) = &self.queue else { return };
        let reference: StepRef = step.reference();
        if let Err(error) = queue.send(std::slice::from_ref(&reference)).await {
            tracing::warn!(%error, step_id = step.step_id.as_str(), "step stored but not queued; the sweep will send it");
        }
    }

    fn stripe(&self) -> Result<&StripeClient, ApiError> {
        self.stripe
            .as_ref()
            .ok_or(ApiError::NotConfigured("no Stripe API key is configured (STRIPE_API_KEY)"))
    }

    /// The public base URL refresh links point at.
    fn public_url<'a>(&'a self, request: &ApiRequest<'a>) -> &'a str {
        self.settings.public_url.as_deref().unwrap_or(request.base_url).trim_end_matches('/')
    }
}

/// A JSON body as an object, or 400.
fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::invalid("body", "the body must be a JSON object")),
        Err(_) => Err(ApiError::invalid("body", "the body is not JSON")),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod accounts_api_tests {
    use super::*;

    fn read(value: Option<&str>) -> Result<AccountsApi, ConfigError> {
        PlatformSettings::accounts_api_from_lookup(|name| {
            assert_eq!(name, ACCOUNTS_API);
            value.map(str::to_owned)
        })
    }

    #[test]
    fn platform_accounts_api_defaults_to_v1_and_refuses_anything_but_v1_or_v2() {
        for (value, api) in
            [(None, AccountsApi::V1), (Some(""), AccountsApi::V1), (Some(" v1 "), AccountsApi::V1)]
        {
            assert_eq!(read(value), Ok(api), "{value:?}");
        }
        assert_eq!(read(Some("v2")), Ok(AccountsApi::V2));
        assert_eq!(read(Some("V2")), Ok(AccountsApi::V2));
        for bogus in ["bogus", "2", "v3", "v1,v2"] {
            // Names the variable, never its value, like every configuration error.
            let error = read(Some(bogus)).unwrap_err();
            assert_eq!(
                error.to_string(),
                "CONNECT_FLOW_ACCOUNTS_API is invalid: must be v1 or v2 (unset means v1)"
            );
        }
    }
}
