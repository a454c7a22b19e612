//! `infra/template.yaml` and the workspace agree: every Lambda binary of the workspace is a function
//! of the template, every function of the template builds a Lambda binary of the workspace, and each
//! function is built, triggered and fed by its queue the way the workers' code relies on. The
//! reconciler runs on a schedule through a role that may only invoke it, with only the table, queue
//! and Stripe key rights a replayed event and the sweeps use, on the indexes the store queries, and
//! an alarm on a cursor falling behind Stripe's event window; and every alarm on the functions' own
//! metrics watches a dimension set the code publishes. Every route of the HTTP API but the webhook
//! and the onboarding refresh link needs SigV4; the platform API may use only its table, its two
//! step queues and its two secrets; the notifier reads only inserted change items from the table's
//! stream and may put events only on the stack's change bus. The fetch worker reads Stripe under
//! its rate budget from a FIFO queue the webhook feeds; the optional EventBridge intake takes
//! exactly the configured Stripe partner source, through a queue only that rule may send to, and
//! every one of its resources exists only when that source is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shared::domain::reconcile::{CURSOR_ALARM_AGE_SECS, ReconcileRun};
use shared::metrics::names;
use shared::metrics::{MemorySink, Metrics, MetricsSettings};
use shared::reconcile::{
    DEFAULT_REQUESTS_PER_SECOND, DEFAULT_RUNS_PER_WEEK, RECONCILE_RATE, RECONCILE_RUNS_PER_WEEK,
    RECONCILER_LAMBDA_TIMEOUT, ReconcileSettings,
};
use shared::store::EventOutcome;
use shared::worker::MAX_RECEIVES;
use yaml_rust2::{Yaml, YamlLoader};

/// The crates whose presence among a package's dependencies makes its binaries Lambda functions.
const LAMBDA_RUNTIME_CRATES: [&str; 2] = ["lambda_runtime", "lambda_http"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// The template, parsed. Its short-form tags (`!Ref X`, `!GetAtt X.Arn`) are dropped by the
/// parser, leaving their operands (`X`, `X.Arn`) in place.
fn template() -> Yaml {
    let path = workspace_root().join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut documents = YamlLoader::load_from_str(&text).expect("infra/template.yaml is valid YAML");
    assert_eq!(documents.len(), 1, "infra/template.yaml holds one document");
    documents.remove(0)
}

/// This package: its binaries (the cold-start benchmark) run the functions' bootstraps, whatever
/// its dependencies, and are never functions themselves.
const TESTS_PACKAGE: &str = "integration-tests";

/// Every binary of the workspace, each with whether its package depends on a Lambda runtime crate
/// (a plain dependency: the CLI uses `lambda_http` only in its tests, and is not a function). The
/// binaries of this test package are left out.
fn workspace_binaries() -> BTreeMap<String, bool> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(workspace_root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let mut binaries = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("metadata lists packages") {
        if package["name"] == TESTS_PACKAGE {
            continue;
        }
        let is_lambda = package["dependencies"]
            .as_array()
            .expect("a package lists its dependencies")
            .iter()
            .any(|dependency| {
                dependency["kind"].is_null()
                    && dependency["name"].as_str().is_some_and(|name| LAMBDA_RUNTIME_CRATES.contains(&name))
            });
        for target in package["targets"].as_array().expect("a package lists its targets") {
            let is_bin =
                target["kind"].as_array().is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"));
            if is_bin {
                let name = target["name"].as_str().expect("a target has a name").to_owned();
                binaries.insert(name, is_lambda);
            }
        }
    }
    binaries
}

/// The resources of the template whose `Type` is `resource_type`, by logical id.
fn resources_of_type<'a>(template: &'a Yaml, resource_type: &str) -> Vec<(&'a str, &'a Yaml)> {
    template["Resources"]
        .as_hash()
        .expect("the template has Resources")
        .iter()
        .filter(|(_, resource)| resource["Type"].as_str() == Some(resource_type))
        .map(|(id, resource)| (id.as_str().expect("logical ids are strings"), resource))
        .collect()
}

/// A function's property, or the value `Globals.Function` gives every function.
fn function_property<'a>(template: &'a Yaml, function: &'a Yaml, name: &str) -> &'a Yaml {
    let own = &function["Properties"][name];
    if own.is_badvalue() { &template["Globals"]["Function"][name] } else { own }
}

/// The logical id in `X` or `X.Arn`, as `!Ref X` and `!GetAtt X.Arn` read once their tags are gone.
fn referenced_id(value: &Yaml) -> Option<&str> {
    value.as_str().map(|reference| reference.strip_suffix(".Arn").unwrap_or(reference))
}

/// The functions an EventBridge Scheduler schedule invokes, by logical id.
fn scheduled_functions(template: &Yaml) -> BTreeSet<&str> {
    resources_of_type(template, "AWS::Scheduler::Schedule")
        .into_iter()
        .filter_map(|(_, schedule)| referenced_id(&schedule["Properties"]["Target"]["Arn"]))
        .collect()
}

/// The function that builds `binary`: its logical id and its resource.
fn function_building<'a>(template: &'a Yaml, binary: &str) -> (&'a str, &'a Yaml) {
    let found: Vec<_> = resources_of_type(template, "AWS::Serverless::Function")
        .into_iter()
        .filter(|(_, function)| function["Metadata"]["BuildProperties"]["Binary"].as_str() == Some(binary))
        .collect();
    assert_eq!(found.len(), 1, "one function builds `{binary}`");
    found[0]
}

/// A value that is one string or a list of strings (a statement's `Action` or `Resource`).
fn strings(value: &Yaml) -> Vec<&str> {
    match value {
        Yaml::String(one) => vec![one.as_str()],
        Yaml::Array(many) => many.iter().map(|item| item.as_str().expect("a list of strings")).collect(),
        other => panic!("expected a string or a list of strings, found {other:?}"),
    }
}

/// Every (action, resource) a list of policy statements allows, each statement checked to be a
/// plain `Allow` without conditions, so that the pairs are the whole grant.
fn grants(owner: &str, statements: &[Yaml]) -> BTreeSet<(String, String)> {
    let mut granted = BTreeSet::new();
    for statement in statements {
        assert_eq!(statement["Effect"].as_str(), Some("Allow"), "{owner}: {statement:?}");
        assert!(statement["Condition"].is_badvalue(), "{owner}: a condition the test does not read");
        assert!(statement["NotAction"].is_badvalue() && statement["NotResource"].is_badvalue(), "{owner}");
        for action in strings(&statement["Action"]) {
            for resource in strings(&statement["Resource"]) {
                granted.insert((action.to_owned(), resource.to_owned()));
            }
        }
    }
    granted
}

/// What a SAM function's `Policies` allow. Only inline statements are accepted: a managed policy
/// or a SAM policy template would grant more than the test can see.
fn function_grants(id: &str, function: &Yaml) -> BTreeSet<(String, String)> {
    let policies =
        function["Properties"]["Policies"].as_vec().unwrap_or_else(|| panic!("{id} has no Policies"));
    let mut statements = Vec::new();
    for policy in policies {
        let policy_statements = policy["Statement"]
            .as_vec()
            .unwrap_or_else(|| panic!("{id}: a policy that is not inline: {policy:?}"));
        statements.extend(policy_statements.iter().cloned());
    }
    grants(id, &statements)
}

fn pairs(expected: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    expected.iter().map(|(action, resource)| ((*action).to_owned(), (*resource).to_owned())).collect()
}

/// Each function of the template, by logical id, with the binary it builds.
fn functions_and_binaries(template: &Yaml) -> BTreeMap<String, String> {
    let mut binaries = BTreeMap::new();
    for (id, function) in resources_of_type(template, "AWS::Serverless::Function") {
        let binary = function["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} names no Metadata.BuildProperties.Binary"));
        binaries.insert(id.to_owned(), binary.to_owned());
    }
    binaries
}

#[test]
fn every_lambda_binary_is_a_function_and_every_function_a_lambda_binary() {
    let template = template();
    let workspace = workspace_binaries();
    let lambda_binaries: BTreeSet<&str> =
        workspace.iter().filter(|(_, is_lambda)| **is_lambda).map(|(name, _)| name.as_str()).collect();
    assert!(!lambda_binaries.is_empty(), "cargo metadata found no Lambda binary in the workspace");

    let functions = functions_and_binaries(&template);
    let deployed: BTreeSet<&str> = functions.values().map(String::as_str).collect();
    assert_eq!(deployed.len(), functions.len(), "two functions build the same binary: {functions:?}");

    let not_deployed: Vec<&&str> = lambda_binaries.difference(&deployed).collect();
    assert!(not_deployed.is_empty(), "Lambda binaries missing from infra/template.yaml: {not_deployed:?}");
    for (id, binary) in &functions {
        match workspace.get(binary) {
            None => panic!("{id} builds `{binary}`, which no workspace package has as a binary"),
            Some(false) => panic!("{id} builds `{binary}`, whose package depends on no Lambda runtime"),
            Some(true) => {}
        }
    }
}

