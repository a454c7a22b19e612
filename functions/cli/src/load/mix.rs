//! A deterministic, realistic mix of Stripe events for load runs: account and capability
//! updates, payments with splits (both triggers), partial and full refunds, and exact duplicate
//! deliveries, in phases so that what the store must end up holding does not depend on timing.

use serde_json::{Value, json};

/// A small, seedable generator (SplitMix64): the same seed always gives the same mix.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: usize) -> usize {
        // The modulo bias is irrelevant at these bounds.
        (self.next_u64() % bound.max(1) as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next_u64() % (high - low + 1).max(1) as u64) as i64
    }

    /// True with the given chance, in percent.
    pub fn percent(&mut self, chance: usize) -> bool {
        self.below(100) < chance
    }
}

/// The onboarding state an `account.updated` describes; each maps to one onboarding status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Onboarding {
    /// Details not submitted yet.
    Onboarding,
    /// Something is due now.
    ActionRequired,
    /// Stripe is verifying what was sent.
    PendingVerification,
    /// Disabled for overdue requirements.
    Restricted,
    /// Charges and payouts enabled, nothing due.
    Active,
    /// Rejected by Stripe.
    Rejected,
}

/// The account fields an [`Onboarding`] state is sent with, and what the store must keep of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `details_submitted`.
    pub details_submitted: bool,
    /// `charges_enabled`.
    pub charges_enabled: bool,
    /// `payouts_enabled`.
    pub payouts_enabled: bool,
    /// `requirements.disabled_reason`.
    pub disabled_reason: Option<&'static str>,
    /// `requirements.currently_due`.
    pub currently_due: Vec<&'static str>,
    /// `requirements.past_due`.
    pub past_due: Vec<&'static str>,
    /// `requirements.pending_verification`.
    pub pending_verification: Vec<&'static str>,
    /// The `card_payments` capability's status.
    pub card_payments: &'static str,
    /// The `transfers` capability's status.
    pub transfers: &'static str,
}

impl Onboarding {
    /// The onboarding status the store must show for an account last described by this state.
    pub fn status(self) -> &'static str {
        match self {
            Self::Onboarding => "onboarding",
            Self::ActionRequired => "action_required",
            Self::PendingVerification => "pending_verification",
            Self::Restricted => "restricted",
            Self::Active => "active",
            Self::Rejected => "rejected",
        }
    }

    /// The fields an account in this state is sent with.
    pub fn profile(self) -> Profile {
        let base = Profile {
            details_submitted: true,
            charges_enabled: false,
            payouts_enabled: false,
            disabled_reason: None,
            currently_due: vec![],
            past_due: vec![],
            pending_verification: vec![],
            card_payments: "inactive",
            transfers: "inactive",
        };
        match self {
            Self::Onboarding => Profile {
                details_submitted: false,
                disabled_reason: Some("requirements.past_due"),
                currently_due: vec![
                    "business_profile.url",
                    "external_account",
                    "individual.dob.day",
                    "tos_acceptance.date",
                ],
                past_due: vec!["external_account", "tos_acceptance.date"],
                ..base
            },
            Self::ActionRequired => Profile {
                charges_enabled: true,
                currently_due: vec!["individual.verification.document"],
                card_payments: "active",
                transfers: "pending",
                ..base
            },
            Self::PendingVerification => Profile {
                pending_verification: vec!["individual.id_number"],
                card_payments: "pending",
                transfers: "pending",
                ..base
            },
            Self::Restricted => Profile {
                disabled_reason: Some("requirements.past_due"),
                past_due: vec!["external_account"],
                ..base
            },
            Self::Active => Profile {
                charges_enabled: true,
                payouts_enabled: true,
                card_payments: "active",
                transfers: "active",
                ..base
            },
            Self::Rejected => Profile { disabled_reason: Some("rejected.fraud"), ..base },
        }
    }
}

