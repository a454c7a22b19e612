//! Stripe fund-flow events as the tests deliver them: payments, refunds, balances and the
//! lifecycle events of the objects steps create.

use serde_json::{Value, json};

use crate::NOW;

/// A test-mode event of `event_type` about `object`, from `account` (`None`: the platform).
pub fn fund_event(id: &str, event_type: &str, created: i64, account: Option<&str>, object: Value) -> Value {
    let mut event = json!({"id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "data": {"object": object}});
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

/// `transfer:acct_…` metadata for each split.
pub fn splits_metadata(splits: &[(&str, i64)]) -> serde_json::Map<String, Value> {
    splits
        .iter()
        .map(|(account, amount)| (format!("transfer:{account}"), json!(amount.to_string())))
        .collect()
}

/// `payment_intent.succeeded` for `pi`, charged as `ch_{pi}`, in the transfer group `group_{pi}`.
pub fn payment_succeeded(event_id: &str, pi: &str, amount: i64, splits: &[(&str, i64)]) -> Value {
    let intent = json!({"id": pi, "object": "payment_intent", "amount": amount, "amount_received": amount,
        "currency": "usd", "latest_charge": format!("ch_{pi}"), "metadata": splits_metadata(splits),
        "transfer_group": format!("group_{pi}"), "status": "succeeded"});
    fund_event(event_id, "payment_intent.succeeded", NOW - 100, None, intent)
}

/// `charge.succeeded` for the same payment: the other trigger.
pub fn charge_succeeded(event_id: &str, pi: &str, amount: i64, splits: &[(&str, i64)]) -> Value {
    let charge = json!({"id": format!("ch_{pi}"), "object": "charge", "amount": amount,
        "amount_captured": amount, "currency": "usd", "payment_intent": pi, "captured": true, "paid": true,
        "transfer_group": format!("group_{pi}"), "metadata": splits_metadata(splits)});
    fund_event(event_id, "charge.succeeded", NOW - 99, None, charge)
}

/// `charge.refunded` with `refunded` refunded so far (cumulative).
pub fn charge_refunded(event_id: &str, pi: &str, amount: i64, refunded: i64, created: i64) -> Value {
    let charge = json!({"id": format!("ch_{pi}"), "object": "charge", "amount": amount,
        "amount_captured": amount, "amount_refunded": refunded, "currency": "usd", "payment_intent": pi,
        "captured": true, "refunded": refunded == amount});
    fund_event(event_id, "charge.refunded", created, None, charge)
}

/// `balance.available` of `account` with `usd` available, dated `created`.
pub fn balance_available_at(event_id: &str, account: &str, usd: i64, created: i64) -> Value {
    let balance =
        json!({"object": "balance", "available": [{"amount": usd, "currency": "usd"}], "pending": []});
    fund_event(event_id, "balance.available", created, Some(account), balance)
}

/// `balance.available` of `account` with `usd` available.
pub fn balance_available(event_id: &str, account: &str, usd: i64) -> Value {
    balance_available_at(event_id, account, usd, NOW - 50)
}

/// A `payout.*` event from `account` about payout `payout_id` of `amount`, naming `step_id`.
pub fn payout_event(
    event_id: &str,
    event_type: &str,
    account: &str,
    payout_id: &str,
    amount: i64,
    step_id: &str,
) -> Value {
    let payout = json!({"id": payout_id, "object": "payout", "amount": amount, "currency": "usd",
        "status": event_type.trim_start_matches("payout."), "failure_code":
        if event_type == "payout.failed" { json!("account_closed") } else { Value::Null },
        "metadata": {"connect_flow_step": step_id}});
    fund_event(event_id, event_type, NOW - 10, Some(account), payout)
}