#[test]
fn every_function_is_built_by_cargo_lambda_from_the_workspace_for_arm64() {
    let template = template();
    let root = workspace_root().canonicalize().expect("the workspace root exists");
    let functions = resources_of_type(&template, "AWS::Serverless::Function");
    assert!(!functions.is_empty(), "the template has no AWS::Serverless::Function");
    for (id, function) in functions {
        assert_eq!(
            function["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{id}: BuildMethod"
        );
        let code_uri = function_property(&template, function, "CodeUri")
            .as_str()
            .unwrap_or_else(|| panic!("{id} has no CodeUri"));
        // SAM resolves CodeUri against the template's directory.
        let code_dir = workspace_root().join("infra").join(code_uri).canonicalize();
        assert_eq!(
            code_dir.ok().as_deref(),
            Some(root.as_path()),
            "{id}: CodeUri {code_uri} is not the workspace root"
        );
        assert_eq!(
            function_property(&template, function, "Runtime").as_str(),
            Some("provided.al2023"),
            "{id}"
        );
        assert_eq!(function_property(&template, function, "Handler").as_str(), Some("bootstrap"), "{id}");
        let architectures = function_property(&template, function, "Architectures");
        assert_eq!(
            architectures.as_vec().map(Vec::as_slice),
            Some(&[Yaml::String("arm64".into())][..]),
            "{id}"
        );
    }
}

#[test]
fn the_webhook_function_serves_post_webhooks_stripe() {
    let template = template();
    let binaries = functions_and_binaries(&template);
    let routes: Vec<(&str, &str, &str)> = resources_of_type(&template, "AWS::Serverless::Function")
        .into_iter()
        .flat_map(|(id, function)| {
            let events = function["Properties"]["Events"].as_hash().into_iter().flatten();
            events.filter(|(_, event)| event["Type"].as_str() == Some("HttpApi")).map(move |(_, event)| {
                let properties = &event["Properties"];
                (id, properties["Method"].as_str().unwrap_or(""), properties["Path"].as_str().unwrap_or(""))
            })
        })
        .collect();
    let webhook_routes: Vec<_> = routes
        .iter()
        .filter(|(_, method, path)| method.eq_ignore_ascii_case("POST") && *path == "/webhooks/stripe")
        .collect();
    assert_eq!(webhook_routes.len(), 1, "one POST /webhooks/stripe route, found {routes:?}");
    let &(function, _, _) = webhook_routes[0];
    assert_eq!(binaries[function], "webhook", "POST /webhooks/stripe reaches {function}");
}

/// Each worker reads one FIFO queue through an event source mapping that reports partial batch
/// failures, as `shared::sqs_worker` answers; the queue dead-letters where the embedded queue does,
/// and keeps a received message hidden for at least six times the worker's timeout. The one
/// exception to FIFO is the EventBridge intake's queue, a standard queue (EventBridge's target).
#[test]
fn every_function_without_a_route_is_fed_by_a_fifo_queue_with_partial_batch_failures() {
    let template = template();
    let mappings = resources_of_type(&template, "AWS::Lambda::EventSourceMapping");
    let scheduled = scheduled_functions(&template);
    let (notifier, _) = function_building(&template, "notifier");
    let (intake, _) = function_building(&template, "eventbridge-intake");
    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        let events = function["Properties"]["Events"].as_hash();
        let has_route =
            events.into_iter().flatten().any(|(_, event)| event["Type"].as_str() == Some("HttpApi"));
        // A scheduled function is checked by the_reconciler_runs_on_a_schedule_…, the stream-fed
        // notifier by the_notifier_reads_inserted_change_items_…, below.
        if has_route || scheduled.contains(id) || id == notifier {
            continue;
        }
        let sam_sqs_event =
            events.into_iter().flatten().any(|(_, event)| event["Type"].as_str() == Some("SQS"));
        assert!(
            !sam_sqs_event,
            "{id}: a SAM `SQS` event attaches AWSLambdaSQSQueueExecutionRole (every queue in the account); \
             use an AWS::Lambda::EventSourceMapping and grant the poller's actions on the queue alone"
        );
        let mine: Vec<_> = mappings
            .iter()
            .filter(|(_, mapping)| referenced_id(&mapping["Properties"]["FunctionName"]) == Some(id))
            .collect();
        assert_eq!(mine.len(), 1, "{id} has one event source mapping");
        let (mapping_id, mapping) = mine[0];
        let properties = &mapping["Properties"];
        let response_types =
            properties["FunctionResponseTypes"].as_vec().map(Vec::as_slice).unwrap_or_default();
        assert!(
            response_types.contains(&Yaml::String("ReportBatchItemFailures".into())),
            "{mapping_id}: without ReportBatchItemFailures Lambda deletes a batch whatever the worker answers"
        );
        assert!(
            properties["BatchSize"].as_i64().is_some_and(|size| (1..=10).contains(&size)),
            "{mapping_id}"
        );
        assert!(properties["ScalingConfig"]["MaximumConcurrency"].as_i64().is_some(), "{mapping_id}");

        let queue_id =
            referenced_id(&properties["EventSourceArn"]).expect("the mapping's queue is in the template");
        let queue = &template["Resources"][queue_id];
        assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"), "{mapping_id} reads {queue_id}");
        let queue = &queue["Properties"];
        if id == intake {
            assert!(queue["FifoQueue"].as_bool() != Some(true), "{queue_id} is a standard queue");
        } else {
            assert_eq!(queue["FifoQueue"].as_bool(), Some(true), "{queue_id} is FIFO");
        }
        assert_eq!(
            queue["RedrivePolicy"]["maxReceiveCount"].as_i64(),
            Some(i64::from(MAX_RECEIVES)),
            "{queue_id} dead-letters after shared::worker::MAX_RECEIVES receives"
        );
        let timeout = function_property(&template, function, "Timeout").as_i64().unwrap_or(3);
        let visibility = queue["VisibilityTimeout"].as_i64().unwrap_or(30);
        assert!(visibility >= 6 * timeout, "{queue_id}: visibility {visibility}s < 6 x {id}'s {timeout}s");
    }
}

/// Secrets reach the functions by name only: no plain secret variable, and no dynamic reference,
/// which CloudFormation would resolve into a plain environment value.
#[test]
fn no_secret_value_is_in_the_template() {
    let template = template();
    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        let variables = function["Properties"]["Environment"]["Variables"].as_hash().into_iter().flatten();
        for (name, _) in variables {
            let name = name.as_str().unwrap_or_default();
            assert!(
                !["STRIPE_WEBHOOK_SECRETS", "STRIPE_API_KEY", "CONNECT_FLOW_LINK_SECRET"].contains(&name),
                "{id} sets {name}: pass the secret's ARN and let the code read it"
            );
        }
    }
    let text = std::fs::read_to_string(workspace_root().join("infra/template.yaml")).expect("template");
    assert!(!text.contains("{{resolve:"), "dynamic references put the resolved secret in plain sight");
}

/// Every function logs to a log group of its own, in the template, with a retention.
#[test]
fn every_function_logs_to_a_log_group_of_its_own() {
    let template = template();
    let mut groups = BTreeSet::new();
    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        let logging = &function["Properties"]["LoggingConfig"];
        assert_eq!(logging["LogFormat"].as_str(), Some("JSON"), "{id}: shared::telemetry reads JSON");
        let group = logging["LogGroup"].as_str().unwrap_or_else(|| panic!("{id} names no LogGroup"));
        let resource = &template["Resources"][group];
        assert_eq!(resource["Type"].as_str(), Some("AWS::Logs::LogGroup"), "{id} logs to {group}");
        assert!(!resource["Properties"]["RetentionInDays"].is_badvalue(), "{group} keeps logs for ever");
        assert!(groups.insert(group), "{group} is shared by two functions");
    }
}

/// The reconciler's only trigger is one EventBridge Scheduler schedule, on the `ReconcileSchedule`
/// parameter (every 15 minutes by default), whose role Scheduler alone may assume, for this stack's
/// schedule group alone, and which may do nothing but invoke the reconciler.
#[test]
fn the_reconciler_runs_on_a_schedule_through_a_role_that_may_only_invoke_it() {
    let template = template();
    let (reconciler, function) = function_building(&template, "reconciler");
    assert!(
        function["Properties"]["Events"].is_badvalue(),
        "{reconciler}: SAM events add triggers and policies"
    );
    let mappings = resources_of_type(&template, "AWS::Lambda::EventSourceMapping");
    assert!(
        !mappings
            .iter()
            .any(|(_, mapping)| referenced_id(&mapping["Properties"]["FunctionName"]) == Some(reconciler)),
        "{reconciler} reads no queue"
    );

    let schedules = resources_of_type(&template, "AWS::Scheduler::Schedule");
    assert_eq!(schedules.len(), 1, "one schedule");
    let (schedule_id, schedule) = schedules[0];
    let properties = &schedule["Properties"];
    assert_eq!(
        referenced_id(&properties["Target"]["Arn"]),
        Some(reconciler),
        "{schedule_id} invokes the reconciler"
    );
    assert_eq!(properties["State"].as_str(), Some("ENABLED"), "{schedule_id}");
    assert_eq!(properties["FlexibleTimeWindow"]["Mode"].as_str(), Some("OFF"), "{schedule_id}");
    let input = properties["Target"]["Input"].as_str().expect("the schedule sends an explicit payload");
    serde_json::from_str::<Value>(input).expect("the payload is JSON, which the Lambda runtime parses");
    let parameter = properties["ScheduleExpression"].as_str().expect("a schedule expression");
    assert_eq!(
        parameter, "ReconcileSchedule",
        "{schedule_id}: the expression is the ReconcileSchedule parameter"
    );
    assert_eq!(template["Parameters"][parameter]["Default"].as_str(), Some(RECONCILE_SCHEDULE_DEFAULT));

    let group = properties["GroupName"].as_str().expect("the schedule is in a group of the stack");
    assert_eq!(template["Resources"][group]["Type"].as_str(), Some("AWS::Scheduler::ScheduleGroup"));
    let role_id = referenced_id(&properties["Target"]["RoleArn"]).expect("the schedule's role");
    let role = &template["Resources"][role_id];
    assert_eq!(role["Type"].as_str(), Some("AWS::IAM::Role"), "{schedule_id} runs as {role_id}");
    let role = &role["Properties"];
    let trust = role["AssumeRolePolicyDocument"]["Statement"].as_vec().expect("a trust policy");
    assert_eq!(trust.len(), 1, "{role_id}: one trusted principal");
    let trusted = &trust[0];
    assert_eq!(trusted["Effect"].as_str(), Some("Allow"));
    assert_eq!(strings(&trusted["Principal"]["Service"]), ["scheduler.amazonaws.com"], "{role_id}");
    assert_eq!(strings(&trusted["Action"]), ["sts:AssumeRole"], "{role_id}");
    let condition = &trusted["Condition"]["StringEquals"];
    assert_eq!(condition["aws:SourceAccount"].as_str(), Some("AWS::AccountId"), "{role_id}: confused deputy");
    assert_eq!(
        condition["aws:SourceArn"].as_str(),
        Some(format!("{group}.Arn").as_str()),
        "{role_id}: Scheduler names the schedule group as the source"
    );
    assert!(role["ManagedPolicyArns"].is_badvalue(), "{role_id} has inline policies only");
    let mut statements = Vec::new();
    for policy in role["Policies"].as_vec().expect("the role's policies") {
        statements
            .extend(policy["PolicyDocument"]["Statement"].as_vec().expect("statements").iter().cloned());
    }
    assert_eq!(
        grants(role_id, &statements),
        pairs(&[("lambda:InvokeFunction", &format!("{reconciler}.Arn"))]),
        "{role_id} may invoke the reconciler and nothing else"
    );
}

/// `ReconcileSchedule`'s default.
const RECONCILE_SCHEDULE_DEFAULT: &str = "rate(15 minutes)";
/// The seconds between two runs at [`RECONCILE_SCHEDULE_DEFAULT`].
const RECONCILE_INTERVAL_SECS: u64 = 15 * 60;

