//! Reading and validating platform requests: every field checked before anything is stored or
//! sent, and each refusal naming its field.

use serde_json::{Map, Value};

use super::ApiError;
use crate::domain::account::AccountId;
use crate::domain::reference::is_valid_reference;
use crate::store::MAX_PAGE;

/// The currencies Stripe settles in (lowercase ISO 4217), from Stripe's supported-currencies list.
const CURRENCIES: &[&str] = &[
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt", "bgn", "bhd",
    "bif", "bmd", "bnd", "bob", "brl", "bsd", "bwp", "byn", "bzd", "cad", "cdf", "chf", "clp", "cny", "cop",
    "crc", "cve", "czk", "djf", "dkk", "dop", "dzd", "egp", "etb", "eur", "fjd", "fkp", "gbp", "gel", "gip",
    "gmd", "gnf", "gtq", "gyd", "hkd", "hnl", "htg", "huf", "idr", "ils", "inr", "isk", "jmd", "jod", "jpy",
    "kes", "kgs", "khr", "kmf", "krw", "kwd", "kyd", "kzt", "lak", "lbp", "lkr", "lrd", "lsl", "mad", "mdl",
    "mga", "mkd", "mmk", "mnt", "mop", "mur", "mvr", "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok",
    "npr", "nzd", "omr", "pab", "pen", "pgk", "php", "pkr", "pln", "pyg", "qar", "ron", "rsd", "rub", "rwf",
    "sar", "sbd", "scr", "sek", "sgd", "shp", "sle", "sos", "srd", "std", "szl", "thb", "tjs", "tnd", "top",
    "try", "ttd", "twd", "tzs", "uah", "ugx", "usd", "uyu", "uzs", "vnd", "vuv", "wst", "xaf", "xcd", "xof",
    "xpf", "yer", "zar", "zmw",
];

/// Whether `code` is a lowercase currency code Stripe settles in.
pub(super) fn is_supported_currency(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// A query string's parameters, percent-decoded; the first of a repeated name wins.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(query: &str) -> Self {
        let parsed = reqwest::Url::parse(&format!("http://query.invalid/?{query}"))
            .map(|url| {
                url.query_pairs().map(|(name, value)| (name.into_owned(), value.into_owned())).collect()
            })
            .unwrap_or_default();
        Self(parsed)
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// `limit`, 1 to [`MAX_PAGE`], or `default`.
    pub(super) fn limit(&self, default: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(limit) => limit
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=MAX_PAGE).contains(limit))
                .ok_or_else(|| ApiError::invalid("limit", format!("limit must be 1 to {MAX_PAGE}"))),
        }
    }
}

