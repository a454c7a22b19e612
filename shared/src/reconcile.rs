//! The reconciler: one scheduled run that recovers what deliveries missed.
//!
//! Stripe retries a webhook for three days and keeps events for 30, so an endpoint that was down,
//! misconfigured or never subscribed loses state unless something lists what it missed. Each run:
//!
//! 1. lists every event created since its cursor (less an overlap): the platform's
//!    (`GET /v1/events`), API v2's (`GET /v2/core/events`), and each active connected account's
//!    (`GET /v1/events` with `Stripe-Account`). Active means: with an open step, changed in the
//!    change feed since the last run, or created at Stripe since the cursor;
//! 2. re-fetches a paced share of the stored accounts (the drift check), enough that every account
//!    is checked at least once a week;
//! 3. only then applies: each listed event not recorded yet goes through the same pipeline as a
//!    delivery, oldest first, under its original `created`, so the ordering guards treat it as a
//!    late delivery; each re-fetched account that differs from its stored state is applied
//!    through the same decide path as a fetched object;
//! 4. saves its cursor and its report in one conditional write.
//!
//! Before all of that it runs the step sweep ([`crate::sweep`]) and the payout sweep, so that one
//! schedule covers both, and a key that may not list events never holds a step back.
//!
//! Every Stripe request of a run shares one [`Pacer`] (20 a second by default) and honours
//! `Retry-After`. Nothing is applied until every list and fetch has answered, so a key without the
//! rights to list events stops the run before it changes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;

use crate::calendar::parse_rfc3339;
use crate::clock::{Clock, SystemClock};
use crate::domain::account::{AccountDecision, AccountEvent, AccountId, AccountState, AccountsApi, decide};
use crate::domain::payout::PayoutSettings;
use crate::domain::reconcile::{ReconcileRun, ReconcilerState};
use crate::domain::step::StepStatus;
use crate::fetch::{Pacer, paced, seed_of};
use crate::metrics::Metrics;
use crate::store::{AccountQuery, AccountStore, CommitOutcome, MAX_PAGE, StepQueue, StoreError};
use crate::stripe::api::StripeReads;
use crate::stripe::client::{StripeClient, StripeError};
use crate::stripe::event::Event;
use crate::stripe::events::ListPage;
use crate::sweep::{SweepSettings, sweep, sweep_payouts};
use crate::webhook::{Delivery, WebhookError, WebhookService};

/// Stripe's read limit is 25 a second in live mode (DESIGN.md); the reconciler keeps under 20.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 20;
/// Runs a week at the default 15-minute schedule.
pub const DEFAULT_RUNS_PER_WEEK: u64 = 7 * 24 * 4;
/// Accounts the drift check re-fetches per run before it has seen a whole lap of them.
pub(crate) const DEFAULT_FIRST_LAP_SHARE: u64 = 500;
/// The fewest accounts a run re-fetches once the lap's size is known.
pub(crate) const DEFAULT_MIN_SHARE: u64 = 20;
/// Accounts whose events one run lists: 250 s of requests at 20 a second.
pub(crate) const DEFAULT_MAX_ACCOUNT_LISTS: usize = 5_000;
/// The oldest API version the parsers are tested with (the oldest sample in `events/`).
pub(crate) const OLDEST_READ_API_VERSION: &str = "2017-08-15";
/// The newest API version the parsers are tested with (the ledger's fee events, in `tests/`).
pub(crate) const NEWEST_READ_API_VERSION: &str = "2025-03-31.basil";
/// The prefix of a drift check's record id: `reconcile.{account}.{unix}`.
pub(crate) const DRIFT_RECORD_PREFIX: &str = "reconcile.";
/// Pages any one list reads in a run: 100,000 objects, far past a 15-minute window.
const MAX_LIST_PAGES: usize = 1000;

/// Why a listed event is not read, if it is not: its API version is outside the range the parsers
/// are tested with. Stripe renders a listed event in the API version that was the account's
/// default when the event was created, which need not be the webhook endpoint's. Pure.
pub(crate) fn unread_api_version(api_version: Option<&str>) -> Option<String> {
    let version = api_version?;
    let date = |version: &'_ str| version.get(..10).unwrap_or(version).to_owned();
    if date(version) < date(OLDEST_READ_API_VERSION) || date(version) > date(NEWEST_READ_API_VERSION) {
        return Some(format!(
            "api_version {version} is outside the versions the parsers read ({OLDEST_READ_API_VERSION} to {NEWEST_READ_API_VERSION})"
        ));
    }
    None
}

