//! `Store`: the queue that callers hand ops to without waiting, and the writer thread that
//! group-commits them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::PersistMode;

use crate::engine::Engine;
use crate::record::VALUE_HEADER_LEN;
use crate::{Loaded, Op, StoreError};

/// When an acknowledged op is on disk; see the crate docs for what each survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// `done(Ok)` after the group commit that holds the op has been fsynced.
    Always,
    /// `done(Ok)` after the group commit has been written to the OS; the writer fsyncs at most
    /// every [`BATCH_SYNC_INTERVAL`] while there is something unsynced.
    Batch,
}

/// How long, at most, `SyncPolicy::Batch` leaves committed ops unsynced while the store is busy
/// (when idle, the writer syncs as soon as this has passed since the last sync).
pub const BATCH_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The most ops (appends and trims) one group commit takes.
pub const GROUP_MAX_OPS: usize = 1024;

impl FromStr for SyncPolicy {
    type Err = String;
    /// Reads the `--store-sync` value: `always` or `batch`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(SyncPolicy::Always),
            "batch" => Ok(SyncPolicy::Batch),
            _ => Err(format!("unknown store sync policy {s:?} (expected always or batch)")),
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncPolicy::Always => "always",
            SyncPolicy::Batch => "batch",
        })
    }
}

/// Bounds of the queue between callers and the writer thread; an append beyond them is refused
/// with `StoreError::Busy`. Trims are not counted: they are coalesced per id instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Appends waiting for the writer.
    pub queue_ops: usize,
    /// Bytes of appends waiting for the writer (payload plus a small fixed cost per record).
    /// An append is always taken into an empty queue, whatever its size.
    pub queue_bytes: usize,
}

impl Default for Limits {
    /// 8192 appends or 32 MiB: about a second of appends at the rates measured in
    /// docs/store.md, so that `Busy` means the disk cannot keep up, not a burst.
    fn default() -> Self {
        Limits {
            queue_ops: 8192,
            queue_bytes: 32 << 20,
        }
    }
}

/// Called once with an op's outcome: on the writer thread after its group commit, or at once on
/// the caller's thread when the op is refused. It must not block for long (it holds up the
/// writer) and must not panic.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The durable store of mailboxes: ops are handed to it without blocking and carried out in
/// order by its own writer thread. `Send + Sync`: share it behind an `Arc`.
pub struct Store {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    limits: Limits,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the queue gets an entry or the store is closing.
    wake: Condvar,
}

enum Entry {
    /// An op, its callback, and the callbacks of the earlier trims of its id merged into it.
    Op {
        op: Op,
        done: Option<Done>,
        merged: Vec<Done>,
    },
    /// A trim merged into a later trim of its id: nothing left to do here.
    Merged,
    /// A `flush` waiting for everything before it to be durable.
    Flush(mpsc::SyncSender<Result<(), StoreError>>),
}

