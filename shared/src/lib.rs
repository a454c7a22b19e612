//! Connect Flow's library: everything the Lambda functions and the `connect-flow` command share.

pub mod aws;
pub mod calendar;
pub mod config;
pub mod doctor;
pub mod domain;
pub mod eventbridge;
pub mod fetch;
pub mod metrics;
pub mod notifier;
pub mod platform;
pub mod reconcile;
pub mod secrets;
pub mod sqs_worker;
pub mod store;
pub mod stripe;
pub mod sweep;
pub mod sweeper;
pub mod telemetry;
pub mod webhook;
pub mod worker;
