//! What each kind of event costs on DynamoDB, counted request by request through an SDK
//! interceptor against moto server. On AWS every request is money: these are the minimum the
//! guarantees allow (one consistent read to decide against, one conditional write to commit), and
//! a change that adds one fails here.

use integration_tests::{NOW, RequestLog, account_updated, dynamo_store_logged, pipeline, requests_for};
use serde_json::json;

#[tokio::test]
async fn each_event_costs_the_fewest_requests_its_guarantees_allow() {
    let log = RequestLog::default();
    let service = pipeline(dynamo_store_logged(log.clone()).await);
    let first = account_updated("evt_r1", "acct_1", NOW - 50, false, &["x"]);
    let update = account_updated("evt_r2", "acct_1", NOW - 40, true, &[]);
    let stale = account_updated("evt_r3", "acct_1", NOW - 45, false, &["y"]);
    let unhandled = json!({"id": "evt_r4", "object": "event", "type": "customer.created", "created": NOW,
        "data": {"object": {"id": "cus_1", "object": "customer"}}});
    let cases = [
        ("new account", &first, vec!["GetItem", "TransactWriteItems"]),
        ("update to a known account", &update, vec!["GetItem", "TransactWriteItems"]),
        ("duplicate of an account event", &update, vec!["GetItem", "TransactWriteItems"]),
        ("stale account event", &stale, vec!["GetItem", "PutItem"]),
        ("unhandled type", &unhandled, vec!["PutItem"]),
        ("duplicate of an unhandled event", &unhandled, vec!["PutItem"]),
    ];
    for (case, event, expected) in cases {
        let requests = requests_for(&log, &service, event).await;
        println!("{case}: {}", requests.join(" + "));
        assert_eq!(requests, expected, "{case}");
    }
}

/// What each platform API call costs on DynamoDB. A reference costs one consistent read to find a
/// repeat and rides in the write that creates its object.
#[tokio::test]
async fn each_platform_call_costs_the_requests_pinned_here() {
    use integration_tests::stripe_stub::StripeStub;
    use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};
    use shared::stripe::client::StripeClient;

    let log = RequestLog::default();
    let store = dynamo_store_logged(log.clone()).await;
    let stub = StripeStub::start().await;
    let clock = integration_tests::TestClock::at(stub.now());
    let settings = PlatformSettings {
        link_secret: shared::platform::token::LinkSecret::new("a-link-secret-for-counting"),
        public_url: Some("https://flow.example".into()),
        expected_livemode: Some(false),
    };
    let api = PlatformApi::with_clock(
        store,
        Some(StripeClient::new(stub.client_config()).unwrap()),
        settings,
        clock.clone(),
    );
    let call = |method: &'static str, target: String, body: serde_json::Value| {
        let api = &api;
        let log = log.clone();
        async move {
            log.take();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let body = body.to_string();
            let request = ApiRequest { method, path, query, body: body.as_bytes(), base_url: "" };
            let reply = api.handle(&request).await;
            assert!(reply.status < 300, "{method} {target}: {}", reply.body);
            (serde_json::from_str::<serde_json::Value>(&reply.body).unwrap_or_default(), log.take())
        }
    };
    let account = json!({"reference": "seller-1", "country": "US", "dashboard": "express", "capabilities": ["transfers"]});
    let (created, new_account) = call("POST", "/accounts".into(), account.clone()).await;
    let id = created["account_id"].as_str().unwrap().to_owned();
    let (_, repeated_account) = call("POST", "/accounts".into(), account).await;
    let transfer = json!({"reference": "t-1", "destination": id, "amount": 100, "currency": "usd"});
    let (_, new_transfer) = call("POST", "/transfers".into(), transfer.clone()).await;
    let (_, repeated_transfer) = call("POST", "/transfers".into(), transfer).await;
    let (_, get_account) = call("GET", format!("/accounts/{id}"), json!(null)).await;
    let (_, get_steps) = call("GET", format!("/accounts/{id}/steps"), json!(null)).await;
    let (_, by_status) = call("GET", "/accounts?status=onboarding".into(), json!(null)).await;
    let (_, all) = call("GET", "/accounts".into(), json!(null)).await;
    let link = json!({"return_url": "https://platform.example/back"});
    let (_, onboarding_link) = call("POST", format!("/accounts/{id}/onboarding_link"), link).await;
    clock.advance(60);
    let (page, changes_from_start) = call("GET", "/changes?limit=100".into(), json!(null)).await;
    let cursor = page["next"].as_str().unwrap().to_owned();
    let (_, changes_after) = call("GET", format!("/changes?after={cursor}"), json!(null)).await;
    let (_, changes_after_ancient) =
        call("GET", "/changes?after=000000000001.chg_old".into(), json!(null)).await;

    let query_per_day = vec!["Query"; 31];
    let cases: [(&str, Vec<String>, Vec<&str>); 12] = [
        ("POST /accounts, new", new_account, vec!["GetItem", "PutItem", "GetItem", "TransactWriteItems"]),
        ("POST /accounts, repeated", repeated_account, vec!["GetItem", "GetItem"]),
        ("POST /transfers, new", new_transfer, vec!["GetItem", "GetItem", "TransactWriteItems"]),
        ("POST /transfers, repeated", repeated_transfer, vec!["GetItem", "GetItem"]),
        ("GET /accounts/{id}", get_account, vec!["GetItem"]),
        ("GET /accounts/{id}/steps", get_steps, vec!["Query"]),
        ("GET /accounts?status=S", by_status, vec!["Query"]),
        ("GET /accounts (one query per status)", all, vec!["Query"; 7]),
        ("POST /accounts/{id}/onboarding_link", onboarding_link, vec!["GetItem"]),
        ("GET /changes from the start (one query per day kept)", changes_from_start, query_per_day),
        ("GET /changes after a cursor of today", changes_after, vec!["Query"]),
        ("GET /changes after a cursor older than the feed keeps", changes_after_ancient, vec!["Query"; 31]),
    ];
    println!("\n| platform call | DynamoDB requests |\n|---|---|");
    for (case, requests, _) in &cases {
        println!("| {case} | `{}` |", requests.join(" + "));
    }
    for (case, requests, expected) in cases {
        assert_eq!(requests, expected, "{case}");
    }
}