/// Whether `next` (decided from a fetched object) changes anything of `current` but the
/// bookkeeping every apply moves: the version, the newest event and the ordering guards. Pure.
pub fn differs(current: Option<&AccountState>, next: &AccountState) -> bool {
    let Some(current) = current else { return true };
    let mut comparable = next.clone();
    comparable.version = current.version;
    comparable.last_event_id.clone_from(&current.last_event_id);
    comparable.last_event_created = current.last_event_created;
    comparable.ordering = current.ordering.clone();
    comparable != *current
}

/// How many accounts a run re-fetches: enough that a lap of `lap_accounts` takes at most
/// `runs_per_week` runs, and never fewer than `min_share`; `first_lap_share` before a lap's size
/// is known. Pure.
pub(crate) fn drift_share(
    lap_accounts: u64,
    runs_per_week: u64,
    min_share: u64,
    first_lap_share: u64,
) -> u64 {
    if lap_accounts == 0 {
        return first_lap_share.max(min_share);
    }
    lap_accounts.div_ceil(runs_per_week.max(1)).max(min_share)
}

/// What a run may do and how fast.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Stripe requests a second, all of the run's together.
    pub requests_per_second: u32,
    /// How many runs a week the schedule makes: it sets the drift check's share.
    pub runs_per_week: u64,
    /// The fewest accounts a run re-fetches.
    pub min_share: u64,
    /// Accounts a run re-fetches before a whole lap has been seen.
    pub first_lap_share: u64,
    /// The step sweep's thresholds.
    pub sweep: SweepSettings,
    /// The deployment's default payout policy, for the payout sweep.
    pub payouts: PayoutSettings,
    /// The most connected accounts whose events one run lists (one request each, at least).
    pub max_account_lists: usize,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            runs_per_week: DEFAULT_RUNS_PER_WEEK,
            min_share: DEFAULT_MIN_SHARE,
            first_lap_share: DEFAULT_FIRST_LAP_SHARE,
            sweep: SweepSettings::default(),
            payouts: PayoutSettings::default(),
            max_account_lists: DEFAULT_MAX_ACCOUNT_LISTS,
        }
    }
}

/// Why a run stopped. Nothing listed is applied after a Stripe failure; the next run retries.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Stripe refused the platform's key for a call: the key lacks the right, or is revoked.
    #[error("Stripe refused {call}: {error}")]
    Refused {
        /// The call, e.g. `GET /v1/events`.
        call: &'static str,
        /// Stripe's answer.
        error: StripeError,
    },
    /// A call kept failing (5xx, no answer, 429 past its retries).
    #[error("{call} kept failing: {error}")]
    Stripe {
        /// The call.
        call: &'static str,
        /// The last failure.
        error: StripeError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another run saved its state first.
    #[error("another reconciler run saved its state first; this run's effects stand, its cursor does not")]
    Contention,
    /// The invocation's deadline came before the run could finish.
    #[error("the run stopped before its deadline with {left} listed events not applied")]
    Deadline {
        /// Events listed but not applied.
        left: usize,
    },
}

/// What a long run reports as it goes: `reconcile` draws it as a progress bar.
pub trait Progress: Send + Sync {
    /// A phase begins: `total` items, when known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `count` more items of the current phase are done.
    fn advance(&self, count: u64);
    /// The run is over.
    fn finish(&self);
}

/// No progress shown.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    fn advance(&self, _count: u64) {}
    fn finish(&self) {}
}

/// One listed event, with what ordering and dedupe need.
#[derive(Debug)]
struct Listed {
    id: String,
    created: i64,
    body: Value,
}

/// An account re-fetched by the drift check, and when the request left.
struct Fetched {
    account: AccountState,
    object: Value,
    sent_at: i64,
}

/// Everything a run read before it applies anything.
struct Collected {
    events: Vec<Listed>,
    fetched: Vec<Fetched>,
    changes_after: Option<String>,
    drift_after: Option<AccountId>,
    lap_accounts: u64,
    lap_progress: u64,
}