/// The reconciler finds its store, the three queues, the Stripe key and its pacing under the
/// variables the code reads; may do on the table what a delivery does (a replayed event goes
/// through the webhook's pipeline) plus the sweep's, the drift check's and the change feed's
/// Queries on their indexes, send to the queues a delivery sends to, and read the Stripe key:
/// nothing else. A failed run is not retried, raises an alarm, and the run ends before the next
/// one starts, with the timeout the code plans for.
#[test]
fn the_reconciler_may_only_apply_events_sweep_and_read_the_stripe_key() {
    let template = template();
    let (reconciler, function) = function_building(&template, "reconciler");
    let (webhook, webhook_function) = function_building(&template, "webhook");
    let properties = &function["Properties"];
    let variables = &properties["Environment"]["Variables"];
    let webhook_variables = &webhook_function["Properties"]["Environment"]["Variables"];
    for (name, resource) in [
        (shared::config::TABLE_NAME, "Table"),
        (shared::store::sqs::TRANSFERS_QUEUE_URL, "TransfersQueue"),
        (shared::store::sqs::PAYOUTS_QUEUE_URL, "PayoutsQueue"),
        (shared::store::sqs::FETCH_QUEUE_URL, "FetchQueue"),
        // The variable shared::sqs_worker::stripe_client_from_env resolves the key from.
        (shared::config::API_KEY_SECRET_ARN, "StripeApiKeySecretArn"),
        (RECONCILE_RUNS_PER_WEEK, "ReconcileRunsPerWeek"),
    ] {
        assert_eq!(variables[name].as_str(), Some(resource), "{reconciler}: {name}");
    }
    for name in [shared::config::LIVEMODE, shared::config::DISPUTE_POLICY] {
        assert_eq!(
            variables[name], webhook_variables[name],
            "{reconciler} applies a replayed event as the webhook applies a delivery: {name}"
        );
    }
    assert!(
        variables[shared::stripe::client::API_KEY_VAR].is_badvalue(),
        "{reconciler}: the Stripe key is read from its secret"
    );

    // The pacing the template sets is one the code accepts, and the default runs a week match the
    // default schedule, so that the drift check's share reaches every account in a week.
    let rate = variables[RECONCILE_RATE].as_str().expect("a rate (a string)").to_owned();
    let runs_default = template["Parameters"]["ReconcileRunsPerWeek"]["Default"]
        .as_i64()
        .expect("ReconcileRunsPerWeek's default is a number")
        .to_string();
    let lookup = |name: &str| match name {
        RECONCILE_RATE => Some(rate.clone()),
        RECONCILE_RUNS_PER_WEEK => Some(runs_default.clone()),
        _ => None,
    };
    let settings = ReconcileSettings::from_lookup(lookup).expect("the template's pacing is accepted");
    assert_eq!(settings.requests_per_second, DEFAULT_REQUESTS_PER_SECOND, "{reconciler}: {RECONCILE_RATE}");
    assert!(settings.requests_per_second < 25, "Stripe's live-mode read limit is 25 a second");
    assert_eq!(settings.runs_per_week, DEFAULT_RUNS_PER_WEEK, "ReconcileRunsPerWeek's default");
    assert_eq!(
        DEFAULT_RUNS_PER_WEEK,
        7 * 24 * 60 * 60 / RECONCILE_INTERVAL_SECS,
        "{RECONCILE_SCHEDULE_DEFAULT}"
    );

    let mut table = grants_with_prefix(webhook, webhook_function, "dynamodb:");
    table.extend(pairs(&[
        ("dynamodb:Query", "${Table.Arn}/index/open_steps"),
        ("dynamodb:Query", "${Table.Arn}/index/payouts_due"),
        ("dynamodb:Query", "${Table.Arn}/index/accounts_by_status"),
    ]));
    assert_eq!(
        grants_with_prefix(reconciler, function, "dynamodb:"),
        table,
        "{reconciler}: the webhook's table rights, and Query on the sweeps' and the drift check's indexes"
    );
    assert_eq!(
        grants_with_prefix(reconciler, function, "sqs:"),
        grants_with_prefix(webhook, webhook_function, "sqs:"),
        "{reconciler} sends where a delivery sends"
    );
    let mut expected = table;
    expected.extend(pairs(&[
        ("sqs:SendMessage", "TransfersQueue.Arn"),
        ("sqs:SendMessage", "PayoutsQueue.Arn"),
        ("sqs:SendMessage", "FetchQueue.Arn"),
        ("secretsmanager:GetSecretValue", "StripeApiKeySecretArn"),
    ]));
    assert_eq!(function_grants(reconciler, function), expected, "{reconciler}'s policy");

    let timeout = function_property(&template, function, "Timeout").as_i64();
    assert_eq!(
        timeout,
        i64::try_from(RECONCILER_LAMBDA_TIMEOUT.as_secs()).ok(),
        "{reconciler}: shared::reconcile::RECONCILER_LAMBDA_TIMEOUT"
    );
    assert!(
        timeout.and_then(|secs| u64::try_from(secs).ok()).map(Duration::from_secs)
            < Some(Duration::from_secs(RECONCILE_INTERVAL_SECS)),
        "{reconciler}: a run ends before the next {RECONCILE_SCHEDULE_DEFAULT} run starts"
    );
    assert_eq!(
        properties["EventInvokeConfig"]["MaximumRetryAttempts"].as_i64(),
        Some(0),
        "{reconciler}: the next scheduled run is the retry"
    );
    let errors_alarm =
        resources_of_type(&template, "AWS::CloudWatch::Alarm").into_iter().any(|(_, alarm)| {
            let alarm = &alarm["Properties"];
            alarm["Namespace"].as_str() == Some("AWS/Lambda")
                && alarm["MetricName"].as_str() == Some("Errors")
                && alarm["Dimensions"].as_vec().is_some_and(|dimensions| {
                    dimensions.iter().any(|dimension| {
                        dimension["Name"].as_str() == Some("FunctionName")
                            && dimension["Value"].as_str() == Some(reconciler)
                    })
                })
        });
    assert!(errors_alarm, "a failed reconciler run raises an alarm");
}

