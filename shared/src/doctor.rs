//! `connect-flow doctor` and `GET /healthz?deep=1`: is Stripe set up to deliver what this
//! deployment handles? Pure decision functions over what Stripe lists, each answering
//! [`Finding`]s, and [`diagnose`], which makes the Stripe calls and runs them all.
//!
//! What Stripe's reference says, and what follows from it here:
//!
//! - **A Connect endpoint** is one created with `connect=true`; the webhook endpoint object has no
//!   `connect` field, but `application` ("the ID of the associated Connect application") is set on
//!   it, and null on an endpoint for the platform's own events.
//! - **`enabled_events`** lists event types, or `["*"]` for all of them.
//! - **`api_version`** is nullable: null renders events with the account's default version, which
//!   changes when the account is upgraded. The update call takes `description`, `disabled`,
//!   `enabled_events`, `metadata` and `url` but no `api_version`: a wrong version is fixed by
//!   creating a new endpoint and deleting the old one.
//! - **Secrets** are returned only at creation, so a wrong one shows only as signature failures
//!   here: [`SignatureFailures`].
//! - **Event destinations** (`GET /v2/core/event_destinations`, API v2) carry `type`
//!   (`webhook_endpoint`, `amazon_eventbridge`), `event_payload` (`snapshot`, `thin`), `status`
//!   and `webhook_endpoint.url`. An account without them answers 404.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::{Value, json};

use crate::stripe::client::{DEFAULT_API_BASE, STRIPE_VERSION, StripeClient, StripeError};
use crate::stripe::v2::STRIPE_V2_VERSION;

/// The path Stripe delivers to, under a deployment's base URL.
pub const WEBHOOK_PATH: &str = "/webhooks/stripe";
/// The CloudWatch alarm (logical id in `infra/template.yaml`) that watches signature failures of a
/// deployed stack.
pub const SIGNATURE_ALARM: &str = "WebhookSignatureFailuresAlarm";

/// How a finding reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// As it should be (or, said so, not checkable from here).
    Ok,
    /// Something Stripe should have is not there.
    Missing,
    /// Something is there but set wrongly, or a call was refused.
    Wrong,
}

impl Level {
    /// `ok`, `missing` or `wrong`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Missing => "missing",
            Self::Wrong => "wrong",
        }
    }
}

/// One thing the doctor found, with the call that fixes it when it is not `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Whether it is right.
    pub level: Level,
    /// What was found.
    pub what: String,
    /// The Stripe call (or step) that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Self {
        Self { level: Level::Ok, what: what.into(), fix: None }
    }

    fn missing(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { level: Level::Missing, what: what.into(), fix: Some(fix.into()) }
    }

    fn wrong(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { level: Level::Wrong, what: what.into(), fix: Some(fix.into()) }
    }

    /// The one line the doctor prints: `ok …`, or `missing …; fix: …`.
    pub fn line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{} {}; fix: {fix}", self.level.as_str(), self.what),
            None => format!("{} {}", self.level.as_str(), self.what),
        }
    }
}

/// Whether every finding is `ok`.
pub fn all_ok(findings: &[Finding]) -> bool {
    findings.iter().all(|finding| finding.level == Level::Ok)
}

/// Which of the two endpoints an event type must be enabled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The Connect endpoint: events on connected accounts.
    Connect,
    /// The account endpoint: the platform's own events.
    Account,
}

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "Connect endpoint",
            Self::Account => "account endpoint",
        }
    }
}

/// A snapshot event type Connect Flow acts on, and where Stripe must send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandledEvent {
    /// The Stripe event type.
    pub event_type: &'static str,
    /// The endpoint it must be enabled on.
    pub listener: Listener,
}

const fn connect(event_type: &'static str) -> HandledEvent {
    HandledEvent { event_type, listener: Listener::Connect }
}

const fn account(event_type: &'static str) -> HandledEvent {
    HandledEvent { event_type, listener: Listener::Account }
}

/// Every snapshot event type the parsers act on (`AccountEventKind::of` and `read_fund_event`):
/// account state and connected accounts' balances and payouts arrive on the Connect endpoint; the
/// platform's payments, refunds, disputes and transfers on the account endpoint. A unit test ties
/// this list to the parsers' source, so that a newly handled type cannot be left out.
pub const HANDLED_EVENT_TYPES: &[HandledEvent] = &[
    connect("account.updated"),
    connect("account.application.authorized"),
    connect("account.application.deauthorized"),
    connect("capability.updated"),
    connect("account.external_account.created"),
    connect("account.external_account.updated"),
    connect("account.external_account.deleted"),
    connect("person.created"),
    connect("person.updated"),
    connect("person.deleted"),
    connect("balance.available"),
    connect("payout.paid"),
    connect("payout.failed"),
    connect("payout.canceled"),
    account("payment_intent.succeeded"),
    account("charge.succeeded"),
    account("charge.captured"),
    account("charge.refunded"),
    account("charge.refund.updated"),
    account("refund.updated"),
    account("refund.failed"),
    account("charge.dispute.created"),
    account("charge.dispute.updated"),
    account("charge.dispute.closed"),
    account("charge.dispute.funds_withdrawn"),
    account("charge.dispute.funds_reinstated"),
    account("transfer.created"),
    account("transfer.updated"),
    account("transfer.reversed"),
];

