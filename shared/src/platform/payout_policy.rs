//! `PUT /accounts/{id}/payout_policy`: the platform sets when and how one account on manual payouts
//! is paid out ([`crate::domain::payout`]), and the deployment's default policy, read from the
//! environment, for every account without one.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::request::{Fields, is_supported_currency};
use super::{ApiError, ApiReply, PlatformApi, json_object};
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::domain::account::AccountState;
use crate::domain::change::account_changes;
use crate::domain::payout::{
    AccountPayoutPolicy, DEFAULT_STALE_PERCENT, MAX_HOLD_DAYS, MAX_MINIMUM, MAX_RETRY_AFTER_DAYS,
    PayoutMethod, PayoutPolicy, PayoutSchedule, PayoutSettings, PolicySource,
};
use crate::store::{AccountStore, AccountWrite, CommitOutcome, StoreError};

/// The default policy's hold, in days (0 to 365; default 0).
pub const PAYOUT_HOLD_DAYS: &str = "CONNECT_FLOW_PAYOUT_HOLD_DAYS";
/// The default policy's minimums, `usd:1000,eur:500` (minor units; default none).
pub const PAYOUT_MINIMUMS: &str = "CONNECT_FLOW_PAYOUT_MINIMUMS";
/// The default policy's schedule: `on_available` (the default), `daily` or `weekly:<day>`.
pub const PAYOUT_SCHEDULE: &str = "CONNECT_FLOW_PAYOUT_SCHEDULE";
/// The default policy's method: `standard` (the default) or `instant`.
pub const PAYOUT_METHOD: &str = "CONNECT_FLOW_PAYOUT_METHOD";
/// The default policy's wait after a failed payout, in days (1 to 365; default 3).
pub const PAYOUT_RETRY_AFTER_DAYS: &str = "CONNECT_FLOW_PAYOUT_RETRY_AFTER_DAYS";
/// The share of Stripe's manual-payout limit after which unpaid funds are warned about, above 0 and
/// at most 1 (default 0.8).
pub const PAYOUT_STALE_SHARE: &str = "CONNECT_FLOW_PAYOUT_STALE_SHARE";

/// The fields the route takes.
const POLICY_FIELDS: [&str; 5] = ["hold_days", "minimum", "schedule", "method", "retry_after_days"];

/// How many times the write is retried when the account moved in between.
const MAX_CONFLICT_RETRIES: usize = 8;

impl PayoutSettings {
    /// Reads [`Self::from_lookup`] from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the deployment's payout settings through `lookup`: unset or empty variables keep the
    /// defaults (no hold, no minimum, `on_available`, `standard`, 3 days, 0.8), and anything else
    /// that is not a valid value stops the start, naming the variable but never its value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let invalid = |name, reason| ConfigError::Invalid { name, reason };
        let mut policy = PayoutPolicy::default();
        if let Some(days) = set(PAYOUT_HOLD_DAYS) {
            policy.hold_days = days
                .parse()
                .ok()
                .filter(|days| *days <= MAX_HOLD_DAYS)
                .ok_or(invalid(PAYOUT_HOLD_DAYS, "expected a whole number of days, 0 to 365"))?;
        }
        if let Some(days) = set(PAYOUT_RETRY_AFTER_DAYS) {
            policy.retry_after_days = days
                .parse()
                .ok()
                .filter(|days| (1..=MAX_RETRY_AFTER_DAYS).contains(days))
                .ok_or(invalid(PAYOUT_RETRY_AFTER_DAYS, "expected a whole number of days, 1 to 365"))?;
        }
        if let Some(schedule) = set(PAYOUT_SCHEDULE) {
            policy.schedule = PayoutSchedule::parse(&schedule)
                .ok_or(invalid(PAYOUT_SCHEDULE, "expected on_available, daily or weekly:<day>"))?;
        }
        if let Some(method) = set(PAYOUT_METHOD) {
            policy.method =
                PayoutMethod::parse(&method).ok_or(invalid(PAYOUT_METHOD, "expected standard or instant"))?;
        }
        if let Some(minimums) = set(PAYOUT_MINIMUMS) {
            let bad = || {
                invalid(PAYOUT_MINIMUMS, "expected currency:amount pairs, comma-separated (usd:1000,eur:500)")
            };
            for pair in minimums.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
                let (currency, amount) = pair.split_once(':').ok_or_else(bad)?;
                let currency = currency.trim().to_ascii_lowercase();
                let amount = amount.trim();
                let digits = !amount.is_empty() && amount.bytes().all(|byte| byte.is_ascii_digit());
                let amount = digits
                    .then(|| amount.parse::<i64>().ok())
                    .flatten()
                    .filter(|amount| *amount <= MAX_MINIMUM)
                    .ok_or_else(bad)?;
                if !is_supported_currency(&currency) || policy.minimum.insert(currency, amount).is_some() {
                    return Err(bad());
                }
            }
        }
        let stale_percent = match set(PAYOUT_STALE_SHARE) {
            None => DEFAULT_STALE_PERCENT,
            Some(share) => share_percent(&share)
                .ok_or(invalid(PAYOUT_STALE_SHARE, "expected a share above 0 and at most 1, such as 0.8"))?,
        };
        policy.check().map_err(|error| {
            let name = match error.field {
                "minimum" => PAYOUT_MINIMUMS,
                "retry_after_days" => PAYOUT_RETRY_AFTER_DAYS,
                _ => PAYOUT_HOLD_DAYS,
            };
            invalid(name, error.reason)
        })?;
        Ok(Self { policy, stale_percent })
    }
}

