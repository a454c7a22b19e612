//! A stand-in for the Stripe API on loopback, for tests: transfers, transfer reversals, payouts and
//! account retrieval, the list endpoints that settle an ambiguous outcome, Stripe's idempotency-key
//! semantics, balances, a clock, a ledger of what was created, and faults it can be told to inject.
//! It also onboards: connected accounts created with controller properties (`POST /v1/accounts`,
//! listed by `GET /v1/accounts`), Account Links, Account Sessions and Express login links.
//!
//! As at Stripe (v1), the status and body of the first request under an idempotency key are saved
//! once the endpoint has begun executing, 500s included, and a retry under the same key replays
//! them with `idempotent-replayed: true`, whether or not the object was created. A key is pruned
//! once it is 24 hours old by the stub's clock ([`StripeStub::advance`]), and a request under a
//! pruned key executes anew. Every created object's `created` is the stub's clock.
//!
//! Lists (`GET /v1/transfers`, `GET /v1/transfers/{id}/reversals`, `GET /v1/payouts`,
//! `GET /v1/accounts`) are Stripe-shaped: `{"object": "list", "data", "has_more", "url"}`, newest
//! first, `limit` 1 to 100 (default 10), `starting_after` by id, and `created[gt|gte|lt|lte]` (or
//! `created=`) where Stripe has it (transfers, payouts, accounts). Their parameters are read from
//! the query string.
//!
//! Onboarding follows Stripe's API reference (2024-06-20): a created account has each requested
//! capability `inactive`, `details_submitted`, `charges_enabled` and `payouts_enabled` false and
//! requirements currently due, until [`StripeStub::add_account`] enables it; the controller's
//! defaults are Stripe's (`full` dashboard, fees paid by the `account`, losses on `stripe`,
//! requirements collected by `stripe`) and the country defaults to the platform's (`US`). An
//! `account_update` link is refused unless the platform collects requirements and the account has
//! no Stripe-hosted dashboard, with the message Stripe answered such a request with; a login link
//! is refused for any dashboard but `express`, with Stripe's "Cannot create an edit link for the
//! account …, which is not an Express account." (no `code`, as at Stripe).
//!
//! [`StripeStub::revoke_account_access`] makes the stub answer as Stripe does once a platform has
//! lost access to a connected account: 403, `invalid_request_error`, code `account_invalid`, "The
//! provided key '…' does not have access to account 'acct_…' (or that account does not exist).
//! Application access may have been revoked."; a key that is not `sk_test_…` still gets 401.
//!
//! It also serves what the thin-event fetch worker reads. [`StripeStub::put_v2_account`] stores a
//! raw Accounts v2 object that `GET /v2/core/accounts/{id}` then answers with, each property that
//! depends on `include[]` `null` unless asked for; [`StripeStub::put_object`] stores a v1 object
//! that `GET {path}` answers with, to the account that owns it only (any other gets 404
//! `resource_missing`, as at Stripe); [`StripeStub::put_thin_event`] stores a `v2.core.event` for
//! `GET /v2/core/events/{id}`, served only in its own `context`; [`StripeStub::delete_account`]
//! makes an account's retrieval 404. `Stripe-Context` supersedes `Stripe-Account`, as Stripe's
//! documentation puts it: a stored v1 object is served to the account `Stripe-Context` names when
//! the header is sent, else to the one `Stripe-Account` names. On every GET a `Stripe-Context` must
//! name an account the stub knows that is neither revoked nor deleted, and a `Stripe-Account` one
//! that is not deleted, or the answer is the 403 above. Transfers and payouts the stub created are
//! retrievable too (`GET /v1/transfers/{id}`, `GET /v1/payouts/{id}` with the paying account's
//! `Stripe-Account`), unless a stored object or [`StripeStub::remove_object`] overrides them.
//!
//! Deliberate differences from Stripe: a POST without `Idempotency-Key` is refused (this client must
//! always send one); a key is compared with the `Stripe-Account` it was first used with, so reusing
//! it on another account is an `idempotency_error`; every transfer draws on the platform balance,
//! `source_transaction` or not; a reversal may take a connected balance below zero; a 401 repeats
//! the rejected key unmasked, so that tests prove the client scrubs it; a `Stripe-Account` naming an
//! account the stub never heard of gets 400 `account_invalid` rather than the 403; access checks run
//! before the idempotency layer, so a 403 is never saved under a key; lists do not take
//! `ending_before`, and the platform's own payouts list is always empty; objects carry only the
//! fields this project reads; the clock only moves when a test moves it. `GET /v1/accounts` lists
//! only the accounts created through `POST /v1/accounts`; an account only added by
//! [`StripeStub::add_account`] onboards as if its dashboard were `express` and Stripe collected its
//! requirements. An account's `type` is derived from its controller (`express` dashboard →
//! `express`, `full` → `standard`, `none` with the platform collecting → `custom`, else `none`):
//! Stripe's reference lists those values but not that rule. A retrieve of a stored object or a
//! thin event takes no parameters (`expand[]` is refused as unknown); a GET of a path shaped like
//! no retrieve is 404 without a code; `GET /v1/balance` answers only what
//! [`StripeStub::put_object`] stored. A deleted account stays deleted: [`StripeStub::add_account`]
//! does not bring it back.
//!
//! Accounts v2 creates too: `POST /v2/core/accounts` takes a JSON body (a form-encoded one is
//! refused, as a JSON body is on `/v1`) with the fields `POST /accounts` sends (`identity.country`,
//! `contact_email`, `dashboard`, `defaults.responsibilities.{fees_collector,losses_collector}`,
//! `configuration.{merchant,recipient}.capabilities.*.requested`, `metadata`, `include`), required
//! `contact_email` once a merchant or recipient configuration is asked for, and refuses any other
//! field as unknown (`requirements_collector` included: create does not take it at
//! 2026-01-28.clover). The account it makes is kept as [`StripeStub::put_v2_account`] keeps one,
//! so `GET /v2/core/accounts/{id}` serves it; each requested capability is `restricted`
//! (`requirements_past_due`) and requirements are currently due from the user, until a test puts
//! another object. `GET /v2/core/accounts` lists the accounts made that way, newest first, not
//! closed unless `closed=true`, `limit` 1 to 100 (default 10, the stand-in's choice: Stripe
//! documents none), paged by `next_page_url` (`previous_page_url` is always `null`), each item
//! without its include-dependent properties. Idempotency under API v2 is Stripe's v2 kind, not
//! v1's: a key whose request created the account returns the account as it is now, with
//! `idempotent-replayed: true`; a key whose request failed (a 500 included) runs the request again;
//! the same key with another body is an `idempotency_error`; keys live
//! [`V2_IDEMPOTENCY_KEY_TTL_SECS`]. A request still running under its key gets 409
//! `idempotency_key_in_use`, as on v1 (Stripe documents nothing else for v2). Both refuse a request
//! without `Stripe-Version`, which every `/v2` request must carry.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, FromRequest, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};
use shared::stripe::client::{ApiKey, StripeClientConfig};
use tokio::sync::{Notify, oneshot};

mod events;
use events::StubEvent;
#[path = "stripe_stub_endpoints.rs"]
mod endpoints;

/// A secret key the stub accepts (it accepts any `sk_test_…`).
pub const STUB_API_KEY: &str = "sk_test_connect_flow_stub";

/// The stub's clock when it starts, in unix seconds (2025-06-15T15:06:40Z).
pub const STUB_START_TIME: i64 = 1_750_000_000;

/// How long an idempotency key is remembered: a key at least this old (by the stub's clock) is
/// pruned, as Stripe may prune keys that are at least 24 hours old.
pub const IDEMPOTENCY_KEY_TTL_SECS: i64 = 24 * 60 * 60;

/// How long an API v2 idempotency key is remembered: Stripe treats requests under one key as one
/// request for 30 days.
pub const V2_IDEMPOTENCY_KEY_TTL_SECS: i64 = 30 * 24 * 60 * 60;

/// The largest JSON body the stand-in reads.
const MAX_JSON_BODY: usize = 1024 * 1024;

/// A one-shot failure for the next request with the fault's method on a path starting with its
/// prefix that would execute; a request that replays a remembered result is answered from memory
/// and leaves the fault queued. [`StripeStub::inject`] aims a fault at POSTs (creates) only and
/// [`StripeStub::inject_get`] at GETs (retrievals and lists) only, so that a fault meant for a
/// create never fires on the lookup that settles its outcome, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Executes the request (creates the object), then answers 500 and saves that 500 under the
    /// idempotency key, as Stripe does: a retry under the same key replays the 500 until the key
    /// is pruned, and only a lookup (a list) shows that the object exists. A request refused by
    /// validation gets the 500 too, but leaves the key free. On API v2 the key keeps the object
    /// instead, as Stripe's v2 does: a retry under it returns the object.
    ServerErrorAfterCreate,
    /// Answers 500 without creating anything, and saves that 500 under the idempotency key: a
    /// retry under the same key replays it. On API v2 a retry under the key runs the request.
    ServerErrorBeforeCreate,
    /// Answers 429 (with `Retry-After: 1`) before doing anything; consumed even by a request that
    /// would replay.
    RateLimited,
    /// Answers 429 `rate_limit` with `Retry-After` set to this many seconds (0 included) before
    /// doing anything, like [`Fault::RateLimited`].
    RateLimitedFor(u32),
    /// Holds the request until [`StripeStub::release_held`], then completes it and saves its real
    /// result under the key: the client has long given up by then. A retry under the same key
    /// meanwhile gets 409 `idempotency_key_in_use`.
    Timeout,
    /// Answers 400 `balance_insufficient` without creating anything, and caches that answer under
    /// the key as Stripe does (on API v2, a retry under the key runs the request again).
    BalanceInsufficient,
    /// Refuses the next `POST /v1/payouts` with `method=instant` as Stripe refuses an Instant
    /// Payout the external account cannot take: 400 `instant_payouts_unsupported` (param
    /// `method`), cached under the key, nothing created. A standard payout neither triggers nor
    /// consumes it.
    InstantPayoutsUnsupported,
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
    /// The stub's clock when it was created (unix seconds).
    pub created: i64,
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
    /// The stub's clock when it was created (unix seconds).
    pub created: i64,
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
    /// The stub's clock when it was created (unix seconds).
    pub created: i64,
    /// Always `pending`: the stub never settles a payout.
    pub status: String,
    /// `method` as sent (`standard` or `instant`), if it was.
    pub method: Option<String>,
    /// `source_type` as sent (`card`, `bank_account`, `fpx`), if it was.
    pub source_type: Option<String>,
}

/// A connected account the stub created through `POST /v1/accounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubCreatedAccount {
    /// `acct_…`.
    pub id: String,
    /// ISO country code.
    pub country: String,
    /// The email given, if any.
    pub email: Option<String>,
    /// `controller.stripe_dashboard.type`: `express`, `full` or `none`.
    pub dashboard: String,
    /// `controller.fees.payer`: `account` or `application`.
    pub fees_payer: String,
    /// `controller.losses.payments`: `application` or `stripe`.
    pub losses_payments: String,
    /// `controller.requirement_collection`: `application` or `stripe`.
    pub requirement_collection: String,
    /// The capabilities requested, in name order.
    pub capabilities: Vec<String>,
    /// `metadata[…]` as sent.
    pub metadata: BTreeMap<String, String>,
    /// The stub's clock when it was created (unix seconds).
    pub created: i64,
}

/// A connected account the stub created through `POST /v2/core/accounts`.
#[derive(Debug, Clone, PartialEq)]
pub struct StubCreatedV2Account {
    /// `acct_…`.
    pub id: String,
    /// The JSON body of the request that created it, as sent.
    pub body: Value,
    /// The stub's clock when it was created (unix seconds).
    pub created: i64,
}

/// An Account Link the stub handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubAccountLink {
    /// The account it onboards.
    pub account: String,
    /// `account_onboarding` or `account_update`.
    pub link_type: String,
    /// `return_url` as sent.
    pub return_url: String,
    /// `refresh_url` as sent.
    pub refresh_url: String,
    /// `collection_options[fields]`, if sent.
    pub collect: Option<String>,
    /// The link's URL.
    pub url: String,
    /// Unix seconds: five minutes after it was created.
    pub expires_at: i64,
}

/// An Account Session the stub handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct StubAccountSession {
    /// The account it grants access to.
    pub account: String,
    /// The client secret.
    pub client_secret: String,
    /// `components[…]` as sent, rebuilt into JSON.
    pub components: Value,
    /// Unix seconds: thirty minutes after it was created.
    pub expires_at: i64,
}

/// An Express Dashboard login link the stub handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubLoginLink {
    /// The account it logs into.
    pub account: String,
    /// The link's URL.
    pub url: String,
}

