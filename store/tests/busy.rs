//! The queue's bounds: a full queue answers Busy at once, trims are never refused.

mod common;

use std::sync::mpsc;

use common::{done_channel, message, new_store, reopen, summary};
use fedbroker_store::{Limits, Op, Store, StoreError, SyncPolicy};

/// Submits an append whose callback holds the writer thread until the returned sender is used
/// (or dropped), and waits until it does: from then on the queue does not drain.
fn hold_writer(store: &Store) -> mpsc::Sender<()> {
    let (running_tx, running_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    store.submit(
        Op::Append(message(1, 1)),
        Some(Box::new(move |r| {
            r.unwrap();
            running_tx.send(()).unwrap();
            let _ = release_rx.recv();
        })),
    );
    running_rx.recv().unwrap();
    release_tx
}

#[test]
fn a_full_queue_answers_busy_at_once() {
    let limits = Limits {
        queue_ops: 4,
        queue_bytes: 1 << 20,
    };
    let (dir, store) = new_store(SyncPolicy::Always, limits);
    let release = hold_writer(&store);
    let mut waiting = Vec::new();
    for seq in 2..=5 {
        let (done, rx) = done_channel();
        store.submit(Op::Append(message(1, seq)), Some(done));
        waiting.push(rx);
    }
    // The fifth append does not fit: refused on this thread, before submit returns.
    let (done, rx) = done_channel();
    store.submit(Op::Append(message(1, 6)), Some(done));
    assert_eq!(rx.try_recv(), Ok(Err(StoreError::Busy)));
    // Trims are still taken.
    let (done, trim_rx) = done_channel();
    store.submit(Op::Trim { id: 2, through: 9 }, Some(done));
    assert!(trim_rx.try_recv().is_err());

    drop(release);
    for rx in waiting {
        assert_eq!(rx.recv().unwrap(), Ok(()));
    }
    assert_eq!(trim_rx.recv().unwrap(), Ok(()));
    // Room again.
    let (done, rx) = done_channel();
    store.submit(Op::Append(message(1, 6)), Some(done));
    assert_eq!(rx.recv().unwrap(), Ok(()));
    let (_store, loaded) = reopen(store, dir.path(), SyncPolicy::Always);
    assert_eq!(summary(&loaded), vec![(1, 0, (1..=6).collect()), (2, 9, vec![])]);
}

#[test]
fn the_byte_bound_refuses_but_an_empty_queue_takes_anything() {
    let limits = Limits {
        queue_ops: 1000,
        queue_bytes: 1000,
    };
    let (_dir, store) = new_store(SyncPolicy::Batch, limits);
    let release = hold_writer(&store);
    let big = |seq| {
        let mut r = message(5, seq);
        r.payload = vec![7u8; 4000].into();
        Op::Append(r)
    };
    let (done, first) = done_channel();
    store.submit(big(1), Some(done));
    let (done, second) = done_channel();
    store.submit(big(2), Some(done));
    assert_eq!(second.try_recv(), Ok(Err(StoreError::Busy)));
    drop(release);
    assert_eq!(first.recv().unwrap(), Ok(()));
}

#[test]
fn trims_of_one_id_coalesce_while_queued() {
    let (dir, store) = new_store(
        SyncPolicy::Always,
        Limits {
            queue_ops: 10,
            queue_bytes: 1 << 20,
        },
    );
    let release = hold_writer(&store);
    // Far more trims than the queue bound: taken, merged, and each one's callback still runs.
    let mut waiting = Vec::new();
    for through in 1..=10_000u64 {
        let (done, rx) = done_channel();
        store.submit(Op::Trim { id: 8, through }, Some(done));
        waiting.push(rx);
    }
    drop(release);
    for rx in waiting {
        assert_eq!(rx.recv().unwrap(), Ok(()));
    }
    let (_store, loaded) = reopen(store, dir.path(), SyncPolicy::Always);
    assert_eq!(summary(&loaded), vec![(1, 0, vec![1]), (8, 10_000, vec![])]);
}

#[test]
fn a_steady_stream_of_trims_does_not_put_one_off_for_ever() {
    let (dir, store) = new_store(SyncPolicy::Batch, Limits::default());
    let release = hold_writer(&store);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = |name: String| {
        let order = order.clone();
        Some(Box::new(move |r: Result<(), StoreError>| order.lock().unwrap().push((name, r))) as fedbroker_store::Done)
    };
    // A trim of id 2 with a callback, then appends to id 3, each followed by another trim of id 2.
    store.submit(Op::Trim { id: 2, through: 1 }, record("first trim".into()));
    for seq in 1..=3000 {
        store.submit(Op::Append(message(3, seq)), record(format!("append {seq}")));
        store.submit(
            Op::Trim {
                id: 2,
                through: 1 + seq,
            },
            None,
        );
    }
    drop(release);
    store.flush().unwrap();
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 3001);
    assert!(order.iter().all(|(_, r)| r.is_ok()));
    // Merged into the trims after it for one window of submissions (two per append here), then
    // committed where the last of those stood: not at the end of the stream.
    let first = order.iter().position(|(name, _)| name == "first trim").unwrap();
    let window = fedbroker_store::GROUP_MAX_OPS;
    assert!(
        (window / 2 - 2..=window / 2 + 2).contains(&first),
        "the first trim's callback ran at {first}"
    );
    let (_store, loaded) = reopen(store, dir.path(), SyncPolicy::Batch);
    assert_eq!(summary(&loaded)[1], (2, 3001, vec![]));
}
