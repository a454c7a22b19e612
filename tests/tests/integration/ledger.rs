//! The ledger end to end on both stores: signed events through the real webhook pipeline, read
//! back through the real platform API's `GET /accounts/{id}/ledger`, `GET /reports/fees` and
//! `GET /accounts/{id}/tax`.

use integration_tests::{NOW, TestClock, account_updated, on_both_stores, settings, signed};
use serde_json::{Value, json};
use shared::domain::ledger::TaxThresholds;
use shared::platform::ledger::{TAX_1099K_COUNT, TAX_1099K_GROSS, TAX_1099NEC_AMOUNT};
use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};
use shared::store::{AccountStore, EventOutcome};
use shared::webhook::WebhookService;

/// 2025-06-10, a few days before [`NOW`]: every object of June's tests is created then.
const JUNE: i64 = NOW - 5 * 86_400;
/// 2026-03-01 00:00:00 UTC: the tax tests' clock, so that their payments fall after 2025-12-31.
const MARCH_2026: i64 = 1_772_323_200;

const SELLER: &str = "acct_1Seller";
const DIRECT: &str = "acct_1Direct";

/// The webhook and the platform API on one store and one clock.
struct Rig<S> {
    webhook: WebhookService<S, TestClock>,
    api: PlatformApi<S, TestClock>,
    clock: TestClock,
}

impl<S: AccountStore + Clone> Rig<S> {
    fn new(store: S, now: i64) -> Self {
        let clock = TestClock::at(now);
        let webhook = WebhookService::with_clock(store.clone(), &settings(), clock.clone());
        let api = PlatformApi::with_clock(store, None, PlatformSettings::default(), clock.clone());
        Self { webhook, api, clock }
    }

    fn with_thresholds(mut self, thresholds: TaxThresholds) -> Self {
        self.api = self.api.with_tax_thresholds(thresholds);
        self
    }

    fn now(&self) -> i64 {
        shared::clock::Clock::now_unix(&self.clock)
    }

    /// Delivers `event` signed now; it must be answered 200. Returns the answer's outcome.
    async fn deliver(&self, event: &Value) -> String {
        let (header, body) = signed(event, self.now());
        let reply = self.webhook.handle(Some(&header), &body).await;
        assert_eq!(reply.status, 200, "{}: {}", event["type"], reply.body);
        let answer: Value = serde_json::from_str(&reply.body).unwrap();
        answer["outcome"].as_str().unwrap_or_default().to_owned()
    }

    /// Delivers `event` twice, as Stripe redelivers: the second is a duplicate.
    async fn deliver_twice(&self, event: &Value) -> String {
        let first = self.deliver(event).await;
        assert_eq!(self.deliver(event).await, "duplicate", "{}", event["id"]);
        first
    }

    async fn get(&self, target: &str) -> (u16, Value) {
        self.call("GET", target).await
    }

    async fn call(&self, method: &str, target: &str) -> (u16, Value) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let request = ApiRequest { method, path, query, body: b"", base_url: "http://ignored" };
        let reply = self.api.handle(&request).await;
        (reply.status, serde_json::from_str(&reply.body).unwrap_or(Value::Null))
    }

    /// The ledger of `account` for June 2025, in `currency`.
    async fn june(&self, account: &str, currency: &str) -> Value {
        let (status, ledger) = self.get(&format!("/accounts/{account}/ledger?from=2025-06&to=2025-06")).await;
        assert_eq!(status, 200, "{ledger}");
        assert_eq!(
            (ledger["account_id"].as_str(), ledger["from"].as_str()),
            (Some(account), Some("2025-06"))
        );
        ledger["currencies"][currency].clone()
    }

    async fn seller(&self, account: &str, fees_payer: &str) {
        let mut event =
            account_updated(&format!("evt_acct_{account}"), account, self.now() - 3_000, true, &[]);
        event["data"]["object"]["controller"] = json!({"fees": {"payer": fees_payer}, "type": "application"});
        self.deliver(&event).await;
    }
}

fn event(id: &str, event_type: &str, created: i64, account: Option<&str>, object: Value) -> Value {
    let mut event = json!({"id": id, "object": "event", "type": event_type, "created": created,
        "livemode": false, "api_version": "2025-03-31.basil", "data": {"object": object}});
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    event
}