/// The reconciler over one store, Stripe client and queue.
pub struct Reconciler<S, C = SystemClock, A = StripeClient> {
    webhook: WebhookService<S, C>,
    stripe: A,
    queue: Arc<dyn StepQueue>,
    settings: ReconcileSettings,
    pacer: Pacer,
    requests: AtomicU64,
    metrics: Metrics,
    progress: Arc<dyn Progress>,
}

impl<S: AccountStore, C: Clock, A: StripeReads> Reconciler<S, C, A> {
    /// A reconciler that applies through `webhook` (whose queue takes what it plans), reads from
    /// `stripe`, and sweeps to `queue`.
    pub fn new(
        webhook: WebhookService<S, C>,
        stripe: A,
        queue: Arc<dyn StepQueue>,
        settings: ReconcileSettings,
    ) -> Self {
        let pacer = Pacer::per_second(settings.requests_per_second);
        Self {
            webhook,
            stripe,
            queue,
            settings,
            pacer,
            requests: AtomicU64::new(0),
            metrics: Metrics::disabled(),
            progress: Arc::new(NoProgress),
        }
    }

    /// Records each run's report in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reports progress to `progress`.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The pipeline it applies through.
    pub fn webhook(&self) -> &WebhookService<S, C> {
        &self.webhook
    }

    fn store(&self) -> &S {
        self.webhook.store()
    }

    fn now(&self) -> i64 {
        self.webhook.clock().now_unix()
    }

    /// One run: lists from `since` when given (else from the stored cursor), stops short of
    /// `deadline`, saves its state and returns its report.
    pub async fn run(
        &self,
        since: Option<i64>,
        deadline: Option<Instant>,
    ) -> Result<ReconcileRun, ReconcileError> {
        self.requests.store(0, Ordering::Relaxed);
        let started_at = self.now();
        let (state, replace_unreadable) = match self.store().load_reconciler().await {
            Ok(state) => (state, false),
            Err(StoreError::Corrupt(reason)) => {
                tracing::warn!(reason, "the reconciler's cursor is unreadable: listing from now − 3 days");
                (None, true)
            }
            Err(error) => return Err(error.into()),
        };
        if state.is_none() && !replace_unreadable && since.is_none() {
            tracing::info!(
                "no reconciler cursor yet: listing from now − 3 days, the window Stripe retries in"
            );
        }
        let from = since.unwrap_or_else(|| ReconcilerState::list_from(state.as_ref(), started_at));
        let mut run = ReconcileRun {
            started_at,
            cursor: state.as_ref().map_or(0, |state| state.cursor),
            ..Default::default()
        };
        let result = self.run_from(from, state.as_ref(), &mut run, deadline).await;
        run.finished_at = self.now();
        run.stripe_requests = self.requests.load(Ordering::Relaxed);
        if let Err(error) = &result {
            run.error = Some(error.to_string());
        }
        let mut next = state.unwrap_or_default();
        next.version += 1;
        // A failed run is kept for the console too; only a deadline moves its cursor, to the
        // first event it did not apply.
        next.cursor = run.cursor;
        next.push_run(run.clone());
        if let Ok(collected) = &result {
            next.changes_after.clone_from(&collected.changes_after);
            next.drift_after.clone_from(&collected.drift_after);
            next.drift_lap_accounts = collected.lap_accounts;
            next.drift_lap_progress = collected.lap_progress;
        }
        let saved = self.store().save_reconciler(&next, replace_unreadable).await;
        self.progress.finish();
        tracing::info!(
            events_listed = run.events_listed,
            events_replayed = run.events_replayed,
            steps_resumed = run.steps_resumed,
            accounts_checked = run.accounts_checked,
            accounts_corrected = run.accounts_corrected,
            stripe_requests = run.stripe_requests,
            cursor = run.cursor,
            "reconciler run finished"
        );
        if let Some(error) = &run.error {
            tracing::warn!(
                error,
                "reconciler run failed; the next scheduled run tries again from its cursor"
            );
        }
        self.metrics.reconciled(&run);
        self.metrics.flush();
        result?;
        match saved? {
            CommitOutcome::Committed => Ok(run),
            CommitOutcome::Conflict | CommitOutcome::Duplicate => Err(ReconcileError::Contention),
        }
    }

