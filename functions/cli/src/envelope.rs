//! Lambda events for a Stripe delivery to `POST /webhooks/stripe`, as API Gateway HTTP APIs
//! (payload format 2.0) and Lambda function URLs hand them to the function.
//!
//! The output is deterministic: ids and times are derived from the body and the signature
//! header, so regenerating an envelope gives the same file.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The path Stripe delivers to.
pub const WEBHOOK_PATH: &str = "/webhooks/stripe";

/// What Stripe sends as `User-Agent`.
pub const STRIPE_USER_AGENT: &str = "Stripe/1.0 (+https://stripe.com/docs/webhooks)";

/// The arrival time used when the signature header carries no `t=`: the first sample event's
/// `created`.
const FALLBACK_EPOCH_SECS: i64 = 1_732_000_000;

/// AWS's documentation placeholder account.
const AWS_ACCOUNT_ID: &str = "123456789012";
const REGION: &str = "us-east-1";
/// Ten lowercase letters and digits, as API Gateway's API ids are.
const API_ID: &str = "c0nf10wapi";
/// Thirty-two lowercase letters and digits, as function URL ids are.
const FUNCTION_URL_ID: &str = "c0nnectf10wdem0webh00k10ca10n1y7";
/// One of the addresses Stripe lists for webhook deliveries.
const STRIPE_SOURCE_IP: &str = "3.18.12.63";

/// Which front door the request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// An API Gateway HTTP API route `POST /webhooks/stripe`, payload format 2.0.
    ApiGatewayV2,
    /// A Lambda function URL (the same 2.0 format, on the `$default` route).
    FunctionUrl,
}

impl EnvelopeKind {
    /// Reads `apigw-v2` or `function-url`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "apigw-v2" => Some(Self::ApiGatewayV2),
            "function-url" => Some(Self::FunctionUrl),
            _ => None,
        }
    }

    /// The name [`EnvelopeKind::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiGatewayV2 => "apigw-v2",
            Self::FunctionUrl => "function-url",
        }
    }

    fn domain_prefix(self) -> &'static str {
        match self {
            Self::ApiGatewayV2 => API_ID,
            Self::FunctionUrl => FUNCTION_URL_ID,
        }
    }

    fn domain_name(self) -> String {
        match self {
            Self::ApiGatewayV2 => format!("{API_ID}.execute-api.{REGION}.amazonaws.com"),
            Self::FunctionUrl => format!("{FUNCTION_URL_ID}.lambda-url.{REGION}.on.aws"),
        }
    }

    fn route_key(self) -> String {
        match self {
            Self::ApiGatewayV2 => format!("POST {WEBHOOK_PATH}"),
            Self::FunctionUrl => "$default".to_owned(),
        }
    }

    fn account_id(self) -> &'static str {
        match self {
            Self::ApiGatewayV2 => AWS_ACCOUNT_ID,
            // A function URL with auth type NONE has no caller account to report.
            Self::FunctionUrl => "anonymous",
        }
    }
}

