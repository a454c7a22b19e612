//! The Stripe event envelope, parsed leniently across API versions.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The longest event or object id accepted; Stripe's are far shorter.
const MAX_ID_LEN: usize = 255;

/// Why a verified body could not be taken as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not JSON at all.
    #[error("the body is not valid JSON")]
    InvalidJson,
    /// The body is JSON but lacks what every snapshot event has.
    #[error("the body is not a Stripe event: {0}")]
    NotAnEvent(&'static str),
}

impl EnvelopeError {
    /// The stable, snake_case name of this error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::NotAnEvent(_) => "not_an_event",
        }
    }
}

/// A snapshot event (`object: "event"`): what Connect webhook endpoints deliver.
#[derive(Debug)]
pub struct Event {
    /// `evt_…`.
    pub id: String,
    /// For example `account.updated`.
    pub event_type: String,
    /// Unix seconds at which Stripe created the event: the ordering key.
    pub created: i64,
    /// Whether the event is from live mode; `None` when the envelope does not say.
    pub livemode: Option<bool>,
    /// The API version the payload was rendered with; may be absent or null.
    pub api_version: Option<String>,
    /// The connected account the event is about; absent for the platform's own events.
    pub account: Option<String>,
    /// `data.object`, kept as raw JSON for the decision to read leniently.
    pub object: Box<RawValue>,
    /// `data.previous_attributes`, when Stripe sent it.
    pub previous_attributes: Option<Box<RawValue>>,
}

/// A thin event (`object: "v2.core.event"`): a notification naming an object, with no snapshot
/// of it. `context` and `related_object` may be missing or null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinEvent {
    /// The event id.
    pub id: String,
    /// The event type, when present.
    pub event_type: Option<String>,
    /// When Stripe created it, in Unix seconds (API v2 writes RFC 3339), when readable.
    pub created: Option<i64>,
    /// Whether the event is from live mode, when present.
    pub livemode: Option<bool>,
    /// The account context (a connected account id), when present.
    pub context: Option<String>,
    /// The object the event is about, when it names one.
    pub related_object: Option<RelatedObject>,
}

/// A thin event's `related_object`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RelatedObject {
    /// The object's id.
    pub id: String,
    /// Its type, e.g. `v2.core.account` or `payout`.
    #[serde(rename = "type", default)]
    pub object_type: Option<String>,
    /// The path it is retrieved from, e.g. `/v2/core/accounts/acct_1`.
    #[serde(default)]
    pub url: Option<String>,
}

/// What a verified body turned out to be.
#[derive(Debug)]
pub enum ParsedBody {
    /// A snapshot event.
    Snapshot(Event),
    /// A thin event delivered to a snapshot endpoint.
    Thin(ThinEvent),
}

/// The envelope's fields, each kept loose so that an unexpected shape is reported, not fatal.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    created: Option<&'a RawValue>,
    #[serde(borrow, default)]
    livemode: Option<&'a RawValue>,
    #[serde(borrow, default)]
    api_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    account: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    related_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    previous_attributes: Option<&'a RawValue>,
}

fn as_string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

fn as_bool(raw: Option<&RawValue>) -> Option<bool> {
    raw.and_then(|raw| serde_json::from_str::<bool>(raw.get()).ok())
}

/// Accepts an id only if it is short and printable, since it becomes a storage key and a log field.
pub fn is_plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether a JSON object's `object` field says this is a thin event.
fn is_thin(object: Option<&RawValue>) -> bool {
    as_string(object).as_deref() == Some("v2.core.event")
}