/// A destination charge to [`SELLER`] with an application fee.
fn destination_charge(id: &str, amount: i64, fee: i64, refunded: i64, created: i64) -> Value {
    json!({"id": id, "object": "charge", "status": "succeeded", "amount": amount, "amount_captured": amount,
        "amount_refunded": refunded, "captured": true, "currency": "usd", "created": created,
        "application_fee": format!("fee_{id}"), "application_fee_amount": fee, "on_behalf_of": SELLER,
        "transfer_data": {"destination": SELLER, "amount": null}, "transfer": format!("tr_{id}"),
        "payment_intent": format!("pi_{id}"), "payment_method_details": {"type": "card"}})
}

fn direct_charge(id: &str, amount: i64, fee: i64, method: &str, created: i64) -> Value {
    json!({"id": id, "object": "charge", "status": "succeeded", "amount": amount, "amount_captured": amount,
        "amount_refunded": 0, "captured": true, "currency": "usd", "created": created,
        "application_fee": format!("fee_{id}"), "application_fee_amount": fee,
        "payment_method_details": {"type": method}})
}

fn refund(id: &str, charge: &str, amount: i64, transfer_reversal: Value) -> Value {
    json!({"id": id, "object": "refund", "amount": amount, "charge": charge, "currency": "usd",
        "status": "succeeded", "transfer_reversal": transfer_reversal, "created": JUNE + 500})
}

/// An application fee of `account`, taken from the platform charge `charge` (a destination
/// charge's `originating_transaction`) or, with `direct`, from the account's own charge.
fn fee(
    id: &str,
    account: &str,
    charge: &str,
    direct: bool,
    currency: &str,
    amount: i64,
    refunded: i64,
) -> Value {
    let (charge_field, originating) =
        if direct { (json!(charge), Value::Null) } else { (json!("py_x"), json!(charge)) };
    json!({"id": id, "object": "application_fee", "account": account, "amount": amount,
        "amount_refunded": refunded, "refunded": refunded == amount, "charge": charge_field,
        "originating_transaction": originating, "currency": currency, "created": JUNE + 1, "livemode": false})
}

async fn destination_charges_are_booked_against_the_seller<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store, NOW);
    rig.seller(SELLER, "application").await;
    rig.deliver_twice(&event(
        "evt_c1",
        "charge.succeeded",
        JUNE,
        None,
        destination_charge("ch_1", 10_000, 1_000, 0, JUNE),
    ))
    .await;
    let june = rig.june(SELLER, "usd").await;
    assert_eq!(
        june,
        json!({"payments": 1, "gross": 10_000, "fees": 1_000, "refunds": 0, "disputes": 0, "net": 9_000,
            "in_person": {"payments": 0, "gross": 0}, "platform_absorbed_refunds": 0, "transfers": 0})
    );
    // The fee object is the same fee, not another one; and the charge's own transfer is no payment.
    let fee_created = event(
        "evt_f1",
        "application_fee.created",
        JUNE + 1,
        None,
        fee("fee_ch_1", SELLER, "ch_1", false, "usd", 1_000, 0),
    );
    // The ledger now holds the fee object itself (and will follow its refunds), at the same total.
    assert_eq!(rig.deliver_twice(&fee_created).await, "applied");
    let own_transfer = json!({"id": "tr_ch_1", "object": "transfer", "amount": 9_000, "amount_reversed": 0,
        "currency": "usd", "destination": SELLER, "created": JUNE, "source_transaction": "ch_1"});
    rig.deliver(&event("evt_t1", "transfer.created", JUNE + 1, None, own_transfer)).await;
    let june = rig.june(SELLER, "usd").await;
    assert_eq!(
        (june["fees"].as_i64(), june["transfers"].as_i64(), june["net"].as_i64()),
        (Some(1_000), Some(0), Some(9_000))
    );

    // Refunded without reversing the transfer: the platform kept the loss, and the ledger says so.
    rig.deliver_twice(&event(
        "evt_r1",
        "refund.created",
        JUNE + 500,
        None,
        refund("re_1", "ch_1", 3_000, Value::Null),
    ))
    .await;
    rig.deliver(&event(
        "evt_c2",
        "charge.refunded",
        JUNE + 501,
        None,
        destination_charge("ch_1", 10_000, 1_000, 3_000, JUNE),
    ))
    .await;
    // Refunded with reverse_transfer: the seller gave it back.
    rig.deliver(&event(
        "evt_c3",
        "charge.succeeded",
        JUNE + 10,
        None,
        destination_charge("ch_2", 5_000, 500, 0, JUNE + 10),
    ))
    .await;
    rig.deliver(&event(
        "evt_r2",
        "charge.refund.updated",
        JUNE + 600,
        None,
        refund("re_2", "ch_2", 5_000, json!("trr_2")),
    ))
    .await;
    rig.deliver(&event(
        "evt_c4",
        "charge.refunded",
        JUNE + 601,
        None,
        destination_charge("ch_2", 5_000, 500, 5_000, JUNE + 10),
    ))
    .await;
    // The fee of the second charge is refunded whole.
    let fee_refunded = event(
        "evt_f2",
        "application_fee.refunded",
        JUNE + 602,
        None,
        fee("fee_ch_2", SELLER, "ch_2", false, "usd", 500, 500),
    );
    assert_eq!(rig.deliver(&fee_refunded).await, "applied");
    let record = rig.webhook.store().load_event("evt_f2").await.unwrap().unwrap();
    assert_eq!(record.outcome, EventOutcome::Applied, "the record says what the ledger made of it");

    let june = rig.june(SELLER, "usd").await;
    assert_eq!(june["payments"], 2);
    assert_eq!(june["gross"], 15_000);
    assert_eq!(june["fees"], 1_000, "500 taken and 500 refunded on the second");
    assert_eq!(june["refunds"], 8_000);
    assert_eq!(june["platform_absorbed_refunds"], 3_000, "only the refund that reversed no transfer");
    assert_eq!(june["net"], 15_000 - 1_000 - 8_000);
    let (_, fees) = rig.get("/reports/fees?month=2025-06").await;
    assert_eq!(
        fees["currencies"]["usd"],
        json!({"fees": 1_500, "fees_refunded": 500, "net": 1_000, "accounts": 1})
    );
}

