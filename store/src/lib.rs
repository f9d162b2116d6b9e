//! The durable mailbox store of fedbroker.
//!
//! The sans-IO core decides what each id's mailbox keeps and emits store requests; this crate
//! carries them out on disk without blocking the caller, whatever runtime it runs on. It does
//! not depend on the core.
//!
//! - [`Store::open`] loads every id's records and trim mark ([`Loaded`]) and starts the store's
//!   own writer thread (a plain `std::thread`, so it works under tokio, smol and blocking
//!   threads alike).
//! - [`Store::submit`] hands an [`Op`] (append a [`Record`], or trim an id's oldest records) to
//!   that thread and returns at once. The writer takes everything pending (up to
//!   [`GROUP_MAX_OPS`]) into one batch, commits it once, then calls each op's [`Done`] callback
//!   in submission order (a replaced trim's with the trim that replaced it, see below); the
//!   callback wakes whatever waits (a future, a channel, a condvar).
//!   The queue is bounded ([`Limits`]): an append that does not fit gets
//!   `Err(StoreError::Busy)` at once, and the broker answers `503`.
//! - [`Store::flush`] blocks until everything submitted is on disk; dropping the `Store`
//!   flushes and joins the writer.
//!
//! # Sync policy: what an acknowledgement survives
//!
//! The engine is fjall (an LSM tree with a write-ahead journal; why it, in docs/store.md). A
//! group commit appends one checksummed batch to the journal.
//!
//! | policy | `done(Ok)` means | process crash (SIGKILL, panic, OOM kill) | OS crash or power loss |
//! |---|---|---|---|
//! | [`SyncPolicy::Always`] | the batch was written and the journal fsynced | nothing acknowledged is lost | nothing acknowledged is lost (if the disk honours fsync) |
//! | [`SyncPolicy::Batch`] | the batch was written to the OS (`write`, not fsync) | nothing acknowledged is lost | acknowledgements of the last ~[`BATCH_SYNC_INTERVAL`] (100 ms) plus one group may be lost |
//!
//! Under `Batch` the writer fsyncs the journal when [`BATCH_SYNC_INTERVAL`] has passed since the
//! first unsynced commit (after the group it is committing, or on its own when idle), on
//! [`Store::flush`] and on drop. Under both, a torn tail of the journal is discarded on the next
//! open (its checksum fails), so the store reopens to a prefix of the acknowledged batches: ops
//! are never applied out of order, and a batch is applied whole or not at all. The crash tests
//! (`tests/crash.rs`) SIGKILL a writing child process and check both policies.
//!
//! # Failures are sticky
//!
//! When a commit or fsync fails, every op of that group and every op still queued get
//! `Err(StoreError::Io)`, and the store stays failed (as rustls does after a fatal alert): later
//! `submit`s answer the same error at once and `flush` returns it. After a failed fsync the
//! kernel may have dropped the unsynced pages, so retrying could acknowledge data that is not on
//! disk; the broker should report the store as failed and be restarted, which reopens from what
//! the disk really holds. If a `done` callback panics, the writer stops and the store answers
//! [`StoreError::Closed`] from then on.
//!
//! # Ordering and trims
//!
//! Ops are applied in submission order. [`Op::Trim`] deletes an id's records with
//! `seq <= through` and records `through` as the id's mark, which [`Store::open`] returns even when
//! no record is left, so a seq is never handed out twice across restarts. Trims are never
//! refused and need no bound of their own: a trim of an id whose earlier trim is still queued
//! replaces it (at the later position, through the higher `through`), so the queue holds about
//! one trim per id. A queued trim takes such merges only for [`GROUP_MAX_OPS`] submissions, so
//! a steady stream of trims cannot put an id's trim off indefinitely. An append whose seq is at
//! or below its id's mark when the writer reaches it is not written (a core that trims only
//! seqs it has submitted never sends one; the store keeps every loaded record above
//! `trimmed_through` regardless). A crash leaves a prefix of the submitted ops on disk.
//!
//! ```no_run
//! use fedbroker_store::{Kind, Limits, Op, Record, Store, SyncPolicy};
//!
//! let (store, loaded) = Store::open("/var/lib/fedbroker".as_ref(), SyncPolicy::Always, Limits::default())?;
//! for id in &loaded {
//!     println!("id {} keeps {} records after seq {}", id.id, id.records.len(), id.trimmed_through);
//! }
//! let record = Record { id: 42, seq: 1, at_ms: 1_764_950_400_000, kind: Kind::Message, from: None, payload: "hi".into() };
//! let (tx, rx) = std::sync::mpsc::channel();
//! store.submit(Op::Append(record), Some(Box::new(move |result| drop(tx.send(result)))));
//! rx.recv().unwrap()?; // now on disk: answer 204
//! store.submit(Op::Trim { id: 42, through: 1 }, None);
//! # Ok::<(), fedbroker_store::StoreError>(())
//! ```

#![warn(missing_docs)]

mod engine;
mod error;
mod record;
mod store;

pub use error::StoreError;
pub use record::{decode_value, encode_value, Kind, Loaded, Op, Record, VALUE_HEADER_LEN, VALUE_VERSION};
pub use store::{Done, Limits, Store, SyncPolicy, BATCH_SYNC_INTERVAL, GROUP_MAX_OPS};
