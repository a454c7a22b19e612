//! The ledger: what Connect Flow has seen of each payment, booked per account, currency and UTC
//! month. Pure: reading events, merging snapshots and the arithmetic of what an entry adds.
//!
//! One [`LedgerEntry`] per payment (keyed by its charge id) gathers every Stripe object about it:
//! the charge itself, its application fee, its refunds, its disputes and the transfers made from
//! it. Each part keeps only its newest snapshot, ordered by a total order ([`Snapshot`]), so that
//! any order of deliveries, duplicates included, ends at the same entry. What the entry adds to the
//! totals is a function of the entry alone ([`contribution`]); a change writes the difference
//! between the entry's old and new contribution ([`plan_ledger`]), so nothing is counted twice.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::account::AccountId;
use crate::calendar::civil_from_days;
use crate::store::EventOutcome;
use crate::stripe::event::{Event, is_plausible_id};

/// The longest range `GET /accounts/{id}/ledger` reads, in months.
pub(crate) const MAX_LEDGER_MONTHS: i64 = 24;

/// A calendar month in UTC, written `yyyy-mm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Month {
    year: u16,
    month: u8,
}

impl Month {
    /// Accepts exactly `yyyy-mm`, year 1970 to 9999, month 01 to 12.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 7 || bytes[4] != b'-' {
            return None;
        }
        let year = digits(text.get(0..4)?)?;
        let month = digits(text.get(5..7)?)?;
        Self::new(year, month)
    }

    /// The month of year `year` (1970 to 9999) numbered `month` (1 to 12).
    pub fn new(year: u32, month: u32) -> Option<Self> {
        let valid = (1970..=9999).contains(&year) && (1..=12).contains(&month);
        valid.then(|| Self {
            year: u16::try_from(year).unwrap_or(1970),
            month: u8::try_from(month).unwrap_or(1),
        })
    }

    /// The UTC month of a Unix time; `None` outside 1970 to 9999.
    pub fn of_unix(unix_secs: i64) -> Option<Self> {
        let (year, month, _) = civil_from_days(unix_secs.div_euclid(86_400));
        Self::new(u32::try_from(year).ok()?, month)
    }

    /// The year.
    pub fn year(self) -> u32 {
        u32::from(self.year)
    }

    /// The month, 1 to 12.
    pub fn month(self) -> u32 {
        u32::from(self.month)
    }

    /// January of `year`.
    pub fn january(year: u32) -> Option<Self> {
        Self::new(year, 1)
    }

    /// December of `year`.
    pub(crate) fn december(year: u32) -> Option<Self> {
        Self::new(year, 12)
    }

    /// How many months `from` to `self` span, both included: 1 for the same month, 0 or less when
    /// `self` is before `from`.
    pub(crate) fn months_since(self, from: Self) -> i64 {
        let index = |month: Self| i64::from(month.year) * 12 + i64::from(month.month);
        index(self) - index(from) + 1
    }

    /// The Unix second this month starts at.
    #[cfg(test)]
    pub(crate) fn start_unix(self) -> i64 {
        crate::calendar::days_from_civil(i64::from(self.year), self.month(), 1) * 86_400
    }
}

fn digits(text: &str) -> Option<u32> {
    text.bytes().all(|byte| byte.is_ascii_digit()).then(|| text.parse().ok())?
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl From<Month> for String {
    fn from(month: Month) -> Self {
        month.to_string()
    }
}

impl TryFrom<String> for Month {
    type Error = &'static str;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or("not a month (yyyy-mm)")
    }
}

/// Where an amount is booked: an account, a month and a currency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bucket {
    /// The account it is booked against.
    pub account: AccountId,
    /// The UTC month of the object it comes from.
    pub month: Month,
    /// Lowercase ISO currency code, never converted.
    pub currency: String,
}

/// What one bucket holds. Every amount is minor units of the bucket's currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Captured charges.
    pub payments: i64,
    /// Their captured amounts.
    pub gross: i64,
    /// Application fees taken from them (before fee refunds).
    pub fees: i64,
    /// Of those, refunded.
    pub fees_refunded: i64,
    /// Refunded to customers: each charge's cumulative `amount_refunded`, or the refunds seen of it
    /// when they add up to more.
    pub refunds: i64,
    /// Withdrawn for disputes and not reinstated.
    pub disputes: i64,
    /// Refunds of destination charges that reversed no transfer: the platform's balance paid them.
    pub platform_absorbed_refunds: i64,
    /// Of the payments, those made in person (Terminal: `card_present`, `interac_present`).
    pub in_person_payments: i64,
    /// Their captured amounts.
    pub in_person_gross: i64,
    /// Transfers paid to the account that are not a destination charge's own (net of reversals):
    /// the basis of the 1099-NEC/MISC threshold.
    pub transfers: i64,
}