    async fn run_from(
        &self,
        from: i64,
        state: Option<&ReconcilerState>,
        run: &mut ReconcileRun,
        deadline: Option<Instant>,
    ) -> Result<Collected, ReconcileError> {
        // The sweep first: it needs no Stripe call, so a key that may not list events never holds
        // steps back; and a waiting step that a replayed event frees is sent by that event's own
        // apply, not a second time by the sweep.
        let swept = sweep(self.store(), self.queue.as_ref(), self.now(), &self.settings.sweep).await?;
        let payouts = sweep_payouts(
            self.store(),
            self.queue.as_ref(),
            self.now(),
            &self.settings.payouts,
            self.settings.sweep.batch,
        )
        .await?;
        run.steps_resumed = u64::try_from(swept.total()).unwrap_or(u64::MAX);
        self.metrics.payout_funds_stale(payouts.stale_funds);
        tracing::info!(
            payouts_planned = payouts.payouts_planned,
            payout_accounts_due = payouts.accounts_due,
            "reconciler's sweeps finished"
        );
        let collected = self.collect(from, state, run).await?;
        let now = self.now();
        let applied = self.apply_events(&collected.events, run, deadline).await?;
        if let Some(first_left) = collected.events.get(applied) {
            // Every event before this one is applied: the next run lists from here.
            run.cursor = run.cursor.max(first_left.created);
            return Err(ReconcileError::Deadline { left: collected.events.len() - applied });
        }
        run.cursor = run.started_at;
        self.apply_drift(&collected.fetched, run, now).await?;
        // The feed now holds this run's own changes: the next run starts after them, so that
        // replaying an account's events does not make it active again.
        let (_, feed_end) = self.changed_accounts(collected.changes_after.clone(), i64::MAX).await?;
        Ok(Collected { changes_after: feed_end, ..collected })
    }