impl Entry {
    /// Tells the entry's waiters the outcome of its group.
    fn finish(self, result: &Result<(), StoreError>) {
        match self {
            Entry::Op { done, merged, .. } => {
                for done in merged.into_iter().chain(done) {
                    done(result.clone());
                }
            }
            Entry::Merged => {}
            Entry::Flush(tx) => {
                let _ = tx.send(result.clone());
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// How many entries have ever left `entries` (the absolute position of its front).
    taken: u64,
    /// Appends in `entries`, and their bytes.
    ops: usize,
    bytes: usize,
    /// For each id with a trim still in `entries`: where its last one is, and when the oldest
    /// trim merged into that one was submitted.
    trims: HashMap<u32, PendingTrim>,
    /// Entries ever pushed: the submission clock of `PendingTrim::since`.
    pushed: u64,
    /// `Entry::Merged` in `entries`.
    merged: usize,
    /// Set once for good: every later call answers it.
    failed: Option<StoreError>,
    closing: bool,
}

#[derive(Clone, Copy)]
struct PendingTrim {
    /// Absolute position in the queue.
    pos: u64,
    /// `Queue::pushed` when the oldest trim merged into it was submitted.
    since: u64,
}

/// A trim merges with the id's queued one only while that one carries trims submitted less
/// than this many entries ago: a merge puts a trim off, and a steady stream of trims must not
/// put it off for ever.
const TRIM_MERGE_WINDOW: u64 = GROUP_MAX_OPS as u64;

/// What an append costs in the byte bound besides its payload.
const APPEND_OVERHEAD: usize = VALUE_HEADER_LEN + 12 + 64;

fn append_cost(op: &Op) -> usize {
    match op {
        Op::Append(r) => APPEND_OVERHEAD + r.payload.len(),
        Op::Trim { .. } => 0,
    }
}

impl Store {
    /// Opens the store at `path` (a folder; created when missing or empty), loads every id's
    /// records and trim mark, and starts the writer thread. Fails with `NotAStore` for a path
    /// that is something else, `Locked` when another process has it open, `Corrupt` when a
    /// record cannot be read.
    pub fn open(path: &Path, sync: SyncPolicy, limits: Limits) -> Result<(Store, Vec<Loaded>), StoreError> {
        let (engine, loaded) = Engine::open(path)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fedbroker-store".into())
                .spawn(move || writer_thread(&shared, engine, sync))
                .map_err(|e| StoreError::Io(format!("cannot start the store's writer thread: {e}")))?
        };
        Ok((
            Store {
                shared,
                writer: Some(writer),
                limits,
            },
            loaded,
        ))
    }

    /// Hands `op` to the writer thread; never waits for I/O. `done`, when given, is called once
    /// with the outcome: `Ok` after the op's group commit (under `Always`, after its fsync), in
    /// submission order, on the writer thread; `Err(Busy)` at once on this thread when the queue
    /// is full (appends only: trims are never refused), or the store's sticky error once it has
    /// failed.
    ///
    /// A trim of an id whose previous trim is still queued replaces it, trimming through the
    /// higher `through` at the later position; the earlier trim's `done` then runs with the
    /// later one's (the one exception to submission order). Pass `None` for trims unless their
    /// durability matters.
    pub fn submit(&self, op: Op, done: Option<Done>) {
        if let Err((e, Some(done))) = self.try_submit(op, done) {
            done(Err(e));
        }
    }

    /// As [`Store::submit`], but a refusal (`Busy`, or the store's sticky error) is returned
    /// with `done` unrun instead of calling it on this thread: for callers that hold a lock
    /// `done` would take.
    pub fn try_submit(&self, op: Op, done: Option<Done>) -> Result<(), (StoreError, Option<Done>)> {
        let mut q = self.queue();
        if let Some(e) = q.failed.clone() {
            return Err((e, done));
        }
        match op {
            Op::Trim { id, through } => q.push_trim(id, through, done),
            op => {
                let cost = append_cost(&op);
                if q.ops > 0 && (q.ops >= self.limits.queue_ops || q.bytes + cost > self.limits.queue_bytes) {
                    return Err((StoreError::Busy, done));
                }
                q.ops += 1;
                q.bytes += cost;
                q.push(Entry::Op {
                    op,
                    done,
                    merged: Vec::new(),
                });
            }
        }
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Blocks until everything submitted before it is durable (fsynced, under both policies).
    /// For shutdown and tests; a caller that must not block uses `submit`'s `done` instead.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut q = self.queue();
            if let Some(e) = q.failed.clone() {
                return Err(e);
            }
            q.push(Entry::Flush(tx));
        }
        self.shared.wake.notify_one();
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared)
    }
}

