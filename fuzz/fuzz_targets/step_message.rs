//! The SQS step-message parser the workers use, on arbitrary bodies.
//!
//! Checks that a body taken as a step names a well-formed account and usable ids, and that the
//! reference it yields is written back as a message that reads the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::domain::account::AccountId;
use shared::domain::step::parse_step_message;

/// What the planner writes as a step id or payment key, and so what may become a storage key.
fn is_printable_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())
}

fuzz_target!(|data: &[u8]| {
    // SQS delivers bodies as strings: anything else never reaches the parser.
    let Ok(body) = std::str::from_utf8(data) else { return };
    let Ok(step) = parse_step_message(body) else { return };
    assert!(AccountId::parse(step.destination.as_str()).is_some(), "destination {:?}", step.destination);
    assert!(is_printable_key(&step.step_id), "step_id {:?}", step.step_id);
    if let Some(payment_key) = &step.payment_key {
        assert!(is_printable_key(payment_key), "payment_key {payment_key:?}");
    }
    let rewritten = serde_json::to_string(&step).expect("a step reference serialises");
    let again = parse_step_message(&rewritten).expect("a rewritten step message parses");
    assert_eq!(again, step);
});