    /// Every Stripe read of the run, before anything is applied.
    async fn collect(
        &self,
        from: i64,
        state: Option<&ReconcilerState>,
        run: &mut ReconcileRun,
    ) -> Result<Collected, ReconcileError> {
        self.progress.phase("listing events", None);
        let mut events: BTreeMap<String, Listed> = BTreeMap::new();
        let mut keep = |page: Vec<Value>, progress: &dyn Progress| {
            progress.advance(page.len() as u64);
            for body in page {
                if let Some(listed) = listed(body) {
                    events.entry(listed.id.clone()).or_insert(listed);
                }
            }
        };
        let platform = self.list_all("GET /v1/events", None, |cursor| async move {
            self.stripe.list_events(None, from, cursor.as_deref()).await
        });
        keep(platform.await?, self.progress.as_ref());
        let v2 = self.list_all("GET /v2/core/events", None, |cursor| async move {
            self.stripe.list_v2_events(from, cursor.as_deref()).await
        });
        match v2.await {
            Ok(page) => keep(page, self.progress.as_ref()),
            // An account without API v2 has no v2 events to miss.
            Err(ReconcileError::Refused { error, .. } | ReconcileError::Stripe { error, .. })
                if error.status() == Some(404) =>
            {
                tracing::info!("API v2 events are not available to this key: none listed");
            }
            Err(error) => return Err(error),
        }
        let (active, changes_after) = self.active_accounts(from, state, run).await?;
        for account in &active {
            let listed =
                self.list_all("GET /v1/events (Stripe-Account)", Some(account), |cursor| async move {
                    self.stripe.list_events(Some(account), from, cursor.as_deref()).await
                });
            match listed.await {
                Ok(page) => keep(
                    page.into_iter().map(|event| on_account(event, account)).collect(),
                    self.progress.as_ref(),
                ),
                Err(ReconcileError::Refused { error, .. }) if error.refused_account_access() => {
                    tracing::info!(
                        account_id = account.as_str(),
                        "no access to the account any more: its events are not listed"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        let mut events: Vec<Listed> = events.into_values().collect();
        events.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        run.events_listed = events.len() as u64;
        let (fetched, drift_after, lap_accounts, lap_progress) = self.fetch_drift_share(state, run).await?;
        Ok(Collected { events, fetched, changes_after, drift_after, lap_accounts, lap_progress })
    }

    /// Every page of one list, paced; `account` names the connected account it is about.
    async fn list_all<F, Fut>(
        &self,
        call: &'static str,
        account: Option<&AccountId>,
        page: F,
    ) -> Result<Vec<Value>, ReconcileError>
    where
        F: Fn(Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<ListPage, StripeError>>,
    {
        let seed = seed_of(account.map_or(call, AccountId::as_str));
        let mut objects = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let next = paced(&self.pacer, seed, || {
                self.requests.fetch_add(1, Ordering::Relaxed);
                page(cursor.clone())
            })
            .await
            .map_err(|error| classify(call, error))?;
            objects.extend(next.data);
            match next.next {
                Some(next) => cursor = Some(next),
                None => return Ok(objects),
            }
        }
        tracing::warn!(call, pages = MAX_LIST_PAGES, "a list was cut short at its page limit");
        Ok(objects)
    }

    /// The connected accounts whose events are listed, most urgent first: those with open steps,
    /// those Stripe created since `from`, then those the change feed shows changed since the last
    /// run; at most [`ReconcileSettings::max_account_lists`]. Also returns the feed's cursor.
    async fn active_accounts(
        &self,
        from: i64,
        state: Option<&ReconcilerState>,
        run: &mut ReconcileRun,
    ) -> Result<(Vec<AccountId>, Option<String>), ReconcileError> {
        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        let mut add = |account: AccountId| {
            if seen.insert(account.clone()) {
                ordered.push(account);
            }
        };
        for status in [StepStatus::Queued, StepStatus::InFlight, StepStatus::Waiting] {
            let open = self.store().list_open_steps(status, i64::MAX, self.settings.sweep.batch).await?;
            open.into_iter().for_each(|step| add(step.destination));
        }
        let created = self.list_all("GET /v1/accounts", None, |cursor| async move {
            self.stripe.list_accounts_created(from, cursor.as_deref()).await
        });
        for account in created.await? {
            if let Some(id) = account.get("id").and_then(Value::as_str).and_then(AccountId::parse) {
                add(id);
            }
        }
        let after = state.and_then(|state| state.changes_after.clone());
        let (changed, after) = self.changed_accounts(after, from).await?;
        changed.into_iter().for_each(add);
        let limit = self.settings.max_account_lists;
        if ordered.len() > limit {
            run.accounts_skipped = (ordered.len() - limit) as u64;
            tracing::warn!(
                active = ordered.len(),
                limit,
                "more active accounts than one run lists: the rest wait for the next run or the drift check"
            );
            ordered.truncate(limit);
        }
        run.accounts_listed = ordered.len() as u64;
        Ok((ordered, after))
    }

    /// The accounts of the changes after `after` made at or after `since`, and the feed's cursor
    /// at its end. A cursor the feed no longer knows (pruned) reads the feed from its start.
    async fn changed_accounts(
        &self,
        mut after: Option<String>,
        since: i64,
    ) -> Result<(Vec<AccountId>, Option<String>), StoreError> {
        let now = self.now();
        let mut accounts = Vec::new();
        for _ in 0..MAX_LIST_PAGES {
            let page = match self.store().list_changes(after.as_deref(), MAX_PAGE, now).await? {
                Some(page) => page,
                None if after.is_some() => {
                    after = None;
                    continue;
                }
                None => break,
            };
            if page.changes.is_empty() {
                break;
            }
            accounts.extend(
                page.changes.into_iter().filter(|change| change.at >= since).map(|change| change.account_id),
            );
            after = Some(page.next);
        }
        Ok((accounts, after))
    }

    /// Re-fetches this run's share of the stored accounts, in id order from where the last run
    /// stopped, wrapping round at the end of a lap.
    #[allow(clippy::type_complexity)]
    async fn fetch_drift_share(
        &self,
        state: Option<&ReconcilerState>,
        run: &mut ReconcileRun,
    ) -> Result<(Vec<Fetched>, Option<AccountId>, u64, u64), ReconcileError> {
        let (mut lap_accounts, mut lap_progress) =
            state.map_or((0, 0), |state| (state.drift_lap_accounts, state.drift_lap_progress));
        let share = drift_share(
            lap_accounts,
            self.settings.runs_per_week,
            self.settings.min_share,
            self.settings.first_lap_share,
        );
        let mut after = state.and_then(|state| state.drift_after.clone());
        let mut accounts = Vec::new();
        let mut wrapped = false;
        while (accounts.len() as u64) < share {
            let limit = usize::try_from(share - accounts.len() as u64).unwrap_or(MAX_PAGE).min(MAX_PAGE);
            let page = self
                .store()
                .list_accounts(&AccountQuery { status: None, limit, starting_after: after.as_ref() })
                .await?;
            let last = page.accounts.last().map(|account| account.account_id.clone());
            let seen = page.accounts.len() as u64;
            accounts.extend(page.accounts);
            lap_progress += seen;
            if page.has_more {
                after = last;
                continue;
            }
            // The end of the ids: a lap is done, and its size is known.
            lap_accounts = lap_progress;
            lap_progress = 0;
            after = None;
            if wrapped || lap_accounts == 0 {
                break;
            }
            wrapped = true;
        }
        let mut seen = BTreeSet::new();
        accounts.retain(|account| seen.insert(account.account_id.clone()));
        self.progress.phase("checking accounts", Some(accounts.len() as u64));
        let mut fetched = Vec::with_capacity(accounts.len());
        for account in accounts {
            let sent_at = self.now();
            let seed = seed_of(account.account_id.as_str());
            let object = paced(&self.pacer, seed, || {
                self.requests.fetch_add(1, Ordering::Relaxed);
                self.retrieve(&account)
            })
            .await;
            self.progress.advance(1);
            run.accounts_checked += 1;
            match object {
                Ok(object) => fetched.push(Fetched { account, object, sent_at }),
                Err(error) if error.refused_account_access() || error.status() == Some(404) => {
                    tracing::info!(
                        account_id = account.account_id.as_str(),
                        "the account is gone or no longer ours: its own event says so"
                    );
                }
                Err(error) => return Err(classify("GET /v1/accounts/{id}", error)),
            }
        }
        let drift_after = if lap_progress == 0 { None } else { fetched_last(&fetched).or(after) };
        Ok((fetched, drift_after, lap_accounts, lap_progress))
    }

    async fn retrieve(&self, account: &AccountState) -> Result<Value, StripeError> {
        self.stripe.retrieve_account_as(&account.account_id, account.api).await
    }

    /// Applies the listed events not recorded yet, oldest first; returns how many were gone
    /// through before the deadline (all of them, unless it came).
    async fn apply_events(
        &self,
        events: &[Listed],
        run: &mut ReconcileRun,
        deadline: Option<Instant>,
    ) -> Result<usize, ReconcileError> {
        self.progress.phase("replaying events", Some(events.len() as u64));
        for (index, event) in events.iter().enumerate() {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(index);
            }
            self.progress.advance(1);
            // One read spares the conditional write a duplicate would cost.
            if self.store().load_event(&event.id).await?.is_some() {
                continue;
            }
            let body = event.body.to_string();
            let version = event.body.get("api_version").and_then(Value::as_str);
            let delivered = match unread_api_version(version) {
                Some(reason) => {
                    tracing::warn!(event_id = event.id, reason, "listed event recorded unhandled");
                    self.webhook.record_unread(body.as_bytes(), reason).await
                }
                None => self.webhook.process_unsigned(body.as_bytes()).await,
            };
            match delivered {
                Ok(Delivery::Recorded(_)) => run.events_replayed += 1,
                Ok(Delivery::Duplicate) => {}
                Err(WebhookError::Store(error)) => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(event_id = event.id, reason = error.kind(), "a listed event was refused");
                }
            }
        }
        Ok(events.len())
    }

    /// Applies each re-fetched account that differs from its stored state, as a fetched object
    /// dated when its request left.
    async fn apply_drift(
        &self,
        fetched: &[Fetched],
        run: &mut ReconcileRun,
        now: i64,
    ) -> Result<(), ReconcileError> {
        for Fetched { account, object, sent_at } in fetched {
            let event_type = match account.api {
                AccountsApi::V1 => "account.updated",
                AccountsApi::V2 => "v2.core.account",
            };
            let Ok(object) = serde_json::value::to_raw_value(object) else { continue };
            let event = Event {
                id: format!("{DRIFT_RECORD_PREFIX}{}.{sent_at}", account.account_id),
                event_type: event_type.to_owned(),
                created: *sent_at,
                livemode: self.stripe.key_livemode(),
                api_version: None,
                account: Some(account.account_id.to_string()),
                object,
                previous_attributes: None,
            };
            let current = self.store().load_account(&account.account_id).await?;
            let changed = match AccountEvent::from_event(&event) {
                Ok(Some(account_event)) => match decide(&account_event, current.as_ref()) {
                    AccountDecision::Apply(next) => differs(current.as_ref(), &next),
                    AccountDecision::Stale | AccountDecision::Unreadable => false,
                },
                _ => false,
            };
            if !changed {
                continue;
            }
            tracing::info!(
                account_id = account.account_id.as_str(),
                "stored account differs from Stripe's: correcting"
            );
            match self.webhook.apply_fetched(&event, &event.id, now).await {
                Ok(Delivery::Recorded(crate::store::EventOutcome::Applied)) => run.accounts_corrected += 1,
                Ok(_) => {}
                Err(WebhookError::Store(error)) => return Err(error.into()),
                Err(error) => tracing::warn!(reason = error.kind(), "a re-fetched account was refused"),
            }
        }
        Ok(())
    }
}

/// An event listed under `Stripe-Account: account` is that account's, whatever its body says:
/// its `account` is set to the one it was listed for, so that a connected account's own charge
/// can never pass for one of the platform's (and plan a transfer from the platform's balance).
fn on_account(mut event: Value, account: &AccountId) -> Value {
    if let Some(fields) = event.as_object_mut() {
        fields.insert("account".to_owned(), Value::String(account.to_string()));
    }
    event
}

fn fetched_last(fetched: &[Fetched]) -> Option<AccountId> {
    fetched.last().map(|fetched| fetched.account.account_id.clone())
}

/// A listed event's id and `created` (a Unix time on v1, RFC 3339 on v2); `None` for anything
/// without an id.
fn listed(body: Value) -> Option<Listed> {
    let id = body.get("id")?.as_str()?.to_owned();
    let created = match body.get("created") {
        Some(Value::Number(number)) => number.as_i64().unwrap_or(0),
        Some(Value::String(text)) => parse_rfc3339(text).unwrap_or(0),
        _ => 0,
    };
    Some(Listed { id, created, body })
}

fn classify(call: &'static str, error: StripeError) -> ReconcileError {
    if error.refused_platform_key()
        || error.refused_account_access()
        || matches!(error, StripeError::Refused { .. })
    {
        ReconcileError::Refused { call, error }
    } else {
        ReconcileError::Stripe { call, error }
    }
}

/// The variable that sets the reconciler's Stripe requests per second.
pub const RECONCILE_RATE: &str = "CONNECT_FLOW_RECONCILE_RATE";
/// The variable that says how many runs a week the schedule makes (672 at every 15 minutes).
pub const RECONCILE_RUNS_PER_WEEK: &str = "CONNECT_FLOW_RECONCILE_RUNS_PER_WEEK";

impl ReconcileSettings {
    /// Reads [`RECONCILE_RATE`], [`RECONCILE_RUNS_PER_WEEK`] and the payout defaults through
    /// `lookup`; unset means the defaults, and anything unreadable is refused.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let set = |name| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let requests_per_second = match set(RECONCILE_RATE) {
            None => DEFAULT_REQUESTS_PER_SECOND,
            Some(value) => {
                value.parse().ok().filter(|rate| (1..=100).contains(rate)).ok_or(ConfigError::Invalid {
                    name: RECONCILE_RATE,
                    reason: "expected requests a second, 1 to 100",
                })?
            }
        };
        let runs_per_week = match set(RECONCILE_RUNS_PER_WEEK) {
            None => DEFAULT_RUNS_PER_WEEK,
            Some(value) => value.parse().ok().filter(|runs| *runs >= 1).ok_or(ConfigError::Invalid {
                name: RECONCILE_RUNS_PER_WEEK,
                reason: "expected a whole number of runs, at least 1",
            })?,
        };
        let payouts = PayoutSettings::from_lookup(&lookup)?;
        Ok(Self { requests_per_second, runs_per_week, payouts, ..Self::default() })
    }
}