/// A webhook endpoint as `GET /v1/webhook_endpoints` lists it, read leniently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebhookEndpoint {
    /// `we_…`.
    pub id: String,
    /// Where Stripe delivers.
    pub url: String,
    /// Whether it receives events on connected accounts (`application` set).
    pub connect: bool,
    /// The enabled types; `*` is all.
    pub enabled_events: Vec<String>,
    /// The version events are rendered with; `None` is the account's default.
    pub api_version: Option<String>,
    /// `enabled` or `disabled`.
    pub status: String,
}

impl WebhookEndpoint {
    /// Reads one listed object; `None` without an id.
    pub(crate) fn from_json(object: &Value) -> Option<Self> {
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
        let application = object.get("application").is_some_and(|value| !value.is_null());
        // Not in Stripe's object, but a caller's own JSON (or an older stand-in) may say it.
        let connect_flag = object.get("connect").and_then(Value::as_bool) == Some(true);
        Some(Self {
            id: text("id")?,
            url: text("url").unwrap_or_default(),
            connect: application || connect_flag,
            enabled_events: string_list(object.get("enabled_events")),
            api_version: text("api_version"),
            status: text("status").unwrap_or_else(|| "unknown".to_owned()),
        })
    }

    fn listener(&self) -> Listener {
        if self.connect { Listener::Connect } else { Listener::Account }
    }

    fn enables(&self, event_type: &str) -> bool {
        self.enabled_events.iter().any(|enabled| enabled == "*" || enabled == event_type)
    }
}

/// An event destination as `GET /v2/core/event_destinations` lists it, read leniently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventDestination {
    /// `ed_…`.
    pub id: String,
    /// `webhook_endpoint` or `amazon_eventbridge`.
    pub kind: String,
    /// `webhook_endpoint.url`, for a webhook destination.
    pub url: Option<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `snapshot` or `thin`.
    pub event_payload: String,
    /// The version a snapshot destination renders events with.
    pub snapshot_api_version: Option<String>,
}

impl EventDestination {
    /// Reads one listed object; `None` without an id.
    pub(crate) fn from_json(object: &Value) -> Option<Self> {
        let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            id: text("id")?,
            kind: text("type").unwrap_or_default(),
            url: object.pointer("/webhook_endpoint/url").and_then(Value::as_str).map(str::to_owned),
            status: text("status").unwrap_or_else(|| "unknown".to_owned()),
            event_payload: text("event_payload").unwrap_or_default(),
            snapshot_api_version: text("snapshot_api_version"),
        })
    }
}

/// What `GET /v2/core/event_destinations` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destinations {
    /// 404: the account has no event destinations API.
    NotAvailable,
    /// The destinations.
    Listed(Vec<EventDestination>),
}

/// Where the count of deliveries refused for their signature comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureFailures {
    /// Counted in this process (`serve`) since it started.
    InProcess(u64),
    /// A deployed stack: CloudWatch holds the count, which nothing here reads.
    Deployed,
    /// Not checked, and why.
    NotChecked(String),
}

/// Deliveries refused for their signature since the process started: `serve` shares one between
/// its webhook and its platform API, for `healthz?deep=1`.
#[derive(Debug, Clone, Default)]
pub struct SignatureFailureCount(Arc<AtomicU64>);

