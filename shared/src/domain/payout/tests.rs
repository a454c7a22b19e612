use proptest::prelude::*;

use super::*;
use crate::domain::account::{AccountId, PayoutFailure};
use crate::domain::step::PlatformRequest;

/// 2025-06-15T15:06:40Z, a Sunday.
const NOW: i64 = 1_750_000_000;
const A: &str = "acct_1SellerA";
const B: &str = "acct_1SellerB";

fn account(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn manual(id: &str) -> AccountState {
    let mut state = AccountState::new(account(id));
    state.payout_schedule_interval = Some("manual".into());
    state.payouts_enabled = Some(true);
    state.version = 1;
    state
}

fn entries(available: &[(&str, i64)]) -> Vec<BalanceEntry> {
    available
        .iter()
        .map(|(currency, amount)| BalanceEntry {
            currency: (*currency).to_owned(),
            amount: *amount,
            source_types: BTreeMap::new(),
        })
        .collect()
}

fn with_policy(policy: PayoutPolicy) -> PayoutSettings {
    PayoutSettings { policy, ..PayoutSettings::default() }
}

fn on_balance(
    settings: &PayoutSettings,
    state: &AccountState,
    payouts: &[Step],
    event_id: &str,
    available: &[BalanceEntry],
    now: i64,
) -> PayoutPlan {
    let trigger = PayoutTrigger::Balance { event_id, created: now, entries: available };
    plan_payouts(&trigger, state, settings, payouts, Some(false), now)
}

/// The old planner's call: the default policy, a balance event at `now`; new steps and superseded.
fn plan_default(
    available: &[(&str, i64)],
    state: &AccountState,
    payouts: &[Step],
    event_id: &str,
    now: i64,
) -> (Vec<Step>, Vec<Step>) {
    let plan = on_balance(&PayoutSettings::default(), state, payouts, event_id, &entries(available), now);
    (plan.new_steps, plan.superseded)
}

fn sweep(settings: &PayoutSettings, state: &AccountState, payouts: &[Step], now: i64) -> PayoutPlan {
    plan_payouts(&PayoutTrigger::Sweep, state, settings, payouts, None, now)
}

fn amounts(steps: &[Step]) -> Vec<(String, i64)> {
    steps.iter().map(|step| (step.currency.clone(), step.amount)).collect()
}

fn succeeded(mut steps: Vec<Step>) -> Vec<Step> {
    for step in &mut steps {
        step.status = StepStatus::Succeeded;
        step.version += 1;
    }
    steps
}

// The behaviour without a policy: what plan_payouts in domain/funds.rs did.

#[test]
fn manual_accounts_get_a_payout_per_positive_currency() {
    let manual = manual(A);
    let steps =
        plan_default(&[("usd", 7000), ("eur", 0), ("gbp", -5), ("jpy", 300)], &manual, &[], "evt_9", NOW).0;
    let summary: Vec<(&str, i64, &str)> =
        steps.iter().map(|step| (step.step_id.as_str(), step.amount, step.currency.as_str())).collect();
    assert_eq!(
        summary,
        [("po:acct_1SellerA:evt_9:usd", 7000, "usd"), ("po:acct_1SellerA:evt_9:jpy", 300, "jpy")]
    );
    let step = &steps[0];
    assert_eq!(
        (step.kind, step.status, step.destination.as_str()),
        (StepKind::Payout, StepStatus::Queued, A)
    );
    assert_eq!((step.source_charge.as_deref(), step.transfer_group.as_deref()), (None, None));
    assert_eq!((step.payment_key.as_deref(), step.reverses_step.as_deref()), (None, None));
    assert_eq!((step.attempt, step.created_at, step.updated_at, step.version), (0, NOW, NOW, 0));
    assert_eq!(step.cause, Some(StepCause::new(CauseKind::Balance, "evt_9")));
    let options = step.payout.as_ref().unwrap();
    assert_eq!((options.method.as_deref(), options.source_type.as_deref()), (None, None));
}

#[test]
fn payouts_skip_accounts_not_on_manual_payouts() {
    for interval in [None, Some("daily"), Some("weekly"), Some("Manual")] {
        let mut automatic = manual(A);
        automatic.payout_schedule_interval = interval.map(str::to_owned);
        let plan =
            on_balance(&PayoutSettings::default(), &automatic, &[], "evt_9", &entries(&[("usd", 7000)]), NOW);
        assert_eq!(plan, PayoutPlan::default(), "{interval:?}");
    }
}

#[test]
fn another_accounts_payouts_do_not_block() {
    let mut elsewhere = plan_default(&[("usd", 7000)], &manual(B), &[], "evt_8", NOW).0;
    elsewhere[0].status = StepStatus::InFlight;
    let steps = plan_default(&[("usd", 7000)], &manual(A), &elsewhere, "evt_9", NOW).0;
    assert_eq!(amounts(&steps), [("usd".to_owned(), 7000)]);
}

#[test]
fn a_payout_in_flight_blocks_only_its_own_currency() {
    let manual = manual(A);
    let available = [("usd", 7000), ("eur", 100)];
    let earlier = plan_default(&available, &manual, &[], "evt_8", NOW).0;
    let mut open = earlier[..1].to_vec();
    open[0].status = StepStatus::InFlight;
    let (steps, superseded) = plan_default(&available, &manual, &open, "evt_9", NOW);
    let ids: Vec<&str> = steps.iter().map(|step| step.step_id.as_str()).collect();
    assert_eq!(ids, ["po:acct_1SellerA:evt_9:eur"]);
    assert_eq!(superseded, []);
    for status in [StepStatus::Succeeded, StepStatus::Failed, StepStatus::Refused] {
        let mut closed = earlier.clone();
        closed.iter_mut().for_each(|step| step.status = status);
        let (steps, superseded) = plan_default(&available, &manual, &closed, "evt_9", NOW);
        assert_eq!((steps.len(), superseded.len()), (2, 0), "{status:?}");
    }
}

/// Issue 9, case 6: a payout that met `balance_insufficient` (or was never sent) and that the
/// newer balance cannot cover is refused, in the same write, and the newer balance plans its own.
#[test]
fn a_newer_smaller_balance_supersedes_a_payout_not_yet_sent() {
    let manual = manual(A);
    let earlier = plan_default(&[("usd", 7000)], &manual, &[], "evt_8", NOW).0;
    for status in [StepStatus::Queued, StepStatus::Waiting] {
        let mut open = earlier.clone();
        open[0].status = status;
        open[0].version = 3;
        let (steps, superseded) = plan_default(&[("usd", 4000)], &manual, &open, "evt_9", NOW + 9);
        assert_eq!((steps.len(), steps[0].amount, steps[0].livemode), (1, 4000, Some(false)), "{status:?}");
        assert_eq!(superseded.len(), 1);
        let old = &superseded[0];
        assert_eq!((old.status, old.version, old.updated_at), (StepStatus::Refused, 4, NOW + 9));
        assert!(
            old.reason.as_deref().unwrap().contains("superseded by the newer balance of evt_9"),
            "{old:?}"
        );
    }
}

/// A payout not yet sent that the newer balance still covers stands; only the rest is paid.
#[test]
fn a_newer_larger_balance_pays_only_what_the_open_payout_leaves() {
    let first =
        on_balance(&PayoutSettings::default(), &manual(A), &[], "evt_8", &entries(&[("usd", 7000)]), NOW);
    let (state, open) = (first.account.unwrap(), first.new_steps);
    let second =
        on_balance(&PayoutSettings::default(), &state, &open, "evt_9", &entries(&[("usd", 9000)]), NOW + 5);
    assert_eq!(second.superseded, []);
    assert_eq!(amounts(&second.new_steps), [("usd".to_owned(), 2000)]);
}

#[test]
fn a_currency_listed_twice_is_paid_out_once() {
    let steps = plan_default(&[("usd", 7000), ("usd", 9)], &manual(A), &[], "evt_9", NOW).0;
    assert_eq!(amounts(&steps), [("usd".to_owned(), 7000)]);
}

/// A payout the platform asked for (`POST /payouts`) is left alone by a newer balance, which
/// neither refuses it nor plans a second payout of the same currency beside it.
#[test]
fn a_balance_leaves_a_payout_the_platform_asked_for_alone() {
    let manual = manual(A);
    let mut asked = plan_default(&[("usd", 7000)], &manual, &[], "evt_8", NOW).0;
    asked[0].requested =
        Some(PlatformRequest { reference: "payout-1".into(), description: None, method: None });
    let (steps, superseded) = plan_default(&[("usd", 9000), ("eur", 5)], &manual, &asked, "evt_9", NOW);
    let currencies: Vec<&str> = steps.iter().map(|step| step.currency.as_str()).collect();
    assert_eq!(currencies, ["eur"]);
    assert_eq!(superseded, []);
}

#[test]
fn a_balance_that_changes_nothing_writes_nothing() {
    let plan = on_balance(&PayoutSettings::default(), &manual(A), &[], "evt_1", &entries(&[("usd", 0)]), NOW);
    assert_eq!(plan, PayoutPlan::default());
}

// Policies.

#[test]
fn funds_younger_than_the_hold_wait_and_the_sweep_pays_them_once_old_enough() {
    let settings = with_policy(PayoutPolicy { hold_days: 7, ..PayoutPolicy::default() });
    let first = on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    assert_eq!(first.new_steps, []);
    let state = first.account.unwrap();
    assert_eq!(state.version, 2);
    assert_eq!(state.ordering.balance, Some(NOW));
    assert_eq!(state.payout_funds.due_at, Some(NOW + 7 * DAY_SECS));
    // Three days later 3000 more arrive: still nothing is old enough.
    let second = on_balance(&settings, &state, &[], "evt_2", &entries(&[("usd", 8000)]), NOW + 3 * DAY_SECS);
    assert_eq!(second.new_steps, []);
    let state = second.account.unwrap();
    assert_eq!(state.payout_funds.due_at, Some(NOW + 7 * DAY_SECS));
    // A sweep before the due time changes nothing.
    assert_eq!(sweep(&settings, &state, &[], NOW + 6 * DAY_SECS), PayoutPlan::default());
    // At the due time the first 5000 are paid, and the sweep comes back for the 3000.
    let due = sweep(&settings, &state, &[], NOW + 7 * DAY_SECS);
    assert_eq!(amounts(&due.new_steps), [("usd".to_owned(), 5000)]);
    let step = &due.new_steps[0];
    assert_eq!(step.step_id, format!("po:{A}:due{}:usd", NOW + 7 * DAY_SECS));
    assert_eq!(step.cause, Some(StepCause::new(CauseKind::Balance, "evt_2")));
    assert_eq!(step.livemode, Some(false), "the sweep's payout has its balance event's livemode");
    let state = due.account.unwrap();
    assert_eq!(state.payout_funds.due_at, Some(NOW + 10 * DAY_SECS));
    let rest = sweep(&settings, &state, &succeeded(due.new_steps), NOW + 10 * DAY_SECS);
    assert_eq!(amounts(&rest.new_steps), [("usd".to_owned(), 3000)]);
    assert_eq!(rest.account.unwrap().payout_funds.due_at, None);
}

#[test]
fn a_fall_in_the_balance_takes_the_oldest_funds_first() {
    let settings = with_policy(PayoutPolicy { hold_days: 2, ..PayoutPolicy::default() });
    let first = on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    let state = first.account.unwrap();
    let second = on_balance(&settings, &state, &[], "evt_2", &entries(&[("usd", 9000)]), NOW + DAY_SECS);
    let state = second.account.unwrap();
    // A reversal took 6000: what is left may be the youngest funds, and waits for their hold.
    let third = on_balance(&settings, &state, &[], "evt_3", &entries(&[("usd", 3000)]), NOW + 2 * DAY_SECS);
    assert_eq!(third.new_steps, []);
    let state = third.account.unwrap();
    let paid = sweep(&settings, &state, &[], NOW + 3 * DAY_SECS);
    assert_eq!(amounts(&paid.new_steps), [("usd".to_owned(), 3000)]);
}

#[test]
fn nothing_is_paid_below_the_minimum() {
    let minimum = BTreeMap::from([("usd".to_owned(), 1000)]);
    let settings = with_policy(PayoutPolicy { minimum, ..PayoutPolicy::default() });
    let low = on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 999), ("eur", 5)]), NOW);
    assert_eq!(amounts(&low.new_steps), [("eur".to_owned(), 5)]);
    let state = low.account.unwrap();
    // Only more funds can reach the minimum: the sweep comes back only for the stale-funds warning.
    assert_eq!(state.payout_funds.due_at, Some(NOW + 72 * DAY_SECS));
    let enough = on_balance(&settings, &state, &[], "evt_2", &entries(&[("usd", 1000)]), NOW + 1);
    assert_eq!(amounts(&enough.new_steps), [("usd".to_owned(), 1000)]);
}

