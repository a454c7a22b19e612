//! `connect-flow serve`: the webhook and the read API over HTTP, on the embedded store.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use shared::domain::account::{AccountId, OnboardingStatus};
use shared::store::AccountStore;
use shared::store::sqlite::SqliteStore;
use shared::webhook::{MAX_BODY_BYTES, Reply, WebhookService};
use shared::worker::StepWorker;
use tokio::net::TcpListener;

type Service = Arc<WebhookService<SqliteStore>>;

/// The HTTP routes of DESIGN.md over one pipeline.
pub fn router(service: Service) -> Router {
    Router::new()
        .route("/webhooks/stripe", post(receive_webhook))
        .route("/accounts", get(list_accounts))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/steps", get(get_steps))
        .route("/healthz", get(health))
        .with_state(service)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(service)).with_graceful_shutdown(shutdown).await
}

fn reply(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], reply.body).into_response()
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": kind, "message": message }))).into_response()
}

async fn receive_webhook(State(service): State<Service>, headers: HeaderMap, body: Body) -> Response {
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES) {
        return reply(Reply::body_too_large());
    }
    // Reading stops at the limit, so a body without a truthful length is never buffered whole.
    let Ok(body) = to_bytes(body, MAX_BODY_BYTES).await else { return reply(Reply::body_too_large()) };
    let signature = headers.get("stripe-signature").and_then(|value| value.to_str().ok());
    reply(service.handle(signature, &body).await)
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
}

async fn list_accounts(State(service): State<Service>, Query(query): Query<ListQuery>) -> Response {
    let status = match query.status.as_deref() {
        None => None,
        Some(name) => match OnboardingStatus::parse(name) {
            Some(status) => Some(status),
            None => return error(StatusCode::BAD_REQUEST, "unknown_status", "no such onboarding status"),
        },
    };
    match service.store().list_accounts(status).await {
        Ok(accounts) => axum::Json(accounts).into_response(),
        Err(store_error) => storage_error(&store_error),
    }
}

async fn get_account(State(service): State<Service>, Path(id): Path<String>) -> Response {
    let Some(account_id) = AccountId::parse(&id) else { return account_not_found() };
    match service.store().load_account(&account_id).await {
        Ok(Some(account)) => axum::Json(account).into_response(),
        Ok(None) => account_not_found(),
        Err(store_error) => storage_error(&store_error),
    }
}

/// An account's fund-flow steps; 404 for an account never seen, as for `GET /accounts/{id}`.
async fn get_steps(State(service): State<Service>, Path(id): Path<String>) -> Response {
    let Some(account_id) = AccountId::parse(&id) else { return account_not_found() };
    let store = service.store();
    let steps = match store.load_account_steps(&account_id).await {
        Ok(steps) => steps,
        Err(store_error) => return storage_error(&store_error),
    };
    if steps.is_empty() {
        match store.load_account(&account_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return account_not_found(),
            Err(store_error) => return storage_error(&store_error),
        }
    }
    axum::Json(steps).into_response()
}

async fn health(State(service): State<Service>) -> Response {
    match service.store().ping() {
        Ok(()) => axum::Json(json!({ "status": "ok" })).into_response(),
        Err(store_error) => storage_error(&store_error),
    }
}

fn account_not_found() -> Response {
    error(StatusCode::NOT_FOUND, "account_not_found", "no events have been received for this account")
}

fn storage_error(store_error: &shared::store::StoreError) -> Response {
    tracing::error!(error = %store_error, "read failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "storage_unavailable", "the store could not be read")
}

/// How often the in-process workers look for steps that became visible again.
const WORKER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often `serve` sweeps for stranded and waiting steps ([`shared::sweep`]).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the fund-flow workers on the embedded queues until `shutdown` completes: every second,
/// every visible step is run until none is left; every minute, the sweep re-queues what nothing
/// else would.
pub async fn run_workers(worker: StepWorker<SqliteStore>, shutdown: impl Future<Output = ()> + Send) {
    let mut tick = tokio::time::interval(WORKER_POLL);
    let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
    let settings = shared::sweep::SweepSettings::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
            _ = sweep_tick.tick() => {
                let now = shared::stripe::signature::Clock::now_unix(&shared::stripe::signature::SystemClock);
                if let Err(store_error) = shared::sweep::sweep(worker.store(), worker.store(), now, &settings).await {
                    tracing::error!(error = %store_error, "the sweep could not run");
                }
            }
        }
        loop {
            match worker.drain_embedded().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(store_error) => {
                    tracing::error!(error = %store_error, "the embedded queue could not be read");
                    break;
                }
            }
        }
    }
}
