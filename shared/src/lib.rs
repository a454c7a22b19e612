//! Connect Flow's library: everything the Lambda functions and the `connect-flow` command share.
//!
//! # Layers
//!
//! Each layer uses only the ones above it. Start reading at the domain: it is where the rules of
//! Connect live, and every other layer exists to feed it events and carry out its decisions.
//!
//! 1. **Domain**: pure rules and value types, no I/O and no clock of their own.
//!    [`domain`] (accounts and their onboarding state, fund flows, steps, payouts, the ledger,
//!    the change feed, fetches, the reconciler's cursor) and [`calendar`].
//! 2. **Ports**: the traits the application is written against. [`store::AccountStore`] (accounts,
//!    event records, steps, ledger, feed), [`store::StepQueue`] (where planned steps go),
//!    [`clock::Clock`], and the Stripe client's surface in [`stripe::client`].
//! 3. **Adapters**: the ports' implementations and the wire formats. [`store::dynamodb`],
//!    [`store::sqlite`], [`store::sqs`]; [`stripe`] (the HTTP client, signature verification,
//!    event envelopes, onboarding and Accounts v2 calls); [`secrets`] (Secrets Manager), [`aws`]
//!    (SDK settings per function), [`metrics`] and [`telemetry`].
//! 4. **Application**: the work, written against the ports. [`webhook`] (verify, parse, decide,
//!    commit, queue), [`http`] (the one router every front door runs), [`worker`] (transfer, reversal and payout steps), [`fetch`] (thin events'
//!    objects), [`eventbridge`] (the event-destination intake), [`platform`] (the API the
//!    platform's back end calls, and the console), [`reconcile`] and [`sweep`] (recovery),
//!    [`notifier`] (the change feed to EventBridge) and [`doctor`] (the set-up check).
//! 5. **Wiring**: [`app`] chooses the store and queue once per process; [`config`] reads the
//!    environment; [`sqs_worker`] and [`embedded_queue`] hand queue messages to the workers
//!    (SQS when deployed, the SQLite file's own queue locally). Each Lambda binary's `main.rs`
//!    is one call into this layer.
//!
//! The public face is re-exported below; the modules stay public because the binaries and the
//! integration tests reach into them.

pub mod app;
pub mod aws;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod doctor;
pub mod domain;
pub mod embedded_queue;
pub mod eventbridge;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod notifier;
pub mod platform;
pub mod reconcile;
pub mod secrets;
pub mod sqs_worker;
pub mod store;
pub mod stripe;
pub mod sweep;
pub mod telemetry;
pub mod webhook;
pub mod worker;

pub use app::{Backend, StartError, Wire};
pub use clock::{Clock, FixedClock, SystemClock};
pub use domain::account::{AccountDecision, AccountId, AccountState, OnboardingStatus, decide};
pub use domain::step::{Step, StepId, StepKind, StepStatus};
pub use store::{AccountStore, CommitOutcome, EventOutcome, StepQueue, StoreError};
pub use stripe::event::{Event, ParsedBody, parse_event};
pub use stripe::signature::{SignatureVerifier, WebhookSecret};
pub use webhook::WebhookService;
