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