/// Which of a payment's two events triggers its transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `payment_intent.succeeded`.
    PaymentIntent,
    /// `charge.succeeded`.
    Charge,
}

/// What one event in the mix says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `account.updated` for `accounts[account]`.
    AccountUpdated {
        /// Index into [`Mix::accounts`].
        account: usize,
        /// The state it describes.
        state: Onboarding,
        /// Whether its payouts are on a manual schedule.
        manual_payouts: bool,
    },
    /// `capability.updated`.
    CapabilityUpdated {
        /// Index into [`Mix::accounts`].
        account: usize,
        /// `card_payments` or `transfers`.
        capability: &'static str,
        /// The capability's new status.
        status: &'static str,
    },
    /// A payment's `payment_intent.succeeded` or `charge.succeeded`.
    Payment {
        /// Index into [`Mix::payments`].
        payment: usize,
        /// Which of the two events.
        trigger: Trigger,
    },
    /// `charge.refunded` with a cumulative refunded amount.
    Refund {
        /// Index into [`Mix::payments`].
        payment: usize,
        /// Everything refunded so far, in minor units.
        amount_refunded: i64,
    },
}

/// One unique event of the mix.
#[derive(Debug, Clone)]
pub struct MixEvent {
    /// `evt_…`, unique to the run.
    pub id: String,
    /// The event type.
    pub event_type: &'static str,
    /// `created`: strictly increasing in the order the mix sends the events.
    pub created: i64,
    /// What it says.
    pub kind: Kind,
    /// The JSON body, signed afresh for each delivery.
    pub body: Vec<u8>,
}

/// What the splits of a payment are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// Every split names an account the mix creates: transfers are planned.
    Valid,
    /// One split names an account this deployment never saw: planned all the same, for the
    /// worker to check with Stripe.
    UnknownDestination,
    /// No `transfer:` metadata: nothing is planned.
    None,
}

/// A platform payment of the mix.
#[derive(Debug, Clone)]
pub struct MixPayment {
    /// `pi_…`: the key its steps are planned under.
    pub intent: String,
    /// `ch_…`: the transfers' `source_transaction`.
    pub charge: String,
    /// Minor units received.
    pub amount: i64,
    /// Its `transfer_group`, when set.
    pub transfer_group: Option<String>,
    /// `(destination account, minor units)`, in metadata order.
    pub splits: Vec<(String, i64)>,
    /// What the splits are.
    pub split_kind: SplitKind,
}

/// One delivery: an event, first or again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Index into [`Mix::events`].
    pub event: usize,
    /// Whether this delivers the event a second time.
    pub duplicate: bool,
}

/// A load run's whole mix. Phases are sent one after the other; within a phase, deliveries run
/// concurrently, in any order.
#[derive(Debug, Clone)]
pub struct Mix {
    /// The connected accounts the mix creates.
    pub accounts: Vec<String>,
    /// Accounts that payments name but that no event creates.
    pub unknown_accounts: Vec<String>,
    /// The payments.
    pub payments: Vec<MixPayment>,
    /// Every unique event.
    pub events: Vec<MixEvent>,
    /// The deliveries, phase by phase.
    pub phases: Vec<Vec<Delivery>>,
}

/// The currency of every payment in the mix.
pub const CURRENCY: &str = "usd";
/// Which share of events is delivered twice, in percent.
const DUPLICATE_PERCENT: usize = 5;

impl Mix {
    /// How many deliveries the mix holds.
    pub fn delivery_count(&self) -> usize {
        self.phases.iter().map(Vec::len).sum()
    }

