//! Group commit: one thread owns the write connection and commits every write waiting for it in
//! one transaction, so that one fsync acknowledges many deliveries. Reads go to reader threads
//! with connections of their own (WAL lets them read beside the writer), or, for an in-memory
//! database that no second connection can see, to the writer between its transactions.
//!
//! Each write runs in a savepoint of its own, in arrival order, so a conflict or an error rolls
//! back only that write, and later writes in the batch see the earlier ones exactly as they would
//! after separate commits. Nobody is answered before the batch's `COMMIT` returned: if it fails,
//! every write in the batch is answered with the error, since none of them is durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::unavailable;
use crate::store::{CommitOutcome, StoreError};

/// The most writes in one transaction: a bound on how long the last of them waits for its answer.
const MAX_BATCH: usize = 512;

/// Reader threads for a file database; reads are short, and the machine this runs on is small.
const READERS: usize = 2;

/// How often the writer logs its batch sizes (at debug level) while it is busy.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Whether a write's result keeps what it wrote: a conflict or duplicate is rolled back to its
/// savepoint, so that a refused write leaves nothing behind.
pub(super) trait Keeps {
    fn keeps_writes(&self) -> bool;
}

impl Keeps for CommitOutcome {
    fn keeps_writes(&self) -> bool {
        *self == CommitOutcome::Committed
    }
}

impl Keeps for () {
    fn keeps_writes(&self) -> bool {
        true
    }
}

impl<T> Keeps for Vec<T> {
    fn keeps_writes(&self) -> bool {
        true
    }
}

/// Where a caller waits for its answer: a task, or a plain thread.
enum Reply<T> {
    Task(tokio::sync::oneshot::Sender<Result<T, StoreError>>),
    Thread(mpsc::SyncSender<Result<T, StoreError>>),
}

impl<T> Reply<T> {
    fn send(self, result: Result<T, StoreError>) {
        // A caller that stopped waiting (its task was cancelled) has nobody to tell.
        match self {
            Self::Task(sender) => drop(sender.send(result)),
            Self::Thread(sender) => drop(sender.send(result)),
        }
    }
}

/// One caller's write, as the writer thread sees it.
trait WriteJob: Send {
    /// Runs the write inside the open transaction; true if its writes are to be kept.
    fn run(&mut self, connection: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known: `commit` is how the `COMMIT` went.
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Job<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: Reply<T>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Keeps + Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, connection: &Connection) -> bool {
        let Some(work) = self.work.take() else { return false };
        let result = work(connection);
        let keep = result.as_ref().is_ok_and(Keeps::keeps_writes);
        self.result = Some(result);
        keep
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let result = match (commit, self.result) {
            (Err(error), _) => Err(error),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Unavailable("sqlite: the write was never run".into())),
        };
        self.reply.send(result);
    }
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

enum Request {
    Write(Box<dyn WriteJob>),
    Read(ReadJob),
}

/// How many transactions the writer committed, and how many writes they carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions that reached `COMMIT` (one fsync each with `synchronous=FULL`), failed ones included.
    pub batches: u64,
    /// Writes answered from those transactions.
    pub writes: u64,
    /// The most writes in one transaction.
    pub largest: u64,
    /// Transactions whose `COMMIT` (or the transaction itself) failed.
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
    largest: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn record(&self, writes: usize, committed: bool) {
        let writes = u64::try_from(writes).unwrap_or(u64::MAX);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
        self.largest.fetch_max(writes, Ordering::Relaxed);
        if !committed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.batches.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            largest: self.largest.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The handles callers use: the writer's queue, the readers' (if any), and the threads, joined
/// once the last handle is gone so that the file is closed when the store is dropped.
pub(super) struct Workers {
    writer: mpsc::Sender<Request>,
    readers: Option<mpsc::Sender<ReadJob>>,
    counters: Arc<Counters>,
    // Declared last: dropped after the senders, so the threads see their queues close and end.
    _threads: Joiner,
}

struct Joiner(Vec<JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        let current = std::thread::current().id();
        for handle in self.0.drain(..) {
            if handle.thread().id() != current {
                // A thread that panicked has nothing left to close; its panic was already printed.
                drop(handle.join());
            }
        }
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("sqlite: the store's writer thread has stopped".into())
}

fn copy(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        StoreError::Corrupt(message) => StoreError::Corrupt(message.clone()),
    }
}

impl Workers {
    /// Starts the writer on `connection`, and `READERS` reader threads on connections that
    /// `open_reader` makes, or none if it is `None` (an in-memory database).
    pub(super) fn start(
        connection: Connection,
        open_reader: Option<&dyn Fn() -> Result<Connection, StoreError>>,
    ) -> Result<Self, StoreError> {
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        let readers = match open_reader {
            None => None,
            Some(open_reader) => {
                let (sender, receiver) = mpsc::channel::<ReadJob>();
                let receiver = Arc::new(Mutex::new(receiver));
                for index in 0..READERS {
                    let connection = open_reader()?;
                    let receiver = Arc::clone(&receiver);
                    threads.push(spawn(format!("sqlite-reader-{index}"), move || {
                        serve_reads(&connection, &receiver)
                    })?);
                }
                Some(sender)
            }
        };
        let (writer, requests) = mpsc::channel();
        let writer_counters = Arc::clone(&counters);
        threads.push(spawn("sqlite-writer".into(), move || {
            serve_writes(&connection, &requests, &writer_counters)
        })?);
        Ok(Self { writer, readers, counters, _threads: Joiner(threads) })
    }