impl Totals {
    /// Each field's stored name, in one order both stores use.
    pub(crate) const FIELDS: [&'static str; 10] = [
        "payments",
        "gross",
        "fees",
        "fees_refunded",
        "refunds",
        "disputes",
        "platform_absorbed_refunds",
        "in_person_payments",
        "in_person_gross",
        "transfers",
    ];

    /// Each field's name and value, in [`Self::FIELDS`] order.
    pub fn fields(&self) -> [(&'static str, i64); 10] {
        [
            ("payments", self.payments),
            ("gross", self.gross),
            ("fees", self.fees),
            ("fees_refunded", self.fees_refunded),
            ("refunds", self.refunds),
            ("disputes", self.disputes),
            ("platform_absorbed_refunds", self.platform_absorbed_refunds),
            ("in_person_payments", self.in_person_payments),
            ("in_person_gross", self.in_person_gross),
            ("transfers", self.transfers),
        ]
    }

    /// The totals whose fields are `value(name)` for each name in [`Self::FIELDS`].
    pub(crate) fn from_fields(mut value: impl FnMut(&'static str) -> i64) -> Self {
        Self {
            payments: value("payments"),
            gross: value("gross"),
            fees: value("fees"),
            fees_refunded: value("fees_refunded"),
            refunds: value("refunds"),
            disputes: value("disputes"),
            platform_absorbed_refunds: value("platform_absorbed_refunds"),
            in_person_payments: value("in_person_payments"),
            in_person_gross: value("in_person_gross"),
            transfers: value("transfers"),
        }
    }

    fn zip(self, other: Self, op: impl Fn(i64, i64) -> i64) -> Self {
        let (left, right) = (self.fields(), other.fields());
        let mut index = 0;
        Self::from_fields(|_| {
            let value = op(left[index].1, right[index].1);
            index += 1;
            value
        })
    }

    /// Field by field sum, saturating.
    pub fn plus(self, other: Self) -> Self {
        self.zip(other, i64::saturating_add)
    }

    /// Field by field difference, saturating.
    pub(crate) fn minus(self, other: Self) -> Self {
        self.zip(other, i64::saturating_sub)
    }

    /// Whether every field is zero.
    pub(crate) fn is_zero(&self) -> bool {
        self.fields().iter().all(|(_, value)| *value == 0)
    }

    /// Application fees net of fee refunds.
    pub(crate) fn net_fees(&self) -> i64 {
        self.fees.saturating_sub(self.fees_refunded)
    }

    /// Gross less net fees, refunds and disputes: what the account's payments came to.
    pub fn net(&self) -> i64 {
        self.gross.saturating_sub(self.net_fees()).saturating_sub(self.refunds).saturating_sub(self.disputes)
    }
}

/// One stored row of totals: a bucket and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// Where.
    pub bucket: Bucket,
    /// What.
    pub totals: Totals,
}

/// A part's snapshot as of one event. Snapshots of one part are ordered by `rank` (how complete
/// the source is: a charge object outranks what a payment intent says of its charge, a reinstated
/// dispute outranks its withdrawal), then by the event's `created`, then by content, so that the
/// newest wins whatever the order of delivery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Snapshot<T> {
    /// How complete the source is; higher wins.
    pub rank: u8,
    /// The `created` of the event it came in.
    pub as_of: i64,
    /// What it says.
    pub part: T,
}

/// What a charge (or a payment intent, of its charge) says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChargePart {
    /// The seller: the destination of a destination charge, or the account of a direct charge.
    pub account: AccountId,
    /// A destination charge (on the platform, `transfer_data.destination`), not a direct one.
    pub destination: bool,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The charge's `created` month.
    pub month: Month,
    /// `amount_captured`.
    pub captured: i64,
    /// `amount_refunded`, cumulative.
    pub refunded: i64,
    /// `payment_method_details.type` (`card`, `card_present`, `interac_present`, …).
    pub method: Option<String>,
    /// `application_fee_amount`: booked as the fee until the fee object itself is seen.
    pub fee_amount: Option<i64>,
    /// `application_fee`, the fee's id.
    pub fee_id: Option<String>,
    /// `on_behalf_of`, when set.
    pub on_behalf_of: Option<String>,
}