/// A decimal share (`0.8`, `1`, `.75`) as a whole percentage, 1 to 100.
fn share_percent(text: &str) -> Option<u32> {
    let share: f64 =
        text.parse().ok().filter(|share: &f64| share.is_finite() && *share > 0.0 && *share <= 1.0)?;
    // 0 < share ≤ 1, so the rounded percentage is 0 to 100 and the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let percent = (share * 100.0).round() as u32;
    Some(percent.max(1))
}

/// Reads the route's body: every field checked, unknown ones refused. A field left out takes the
/// built-in default (no hold, no minimum, `on_available`, `standard`, 3 days).
fn read_policy(object: &Map<String, Value>) -> Result<PayoutPolicy, ApiError> {
    let fields = Fields(object);
    fields.only(&POLICY_FIELDS)?;
    let mut policy = PayoutPolicy::default();
    if let Some(days) = days(object, "hold_days", 0, MAX_HOLD_DAYS)? {
        policy.hold_days = days;
    }
    if let Some(days) = days(object, "retry_after_days", 1, MAX_RETRY_AFTER_DAYS)? {
        policy.retry_after_days = days;
    }
    if let Some(schedule) = fields.optional_str("schedule")? {
        policy.schedule = PayoutSchedule::parse(schedule).ok_or_else(|| {
            ApiError::invalid(
                "schedule",
                "schedule must be on_available, daily or weekly:<day> (weekly:monday …)",
            )
        })?;
    }
    if let Some(method) = fields.optional_choice("method", &["standard", "instant"])? {
        policy.method = PayoutMethod::parse(method).unwrap_or_default();
    }
    policy.minimum = minimums(object.get("minimum"))?;
    policy.check().map_err(|error| ApiError::invalid(error.field, error.reason))?;
    Ok(policy)
}

/// A whole number of days from `low` to `high`, when given.
fn days(
    object: &Map<String, Value>,
    field: &'static str,
    low: u32,
    high: u32,
) -> Result<Option<u32>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_u64()
            .and_then(|days| u32::try_from(days).ok())
            .filter(|days| (low..=high).contains(days))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(field, format!("{field} must be a whole number of days, {low} to {high}"))
            }),
        Some(_) => {
            Err(ApiError::invalid(field, format!("{field} must be a whole number of days, {low} to {high}")))
        }
    }
}

