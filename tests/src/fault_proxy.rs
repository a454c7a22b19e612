//! A fault-injecting HTTP stand-in in front of moto server: a loopback proxy that forwards each
//! AWS request unless told to fail it, and counts what it saw and what it broke.
//!
//! Faults are chosen per request by operation (the `X-Amz-Target` header's suffix: `GetItem`,
//! `TransactWriteItems`, `SendMessageBatch`, ...) for the next N requests or for every request.
//! It speaks just enough HTTP/1.1 for the AWS SDK's JSON protocols (keep-alive, `Content-Length`
//! bodies), over raw TCP so that a fault can reset the connection for real.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use shared::aws::SdkBounds;

use crate::DYNAMODB_ENDPOINT;

/// What the proxy does to a request instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 with the service's throttling error (DynamoDB's
    /// `ProvisionedThroughputExceededException`, SQS's `RequestThrottled`).
    Throttle,
    /// HTTP 500 `InternalServerError`.
    ServerError,
    /// Never answer: the connection stays open until the client gives up on it.
    Hang,
    /// Reset the connection (RST) without answering.
    Reset,
    /// Forward the request, so that moto carries it out, then reset the connection instead of
    /// answering: the write happened but the client cannot know.
    LoseResponse,
    /// Forward the request and answer, but only after this long: storage that is slow, not down.
    Slow(std::time::Duration),
}

/// One instruction: a fault for requests of one operation (or of any), some or all of them.
#[derive(Debug)]
struct Rule {
    operation: Option<String>,
    fault: Fault,
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    seen: BTreeMap<String, usize>,
    injected: BTreeMap<String, usize>,
}

impl State {
    /// Counts a request and picks its fault, using up one of a limited rule's requests.
    fn admit(&mut self, operation: &str) -> Option<Fault> {
        *self.seen.entry(operation.to_owned()).or_default() += 1;
        let rule = self.rules.iter_mut().find(|rule| {
            rule.operation.as_deref().is_none_or(|wanted| wanted == operation) && rule.remaining != Some(0)
        })?;
        if let Some(remaining) = &mut rule.remaining {
            *remaining -= 1;
        }
        *self.injected.entry(operation.to_owned()).or_default() += 1;
        Some(rule.fault)
    }
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    state: Mutex<State>,
}

/// The running proxy. Dropping it stops accepting connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// A proxy in front of the moto server the test script started. Panics, loudly, without
    /// one, like [`crate::dynamodb_client`].
    pub async fn in_front_of_moto() -> Self {
        let endpoint = std::env::var(DYNAMODB_ENDPOINT).unwrap_or_else(|_| {
            panic!(
                "{DYNAMODB_ENDPOINT} is not set: run the tests with ./scripts/test, which starts moto server"
            )
        });
        Self::start(endpoint).await
    }

    /// A proxy on 127.0.0.1 in front of `upstream`, which must be on loopback.
    pub async fn start(upstream: impl Into<String>) -> Self {
        let upstream = upstream.into().trim_end_matches('/').to_owned();
        assert!(
            upstream.starts_with("http://127.0.0.1:") || upstream.starts_with("http://[::1]:"),
            "the proxy forwards only to loopback, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let http = reqwest::Client::builder().no_proxy().build().expect("the forwarding client builds");
        let shared = Arc::new(Shared { upstream, http, state: Mutex::new(State::default()) });
        let accepting = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, Arc::clone(&accepting)));
            }
        });
        Self { addr, shared, accept }
    }

    /// The endpoint URL to give the SDK.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SDK configuration `bounds` give the deployed functions (`shared::aws`), pointed at
    /// this proxy, with credentials and region given so that nothing is looked up elsewhere.
    pub async fn sdk_config(&self, bounds: &SdkBounds) -> aws_config::SdkConfig {
        let credentials = aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "tests");
        bounds
            .apply(aws_config::defaults(aws_config::BehaviorVersion::latest()))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(self.url())
            .load()
            .await
    }

    /// A DynamoDB client with `bounds`, through this proxy. Its retry quota (the SDK's token
    /// bucket, shared process-wide per partition) is this proxy's own, so that faults injected
    /// by one test cannot use up another's retries.
    pub async fn dynamodb_client(&self, bounds: &SdkBounds) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::config::Builder::from(&self.sdk_config(bounds).await)
            .retry_partition(aws_sdk_dynamodb::config::retry::RetryPartition::new(self.partition()))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// An SQS client with `bounds`, through this proxy, with a retry quota of its own.
    pub async fn sqs_client(&self, bounds: &SdkBounds) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::config::Builder::from(&self.sdk_config(bounds).await)
            .retry_partition(aws_sdk_sqs::config::retry::RetryPartition::new(self.partition()))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    fn partition(&self) -> String {
        format!("fault-proxy-{}", self.addr.port())
    }

    /// Fails the next `count` requests of `operation` with `fault`.
    pub fn fail_next(&self, operation: &str, count: usize, fault: Fault) {
        self.add(Rule { operation: Some(operation.to_owned()), fault, remaining: Some(count) });
    }

    /// Fails every request of `operation` (of any operation, for `None`) with `fault`.
    pub fn fail_every(&self, operation: Option<&str>, fault: Fault) {
        self.add(Rule { operation: operation.map(str::to_owned), fault, remaining: None });
    }

    /// Lifts every fault: from now on every request is forwarded.
    pub fn heal(&self) {
        self.state().rules.clear();
    }

    /// Requests of `operation` seen so far, faulted or not.
    pub fn seen(&self, operation: &str) -> usize {
        self.state().seen.get(operation).copied().unwrap_or(0)
    }

    /// Requests of `operation` that got a fault instead of moto's answer (forwarded ones whose
    /// answer was lost included).
    pub fn injected(&self, operation: &str) -> usize {
        self.state().injected.get(operation).copied().unwrap_or(0)
    }

    /// Every fault injected so far, over all operations.
    pub fn injected_total(&self) -> usize {
        self.state().injected.values().sum()
    }

    fn add(&self, rule: Rule) {
        self.state().rules.push(rule);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The JSON protocols name the operation in `X-Amz-Target`: "DynamoDB_20120810.GetItem".
    fn operation(&self) -> String {
        let target = self.header("x-amz-target").unwrap_or("unknown");
        target.rsplit('.').next().unwrap_or(target).to_owned()
    }

    fn is_sqs(&self) -> bool {
        self.header("x-amz-target").is_some_and(|target| target.starts_with("AmazonSQS"))
    }
}

