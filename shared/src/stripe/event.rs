//! The Stripe event envelope, parsed leniently across API versions.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
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

/// The envelope fields [`peek_event`] reads, each kept loose so that an odd shape is not fatal.
#[derive(Deserialize)]
struct PeekEnvelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<&'a RawValue>,
}

fn as_string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// Accepts an id only if it is short and printable, since it becomes a storage key and a log field.
pub fn is_plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether a JSON object's `object` field says this is a thin event.
fn is_thin(object: Option<&str>) -> bool {
    object == Some("v2.core.event")
}

/// The envelope as read in one pass over the body: each field as loose as JSON allows, so that
/// an unexpected shape is reported, not fatal, and `data.object` left as the body's own bytes.
#[derive(Default)]
struct Envelope<'a> {
    id: Scalar<'a>,
    object: Scalar<'a>,
    event_type: Scalar<'a>,
    created: Scalar<'a>,
    livemode: Scalar<'a>,
    api_version: Scalar<'a>,
    account: Scalar<'a>,
    context: Scalar<'a>,
    related_object: Option<&'a RawValue>,
    data: Option<Data<'a>>,
}

/// `data`, when it is an object that names each of its two fields at most once.
enum Data<'a> {
    Object { object: Option<&'a RawValue>, previous_attributes: Option<&'a RawValue> },
    NotAnObject,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

/// Stores `value` in `slot`, refusing a second one: a body that names a field twice is not an
/// event whose meaning can be trusted.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.replace(value).is_some() { Err(E::duplicate_field(name)) } else { Ok(()) }
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a Stripe event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = Seen::default();
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<lenient::Text<'de>>()? {
            let scalar = match key.as_str() {
                "id" => (&mut seen.id, &mut envelope.id, "id"),
                "object" => (&mut seen.object, &mut envelope.object, "object"),
                "type" => (&mut seen.event_type, &mut envelope.event_type, "type"),
                "created" => (&mut seen.created, &mut envelope.created, "created"),
                "livemode" => (&mut seen.livemode, &mut envelope.livemode, "livemode"),
                "api_version" => (&mut seen.api_version, &mut envelope.api_version, "api_version"),
                "account" => (&mut seen.account, &mut envelope.account, "account"),
                "context" => (&mut seen.context, &mut envelope.context, "context"),
                "related_object" => {
                    once(&mut seen.related_object, (), "related_object")?;
                    envelope.related_object = map.next_value()?;
                    continue;
                }
                "data" => {
                    once(&mut seen.data, (), "data")?;
                    envelope.data = map.next_value::<Option<Data<'de>>>()?;
                    continue;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let (seen, slot, name) = scalar;
            once(seen, (), name)?;
            *slot = map.next_value()?;
        }
        Ok(envelope)
    }
}

/// Which envelope fields a body has named.
#[derive(Default)]
struct Seen {
    id: Option<()>,
    object: Option<()>,
    event_type: Option<()>,
    created: Option<()>,
    livemode: Option<()>,
    api_version: Option<()>,
    account: Option<()>,
    context: Option<()>,
    related_object: Option<()>,
    data: Option<()>,
}

impl<'de> Deserialize<'de> for Data<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut object, mut previous_attributes) = (None, None);
        let mut duplicated = false;
        while let Some(key) = map.next_key::<lenient::Text<'de>>()? {
            let slot = match key.as_str() {
                "object" => &mut object,
                "previous_attributes" => &mut previous_attributes,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value: Option<Option<&'de RawValue>> = Some(map.next_value()?);
            duplicated |= slot.is_some();
            *slot = value;
        }
        if duplicated {
            return Ok(Data::NotAnObject);
        }
        Ok(Data::Object { object: object.flatten(), previous_attributes: previous_attributes.flatten() })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        lenient::drain_seq(seq).map(|()| Data::NotAnObject)
    }

    lenient::not_a_container!(Data::NotAnObject);
}

/// One envelope field: the JSON scalar it holds, or `Other` for anything else.
#[derive(Default)]
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Bool(bool),
    Integer(i64),
    #[default]
    Other,
}

impl<'a> Scalar<'a> {
    fn text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }

    fn into_text(self) -> Option<Cow<'a, str>> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }

    fn into_string(self) -> Option<String> {
        self.into_text().map(Cow::into_owned)
    }

    fn boolean(&self) -> Option<bool> {
        match self {
            Self::Bool(value) => Some(*value),
            _ => None,
        }
    }

    fn integer(&self) -> Option<i64> {
        match self {
            Self::Integer(value) => Some(*value),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(text)))
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Integer(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(value).map_or(Scalar::Other, Scalar::Integer))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        lenient::drain_map(map).map(|()| Scalar::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        lenient::drain_seq(seq).map(|()| Scalar::Other)
    }
}

