//! Load, short enough for CI: `connect-flow bench` loads `connect-flow serve`, each in a process
//! of its own, over loopback at concurrency 1, 8 and 64, and every event must have been applied
//! exactly once. Also: the exactly-once check itself catches each kind of violation.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use connect_flow::load::check::{Expected, check, observe_store};
use connect_flow::load::mix::{Kind, Mix, MixEvent};
use connect_flow::load::run::{Answer, Limits, Target, run};
use serde_json::Value;
use shared::clock::{Clock, SystemClock};
use shared::config::WebhookSettings;
use shared::store::sqlite::SqliteStore;
use shared::stripe::signature::WebhookSecret;
use shared::webhook::WebhookService;

const SECRET: &str = "whsec_load_tests";
const BINARY: &str = env!("CARGO_BIN_EXE_connect-flow");

/// A `connect-flow serve` child process, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts `serve` on a port the OS picks, and reads the address from its start-up log line.
    fn start(db: &std::path::Path) -> Self {
        let mut child = Command::new(BINARY)
            .args(["serve", "--addr", "127.0.0.1:0", "--db"])
            .arg(db)
            .env("STRIPE_WEBHOOK_SECRETS", SECRET)
            .env_remove("STRIPE_API_KEY")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("connect-flow serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = match lines.next() {
                Some(Ok(line)) => strip_ansi(&line),
                other => panic!("serve exited before listening: {other:?}"),
            };
            if line.contains("serving POST /webhooks/stripe") {
                let addr = line.split_whitespace().find_map(|field| field.strip_prefix("addr=")).unwrap();
                break format!("http://{addr}");
            }
        };
        // Keep reading its logs, so that the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

fn temp_db(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("connect-flow-load-{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

#[test]
fn bench_against_serve_applies_every_event_exactly_once_at_1_8_and_64() {
    let db = temp_db("serve");
    let server = Server::start(&db);
    let output = Command::new(BINARY)
        .args(["bench", "--url", &server.base, "--concurrency", "1,8,64", "--events", "200", "--seed", "7"])
        .args(["--max-seconds", "60", "--json", "--db"])
        .arg(&db)
        .env("STRIPE_WEBHOOK_SECRETS", SECRET)
        .output()
        .expect("connect-flow bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let levels: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(levels.len(), 3, "{stdout}");
    for (level, concurrency) in levels.iter().zip([1, 8, 64]) {
        assert_eq!(level["concurrency"], concurrency);
        assert_eq!(level["errors"], 0, "{level}");
        assert_eq!(level["retried"], 0, "no 5xx from the embedded store: {level}");
        assert_eq!(level["violations"], 0, "{level}");
        assert_eq!(level["records_checked"], true);
        assert_eq!(level["timed_out"], false);
        assert!(level["deliveries"].as_u64().unwrap() > 150, "{level}");
    }
    // Rerunning with the same seed against the same database is checkable: the ids are new.
    let again = Command::new(BINARY)
        .args(["bench", "--url", &server.base, "--concurrency", "8", "--events", "100", "--seed", "7"])
        .args(["--tag", "Rerun", "--db"])
        .arg(&db)
        .env("STRIPE_WEBHOOK_SECRETS", SECRET)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stdout));
    drop(server);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[test]
fn bench_refuses_a_server_off_this_machine() {
    let output = Command::new(BINARY)
        .args(["bench", "--url", "http://10.1.2.3:8787", "--events", "10"])
        .env("STRIPE_WEBHOOK_SECRETS", SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("only loads a server on this machine"));
}

/// The pipeline in-process, on one SQLite store.
struct InProcess(WebhookService<SqliteStore>);

impl Target for InProcess {
    async fn deliver(&self, _sender: usize, event: &MixEvent, signature: String) -> Answer {
        let reply = self.0.handle(Some(&signature), &event.body).await;
        Answer::from_reply(reply.status, &reply.body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_each_kind_of_violation() {
    let settings = WebhookSettings {
        secrets: vec![WebhookSecret::new(SECRET)],
        tolerance_secs: 300,
        ..WebhookSettings::unsigned(None)
    };
    let service = Arc::new(InProcess(WebhookService::new(SqliteStore::in_memory().unwrap(), &settings)));
    let mix = Arc::new(Mix::generate(11, "Check", 300, SystemClock.now_unix() - 86_400));
    let limits = Limits { max_deliveries: 300, max_duration: Duration::from_secs(60), retries: 0 };
    let result = run(mix.clone(), service.clone(), SECRET, 8, limits).await;
    let expected = Expected::of(&mix, &result.sent());
    let observed = observe_store(service.0.store(), &mix, &expected).await.unwrap();
    assert_eq!(check(&mix, &expected, &result.answers, &observed), Vec::<String>::new());
    assert!(!expected.steps.is_empty() && expected.steps.values().any(|step| step.amount > 0));

    let violates = |answers: &[Vec<Answer>], observed: &connect_flow::load::check::Observed, what: &str| {
        let violations = check(&mix, &expected, answers, observed);
        assert!(violations.iter().any(|violation| violation.contains(what)), "{what}: {violations:?}");
    };
    // A duplicate delivery answered as if it were applied again.
    let twice =
        result.answers.iter().position(|answers| answers.len() == 2).expect("the mix has a duplicate");
    let mut answers = result.answers.clone();
    let first = answers[twice].iter().find(|answer| answer.outcome.as_deref() != Some("duplicate")).unwrap();
    answers[twice] = vec![first.clone(), first.clone()];
    violates(&answers, &observed, "applied twice");
    // A 500, as a busy store would answer, and never retried; and a 400.
    let once = result.answers.iter().position(|answers| answers.len() == 1).unwrap();
    let mut answers = result.answers.clone();
    answers[once][0] = Answer { status: 500, outcome: Some("storage_unavailable".to_owned()) };
    violates(&answers, &observed, "never answered 200");
    let mut answers = result.answers.clone();
    answers[once].insert(0, Answer { status: 400, outcome: Some("signature_mismatch".to_owned()) });
    violates(&answers, &observed, "answered 400");
    // A 500 that Stripe's retry made good is not a violation.
    let mut answers = result.answers.clone();
    answers[once].insert(0, Answer { status: 500, outcome: Some("storage_unavailable".to_owned()) });
    assert_eq!(check(&mix, &expected, &answers, &observed), Vec::<String>::new());

    let (account, steps) = observed.steps.iter().find(|(_, steps)| !steps.is_empty()).unwrap();
    let mut lost = observed.clone();
    lost.steps.get_mut(account).unwrap().pop();
    violates(&result.answers, &lost, "planned by the mix but not stored");
    let mut doubled = observed.clone();
    doubled.steps.get_mut(account).unwrap().push(steps[0].clone());
    violates(&result.answers, &doubled, "stored 2 times");
    let mut wrong_amount = observed.clone();
    wrong_amount.steps.get_mut(account).unwrap()[0].amount += 1;
    violates(&result.answers, &wrong_amount, "expected");

    let mut stale_state = observed.clone();
    let (id, state) = stale_state.accounts.iter_mut().find(|(_, state)| state.is_some()).unwrap();
    let id = id.clone();
    state.as_mut().unwrap().last_event_id = "evt_older".to_owned();
    violates(&result.answers, &stale_state, &format!("{id}: last_event_id"));

    let mut unrecorded = observed.clone();
    let refund = mix.events.iter().find(|event| matches!(event.kind, Kind::Refund { .. })).unwrap();
    unrecorded.records.as_mut().unwrap().insert(refund.id.clone(), None);
    violates(&result.answers, &unrecorded, "not recorded");
}
