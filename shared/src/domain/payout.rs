//! Payout policy for accounts on manual payouts: when a connected account's available balance is
//! paid out, how much, per source type and by which method. Pure: the webhook (on
//! `balance.available`) and the sweep (when something has become due) call [`plan_payouts`] with
//! the account, its payout steps and the time, and write what it returns in one conditional write.
//!
//! A balance event says how much is available now, not since when. So the account keeps its
//! available balance per currency and source type as *lots*, each dated by the balance event it
//! first appeared in ([`HeldBalance`]). A rise adds a lot; a fall takes the oldest lots first; a
//! payout takes the lots old enough for the policy's hold. Funds never look older than they are,
//! so no payout pays funds younger than the hold, nor more than the smallest balance seen while
//! those funds were held.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::account::{AccountState, ExternalAccountSummary};
use super::step::{CauseKind, Step, StepCause, StepKind, StepStatus};

/// Seconds in a day.
pub const DAY_SECS: i64 = 24 * 60 * 60;
/// The longest hold a policy may ask for.
pub(crate) const MAX_HOLD_DAYS: u32 = 365;
/// The longest wait after a failed payout a policy may ask for.
pub(crate) const MAX_RETRY_AFTER_DAYS: u32 = 365;
/// How long the next payout of a currency waits after one failed, unless the external account
/// changes first.
pub(crate) const DEFAULT_RETRY_AFTER_DAYS: u32 = 3;
/// The share of Stripe's manual-payout limit after which unpaid funds are warned about, in percent.
pub(crate) const DEFAULT_STALE_PERCENT: u32 = 80;
/// The most lots one balance keeps; past it, the two closest in time are merged (dated by the
/// younger, so that merged funds never look older).
pub(crate) const MAX_LOTS: usize = 24;
/// The source type Stripe pays out from when a payout names none.
pub(crate) const DEFAULT_SOURCE_TYPE: &str = "card";
/// The largest minimum a policy may set, in minor units (a billion of the currency's major unit
/// at two decimals): far past any real payout, and far from overflowing a sum of them.
pub(crate) const MAX_MINIMUM: i64 = 100_000_000_000;

/// A UTC weekday, as `weekly:<day>` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Weekday {
    /// `monday`.
    Monday,
    /// `tuesday`.
    Tuesday,
    /// `wednesday`.
    Wednesday,
    /// `thursday`.
    Thursday,
    /// `friday`.
    Friday,
    /// `saturday`.
    Saturday,
    /// `sunday`.
    Sunday,
}

impl Weekday {
    /// Monday first.
    pub const ALL: [Self; 7] = [
        Self::Monday,
        Self::Tuesday,
        Self::Wednesday,
        Self::Thursday,
        Self::Friday,
        Self::Saturday,
        Self::Sunday,
    ];

    /// The day's lowercase English name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monday => "monday",
            Self::Tuesday => "tuesday",
            Self::Wednesday => "wednesday",
            Self::Thursday => "thursday",
            Self::Friday => "friday",
            Self::Saturday => "saturday",
            Self::Sunday => "sunday",
        }
    }

    /// The UTC weekday of a Unix time.
    pub fn of(unix_secs: i64) -> Self {
        // 1970-01-01 was a Thursday, index 3 counting from Monday.
        let index = (unix_secs.div_euclid(DAY_SECS) + 3).rem_euclid(7);
        Self::ALL.into_iter().nth(usize::try_from(index).unwrap_or(0)).unwrap_or(Self::Monday)
    }

    fn index(self) -> i64 {
        Self::ALL.iter().position(|day| *day == self).and_then(|i| i64::try_from(i).ok()).unwrap_or(0)
    }
}

/// When a policy lets payouts be planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PayoutSchedule {
    /// As soon as funds are payable (the behaviour before policies).
    #[default]
    OnAvailable,
    /// At most one planned payout per currency and source type per UTC day.
    Daily,
    /// Only on this UTC weekday, at most once that day.
    Weekly(Weekday),
}

