//! A stand-in for the Stripe API on loopback, for tests: transfers, transfer reversals, payouts and
//! account retrieval, with Stripe's idempotency-key semantics, balances, a ledger of what was
//! created, and faults it can be told to inject.
//!
//! Deliberate differences from Stripe: a POST without `Idempotency-Key` is refused (this client must
//! always send one); idempotent results are kept forever rather than 24 hours; a key is compared
//! with the `Stripe-Account` it was first used with, so reusing it on another account is an
//! `idempotency_error`; every transfer draws on the platform balance, `source_transaction` or not;
//! a reversal may take a connected balance below zero; a 401 repeats the rejected key unmasked, so
//! that tests prove the client scrubs it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};
use shared::stripe::client::{ApiKey, StripeClientConfig};
use tokio::sync::{Notify, oneshot};

/// A secret key the stub accepts (it accepts any `sk_test_…`).
pub const STUB_API_KEY: &str = "sk_test_connect_flow_stub";

/// A one-shot failure for the next request on a path starting with its prefix that would execute;
/// a request that replays a remembered result is answered from memory and leaves the fault queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Creates the object and records it under the idempotency key, then answers 500.
    ServerErrorAfterCreate,
    /// Answers 429 before doing anything; consumed even by a request that would replay.
    RateLimited,
    /// Holds the request until [`StripeStub::release_held`], then completes it: the client has
    /// long given up by then. A retry under the same key meanwhile gets 409 `idempotency_key_in_use`.
    Timeout,
    /// Answers 400 `balance_insufficient` without creating anything, and caches that answer under
    /// the key as Stripe does.
    BalanceInsufficient,
}

/// A transfer the stub created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubTransfer {
    /// `tr_…`.
    pub id: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase currency.
    pub currency: String,
    /// The receiving account.
    pub destination: String,
    /// The funding charge, if given.
    pub source_transaction: Option<String>,
    /// The transfer group, if given.
    pub transfer_group: Option<String>,
    /// `metadata[…]` as sent.
    pub metadata: BTreeMap<String, String>,
    /// How much has been reversed so far.
    pub amount_reversed: i64,
}

/// A transfer reversal the stub created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubReversal {
    /// `trr_…`.
    pub id: String,
    /// The reversed transfer.
    pub transfer: String,
    /// Minor units.
    pub amount: i64,
    /// The transfer's currency.
    pub currency: String,
    /// The account the funds came back from.
    pub destination: String,
    /// `metadata[…]` as sent.
    pub metadata: BTreeMap<String, String>,
}

/// A payout the stub created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubPayout {
    /// `po_…`.
    pub id: String,
    /// The paying account, from `Stripe-Account`.
    pub account: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase currency.
    pub currency: String,
    /// `metadata[…]` as sent.
    pub metadata: BTreeMap<String, String>,
}

/// One request as the stub received it (headers of interest only; never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Stripe-Account` header.
    pub stripe_account: Option<String>,
    /// The `Stripe-Version` header.
    pub stripe_version: Option<String>,
}

#[derive(Debug, Default)]
struct StubAccount {
    can_receive_transfers: bool,
    payouts_enabled: bool,
    balances: BTreeMap<String, i64>,
}

#[derive(Debug)]
enum Remembered {
    InProgress { fingerprint: String },
    Done { fingerprint: String, status: StatusCode, body: Value },
}

#[derive(Debug)]
struct Held {
    release: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

#[derive(Debug, Default)]
struct Ledger {
    platform: BTreeMap<String, i64>,
    accounts: BTreeMap<String, StubAccount>,
    transfers: Vec<StubTransfer>,
    reversals: Vec<StubReversal>,
    payouts: Vec<StubPayout>,
    idempotency: HashMap<String, Remembered>,
    faults: VecDeque<(String, Fault)>,
    received: Vec<ReceivedRequest>,
    held: Vec<Held>,
    next_id: u64,
}

impl Ledger {
    fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_stub{:010}", self.next_id)
    }

    fn first_fault(&self, path: &str) -> Option<(usize, Fault)> {
        self.faults
            .iter()
            .position(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|i| (i, self.faults[i].1))
    }
}