/// The Lambda event for Stripe POSTing `body` to `/webhooks/stripe` with this `Stripe-Signature`.
///
/// With `base64` the body travels base64-encoded and `isBase64Encoded` is true. A body that is not
/// UTF-8 is always base64-encoded, as API Gateway does for binary payloads. An empty
/// `signature_header` leaves the `stripe-signature` header out.
pub fn lambda_envelope(kind: EnvelopeKind, body: &[u8], signature_header: &str, base64: bool) -> Value {
    let text_body = if base64 { None } else { std::str::from_utf8(body).ok() };
    let (body_field, is_base64_encoded) = match text_body {
        Some(text) => (text.to_owned(), false),
        None => (STANDARD.encode(body), true),
    };

    let digest = Fnv1a::new()
        .update(kind.as_str().as_bytes())
        .update(signature_header.as_bytes())
        .update(body)
        .finish();
    let digest2 = Fnv1a::new().update(&digest.to_be_bytes()).finish();
    let arrived_secs = signed_at(signature_header).unwrap_or(FALLBACK_EPOCH_SECS);
    // Stripe signs just before sending, so the request arrives a fraction of a second later.
    let arrived_millis = arrived_secs.saturating_mul(1000).saturating_add(150 + (digest % 700) as i64);

    let mut request_id_bytes = [0u8; 11];
    request_id_bytes[..8].copy_from_slice(&digest.to_be_bytes());
    request_id_bytes[8..].copy_from_slice(&digest2.to_be_bytes()[..3]);
    let request_id = STANDARD.encode(request_id_bytes);
    let trace_id = format!("Root=1-{arrived_secs:08x}-{digest:016x}{:08x}", digest2 >> 32);

    let domain_name = kind.domain_name();
    let mut headers = serde_json::Map::new();
    let mut header = |name: &str, value: String| headers.insert(name.to_owned(), Value::String(value));
    header("accept", "*/*; q=0.5, application/xml".to_owned());
    header("cache-control", "no-cache".to_owned());
    header("content-length", body.len().to_string());
    header("content-type", "application/json; charset=utf-8".to_owned());
    header("host", domain_name.clone());
    if !signature_header.is_empty() {
        header("stripe-signature", signature_header.to_owned());
    }
    header("user-agent", STRIPE_USER_AGENT.to_owned());
    header("x-amzn-trace-id", trace_id);
    header("x-forwarded-for", STRIPE_SOURCE_IP.to_owned());
    header("x-forwarded-port", "443".to_owned());
    header("x-forwarded-proto", "https".to_owned());

    json!({
        "version": "2.0",
        "routeKey": kind.route_key(),
        "rawPath": WEBHOOK_PATH,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": kind.account_id(),
            "apiId": kind.domain_prefix(),
            "domainName": domain_name,
            "domainPrefix": kind.domain_prefix(),
            "http": {
                "method": "POST",
                "path": WEBHOOK_PATH,
                "protocol": "HTTP/1.1",
                "sourceIp": STRIPE_SOURCE_IP,
                "userAgent": STRIPE_USER_AGENT,
            },
            "requestId": request_id,
            "routeKey": kind.route_key(),
            "stage": "$default",
            "time": clf_time(arrived_secs),
            "timeEpoch": arrived_millis,
        },
        "body": body_field,
        "isBase64Encoded": is_base64_encoded,
    })
}

/// The `t=` of a `Stripe-Signature` header.
fn signed_at(signature_header: &str) -> Option<i64> {
    signature_header.split(',').find_map(|item| item.trim().strip_prefix("t=")?.trim().parse().ok())
}

/// FNV-1a: a stable hash, so that generated envelopes do not change between Rust releases as
/// `DefaultHasher`'s output may.
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(mut self, bytes: &[u8]) -> Self {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    fn finish(self) -> u64 {
        self.0
    }
}