/// What an application fee object says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeePart {
    /// `fee_…`.
    pub fee_id: String,
    /// The account the fee was taken from.
    pub account: AccountId,
    /// The fee's own currency, which may differ from its charge's.
    pub currency: String,
    /// The fee's `created` month.
    pub month: Month,
    /// `amount`.
    pub amount: i64,
    /// `amount_refunded`, cumulative.
    pub refunded: i64,
}

/// What a refund object says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RefundPart {
    /// `amount`.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// `pending`, `requires_action`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// Whether it reversed the destination's transfer (`transfer_reversal` is set).
    pub transfer_reversed: bool,
}

impl RefundPart {
    /// A failed or canceled refund gave the money back: it refunds nothing.
    fn stands(&self) -> bool {
        !matches!(self.status.as_str(), "failed" | "canceled")
    }
}

/// What a dispute's funds events say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DisputePart {
    /// The disputed amount.
    pub amount: i64,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// `charge.dispute.funds_reinstated`: the funds came back.
    pub reinstated: bool,
}

/// What a transfer object says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TransferPart {
    /// The destination account.
    pub account: AccountId,
    /// Lowercase ISO currency code.
    pub currency: String,
    /// The transfer's `created` month.
    pub month: Month,
    /// `amount`.
    pub amount: i64,
    /// `amount_reversed`, cumulative.
    pub reversed: i64,
}

/// Everything seen of one payment (or of a fee or transfer with no charge to belong to).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The charge id (`ch_…`, `py_…`), else the fee's or transfer's own id.
    pub key: String,
    /// The charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<Snapshot<ChargePart>>,
    /// Its application fee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<Snapshot<FeePart>>,
    /// Its refunds, by `re_…` id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refunds: BTreeMap<String, Snapshot<RefundPart>>,
    /// Its disputes, by `dp_…` id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disputes: BTreeMap<String, Snapshot<DisputePart>>,
    /// Transfers made from it (`source_transaction`), by `tr_…` id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transfers: BTreeMap<String, Snapshot<TransferPart>>,
    /// Bumped by every stored change; the store's conditional write checks it.
    #[serde(default)]
    pub version: u64,
}

/// One part an event brings to an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerPart {
    /// The charge.
    Charge(Snapshot<ChargePart>),
    /// The application fee.
    Fee(Snapshot<FeePart>),
    /// A refund, by id.
    Refund(String, Snapshot<RefundPart>),
    /// A dispute, by id.
    Dispute(String, Snapshot<DisputePart>),
    /// A transfer, by id.
    Transfer(String, Snapshot<TransferPart>),
}

/// What one event says for the ledger: the entry it concerns and the parts it brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEvent {
    /// The entry's key.
    pub key: String,
    /// Its parts, each merged on its own.
    pub parts: Vec<LedgerPart>,
}

/// How a merge went for one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Merge {
    /// The stored snapshot is newer.
    Stale,
    /// The same snapshot, or one that says the same and is merely later.
    Same,
    /// Said something new.
    Changed,
}

/// Keeps the greater of the stored snapshot and `incoming`.
fn merge_one<T: Ord + Clone>(slot: &mut Option<Snapshot<T>>, incoming: &Snapshot<T>) -> (Merge, bool) {
    match slot {
        Some(stored) if *stored >= *incoming => {
            let merge =
                if stored == incoming || stored.part == incoming.part { Merge::Same } else { Merge::Stale };
            (merge, false)
        }
        Some(stored) => {
            let merge = if stored.part == incoming.part && stored.rank == incoming.rank {
                Merge::Same
            } else {
                Merge::Changed
            };
            *stored = incoming.clone();
            (merge, true)
        }
        None => {
            *slot = Some(incoming.clone());
            (Merge::Changed, true)
        }
    }
}

