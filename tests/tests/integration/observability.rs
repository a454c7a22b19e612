//! What a deployed function prints, captured line by line through the production subscriber and
//! metrics recorder: every log line is JSON and names its event or its step, the EMF lines count
//! each outcome, and no line carries a body, the webhook secret or the API key.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use integration_tests::log_capture::capture_logs_at;
use integration_tests::stripe_stub::{STUB_API_KEY, StripeStub};
use integration_tests::{NOW, SECRET, account_updated, pipeline, signed, sqlite_store};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::domain::account::AccountId;
use shared::metrics::{MemorySink, Metrics, MetricsSettings};
use shared::sqs_worker::handle_sqs_batch;
use shared::store::AccountStore;
use shared::stripe::client::StripeClient;
use shared::stripe::signature::{WebhookSecret, sign};
use shared::worker::StepWorker;

/// Written into every body; it must appear in no line.
const MARKER: &str = "body_marker_must_not_be_logged";
const SELLER: &str = "acct_1Seller";

/// What one run of the scenario printed: log lines, and EMF lines.
struct Printed {
    logs: Vec<String>,
    metrics: Vec<String>,
}

fn payment(id: &str) -> Value {
    json!({"id": id, "object": "event", "type": "payment_intent.succeeded", "created": NOW - 50,
        "livemode": false, "data": {"object": {
            "id": "pi_1", "object": "payment_intent", "amount": 10_000, "amount_received": 10_000,
            "currency": "usd", "latest_charge": "ch_1", "receipt_email": MARKER,
            "metadata": {"transfer:acct_1Seller": "7000", "note": MARKER}}}})
}

fn sqs_batch(body: &str) -> SqsEvent {
    serde_json::from_value(json!({"Records": [{
        "messageId": "m1", "receiptHandle": "rh-1", "body": body,
        "attributes": {"MessageGroupId": SELLER, "MessageDeduplicationId": "d1",
                       "ApproximateReceiveCount": "2", "SequenceNumber": "1"},
        "messageAttributes": {}, "eventSource": "aws:sqs", "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:connect-flow-transfers.fifo"}]}))
    .unwrap()
}

/// Every delivery outcome the issue names, then the transfer it plans, run by the embedded worker
/// and once more from an SQS batch, all at `level` through the Lambda functions' JSON subscriber.
fn run_scenario(level: &str) -> Printed {
    let sink = MemorySink::default();
    let metrics_for = |function_name: &str| {
        let settings =
            MetricsSettings { namespace: "ConnectFlow".into(), function_name: function_name.into() };
        Metrics::to_sink(settings, Arc::new(sink.clone()))
    };
    let ((), text) = capture_logs_at(level, async {
        let stub = StripeStub::start().await;
        stub.set_platform_balance("usd", 100_000);
        stub.add_account(SELLER, true, true);
        let store = sqlite_store();
        let service =
            pipeline(store.clone()).with_queue(Arc::new(store.clone())).with_metrics(metrics_for("webhook"));
        let stripe = StripeClient::new(stub.client_config()).unwrap();
        let worker = StepWorker::with_clock(store.clone(), stripe, FixedClock(NOW))
            .with_metrics(metrics_for("transfer-worker"));
        let deliver = |event: Value| {
            let (header, body) = signed(&event, NOW);
            let service = &service;
            async move { service.handle(Some(&header), &body).await }
        };

        let mut onboarded = account_updated("evt_onboarded", SELLER, NOW - 100, true, &[MARKER]);
        onboarded["data"]["object"]["email"] = json!(MARKER);
        assert!(deliver(onboarded.clone()).await.body.contains("applied"));
        assert!(deliver(onboarded).await.body.contains("duplicate"));
        let older = account_updated("evt_older", SELLER, NOW - 200, false, &[MARKER]);
        assert!(deliver(older).await.body.contains("stale"));
        let (header, body) = signed(&account_updated("evt_forged", SELLER, NOW, true, &[MARKER]), NOW);
        let forged = service.handle(Some(&header.replace("v1=", "v1=0")), &body).await;
        assert_eq!(forged.status, 400);
        let not_json = format!("{{{MARKER}");
        let header = sign(&WebhookSecret::new(SECRET), NOW, not_json.as_bytes());
        assert_eq!(service.handle(Some(&header), not_json.as_bytes()).await.status, 400);
        assert!(deliver(payment("evt_paid")).await.body.contains("applied"));

        assert_eq!(worker.drain_embedded().await.unwrap(), 1, "the planned transfer runs");
        assert_eq!(stub.transfers().len(), 1);
        let step = store.load_account_steps(&AccountId::parse(SELLER).unwrap()).await.unwrap();
        let message = serde_json::to_string(&step[0].reference()).unwrap();
        let redelivered = handle_sqs_batch(&worker, sqs_batch(&message)).await;
        assert!(redelivered.batch_item_failures.is_empty(), "a finished step is acknowledged");
        assert_eq!(stub.transfers().len(), 1, "and not sent again");
    });
    let logs = text.lines().map(str::to_owned).collect();
    Printed { logs, metrics: sink.lines() }
}

