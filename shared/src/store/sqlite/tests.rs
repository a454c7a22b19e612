//! Group commit under concurrency: conditional writes inside one batch, a failed `COMMIT`, and
//! answers that come only after the commit.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Waker};

use rusqlite::{Connection, params};

use super::SqliteStore;
use crate::domain::account::{AccountId, AccountState};
use crate::store::{
    AccountStore, CommitOutcome, DEDUPE_RETENTION_SECS, EventOutcome, EventRecord, EventWrite,
};

const NOW: i64 = 1_767_225_600;

/// A database file of its own under the temp directory, removed with its WAL when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("cf-group-commit-{name}-{}-{unique}.db", std::process::id())))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            drop(std::fs::remove_file(format!("{}{suffix}", self.0.display())));
        }
    }
}

fn record(event_id: &str, account: &str) -> EventRecord {
    EventRecord {
        event_id: event_id.to_owned(),
        event_type: "account.updated".to_owned(),
        account_id: Some(account.to_owned()),
        created: Some(NOW),
        livemode: Some(false),
        outcome: EventOutcome::Applied,
        reason: None,
        received_at: NOW,
        expires_at: NOW + DEDUPE_RETENTION_SECS,
        fetch: None,
    }
}

fn account(id: &str, version: u64) -> AccountState {
    let mut state = AccountState::new(AccountId::parse(id).expect("a well-formed account id"));
    state.version = version;
    state
}

async fn commit(store: &SqliteStore, event_id: &str, state: &AccountState) -> CommitOutcome {
    let record = record(event_id, state.account_id.as_str());
    store.commit(&EventWrite::with_account(&record, Some(state))).await.expect("the store answers")
}

