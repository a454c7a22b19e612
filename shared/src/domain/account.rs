//! Connected accounts: their stored state, the onboarding-status rule, and the pure decision that
//! turns one event plus the stored state into the next state.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use self::view::{ObjectView, RequirementsView, Str};
use super::step::StepId;
use crate::stripe::event::{Event, is_plausible_id};

/// A connected account's id (`acct_…`). Deserialising checks it as [`AccountId::parse`] does, so
/// no stored record or queue message can carry an id the code would not have accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct AccountId(String);

impl TryFrom<String> for AccountId {
    type Error = &'static str;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::parse(&id).ok_or("not a connected account id (acct_ followed by letters and digits)")
    }
}

impl From<AccountId> for String {
    fn from(id: AccountId) -> Self {
        id.0
    }
}

impl AccountId {
    /// Accepts `acct_` followed by letters and digits.
    pub fn parse(id: &str) -> Option<Self> {
        let rest = id.strip_prefix("acct_")?;
        let well_formed =
            !rest.is_empty() && is_plausible_id(id) && rest.bytes().all(|b| b.is_ascii_alphanumeric());
        well_formed.then(|| Self(id.to_owned()))
    }

    /// The id as Stripe writes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a connected account stands in onboarding, by the rule in DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnboardingStatus {
    /// The platform's access was revoked and nothing newer has been heard.
    Deauthorized,
    /// Stripe rejected the account (`disabled_reason` `rejected.*`).
    Rejected,
    /// The account holder has not finished submitting details.
    Onboarding,
    /// Stripe disabled the account for a reason other than rejection.
    Restricted,
    /// Requirements are currently due or past due.
    ActionRequired,
    /// Stripe is verifying submitted information.
    PendingVerification,
    /// Charges and payouts are both enabled.
    Active,
}

impl OnboardingStatus {
    /// Every status, in the rule's order.
    pub const ALL: [Self; 7] = [
        Self::Deauthorized,
        Self::Rejected,
        Self::Onboarding,
        Self::Restricted,
        Self::ActionRequired,
        Self::PendingVerification,
        Self::Active,
    ];

    /// The status's name as it appears in JSON and in `?status=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deauthorized => "deauthorized",
            Self::Rejected => "rejected",
            Self::Onboarding => "onboarding",
            Self::Restricted => "restricted",
            Self::ActionRequired => "action_required",
            Self::PendingVerification => "pending_verification",
            Self::Active => "active",
        }
    }

    /// Reads a status name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == name)
    }
}

/// An account's (or a person's) outstanding requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    /// Due now.
    pub currently_due: Vec<String>,
    /// Due eventually.
    pub eventually_due: Vec<String>,
    /// Overdue.
    pub past_due: Vec<String>,
    /// Submitted and being verified.
    pub pending_verification: Vec<String>,
    /// Unix time by which `currently_due` must be met.
    pub current_deadline: Option<i64>,
}

/// What the account keeps of one of its persons.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonSummary {
    /// The person's own requirements.
    pub requirements: Requirements,
    /// `verification.status`, when given.
    pub verification_status: Option<String>,
}

/// What the account keeps of one of its external accounts (bank accounts and debit cards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAccountSummary {
    /// `bank_account` or `card`.
    pub object: Option<String>,
    /// Last four digits.
    pub last4: Option<String>,
    /// Three-letter currency code.
    pub currency: Option<String>,
    /// For example `new`, `verified`, `errored`.
    pub status: Option<String>,
    /// Whether payouts in its currency go here by default.
    pub default_for_currency: Option<bool>,
    /// `available_payout_methods`: `standard`, and `instant` where Instant Payouts can reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub available_payout_methods: Vec<String>,
}

/// A payout that did not reach the bank, kept on the account so that it is seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayoutFailure {
    /// `po_…`.
    pub payout_id: String,
    /// Stripe's `failure_code`, or `canceled`.
    pub failure_code: String,
    /// The event's `created`.
    pub failed_at: i64,
    /// The payout step Connect Flow planned it as, when it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
}