impl PayoutSchedule {
    /// Reads `on_available`, `daily` or `weekly:<day>` (`weekly:monday` … `weekly:sunday`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "on_available" => Some(Self::OnAvailable),
            "daily" => Some(Self::Daily),
            _ => {
                let day = text.strip_prefix("weekly:")?;
                Weekday::ALL.into_iter().find(|weekday| weekday.as_str() == day).map(Self::Weekly)
            }
        }
    }

    /// Whether a payout may be planned at `now`, the last one of its balance having been planned
    /// at `last_planned`.
    pub fn allows(self, now: i64, last_planned: Option<i64>) -> bool {
        let not_today = last_planned.is_none_or(|last| last.div_euclid(DAY_SECS) < now.div_euclid(DAY_SECS));
        match self {
            Self::OnAvailable => true,
            Self::Daily => not_today,
            Self::Weekly(day) => not_today && Weekday::of(now) == day,
        }
    }

    /// The next time after `now` at which [`Self::allows`] may turn true.
    pub(crate) fn next_opening(self, now: i64) -> i64 {
        let today = now.div_euclid(DAY_SECS);
        let days_ahead = match self {
            Self::OnAvailable | Self::Daily => 1,
            Self::Weekly(day) => {
                let ahead = (day.index() - Weekday::of(now).index()).rem_euclid(7);
                if ahead == 0 { 7 } else { ahead }
            }
        };
        today.saturating_add(days_ahead).saturating_mul(DAY_SECS)
    }
}

impl fmt::Display for PayoutSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OnAvailable => f.write_str("on_available"),
            Self::Daily => f.write_str("daily"),
            Self::Weekly(day) => write!(f, "weekly:{}", day.as_str()),
        }
    }
}

impl TryFrom<String> for PayoutSchedule {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or("not a payout schedule (on_available, daily, weekly:<day>)")
    }
}

impl From<PayoutSchedule> for String {
    fn from(schedule: PayoutSchedule) -> Self {
        schedule.to_string()
    }
}

/// How a payout is sent (Stripe's `method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutMethod {
    /// Stripe's standard payout.
    #[default]
    Standard,
    /// An Instant Payout, where the external account supports it; standard otherwise.
    Instant,
}

impl PayoutMethod {
    /// Stripe's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Instant => "instant",
        }
    }

    /// Reads `standard` or `instant`.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Standard, Self::Instant].into_iter().find(|method| method.as_str() == text)
    }
}

/// When and how an account on manual payouts is paid out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutPolicy {
    /// Only funds available for at least this many days are paid out (0 to [`MAX_HOLD_DAYS`]).
    #[serde(default)]
    pub hold_days: u32,
    /// Per lowercase currency: no payout below this many minor units.
    #[serde(default)]
    pub minimum: BTreeMap<String, i64>,
    /// When payouts may be planned.
    #[serde(default)]
    pub schedule: PayoutSchedule,
    /// Standard or instant.
    #[serde(default)]
    pub method: PayoutMethod,
    /// After a payout of a currency failed, its next payout waits this many days (1 to
    /// [`MAX_RETRY_AFTER_DAYS`]) unless the currency's external account changes first.
    #[serde(default = "default_retry_after_days")]
    pub retry_after_days: u32,
}

fn default_retry_after_days() -> u32 {
    DEFAULT_RETRY_AFTER_DAYS
}

impl Default for PayoutPolicy {
    fn default() -> Self {
        Self {
            hold_days: 0,
            minimum: BTreeMap::new(),
            schedule: PayoutSchedule::OnAvailable,
            method: PayoutMethod::Standard,
            retry_after_days: DEFAULT_RETRY_AFTER_DAYS,
        }
    }
}

/// Why a policy cannot be used: the field, and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy field (`hold_days`, `minimum`, `retry_after_days`).
    pub field: &'static str,
    /// What is wrong, without the value.
    pub reason: &'static str,
}

impl PayoutPolicy {
    /// Checks the bounds every policy must keep. Currency codes are checked by whoever reads them
    /// ([`crate::platform`] and the configuration), against Stripe's list.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.hold_days > MAX_HOLD_DAYS {
            return Err(PolicyError { field: "hold_days", reason: "hold_days must be 0 to 365" });
        }
        if !(1..=MAX_RETRY_AFTER_DAYS).contains(&self.retry_after_days) {
            return Err(PolicyError {
                field: "retry_after_days",
                reason: "retry_after_days must be 1 to 365",
            });
        }
        let bad_minimum = self.minimum.iter().any(|(currency, amount)| {
            !(0..=MAX_MINIMUM).contains(amount)
                || currency.len() != 3
                || !currency.bytes().all(|byte| byte.is_ascii_lowercase())
        });
        if bad_minimum {
            return Err(PolicyError {
                field: "minimum",
                reason: "minimum must map lowercase currency codes to whole minor units from 0",
            });
        }
        Ok(())
    }

    /// The smallest payout of `currency`: its minimum, and never less than one minor unit.
    pub(crate) fn minimum_of(&self, currency: &str) -> i64 {
        self.minimum.get(currency).copied().unwrap_or(0).max(1)
    }

    fn hold_secs(&self) -> i64 {
        i64::from(self.hold_days).saturating_mul(DAY_SECS)
    }

    fn retry_secs(&self) -> i64 {
        i64::from(self.retry_after_days).saturating_mul(DAY_SECS)
    }
}

