//! Stripe's side of the wire: webhook signatures, the event envelope, and the API client.

pub mod api;
pub mod client;
pub mod endpoints;
pub mod event;
pub mod events;
pub mod onboarding;
pub mod signature;
pub mod v2;
pub mod v2_accounts;