/// The `created` time of the newest event applied to each independently ordered part of an
/// account. An event older than its part's guard is stale. Guards outlive deletions, so that an
/// older update cannot bring a deleted person or bank account back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderingGuards {
    /// The account object itself.
    pub account: Option<i64>,
    /// The application (de)authorisation events.
    #[serde(default)]
    pub authorization: Option<i64>,
    /// `balance.available`: payouts are planned only from the newest balance.
    #[serde(default)]
    pub balance: Option<i64>,
    /// Each capability.
    pub capabilities: BTreeMap<String, i64>,
    /// Each person.
    pub persons: BTreeMap<String, i64>,
    /// Each external account.
    pub external_accounts: BTreeMap<String, i64>,
}

/// The disputes that reach an account through the transfers it was paid, as its JSON shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDisputes {
    /// How many of [`Self::cases`] are still open.
    pub open: u32,
    /// Per currency: the account's share of disputed funds that no reversal was planned to take
    /// back (the `hold` or `none` policy, or nothing left to reverse), while the dispute is lost
    /// or open.
    pub unrecovered: BTreeMap<String, i64>,
    /// Each dispute by `dp_…` id.
    #[serde(default)]
    pub cases: BTreeMap<String, AccountDispute>,
}

/// One dispute as it concerns one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDispute {
    /// The disputed charge.
    pub charge_id: String,
    /// Stripe's dispute `status` as last seen.
    pub status: String,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The account's share of the withdrawn funds that no reversal takes back.
    pub unrecovered: i64,
}

impl AccountDisputes {
    /// Recomputes `open` and `unrecovered` from the cases.
    pub fn recount(&mut self) {
        self.open = u32::try_from(self.cases.values().filter(|case| is_open_dispute(&case.status)).count())
            .unwrap_or(u32::MAX);
        self.unrecovered.clear();
        for case in self.cases.values().filter(|case| case.unrecovered > 0) {
            let total = self.unrecovered.entry(case.currency.clone()).or_default();
            *total = total.saturating_add(case.unrecovered);
        }
    }
}

/// Whether a dispute `status` is still open (not `won`, `lost`, `warning_closed` or `prevented`).
pub fn is_open_dispute(status: &str) -> bool {
    !matches!(status, "won" | "lost" | "warning_closed" | "prevented")
}

/// Which Accounts API an account is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountsApi {
    /// `/v1/accounts`, from snapshot events or fetched v1 objects.
    #[default]
    V1,
    /// `/v2/core/accounts`, fetched for thin events.
    V2,
}

/// The v2 capability a v1 account's `transfers` corresponds to.
pub const V2_TRANSFERS_CAPABILITY: &str = "recipient.stripe_balance.stripe_transfers";

/// Everything stored about one connected account; served as JSON by `GET /accounts/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// `acct_…`.
    pub account_id: AccountId,
    /// Derived by [`onboarding_status`] after every change.
    pub onboarding_status: OnboardingStatus,
    /// `null` until an account object has said.
    pub charges_enabled: Option<bool>,
    /// `null` until an account object has said.
    pub payouts_enabled: Option<bool>,
    /// `null` until an account object has said.
    pub details_submitted: Option<bool>,
    /// `requirements.disabled_reason` (or the old `verification.disabled_reason`).
    pub disabled_reason: Option<String>,
    /// The account's requirements.
    pub requirements: Requirements,
    /// `future_requirements`, when the API version has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub future_requirements: Option<Requirements>,
    /// Capability name to status (`active`, `pending`, `inactive`, …).
    pub capabilities: BTreeMap<String, String>,
    /// `settings.payouts.schedule.interval` (or the old `payout_schedule.interval`).
    pub payout_schedule_interval: Option<String>,
    /// Whether the newest (de)authorisation event was `account.application.deauthorized`.
    pub deauthorized: bool,
    /// Persons by id, with their own requirements.
    pub persons: BTreeMap<String, PersonSummary>,
    /// External accounts by id.
    pub external_accounts: BTreeMap<String, ExternalAccountSummary>,
    /// The newest payout that failed or was canceled, until a later payout is paid.
    #[serde(default)]
    pub payout_failure: Option<PayoutFailure>,
    /// The newest event that changed this account.
    pub last_event_id: String,
    /// That event's `created`.
    pub last_event_created: i64,
    /// Per-part ordering guards.
    pub ordering: OrderingGuards,
    /// The platform's reference, for an account created through `POST /accounts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Which Accounts API the account is read from.
    #[serde(default)]
    pub api: AccountsApi,
    /// A v2 account's capability `status_details` codes, by capability: the v2 rule reads them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capability_codes: BTreeMap<String, Vec<String>>,
    /// Disputes on payments this account was paid from, and what of them was not taken back.
    #[serde(default)]
    pub disputes: AccountDisputes,
    /// The account's country (ISO 3166-1 alpha-2), from its account object: it sets Stripe's
    /// manual-payout limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// `controller.fees.payer` (`account` for a Standard account): who pays Stripe's fees, and so
    /// who files the account's US tax forms (`account`: Stripe; otherwise the platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fees_payer: Option<String>,
    /// The payout policy the platform set for this account (`PUT /accounts/{id}/payout_policy`);
    /// without one the deployment's default applies, which the platform API shows in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_policy: Option<super::payout::AccountPayoutPolicy>,
    /// What payouts are planned from: held balances, a failed payout's hold, stale-funds warnings.
    #[serde(default, skip_serializing_if = "super::payout::PayoutFunds::is_empty")]
    pub payout_funds: super::payout::PayoutFunds,
    /// Bumped by every stored change; the store's conditional write checks it.
    #[serde(default)]
    pub version: u64,
}

