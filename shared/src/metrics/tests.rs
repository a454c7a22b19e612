use super::*;

fn recording() -> (Metrics, MemorySink) {
    let sink = MemorySink::default();
    let settings =
        MetricsSettings { namespace: "ConnectFlow/test".into(), function_name: "webhook-fn".into() };
    (Metrics::to_sink(settings, Arc::new(sink.clone())), sink)
}

fn documents(sink: &MemorySink) -> Vec<Value> {
    sink.take().iter().map(|line| serde_json::from_str(line).expect("each EMF line is JSON")).collect()
}

/// Checks a document against the EMF specification's rules, and returns its metric names.
fn assert_valid_emf(document: &Value) -> Vec<String> {
    let root = document.as_object().expect("a document is an object");
    let metadata = &root["_aws"];
    assert!(metadata["Timestamp"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000), "{document}");
    let directives = metadata["CloudWatchMetrics"].as_array().expect("CloudWatchMetrics is an array");
    assert!(!directives.is_empty());
    let mut names = Vec::new();
    for directive in directives {
        assert_eq!(directive["Namespace"], "ConnectFlow/test");
        for set in directive["Dimensions"].as_array().expect("Dimensions is an array") {
            let set = set.as_array().expect("a dimension set is an array");
            assert!(!set.is_empty() && set.len() <= 30);
            for dimension in set {
                let dimension = dimension.as_str().expect("a dimension is named by a string");
                assert!(root[dimension].is_string(), "{dimension} is a top-level string: {document}");
            }
        }
        let metrics = directive["Metrics"].as_array().expect("Metrics is an array");
        assert!(!metrics.is_empty() && metrics.len() <= 100);
        for metric in metrics {
            let name = metric["Name"].as_str().expect("a metric has a name");
            assert!(["Count", "Milliseconds"].contains(&metric["Unit"].as_str().unwrap()));
            let value = &root[name];
            let numeric = value.is_number()
                || value.as_array().is_some_and(|values| {
                    !values.is_empty() && values.len() <= 100 && values.iter().all(Value::is_number)
                });
            assert!(numeric, "{name} is a number or a list of numbers at the top level: {document}");
            names.push(name.to_owned());
        }
    }
    names
}

#[test]
fn every_family_writes_a_valid_document() {
    let (metrics, sink) = recording();
    metrics.event_received("account.updated", "applied");
    metrics.signature_failure("signature_mismatch");
    metrics.webhook_error("invalid_json");
    metrics.steps_queued("transfer", 2);
    metrics.step_finished("payout", "succeeded");
    metrics.stripe_call("create_payout", Some(200), Duration::from_micros(12_500));
    metrics.steps_swept("in_flight", 0);
    metrics.flush();
    let documents = documents(&sink);
    let mut names: Vec<String> = documents.iter().flat_map(assert_valid_emf).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Duplicates",
            "EventsReceived",
            "SignatureFailures",
            "Stale",
            "StepsFinished",
            "StepsQueued",
            "StepsSwept",
            "StripeCallLatency",
            "WebhookErrors"
        ]
    );
    let latency = documents.iter().find(|document| document["StripeCallLatency"].is_number()).unwrap();
    assert_eq!(latency["StripeCallLatency"], 12.5);
    assert_eq!(
        (latency["Operation"].as_str(), latency["StatusClass"].as_str()),
        (Some("create_payout"), Some("2xx"))
    );
    assert_eq!(latency["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Unit"], "Milliseconds");
    assert!(documents.iter().all(|document| document["FunctionName"] == "webhook-fn"));
    assert!(sink.lines().is_empty(), "a flush writes each point once");
}

#[test]
fn counts_are_summed_per_dimension_values_until_flushed() {
    let (metrics, sink) = recording();
    metrics.event_received("account.updated", "applied");
    metrics.event_received("account.updated", "applied");
    metrics.event_received("account.updated", "duplicate");
    metrics.event_received("charge.refunded", "stale");
    metrics.steps_queued("transfer", 3);
    metrics.steps_queued("transfer", 1);
    assert!(sink.lines().is_empty(), "nothing is written before the flush");
    metrics.flush();
    let documents = documents(&sink);
    let find = |event_type: &str, outcome: &str| {
        documents
            .iter()
            .find(|d| d["EventType"] == event_type && d["Outcome"] == outcome)
            .unwrap_or_else(|| panic!("no document for {event_type} {outcome}: {documents:?}"))
    };
    let applied = find("account.updated", "applied");
    assert_eq!((applied["EventsReceived"].as_f64(), applied["Duplicates"].as_f64()), (Some(2.0), Some(0.0)));
    let duplicate = find("account.updated", "duplicate");
    assert_eq!(
        (duplicate["EventsReceived"].as_f64(), duplicate["Duplicates"].as_f64()),
        (Some(1.0), Some(1.0))
    );
    let stale = find("charge.refunded", "stale");
    assert_eq!((stale["Stale"].as_f64(), stale["Duplicates"].as_f64()), (Some(1.0), Some(0.0)));
    let queued = documents.iter().find(|d| d["StepsQueued"].is_number()).unwrap();
    assert_eq!((queued["Kind"].as_str(), queued["StepsQueued"].as_f64()), (Some("transfer"), Some(4.0)));
    assert!(queued["StepsQueued"].is_u64(), "counts are written as integers: {queued}");
    assert_eq!(documents.len(), 4);
}