#[derive(Debug, Default)]
struct Shared {
    ledger: Mutex<Ledger>,
    held_changed: Notify,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A test that panicked mid-assertion must not poison the stub for the rest of the run.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running stand-in Stripe API on `127.0.0.1`; stops when dropped.
#[derive(Debug)]
pub struct StripeStub {
    base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for StripeStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StripeStub {
    /// Starts the stub on a free loopback port, with no accounts and no balances.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port is free");
        let base_url = format!("http://{}", listener.local_addr().expect("the listener has an address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base_url, shared, server }
    }

    /// `http://127.0.0.1:<port>`, to use as the client's API base.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A client configuration pointing at the stub with [`STUB_API_KEY`].
    pub fn client_config(&self) -> StripeClientConfig {
        let mut config = StripeClientConfig::new(ApiKey::new(STUB_API_KEY));
        config.api_base = self.base_url.clone();
        config
    }

    /// Sets the platform's available balance in `currency`.
    pub fn set_platform_balance(&self, currency: &str, amount: i64) {
        self.shared.ledger().platform.insert(currency.to_owned(), amount);
    }

    /// The platform's available balance in `currency`.
    pub fn platform_balance(&self, currency: &str) -> i64 {
        self.shared.ledger().platform.get(currency).copied().unwrap_or(0)
    }

    /// Adds a connected account, or changes an existing one's flags and keeps its balances.
    pub fn add_account(&self, id: &str, can_receive_transfers: bool, payouts_enabled: bool) {
        let mut ledger = self.shared.ledger();
        let account = ledger.accounts.entry(id.to_owned()).or_default();
        account.can_receive_transfers = can_receive_transfers;
        account.payouts_enabled = payouts_enabled;
    }

    /// Sets a connected account's balance in `currency`, adding the account if it is unknown.
    pub fn set_account_balance(&self, id: &str, currency: &str, amount: i64) {
        self.shared
            .ledger()
            .accounts
            .entry(id.to_owned())
            .or_default()
            .balances
            .insert(currency.to_owned(), amount);
    }

    /// A connected account's balance in `currency` (0 for an unknown account).
    pub fn account_balance(&self, id: &str, currency: &str) -> i64 {
        self.shared.ledger().accounts.get(id).and_then(|a| a.balances.get(currency)).copied().unwrap_or(0)
    }

    /// Every transfer created, in order.
    pub fn transfers(&self) -> Vec<StubTransfer> {
        self.shared.ledger().transfers.clone()
    }

    /// Every transfer reversal created, in order.
    pub fn reversals(&self) -> Vec<StubReversal> {
        self.shared.ledger().reversals.clone()
    }

    /// Every payout created, in order.
    pub fn payouts(&self) -> Vec<StubPayout> {
        self.shared.ledger().payouts.clone()
    }

    /// Queues a one-shot fault for the next matching request on a path starting with `path_prefix`.
    pub fn inject(&self, path_prefix: &str, fault: Fault) {
        self.shared.ledger().faults.push_back((path_prefix.to_owned(), fault));
    }

    /// How many injected faults have not fired yet.
    pub fn pending_faults(&self) -> usize {
        self.shared.ledger().faults.len()
    }

    /// How many requests arrived per path, rejected ones included.
    pub fn requests(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for request in &self.shared.ledger().received {
            *counts.entry(request.path.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Every request received, in order.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.shared.ledger().received.clone()
    }

    /// Lets every request held by [`Fault::Timeout`] complete, and returns once they all have.
    /// Waits for one to be held first if none is yet. Returns how many were released.
    pub async fn release_held(&self) -> usize {
        let held = loop {
            let mut changed = pin!(self.shared.held_changed.notified());
            // Registered before looking, so that a request held between the look and the await
            // still wakes us.
            changed.as_mut().enable();
            let held = std::mem::take(&mut self.shared.ledger().held);
            if !held.is_empty() {
                break held;
            }
            changed.await;
        };
        let count = held.len();
        for Held { release, done } in held {
            let _ = release.send(());
            let _ = done.await;
        }
        count
    }
}

/// What the handler learnt from one request, owned so that it can move into a task of its own.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    stripe_account: Option<String>,
    stripe_version: Option<String>,
    form: Result<Vec<(String, String)>, String>,
}

/// An answer: status, body, and whether it replays an earlier result.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Value,
    replayed: bool,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body, replayed: false }
    }