impl AccountState {
    /// An account nothing is known about yet.
    pub fn new(account_id: AccountId) -> Self {
        Self::empty(account_id)
    }

    fn empty(account_id: AccountId) -> Self {
        Self {
            account_id,
            onboarding_status: OnboardingStatus::Restricted,
            charges_enabled: None,
            payouts_enabled: None,
            details_submitted: None,
            disabled_reason: None,
            requirements: Requirements::default(),
            future_requirements: None,
            capabilities: BTreeMap::new(),
            payout_schedule_interval: None,
            deauthorized: false,
            persons: BTreeMap::new(),
            external_accounts: BTreeMap::new(),
            payout_failure: None,
            last_event_id: String::new(),
            last_event_created: i64::MIN,
            ordering: OrderingGuards::default(),
            reference: None,
            api: AccountsApi::V1,
            capability_codes: BTreeMap::new(),
            disputes: AccountDisputes::default(),
            country: None,
            fees_payer: None,
            payout_policy: None,
            payout_funds: super::payout::PayoutFunds::default(),
            version: 0,
        }
    }

    /// Whether the account can receive a transfer: its `transfers` capability (v1), or
    /// `recipient.stripe_balance.stripe_transfers` (v2), is active, and it is still connected.
    pub fn can_receive_transfers(&self) -> bool {
        let capability = match self.api {
            AccountsApi::V1 => "transfers",
            AccountsApi::V2 => V2_TRANSFERS_CAPABILITY,
        };
        !self.deauthorized && self.capabilities.get(capability).is_some_and(|status| status == "active")
    }

    /// Whether the account can be paid out: payouts are enabled and it is still connected.
    pub fn can_receive_payouts(&self) -> bool {
        !self.deauthorized && self.payouts_enabled == Some(true)
    }
}

/// The onboarding-status rule of DESIGN.md for the account's API: first match wins.
pub fn onboarding_status(state: &AccountState) -> OnboardingStatus {
    let disabled_reason = state.disabled_reason.as_deref().filter(|reason| !reason.is_empty());
    let requirements = &state.requirements;
    // Deauthorisation is the latest word unless an account object is newer; it wins a tie, being
    // the one that ends the relationship.
    let deauthorized = state.deauthorized
        && state.ordering.authorization.unwrap_or(i64::MIN) >= state.ordering.account.unwrap_or(i64::MIN);
    if state.api == AccountsApi::V2 {
        return v2::v2_onboarding_status(&v2::V2Account::of_state(state), deauthorized).0;
    }
    if deauthorized {
        OnboardingStatus::Deauthorized
    } else if disabled_reason.is_some_and(|reason| reason.starts_with("rejected.")) {
        OnboardingStatus::Rejected
    } else if state.details_submitted == Some(false) {
        OnboardingStatus::Onboarding
    } else if disabled_reason.is_some() {
        OnboardingStatus::Restricted
    } else if !requirements.currently_due.is_empty() || !requirements.past_due.is_empty() {
        OnboardingStatus::ActionRequired
    } else if !requirements.pending_verification.is_empty() {
        OnboardingStatus::PendingVerification
    } else if state.charges_enabled == Some(true) && state.payouts_enabled == Some(true) {
        OnboardingStatus::Active
    } else {
        OnboardingStatus::Restricted
    }
}

