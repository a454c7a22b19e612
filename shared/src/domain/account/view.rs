//! What the v1 account rules read from an event's `data.object`, in one pass over its JSON and
//! borrowed from it: an account, a capability, a person or an external account.
//!
//! Reading matches `serde_json::Value`'s accessors field for field, so the rules mean what they
//! meant when they read a `Value`: a field of the wrong type reads as absent, a non-string item of
//! a string list is skipped, an object that names a key twice keeps the last, and every
//! nested path (`settings.payouts.schedule.interval`) needs an object at each step. Keys are
//! compared unescaped, as a `Value` would hold them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::stripe::event::lenient::{Text, drain_map, drain_seq, not_a_container};

/// A string borrowed from the body unless it had escapes.
pub(super) type Str<'a> = Cow<'a, str>;

/// The object of a v1 account event, with every field any v1 rule reads.
#[derive(Debug, Default)]
pub(super) struct ObjectView<'a> {
    pub(super) id: Option<Str<'a>>,
    pub(super) object: Option<Str<'a>>,
    pub(super) account: Option<Str<'a>>,
    pub(super) status: Option<Str<'a>>,
    pub(super) charges_enabled: Option<bool>,
    pub(super) payouts_enabled: Option<bool>,
    pub(super) details_submitted: Option<bool>,
    /// Capability name to its status: a string, or in early versions an object's `status`.
    /// `None` when `capabilities` is not an object; a capability without a status is kept as
    /// `None`, so that it still hides an earlier same-named key.
    pub(super) capabilities: Option<BTreeMap<Str<'a>, Option<Str<'a>>>>,
    pub(super) requirements: Option<RequirementsView<'a>>,
    pub(super) future_requirements: Option<RequirementsView<'a>>,
    /// Before 2019 the account's requirements; a person's verification status.
    pub(super) verification: Option<VerificationView<'a>>,
    pub(super) country: Option<Str<'a>>,
    pub(super) account_type: Option<Str<'a>>,
    /// `settings.payouts.schedule.interval`.
    pub(super) settings_payout_interval: Option<Str<'a>>,
    /// `payout_schedule.interval`, the older place.
    pub(super) payout_schedule_interval: Option<Str<'a>>,
    /// `controller.fees.payer`.
    pub(super) fees_payer: Option<Str<'a>>,
    /// `external_accounts.data`, when it is an array; its items read as objects of their own.
    pub(super) external_accounts: Option<Vec<ObjectView<'a>>>,
    pub(super) last4: Option<Str<'a>>,
    pub(super) currency: Option<Str<'a>>,
    pub(super) default_for_currency: Option<bool>,
    pub(super) available_payout_methods: Vec<Str<'a>>,
}

/// `requirements` or `future_requirements` (of an account or a person).
#[derive(Debug, Default)]
pub(super) struct RequirementsView<'a> {
    pub(super) currently_due: Vec<Str<'a>>,
    pub(super) eventually_due: Vec<Str<'a>>,
    pub(super) past_due: Vec<Str<'a>>,
    pub(super) pending_verification: Vec<Str<'a>>,
    pub(super) current_deadline: Option<i64>,
    pub(super) disabled_reason: Option<Str<'a>>,
}

/// `verification`: an old account's requirements, or a person's status.
#[derive(Debug, Default)]
pub(super) struct VerificationView<'a> {
    pub(super) fields_needed: Vec<Str<'a>>,
    pub(super) due_by: Option<i64>,
    pub(super) disabled_reason: Option<Str<'a>>,
    pub(super) status: Option<Str<'a>>,
}

impl<'a> ObjectView<'a> {
    /// Reads an object from its JSON text; text that is not JSON reads as an empty object, as
    /// `Value::Null` read before.
    pub(super) fn from_json(json: &'a str) -> Self {
        serde_json::from_str::<Object<Self>>(json).ok().and_then(|object| object.0).unwrap_or_default()
    }

    /// Reads an object from a parsed value, borrowing its strings.
    pub(super) fn from_value(value: &'a serde_json::Value) -> Self {
        Object::<Self>::deserialize(value).ok().and_then(|object| object.0).unwrap_or_default()
    }
}

/// A JSON object read field by field; a later value for a key replaces the earlier one.
pub(super) trait Fields<'de>: Default {
    /// Reads the value of `key` from `map`, or skips it.
    fn field<A: MapAccess<'de>>(&mut self, key: Text<'de>, map: &mut A) -> Result<(), A::Error>;
}