    fn error(status: StatusCode, kind: &str, code: Option<&str>, message: impl Into<String>) -> Self {
        let mut error = json!({ "type": kind, "message": message.into() });
        if let Some(code) = code {
            error["code"] = json!(code);
        }
        Self { status, body: json!({ "error": error }), replayed: false }
    }

    fn invalid(code: Option<&str>, message: impl Into<String>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    fn balance_insufficient() -> Self {
        Self::invalid(
            Some("balance_insufficient"),
            "You have insufficient available funds in your Stripe account.",
        )
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
        }
        response
    }
}

/// The one handler: reads the request, then finishes it in a task of its own so that a client
/// that gives up (a timeout) does not cancel a half-done operation, as it would not at Stripe.
async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Reply {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let call = Call {
        method,
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        stripe_account: header("stripe-account"),
        stripe_version: header("stripe-version"),
        form: form.map(|Form(pairs)| pairs).map_err(|rejection| rejection.body_text()),
    };
    tokio::spawn(process(shared, call)).await.unwrap_or_else(|_| {
        Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", None, "the stub failed")
    })
}

/// Which operation a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    CreateTransfer,
    CreateReversal(String),
    CreatePayout,
    RetrieveAccount(String),
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "transfers"]) => Some(Route::CreateTransfer),
        ("POST", ["v1", "transfers", id, "reversals"]) if !id.is_empty() => {
            Some(Route::CreateReversal((*id).to_owned()))
        }
        ("POST", ["v1", "payouts"]) => Some(Route::CreatePayout),
        ("GET", ["v1", "accounts", id]) if !id.is_empty() => Some(Route::RetrieveAccount((*id).to_owned())),
        _ => None,
    }
}

async fn process(shared: Arc<Shared>, call: Call) -> Reply {
    match begin(&shared, call) {
        Begun::Answered(reply) => reply,
        Begun::Held { released, finished, request, key, fingerprint } => {
            shared.held_changed.notify_waiters();
            // A dropped sender (the stub itself gone) also ends the hold.
            let _ = released.await;
            let reply = execute_and_remember(&mut shared.ledger(), &request, key.as_deref(), &fingerprint);
            let _ = finished.send(());
            reply
        }
    }
}

/// How far a request got without waiting.
enum Begun {
    /// It has its answer.
    Answered(Reply),
    /// [`Fault::Timeout`] holds it until released.
    Held {
        released: oneshot::Receiver<()>,
        finished: oneshot::Sender<()>,
        request: Request,
        key: Option<String>,
        fingerprint: String,
    },
}