fn merge_keyed<T: Ord + Clone>(
    map: &mut BTreeMap<String, Snapshot<T>>,
    id: &str,
    incoming: &Snapshot<T>,
) -> (Merge, bool) {
    let mut slot = map.remove(id);
    let merged = merge_one(&mut slot, incoming);
    if let Some(snapshot) = slot {
        map.insert(id.to_owned(), snapshot);
    }
    merged
}

impl LedgerEntry {
    /// An entry nothing is known of yet.
    pub fn new(key: impl Into<String>) -> Self {
        Self { key: key.into(), ..Self::default() }
    }

    /// Merges one part: (what it said, whether the entry changed at all).
    fn merge(&mut self, part: &LedgerPart) -> (Merge, bool) {
        match part {
            LedgerPart::Charge(snapshot) => merge_one(&mut self.charge, snapshot),
            LedgerPart::Fee(snapshot) => merge_one(&mut self.fee, snapshot),
            LedgerPart::Refund(id, snapshot) => merge_keyed(&mut self.refunds, id, snapshot),
            LedgerPart::Dispute(id, snapshot) => merge_keyed(&mut self.disputes, id, snapshot),
            LedgerPart::Transfer(id, snapshot) => merge_keyed(&mut self.transfers, id, snapshot),
        }
    }
}

/// Whether a payment method type is in person (Stripe Terminal).
pub(crate) fn is_in_person(method: &str) -> bool {
    matches!(method, "card_present" | "interac_present")
}

/// What an entry adds to each bucket. A function of the entry alone, so that replacing an entry
/// by its next version changes the totals by exactly the difference.
///
/// Everything about a payment (its refunds, disputes and the platform-absorbed refunds) is booked
/// in the payment's month; a fee in its own month and currency; a transfer in its own month.
pub(crate) fn contribution(entry: &LedgerEntry) -> BTreeMap<Bucket, Totals> {
    let mut buckets: BTreeMap<Bucket, Totals> = BTreeMap::new();
    let mut add = |account: &AccountId, month: Month, currency: &str, totals: Totals| {
        let bucket = Bucket { account: account.clone(), month, currency: currency.to_owned() };
        let slot = buckets.entry(bucket).or_default();
        *slot = slot.plus(totals);
    };
    if let Some(Snapshot { part: charge, .. }) = &entry.charge {
        let (account, month) = (&charge.account, charge.month);
        let captured = charge.captured.max(0);
        // The charge's amount_refunded covers every refund, but a refund object may be newer than
        // the charge's last snapshot: the larger of the two is what is known to be refunded.
        let listed: i64 = entry
            .refunds
            .values()
            .filter(|refund| refund.part.stands() && refund.part.currency == charge.currency)
            .map(|refund| refund.part.amount.max(0))
            .fold(0, i64::saturating_add);
        let mut totals = Totals { refunds: charge.refunded.max(listed).max(0), ..Totals::default() };
        if captured > 0 {
            totals.payments = 1;
            totals.gross = captured;
            if charge.method.as_deref().is_some_and(is_in_person) {
                totals.in_person_payments = 1;
                totals.in_person_gross = captured;
            }
        }
        if entry.fee.is_none() {
            totals.fees = charge.fee_amount.unwrap_or(0).max(0);
        }
        add(account, month, &charge.currency, totals);
        for Snapshot { part: dispute, .. } in entry.disputes.values() {
            if !dispute.reinstated {
                let totals = Totals { disputes: dispute.amount.max(0), ..Totals::default() };
                add(account, month, &dispute.currency, totals);
            }
        }
        if charge.destination {
            for Snapshot { part: refund, .. } in entry.refunds.values() {
                if refund.stands() && !refund.transfer_reversed {
                    let totals =
                        Totals { platform_absorbed_refunds: refund.amount.max(0), ..Totals::default() };
                    add(account, month, &refund.currency, totals);
                }
            }
        }
    }
    if let Some(Snapshot { part: fee, .. }) = &entry.fee {
        let totals =
            Totals { fees: fee.amount.max(0), fees_refunded: fee.refunded.max(0), ..Totals::default() };
        add(&fee.account, fee.month, &fee.currency, totals);
    }
    let destination =
        entry.charge.as_ref().filter(|charge| charge.part.destination).map(|charge| &charge.part.account);
    for Snapshot { part: transfer, .. } in entry.transfers.values() {
        // A destination charge's own transfer is part of its gross, not a payment to the seller.
        if destination == Some(&transfer.account) {
            continue;
        }
        let totals = Totals {
            transfers: transfer.amount.saturating_sub(transfer.reversed).max(0),
            ..Totals::default()
        };
        add(&transfer.account, transfer.month, &transfer.currency, totals);
    }
    buckets.retain(|_, totals| !totals.is_zero());
    buckets
}

