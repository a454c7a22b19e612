//! The Stripe calls behind the platform API's onboarding routes: create a connected account with
//! controller properties, find the account an ambiguous create made, and hand out the links and
//! sessions that let its owner onboard (Account Links, Account Sessions, Express login links).
//!
//! Every POST carries the caller's idempotency key. An account create that ended in a 5xx or a
//! timeout cannot be settled by retrying, since Stripe replays a saved 500 under the same key:
//! [`StripeClient::find_account_by_reference`] settles it by listing accounts and matching the
//! reference the create put in their metadata.

use std::fmt;

use reqwest::Method;
use serde_json::Value;

use super::client::{MAX_LIST_PAGES, StripeClient, StripeError, checked_id, push_metadata};
use crate::domain::account::AccountId;

/// The metadata key under which an account create records the platform's reference.
pub const REFERENCE_METADATA: &str = "connect_flow_reference";

/// The parameters of `POST /v1/accounts` with controller properties.
#[derive(Debug, Clone, Copy)]
pub struct CreateAccount<'a> {
    /// ISO 3166-1 alpha-2 country of the account holder.
    pub country: &'a str,
    /// The account holder's email, to make the account easier to identify.
    pub email: Option<&'a str>,
    /// `controller[stripe_dashboard][type]`: `express`, `full` or `none`.
    pub dashboard: &'a str,
    /// `controller[fees][payer]`: `account` or `application`.
    pub fees_payer: Option<&'a str>,
    /// `controller[losses][payments]`: `application` or `stripe`.
    pub losses_payer: Option<&'a str>,
    /// `controller[requirement_collection]`: `stripe` or `application`.
    pub requirement_collection: Option<&'a str>,
    /// Capabilities to request, e.g. `card_payments`, `transfers`.
    pub capabilities: &'a [&'a str],
    /// Sent as `metadata[key]=value`; put the reference under [`REFERENCE_METADATA`].
    pub metadata: &'a [(&'a str, &'a str)],
}

/// The parameters of `POST /v1/account_links`.
#[derive(Debug, Clone, Copy)]
pub struct CreateAccountLink<'a> {
    /// The connected account the link onboards.
    pub account: &'a AccountId,
    /// `account_onboarding` or `account_update`.
    pub link_type: &'a str,
    /// Where Stripe sends the user when they leave or finish the flow.
    pub return_url: &'a str,
    /// Where Stripe sends the user when the link has expired or was already used.
    pub refresh_url: &'a str,
    /// `collection_options[fields]`: `currently_due` or `eventually_due`.
    pub collect: Option<&'a str>,
}

/// A single-use onboarding URL and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLink {
    /// The Stripe-hosted URL to redirect the user to.
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The secret an embedded component uses to act for one connected account.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// The secret itself, to hand to the platform's front end and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// An Account Session for Connect embedded components; never stored or logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSession {
    /// Grants the front end access to the account until `expires_at`.
    pub client_secret: ClientSecret,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A single-use link into the Express Dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginLink {
    /// The URL to redirect the account's owner to.
    pub url: String,
}

impl StripeClient {
    /// `POST /v1/accounts`: creates a connected account configured by controller properties.
    pub async fn create_account(
        &self,
        account: &CreateAccount<'_>,
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        let request = self.post("/v1/accounts", &account_params(account)?, None, idempotency_key)?;
        Ok(self.send_create("create_account", request).await?.raw)
    }