/// Authenticates, routes, parses, applies faults and idempotency, and runs the request unless a
/// fault holds it.
fn begin(shared: &Shared, call: Call) -> Begun {
    let mut ledger = shared.ledger();
    ledger.received.push(ReceivedRequest {
        method: call.method.to_string(),
        path: call.path.clone(),
        idempotency_key: call.idempotency_key.clone(),
        stripe_account: call.stripe_account.clone(),
        stripe_version: call.stripe_version.clone(),
    });
    let presented = call.authorization.as_deref().and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    if !presented.starts_with("sk_test_") {
        let message = format!("Invalid API Key provided: {presented}");
        return Begun::Answered(Reply::error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            message,
        ));
    }
    let Some(route) = route(&call.method, &call.path) else {
        let message = format!("Unrecognized request URL ({}: {}).", call.method, call.path);
        return Begun::Answered(Reply::error(StatusCode::NOT_FOUND, "invalid_request_error", None, message));
    };
    let key = match (&route, call.idempotency_key.as_deref()) {
        (Route::RetrieveAccount(_), _) => None,
        (_, Some(key)) if !key.is_empty() => Some(key.to_owned()),
        (_, _) => {
            return Begun::Answered(Reply::invalid(
                None,
                "This stand-in requires an Idempotency-Key on every POST.",
            ));
        }
    };
    let params = match (&route, call.form) {
        (Route::RetrieveAccount(_), _) => Params::default(),
        (_, Ok(pairs)) => match Params::parse(pairs) {
            Ok(params) => params,
            Err(reply) => return Begun::Answered(reply),
        },
        (_, Err(rejection)) => {
            return Begun::Answered(Reply::invalid(None, format!("The form body is invalid: {rejection}")));
        }
    };

    if let Some((index, Fault::RateLimited)) = ledger.first_fault(&call.path) {
        ledger.faults.remove(index);
        return Begun::Answered(Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            Some("rate_limit"),
            "Request rate limit exceeded.",
        ));
    }

    let fingerprint =
        format!("{} {} account={:?} {:?}", call.method, call.path, call.stripe_account, params.0);
    if let Some(key) = &key {
        match ledger.idempotency.get(key) {
            Some(Remembered::Done { fingerprint: first, status, body }) if *first == fingerprint => {
                return Begun::Answered(Reply { status: *status, body: body.clone(), replayed: true });
            }
            Some(Remembered::InProgress { fingerprint: first }) if *first == fingerprint => {
                return Begun::Answered(Reply::error(
                    StatusCode::CONFLICT,
                    "idempotency_error",
                    Some("idempotency_key_in_use"),
                    "There is currently another in-progress request using this Idempotency-Key.",
                ));
            }
            Some(_) => {
                return Begun::Answered(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    None,
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters they were \
                         first used with. Try using a key other than '{key}' if you meant to execute a \
                         different request."
                    ),
                ));
            }
            None => {}
        }
    }

    let fault = ledger.first_fault(&call.path).map(|(index, fault)| {
        ledger.faults.remove(index);
        fault
    });
    let request = Request { route, stripe_account: call.stripe_account, params };
    match fault {
        Some(Fault::Timeout) => {
            if let Some(key) = &key {
                let in_progress = Remembered::InProgress { fingerprint: fingerprint.clone() };
                ledger.idempotency.insert(key.clone(), in_progress);
            }
            let (release, released) = oneshot::channel();
            let (finished, done) = oneshot::channel();
            ledger.held.push(Held { release, done });
            Begun::Held { released, finished, request, key, fingerprint }
        }
        Some(Fault::ServerErrorAfterCreate) => {
            execute_and_remember(&mut ledger, &request, key.as_deref(), &fingerprint);
            Begun::Answered(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                None,
                "An unknown error occurred.",
            ))
        }
        Some(Fault::BalanceInsufficient) => {
            let reply = Reply::balance_insufficient();
            remember(&mut ledger, key.as_deref(), &fingerprint, &reply, true);
            Begun::Answered(reply)
        }
        Some(Fault::RateLimited) | None => {
            Begun::Answered(execute_and_remember(&mut ledger, &request, key.as_deref(), &fingerprint))
        }
    }
}

fn execute_and_remember(
    ledger: &mut Ledger,
    request: &Request,
    key: Option<&str>,
    fingerprint: &str,
) -> Reply {
    let (reply, executed) = execute(ledger, request);
    remember(ledger, key, fingerprint, &reply, executed);
    reply
}

/// Stores the result under the key, as Stripe does once an endpoint has started executing; a
/// request refused by validation leaves the key free.
fn remember(ledger: &mut Ledger, key: Option<&str>, fingerprint: &str, reply: &Reply, executed: bool) {
    let Some(key) = key else { return };
    if executed {
        let remembered = Remembered::Done {
            fingerprint: fingerprint.to_owned(),
            status: reply.status,
            body: reply.body.clone(),
        };
        ledger.idempotency.insert(key.to_owned(), remembered);
    } else {
        ledger.idempotency.remove(key);
    }
}

/// A parsed request, ready to run against the ledger.
#[derive(Debug)]
struct Request {
    route: Route,
    stripe_account: Option<String>,
    params: Params,
}