/// Parses a verified body. Only the envelope must be well formed; `data.object` may hold anything.
///
/// One pass over the body: the envelope's fields are read as they come and `data.object` is kept
/// as the body's own bytes, validated but not built into a tree.
pub fn parse_event(body: &[u8]) -> Result<ParsedBody, EnvelopeError> {
    // JSON is UTF-8 (RFC 8259): checked once up front, since serde_json does not check the strings
    // it skips.
    if std::str::from_utf8(body).is_err() {
        return Err(EnvelopeError::InvalidJson);
    }
    let raw: Envelope<'_> = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(error) if error.is_data() => return Err(EnvelopeError::NotAnEvent("not a JSON object")),
        Err(_) => return Err(EnvelopeError::InvalidJson),
    };
    let id = raw.id.into_text().filter(|id| is_plausible_id(id));
    if is_thin(raw.object.text()) {
        let related_object = raw
            .related_object
            .and_then(|raw| serde_json::from_str::<RelatedObject>(raw.get()).ok())
            .filter(|related| is_plausible_id(&related.id));
        return Ok(ParsedBody::Thin(ThinEvent {
            id: id.ok_or(EnvelopeError::NotAnEvent("no usable id"))?.into_owned(),
            event_type: raw.event_type.into_string().filter(|event_type| is_plausible_id(event_type)),
            created: raw.created.text().and_then(crate::calendar::parse_rfc3339),
            livemode: raw.livemode.boolean(),
            context: raw.context.into_string().filter(|context| is_plausible_id(context)),
            related_object,
        }));
    }
    if let Some(object) = raw.object.text().filter(|object| *object != "event") {
        tracing::debug!(object, "body is not an event");
        return Err(EnvelopeError::NotAnEvent("object is not \"event\""));
    }
    let id = id.ok_or(EnvelopeError::NotAnEvent("no usable id"))?;
    let event_type = raw
        .event_type
        .into_text()
        .filter(|event_type| is_plausible_id(event_type))
        .ok_or(EnvelopeError::NotAnEvent("no usable type"))?;
    let created =
        raw.created.integer().ok_or(EnvelopeError::NotAnEvent("created is not a Unix timestamp"))?;
    let Some(Data::Object { object, previous_attributes }) = raw.data else {
        return Err(EnvelopeError::NotAnEvent("data is not an object"));
    };
    let object = object.ok_or(EnvelopeError::NotAnEvent("no data.object"))?;
    Ok(ParsedBody::Snapshot(Event {
        id: id.into_owned(),
        event_type: event_type.into_owned(),
        created,
        livemode: raw.livemode.boolean(),
        api_version: raw.api_version.into_string(),
        account: raw.account.into_string(),
        object: object.to_owned(),
        previous_attributes: previous_attributes.map(RawValue::to_owned),
    }))
}

/// Takes a body as JSON only far enough to name it, as `connect-flow verify` reports: a thin event
/// is refused, as every SDK's snapshot parser does, and otherwise the id and type are returned when
/// present. Unlike [`parse_event`], this accepts any JSON object.
pub fn peek_event(body: &[u8]) -> Result<(Option<String>, Option<String>), PeekError> {
    let raw: PeekEnvelope<'_> = serde_json::from_slice(body).map_err(|_| PeekError::InvalidJson)?;
    if is_thin(as_string(raw.object).as_deref()) {
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

/// Pieces for reading JSON leniently in one pass, straight from the body's bytes: a field of the
/// wrong shape reads as absent instead of failing the whole object, as `serde_json::Value`'s
/// accessors would read it, without building a `Value` first.
pub(crate) mod lenient {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    /// An object key or a string value, borrowed from the body unless it had escapes.
    pub(crate) struct Text<'a>(pub(crate) Cow<'a, str>);

    impl Text<'_> {
        pub(crate) fn as_str(&self) -> &str {
            &self.0
        }
    }

    impl<'de> Deserialize<'de> for Text<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_str(TextVisitor)
        }
    }

    struct TextVisitor;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Text<'de>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a string")
        }

        fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
            Ok(Text(Cow::Borrowed(text)))
        }

        fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Text(Cow::Owned(text.to_owned())))
        }

        fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
            Ok(Text(Cow::Owned(text)))
        }
    }

    /// Reads the rest of an object that is not wanted, as `IgnoredAny` would.
    pub(crate) fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    /// Reads the rest of an array that is not wanted.
    pub(crate) fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    /// The `Visitor` methods for every JSON scalar, each answering `$value`: for a visitor that
    /// wants a container and reads anything else as absent.
    macro_rules! not_a_container {
        ($value:expr) => {
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok($value)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok($value)
            }
        };
    }
    pub(crate) use not_a_container;
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
    fn the_envelope_reads_escapes_and_refuses_repeated_or_array_shapes() {
        let event = snapshot(
            r#"{"id":"evt\u005f1","type":"account.upd\u0061ted","created":1,"account":"acct\u005f1","data":{"object":{"a":"\u00e9"}}}"#,
        );
        assert_eq!((event.id.as_str(), event.event_type.as_str()), ("evt_1", "account.updated"));
        assert_eq!(event.account.as_deref(), Some("acct_1"));
        assert_eq!(event.object.get(), r#"{"a":"\u00e9"}"#, "data.object keeps the body's own bytes");
        for (body, message) in [
            (
                r#"{"id":"evt_1","id":"evt_2","type":"a.b","created":1,"data":{"object":{}}}"#,
                "not a JSON object",
            ),
            (
                r#"{"id":"evt_1","type":"a.b","created":1,"data":{"object":{},"object":{}}}"#,
                "data is not an object",
            ),
            (r#"{"id":"evt_1","type":"a.b","created":1,"data":[{"a":1}]}"#, "data is not an object"),
            (r#"["evt_1","event","a.b",1,null,null,null,null,null,{"object":{}}]"#, "not a JSON object"),
            (
                r#"{"id":"evt_1","type":"a.b","created":1.5,"data":{"object":{}}}"#,
                "created is not a Unix timestamp",
            ),
            (
                r#"{"id":"evt_1","type":"a.b","created":18446744073709551615,"data":{"object":{}}}"#,
                "created is not a Unix timestamp",
            ),
        ] {
            assert_eq!(
                parse_event(body.as_bytes()).err(),
                Some(EnvelopeError::NotAnEvent(message)),
                "{body}"
            );
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
