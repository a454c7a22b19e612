//! Pure domain logic: no I/O.

pub mod account;
pub mod funds;
pub mod step;