#[test]
fn a_daily_schedule_plans_at_most_one_payout_per_utc_day() {
    let settings = with_policy(PayoutPolicy { schedule: PayoutSchedule::Daily, ..PayoutPolicy::default() });
    let first = on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    assert_eq!(amounts(&first.new_steps), [("usd".to_owned(), 5000)]);
    let paid = succeeded(first.new_steps);
    let state = first.account.unwrap();
    let later = on_balance(&settings, &state, &paid, "evt_2", &entries(&[("usd", 2000)]), NOW + 3600);
    assert_eq!(later.new_steps, []);
    let state = later.account.unwrap();
    let midnight = (NOW / DAY_SECS + 1) * DAY_SECS;
    assert_eq!(state.payout_funds.due_at, Some(midnight));
    assert_eq!(sweep(&settings, &state, &paid, midnight - 1), PayoutPlan::default());
    let next_day = sweep(&settings, &state, &paid, midnight);
    assert_eq!(amounts(&next_day.new_steps), [("usd".to_owned(), 2000)]);
}

#[test]
fn a_weekly_schedule_plans_only_on_its_day() {
    assert_eq!(Weekday::of(NOW), Weekday::Sunday);
    let settings = with_policy(PayoutPolicy {
        schedule: PayoutSchedule::Weekly(Weekday::Tuesday),
        ..PayoutPolicy::default()
    });
    let sunday = on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    assert_eq!(sunday.new_steps, []);
    let state = sunday.account.unwrap();
    let tuesday = (NOW / DAY_SECS + 2) * DAY_SECS;
    assert_eq!(Weekday::of(tuesday), Weekday::Tuesday);
    assert_eq!(state.payout_funds.due_at, Some(tuesday));
    assert_eq!(sweep(&settings, &state, &[], tuesday - 60), PayoutPlan::default());
    let paid = sweep(&settings, &state, &[], tuesday + 60);
    assert_eq!(amounts(&paid.new_steps), [("usd".to_owned(), 5000)]);
    let state = paid.account.unwrap();
    let again = on_balance(
        &settings,
        &state,
        &succeeded(paid.new_steps),
        "evt_2",
        &entries(&[("usd", 10)]),
        tuesday + 120,
    );
    assert_eq!(again.new_steps, [], "once on its day");
    assert_eq!(again.account.unwrap().payout_funds.due_at, Some(tuesday + 7 * DAY_SECS));
}