/// How long before the invocation's deadline an unfinished run is stopped, so that the failure is
/// answered and logged rather than cut off by Lambda.
pub(crate) const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The reconciler's `Timeout` in infra/template.yaml: below its 15-minute schedule, so that runs
/// never overlap.
pub const RECONCILER_LAMBDA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(840);

/// The reconciler Lambda function's whole life: logs, the store, the queues and the Stripe key
/// read once per cold start, then one run per scheduled invocation, whatever its payload. A
/// failed run is the invocation's error, so that the function's `Errors` alarm tells.
pub fn run_reconciler_function()
-> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), lambda_runtime::Error>>>> {
    Box::pin(run_function())
}

async fn run_function() -> Result<(), lambda_runtime::Error> {
    use crate::config::WebhookSettings;

    crate::telemetry::init_lambda_logs();
    let lookup = |name: &str| std::env::var(name).ok();
    let settings = ReconcileSettings::from_lookup(lookup)?;
    let webhook_settings = WebhookSettings::without_signatures(lookup)?;
    let payouts = PayoutSettings::from_lookup(lookup)?;
    let aws = crate::aws::WORKER.load().await;
    let backend = crate::app::Backend::from_env(&aws)?.requiring_queues()?;
    let stripe = crate::sqs_worker::stripe_client_from_env(&aws).await?.with_metrics(Metrics::from_env());
    backend.run(DeployedReconciler { settings, webhook_settings, payouts, stripe }).await
}