/// Whose policy an account follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// Its own, set with `PUT /accounts/{id}/payout_policy`.
    Account,
    /// The deployment's default (configuration), since it has none of its own.
    Default,
}

/// A policy and whose it is, as the account's JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountPayoutPolicy {
    /// `account` for a stored policy; `default` only in answers, never stored.
    pub source: PolicySource,
    /// The policy itself.
    #[serde(flatten)]
    pub policy: PayoutPolicy,
}

/// The deployment's payout configuration: the default policy, and when unpaid funds are warned of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoutSettings {
    /// The policy of every account without its own.
    pub policy: PayoutPolicy,
    /// Funds unpaid for this share (in percent, 1 to 100) of Stripe's manual-payout limit are
    /// warned about on the account and in the `PayoutFundsStale` metric.
    pub stale_percent: u32,
}

impl Default for PayoutSettings {
    fn default() -> Self {
        Self { policy: PayoutPolicy::default(), stale_percent: DEFAULT_STALE_PERCENT }
    }
}

impl PayoutSettings {
    /// The policy `account` follows: its own, or the default.
    pub(crate) fn policy_of<'a>(&'a self, account: &'a AccountState) -> &'a PayoutPolicy {
        account.payout_policy.as_ref().map_or(&self.policy, |own| &own.policy)
    }

    /// The policy `account` follows, with whose it is, for its JSON.
    pub(crate) fn shown_policy(&self, account: &AccountState) -> AccountPayoutPolicy {
        match &account.payout_policy {
            Some(own) => AccountPayoutPolicy { source: PolicySource::Account, policy: own.policy.clone() },
            None => AccountPayoutPolicy { source: PolicySource::Default, policy: self.policy.clone() },
        }
    }
}

/// Stripe's manual-payout limit for an account's country, in days: funds must be paid out within
/// it (2 years in the United States, 10 days in Thailand, 90 days elsewhere). An account whose
/// country is unknown gets the shortest common limit, 90 days, so that a warning is never late.
pub(crate) fn manual_payout_limit_days(country: Option<&str>) -> u32 {
    match country.map(str::to_ascii_uppercase).as_deref() {
        Some("US") => 730,
        Some("TH") => 10,
        _ => 90,
    }
}

/// Funds of one amount that first appeared in one balance event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// Minor units, positive.
    pub amount: i64,
    /// When they were first seen available (the balance event's `created`).
    pub since: i64,
}

/// One available balance (a currency, and a source type within it), as lots oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBalance {
    /// Lowercase currency.
    pub currency: String,
    /// Stripe's balance source type: `card` (the default), `bank_account`, `fpx`.
    pub source_type: String,
    /// Oldest first; at most [`MAX_LOTS`].
    #[serde(default)]
    pub lots: Vec<Lot>,
    /// When the last payout of this balance was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_planned: Option<i64>,
}

impl HeldBalance {
    fn new(currency: &str, source_type: &str) -> Self {
        Self { currency: currency.to_owned(), source_type: source_type.to_owned(), ..Self::default() }
    }

    /// Everything held, in minor units.
    pub fn total(&self) -> i64 {
        self.lots.iter().fold(0i64, |sum, lot| sum.saturating_add(lot.amount))
    }

    /// What has been held since `cutoff` or before.
    pub(crate) fn held_since(&self, cutoff: i64) -> i64 {
        self.lots
            .iter()
            .filter(|lot| lot.since <= cutoff)
            .fold(0i64, |sum, lot| sum.saturating_add(lot.amount))
    }

    /// Brings the lots to the balance `amount` seen at `at`: a rise is a new lot dated `at`, a fall
    /// takes the oldest lots first.
    pub(crate) fn observe(&mut self, amount: i64, at: i64) {
        let amount = amount.max(0);
        let total = self.total();
        if amount > total {
            self.add(amount - total, at);
        } else {
            self.take_oldest(total - amount);
        }
    }

    /// Adds funds first seen at `since`, in date order.
    pub fn add(&mut self, amount: i64, since: i64) {
        if amount <= 0 {
            return;
        }
        let position = self.lots.iter().position(|lot| lot.since > since).unwrap_or(self.lots.len());
        match position.checked_sub(1).and_then(|previous| self.lots.get_mut(previous)) {
            Some(lot) if lot.since == since => lot.amount = lot.amount.saturating_add(amount),
            _ => self.lots.insert(position, Lot { amount, since }),
        }
        self.compact();
    }

