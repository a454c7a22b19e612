//! What is left of the sweeper Lambda function once the reconciler ([`crate::reconcile`]) took over
//! its schedule and runs its step and payout sweeps ([`crate::sweep`]): the margin a scheduled run
//! keeps before its invocation's deadline.

use std::time::Duration;

/// How long before the invocation's deadline an unfinished scheduled run is stopped, so that the
/// failure is answered and logged rather than cut off by Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);