/// A cursor left older than `shared::domain::reconcile::CURSOR_ALARM_AGE_SECS` (a run that keeps
/// stopping short), or a reconciler that stops reporting at all, raises an alarm on the metric
/// the reconciler publishes, before Stripe's 30-day event window closes.
#[test]
fn a_reconciler_cursor_falling_behind_raises_an_alarm() {
    let template = template();
    let (reconciler, _) = function_building(&template, "reconciler");
    let alarms: Vec<_> = resources_of_type(&template, "AWS::CloudWatch::Alarm")
        .into_iter()
        .filter(|(_, alarm)| alarm["Properties"]["MetricName"].as_str() == Some(names::RECONCILE_CURSOR_AGE))
        .collect();
    assert_eq!(alarms.len(), 1, "one alarm on {}", names::RECONCILE_CURSOR_AGE);
    let (id, alarm) = alarms[0];
    let properties = &alarm["Properties"];
    let dimensions: Vec<(&str, &str)> = properties["Dimensions"]
        .as_vec()
        .expect("dimensions")
        .iter()
        .map(|dimension| {
            (dimension["Name"].as_str().unwrap_or(""), dimension["Value"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(dimensions, [("FunctionName", reconciler)], "{id}: the reconciler's own metric");
    assert_eq!(properties["Statistic"].as_str(), Some("Maximum"), "{id}: the oldest cursor of the period");
    assert_eq!(properties["Threshold"].as_i64(), Some(CURSOR_ALARM_AGE_SECS), "{id}: CURSOR_ALARM_AGE_SECS");
    assert_eq!(properties["ComparisonOperator"].as_str(), Some("GreaterThanThreshold"), "{id}");
    assert_eq!(
        properties["TreatMissingData"].as_str(),
        Some("breaching"),
        "{id}: a reconciler that stops running stops publishing"
    );
    let period = properties["Period"].as_i64().expect("a period");
    let evaluated = period * properties["EvaluationPeriods"].as_i64().expect("evaluation periods");
    assert!(
        CURSOR_ALARM_AGE_SECS + evaluated < 30 * 24 * 60 * 60,
        "{id}: a cursor past the threshold is alarmed on before Stripe's window closes"
    );
}

/// One of `shared/src/store/dynamodb.rs`'s name constants, read from its source, so that the
/// template's index cannot drift from the one the store queries.
fn store_constant(name: &str) -> String {
    let path = workspace_root().join("shared/src/store/dynamodb.rs");
    let source = std::fs::read_to_string(&path).expect("the DynamoDB store's source");
    let declaration = format!("const {name}: &str = \"");
    let start = source.find(&declaration).unwrap_or_else(|| panic!("{} declares no {name}", path.display()))
        + declaration.len();
    let length = source[start..].find('"').expect("the constant's closing quote");
    source[start..start + length].to_owned()
}

/// The table has the sparse open-steps index the sweep queries (`open_status`, `updated_at`, as
/// the store names them), every key attribute is defined with its type, and every index a policy
/// names exists.
#[test]
fn the_table_has_the_open_steps_index_the_store_queries() {
    let template = template();
    let table = &template["Resources"]["Table"];
    assert_eq!(table["Type"].as_str(), Some("AWS::DynamoDB::Table"));
    let table = &table["Properties"];
    let defined: BTreeMap<&str, &str> = table["AttributeDefinitions"]
        .as_vec()
        .expect("attribute definitions")
        .iter()
        .map(|attribute| {
            (attribute["AttributeName"].as_str().unwrap(), attribute["AttributeType"].as_str().unwrap())
        })
        .collect();
    let (index_name, hash, range) =
        (store_constant("OPEN_STEPS"), store_constant("OPEN_STATUS"), store_constant("UPDATED_AT"));
    assert_eq!(
        (index_name.as_str(), hash.as_str(), range.as_str()),
        ("open_steps", "open_status", "updated_at")
    );
    assert_eq!(defined.get(hash.as_str()), Some(&"S"), "{hash} is a string: a step's status");
    assert_eq!(defined.get(range.as_str()), Some(&"N"), "{range} is a number: Unix seconds");

    let keys = |schema: &Yaml| -> Vec<(String, String)> {
        schema
            .as_vec()
            .expect("a key schema")
            .iter()
            .map(|key| {
                (
                    key["AttributeName"].as_str().unwrap().to_owned(),
                    key["KeyType"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let indexes = table["GlobalSecondaryIndexes"].as_vec().expect("the table's indexes");
    let mut used: BTreeSet<String> = keys(&table["KeySchema"]).into_iter().map(|(name, _)| name).collect();
    let mut index_names = BTreeSet::new();
    for index in indexes {
        index_names.insert(index["IndexName"].as_str().expect("an index name").to_owned());
        used.extend(keys(&index["KeySchema"]).into_iter().map(|(name, _)| name));
    }
    let defined_names: BTreeSet<String> = defined.keys().map(|name| (*name).to_owned()).collect();
    assert_eq!(used, defined_names, "the attributes defined are exactly the key attributes");
    let open_steps = indexes
        .iter()
        .find(|index| index["IndexName"].as_str() == Some(index_name.as_str()))
        .expect("the table has the open-steps index");
    assert_eq!(
        keys(&open_steps["KeySchema"]),
        [(hash, "HASH".to_owned()), (range, "RANGE".to_owned())],
        "{index_name}'s keys"
    );
    assert_eq!(
        open_steps["Projection"]["ProjectionType"].as_str(),
        Some("ALL"),
        "the store reads whole steps from {index_name}"
    );

    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        for (_, resource) in function_grants(id, function) {
            if let Some(index) = resource.strip_prefix("${Table.Arn}/index/") {
                assert!(index_names.contains(index), "{id} is granted index {index}, which the table lacks");
            }
        }
    }
}

/// For each metric of `shared::metrics`, the dimension sets its EMF documents publish, read from
/// documents the code writes.
fn published_dimension_sets() -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let sink = MemorySink::default();
    let settings = MetricsSettings { namespace: "ConnectFlow/template".into(), function_name: "f".into() };
    let metrics = Metrics::to_sink(settings, Arc::new(sink.clone()));
    metrics.event_received("payment_intent.succeeded", EventOutcome::Refused.as_str());
    metrics.signature_failure("signature_mismatch");
    metrics.webhook_error("invalid_json");
    metrics.steps_queued("transfer", 1);
    metrics.step_finished("transfer", "failed");
    metrics.stripe_call("create_transfer", Some(401), std::time::Duration::from_millis(5));
    metrics.steps_swept("queued", 1);
    metrics.payout_funds_stale(1);
    metrics.reconciled(&ReconcileRun::default());
    metrics.flush();
    let mut published: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for line in sink.take() {
        let document: Value = serde_json::from_str(&line).expect("an EMF line is JSON");
        for directive in document["_aws"]["CloudWatchMetrics"].as_array().expect("directives") {
            let sets: Vec<BTreeSet<String>> = directive["Dimensions"]
                .as_array()
                .expect("dimension sets")
                .iter()
                .map(|set| {
                    set.as_array().unwrap().iter().map(|name| name.as_str().unwrap().to_owned()).collect()
                })
                .collect();
            for metric in directive["Metrics"].as_array().expect("metrics") {
                let name = metric["Name"].as_str().expect("a metric name").to_owned();
                published.entry(name).or_default().extend(sets.iter().cloned());
            }
        }
    }
    published
}

/// Each metric an alarm watches: namespace, name and dimensions, from `Namespace`, `MetricName`
/// and `Dimensions` or from each `Metrics[].MetricStat.Metric`.
fn watched_metrics(alarm: &Yaml) -> Vec<&Yaml> {
    let properties = &alarm["Properties"];
    match properties["Metrics"].as_vec() {
        None => vec![properties],
        Some(queries) => {
            queries.iter().map(|query| &query["MetricStat"]["Metric"]).filter(|m| !m.is_badvalue()).collect()
        }
    }
}

/// An alarm on the functions' own metrics only fires if it names the namespace they write to and
/// exactly a dimension set their EMF documents publish (CloudWatch matches dimensions exactly), and
/// every alarm tells the operators' topic.
#[test]
fn every_alarm_on_an_emf_metric_watches_a_published_dimension_set() {
    let template = template();
    let namespace =
        template["Globals"]["Function"]["Environment"]["Variables"]["CONNECT_FLOW_METRICS_NAMESPACE"]
            .as_str()
            .expect("the functions' metrics namespace");
    let published = published_dimension_sets();
    let functions = functions_and_binaries(&template);
    let mut watched = 0;
    for (id, alarm) in resources_of_type(&template, "AWS::CloudWatch::Alarm") {
        let properties = &alarm["Properties"];
        assert_eq!(strings(&properties["AlarmActions"]), ["AlarmTopicArn"], "{id}");
        assert_eq!(strings(&properties["OKActions"]), ["AlarmTopicArn"], "{id}");
        for metric in watched_metrics(alarm) {
            let metric_namespace = metric["Namespace"].as_str().expect("a namespace");
            if metric_namespace.starts_with("AWS/") {
                continue;
            }
            assert_eq!(
                metric_namespace, namespace,
                "{id} watches another namespace than the functions write"
            );
            let name = metric["MetricName"].as_str().expect("a metric name");
            let sets = published.get(name).unwrap_or_else(|| panic!("{id}: no code writes {name}"));
            let dimensions: BTreeMap<&str, &str> = metric["Dimensions"]
                .as_vec()
                .expect("dimensions")
                .iter()
                .map(|dimension| (dimension["Name"].as_str().unwrap(), dimension["Value"].as_str().unwrap()))
                .collect();
            let names: BTreeSet<String> = dimensions.keys().map(|name| (*name).to_owned()).collect();
            assert!(sets.contains(&names), "{id}: {name} is published under {sets:?}, not {names:?}");
            let function = dimensions.get("FunctionName").expect("every EMF metric has a FunctionName");
            assert!(functions.contains_key(*function), "{id}: FunctionName {function} is not a function");
            watched += 1;
        }
    }
    assert!(watched >= 6, "only {watched} alarm metrics on EMF metrics were found");
}

/// A refused fund-flow event or settlement moves no money until an operator looks: the webhook's
/// `EventsReceived` with `Outcome=refused` raises an alarm at the first one.
#[test]
fn a_refused_event_raises_an_alarm() {
    let template = template();
    let (webhook, _) = function_building(&template, "webhook");
    let refused = EventOutcome::Refused.as_str();
    let alarms: Vec<_> = resources_of_type(&template, "AWS::CloudWatch::Alarm")
        .into_iter()
        .filter(|(_, alarm)| {
            let properties = &alarm["Properties"];
            let dimensions: BTreeMap<&str, &str> = properties["Dimensions"]
                .as_vec()
                .into_iter()
                .flatten()
                .map(|dimension| {
                    (dimension["Name"].as_str().unwrap_or(""), dimension["Value"].as_str().unwrap_or(""))
                })
                .collect();
            properties["MetricName"].as_str() == Some("EventsReceived")
                && dimensions == BTreeMap::from([("FunctionName", webhook), ("Outcome", refused)])
        })
        .collect();
    assert_eq!(alarms.len(), 1, "one alarm on {webhook}'s EventsReceived with Outcome={refused}");
    let (id, alarm) = alarms[0];
    let properties = &alarm["Properties"];
    assert_eq!(properties["Statistic"].as_str(), Some("Sum"), "{id}");
    assert_eq!(properties["Threshold"].as_i64(), Some(0), "{id}");
    assert_eq!(properties["ComparisonOperator"].as_str(), Some("GreaterThanThreshold"), "{id}");
    assert_eq!(properties["EvaluationPeriods"].as_i64(), Some(1), "{id}");
    assert_eq!(properties["TreatMissingData"].as_str(), Some("notBreaching"), "{id}: no events, no alarm");
}

/// One route of the HTTP API, as a SAM `HttpApi` event of a function declares it.
struct Route<'a> {
    function: &'a str,
    /// `METHOD /path`, as API Gateway names the route.
    key: String,
    properties: &'a Yaml,
}

/// Every route the template's functions declare.
fn http_routes(template: &Yaml) -> Vec<Route<'_>> {
    let mut routes = Vec::new();
    for (id, function) in resources_of_type(template, "AWS::Serverless::Function") {
        for (_, event) in function["Properties"]["Events"].as_hash().into_iter().flatten() {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let properties = &event["Properties"];
            let method =
                properties["Method"].as_str().unwrap_or_else(|| panic!("{id}: a route without a Method"));
            let path = properties["Path"].as_str().unwrap_or_else(|| panic!("{id}: a route without a Path"));
            routes.push(Route {
                function: id,
                key: format!("{} {path}", method.to_ascii_uppercase()),
                properties,
            });
        }
    }
    routes
}

/// The routes anyone may call without SigV4: Stripe's webhook deliveries (Stripe signs them, the
/// webhook checks the signature) and the onboarding refresh link a seller's browser follows (it
/// carries an HMAC token the platform API checks). Every other route needs `execute-api:Invoke`.
const UNAUTHENTICATED_ROUTES: [&str; 2] = ["POST /webhooks/stripe", "GET /onboarding/refresh"];

/// The platform API's routes (DESIGN.md, "Platform API").
const PLATFORM_API_ROUTES: [&str; 17] = [
    "POST /accounts",
    "GET /accounts",
    "GET /accounts/{id}",
    "GET /accounts/{id}/steps",
    "POST /accounts/{id}/onboarding_link",
    "POST /accounts/{id}/session",
    "POST /accounts/{id}/login_link",
    "PUT /accounts/{id}/payout_policy",
    "POST /transfers",
    "POST /payouts",
    "GET /changes",
    "GET /accounts/{id}/ledger",
    "GET /accounts/{id}/tax",
    "GET /reports/fees",
    "GET /healthz",
    "GET /console",
    "GET /onboarding/refresh",
];

/// Every route states its authorizer: `AWS_IAM`, or `NONE` for exactly the two routes that must be
/// open, so a new route added without a thought for its auth fails here. The API's default is
/// `AWS_IAM` too, so such a route would deploy closed rather than open; and there is no other way
/// into a function (another API, a function URL, routes in an OpenAPI body) that this test would
/// not see.
#[test]
fn every_route_but_the_webhook_and_the_refresh_link_needs_sigv4() {
    let template = template();
    let api = &template["Resources"]["HttpApi"];
    assert_eq!(api["Type"].as_str(), Some("AWS::Serverless::HttpApi"));
    let auth = &api["Properties"]["Auth"];
    assert_eq!(
        auth["EnableIamAuthorizer"].as_bool(),
        Some(true),
        "HttpApi: SAM's built-in AWS_IAM authorizer"
    );
    assert_eq!(
        auth["DefaultAuthorizer"].as_str(),
        Some("AWS_IAM"),
        "HttpApi: a route that names no authorizer is closed, not open"
    );
    assert!(auth["Authorizers"].is_badvalue(), "HttpApi: an authorizer this test does not check");
    assert!(
        api["Properties"]["DefinitionBody"].is_badvalue() && api["Properties"]["DefinitionUri"].is_badvalue(),
        "HttpApi: routes come from the functions' events alone, which this test reads"
    );
    for other in [
        "AWS::Serverless::Api",
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGatewayV2::Api",
        "AWS::ApiGatewayV2::Route",
        "AWS::Lambda::Url",
    ] {
        let found: Vec<&str> = resources_of_type(&template, other).into_iter().map(|(id, _)| id).collect();
        assert!(found.is_empty(), "{other}: a way in this test does not check: {found:?}");
    }
    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        assert!(
            function["Properties"]["FunctionUrlConfig"].is_badvalue(),
            "{id}: a function URL skips the API"
        );
        for (name, event) in function["Properties"]["Events"].as_hash().into_iter().flatten() {
            assert_eq!(
                event["Type"].as_str(),
                Some("HttpApi"),
                "{id}: event {name:?} is not a route of the HttpApi"
            );
        }
    }

    let routes = http_routes(&template);
    assert!(routes.len() > UNAUTHENTICATED_ROUTES.len(), "the template declares {} routes", routes.len());
    let mut keys = BTreeSet::new();
    let mut open = BTreeSet::new();
    for route in &routes {
        let key = route.key.as_str();
        let function = route.function;
        assert!(keys.insert(key), "{key} is declared twice");
        assert_eq!(
            route.properties["ApiId"].as_str(),
            Some("HttpApi"),
            "{key} ({function}): on the stack's HttpApi, not on an implicit API SAM would create"
        );
        let authorizer = route.properties["Auth"]["Authorizer"].as_str().unwrap_or_else(|| {
            panic!(
                "{key} ({function}) states no Auth.Authorizer: AWS_IAM, or NONE for a route anyone may call"
            )
        });
        match authorizer {
            "AWS_IAM" => {}
            "NONE" => {
                open.insert(key);
            }
            other => panic!("{key} ({function}): authorizer {other}"),
        }
    }
    assert_eq!(open, BTreeSet::from(UNAUTHENTICATED_ROUTES), "the routes callable without SigV4");
}

/// The platform API serves exactly its routes, on the settings the code reads: the table and step
/// queues every function shares, the livemode the webhook acts on, the two secrets by ARN, and the
/// optional public URL and accounts API version from parameters (never the API's own URL, which
/// would make the function and its routes depend on each other).
#[test]
fn the_platform_api_serves_its_routes_and_finds_its_settings() {
    let template = template();
    let (platform, function) = function_building(&template, "platform-api");
    let routes = http_routes(&template);
    let served: BTreeSet<&str> =
        routes.iter().filter(|route| route.function == platform).map(|route| route.key.as_str()).collect();
    assert_eq!(served, BTreeSet::from(PLATFORM_API_ROUTES), "{platform}'s routes");
    for route in routes.iter().filter(|route| route.function == platform) {
        assert_eq!(route.properties["PayloadFormatVersion"].as_str(), Some("2.0"), "{}", route.key);
    }

    let variables = &function["Properties"]["Environment"]["Variables"];
    for (name, value) in [
        (shared::config::TABLE_NAME, "Table"),
        (shared::store::sqs::TRANSFERS_QUEUE_URL, "TransfersQueue"),
        (shared::store::sqs::PAYOUTS_QUEUE_URL, "PayoutsQueue"),
        (shared::config::API_KEY_SECRET_ARN, "StripeApiKeySecretArn"),
        ("CONNECT_FLOW_LINK_SECRET_ARN", "LinkSecretArn"),
        ("CONNECT_FLOW_PUBLIC_URL", "PublicUrl"),
        ("CONNECT_FLOW_ACCOUNTS_API", "AccountsApi"),
    ] {
        assert_eq!(variables[name].as_str(), Some(value), "{platform}: {name}");
    }
    let (_, webhook) = function_building(&template, "webhook");
    let livemode = &variables[shared::config::LIVEMODE];
    assert!(!livemode.is_badvalue(), "{platform} sets {}", shared::config::LIVEMODE);
    assert_eq!(
        livemode,
        &webhook["Properties"]["Environment"]["Variables"][shared::config::LIVEMODE],
        "{platform} acts on the livemode the webhook acts on"
    );
    for (name, value) in variables.as_hash().expect("the platform API's variables") {
        assert!(
            !format!("{value:?}").contains("HttpApi"),
            "{platform}: {name:?} refers to the HttpApi: a cycle"
        );
    }

    let parameters = &template["Parameters"];
    assert_eq!(
        parameters["LinkSecretArn"]["AllowedPattern"], parameters["StripeApiKeySecretArn"]["AllowedPattern"],
        "LinkSecretArn is a Secrets Manager ARN"
    );
    assert!(parameters["LinkSecretArn"]["Default"].is_badvalue(), "LinkSecretArn: no default key");
    assert_eq!(parameters["PublicUrl"]["Default"].as_str(), Some(""), "PublicUrl is optional");
    assert_eq!(parameters["AccountsApi"]["Default"].as_str(), Some("v1"));
    assert_eq!(strings(&parameters["AccountsApi"]["AllowedValues"]), ["v1", "v2"]);
    assert_eq!(function_property(&template, function, "Timeout").as_i64(), Some(10), "{platform}: Timeout");
}

/// The platform API may call exactly what its routes need on the table (items, the change feed)
/// and on the two indexes it queries, send to the two step queues, and read its two secrets.
#[test]
fn the_platform_api_may_only_use_the_table_its_step_queues_and_its_two_secrets() {
    let template = template();
    let (platform, function) = function_building(&template, "platform-api");
    assert_eq!(
        function_grants(platform, function),
        pairs(&[
            ("dynamodb:GetItem", "Table.Arn"),
            ("dynamodb:PutItem", "Table.Arn"),
            ("dynamodb:Query", "Table.Arn"),
            ("dynamodb:Query", "${Table.Arn}/index/steps_by_destination"),
            ("dynamodb:Query", "${Table.Arn}/index/accounts_by_status"),
            ("sqs:SendMessage", "TransfersQueue.Arn"),
            ("sqs:SendMessage", "PayoutsQueue.Arn"),
            ("secretsmanager:GetSecretValue", "StripeApiKeySecretArn"),
            ("secretsmanager:GetSecretValue", "LinkSecretArn"),
        ]),
        "{platform}'s policy"
    );
}

/// No function may use a wildcard action or resource, but for the one the stream poller needs:
/// `dynamodb:ListStreams`, which has no resource-level permissions, granted to the notifier alone.
#[test]
fn no_function_is_granted_a_wildcard() {
    let template = template();
    let (notifier, _) = function_building(&template, "notifier");
    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        for (action, resource) in function_grants(id, function) {
            assert!(!action.contains('*'), "{id}: {action}");
            let list_streams = id == notifier && action == "dynamodb:ListStreams" && resource == "*";
            assert!(list_streams || !resource.contains('*'), "{id}: {action} on {resource}");
        }
    }
}

/// The notifier may read the table's stream (what Lambda's poller calls), put events on the
/// stack's own change bus, and send failed batches to its dead-letter queue: nothing else. It
/// finds the bus by name, and has no SAM event (a `DynamoDB` event would attach a managed policy
/// that reads every stream in the account).
#[test]
fn the_notifier_may_only_read_the_stream_and_put_events_on_its_own_bus() {
    let template = template();
    let (notifier, function) = function_building(&template, "notifier");
    assert_eq!(
        function_grants(notifier, function),
        pairs(&[
            ("dynamodb:DescribeStream", "Table.StreamArn"),
            ("dynamodb:GetRecords", "Table.StreamArn"),
            ("dynamodb:GetShardIterator", "Table.StreamArn"),
            ("dynamodb:ListStreams", "*"),
            ("events:PutEvents", "ChangesBus.Arn"),
            ("sqs:SendMessage", "NotifierDeadLetterQueue.Arn"),
        ]),
        "{notifier}'s policy"
    );
    assert!(
        function["Properties"]["Events"].is_badvalue(),
        "{notifier}: SAM events add triggers and policies"
    );
    let bus = &template["Resources"]["ChangesBus"];
    assert_eq!(bus["Type"].as_str(), Some("AWS::Events::EventBus"));
    assert_eq!(
        bus["Properties"]["Name"].as_str(),
        Some("${AWS::StackName}-changes"),
        "the bus is the stack's"
    );
    assert_eq!(
        function["Properties"]["Environment"]["Variables"]["CONNECT_FLOW_EVENT_BUS"].as_str(),
        Some("ChangesBus"),
        "{notifier}: CONNECT_FLOW_EVENT_BUS is the bus's name"
    );
}

/// The notifier is fed by the table's stream, which carries the new image of each item, through
/// one event source mapping that lets only inserted change items (`pk` starting `FEED#`) through,
/// reports partial batch failures, splits a failing batch, and gives up on a record after ten
/// retries or a day into an encrypted standard queue kept 14 days.
#[test]
fn the_notifier_reads_inserted_change_items_from_the_table_stream() {
    let template = template();
    let (notifier, _) = function_building(&template, "notifier");
    let table = &template["Resources"]["Table"]["Properties"];
    assert_eq!(
        table["StreamSpecification"]["StreamViewType"].as_str(),
        Some("NEW_IMAGE"),
        "the notifier publishes the change item as written"
    );
    let mappings: Vec<_> = resources_of_type(&template, "AWS::Lambda::EventSourceMapping")
        .into_iter()
        .filter(|(_, mapping)| referenced_id(&mapping["Properties"]["FunctionName"]) == Some(notifier))
        .collect();
    assert_eq!(mappings.len(), 1, "{notifier} has one event source mapping");
    let (mapping_id, mapping) = mappings[0];
    let properties = &mapping["Properties"];
    assert_eq!(properties["EventSourceArn"].as_str(), Some("Table.StreamArn"), "{mapping_id}");
    assert_eq!(properties["StartingPosition"].as_str(), Some("TRIM_HORIZON"), "{mapping_id}");
    assert_eq!(properties["BatchSize"].as_i64(), Some(100), "{mapping_id}");
    assert_eq!(properties["MaximumBatchingWindowInSeconds"].as_i64(), Some(1), "{mapping_id}");
    assert_eq!(
        properties["FunctionResponseTypes"].as_vec().map(Vec::as_slice),
        Some(&[Yaml::String("ReportBatchItemFailures".into())][..]),
        "{mapping_id}: without ReportBatchItemFailures Lambda retries a batch whatever the notifier answers"
    );
    assert_eq!(properties["BisectBatchOnFunctionError"].as_bool(), Some(true), "{mapping_id}");
    assert_eq!(properties["MaximumRetryAttempts"].as_i64(), Some(10), "{mapping_id}");
    assert_eq!(properties["MaximumRecordAgeInSeconds"].as_i64(), Some(86400), "{mapping_id}");

    let filters = properties["FilterCriteria"]["Filters"].as_vec().expect("the mapping filters the stream");
    assert_eq!(filters.len(), 1, "{mapping_id}: one filter (filters are OR-ed)");
    let pattern: Value = serde_json::from_str(filters[0]["Pattern"].as_str().expect("a filter pattern"))
        .expect("the pattern is JSON");
    assert_eq!(
        pattern,
        serde_json::json!({"eventName": ["INSERT"], "dynamodb": {"Keys": {"pk": {"S": [{"prefix": "FEED#"}]}}}}),
        "{mapping_id}: inserted change items only"
    );

    let queue_id = referenced_id(&properties["DestinationConfig"]["OnFailure"]["Destination"])
        .expect("failed batches go to a queue of the template");
    assert_eq!(queue_id, "NotifierDeadLetterQueue", "{mapping_id}'s on-failure destination");
    let queue = &template["Resources"][queue_id];
    assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"), "{queue_id}");
    let queue = &queue["Properties"];
    assert!(
        queue["FifoQueue"].as_bool() != Some(true),
        "{queue_id}: a stream's on-failure destination is a standard queue"
    );
    assert_eq!(queue["MessageRetentionPeriod"].as_i64(), Some(1_209_600), "{queue_id}: 14 days");
    assert_eq!(queue["SqsManagedSseEnabled"].as_bool(), Some(true), "{queue_id} is encrypted");
}

/// Every dead-letter queue (a queue's redrive target, or an event source mapping's on-failure
/// destination) raises an alarm at its first message, and every function no caller waits on (fed
/// by a queue, a stream or a schedule) raises one when an invocation fails.
#[test]
fn every_dead_letter_queue_and_every_background_function_raises_an_alarm() {
    let template = template();
    let alarms = resources_of_type(&template, "AWS::CloudWatch::Alarm");
    let alarmed = |namespace: &str, metric: &str, dimension: &str, value: &str| {
        alarms.iter().any(|(_, alarm)| {
            let properties = &alarm["Properties"];
            properties["Namespace"].as_str() == Some(namespace)
                && properties["MetricName"].as_str() == Some(metric)
                && properties["Threshold"].as_i64() == Some(0)
                && properties["ComparisonOperator"].as_str() == Some("GreaterThanThreshold")
                && properties["Dimensions"].as_vec().is_some_and(|dimensions| {
                    dimensions.len() == 1
                        && dimensions[0]["Name"].as_str() == Some(dimension)
                        && dimensions[0]["Value"].as_str() == Some(value)
                })
        })
    };

    let mut dead_letter_queues = BTreeSet::new();
    for (_, queue) in resources_of_type(&template, "AWS::SQS::Queue") {
        dead_letter_queues
            .extend(referenced_id(&queue["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]));
    }
    for (_, mapping) in resources_of_type(&template, "AWS::Lambda::EventSourceMapping") {
        dead_letter_queues
            .extend(referenced_id(&mapping["Properties"]["DestinationConfig"]["OnFailure"]["Destination"]));
    }
    for (_, rule) in resources_of_type(&template, "AWS::Events::Rule") {
        for target in rule["Properties"]["Targets"].as_vec().into_iter().flatten() {
            dead_letter_queues.extend(referenced_id(&target["DeadLetterConfig"]["Arn"]));
        }
    }
    assert_eq!(
        dead_letter_queues,
        BTreeSet::from([
            "TransfersDeadLetterQueue",
            "PayoutsDeadLetterQueue",
            "NotifierDeadLetterQueue",
            "FetchDeadLetterQueue",
            "EventBridgeIntakeDeadLetterQueue",
        ]),
        "the dead-letter queues"
    );
    for queue in dead_letter_queues {
        assert!(
            alarmed(
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                "QueueName",
                &format!("{queue}.QueueName")
            ),
            "no alarm on a message in {queue}"
        );
    }

    let routed: BTreeSet<&str> = http_routes(&template).into_iter().map(|route| route.function).collect();
    for (id, _) in resources_of_type(&template, "AWS::Serverless::Function") {
        if !routed.contains(id) {
            assert!(alarmed("AWS/Lambda", "Errors", "FunctionName", id), "no alarm on {id}'s Errors");
        }
    }
}

/// A key schema, as (attribute, key type) pairs.
fn key_schema(schema: &Yaml) -> Vec<(String, String)> {
    schema
        .as_vec()
        .expect("a key schema")
        .iter()
        .map(|key| {
            (key["AttributeName"].as_str().unwrap().to_owned(), key["KeyType"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// GET /accounts?status=S queries the `accounts_by_status` index, keyed by the attributes the store
/// writes on an account (`onboarding_status`, `account_id`, both strings) with whole items
/// projected, next to the indexes the table had already.
#[test]
fn the_table_has_the_accounts_by_status_index() {
    let template = template();
    let table = &template["Resources"]["Table"]["Properties"];
    let (hash, range) = (store_constant("ONBOARDING_STATUS"), store_constant("ACCOUNT_ID"));
    assert_eq!((hash.as_str(), range.as_str()), ("onboarding_status", "account_id"));
    let defined: BTreeMap<&str, &str> = table["AttributeDefinitions"]
        .as_vec()
        .expect("attribute definitions")
        .iter()
        .map(|attribute| {
            (attribute["AttributeName"].as_str().unwrap(), attribute["AttributeType"].as_str().unwrap())
        })
        .collect();
    assert_eq!(defined.get(hash.as_str()), Some(&"S"), "{hash} is a string: the onboarding status");
    assert_eq!(defined.get(range.as_str()), Some(&"S"), "{range} is a string: acct_…");

    let indexes = table["GlobalSecondaryIndexes"].as_vec().expect("the table's indexes");
    let names: BTreeSet<&str> =
        indexes.iter().map(|index| index["IndexName"].as_str().expect("a name")).collect();
    assert_eq!(
        names,
        BTreeSet::from(["steps_by_destination", "open_steps", "accounts_by_status", "payouts_due"]),
        "the indexes"
    );
    let index = indexes
        .iter()
        .find(|index| index["IndexName"].as_str() == Some("accounts_by_status"))
        .expect("the accounts_by_status index");
    assert_eq!(
        key_schema(&index["KeySchema"]),
        [(hash, "HASH".to_owned()), (range, "RANGE".to_owned())],
        "accounts_by_status's keys"
    );
    assert_eq!(index["Projection"]["ProjectionType"].as_str(), Some("ALL"), "the store reads whole accounts");
}

/// The payout sweep queries the sparse `payouts_due` index by the attributes the store writes on
/// an account with payout funds due (`payout_sweep`, a string, and `payout_due_at`, Unix seconds),
/// with whole accounts projected; and every function that plans payouts or shows the policy gets
/// the default policy's variables.
#[test]
fn the_table_has_the_payouts_due_index_and_the_functions_the_default_payout_policy() {
    let template = template();
    let table = &template["Resources"]["Table"]["Properties"];
    let (name, hash, range) =
        (store_constant("PAYOUTS_DUE"), store_constant("PAYOUT_SWEEP"), store_constant("PAYOUT_DUE_AT"));
    let defined: BTreeMap<&str, &str> = table["AttributeDefinitions"]
        .as_vec()
        .expect("attribute definitions")
        .iter()
        .map(|attribute| {
            (attribute["AttributeName"].as_str().unwrap(), attribute["AttributeType"].as_str().unwrap())
        })
        .collect();
    assert_eq!(defined.get(hash.as_str()), Some(&"S"), "{hash} is a string");
    assert_eq!(defined.get(range.as_str()), Some(&"N"), "{range} is a number: Unix seconds");
    let index = table["GlobalSecondaryIndexes"]
        .as_vec()
        .expect("the table's indexes")
        .iter()
        .find(|index| index["IndexName"].as_str() == Some(name.as_str()))
        .expect("the payouts_due index");
    assert_eq!(
        key_schema(&index["KeySchema"]),
        [(hash, "HASH".to_owned()), (range, "RANGE".to_owned())],
        "{name}'s keys"
    );
    assert_eq!(index["Projection"]["ProjectionType"].as_str(), Some("ALL"), "the sweep reads whole accounts");

    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    for (variable, parameter) in [
        (shared::platform::payout_policy::PAYOUT_HOLD_DAYS, "PayoutHoldDays"),
        (shared::platform::payout_policy::PAYOUT_MINIMUMS, "PayoutMinimums"),
        (shared::platform::payout_policy::PAYOUT_SCHEDULE, "PayoutSchedule"),
        (shared::platform::payout_policy::PAYOUT_METHOD, "PayoutMethod"),
        (shared::platform::payout_policy::PAYOUT_RETRY_AFTER_DAYS, "PayoutRetryAfterDays"),
        (shared::platform::payout_policy::PAYOUT_STALE_SHARE, "PayoutStaleShare"),
    ] {
        assert_eq!(globals[variable].as_str(), Some(parameter), "every function reads {variable}");
        let default = &template["Parameters"][parameter]["Default"];
        let default = default.as_str().map(str::to_owned).or_else(|| default.as_i64().map(|n| n.to_string()));
        let lookup = |name: &str| (name == variable).then(|| default.clone()).flatten();
        assert!(
            shared::domain::payout::PayoutSettings::from_lookup(lookup).is_ok(),
            "{parameter}'s default is a value the code accepts"
        );
    }
}

/// The stack tells its operators where the platform API is (and that it wants SigV4) and which
/// bus the change feed is on.
#[test]
fn the_outputs_give_the_platform_api_url_and_the_change_bus() {
    let template = template();
    let outputs = &template["Outputs"];
    let url = &outputs["PlatformApiUrl"];
    assert_eq!(
        url["Value"].as_str(),
        Some("https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"),
        "PlatformApiUrl is the HttpApi's base URL"
    );
    let description = url["Description"].as_str().expect("PlatformApiUrl has a description");
    assert!(
        description.contains("SigV4") && description.contains("execute-api:Invoke"),
        "PlatformApiUrl's description says how to call it: {description}"
    );
    assert_eq!(outputs["ChangesBusArn"]["Value"].as_str(), Some("ChangesBus.Arn"));
    assert_eq!(outputs["ChangesBusName"]["Value"].as_str(), Some("ChangesBus"));
}

/// The condition every EventBridge-intake resource carries (`StripeEventBridgeSource` not empty).
const EVENTBRIDGE_CONDITION: &str = "UseStripeEventBridge";

/// The parameter naming the Stripe partner event source.
const EVENTBRIDGE_SOURCE_PARAMETER: &str = "StripeEventBridgeSource";

/// The resources that exist only with an EventBridge intake.
const EVENTBRIDGE_RESOURCES: [&str; 11] = [
    "StripeEventBus",
    "StripeEventRule",
    "EventBridgeIntakeQueue",
    "EventBridgeIntakeDeadLetterQueue",
    "EventBridgeIntakeQueuePolicy",
    "EventBridgeIntakeDeadLetterQueuePolicy",
    "EventBridgeIntakeLogGroup",
    "EventBridgeIntakeFunction",
    "EventBridgeIntakeEventSource",
    "EventBridgeIntakeDeadLetterAlarm",
    "EventBridgeIntakeErrorsAlarm",
];

/// Whether `value` refers to `id` anywhere: `!Ref id`, `!GetAtt id.Attr` (as `id` and `id.Attr`
/// once their tags are gone) or `${id}` / `${id.Attr}` in a `!Sub` string.
fn mentions(value: &Yaml, id: &str) -> bool {
    match value {
        Yaml::String(text) => {
            text == id
                || text.strip_prefix(id).is_some_and(|rest| rest.starts_with('.'))
                || text.contains(&format!("${{{id}}}"))
                || text.contains(&format!("${{{id}."))
        }
        Yaml::Array(items) => items.iter().any(|item| mentions(item, id)),
        Yaml::Hash(entries) => entries.iter().any(|(key, item)| mentions(key, id) || mentions(item, id)),
        _ => false,
    }
}

/// The one statement of the only queue policy on `queue`.
fn queue_policy_statement<'a>(template: &'a Yaml, queue: &str) -> (&'a str, &'a Yaml) {
    let policies: Vec<_> = resources_of_type(template, "AWS::SQS::QueuePolicy")
        .into_iter()
        .filter(|(_, policy)| {
            policy["Properties"]["Queues"].as_vec().into_iter().flatten().any(|q| q.as_str() == Some(queue))
        })
        .collect();
    assert_eq!(policies.len(), 1, "one queue policy on {queue}");
    let (id, policy) = policies[0];
    assert_eq!(strings(&policy["Properties"]["Queues"]), [queue], "{id} is on {queue} alone");
    let statements = policy["Properties"]["PolicyDocument"]["Statement"].as_vec().expect("statements");
    assert_eq!(statements.len(), 1, "{id}: one statement");
    (id, &statements[0])
}

/// The (action, resource) pairs of a function's grants whose action starts with `prefix`.
fn grants_with_prefix(id: &str, function: &Yaml, prefix: &str) -> BTreeSet<(String, String)> {
    function_grants(id, function).into_iter().filter(|(action, _)| action.starts_with(prefix)).collect()
}

/// The fetch queue is a FIFO queue like the step queues: deduplicated by the id the sender sets,
/// dead-lettering into a FIFO queue after `shared::worker::MAX_RECEIVES` receives, encrypted and
/// kept as long as they are.
#[test]
fn the_fetch_queue_is_a_fifo_queue_with_a_dead_letter_queue_like_the_step_queues() {
    let template = template();
    let resources = &template["Resources"];
    let steps = &resources["TransfersQueue"]["Properties"];
    let queue = &resources["FetchQueue"];
    assert_eq!(queue["Type"].as_str(), Some("AWS::SQS::Queue"));
    let queue = &queue["Properties"];
    assert_eq!(queue["FifoQueue"].as_bool(), Some(true), "FetchQueue is FIFO");
    assert_eq!(queue["ContentBasedDeduplication"].as_bool(), Some(false), "the sender deduplicates");
    assert!(queue["QueueName"].as_str().is_some_and(|name| name.ends_with(".fifo")), "FetchQueue's name");
    assert_eq!(queue["RedrivePolicy"]["maxReceiveCount"].as_i64(), Some(i64::from(MAX_RECEIVES)));
    for property in ["MessageRetentionPeriod", "SqsManagedSseEnabled"] {
        assert_eq!(queue[property], steps[property], "FetchQueue's {property} is the step queues'");
    }
    assert!(queue["KmsMasterKeyId"].is_badvalue(), "FetchQueue: SQS-managed encryption, no KMS key");

    let dead_letters = referenced_id(&queue["RedrivePolicy"]["deadLetterTargetArn"]).expect("a DLQ");
    assert_eq!(dead_letters, "FetchDeadLetterQueue");
    let dead_letters = &resources[dead_letters];
    assert_eq!(dead_letters["Type"].as_str(), Some("AWS::SQS::Queue"));
    let dead_letters = &dead_letters["Properties"];
    let step_dead_letters = &resources["TransfersDeadLetterQueue"]["Properties"];
    assert_eq!(dead_letters["FifoQueue"].as_bool(), Some(true), "a FIFO queue's DLQ is FIFO");
    for property in ["MessageRetentionPeriod", "SqsManagedSseEnabled"] {
        assert_eq!(dead_letters[property], step_dead_letters[property], "FetchDeadLetterQueue's {property}");
    }

    let outputs = &template["Outputs"];
    assert_eq!(outputs["FetchQueueUrl"]["Value"].as_str(), Some("FetchQueue"));
    assert!(outputs["FetchQueueUrl"]["Condition"].is_badvalue(), "the fetch queue is always there");
}

/// A thin event's fetch step goes from the webhook to the fetch queue: the webhook finds the queue
/// under the variable the code reads and may send to it, and otherwise may use only what it used.
#[test]
fn the_webhook_may_queue_fetches() {
    let template = template();
    let (webhook, function) = function_building(&template, "webhook");
    let variables = &function["Properties"]["Environment"]["Variables"];
    assert_eq!(
        variables[shared::store::sqs::FETCH_QUEUE_URL].as_str(),
        Some("FetchQueue"),
        "{webhook}: {}",
        shared::store::sqs::FETCH_QUEUE_URL
    );
    assert_eq!(
        function_grants(webhook, function),
        pairs(&[
            ("dynamodb:GetItem", "Table.Arn"),
            ("dynamodb:PutItem", "Table.Arn"),
            ("dynamodb:Query", "Table.Arn"),
            ("dynamodb:UpdateItem", "Table.Arn"),
            ("dynamodb:GetItem", "${Table.Arn}/index/steps_by_destination"),
            ("dynamodb:PutItem", "${Table.Arn}/index/steps_by_destination"),
            ("dynamodb:Query", "${Table.Arn}/index/steps_by_destination"),
            ("sqs:SendMessage", "TransfersQueue.Arn"),
            ("sqs:SendMessage", "PayoutsQueue.Arn"),
            ("sqs:SendMessage", "FetchQueue.Arn"),
            ("secretsmanager:GetSecretValue", "WebhookSecretsArn"),
        ]),
        "{webhook}'s policy"
    );
}

/// Each fetch worker instance paces its Stripe reads at `CONNECT_FLOW_FETCH_RATE` a second, and at
/// most its event source mapping's maximum concurrency of instances run (nothing else invokes
/// it), so the product is the deployment's read rate: under 20 a second.
#[test]
fn the_fetch_worker_reads_stripe_at_under_twenty_a_second() {
    let template = template();
    let (fetcher, function) = function_building(&template, "fetch-worker");
    assert!(
        function["Properties"]["ReservedConcurrentExecutions"].is_badvalue(),
        "{fetcher}: no reservation, which an account at the default concurrency limit cannot make"
    );
    let rate: i64 = function["Properties"]["Environment"]["Variables"]["CONNECT_FLOW_FETCH_RATE"]
        .as_str()
        .unwrap_or_else(|| panic!("{fetcher} sets CONNECT_FLOW_FETCH_RATE (a string)"))
        .parse()
        .expect("CONNECT_FLOW_FETCH_RATE is a whole number of reads a second");

    let mappings: Vec<_> = resources_of_type(&template, "AWS::Lambda::EventSourceMapping")
        .into_iter()
        .filter(|(_, mapping)| referenced_id(&mapping["Properties"]["FunctionName"]) == Some(fetcher))
        .collect();
    assert_eq!(mappings.len(), 1, "{fetcher} has one event source mapping");
    let (mapping_id, mapping) = mappings[0];
    let properties = &mapping["Properties"];
    assert_eq!(referenced_id(&properties["EventSourceArn"]), Some("FetchQueue"), "{mapping_id}");
    let maximum = properties["ScalingConfig"]["MaximumConcurrency"].as_i64().expect("a maximum concurrency");
    assert!(maximum >= 2 && rate >= 1, "{fetcher}: {maximum} instances at {rate} reads a second");
    assert!(maximum * rate < 20, "{fetcher}: {maximum} instances x {rate} reads a second is not under 20");
    assert_eq!((maximum, rate), (2, 9), "{fetcher}: the numbers the template's comment explains");
    assert_eq!(properties["BatchSize"].as_i64(), Some(10), "{mapping_id}: like the workers'");
    assert_eq!(
        properties["FunctionResponseTypes"].as_vec().map(Vec::as_slice),
        Some(&[Yaml::String("ReportBatchItemFailures".into())][..]),
        "{mapping_id}"
    );
    let (_, worker) = function_building(&template, "transfer-worker");
    assert_eq!(
        function_property(&template, function, "Timeout"),
        function_property(&template, worker, "Timeout"),
        "{fetcher}: the workers' timeout"
    );
}

/// The fetch worker finds the store, the step queues, the Stripe key and the livemode under the
/// variables the code reads, and may do what the webhook's store does on the table (it applies a
/// fetched object as the webhook applies an event) plus UpdateItem for the fetch step, send to the
/// two step queues, read the Stripe key and poll its own queue: nothing else.
#[test]
fn the_fetch_worker_may_only_apply_events_queue_steps_and_read_the_stripe_key() {
    let template = template();
    let (fetcher, function) = function_building(&template, "fetch-worker");
    let (webhook, webhook_function) = function_building(&template, "webhook");
    let variables = &function["Properties"]["Environment"]["Variables"];
    for (name, value) in [
        (shared::config::TABLE_NAME, "Table"),
        (shared::config::API_KEY_SECRET_ARN, "StripeApiKeySecretArn"),
        (shared::store::sqs::TRANSFERS_QUEUE_URL, "TransfersQueue"),
        (shared::store::sqs::PAYOUTS_QUEUE_URL, "PayoutsQueue"),
    ] {
        assert_eq!(variables[name].as_str(), Some(value), "{fetcher}: {name}");
    }
    assert_eq!(
        variables[shared::config::LIVEMODE],
        webhook_function["Properties"]["Environment"]["Variables"][shared::config::LIVEMODE],
        "{fetcher} acts on the livemode the webhook acts on"
    );

    let mut table = grants_with_prefix(webhook, webhook_function, "dynamodb:");
    table.insert(("dynamodb:UpdateItem".to_owned(), "Table.Arn".to_owned()));
    assert_eq!(
        grants_with_prefix(fetcher, function, "dynamodb:"),
        table,
        "{fetcher}: the webhook's table rights, and UpdateItem on the table"
    );
    let mut expected = table;
    expected.extend(pairs(&[
        ("sqs:SendMessage", "TransfersQueue.Arn"),
        ("sqs:SendMessage", "PayoutsQueue.Arn"),
        ("secretsmanager:GetSecretValue", "StripeApiKeySecretArn"),
        ("sqs:ReceiveMessage", "FetchQueue.Arn"),
        ("sqs:DeleteMessage", "FetchQueue.Arn"),
        ("sqs:GetQueueAttributes", "FetchQueue.Arn"),
    ]));
    assert_eq!(function_grants(fetcher, function), expected, "{fetcher}'s policy");
    assert!(
        function["Properties"]["Events"].is_badvalue(),
        "{fetcher}: SAM events add triggers and policies"
    );
}

/// The intake is optional: `StripeEventBridgeSource` is empty by default, takes only a name under
/// Stripe's partner prefix, and every resource of the intake (and every output about it) exists
/// only when it is set. Nothing that always exists refers to an intake resource or to the
/// parameter, or the stack would not deploy without it.
#[test]
fn every_eventbridge_intake_resource_exists_only_with_a_stripe_event_source() {
    let template = template();
    let parameter = &template["Parameters"][EVENTBRIDGE_SOURCE_PARAMETER];
    assert_eq!(parameter["Type"].as_str(), Some("String"));
    assert_eq!(parameter["Default"].as_str(), Some(""), "no EventBridge intake unless asked for");
    assert_eq!(
        parameter["AllowedPattern"].as_str(),
        Some("^(aws\\.partner/stripe\\.com/[/._A-Za-z0-9-]{1,233})?$"),
        "empty, or an event bus name under Stripe's partner prefix"
    );

    // `!Not [!Equals [!Ref P, ""]]`, whose tags the parser drops: read the line too.
    let condition = &template["Conditions"][EVENTBRIDGE_CONDITION];
    let expected = Yaml::Array(vec![Yaml::Array(vec![
        Yaml::String(EVENTBRIDGE_SOURCE_PARAMETER.into()),
        Yaml::String("".into()),
    ])]);
    assert_eq!(condition, &expected, "{EVENTBRIDGE_CONDITION}");
    let text = std::fs::read_to_string(workspace_root().join("infra/template.yaml")).expect("template");
    assert!(
        text.contains(&format!(
            "{EVENTBRIDGE_CONDITION}: !Not [!Equals [!Ref {EVENTBRIDGE_SOURCE_PARAMETER}, \"\"]]"
        )),
        "{EVENTBRIDGE_CONDITION} is: the parameter is not empty"
    );

    let resources = template["Resources"].as_hash().expect("Resources");
    let conditional: BTreeSet<&str> = resources
        .iter()
        .filter(|(_, resource)| resource["Condition"].as_str() == Some(EVENTBRIDGE_CONDITION))
        .map(|(id, _)| id.as_str().expect("a logical id"))
        .collect();
    assert_eq!(
        conditional,
        BTreeSet::from(EVENTBRIDGE_RESOURCES),
        "the resources under {EVENTBRIDGE_CONDITION}"
    );
    for (id, resource) in resources {
        let id = id.as_str().expect("a logical id");
        let condition = resource["Condition"].as_str();
        assert!(
            condition.is_none() || condition == Some(EVENTBRIDGE_CONDITION),
            "{id}: condition {condition:?}"
        );
        if conditional.contains(id) {
            continue;
        }
        assert!(
            !mentions(resource, EVENTBRIDGE_SOURCE_PARAMETER),
            "{id} uses {EVENTBRIDGE_SOURCE_PARAMETER}"
        );
        for other in &conditional {
            assert!(!mentions(resource, other), "{id}, always there, refers to {other}, which may not be");
        }
    }

    let outputs = template["Outputs"].as_hash().expect("Outputs");
    for name in ["StripeEventBusArn", "EventBridgeIntakeQueueUrl"] {
        assert!(outputs.contains_key(&Yaml::String(name.into())), "the {name} output");
    }
    assert_eq!(template["Outputs"]["StripeEventBusArn"]["Value"].as_str(), Some("StripeEventBus.Arn"));
    assert_eq!(
        template["Outputs"]["EventBridgeIntakeQueueUrl"]["Value"].as_str(),
        Some("EventBridgeIntakeQueue")
    );
    for (name, output) in outputs {
        let refers = mentions(&output["Value"], EVENTBRIDGE_SOURCE_PARAMETER)
            || conditional.iter().any(|id| mentions(&output["Value"], id));
        assert_eq!(
            output["Condition"].as_str() == Some(EVENTBRIDGE_CONDITION),
            refers,
            "output {name:?}: under {EVENTBRIDGE_CONDITION} exactly when it is about the intake"
        );
    }
}

/// The partner bus is named after Stripe's partner source (as a partner bus must be), and its one
/// rule takes exactly that source's events, nothing broader (no prefix, wildcard or other source),
/// whole, to the intake queue, with retries and a dead-letter queue for what cannot be delivered.
#[test]
fn the_stripe_event_rule_takes_exactly_the_configured_source_to_the_intake_queue() {
    let template = template();
    let bus = &template["Resources"]["StripeEventBus"];
    assert_eq!(bus["Type"].as_str(), Some("AWS::Events::EventBus"));
    assert_eq!(bus["Properties"]["Name"].as_str(), Some(EVENTBRIDGE_SOURCE_PARAMETER), "the bus's name");
    assert_eq!(
        bus["Properties"]["EventSourceName"].as_str(),
        Some(EVENTBRIDGE_SOURCE_PARAMETER),
        "the bus's partner event source"
    );

    let rules = resources_of_type(&template, "AWS::Events::Rule");
    assert_eq!(rules.len(), 1, "one EventBridge rule");
    let (rule_id, rule) = rules[0];
    assert_eq!(rule_id, "StripeEventRule");
    let properties = &rule["Properties"];
    assert_eq!(
        properties["EventBusName"].as_str(),
        Some("StripeEventBus"),
        "{rule_id} is on the partner bus"
    );
    assert_eq!(properties["State"].as_str(), Some("ENABLED"), "{rule_id}");
    assert!(properties["ScheduleExpression"].is_badvalue(), "{rule_id}: a pattern rule");

    let pattern = properties["EventPattern"].as_hash().expect("an event pattern in YAML");
    assert_eq!(pattern.len(), 1, "{rule_id}: the pattern matches on source alone: {pattern:?}");
    let sources = properties["EventPattern"]["source"].as_vec().expect("a list of sources");
    assert_eq!(
        sources.as_slice(),
        [Yaml::String(EVENTBRIDGE_SOURCE_PARAMETER.into())],
        "{rule_id}: exactly the parameter's source, as a plain value (no prefix or wildcard matcher)"
    );
    let text = std::fs::read_to_string(workspace_root().join("infra/template.yaml")).expect("template");
    assert!(
        !text.contains("prefix: aws.partner") && !text.contains("wildcard:"),
        "no source prefix or wildcard matcher"
    );

    let targets = properties["Targets"].as_vec().expect("the rule's targets");
    assert_eq!(targets.len(), 1, "{rule_id}: one target");
    let target = &targets[0];
    assert_eq!(target["Arn"].as_str(), Some("EventBridgeIntakeQueue.Arn"), "{rule_id}'s target");
    for reshaping in ["Input", "InputPath", "InputTransformer", "RoleArn"] {
        assert!(
            target[reshaping].is_badvalue(),
            "{rule_id}: the whole event, as EventBridge sends it ({reshaping})"
        );
    }
    assert_eq!(
        target["DeadLetterConfig"]["Arn"].as_str(),
        Some("EventBridgeIntakeDeadLetterQueue.Arn"),
        "{rule_id}: undeliverable events"
    );
    let retry = &target["RetryPolicy"];
    assert!(retry["MaximumRetryAttempts"].as_i64().is_some_and(|n| n > 0), "{rule_id} retries");
    assert!(retry["MaximumEventAgeInSeconds"].as_i64().is_some_and(|n| n > 0), "{rule_id} retries");
}

/// Only EventBridge, delivering for the Stripe rule, may send to the intake queue and to its
/// dead-letter queue: one statement each, principal `events.amazonaws.com`, `sqs:SendMessage`,
/// conditioned on the rule's ARN. The queues are standard, encrypted by SQS (EventBridge cannot use
/// a KMS key its policy does not grant it), and the intake queue dead-letters like the others.
#[test]
fn only_the_stripe_rule_may_send_to_the_intake_queues() {
    let template = template();
    let policies = resources_of_type(&template, "AWS::SQS::QueuePolicy");
    assert_eq!(policies.len(), 2, "queue policies on the intake queue and its DLQ alone");
    for queue in ["EventBridgeIntakeQueue", "EventBridgeIntakeDeadLetterQueue"] {
        let (id, statement) = queue_policy_statement(&template, queue);
        assert_eq!(statement["Effect"].as_str(), Some("Allow"), "{id}");
        let principal = statement["Principal"].as_hash().expect("a principal map");
        assert_eq!(principal.len(), 1, "{id}: a service principal only");
        assert_eq!(strings(&statement["Principal"]["Service"]), ["events.amazonaws.com"], "{id}'s principal");
        assert_eq!(strings(&statement["Action"]), ["sqs:SendMessage"], "{id}'s actions");
        assert_eq!(strings(&statement["Resource"]), [format!("{queue}.Arn").as_str()], "{id}'s resource");
        let condition = statement["Condition"].as_hash().expect("a condition");
        assert_eq!(condition.len(), 1, "{id}: one condition operator");
        let arn_equals = statement["Condition"]["ArnEquals"].as_hash().expect("ArnEquals");
        assert_eq!(arn_equals.len(), 1, "{id}: one condition key");
        assert_eq!(
            statement["Condition"]["ArnEquals"]["aws:SourceArn"].as_str(),
            Some("StripeEventRule.Arn"),
            "{id}: for the Stripe rule alone"
        );
        for other in ["NotPrincipal", "NotAction", "NotResource"] {
            assert!(statement[other].is_badvalue(), "{id}: {other}");
        }

        let properties = &template["Resources"][queue]["Properties"];
        assert!(properties["FifoQueue"].as_bool() != Some(true), "{queue} is a standard queue");
        assert_eq!(properties["SqsManagedSseEnabled"].as_bool(), Some(true), "{queue} is encrypted by SQS");
        assert!(properties["KmsMasterKeyId"].is_badvalue(), "{queue}: no KMS key EventBridge would need");
        assert_eq!(properties["MessageRetentionPeriod"].as_i64(), Some(1_209_600), "{queue}: 14 days");
    }
    let queue = &template["Resources"]["EventBridgeIntakeQueue"]["Properties"];
    assert_eq!(
        referenced_id(&queue["RedrivePolicy"]["deadLetterTargetArn"]),
        Some("EventBridgeIntakeDeadLetterQueue"),
        "the intake queue's DLQ"
    );
}

/// The intake runs the webhook's pipeline without a signature (IAM and the rule are the trust): it
/// finds the store, the three queues, the livemode, the one source it accepts and its dead-letter
/// queue under the variables the code reads, holds no Stripe key and no signing secret, and may do
/// what the webhook's store does on the table, send to the three queues and its DLQ, and poll its
/// queue: nothing else.
#[test]
fn the_eventbridge_intake_may_only_do_what_the_webhook_does_without_its_secrets() {
    let template = template();
    let (intake, function) = function_building(&template, "eventbridge-intake");
    let (webhook, webhook_function) = function_building(&template, "webhook");
    let variables = function["Properties"]["Environment"]["Variables"].as_hash().expect("variables");
    let names: BTreeSet<&str> = variables.keys().map(|name| name.as_str().expect("a name")).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            shared::config::TABLE_NAME,
            shared::store::sqs::TRANSFERS_QUEUE_URL,
            shared::store::sqs::PAYOUTS_QUEUE_URL,
            shared::store::sqs::FETCH_QUEUE_URL,
            shared::config::LIVEMODE,
            shared::config::DISPUTE_POLICY,
            "CONNECT_FLOW_EVENTBRIDGE_SOURCE",
            "CONNECT_FLOW_INTAKE_DLQ_URL",
        ]),
        "{intake}'s variables: no Stripe key, no signing secret"
    );
    let variables = &function["Properties"]["Environment"]["Variables"];
    for (name, value) in [
        (shared::config::TABLE_NAME, "Table"),
        (shared::store::sqs::TRANSFERS_QUEUE_URL, "TransfersQueue"),
        (shared::store::sqs::PAYOUTS_QUEUE_URL, "PayoutsQueue"),
        (shared::store::sqs::FETCH_QUEUE_URL, "FetchQueue"),
        ("CONNECT_FLOW_EVENTBRIDGE_SOURCE", EVENTBRIDGE_SOURCE_PARAMETER),
        ("CONNECT_FLOW_INTAKE_DLQ_URL", "EventBridgeIntakeDeadLetterQueue"),
    ] {
        assert_eq!(variables[name].as_str(), Some(value), "{intake}: {name}");
    }
    assert_eq!(
        variables[shared::config::LIVEMODE],
        webhook_function["Properties"]["Environment"]["Variables"][shared::config::LIVEMODE],
        "{intake} acts on the livemode the webhook acts on"
    );

    let table = grants_with_prefix(webhook, webhook_function, "dynamodb:");
    assert_eq!(
        grants_with_prefix(intake, function, "dynamodb:"),
        table,
        "{intake}: the webhook's table rights"
    );
    let mut expected = table;
    expected.extend(pairs(&[
        ("sqs:SendMessage", "TransfersQueue.Arn"),
        ("sqs:SendMessage", "PayoutsQueue.Arn"),
        ("sqs:SendMessage", "FetchQueue.Arn"),
        ("sqs:SendMessage", "EventBridgeIntakeDeadLetterQueue.Arn"),
        ("sqs:ReceiveMessage", "EventBridgeIntakeQueue.Arn"),
        ("sqs:DeleteMessage", "EventBridgeIntakeQueue.Arn"),
        ("sqs:GetQueueAttributes", "EventBridgeIntakeQueue.Arn"),
    ]));
    assert_eq!(function_grants(intake, function), expected, "{intake}'s policy");
    assert!(function["Properties"]["Events"].is_badvalue(), "{intake}: SAM events add triggers and policies");

    let mappings: Vec<_> = resources_of_type(&template, "AWS::Lambda::EventSourceMapping")
        .into_iter()
        .filter(|(_, mapping)| referenced_id(&mapping["Properties"]["FunctionName"]) == Some(intake))
        .collect();
    assert_eq!(mappings.len(), 1, "{intake} has one event source mapping");
    assert_eq!(
        referenced_id(&mappings[0].1["Properties"]["EventSourceArn"]),
        Some("EventBridgeIntakeQueue"),
        "{intake} reads the intake queue"
    );
}

/// The platform API judges the US tax-form thresholds by the variables the code reads, set from
/// parameters whose defaults are the code's own (today's thresholds) and which it accepts.
#[test]
fn the_platform_api_reads_the_tax_thresholds_from_parameters_with_todays_defaults() {
    use shared::domain::ledger::TaxThresholds;
    use shared::platform::ledger::{TAX_1099K_COUNT, TAX_1099K_GROSS, TAX_1099NEC_AMOUNT};

    let template = template();
    let (platform, function) = function_building(&template, "platform-api");
    let variables = &function["Properties"]["Environment"]["Variables"];
    let mut defaults = BTreeMap::new();
    for (variable, parameter) in [
        (TAX_1099K_GROSS, "Tax1099kGross"),
        (TAX_1099K_COUNT, "Tax1099kCount"),
        (TAX_1099NEC_AMOUNT, "Tax1099necAmount"),
    ] {
        assert_eq!(variables[variable].as_str(), Some(parameter), "{platform}: {variable}");
        let default = template["Parameters"][parameter]["Default"].as_i64().expect("a number default");
        defaults.insert(variable, default.to_string());
    }
    let read =
        TaxThresholds::from_lookup(|name| defaults.get(name).cloned()).expect("the defaults are accepted");
    assert_eq!(read, TaxThresholds::default(), "the template's defaults are the code's");
}
