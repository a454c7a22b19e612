//! `GET /console`: the operator's read-only page (DESIGN.md, "Recovery and operations").
//!
//! Split in two: [`gather`] reads a [`ConsoleView`] from the store with indexed reads only, and
//! [`render`] turns it into one self-contained HTML page (inline CSS and SVG, no script, nothing
//! fetched), escaping every value it interpolates.
//!
//! Store requests per page, at most: one `list_accounts` page per 100 accounts, every status
//! getting at least one, [`MAX_ACCOUNT_PAGES`] in all; one `list_open_steps` for each of queued,
//! in-flight and waiting; [`FEED_PAGES`] `list_changes` pages for failed steps; one
//! `load_reconciler`. The view counts them in [`ConsoleView::store_requests`]. On DynamoDB one
//! `list_changes` call may query each day partition of the feed's 30-day window, so the feed
//! costs up to 31 queries more there; nothing ever scans.

use std::collections::BTreeMap;
use std::fmt::{self, Display};

use crate::calendar::utc_rfc3339;
use crate::clock::Clock;
use crate::domain::account::{AccountState, OnboardingStatus, is_open_dispute};
use crate::domain::change::STEP_STATUS_CHANGED;
use crate::domain::reconcile::{CURSOR_ALARM_AGE_SECS, ReconcileRun};
use crate::domain::step::{Step, StepStatus};
use crate::store::{AccountQuery, AccountStore, MAX_PAGE, StoreError};

use super::{ApiError, ApiReply, PlatformApi};

/// The page's `Content-Type`.
pub const HTML: &str = "text/html; charset=utf-8";
/// Stuck accounts listed per onboarding status; the rest are counted.
pub(crate) const ACCOUNTS_SHOWN_PER_STATUS: usize = 50;
/// The most `list_accounts` pages one render reads (100 accounts each).
pub(crate) const MAX_ACCOUNT_PAGES: usize = 300;
/// Open steps counted per status; past this the count reads "1000+".
pub(crate) const OPEN_STEPS_COUNTED: usize = 1000;
/// Steps listed per table (the oldest open ones of each status, the oldest failed ones).
pub(crate) const STEPS_SHOWN: usize = 20;
/// The most change-feed pages read for failed steps (100 changes each).
pub(crate) const FEED_PAGES: usize = 20;
/// Failed payouts and dispute cases listed; the rest are counted.
pub(crate) const ROWS_SHOWN: usize = 50;
/// Reconciler runs shown, newest first.
pub(crate) const RUNS_SHOWN: usize = 10;
/// Requirements listed per account and list before "+N more".
const REQUIREMENTS_SHOWN: usize = 8;

/// Escapes `text` for HTML text and for quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A count, and whether reading stopped at a cap before the end (shown as "N+").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// What was counted.
    pub value: usize,
    /// Whether there are more than `value`.
    pub at_least: bool,
}

impl Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.value, if self.at_least { "+" } else { "" })
    }
}

/// Some rows, and how many more there are than shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    /// The rows shown.
    pub rows: Vec<T>,
    /// How many were left out.
    pub more: usize,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Self { rows: Vec::new(), more: 0 }
    }
}

/// What a stuck account still owes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StuckAccount {
    /// `acct_…` (a plain string: the page shows whatever the store holds).
    pub account_id: String,
    /// The platform's reference, when it created the account.
    pub reference: Option<String>,
    /// `requirements.disabled_reason`.
    pub disabled_reason: Option<String>,
    /// Requirements due now.
    pub currently_due: Vec<String>,
    /// Requirements overdue.
    pub past_due: Vec<String>,
    /// Submitted and being verified.
    pub pending_verification: Vec<String>,
    /// When `currently_due` must be met.
    pub current_deadline: Option<i64>,
    /// When the newest event about it was created.
    pub last_event_created: i64,
}

impl From<&AccountState> for StuckAccount {
    fn from(account: &AccountState) -> Self {
        Self {
            account_id: account.account_id.to_string(),
            reference: account.reference.clone(),
            disabled_reason: account.disabled_reason.clone(),
            currently_due: account.requirements.currently_due.clone(),
            past_due: account.requirements.past_due.clone(),
            pending_verification: account.requirements.pending_verification.clone(),
            current_deadline: account.requirements.current_deadline,
            last_event_created: account.last_event_created,
        }
    }
}

/// The accounts in one onboarding status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusGroup {
    /// The status.
    pub status: OnboardingStatus,
    /// How many accounts are in it.
    pub count: Count,
    /// Those not active: oldest deadline first, then by id.
    pub stuck: Listed<StuckAccount>,
}

/// One step as a table row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRow {
    /// The step's id.
    pub step_id: String,
    /// `transfer`, `reversal` or `payout`.
    pub kind: String,
    /// The account it pays or takes from.
    pub account_id: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// Why it waits.
    pub reason: Option<String>,
    /// Its last change.
    pub updated_at: i64,
}

impl From<&Step> for StepRow {
    fn from(step: &Step) -> Self {
        Self {
            step_id: step.step_id.to_string(),
            kind: step.kind.as_str().to_owned(),
            account_id: step.destination.to_string(),
            amount: step.amount,
            currency: step.currency.clone(),
            reason: step.reason.clone(),
            updated_at: step.updated_at,
        }
    }
}

/// The open steps in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepGroup {
    /// `queued`, `in_flight` or `waiting`.
    pub status: StepStatus,
    /// How many.
    pub count: Count,
    /// The oldest, by last change.
    pub oldest: Vec<StepRow>,
}

/// A step that failed or was refused, as the change feed told it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedStepRow {
    /// The step's id.
    pub step_id: String,
    /// `transfer`, `reversal` or `payout`.
    pub kind: String,
    /// The account it is about.
    pub account_id: String,
    /// `failed` or `refused`.
    pub status: String,
    /// Stripe's code, or why the plan was refused.
    pub reason: Option<String>,
    /// When it moved there.
    pub at: i64,
}

