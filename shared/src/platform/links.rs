//! Onboarding links (with their signed refresh route), account sessions and Express login links.
//!
//! These create nothing that money depends on, and Stripe's links are single-use, so their
//! idempotency keys are derived from the call and the current second: a retry within the second
//! replays Stripe's answer, and a later call gets a fresh link.

use serde_json::{Value, json};

use super::request::{Fields, checked_url};
use super::token::{self, LinkGrant, TOKEN_LIFETIME_SECS};
use super::{ApiError, ApiReply, ApiRequest, PlatformApi, json_object};
use crate::clock::Clock;
use crate::domain::reference::digest;
use crate::store::AccountStore;
use crate::stripe::client::StripeError;
use crate::stripe::onboarding::{AccountLink, CreateAccountLink};

/// Stripe's refusal of a login link for an account without the Express dashboard says this.
const NOT_EXPRESS_PHRASE: &str = "not an Express account";

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    pub(super) async fn onboarding_link(
        &self,
        id: &str,
        request: &ApiRequest<'_>,
    ) -> Result<ApiReply, ApiError> {
        let object = json_object(request.body)?;
        let fields = Fields(&object);
        fields.only(&["type", "return_url", "collect"])?;
        let link_type = fields
            .optional_choice("type", &["account_onboarding", "account_update"])?
            .unwrap_or("account_onboarding");
        let return_url = checked_url("return_url", fields.required_str("return_url")?)?;
        let collect = fields.optional_choice("collect", &["currently_due", "eventually_due"])?;
        let account = self.known_account(id).await?;
        let secret = self.link_secret()?;
        let grant = LinkGrant {
            account: account.account_id,
            link_type: link_type.to_owned(),
            return_url,
            collect: collect.map(str::to_owned),
            expires_at: self.clock.now_unix() + TOKEN_LIFETIME_SECS,
        };
        let refresh_url =
            format!("{}/onboarding/refresh?token={}", self.public_url(request), token::sign(&grant, secret));
        let link = self.account_link(&grant, &refresh_url).await?;
        Ok(ApiReply::of(200, &json!({ "url": link.url, "expires_at": link.expires_at })))
    }

    /// The seller's browser, back from an expired link: a redirect to a fresh one for the token's
    /// account, or a plain 403 page, without any Stripe call, for anything but a valid token.
    pub(super) async fn refresh_link(&self, request: &ApiRequest<'_>) -> Result<ApiReply, ApiError> {
        let secret = self.link_secret().map_err(|_| ApiError::ForbiddenLink)?;
        let query = super::request::Query::parse(request.query);
        let grant = query
            .get("token")
            .and_then(|token| token::verify(token, secret, self.clock.now_unix()))
            .ok_or(ApiError::ForbiddenLink)?;
        // The same signed URL stays the refresh URL until the token expires.
        let refresh_url = format!("{}/onboarding/refresh?{}", self.public_url(request), request.query);
        let link = self.account_link(&grant, &refresh_url).await?;
        Ok(ApiReply {
            status: 302,
            content_type: "text/plain; charset=utf-8",
            body: String::new(),
            location: Some(link.url),
        })
    }

    async fn account_link(&self, grant: &LinkGrant, refresh_url: &str) -> Result<AccountLink, ApiError> {
        let create = CreateAccountLink {
            account: &grant.account,
            link_type: &grant.link_type,
            return_url: &grant.return_url,
            refresh_url,
            collect: grant.collect.as_deref(),
        };
        // Every parameter is in the key: the same key with other parameters would be Stripe's
        // idempotency_error.
        let call = format!(
            "{}|{}|{}|{}|{refresh_url}",
            grant.account,
            grant.link_type,
            grant.return_url,
            grant.collect.as_deref().unwrap_or_default()
        );
        Ok(self.stripe()?.create_account_link(&create, &self.call_key("link", &call)).await?)
    }

    pub(super) async fn account_session(&self, id: &str, body: &[u8]) -> Result<ApiReply, ApiError> {
        let object = json_object(body)?;
        Fields(&object).only(&["components"])?;
        let components = match object.get("components") {
            Some(Value::Object(components)) if !components.is_empty() => components,
            _ => return Err(ApiError::invalid("components", "components must name at least one component")),
        };
        for (name, component) in components {
            let valid_name = name.bytes().all(|byte| byte.is_ascii_lowercase() || byte == b'_');
            let enabled = component.get("enabled").is_some_and(Value::is_boolean);
            let features_ok = component.get("features").is_none_or(Value::is_object);
            let only_known = component
                .as_object()
                .is_some_and(|fields| fields.keys().all(|key| key == "enabled" || key == "features"));
            if !valid_name || !enabled || !features_ok || !only_known {
                return Err(ApiError::invalid(
                    "components",
                    "each component must be {\"enabled\": true|false, \"features\"?: {…}}",
                ));
            }
        }
        let account = self.known_account(id).await?;
        let components = Value::Object(components.clone());
        let call = format!("{}|{components}", account.account_id);
        let session = self
            .stripe()?
            .create_account_session(&account.account_id, &components, &self.call_key("session", &call))
            .await?;
        // The client secret goes to the caller only: it is never stored or logged.
        let body =
            json!({ "client_secret": session.client_secret.expose(), "expires_at": session.expires_at });
        Ok(ApiReply::of(200, &body))
    }

    pub(super) async fn login_link(&self, id: &str) -> Result<ApiReply, ApiError> {
        let account = self.known_account(id).await?;
        let key = self.call_key("login", account.account_id.as_str());
        match self.stripe()?.create_login_link(&account.account_id, &key).await {
            Ok(link) => Ok(ApiReply::of(200, &json!({ "url": link.url }))),
            Err(StripeError::Refused { status: 400, message, .. })
                if message.contains(NOT_EXPRESS_PHRASE) =>
            {
                Err(ApiError::NotExpress)
            }
            Err(error) => Err(error.into()),
        }
    }

    fn link_secret(&self) -> Result<&token::LinkSecret, ApiError> {
        self.settings.link_secret.as_ref().ok_or(ApiError::NotConfigured(
            "no onboarding link secret is configured (CONNECT_FLOW_LINK_SECRET)",
        ))
    }

    /// A key that replays a double-sent call (the same second) and nothing later: a link is
    /// single-use, so a seller back on the refresh route a few seconds on must get a fresh one.
    fn call_key(&self, what: &str, call: &str) -> String {
        format!("cf-{what}-{}-s{}", digest(call), self.clock.now_unix())
    }
}