    /// Generates at most `deliveries` deliveries from `seed`. `tag` (ASCII letters and digits)
    /// goes into every id, so that runs with other tags never touch each other's records;
    /// `first_created` is the first event's `created`.
    pub fn generate(seed: u64, tag: &str, deliveries: usize, first_created: i64) -> Self {
        let mut rng = Rng::new(seed);
        let share = |percent: usize| deliveries * percent / 100;
        let accounts: Vec<String> = (0..share(8).max(3)).map(|i| format!("acct_{tag}A{i}")).collect();
        let unknown_accounts: Vec<String> = (0..2).map(|i| format!("acct_{tag}Gone{i}")).collect();

        // Phase 1 creates every account, so that any payment later finds its destinations known.
        let mut phases: Vec<Vec<Kind>> = vec![Vec::new(); 4];
        for account in 0..accounts.len() {
            let state = pick(
                &mut rng,
                &[(Onboarding::Onboarding, 70), (Onboarding::ActionRequired, 10), (Onboarding::Active, 20)],
            );
            phases[0].push(Kind::AccountUpdated { account, state, manual_payouts: rng.percent(30) });
        }
        // Later account changes go anywhere after phase 1: they do not change what a payment plans.
        for _ in 0..share(24) {
            let state = pick(
                &mut rng,
                &[
                    (Onboarding::Active, 45),
                    (Onboarding::ActionRequired, 15),
                    (Onboarding::PendingVerification, 15),
                    (Onboarding::Restricted, 12),
                    (Onboarding::Onboarding, 8),
                    (Onboarding::Rejected, 5),
                ],
            );
            let kind = Kind::AccountUpdated {
                account: rng.below(accounts.len()),
                state,
                manual_payouts: rng.percent(30),
            };
            phases[1 + rng.below(3)].push(kind);
        }
        for _ in 0..share(12) {
            let capability = if rng.percent(50) { "card_payments" } else { "transfers" };
            let status = pick(&mut rng, &[("active", 60), ("pending", 20), ("inactive", 20)]);
            let kind = Kind::CapabilityUpdated { account: rng.below(accounts.len()), capability, status };
            phases[1 + rng.below(3)].push(kind);
        }
        // Payments in phase 2 (both triggers race each other), partial refunds in phase 3, full
        // refunds in phase 4: the reversals a refund plans depend on the refunds recorded before it.
        let mut payments = Vec::new();
        for index in 0..share(22).max(1) {
            let payment = new_payment(&mut rng, tag, index, &accounts, &unknown_accounts);
            phases[1].push(Kind::Payment { payment: index, trigger: Trigger::PaymentIntent });
            if rng.percent(60) {
                phases[1].push(Kind::Payment { payment: index, trigger: Trigger::Charge });
            }
            if payment.split_kind == SplitKind::Valid && rng.percent(35) {
                let partial = rng.between(1, payment.amount - 1);
                phases[2].push(Kind::Refund { payment: index, amount_refunded: partial });
                if rng.percent(50) {
                    phases[3].push(Kind::Refund { payment: index, amount_refunded: payment.amount });
                }
            }
            payments.push(payment);
        }

        let mut mix = Self { accounts, unknown_accounts, payments, events: Vec::new(), phases: Vec::new() };
        let mut created = first_created;
        for kinds in &mut phases {
            shuffle(&mut rng, kinds);
            let mut deliveries = Vec::new();
            for kind in kinds.drain(..) {
                let event = mix.events.len();
                mix.events.push(mix.event(tag, event, created, kind));
                created += 1;
                deliveries.push(Delivery { event, duplicate: false });
            }
            // A duplicate is the same event again, later in the same phase: concurrent runs may
            // still deliver it while the first delivery is in flight, as Stripe's retries can.
            let firsts = deliveries.len();
            for position in 0..firsts {
                if rng.percent(DUPLICATE_PERCENT) {
                    let event = deliveries[position].event;
                    let at = position + 1 + rng.below(deliveries.len() - position);
                    deliveries.insert(at, Delivery { event, duplicate: true });
                }
            }
            mix.phases.push(deliveries);
        }
        mix.truncate(deliveries);
        mix
    }