/// Parses a verified body. Only the envelope must be well formed; `data.object` may hold anything.
pub fn parse_event(body: &[u8]) -> Result<ParsedBody, EnvelopeError> {
    let raw: RawEnvelope<'_> = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(error) if error.is_data() => return Err(EnvelopeError::NotAnEvent("not a JSON object")),
        Err(_) => return Err(EnvelopeError::InvalidJson),
    };
    let id = as_string(raw.id).filter(|id| is_plausible_id(id));
    if is_thin(raw.object) {
        let related_object = raw
            .related_object
            .and_then(|raw| serde_json::from_str::<RelatedObject>(raw.get()).ok())
            .filter(|related| is_plausible_id(&related.id));
        return Ok(ParsedBody::Thin(ThinEvent {
            id: id.ok_or(EnvelopeError::NotAnEvent("no usable id"))?,
            event_type: as_string(raw.event_type).filter(|event_type| is_plausible_id(event_type)),
            created: as_string(raw.created).as_deref().and_then(crate::calendar::parse_rfc3339),
            livemode: as_bool(raw.livemode),
            context: as_string(raw.context).filter(|context| is_plausible_id(context)),
            related_object,
        }));
    }
    if let Some(object) = as_string(raw.object).filter(|object| object != "event") {
        tracing::debug!(object, "body is not an event");
        return Err(EnvelopeError::NotAnEvent("object is not \"event\""));
    }
    let id = id.ok_or(EnvelopeError::NotAnEvent("no usable id"))?;
    let event_type = as_string(raw.event_type)
        .filter(|event_type| is_plausible_id(event_type))
        .ok_or(EnvelopeError::NotAnEvent("no usable type"))?;
    let created = raw
        .created
        .and_then(|raw| serde_json::from_str::<i64>(raw.get()).ok())
        .ok_or(EnvelopeError::NotAnEvent("created is not a Unix timestamp"))?;
    let data: RawData<'_> = raw
        .data
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or(EnvelopeError::NotAnEvent("data is not an object"))?;
    let object = data.object.ok_or(EnvelopeError::NotAnEvent("no data.object"))?;
    Ok(ParsedBody::Snapshot(Event {
        id,
        event_type,
        created,
        livemode: as_bool(raw.livemode),
        api_version: as_string(raw.api_version),
        account: as_string(raw.account),
        object: object.to_owned(),
        previous_attributes: data.previous_attributes.map(RawValue::to_owned),
    }))
}

/// Takes a body as JSON only far enough to name it, as `connect-flow verify` reports: a thin event
/// is refused, as every SDK's snapshot parser does, and otherwise the id and type are returned when
/// present. Unlike [`parse_event`], this accepts any JSON object.
pub fn peek_event(body: &[u8]) -> Result<(Option<String>, Option<String>), PeekError> {
    let raw: RawEnvelope<'_> = serde_json::from_slice(body).map_err(|_| PeekError::InvalidJson)?;
    if is_thin(raw.object) {
        return Err(PeekError::ThinEventPassedToSnapshotParser);
    }
    Ok((as_string(raw.id), as_string(raw.event_type)))
}

/// Why [`peek_event`] refused a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// Not a JSON object.
    #[error("the body is not a JSON object")]
    InvalidJson,
    /// A thin event, which a snapshot parser does not take.
    #[error("a thin event (object v2.core.event) was passed to the snapshot event parser")]
    ThinEventPassedToSnapshotParser,
}