impl<'de> Fields<'de> for ObjectView<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: Text<'de>, map: &mut A) -> Result<(), A::Error> {
        match key.as_str() {
            "id" => self.id = text(map)?,
            "object" => self.object = text(map)?,
            "account" => self.account = text(map)?,
            "status" => self.status = text(map)?,
            "charges_enabled" => self.charges_enabled = boolean(map)?,
            "payouts_enabled" => self.payouts_enabled = boolean(map)?,
            "details_submitted" => self.details_submitted = boolean(map)?,
            "capabilities" => {
                self.capabilities = map.next_value::<Object<Capabilities<'de>>>()?.0.map(|c| c.0)
            }
            "requirements" => self.requirements = object(map)?,
            "future_requirements" => self.future_requirements = object(map)?,
            "verification" => self.verification = object(map)?,
            "country" => self.country = text(map)?,
            "type" => self.account_type = text(map)?,
            "settings" => self.settings_payout_interval = path(map, &["payouts", "schedule", "interval"])?,
            "payout_schedule" => self.payout_schedule_interval = path(map, &["interval"])?,
            "controller" => self.fees_payer = path(map, &["fees", "payer"])?,
            "external_accounts" => {
                self.external_accounts = object::<_, ExternalAccounts<'de>>(map)?.and_then(|list| list.data);
            }
            "last4" => self.last4 = text(map)?,
            "currency" => self.currency = text(map)?,
            "default_for_currency" => self.default_for_currency = boolean(map)?,
            "available_payout_methods" => self.available_payout_methods = map.next_value::<Texts<'de>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl<'de> Fields<'de> for RequirementsView<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: Text<'de>, map: &mut A) -> Result<(), A::Error> {
        match key.as_str() {
            "currently_due" => self.currently_due = map.next_value::<Texts<'de>>()?.0,
            "eventually_due" => self.eventually_due = map.next_value::<Texts<'de>>()?.0,
            "past_due" => self.past_due = map.next_value::<Texts<'de>>()?.0,
            "pending_verification" => self.pending_verification = map.next_value::<Texts<'de>>()?.0,
            "current_deadline" => self.current_deadline = map.next_value::<Integer>()?.0,
            "disabled_reason" => self.disabled_reason = text(map)?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

impl<'de> Fields<'de> for VerificationView<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: Text<'de>, map: &mut A) -> Result<(), A::Error> {
        match key.as_str() {
            "fields_needed" => self.fields_needed = map.next_value::<Texts<'de>>()?.0,
            "due_by" => self.due_by = map.next_value::<Integer>()?.0,
            "disabled_reason" => self.disabled_reason = text(map)?,
            "status" => self.status = text(map)?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// `external_accounts`: only its `data` array is read.
#[derive(Default)]
struct ExternalAccounts<'a> {
    data: Option<Vec<ObjectView<'a>>>,
}

impl<'de> Fields<'de> for ExternalAccounts<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: Text<'de>, map: &mut A) -> Result<(), A::Error> {
        match key.as_str() {
            "data" => self.data = map.next_value::<Items<ObjectView<'de>>>()?.0,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// `capabilities`: name to status.
#[derive(Default)]
struct Capabilities<'a>(BTreeMap<Str<'a>, Option<Str<'a>>>);

impl<'de> Fields<'de> for Capabilities<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: Text<'de>, map: &mut A) -> Result<(), A::Error> {
        let status = map.next_value::<CapabilityStatus<'de>>()?.0;
        self.0.insert(key.0, status);
        Ok(())
    }
}

fn path<'de, A: MapAccess<'de>>(
    map: &mut A,
    keys: &'static [&'static str],
) -> Result<Option<Str<'de>>, A::Error> {
    map.next_value_seed(PathVisitor { keys })
}

fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

fn text<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Str<'de>>, A::Error> {
    map.next_value::<Lenient<'de>>().map(|value| value.text)
}

fn boolean<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<bool>, A::Error> {
    map.next_value::<Lenient<'de>>().map(|value| value.boolean)
}

fn object<'de, A: MapAccess<'de>, T: Fields<'de>>(map: &mut A) -> Result<Option<T>, A::Error> {
    map.next_value::<Object<T>>().map(|object| object.0)
}

