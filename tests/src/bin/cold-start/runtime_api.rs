//! A stand-in for the Lambda Runtime API on loopback: the endpoints `lambda_runtime` calls.
//!
//! `GET /2018-06-01/runtime/invocation/next` hands out the queued invocations one at a time, with
//! the headers Lambda sends; once they are used up it holds the request open, as Lambda does
//! until the next event. The function's answers (`.../{id}/response`), its invocation errors
//! (`.../{id}/error`), an initialisation error (`/runtime/init/error`) and anything else it calls
//! are reported, each with the instant it arrived.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::mpsc;

/// How far ahead of "now" each invocation's deadline is, as the function's timeout would set it.
/// The workers' 60 s: they start no step with less than its worst case (50 s) left. The webhook
/// keeps its own, shorter deadline whatever this says.
const DEADLINE: Duration = Duration::from_secs(60);
/// An X-Ray trace header of the shape Lambda sends, not sampled.
const TRACE_ID: &str = "Root=1-67a0c0de-0123456789abcdef01234567;Parent=89abcdef01234567;Sampled=0";

/// One event for the function.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// The event, as JSON.
    pub body: Vec<u8>,
}

/// What the stand-in saw, in the order it happened.
#[derive(Debug)]
pub enum Seen {
    /// The function asked for its next invocation.
    Polled { at: Instant },
    /// An invocation was handed to the function.
    Handed { request_id: String, at: Instant },
    /// The function answered an invocation.
    Answered { request_id: String, body: Bytes, at: Instant },
    /// The function reported an invocation error.
    Failed { request_id: String, body: Bytes },
    /// The function reported that it could not start.
    InitFailed { body: Bytes },
    /// A call the stand-in does not serve.
    Unexpected { method: Method, uri: Uri },
}

struct Shared {
    pending: Mutex<VecDeque<Invocation>>,
    function_arn: String,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Shared {
    fn report(&self, seen: Seen) {
        // The receiver is gone only once the measurement is over; nothing is waiting for this.
        let _ = self.seen.send(seen);
    }
}

/// A running stand-in on `127.0.0.1`; stops when dropped.
pub struct RuntimeApi {
    address: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RuntimeApi {
    /// Starts the stand-in on a free loopback port with `invocations` queued in order.
    pub async fn start(invocations: Vec<Invocation>, function_arn: String) -> std::io::Result<Self> {
        let (sender, seen) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { pending: Mutex::new(invocations.into()), function_arn, seen: sender });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(unexpected)
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { address, seen, server })
    }

    /// `127.0.0.1:<port>`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// The next thing seen, or `None` if nothing arrives within `wait`.
    pub async fn next_seen(&mut self, wait: Duration) -> Option<Seen> {
        tokio::time::timeout(wait, self.seen.recv()).await.ok().flatten()
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> Response {
    shared.report(Seen::Polled { at: Instant::now() });
    let invocation = shared.pending.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
    let Some(invocation) = invocation else {
        // Lambda holds the poll until there is an event; the function is stopped before then.
        return std::future::pending().await;
    };
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + DEADLINE;
    let response = (
        [
            ("content-type", "application/json".to_owned()),
            ("lambda-runtime-aws-request-id", invocation.request_id.clone()),
            ("lambda-runtime-deadline-ms", deadline.as_millis().to_string()),
            ("lambda-runtime-invoked-function-arn", shared.function_arn.clone()),
            ("lambda-runtime-trace-id", TRACE_ID.to_owned()),
        ],
        invocation.body,
    )
        .into_response();
    shared.report(Seen::Handed { request_id: invocation.request_id, at: Instant::now() });
    response
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    shared.report(Seen::Answered { request_id, body, at: Instant::now() });
    StatusCode::ACCEPTED
}

async fn error(State(shared): State<Arc<Shared>>, Path(request_id): Path<String>, body: Bytes) -> StatusCode {
    shared.report(Seen::Failed { request_id, body });
    StatusCode::ACCEPTED
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    shared.report(Seen::InitFailed { body });
    StatusCode::ACCEPTED
}

async fn unexpected(State(shared): State<Arc<Shared>>, method: Method, uri: Uri) -> StatusCode {
    shared.report(Seen::Unexpected { method, uri });
    StatusCode::NOT_FOUND
}