    /// Takes `amount` from the oldest lots (all of them, if they hold less).
    pub(crate) fn take_oldest(&mut self, mut amount: i64) {
        for lot in &mut self.lots {
            if amount <= 0 {
                break;
            }
            let taken = lot.amount.min(amount);
            lot.amount -= taken;
            amount -= taken;
        }
        self.lots.retain(|lot| lot.amount > 0);
    }

    /// Takes every lot held since `cutoff` or before: their total and the youngest one's date.
    pub(crate) fn take_held_since(&mut self, cutoff: i64) -> (i64, Option<i64>) {
        let mut amount = 0i64;
        let mut youngest = None;
        self.lots.retain(|lot| {
            if lot.since <= cutoff {
                amount = amount.saturating_add(lot.amount);
                youngest = Some(youngest.map_or(lot.since, |since: i64| since.max(lot.since)));
                false
            } else {
                true
            }
        });
        (amount, youngest)
    }

    /// Keeps at most [`MAX_LOTS`], merging the two lots closest in time into the younger one's date.
    fn compact(&mut self) {
        self.lots.retain(|lot| lot.amount > 0);
        while self.lots.len() > MAX_LOTS {
            let closest = self
                .lots
                .windows(2)
                .enumerate()
                .filter_map(|(index, pair)| match pair {
                    [older, younger] => Some((index, younger.since.saturating_sub(older.since))),
                    _ => None,
                })
                .min_by_key(|(_, gap)| *gap)
                .map(|(index, _)| index);
            let Some(index) = closest else { break };
            let older = self.lots.remove(index);
            if let Some(younger) = self.lots.get_mut(index) {
                younger.amount = younger.amount.saturating_add(older.amount);
            }
        }
    }

    fn key(&self) -> (&str, &str) {
        (&self.currency, &self.source_type)
    }
}

/// A payout that failed, and what its currency's next payout waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureHold {
    /// The failed payout (`po_…`), as the account's `payout_failure` names it.
    pub payout_id: String,
    /// Its currency, from its step; `None` holds every currency.
    pub currency: Option<String>,
    /// When it failed.
    pub failed_at: i64,
    /// When the next payout may go anyway.
    pub retry_at: i64,
    /// The currency's external accounts when the hold began: a change releases it.
    pub external_accounts: String,
    /// Whether the hold is over (the external account changed, or the retry time came).
    #[serde(default)]
    pub released: bool,
}

/// Funds left unpaid long enough to near Stripe's manual-payout limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleFunds {
    /// Lowercase currency.
    pub currency: String,
    /// How much has been unpaid for at least `warn_after_days`.
    pub amount: i64,
    /// Since when the oldest of it has been available.
    pub since: i64,
    /// Stripe's limit for the account's country, in days.
    pub limit_days: u32,
    /// The configured share of it, in days.
    pub warn_after_days: u32,
}

/// What the account keeps for its payouts: its held balances, the latest balance event, a failure
/// hold, warnings, and when the sweep should look at it next.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutFunds {
    /// One per currency and source type seen with funds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balances: Vec<HeldBalance>,
    /// The newest balance event that reported funds: the cause of payouts the sweep plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_event: Option<String>,
    /// That event's livemode, which the sweep's payouts carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub livemode: Option<bool>,
    /// The newest failed payout and what its currency waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_hold: Option<FailureHold>,
    /// Funds unpaid past the configured share of Stripe's manual-payout limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<StaleFunds>,
    /// When something may next become payable (or a warning due): the sweep plans then. A time
    /// already past means the sweep checks on every run (a failure hold, a payout in the way,
    /// stale funds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
}

impl PayoutFunds {
    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What a payout step carries besides its amount: how it is sent, and how old its funds are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutOptions {
    /// Stripe's `method`: `standard` or `instant`; unset sends none (standard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Stripe's `source_type`, when the balance is split by source (or is not `card`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    /// The date of the youngest funds it pays: funds given back to the balance (the step
    /// superseded before it was sent) are held again from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_since: Option<i64>,
    /// Stripe's code for refusing it as an instant payout, after which it went as standard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instant_refused: Option<String>,
}

/// The source type a payout step draws from: its own, else `card`.
pub(crate) fn source_type_of(step: &Step) -> &str {
    step.payout.as_ref().and_then(|options| options.source_type.as_deref()).unwrap_or(DEFAULT_SOURCE_TYPE)
}

/// One entry of `balance.available[]`: a currency's amount, and its split by source type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceEntry {
    /// Lowercase currency.
    pub currency: String,
    /// Minor units available.
    pub amount: i64,
    /// `source_types`: source type to minor units; empty when the entry has none.
    pub source_types: BTreeMap<String, i64>,
}