/// What a thin event costs, in the webhook and then in the fetch worker: DynamoDB and SQS
/// requests through the real SDK clients against moto, and Stripe reads against the stand-in.
#[tokio::test]
async fn a_thin_event_costs_the_requests_pinned_here() {
    use std::sync::Arc;

    use integration_tests::stripe_stub::StripeStub;
    use shared::fetch::{FetchWorker, Pacer};
    use shared::store::sqs::{SqsQueue, create_queue_with_dlq, create_queues};
    use shared::stripe::client::StripeClient;
    use shared::webhook::WebhookService;

    let log = RequestLog::default();
    let store = dynamo_store_logged(log.clone()).await;
    let sqs = integration_tests::sqs_client_logged(log.clone()).await;
    let prefix = format!("thin{}", std::process::id());
    let (transfers, payouts) = create_queues(&sqs, &prefix).await.unwrap();
    let fetch_url = create_queue_with_dlq(&sqs, &format!("{prefix}-fetch")).await.unwrap();
    let queue = Arc::new(SqsQueue::new(sqs, transfers, payouts).with_fetch_queue(Some(fetch_url)));
    let webhook = pipeline(store.clone()).with_queue(queue.clone());
    let stub = StripeStub::start().await;
    let account = "acct_1ThinCount";
    stub.put_v2_account(account, json!({"id": account, "object": "v2.core.account", "closed": false,
        "configuration": {"recipient": {"capabilities": {"stripe_balance": {"stripe_transfers": {"status": "pending", "status_details": []}}}}},
        "requirements": {"entries": []}}));
    let applier =
        WebhookService::with_clock(store, &integration_tests::settings(), shared::clock::FixedClock(NOW))
            .with_queue(queue);
    let fetcher = FetchWorker::new(applier, StripeClient::new(stub.client_config()).unwrap())
        .with_pacer(Arc::new(Pacer::per_second(1_000)));
    let thin = json!({"id": "evt_1ThinCount", "object": "v2.core.event", "type": "v2.core.account.updated",
        "created": "2025-06-15T15:06:00.000Z", "context": null,
        "related_object": {"id": account, "type": "v2.core.account", "url": format!("/v2/core/accounts/{account}")}});

    let webhook_requests = requests_for(&log, &webhook, &thin).await;
    println!("thin event, webhook: {}", webhook_requests.join(" + "));
    assert_eq!(webhook_requests, ["PutItem", "SendMessageBatch"], "one write and one send; no Stripe call");
    assert!(stub.received().is_empty());

    let fetch = shared::domain::fetch::FetchRef { event_id: "evt_1ThinCount".into(), group: account.into() };
    log.take();
    fetcher.run(&fetch).await.unwrap();
    let worker_requests = log.take();
    println!("thin event, fetch worker: {}", worker_requests.join(" + "));
    assert_eq!(
        worker_requests,
        ["GetItem", "GetItem", "TransactWriteItems", "PutItem"],
        "read the record, read the account, commit the twin with the account, end the fetch step"
    );
    assert_eq!(stub.requests().values().sum::<usize>(), 1, "one Stripe read");

    let duplicate_requests = requests_for(&log, &webhook, &thin).await;
    println!("thin event, duplicate delivery: {}", duplicate_requests.join(" + "));
    assert_eq!(
        duplicate_requests,
        ["PutItem", "GetItem"],
        "the record says the fetch is done: nothing re-sent"
    );
}