#[test]
fn a_balance_split_by_source_type_is_paid_per_source_type() {
    let split = [BalanceEntry {
        currency: "usd".into(),
        amount: 9000,
        source_types: BTreeMap::from([("card".into(), 7000), ("bank_account".into(), 2000)]),
    }];
    let plan = on_balance(&PayoutSettings::default(), &manual(A), &[], "evt_1", &split, NOW);
    let summary: Vec<(&str, i64, Option<&str>)> = plan
        .new_steps
        .iter()
        .map(|step| {
            (step.step_id.as_str(), step.amount, step.payout.as_ref().unwrap().source_type.as_deref())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("po:acct_1SellerA:evt_1:usd:bank_account", 2000, Some("bank_account")),
            ("po:acct_1SellerA:evt_1:usd:card", 7000, Some("card")),
        ]
    );
    // One open payout of one source type blocks only that one.
    let mut open = plan.new_steps.clone();
    open[0].status = StepStatus::InFlight;
    let state = plan.account.unwrap();
    let next = on_balance(&PayoutSettings::default(), &state, &open[..1], "evt_2", &split, NOW + 1);
    assert_eq!(amounts(&next.new_steps), [("usd".to_owned(), 7000)]);
    // A balance of one source type that is not card names it.
    let fpx = [BalanceEntry {
        currency: "myr".into(),
        amount: 500,
        source_types: BTreeMap::from([("fpx".into(), 500)]),
    }];
    let plan = on_balance(&PayoutSettings::default(), &manual(B), &[], "evt_3", &fpx, NOW);
    assert_eq!(plan.new_steps[0].step_id, "po:acct_1SellerB:evt_3:myr:fpx");
    assert_eq!(plan.new_steps[0].payout.as_ref().unwrap().source_type.as_deref(), Some("fpx"));
}

