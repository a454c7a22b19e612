//! Pure domain logic: no I/O.

pub mod account;
pub mod change;
pub mod fetch;
pub mod funds;
pub mod ledger;
pub mod payout;
pub mod reconcile;
pub mod reference;
pub mod step;