    /// The account created at or after `created_gte` (unix seconds) whose metadata names
    /// `reference`. `None` only when the list ended without it; reading every allowed page
    /// without reaching the end proves nothing, and is a retryable error.
    pub async fn find_account_by_reference(
        &self,
        reference: &str,
        created_gte: i64,
    ) -> Result<Option<Value>, StripeError> {
        if reference.is_empty() {
            return Err(StripeError::Config("a lookup needs a reference".to_owned()));
        }
        let filters = [("created[gte]", created_gte.to_string())];
        let mut starting_after: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let url = self.list_url("/v1/accounts", &filters, starting_after.as_deref())?;
            let request = self.request(Method::GET, url, None).build().map_err(|e| self.build_error(&e))?;
            match search_accounts(&self.send("find_account", request).await?, reference)? {
                AccountSearch::Found(account) => return Ok(Some(account)),
                AccountSearch::Exhausted => return Ok(None),
                AccountSearch::Next(cursor) => starting_after = Some(cursor),
            }
        }
        Err(StripeError::Retryable {
            status: None,
            message: format!("{MAX_LIST_PAGES} list pages did not settle whether the account exists"),
        })
    }

    /// `POST /v1/account_links`: a Stripe-hosted onboarding or update link for one account.
    pub async fn create_account_link(
        &self,
        link: &CreateAccountLink<'_>,
        idempotency_key: &str,
    ) -> Result<AccountLink, StripeError> {
        let mut params = vec![
            ("account".to_owned(), checked_id("account id", link.account.as_str())?.to_owned()),
            ("type".to_owned(), link.link_type.to_owned()),
            ("return_url".to_owned(), link.return_url.to_owned()),
            ("refresh_url".to_owned(), link.refresh_url.to_owned()),
        ];
        if let Some(fields) = link.collect {
            params.push(("collection_options[fields]".to_owned(), fields.to_owned()));
        }
        let request = self.post("/v1/account_links", &params, None, idempotency_key)?;
        let raw = self.send("create_account_link", request).await?;
        Ok(AccountLink { url: string_field(&raw, "url")?, expires_at: integer_field(&raw, "expires_at")? })
    }

    /// `POST /v1/account_sessions`: a client secret for embedded components, `components` being
    /// Stripe's object (`{"payments": {"enabled": true, "features": {…}}}`) as JSON.
    pub async fn create_account_session(
        &self,
        account: &AccountId,
        components: &Value,
        idempotency_key: &str,
    ) -> Result<AccountSession, StripeError> {
        if !components.is_object() {
            return Err(StripeError::Config("the session's components must be a JSON object".to_owned()));
        }
        let mut params = vec![("account".to_owned(), checked_id("account id", account.as_str())?.to_owned())];
        params.extend(form_params("components", components)?);
        let request = self.post("/v1/account_sessions", &params, None, idempotency_key)?;
        let raw = self.send("create_account_session", request).await?;
        Ok(AccountSession {
            client_secret: ClientSecret(string_field(&raw, "client_secret")?),
            expires_at: integer_field(&raw, "expires_at")?,
        })
    }

    /// `POST /v1/accounts/{id}/login_links`: a link into the Express Dashboard (Express accounts
    /// only).
    pub async fn create_login_link(
        &self,
        account: &AccountId,
        idempotency_key: &str,
    ) -> Result<LoginLink, StripeError> {
        let path = format!("/v1/accounts/{}/login_links", checked_id("account id", account.as_str())?);
        let request = self.post(&path, &[], None, idempotency_key)?;
        let raw = self.send("create_login_link", request).await?;
        Ok(LoginLink { url: string_field(&raw, "url")? })
    }
}

/// Flattens a JSON value into Stripe's form encoding under `name`: objects nest as `name[key]`,
/// arrays as `name[0]`, `name[1]`, booleans as `true`/`false`, numbers and strings as they are.
/// An empty object or array sends nothing. Null has no form encoding and is refused.
pub fn form_params(name: &str, value: &Value) -> Result<Vec<(String, String)>, StripeError> {
    let mut params = Vec::new();
    flatten(name, value, &mut params)?;
    Ok(params)
}

fn flatten(name: &str, value: &Value, params: &mut Vec<(String, String)>) -> Result<(), StripeError> {
    match value {
        Value::Null => {
            return Err(StripeError::Config(format!("{name} is null, which a form cannot carry")));
        }
        Value::Bool(flag) => params.push((name.to_owned(), flag.to_string())),
        Value::Number(number) => params.push((name.to_owned(), number.to_string())),
        Value::String(text) => params.push((name.to_owned(), text.clone())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten(&format!("{name}[{index}]"), item, params)?;
            }
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                // A bracket in a key would nest it somewhere else than the caller meant.
                if key.is_empty() || key.contains(['[', ']']) {
                    return Err(StripeError::Config(format!(
                        "{name} has a key {key:?} that is empty or contains brackets"
                    )));
                }
                flatten(&format!("{name}[{key}]"), field, params)?;
            }
        }
    }
    Ok(())
}

/// The form parameters of an account create.
fn account_params(account: &CreateAccount<'_>) -> Result<Vec<(String, String)>, StripeError> {
    let mut params = vec![("country".to_owned(), account.country.to_owned())];
    if let Some(email) = account.email {
        params.push(("email".to_owned(), email.to_owned()));
    }
    params.push(("controller[stripe_dashboard][type]".to_owned(), account.dashboard.to_owned()));
    let optional = [
        ("controller[fees][payer]", account.fees_payer),
        ("controller[losses][payments]", account.losses_payer),
        ("controller[requirement_collection]", account.requirement_collection),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            params.push((name.to_owned(), value.to_owned()));
        }
    }
    for capability in account.capabilities {
        if capability.is_empty() || capability.contains(['[', ']']) {
            return Err(StripeError::Config(format!(
                "capability {capability:?} is empty or contains brackets"
            )));
        }
        params.push((format!("capabilities[{capability}][requested]"), "true".to_owned()));
    }
    push_metadata(&mut params, account.metadata)?;
    Ok(params)
}

/// A 2xx body without a field the caller needs: Stripe answered, so a retry under the same key
/// replays the answer whole.
fn malformed(what: &str) -> StripeError {
    StripeError::Retryable { status: Some(200), message: format!("a 2xx response {what}") }
}

fn string_field(raw: &Value, name: &str) -> Result<String, StripeError> {
    raw.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed(&format!("without {name}")))
}