#[test]
fn balance_entries_are_read_leniently() {
    let object = serde_json::json!({"available": [
        {"amount": 9000, "currency": "USD", "source_types": {"card": 7000, "bank_account": 2000, "Bad Name": 1, "fpx": "x"}},
        {"amount": "oops", "currency": "eur"},
        {"amount": 5, "currency": "e"},
        "junk",
        {"amount": 300, "currency": "gbp"}
    ]});
    let read = read_balance_entries(&object);
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].currency, "usd");
    assert_eq!(read[0].source_types, BTreeMap::from([("bank_account".into(), 2000), ("card".into(), 7000)]));
    assert_eq!((read[1].currency.as_str(), read[1].amount), ("gbp", 300));
    assert_eq!(read_balance_entries(&serde_json::json!({"available": 5})), []);
}

#[test]
fn instant_is_used_only_where_the_external_account_supports_it() {
    let settings = with_policy(PayoutPolicy { method: PayoutMethod::Instant, ..PayoutPolicy::default() });
    let mut state = manual(A);
    state.external_accounts.insert(
        "ba_1".into(),
        ExternalAccountSummary {
            currency: Some("usd".into()),
            default_for_currency: Some(true),
            available_payout_methods: vec!["standard".into(), "instant".into()],
            ..ExternalAccountSummary::default()
        },
    );
    state.external_accounts.insert(
        "ba_2".into(),
        ExternalAccountSummary {
            currency: Some("eur".into()),
            default_for_currency: Some(true),
            available_payout_methods: vec!["standard".into()],
            ..ExternalAccountSummary::default()
        },
    );
    let plan =
        on_balance(&settings, &state, &[], "evt_1", &entries(&[("usd", 100), ("eur", 100), ("gbp", 1)]), NOW);
    let methods: Vec<Option<&str>> =
        plan.new_steps.iter().map(|step| step.payout.as_ref().unwrap().method.as_deref()).collect();
    assert_eq!(methods, [Some("instant"), None, None]);
}