fn event_ids(path: &PathBuf) -> Vec<String> {
    let connection = Connection::open(path).expect("a second connection opens");
    let mut statement = connection.prepare("SELECT event_id FROM events ORDER BY event_id").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Holds the writer thread inside a write until released, so that what is sent meanwhile
/// queues up and goes into the next batch together.
struct Gate {
    release: mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl Gate {
    fn hold(store: &SqliteStore) -> Self {
        let (started_tx, started) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let workers = Arc::clone(&store.workers);
        let holder = std::thread::spawn(move || {
            workers
                .write_blocking(move |_| {
                    started_tx.send(()).expect("the test waits for the gate");
                    released.recv().expect("the test releases the gate");
                    Ok(())
                })
                .expect("the gate's own write commits");
        });
        started.recv().expect("the writer runs the gate");
        Self { release, holder }
    }

    fn open(self) {
        self.release.send(()).expect("the gate is waiting");
        self.holder.join().expect("the gate's thread ends");
    }
}

/// Polls a future once, so that a store call sends its request, and hands it back to be awaited.
fn sent<F: Future>(future: F) -> std::pin::Pin<Box<F>> {
    let mut future = Box::pin(future);
    let poll = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    assert!(poll.is_pending(), "the writer is held, so nothing can be answered yet");
    future
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_many_tasks_writing_one_version_exactly_one_wins_and_the_losers_leave_no_record() {
    let db = TempDb::new("one-version");
    let store = SqliteStore::open(&db.0, NOW).unwrap();
    let id = "acct_1GroupCommit";
    assert_eq!(commit(&store, "evt_seed", &account(id, 1)).await, CommitOutcome::Committed);

    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move { commit(&store, &format!("evt_race_{task:02}"), &account(id, 2)).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let winners = outcomes.iter().filter(|outcome| **outcome == CommitOutcome::Committed).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|outcome| matches!(outcome, CommitOutcome::Committed | CommitOutcome::Conflict))
    );
    let winner = outcomes.iter().position(|outcome| *outcome == CommitOutcome::Committed).unwrap();
    assert_eq!(
        event_ids(&db.0),
        vec!["evt_race_".to_owned() + &format!("{winner:02}"), "evt_seed".to_owned()]
    );
    assert_eq!(store.load_account(&AccountId::parse(id).unwrap()).await.unwrap().unwrap().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retrying_writers_to_one_account_lose_no_event_and_skip_no_version() {
    let db = TempDb::new("retries");
    let store = SqliteStore::open(&db.0, NOW).unwrap();
    let id = AccountId::parse("acct_1GroupRetries").unwrap();
    let (tasks, each) = (16, 8);
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move {
                let mut conflicts = 0;
                for event in 0..each {
                    let event_id = format!("evt_{task:02}_{event:02}");
                    loop {
                        let current = store.load_account(&id).await.unwrap();
                        let version = current.map_or(0, |state| state.version) + 1;
                        match commit(&store, &event_id, &account(id.as_str(), version)).await {
                            CommitOutcome::Committed => break,
                            CommitOutcome::Conflict => conflicts += 1,
                            CommitOutcome::Duplicate => {
                                panic!("{event_id} was recorded by a conflicting write")
                            }
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for handle in handles {
        conflicts += handle.await.unwrap();
    }
    let stored = store.load_account(&id).await.unwrap().unwrap();
    assert_eq!(stored.version, tasks * each, "one version per event, none skipped or doubled");
    let ids = event_ids(&db.0);
    assert_eq!(ids.len(), usize::try_from(tasks * each).unwrap(), "every event recorded once");
    let stats = store.group_commit_stats();
    assert_eq!(stats.writes, tasks * each + conflicts, "every attempt answered from a batch");
    assert_eq!(stats.failed, 0);
}

#[tokio::test]
async fn in_one_batch_a_refused_write_is_rolled_back_and_the_others_commit_seeing_each_other() {
    let db = TempDb::new("one-batch");
    let store = SqliteStore::open(&db.0, NOW).unwrap();
    let gate = Gate::hold(&store);
    let before = store.group_commit_stats();

    let first = account("acct_1BatchFirst", 1);
    let second = account("acct_1BatchSecond", 1);
    let skips_a_version = account("acct_1BatchThird", 2);
    let first_again = account("acct_1BatchFirst", 1);
    let first_next = account("acct_1BatchFirst", 2);
    let writes = [
        sent(commit(&store, "evt_first", &first)),
        sent(commit(&store, "evt_stale_version", &skips_a_version)),
        sent(commit(&store, "evt_second", &second)),
        // The same event again, after its first delivery in the same batch: a duplicate.
        sent(commit(&store, "evt_first", &first_again)),
        // Version 1 of this account was written earlier in this batch, and not yet committed.
        sent(commit(&store, "evt_first_next", &first_next)),
    ];
    gate.open();
    let mut outcomes = Vec::new();
    for write in writes {
        outcomes.push(write.await);
    }
    assert_eq!(
        outcomes,
        [
            CommitOutcome::Committed,
            CommitOutcome::Conflict,
            CommitOutcome::Committed,
            CommitOutcome::Duplicate,
            CommitOutcome::Committed
        ]
    );
    let after = store.group_commit_stats();
    assert_eq!(
        (after.batches - before.batches, after.writes - before.writes),
        (2, 6),
        "the gate, then one batch"
    );
    assert_eq!(event_ids(&db.0), ["evt_first", "evt_first_next", "evt_second"]);
    assert!(store.load_account(&skips_a_version.account_id).await.unwrap().is_none());
    assert_eq!(store.load_account(&first.account_id).await.unwrap().unwrap().version, 2);
}

#[tokio::test]
async fn a_failed_commit_answers_every_write_in_its_batch_with_an_error_and_keeps_none() {
    let store = SqliteStore::in_memory().unwrap();
    // A deferred foreign key is checked at COMMIT: a child without its parent makes the
    // COMMIT itself fail, after every write in the batch has run.
    store
        .workers
        .read(|connection| {
            connection
                .execute_batch(
                    "PRAGMA foreign_keys = ON;
                     CREATE TABLE parent (id INTEGER PRIMARY KEY);
                     CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);",
                )
                .map_err(super::unavailable)
        })
        .await
        .unwrap();
    let gate = Gate::hold(&store);
    let before = store.group_commit_stats();
    let first = account("acct_1FailedFirst", 1);
    let second = account("acct_1FailedSecond", 1);
    let first_write = sent(commit_result(&store, "evt_lost_first", &first));
    let orphan = sent(store.workers.write(|connection| {
        connection
            .execute("INSERT INTO child (parent) VALUES (?1)", params![7])
            .map_err(super::unavailable)?;
        Ok(())
    }));
    let second_write = sent(commit_result(&store, "evt_lost_second", &second));
    gate.open();

    let first_answer = first_write.await;
    let orphan_answer = orphan.await;
    let second_answer = second_write.await;
    for answer in [first_answer.map(|_| ()), orphan_answer, second_answer.map(|_| ())] {
        let error = answer.expect_err("nothing in a batch whose COMMIT failed is acknowledged");
        assert!(error.to_string().contains("FOREIGN KEY"), "{error}");
    }
    let after = store.group_commit_stats();
    assert_eq!((after.batches - before.batches, after.failed - before.failed), (2, 1));
    assert!(store.load_event("evt_lost_first").await.unwrap().is_none());
    assert!(store.load_account(&second.account_id).await.unwrap().is_none());
    // The writer rolled back and goes on: the same writes succeed in the next batch.
    assert_eq!(commit(&store, "evt_lost_first", &first).await, CommitOutcome::Committed);
    assert_eq!(commit(&store, "evt_lost_second", &second).await, CommitOutcome::Committed);
}

async fn commit_result(
    store: &SqliteStore,
    event_id: &str,
    state: &AccountState,
) -> Result<CommitOutcome, crate::store::StoreError> {
    let record = record(event_id, state.account_id.as_str());
    store.commit(&EventWrite::with_account(&record, Some(state))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_comes_only_once_its_write_is_committed_and_visible_to_another_connection() {
    let db = TempDb::new("visible");
    let store = SqliteStore::open(&db.0, NOW).unwrap();
    let synchronous = store
        .workers
        .write(|connection| {
            Ok(vec![
                connection
                    .pragma_query_value(None, "synchronous", |row| row.get::<_, i64>(0))
                    .map_err(super::unavailable)?,
            ])
        })
        .await
        .unwrap();
    assert_eq!(synchronous, [2], "the writer commits with synchronous=FULL");
    let handles: Vec<_> = (0..64)
        .map(|task| {
            let store = store.clone();
            let path = db.0.clone();
            tokio::spawn(async move {
                let observer = Connection::open(&path).unwrap();
                let event_id = format!("evt_visible_{task:02}");
                let id = format!("acct_1Visible{task:02}");
                assert_eq!(commit(&store, &event_id, &account(&id, 1)).await, CommitOutcome::Committed);
                let seen: i64 = observer
                    .query_row("SELECT COUNT(*) FROM events WHERE event_id = ?1", [&event_id], |row| {
                        row.get(0)
                    })
                    .unwrap();
                assert_eq!(seen, 1, "{event_id} was answered before another connection could see it");
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let stats = store.group_commit_stats();
    assert!(stats.batches <= stats.writes, "{stats:?}");
}

#[test]
fn dropping_the_last_handle_closes_the_file_so_it_reopens_with_everything_committed() {
    let db = TempDb::new("reopen");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let store = SqliteStore::open(&db.0, NOW).unwrap();
    let state = account("acct_1Reopened", 1);
    assert_eq!(runtime.block_on(commit(&store, "evt_reopen", &state)), CommitOutcome::Committed);
    drop(store);
    let reopened = SqliteStore::open(&db.0, NOW).unwrap();
    let stored = runtime.block_on(reopened.load_account(&state.account_id)).unwrap();
    assert_eq!(stored, Some(state));
}