    pub(super) fn stats(&self) -> GroupCommitStats {
        self.counters.snapshot()
    }

    /// Runs `work` in the next batch and answers once that batch committed.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Keeps + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.submit_write(work, Reply::Task(sender))?;
        receiver.await.map_err(|_| gone())?
    }

    /// [`Self::write`] for a caller that is not a task; blocks the calling thread.
    pub(super) fn write_blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Keeps + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.submit_write(work, Reply::Thread(sender))?;
        receiver.recv().map_err(|_| gone())?
    }

    /// Runs `work` on a connection that sees only committed writes.
    pub(super) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.submit_read(work, Reply::Task(sender))?;
        receiver.await.map_err(|_| gone())?
    }

    /// [`Self::read`] for a caller that is not a task; blocks the calling thread.
    pub(super) fn read_blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.submit_read(work, Reply::Thread(sender))?;
        receiver.recv().map_err(|_| gone())?
    }

    fn submit_write<T, F>(&self, work: F, reply: Reply<T>) -> Result<(), StoreError>
    where
        T: Keeps + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let job = Job { work: Some(work), result: None, reply };
        self.writer.send(Request::Write(Box::new(job))).map_err(|_| gone())
    }

    fn submit_read<T, F>(&self, work: F, reply: Reply<T>) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let job: ReadJob = Box::new(move |connection| reply.send(work(connection)));
        match &self.readers {
            Some(readers) => readers.send(job).map_err(|_| gone()),
            None => self.writer.send(Request::Read(job)).map_err(|_| gone()),
        }
    }
}

fn spawn(name: String, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|error| StoreError::Unavailable(format!("sqlite: cannot start a store thread: {error}")))
}

fn serve_reads(connection: &Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        let job = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(connection),
            Err(_) => return,
        }
    }
}

fn serve_writes(connection: &Connection, requests: &mpsc::Receiver<Request>, counters: &Counters) {
    let mut batch: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_BATCH);
    let mut last_log = Instant::now();
    let mut logged = GroupCommitStats::default();
    while let Ok(first) = requests.recv() {
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                // Between transactions, so a read sees only what was committed.
                Request::Read(read) => read(connection),
                Request::Write(job) => batch.push(job),
            }
            if batch.len() < MAX_BATCH {
                next = requests.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit_batch(connection, &mut batch, counters);
        }
        if last_log.elapsed() >= STATS_EVERY {
            let now = counters.snapshot();
            let batches = now.batches - logged.batches;
            let writes = now.writes - logged.writes;
            tracing::debug!(
                batches,
                writes,
                writes_per_commit = writes as f64 / batches.max(1) as f64,
                largest = now.largest,
                failed = now.failed - logged.failed,
                "sqlite group commit"
            );
            logged = now;
            last_log = Instant::now();
        }
    }
}

/// Commits `jobs` in as few transactions as it can (one, unless SQLite itself rolled one back
/// part way through), answering each job after its transaction's `COMMIT`.
fn commit_batch(connection: &Connection, jobs: &mut Vec<Box<dyn WriteJob>>, counters: &Counters) {
    let mut pending = jobs.drain(..);
    loop {
        let mut done: Vec<Box<dyn WriteJob>> = Vec::new();
        let Some(first) = pending.next() else { return };
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            let error = unavailable(error);
            first.answer(Err(copy(&error)));
            for job in pending.by_ref() {
                job.answer(Err(copy(&error)));
            }
            return;
        }
        let mut outcome = Ok(());
        let mut next = Some(first);
        while let Some(mut job) = next.take().or_else(|| pending.next()) {
            let ran = run_in_savepoint(connection, &mut *job);
            done.push(job);
            if let Err(error) = ran {
                // The transaction is gone: what ran in it is lost, the rest get a new one.
                outcome = Err(error);
                break;
            }
        }
        if outcome.is_ok() {
            outcome = connection.execute_batch("COMMIT").map_err(unavailable);
        }
        if outcome.is_err() && !connection.is_autocommit() {
            // Ignored: if even this fails the connection is closed with the transaction undone.
            drop(connection.execute_batch("ROLLBACK"));
        }
        counters.record(done.len(), outcome.is_ok());
        for job in done {
            job.answer(outcome.as_ref().map(|_| ()).map_err(copy));
        }
    }
}

/// Runs one job in a savepoint, kept or rolled back by its result. `Err` if the enclosing
/// transaction no longer exists (SQLite rolls it back itself after some errors, like a full disk).
fn run_in_savepoint(connection: &Connection, job: &mut dyn WriteJob) -> Result<(), StoreError> {
    connection.execute_batch("SAVEPOINT request").map_err(unavailable)?;
    let keep = job.run(connection);
    if connection.is_autocommit() {
        return Err(StoreError::Unavailable("sqlite: the transaction was rolled back by an error".into()));
    }
    let end = if keep { "RELEASE request" } else { "ROLLBACK TO request; RELEASE request" };
    connection.execute_batch(end).map_err(unavailable)
}