impl BalanceEntry {
    /// The balances it reports, each with the `source_type` a payout of it names: none for a
    /// balance that is all `card` (Stripe's default), each type for a split one.
    fn balances(&self) -> Vec<(String, i64, Option<String>)> {
        match self.source_types.len() {
            0 => vec![(DEFAULT_SOURCE_TYPE.to_owned(), self.amount, None)],
            1 => self
                .source_types
                .iter()
                .map(|(source_type, amount)| {
                    let named = (source_type != DEFAULT_SOURCE_TYPE).then(|| source_type.clone());
                    (source_type.clone(), *amount, named)
                })
                .collect(),
            _ => self
                .source_types
                .iter()
                .map(|(source_type, amount)| (source_type.clone(), *amount, Some(source_type.clone())))
                .collect(),
        }
    }
}

/// Reads `available[]` of a balance object: entries whose currency or amount cannot be read are
/// skipped, and so are source types that are not plain names or whose amount is not an integer.
pub(crate) fn read_balance_entries(balance: &Value) -> Vec<BalanceEntry> {
    let Some(available) = balance.get("available").and_then(Value::as_array) else { return Vec::new() };
    available
        .iter()
        .filter_map(|entry| {
            let currency = entry
                .get("currency")
                .and_then(Value::as_str)
                .filter(|currency| currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()))?
                .to_ascii_lowercase();
            let amount = entry.get("amount").and_then(Value::as_i64)?;
            let source_types = entry
                .get("source_types")
                .and_then(Value::as_object)
                .map(|types| {
                    types
                        .iter()
                        .filter(|(name, _)| is_source_type_name(name))
                        .filter_map(|(name, amount)| Some((name.clone(), amount.as_i64()?)))
                        .collect()
                })
                .unwrap_or_default();
            Some(BalanceEntry { currency, amount, source_types })
        })
        .collect()
}

/// A source type name safe to put in a step id: lowercase letters and underscores, at most 32.
fn is_source_type_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// What asks for a plan.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PayoutTrigger<'a> {
    /// A `balance.available` event on the account, newer than any applied before.
    Balance {
        /// `evt_…`.
        event_id: &'a str,
        /// Its `created`.
        created: i64,
        /// Its `available[]`.
        entries: &'a [BalanceEntry],
    },
    /// The sweep, at the account's due time: no new balance, only time passing.
    Sweep,
}

/// Whether a `balance.available` of `created` is stale for `account`: two balance events of one
/// second cannot be ordered, and the second may predate a payout the first planned, so only a
/// strictly newer balance plans.
pub(crate) fn is_stale_balance(account: &AccountState, created: i64) -> bool {
    account.ordering.balance.is_some_and(|newest| created <= newest)
}

/// What one plan writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PayoutPlan {
    /// The account's next state, one version up; `None` when nothing about it changed (and then
    /// nothing is planned either).
    pub account: Option<AccountState>,
    /// New payout steps, queued.
    pub new_steps: Vec<Step>,
    /// Stored payout steps refused because a newer, smaller balance cannot cover them, each one
    /// version up.
    pub superseded: Vec<Step>,
}