impl SignatureFailureCount {
    /// Counts one refused delivery.
    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `{deployment}/webhooks/stripe`, the URL both endpoints must point at.
pub fn webhook_url(deployment_url: &str) -> String {
    format!("{}{WEBHOOK_PATH}", deployment_url.trim().trim_end_matches('/'))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Quotes `value` for a POSIX shell when it holds anything but plain URL and id characters.
fn shell_quote(value: &str) -> String {
    let plain =
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
    if plain { value.to_owned() } else { format!("'{}'", value.replace('\'', r"'\''")) }
}

fn curl_v1(path: &str) -> String {
    format!("curl {DEFAULT_API_BASE}{path} -u \"$STRIPE_API_KEY:\"")
}

fn events_params(events: &[&str]) -> String {
    events.iter().map(|event| format!(" -d {}", shell_quote(&format!("enabled_events[]={event}")))).collect()
}

/// The call that creates an endpoint of `listener`'s kind at `url` with `events`.
fn create_call(listener: Listener, url: &str, events: &[&str], version: &str) -> String {
    let connect = if listener == Listener::Connect { " -d connect=true" } else { "" };
    format!(
        "{} -d url={}{connect} -d api_version={}{}, then add the whsec_ secret it returns to \
         STRIPE_WEBHOOK_SECRETS",
        curl_v1("/v1/webhook_endpoints"),
        shell_quote(url),
        shell_quote(version),
        events_params(events)
    )
}

/// The handled types `listener` must receive.
fn handled_for(handled: &[HandledEvent], listener: Listener) -> Vec<&'static str> {
    handled.iter().filter(|event| event.listener == listener).map(|event| event.event_type).collect()
}

/// The endpoint findings: one Connect and one account endpoint at `webhook_url` (any URL when
/// `None`, said so), each `enabled`, on `pinned_version`, with every `handled` type of its kind.
pub(crate) fn check_endpoints(
    endpoints: &[WebhookEndpoint],
    webhook_url: Option<&str>,
    handled: &[HandledEvent],
    pinned_version: &str,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for listener in [Listener::Connect, Listener::Account] {
        let of_kind: Vec<&WebhookEndpoint> =
            endpoints.iter().filter(|endpoint| endpoint.listener() == listener).collect();
        let at_url: Vec<&WebhookEndpoint> = of_kind
            .iter()
            .copied()
            .filter(|endpoint| webhook_url.is_none_or(|url| same_url(&endpoint.url, url)))
            .collect();
        let wanted = handled_for(handled, listener);
        let name = listener.name();
        if at_url.is_empty() {
            let (target, url_for_fix) = match webhook_url {
                Some(url) => (format!("{name} at {url}"), url.to_owned()),
                None => (
                    format!("{name} (the URL was not checked: no deployment URL given)"),
                    format!("DEPLOYMENT_URL{WEBHOOK_PATH}"),
                ),
            };
            let elsewhere: Vec<String> =
                of_kind.iter().map(|endpoint| format!("{} at {}", endpoint.id, endpoint.url)).collect();
            let what = if elsewhere.is_empty() {
                target
            } else {
                format!("{target} (the {name}s point elsewhere: {})", elsewhere.join(", "))
            };
            findings
                .push(Finding::missing(what, create_call(listener, &url_for_fix, &wanted, pinned_version)));
            continue;
        }
        let url_note =
            if webhook_url.is_some() { "" } else { " (the URL was not checked: no deployment URL given)" };
        for endpoint in &at_url {
            findings.push(Finding::ok(format!("{name} {} at {}{url_note}", endpoint.id, endpoint.url)));
            findings.push(check_status(name, endpoint));
            findings.push(check_version(listener, endpoint, &wanted, pinned_version));
        }
        findings.push(check_events(listener, &at_url, &wanted));
    }
    findings
}

fn check_status(name: &str, endpoint: &WebhookEndpoint) -> Finding {
    if endpoint.status == "enabled" {
        Finding::ok(format!("{name} {} is enabled", endpoint.id))
    } else {
        Finding::wrong(
            format!("{name} {} is {}: Stripe delivers nothing to it", endpoint.id, endpoint.status),
            format!(
                "{} -d disabled=false",
                curl_v1(&format!("/v1/webhook_endpoints/{}", shell_quote(&endpoint.id)))
            ),
        )
    }
}

fn check_version(
    listener: Listener,
    endpoint: &WebhookEndpoint,
    wanted: &[&str],
    pinned_version: &str,
) -> Finding {
    let name = listener.name();
    let problem = match endpoint.api_version.as_deref() {
        Some(version) if version == pinned_version => {
            return Finding::ok(format!("{name} {} renders events as {version}", endpoint.id));
        }
        Some(version) => format!("renders events as {version}, not {pinned_version}"),
        None => format!(
            "has no api_version: events follow the account's default version, which may change, \
             not {pinned_version}"
        ),
    };
    // The update call takes no api_version: only a new endpoint can have another.
    let mut events: Vec<&str> = endpoint.enabled_events.iter().map(String::as_str).collect();
    for event in wanted {
        if !events.contains(&"*") && !events.contains(event) {
            events.push(event);
        }
    }
    Finding::wrong(
        format!("{name} {} {problem}, the version the parsers are tested with", endpoint.id),
        format!(
            "{}; then delete the old one: {} -X DELETE",
            create_call(listener, &endpoint.url, &events, pinned_version),
            curl_v1(&format!("/v1/webhook_endpoints/{}", shell_quote(&endpoint.id)))
        ),
    )
}

/// Every wanted type must be enabled on some enabled endpoint of the kind at the URL.
fn check_events(listener: Listener, at_url: &[&WebhookEndpoint], wanted: &[&str]) -> Finding {
    let name = listener.name();
    let live: Vec<&&WebhookEndpoint> =
        at_url.iter().filter(|endpoint| endpoint.status == "enabled").collect();
    let receiving = if live.is_empty() { at_url.iter().collect() } else { live };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|event| !receiving.iter().any(|endpoint| endpoint.enables(event)))
        .collect();
    let Some(first) = receiving.first() else {
        return Finding::missing(format!("{name}: no endpoint to enable events on"), "create it (above)");
    };
    if missing.is_empty() {
        return Finding::ok(format!("{name}: all {} handled event types are enabled", wanted.len()));
    }
    // The update replaces the list: send what is enabled now and what is missing.
    let mut events: Vec<&str> = first.enabled_events.iter().map(String::as_str).collect();
    events.extend(missing.iter().copied());
    let unique: BTreeSet<&str> = events.iter().copied().collect();
    let events: Vec<&str> = unique.into_iter().collect();
    Finding::missing(
        format!("{name} {} does not receive {}", first.id, missing.join(", ")),
        format!(
            "{}{}",
            curl_v1(&format!("/v1/webhook_endpoints/{}", shell_quote(&first.id))),
            events_params(&events)
        ),
    )
}