/// A JSON object's fields, each read with its own check.
pub(super) struct Fields<'a>(pub(super) &'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub(super) fn optional_str(&self, field: &'static str) -> Result<Option<&'a str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) if !value.trim().is_empty() && value.len() <= 2048 => Ok(Some(value)),
            Some(_) => Err(ApiError::invalid(field, format!("{field} must be a non-empty string"))),
        }
    }

    pub(super) fn required_str(&self, field: &'static str) -> Result<&'a str, ApiError> {
        self.optional_str(field)?.ok_or_else(|| ApiError::invalid(field, format!("{field} is required")))
    }

    /// One of `allowed`, when given.
    pub(super) fn optional_choice(
        &self,
        field: &'static str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, ApiError> {
        let Some(value) = self.optional_str(field)? else { return Ok(None) };
        allowed
            .iter()
            .find(|choice| **choice == value)
            .copied()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, format!("{field} must be one of {}", allowed.join(", "))))
    }

    pub(super) fn reference(&self) -> Result<&'a str, ApiError> {
        let reference = self.required_str("reference")?;
        if !is_valid_reference(reference) {
            return Err(ApiError::invalid(
                "reference",
                "reference must be 1 to 200 printable ASCII characters, without spaces or #",
            ));
        }
        Ok(reference)
    }

    pub(super) fn account_id(&self, field: &'static str) -> Result<AccountId, ApiError> {
        AccountId::parse(self.required_str(field)?)
            .ok_or_else(|| ApiError::invalid(field, format!("{field} must be an account id (acct_…)")))
    }

    /// A positive amount in minor units: a JSON integer that fits an `i64`. Floats, strings and
    /// anything past the `i64` range are refused, never rounded.
    pub(super) fn amount(&self) -> Result<i64, ApiError> {
        let invalid = || ApiError::invalid("amount", "amount must be a positive integer of minor units");
        match self.0.get("amount") {
            Some(Value::Number(number)) => number.as_i64().filter(|amount| *amount > 0).ok_or_else(invalid),
            _ => Err(invalid()),
        }
    }

    /// A currency Stripe settles in, lowercased.
    pub(super) fn currency(&self) -> Result<String, ApiError> {
        let currency = self.required_str("currency")?.to_ascii_lowercase();
        if CURRENCIES.binary_search(&currency.as_str()).is_err() {
            return Err(ApiError::invalid("currency", "currency must be a currency code Stripe supports"));
        }
        Ok(currency)
    }

    /// Refuses fields the route does not know, so that a misspelt optional field is not ignored.
    pub(super) fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|key| !known.contains(&key.as_str())) {
            Some(_) => Err(ApiError::invalid(
                "body",
                format!("unknown field; this route takes {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }
}

/// A URL Stripe may send a seller's browser to: absolute, https (or http on loopback, for local
/// runs).
pub(super) fn checked_url(field: &'static str, value: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::invalid(field, format!("{field} must be an absolute https URL"));
    let url = reqwest::Url::parse(value).map_err(|_| invalid())?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => Ok(url.into()),
        "http" if loopback => Ok(url.into()),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_currency_list_is_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn amounts_are_positive_i64_integers_only() {
        for (body, ok) in [
            (json!({"amount": 1}), Some(1)),
            (json!({"amount": i64::MAX}), Some(i64::MAX)),
            (json!({"amount": 0}), None),
            (json!({"amount": -5}), None),
            (json!({"amount": 10.5}), None),
            (json!({"amount": 1e3}), None),
            (json!({"amount": "100"}), None),
            (json!({"amount": u64::MAX}), None),
            (json!({}), None),
        ] {
            let object = body.as_object().expect("an object").clone();
            assert_eq!(Fields(&object).amount().ok(), ok, "{body}");
        }
        let huge: Value = serde_json::from_str(r#"{"amount": 92233720368547758070}"#).expect("json");
        assert!(Fields(huge.as_object().expect("an object")).amount().is_err());
    }

    #[test]
    fn currencies_are_known_codes_in_any_case() {
        let read = |currency: &str| {
            let object = json!({"currency": currency}).as_object().expect("an object").clone();
            Fields(&object).currency().ok()
        };
        assert_eq!(read("USD").as_deref(), Some("usd"));
        assert_eq!(read("eur").as_deref(), Some("eur"));
        assert_eq!(read("xyz"), None);
        assert_eq!(read("usd "), None);
    }

    #[test]
    fn query_limits_and_urls_are_checked() {
        assert_eq!(Query::parse("limit=7&status=a%20b").get("status"), Some("a b"));
        assert_eq!(Query::parse("limit=7").limit(50).ok(), Some(7));
        assert_eq!(Query::parse("").limit(50).ok(), Some(50));
        for bad in ["limit=0", "limit=101", "limit=-1", "limit=x"] {
            assert!(Query::parse(bad).limit(50).is_err(), "{bad}");
        }
        assert!(checked_url("return_url", "https://platform.example/done").is_ok());
        assert!(checked_url("return_url", "http://127.0.0.1:3000/done").is_ok());
        for bad in ["http://platform.example/", "javascript:alert(1)", "/relative", "ftp://x/"] {
            assert!(checked_url("return_url", bad).is_err(), "{bad}");
        }
    }
}