/// `minimum`: an object of currency code to a whole, non-negative number of minor units.
fn minimums(value: Option<&Value>) -> Result<BTreeMap<String, i64>, ApiError> {
    let invalid = |message: &str| ApiError::invalid("minimum", message.to_owned());
    let object = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(invalid("minimum must be an object of currency code to minor units")),
    };
    let mut minimum = BTreeMap::new();
    for (currency, amount) in object {
        let currency = currency.to_ascii_lowercase();
        if !is_supported_currency(&currency) {
            return Err(invalid("minimum names a currency Stripe does not support"));
        }
        let amount = match amount {
            Value::Number(number) => number.as_i64(),
            _ => None,
        }
        .ok_or_else(|| invalid("each minimum must be a whole number of minor units"))?;
        if !(0..=MAX_MINIMUM).contains(&amount) {
            return Err(invalid("each minimum must be 0 or more minor units (at most 100000000000)"));
        }
        if minimum.insert(currency, amount).is_some() {
            return Err(invalid("minimum names a currency twice"));
        }
    }
    Ok(minimum)
}

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    /// `PUT /accounts/{id}/payout_policy`: stores the account's own policy, conditional on the
    /// account's version (read again on a conflict), with an `account.payout_policy_changed` on the
    /// feed. The same policy again writes nothing. The answer is the account JSON.
    pub(super) async fn put_payout_policy(&self, id: &str, body: &[u8]) -> Result<ApiReply, ApiError> {
        let object = json_object(body)?;
        let wanted = AccountPayoutPolicy { source: PolicySource::Account, policy: read_policy(&object)? };
        for _ in 0..MAX_CONFLICT_RETRIES {
            let account = self.known_account(id).await?;
            if account.payout_policy.as_ref() == Some(&wanted) {
                return Ok(self.account_reply(200, account));
            }
            let now = self.clock.now_unix();
            let mut next = account.clone();
            next.payout_policy = Some(wanted.clone());
            // A new policy can make held funds payable (a shorter hold, a lower minimum): the
            // sweep plans for the account on its next run.
            if !next.payout_funds.balances.is_empty() {
                next.payout_funds.due_at = Some(next.payout_funds.due_at.map_or(now, |due| due.min(now)));
            }
            next.version += 1;
            let changes = account_changes(Some(&account), &next, now);
            let write = AccountWrite { account: &next, new_steps: &[], step_updates: &[], changes: &changes };
            match self.store.commit_account(&write).await? {
                CommitOutcome::Committed => return Ok(self.account_reply(200, next)),
                CommitOutcome::Conflict | CommitOutcome::Duplicate => {
                    tracing::debug!(
                        "the account moved while its payout policy was written; reading it again"
                    );
                }
            }
        }
        Err(StoreError::Unavailable("the account kept changing concurrently".into()).into())
    }

    /// The account as its JSON shows it: with the payout policy it follows, its own or the
    /// deployment's default.
    pub(super) fn shown_account(&self, mut account: AccountState) -> AccountState {
        account.payout_policy = Some(self.payout_settings.shown_policy(&account));
        account
    }

    fn account_reply(&self, status: u16, account: AccountState) -> ApiReply {
        ApiReply::of(status, &self.shown_account(account))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
    }

    #[test]
    fn the_default_policy_is_read_from_the_environment() {
        assert_eq!(PayoutSettings::from_lookup(lookup(&[])), Ok(PayoutSettings::default()));
        let read = PayoutSettings::from_lookup(lookup(&[
            (PAYOUT_HOLD_DAYS, "7"),
            (PAYOUT_MINIMUMS, "usd:1000, EUR:500,"),
            (PAYOUT_SCHEDULE, "weekly:friday"),
            (PAYOUT_METHOD, "instant"),
            (PAYOUT_RETRY_AFTER_DAYS, "5"),
            (PAYOUT_STALE_SHARE, "0.75"),
        ]));
        let settings = read.unwrap();
        assert_eq!(settings.policy.hold_days, 7);
        assert_eq!(settings.policy.minimum, BTreeMap::from([("usd".into(), 1000), ("eur".into(), 500)]));
        assert_eq!(settings.policy.schedule.to_string(), "weekly:friday");
        assert_eq!((settings.policy.method, settings.policy.retry_after_days), (PayoutMethod::Instant, 5));
        assert_eq!(settings.stale_percent, 75);
    }

    #[test]
    fn a_bogus_default_stops_the_start_naming_the_variable_but_not_its_value() {
        for (name, value) in [
            (PAYOUT_HOLD_DAYS, "366"),
            (PAYOUT_HOLD_DAYS, "-1"),
            (PAYOUT_HOLD_DAYS, "seven"),
            (PAYOUT_MINIMUMS, "usd=1000"),
            (PAYOUT_MINIMUMS, "usd:-5"),
            (PAYOUT_MINIMUMS, "usd:10.5"),
            (PAYOUT_MINIMUMS, "zzz:100"),
            (PAYOUT_MINIMUMS, "usd:1,usd:2"),
            (PAYOUT_SCHEDULE, "hourly"),
            (PAYOUT_SCHEDULE, "weekly:caturday"),
            (PAYOUT_METHOD, "fast"),
            (PAYOUT_RETRY_AFTER_DAYS, "0"),
            (PAYOUT_STALE_SHARE, "1.5"),
            (PAYOUT_STALE_SHARE, "0.0"),
            (PAYOUT_STALE_SHARE, "NaN"),
        ] {
            let error = PayoutSettings::from_lookup(lookup(&[(name, value)])).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with(&format!("{name} is invalid")), "{message}");
            assert!(!message.contains(value), "{message} shows the value {value}");
        }
    }

    /// The default is read by each service itself; the settings every start reads refuse a bad
    /// one, so that it stops the start.
    #[test]
    fn the_webhook_settings_refuse_a_bogus_default_policy() {
        let pairs = [("STRIPE_WEBHOOK_SECRETS", "whsec_a"), (PAYOUT_SCHEDULE, "hourly")];
        let expected =
            "CONNECT_FLOW_PAYOUT_SCHEDULE is invalid: expected on_available, daily or weekly:<day>";
        let signed = crate::config::WebhookSettings::from_lookup(lookup(&pairs)).unwrap_err();
        assert_eq!(signed.to_string(), expected);
        let unsigned = crate::config::WebhookSettings::without_signatures(lookup(&pairs)).unwrap_err();
        assert_eq!(unsigned.to_string(), expected);
        assert!(crate::config::WebhookSettings::from_lookup(lookup(&pairs[..1])).is_ok());
    }

    fn read(body: Value) -> Result<PayoutPolicy, &'static str> {
        read_policy(body.as_object().unwrap()).map_err(|error| match error {
            ApiError::InvalidRequest { field, .. } => field,
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn a_policy_body_is_checked_field_by_field() {
        let policy =
            read(json!({"hold_days": 7, "minimum": {"USD": 1000}, "schedule": "daily", "method": "instant"}))
                .unwrap();
        assert_eq!(policy.minimum, BTreeMap::from([("usd".into(), 1000)]));
        assert_eq!(read(json!({})).unwrap(), PayoutPolicy::default());
        for (body, field) in [
            (json!({"hold_days": 366}), "hold_days"),
            (json!({"hold_days": -1}), "hold_days"),
            (json!({"hold_days": 1.5}), "hold_days"),
            (json!({"hold_days": "7"}), "hold_days"),
            (json!({"minimum": {"usd": -1}}), "minimum"),
            (json!({"minimum": {"usd": 10.5}}), "minimum"),
            (json!({"minimum": {"usd": "100"}}), "minimum"),
            (json!({"minimum": {"xyz": 100}}), "minimum"),
            (json!({"minimum": {"usd": 1, "USD": 2}}), "minimum"),
            (json!({"minimum": [1]}), "minimum"),
            (json!({"schedule": "hourly"}), "schedule"),
            (json!({"schedule": "weekly:funday"}), "schedule"),
            (json!({"method": "fast"}), "method"),
            (json!({"retry_after_days": 0}), "retry_after_days"),
            (json!({"hold": 3}), "body"),
        ] {
            assert_eq!(read(body.clone()), Err(field), "{body}");
        }
    }
}