/// Unix seconds as API Gateway's `requestContext.time`: `12/Mar/2020:19:03:58 +0000`.
fn clf_time(unix_secs: i64) -> String {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = shared::calendar::civil_from_days(days);
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use lambda_http::RequestExt;
    use lambda_http::http::Method;
    use lambda_http::request::RequestContext;

    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","object":"event","created":1732000240}"#;
    const HEADER: &str = "t=1732000240,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd";

    fn to_request(envelope: &Value) -> lambda_http::Request {
        lambda_http::request::from_str(&envelope.to_string()).unwrap()
    }

    #[test]
    fn parses_the_two_kind_names_and_nothing_else() {
        assert_eq!(EnvelopeKind::parse("apigw-v2"), Some(EnvelopeKind::ApiGatewayV2));
        assert_eq!(EnvelopeKind::parse("function-url"), Some(EnvelopeKind::FunctionUrl));
        assert_eq!(EnvelopeKind::parse("apigw-v1"), None);
        assert_eq!(EnvelopeKind::parse(""), None);
        for kind in [EnvelopeKind::ApiGatewayV2, EnvelopeKind::FunctionUrl] {
            assert_eq!(EnvelopeKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn api_gateway_envelope_becomes_a_post_with_the_header_and_the_exact_body() {
        let request = to_request(&lambda_envelope(EnvelopeKind::ApiGatewayV2, BODY, HEADER, false));
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), WEBHOOK_PATH);
        assert_eq!(request.headers()["stripe-signature"], HEADER);
        assert_eq!(request.headers()["user-agent"], STRIPE_USER_AGENT);
        assert_eq!(request.body().as_ref(), BODY);
        assert!(matches!(request.request_context(), RequestContext::ApiGatewayV2(_)));
    }

    #[test]
    fn base64_envelope_decodes_to_the_exact_body() {
        let envelope = lambda_envelope(EnvelopeKind::ApiGatewayV2, BODY, HEADER, true);
        assert_eq!(envelope["isBase64Encoded"], true);
        assert_ne!(envelope["body"].as_str().unwrap().as_bytes(), BODY);
        let request = to_request(&envelope);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.headers()["stripe-signature"], HEADER);
        assert_eq!(request.body().as_ref(), BODY);
    }

    #[test]
    fn body_that_is_not_utf8_is_base64_encoded_even_when_not_asked() {
        let body = [0xff, 0xfe, b'{', 0x80];
        let envelope = lambda_envelope(EnvelopeKind::FunctionUrl, &body, HEADER, false);
        assert_eq!(envelope["isBase64Encoded"], true);
        assert_eq!(to_request(&envelope).body().as_ref(), body);
    }

    #[test]
    fn function_url_envelope_uses_the_default_route_and_a_lambda_url_domain() {
        let envelope = lambda_envelope(EnvelopeKind::FunctionUrl, BODY, HEADER, false);
        assert_eq!(envelope["routeKey"], "$default");
        assert_eq!(envelope["requestContext"]["routeKey"], "$default");
        let domain = envelope["requestContext"]["domainName"].as_str().unwrap();
        assert_eq!(domain, format!("{FUNCTION_URL_ID}.lambda-url.us-east-1.on.aws"));
        assert_eq!(FUNCTION_URL_ID.len(), 32);
        let request = to_request(&envelope);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().host(), Some(domain));
        assert_eq!(request.headers()["stripe-signature"], HEADER);
        assert_eq!(request.body().as_ref(), BODY);
    }

    #[test]
    fn api_gateway_envelope_has_the_http_api_shape() {
        let envelope = lambda_envelope(EnvelopeKind::ApiGatewayV2, BODY, HEADER, false);
        assert_eq!(envelope["version"], "2.0");
        assert_eq!(envelope["routeKey"], "POST /webhooks/stripe");
        assert_eq!(envelope["rawPath"], WEBHOOK_PATH);
        let context = &envelope["requestContext"];
        assert_eq!(context["http"]["method"], "POST");
        assert_eq!(context["http"]["path"], WEBHOOK_PATH);
        assert_eq!(context["stage"], "$default");
        assert_eq!(context["domainName"], format!("{API_ID}.execute-api.us-east-1.amazonaws.com"));
        assert_eq!(API_ID.len(), 10);
        assert_eq!(context["requestId"].as_str().unwrap().len(), 16);
        let epoch_millis = context["timeEpoch"].as_i64().unwrap();
        assert!((1_732_000_240_000..1_732_000_241_000).contains(&epoch_millis));
        assert_eq!(context["time"], "19/Nov/2024:07:10:40 +0000");
        let headers = envelope["headers"].as_object().unwrap();
        assert!(headers.keys().all(|name| name == &name.to_ascii_lowercase()));
        assert_eq!(headers["content-length"], BODY.len().to_string());
        assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    }

    #[test]
    fn same_input_gives_the_same_envelope_and_other_input_another_request_id() {
        let first = lambda_envelope(EnvelopeKind::ApiGatewayV2, BODY, HEADER, false);
        assert_eq!(first, lambda_envelope(EnvelopeKind::ApiGatewayV2, BODY, HEADER, false));
        let other = lambda_envelope(EnvelopeKind::ApiGatewayV2, b"{}", HEADER, false);
        assert_ne!(first["requestContext"]["requestId"], other["requestContext"]["requestId"]);
    }

    #[test]
    fn empty_signature_leaves_the_header_out() {
        let envelope = lambda_envelope(EnvelopeKind::ApiGatewayV2, BODY, "", false);
        assert!(envelope["headers"].get("stripe-signature").is_none());
        assert!(to_request(&envelope).headers().get("stripe-signature").is_none());
    }

    #[test]
    fn clf_time_formats_known_instants() {
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_time(1_583_348_638), "04/Mar/2020:19:03:58 +0000");
        assert_eq!(clf_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(clf_time(-1), "31/Dec/1969:23:59:59 +0000");
    }
}