/// What each bucket gains going from `before`'s contribution to `after`'s; only changed buckets.
pub(crate) fn deltas(before: Option<&LedgerEntry>, after: &LedgerEntry) -> Vec<(Bucket, Totals)> {
    let old = before.map(contribution).unwrap_or_default();
    let mut changed = contribution(after);
    for (bucket, totals) in old {
        let slot = changed.entry(bucket).or_default();
        *slot = slot.minus(totals);
    }
    changed.into_iter().filter(|(_, totals)| !totals.is_zero()).collect()
}

/// An entry's next version and what it adds to the totals: written in one conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPlan {
    /// The entry, one version up: the stored one must be at `version - 1` (or absent, for 1).
    pub entry: LedgerEntry,
    /// What each bucket gains (possibly nothing: a later snapshot saying the same must still be
    /// kept, so that an earlier one delivered after it cannot win).
    pub deltas: Vec<(Bucket, Totals)>,
    /// Whether the event said something new, beyond being later.
    pub news: bool,
}

/// The result of merging an event into the stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerDecision {
    /// Store this.
    Apply(Box<LedgerPlan>),
    /// What is stored is newer than everything the event says.
    Stale,
    /// The event says nothing the entry does not.
    Unchanged,
}

impl LedgerDecision {
    /// The outcome an event handled only for the ledger gets.
    pub fn outcome(&self) -> EventOutcome {
        match self {
            Self::Apply(plan) if plan.news => EventOutcome::Applied,
            Self::Apply(_) | Self::Unchanged => EventOutcome::Unchanged,
            Self::Stale => EventOutcome::Stale,
        }
    }
}

/// Merges `event` into `stored`. Pure: no I/O, no clock.
///
/// A refund or dispute of a charge the ledger has not recorded is not kept: most are of the
/// platform's own charges (separate charges and transfers), which the ledger never books, and
/// keeping them would cost a write and an item each for nothing.
pub fn plan_ledger(stored: Option<&LedgerEntry>, event: &LedgerEvent) -> LedgerDecision {
    let mut next = stored.cloned().unwrap_or_else(|| LedgerEntry::new(event.key.clone()));
    let mut said = None;
    let mut changed = false;
    let charges_first = event.parts.iter().filter(|part| matches!(part, LedgerPart::Charge(_)));
    let others = event.parts.iter().filter(|part| !matches!(part, LedgerPart::Charge(_)));
    for part in charges_first.chain(others) {
        if next.charge.is_none() && matches!(part, LedgerPart::Refund(..) | LedgerPart::Dispute(..)) {
            continue;
        }
        let (merge, wrote) = next.merge(part);
        said = said.max(Some(merge));
        changed |= wrote;
    }
    if !changed {
        return match said {
            Some(Merge::Stale) => LedgerDecision::Stale,
            _ => LedgerDecision::Unchanged,
        };
    }
    next.version = stored.map_or(0, |entry| entry.version) + 1;
    let deltas = deltas(stored, &next);
    LedgerDecision::Apply(Box::new(LedgerPlan { news: said == Some(Merge::Changed), entry: next, deltas }))
}

/// The event types the webhook handles only for the ledger.
pub(crate) fn is_ledger_only_type(event_type: &str) -> bool {
    event_type.starts_with("application_fee.")
}

/// The outcome of an event handled only for the ledger that [`read_ledger_event`] could not read:
/// a fee refund object without its fee says nothing the ledger keeps (Stripe updates a fee refund
/// only for its metadata), any other such event lacked what it needs.
pub(crate) fn unread_outcome(event: &Event) -> Option<EventOutcome> {
    match event.event_type.as_str() {
        "application_fee.refund.updated" => Some(EventOutcome::Unchanged),
        other if is_ledger_only_type(other) => Some(EventOutcome::Unreadable),
        _ => None,
    }
}

