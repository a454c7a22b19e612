//! The `connect-flow` command's parts, as a library so that tests can run them in-process.

pub mod bench;
pub mod commands;
pub mod doctor;
pub mod envelope;
pub mod load;
pub mod progress;
pub mod reconcile;
pub mod server;