impl Drop for Store {
    /// Lets the writer finish everything queued, fsync, and stop; waits for it.
    fn drop(&mut self) {
        self.queue().closing = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    // A panic while holding the lock cannot leave the queue half-changed (no callback runs under
    // it), so a poisoned lock is taken as it is.
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    fn push(&mut self, entry: Entry) {
        self.entries.push_back(entry);
        self.pushed += 1;
    }

    /// Queues a trim. A trim of an id whose previous trim is still queued replaces it: the
    /// earlier entry becomes `Merged` and its callbacks move to the new one, which trims through
    /// the higher of the two. Applied at the later position, the merged trim deletes everything
    /// either would have, and a crash still leaves a prefix of the submitted ops on disk. A
    /// queued trim takes merges only for `TRIM_MERGE_WINDOW` submissions, then stays where it is.
    fn push_trim(&mut self, id: u32, mut through: u64, done: Option<Done>) {
        let now = self.pushed;
        let mut merged = Vec::new();
        let mut since = now;
        if let Some(pending) = self
            .trims
            .get(&id)
            .copied()
            .filter(|p| now - p.since < TRIM_MERGE_WINDOW)
        {
            let index = usize::try_from(pending.pos - self.taken).expect("a queued trim is in the queue");
            let earlier = std::mem::replace(&mut self.entries[index], Entry::Merged);
            let Entry::Op {
                op: Op::Trim { through: t, .. },
                done: d,
                merged: m,
            } = earlier
            else {
                unreachable!("the trims map points at trims")
            };
            through = through.max(t);
            merged = m;
            merged.extend(d);
            since = pending.since;
            self.merged += 1;
        }
        self.trims.insert(
            id,
            PendingTrim {
                pos: self.taken + self.entries.len() as u64,
                since,
            },
        );
        self.push(Entry::Op {
            op: Op::Trim { id, through },
            done,
            merged,
        });
        // Merged entries are dropped once they are half the queue, so that a stream of trims
        // while the writer is held up takes memory in proportion to the ids, not to the trims.
        if self.merged > 64 && self.merged * 2 > self.entries.len() {
            self.entries.retain(|e| !matches!(e, Entry::Merged));
            self.merged = 0;
            for (index, e) in self.entries.iter().enumerate() {
                if let Entry::Op {
                    op: Op::Trim { id, .. },
                    ..
                } = e
                {
                    // Front to back: the id's last trim, the one the map names, comes last.
                    if let Some(p) = self.trims.get_mut(id) {
                        p.pos = self.taken + index as u64;
                    }
                }
            }
        }
    }

    /// Takes the next group: entries up to `GROUP_MAX_OPS` ops.
    fn take_group(&mut self, group: &mut Vec<Entry>) {
        let mut ops = 0;
        while ops < GROUP_MAX_OPS {
            let Some(entry) = self.entries.pop_front() else { break };
            let pos = self.taken;
            self.taken += 1;
            if matches!(entry, Entry::Merged) {
                self.merged -= 1;
                continue;
            }
            if let Entry::Op { op, .. } = &entry {
                ops += 1;
                match op {
                    Op::Append(_) => {
                        self.ops -= 1;
                        self.bytes -= append_cost(op);
                    }
                    Op::Trim { id, .. } => {
                        if self.trims.get(id).is_some_and(|p| p.pos == pos) {
                            self.trims.remove(id);
                        }
                    }
                }
            }
            group.push(entry);
        }
    }
}

/// The writer thread's life: group commits until the store is dropped or fails. A panic in a
/// `done` callback stops it; the store then answers `Closed`.
fn writer_thread(shared: &Shared, engine: Engine, sync: SyncPolicy) {
    let run = std::panic::AssertUnwindSafe(|| {
        Writer {
            shared,
            engine,
            sync,
            unsynced_since: None,
        }
        .run()
    });
    if std::panic::catch_unwind(run).is_err() {
        fail(shared, StoreError::Closed, Vec::new());
    }
}

struct Writer<'a> {
    shared: &'a Shared,
    engine: Engine,
    sync: SyncPolicy,
    /// Under `Batch`: when the oldest commit not yet fsynced was made.
    unsynced_since: Option<Instant>,
}

impl Writer<'_> {
    fn run(&mut self) {
        let mut group = Vec::with_capacity(GROUP_MAX_OPS);
        loop {
            let closing = {
                let mut q = lock(self.shared);
                while q.entries.is_empty() && !q.closing {
                    match self.unsynced_since {
                        None => q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                        Some(since) => {
                            let left = BATCH_SYNC_INTERVAL.saturating_sub(since.elapsed());
                            if left.is_zero() {
                                break;
                            }
                            q = self
                                .shared
                                .wake
                                .wait_timeout(q, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                    }
                }
                q.take_group(&mut group);
                q.closing && q.entries.is_empty()
            };
            if let Err(e) = self.commit(&mut group, closing) {
                fail(self.shared, e, std::mem::take(&mut group));
                return;
            }
            for entry in group.drain(..) {
                entry.finish(&Ok(()));
            }
            if closing {
                return;
            }
        }
    }

    /// Commits the group's ops as one batch, and fsyncs when the policy, a flush, the interval
    /// or closing asks for it.
    fn commit(&mut self, group: &mut [Entry], closing: bool) -> Result<(), StoreError> {
        let ops = group.iter().filter_map(|e| match e {
            Entry::Op { op, .. } => Some(op),
            _ => None,
        });
        let has_ops = group.iter().any(|e| matches!(e, Entry::Op { .. }));
        if has_ops {
            let mode = match self.sync {
                SyncPolicy::Always => PersistMode::SyncAll,
                SyncPolicy::Batch => PersistMode::Buffer,
            };
            self.engine.commit(ops, mode)?;
            if self.sync == SyncPolicy::Batch {
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        let flush = group.iter().any(|e| matches!(e, Entry::Flush(_)));
        if let Some(since) = self.unsynced_since {
            if flush || closing || since.elapsed() >= BATCH_SYNC_INTERVAL {
                self.engine.sync()?;
                self.unsynced_since = None;
            }
        }
        Ok(())
    }
}

/// Makes the store failed for good with `error`, and answers it to `group` and to everything
/// still queued, in order.
fn fail(shared: &Shared, error: StoreError, group: Vec<Entry>) {
    let queued: Vec<Entry> = {
        let mut q = lock(shared);
        q.failed.get_or_insert(error.clone());
        q.ops = 0;
        q.bytes = 0;
        q.trims.clear();
        q.merged = 0;
        q.entries.drain(..).collect()
    };
    let result = Err(error);
    for entry in group.into_iter().chain(queued) {
        entry.finish(&result);
    }
}