/// Plans the payouts `trigger` makes due for `account`, by the policy it follows, given its
/// payout steps `payouts`, at `now`.
///
/// Only accounts on manual payouts are paid out. Per currency and source type: a payout that may
/// be moving money (in flight) or that the platform asked for blocks its balance, as before; an
/// unsent payout of ours stands if the new balance still covers it and is superseded (refused, its
/// funds held again) if not. Then funds held at least `hold_days` are paid, if the schedule allows
/// it, no failed payout holds the currency, and they reach the minimum.
pub(crate) fn plan_payouts(
    trigger: &PayoutTrigger<'_>,
    account: &AccountState,
    settings: &PayoutSettings,
    payouts: &[Step],
    livemode: Option<bool>,
    now: i64,
) -> PayoutPlan {
    let mut next = account.clone();
    if account.payout_schedule_interval.as_deref() != Some("manual") {
        // Off manual payouts: nothing to pay, and nothing for the sweep to come back for.
        if next.payout_funds.due_at.take().is_none() {
            return PayoutPlan::default();
        }
        next.version += 1;
        return PayoutPlan { account: Some(next), ..PayoutPlan::default() };
    }
    let policy = settings.policy_of(account);
    let open: Vec<&Step> = payouts
        .iter()
        .filter(|step| {
            step.kind == StepKind::Payout && step.destination == account.account_id && !step.status.is_final()
        })
        .collect();
    let funds = &mut next.payout_funds;
    let mut superseded = Vec::new();
    // The source type each balance's payout names, in the order the event lists them.
    let mut order: Vec<(String, String, Option<String>)> = Vec::new();
    if let PayoutTrigger::Balance { event_id, created, entries } = *trigger {
        let seen_at = created.min(now);
        let mut reported: Vec<(String, String, i64, Option<String>)> = Vec::new();
        for entry in entries {
            // A currency listed twice is read once, from its first entry.
            if reported.iter().any(|(currency, ..)| *currency == entry.currency) {
                continue;
            }
            for (source_type, amount, named) in entry.balances() {
                reported.push((entry.currency.clone(), source_type, amount, named));
            }
        }
        // A balance no longer reported has nothing available.
        for held in &funds.balances {
            if !reported.iter().any(|(currency, source_type, ..)| held.key() == (currency, source_type)) {
                reported.push((held.currency.clone(), held.source_type.clone(), 0, None));
            }
        }
        for (currency, source_type, amount, named) in reported {
            let mine: Vec<&Step> = open
                .iter()
                .copied()
                .filter(|step| {
                    step.currency.eq_ignore_ascii_case(&currency) && source_type_of(step) == source_type
                })
                .collect();
            let pending = mine.iter().fold(0i64, |sum, step| sum.saturating_add(step.amount));
            let held = held_balance(&mut funds.balances, &currency, &source_type);
            let blocked = mine.iter().any(|step| step.may_have_been_sent() || step.requested.is_some());
            if blocked || amount >= pending {
                // What the open payouts will take is not available to pay again. One in flight
                // may have been taken from the balance already, counting it twice: fewer funds,
                // never more.
                held.observe(amount.saturating_sub(pending), seen_at);
            } else {
                for step in &mine {
                    let since = step.payout.as_ref().and_then(|options| options.available_since);
                    held.add(step.amount, since.unwrap_or(step.created_at));
                    let mut old = (*step).clone();
                    old.status = StepStatus::Refused;
                    old.reason = Some(format!("superseded by the newer balance of {event_id}"));
                    old.updated_at = now;
                    old.version += 1;
                    superseded.push(old);
                }
                held.observe(amount, seen_at);
            }
            order.push((currency, source_type, named));
        }
        funds.balances.retain(|held| !held.lots.is_empty() || held.last_planned.is_some());
        if funds.balances.iter().any(|held| !held.lots.is_empty()) {
            funds.balance_event = Some((*event_id).to_owned());
            funds.livemode = livemode;
        }
    } else {
        for held in &funds.balances {
            let named = (held.source_type != DEFAULT_SOURCE_TYPE).then(|| held.source_type.clone());
            order.push((held.currency.clone(), held.source_type.clone(), named));
        }
    }
    let funds = &mut next.payout_funds;
    update_failure_hold(funds, account, payouts, policy, now);
    let cause = match trigger {
        PayoutTrigger::Balance { event_id, .. } => (*event_id).to_owned(),
        PayoutTrigger::Sweep => funds.balance_event.clone().unwrap_or_else(|| "sweep".to_owned()),
    };
    let step_livemode = match trigger {
        PayoutTrigger::Balance { .. } => livemode,
        PayoutTrigger::Sweep => funds.livemode,
    };
    let id_part = match trigger {
        PayoutTrigger::Balance { event_id, .. } => (*event_id).to_owned(),
        PayoutTrigger::Sweep => format!("due{now}"),
    };
    // An unsent payout of ours that stands has its funds set aside already, so more can be paid
    // beside it; one that may be moving money, or that the platform asked for, blocks its balance.
    let blocks = |currency: &str, source_type: &str| {
        open.iter().any(|step| {
            step.currency.eq_ignore_ascii_case(currency)
                && source_type_of(step) == source_type
                && (step.may_have_been_sent() || step.requested.is_some())
        })
    };
    let cutoff = now.saturating_sub(policy.hold_secs());
    let mut new_steps = Vec::new();
    let mut due: Option<i64> = None;
    let mut soonest = |at: i64| due = Some(due.map_or(at, |due: i64| due.min(at)));
    for (currency, source_type, named) in &order {
        let held_by_failure = funds.failure_hold.as_ref().is_some_and(|hold| hold.holds(currency));
        let blocked = blocks(currency, source_type);
        let Some(held) = funds.balances.iter_mut().find(|held| held.key() == (currency, source_type)) else {
            continue;
        };
        for lot in &held.lots {
            let payable_at = lot.since.saturating_add(policy.hold_secs());
            if payable_at > now {
                soonest(payable_at);
            }
        }
        let payable = held.held_since(cutoff);
        if payable < policy.minimum_of(currency) {
            continue;
        }
        if held_by_failure {
            // Checked again on every sweep: a change of external account releases it.
            if let Some(hold) = &funds.failure_hold {
                soonest(hold.failed_at);
            }
            continue;
        }
        if blocked {
            // Checked again on every sweep, until the payout in the way is final.
            soonest(held.lots.first().map_or(now, |lot| lot.since));
            continue;
        }
        if !policy.schedule.allows(now, held.last_planned) {
            soonest(policy.schedule.next_opening(now));
            continue;
        }
        let (amount, available_since) = held.take_held_since(cutoff);
        held.last_planned = Some(now);
        let suffix = named.as_deref().map(|source_type| format!(":{source_type}")).unwrap_or_default();
        let method = (policy.method == PayoutMethod::Instant && supports_instant(account, currency))
            .then(|| PayoutMethod::Instant.as_str().to_owned());
        new_steps.push(Step {
            livemode: step_livemode,
            cause: Some(StepCause::new(CauseKind::Balance, cause.clone())),
            payout: Some(PayoutOptions {
                method,
                source_type: named.clone(),
                available_since,
                instant_refused: None,
            }),
            ..Step::planned(
                StepKind::Payout,
                format!("po:{}:{id_part}:{currency}{suffix}", account.account_id),
                account.account_id.clone(),
                amount,
                currency.clone(),
                now,
            )
        });
    }
    funds.warnings = stale_funds(&funds.balances, account.country.as_deref(), settings.stale_percent, now);
    if let Some(since) = funds.warnings.iter().map(|warning| warning.since).min() {
        // Checked again (and counted in the metric) on every sweep until the funds are paid.
        soonest(since);
    }
    if let Some(warn_at) =
        next_warning(&funds.balances, account.country.as_deref(), settings.stale_percent, now)
    {
        soonest(warn_at);
    }
    funds.due_at = due;
    if next == *account && new_steps.is_empty() && superseded.is_empty() {
        return PayoutPlan::default();
    }
    if let PayoutTrigger::Balance { created, .. } = trigger {
        next.ordering.balance = Some(*created);
    }
    next.version += 1;
    PayoutPlan { account: Some(next), new_steps, superseded }
}