/// The reconciler on whichever store the environment named.
struct DeployedReconciler {
    settings: ReconcileSettings,
    webhook_settings: crate::config::WebhookSettings,
    payouts: PayoutSettings,
    stripe: StripeClient,
}

impl crate::app::Wire for DeployedReconciler {
    type Output = Result<(), lambda_runtime::Error>;

    async fn wire<S: AccountStore + Clone>(
        self,
        store: S,
        queue: Option<Arc<dyn StepQueue>>,
    ) -> Self::Output {
        let queue =
            queue.ok_or(crate::config::ConfigError::Missing(crate::store::sqs::TRANSFERS_QUEUE_URL))?;
        let webhook = WebhookService::new(store, &self.webhook_settings)
            .with_payout_settings(self.payouts)
            .with_queue(Arc::clone(&queue));
        serve_runs(
            Reconciler::new(webhook, self.stripe, queue, self.settings).with_metrics(Metrics::from_env()),
        )
        .await
    }
}

/// One run per invocation, stopped [`DEADLINE_MARGIN`] before its deadline; a
/// deadline already past is not a real one (`cargo lambda watch` sends 1970) and is ignored.
async fn serve_runs<S: AccountStore>(reconciler: Reconciler<S>) -> Result<(), lambda_runtime::Error> {
    use lambda_runtime::LambdaEvent;
    use serde::de::IgnoredAny;
    let reconciler = Arc::new(reconciler);
    lambda_runtime::run(lambda_runtime::service_fn(move |event: LambdaEvent<IgnoredAny>| {
        let reconciler = Arc::clone(&reconciler);
        async move {
            let deadline = event
                .context
                .deadline()
                .duration_since(std::time::SystemTime::now())
                .ok()
                .map(|left| Instant::now() + left.saturating_sub(DEADLINE_MARGIN));
            reconciler.run(None, deadline).await.map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_outside_the_tested_range_are_not_read() {
        assert_eq!(unread_api_version(None), None);
        assert_eq!(unread_api_version(Some(crate::stripe::client::STRIPE_VERSION)), None);
        assert_eq!(unread_api_version(Some("2019-02-19")), None);
        assert_eq!(unread_api_version(Some(NEWEST_READ_API_VERSION)), None);
        let newer = unread_api_version(Some("2026-07-29.dahlia")).unwrap();
        assert!(newer.contains("2026-07-29.dahlia") && newer.contains(NEWEST_READ_API_VERSION), "{newer}");
        assert!(unread_api_version(Some("2015-10-16")).is_some());
    }

    #[test]
    fn the_drift_share_covers_a_lap_in_a_week_of_runs() {
        assert_eq!(drift_share(0, 672, 20, 500), 500);
        assert_eq!(drift_share(1_000_000, 672, 20, 500), 1489);
        assert_eq!(drift_share(100, 672, 20, 500), 20);
        // Every account of a lap is reached within runs_per_week runs.
        for lap in [1_u64, 671, 672, 673, 10_000, 999_999] {
            assert!(drift_share(lap, 672, 1, 500) * 672 >= lap, "{lap}");
        }
    }

    #[test]
    fn listed_events_read_v1_and_v2_creation_times() {
        let v1 = listed(serde_json::json!({"id": "evt_1", "created": 1_700_000_000})).unwrap();
        assert_eq!(v1.created, 1_700_000_000);
        let v2 = listed(serde_json::json!({"id": "evt_2", "created": "2024-03-07T18:27:56.000Z"})).unwrap();
        assert_eq!(v2.created, 1_709_836_076);
        assert!(listed(serde_json::json!({"created": 1})).is_none());
    }
}

#[cfg(test)]
mod scripted;
