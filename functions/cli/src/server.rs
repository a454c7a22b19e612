//! `connect-flow serve`: the webhook and the platform API over HTTP, on the embedded store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use shared::domain::fetch::FetchRef;
use shared::domain::step::StepRef;
use shared::fetch::FetchWorker;
use shared::http::{BaseUrl, PlatformAuth, Routes};
use shared::platform::{PlatformApi, PlatformSettings};
use shared::store::sqlite::SqliteStore;
use shared::store::{BoxFuture, StepQueue, StoreError};
use shared::webhook::WebhookService;
use shared::worker::StepWorker;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Service = Arc<WebhookService<SqliteStore>>;

/// Everything `serve` answers: the webhook pipeline and the platform API, on one store.
#[derive(Clone)]
pub struct App {
    webhook: Service,
    platform: Arc<PlatformApi<SqliteStore>>,
    api_token: Option<String>,
}

impl App {
    /// The webhook and the platform API, the latter behind `api_token` when one is given.
    pub fn new(webhook: Service, platform: PlatformApi<SqliteStore>, api_token: Option<String>) -> Self {
        let api_token = api_token.map(|token| token.trim().to_owned()).filter(|token| !token.is_empty());
        Self { webhook, platform: Arc::new(platform), api_token }
    }

    /// The webhook, and the platform API's read routes without Stripe or a token: for tests and
    /// local reads on loopback.
    pub fn read_only(webhook: Service) -> Self {
        let platform = PlatformApi::new(webhook.store().clone(), None, PlatformSettings::default());
        Self::new(webhook, platform, None)
    }
}

/// Whether platform calls without a token are answered: only when no token is configured and the
/// listener is on a loopback address.
pub fn answers_without_token(api_token: Option<&str>, local: SocketAddr) -> bool {
    api_token.is_none() && local.ip().is_loopback()
}

/// The HTTP routes of DESIGN.md over one pipeline: the same router the Lambda functions run.
fn router(app: App, local: SocketAddr) -> Router {
    let open_without_token = answers_without_token(app.api_token.as_deref(), local);
    shared::http::router(Routes {
        webhook: Some(app.webhook),
        platform: Some(app.platform),
        auth: PlatformAuth::Bearer { token: app.api_token, open_without_token },
        base_url: BaseUrl::Fixed(format!("http://{local}")),
        webhook_deadline: None,
    })
}

/// Serves the webhook and the read-only platform API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener, App::read_only(service), shutdown).await
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve_app(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    if app.api_token.is_none() {
        if local.ip().is_loopback() {
            tracing::warn!(
                "CONNECT_FLOW_API_TOKEN is not set: the platform API answers without a token, on loopback only"
            );
        } else {
            tracing::warn!(
                "CONNECT_FLOW_API_TOKEN is not set and {local} is not loopback: platform routes answer 401"
            );
        }
    }
    axum::serve(listener, router(app, local)).with_graceful_shutdown(shutdown).await
}

/// How often the in-process workers look for steps that became visible again.
const WORKER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// How often `serve` sweeps for stranded and waiting steps ([`shared::sweep`]).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The embedded queue, waking the workers as soon as something is sent, so that a step or a
/// thin event's fetch runs straight away rather than at the next poll.
pub struct WakingQueue {
    store: SqliteStore,
    wake: Arc<Notify>,
}

impl WakingQueue {
    /// The queue on `store`, and what it wakes.
    pub fn new(store: SqliteStore) -> (Arc<Self>, Arc<Notify>) {
        let wake = Arc::new(Notify::new());
        (Arc::new(Self { store, wake: Arc::clone(&wake) }), wake)
    }
}

impl StepQueue for WakingQueue {
    fn send<'a>(&'a self, steps: &'a [StepRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store.send(steps).await?;
            self.wake.notify_one();
            Ok(())
        })
    }

    fn send_fetches<'a>(&'a self, fetches: &'a [FetchRef]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.store.send_fetches(fetches).await?;
            self.wake.notify_one();
            Ok(())
        })
    }
}

/// Runs the fund-flow workers and the fetch worker on the embedded queues until `shutdown`
/// completes: whenever something is queued (`wake`) and every second, every visible fetch and
/// step is run until none is left; every minute, the sweep re-queues what nothing else would.
pub async fn run_workers(
    worker: StepWorker<SqliteStore>,
    fetcher: FetchWorker<SqliteStore>,
    wake: Arc<Notify>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut tick = tokio::time::interval(WORKER_POLL);
    let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
    let settings = shared::sweep::SweepSettings::default();
    // Checked at start, with the webhook settings.
    let payouts = shared::domain::payout::PayoutSettings::from_env().unwrap_or_default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = wake.notified() => {}
            _ = tick.tick() => {}
            _ = sweep_tick.tick() => {
                let now = shared::clock::Clock::now_unix(&shared::clock::SystemClock);
                if let Err(store_error) = shared::sweep::sweep(worker.store(), worker.store(), now, &settings).await {
                    tracing::error!(error = %store_error, "the sweep could not run");
                }
                let store = worker.store();
                if let Err(store_error) = shared::sweep::sweep_payouts(store, store, now, &payouts, settings.batch).await {
                    tracing::error!(error = %store_error, "the payout sweep could not run");
                }
            }
        }
        loop {
            match fetcher.drain_embedded().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(store_error) => {
                    tracing::error!(error = %store_error, "the embedded fetch queue could not be read");
                    break;
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