async fn direct_and_in_person_charges_are_booked_on_their_account<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store, NOW);
    rig.seller(DIRECT, "account").await;
    rig.deliver_twice(&event(
        "evt_d1",
        "charge.succeeded",
        JUNE,
        Some(DIRECT),
        direct_charge("ch_d1", 4_000, 200, "card", JUNE),
    ))
    .await;
    // Stripe Terminal: the same charge types, told apart by their payment method.
    rig.deliver(&event(
        "evt_d2",
        "charge.captured",
        JUNE + 1,
        Some(DIRECT),
        direct_charge("ch_d2", 6_000, 300, "card_present", JUNE + 1),
    ))
    .await;
    rig.deliver(&event(
        "evt_d3",
        "charge.succeeded",
        JUNE + 2,
        Some(DIRECT),
        direct_charge("ch_d3", 1_500, 0, "interac_present", JUNE + 2),
    ))
    .await;
    let june = rig.june(DIRECT, "usd").await;
    assert_eq!(
        (june["payments"].as_i64(), june["gross"].as_i64(), june["fees"].as_i64()),
        (Some(3), Some(11_500), Some(500))
    );
    assert_eq!(june["in_person"], json!({"payments": 2, "gross": 7_500}));
    assert_eq!(june["net"], 11_000);
    // The direct charge's fee, as Stripe reports it: taken from the account's own charge.
    let direct_fee = event(
        "evt_df",
        "application_fee.refunded",
        JUNE + 9,
        None,
        fee("fee_ch_d1", DIRECT, "ch_d1", true, "usd", 200, 50),
    );
    assert_eq!(rig.deliver(&direct_fee).await, "applied");
    assert_eq!(rig.june(DIRECT, "usd").await["fees"], 450);
    // Nothing was booked against anyone else.
    let (status, _) = rig.get(&format!("/accounts/{SELLER}/ledger?from=2025-06&to=2025-06")).await;
    assert_eq!(status, 404, "never seen, never booked");
}