#[test]
fn funds_unpaid_near_stripes_limit_are_warned_about() {
    let minimum = BTreeMap::from([("usd".to_owned(), 1_000_000)]);
    let settings = with_policy(PayoutPolicy { minimum, ..PayoutPolicy::default() });
    let first = on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    let state = first.account.unwrap();
    assert_eq!(state.payout_funds.warnings, []);
    // 80% of 90 days: 72 days.
    assert_eq!(state.payout_funds.due_at, Some(NOW + 72 * DAY_SECS));
    let due = sweep(&settings, &state, &[], NOW + 72 * DAY_SECS);
    assert_eq!(due.new_steps, []);
    let warned = due.account.unwrap();
    assert_eq!(
        warned.payout_funds.warnings,
        [StaleFunds {
            currency: "usd".into(),
            amount: 5000,
            since: NOW,
            limit_days: 90,
            warn_after_days: 72
        }]
    );
    assert_eq!(warned.payout_funds.due_at, Some(NOW), "checked (and counted) on every sweep while it stands");
    // A US account has two years.
    let mut american = manual(B);
    american.country = Some("US".into());
    let plan = on_balance(&settings, &american, &[], "evt_2", &entries(&[("usd", 5000)]), NOW);
    assert_eq!(plan.account.unwrap().payout_funds.due_at, Some(NOW + 584 * DAY_SECS));
    let share = PayoutSettings { stale_percent: 50, ..settings };
    let plan = on_balance(&share, &manual(B), &[], "evt_3", &entries(&[("usd", 5000)]), NOW);
    assert_eq!(plan.account.unwrap().payout_funds.due_at, Some(NOW + 45 * DAY_SECS));
}

fn failed(state: &mut AccountState, payout: &Step, at: i64) {
    state.payout_failure = Some(PayoutFailure {
        payout_id: "po_failed".into(),
        failure_code: "account_closed".into(),
        failed_at: at,
        step_id: Some(payout.step_id.clone()),
    });
}

