//! The stand-in's webhook endpoints and event destinations, for `connect-flow doctor`:
//! `GET /v1/webhook_endpoints` (paged as the stub's other v1 lists) and
//! `GET /v2/core/event_destinations` (paged by `next_page_url`, or 404 when the test says the
//! account does not have them). A key without the permission is [`StripeStub::deny_permission`].

use super::{Ledger, Listed, Paging, Refusal, Reply, Request, StripeStub};
use axum::http::Method;
use serde_json::{Value, json};

/// The page token prefix of the destinations list.
const PAGE_PREFIX: &str = "page_stub_ed_";

/// What the stub holds for these routes.
#[derive(Debug, Default)]
pub(super) struct Endpoints {
    /// Oldest first, as added.
    webhook_endpoints: Vec<StubWebhookEndpoint>,
    /// Oldest first, as added.
    destinations: Vec<Value>,
    /// Whether `GET /v2/core/event_destinations` answers 404, as for an account without them.
    destinations_unavailable: bool,
}

#[derive(Debug, Clone)]
struct StubWebhookEndpoint {
    id: String,
    created: i64,
    object: Value,
}

impl Listed for StubWebhookEndpoint {
    const OBJECT: &'static str = "webhook_endpoint";

    fn id(&self) -> &str {
        &self.id
    }

    fn created(&self) -> i64 {
        self.created
    }

    fn json(&self) -> Value {
        self.object.clone()
    }
}

/// The routes this module serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EndpointsRoute {
    ListWebhookEndpoints,
    ListEventDestinations,
}

/// The route `method` and `path` name, when it is one of these.
pub(super) fn route(method: &Method, path: &str) -> Option<EndpointsRoute> {
    match (method.as_str(), path.trim_end_matches('/')) {
        ("GET", "/v1/webhook_endpoints") => Some(EndpointsRoute::ListWebhookEndpoints),
        ("GET", "/v2/core/event_destinations") => Some(EndpointsRoute::ListEventDestinations),
        _ => None,
    }
}

/// Answers one request of these routes.
pub(super) fn execute(ledger: &Ledger, request: &Request, route: &EndpointsRoute) -> Result<Reply, Refusal> {
    match route {
        EndpointsRoute::ListWebhookEndpoints => {
            let paging = Paging::parse(&request.params, &[], false)?;
            Ok(paging.page("/v1/webhook_endpoints", &ledger.endpoints.webhook_endpoints, |_| true)?)
        }
        EndpointsRoute::ListEventDestinations => list_destinations(&ledger.endpoints, request),
    }
}

fn list_destinations(endpoints: &Endpoints, request: &Request) -> Result<Reply, Refusal> {
    if endpoints.destinations_unavailable {
        return Err(Refusal::Validation(Reply::unrecognized(&Method::GET, "/v2/core/event_destinations")));
    }
    let params = &request.params;
    params.only_exactly(&["limit", "page"])?;
    let limit = match params.integer("limit")? {
        None => 10,
        Some(limit @ 1..=100) => usize::try_from(limit).unwrap_or(100),
        Some(limit) => return Err(Reply::invalid(None, format!("Invalid limit: {limit}")).into()),
    };
    let start = match params.get("page") {
        None => 0,
        Some(token) => token
            .strip_prefix(PAGE_PREFIX)
            .and_then(|offset| offset.parse::<usize>().ok())
            .filter(|offset| *offset <= endpoints.destinations.len())
            .ok_or_else(|| Reply::invalid(None, format!("Invalid page: {token}")))?,
    };
    let end = (start + limit).min(endpoints.destinations.len());
    let data = &endpoints.destinations[start..end];
    let next_page_url = if end < endpoints.destinations.len() {
        json!(format!("/v2/core/event_destinations?limit={limit}&page={PAGE_PREFIX}{end}"))
    } else {
        Value::Null
    };
    Ok(Reply::ok(json!({ "data": data, "next_page_url": next_page_url, "previous_page_url": null })))
}

impl StripeStub {
    /// Adds a webhook endpoint: `endpoint`'s fields over Stripe's defaults (an id, `object`,
    /// `created` now, `application: null`, `status: "enabled"`, `api_version: null`). Returns its
    /// id. A Connect endpoint is one with an `application` (`ca_…`), as Stripe shows it.
    pub fn add_webhook_endpoint(&self, endpoint: Value) -> String {
        let mut ledger = self.shared.ledger();
        let id = match endpoint.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => ledger.next_id("we"),
        };
        let mut object = json!({
            "id": id, "object": "webhook_endpoint", "api_version": null, "application": null,
            "created": ledger.now, "description": null, "enabled_events": [], "livemode": false,
            "metadata": {}, "status": "enabled", "url": "",
        });
        if let (Some(fields), Some(target)) = (endpoint.as_object(), object.as_object_mut()) {
            for (name, value) in fields {
                target.insert(name.clone(), value.clone());
            }
        }
        let created = ledger.now;
        ledger.endpoints.webhook_endpoints.push(StubWebhookEndpoint { id: id.clone(), created, object });
        id
    }

    /// Adds an event destination, as `GET /v2/core/event_destinations` lists it: `destination`'s
    /// fields over the defaults of a thin webhook destination. Returns its id.
    pub fn add_event_destination(&self, destination: Value) -> String {
        let mut ledger = self.shared.ledger();
        let id = match destination.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => ledger.next_id("ed"),
        };
        let mut object = json!({
            "id": id, "object": "v2.core.event_destination", "type": "webhook_endpoint",
            "event_payload": "thin", "events_from": ["other_accounts"], "enabled_events": [],
            "status": "enabled", "status_details": null, "snapshot_api_version": null,
            "livemode": false, "metadata": {}, "name": "stub destination",
            "webhook_endpoint": {"signing_secret": null, "url": ""},
        });
        if let (Some(fields), Some(target)) = (destination.as_object(), object.as_object_mut()) {
            for (name, value) in fields {
                target.insert(name.clone(), value.clone());
            }
        }
        ledger.endpoints.destinations.push(object);
        id
    }

    /// Makes `GET /v2/core/event_destinations` answer 404, as for an account without them.
    pub fn remove_event_destinations_api(&self) {
        self.shared.ledger().endpoints.destinations_unavailable = true;
    }
}
