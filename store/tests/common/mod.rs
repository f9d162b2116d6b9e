//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::sync::mpsc;

use bytes::Bytes;
use fedbroker_store::{Done, Kind, Limits, Loaded, Op, Record, Store, StoreError, SyncPolicy};

/// A message record whose payload names it.
pub fn message(id: u32, seq: u64) -> Record {
    Record {
        id,
        seq,
        at_ms: 1_700_000_000_000 + seq,
        kind: Kind::Message,
        from: None,
        payload: Bytes::from(format!("{id}/{seq}")),
    }
}

/// A `Done` that sends the outcome to the returned receiver.
pub fn done_channel() -> (Done, mpsc::Receiver<Result<(), StoreError>>) {
    let (tx, rx) = mpsc::channel();
    (Box::new(move |r| drop(tx.send(r))), rx)
}

/// Submits `op` and waits for its outcome.
pub fn submit_wait(store: &Store, op: Op) -> Result<(), StoreError> {
    let (done, rx) = done_channel();
    store.submit(op, Some(done));
    rx.recv().expect("done is always called")
}

/// A new, empty store in a temporary folder (removed when the `TempDir` is dropped).
pub fn new_store(sync: SyncPolicy, limits: Limits) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (store, loaded) = Store::open(dir.path(), sync, limits).unwrap();
    assert!(loaded.is_empty());
    (dir, store)
}

/// Closes `store` (which flushes it) and opens the store at `path` again.
pub fn reopen(store: Store, path: &std::path::Path, sync: SyncPolicy) -> (Store, Vec<Loaded>) {
    drop(store);
    Store::open(path, sync, Limits::default()).unwrap()
}

/// The seqs of each loaded id, as (id, trimmed_through, seqs).
pub fn summary(loaded: &[Loaded]) -> Vec<(u32, u64, Vec<u64>)> {
    loaded
        .iter()
        .map(|l| (l.id, l.trimmed_through, l.records.iter().map(|r| r.seq).collect()))
        .collect()
}