/// The account events this module understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountEventKind {
    /// `account.updated`: a full account object.
    AccountUpdated,
    /// `account.application.authorized`.
    ApplicationAuthorized,
    /// `account.application.deauthorized`.
    ApplicationDeauthorized,
    /// `capability.updated`.
    CapabilityUpdated,
    /// `account.external_account.created` or `.updated`.
    ExternalAccountUpserted,
    /// `account.external_account.deleted`.
    ExternalAccountDeleted,
    /// `person.created` or `.updated`.
    PersonUpserted,
    /// `person.deleted`.
    PersonDeleted,
    /// A v2 account object, fetched for a thin event (`v2.core.account`).
    V2AccountFetched,
}

impl AccountEventKind {
    /// The kind for an event type, or `None` for types that do not touch account state.
    pub fn of(event_type: &str) -> Option<Self> {
        Some(match event_type {
            "account.updated" => Self::AccountUpdated,
            "account.application.authorized" => Self::ApplicationAuthorized,
            "account.application.deauthorized" => Self::ApplicationDeauthorized,
            "capability.updated" => Self::CapabilityUpdated,
            "account.external_account.created" | "account.external_account.updated" => {
                Self::ExternalAccountUpserted
            }
            "account.external_account.deleted" => Self::ExternalAccountDeleted,
            "person.created" | "person.updated" => Self::PersonUpserted,
            "person.deleted" => Self::PersonDeleted,
            "v2.core.account" => Self::V2AccountFetched,
            _ => return None,
        })
    }
}

/// An account event read leniently: its kind, the account it is about, and its object.
#[derive(Debug)]
pub struct AccountEvent<'a> {
    /// What kind of change.
    pub kind: AccountEventKind,
    /// The account it changes.
    pub account_id: AccountId,
    /// The event id.
    pub event_id: &'a str,
    /// The ordering key.
    pub created: i64,
    /// `data.object`.
    pub object: EventObject<'a>,
}

/// An account event's `data.object`: the fields the v1 rules read, borrowed from it in one pass,
/// and the JSON itself, which only the v2 rule reads as a whole.
#[derive(Debug)]
pub struct EventObject<'a> {
    view: ObjectView<'a>,
    json: ObjectJson<'a>,
}

#[derive(Debug)]
enum ObjectJson<'a> {
    Raw(&'a RawValue),
    Value(&'a Value),
}

impl<'a> EventObject<'a> {
    /// Reads an object from an event's raw JSON.
    pub fn from_raw(raw: &'a RawValue) -> Self {
        Self { view: ObjectView::from_json(raw.get()), json: ObjectJson::Raw(raw) }
    }

    /// The object as a `Value`; `Value::Null` if it was not JSON this parser could hold.
    fn value(&self) -> Cow<'a, Value> {
        match self.json {
            ObjectJson::Raw(raw) => Cow::Owned(serde_json::from_str(raw.get()).unwrap_or(Value::Null)),
            ObjectJson::Value(value) => Cow::Borrowed(value),
        }
    }
}

impl<'a> From<&'a Value> for EventObject<'a> {
    fn from(value: &'a Value) -> Self {
        Self { view: ObjectView::from_value(value), json: ObjectJson::Value(value) }
    }
}

/// Why an event of an account kind cannot be applied to any account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAccount;

impl<'a> AccountEvent<'a> {
    /// Reads `event` as an account event: `Ok(None)` if its type touches no account state,
    /// `Err(NoAccount)` if it does but names no well-formed account.
    pub fn from_event(event: &'a Event) -> Result<Option<Self>, NoAccount> {
        let Some(kind) = AccountEventKind::of(&event.event_type) else { return Ok(None) };
        let object = EventObject::from_raw(&event.object);
        let view = &object.view;
        let object_is = |name: &str| view.object.as_deref() == Some(name);
        let from_object = match kind {
            AccountEventKind::AccountUpdated => view.id.as_deref().filter(|_| object_is("account")),
            AccountEventKind::V2AccountFetched => view.id.as_deref().filter(|_| object_is("v2.core.account")),
            AccountEventKind::ApplicationAuthorized | AccountEventKind::ApplicationDeauthorized => None,
            _ => view.account.as_deref(),
        };
        let account_id =
            from_object.or(event.account.as_deref()).and_then(AccountId::parse).ok_or(NoAccount)?;
        Ok(Some(Self { kind, account_id, event_id: &event.id, created: event.created, object }))
    }
}