/// One request as the stub received it (headers of interest only; never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The raw query string, if any (a list's parameters).
    pub query: Option<String>,
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The `Stripe-Account` header.
    pub stripe_account: Option<String>,
    /// The `Stripe-Version` header.
    pub stripe_version: Option<String>,
    /// The `Stripe-Context` header (API v2).
    pub stripe_context: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The form body's pairs in the order sent (empty for a GET, or a body that is not a form).
    pub form: Vec<(String, String)>,
    /// A JSON body (API v2), as sent; `None` for a form, a GET, or a body that is not JSON.
    pub json: Option<Value>,
}

#[derive(Debug, Default)]
struct StubAccount {
    can_receive_transfers: bool,
    payouts_enabled: bool,
    balances: BTreeMap<String, i64>,
}

#[derive(Debug)]
enum Outcome {
    InProgress,
    Done { status: StatusCode, body: Value },
}

/// What an idempotency key holds: the request it was first used with, since when, and its result.
#[derive(Debug)]
struct Remembered {
    fingerprint: String,
    first_used: i64,
    outcome: Outcome,
}

/// What an API v2 idempotency key holds: its request, since when, and what that request did.
#[derive(Debug)]
struct RememberedV2 {
    fingerprint: String,
    first_used: i64,
    state: V2KeyState,
}

#[derive(Debug)]
enum V2KeyState {
    InProgress,
    /// It failed, a 500 included: the same request runs again.
    Failed,
    /// It created this account: the same request returns it.
    Created(String),
}

#[derive(Debug)]
struct Held {
    release: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

/// A queued fault and the method it is aimed at.
#[derive(Debug)]
struct Injected {
    method: Method,
    path_prefix: String,
    fault: Fault,
}

/// Requests a second past which the stub answers 429, and the current one-second window.
#[derive(Debug)]
struct RateLimit {
    per_second: usize,
    window_start: std::time::Instant,
    in_window: usize,
}

#[derive(Debug, Default)]
struct Ledger {
    now: i64,
    platform: BTreeMap<String, i64>,
    accounts: BTreeMap<String, StubAccount>,
    revoked: BTreeSet<String>,
    /// Accounts [`StripeStub::delete_account`] deleted.
    deleted: BTreeSet<String>,
    /// Accounts known only from stored objects and thin events: a `Stripe-Context` may name them.
    context_accounts: BTreeSet<String>,
    /// Raw v2 accounts by id, served instead of the synthesised ones.
    v2_accounts: BTreeMap<String, Value>,
    /// v1 objects by path, then by owning account (`None`: the platform). A path with no owner
    /// left was removed: it answers 404 even where the stub would synthesise an object.
    objects: BTreeMap<String, BTreeMap<Option<String>, Value>>,
    /// Thin events by id.
    thin_events: BTreeMap<String, Value>,
    /// Webhook endpoints and event destinations, for the doctor.
    endpoints: endpoints::Endpoints,
    /// Events [`StripeStub::emit_event`] emitted, oldest first.
    events: Vec<StubEvent>,
    /// Thin events [`StripeStub::emit_thin_event`] emitted, oldest first, as listed.
    v2_events: Vec<Value>,
    /// [`StripeStub::set_rate_limit`]'s limit, and the window it counts in.
    rate_limit: Option<RateLimit>,
    /// Requests answered 429 by the rate limit.
    rate_limited: usize,
    /// Path prefixes the key has no permission for ([`StripeStub::deny_permission`]).
    denied: Vec<String>,
    transfers: Vec<StubTransfer>,
    reversals: Vec<StubReversal>,
    payouts: Vec<StubPayout>,
    created_accounts: Vec<StubCreatedAccount>,
    created_v2_accounts: Vec<StubCreatedV2Account>,
    account_links: Vec<StubAccountLink>,
    account_sessions: Vec<StubAccountSession>,
    login_links: Vec<StubLoginLink>,
    idempotency: HashMap<String, Remembered>,
    v2_idempotency: HashMap<String, RememberedV2>,
    faults: VecDeque<Injected>,
    received: Vec<ReceivedRequest>,
    held: Vec<Held>,
    next_id: u64,
}

impl Ledger {
    fn next_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_stub{:010}", self.next_id)
    }

    fn first_fault(&self, method: &Method, path: &str) -> Option<(usize, Fault)> {
        self.faults
            .iter()
            .position(|f| f.method == method && path.starts_with(f.path_prefix.as_str()))
            .map(|i| (i, self.faults[i].fault))
    }

    fn take_fault(&mut self, method: &Method, path: &str) -> Option<Fault> {
        let (index, fault) = self.first_fault(method, path)?;
        self.faults.remove(index);
        Some(fault)
    }

    /// Whether a `Stripe-Context` may name `id`: an account added, created, put as a v2 account,
    /// owning a stored object, or named as a thin event's context.
    fn knows(&self, id: &str) -> bool {
        self.accounts.contains_key(id) || self.context_accounts.contains(id)
    }

