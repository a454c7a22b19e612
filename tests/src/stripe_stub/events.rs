//! The stand-in's event lists: `GET /v1/events` (the platform's, or a connected account's under
//! `Stripe-Account`) and `GET /v2/core/events`, over the events a test emitted.

use serde_json::{Value, json};

use super::{Ledger, Refusal, Reply, Request, rfc3339};

/// An event a test emitted, as `GET /v1/events` lists it.
#[derive(Debug, Clone)]
pub(super) struct StubEvent {
    pub(super) id: String,
    pub(super) created: i64,
    /// The connected account it happened on (`None`: the platform).
    pub(super) account: Option<String>,
    pub(super) event_type: String,
    /// Whether the test marked its webhook delivery as having succeeded.
    pub(super) delivered: bool,
    pub(super) body: Value,
}

impl StubEvent {
    /// Reads an emitted event's id, `created`, `account` and type; `None` without an id.
    pub(super) fn of(body: Value, delivered: bool) -> Option<Self> {
        Some(Self {
            id: body.get("id")?.as_str()?.to_owned(),
            created: body.get("created").and_then(Value::as_i64).unwrap_or(0),
            account: body.get("account").and_then(Value::as_str).map(str::to_owned),
            event_type: body.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
            delivered,
            body,
        })
    }
}

/// The `created[…]` range of a list, inclusive, read by `read` from each bound's text.
fn created_range(request: &Request, read: impl Fn(&str) -> Option<i64>) -> Result<(i64, i64), Reply> {
    let (mut from, mut to) = (i64::MIN, i64::MAX);
    for (name, apply) in
        [("created[gt]", 1_i64), ("created[gte]", 0), ("created[lt]", -1), ("created[lte]", 0)]
    {
        let Some(raw) = request.params.get(name) else { continue };
        let value = read(raw).ok_or_else(|| {
            Reply::invalid_param(Some("parameter_invalid"), name, format!("Invalid timestamp: {raw}"))
        })?;
        if name.contains("gt") {
            from = from.max(value.saturating_add(apply));
        } else {
            to = to.min(value.saturating_add(apply));
        }
    }
    Ok((from, to))
}

fn limit_of(request: &Request) -> Result<usize, Reply> {
    match request.params.integer("limit")? {
        None => Ok(10),
        Some(limit @ 1..=100) => Ok(usize::try_from(limit).unwrap_or(100)),
        Some(limit) => Err(Reply::invalid(
            Some("parameter_invalid_integer"),
            format!("Invalid limit: must be between 1 and 100, got {limit}."),
        )),
    }
}