/// Serves one client connection: requests in order, until the client closes it or a fault ends it.
async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => return,
        };
        let operation = request.operation();
        let fault = shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(&operation);
        let written = match fault {
            None => match forward(&shared, &request).await {
                Ok(response) => stream.write_all(&response).await,
                Err(error) => stream.write_all(&plain_response(502, &error)).await,
            },
            Some(Fault::Throttle) => stream.write_all(&throttle_response(&request)).await,
            Some(Fault::ServerError) => stream.write_all(&server_error_response(&request)).await,
            Some(Fault::Hang) => {
                // Hold the connection, unanswered, until the client's timeout closes it.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                return;
            }
            Some(Fault::Reset) => return reset(stream),
            Some(Fault::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                match forward(&shared, &request).await {
                    Ok(response) => stream.write_all(&response).await,
                    Err(error) => stream.write_all(&plain_response(502, &error)).await,
                }
            }
            Some(Fault::LoseResponse) => {
                let _ = forward(&shared, &request).await;
                return reset(stream);
            }
        };
        if written.is_err() {
            return;
        }
    }
}

/// Closes with RST rather than FIN: a zero linger makes the close abortive.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads one request; `None` when the client closed the connection between requests.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    const MAX_HEAD: usize = 64 * 1024;
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or("/").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    buffer.drain(..head_end + 4);
    let mut request = Request { method, path, headers, body: Vec::new() };
    if request.header("transfer-encoding").is_some() {
        // The SDK's JSON protocols always send a length; anything else is a surprise to see.
        return Err(std::io::Error::other("chunked request bodies are not supported"));
    }
    let length: usize = request.header("content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
    while buffer.len() < length {
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    request.body = buffer.drain(..length).collect();
    Ok(Some(request))
}

/// Sends the request on to moto and returns its whole answer as HTTP/1.1 bytes.
async fn forward(shared: &Shared, request: &Request) -> Result<Vec<u8>, String> {
    const HOP_BY_HOP: [&str; 5] = ["host", "content-length", "connection", "transfer-encoding", "expect"];
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|err| err.to_string())?;
    let mut upstream = shared.http.request(method, format!("{}{}", shared.upstream, request.path));
    for (name, value) in &request.headers {
        if !HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop)) {
            upstream = upstream.header(name, value);
        }
    }
    let response = upstream.body(request.body.clone()).send().await.map_err(|err| err.to_string())?;
    let status = response.status();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = response.bytes().await.map_err(|err| err.to_string())?;
    Ok(http_response(status.as_u16(), &headers, &body))
}

fn http_response(status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let reason =
        reqwest::StatusCode::from_u16(status).ok().and_then(|code| code.canonical_reason()).unwrap_or("");
    let mut bytes = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// An AWS JSON-protocol error: the type in `x-amzn-ErrorType` and in the body's `__type`.
fn aws_error(status: u16, error_type: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "__type": error_type, "message": message }).to_string();
    let headers = [
        ("content-type".to_owned(), "application/x-amz-json-1.0".to_owned()),
        ("x-amzn-ErrorType".to_owned(), error_type.to_owned()),
        ("x-amzn-RequestId".to_owned(), "fault-proxy".to_owned()),
    ];
    http_response(status, &headers, body.as_bytes())
}

fn throttle_response(request: &Request) -> Vec<u8> {
    if request.is_sqs() {
        aws_error(400, "com.amazonaws.sqs#RequestThrottled", "Rate exceeded (injected)")
    } else {
        aws_error(
            400,
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded (injected)",
        )
    }
}

fn server_error_response(request: &Request) -> Vec<u8> {
    let error_type = if request.is_sqs() {
        "com.amazonaws.sqs#InternalError"
    } else {
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    };
    aws_error(500, error_type, "Internal server error (injected)")
}

fn plain_response(status: u16, message: &str) -> Vec<u8> {
    http_response(status, &[("content-type".to_owned(), "text/plain".to_owned())], message.as_bytes())
}
