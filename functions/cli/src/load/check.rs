//! The exactly-once check after a load run: what the store must hold, computed from the mix by
//! hand arithmetic (not by the planning code under test), compared with what it does hold.

use std::collections::{BTreeMap, BTreeSet};

use shared::domain::account::{AccountId, AccountState};
use shared::domain::step::{Step, StepKind, StepStatus};
use shared::store::{AccountStore, EventRecord, StoreError};

use super::mix::{CURRENCY, Kind, Mix, Onboarding, SplitKind, Trigger};
use super::run::Answer;

/// What an account must look like after the run: its newest `account.updated` and, for each
/// capability, its newest word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedAccount {
    /// The state of the newest `account.updated`.
    pub state: Onboarding,
    /// Its payout schedule.
    pub manual_payouts: bool,
    /// Each capability's newest status.
    pub capabilities: BTreeMap<String, String>,
    /// The newest event of any kind about the account.
    pub last_event_id: String,
    /// That event's `created`.
    pub last_event_created: i64,
    created_of_state: i64,
    created_of_capability: BTreeMap<String, i64>,
}

/// A step the run must have planned, exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedStep {
    /// Transfer or reversal.
    pub kind: StepKind,
    /// Who receives (or gives back).
    pub destination: String,
    /// Minor units.
    pub amount: i64,
    /// The charge it is funded from or undoes.
    pub source_charge: String,
    /// The payment's group, or its payment intent id.
    pub transfer_group: String,
    /// Queued (nothing runs the workers during a load run), or refused once a refund took it
    /// back whole.
    pub status: StepStatus,
}

/// The outcomes one unique event's first delivery may be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// Any one of these.
    OneOf(&'static [&'static str]),
    /// A payment trigger: between the payment's triggers that were sent, exactly one has the
    /// payment's outcome and the others `unchanged`.
    Trigger { payment: usize, outcome: &'static str },
}

/// What the store must hold after the deliveries that were sent.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// Every account an event created, by id.
    pub accounts: BTreeMap<String, ExpectedAccount>,
    /// Accounts that payments named but that no event created: they must stay unknown.
    pub unknown_accounts: Vec<String>,
    /// Every planned step, by id.
    pub steps: BTreeMap<String, ExpectedStep>,
    /// The unique events that were sent, by index into the mix.
    pub events: BTreeSet<usize>,
}

impl Expected {
    /// The model for `mix` when the events marked in `sent` were delivered at least once.
    pub fn of(mix: &Mix, sent: &[bool]) -> Self {
        let mut expected = Self { unknown_accounts: mix.unknown_accounts.clone(), ..Self::default() };
        let mut refunds: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        let mut paid = BTreeSet::new();
        for (index, event) in mix.events.iter().enumerate().filter(|(index, _)| sent[*index]) {
            expected.events.insert(index);
            match &event.kind {
                Kind::AccountUpdated { account, state, manual_payouts } => {
                    let profile = state.profile();
                    let entry =
                        expected.account(&mix.accounts[*account], *state, *manual_payouts, event.created);
                    if event.created > entry.created_of_state {
                        entry.state = *state;
                        entry.manual_payouts = *manual_payouts;
                        entry.created_of_state = event.created;
                    }
                    entry.set_capability("card_payments", profile.card_payments, event.created);
                    entry.set_capability("transfers", profile.transfers, event.created);
                    entry.saw(&event.id, event.created);
                }
                Kind::CapabilityUpdated { account, capability, status } => {
                    // An account always has an account.updated in phase 1, before any of these.
                    if let Some(entry) = expected.accounts.get_mut(&mix.accounts[*account]) {
                        entry.set_capability(capability, status, event.created);
                        entry.saw(&event.id, event.created);
                    }
                }
                Kind::Payment { payment, .. } => {
                    paid.insert(*payment);
                }
                Kind::Refund { payment, amount_refunded } => {
                    refunds.entry(*payment).or_default().push(*amount_refunded);
                }
            }
        }
        for payment_index in paid {
            let payment = &mix.payments[payment_index];
            let group = payment.transfer_group.clone().unwrap_or_else(|| payment.intent.clone());
            // A destination this deployment never heard of is planned like any other: the worker
            // asks Stripe before it sends.
            if payment.split_kind == SplitKind::None {
                continue;
            }
            // Nothing runs the workers during a load run, so every transfer is still unsent when
            // its refunds arrive, in whatever order: the largest refund nets each one down to
            // split − floor(split × refunded / amount), and no reversal is planned.
            let refunded = refunds.get(&payment_index).into_iter().flatten().copied().max().unwrap_or(0);
            for (destination, amount) in &payment.splits {
                let left = amount - amount * refunded / payment.amount;
                let status = if left == 0 { StepStatus::Refused } else { StepStatus::Queued };
                expected.steps.insert(
                    format!("tr:{}:{destination}", payment.intent),
                    ExpectedStep {
                        kind: StepKind::Transfer,
                        destination: destination.clone(),
                        amount: left,
                        source_charge: payment.charge.clone(),
                        transfer_group: group.clone(),
                        status,
                    },
                );
            }
        }
        expected
    }