fn parse_all(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| {
            let value: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

#[test]
fn every_log_line_is_json_and_names_its_event_or_its_step() {
    let printed = run_scenario("INFO");
    let lines = parse_all(&printed.logs);
    for line in &lines {
        assert!(
            line["level"].is_string() && line["timestamp"].is_string() && line["message"].is_string(),
            "{line}"
        );
        let named_event = line["event_id"].is_string();
        let named_step = line["step_id"].is_string();
        // Only a refused delivery is logged before its event is read.
        let refused_unread = line["message"] == "webhook refused" && line["reason"].is_string();
        assert!(named_event || named_step || refused_unread, "a line names neither event nor step: {line}");
        if named_event && line["event_id"] != "evt_paid" {
            assert_eq!(line["event_type"], "account.updated", "{line}");
            assert_eq!(line["account_id"], SELLER, "{line}");
        }
        if named_step {
            assert_eq!(
                (line["kind"].as_str(), line["account_id"].as_str()),
                (Some("transfer"), Some(SELLER)),
                "{line}"
            );
        }
    }
    let handled: Vec<(&str, &str)> = lines
        .iter()
        .filter(|line| line["message"] == "event handled")
        .map(|line| (line["event_id"].as_str().unwrap(), line["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        handled,
        [
            ("evt_onboarded", "applied"),
            ("evt_onboarded", "duplicate"),
            ("evt_older", "stale"),
            ("evt_paid", "applied")
        ]
    );
    let paid = lines.iter().find(|line| line["event_id"] == "evt_paid").unwrap();
    assert_eq!(paid["event_type"], "payment_intent.succeeded");
    let reasons: Vec<&str> = lines
        .iter()
        .filter(|line| line["message"] == "webhook refused")
        .map(|line| line["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["signature_mismatch", "invalid_json"]);
    let finished =
        lines.iter().find(|line| line["message"] == "step finished").expect("the worker logs the transfer");
    assert!(finished["step_id"].as_str().is_some_and(|id| id.contains(SELLER)), "{finished}");
}

/// The sum of `metric` over the EMF documents whose dimensions include every pair of `dimensions`.
fn total(documents: &[Value], metric: &str, dimensions: &[(&str, &str)]) -> f64 {
    documents
        .iter()
        .filter(|document| dimensions.iter().all(|(name, value)| document[*name] == *value))
        .filter_map(|document| match &document[metric] {
            Value::Array(values) => Some(values.iter().filter_map(Value::as_f64).sum()),
            value => value.as_f64(),
        })
        .sum()
}

#[test]
fn emf_lines_count_each_outcome_once() {
    let printed = run_scenario("INFO");
    let documents = parse_all(&printed.metrics);
    for document in &documents {
        let directives = document["_aws"]["CloudWatchMetrics"].as_array().expect("an EMF document");
        for directive in directives {
            assert_eq!(directive["Namespace"], "ConnectFlow");
            for metric in directive["Metrics"].as_array().unwrap() {
                assert!(!document[metric["Name"].as_str().unwrap()].is_null(), "{document}");
            }
            for set in directive["Dimensions"].as_array().unwrap() {
                for name in set.as_array().unwrap() {
                    assert!(document[name.as_str().unwrap()].is_string(), "{document}");
                }
            }
        }
    }
    let webhook = [("FunctionName", "webhook")];
    let account =
        |outcome| [("FunctionName", "webhook"), ("EventType", "account.updated"), ("Outcome", outcome)];
    assert_eq!(total(&documents, "EventsReceived", &account("applied")), 1.0);
    assert_eq!(total(&documents, "EventsReceived", &account("duplicate")), 1.0);
    assert_eq!(total(&documents, "EventsReceived", &account("stale")), 1.0);
    assert_eq!(total(&documents, "EventsReceived", &[("EventType", "payment_intent.succeeded")]), 1.0);
    assert_eq!(total(&documents, "EventsReceived", &webhook), 4.0);
    assert_eq!(total(&documents, "Duplicates", &webhook), 1.0);
    assert_eq!(total(&documents, "Stale", &webhook), 1.0);
    assert_eq!(total(&documents, "SignatureFailures", &[("Reason", "signature_mismatch")]), 1.0);
    assert_eq!(total(&documents, "SignatureFailures", &webhook), 1.0);
    assert_eq!(total(&documents, "WebhookErrors", &[("Reason", "invalid_json")]), 1.0);
    assert_eq!(total(&documents, "StepsQueued", &[("FunctionName", "webhook"), ("Kind", "transfer")]), 1.0);
    let worker = |outcome| [("FunctionName", "transfer-worker"), ("Kind", "transfer"), ("Outcome", outcome)];
    assert_eq!(total(&documents, "StepsFinished", &worker("succeeded")), 2.0, "the run and the redelivery");
    let calls: Vec<&Value> = documents.iter().filter(|d| d["Operation"] == "create_transfer").collect();
    assert_eq!(calls.len(), 1, "one Stripe call, one document: {calls:?}");
    assert_eq!(calls[0]["StatusClass"], "2xx");
    assert!(calls[0]["StripeCallLatency"].as_f64().is_some_and(|ms| ms > 0.0 && ms < 30_000.0));
    for line in &printed.metrics {
        assert!(
            !line.contains(SELLER) && !line.contains("evt_"),
            "no account or event id in a metric: {line}"
        );
    }
}

#[test]
fn no_line_carries_a_body_or_a_secret_even_at_trace_and_sqs_lines_name_their_step() {
    let printed = run_scenario("TRACE");
    let lines = parse_all(&printed.logs);
    let acknowledged = lines
        .iter()
        .find(|line| line["message"] == "step done; message acknowledged")
        .expect("the SQS worker logs the redelivered message at debug");
    assert_eq!(acknowledged["message_id"], "m1");
    assert!(acknowledged["step_id"].as_str().is_some_and(|id| id.contains(SELLER)), "{acknowledged}");
    assert_eq!(
        (acknowledged["kind"].as_str(), acknowledged["account_id"].as_str()),
        (Some("transfer"), Some(SELLER))
    );
    let everything = [printed.logs.join("\n"), printed.metrics.join("\n")].join("\n");
    assert!(everything.contains("evt_onboarded") && everything.contains("EventsReceived"));
    assert!(!everything.contains(MARKER), "a body leaked: {everything}");
    assert!(!everything.contains(SECRET), "the webhook secret leaked");
    assert!(!everything.contains(&SECRET["whsec_".len()..]), "part of the webhook secret leaked");
    assert!(!everything.contains(STUB_API_KEY), "the API key leaked");
    assert!(!everything.contains(&STUB_API_KEY["sk_test_".len()..]), "part of the API key leaked");
}