#[test]
fn a_failed_payout_is_not_paid_again_until_its_retry_time() {
    let settings = PayoutSettings::default();
    let first =
        on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000), ("eur", 100)]), NOW);
    let paid = succeeded(first.new_steps);
    let mut state = first.account.unwrap();
    failed(&mut state, &paid[0], NOW + 60);
    // Stripe gives the funds back: the balance rises again, but the currency waits.
    let back =
        on_balance(&settings, &state, &paid, "evt_2", &entries(&[("usd", 5000), ("eur", 50)]), NOW + 120);
    assert_eq!(amounts(&back.new_steps), [("eur".to_owned(), 50)], "only the failed currency waits");
    let state = back.account.unwrap();
    let hold = state.payout_funds.failure_hold.clone().unwrap();
    assert_eq!(
        (hold.currency.as_deref(), hold.retry_at, hold.released),
        (Some("usd"), NOW + 60 + 3 * DAY_SECS, false)
    );
    assert_eq!(state.payout_funds.due_at, Some(NOW + 60), "the sweep checks on every run while it holds");
    assert_eq!(
        sweep(&settings, &state, &paid, NOW + DAY_SECS),
        PayoutPlan::default(),
        "no write while it holds"
    );
    let retried = sweep(&settings, &state, &paid, NOW + 60 + 3 * DAY_SECS);
    assert_eq!(amounts(&retried.new_steps), [("usd".to_owned(), 5000)]);
    assert!(retried.account.unwrap().payout_funds.failure_hold.unwrap().released);
}

#[test]
fn a_changed_external_account_releases_a_failed_payouts_hold() {
    let settings = PayoutSettings::default();
    let mut start = manual(A);
    start.external_accounts.insert(
        "ba_old".into(),
        ExternalAccountSummary {
            currency: Some("usd".into()),
            status: Some("errored".into()),
            ..Default::default()
        },
    );
    let first = on_balance(&settings, &start, &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    let paid = succeeded(first.new_steps);
    let mut state = first.account.unwrap();
    failed(&mut state, &paid[0], NOW + 60);
    let held = on_balance(&settings, &state, &paid, "evt_2", &entries(&[("usd", 5000)]), NOW + 120);
    assert_eq!(held.new_steps, []);
    let mut state = held.account.unwrap();
    // An external account of another currency changing is not the fix.
    state.external_accounts.insert(
        "ba_eur".into(),
        ExternalAccountSummary { currency: Some("eur".into()), ..Default::default() },
    );
    assert_eq!(sweep(&settings, &state, &paid, NOW + 180).new_steps, []);
    state.external_accounts.insert(
        "ba_new".into(),
        ExternalAccountSummary {
            currency: Some("usd".into()),
            default_for_currency: Some(true),
            status: Some("new".into()),
            ..Default::default()
        },
    );
    let released = sweep(&settings, &state, &paid, NOW + 240);
    assert_eq!(amounts(&released.new_steps), [("usd".to_owned(), 5000)]);
    // Had the new account been written before the hold was first seen, it releases it at once;
    // one Stripe marked errored does not.
    for (status, released) in [("new", true), ("errored", false)] {
        let mut fresh = manual(B);
        fresh.external_accounts.insert(
            "ba_2".into(),
            ExternalAccountSummary {
                currency: Some("usd".into()),
                status: Some(status.into()),
                ..Default::default()
            },
        );
        fresh.ordering.external_accounts.insert("ba_2".into(), NOW + 90);
        let step = Step { destination: account(B), ..paid[0].clone() };
        failed(&mut fresh, &step, NOW + 60);
        let plan = on_balance(&settings, &fresh, &[step], "evt_9", &entries(&[("usd", 5000)]), NOW + 120);
        assert_eq!(plan.new_steps.len(), usize::from(released), "{status}");
    }
    // A later payout reaching the bank clears the failure, and with it the hold.
    let mut state = released.account.unwrap();
    state.payout_failure = None;
    let cleared = on_balance(
        &settings,
        &state,
        &succeeded(released.new_steps),
        "evt_3",
        &entries(&[("usd", 0)]),
        NOW + 300,
    );
    assert_eq!(cleared.account.unwrap().payout_funds.failure_hold, None);
}

#[test]
fn an_account_off_manual_payouts_leaves_the_sweep() {
    let settings = with_policy(PayoutPolicy { hold_days: 7, ..PayoutPolicy::default() });
    let mut state =
        on_balance(&settings, &manual(A), &[], "evt_1", &entries(&[("usd", 5000)]), NOW).account.unwrap();
    assert!(state.payout_funds.due_at.is_some());
    state.payout_schedule_interval = Some("daily".into());
    let plan = sweep(&settings, &state, &[], NOW + 7 * DAY_SECS);
    assert_eq!(plan.new_steps, []);
    assert_eq!(plan.account.unwrap().payout_funds.due_at, None);
}

#[test]
fn the_accounts_own_policy_wins_over_the_default() {
    let settings = with_policy(PayoutPolicy { hold_days: 30, ..PayoutPolicy::default() });
    let mut state = manual(A);
    assert_eq!(settings.shown_policy(&state).source, PolicySource::Default);
    state.payout_policy =
        Some(AccountPayoutPolicy { source: PolicySource::Account, policy: PayoutPolicy::default() });
    assert_eq!(settings.shown_policy(&state).source, PolicySource::Account);
    let plan = on_balance(&settings, &state, &[], "evt_1", &entries(&[("usd", 5000)]), NOW);
    assert_eq!(amounts(&plan.new_steps), [("usd".to_owned(), 5000)]);
}

#[test]
fn lots_stay_bounded_and_merged_funds_never_look_older() {
    let mut held = HeldBalance::new("usd", "card");
    for i in 0..100 {
        held.add(10, NOW + i * 60);
    }
    assert_eq!(held.lots.len(), MAX_LOTS);
    assert_eq!(held.total(), 1000);
    assert!(held.lots.windows(2).all(|pair| pair[0].since < pair[1].since));
    // Never more than was really there that long.
    for i in 0..100 {
        assert!(held.held_since(NOW + i * 60) <= (i + 1) * 10);
    }
}

#[test]
fn schedules_and_methods_read_and_print_their_names() {
    for name in ["on_available", "daily", "weekly:monday", "weekly:sunday"] {
        assert_eq!(PayoutSchedule::parse(name).unwrap().to_string(), name);
    }
    for bad in ["", "weekly", "weekly:", "weekly:funday", "Daily", "hourly", "weekly:monday "] {
        assert_eq!(PayoutSchedule::parse(bad), None, "{bad:?}");
    }
    assert_eq!(PayoutMethod::parse("instant"), Some(PayoutMethod::Instant));
    assert_eq!(PayoutMethod::parse("fast"), None);
    let policy: PayoutPolicy = serde_json::from_value(serde_json::json!({
        "hold_days": 3, "minimum": {"usd": 100}, "schedule": "weekly:friday", "method": "instant"
    }))
    .unwrap();
    assert_eq!(policy.retry_after_days, DEFAULT_RETRY_AFTER_DAYS);
    assert_eq!(policy.schedule, PayoutSchedule::Weekly(Weekday::Friday));
    let shown = serde_json::to_value(AccountPayoutPolicy { source: PolicySource::Default, policy }).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({"source": "default", "hold_days": 3, "minimum": {"usd": 100},
            "schedule": "weekly:friday", "method": "instant", "retry_after_days": 3})
    );
}