fn held_balance<'a>(
    balances: &'a mut Vec<HeldBalance>,
    currency: &str,
    source_type: &str,
) -> &'a mut HeldBalance {
    let index = match balances.iter().position(|held| held.key() == (currency, source_type)) {
        Some(index) => index,
        None => {
            balances.push(HeldBalance::new(currency, source_type));
            balances.len() - 1
        }
    };
    // The index was just found or pushed.
    &mut balances[index]
}

impl FailureHold {
    /// Whether this hold keeps payouts of `currency` back.
    pub fn holds(&self, currency: &str) -> bool {
        !self.released && self.currency.as_deref().is_none_or(|held| held.eq_ignore_ascii_case(currency))
    }
}

/// Starts a hold for a payout failure not seen before, releases one whose retry time came or
/// whose currency's external accounts changed, and drops it once a later payout reached the bank
/// (the account's `payout_failure` is cleared then).
fn update_failure_hold(
    funds: &mut PayoutFunds,
    account: &AccountState,
    payouts: &[Step],
    policy: &PayoutPolicy,
    now: i64,
) {
    let Some(failure) = &account.payout_failure else {
        funds.failure_hold = None;
        return;
    };
    let is_new = funds.failure_hold.as_ref().is_none_or(|hold| hold.payout_id != failure.payout_id);
    if is_new {
        let currency = failure
            .step_id
            .as_deref()
            .and_then(|step_id| payouts.iter().find(|step| step.step_id == step_id))
            .map(|step| step.currency.to_ascii_lowercase());
        // First seen after the failure: an external account of the currency written since, and
        // not errored (as Stripe marks one a payout failed to reach), is already the fix.
        let fixed = replaced_since(account, currency.as_deref(), failure.failed_at);
        funds.failure_hold = Some(FailureHold {
            payout_id: failure.payout_id.clone(),
            external_accounts: external_accounts_of(account, currency.as_deref()),
            currency,
            failed_at: failure.failed_at,
            retry_at: failure.failed_at.saturating_add(policy.retry_secs()),
            released: fixed,
        });
    }
    if let Some(hold) = funds.failure_hold.as_mut().filter(|hold| !hold.released) {
        let changed = external_accounts_of(account, hold.currency.as_deref()) != hold.external_accounts;
        if changed || now >= hold.retry_at {
            hold.released = true;
        }
    }
}