    /// Forgets `key` if it is at least [`IDEMPOTENCY_KEY_TTL_SECS`] old. Only the key a request
    /// names is looked at: an expired key that nobody sends again makes no difference.
    fn prune_key(&mut self, key: &str) {
        let now = self.now;
        if self
            .idempotency
            .get(key)
            .is_some_and(|remembered| now - remembered.first_used >= IDEMPOTENCY_KEY_TTL_SECS)
        {
            self.idempotency.remove(key);
        }
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
    /// Starts the stub on a free loopback port, with no accounts and no balances, its clock at
    /// [`STUB_START_TIME`].
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        shared.ledger().now = STUB_START_TIME;
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

    /// The stub's clock, in unix seconds: every created object's `created`, and what idempotency
    /// keys age by.
    pub fn now(&self) -> i64 {
        self.shared.ledger().now
    }

    /// Sets the stub's clock (unix seconds). It may go backwards; keys then age from the new time.
    pub fn set_now(&self, unix: i64) {
        self.shared.ledger().now = unix;
    }

    /// Moves the stub's clock forward by `secs` (backwards if negative).
    pub fn advance(&self, secs: i64) {
        self.shared.ledger().now += secs;
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

    /// Makes `id` one of the platform's connected accounts as `GET /v1/accounts` lists them,
    /// created at `created` (a Custom account with `transfers` requested), as if the platform had
    /// created it some other way than through this stub.
    pub fn add_listed_account(&self, id: &str, created: i64) {
        let mut ledger = self.shared.ledger();
        ledger.accounts.entry(id.to_owned()).or_default();
        ledger.created_accounts.push(StubCreatedAccount {
            id: id.to_owned(),
            country: "US".to_owned(),
            email: None,
            dashboard: "none".to_owned(),
            fees_payer: "application".to_owned(),
            losses_payments: "application".to_owned(),
            requirement_collection: "application".to_owned(),
            capabilities: vec!["transfers".to_owned()],
            metadata: BTreeMap::new(),
            created,
        });
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

    /// The platform loses access to connected account `id` (its owner revoked the application, or
    /// it was disconnected): from now on any request with `Stripe-Account: id`, any transfer to it
    /// and `GET /v1/accounts/id` get Stripe's 403 `account_invalid`, and nothing is saved under
    /// their idempotency keys.
    pub fn revoke_account_access(&self, id: &str) {
        self.shared.ledger().revoked.insert(id.to_owned());
    }

    /// Undoes [`Self::revoke_account_access`].
    pub fn restore_account_access(&self, id: &str) {
        self.shared.ledger().revoked.remove(id);
    }

    /// Deletes connected account `id`: from now on `GET /v1/accounts/id`, `GET /v2/core/accounts/id`
    /// and retrievals under `/v1/accounts/id/` answer 404 `resource_missing` ("No such account"),
    /// a GET with `Stripe-Context` or `Stripe-Account` naming it gets the 403 of a lost account, it
    /// is no transfer destination, pays out nothing and is left out of `GET /v1/accounts`. It stays
    /// deleted: nothing brings it back.
    pub fn delete_account(&self, id: &str) {
        let mut ledger = self.shared.ledger();
        ledger.deleted.insert(id.to_owned());
        ledger.accounts.remove(id);
    }

    /// Stores `account`, a raw v2 account as `GET /v2/core/accounts/{id}` returns it with every
    /// include, to be served for `id` instead of the one the stub synthesises from
    /// [`Self::add_account`]; a second call replaces it. Each property that depends on an include
    /// (`configuration.merchant`, `configuration.recipient`, `configuration.customer` inside
    /// `configuration`, and `requirements`, `future_requirements`, `identity`, `defaults`) comes back
    /// `null` unless that include was asked for. A `Stripe-Context` may name `id` from now on; it
    /// does not make `id` a transfer destination.
    pub fn put_v2_account(&self, id: &str, account: Value) {
        let mut ledger = self.shared.ledger();
        ledger.context_accounts.insert(id.to_owned());
        ledger.v2_accounts.insert(id.to_owned(), account);
    }

    /// Stores `object`, a v1 object as Stripe returns it, to be served by `GET {path}` (`path`
    /// starts with `/v1/`, e.g. `/v1/payouts/po_1` or `/v1/accounts/acct_1/persons/person_1`) to
    /// the account that owns it: `owner` is the connected account whose `Stripe-Account` (or
    /// `Stripe-Context`) the GET must carry, `None` a platform object retrieved without either. Any
    /// other GET of `path` answers 404 `resource_missing`, as Stripe does. Objects are kept by owner
    /// and path (`/v1/balance` differs per account): a second call for the same pair replaces the
    /// object, as when it changed between two fetches. An object at `/v1/accounts/{id}` overrides
    /// the v1 account the stub synthesises for `id`. A `Stripe-Context` may name `owner`, and the
    /// account of a `/v1/accounts/{id}` path, from now on.
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/v1/`.
    pub fn put_object(&self, owner: Option<&str>, path: &str, object: Value) {
        assert!(path.starts_with("/v1/"), "put_object serves v1 paths only, not {path:?}");
        let mut ledger = self.shared.ledger();
        let accounts = [owner, account_in_path(path)];
        ledger.context_accounts.extend(accounts.into_iter().flatten().map(str::to_owned));
        ledger.objects.entry(path.to_owned()).or_default().insert(owner.map(str::to_owned), object);
    }

    /// Removes every object stored at `path` by [`Self::put_object`], for every owner: a later
    /// `GET {path}` answers 404 `resource_missing`, even where the stub would otherwise synthesise
    /// the object (an account, a transfer or a payout it knows), until `path` is put again.
    pub fn remove_object(&self, path: &str) {
        self.shared.ledger().objects.insert(path.to_owned(), BTreeMap::new());
    }

    /// Stores a thin event (`"object": "v2.core.event"`) to be served, as stored, by
    /// `GET /v2/core/events/{its id}`; a second call with the same id replaces it. When its
    /// `context` is a string, the GET must carry `Stripe-Context` equal to it, and without one it
    /// must carry none; otherwise it answers 404 `resource_missing`, as for an unknown id. A
    /// `Stripe-Context` may name the event's context from now on.
    ///
    /// # Panics
    ///
    /// If `event` has no string `id`.
    pub fn put_thin_event(&self, event: Value) {
        let id = event.get("id").and_then(Value::as_str).expect("a thin event has a string id").to_owned();
        let mut ledger = self.shared.ledger();
        if let Some(context) = event.get("context").and_then(Value::as_str) {
            ledger.context_accounts.insert(context.to_owned());
        }
        ledger.thin_events.insert(id, event);
    }

    /// Emits a snapshot event: `GET /v1/events` lists it from now on, under `Stripe-Account` when
    /// it has an `account`, and `delivery_success` filters on `delivered` (whether the test
    /// delivered it). Emit in `created` order: lists are held oldest first, as emitted.
    ///
    /// # Panics
    ///
    /// If `event` has no string `id`.
    pub fn emit_event(&self, event: Value, delivered: bool) {
        let event = StubEvent::of(event, delivered).expect("an event has a string id");
        self.shared.ledger().events.push(event);
    }

    /// Emits an event that happened on connected account `account` but whose body names none (or
    /// another), as a connected account's own object might: listed under `Stripe-Account: account`
    /// only, with its body as given.
    pub fn emit_event_on(&self, account: &str, event: Value) {
        let mut event = StubEvent::of(event, false).expect("an event has a string id");
        event.account = Some(account.to_owned());
        self.shared.ledger().events.push(event);
    }

    /// Emits a thin event: stored as by [`Self::put_thin_event`], and listed by
    /// `GET /v2/core/events` (its `created`, a Unix time or RFC 3339, listed as RFC 3339).
    pub fn emit_thin_event(&self, event: Value) {
        self.put_thin_event(event.clone());
        self.shared.ledger().v2_events.push(events::listed_thin_event(event));
    }

    /// Answers 429 with `Retry-After: 1` to every request past `per_second` in any one-second
    /// window, as Stripe's rate limiter does under load; `None` lifts the limit.
    pub fn set_rate_limit(&self, per_second: Option<usize>) {
        self.shared.ledger().rate_limit = per_second.map(|per_second| RateLimit {
            per_second,
            window_start: std::time::Instant::now(),
            in_window: 0,
        });
    }

    /// How many requests the rate limit answered 429.
    pub fn rate_limited_count(&self) -> usize {
        self.shared.ledger().rate_limited
    }

    /// Makes the key lack the permission for every request whose path starts with `path_prefix`:
    /// 403 with Stripe's restricted-key refusal, before anything runs.
    pub fn deny_permission(&self, path_prefix: &str) {
        self.shared.ledger().denied.push(path_prefix.to_owned());
    }

    /// Every transfer created, in order.
    pub fn transfers(&self) -> Vec<StubTransfer> {
        self.shared.ledger().transfers.clone()
    }

    /// Records a transfer Stripe made itself, as for a destination charge (`transfer_data`): the
    /// platform's balance pays it and the seller's grows, as if `POST /v1/transfers` had.
    pub fn add_destination_transfer(
        &self,
        id: &str,
        destination: &str,
        amount: i64,
        currency: &str,
        charge: &str,
    ) {
        let mut ledger = self.shared.ledger();
        let created = ledger.now;
        if let Some(account) = ledger.accounts.get_mut(destination) {
            *account.balances.entry(currency.to_owned()).or_insert(0) += amount;
        }
        ledger.transfers.push(StubTransfer {
            id: id.to_owned(),
            amount,
            currency: currency.to_owned(),
            destination: destination.to_owned(),
            source_transaction: Some(charge.to_owned()),
            transfer_group: None,
            metadata: BTreeMap::new(),
            amount_reversed: 0,
            created,
        });
    }

    /// Reverses `amount` of a transfer as Stripe does itself for a refund made with
    /// `reverse_transfer`, with no metadata of Connect Flow's.
    pub fn reverse_as_stripe(&self, transfer_id: &str, amount: i64) {
        let mut ledger = self.shared.ledger();
        let created = ledger.now;
        let Some(transfer) = ledger.transfers.iter_mut().find(|transfer| transfer.id == transfer_id) else {
            panic!("no transfer {transfer_id} to reverse");
        };
        transfer.amount_reversed += amount;
        let (currency, destination) = (transfer.currency.clone(), transfer.destination.clone());
        let id = ledger.next_id("trr");
        ledger.reversals.push(StubReversal {
            id,
            transfer: transfer_id.to_owned(),
            amount,
            currency,
            destination,
            metadata: BTreeMap::new(),
            created,
        });
    }

    /// What `account` holds of the platform's money: its transfers less their reversals.
    pub fn net_transferred_to(&self, account: &str) -> i64 {
        let ledger = self.shared.ledger();
        let sent: i64 = ledger.transfers.iter().filter(|t| t.destination == account).map(|t| t.amount).sum();
        let back: i64 = ledger.reversals.iter().filter(|r| r.destination == account).map(|r| r.amount).sum();
        sent - back
    }

    /// Every transfer reversal created, in order.
    pub fn reversals(&self) -> Vec<StubReversal> {
        self.shared.ledger().reversals.clone()
    }

    /// Every payout created, in order.
    pub fn payouts(&self) -> Vec<StubPayout> {
        self.shared.ledger().payouts.clone()
    }

    /// Every connected account created through `POST /v1/accounts`, in order.
    pub fn created_accounts(&self) -> Vec<StubCreatedAccount> {
        self.shared.ledger().created_accounts.clone()
    }

    /// Every connected account created through `POST /v2/core/accounts`, in order.
    pub fn created_v2_accounts(&self) -> Vec<StubCreatedV2Account> {
        self.shared.ledger().created_v2_accounts.clone()
    }

    /// Every Account Link handed out, in order.
    pub fn account_links(&self) -> Vec<StubAccountLink> {
        self.shared.ledger().account_links.clone()
    }

    /// Every Account Session handed out, in order.
    pub fn account_sessions(&self) -> Vec<StubAccountSession> {
        self.shared.ledger().account_sessions.clone()
    }

    /// Every login link handed out, in order.
    pub fn login_links(&self) -> Vec<StubLoginLink> {
        self.shared.ledger().login_links.clone()
    }

    /// Queues a one-shot fault for the next POST (a create) on a path starting with `path_prefix`
    /// that would execute. GETs never consume it.
    pub fn inject(&self, path_prefix: &str, fault: Fault) {
        self.queue_fault(Method::POST, path_prefix, fault);
    }

    /// Queues a one-shot fault for the next GET (a retrieval or a list) on a path starting with
    /// `path_prefix`. POSTs never consume it. On a GET, [`Fault::ServerErrorAfterCreate`] runs the
    /// lookup and answers 500, [`Fault::ServerErrorBeforeCreate`] answers 500 without running it,
    /// and [`Fault::Timeout`] holds it; nothing is saved, since a GET has no idempotency key.
    pub fn inject_get(&self, path_prefix: &str, fault: Fault) {
        self.queue_fault(Method::GET, path_prefix, fault);
    }

    fn queue_fault(&self, method: Method, path_prefix: &str, fault: Fault) {
        let injected = Injected { method, path_prefix: path_prefix.to_owned(), fault };
        self.shared.ledger().faults.push_back(injected);
    }

    /// Drops every injected fault that has not fired yet: Stripe healed.
    pub fn clear_faults(&self) {
        self.shared.ledger().faults.clear();
    }

    /// How many injected faults have not fired yet.
    pub fn pending_faults(&self) -> usize {
        self.shared.ledger().faults.len()
    }

    /// How many requests arrived per path, rejected ones and GETs included.
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
    query: Option<String>,
    authorization: Option<String>,
    idempotency_key: Option<String>,
    stripe_account: Option<String>,
    stripe_version: Option<String>,
    stripe_context: Option<String>,
    content_type: Option<String>,
    /// The parameters: the query string of a GET, the form body of anything else (none for a
    /// JSON body).
    params: Result<Vec<(String, String)>, String>,
    /// A JSON body (`Content-Type: application/json`), read or refused.
    json: Option<Result<Value, String>>,
}

/// An answer: status, body, whether it replays an earlier result, and a 429's `Retry-After`.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: Value,
    replayed: bool,
    /// Seconds for a 429's `Retry-After`; 1 when not set.
    retry_after: Option<u32>,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body, replayed: false, retry_after: None }
    }

    fn error(status: StatusCode, kind: &str, code: Option<&str>, message: impl Into<String>) -> Self {
        let mut error = json!({ "type": kind, "message": message.into() });
        if let Some(code) = code {
            error["code"] = json!(code);
        }
        Self { status, body: json!({ "error": error }), replayed: false, retry_after: None }
    }

    /// Stripe's 429, asking the client to wait `retry_after` seconds.
    /// 403 for a restricted key without the endpoint's permission, in Stripe's words.
    fn permission_denied(presented_key: &str) -> Self {
        let message = format!(
            "The provided key '{}' does not have the required permissions for this endpoint on account 'acct_stub_platform'. Having the 'rak_event_read' permission would allow this request to continue.",
            masked(presented_key)
        );
        Self::error(StatusCode::FORBIDDEN, "invalid_request_error", None, message)
    }

    fn rate_limited(retry_after: u32) -> Self {
        let mut reply = Self::error(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            Some("rate_limit"),
            "Request rate limit exceeded.",
        );
        reply.retry_after = Some(retry_after);
        reply
    }

    /// 404 `resource_missing` for a retrieval, "No such {noun}: '{id}'".
    fn no_such(noun: &str, id: &str) -> Self {
        Self::error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such {noun}: '{id}'"),
        )
    }

    /// A path the stub serves nothing at, as Stripe answers it: 404 without a code.
    fn unrecognized(method: &Method, path: &str) -> Self {
        let message = format!("Unrecognized request URL ({method}: {path}).");
        Self::error(StatusCode::NOT_FOUND, "invalid_request_error", None, message)
    }

    fn invalid(code: Option<&str>, message: impl Into<String>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    /// A refusal that names the parameter at fault, as Stripe's `error.param` does.
    fn invalid_param(code: Option<&str>, param: &str, message: impl Into<String>) -> Self {
        let mut reply = Self::invalid(code, message);
        reply.body["error"]["param"] = json!(param);
        reply
    }

    fn missing_param(param: &str) -> Self {
        Self::invalid_param(Some("parameter_missing"), param, format!("Missing required param: {param}."))
    }

    fn no_such_account(status: StatusCode, param: Option<&str>, id: &str) -> Self {
        let mut reply = Self::error(
            status,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such account: '{id}'"),
        );
        if let Some(param) = param {
            reply.body["error"]["param"] = json!(param);
        }
        reply
    }

    /// A key sent again with other parameters.
    fn idempotency_mismatch(key: &str) -> Self {
        Self::error(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            None,
            format!(
                "Keys for idempotent requests can only be used with the same parameters they were first used \
                 with. Try using a key other than '{key}' if you meant to execute a different request."
            ),
        )
    }

    fn balance_insufficient() -> Self {
        Self::invalid(
            Some("balance_insufficient"),
            "You have insufficient available funds in your Stripe account.",
        )
    }

    fn server_error() -> Self {
        Self::error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", None, "An unknown error occurred.")
    }

    /// Stripe's answer to a platform key used on a connected account it has no access to (any
    /// more): the key masked but for its prefix and last four characters.
    fn no_access(presented_key: &str, account: &str) -> Self {
        let mut reply = Self::error(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            Some("account_invalid"),
            format!(
                "The provided key '{}' does not have access to account '{account}' (or that account does \
                 not exist). Application access may have been revoked.",
                masked(presented_key)
            ),
        );
        reply.body["error"]["doc_url"] = json!("https://stripe.com/docs/error-codes/account-invalid");
        reply
    }
}

/// `sk_test_abcdefgh1234` → `sk_test_********1234`, as Stripe writes a key in its messages.
fn masked(key: &str) -> String {
    let prefix_len = key.match_indices('_').nth(1).map_or(0, |(i, _)| i + 1);
    let (prefix, rest) = key.split_at(prefix_len);
    let hidden = rest.chars().count().saturating_sub(4);
    let tail: String = rest.chars().skip(hidden).collect();
    format!("{prefix}{}{tail}", "*".repeat(hidden))
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = axum::http::HeaderValue::from(self.retry_after.unwrap_or(1));
            response.headers_mut().insert("retry-after", retry_after);
        }
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
async fn handle(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Reply {
    let (parts, body) = request.into_parts();
    let (method, uri, headers) = (parts.method.clone(), parts.uri.clone(), parts.headers.clone());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    let (params, json) = if method == Method::GET {
        let query = Query::<Vec<(String, String)>>::try_from_uri(&uri);
        (query.map(|Query(pairs)| pairs).map_err(|rejection: QueryRejection| rejection.body_text()), None)
    } else if is_json {
        let json = match axum::body::to_bytes(body, MAX_JSON_BODY).await {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        (Ok(Vec::new()), Some(json))
    } else {
        let request = axum::extract::Request::from_parts(parts, body);
        let form = Form::<Vec<(String, String)>>::from_request(request, &()).await;
        (form.map(|Form(pairs)| pairs).map_err(|rejection: FormRejection| rejection.body_text()), None)
    };
    let call = Call {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        stripe_account: header("stripe-account"),
        stripe_version: header("stripe-version"),
        stripe_context: header("stripe-context"),
        content_type: header("content-type"),
        params,
        json,
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
    ListTransfers,
    ListReversals(String),
    ListPayouts,
    CreateAccount,
    ListAccounts,
    CreateAccountLink,
    CreateAccountSession,
    CreateLoginLink(String),
    RetrieveV2Account(String),
    /// `POST /v2/core/accounts`.
    CreateV2Account,
    /// `GET /v2/core/accounts`.
    ListV2Accounts,
    /// `GET /v2/core/events/{id}`.
    RetrieveThinEvent(String),
    /// `GET /v1/events`.
    ListEvents,
    /// `GET /v2/core/events`.
    ListV2Events,
    /// `GET /v1/webhook_endpoints`, `GET /v2/core/event_destinations`.
    Endpoints(endpoints::EndpointsRoute),
    /// Any other `GET /v1/…`: a stored object, a created transfer or payout, or 404.
    RetrieveObject(String),
}

impl Route {
    fn is_read(&self) -> bool {
        matches!(
            self,
            Self::RetrieveAccount(_)
                | Self::RetrieveV2Account(_)
                | Self::RetrieveThinEvent(_)
                | Self::RetrieveObject(_)
                | Self::ListTransfers
                | Self::ListReversals(_)
                | Self::ListPayouts
                | Self::ListAccounts
                | Self::ListV2Accounts
                | Self::ListEvents
                | Self::ListV2Events
                | Self::Endpoints(_)
        )
    }

    /// Whether it writes through API v2: a JSON body, and v2's idempotency.
    fn is_v2_write(&self) -> bool {
        matches!(self, Self::CreateV2Account)
    }
}

fn route(method: &Method, path: &str) -> Option<Route> {
    if let Some(route) = endpoints::route(method, path) {
        return Some(Route::Endpoints(route));
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "transfers"]) => Some(Route::CreateTransfer),
        ("POST", ["v1", "transfers", id, "reversals"]) if !id.is_empty() => {
            Some(Route::CreateReversal((*id).to_owned()))
        }
        ("POST", ["v1", "payouts"]) => Some(Route::CreatePayout),
        ("GET", ["v1", "accounts", id]) if !id.is_empty() => Some(Route::RetrieveAccount((*id).to_owned())),
        ("GET", ["v2", "core", "accounts", id]) if !id.is_empty() => {
            Some(Route::RetrieveV2Account((*id).to_owned()))
        }
        ("GET", ["v1", "transfers"]) => Some(Route::ListTransfers),
        ("GET", ["v1", "transfers", id, "reversals"]) if !id.is_empty() => {
            Some(Route::ListReversals((*id).to_owned()))
        }
        ("GET", ["v1", "payouts"]) => Some(Route::ListPayouts),
        ("POST", ["v1", "accounts"]) => Some(Route::CreateAccount),
        ("GET", ["v1", "accounts"]) => Some(Route::ListAccounts),
        ("POST", ["v1", "account_links"]) => Some(Route::CreateAccountLink),
        ("POST", ["v1", "account_sessions"]) => Some(Route::CreateAccountSession),
        ("POST", ["v1", "accounts", id, "login_links"]) if !id.is_empty() => {
            Some(Route::CreateLoginLink((*id).to_owned()))
        }
        ("POST", ["v2", "core", "accounts"]) => Some(Route::CreateV2Account),
        ("GET", ["v2", "core", "accounts"]) => Some(Route::ListV2Accounts),
        ("GET", ["v1", "events"]) => Some(Route::ListEvents),
        ("GET", ["v2", "core", "events"]) => Some(Route::ListV2Events),
        ("GET", ["v2", "core", "events", id]) if !id.is_empty() => {
            Some(Route::RetrieveThinEvent((*id).to_owned()))
        }
        ("GET", ["v1", _, ..]) => Some(Route::RetrieveObject(path.to_owned())),
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

/// Authenticates, routes, parses, checks account access, applies faults and idempotency, and runs
/// the request unless a fault holds it.
fn begin(shared: &Shared, call: Call) -> Begun {
    let mut ledger = shared.ledger();
    ledger.received.push(ReceivedRequest {
        method: call.method.to_string(),
        path: call.path.clone(),
        query: call.query.clone(),
        idempotency_key: call.idempotency_key.clone(),
        stripe_account: call.stripe_account.clone(),
        stripe_version: call.stripe_version.clone(),
        stripe_context: call.stripe_context.clone(),
        content_type: call.content_type.clone(),
        form: match (&call.method, &call.params) {
            (&Method::GET, _) | (_, Err(_)) => Vec::new(),
            (_, Ok(pairs)) => pairs.clone(),
        },
        json: match &call.json {
            Some(Ok(body)) => Some(body.clone()),
            _ => None,
        },
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
    if let Some(limit) = &mut ledger.rate_limit {
        let now = std::time::Instant::now();
        if now.duration_since(limit.window_start) >= std::time::Duration::from_secs(1) {
            limit.window_start = now;
            limit.in_window = 0;
        }
        limit.in_window += 1;
        if limit.in_window > limit.per_second {
            ledger.rate_limited += 1;
            return Begun::Answered(Reply::rate_limited(1));
        }
    }
    if ledger.denied.iter().any(|prefix| call.path.starts_with(prefix.as_str())) {
        return Begun::Answered(Reply::permission_denied(presented));
    }
    let Some(route) = route(&call.method, &call.path) else {
        return Begun::Answered(Reply::unrecognized(&call.method, &call.path));
    };
    // Stripe ignores an idempotency key on a GET.
    let key = match (route.is_read(), call.idempotency_key.as_deref()) {
        (true, _) => None,
        (false, Some(key)) if !key.is_empty() => Some(key.to_owned()),
        (false, _) => {
            return Begun::Answered(Reply::invalid(
                None,
                "This stand-in requires an Idempotency-Key on every POST.",
            ));
        }
    };
    // "All API requests to the API /v2 namespace must include the Stripe-Version header."
    if matches!(route, Route::CreateV2Account | Route::ListV2Accounts | Route::ListV2Events)
        && call.stripe_version.is_none()
    {
        return Begun::Answered(Reply::invalid(
            None,
            "API v2 requests must include a Stripe-Version header.",
        ));
    }
    // Each namespace takes its own encoding: JSON on API v2, forms on v1.
    let v2_write = route.is_v2_write();
    let json = match (v2_write, call.json) {
        (true, Some(Ok(body))) => Some(body),
        (true, Some(Err(error))) => {
            return Begun::Answered(Reply::invalid(
                None,
                format!("The request body is not valid JSON: {error}"),
            ));
        }
        (true, None) => {
            return Begun::Answered(Reply::invalid(
                None,
                "API v2 takes a JSON body (Content-Type: application/json).",
            ));
        }
        (false, Some(_)) => {
            return Begun::Answered(Reply::invalid(None, "API v1 takes a form-encoded body, not JSON."));
        }
        (false, None) => None,
    };
    let params = match call.params {
        Ok(pairs) => match Params::parse(pairs) {
            Ok(params) => params,
            Err(reply) => return Begun::Answered(reply),
        },
        Err(rejection) => {
            return Begun::Answered(Reply::invalid(None, format!("The parameters are invalid: {rejection}")));
        }
    };

    // Access to a connected account is decided before anything runs, so it is never saved under
    // the key: once access is restored, a retry under the same key executes.
    let named_account = match &route {
        Route::RetrieveAccount(id) | Route::RetrieveV2Account(id) | Route::CreateLoginLink(id) => {
            Some(id.as_str())
        }
        Route::RetrieveObject(path) => account_in_path(path),
        Route::CreateTransfer => params.get("destination"),
        Route::CreateAccountLink | Route::CreateAccountSession => params.get("account"),
        _ => None,
    };
    let (stripe_account, stripe_context) = (call.stripe_account.as_deref(), call.stripe_context.as_deref());
    let refused = [stripe_account, stripe_context, named_account]
        .into_iter()
        .flatten()
        .find(|account| ledger.revoked.contains(*account));
    if let Some(account) = refused {
        return Begun::Answered(Reply::no_access(presented, account));
    }
    // A read in the context of an account must name one that exists and is this platform's.
    if call.method == Method::GET {
        let unknown_context = stripe_context.filter(|c| !ledger.knows(c) || ledger.deleted.contains(*c));
        let deleted_account = stripe_account.filter(|a| ledger.deleted.contains(*a));
        if let Some(account) = unknown_context.or(deleted_account) {
            return Begun::Answered(Reply::no_access(presented, account));
        }
    }

    match ledger.first_fault(&call.method, &call.path) {
        Some((index, Fault::RateLimited)) => {
            ledger.faults.remove(index);
            return Begun::Answered(Reply::rate_limited(1));
        }
        Some((index, Fault::RateLimitedFor(retry_after))) => {
            ledger.faults.remove(index);
            return Begun::Answered(Reply::rate_limited(retry_after));
        }
        _ => {}
    }

    let fingerprint = match &json {
        Some(body) => format!("{} {} account={:?} {body}", call.method, call.path, call.stripe_account),
        None => format!("{} {} account={:?} {:?}", call.method, call.path, call.stripe_account, params.0),
    };
    if let Some(key) = &key
        && v2_write
        && let Some(reply) = v2_replay(&mut ledger, key, &fingerprint, json.as_ref())
    {
        return Begun::Answered(reply);
    }
    if let Some(key) = &key
        && !v2_write
    {
        ledger.prune_key(key);
        match ledger.idempotency.get(key) {
            Some(Remembered { fingerprint: first, outcome: Outcome::Done { status, body }, .. })
                if *first == fingerprint =>
            {
                let replay = Reply { status: *status, body: body.clone(), replayed: true, retry_after: None };
                return Begun::Answered(replay);
            }
            Some(Remembered { fingerprint: first, outcome: Outcome::InProgress, .. })
                if *first == fingerprint =>
            {
                return Begun::Answered(Reply::error(
                    StatusCode::CONFLICT,
                    "idempotency_error",
                    Some("idempotency_key_in_use"),
                    "There is currently another in-progress request using this Idempotency-Key.",
                ));
            }
            Some(_) => return Begun::Answered(Reply::idempotency_mismatch(key)),
            None => {}
        }
    }

    let instant = params.get("method") == Some("instant");
    let fault = match ledger.first_fault(&call.method, &call.path) {
        Some((_, Fault::InstantPayoutsUnsupported)) if !instant => None,
        _ => ledger.take_fault(&call.method, &call.path),
    };
    let request = Request {
        route,
        stripe_account: call.stripe_account,
        stripe_context: call.stripe_context,
        params,
        json,
    };
    match fault {
        Some(Fault::Timeout) => {
            if let Some(key) = &key
                && v2_write
            {
                let first_used = ledger.v2_idempotency.get(key).map_or(ledger.now, |r| r.first_used);
                let in_progress = RememberedV2 {
                    fingerprint: fingerprint.clone(),
                    first_used,
                    state: V2KeyState::InProgress,
                };
                ledger.v2_idempotency.insert(key.clone(), in_progress);
            } else if let Some(key) = &key {
                let in_progress = Remembered {
                    fingerprint: fingerprint.clone(),
                    first_used: ledger.now,
                    outcome: Outcome::InProgress,
                };
                ledger.idempotency.insert(key.clone(), in_progress);
            }
            let (release, released) = oneshot::channel();
            let (finished, done) = oneshot::channel();
            ledger.held.push(Held { release, done });
            Begun::Held { released, finished, request, key, fingerprint }
        }
        Some(Fault::ServerErrorAfterCreate) => {
            let (result, executed) = execute(&mut ledger, &request);
            let reply = Reply::server_error();
            remember_outcome(&mut ledger, &request, key.as_deref(), &fingerprint, &reply, &result, executed);
            Begun::Answered(reply)
        }
        Some(Fault::ServerErrorBeforeCreate) => {
            let reply = Reply::server_error();
            remember_outcome(&mut ledger, &request, key.as_deref(), &fingerprint, &reply, &reply, true);
            Begun::Answered(reply)
        }
        Some(Fault::BalanceInsufficient) => {
            let reply = Reply::balance_insufficient();
            remember_outcome(&mut ledger, &request, key.as_deref(), &fingerprint, &reply, &reply, true);
            Begun::Answered(reply)
        }
        Some(Fault::InstantPayoutsUnsupported) => {
            let reply = Reply::invalid_param(
                Some("instant_payouts_unsupported"),
                "method",
                "This payout cannot be made instantly: the external account does not support Instant Payouts.",
            );
            remember_outcome(&mut ledger, &request, key.as_deref(), &fingerprint, &reply, &reply, true);
            Begun::Answered(reply)
        }
        Some(Fault::RateLimited | Fault::RateLimitedFor(_)) | None => {
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
    remember_outcome(ledger, request, key, fingerprint, &reply, &reply, executed);
    reply
}

/// Remembers under the key what a request did, by its API's rules: v1 saves the answer
/// (`answered`), v2 whether the request's own work (`result`) created something.
fn remember_outcome(
    ledger: &mut Ledger,
    request: &Request,
    key: Option<&str>,
    fingerprint: &str,
    answered: &Reply,
    result: &Reply,
    executed: bool,
) {
    if request.route.is_v2_write() {
        remember_v2(ledger, key, fingerprint, result, executed);
    } else {
        remember(ledger, key, fingerprint, answered, executed);
    }
}

/// API v2's idempotency: a request that created an object keeps it under the key; one that failed
/// is marked so, to run again; one refused before it began leaves the key free.
fn remember_v2(ledger: &mut Ledger, key: Option<&str>, fingerprint: &str, result: &Reply, executed: bool) {
    let Some(key) = key else { return };
    if !executed {
        ledger.v2_idempotency.remove(key);
        return;
    }
    let state = match result.body.get("id").and_then(Value::as_str) {
        Some(id) if result.status.is_success() => V2KeyState::Created(id.to_owned()),
        _ => V2KeyState::Failed,
    };
    let first_used = ledger.v2_idempotency.get(key).map_or(ledger.now, |r| r.first_used);
    ledger
        .v2_idempotency
        .insert(key.to_owned(), RememberedV2 { fingerprint: fingerprint.to_owned(), first_used, state });
}

/// The answer an API v2 key gives before anything runs: `None` when the request runs (a new key,
/// a pruned one, or one whose request failed).
fn v2_replay(ledger: &mut Ledger, key: &str, fingerprint: &str, body: Option<&Value>) -> Option<Reply> {
    let now = ledger.now;
    if ledger.v2_idempotency.get(key).is_some_and(|r| now - r.first_used >= V2_IDEMPOTENCY_KEY_TTL_SECS) {
        ledger.v2_idempotency.remove(key);
    }
    let remembered = ledger.v2_idempotency.get(key)?;
    if remembered.fingerprint != fingerprint {
        return Some(Reply::idempotency_mismatch(key));
    }
    match &remembered.state {
        V2KeyState::Failed => None,
        V2KeyState::InProgress => Some(Reply::error(
            StatusCode::CONFLICT,
            "idempotency_error",
            Some("idempotency_key_in_use"),
            "There is currently another in-progress request using this Idempotency-Key.",
        )),
        // "Returns an updated response": the account as it is now, not as it was created.
        V2KeyState::Created(id) => {
            if ledger.deleted.contains(id) {
                return Some(Reply::no_such("account", id));
            }
            let account = ledger.v2_accounts.get(id)?.clone();
            let mut reply = Reply::ok(with_includes(account, &includes_of(body)));
            reply.replayed = true;
            Some(reply)
        }
    }
}

/// The `include` of an API v2 body.
fn includes_of(body: Option<&Value>) -> Vec<&str> {
    body.and_then(|body| body.get("include"))
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Stores the result under the key, as Stripe does once an endpoint has started executing (500s
/// included); a request refused by validation leaves the key free. The key keeps the time it was
/// first used, so that a held request's result ages from when it arrived.
fn remember(ledger: &mut Ledger, key: Option<&str>, fingerprint: &str, reply: &Reply, executed: bool) {
    let Some(key) = key else { return };
    if executed {
        let first_used = ledger.idempotency.get(key).map_or(ledger.now, |r| r.first_used);
        let remembered = Remembered {
            fingerprint: fingerprint.to_owned(),
            first_used,
            outcome: Outcome::Done { status: reply.status, body: reply.body.clone() },
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
    stripe_context: Option<String>,
    params: Params,
    /// The JSON body of an API v2 write.
    json: Option<Value>,
}

impl Request {
    /// The account a read acts as: `Stripe-Context` supersedes `Stripe-Account`.
    fn acting_account(&self) -> Option<&str> {
        self.stripe_context.as_deref().or(self.stripe_account.as_deref())
    }
}

/// Form or query parameters, each given once.
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
        self.refuse_unknown(|name| allowed.contains(&name) || metadata_key(name).is_some())
    }

    /// Refuses any parameter outside `allowed` (a list takes no metadata).
    fn only_exactly(&self, allowed: &[&str]) -> Result<(), Reply> {
        self.refuse_unknown(|name| allowed.contains(&name))
    }

    fn refuse_unknown(&self, known: impl Fn(&str) -> bool) -> Result<(), Reply> {
        match self.0.keys().find(|name| !known(name.as_str())) {
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

    fn integer(&self, name: &str) -> Result<Option<i64>, Reply> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => raw.parse::<i64>().map(Some).map_err(|_| {
                Reply::invalid(Some("parameter_invalid_integer"), format!("Invalid integer: {raw}"))
            }),
        }
    }

    fn amount(&self) -> Result<Option<i64>, Reply> {
        match self.integer("amount")? {
            Some(amount) if amount <= 0 => {
                Err(Reply::invalid(Some("parameter_invalid_integer"), format!("Invalid integer: {amount}")))
            }
            amount => Ok(amount),
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
        Route::RetrieveAccount(id) => Ok(retrieve_account(ledger, request, id)),
        Route::RetrieveV2Account(id) => retrieve_v2_account(ledger, request, id),
        Route::RetrieveThinEvent(id) => retrieve_thin_event(ledger, request, id),
        Route::RetrieveObject(path) => retrieve_object(ledger, request, path),
        Route::ListTransfers => list_transfers(ledger, request),
        Route::ListReversals(transfer) => list_reversals(ledger, request, transfer),
        Route::ListPayouts => list_payouts(ledger, request),
        Route::CreateAccount => create_account(ledger, request),
        Route::ListAccounts => list_accounts(ledger, request),
        Route::CreateAccountLink => create_account_link(ledger, request),
        Route::CreateAccountSession => create_account_session(ledger, request),
        Route::CreateLoginLink(id) => create_login_link(ledger, request, id),
        Route::CreateV2Account => create_v2_account(ledger, request),
        Route::ListV2Accounts => list_v2_accounts(ledger, request),
        Route::ListEvents => events::list_events(ledger, request),
        Route::Endpoints(route) => endpoints::execute(ledger, request, route),
        Route::ListV2Events => events::list_v2_events(ledger, request),
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
        created: ledger.now,
    };
    let body = transfer.json();
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
        return Err(Refusal::Executed(no_such_transfer(transfer_id)));
    };
    let now = ledger.now;
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
    let (currency, destination) = (transfer.currency.clone(), transfer.destination.clone());
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
        created: now,
    };
    let body = reversal.json();
    ledger.reversals.push(reversal);
    Ok(Reply::ok(body))
}

fn no_such_transfer(transfer_id: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        format!("No such transfer: '{transfer_id}'"),
    )
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
    params.only(&["amount", "currency", "description", "method", "source_type"])?;
    if let Some(source_type) = params.get("source_type")
        && !["card", "bank_account", "fpx"].contains(&source_type)
    {
        return Err(Reply::invalid_param(
            None,
            "source_type",
            "Invalid source_type: must be one of card, bank_account or fpx",
        )
        .into());
    }
    if let Some(method) = params.get("method")
        && method != "standard"
        && method != "instant"
    {
        return Err(Reply::invalid_param(
            None,
            "method",
            "Invalid method: must be one of standard or instant",
        )
        .into());
    }
    let amount = params.required_amount()?;
    let currency = params.currency()?;
    let now = ledger.now;
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
        created: now,
        status: "pending".to_owned(),
        method: params.get("method").map(str::to_owned),
        source_type: params.get("source_type").map(str::to_owned),
    };
    let body = payout.json();
    ledger.payouts.push(payout);
    Ok(Reply::ok(body))
}

/// `GET /v1/accounts/{id}`: a stored object if [`StripeStub::put_object`] put one at the path (or
/// [`StripeStub::remove_object`] removed it), else the account the stub knows.
fn retrieve_account(ledger: &Ledger, request: &Request, id: &str) -> Reply {
    if ledger.deleted.contains(id) {
        return Reply::no_such("account", id);
    }
    if let Some(stored) = stored_object(ledger, request, &format!("/v1/accounts/{id}")) {
        return stored.unwrap_or_else(|| Reply::no_such("account", id));
    }
    if let Some(created) = ledger.created_accounts.iter().find(|a| a.id == id) {
        return Reply::ok(AccountView { account: created, state: ledger.accounts.get(id) }.json());
    }
    match ledger.accounts.get(id) {
        Some(account) => Reply::ok(json!({
            "id": id, "object": "account",
            "capabilities": { "transfers": if account.can_receive_transfers { "active" } else { "inactive" } },
            "payouts_enabled": account.payouts_enabled,
            "charges_enabled": account.can_receive_transfers,
        })),
        None => Reply::no_such("account", id),
    }
}

/// What [`StripeStub::put_object`] stored at `path` for the account the request acts as:
/// `None` when nothing was ever stored there, `Some(None)` when the path is stored (or removed)
/// but holds nothing for that account.
fn stored_object(ledger: &Ledger, request: &Request, path: &str) -> Option<Option<Reply>> {
    let by_owner = ledger.objects.get(path)?;
    let owner = request.acting_account().map(str::to_owned);
    Some(by_owner.get(&owner).map(|object| Reply::ok(object.clone())))
}

/// The connected account a `/v1/accounts/{id}/…` path is under.
fn account_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/accounts/")?.split('/').next().filter(|id| !id.is_empty())
}

/// Any other `GET /v1/…`: what [`StripeStub::put_object`] stored for the account the request acts
/// as, else a transfer or payout the stub created, else 404 `resource_missing` named after the
/// path's collection ("No such payout: 'po_1'"). A path shaped like no retrieve (a list the stub
/// does not serve) is 404 without a code.
fn retrieve_object(ledger: &Ledger, request: &Request, path: &str) -> Result<Reply, Refusal> {
    request.params.only_exactly(&[])?;
    let Some((noun, id)) = retrieved_noun_and_id(path) else {
        return Err(Reply::unrecognized(&Method::GET, path).into());
    };
    if let Some(account) = account_in_path(path)
        && ledger.deleted.contains(account)
    {
        return Ok(Reply::no_such("account", account));
    }
    let missing = || Reply::no_such(&noun, id);
    if let Some(stored) = stored_object(ledger, request, path) {
        return Ok(stored.unwrap_or_else(missing));
    }
    let acting = request.acting_account();
    let created = match path.strip_prefix("/v1/") {
        Some(rest) if rest.starts_with("transfers/") => {
            ledger.transfers.iter().find(|t| t.id == id && acting.is_none()).map(Listed::json)
        }
        Some(rest) if rest.starts_with("payouts/") => {
            ledger.payouts.iter().find(|p| p.id == id && acting == Some(p.account.as_str())).map(Listed::json)
        }
        _ => None,
    };
    Ok(created.map_or_else(missing, Reply::ok))
}

/// For a path shaped like a retrieve, what its object is called in Stripe's "No such …" and its
/// id: `/v1/payouts/po_1` → ("payout", "po_1"), `/v1/accounts/a/external_accounts/ba_1` →
/// ("external account", "ba_1"), `/v1/balance` → ("balance", "balance").
fn retrieved_noun_and_id(path: &str) -> Option<(String, &str)> {
    let segments: Vec<&str> = path.strip_prefix("/v1/")?.split('/').collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        return None;
    }
    match segments.as_slice() {
        [singleton @ ("balance" | "account")] => Some(((*singleton).to_owned(), *singleton)),
        [.., collection, id] if segments.len() % 2 == 0 => {
            let singular = match collection.strip_suffix("ies") {
                Some(stem) => format!("{stem}y"),
                None => collection.strip_suffix('s').unwrap_or(collection).to_owned(),
            };
            Some((singular.replace('_', " "), *id))
        }
        _ => None,
    }
}

/// `GET /v2/core/events/{id}`: the stored thin event, in its own context only. As at Stripe, an
/// event is looked for in the context the request names, so one of another context (or of the
/// platform, asked for in a connected account's context) is as missing as an unknown id.
fn retrieve_thin_event(ledger: &Ledger, request: &Request, id: &str) -> Result<Reply, Refusal> {
    request.params.only_exactly(&[])?;
    let event = ledger
        .thin_events
        .get(id)
        .filter(|event| event.get("context").and_then(Value::as_str) == request.stripe_context.as_deref());
    Ok(event.map_or_else(|| Reply::no_such("event", id), |event| Reply::ok(event.clone())))
}

/// The `include[]` values `GET /v2/core/accounts/{id}` takes.
const V2_ACCOUNT_INCLUDES: [&str; 7] = [
    "configuration.customer",
    "configuration.merchant",
    "configuration.recipient",
    "defaults",
    "future_requirements",
    "identity",
    "requirements",
];

/// `account` as `GET /v2/core/accounts/{id}` shows it with only `included`: every property that
/// depends on another include is `null` (a configuration inside `configuration`, when that is an
/// object).
fn with_includes(mut account: Value, included: &[&str]) -> Value {
    for include in V2_ACCOUNT_INCLUDES.iter().filter(|include| !included.contains(include)) {
        let (parent, property) = match include.split_once('.') {
            Some((parent, property)) => (account.get_mut(parent), property),
            None => (Some(&mut account), *include),
        };
        if let Some(parent) = parent.and_then(Value::as_object_mut) {
            parent.insert(property.to_owned(), Value::Null);
        }
    }
    account
}

/// `GET /v2/core/accounts/{id}`: the account as Accounts v2 shows it, what
/// [`StripeStub::put_v2_account`] stored or else synthesised from [`StripeStub::add_account`]. As
/// at Stripe, a property that depends on `include` is `null` unless it was asked for, and an
/// unknown include is refused.
fn retrieve_v2_account(ledger: &Ledger, request: &Request, id: &str) -> Result<Reply, Refusal> {
    let mut included = Vec::new();
    for (name, value) in &request.params.0 {
        if !name.starts_with("include") {
            return Err(Refusal::Validation(Reply::invalid(
                Some("parameter_unknown"),
                format!("Received unknown parameter: {name}"),
            )));
        }
        if !V2_ACCOUNT_INCLUDES.contains(&value.as_str()) {
            return Err(Refusal::Validation(Reply::invalid_param(
                None,
                "include",
                format!("Invalid include: {value}"),
            )));
        }
        included.push(value.as_str());
    }
    if ledger.deleted.contains(id) {
        return Ok(Reply::no_such("account", id));
    }
    if let Some(stored) = ledger.v2_accounts.get(id) {
        return Ok(Reply::ok(with_includes(stored.clone(), &included)));
    }
    let Some(account) = ledger.accounts.get(id) else {
        return Ok(Reply::no_such("account", id));
    };
    let status = |active: bool| if active { "active" } else { "restricted" };
    let capability = |active: bool| {
        let details = if active {
            json!([])
        } else {
            json!([{"code": "requirements_past_due", "resolution": "provide_info"}])
        };
        json!({"status": status(active), "status_details": details})
    };
    let entries = if account.can_receive_transfers {
        json!([])
    } else {
        json!([{"awaiting_action_from": "user", "description": "Provide the business's URL",
                "minimum_deadline": {"status": "currently_due"}, "impact": {"restricts_capabilities": []}}])
    };
    let full = json!({
        "id": id, "object": "v2.core.account", "closed": false, "livemode": false,
        "applied_configurations": ["merchant", "recipient"],
        "configuration": {
            "merchant": {"capabilities": {
                "card_payments": capability(account.can_receive_transfers),
                "stripe_balance": {"payouts": capability(account.payouts_enabled)}}},
            "recipient": {"capabilities": {"stripe_balance": {
                "stripe_transfers": capability(account.can_receive_transfers),
                "payouts": capability(account.payouts_enabled)}}},
            "customer": null,
        },
        "requirements": {"entries": entries},
        "future_requirements": {"entries": []},
        "identity": {"country": "us"},
        "defaults": {"currency": "usd"},
    });
    Ok(Reply::ok(with_includes(full, &included)))
}

/// The merchant configuration's payment capabilities a v2 create may request (stripe-ruby's
/// `V2::Core::AccountCreateParams`, 2026-01-28.clover).
const V2_MERCHANT_CAPABILITIES: &[&str] = &[
    "ach_debit_payments",
    "acss_debit_payments",
    "affirm_payments",
    "afterpay_clearpay_payments",
    "alma_payments",
    "amazon_pay_payments",
    "au_becs_debit_payments",
    "bacs_debit_payments",
    "bancontact_payments",
    "blik_payments",
    "boleto_payments",
    "card_payments",
    "cartes_bancaires_payments",
    "cashapp_payments",
    "eps_payments",
    "fpx_payments",
    "gb_bank_transfer_payments",
    "grabpay_payments",
    "ideal_payments",
    "jcb_payments",
    "jp_bank_transfer_payments",
    "kakao_pay_payments",
    "klarna_payments",
    "konbini_payments",
    "kr_card_payments",
    "link_payments",
    "mobilepay_payments",
    "multibanco_payments",
    "mx_bank_transfer_payments",
    "naver_pay_payments",
    "oxxo_payments",
    "p24_payments",
    "pay_by_bank_payments",
    "payco_payments",
    "paynow_payments",
    "promptpay_payments",
    "revolut_pay_payments",
    "samsung_pay_payments",
    "sepa_bank_transfer_payments",
    "sepa_debit_payments",
    "swish_payments",
    "twint_payments",
    "us_bank_transfer_payments",
    "zip_payments",
];

/// Unix seconds as API v2 writes a time: `2025-06-15T15:06:40.000Z`.
fn rfc3339(unix: i64) -> String {
    let (year, month, day) = shared::calendar::civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// An API v2 refusal of a field: 400, the parameter named.
fn v2_invalid(param: &str, message: impl Into<String>) -> Refusal {
    Refusal::Validation(Reply::invalid_param(None, param, message))
}

/// The keys of `object` at `param`, refusing any outside `allowed`.
fn v2_fields<'v>(
    value: &'v Value,
    param: &str,
    allowed: &[&str],
) -> Result<&'v serde_json::Map<String, Value>, Refusal> {
    let object =
        value.as_object().ok_or_else(|| v2_invalid(param, format!("Invalid {param}: must be an object")))?;
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => {
            let name = if param.is_empty() { key.clone() } else { format!("{param}.{key}") };
            Err(Refusal::Validation(Reply::invalid(
                Some("parameter_unknown"),
                format!("Received unknown parameter: {name}"),
            )))
        }
        None => Ok(object),
    }
}

/// A string at `param`, or nothing for `null` or absent.
fn v2_string(value: Option<&Value>, param: &str) -> Result<Option<String>, Refusal> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(v2_invalid(param, format!("Invalid {param}: must be a string"))),
    }
}

/// One of `allowed` at `param`, or nothing.
fn v2_enum(value: Option<&Value>, param: &str, allowed: &[&str]) -> Result<Option<String>, Refusal> {
    match v2_string(value, param)? {
        Some(choice) if !allowed.contains(&choice.as_str()) => Err(v2_invalid(
            param,
            format!("Invalid {param}: must be one of {}, got {choice:?}", allowed.join(", ")),
        )),
        choice => Ok(choice),
    }
}

/// The capabilities a configuration's `capabilities` requests, as dotted paths under `config`:
/// each leaf `{"requested": bool}` at a path `known` accepts.
fn v2_requested(
    config: &str,
    capabilities: &Value,
    known: &dyn Fn(&[&str]) -> bool,
    into: &mut Vec<String>,
) -> Result<(), Refusal> {
    fn walk(
        node: &Value,
        path: &mut Vec<String>,
        known: &dyn Fn(&[&str]) -> bool,
        into: &mut Vec<String>,
        param: &str,
    ) -> Result<(), Refusal> {
        let object = node
            .as_object()
            .ok_or_else(|| v2_invalid(param, format!("Invalid {param}: must be an object")))?;
        for (name, child) in object {
            path.push(name.clone());
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let param = format!("{param}.{name}");
            if known(&segments) {
                let leaf = v2_fields(child, &param, &["requested"])?;
                match leaf.get("requested") {
                    Some(Value::Bool(true)) => into.push(segments.join(".")),
                    Some(Value::Bool(false)) | None => {}
                    Some(_) => {
                        return Err(v2_invalid(
                            &param,
                            format!("Invalid {param}.requested: must be a boolean"),
                        ));
                    }
                }
            } else if child.is_object() && segments.len() < 3 {
                walk(child, path, known, into, &param)?;
            } else {
                return Err(Refusal::Validation(Reply::invalid(
                    Some("parameter_unknown"),
                    format!("Received unknown parameter: {param}"),
                )));
            }
            path.pop();
        }
        Ok(())
    }
    let mut requested = Vec::new();
    let param = format!("configuration.{config}.capabilities");
    walk(capabilities, &mut Vec::new(), known, &mut requested, &param)?;
    into.extend(requested.into_iter().map(|path| format!("{config}.{path}")));
    Ok(())
}

/// `POST /v2/core/accounts`: a JSON body with the fields `POST /accounts` sends, each checked;
/// the account is kept for `GET /v2/core/accounts/{id}` and answered with the body's `include`.
fn create_v2_account(ledger: &mut Ledger, request: &Request) -> Result<Reply, Refusal> {
    if request.stripe_account.is_some() || request.stripe_context.is_some() {
        return Err(Reply::invalid(None, "This stand-in creates v2 accounts from the platform only.").into());
    }
    request.params.only_exactly(&[])?;
    let empty = Value::Null;
    let body = request.json.as_ref().unwrap_or(&empty);
    let fields = v2_fields(
        body,
        "",
        &[
            "configuration",
            "contact_email",
            "dashboard",
            "defaults",
            "display_name",
            "identity",
            "include",
            "metadata",
        ],
    )?;
    let country = match fields.get("identity") {
        None | Some(Value::Null) => None,
        Some(identity) => {
            let identity = v2_fields(identity, "identity", &["country", "entity_type"])?;
            match v2_string(identity.get("country"), "identity.country")? {
                Some(country) if country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    Some(country.to_ascii_uppercase())
                }
                Some(country) => {
                    return Err(v2_invalid("identity.country", format!("Invalid country: {country}")));
                }
                None => None,
            }
        }
    };
    let contact_email = v2_string(fields.get("contact_email"), "contact_email")?;
    let dashboard = v2_enum(fields.get("dashboard"), "dashboard", &["express", "full", "none"])?;
    let (mut fees_collector, mut losses_collector) = (None, None);
    if let Some(defaults) = fields.get("defaults").filter(|d| !d.is_null()) {
        let defaults = v2_fields(defaults, "defaults", &["responsibilities"])?;
        if let Some(responsibilities) = defaults.get("responsibilities").filter(|r| !r.is_null()) {
            // `requirements_collector` is a property of the account, not a create parameter.
            let responsibilities = v2_fields(
                responsibilities,
                "defaults.responsibilities",
                &["fees_collector", "losses_collector"],
            )?;
            fees_collector = v2_enum(
                responsibilities.get("fees_collector"),
                "defaults.responsibilities.fees_collector",
                &["application", "application_custom", "application_express", "stripe"],
            )?;
            losses_collector = v2_enum(
                responsibilities.get("losses_collector"),
                "defaults.responsibilities.losses_collector",
                &["application", "stripe"],
            )?;
        }
    }
    let mut configs = Vec::new();
    let mut requested = Vec::new();
    if let Some(configuration) = fields.get("configuration").filter(|c| !c.is_null()) {
        let configuration = v2_fields(configuration, "configuration", &["merchant", "recipient"])?;
        for (config, settings) in configuration {
            let settings = v2_fields(settings, &format!("configuration.{config}"), &["capabilities"])?;
            configs.push(config.clone());
            let Some(capabilities) = settings.get("capabilities") else { continue };
            let known: &dyn Fn(&[&str]) -> bool = match config.as_str() {
                "merchant" => &|path: &[&str]| path.len() == 1 && V2_MERCHANT_CAPABILITIES.contains(&path[0]),
                _ => &|path: &[&str]| path == ["stripe_balance", "stripe_transfers"],
            };
            v2_requested(config, capabilities, known, &mut requested)?;
        }
    }
    // Stripe's reference: "Required when configuring the account as a merchant or recipient."
    if !configs.is_empty() && contact_email.is_none() {
        return Err(Reply::missing_param("contact_email").into());
    }
    let include = match fields.get("include") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut include = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(name) if V2_ACCOUNT_INCLUDES.contains(&name) => include.push(name),
                    _ => return Err(v2_invalid("include", format!("Invalid include: {item}"))),
                }
            }
            include
        }
        Some(_) => return Err(v2_invalid("include", "Invalid include: must be an array")),
    };
    let mut metadata = serde_json::Map::new();
    if let Some(given) = fields.get("metadata").filter(|m| !m.is_null()) {
        let given =
            given.as_object().ok_or_else(|| v2_invalid("metadata", "Invalid metadata: must be an object"))?;
        for (key, value) in given {
            match value {
                Value::String(_) if !key.is_empty() => {
                    metadata.insert(key.clone(), value.clone());
                }
                // API v2 removes a key with null; a create has nothing to remove.
                Value::Null => {}
                _ => return Err(v2_invalid("metadata", format!("Invalid metadata value for {key:?}"))),
            }
        }
    }

    let id = ledger.next_id("acct");
    let capability = json!({"status": "restricted",
                            "status_details": [{"code": "requirements_past_due", "resolution": "provide_info"}]});
    let mut configuration = json!({"customer": null, "merchant": null, "recipient": null});
    for config in &configs {
        configuration[config.as_str()] = json!({"capabilities": {}});
    }
    for path in &requested {
        let segments: Vec<&str> = path.split('.').collect();
        let mut node = &mut configuration[segments[0]]["capabilities"];
        for segment in &segments[1..] {
            node = &mut node[*segment];
        }
        *node = capability.clone();
    }
    let restricts: Vec<Value> = requested
        .iter()
        .map(|path| {
            let (config, name) = path.split_once('.').unwrap_or((path, ""));
            json!({"capability": name, "configuration": config, "deadline": {"status": "currently_due"}})
        })
        .collect();
    let entry = |description: &str| {
        json!({"awaiting_action_from": "user", "description": description, "errors": [],
               "impact": {"restricts_capabilities": restricts}, "minimum_deadline": {"status": "currently_due"},
               "reference": null, "requested_reasons": [{"code": "routine_onboarding"}]})
    };
    let entries = if requested.is_empty() {
        Vec::new()
    } else {
        vec![entry("Provide the business's URL"), entry("Accept the terms of service")]
    };
    let losses = losses_collector.unwrap_or_else(|| "stripe".to_owned());
    // Stripe's reference does not say how it decides who collects requirements: the stand-in's
    // guess is the platform when it bears losses and the account has no Stripe dashboard.
    let requirements_collector = if losses == "application" && dashboard.as_deref() == Some("none") {
        "application"
    } else {
        "stripe"
    };
    let mut applied = configs.clone();
    applied.sort();
    let account = json!({
        "id": id, "object": "v2.core.account", "applied_configurations": applied, "closed": false,
        "contact_email": contact_email, "created": rfc3339(ledger.now), "dashboard": dashboard,
        "display_name": fields.get("display_name").cloned().unwrap_or(Value::Null), "livemode": false,
        "metadata": metadata,
        "configuration": configuration,
        "defaults": {"currency": null, "locales": [], "profile": null, "responsibilities": {
            "fees_collector": fees_collector.unwrap_or_else(|| "stripe".to_owned()),
            "losses_collector": losses, "requirements_collector": requirements_collector}},
        "identity": {"country": country, "entity_type": null},
        "requirements": {"entries": entries},
        "future_requirements": {"entries": []},
    });
    ledger.context_accounts.insert(id.clone());
    ledger.accounts.entry(id.clone()).or_default();
    ledger.v2_accounts.insert(id.clone(), account.clone());
    ledger.created_v2_accounts.push(StubCreatedV2Account { id, body: body.clone(), created: ledger.now });
    Ok(Reply::ok(with_includes(account, &include)))
}

/// The cursor a `GET /v2/core/accounts` page token names.
const V2_PAGE_PREFIX: &str = "page_stub_";

/// `GET /v2/core/accounts`: the accounts `POST /v2/core/accounts` made, newest first, without
/// their include-dependent properties, paged by `next_page_url`.
fn list_v2_accounts(ledger: &Ledger, request: &Request) -> Result<Reply, Refusal> {
    if request.stripe_account.is_some() || request.stripe_context.is_some() {
        return Err(Reply::invalid(None, "This stand-in lists the platform's v2 accounts only.").into());
    }
    let params = &request.params;
    params.only_exactly(&["limit", "page", "closed"])?;
    let limit = match params.integer("limit")? {
        None => 10,
        Some(limit @ 1..=100) => usize::try_from(limit).unwrap_or(100),
        Some(limit) => {
            return Err(v2_invalid(
                "limit",
                format!("Invalid limit: must be between 1 and 100, got {limit}"),
            ));
        }
    };
    let closed = match params.get("closed") {
        None => false,
        Some(value) => Params::boolean("closed", value)?,
    };
    let accounts = &ledger.created_v2_accounts;
    let end = match params.get("page") {
        None => accounts.len(),
        Some(token) => token
            .strip_prefix(V2_PAGE_PREFIX)
            .and_then(|after| accounts.iter().position(|account| account.id == after))
            .ok_or_else(|| v2_invalid("page", format!("Invalid page: {token}")))?,
    };
    let stored = |account: &StubCreatedV2Account| ledger.v2_accounts.get(&account.id);
    let mut matching = accounts[..end].iter().rev().filter(|account| {
        let is_closed = stored(account).and_then(|a| a.get("closed")).and_then(Value::as_bool) == Some(true);
        !ledger.deleted.contains(&account.id) && is_closed == closed
    });
    let page: Vec<&StubCreatedV2Account> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    let data: Vec<Value> =
        page.iter().filter_map(|account| stored(account)).map(|a| with_includes(a.clone(), &[])).collect();
    let next_page_url = match page.last() {
        Some(last) if more => {
            // The filters ride along: they cannot change after the first page.
            let mut url = format!("/v2/core/accounts?page={V2_PAGE_PREFIX}{}", last.id);
            for name in ["limit", "closed"] {
                if let Some(value) = params.get(name) {
                    url.push_str(&format!("&{name}={value}"));
                }
            }
            json!(url)
        }
        _ => Value::Null,
    };
    Ok(Reply::ok(json!({"data": data, "next_page_url": next_page_url, "previous_page_url": null})))
}

/// The paging parameters every list takes, and the `created` range where the list has one.
#[derive(Debug)]
struct Paging {
    limit: usize,
    starting_after: Option<String>,
    created_from: i64,
    created_to: i64,
}

impl Paging {
    /// Reads `limit`, `starting_after` and, when `with_created`, `created` and `created[…]`;
    /// refuses any parameter outside those and `filters`.
    fn parse(params: &Params, filters: &[&str], with_created: bool) -> Result<Self, Reply> {
        const CREATED: [&str; 5] = ["created", "created[gt]", "created[gte]", "created[lt]", "created[lte]"];
        if params.get("ending_before").is_some() {
            return Err(Reply::invalid(None, "This stand-in pages forward only: use starting_after."));
        }
        let mut allowed = vec!["limit", "starting_after"];
        allowed.extend_from_slice(filters);
        if with_created {
            allowed.extend_from_slice(&CREATED);
        }
        params.only_exactly(&allowed)?;
        let limit = match params.integer("limit")? {
            None => 10,
            Some(limit @ 1..=100) => usize::try_from(limit).unwrap_or(100),
            Some(limit) => {
                let message = format!("Invalid limit: must be between 1 and 100, got {limit}.");
                return Err(Reply::invalid(Some("parameter_invalid_integer"), message));
            }
        };
        let (mut created_from, mut created_to) = (i64::MIN, i64::MAX);
        if let Some(exact) = params.integer("created")? {
            (created_from, created_to) = (exact, exact);
        }
        if let Some(gt) = params.integer("created[gt]")? {
            created_from = created_from.max(gt.saturating_add(1));
        }
        if let Some(gte) = params.integer("created[gte]")? {
            created_from = created_from.max(gte);
        }
        if let Some(lt) = params.integer("created[lt]")? {
            created_to = created_to.min(lt.saturating_sub(1));
        }
        if let Some(lte) = params.integer("created[lte]")? {
            created_to = created_to.min(lte);
        }
        let starting_after = params.get("starting_after").map(str::to_owned);
        Ok(Self { limit, starting_after, created_from, created_to })
    }

    /// One page of `items` (held oldest first) as a Stripe list: newest first, after the cursor,
    /// those that `keep` and whose `created` is in range. The cursor is looked up among all
    /// `items`, so it may be an object the filters leave out, as at Stripe.
    fn page<T: Listed>(&self, url: &str, items: &[T], keep: impl Fn(&T) -> bool) -> Result<Reply, Reply> {
        let end = match &self.starting_after {
            None => items.len(),
            Some(cursor) => items.iter().position(|item| item.id() == cursor).ok_or_else(|| {
                let message = format!("No such {}: '{cursor}'", T::OBJECT);
                let mut missing = Reply::invalid(Some("resource_missing"), message);
                missing.body["error"]["param"] = json!("starting_after");
                missing
            })?,
        };
        let mut matching = items[..end]
            .iter()
            .rev()
            .filter(|item| (self.created_from..=self.created_to).contains(&item.created()) && keep(item));
        let data: Vec<Value> = matching.by_ref().take(self.limit).map(Listed::json).collect();
        let has_more = matching.next().is_some();
        Ok(Reply::ok(json!({ "object": "list", "data": data, "has_more": has_more, "url": url })))
    }
}

/// An object a list shows.
trait Listed {
    /// Its `object` name, for a missing cursor's message.
    const OBJECT: &'static str;
    fn id(&self) -> &str;
    fn created(&self) -> i64;
    /// The object as Stripe shows it, in a create answer and in a list alike.
    fn json(&self) -> Value;
}

impl Listed for StubTransfer {
    const OBJECT: &'static str = "transfer";

    fn id(&self) -> &str {
        &self.id
    }

    fn created(&self) -> i64 {
        self.created
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "transfer", "amount": self.amount,
            "amount_reversed": self.amount_reversed, "created": self.created,
            "currency": self.currency, "destination": self.destination,
            "source_transaction": self.source_transaction, "transfer_group": self.transfer_group,
            "metadata": self.metadata, "reversed": self.amount_reversed >= self.amount,
            "livemode": false,
        })
    }
}

impl Listed for StubReversal {
    const OBJECT: &'static str = "transfer_reversal";

    fn id(&self) -> &str {
        &self.id
    }

    fn created(&self) -> i64 {
        self.created
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "transfer_reversal", "amount": self.amount,
            "created": self.created, "currency": self.currency, "transfer": self.transfer,
            "metadata": self.metadata,
        })
    }
}

impl Listed for StubPayout {
    const OBJECT: &'static str = "payout";

    fn id(&self) -> &str {
        &self.id
    }

    fn created(&self) -> i64 {
        self.created
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "payout", "amount": self.amount, "created": self.created,
            "currency": self.currency, "status": self.status, "metadata": self.metadata,
            "livemode": false, "method": self.method.as_deref().unwrap_or("standard"),
            "source_type": self.source_type.as_deref().unwrap_or("card"),
        })
    }
}

fn list_transfers(ledger: &Ledger, request: &Request) -> Result<Reply, Refusal> {
    if request.stripe_account.is_some() {
        return Err(Reply::invalid(None, "This stand-in lists transfers of the platform only.").into());
    }
    let params = &request.params;
    let paging = Paging::parse(params, &["destination", "transfer_group"], true)?;
    let (destination, group) = (params.get("destination"), params.get("transfer_group"));
    let keep = |t: &StubTransfer| {
        destination.is_none_or(|d| t.destination == d)
            && group.is_none_or(|g| t.transfer_group.as_deref() == Some(g))
    };
    Ok(paging.page("/v1/transfers", &ledger.transfers, keep)?)
}

fn list_reversals(ledger: &Ledger, request: &Request, transfer_id: &str) -> Result<Reply, Refusal> {
    if request.stripe_account.is_some() {
        return Err(Reply::invalid(None, "This stand-in lists reversals of the platform only.").into());
    }
    let paging = Paging::parse(&request.params, &[], false)?;
    if !ledger.transfers.iter().any(|t| t.id == transfer_id) {
        return Err(no_such_transfer(transfer_id).into());
    }
    let url = format!("/v1/transfers/{transfer_id}/reversals");
    Ok(paging.page(&url, &ledger.reversals, |r| r.transfer == transfer_id)?)
}

fn list_payouts(ledger: &Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    let paging = Paging::parse(params, &["status"], true)?;
    let status = params.get("status");
    // Without `Stripe-Account` these are the platform's own payouts, of which the stub has none.
    let account = request.stripe_account.as_deref();
    let keep = |p: &StubPayout| Some(p.account.as_str()) == account && status.is_none_or(|s| p.status == s);
    Ok(paging.page("/v1/payouts", &ledger.payouts, keep)?)
}

/// Capabilities a `POST /v1/accounts` may request: those of Stripe's reference this project could
/// plausibly ask for.
const CAPABILITIES: &[&str] = &[
    "acss_debit_payments",
    "affirm_payments",
    "afterpay_clearpay_payments",
    "bancontact_payments",
    "card_issuing",
    "card_payments",
    "eps_payments",
    "ideal_payments",
    "klarna_payments",
    "link_payments",
    "sepa_debit_payments",
    "tax_reporting_us_1099_k",
    "tax_reporting_us_1099_misc",
    "transfers",
    "treasury",
    "us_bank_account_ach_payments",
];

/// Connect embedded components an Account Session may enable (Stripe's reference, 2024-06-20).
const COMPONENTS: &[&str] = &[
    "account_management",
    "account_onboarding",
    "balances",
    "documents",
    "notification_banner",
    "payment_details",
    "payments",
    "payouts",
    "payouts_list",
    "tax_registrations",
    "tax_settings",
];

/// What a created account still owes before it is enabled, as in Stripe's reference example.
const ONBOARDING_REQUIREMENTS: &[&str] = &[
    "business_profile.mcc",
    "business_profile.url",
    "business_type",
    "external_account",
    "tos_acceptance.date",
    "tos_acceptance.ip",
];

/// How long an Account Link lives, as in Stripe's reference example.
const ACCOUNT_LINK_TTL_SECS: i64 = 300;

/// How long an Account Session lives.
const ACCOUNT_SESSION_TTL_SECS: i64 = 30 * 60;

/// `len` random letters and digits, for URLs and secrets nobody may guess.
fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = String::with_capacity(len);
    while token.len() < len {
        // Each `RandomState` is keyed afresh, so each hash is a new random word.
        let mut bits = RandomState::new().build_hasher().finish();
        for _ in 0..10 {
            if token.len() == len {
                break;
            }
            let index = usize::try_from(bits % 62).unwrap_or(0);
            token.push(char::from(ALPHABET[index]));
            bits /= 62;
        }
    }
    token
}

/// The name inside `capabilities[<name>][requested]`.
fn capability_key(name: &str) -> Option<&str> {
    name.strip_prefix("capabilities[")?.strip_suffix("][requested]").filter(|key| !key.is_empty())
}

impl Params {
    /// `name` as one of `allowed`, or `default` when absent; any other value is refused as Stripe
    /// refuses a bad enum value: 400, the parameter named, no code.
    fn one_of(&self, name: &str, allowed: &[&str], default: Option<&str>) -> Result<Option<String>, Reply> {
        match self.get(name) {
            None => Ok(default.map(str::to_owned)),
            Some(value) if allowed.contains(&value) => Ok(Some(value.to_owned())),
            Some(value) => {
                let message =
                    format!("Invalid {name}: must be one of {}, got {value:?}.", allowed.join(", "));
                Err(Reply::invalid_param(None, name, message))
            }
        }
    }

    fn boolean(name: &str, value: &str) -> Result<bool, Reply> {
        match value {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(Reply::invalid_param(None, name, format!("Invalid boolean: {other}"))),
        }
    }

    fn required(&self, name: &str) -> Result<&str, Reply> {
        self.get(name).filter(|value| !value.is_empty()).ok_or_else(|| Reply::missing_param(name))
    }
}

/// How a known account onboards: its dashboard and who collects its requirements.
fn onboarding_controller(ledger: &Ledger, id: &str) -> Option<(String, String)> {
    if ledger.deleted.contains(id) {
        return None;
    }
    if let Some(created) = ledger.created_accounts.iter().find(|a| a.id == id) {
        return Some((created.dashboard.clone(), created.requirement_collection.clone()));
    }
    ledger.accounts.contains_key(id).then(|| ("express".to_owned(), "stripe".to_owned()))
}

fn create_account(ledger: &mut Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    if request.stripe_account.is_some() {
        return Err(Reply::invalid(None, "This stand-in creates accounts from the platform only.").into());
    }
    const NAMES: [&str; 6] = [
        "country",
        "email",
        "controller[stripe_dashboard][type]",
        "controller[fees][payer]",
        "controller[losses][payments]",
        "controller[requirement_collection]",
    ];
    params.refuse_unknown(|name| {
        NAMES.contains(&name)
            || metadata_key(name).is_some()
            || capability_key(name).is_some_and(|c| CAPABILITIES.contains(&c))
    })?;
    // Stripe's default is the platform's own country.
    let country = params.get("country").unwrap_or("US").to_owned();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        let message = format!(
            "Country '{country}' is unknown. Try using a 2-character alphanumeric country code instead, \
             such as 'US', 'EG', or 'GB'."
        );
        return Err(Reply::invalid_param(None, "country", message).into());
    }
    let enum_param = |name: &str, allowed: &[&str], default: &str| {
        params.one_of(name, allowed, Some(default)).map(Option::unwrap_or_default)
    };
    let dashboard = enum_param("controller[stripe_dashboard][type]", &["express", "full", "none"], "full")?;
    let fees_payer = enum_param("controller[fees][payer]", &["account", "application"], "account")?;
    let losses_payments = enum_param("controller[losses][payments]", &["application", "stripe"], "stripe")?;
    let requirement_collection =
        enum_param("controller[requirement_collection]", &["application", "stripe"], "stripe")?;
    let mut capabilities = Vec::new();
    for (name, value) in &params.0 {
        if let Some(capability) = capability_key(name) {
            if Params::boolean(name, value)? {
                capabilities.push(capability.to_owned());
            }
        }
    }
    // Stripe's reference: capabilities are required when the account has no Stripe-hosted dashboard.
    if dashboard == "none" && capabilities.is_empty() {
        return Err(Reply::missing_param("capabilities").into());
    }
    let id = ledger.next_id("acct");
    let account = StubCreatedAccount {
        id: id.clone(),
        country,
        email: params.get("email").map(str::to_owned),
        dashboard,
        fees_payer,
        losses_payments,
        requirement_collection,
        capabilities,
        metadata: params.metadata(),
        created: ledger.now,
    };
    ledger.accounts.entry(id.clone()).or_default();
    let body = AccountView { account: &account, state: ledger.accounts.get(&id) }.json();
    ledger.created_accounts.push(account);
    Ok(Reply::ok(body))
}

fn list_accounts(ledger: &Ledger, request: &Request) -> Result<Reply, Refusal> {
    if request.stripe_account.is_some() {
        return Err(
            Reply::invalid(None, "This stand-in lists the platform's connected accounts only.").into()
        );
    }
    let paging = Paging::parse(&request.params, &[], true)?;
    let views: Vec<AccountView<'_>> = ledger
        .created_accounts
        .iter()
        .map(|account| AccountView { account, state: ledger.accounts.get(&account.id) })
        .collect();
    Ok(paging.page("/v1/accounts", &views, |view| !ledger.deleted.contains(&view.account.id))?)
}

fn create_account_link(ledger: &mut Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    params.only_exactly(&[
        "account",
        "type",
        "return_url",
        "refresh_url",
        "collection_options[fields]",
        "collection_options[future_requirements]",
    ])?;
    let account = params.required("account")?.to_owned();
    let link_type = params.one_of("type", &["account_onboarding", "account_update"], None)?;
    let link_type = link_type.ok_or_else(|| Reply::missing_param("type"))?;
    let url_param = |name: &str| match params.required(name)? {
        url if url.starts_with("https://") || url.starts_with("http://") => Ok(url.to_owned()),
        _ => Err(Reply::invalid_param(Some("url_invalid"), name, "Not a valid URL")),
    };
    let return_url = url_param("return_url")?;
    let refresh_url = url_param("refresh_url")?;
    let collect = params.one_of("collection_options[fields]", &["currently_due", "eventually_due"], None)?;
    params.one_of("collection_options[future_requirements]", &["include", "omit"], None)?;
    let Some((dashboard, requirement_collection)) = onboarding_controller(ledger, &account) else {
        let missing = Reply::no_such_account(StatusCode::BAD_REQUEST, Some("account"), &account);
        return Err(Refusal::Executed(missing));
    };
    // Stripe's reference: `account_update` only where the platform collects requirements and the
    // account has no Stripe-hosted dashboard. The message is the one Stripe answered such a request
    // with (stripe/stripe-node#1047).
    if link_type == "account_update" && (requirement_collection != "application" || dashboard != "none") {
        let refusal =
            Reply::invalid_param(None, "type", r#"Invalid type: must be one of ["account_onboarding"]"#);
        return Err(Refusal::Executed(refusal));
    }
    let url = format!("https://connect.stripe.com/setup/s/{account}/{}", random_token(12));
    let (created, expires_at) = (ledger.now, ledger.now + ACCOUNT_LINK_TTL_SECS);
    ledger.account_links.push(StubAccountLink {
        account,
        link_type,
        return_url,
        refresh_url,
        collect,
        url: url.clone(),
        expires_at,
    });
    Ok(Reply::ok(json!({
        "object": "account_link", "url": url, "created": created, "expires_at": expires_at,
    })))
}

/// Rebuilds `components[<name>][enabled]` and `components[<name>][features][<feature>]` into
/// Stripe's components object, refusing unknown components, other keys and non-booleans.
fn session_components(params: &Params) -> Result<Value, Reply> {
    let mut components = serde_json::Map::new();
    for (name, value) in &params.0 {
        let Some(path) = name.strip_prefix("components[") else { continue };
        let unknown =
            || Reply::invalid(Some("parameter_unknown"), format!("Received unknown parameter: {name}"));
        let segments: Vec<&str> = path.trim_end_matches(']').split("][").collect();
        let (component, rest) = segments.split_first().ok_or_else(unknown)?;
        if !COMPONENTS.contains(component) || !path.ends_with(']') {
            return Err(unknown());
        }
        let entry = components.entry((*component).to_owned()).or_insert_with(|| json!({}));
        let flag = json!(Params::boolean(name, value)?);
        match rest {
            ["enabled"] => entry["enabled"] = flag,
            ["features", feature] if !feature.is_empty() => {
                if entry.get("features").is_none() {
                    entry["features"] = json!({});
                }
                entry["features"][*feature] = flag;
            }
            _ => return Err(unknown()),
        }
    }
    if components.is_empty() {
        return Err(Reply::missing_param("components"));
    }
    if let Some(name) = components.iter().find(|(_, c)| c.get("enabled").is_none()).map(|(n, _)| n) {
        return Err(Reply::missing_param(&format!("components[{name}][enabled]")));
    }
    Ok(Value::Object(components))
}

fn create_account_session(ledger: &mut Ledger, request: &Request) -> Result<Reply, Refusal> {
    let params = &request.params;
    params.refuse_unknown(|name| name == "account" || name.starts_with("components["))?;
    let account = params.required("account")?.to_owned();
    let components = session_components(params)?;
    if onboarding_controller(ledger, &account).is_none() {
        let missing = Reply::no_such_account(StatusCode::BAD_REQUEST, Some("account"), &account);
        return Err(Refusal::Executed(missing));
    }
    let client_secret = format!("{account}_secret_{}", random_token(24));
    let expires_at = ledger.now + ACCOUNT_SESSION_TTL_SECS;
    ledger.account_sessions.push(StubAccountSession {
        account: account.clone(),
        client_secret: client_secret.clone(),
        components: components.clone(),
        expires_at,
    });
    Ok(Reply::ok(json!({
        "object": "account_session", "account": account, "client_secret": client_secret,
        "expires_at": expires_at, "livemode": false, "components": components,
    })))
}

fn create_login_link(ledger: &mut Ledger, request: &Request, id: &str) -> Result<Reply, Refusal> {
    request.params.only_exactly(&[])?;
    let Some((dashboard, _)) = onboarding_controller(ledger, id) else {
        return Err(Refusal::Executed(Reply::no_such_account(StatusCode::NOT_FOUND, None, id)));
    };
    if dashboard != "express" {
        // Stripe's answer, quoted on insiders.stripe.dev ("Will Express Dashboards be supported for
        // all connected accounts?", API version 2024-04-10): no code.
        let message =
            format!("Cannot create an edit link for the account {id}, which is not an Express account.");
        return Err(Refusal::Executed(Reply::invalid(None, message)));
    }
    let url = format!("https://connect.stripe.com/express/{id}/{}", random_token(12));
    ledger.login_links.push(StubLoginLink { account: id.to_owned(), url: url.clone() });
    Ok(Reply::ok(json!({ "object": "login_link", "url": url, "created": ledger.now })))
}

/// A created account as Stripe shows it, with what [`StripeStub::add_account`] has since enabled.
struct AccountView<'a> {
    account: &'a StubCreatedAccount,
    state: Option<&'a StubAccount>,
}

impl AccountView<'_> {
    /// The legacy account type the controller amounts to.
    fn legacy_type(&self) -> &'static str {
        match (self.account.dashboard.as_str(), self.account.requirement_collection.as_str()) {
            ("express", "stripe") => "express",
            ("full", _) => "standard",
            ("none", "application") => "custom",
            _ => "none",
        }
    }
}

impl Listed for AccountView<'_> {
    const OBJECT: &'static str = "account";

    fn id(&self) -> &str {
        &self.account.id
    }

    fn created(&self) -> i64 {
        self.account.created
    }

    fn json(&self) -> Value {
        let account = self.account;
        let enabled = self.state.is_some_and(|s| s.can_receive_transfers);
        let payouts_enabled = self.state.is_some_and(|s| s.payouts_enabled);
        let status = if enabled { "active" } else { "inactive" };
        let capabilities: serde_json::Map<String, Value> =
            account.capabilities.iter().map(|name| (name.clone(), json!(status))).collect();
        let due: Vec<&str> = if enabled { Vec::new() } else { ONBOARDING_REQUIREMENTS.to_vec() };
        json!({
            "id": account.id, "object": "account", "type": self.legacy_type(),
            "country": account.country, "email": account.email, "created": account.created,
            "metadata": account.metadata, "livemode": false,
            "controller": {
                "type": "application", "is_controller": true,
                "stripe_dashboard": { "type": account.dashboard },
                "fees": { "payer": account.fees_payer },
                "losses": { "payments": account.losses_payments },
                "requirement_collection": account.requirement_collection,
            },
            "capabilities": capabilities,
            "charges_enabled": enabled,
            "payouts_enabled": payouts_enabled,
            "details_submitted": enabled || payouts_enabled,
            "requirements": {
                "currently_due": due, "eventually_due": due, "past_due": due,
                "pending_verification": [], "current_deadline": null, "errors": [],
                "disabled_reason": if enabled { Value::Null } else { json!("requirements.past_due") },
            },
            "settings": { "payouts": { "schedule": { "interval": "daily", "delay_days": 2 } } },
        })
    }
}
