//! `infra/template.yaml` and the workspace agree: every Lambda binary of the workspace is a function
//! of the template, every function of the template builds a Lambda binary of the workspace, and each
//! function is built, triggered and fed by its queue the way the workers' code relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
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

/// Every binary of the workspace, each with whether its package depends on a Lambda runtime crate
/// (a plain dependency: the CLI uses `lambda_http` only in its tests, and is not a function).
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
/// and keeps a received message hidden for at least six times the worker's timeout.
#[test]
fn every_function_without_a_route_is_fed_by_a_fifo_queue_with_partial_batch_failures() {
    let template = template();
    let mappings = resources_of_type(&template, "AWS::Lambda::EventSourceMapping");
    for (id, function) in resources_of_type(&template, "AWS::Serverless::Function") {
        let events = function["Properties"]["Events"].as_hash();
        let has_route =
            events.into_iter().flatten().any(|(_, event)| event["Type"].as_str() == Some("HttpApi"));
        if has_route {
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
        assert_eq!(queue["FifoQueue"].as_bool(), Some(true), "{queue_id} is FIFO");
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
                !["STRIPE_WEBHOOK_SECRETS", "STRIPE_API_KEY"].contains(&name),
                "{id} sets {name}: pass the secret's ARN and let the code read it"
            );
        }
    }
    let text = std::fs::read_to_string(workspace_root().join("infra/template.yaml")).expect("template");
    assert!(!text.contains("{{resolve:"), "dynamic references put the resolved secret in plain sight");
}
