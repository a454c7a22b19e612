//! The reconciler's own state: where its event replay resumes, where its drift check resumes, and
//! what its last runs did. Kept in one item of the store, written conditionally on its version.

use serde::{Deserialize, Serialize};

use super::account::AccountId;

/// How far back a reconciler with no usable cursor lists: the window Stripe itself retries in.
pub const FIRST_RUN_LOOKBACK_SECS: i64 = 3 * 24 * 60 * 60;
/// How much earlier than its cursor each run lists, so that an event Stripe lists a little after
/// its `created` is not missed; the dedupe record makes the overlap free of effects.
pub(crate) const CURSOR_OVERLAP_SECS: i64 = 10 * 60;
/// Stripe keeps events for 30 days; a cursor older than this is alarmed on before that closes.
pub const CURSOR_ALARM_AGE_SECS: i64 = 25 * 24 * 60 * 60;
/// How many runs the state keeps for the console and for `reconcile`'s report.
pub(crate) const RUNS_KEPT: usize = 20;

/// The reconciler's state, one item per deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcilerState {
    /// Bumped by every write; a write is conditional on the stored one being one lower.
    pub version: u64,
    /// Unix time up to which every event has been listed: the next run lists from here, less
    /// [`CURSOR_OVERLAP_SECS`].
    pub cursor: i64,
    /// The change feed's cursor at the last run: accounts changed after it are listed as active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_after: Option<String>,
    /// The last account the drift check re-fetched; the next run goes on after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_after: Option<AccountId>,
    /// How many accounts the last full lap of the drift check went through: each run checks enough
    /// of them that a lap takes at most a week.
    #[serde(default)]
    pub drift_lap_accounts: u64,
    /// Accounts checked so far in the lap under way.
    #[serde(default)]
    pub drift_lap_progress: u64,
    /// The newest runs, newest first, at most [`RUNS_KEPT`].
    #[serde(default)]
    pub runs: Vec<ReconcileRun>,
}

/// What one reconciler run did: its JSON report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileRun {
    /// Unix time it started.
    pub started_at: i64,
    /// Unix time it finished.
    pub finished_at: i64,
    /// Events listed from Stripe (platform, connected accounts and v2).
    pub events_listed: u64,
    /// Connected accounts whose own events were listed.
    #[serde(default)]
    pub accounts_listed: u64,
    /// Active accounts past the run's limit, whose events were not listed this run (the drift
    /// check still reaches them within the week).
    #[serde(default)]
    pub accounts_skipped: u64,
    /// Listed events that were not recorded yet, fed through the pipeline.
    pub events_replayed: u64,
    /// Steps the sweep sent back to their queue.
    pub steps_resumed: u64,
    /// Accounts re-fetched by the drift check.
    pub accounts_checked: u64,
    /// Of those, accounts whose stored state differed and was corrected.
    pub accounts_corrected: u64,
    /// Stripe requests the run made.
    pub stripe_requests: u64,
    /// The cursor the run leaves.
    pub cursor: i64,
    /// Why the run stopped short, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReconcilerState {
    /// Where a run at `now` lists from: the cursor less the overlap, or, with no state,
    /// [`FIRST_RUN_LOOKBACK_SECS`] ago.
    pub(crate) fn list_from(state: Option<&Self>, now: i64) -> i64 {
        match state {
            Some(state) if state.cursor > 0 => state.cursor.saturating_sub(CURSOR_OVERLAP_SECS),
            _ => now.saturating_sub(FIRST_RUN_LOOKBACK_SECS),
        }
    }

    /// Keeps `run` as the newest, dropping the oldest past [`RUNS_KEPT`].
    pub fn push_run(&mut self, run: ReconcileRun) {
        self.runs.insert(0, run);
        self.runs.truncate(RUNS_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_zero_cursor_lists_the_three_days_stripe_retries() {
        let now = 10_000_000;
        assert_eq!(ReconcilerState::list_from(None, now), now - FIRST_RUN_LOOKBACK_SECS);
        let zero = ReconcilerState::default();
        assert_eq!(ReconcilerState::list_from(Some(&zero), now), now - FIRST_RUN_LOOKBACK_SECS);
        let state = ReconcilerState { cursor: now - 900, ..Default::default() };
        assert_eq!(ReconcilerState::list_from(Some(&state), now), now - 900 - CURSOR_OVERLAP_SECS);
    }

    #[test]
    fn runs_keep_the_newest_first_and_at_most_the_limit() {
        let mut state = ReconcilerState::default();
        for started_at in 0..(RUNS_KEPT as i64 + 5) {
            state.push_run(ReconcileRun { started_at, ..Default::default() });
        }
        assert_eq!(state.runs.len(), RUNS_KEPT);
        assert_eq!(state.runs[0].started_at, RUNS_KEPT as i64 + 4);
        assert_eq!(state.runs[RUNS_KEPT - 1].started_at, 5);
    }
}