    /// Drops the last deliveries beyond `limit`.
    fn truncate(&mut self, limit: usize) {
        let mut left = limit;
        for phase in &mut self.phases {
            phase.truncate(left);
            left -= phase.len();
        }
    }

    fn event(&self, tag: &str, index: usize, created: i64, kind: Kind) -> MixEvent {
        let id = format!("evt_{tag}E{index:07}");
        let (event_type, account, object, previous): (&'static str, Option<&str>, Value, Option<Value>) =
            match &kind {
                Kind::AccountUpdated { account, state, manual_payouts } => {
                    let account_id = &self.accounts[*account];
                    let object = account_object(account_id, *account, *state, *manual_payouts, created);
                    (
                        "account.updated",
                        Some(account_id),
                        object,
                        Some(json!({ "requirements": { "currently_due": [] } })),
                    )
                }
                Kind::CapabilityUpdated { account, capability, status } => {
                    let account_id = &self.accounts[*account];
                    let object = capability_object(account_id, capability, status, created);
                    ("capability.updated", Some(account_id), object, Some(json!({ "status": "pending" })))
                }
                Kind::Payment { payment, trigger: Trigger::PaymentIntent } => {
                    ("payment_intent.succeeded", None, intent_object(&self.payments[*payment], created), None)
                }
                Kind::Payment { payment, trigger: Trigger::Charge } => {
                    ("charge.succeeded", None, charge_object(&self.payments[*payment], 0, created), None)
                }
                Kind::Refund { payment, amount_refunded } => {
                    let object = charge_object(&self.payments[*payment], *amount_refunded, created);
                    (
                        "charge.refunded",
                        None,
                        object,
                        Some(json!({ "amount_refunded": 0, "refunded": false })),
                    )
                }
            };
        let mut data = json!({ "object": object });
        if let Some(previous) = previous {
            data["previous_attributes"] = previous;
        }
        let mut envelope = json!({
            "id": id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": created,
            "data": data,
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": event_type,
        });
        if let Some(account) = account {
            envelope["account"] = json!(account);
        }
        MixEvent { id, event_type, created, kind, body: envelope.to_string().into_bytes() }
    }
}

fn pick<T: Copy>(rng: &mut Rng, weighted: &[(T, usize)]) -> T {
    let total: usize = weighted.iter().map(|(_, weight)| weight).sum();
    let mut roll = rng.below(total);
    for (value, weight) in weighted {
        if roll < *weight {
            return *value;
        }
        roll -= weight;
    }
    weighted[weighted.len() - 1].0
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

fn new_payment(
    rng: &mut Rng,
    tag: &str,
    index: usize,
    accounts: &[String],
    unknown_accounts: &[String],
) -> MixPayment {
    let amount = rng.between(1_000, 50_000);
    let split_kind =
        pick(rng, &[(SplitKind::Valid, 85), (SplitKind::UnknownDestination, 7), (SplitKind::None, 8)]);
    let mut splits = Vec::new();
    if split_kind != SplitKind::None {
        let count = (1 + rng.below(3)).min(accounts.len());
        // The sellers share 50–95% of the payment; the platform keeps the rest.
        let mut left = amount * rng.between(50, 95) / 100;
        let first = rng.below(accounts.len());
        for n in 0..count {
            let share = if n + 1 == count { left } else { left * rng.between(20, 60) / 100 };
            left -= share;
            splits.push((accounts[(first + n) % accounts.len()].clone(), share.max(1)));
        }
        if split_kind == SplitKind::UnknownDestination {
            let unknown = unknown_accounts[rng.below(unknown_accounts.len())].clone();
            splits[0].0 = unknown;
        }
    }
    MixPayment {
        intent: format!("pi_{tag}P{index}"),
        charge: format!("ch_{tag}P{index}"),
        amount,
        transfer_group: rng.percent(50).then(|| format!("group_{tag}_order{index}")),
        splits,
        split_kind,
    }
}

fn account_object(
    account_id: &str,
    index: usize,
    state: Onboarding,
    manual_payouts: bool,
    created: i64,
) -> Value {
    let profile = state.profile();
    let external_accounts: Vec<Value> = if profile.details_submitted {
        vec![json!({
            "id": format!("ba_{}", &account_id[5..]), "object": "bank_account", "account": account_id,
            "account_holder_name": format!("Seller {index}"), "account_holder_type": "individual",
            "available_payout_methods": ["standard"], "bank_name": "STRIPE TEST BANK", "country": "US",
            "currency": "usd", "default_for_currency": true, "fingerprint": "1JWtPxqbdX5Gamtc",
            "last4": "6789", "metadata": {}, "routing_number": "110000000", "status": "new"
        })]
    } else {
        Vec::new()
    };
    let requirements = json!({
        "alternatives": [], "current_deadline": null, "currently_due": profile.currently_due,
        "disabled_reason": profile.disabled_reason, "errors": [], "eventually_due": profile.currently_due,
        "past_due": profile.past_due, "pending_verification": profile.pending_verification
    });
    json!({
        "id": account_id, "object": "account",
        "business_profile": {
            "mcc": "5734", "name": format!("Seller {index}"), "product_description": "Handmade goods",
            "support_email": format!("seller{index}@example.com"), "url": format!("https://seller{index}.example")
        },
        "business_type": "individual",
        "capabilities": { "card_payments": profile.card_payments, "transfers": profile.transfers },
        "charges_enabled": profile.charges_enabled, "country": "US", "created": created - 86_400,
        "default_currency": "usd", "details_submitted": profile.details_submitted,
        "email": format!("seller{index}@example.com"),
        "external_accounts": {
            "object": "list", "data": external_accounts, "has_more": false,
            "url": format!("/v1/accounts/{account_id}/external_accounts")
        },
        "future_requirements": {
            "alternatives": [], "current_deadline": null, "currently_due": [], "disabled_reason": null,
            "errors": [], "eventually_due": [], "past_due": [], "pending_verification": []
        },
        "metadata": {}, "payouts_enabled": profile.payouts_enabled, "requirements": requirements,
        "settings": {
            "payouts": {
                "debit_negative_balances": true,
                "schedule": { "delay_days": 2, "interval": if manual_payouts { "manual" } else { "daily" } },
                "statement_descriptor": null
            }
        },
        "tos_acceptance": { "date": created - 86_000 }, "type": "express"
    })
}

fn capability_object(account_id: &str, capability: &str, status: &str, created: i64) -> Value {
    let requirements = json!({
        "alternatives": [], "current_deadline": null, "currently_due": [], "disabled_reason": null,
        "errors": [], "eventually_due": [], "past_due": [], "pending_verification": []
    });
    json!({
        "id": capability, "object": "capability", "account": account_id,
        "future_requirements": requirements.clone(), "requested": true, "requested_at": created - 3_600,
        "requirements": requirements, "status": status
    })
}

fn split_metadata(payment: &MixPayment) -> Value {
    let mut metadata = json!({ "order_id": format!("order_{}", &payment.intent[3..]) });
    for (account, amount) in &payment.splits {
        metadata[format!("transfer:{account}")] = json!(amount.to_string());
    }
    metadata
}

fn intent_object(payment: &MixPayment, created: i64) -> Value {
    json!({
        "id": payment.intent, "object": "payment_intent", "amount": payment.amount, "amount_capturable": 0,
        "amount_received": payment.amount, "application": null, "application_fee_amount": null,
        "automatic_payment_methods": { "allow_redirects": "always", "enabled": true },
        "canceled_at": null, "cancellation_reason": null, "capture_method": "automatic_async",
        "client_secret": format!("{}_secret_load", payment.intent), "confirmation_method": "automatic",
        "created": created - 5, "currency": CURRENCY, "customer": null, "description": "Marketplace order",
        "last_payment_error": null, "latest_charge": payment.charge, "livemode": false,
        "metadata": split_metadata(payment), "next_action": null, "on_behalf_of": null,
        "payment_method": "pm_card_visa", "payment_method_types": ["card"], "processing": null,
        "receipt_email": null, "review": null, "setup_future_usage": null, "shipping": null, "source": null,
        "statement_descriptor": null, "status": "succeeded", "transfer_data": null,
        "transfer_group": payment.transfer_group
    })
}

fn charge_object(payment: &MixPayment, amount_refunded: i64, created: i64) -> Value {
    let refunds: Vec<Value> = if amount_refunded > 0 {
        vec![json!({
            "id": format!("re_{}R{amount_refunded}", &payment.charge[3..]), "object": "refund",
            "amount": amount_refunded, "charge": payment.charge, "created": created, "currency": CURRENCY,
            "payment_intent": payment.intent, "reason": "requested_by_customer", "status": "succeeded"
        })]
    } else {
        Vec::new()
    };
    json!({
        "id": payment.charge, "object": "charge", "amount": payment.amount, "amount_captured": payment.amount,
        "amount_refunded": amount_refunded, "balance_transaction": format!("txn_{}", &payment.charge[3..]),
        "billing_details": { "address": { "country": "US", "postal_code": "94103" }, "email": null, "name": "Buyer" },
        "captured": true, "created": created - 5, "currency": CURRENCY, "description": "Marketplace order",
        "disputed": false, "livemode": false, "metadata": split_metadata(payment), "paid": true,
        "payment_intent": payment.intent, "payment_method": "pm_card_visa",
        "payment_method_details": { "card": { "brand": "visa", "last4": "4242" }, "type": "card" },
        "refunded": amount_refunded == payment.amount,
        "refunds": { "object": "list", "data": refunds, "has_more": false,
                     "url": format!("/v1/charges/{}/refunds", payment.charge) },
        "status": "succeeded", "transfer_group": payment.transfer_group
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mix_and_another_seed_another() {
        let body = |mix: &Mix| mix.events.iter().map(|event| event.body.clone()).collect::<Vec<_>>();
        let a = Mix::generate(7, "T", 500, 1_000);
        assert_eq!(body(&a), body(&Mix::generate(7, "T", 500, 1_000)));
        assert_ne!(body(&a), body(&Mix::generate(8, "T", 500, 1_000)));
    }

    #[test]
    fn the_mix_is_bounded_and_holds_every_kind() {
        let mix = Mix::generate(1, "T", 1_000, 1_000);
        assert!(mix.delivery_count() <= 1_000 && mix.delivery_count() > 800, "{}", mix.delivery_count());
        for event_type in [
            "account.updated",
            "capability.updated",
            "payment_intent.succeeded",
            "charge.succeeded",
            "charge.refunded",
        ] {
            assert!(mix.events.iter().any(|event| event.event_type == event_type), "no {event_type}");
        }
        assert!(mix.phases.iter().flatten().any(|delivery| delivery.duplicate));
        for kind in [SplitKind::Valid, SplitKind::UnknownDestination, SplitKind::None] {
            assert!(mix.payments.iter().any(|payment| payment.split_kind == kind), "no {kind:?}");
        }
        let created: Vec<i64> = mix
            .phases
            .iter()
            .flatten()
            .filter(|d| !d.duplicate)
            .map(|d| mix.events[d.event].created)
            .collect();
        assert!(created.windows(2).all(|pair| pair[0] < pair[1]), "created increases in sending order");
    }

    #[test]
    fn splits_never_exceed_the_payment() {
        let mix = Mix::generate(3, "T", 2_000, 1_000);
        for payment in &mix.payments {
            let total: i64 = payment.splits.iter().map(|(_, amount)| amount).sum();
            assert!(total <= payment.amount, "{payment:?}");
            assert!(payment.splits.iter().all(|(_, amount)| *amount > 0));
        }
    }
}