    fn account(
        &mut self,
        id: &str,
        state: Onboarding,
        manual_payouts: bool,
        created: i64,
    ) -> &mut ExpectedAccount {
        self.accounts.entry(id.to_owned()).or_insert_with(|| ExpectedAccount {
            state,
            manual_payouts,
            capabilities: BTreeMap::new(),
            last_event_id: String::new(),
            last_event_created: i64::MIN,
            created_of_state: created,
            created_of_capability: BTreeMap::new(),
        })
    }

    /// Every account id whose state and steps the check reads.
    pub fn account_ids(&self) -> Vec<String> {
        self.accounts.keys().chain(&self.unknown_accounts).cloned().collect()
    }
}

impl ExpectedAccount {
    fn set_capability(&mut self, name: &str, status: &str, created: i64) {
        if self.created_of_capability.get(name).is_none_or(|newest| created > *newest) {
            self.capabilities.insert(name.to_owned(), status.to_owned());
            self.created_of_capability.insert(name.to_owned(), created);
        }
    }

    fn saw(&mut self, event_id: &str, created: i64) {
        if created > self.last_event_created {
            self.last_event_id = event_id.to_owned();
            self.last_event_created = created;
        }
    }
}

/// What the store holds after the run.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Each account's stored state (`None`: unknown).
    pub accounts: BTreeMap<String, Option<AccountState>>,
    /// Every stored step whose destination is the account.
    pub steps: BTreeMap<String, Vec<Step>>,
    /// Each sent event's record, when the store's records could be read.
    pub records: Option<BTreeMap<String, Option<EventRecord>>>,
}

/// Reads what the check needs straight from a store (SQLite or DynamoDB).
pub async fn observe_store<S: AccountStore>(
    store: &S,
    mix: &Mix,
    expected: &Expected,
) -> Result<Observed, StoreError> {
    let mut observed = Observed { records: Some(BTreeMap::new()), ..Observed::default() };
    for id in expected.account_ids() {
        let Some(account_id) = AccountId::parse(&id) else { continue };
        observed.accounts.insert(id.clone(), store.load_account(&account_id).await?);
        observed.steps.insert(id, store.load_account_steps(&account_id).await?);
    }
    observed.records = Some(observe_records(store, mix, expected).await?);
    Ok(observed)
}

/// Reads the record of every sent event.
pub async fn observe_records<S: AccountStore>(
    store: &S,
    mix: &Mix,
    expected: &Expected,
) -> Result<BTreeMap<String, Option<EventRecord>>, StoreError> {
    let mut records = BTreeMap::new();
    for index in &expected.events {
        let id = &mix.events[*index].id;
        records.insert(id.clone(), store.load_event(id).await?);
    }
    Ok(records)
}

