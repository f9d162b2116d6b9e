//! `--store`: the durable mailbox store (`fedbroker-store`) behind the core's
//! [`Persist`] seam, shared by every adapter. The store does its I/O on its own writer thread,
//! so no runtime worker waits for the disk; its answers come back through [`Persisted`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fedbroker_core::mailbox::{PersistError, Persisted, Refusal, Restored, StoreOp};
use fedbroker_core::{Id, Persist, Registry};
use fedbroker_store::{Kind, Limits, Loaded, Op, Record, Store, StoreError, SyncPolicy};

/// The store, as the core's [`Persist`].
pub struct Durable {
    store: Arc<Store>,
}

impl Durable {
    /// Opens (or creates) the store in `path`; returns it with what it holds.
    pub fn open(path: &Path, sync_always: bool) -> Result<(Durable, Vec<Loaded>), StoreError> {
        let sync = if sync_always {
            SyncPolicy::Always
        } else {
            SyncPolicy::Batch
        };
        let (store, loaded) = Store::open(path, sync, Limits::default())?;
        Ok((Durable { store: Arc::new(store) }, loaded))
    }

    /// A handle to flush the store at shutdown.
    pub fn handle(&self) -> Arc<Store> {
        self.store.clone()
    }
}

/// Puts what the store holds into the registry's mailboxes (before any connection): ids that
/// no longer keep a mailbox are left on disk, untouched, and counted in the log.
pub fn restore(registry: &Registry, loaded: Vec<Loaded>, now_ms: u64) {
    let (mut ids, mut messages, mut foreign) = (0usize, 0usize, 0usize);
    for l in loaded {
        let Some(id) = Id::new(l.id).filter(|id| registry.has_mailbox(*id)) else {
            foreign += 1;
            continue;
        };
        ids += 1;
        messages += l.records.len();
        let records = l
            .records
            .into_iter()
            .map(|r| Restored {
                seq: r.seq,
                at_ms: r.at_ms,
                from: r.from.and_then(Id::new),
                payload: (r.kind == Kind::Message).then_some(r.payload),
            })
            .collect();
        registry.restore(id, l.trimmed_through, records, now_ms);
    }
    tracing::info!(ids, messages, "mailboxes loaded from the store");
    if foreign > 0 {
        tracing::warn!(
            ids = foreign,
            "the store holds mailboxes of ids outside --mailbox; they are kept on disk but not served"
        );
    }
}

fn to_op(op: StoreOp) -> Op {
    match op {
        StoreOp::Append {
            id,
            seq,
            at_ms,
            from,
            payload,
        } => Op::Append(Record {
            id: id.get(),
            seq,
            at_ms,
            kind: if payload.is_some() { Kind::Message } else { Kind::Skip },
            from: from.map(Id::get),
            payload: payload.unwrap_or_else(Bytes::new),
        }),
        StoreOp::Trim { id, through } => Op::Trim { id: id.get(), through },
    }
}

fn to_persist_error(e: StoreError) -> PersistError {
    match e {
        StoreError::Busy => PersistError::Busy,
        e => PersistError::Failed(e.to_string()),
    }
}

impl Persist for Durable {
    fn submit(&self, op: StoreOp, done: Option<Persisted>) -> Result<(), Refusal> {
        // The `Persisted` waits in a cell the callback empties: a refused write hands it back
        // to the core unrun (dropping it here would answer the sender from inside the core's
        // lock).
        let cell = done.map(|p| Arc::new(Mutex::new(Some(p))));
        let callback = cell.clone().map(|cell| -> fedbroker_store::Done {
            Box::new(move |result: Result<(), StoreError>| {
                let taken = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(p) = taken {
                    p.finish(result.map_err(to_persist_error));
                }
            })
        });
        self.store
            .try_submit(to_op(op), callback)
            .map_err(|(error, _unrun)| Refusal {
                error: to_persist_error(error),
                done: cell.and_then(|c| c.lock().unwrap_or_else(|e| e.into_inner()).take()),
            })
    }
}