/// Failed and refused steps, read from the change feed (final steps are in no index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedSteps {
    /// The oldest found, at most [`STEPS_SHOWN`].
    pub rows: Vec<FailedStepRow>,
    /// How many were found.
    pub found: usize,
    /// Changes read.
    pub changes_read: usize,
    /// Whether the feed was read to its end (else only its oldest [`FEED_PAGES`] pages).
    pub complete: bool,
}

/// An account's newest failed payout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayoutFailureRow {
    /// The account.
    pub account_id: String,
    /// `po_…`.
    pub payout_id: String,
    /// Stripe's `failure_code`, or `canceled`.
    pub failure_code: String,
    /// When it failed.
    pub failed_at: i64,
    /// The payout step, when Connect Flow planned it.
    pub step_id: Option<String>,
}

/// One dispute case on one account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisputeRow {
    /// The account.
    pub account_id: String,
    /// `dp_…`.
    pub dispute_id: String,
    /// The disputed charge.
    pub charge_id: String,
    /// Stripe's dispute status.
    pub status: String,
    /// Lowercase ISO code.
    pub currency: String,
    /// The account's share no reversal takes back, minor units.
    pub unrecovered: i64,
}

/// Disputes over every account read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disputes {
    /// Accounts with at least one case.
    pub accounts: usize,
    /// Open cases.
    pub open: u64,
    /// Unrecovered amounts per currency, minor units.
    pub unrecovered: BTreeMap<String, i64>,
    /// Cases open or with an unrecovered amount: open first, then the largest amount.
    pub cases: Listed<DisputeRow>,
}

/// What the console knows of the reconciler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReconcilerView {
    /// No state stored: it has never run.
    #[default]
    NeverRun,
    /// The store refused, or the state did not read.
    Unreadable,
    /// Its cursor and newest runs, newest first.
    Runs {
        /// Unix time up to which events were listed.
        cursor: i64,
        /// The newest runs, at most [`RUNS_SHOWN`].
        runs: Vec<ReconcileRun>,
    },
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleView {
    /// When it was read.
    pub generated_at: i64,
    /// One group per onboarding status, in [`FUNNEL`] order.
    pub accounts: Vec<StatusGroup>,
    /// Queued, in-flight and waiting steps.
    pub steps: Vec<StepGroup>,
    /// Failed and refused steps.
    pub failed_steps: FailedSteps,
    /// Accounts whose newest payout failed: the longest-standing first.
    pub payout_failures: Listed<PayoutFailureRow>,
    /// Disputes.
    pub disputes: Disputes,
    /// The reconciler's last runs.
    pub reconciler: ReconcilerView,
    /// Store requests the view took.
    pub store_requests: usize,
}

/// The statuses in the funnel's order: from first contact to done, then the two dead ends.
pub(crate) const FUNNEL: [OnboardingStatus; 7] = [
    OnboardingStatus::Onboarding,
    OnboardingStatus::ActionRequired,
    OnboardingStatus::PendingVerification,
    OnboardingStatus::Restricted,
    OnboardingStatus::Active,
    OnboardingStatus::Rejected,
    OnboardingStatus::Deauthorized,
];

/// The open statuses the console lists steps of.
const OPEN_STEP_STATUSES: [StepStatus; 3] = [StepStatus::Queued, StepStatus::InFlight, StepStatus::Waiting];

impl ConsoleView {
    /// A view of an empty store at `now`.
    pub fn empty(now: i64) -> Self {
        Self {
            generated_at: now,
            accounts: FUNNEL
                .iter()
                .map(|&status| StatusGroup { status, count: Count::default(), stuck: Listed::default() })
                .collect(),
            steps: OPEN_STEP_STATUSES
                .iter()
                .map(|&status| StepGroup { status, count: Count::default(), oldest: Vec::new() })
                .collect(),
            failed_steps: FailedSteps { complete: true, ..Default::default() },
            payout_failures: Listed::default(),
            disputes: Disputes::default(),
            reconciler: ReconcilerView::NeverRun,
            store_requests: 0,
        }
    }
}

/// Keeps the `keep` smallest of `rows` by `key` once they pile up, so that memory stays bounded
/// however many accounts are read.
fn prune<T, K: Ord>(rows: &mut Vec<T>, keep: usize, key: impl Fn(&T) -> K, force: bool) {
    if force || rows.len() > keep.saturating_mul(4).max(64) {
        rows.sort_by_key(|row| key(row));
        rows.truncate(keep);
    }
}

fn stuck_key(account: &StuckAccount) -> (bool, i64, String) {
    (account.current_deadline.is_none(), account.current_deadline.unwrap_or(0), account.account_id.clone())
}

fn payout_key(row: &PayoutFailureRow) -> (i64, String) {
    (row.failed_at, row.account_id.clone())
}

fn dispute_key(row: &DisputeRow) -> (bool, std::cmp::Reverse<i64>, String) {
    (!is_open_dispute(&row.status), std::cmp::Reverse(row.unrecovered), row.dispute_id.clone())
}