async fn a_month_of_fees_reads_back<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store, NOW);
    rig.seller("acct_1A", "application").await;
    rig.seller("acct_1B", "application").await;
    let fees = [
        ("evt_fa1", "application_fee.created", "fee_a1", "acct_1A", "ch_a1", "usd", 1_000, 0),
        ("evt_fa2", "application_fee.created", "fee_a2", "acct_1A", "ch_a2", "usd", 2_000, 0),
        ("evt_fb1", "application_fee.created", "fee_b1", "acct_1B", "ch_b1", "usd", 700, 0),
        // A fee in another currency than its charge: recorded as is, never converted.
        ("evt_fb2", "application_fee.created", "fee_b2", "acct_1B", "ch_b2", "eur", 900, 0),
    ];
    for (id, kind, fee_id, account, charge, currency, amount, refunded) in fees {
        assert_eq!(
            rig.deliver_twice(&event(
                id,
                kind,
                JUNE + 1,
                None,
                fee(fee_id, account, charge, false, currency, amount, refunded)
            ))
            .await,
            "applied"
        );
    }
    // One fee refunded partly, then fully; the partial snapshot redelivered late, and the full one
    // sent again under a new event id with the same cumulative amount_refunded.
    let partly = event(
        "evt_fa2r1",
        "application_fee.refunded",
        JUNE + 100,
        None,
        fee("fee_a2", "acct_1A", "ch_a2", false, "usd", 2_000, 600),
    );
    let fully = event(
        "evt_fa2r2",
        "application_fee.refunded",
        JUNE + 200,
        None,
        fee("fee_a2", "acct_1A", "ch_a2", false, "usd", 2_000, 2_000),
    );
    let again = event(
        "evt_fa2r3",
        "application_fee.refunded",
        JUNE + 200,
        None,
        fee("fee_a2", "acct_1A", "ch_a2", false, "usd", 2_000, 2_000),
    );
    assert_eq!(rig.deliver(&fully).await, "applied");
    assert_eq!(rig.deliver(&partly).await, "stale", "an older snapshot never lowers a newer one");
    assert_eq!(rig.deliver(&again).await, "unchanged", "the same cumulative amount never counts twice");
    // A fee refund object without its fee says nothing new.
    let fee_refund = json!({"id": "fr_1", "object": "fee_refund", "amount": 600, "currency": "usd", "fee": "fee_a2", "created": JUNE + 100});
    assert_eq!(
        rig.deliver(&event("evt_fr", "application_fee.refund.updated", JUNE + 300, None, fee_refund)).await,
        "unchanged"
    );

    let (status, report) = rig.get("/reports/fees?month=2025-06").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["month"], "2025-06");
    assert_eq!(
        report["currencies"]["usd"],
        json!({"fees": 3_700, "fees_refunded": 2_000, "net": 1_700, "accounts": 2})
    );
    assert_eq!(
        report["currencies"]["eur"],
        json!({"fees": 900, "fees_refunded": 0, "net": 900, "accounts": 1})
    );
    assert_eq!(rig.june("acct_1A", "usd").await["fees"], 1_000);
    assert_eq!(rig.june("acct_1B", "eur").await["fees"], 900);
    let (_, july) = rig.get("/reports/fees?month=2025-07").await;
    assert_eq!(july, json!({"month": "2025-07", "currencies": {}}));
}

async fn disputes_are_booked_net_of_reinstatements<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store, NOW);
    rig.seller(SELLER, "application").await;
    let dispute = |id: &str, charge: &str| {
        json!({"id": id, "object": "dispute", "charge": charge, "amount": 10_000, "currency": "usd",
            "status": "needs_response", "created": JUNE + 50})
    };
    // A dispute of a charge never recorded books nothing, and is answered 200.
    rig.deliver(&event(
        "evt_x1",
        "charge.dispute.funds_withdrawn",
        JUNE + 50,
        None,
        dispute("dp_x", "ch_unknown"),
    ))
    .await;
    let (status, _) = rig.get(&format!("/accounts/{SELLER}/ledger?from=2025-06&to=2025-06")).await;
    assert_eq!(status, 200);
    assert_eq!(rig.june(SELLER, "usd").await, Value::Null);

    rig.deliver(&event(
        "evt_c1",
        "charge.succeeded",
        JUNE,
        None,
        destination_charge("ch_1", 10_000, 1_000, 0, JUNE),
    ))
    .await;
    rig.deliver(&event(
        "evt_c2",
        "charge.succeeded",
        JUNE,
        None,
        destination_charge("ch_2", 10_000, 1_000, 0, JUNE),
    ))
    .await;
    rig.deliver_twice(&event(
        "evt_w1",
        "charge.dispute.funds_withdrawn",
        JUNE + 60,
        None,
        dispute("dp_1", "ch_1"),
    ))
    .await;
    rig.deliver(&event("evt_w2", "charge.dispute.funds_withdrawn", JUNE + 60, None, dispute("dp_2", "ch_2")))
        .await;
    assert_eq!(rig.june(SELLER, "usd").await["disputes"], 20_000);
    rig.deliver(&event(
        "evt_won",
        "charge.dispute.funds_reinstated",
        JUNE + 90,
        None,
        dispute("dp_2", "ch_2"),
    ))
    .await;
    let june = rig.june(SELLER, "usd").await;
    assert_eq!(
        (june["disputes"].as_i64(), june["net"].as_i64()),
        (Some(10_000), Some(20_000 - 2_000 - 10_000))
    );
}