/// Reads what `event` says for the ledger: `None` when its type is not one the ledger keeps, or
/// its object lacks what that needs (a charge with no seller, an amount that is not an integer).
pub fn read_ledger_event(event: &Event) -> Option<LedgerEvent> {
    let object: Value = serde_json::from_str(event.object.get()).ok()?;
    let as_of = event.created;
    match event.event_type.as_str() {
        "charge.succeeded" | "charge.captured" | "charge.refunded" | "charge.updated" => {
            read_charge_event(event, &object, 2)
        }
        "payment_intent.succeeded" => read_payment_intent(event, &object),
        "application_fee.created" | "application_fee.refunded" => {
            let (key, fee) = read_fee(&object, as_of)?;
            Some(LedgerEvent { key, parts: vec![LedgerPart::Fee(fee)] })
        }
        // The object is a fee refund; its fee, when expanded, is the fee as of now.
        "application_fee.refund.updated" => {
            let fee = object.get("fee").filter(|fee| fee.is_object())?;
            let (key, fee) = read_fee(fee, as_of)?;
            Some(LedgerEvent { key, parts: vec![LedgerPart::Fee(fee)] })
        }
        "charge.refund.updated" | "refund.created" | "refund.updated" | "refund.failed" => {
            let (charge, id, refund) = read_refund(&object, as_of)?;
            Some(LedgerEvent { key: charge, parts: vec![LedgerPart::Refund(id, refund)] })
        }
        "charge.dispute.funds_withdrawn" | "charge.dispute.funds_reinstated" => {
            let reinstated = event.event_type == "charge.dispute.funds_reinstated";
            read_dispute(&object, as_of, reinstated)
        }
        "transfer.created" | "transfer.updated" | "transfer.reversed" => read_transfer(&object, as_of),
        _ => None,
    }
}

/// An id, or an expanded object's id.
fn id_of(value: Option<&Value>) -> Option<&str> {
    let value = value?;
    value.as_str().or_else(|| value.get("id").and_then(Value::as_str)).filter(|id| is_plausible_id(id))
}

fn text<'v>(object: &'v Value, key: &str) -> Option<&'v str> {
    object.get(key).and_then(Value::as_str)
}

fn amount(object: &Value, key: &str) -> Option<i64> {
    object.get(key).and_then(Value::as_i64)
}

/// An amount that may be absent (or null): absent is 0, anything else must be an integer.
fn amount_or_zero(object: &Value, key: &str) -> Option<i64> {
    match object.get(key) {
        None | Some(Value::Null) => Some(0),
        Some(value) => value.as_i64(),
    }
}

fn currency(object: &Value) -> Option<String> {
    let currency = text(object, "currency")?;
    let valid = (3..=8).contains(&currency.len()) && currency.bytes().all(|b| b.is_ascii_alphabetic());
    valid.then(|| currency.to_ascii_lowercase())
}

fn month_of(object: &Value) -> Option<Month> {
    Month::of_unix(amount(object, "created")?)
}

/// A charge event: the charge, its expanded fee, and the refunds it lists.
fn read_charge_event(event: &Event, charge: &Value, rank: u8) -> Option<LedgerEvent> {
    let (key, part) = read_charge(event.account.as_deref(), charge)?;
    let as_of = event.created;
    let mut parts = vec![LedgerPart::Charge(Snapshot { rank, as_of, part })];
    if let Some(fee) = charge.get("application_fee").filter(|fee| fee.is_object())
        && let Some((_, fee)) = read_fee(fee, as_of)
    {
        parts.push(LedgerPart::Fee(fee));
    }
    let listed = charge.get("refunds").and_then(|refunds| refunds.get("data")).and_then(Value::as_array);
    for refund in listed.into_iter().flatten() {
        if let Some((_, id, refund)) = read_refund(refund, as_of) {
            parts.push(LedgerPart::Refund(id, refund));
        }
    }
    Some(LedgerEvent { key, parts })
}