/// Reads the console's view from `store` at `now`, with the bounded, indexed reads the module
/// documentation lists. A reconciler state that cannot be read shows as
/// [`ReconcilerView::Unreadable`]; any other store failure fails the page.
pub async fn gather<S: AccountStore>(store: &S, now: i64) -> Result<ConsoleView, StoreError> {
    let mut view = ConsoleView::empty(now);
    let mut requests = 0usize;
    let mut pages_left = MAX_ACCOUNT_PAGES;
    let mut payout_failures = Vec::new();
    let mut payout_failures_total = 0usize;
    let mut cases = Vec::new();
    let mut cases_total = 0usize;
    let statuses = view.accounts.len();
    for (index, group) in view.accounts.iter_mut().enumerate() {
        // Every status after this one keeps one page, so that each gets at least a first count.
        let reserved = statuses - index - 1;
        let mut allowed = pages_left.saturating_sub(reserved).max(1);
        let mut after = None;
        let mut stuck = Vec::new();
        loop {
            let query =
                AccountQuery { status: Some(group.status), limit: MAX_PAGE, starting_after: after.as_ref() };
            let page = store.list_accounts(&query).await?;
            requests += 1;
            allowed -= 1;
            pages_left = pages_left.saturating_sub(1);
            group.count.value += page.accounts.len();
            for account in &page.accounts {
                if group.status != OnboardingStatus::Active {
                    stuck.push(StuckAccount::from(account));
                }
                if let Some(failure) = &account.payout_failure {
                    payout_failures_total += 1;
                    payout_failures.push(PayoutFailureRow {
                        account_id: account.account_id.to_string(),
                        payout_id: failure.payout_id.clone(),
                        failure_code: failure.failure_code.clone(),
                        failed_at: failure.failed_at,
                        step_id: failure.step_id.as_ref().map(ToString::to_string),
                    });
                }
                let disputes = &account.disputes;
                if !disputes.cases.is_empty() {
                    view.disputes.accounts += 1;
                }
                view.disputes.open += u64::from(disputes.open);
                for (currency, amount) in &disputes.unrecovered {
                    let total = view.disputes.unrecovered.entry(currency.clone()).or_default();
                    *total = total.saturating_add(*amount);
                }
                for (dispute_id, case) in &disputes.cases {
                    if is_open_dispute(&case.status) || case.unrecovered > 0 {
                        cases_total += 1;
                        cases.push(DisputeRow {
                            account_id: account.account_id.to_string(),
                            dispute_id: dispute_id.clone(),
                            charge_id: case.charge_id.clone(),
                            status: case.status.clone(),
                            currency: case.currency.clone(),
                            unrecovered: case.unrecovered,
                        });
                    }
                }
            }
            prune(&mut stuck, ACCOUNTS_SHOWN_PER_STATUS, stuck_key, false);
            prune(&mut payout_failures, ROWS_SHOWN, payout_key, false);
            prune(&mut cases, ROWS_SHOWN, dispute_key, false);
            if !page.has_more {
                break;
            }
            if allowed == 0 {
                group.count.at_least = true;
                break;
            }
            after = page.accounts.last().map(|account| account.account_id.clone());
        }
        prune(&mut stuck, ACCOUNTS_SHOWN_PER_STATUS, stuck_key, true);
        group.stuck = Listed { more: group.count.value.saturating_sub(stuck.len()), rows: stuck };
    }
    prune(&mut payout_failures, ROWS_SHOWN, payout_key, true);
    view.payout_failures =
        Listed { more: payout_failures_total.saturating_sub(payout_failures.len()), rows: payout_failures };
    prune(&mut cases, ROWS_SHOWN, dispute_key, true);
    view.disputes.cases = Listed { more: cases_total.saturating_sub(cases.len()), rows: cases };

    for group in &mut view.steps {
        let steps = store.list_open_steps(group.status, i64::MAX, OPEN_STEPS_COUNTED + 1).await?;
        requests += 1;
        group.count =
            Count { value: steps.len().min(OPEN_STEPS_COUNTED), at_least: steps.len() > OPEN_STEPS_COUNTED };
        group.oldest = steps.iter().take(STEPS_SHOWN).map(StepRow::from).collect();
    }

    view.failed_steps = failed_steps(store, now, &mut requests).await?;

    requests += 1;
    view.reconciler = match store.load_reconciler().await {
        Ok(None) => ReconcilerView::NeverRun,
        Ok(Some(state)) => ReconcilerView::Runs {
            cursor: state.cursor,
            runs: state.runs.into_iter().take(RUNS_SHOWN).collect(),
        },
        Err(error) => {
            tracing::warn!(%error, "console: the reconciler state could not be read");
            ReconcilerView::Unreadable
        }
    };
    view.store_requests = requests;
    Ok(view)
}

/// Failed and refused steps from the change feed, oldest first, reading at most [`FEED_PAGES`]
/// pages: final steps leave the open-steps index, so the feed is the one indexed record of them.
async fn failed_steps<S: AccountStore>(
    store: &S,
    now: i64,
    requests: &mut usize,
) -> Result<FailedSteps, StoreError> {
    let mut failed = FailedSteps::default();
    let mut after: Option<String> = None;
    for _ in 0..FEED_PAGES {
        *requests += 1;
        let Some(page) = store.list_changes(after.as_deref(), MAX_PAGE, now).await? else {
            // The store did not take back its own cursor: show what was read, as incomplete.
            return Ok(failed);
        };
        failed.changes_read += page.changes.len();
        for change in &page.changes {
            let to = change.data.get("to").and_then(|to| to.as_str()).unwrap_or_default();
            if change.change_type != STEP_STATUS_CHANGED || !matches!(to, "failed" | "refused") {
                continue;
            }
            failed.found += 1;
            if failed.rows.len() < STEPS_SHOWN {
                let text =
                    |name: &str| change.data.get(name).and_then(|value| value.as_str()).map(str::to_owned);
                failed.rows.push(FailedStepRow {
                    step_id: text("step_id").unwrap_or_default(),
                    kind: text("kind").unwrap_or_default(),
                    account_id: change.account_id.to_string(),
                    status: to.to_owned(),
                    reason: text("reason"),
                    at: change.at,
                });
            }
        }
        if page.changes.len() < MAX_PAGE {
            failed.complete = true;
            break;
        }
        after = Some(page.next);
    }
    Ok(failed)
}

impl<S: AccountStore, C: Clock> PlatformApi<S, C> {
    /// `GET /console`.
    pub(super) async fn console(&self) -> Result<ApiReply, ApiError> {
        let view = gather(&self.store, self.clock.now_unix()).await?;
        Ok(ApiReply { status: 200, content_type: HTML, body: render(&view), location: None })
    }
}

/// The page being written: [`Html::text`] escapes every value, [`Html::raw`] takes only the
/// renderer's own literal markup.
struct Html(String);

impl Html {
    fn raw(&mut self, markup: &str) {
        self.0.push_str(markup);
    }

    fn text(&mut self, value: impl Display) {
        self.0.push_str(&escape(&value.to_string()));
    }

    fn time(&mut self, unix: i64) {
        self.text(when(unix));
    }