/// The result of deciding one account event against the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountDecision {
    /// Store this new state (the caller sets its next version).
    Apply(Box<AccountState>),
    /// The event is older than what is stored for the part it touches: record it, change nothing.
    Stale,
    /// The object lacks what this kind of event needs (an id, a status): record it, change nothing.
    Unreadable,
}

/// What an event did to the part of the account it touches.
enum PartChange {
    Applied,
    Stale,
    Unreadable,
}

impl From<bool> for PartChange {
    fn from(current: bool) -> Self {
        if current { Self::Applied } else { Self::Stale }
    }
}

/// Ties (an event in the same second as the guard) apply: Stripe's `created` has one-second
/// resolution, so of two events in one second the later delivery wins. A redelivery of the event
/// that set the guard never gets here: the event record stops it first.
fn is_current(guard: Option<i64>, created: i64) -> bool {
    guard.is_none_or(|guard| created >= guard)
}

/// Decides what `event` does to `current`. Pure: no I/O, no clock.
///
/// The state is copied only once the event is known to change it: a stale or unreadable event
/// costs no copy.
pub fn decide(event: &AccountEvent<'_>, current: Option<&AccountState>) -> AccountDecision {
    let mut next = match current {
        Some(current) => Cow::Borrowed(current),
        None => Cow::Owned(AccountState::empty(event.account_id.clone())),
    };
    let created = event.created;
    let object = &event.object.view;
    let change = match event.kind {
        AccountEventKind::AccountUpdated => apply_account_object(&mut next, object, created).into(),
        AccountEventKind::V2AccountFetched => {
            v2::apply_v2_account_object(next.to_mut(), &event.object.value(), created).into()
        }
        AccountEventKind::ApplicationAuthorized | AccountEventKind::ApplicationDeauthorized => {
            let current = is_current(next.ordering.authorization, created);
            if current {
                let next = next.to_mut();
                next.ordering.authorization = Some(created);
                next.deauthorized = event.kind == AccountEventKind::ApplicationDeauthorized;
            }
            current.into()
        }
        AccountEventKind::CapabilityUpdated => match (object.id.as_deref(), object.status.as_deref()) {
            (Some(name), Some(status)) => set_capability_lazily(&mut next, name, status, created).into(),
            _ => PartChange::Unreadable,
        },
        AccountEventKind::PersonUpserted | AccountEventKind::PersonDeleted => {
            let upsert = event.kind == AccountEventKind::PersonUpserted;
            upsert_or_delete(&mut next, Part::Person, object, upsert, created)
        }
        AccountEventKind::ExternalAccountUpserted | AccountEventKind::ExternalAccountDeleted => {
            let upsert = event.kind == AccountEventKind::ExternalAccountUpserted;
            upsert_or_delete(&mut next, Part::ExternalAccount, object, upsert, created)
        }
    };
    match change {
        PartChange::Stale => return AccountDecision::Stale,
        PartChange::Unreadable => return AccountDecision::Unreadable,
        PartChange::Applied => {}
    }
    let mut next = next.into_owned();
    if created >= next.last_event_created {
        if next.last_event_id != event.event_id {
            event.event_id.clone_into(&mut next.last_event_id);
        }
        next.last_event_created = created;
    }
    next.onboarding_status = onboarding_status(&next);
    AccountDecision::Apply(Box::new(next))
}

/// Sets a capability's status if the event is current for it; whether it was.
fn set_capability(state: &mut AccountState, name: &str, status: &str, created: i64) -> bool {
    if !is_current(state.ordering.capabilities.get(name).copied(), created) {
        return false;
    }
    write_capability(state, name, status, created);
    true
}