/// The event destination findings: not available is fine (said so); each webhook destination at
/// `webhook_url` (every one when `None`) must be enabled, and a snapshot one on `pinned_version`.
pub(crate) fn check_destinations(
    destinations: &Destinations,
    webhook_url: Option<&str>,
    pinned_version: &str,
) -> Vec<Finding> {
    let listed = match destinations {
        Destinations::NotAvailable => {
            return vec![Finding::ok(
                "event destinations: GET /v2/core/event_destinations is not available on this account \
                 (404), so there are none to check",
            )];
        }
        Destinations::Listed(listed) => listed,
    };
    let ours: Vec<&EventDestination> = listed
        .iter()
        .filter(|d| d.kind == "webhook_endpoint")
        .filter(|d| webhook_url.is_none_or(|url| d.url.as_deref().is_some_and(|own| same_url(own, url))))
        .collect();
    if ours.is_empty() {
        return vec![Finding::ok(format!(
            "event destinations: {} listed, none a webhook destination{} (needed only for thin events on \
             Accounts v2)",
            listed.len(),
            webhook_url.map(|url| format!(" at {url}")).unwrap_or_default()
        ))];
    }
    let mut findings = Vec::new();
    for destination in ours {
        let id = &destination.id;
        let what = format!(
            "event destination {id} ({}) at {}",
            destination.event_payload,
            destination.url.as_deref().unwrap_or("?")
        );
        if destination.status == "enabled" {
            findings.push(Finding::ok(format!("{what} is enabled")));
        } else {
            findings.push(Finding::wrong(
                format!("{what} is {}: Stripe delivers nothing to it", destination.status),
                format!(
                    "curl -X POST {DEFAULT_API_BASE}/v2/core/event_destinations/{}/enable \
                     -H \"Authorization: Bearer $STRIPE_API_KEY\" \
                     -H \"Stripe-Version: {STRIPE_V2_VERSION}\"",
                    shell_quote(id)
                ),
            ));
        }
        if destination.event_payload == "snapshot" {
            match destination.snapshot_api_version.as_deref() {
                Some(version) if version == pinned_version => {}
                other => findings.push(Finding::wrong(
                    format!(
                        "{what} renders snapshot events as {}, not {pinned_version}",
                        other.unwrap_or("the account's default")
                    ),
                    format!(
                        "create a new destination with snapshot_api_version={pinned_version} and delete \
                         this one: curl -X DELETE {DEFAULT_API_BASE}/v2/core/event_destinations/{} \
                         -H \"Authorization: Bearer $STRIPE_API_KEY\" \
                         -H \"Stripe-Version: {STRIPE_V2_VERSION}\"",
                        shell_quote(id)
                    ),
                )),
            }
        }
    }
    findings
}

/// The signature-failure finding. Stripe never returns a secret, so a wrong or missing one shows
/// only here; a count that was not read is said to be so, never reported as zero.
pub(crate) fn check_signature_failures(source: &SignatureFailures) -> Finding {
    match source {
        SignatureFailures::InProcess(0) => Finding::ok("signature failures: 0 since serve started"),
        SignatureFailures::InProcess(count) => Finding::wrong(
            format!(
                "signature failures: {count} deliveries refused for their signature since serve started \
                 (a signing secret missing from STRIPE_WEBHOOK_SECRETS, or someone probing the URL)"
            ),
            "add each endpoint's whsec_ signing secret (Dashboard, Developers, Webhooks, the endpoint, \
             Signing secret; `stripe listen` prints its own) to STRIPE_WEBHOOK_SECRETS, comma-separated, \
             and restart",
        ),
        SignatureFailures::Deployed => Finding::ok(format!(
            "signature failures: not checked here; on AWS the {SIGNATURE_ALARM} alarm watches the \
             SignatureFailures metric (namespace ConnectFlow/STACK_NAME): aws cloudwatch \
             describe-alarms --alarm-name-prefix STACK_NAME-{SIGNATURE_ALARM}"
        )),
        SignatureFailures::NotChecked(why) => Finding::ok(format!("signature failures: not checked ({why})")),
    }
}