async fn tax_thresholds_are_crossed_or_not<S: AccountStore + Clone>(store: S) {
    let configured = TaxThresholds::from_lookup(|name| {
        match name {
            TAX_1099K_GROSS => Some("20000"),
            TAX_1099K_COUNT => Some("3"),
            TAX_1099NEC_AMOUNT => Some("5000"),
            _ => None,
        }
        .map(str::to_owned)
    })
    .unwrap();
    assert_eq!(configured, TaxThresholds { k_gross: 20_000, k_payments: 3, nec_amount: 5_000 });
    let rig = Rig::new(store, MARCH_2026).with_thresholds(configured);
    let january = MARCH_2026 - 40 * 86_400;
    rig.seller(SELLER, "application").await;
    rig.seller(DIRECT, "account").await;
    for n in 0..4 {
        let id = format!("ch_big{n}");
        rig.deliver(&event(
            &format!("evt_big{n}"),
            "charge.succeeded",
            january,
            None,
            destination_charge(&id, 6_000, 600, 0, january),
        ))
        .await;
    }
    for n in 0..3 {
        let id = format!("ch_small{n}");
        rig.deliver(&event(
            &format!("evt_small{n}"),
            "charge.succeeded",
            january,
            Some(DIRECT),
            direct_charge(&id, 9_000, 0, "card", january),
        ))
        .await;
    }
    // A transfer of a separate charge is a payment to the seller, never gross volume.
    let transfer = |id: &str, to: &str, amount: i64| {
        json!({"id": id, "object": "transfer", "amount": amount, "amount_reversed": 0, "currency": "usd",
            "destination": to, "created": january, "source_transaction": "ch_platform"})
    };
    rig.deliver(&event("evt_t1", "transfer.created", january, None, transfer("tr_1", SELLER, 5_000))).await;
    rig.deliver(&event("evt_t2", "transfer.created", january, None, transfer("tr_2", DIRECT, 4_999))).await;
    // In another currency: listed, never converted, never counted toward a USD threshold.
    let mut euros = destination_charge("ch_eur", 90_000, 0, 0, january);
    euros["currency"] = json!("eur");
    rig.deliver(&event("evt_eur", "charge.succeeded", january, None, euros)).await;

    let (status, big) = rig.get(&format!("/accounts/{SELLER}/tax?year=2026")).await;
    assert_eq!(status, 200, "{big}");
    assert_eq!(big["year"], 2026);
    assert_eq!(big["filer"], "platform");
    assert_eq!(big["gross"], json!({"usd": 24_000, "eur": 90_000}));
    assert_eq!(big["payments"], 4);
    assert_eq!(big["transfers"], json!({"usd": 5_000}));
    assert_eq!(big["thresholds"], json!({"us_1099_k": true, "us_1099_nec": true}));
    let (_, small) = rig.get(&format!("/accounts/{DIRECT}/tax?year=2026")).await;
    assert_eq!(small["filer"], "stripe", "controller.fees.payer = account: Stripe files");
    assert_eq!((small["gross"]["usd"].as_i64(), small["payments"].as_i64()), (Some(27_000), Some(3)));
    assert_eq!(
        small["thresholds"],
        json!({"us_1099_k": false, "us_1099_nec": false}),
        "3 payments is not above 3"
    );
    let (_, last_year) = rig.get(&format!("/accounts/{SELLER}/tax?year=2025")).await;
    assert_eq!(last_year["gross"], json!({}));
    assert_eq!(last_year["thresholds"], json!({"us_1099_k": false, "us_1099_nec": false}));
    // With today's defaults, none of this crosses anything.
    let defaults = Rig::new(rig.webhook.store().clone(), MARCH_2026);
    let (_, big) = defaults.get(&format!("/accounts/{SELLER}/tax?year=2026")).await;
    assert_eq!(big["thresholds"], json!({"us_1099_k": false, "us_1099_nec": false}));
    for bad in ["-1", "1.5", "lots"] {
        let error =
            TaxThresholds::from_lookup(|name| (name == TAX_1099K_COUNT).then(|| bad.to_owned())).unwrap_err();
        assert_eq!(
            error.to_string(),
            "CONNECT_FLOW_TAX_1099K_COUNT is invalid: must be a whole number, 0 or more"
        );
    }
}