/// A charge's key and part: `None` unless it succeeded and names its seller.
fn read_charge(event_account: Option<&str>, charge: &Value) -> Option<(String, ChargePart)> {
    if text(charge, "object") != Some("charge") {
        return None;
    }
    let id = id_of(charge.get("id"))?;
    if text(charge, "status").is_some_and(|status| status != "succeeded") {
        return None;
    }
    let (account, destination) = match event_account {
        Some(account) => (AccountId::parse(account)?, false),
        None => (AccountId::parse(id_of(charge.get("transfer_data")?.get("destination"))?)?, true),
    };
    let captured = match charge.get("amount_captured") {
        Some(value) if !value.is_null() => value.as_i64()?,
        // Before amount_captured existed, a captured charge was captured whole.
        _ if charge.get("captured").and_then(Value::as_bool) == Some(true) => amount(charge, "amount")?,
        _ => 0,
    };
    let part = ChargePart {
        account,
        destination,
        currency: currency(charge)?,
        month: month_of(charge)?,
        captured,
        refunded: amount_or_zero(charge, "amount_refunded")?,
        method: charge
            .get("payment_method_details")
            .and_then(|details| text(details, "type"))
            .filter(|method| is_plausible_id(method))
            .map(str::to_owned),
        fee_amount: match charge.get("application_fee_amount") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64()?),
        },
        fee_id: id_of(charge.get("application_fee")).map(str::to_owned),
        on_behalf_of: id_of(charge.get("on_behalf_of")).map(str::to_owned),
    };
    Some((id.to_owned(), part))
}

/// A succeeded payment intent of a destination or direct charge: its charge when the intent
/// carries it whole (`latest_charge` expanded, or `charges.data` in older API versions), else what
/// the intent itself says of its latest charge, at a lower rank than the charge's own word.
fn read_payment_intent(event: &Event, intent: &Value) -> Option<LedgerEvent> {
    if text(intent, "object") != Some("payment_intent") {
        return None;
    }
    if text(intent, "status").is_some_and(|status| status != "succeeded") {
        return None;
    }
    let latest = intent.get("latest_charge");
    let listed = intent.get("charges").and_then(|charges| charges.get("data")).and_then(Value::as_array);
    let whole = latest.filter(|charge| charge.is_object()).or_else(|| {
        let latest = id_of(latest);
        listed?.iter().find(|charge| latest.is_none_or(|latest| id_of(charge.get("id")) == Some(latest)))
    });
    if let Some(charge) = whole {
        return read_charge_event(event, charge, 2);
    }
    let charge_id = id_of(latest)?;
    let (account, destination) = match event.account.as_deref() {
        Some(account) => (AccountId::parse(account)?, false),
        None => (AccountId::parse(id_of(intent.get("transfer_data")?.get("destination"))?)?, true),
    };
    let types = intent.get("payment_method_types").and_then(Value::as_array);
    let method = match types.map(Vec::as_slice) {
        Some([only]) => only.as_str().filter(|method| is_plausible_id(method)).map(str::to_owned),
        _ => None,
    };
    let part = ChargePart {
        account,
        destination,
        currency: currency(intent)?,
        month: month_of(intent)?,
        captured: amount(intent, "amount_received")?,
        refunded: 0,
        method,
        fee_amount: match intent.get("application_fee_amount") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64()?),
        },
        fee_id: None,
        on_behalf_of: id_of(intent.get("on_behalf_of")).map(str::to_owned),
    };
    let snapshot = Snapshot { rank: 1, as_of: event.created, part };
    Some(LedgerEvent { key: charge_id.to_owned(), parts: vec![LedgerPart::Charge(snapshot)] })
}

/// An application fee: the entry it belongs to (its charge on the platform for a destination
/// charge, `originating_transaction`; else the charge it was taken from; else its own id) and
/// what it says.
fn read_fee(fee: &Value, as_of: i64) -> Option<(String, Snapshot<FeePart>)> {
    if text(fee, "object") != Some("application_fee") {
        return None;
    }
    let fee_id = id_of(fee.get("id"))?;
    let key =
        id_of(fee.get("originating_transaction")).or_else(|| id_of(fee.get("charge"))).unwrap_or(fee_id);
    let part = FeePart {
        fee_id: fee_id.to_owned(),
        account: AccountId::parse(id_of(fee.get("account"))?)?,
        currency: currency(fee)?,
        month: month_of(fee)?,
        amount: amount(fee, "amount")?,
        refunded: amount_or_zero(fee, "amount_refunded")?,
    };
    Some((key.to_owned(), Snapshot { rank: 2, as_of, part }))
}