/// A Stripe call that failed: refused (a key without the permission, or an invalid key) or not
/// answered. Named, so that the operator knows which permission to grant.
pub fn failed_call(call: &str, error: &StripeError) -> Finding {
    if error.refused_platform_key() {
        let permission = if call.contains("event_destinations") {
            "Webhook Endpoints, Event Destinations: Read"
        } else {
            "Webhook Endpoints: Read (webhook_read)"
        };
        Finding::wrong(
            format!("{call} was refused: {error}"),
            format!(
                "use the platform's secret key, or give the restricted key the \"{permission}\" \
                 permission (Dashboard, Developers, API keys)"
            ),
        )
    } else {
        Finding::wrong(
            format!("{call} failed: {error}"),
            "check STRIPE_API_KEY and STRIPE_API_BASE, then run the doctor again",
        )
    }
}

/// Lists what Stripe has and runs every check: the Stripe calls are
/// [`StripeClient::list_webhook_endpoints`] and [`StripeClient::list_event_destinations`].
pub async fn diagnose(
    stripe: &StripeClient,
    webhook_url: Option<&str>,
    signatures: &SignatureFailures,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    match stripe.list_webhook_endpoints().await {
        Ok(objects) => {
            let endpoints: Vec<WebhookEndpoint> =
                objects.iter().filter_map(WebhookEndpoint::from_json).collect();
            findings.extend(check_endpoints(&endpoints, webhook_url, HANDLED_EVENT_TYPES, STRIPE_VERSION));
        }
        Err(error) => findings.push(failed_call("GET /v1/webhook_endpoints", &error)),
    }
    match stripe.list_event_destinations().await {
        Ok(None) => {
            findings.extend(check_destinations(&Destinations::NotAvailable, webhook_url, STRIPE_VERSION))
        }
        Ok(Some(objects)) => {
            let listed = objects.iter().filter_map(EventDestination::from_json).collect();
            findings.extend(check_destinations(&Destinations::Listed(listed), webhook_url, STRIPE_VERSION));
        }
        Err(error) => findings.push(failed_call("GET /v2/core/event_destinations", &error)),
    }
    findings.push(check_signature_failures(signatures));
    findings
}

/// The findings as `healthz?deep=1` answers them, with the in-process count when there is one.
pub(crate) fn report_json(findings: &[Finding], signature_failures: Option<u64>) -> Value {
    json!({
        "status": if all_ok(findings) { "ok" } else { "failing" },
        "findings": findings,
        "signature_failures": signature_failures,
    })
}

/// Whether a `/healthz` query asks for the deep check (`deep=1` or `deep=true`).
pub(crate) fn asks_deep(query: &str) -> bool {
    query.split('&').any(|pair| matches!(pair, "deep=1" | "deep=true"))
}