/// [`set_capability`] on a state that is copied only if the capability changes.
fn set_capability_lazily(state: &mut Cow<'_, AccountState>, name: &str, status: &str, created: i64) -> bool {
    let guard = state.ordering.capabilities.get(name).copied();
    if !is_current(guard, created) {
        return false;
    }
    if guard != Some(created) || state.capabilities.get(name).map(String::as_str) != Some(status) {
        write_capability(state.to_mut(), name, status, created);
    }
    true
}

fn write_capability(state: &mut AccountState, name: &str, status: &str, created: i64) {
    match state.capabilities.get_mut(name) {
        Some(stored) if stored == status => {}
        Some(stored) => status.clone_into(stored),
        None => {
            state.capabilities.insert(name.to_owned(), status.to_owned());
        }
    }
    state.ordering.capabilities.insert(name.to_owned(), created);
}

/// The parts of an account kept by id, each under its own guard.
#[derive(Clone, Copy)]
enum Part {
    Person,
    ExternalAccount,
}

/// Upserts (with the summary read from `object`) or deletes the entry `object` names, if the
/// event is current for it.
fn upsert_or_delete(
    state: &mut Cow<'_, AccountState>,
    part: Part,
    object: &ObjectView<'_>,
    upsert: bool,
    created: i64,
) -> PartChange {
    let Some(id) = object.id.as_deref().filter(|id| is_plausible_id(id)) else {
        return PartChange::Unreadable;
    };
    let guards = match part {
        Part::Person => &state.ordering.persons,
        Part::ExternalAccount => &state.ordering.external_accounts,
    };
    if !is_current(guards.get(id).copied(), created) {
        return PartChange::Stale;
    }
    let state = state.to_mut();
    match part {
        Part::Person => {
            state.ordering.persons.insert(id.to_owned(), created);
            match upsert {
                true => state.persons.insert(id.to_owned(), person_summary(object)),
                false => state.persons.remove(id),
            };
        }
        Part::ExternalAccount => {
            state.ordering.external_accounts.insert(id.to_owned(), created);
            match upsert {
                true => state.external_accounts.insert(id.to_owned(), external_account_summary(object)),
                false => state.external_accounts.remove(id),
            };
        }
    }
    PartChange::Applied
}

/// Overwrites the account-level fields from a full account object, old shapes included.
///
/// Each part is ordered on its own guard: an object too old for the account-level fields may still
/// be the newest word on a capability or a bank account. Returns whether any part was current.
fn apply_account_object(state: &mut Cow<'_, AccountState>, account: &ObjectView<'_>, created: i64) -> bool {
    let mut changed = apply_external_accounts_list(state, account, created);
    if let Some(capabilities) = &account.capabilities {
        for (name, status) in capabilities {
            if let Some(status) = status {
                changed |= set_capability_lazily(state, name, status, created);
            }
        }
    }
    if !is_current(state.ordering.account, created) {
        return changed;
    }
    let state = state.to_mut();
    state.ordering.account = Some(created);
    state.charges_enabled = account.charges_enabled;
    state.payouts_enabled = account.payouts_enabled;
    state.details_submitted = account.details_submitted;
    match &account.requirements {
        Some(requirements) => {
            overwrite_requirements(&mut state.requirements, requirements);
            overwrite(&mut state.disabled_reason, requirements.disabled_reason.as_deref());
        }
        None => {
            // Before 2019 the account said `verification.fields_needed` / `due_by` instead.
            let verification = account.verification.as_ref();
            let fields_needed = verification.map(|v| v.fields_needed.as_slice()).unwrap_or_default();
            let old = RequirementsView {
                currently_due: fields_needed.to_vec(),
                current_deadline: verification.and_then(|v| v.due_by),
                ..RequirementsView::default()
            };
            overwrite_requirements(&mut state.requirements, &old);
            overwrite(&mut state.disabled_reason, verification.and_then(|v| v.disabled_reason.as_deref()));
        }
    }
    match (&account.future_requirements, &mut state.future_requirements) {
        (Some(read), Some(stored)) => overwrite_requirements(stored, read),
        (read, stored) => *stored = read.as_ref().map(read_requirements),
    }
    if let Some(country) = account.country.as_deref().filter(|country| is_plausible_id(country)) {
        let uppercase = |stored: &str| stored.bytes().eq(country.bytes().map(|b| b.to_ascii_uppercase()));
        if !state.country.as_deref().is_some_and(uppercase) {
            state.country = Some(country.to_ascii_uppercase());
        }
    }
    let interval =
        account.settings_payout_interval.as_deref().or(account.payout_schedule_interval.as_deref());
    overwrite(&mut state.payout_schedule_interval, interval);
    let standard = (account.account_type.as_deref() == Some("standard")).then_some("account");
    if let Some(payer) = account.fees_payer.as_deref().or(standard).filter(|payer| is_plausible_id(payer)) {
        overwrite(&mut state.fees_payer, Some(payer));
    }
    true
}

