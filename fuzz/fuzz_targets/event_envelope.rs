//! The event envelope parser and the `verify` command's peek, on arbitrary bodies.
//!
//! Checks that the two agree, that what `parse_event` keeps meets its own rules, and that a
//! snapshot event written back out as JSON parses to the same fields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use shared::stripe::event::{
    EnvelopeError, Event, ParsedBody, PeekError, is_plausible_id, parse_event, peek_event,
};

/// The snapshot fields compared across a round trip, the raw JSON as text.
fn fields(event: &Event) -> impl PartialEq + std::fmt::Debug + '_ {
    (
        (&event.id, &event.event_type, event.created, event.livemode),
        (&event.api_version, &event.account),
        event.object.get(),
        event.previous_attributes.as_deref().map(RawValue::get),
    )
}

/// The event written back out as Stripe would send it, its raw JSON kept byte for byte.
fn rewrite(event: &Event) -> Vec<u8> {
    let previous = event
        .previous_attributes
        .as_deref()
        .map(|previous| format!(r#","previous_attributes":{}"#, previous.get()))
        .unwrap_or_default();
    format!(
        r#"{{"id":{},"object":"event","type":{},"created":{},"livemode":{},"api_version":{},"account":{},"data":{{"object":{}{previous}}}}}"#,
        Value::from(event.id.as_str()),
        Value::from(event.event_type.as_str()),
        event.created,
        Value::from(event.livemode),
        Value::from(event.api_version.clone()),
        Value::from(event.account.clone()),
        event.object.get(),
    )
    .into_bytes()
}

fuzz_target!(|body: &[u8]| {
    let parsed = parse_event(body);
    let peeked = peek_event(body);
    match &parsed {
        Ok(ParsedBody::Snapshot(event)) => {
            assert!(is_plausible_id(&event.id) && is_plausible_id(&event.event_type));
            assert_eq!(peeked, Ok((Some(event.id.clone()), Some(event.event_type.clone()))));
            let rewritten = rewrite(event);
            match parse_event(&rewritten) {
                Ok(ParsedBody::Snapshot(again)) => assert_eq!(fields(&again), fields(event)),
                other => panic!("a rewritten snapshot event did not parse back: {other:?}"),
            }
        }
        Ok(ParsedBody::Thin(thin)) => {
            assert!(is_plausible_id(&thin.id));
            assert_eq!(peeked, Err(PeekError::ThinEventPassedToSnapshotParser));
        }
        // The parser is the stricter of the two: it also refuses a body whose skipped strings are
        // not UTF-8 or whose numbers overflow, which the peek (the `verify` command's, as lenient
        // as Stripe's SDKs) reads past. The converse is checked below.
        Err(EnvelopeError::InvalidJson) => {}
        Err(EnvelopeError::NotAnEvent(_)) => {}
    }
    // What the peek refuses as not a JSON object, the parser never takes as an event.
    if peeked == Err(PeekError::InvalidJson) {
        assert!(matches!(parsed, Err(EnvelopeError::InvalidJson | EnvelopeError::NotAnEvent(_))));
    }
});