/// `healthz?deep=1`: the doctor's checks with the platform's key against `{public_url}/webhooks/
/// stripe`; 200 when every finding is `ok`, 503 otherwise, and 503 naming the problem without a
/// key. `count` is `serve`'s in-process count; a deployed stack has none and says whose it is.
pub(crate) async fn deep_health(
    stripe: Option<&StripeClient>,
    public_url: &str,
    count: Option<&SignatureFailureCount>,
) -> (u16, Value) {
    let signatures = match count {
        Some(count) => SignatureFailures::InProcess(count.get()),
        None => SignatureFailures::Deployed,
    };
    let in_process = count.map(SignatureFailureCount::get);
    let findings = match stripe {
        Some(stripe) => {
            // Without a known origin, any endpoint counts, and the findings say the URL was not checked.
            let target = (!public_url.trim().is_empty()).then(|| webhook_url(public_url));
            diagnose(stripe, target.as_deref(), &signatures).await
        }
        None => vec![
            Finding::missing(
                "Stripe key: STRIPE_API_KEY is not configured, so the Stripe set-up cannot be checked",
                "set STRIPE_API_KEY (deployed: the Stripe key secret) and restart",
            ),
            check_signature_failures(&signatures),
        ],
    };
    let status = if all_ok(&findings) { 200 } else { 503 };
    (status, report_json(&findings, in_process))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::AccountEventKind;

    const URL: &str = "https://cf.example/webhooks/stripe";

    fn endpoint(id: &str, connect: bool, events: &[&str]) -> WebhookEndpoint {
        WebhookEndpoint {
            id: id.to_owned(),
            url: URL.to_owned(),
            connect,
            enabled_events: events.iter().map(|e| (*e).to_owned()).collect(),
            api_version: Some(STRIPE_VERSION.to_owned()),
            status: "enabled".to_owned(),
        }
    }

    fn all_of(listener: Listener) -> Vec<&'static str> {
        handled_for(HANDLED_EVENT_TYPES, listener)
    }

    fn good() -> Vec<WebhookEndpoint> {
        vec![
            endpoint("we_connect", true, &all_of(Listener::Connect)),
            endpoint("we_account", false, &all_of(Listener::Account)),
        ]
    }

    fn check(endpoints: &[WebhookEndpoint], url: Option<&str>) -> Vec<Finding> {
        check_endpoints(endpoints, url, HANDLED_EVENT_TYPES, STRIPE_VERSION)
    }

    fn not_ok(findings: &[Finding]) -> Vec<&Finding> {
        findings.iter().filter(|f| f.level != Level::Ok).collect()
    }

    /// The string literals that look like event types in `source` between `start` and the end of
    /// the item (the first line that is a lone closing brace at its indentation).
    fn event_literals(source: &str, start: &str) -> BTreeSet<String> {
        let from = source.find(start).expect("the parser is where the test looks");
        let body = &source[from..];
        let end = body.find("\n}\n").expect("the item ends");
        body[..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|literal| {
                literal.contains('.')
                    && literal.split('.').all(|part| {
                        !part.is_empty()
                            && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    })
            })
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_handled_list_is_exactly_what_the_parsers_match() {
        let mut parsed = event_literals(include_str!("domain/account.rs"), "impl AccountEventKind {");
        // A fetched v2 account is an internal kind: Stripe never sends it as an event type.
        assert!(parsed.remove("v2.core.account"), "the v2 fetched kind moved: update this test");
        parsed.extend(event_literals(include_str!("domain/funds.rs"), "pub fn read_fund_event"));
        let listed: BTreeSet<String> =
            HANDLED_EVENT_TYPES.iter().map(|event| event.event_type.to_owned()).collect();
        assert_eq!(listed.len(), HANDLED_EVENT_TYPES.len(), "a type is listed twice");
        assert_eq!(listed, parsed, "HANDLED_EVENT_TYPES and the parsers disagree");
        for event in HANDLED_EVENT_TYPES {
            let account_kind = AccountEventKind::of(event.event_type).is_some();
            if account_kind {
                assert_eq!(
                    event.listener,
                    Listener::Connect,
                    "{} is about connected accounts",
                    event.event_type
                );
            }
        }
    }

    #[test]
    fn a_complete_set_up_is_all_ok_and_names_both_endpoints() {
        let findings = check(&good(), Some(URL));
        assert!(all_ok(&findings), "{findings:#?}");
        let lines: Vec<String> = findings.iter().map(Finding::line).collect();
        assert!(lines.iter().any(|l| l.starts_with("ok Connect endpoint we_connect at ")), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("ok account endpoint we_account at ")), "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains("not checked")), "{lines:?}");
    }

    #[test]
    fn a_wildcard_counts_as_every_type() {
        let endpoints = vec![endpoint("we_c", true, &["*"]), endpoint("we_a", false, &["*"])];
        assert!(all_ok(&check(&endpoints, Some(URL))));
    }

    #[test]
    fn a_missing_connect_endpoint_is_missing_with_the_create_call() {
        let endpoints = vec![endpoint("we_account", false, &all_of(Listener::Account))];
        let findings = check(&endpoints, Some(URL));
        let bad = not_ok(&findings);
        assert_eq!(bad.len(), 1, "{findings:#?}");
        assert_eq!(bad[0].level, Level::Missing);
        assert!(bad[0].what.starts_with("Connect endpoint at https://cf.example/webhooks/stripe"));
        let fix = bad[0].fix.as_deref().unwrap();
        assert!(fix.starts_with("curl https://api.stripe.com/v1/webhook_endpoints -u \"$STRIPE_API_KEY:\""));
        assert!(fix.contains("-d url=https://cf.example/webhooks/stripe -d connect=true"), "{fix}");
        assert!(fix.contains(&format!("-d api_version={STRIPE_VERSION}")), "{fix}");
        for event in all_of(Listener::Connect) {
            assert!(fix.contains(&format!("-d 'enabled_events[]={event}'")), "{event} in {fix}");
        }
        assert!(!fix.contains("charge.refunded"), "the platform's types stay on the account endpoint");
    }

    #[test]
    fn an_endpoint_at_another_url_does_not_count_and_is_named() {
        let mut endpoints = good();
        endpoints[0].url = "https://old.example/webhooks/stripe".to_owned();
        let findings = check(&endpoints, Some(URL));
        let bad = not_ok(&findings);
        assert_eq!(bad.len(), 1, "{findings:#?}");
        assert!(bad[0].what.contains("we_connect at https://old.example/webhooks/stripe"), "{}", bad[0].what);
        // Without a URL, any endpoint counts, and the line says the URL was not checked.
        let findings = check(&endpoints, None);
        assert!(all_ok(&findings));
        assert!(findings[0].what.contains("the URL was not checked"), "{}", findings[0].what);
    }

    #[test]
    fn a_missing_event_type_is_missing_with_an_update_that_keeps_the_others() {
        let mut connect = all_of(Listener::Connect);
        connect.retain(|event| *event != "payout.failed");
        let endpoints = vec![
            endpoint("we_connect", true, &connect),
            endpoint("we_account", false, &all_of(Listener::Account)),
        ];
        let findings = check(&endpoints, Some(URL));
        let bad = not_ok(&findings);
        assert_eq!(bad.len(), 1, "{findings:#?}");
        assert_eq!(bad[0].level, Level::Missing);
        assert_eq!(bad[0].what, "Connect endpoint we_connect does not receive payout.failed");
        let fix = bad[0].fix.as_deref().unwrap();
        assert!(fix.starts_with("curl https://api.stripe.com/v1/webhook_endpoints/we_connect "), "{fix}");
        for event in all_of(Listener::Connect) {
            assert!(fix.contains(&format!("'enabled_events[]={event}'")), "{event} kept in {fix}");
        }
    }

    #[test]
    fn an_event_on_the_wrong_endpoint_is_missing_on_the_right_one() {
        let mut account = all_of(Listener::Account);
        account.push("account.updated");
        let mut connect = all_of(Listener::Connect);
        connect.retain(|event| *event != "account.updated");
        let endpoints = vec![endpoint("we_connect", true, &connect), endpoint("we_account", false, &account)];
        let bad: Vec<String> = not_ok(&check(&endpoints, Some(URL))).iter().map(|f| f.what.clone()).collect();
        assert_eq!(bad, ["Connect endpoint we_connect does not receive account.updated"]);
    }

    #[test]
    fn a_wrong_or_null_api_version_is_wrong_with_create_and_delete() {
        for version in [Some("2020-08-27"), None] {
            let mut endpoints = good();
            endpoints[1].api_version = version.map(str::to_owned);
            let findings = check(&endpoints, Some(URL));
            let bad = not_ok(&findings);
            assert_eq!(bad.len(), 1, "{findings:#?}");
            assert_eq!(bad[0].level, Level::Wrong);
            match version {
                Some(v) => {
                    assert!(bad[0].what.contains(&format!("renders events as {v}, not {STRIPE_VERSION}")))
                }
                None => assert!(bad[0].what.contains("account's default version"), "{}", bad[0].what),
            }
            let fix = bad[0].fix.as_deref().unwrap();
            assert!(fix.contains(&format!("-d api_version={STRIPE_VERSION}")), "{fix}");
            assert!(!fix.contains("connect=true"), "an account endpoint is recreated as one: {fix}");
            assert!(
                fix.ends_with("/v1/webhook_endpoints/we_account -u \"$STRIPE_API_KEY:\" -X DELETE"),
                "{fix}"
            );
        }
    }

    #[test]
    fn a_disabled_endpoint_is_wrong_and_its_events_do_not_count() {
        let mut endpoints = good();
        endpoints[0].status = "disabled".to_owned();
        let findings = check(&endpoints, Some(URL));
        let bad = not_ok(&findings);
        assert_eq!(bad.len(), 1, "{findings:#?}");
        assert_eq!(bad[0].what, "Connect endpoint we_connect is disabled: Stripe delivers nothing to it");
        assert_eq!(
            bad[0].fix.as_deref(),
            Some(
                "curl https://api.stripe.com/v1/webhook_endpoints/we_connect -u \"$STRIPE_API_KEY:\" -d disabled=false"
            )
        );
        // An enabled twin covers the types; the disabled one's list does not.
        let mut twin = endpoint("we_twin", true, &["account.updated"]);
        twin.status = "enabled".to_owned();
        endpoints.push(twin);
        let events: Vec<String> =
            not_ok(&check(&endpoints, Some(URL))).iter().map(|f| f.what.clone()).collect();
        assert!(
            events.iter().any(|w| w.starts_with("Connect endpoint we_twin does not receive ")
                && w.contains("capability.updated")
                && !w.contains("receive account.updated")),
            "{events:?}"
        );
    }

    #[test]
    fn endpoints_are_read_from_stripes_objects() {
        let connect = WebhookEndpoint::from_json(&json!({
            "id": "we_1", "object": "webhook_endpoint", "application": "ca_123", "url": URL,
            "enabled_events": ["*"], "api_version": null, "status": "enabled",
        }))
        .unwrap();
        assert!(connect.connect);
        assert_eq!(connect.api_version, None);
        let own =
            WebhookEndpoint::from_json(&json!({"id": "we_2", "application": null, "url": URL})).unwrap();
        assert!(!own.connect);
        assert_eq!(own.status, "unknown");
        assert_eq!(WebhookEndpoint::from_json(&json!({"url": URL})), None);
        let destination = EventDestination::from_json(&json!({
            "id": "ed_1", "type": "webhook_endpoint", "event_payload": "thin", "status": "disabled",
            "webhook_endpoint": {"url": URL, "signing_secret": null},
        }))
        .unwrap();
        assert_eq!(destination.url.as_deref(), Some(URL));
        assert_eq!(destination.status, "disabled");
    }

    #[test]
    fn destinations_not_available_are_ok_and_a_disabled_one_is_wrong() {
        let findings = check_destinations(&Destinations::NotAvailable, Some(URL), STRIPE_VERSION);
        assert!(all_ok(&findings));
        assert!(findings[0].what.contains("not available"));
        let thin = |status: &str| EventDestination {
            id: "ed_1".into(),
            kind: "webhook_endpoint".into(),
            url: Some(URL.into()),
            status: status.into(),
            event_payload: "thin".into(),
            snapshot_api_version: None,
        };
        assert!(all_ok(&check_destinations(
            &Destinations::Listed(vec![thin("enabled")]),
            Some(URL),
            STRIPE_VERSION
        )));
        let findings =
            check_destinations(&Destinations::Listed(vec![thin("disabled")]), Some(URL), STRIPE_VERSION);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].level, Level::Wrong);
        assert!(findings[0].fix.as_deref().unwrap().contains("/v2/core/event_destinations/ed_1/enable"));
        let snapshot = EventDestination {
            event_payload: "snapshot".into(),
            snapshot_api_version: Some("2019-01-01".into()),
            ..thin("enabled")
        };
        let findings = check_destinations(&Destinations::Listed(vec![snapshot]), Some(URL), STRIPE_VERSION);
        assert_eq!(not_ok(&findings).len(), 1, "{findings:#?}");
        // Another deployment's destination is not ours to judge.
        let elsewhere =
            EventDestination { url: Some("https://other.example/hook".into()), ..thin("disabled") };
        assert!(all_ok(&check_destinations(
            &Destinations::Listed(vec![elsewhere]),
            Some(URL),
            STRIPE_VERSION
        )));
    }

    #[test]
    fn signature_failures_are_ok_only_at_zero_and_never_claimed_unchecked() {
        assert_eq!(check_signature_failures(&SignatureFailures::InProcess(0)).level, Level::Ok);
        let failing = check_signature_failures(&SignatureFailures::InProcess(3));
        assert_eq!(failing.level, Level::Wrong);
        assert!(failing.what.contains("3 deliveries"));
        assert!(failing.fix.as_deref().unwrap().contains("STRIPE_WEBHOOK_SECRETS"));
        let deployed = check_signature_failures(&SignatureFailures::Deployed);
        assert_eq!(deployed.level, Level::Ok);
        assert!(deployed.what.contains("not checked") && deployed.what.contains(SIGNATURE_ALARM));
        let unchecked = check_signature_failures(&SignatureFailures::NotChecked("no --url".into()));
        assert!(unchecked.what.contains("not checked (no --url)"));
    }

    #[test]
    fn a_refused_call_is_wrong_and_names_the_call_and_the_permission() {
        let refused = StripeError::Refused {
            status: 403,
            code: None,
            decline_code: None,
            message: "The provided key 'rk_test_***abcd' does not have the required permissions".into(),
        };
        let finding = failed_call("GET /v1/webhook_endpoints", &refused);
        assert_eq!(finding.level, Level::Wrong);
        assert!(finding.what.starts_with("GET /v1/webhook_endpoints was refused"));
        assert!(finding.fix.as_deref().unwrap().contains("webhook_read"));
        let down = StripeError::Retryable { status: None, message: "connection failed".into() };
        assert!(failed_call("GET /v1/webhook_endpoints", &down).what.contains("failed: "));
    }

    #[test]
    fn fixes_quote_what_a_shell_would_split() {
        assert_eq!(shell_quote("https://a.example/webhooks/stripe"), "https://a.example/webhooks/stripe");
        assert_eq!(shell_quote("https://a.example/x?a=1&b=2"), "'https://a.example/x?a=1&b=2'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(webhook_url("https://a.example/"), "https://a.example/webhooks/stripe");
    }

    #[test]
    fn the_report_says_failing_unless_every_finding_is_ok() {
        let ok = [Finding::ok("x")];
        assert_eq!(report_json(&ok, Some(0))["status"], "ok");
        let bad = [Finding::ok("x"), Finding::missing("y", "z")];
        let report = report_json(&bad, None);
        assert_eq!(report["status"], "failing");
        assert_eq!(report["findings"][1]["level"], "missing");
        assert_eq!(report["findings"][1]["fix"], "z");
        assert!(report["signature_failures"].is_null());
    }
}