/// Every way the store or the answers break exactly-once; empty when the run was correct.
///
/// `answers[event]` holds the answer to each delivery of that event that was sent.
pub fn check(mix: &Mix, expected: &Expected, answers: &[Vec<Answer>], observed: &Observed) -> Vec<String> {
    let mut violations = Vec::new();
    check_answers(mix, expected, answers, observed, &mut violations);
    for (id, want) in &expected.accounts {
        match observed.accounts.get(id) {
            Some(Some(state)) => compare_account(id, want, state, &mut violations),
            _ => violations.push(format!("{id}: account not stored")),
        }
    }
    for id in &expected.unknown_accounts {
        if let Some(Some(_)) = observed.accounts.get(id) {
            violations.push(format!("{id}: no event created it, yet it is stored"));
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (account, steps) in &observed.steps {
        for step in steps {
            *seen.entry(step.step_id.as_str()).or_default() += 1;
            if step.destination.as_str() != account {
                violations.push(format!("{}: listed under {account}", step.step_id));
            }
            match expected.steps.get(step.step_id.as_str()) {
                None => violations.push(format!("{}: stored but never planned by the mix", step.step_id)),
                Some(want) => compare_step(step, want, &mut violations),
            }
        }
    }
    for id in expected.steps.keys() {
        match seen.get(id.as_str()) {
            Some(1) => {}
            None => violations.push(format!("{id}: planned by the mix but not stored")),
            Some(count) => violations.push(format!("{id}: stored {count} times")),
        }
    }
    violations
}

/// Checks that each planned step that is queued reached the queue exactly once, and no other.
/// `sent` counts the messages received from the queues, by step id.
pub fn check_queued(expected: &Expected, sent: &BTreeMap<String, usize>) -> Vec<String> {
    let mut violations = Vec::new();
    for (id, step) in &expected.steps {
        let count = sent.get(id).copied().unwrap_or(0);
        match (step.status, count) {
            // A transfer a refund took back whole may have been queued before the refund came.
            (StepStatus::Queued, 1) | (StepStatus::Refused, 0 | 1) => {}
            (status, count) => {
                violations.push(format!("{id} ({}): {count} messages on the queue", status.as_str()))
            }
        }
    }
    for id in sent.keys().filter(|id| !expected.steps.contains_key(*id)) {
        violations.push(format!("{id}: on the queue but never planned by the mix"));
    }
    violations
}

fn check_answers(
    mix: &Mix,
    expected: &Expected,
    answers: &[Vec<Answer>],
    observed: &Observed,
    violations: &mut Vec<String>,
) {
    let mut firsts: BTreeMap<usize, &str> = BTreeMap::new();
    for index in &expected.events {
        let event = &mix.events[*index];
        let delivered = &answers[*index];
        let mut first = None;
        let mut retried = false;
        for answer in delivered {
            match (answer.status, answer.outcome.as_deref()) {
                (200, Some("duplicate")) => {}
                (200, Some(outcome)) if first.is_none() => first = Some(outcome),
                (200, Some(outcome)) => {
                    violations.push(format!("{}: applied twice ({outcome} after {first:?})", event.id))
                }
                // Stripe delivers again after a 5xx: what counts is that the event ends up recorded once.
                _ if answer.is_retried() => retried = true,
                (status, outcome) => violations.push(format!("{}: answered {status} {outcome:?}", event.id)),
            }
        }
        if !delivered.iter().any(|answer| answer.status == 200) {
            violations.push(format!("{}: never answered 200", event.id));
            continue;
        }
        let record = observed.records.as_ref().map(|records| records.get(&event.id).and_then(Option::as_ref));
        let first = match (first, record) {
            (Some(first), _) => first,
            // A 5xx after the commit (the queue refused) makes every retry a duplicate; the record
            // says what the first delivery did.
            (None, Some(Some(record))) if retried => record.outcome.as_str(),
            (None, None) if retried => continue,
            (None, record) => {
                let recorded = record.flatten().map(|record| record.outcome.as_str());
                violations.push(format!(
                    "{}: every delivery was answered duplicate (recorded: {recorded:?})",
                    event.id
                ));
                continue;
            }
        };
        firsts.insert(*index, first);
        match allowed(mix, &event.kind) {
            Allowed::OneOf(outcomes) if !outcomes.contains(&first) => {
                violations.push(format!("{}: outcome {first}, expected one of {outcomes:?}", event.id));
            }
            Allowed::OneOf(_) | Allowed::Trigger { .. } => {}
        }
        match record {
            None => {}
            Some(Some(record))
                if record.outcome.as_str() == first && record.event_type == event.event_type => {}
            Some(Some(record)) => violations.push(format!(
                "{}: recorded as {} {}, answered {first}",
                event.id,
                record.event_type,
                record.outcome.as_str()
            )),
            Some(None) => violations.push(format!("{}: answered {first} but not recorded", event.id)),
        }
    }
    let mut triggers: BTreeMap<usize, (&'static str, Vec<&str>)> = BTreeMap::new();
    for (index, first) in &firsts {
        if let Allowed::Trigger { payment, outcome } = allowed(mix, &mix.events[*index].kind) {
            triggers.entry(payment).or_insert((outcome, Vec::new())).1.push(first);
        }
    }
    for (payment, (outcome, mut got)) in triggers {
        got.sort_unstable();
        let mut want = vec!["unchanged"; got.len() - 1];
        want.push(outcome);
        want.sort_unstable();
        if got != want {
            violations.push(format!(
                "{}: triggers answered {got:?}, expected {want:?}",
                mix.payments[payment].intent
            ));
        }
    }
}

fn allowed(mix: &Mix, kind: &Kind) -> Allowed {
    match kind {
        // Concurrent deliveries may bring an older update after a newer one: it is then stale.
        Kind::AccountUpdated { .. } | Kind::CapabilityUpdated { .. } => Allowed::OneOf(&["applied", "stale"]),
        Kind::Payment { payment, trigger: Trigger::PaymentIntent | Trigger::Charge } => {
            let outcome = match mix.payments[*payment].split_kind {
                SplitKind::Valid | SplitKind::UnknownDestination => "applied",
                SplitKind::None => "unchanged",
            };
            Allowed::Trigger { payment: *payment, outcome }
        }
        Kind::Refund { .. } => Allowed::OneOf(&["applied"]),
    }
}

fn compare_account(id: &str, want: &ExpectedAccount, got: &AccountState, violations: &mut Vec<String>) {
    let profile = want.state.profile();
    let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect::<Vec<_>>();
    let interval = if want.manual_payouts { "manual" } else { "daily" };
    let mismatches = [
        ("onboarding_status", want.state.status().to_owned(), got.onboarding_status.as_str().to_owned()),
        (
            "charges_enabled",
            format!("{:?}", Some(profile.charges_enabled)),
            format!("{:?}", got.charges_enabled),
        ),
        (
            "payouts_enabled",
            format!("{:?}", Some(profile.payouts_enabled)),
            format!("{:?}", got.payouts_enabled),
        ),
        (
            "details_submitted",
            format!("{:?}", Some(profile.details_submitted)),
            format!("{:?}", got.details_submitted),
        ),
        (
            "disabled_reason",
            format!("{:?}", profile.disabled_reason),
            format!("{:?}", got.disabled_reason.as_deref()),
        ),
        (
            "currently_due",
            format!("{:?}", strings(&profile.currently_due)),
            format!("{:?}", got.requirements.currently_due),
        ),
        ("capabilities", format!("{:?}", want.capabilities), format!("{:?}", got.capabilities)),
        (
            "payout_schedule_interval",
            format!("{:?}", Some(interval)),
            format!("{:?}", got.payout_schedule_interval.as_deref()),
        ),
        ("last_event_id", want.last_event_id.clone(), got.last_event_id.clone()),
        ("last_event_created", want.last_event_created.to_string(), got.last_event_created.to_string()),
    ];
    for (field, want, got) in mismatches {
        if want != got {
            violations.push(format!("{id}: {field} is {got}, expected {want}"));
        }
    }
}

fn compare_step(step: &Step, want: &ExpectedStep, violations: &mut Vec<String>) {
    let got = (
        step.kind,
        step.destination.as_str(),
        step.amount,
        step.currency.as_str(),
        step.source_charge.as_deref(),
        step.transfer_group.as_deref(),
        step.status,
    );
    let expected = (
        want.kind,
        want.destination.as_str(),
        want.amount,
        CURRENCY,
        Some(want.source_charge.as_str()),
        Some(want.transfer_group.as_str()),
        want.status,
    );
    if got != expected {
        violations.push(format!("{}: stored as {got:?}, expected {expected:?}", step.step_id));
    }
}
