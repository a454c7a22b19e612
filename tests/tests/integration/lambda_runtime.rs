//! The real Lambda `main.rs` of each function, started as Lambda starts it, against a stand-in
//! Runtime API on loopback: one cold and one warm invocation each, answered correctly. This is
//! `cold-start --runs 1` on the debug binaries (see `tests/src/bin/cold-start/main.rs`), which
//! fails on any wrong answer, a start-up error, or a call the stand-in does not serve.

use std::process::Command;

use integration_tests::DYNAMODB_ENDPOINT;

const FUNCTIONS: [&str; 5] = ["webhook", "transfer-worker", "payout-worker", "reconciler", "fetch-worker"];

#[test]
fn each_function_binary_answers_through_the_runtime_api() {
    let endpoint = std::env::var(DYNAMODB_ENDPOINT).unwrap_or_else(|_| {
        panic!("{DYNAMODB_ENDPOINT} is not set: run the tests with ./scripts/test, which starts moto server")
    });
    // `cargo test` builds this crate's binaries, not the functions' own: build them here, so that
    // the binaries run are never stale. `--workspace` unifies the dependencies' features as
    // `cargo test --workspace` does, so that it reuses what that built. Cargo does not hold its
    // build lock while tests run.
    let built = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--locked", "--workspace", "--bins"])
        .status()
        .expect("cargo starts");
    assert!(built.success(), "building the function binaries failed: {built}");

    let output = cold_start(&endpoint, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cold-start failed: {}\n{stdout}\n{stderr}", output.status);
    for function in FUNCTIONS {
        assert!(stdout.contains(&format!("| `{function}` |")), "no figures for {function}:\n{stdout}");
    }
    println!("{stdout}");

    // A webhook that refuses the delivery (another signing secret) must fail the run, not be timed.
    let refused =
        cold_start(&endpoint, &["--function", "webhook", "--set", "STRIPE_WEBHOOK_SECRETS=whsec_other"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a refused delivery was measured as a success");
    assert!(stderr.contains("signature_mismatch"), "the failure names the webhook's answer:\n{stderr}");
}

fn cold_start(endpoint: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cold-start"))
        .args(["--profile", "debug", "--runs", "1"])
        .args(extra)
        .env(DYNAMODB_ENDPOINT, endpoint)
        .output()
        .expect("cold-start starts")
}