async fn bad_queries_are_refused<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store, NOW);
    rig.seller(SELLER, "application").await;
    let ledger = |query: &str| format!("/accounts/{SELLER}/ledger?{query}");
    for (target, field) in [
        (ledger("from=2025-06"), "to"),
        (ledger("to=2025-06"), "from"),
        (ledger("from=2025-6&to=2025-06"), "from"),
        (ledger("from=2025-06&to=2025-13"), "to"),
        (ledger("from=June&to=2025-06"), "from"),
        (ledger("from=2025-07&to=2025-06"), "to"),
        (ledger("from=2024-01&to=2026-01"), "to"),
        ("/reports/fees".to_owned(), "month"),
        ("/reports/fees?month=2025".to_owned(), "month"),
        (format!("/accounts/{SELLER}/tax"), "year"),
        (format!("/accounts/{SELLER}/tax?year=25"), "year"),
        (format!("/accounts/{SELLER}/tax?year=1900"), "year"),
        (format!("/accounts/{SELLER}/tax?year=2025-01"), "year"),
    ] {
        let (status, error) = rig.get(&target).await;
        assert_eq!(status, 400, "{target}: {error}");
        assert_eq!(
            (error["error"].as_str(), error["field"].as_str()),
            (Some("invalid_request"), Some(field)),
            "{target}"
        );
    }
    let (status, _) = rig.get(&ledger("from=2024-01&to=2025-12")).await;
    assert_eq!(status, 200, "24 months is the most a ledger covers");
    for target in [
        "/accounts/acct_1Never/ledger?from=2025-06&to=2025-06",
        "/accounts/acct_1Never/tax?year=2025",
        "/accounts/nope/ledger?from=2025-06&to=2025-06",
    ] {
        let (status, error) = rig.get(target).await;
        assert_eq!((status, error["error"].as_str()), (404, Some("not_found")), "{target}");
    }
    let (status, _) = rig.call("POST", "/reports/fees?month=2025-06").await;
    assert_eq!(status, 405);
}

/// The sample events #14–#18 of `events/stripe/README.md`, replayed in order, read back as the
/// README says.
async fn the_sample_month_reads_back_as_its_readme_says<S: AccountStore + Clone>(store: S) {
    let rig = Rig::new(store, 1_732_001_100);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/stripe");
    for (file, outcome) in [
        ("charge.succeeded.destination.json", None),
        ("application_fee.created.json", Some("applied")),
        ("refund.created.json", None),
        ("application_fee.refunded.json", Some("applied")),
        ("charge.succeeded.terminal.json", None),
    ] {
        let event: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let answered = rig.deliver(&event).await;
        if let Some(outcome) = outcome {
            assert_eq!(answered, outcome, "{file}");
        }
    }
    let (status, ledger) = rig.get("/accounts/acct_1QcFlowDemo0001/ledger?from=2024-11&to=2024-11").await;
    assert_eq!(status, 200, "{ledger}");
    assert_eq!(
        ledger["currencies"],
        json!({"usd": {"payments": 2, "gross": 23_500, "fees": 1_600, "refunds": 5_000, "disputes": 0, "net": 16_900,
            "in_person": {"payments": 1, "gross": 3_500}, "platform_absorbed_refunds": 5_000, "transfers": 0}})
    );
    let (_, fees) = rig.get("/reports/fees?month=2024-11").await;
    assert_eq!(
        fees["currencies"],
        json!({"usd": {"fees": 2_100, "fees_refunded": 500, "net": 1_600, "accounts": 1}})
    );
}

on_both_stores!(
    the_sample_month_reads_back_as_its_readme_says,
    destination_charges_are_booked_against_the_seller,
    direct_and_in_person_charges_are_booked_on_their_account,
    a_month_of_fees_reads_back,
    disputes_are_booked_net_of_reinstatements,
    tax_thresholds_are_crossed_or_not,
    bad_queries_are_refused,
);