/// What the ledger costs on DynamoDB: an application fee event (the ledger's read, the event's
/// record, then the entry and its buckets in one transaction), its redeliveries, and the reads of
/// the ledger routes. Twelve months of an account's ledger are one `Query`; nothing scans.
#[tokio::test]
async fn ledger_events_and_reads_cost_the_requests_pinned_here() {
    use shared::clock::FixedClock;
    use shared::platform::{ApiRequest, PlatformApi, PlatformSettings};

    let log = RequestLog::default();
    let store = dynamo_store_logged(log.clone()).await;
    let service = pipeline(store.clone());
    let api = PlatformApi::with_clock(store, None, PlatformSettings::default(), FixedClock(NOW));
    let account = "acct_1LedgerCount";
    requests_for(&log, &service, &account_updated("evt_l0", account, NOW - 60, true, &[])).await;
    // A fee in each of the twelve months to June 2025 (NOW), 31 days apart.
    let fee = |n: i64, refunded: i64| {
        json!({"id": format!("fee_{n}"), "object": "application_fee", "account": account, "amount": 1_000,
            "amount_refunded": refunded, "charge": format!("py_{n}"), "originating_transaction": format!("ch_{n}"),
            "currency": "usd", "created": NOW - n * 31 * 86_400})
    };
    let fee_event = |id: &str, kind: &str, n: i64, refunded: i64| json!({"id": id, "object": "event", "type": kind, "created": NOW - 30, "data": {"object": fee(n, refunded)}});
    let first = requests_for(&log, &service, &fee_event("evt_f0", "application_fee.created", 0, 0)).await;
    let duplicate = requests_for(&log, &service, &fee_event("evt_f0", "application_fee.created", 0, 0)).await;
    let refunded =
        requests_for(&log, &service, &fee_event("evt_f0r", "application_fee.refunded", 0, 250)).await;
    let same_again =
        requests_for(&log, &service, &fee_event("evt_f0r2", "application_fee.refunded", 0, 250)).await;
    for n in 1..12 {
        requests_for(&log, &service, &fee_event(&format!("evt_f{n}"), "application_fee.created", n, 0)).await;
    }
    let call = |target: &'static str| {
        let api = &api;
        let log = log.clone();
        async move {
            log.take();
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let reply = api.handle(&ApiRequest { method: "GET", path, query, body: b"", base_url: "" }).await;
            assert_eq!(reply.status, 200, "{target}: {}", reply.body);
            (serde_json::from_str::<serde_json::Value>(&reply.body).unwrap(), log.take())
        }
    };
    let (year, ledger_read) = call("/accounts/acct_1LedgerCount/ledger?from=2024-07&to=2025-06").await;
    assert_eq!(
        year["currencies"]["usd"]["fees"],
        12 * 1_000 - 250,
        "twelve months of fees, one refunded in part"
    );
    let (report, fee_report) = call("/reports/fees?month=2025-06").await;
    assert_eq!(report["currencies"]["usd"]["accounts"], 1);
    let (_, tax_read) = call("/accounts/acct_1LedgerCount/tax?year=2025").await;

    let cases: [(&str, Vec<String>, Vec<&str>); 7] = [
        ("application_fee.created, new", first, vec!["GetItem", "PutItem", "TransactWriteItems"]),
        ("duplicate delivery of that fee event", duplicate, vec!["GetItem", "PutItem"]),
        ("application_fee.refunded, partly", refunded, vec!["GetItem", "PutItem", "TransactWriteItems"]),
        ("application_fee.refunded, same cumulative amount", same_again, vec!["GetItem", "PutItem"]),
        ("GET /accounts/{id}/ledger, 12 months", ledger_read, vec!["Query"]),
        ("GET /reports/fees (one query per fee shard)", fee_report, vec!["Query"; 8]),
        ("GET /accounts/{id}/tax", tax_read, vec!["GetItem", "Query"]),
    ];
    println!("\n| ledger case | DynamoDB requests |\n|---|---|");
    for (case, requests, _) in &cases {
        println!("| {case} | `{}` |", requests.join(" + "));
    }
    for (case, requests, expected) in cases {
        assert!(!requests.iter().any(|request| request == "Scan"), "{case}: a scan");
        assert_eq!(requests, expected, "{case}");
    }
}