/// Form parameters, each given once.
#[derive(Debug, Default)]
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(pairs: Vec<(String, String)>) -> Result<Self, Reply> {
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if params.contains_key(&name) {
                return Err(Reply::invalid(Some("parameter_invalid"), format!("{name} is given twice.")));
            }
            params.insert(name, value);
        }
        Ok(Self(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Refuses any parameter outside `allowed` and `metadata[…]`, as Stripe does.
    fn only(&self, allowed: &[&str]) -> Result<(), Reply> {
        match self.0.keys().find(|name| !allowed.contains(&name.as_str()) && metadata_key(name).is_none()) {
            Some(name) => {
                Err(Reply::invalid(Some("parameter_unknown"), format!("Received unknown parameter: {name}")))
            }
            None => Ok(()),
        }
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(name, value)| Some((metadata_key(name)?.to_owned(), value.clone())))
            .collect()
    }

    fn amount(&self) -> Result<Option<i64>, Reply> {
        match self.get("amount") {
            None => Ok(None),
            Some(raw) => match raw.parse::<i64>() {
                Ok(amount) if amount > 0 => Ok(Some(amount)),
                _ => {
                    Err(Reply::invalid(Some("parameter_invalid_integer"), format!("Invalid integer: {raw}")))
                }
            },
        }
    }

    fn required_amount(&self) -> Result<i64, Reply> {
        self.amount()?
            .ok_or_else(|| Reply::invalid(Some("parameter_missing"), "Missing required param: amount."))
    }

    fn currency(&self) -> Result<String, Reply> {
        match self.get("currency") {
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()) => Ok(c.to_owned()),
            Some(c) => Err(Reply::invalid(Some("parameter_invalid"), format!("Invalid currency: {c}"))),
            None => Err(Reply::invalid(Some("parameter_missing"), "Missing required param: currency.")),
        }
    }
}

fn metadata_key(name: &str) -> Option<&str> {
    name.strip_prefix("metadata[")?.strip_suffix(']').filter(|key| !key.is_empty())
}

/// Runs a request. The flag says whether the endpoint got as far as executing, which decides
/// whether Stripe would cache the answer under the idempotency key.
fn execute(ledger: &mut Ledger, request: &Request) -> (Reply, bool) {
    let result = match &request.route {
        Route::CreateTransfer => create_transfer(ledger, request),
        Route::CreateReversal(transfer) => create_reversal(ledger, request, transfer),
        Route::CreatePayout => create_payout(ledger, request),
        Route::RetrieveAccount(id) => Ok(retrieve_account(ledger, id)),
    };
    match result {
        Ok(reply) => (reply, true),
        Err(Refusal::Validation(reply)) => (reply, false),
        Err(Refusal::Executed(reply)) => (reply, true),
    }
}

/// Why a request did not create anything: bad parameters (not cached) or a refusal decided while
/// executing (cached).
enum Refusal {
    Validation(Reply),
    Executed(Reply),
}

impl From<Reply> for Refusal {
    fn from(reply: Reply) -> Self {
        Self::Validation(reply)
    }
}

fn create_transfer(ledger: &mut Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    if request.stripe_account.is_some() {
        return Err(Reply::invalid(None, "This stand-in creates transfers from the platform only.").into());
    }
    params.only(&[
        "amount",
        "currency",
        "destination",
        "source_transaction",
        "transfer_group",
        "description",
    ])?;
    let amount = params.required_amount()?;
    let currency = params.currency()?;
    let destination = params
        .get("destination")
        .ok_or_else(|| Reply::invalid(Some("parameter_missing"), "Missing required param: destination."))?
        .to_owned();
    let Some(account) = ledger.accounts.get(&destination) else {
        let message = format!("No such destination: '{destination}'");
        return Err(Refusal::Executed(Reply::invalid(Some("resource_missing"), message)));
    };
    if !account.can_receive_transfers {
        // Stripe's code for a destination whose `transfers` capability is not active.
        return Err(Refusal::Executed(Reply::invalid(
            Some("insufficient_capabilities_for_transfer"),
            "Your destination account needs to have at least one of the following capabilities enabled: \
             transfers, crypto_transfers, legacy_payments",
        )));
    }
    let platform = ledger.platform.get(&currency).copied().unwrap_or(0);
    if platform < amount {
        return Err(Refusal::Executed(Reply::balance_insufficient()));
    }
    ledger.platform.insert(currency.clone(), platform - amount);
    if let Some(account) = ledger.accounts.get_mut(&destination) {
        *account.balances.entry(currency.clone()).or_insert(0) += amount;
    }
    let transfer = StubTransfer {
        id: ledger.next_id("tr"),
        amount,
        currency,
        destination,
        source_transaction: params.get("source_transaction").map(str::to_owned),
        transfer_group: params.get("transfer_group").map(str::to_owned),
        metadata: params.metadata(),
        amount_reversed: 0,
    };
    let body = json!({
        "id": transfer.id, "object": "transfer", "amount": transfer.amount, "amount_reversed": 0,
        "currency": transfer.currency, "destination": transfer.destination,
        "source_transaction": transfer.source_transaction, "transfer_group": transfer.transfer_group,
        "metadata": transfer.metadata, "reversed": false, "livemode": false,
    });
    ledger.transfers.push(transfer);
    Ok(Reply::ok(body))
}