/// Whether an external account payouts of `currency` may go to was written by an event after
/// `failed_at` and is not `errored`.
fn replaced_since(account: &AccountState, currency: Option<&str>, failed_at: i64) -> bool {
    account.external_accounts.iter().any(|(id, external)| {
        let of_currency = currency.is_none_or(|currency| {
            external.currency.as_deref().is_none_or(|own| own.eq_ignore_ascii_case(currency))
        });
        let written_after = account.ordering.external_accounts.get(id).is_some_and(|at| *at > failed_at);
        of_currency && written_after && external.status.as_deref() != Some("errored")
    })
}

/// What identifies the external accounts payouts of `currency` (all, for `None`) may go to: a
/// change of any of them (added, removed, re-verified, made default) shows here.
pub(crate) fn external_accounts_of(account: &AccountState, currency: Option<&str>) -> String {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    account
        .external_accounts
        .iter()
        .filter(|(_, external)| {
            currency.is_none_or(|currency| {
                external.currency.as_deref().is_none_or(|own| own.eq_ignore_ascii_case(currency))
            })
        })
        .map(|(id, external)| {
            format!(
                "{id}/{}/{}/{}/{:?}",
                text(&external.last4),
                text(&external.status),
                text(&external.currency),
                external.default_for_currency
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether payouts of `currency` go to an external account that supports Instant Payouts: the
/// currency's default external account (or its only one) lists `instant` among its
/// `available_payout_methods`.
pub(crate) fn supports_instant(account: &AccountState, currency: &str) -> bool {
    let of_currency: Vec<&ExternalAccountSummary> = account
        .external_accounts
        .values()
        .filter(|external| external.currency.as_deref().is_some_and(|own| own.eq_ignore_ascii_case(currency)))
        .collect();
    let chosen = of_currency
        .iter()
        .find(|external| external.default_for_currency == Some(true))
        .or_else(|| of_currency.first().filter(|_| of_currency.len() == 1));
    chosen.is_some_and(|external| external.available_payout_methods.iter().any(|method| method == "instant"))
}

fn warn_after_secs(country: Option<&str>, stale_percent: u32) -> (u32, u32, i64) {
    let limit_days = manual_payout_limit_days(country);
    let warn_after_days = limit_days.saturating_mul(stale_percent.clamp(1, 100)) / 100;
    (limit_days, warn_after_days, i64::from(warn_after_days).saturating_mul(DAY_SECS))
}

/// Per currency, the funds unpaid for at least the configured share of the account's limit.
pub fn stale_funds(
    balances: &[HeldBalance],
    country: Option<&str>,
    stale_percent: u32,
    now: i64,
) -> Vec<StaleFunds> {
    let (limit_days, warn_after_days, warn_after) = warn_after_secs(country, stale_percent);
    let cutoff = now.saturating_sub(warn_after);
    let mut warnings: Vec<StaleFunds> = Vec::new();
    for held in balances {
        let amount = held.held_since(cutoff);
        let Some(oldest) = held.lots.first().filter(|_| amount > 0) else { continue };
        match warnings.iter_mut().find(|warning| warning.currency == held.currency) {
            Some(warning) => {
                warning.amount = warning.amount.saturating_add(amount);
                warning.since = warning.since.min(oldest.since);
            }
            None => warnings.push(StaleFunds {
                currency: held.currency.clone(),
                amount,
                since: oldest.since,
                limit_days,
                warn_after_days,
            }),
        }
    }
    warnings
}

/// When the next lot not yet warned about will be.
fn next_warning(
    balances: &[HeldBalance],
    country: Option<&str>,
    stale_percent: u32,
    now: i64,
) -> Option<i64> {
    let (_, _, warn_after) = warn_after_secs(country, stale_percent);
    balances
        .iter()
        .flat_map(|held| &held.lots)
        .map(|lot| lot.since.saturating_add(warn_after))
        .filter(|at| *at > now)
        .min()
}

#[cfg(test)]
mod tests;