    fn optional(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.raw("<span class=\"none\">—</span>"),
        }
    }

    fn list(&mut self, items: &[String]) {
        if items.is_empty() {
            self.raw("<span class=\"none\">—</span>");
            return;
        }
        for item in items.iter().take(REQUIREMENTS_SHOWN) {
            self.raw("<code>");
            self.text(item);
            self.raw("</code> ");
        }
        if items.len() > REQUIREMENTS_SHOWN {
            self.raw("<span class=\"more\">+");
            self.text(items.len() - REQUIREMENTS_SHOWN);
            self.raw(" more</span>");
        }
    }

    fn more(&mut self, more: usize, what: &str) {
        if more > 0 {
            self.raw("<p class=\"more\">and ");
            self.text(more);
            self.raw(" more ");
            self.text(what);
            self.raw(" not listed</p>");
        }
    }
}

/// `yyyy-mm-dd hh:mm UTC`.
fn when(unix: i64) -> String {
    let stamp = utc_rfc3339(unix);
    match stamp.get(..16) {
        Some(minutes) => format!("{} UTC", minutes.replace('T', " ")),
        None => stamp,
    }
}

/// How long ago `then` was, coarsely.
fn age(now: i64, then: i64) -> String {
    let secs = now.saturating_sub(then);
    if secs < 0 {
        return "in the future".to_owned();
    }
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#0f2a47;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c8d6e5;font-size:13px}
main{padding:8px 24px 32px;max-width:1240px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin:16px 0}
h2{font-size:16px;margin:0 0 8px}
h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eff2f5;padding:0 3px;border-radius:3px;word-break:break-all}
.grid{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}
.grid>table{width:auto;min-width:260px}
.none{color:#8c959f}
.more{color:#57606a;font-style:italic}
.bad{color:#b42318;font-weight:600}
.ok{color:#1a7f37}
";

/// Renders the page.
pub(crate) fn render(view: &ConsoleView) -> String {
    let mut html = Html(String::with_capacity(64 * 1024));
    html.raw(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>Connect Flow · operator console</title><style>",
    );
    html.raw(STYLE);
    html.raw("</style></head><body><header><h1>Connect Flow · operator console</h1><p>Read-only. Generated ");
    html.time(view.generated_at);
    html.raw(" from ");
    html.text(view.store_requests);
    html.raw(" store reads. Amounts are in minor units.</p></header><main>");
    accounts_section(&mut html, view);
    steps_section(&mut html, view);
    payouts_section(&mut html, view);
    disputes_section(&mut html, view);
    reconciler_section(&mut html, view);
    html.raw("</main></body></html>");
    html.0
}

fn accounts_section(html: &mut Html, view: &ConsoleView) {
    html.raw("<section id=\"accounts\"><h2>Accounts by onboarding status</h2><div class=\"grid\">");
    html.raw(
        "<table class=\"counts\"><thead><tr><th>status</th><th class=\"n\">accounts</th></tr></thead><tbody>",
    );
    for group in &view.accounts {
        html.raw("<tr><td>");
        html.text(group.status.as_str());
        html.raw("</td><td class=\"n\" data-status=\"");
        html.text(group.status.as_str());
        html.raw("\">");
        html.text(group.count);
        html.raw("</td></tr>");
    }
    html.raw("</tbody></table>");
    funnel_svg(html, &view.accounts);
    html.raw("</div>");
    for group in view.accounts.iter().filter(|group| group.status != OnboardingStatus::Active) {
        if group.count.value == 0 {
            continue;
        }
        html.raw("<h3 id=\"stuck-");
        html.text(group.status.as_str());
        html.raw("\">");
        html.text(group.status.as_str());
        html.raw(" (");
        html.text(group.count);
        html.raw(
            ")</h3><table class=\"stuck\"><thead><tr><th>account</th><th>reference</th>\
                  <th>disabled reason</th><th>currently due</th><th>past due</th>\
                  <th>pending verification</th><th>deadline</th><th>last event</th></tr></thead><tbody>",
        );
        for account in &group.stuck.rows {
            html.raw("<tr><td><code>");
            html.text(&account.account_id);
            html.raw("</code></td><td>");
            html.optional(account.reference.as_deref());
            html.raw("</td><td>");
            html.optional(account.disabled_reason.as_deref());
            html.raw("</td><td>");
            html.list(&account.currently_due);
            html.raw("</td><td>");
            html.list(&account.past_due);
            html.raw("</td><td>");
            html.list(&account.pending_verification);
            html.raw("</td><td>");
            match account.current_deadline {
                Some(deadline) if deadline < view.generated_at => {
                    html.raw("<span class=\"bad\">");
                    html.time(deadline);
                    html.raw(" (passed)</span>");
                }
                Some(deadline) => html.time(deadline),
                None => html.raw("<span class=\"none\">—</span>"),
            }
            html.raw("</td><td>");
            html.text(age(view.generated_at, account.last_event_created));
            html.raw(" ago</td></tr>");
        }
        html.raw("</tbody></table>");
        html.more(group.stuck.more, "accounts");
    }
    html.raw("</section>");
}

/// A horizontal bar chart of the funnel, drawn here so that the page needs nothing else.
fn funnel_svg(html: &mut Html, groups: &[StatusGroup]) {
    const LABEL: usize = 170;
    const BAR: usize = 380;
    const ROW: usize = 28;
    let max = groups.iter().map(|group| group.count.value).max().unwrap_or(0).max(1);
    let height = groups.len() * ROW + 30;
    html.raw("<svg id=\"funnel\" xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" width=\"640\" height=\"");
    html.text(height);
    html.raw("\" viewBox=\"0 0 640 ");
    html.text(height);
    html.raw("\" aria-labelledby=\"funnel-title\"><title id=\"funnel-title\">Onboarding funnel: accounts per status</title>");
    html.raw("<text x=\"0\" y=\"14\" font-size=\"13\" font-weight=\"600\" fill=\"#1f2328\">Onboarding funnel</text>");
    for (row, group) in groups.iter().enumerate() {
        let y = 24 + row * ROW;
        // Bars scale to the largest status; a non-empty one stays visible however small.
        let width = match group.count.value {
            0 => 0,
            count => (count * BAR / max).max(2),
        };
        let colour = match group.status {
            OnboardingStatus::Active => "#2da44e",
            OnboardingStatus::Rejected | OnboardingStatus::Deauthorized => "#8c959f",
            OnboardingStatus::Restricted => "#cf222e",
            _ => "#d4a72c",
        };
        html.raw("<text x=\"0\" y=\"");
        html.text(y + 15);
        html.raw("\" font-size=\"12\" fill=\"#1f2328\">");
        html.text(group.status.as_str());
        html.raw("</text><rect class=\"bar\" x=\"");
        html.text(LABEL);
        html.raw("\" y=\"");
        html.text(y);
        html.raw("\" width=\"");
        html.text(width);
        html.raw("\" height=\"20\" rx=\"3\" fill=\"");
        html.text(colour);
        html.raw("\" data-status=\"");
        html.text(group.status.as_str());
        html.raw("\" data-count=\"");
        html.text(group.count.value);
        html.raw("\"></rect><text x=\"");
        html.text(LABEL + width + 6);
        html.raw("\" y=\"");
        html.text(y + 15);
        html.raw("\" font-size=\"12\" fill=\"#57606a\">");
        html.text(group.count);
        html.raw("</text>");
    }
    html.raw("</svg>");
}

fn steps_section(html: &mut Html, view: &ConsoleView) {
    let failed = &view.failed_steps;
    html.raw("<section id=\"steps\"><h2>Steps</h2><table class=\"counts\" style=\"width:auto\"><thead><tr>");
    html.raw("<th>status</th><th class=\"n\">steps</th></tr></thead><tbody>");
    for group in &view.steps {
        html.raw("<tr><td>");
        html.text(group.status.as_str());
        html.raw("</td><td class=\"n\" data-step-status=\"");
        html.text(group.status.as_str());
        html.raw("\">");
        html.text(group.count);
        html.raw("</td></tr>");
    }
    html.raw("<tr><td>failed or refused (change feed)</td><td class=\"n\" data-step-status=\"failed\">");
    html.text(Count { value: failed.found, at_least: !failed.complete });
    html.raw("</td></tr></tbody></table>");
    for group in view.steps.iter().filter(|group| !group.oldest.is_empty()) {
        html.raw("<h3>Oldest ");
        html.text(group.status.as_str());
        html.raw(
            "</h3><table><thead><tr><th>step</th><th>kind</th><th>account</th><th class=\"n\">amount</th>\
                  <th>reason</th><th>last change</th></tr></thead><tbody>",
        );
        for step in &group.oldest {
            html.raw("<tr><td><code>");
            html.text(&step.step_id);
            html.raw("</code></td><td>");
            html.text(&step.kind);
            html.raw("</td><td><code>");
            html.text(&step.account_id);
            html.raw("</code></td><td class=\"n\">");
            html.text(step.amount);
            html.raw(" ");
            html.text(&step.currency);
            html.raw("</td><td>");
            html.optional(step.reason.as_deref());
            html.raw("</td><td>");
            html.text(age(view.generated_at, step.updated_at));
            html.raw(" ago</td></tr>");
        }
        html.raw("</tbody></table>");
        html.more(group.count.value.saturating_sub(group.oldest.len()), "steps");
    }
    html.raw("<h3>Oldest failed or refused</h3>");
    if failed.rows.is_empty() {
        html.raw("<p class=\"none\">None in the change feed.</p>");
    } else {
        html.raw(
            "<table><thead><tr><th>step</th><th>kind</th><th>account</th><th>status</th><th>why</th>\
                  <th>when</th></tr></thead><tbody>",
        );
        for step in &failed.rows {
            html.raw("<tr><td><code>");
            html.text(&step.step_id);
            html.raw("</code></td><td>");
            html.text(&step.kind);
            html.raw("</td><td><code>");
            html.text(&step.account_id);
            html.raw("</code></td><td class=\"bad\">");
            html.text(&step.status);
            html.raw("</td><td>");
            html.optional(step.reason.as_deref());
            html.raw("</td><td>");
            html.time(step.at);
            html.raw("</td></tr>");
        }
        html.raw("</tbody></table>");
        html.more(failed.found.saturating_sub(failed.rows.len()), "failed steps");
    }
    if !failed.complete {
        html.raw("<p class=\"more\">Only the oldest ");
        html.text(failed.changes_read);
        html.raw(" changes of the feed were read; later failures are not counted here.</p>");
    }
    html.raw("</section>");
}

fn payouts_section(html: &mut Html, view: &ConsoleView) {
    let failures = &view.payout_failures;
    html.raw("<section id=\"payouts\"><h2>Failed payouts (");
    html.text(failures.rows.len() + failures.more);
    html.raw(")</h2>");
    if failures.rows.is_empty() {
        html.raw("<p class=\"none\">No account's newest payout failed.</p></section>");
        return;
    }
    html.raw(
        "<table><thead><tr><th>account</th><th>payout</th><th>failure code</th><th>failed</th>\
              <th>step</th></tr></thead><tbody>",
    );
    for failure in &failures.rows {
        html.raw("<tr><td><code>");
        html.text(&failure.account_id);
        html.raw("</code></td><td><code>");
        html.text(&failure.payout_id);
        html.raw("</code></td><td class=\"bad\">");
        html.text(&failure.failure_code);
        html.raw("</td><td>");
        html.time(failure.failed_at);
        html.raw("</td><td>");
        html.optional(failure.step_id.as_deref());
        html.raw("</td></tr>");
    }
    html.raw("</tbody></table>");
    html.more(failures.more, "failed payouts");
    html.raw("</section>");
}

fn disputes_section(html: &mut Html, view: &ConsoleView) {
    let disputes = &view.disputes;
    html.raw("<section id=\"disputes\"><h2>Disputes</h2><p><span data-disputes-open=\"");
    html.text(disputes.open);
    html.raw("\">");
    html.text(disputes.open);
    html.raw("</span> open, on ");
    html.text(disputes.accounts);
    html.raw(" accounts with disputes. Unrecovered: ");
    if disputes.unrecovered.is_empty() {
        html.raw("none");
    } else {
        for (index, (currency, amount)) in disputes.unrecovered.iter().enumerate() {
            if index > 0 {
                html.raw(", ");
            }
            html.raw("<span class=\"bad\">");
            html.text(amount);
            html.raw(" ");
            html.text(currency);
            html.raw("</span>");
        }
    }
    html.raw(".</p>");
    if !disputes.cases.rows.is_empty() {
        html.raw(
            "<table><thead><tr><th>account</th><th>dispute</th><th>charge</th><th>status</th>\
                  <th class=\"n\">unrecovered</th></tr></thead><tbody>",
        );
        for case in &disputes.cases.rows {
            html.raw("<tr><td><code>");
            html.text(&case.account_id);
            html.raw("</code></td><td><code>");
            html.text(&case.dispute_id);
            html.raw("</code></td><td><code>");
            html.text(&case.charge_id);
            html.raw("</code></td><td>");
            html.text(&case.status);
            html.raw("</td><td class=\"n\">");
            html.text(case.unrecovered);
            html.raw(" ");
            html.text(&case.currency);
            html.raw("</td></tr>");
        }
        html.raw("</tbody></table>");
        html.more(disputes.cases.more, "cases");
    }
    html.raw("</section>");
}

fn reconciler_section(html: &mut Html, view: &ConsoleView) {
    html.raw("<section id=\"reconciler\"><h2>Reconciler</h2>");
    match &view.reconciler {
        ReconcilerView::NeverRun => html.raw("<p class=\"none\">It has not run yet.</p>"),
        ReconcilerView::Unreadable => html
            .raw("<p class=\"bad\">Its state is unreadable: the store refused or holds a corrupt item.</p>"),
        ReconcilerView::Runs { cursor, runs } => {
            let cursor_age = view.generated_at.saturating_sub(*cursor);
            html.raw("<p>Cursor: ");
            if *cursor > 0 {
                html.time(*cursor);
                html.raw(" (");
                html.text(age(view.generated_at, *cursor));
                html.raw(" ago)");
            } else {
                html.raw("none");
            }
            if *cursor > 0 && cursor_age > CURSOR_ALARM_AGE_SECS {
                html.raw(" <span class=\"bad\">older than 25 days: Stripe keeps events for 30</span>");
            }
            html.raw("</p>");
            if runs.is_empty() {
                html.raw("<p class=\"none\">No runs recorded.</p>");
            } else {
                html.raw("<table><thead><tr><th>started</th><th class=\"n\">took</th><th class=\"n\">events listed</th>\
                          <th class=\"n\">replayed</th><th class=\"n\">steps resumed</th>\
                          <th class=\"n\">accounts checked</th><th class=\"n\">corrected</th>\
                          <th class=\"n\">Stripe requests</th><th>error</th></tr></thead><tbody>");
                for run in runs {
                    html.raw("<tr><td>");
                    html.time(run.started_at);
                    html.raw("</td><td class=\"n\">");
                    html.text(run.finished_at.saturating_sub(run.started_at));
                    html.raw("s</td>");
                    for value in [
                        run.events_listed,
                        run.events_replayed,
                        run.steps_resumed,
                        run.accounts_checked,
                        run.accounts_corrected,
                        run.stripe_requests,
                    ] {
                        html.raw("<td class=\"n\">");
                        html.text(value);
                        html.raw("</td>");
                    }
                    html.raw("<td>");
                    match &run.error {
                        Some(error) => {
                            html.raw("<span class=\"bad\">");
                            html.text(error);
                            html.raw("</span>");
                        }
                        None => html.raw("<span class=\"ok\">ok</span>"),
                    }
                    html.raw("</td></tr>");
                }
                html.raw("</tbody></table>");
            }
        }
    }
    html.raw("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::{AccountDispute, AccountId, PayoutFailure};
    use crate::domain::reconcile::ReconcilerState;
    use crate::domain::step::StepKind;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AccountWrite, CommitOutcome, EventRecord, EventWrite};

    const NOW: i64 = 1_790_000_000;
    const MARKUP: [&str; 4] =
        ["<script>alert(1)</script>", "\"><img src=x onerror=alert(2)>", "&amp;", "'onmouseover='alert(3)"];

    #[test]
    fn escape_replaces_the_five_characters_and_nothing_else() {
        assert_eq!(escape("a&b<c>d\"e'f"), "a&amp;b&lt;c&gt;d&quot;e&#39;f");
        assert_eq!(escape("acct_1Plain ünïcode"), "acct_1Plain ünïcode");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    /// Markup in every field that can carry text ends up only as escaped text.
    #[test]
    fn markup_in_account_and_step_fields_is_rendered_as_text() {
        let mut view = ConsoleView::empty(NOW);
        for (index, markup) in MARKUP.iter().enumerate() {
            let markup = (*markup).to_owned();
            let list = vec![markup.clone()];
            view.accounts[1].count.value += 1;
            view.accounts[1].stuck.rows.push(StuckAccount {
                account_id: format!("acct_{index}{markup}"),
                reference: Some(markup.clone()),
                disabled_reason: Some(markup.clone()),
                currently_due: list.clone(),
                past_due: list.clone(),
                pending_verification: list.clone(),
                current_deadline: Some(NOW + 60),
                last_event_created: NOW - 60,
            });
            view.steps[2].count.value += 1;
            view.steps[2].oldest.push(StepRow {
                step_id: markup.clone(),
                kind: markup.clone(),
                account_id: markup.clone(),
                amount: 100,
                currency: markup.clone(),
                reason: Some(markup.clone()),
                updated_at: NOW - 10,
            });
            view.failed_steps.found += 1;
            view.failed_steps.rows.push(FailedStepRow {
                step_id: markup.clone(),
                kind: markup.clone(),
                account_id: markup.clone(),
                status: markup.clone(),
                reason: Some(markup.clone()),
                at: NOW - 5,
            });
            view.payout_failures.rows.push(PayoutFailureRow {
                account_id: markup.clone(),
                payout_id: markup.clone(),
                failure_code: markup.clone(),
                failed_at: NOW - 5,
                step_id: Some(markup.clone()),
            });
            view.disputes.unrecovered.insert(markup.clone(), 5);
            view.disputes.cases.rows.push(DisputeRow {
                account_id: markup.clone(),
                dispute_id: markup.clone(),
                charge_id: markup.clone(),
                status: markup.clone(),
                currency: markup.clone(),
                unrecovered: 5,
            });
        }
        view.reconciler = ReconcilerView::Runs {
            cursor: NOW - 100,
            runs: vec![ReconcileRun { error: Some(MARKUP[0].to_owned()), ..Default::default() }],
        };
        let page = render(&view);
        for markup in MARKUP {
            let raw_count = page.matches(markup).count();
            // `&amp;` is itself the escape of `&`: raw, it may only appear inside `&amp;amp;`.
            if markup == "&amp;" {
                assert_eq!(raw_count, page.matches("&amp;amp;").count(), "raw {markup}");
            } else {
                assert_eq!(raw_count, 0, "{markup} reached the page unescaped");
            }
            assert!(page.matches(&escape(markup)).count() >= 20, "{markup} not shown as text");
        }
        assert!(!page.to_ascii_lowercase().contains("<script"), "a script element");
        assert!(!page.contains("<img"), "an img element");
        // Every tag on the page is one the renderer writes, and none carries an event handler.
        const TAGS: [&str; 26] = [
            "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "header", "h1", "p", "main",
            "section", "h2", "h3", "div", "table", "thead", "tbody", "tr", "th", "td", "code", "span", "svg",
            "text", "rect",
        ];
        for (start, _) in page.match_indices('<') {
            let tag = &page[start + 1..start + page[start..].find('>').unwrap()];
            let name = tag.trim_start_matches('/').split([' ', '>']).next().unwrap();
            assert!(TAGS.contains(&name), "a <{name}> tag came from data: <{tag}>");
            assert!(!tag.contains("onerror") && !tag.contains("onmouseover"), "a handler: <{tag}>");
        }
    }

    #[test]
    fn the_funnel_svg_draws_one_bar_per_status_scaled_to_the_largest() {
        let mut view = ConsoleView::empty(NOW);
        let counts = [40usize, 20, 10, 5, 100, 1, 0];
        for (group, count) in view.accounts.iter_mut().zip(counts) {
            group.count.value = count;
        }
        view.accounts[4].count.at_least = true;
        let page = render(&view);
        let svg_start = page.find("<svg id=\"funnel\"").expect("the funnel svg");
        let svg = &page[svg_start..page[svg_start..].find("</svg>").map(|end| svg_start + end).unwrap()];
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 7);
        for (status, count) in FUNNEL.iter().zip(counts) {
            let bar = format!("data-status=\"{}\" data-count=\"{count}\"", status.as_str());
            assert!(svg.contains(&bar), "{bar} in {svg}");
        }
        // Widths: active (the largest) spans the bar, onboarding 40%, a single account is visible.
        assert!(svg.contains("width=\"380\" height=\"20\" rx=\"3\" fill=\"#2da44e\""), "{svg}");
        assert!(svg.contains("width=\"152\" height=\"20\""), "{svg}");
        assert!(svg.contains("width=\"3\" height=\"20\""), "rejected: 1 of 100 rounds up to 3: {svg}");
        assert!(svg.contains("width=\"0\" height=\"20\""), "deauthorized: none");
        assert!(svg.contains(">100+</text>"), "a capped count says so: {svg}");
    }

    #[test]
    fn an_empty_store_renders_zero_counts_and_says_nothing_is_wrong() {
        let store = SqliteStore::in_memory().unwrap();
        let view = block_on(gather(&store, NOW)).unwrap();
        assert_eq!(view, ConsoleView { store_requests: 7 + 3 + 1 + 1, ..ConsoleView::empty(NOW) });
        let page = render(&view);
        assert!(page.starts_with("<!DOCTYPE html>"));
        for status in FUNNEL {
            assert!(page.contains(&format!("data-status=\"{}\" data-count=\"0\"", status.as_str())));
        }
        assert!(page.contains("It has not run yet."));
        assert!(page.contains("No account's newest payout failed."));
        assert!(page.contains("None in the change feed."));
        assert!(!page.contains("<h3 id=\"stuck-"), "no stuck table without accounts");
        assert!(!page.contains("<script"));
    }

    fn account(id: &str, status: OnboardingStatus, deadline: Option<i64>) -> AccountState {
        let mut account = AccountState::new(AccountId::parse(id).unwrap());
        account.onboarding_status = status;
        account.requirements.current_deadline = deadline;
        account.requirements.currently_due = vec![format!("{id}.external_account")];
        account.version = 1;
        account
    }

    fn put(store: &SqliteStore, account: &AccountState) {
        let write = AccountWrite { account, new_steps: &[], step_updates: &[], changes: &[] };
        assert_eq!(block_on(store.commit_account(&write)).unwrap(), CommitOutcome::Committed);
    }

    /// Runs a store future to completion: these tests are synchronous.
    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    /// Gathered from a store: counts per status, stuck accounts by oldest deadline and capped,
    /// payout failures, disputes, open and failed steps, and the reconciler's runs.
    #[test]
    fn gather_reads_counts_stuck_accounts_steps_payouts_disputes_and_runs() {
        let store = SqliteStore::in_memory().unwrap();
        let stuck = ACCOUNTS_SHOWN_PER_STATUS + 7;
        for n in 0..stuck {
            // Deadlines descend with n, and every fifth has none: those sort last.
            let deadline = (n % 5 != 0).then(|| NOW + 10_000 - n as i64);
            put(&store, &account(&format!("acct_1Due{n:04}"), OnboardingStatus::ActionRequired, deadline));
        }
        let mut failed_payout = account("acct_1Paid", OnboardingStatus::Active, None);
        failed_payout.payout_failure = Some(PayoutFailure {
            payout_id: "po_1Bounced".into(),
            failure_code: "account_closed".into(),
            failed_at: NOW - 3600,
            step_id: None,
        });
        failed_payout.disputes.cases.insert(
            "dp_1Open".into(),
            AccountDispute {
                charge_id: "ch_1Disputed".into(),
                status: "needs_response".into(),
                currency: "usd".into(),
                unrecovered: 1250,
            },
        );
        failed_payout.disputes.recount();
        put(&store, &failed_payout);
        let destination = AccountId::parse("acct_1Paid").unwrap();
        let mut waiting = Step::planned(
            StepKind::Transfer,
            "tr:pi_1:acct_1Paid",
            destination.clone(),
            500,
            "usd".into(),
            NOW - 900,
        );
        waiting.status = StepStatus::Waiting;
        waiting.reason = Some("transfers capability inactive".into());
        let mut refused = Step::planned(
            StepKind::Transfer,
            "tr:pi_2:acct_1Paid",
            destination,
            900,
            "usd".into(),
            NOW - 800,
        );
        refused.status = StepStatus::Refused;
        refused.reason = Some("splits exceed the amount".into());
        let record = EventRecord {
            event_id: "evt_1Plan".into(),
            event_type: "payment_intent.succeeded".into(),
            account_id: None,
            created: Some(NOW - 900),
            livemode: Some(false),
            outcome: crate::store::EventOutcome::Applied,
            reason: None,
            received_at: NOW - 900,
            expires_at: NOW + 86_400,
            fetch: None,
        };
        let steps = [waiting, refused];
        let changes = crate::domain::change::steps_changes(&[], &steps, &[], NOW - 900);
        let write = EventWrite { changes: &changes, ..EventWrite::with_steps(&record, &steps) };
        assert_eq!(block_on(store.commit(&write)).unwrap(), CommitOutcome::Committed);
        let mut state = ReconcilerState { version: 1, cursor: NOW - 600, ..Default::default() };
        state.push_run(ReconcileRun {
            started_at: NOW - 700,
            finished_at: NOW - 640,
            events_replayed: 3,
            ..Default::default()
        });
        assert_eq!(block_on(store.save_reconciler(&state, false)).unwrap(), CommitOutcome::Committed);

        let view = block_on(gather(&store, NOW)).unwrap();
        let counts: Vec<(OnboardingStatus, usize)> =
            view.accounts.iter().map(|group| (group.status, group.count.value)).collect();
        assert!(counts.contains(&(OnboardingStatus::ActionRequired, stuck)));
        assert!(counts.contains(&(OnboardingStatus::Active, 1)));
        let due =
            view.accounts.iter().find(|group| group.status == OnboardingStatus::ActionRequired).unwrap();
        assert_eq!(due.stuck.rows.len(), ACCOUNTS_SHOWN_PER_STATUS);
        assert_eq!(due.stuck.more, 7);
        // The latest n has the oldest deadline: listed first; accounts without one come last.
        assert_eq!(due.stuck.rows[0].account_id, format!("acct_1Due{:04}", stuck - 1));
        let deadlines: Vec<Option<i64>> = due.stuck.rows.iter().map(|row| row.current_deadline).collect();
        let mut sorted = deadlines.clone();
        sorted.sort_by_key(|deadline| (deadline.is_none(), *deadline));
        assert_eq!(deadlines, sorted);
        assert_eq!(view.payout_failures.rows.len(), 1);
        assert_eq!(view.payout_failures.rows[0].failure_code, "account_closed");
        assert_eq!((view.disputes.open, view.disputes.unrecovered.get("usd")), (1, Some(&1250)));
        assert_eq!(view.disputes.cases.rows[0].dispute_id, "dp_1Open");
        let waiting = view.steps.iter().find(|group| group.status == StepStatus::Waiting).unwrap();
        assert_eq!(waiting.count.value, 1);
        assert_eq!(waiting.oldest[0].reason.as_deref(), Some("transfers capability inactive"));
        assert_eq!(view.failed_steps.found, 1);
        assert_eq!(view.failed_steps.rows[0].status, "refused");
        assert_eq!(view.failed_steps.rows[0].reason.as_deref(), Some("splits exceed the amount"));
        assert!(view.failed_steps.complete);
        match &view.reconciler {
            ReconcilerView::Runs { cursor, runs } => {
                assert_eq!((*cursor, runs.len(), runs[0].events_replayed), (NOW - 600, 1, 3));
            }
            other => panic!("{other:?}"),
        }
        // One page per status, three step reads, one feed page, the reconciler.
        assert_eq!(view.store_requests, 7 + 3 + 1 + 1);
        let page = render(&view);
        assert!(page.contains("and 7 more accounts not listed"));
        assert!(page.contains("account_closed") && page.contains("dp_1Open"));
    }

    /// The route, as both front ends hand it over: HTML for `GET`, 405 for anything else.
    #[test]
    fn the_platform_api_answers_get_console_with_html_and_refuses_other_methods() {
        use crate::clock::FixedClock;
        let store = SqliteStore::in_memory().unwrap();
        put(&store, &account("acct_1Route", OnboardingStatus::Restricted, None));
        let api =
            PlatformApi::with_clock(store, None, super::super::PlatformSettings::default(), FixedClock(NOW));
        let request = |method| super::super::ApiRequest {
            method,
            path: "/console",
            query: "",
            body: b"",
            base_url: "",
        };
        let reply = block_on(api.handle(&request("GET")));
        assert_eq!((reply.status, reply.content_type), (200, "text/html; charset=utf-8"));
        assert!(
            reply.body.contains("acct_1Route")
                && reply.body.contains("data-status=\"restricted\" data-count=\"1\"")
        );
        for method in ["POST", "PUT", "DELETE"] {
            assert_eq!(block_on(api.handle(&request(method))).status, 405, "{method}");
        }
    }

    /// A store whose reconciler row is corrupt still renders the page, saying so.
    #[test]
    fn a_corrupt_reconciler_state_shows_as_unreadable_and_the_rest_still_renders() {
        let path = std::env::temp_dir().join(format!("connect-flow-console-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path, NOW).unwrap();
        put(&store, &account("acct_1Still", OnboardingStatus::Onboarding, None));
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("INSERT INTO reconciler (name, version, state) VALUES ('state', 1, '{not json')", [])
            .unwrap();
        let view = block_on(gather(&store, NOW)).unwrap();
        assert_eq!(view.reconciler, ReconcilerView::Unreadable);
        let page = render(&view);
        assert!(page.contains("Its state is unreadable"));
        assert!(page.contains("acct_1Still"), "the rest of the page is there");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