#[test]
fn policies_out_of_bounds_are_refused() {
    assert_eq!(PayoutPolicy::default().check(), Ok(()));
    let field = |policy: PayoutPolicy| policy.check().unwrap_err().field;
    assert_eq!(field(PayoutPolicy { hold_days: 366, ..PayoutPolicy::default() }), "hold_days");
    assert_eq!(field(PayoutPolicy { retry_after_days: 0, ..PayoutPolicy::default() }), "retry_after_days");
    let negative = BTreeMap::from([("usd".to_owned(), -1)]);
    assert_eq!(field(PayoutPolicy { minimum: negative, ..PayoutPolicy::default() }), "minimum");
    let upper = BTreeMap::from([("USD".to_owned(), 1)]);
    assert_eq!(field(PayoutPolicy { minimum: upper, ..PayoutPolicy::default() }), "minimum");
    assert_eq!(PayoutPolicy { hold_days: 365, ..PayoutPolicy::default() }.check(), Ok(()));
}

#[test]
fn stripes_manual_payout_limits_by_country() {
    assert_eq!(manual_payout_limit_days(Some("US")), 730);
    assert_eq!(manual_payout_limit_days(Some("us")), 730);
    assert_eq!(manual_payout_limit_days(Some("TH")), 10);
    assert_eq!(manual_payout_limit_days(Some("FR")), 90);
    assert_eq!(manual_payout_limit_days(None), 90);
}

// Properties.

#[derive(Debug, Clone)]
enum Op {
    /// The balance moves by this much (never below zero), and Stripe reports it.
    Balance(i64),
    /// The sweep runs.
    Sweep,
}