#[test]
fn latencies_are_kept_one_by_one_and_split_at_a_hundred() {
    let (metrics, sink) = recording();
    for millis in 1..=101 {
        metrics.stripe_call("create_transfer", Some(500), Duration::from_millis(millis));
    }
    metrics.stripe_call("create_transfer", None, Duration::from_millis(30_000));
    metrics.stripe_call("create_transfer", Some(401), Duration::from_millis(5));
    metrics.flush();
    let documents = documents(&sink);
    let values = |class: &str| -> Vec<Vec<f64>> {
        documents
            .iter()
            .filter(|d| d["StatusClass"] == class)
            .map(|d| match &d["StripeCallLatency"] {
                Value::Array(values) => values.iter().map(|v| v.as_f64().unwrap()).collect(),
                one => vec![one.as_f64().unwrap()],
            })
            .collect()
    };
    let server_errors = values("5xx");
    assert_eq!(server_errors.iter().map(Vec::len).collect::<Vec<_>>(), [100, 1]);
    assert_eq!(server_errors.concat(), (1..=101).map(f64::from).collect::<Vec<_>>());
    assert_eq!(values("no_response"), [[30_000.0]]);
    assert_eq!(values("auth_refused"), [[5.0]]);
    documents.iter().for_each(|document| {
        assert_valid_emf(document);
    });
}

#[test]
fn dimension_values_that_are_not_plain_names_become_other() {
    let (metrics, sink) = recording();
    metrics.event_received("{\"email\":\"someone@example.com\"}", "applied");
    metrics.event_received("", "applied");
    metrics.event_received(&"a".repeat(101), "applied");
    metrics.flush();
    let documents = documents(&sink);
    assert_eq!(documents.len(), 1, "all three are one metric: {documents:?}");
    assert_eq!(
        (documents[0]["EventType"].as_str(), documents[0]["EventsReceived"].as_f64()),
        (Some("other"), Some(3.0))
    );
}

#[test]
fn disabled_metrics_write_nothing() {
    let metrics = Metrics::disabled();
    metrics.event_received("account.updated", "applied");
    metrics.flush();
    assert!(!metrics.is_enabled());
}

fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
}

#[test]
fn metrics_are_on_in_lambda_and_off_elsewhere_unless_asked() {
    assert!(!Metrics::from_lookup(lookup(&[])).is_enabled(), "off for `connect-flow serve` and tests");
    let lambda = Metrics::from_lookup(lookup(&[(FUNCTION_NAME_VAR, "stack-WebhookFunction-1")]));
    assert!(lambda.is_enabled());
    assert!(format!("{lambda:?}").contains("stack-WebhookFunction-1"));
    assert!(format!("{lambda:?}").contains(DEFAULT_NAMESPACE));
    assert!(!Metrics::from_lookup(lookup(&[(FUNCTION_NAME_VAR, "f"), (METRICS_VAR, "off")])).is_enabled());
    assert!(!Metrics::from_lookup(lookup(&[(FUNCTION_NAME_VAR, "f"), (METRICS_VAR, "yes")])).is_enabled());
    let local = Metrics::from_lookup(lookup(&[(METRICS_VAR, "EMF"), (NAMESPACE_VAR, "ConnectFlow/prod")]));
    assert!(
        format!("{local:?}").contains("ConnectFlow/prod") && format!("{local:?}").contains("connect-flow")
    );
    let reserved = Metrics::from_lookup(lookup(&[(METRICS_VAR, "emf"), (NAMESPACE_VAR, "AWS/Lambda")]));
    assert!(format!("{reserved:?}").contains(&format!("\"{DEFAULT_NAMESPACE}\"")));
}