fn integer_field(raw: &Value, name: &str) -> Result<i64, StripeError> {
    raw.get(name).and_then(Value::as_i64).ok_or_else(|| malformed(&format!("without an integer {name}")))
}

/// What one page of `GET /v1/accounts` says about the account a lookup wants.
#[derive(Debug, PartialEq)]
enum AccountSearch {
    /// It is on this page.
    Found(Value),
    /// It is not on this page, and no page follows: it does not exist.
    Exhausted,
    /// It is not on this page; the next starts after this id.
    Next(String),
}

fn search_accounts(page: &Value, reference: &str) -> Result<AccountSearch, StripeError> {
    let malformed =
        |what: &str| StripeError::Retryable { status: Some(200), message: format!("a list page {what}") };
    let data = page.get("data").and_then(Value::as_array).ok_or_else(|| malformed("without data"))?;
    let found = data.iter().find(|account| {
        account.get("metadata").and_then(|m| m.get(REFERENCE_METADATA)).and_then(Value::as_str)
            == Some(reference)
    });
    if let Some(account) = found {
        if account.get("id").and_then(Value::as_str).is_none() {
            return Err(malformed("with an account without an id"));
        }
        return Ok(AccountSearch::Found(account.clone()));
    }
    if page.get("has_more").and_then(Value::as_bool) != Some(true) {
        return Ok(AccountSearch::Exhausted);
    }
    let last = data.last().and_then(|account| account.get("id")).and_then(Value::as_str);
    last.map(|id| AccountSearch::Next(id.to_owned()))
        .ok_or_else(|| malformed("with more to come but no cursor"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn form_params_nest_objects_and_arrays_and_refuse_null() {
        let value = json!({
            "payments": {"enabled": true, "features": {"refund_management": true, "limit": 3}},
            "list": ["a", {"b": false}],
            "empty": {},
        });
        let params = form_params("components", &value).unwrap();
        let expected = [
            ("components[list][0]", "a"),
            ("components[list][1][b]", "false"),
            ("components[payments][enabled]", "true"),
            ("components[payments][features][limit]", "3"),
            ("components[payments][features][refund_management]", "true"),
        ];
        let mut sorted = params.clone();
        sorted.sort();
        assert_eq!(sorted, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert!(matches!(form_params("x", &json!({"a": null})), Err(StripeError::Config(_))));
        assert!(matches!(form_params("x", &json!({"a[b]": 1})), Err(StripeError::Config(_))));
        assert!(matches!(form_params("x", &json!({"": 1})), Err(StripeError::Config(_))));
    }

    #[test]
    fn account_params_carry_the_controller_capabilities_and_metadata() {
        let account = CreateAccount {
            country: "US",
            email: Some("a@example.com"),
            dashboard: "express",
            fees_payer: Some("application"),
            losses_payer: None,
            requirement_collection: Some("stripe"),
            capabilities: &["transfers"],
            metadata: &[(REFERENCE_METADATA, "seller-1")],
        };
        let params = account_params(&account).unwrap();
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("country", "US"),
                ("email", "a@example.com"),
                ("controller[stripe_dashboard][type]", "express"),
                ("controller[fees][payer]", "application"),
                ("controller[requirement_collection]", "stripe"),
                ("capabilities[transfers][requested]", "true"),
                ("metadata[connect_flow_reference]", "seller-1"),
            ]
        );
        let bad = CreateAccount { capabilities: &["a]b"], ..account };
        assert!(matches!(account_params(&bad), Err(StripeError::Config(_))));
    }

    #[test]
    fn an_accounts_page_yields_the_referenced_account_the_next_cursor_or_the_end() {
        let account =
            |id: &str, reference: &str| json!({"id": id, "metadata": {REFERENCE_METADATA: reference}});
        let page =
            |data: Vec<Value>, has_more: bool| json!({"object": "list", "data": data, "has_more": has_more});
        let found = search_accounts(&page(vec![account("acct_2", "b"), account("acct_1", "a")], true), "a");
        assert_eq!(found.unwrap(), AccountSearch::Found(account("acct_1", "a")));
        let next = search_accounts(&page(vec![account("acct_2", "b")], true), "a").unwrap();
        assert_eq!(next, AccountSearch::Next("acct_2".into()));
        assert_eq!(search_accounts(&page(vec![], false), "a").unwrap(), AccountSearch::Exhausted);
        for malformed in
            [json!({}), page(vec![], true), page(vec![json!({"metadata": {REFERENCE_METADATA: "a"}})], false)]
        {
            assert!(search_accounts(&malformed, "a").unwrap_err().is_retryable(), "{malformed}");
        }
    }

    #[test]
    fn a_client_secret_never_shows_in_debug() {
        let session = AccountSession { client_secret: ClientSecret("cs_live_secret".into()), expires_at: 1 };
        assert!(!format!("{session:?}").contains("cs_live_secret"));
        assert_eq!(format!("{:?}", session.client_secret), "ClientSecret(<redacted>)");
        assert_eq!(session.client_secret.expose(), "cs_live_secret");
    }
}