/// `GET /v1/events`: newest first; `created[…]`, `type`, `types[N]`, `delivery_success`,
/// `starting_after` and `ending_before`; the account's events under `Stripe-Account`, else the
/// platform's own.
pub(super) fn list_events(ledger: &Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    let types: Vec<&str> = (0..20).filter_map(|index| params.get(&format!("types[{index}]"))).collect();
    params.refuse_unknown(|name| {
        matches!(name, "limit" | "starting_after" | "ending_before" | "type" | "delivery_success")
            || name.starts_with("created")
            || (name.starts_with("types[") && types.len() <= 20)
    })?;
    if params.get("type").is_some() && !types.is_empty() {
        return Err(Reply::invalid(None, "You may only specify one of these parameters: type, types.").into());
    }
    let limit = limit_of(request)?;
    let (from, to) = created_range(request, |raw| raw.parse().ok())?;
    let delivery = match params.get("delivery_success") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            let message = format!("Invalid boolean: {other}");
            return Err(Reply::invalid_param(Some("parameter_invalid"), "delivery_success", message).into());
        }
    };
    let account = request.stripe_account.as_deref();
    let matches_type = |event: &StubEvent| match (params.get("type"), types.is_empty()) {
        (Some(wanted), _) => type_matches(wanted, &event.event_type),
        (None, true) => true,
        (None, false) => types.iter().any(|wanted| type_matches(wanted, &event.event_type)),
    };
    let keep = |event: &&StubEvent| {
        event.account.as_deref() == account
            && (from..=to).contains(&event.created)
            && matches_type(event)
            && delivery.is_none_or(|delivered| delivered == event.delivered)
    };
    // Held oldest first; listed newest first.
    let newest_first: Vec<&StubEvent> = ledger.events.iter().rev().filter(keep).collect();
    let position = |cursor: &str, param: &str| {
        ledger.events.iter().rev().filter(keep).position(|event| event.id == cursor).ok_or_else(|| {
            let mut missing = Reply::invalid(Some("resource_missing"), format!("No such event: '{cursor}'"));
            missing.body["error"]["param"] = json!(param);
            missing
        })
    };
    let window: &[&StubEvent] = match (params.get("starting_after"), params.get("ending_before")) {
        (Some(_), Some(_)) => {
            return Err(Reply::invalid(
                None,
                "You may only specify one of starting_after and ending_before.",
            )
            .into());
        }
        (Some(cursor), None) => {
            let at = position(cursor, "starting_after")?;
            &newest_first[at + 1..]
        }
        (None, Some(cursor)) => {
            // The page just newer than the cursor, still listed newest first.
            let at = position(cursor, "ending_before")?;
            &newest_first[at.saturating_sub(limit)..at]
        }
        (None, None) => &newest_first,
    };
    let data: Vec<Value> = window.iter().take(limit).map(|event| event.body.clone()).collect();
    let has_more = window.len() > limit;
    Ok(Reply::ok(json!({ "object": "list", "data": data, "has_more": has_more, "url": "/v1/events" })))
}

/// Stripe's `type` filter takes one `*` wildcard, as in `charge.*`.
fn type_matches(wanted: &str, event_type: &str) -> bool {
    match wanted.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => wanted == event_type,
    }
}

/// `GET /v2/core/events`: newest first, `created[…]` as RFC 3339, `limit`, and `page`, the token
/// its `next_page_url` carries.
pub(super) fn list_v2_events(ledger: &Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    params.refuse_unknown(|name| matches!(name, "limit" | "page") || name.starts_with("created["))?;
    let limit = limit_of(request)?;
    let (from, to) = created_range(request, shared::calendar::parse_rfc3339)?;
    let skip = match params.get("page") {
        None => 0,
        Some(token) => {
            token.strip_prefix("stub_page_").and_then(|offset| offset.parse::<usize>().ok()).ok_or_else(
                || Reply::invalid_param(Some("invalid_page"), "page", "The page token is not valid."),
            )?
        }
    };
    let created = |event: &Value| {
        event.get("created").and_then(Value::as_str).and_then(shared::calendar::parse_rfc3339).unwrap_or(0)
    };
    let matching: Vec<&Value> =
        ledger.v2_events.iter().rev().filter(|event| (from..=to).contains(&created(event))).collect();
    let data: Vec<Value> = matching.iter().skip(skip).take(limit).map(|event| (*event).clone()).collect();
    let next_page_url = (matching.len() > skip + limit).then(|| {
        let mut query = format!("page=stub_page_{}&limit={limit}", skip + limit);
        for name in ["created[gt]", "created[gte]", "created[lt]", "created[lte]"] {
            if let Some(value) = params.get(name) {
                query.push_str(&format!(
                    "&{}={}",
                    name.replace('[', "%5B").replace(']', "%5D"),
                    value.replace(':', "%3A")
                ));
            }
        }
        format!("/v2/core/events?{query}")
    });
    Ok(Reply::ok(json!({ "data": data, "next_page_url": next_page_url, "previous_page_url": null })))
}

/// A thin event as `GET /v2/core/events` lists it: `created` in RFC 3339 whatever the test gave.
pub(super) fn listed_thin_event(mut event: Value) -> Value {
    if let Some(unix) = event.get("created").and_then(Value::as_i64) {
        event["created"] = json!(rfc3339(unix));
    }
    event
}