/// `Some` when the JSON is an object, read by `T`; `None` for anything else.
pub(super) struct Object<T>(pub(super) Option<T>);

impl<'de, T: Fields<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Fields<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = T::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            fields.field(key, &mut map)?;
        }
        Ok(Object(Some(fields)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| Object(None))
    }

    not_a_container!(Object(None));
}

/// `Some` items when the JSON is an array, each read as `T`'s object (a non-object item reads as
/// an empty one); `None` for anything else.
struct Items<T>(Option<Vec<T>>);

impl<'de, T: Fields<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemsVisitor(PhantomData))
    }
}

struct ItemsVisitor<T>(PhantomData<T>);

impl<'de, T: Fields<'de>> Visitor<'de> for ItemsVisitor<T> {
    type Value = Items<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Object<T>>()? {
            items.push(item.0.unwrap_or_default());
        }
        Ok(Items(Some(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| Items(None))
    }

    not_a_container!(Items(None));
}

/// The strings of an array; non-string items are skipped, and anything but an array is empty.
struct Texts<'a>(Vec<Str<'a>>);

impl<'de> Deserialize<'de> for Texts<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextsVisitor)
    }
}

struct TextsVisitor;

impl<'de> Visitor<'de> for TextsVisitor {
    type Value = Texts<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut texts = Vec::new();
        while let Some(item) = seq.next_element::<Lenient<'de>>()? {
            texts.extend(item.text);
        }
        Ok(Texts(texts))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| Texts(Vec::new()))
    }

    not_a_container!(Texts(Vec::new()));
}

/// A scalar read for whichever of its types the rule asks: the string, or the boolean.
#[derive(Default)]
struct Lenient<'a> {
    text: Option<Str<'a>>,
    boolean: Option<bool>,
}

impl<'de> Deserialize<'de> for Lenient<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Lenient { text: Some(Cow::Borrowed(text)), boolean: None })
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Lenient { text: Some(Cow::Owned(text.to_owned())), boolean: None })
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Lenient { text: Some(Cow::Owned(text)), boolean: None })
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Lenient { text: None, boolean: Some(value) })
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Lenient::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Lenient::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Lenient::default())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::default())
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Lenient::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| Lenient::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| Lenient::default())
    }
}

/// An integer that fits `i64`, as `Value::as_i64` reads one; anything else is absent.
struct Integer(Option<i64>);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntegerVisitor)
    }
}

struct IntegerVisitor;

impl<'de> Visitor<'de> for IntegerVisitor {
    type Value = Integer;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Integer(Some(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Integer(i64::try_from(value).ok()))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Integer(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Integer(None))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Integer(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Integer(None))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Integer(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| Integer(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| Integer(None))
    }
}

/// A capability's status: the string itself, or (early versions) an object's `status` string.
struct CapabilityStatus<'a>(Option<Str<'a>>);

impl<'de> Deserialize<'de> for CapabilityStatus<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CapabilityStatusVisitor)
    }
}

struct CapabilityStatusVisitor;

impl<'de> Visitor<'de> for CapabilityStatusVisitor {
    type Value = CapabilityStatus<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(Some(Cow::Borrowed(text))))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(Some(Cow::Owned(text.to_owned()))))
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(Some(Cow::Owned(text))))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut status = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.as_str() == "status" {
                status = text(&mut map)?;
            } else {
                skip(&mut map)?;
            }
        }
        Ok(CapabilityStatus(status))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| CapabilityStatus(None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(None))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(None))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(CapabilityStatus(None))
    }
}

/// The string at `keys` below this value (`settings` then `payouts.schedule.interval`), each step
/// an object: `None` when a step is missing or not an object, or the last is not a string.
struct PathVisitor {
    keys: &'static [&'static str],
}

impl<'de> serde::de::DeserializeSeed<'de> for PathVisitor {
    type Value = Option<Str<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        if self.keys.is_empty() {
            return Lenient::deserialize(deserializer).map(|value| value.text);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathVisitor {
    type Value = Option<Str<'de>>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (first, rest) = self.keys.split_first().map_or(("", &[][..]), |(first, rest)| (*first, rest));
        let mut found = None;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if key.as_str() == first {
                found = map.next_value_seed(PathVisitor { keys: rest })?;
            } else {
                skip(&mut map)?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| None)
    }

    not_a_container!(None);
}