/// A refund: its charge, its id and what it says.
fn read_refund(refund: &Value, as_of: i64) -> Option<(String, String, Snapshot<RefundPart>)> {
    if text(refund, "object").is_some_and(|object| object != "refund") {
        return None;
    }
    let id = id_of(refund.get("id"))?;
    let charge = id_of(refund.get("charge"))?;
    let part = RefundPart {
        amount: amount(refund, "amount")?,
        currency: currency(refund)?,
        status: text(refund, "status").unwrap_or("succeeded").to_owned(),
        transfer_reversed: refund.get("transfer_reversal").is_some_and(|reversal| !reversal.is_null()),
    };
    Some((charge.to_owned(), id.to_owned(), Snapshot { rank: 1, as_of, part }))
}

/// A dispute's funds moving: withdrawn, or reinstated (which outranks any withdrawal).
fn read_dispute(dispute: &Value, as_of: i64, reinstated: bool) -> Option<LedgerEvent> {
    if text(dispute, "object") != Some("dispute") {
        return None;
    }
    let id = id_of(dispute.get("id"))?;
    let charge = id_of(dispute.get("charge"))?;
    let part = DisputePart { amount: amount(dispute, "amount")?, currency: currency(dispute)?, reinstated };
    let snapshot = Snapshot { rank: if reinstated { 2 } else { 1 }, as_of, part };
    Some(LedgerEvent { key: charge.to_owned(), parts: vec![LedgerPart::Dispute(id.to_owned(), snapshot)] })
}

/// A transfer, under the charge it was made from (`source_transaction`) when there is one.
fn read_transfer(transfer: &Value, as_of: i64) -> Option<LedgerEvent> {
    if text(transfer, "object") != Some("transfer") {
        return None;
    }
    let id = id_of(transfer.get("id"))?;
    let key = id_of(transfer.get("source_transaction")).unwrap_or(id);
    let part = TransferPart {
        account: AccountId::parse(id_of(transfer.get("destination"))?)?,
        currency: currency(transfer)?,
        month: month_of(transfer)?,
        amount: amount(transfer, "amount")?,
        reversed: amount_or_zero(transfer, "amount_reversed")?,
    };
    let snapshot = Snapshot { rank: 1, as_of, part };
    Some(LedgerEvent { key: key.to_owned(), parts: vec![LedgerPart::Transfer(id.to_owned(), snapshot)] })
}

/// Sums rows per currency.
pub(crate) fn per_currency<'a>(rows: impl IntoIterator<Item = &'a LedgerRow>) -> BTreeMap<String, Totals> {
    let mut sums: BTreeMap<String, Totals> = BTreeMap::new();
    for row in rows {
        let slot = sums.entry(row.bucket.currency.clone()).or_default();
        *slot = slot.plus(row.totals);
    }
    sums.retain(|_, totals| !totals.is_zero());
    sums
}

/// The US tax-form thresholds, in USD minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaxThresholds {
    /// 1099-K: gross volume that must be exceeded.
    pub k_gross: i64,
    /// 1099-K: number of payments that must be exceeded.
    pub k_payments: i64,
    /// 1099-NEC/MISC: payments from 2026 on that reach this are reportable.
    pub nec_amount: i64,
}

/// The 1099-NEC/MISC threshold for payments made before 2026.
pub(crate) const NEC_AMOUNT_BEFORE_2026: i64 = 60_000;

impl Default for TaxThresholds {
    /// Today's: 1099-K above $20,000 and above 200 payments; 1099-NEC/MISC at $2,000 for payments
    /// after 2025-12-31.
    fn default() -> Self {
        Self { k_gross: 2_000_000, k_payments: 200, nec_amount: 200_000 }
    }
}

/// Which thresholds a year's USD figures cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TaxFlags {
    /// Gross above the 1099-K amount and payments above its count.
    pub us_1099_k: bool,
    /// Transfers at or above the 1099-NEC/MISC amount for the year.
    pub us_1099_nec: bool,
}

impl TaxThresholds {
    /// The flags for `year`'s USD totals.
    pub fn flags(&self, year: u32, usd: &Totals) -> TaxFlags {
        let nec_amount = if year >= 2026 { self.nec_amount } else { NEC_AMOUNT_BEFORE_2026 };
        TaxFlags {
            us_1099_k: usd.gross > self.k_gross && usd.payments > self.k_payments,
            us_1099_nec: usd.transfers >= nec_amount && usd.transfers > 0,
        }
    }
}

#[cfg(test)]
mod tests;