/// Sets `stored` to `value`, reusing its allocation when the text is unchanged.
fn overwrite(stored: &mut Option<String>, value: Option<&str>) {
    match (stored.as_mut(), value) {
        (Some(stored), Some(value)) if stored == value => {}
        (Some(stored), Some(value)) => value.clone_into(stored),
        (_, value) => *stored = value.map(str::to_owned),
    }
}

/// Sets each list of `stored` to the one read, keeping a list that is unchanged.
fn overwrite_requirements(stored: &mut Requirements, read: &RequirementsView<'_>) {
    overwrite_list(&mut stored.currently_due, &read.currently_due);
    overwrite_list(&mut stored.eventually_due, &read.eventually_due);
    overwrite_list(&mut stored.past_due, &read.past_due);
    overwrite_list(&mut stored.pending_verification, &read.pending_verification);
    stored.current_deadline = read.current_deadline;
}

fn overwrite_list(stored: &mut Vec<String>, read: &[Str<'_>]) {
    if !stored.iter().map(String::as_str).eq(read.iter().map(|item| &**item)) {
        *stored = owned_list(read);
    }
}

fn owned_list(read: &[Str<'_>]) -> Vec<String> {
    read.iter().map(|item| item.clone().into_owned()).collect()
}

/// An account object lists its external accounts: each listed one is upserted under its own guard.
/// Omission is not read as deletion: the list may be truncated, and `account.external_account.deleted`
/// says so explicitly (and, unlike an omission, can be ordered against an account never seen).
///
/// A listed one whose summary and guard are already what the object says changes nothing.
fn apply_external_accounts_list(
    state: &mut Cow<'_, AccountState>,
    account: &ObjectView<'_>,
    created: i64,
) -> bool {
    let Some(listed) = &account.external_accounts else { return false };
    let mut changed = false;
    for external in listed {
        let Some(id) = external.id.as_deref().filter(|id| is_plausible_id(id)) else { continue };
        let guard = state.ordering.external_accounts.get(id).copied();
        if !is_current(guard, created) {
            continue;
        }
        changed = true;
        let summary = external_account_summary(external);
        if guard == Some(created) && state.external_accounts.get(id) == Some(&summary) {
            continue;
        }
        let state = state.to_mut();
        state.ordering.external_accounts.insert(id.to_owned(), created);
        state.external_accounts.insert(id.to_owned(), summary);
    }
    changed
}

fn read_requirements(requirements: &RequirementsView<'_>) -> Requirements {
    Requirements {
        currently_due: owned_list(&requirements.currently_due),
        eventually_due: owned_list(&requirements.eventually_due),
        past_due: owned_list(&requirements.past_due),
        pending_verification: owned_list(&requirements.pending_verification),
        current_deadline: requirements.current_deadline,
    }
}

fn person_summary(person: &ObjectView<'_>) -> PersonSummary {
    PersonSummary {
        requirements: person.requirements.as_ref().map(read_requirements).unwrap_or_default(),
        verification_status: person.verification.as_ref().and_then(|v| v.status.clone()).map(Cow::into_owned),
    }
}

fn external_account_summary(external: &ObjectView<'_>) -> ExternalAccountSummary {
    let text = |value: &Option<Str<'_>>| value.as_deref().map(str::to_owned);
    ExternalAccountSummary {
        object: text(&external.object),
        last4: text(&external.last4),
        currency: text(&external.currency),
        status: text(&external.status),
        default_for_currency: external.default_for_currency,
        available_payout_methods: owned_list(&external.available_payout_methods),
    }
}

pub mod v2;
mod view;

#[cfg(test)]
mod tests;
