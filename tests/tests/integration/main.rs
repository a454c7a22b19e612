//! Every integration test in one binary, so the AWS SDK and the library link once (issue 14): each
//! module is one area; `cargo test -p integration-tests --test integration MODULE::` runs one.

mod console;
mod contract;
mod doctor;
mod dynamodb_requests;
mod eventbridge;
mod fund_flow_requests;
mod lambda_runtime;
mod ledger;
mod load;
mod local_fund_flow;
mod logs;
mod money_safety;
mod money_safety_mix;
mod notifier;
mod observability;
mod payout_policy;
mod platform;
mod platform_v2;
mod reconcile;
mod scripted_fund_flow;
mod secrets;
mod security;
mod server;
mod sqs;
mod sqs_batches;
mod storage_faults;
mod stripe_client;
mod stripe_stub_reads;
mod template;
mod thin_events;
mod worker;