fn create_reversal(ledger: &mut Ledger, request: &Request, transfer_id: &str) -> Result<Reply, Refusal> {
    let params = &request.params;
    if request.stripe_account.is_some() {
        return Err(Reply::invalid(None, "This stand-in reverses transfers from the platform only.").into());
    }
    params.only(&["amount", "description"])?;
    let requested = params.amount()?;
    let Some(index) = ledger.transfers.iter().position(|t| t.id == transfer_id) else {
        let missing = Reply::error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such transfer: '{transfer_id}'"),
        );
        return Err(Refusal::Executed(missing));
    };
    let transfer = &mut ledger.transfers[index];
    let unreversed = transfer.amount - transfer.amount_reversed;
    let amount = requested.unwrap_or(unreversed);
    if amount <= 0 || amount > unreversed {
        let message = format!(
            "Reversal amount ({amount}) is greater than the unreversed amount ({unreversed}) on the transfer."
        );
        return Err(Refusal::Executed(Reply::invalid(None, message)));
    }
    transfer.amount_reversed += amount;
    let (currency, destination, amount_reversed) =
        (transfer.currency.clone(), transfer.destination.clone(), transfer.amount_reversed);
    *ledger.platform.entry(currency.clone()).or_insert(0) += amount;
    if let Some(account) = ledger.accounts.get_mut(&destination) {
        *account.balances.entry(currency.clone()).or_insert(0) -= amount;
    }
    let reversal = StubReversal {
        id: ledger.next_id("trr"),
        transfer: transfer_id.to_owned(),
        amount,
        currency,
        destination,
        metadata: params.metadata(),
    };
    let body = json!({
        "id": reversal.id, "object": "transfer_reversal", "amount": reversal.amount,
        "currency": reversal.currency, "transfer": reversal.transfer, "metadata": reversal.metadata,
        "transfer_amount_reversed": amount_reversed,
    });
    ledger.reversals.push(reversal);
    Ok(Reply::ok(body))
}

fn create_payout(ledger: &mut Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    let Some(account_id) = request.stripe_account.clone() else {
        return Err(Reply::invalid(
            None,
            "This stand-in makes payouts as a connected account (Stripe-Account).",
        )
        .into());
    };
    params.only(&["amount", "currency", "description"])?;
    let amount = params.required_amount()?;
    let currency = params.currency()?;
    let Some(account) = ledger.accounts.get_mut(&account_id) else {
        let message = format!("The account '{account_id}' in the Stripe-Account header does not exist.");
        return Err(Refusal::Executed(Reply::invalid(Some("account_invalid"), message)));
    };
    if !account.payouts_enabled {
        let message = "Payouts have been disabled on the connected account.";
        return Err(Refusal::Executed(Reply::invalid(Some("payouts_not_allowed"), message)));
    }
    let balance = account.balances.entry(currency.clone()).or_insert(0);
    if *balance < amount {
        return Err(Refusal::Executed(Reply::balance_insufficient()));
    }
    *balance -= amount;
    let payout = StubPayout {
        id: ledger.next_id("po"),
        account: account_id,
        amount,
        currency,
        metadata: params.metadata(),
    };
    let body = json!({
        "id": payout.id, "object": "payout", "amount": payout.amount, "currency": payout.currency,
        "status": "pending", "metadata": payout.metadata, "livemode": false,
    });
    ledger.payouts.push(payout);
    Ok(Reply::ok(body))
}

fn retrieve_account(ledger: &Ledger, id: &str) -> Reply {
    match ledger.accounts.get(id) {
        Some(account) => Reply::ok(json!({
            "id": id, "object": "account",
            "capabilities": { "transfers": if account.can_receive_transfers { "active" } else { "inactive" } },
            "payouts_enabled": account.payouts_enabled,
            "charges_enabled": account.can_receive_transfers,
        })),
        None => Reply::error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such account: '{id}'"),
        ),
    }
}