impl PeekError {
    /// The stable, snake_case name of this error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::ThinEventPassedToSnapshotParser => "thin_event_passed_to_snapshot_parser",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(body: &str) -> Event {
        match parse_event(body.as_bytes()) {
            Ok(ParsedBody::Snapshot(event)) => event,
            other => panic!("expected a snapshot event, got {other:?}"),
        }
    }

    #[test]
    fn a_full_envelope_keeps_every_field_and_the_raw_object() {
        let event = snapshot(
            r#"{"id":"evt_1","object":"event","type":"account.updated","created":1700000000,
                "livemode":false,"api_version":"2024-06-20","account":"acct_1",
                "data":{"object":{"id":"acct_1","object":"account"},"previous_attributes":{"x":1}}}"#,
        );
        assert_eq!(
            (event.id.as_str(), event.event_type.as_str(), event.created),
            ("evt_1", "account.updated", 1_700_000_000)
        );
        assert_eq!((event.livemode, event.api_version.as_deref()), (Some(false), Some("2024-06-20")));
        assert_eq!(event.account.as_deref(), Some("acct_1"));
        assert_eq!(event.object.get(), r#"{"id":"acct_1","object":"account"}"#);
        assert_eq!(event.previous_attributes.map(|p| p.get().to_owned()).as_deref(), Some(r#"{"x":1}"#));
    }

    #[test]
    fn api_version_and_account_may_be_null_or_missing() {
        let event =
            snapshot(r#"{"id":"evt_1","type":"x.y","created":1,"api_version":null,"data":{"object":{}}}"#);
        assert_eq!((event.api_version, event.account, event.livemode), (None, None, None));
    }

    #[test]
    fn an_odd_data_object_is_kept_not_refused() {
        let event = snapshot(r#"{"id":"evt_1","type":"x.y","created":1,"data":{"object":[1,"two"]}}"#);
        assert_eq!(event.object.get(), r#"[1,"two"]"#);
    }

    #[test]
    fn thin_events_are_recognised_with_string_timestamps() {
        let body = br#"{"id":"evt_234","object":"v2.core.event","type":"v1.billing.meter.no_meter_found",
            "livemode":false,"created":"2022-02-15T00:27:45.330Z","context":"acct_9"}"#;
        let Ok(ParsedBody::Thin(thin)) = parse_event(body) else { panic!("not thin") };
        assert_eq!(thin.id, "evt_234");
        assert_eq!(thin.context.as_deref(), Some("acct_9"));
        assert_eq!(thin.created, Some(1_644_884_865));
        assert_eq!(thin.related_object, None);
        assert_eq!(peek_event(body), Err(PeekError::ThinEventPassedToSnapshotParser));
    }

    #[test]
    fn a_thin_events_related_object_and_context_may_be_null_or_odd() {
        let thin = |body: &str| match parse_event(body.as_bytes()) {
            Ok(ParsedBody::Thin(thin)) => thin,
            other => panic!("expected a thin event, got {other:?}"),
        };
        let full = thin(
            r#"{"id":"evt_1","object":"v2.core.event","type":"v2.core.account.updated","context":null,
                "related_object":{"id":"acct_1","type":"v2.core.account","url":"/v2/core/accounts/acct_1"}}"#,
        );
        assert_eq!(full.context, None);
        let related = full.related_object.expect("related object");
        assert_eq!(
            (related.id.as_str(), related.object_type.as_deref()),
            ("acct_1", Some("v2.core.account"))
        );
        for odd in [
            r#""related_object":null"#,
            r#""related_object":7"#,
            r#""related_object":{"id":""}"#,
            r#""related_object":{"type":"x"}"#,
            r#""context":{"a":1}"#,
        ] {
            let event = thin(&format!(r#"{{"id":"evt_1","object":"v2.core.event",{odd}}}"#));
            assert_eq!((event.related_object, event.context), (None, None), "{odd}");
        }
    }

    #[test]
    fn bad_bodies_get_their_error_kinds() {
        for (body, kind) in [
            ("not json", "invalid_json"),
            ("{\"id\":", "invalid_json"),
            ("[1,2]", "not_an_event"),
            ("{}", "not_an_event"),
            (r#"{"id":"evt_1","type":"a.b","data":{"object":{}}}"#, "not_an_event"),
            (r#"{"id":"evt_1","type":"a.b","created":"soon","data":{"object":{}}}"#, "not_an_event"),
            (r#"{"id":"evt_1","type":"a.b","created":1}"#, "not_an_event"),
            (r#"{"id":"evt_1","type":"a.b","created":1,"data":{}}"#, "not_an_event"),
            (r#"{"id":"","type":"a.b","created":1,"data":{"object":{}}}"#, "not_an_event"),
            (r#"{"id":7,"type":"a.b","created":1,"data":{"object":{}}}"#, "not_an_event"),
            (r#"{"id":"cus_1","object":"customer","created":1}"#, "not_an_event"),
        ] {
            let err = parse_event(body.as_bytes()).err();
            assert_eq!(err.as_ref().map(EnvelopeError::kind), Some(kind), "body {body}");
        }
    }

    #[test]
    fn peek_accepts_any_json_object() {
        assert_eq!(peek_event(br#"{"id":"evt_1","object":"event"}"#), Ok((Some("evt_1".into()), None)));
        assert_eq!(peek_event(b"nope"), Err(PeekError::InvalidJson));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(0u8.., 0..512)) {
            let _ = parse_event(&body);
            let _ = peek_event(&body);
        }
    }
}