fn op() -> impl Strategy<Value = (i64, Op)> {
    (1i64..(3 * DAY_SECS), prop_oneof![(-6000i64..20_000).prop_map(Op::Balance), Just(Op::Sweep)])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the sequence of balances and sweeps: a payout pays only funds present throughout
    /// the hold (at most each balance seen since the hold's start, less what was paid out since
    /// it), nothing while no balance is that old, and never below the minimum.
    #[test]
    fn payouts_never_exceed_what_was_held_throughout_the_hold(
        hold_days in 0u32..4,
        minimum in 0i64..3000,
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let policy = PayoutPolicy {
            hold_days,
            minimum: BTreeMap::from([("usd".to_owned(), minimum)]),
            ..PayoutPolicy::default()
        };
        let settings = with_policy(policy);
        let hold = i64::from(hold_days) * DAY_SECS;
        let mut state = manual(A);
        let mut now = NOW;
        let mut real = 0i64;
        // (when reported, the balance reported) and (when paid, how much).
        let mut reports: Vec<(i64, i64)> = Vec::new();
        let mut paid: Vec<(i64, i64)> = Vec::new();
        let mut payouts: Vec<Step> = Vec::new();
        for (index, (gap, op)) in ops.into_iter().enumerate() {
            now += gap;
            let plan = match op {
                Op::Balance(delta) => {
                    real = (real + delta).max(0);
                    reports.push((now, real));
                    on_balance(&settings, &state, &payouts, &format!("evt_{index}"), &entries(&[("usd", real)]), now)
                }
                Op::Sweep => sweep(&settings, &state, &payouts, now),
            };
            for step in &plan.new_steps {
                let amount = step.amount;
                prop_assert!(amount >= minimum.max(1), "{amount} below the minimum {minimum}");
                let cutoff = now - hold;
                let paid_after = |at: i64| paid.iter().filter(|(when, _)| *when > at).map(|(_, a)| a).sum::<i64>();
                let last_before = reports.iter().rev().find(|(at, _)| *at <= cutoff);
                prop_assert!(last_before.is_some(), "paid {amount} with no balance {hold_days} days old");
                let (at, balance) = *last_before.unwrap();
                prop_assert!(amount <= balance - paid_after(at), "paid {amount} of {balance} at {at}");
                for (at, balance) in reports.iter().filter(|(at, _)| *at >= cutoff) {
                    prop_assert!(amount <= balance - paid_after(*at), "paid {amount} of {balance} at {at}");
                }
                prop_assert!(amount <= real);
            }
            for step in &plan.new_steps {
                paid.push((now, step.amount));
                real -= step.amount;
            }
            payouts.extend(succeeded(plan.new_steps));
            if let Some(next) = plan.account {
                prop_assert_eq!(next.version, state.version + 1);
                prop_assert!(next.payout_funds.balances.iter().all(|held| held.lots.len() <= MAX_LOTS));
                let polled = !next.payout_funds.warnings.is_empty();
                prop_assert!(next.payout_funds.due_at.is_none_or(|due| due > now || polled));
                state = next;
            }
        }
    }

    /// Lots always add up to the balance last observed, and never claim more age than the
    /// balances observed since.
    #[test]
    fn lots_are_never_older_than_the_balances_seen(
        samples in prop::collection::vec((1i64..DAY_SECS, 0i64..50_000), 1..80),
        probe in 0i64..(80 * DAY_SECS),
    ) {
        let mut held = HeldBalance::new("usd", "card");
        let mut at = NOW;
        let mut seen: Vec<(i64, i64)> = Vec::new();
        for (gap, amount) in samples {
            at += gap;
            held.observe(amount, at);
            seen.push((at, amount));
            prop_assert_eq!(held.total(), amount);
            prop_assert!(held.lots.len() <= MAX_LOTS);
        }
        let cutoff = NOW + probe;
        let old = held.held_since(cutoff);
        match seen.iter().rev().find(|(when, _)| *when <= cutoff) {
            None => prop_assert_eq!(old, 0),
            Some((when, _)) => {
                let least = seen.iter().filter(|(other, _)| other >= when).map(|(_, a)| *a).min().unwrap_or(0);
                prop_assert!(old <= least, "{old} held since {cutoff}, but the balance fell to {least}");
            }
        }
    }
}