/// What a dispute costs on DynamoDB: the ledger entry's read (the charge is a separate charge the
/// ledger has no entry for, so nothing more), one consistent Query of the payment's partition (its
/// guard and steps), one consistent GetItem per seller (their dispute summaries), and one
/// transaction with the record, the guard, the reversals, the sellers and the changes. A failed
/// refund costs the same without the sellers.
#[tokio::test]
async fn a_dispute_and_a_failed_refund_cost_the_requests_pinned_here() {
    let log = RequestLog::default();
    let service = pipeline(dynamo_store_logged(log.clone()).await);
    for (n, seller) in ["acct_1DisputeA", "acct_1DisputeB"].iter().enumerate() {
        requests_for(&log, &service, &account_updated(&format!("evt_d{n}"), seller, NOW - 90, true, &[]))
            .await;
    }
    let payment = json!({"id": "evt_dp", "object": "event", "type": "payment_intent.succeeded", "created": NOW - 80,
        "data": {"object": {"id": "pi_dp", "object": "payment_intent", "amount": 10_000, "amount_received": 10_000,
        "currency": "usd", "latest_charge": "ch_dp",
        "metadata": {"transfer:acct_1DisputeA": "6000", "transfer:acct_1DisputeB": "3000"}}}});
    requests_for(&log, &service, &payment).await;
    let dispute = |id: &str, kind: &str| {
        json!({"id": id, "object": "event", "type": kind, "created": NOW - 70, "data": {"object": {
            "id": "dp_count", "object": "dispute", "amount": 10_000, "currency": "usd", "charge": "ch_dp",
            "payment_intent": "pi_dp", "status": "needs_response"}}})
    };
    let withdrawn = requests_for(&log, &service, &dispute("evt_dw", "charge.dispute.funds_withdrawn")).await;
    let duplicate = requests_for(&log, &service, &dispute("evt_dw", "charge.dispute.funds_withdrawn")).await;
    let failure = json!({"id": "evt_rf", "object": "event", "type": "refund.updated", "created": NOW - 60,
        "data": {"object": {"id": "re_count", "object": "refund", "amount": 1_000, "currency": "usd",
        "charge": "ch_dp", "payment_intent": "pi_dp", "status": "failed", "created": NOW - 65}}});
    let refund_failed = requests_for(&log, &service, &failure).await;
    let cases = [
        ("charge.dispute.funds_withdrawn, two sellers", withdrawn),
        ("its duplicate", duplicate),
        ("refund.updated failed, of a charge with no refund", refund_failed),
    ];
    for (case, requests) in &cases {
        println!("| {case} | `{}` |", requests.join(" + "));
    }
    let expected: [&[&str]; 3] = [
        &["GetItem", "Query", "GetItem", "GetItem", "TransactWriteItems"],
        // Refused by the record's condition; the steps still queued are re-sent.
        &["GetItem", "Query", "GetItem", "GetItem", "PutItem", "Query"],
        &["GetItem", "Query", "TransactWriteItems"],
    ];
    for ((case, requests), expected) in cases.iter().zip(expected) {
        assert_eq!(requests, expected, "{case}");
    }
}
