//! Appends, trims and reopens: what is acknowledged is what a reopen loads.

mod common;

use common::{message, new_store, reopen, submit_wait, summary};
use fedbroker_store::{Kind, Limits, Op, Record, Store, StoreError, SyncPolicy};

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
}

#[test]
fn a_new_store_is_empty_and_reopens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (store, loaded) = Store::open(&path, SyncPolicy::Always, Limits::default()).unwrap();
    assert!(loaded.is_empty());
    drop(store);
    let (_store, loaded) = Store::open(&path, SyncPolicy::Always, Limits::default()).unwrap();
    assert!(loaded.is_empty());
}

#[test]
fn appends_and_trims_survive_a_reopen_in_seq_order() {
    for sync in [SyncPolicy::Always, SyncPolicy::Batch] {
        let (dir, store) = new_store(sync, Limits::default());
        // Submitted out of seq order and interleaved across ids: loaded in (id, seq) order.
        for seq in [3, 1, 2, 10, 300, 256] {
            for id in [7, 1, 65536] {
                store.submit(Op::Append(message(id, seq)), None);
            }
        }
        let skip = Record {
            kind: Kind::Skip,
            from: None,
            payload: bytes::Bytes::new(),
            ..message(1, 11)
        };
        submit_wait(&store, Op::Append(skip.clone())).unwrap();
        submit_wait(&store, Op::Trim { id: 7, through: 3 }).unwrap();
        let (store, loaded) = reopen(store, dir.path(), sync);
        assert_eq!(
            summary(&loaded),
            vec![
                (1, 0, vec![1, 2, 3, 10, 11, 256, 300]),
                (7, 3, vec![10, 256, 300]),
                (65536, 0, vec![1, 2, 3, 10, 256, 300]),
            ],
            "{sync}"
        );
        assert_eq!(loaded[0].records[0], message(1, 1));
        assert_eq!(loaded[0].records[4], skip);

        // A later, higher trim moves the mark; a lower one changes nothing.
        submit_wait(&store, Op::Trim { id: 7, through: 256 }).unwrap();
        submit_wait(&store, Op::Trim { id: 7, through: 5 }).unwrap();
        let (_store, loaded) = reopen(store, dir.path(), sync);
        assert_eq!(summary(&loaded)[1], (7, 256, vec![300]));
    }
}

#[test]
fn trim_marks_persist_for_ids_with_no_records_left() {
    let (dir, store) = new_store(SyncPolicy::Always, Limits::default());
    for seq in 1..=5 {
        store.submit(Op::Append(message(9, seq)), None);
    }
    // Trimming past every record, and trimming an id that never had any.
    store.submit(Op::Trim { id: 9, through: 5 }, None);
    store.submit(Op::Trim { id: 12, through: 40 }, None);
    store.flush().unwrap();
    let (store, loaded) = reopen(store, dir.path(), SyncPolicy::Always);
    assert_eq!(summary(&loaded), vec![(9, 5, vec![]), (12, 40, vec![])]);
    // Appends continue after the mark.
    submit_wait(&store, Op::Append(message(9, 6))).unwrap();
    let (_store, loaded) = reopen(store, dir.path(), SyncPolicy::Always);
    assert_eq!(summary(&loaded), vec![(9, 5, vec![6]), (12, 40, vec![])]);
}

#[test]
fn a_trim_applies_to_appends_submitted_before_it_in_the_same_group() {
    let (dir, store) = new_store(SyncPolicy::Batch, Limits::default());
    // Many trims of one id while its appends are queued: each may replace the one before, and
    // the result is as if each had been applied where it was submitted.
    for seq in 1..=2000u64 {
        store.submit(Op::Append(message(3, seq)), None);
        if seq % 10 == 0 {
            store.submit(
                Op::Trim {
                    id: 3,
                    through: seq - 5,
                },
                None,
            );
        }
    }
    store.flush().unwrap();
    let (_store, loaded) = reopen(store, dir.path(), SyncPolicy::Batch);
    assert_eq!(summary(&loaded), vec![(3, 1995, (1996..=2000).collect())]);
}

#[test]
fn done_callbacks_run_in_submission_order() {
    let (_dir, store) = new_store(SyncPolicy::Batch, Limits::default());
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..3000u64 {
        let order = order.clone();
        // Trims of distinct ids: none is merged with another (which would move its callback).
        let op = if i % 7 == 0 {
            Op::Trim {
                id: 100 + i as u32,
                through: i,
            }
        } else {
            Op::Append(message(1 + (i % 5) as u32, i))
        };
        store.submit(op, Some(Box::new(move |r| order.lock().unwrap().push((i, r)))));
    }
    store.flush().unwrap();
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 3000);
    for (k, (i, r)) in order.iter().enumerate() {
        assert_eq!((*i, r), (k as u64, &Ok(())));
    }
}

/// Opening `path` fails: with what.
fn open_error(path: &std::path::Path) -> StoreError {
    Store::open(path, SyncPolicy::Always, Limits::default())
        .err()
        .expect("open must fail")
}

#[test]
fn open_refuses_what_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").unwrap();
    let err = open_error(&file);
    assert!(matches!(err, StoreError::NotAStore(_)), "{err}");

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let err = open_error(&other);
    assert!(matches!(err, StoreError::NotAStore(_)), "{err}");
    assert!(err.to_string().contains("other contents"), "{err}");

    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(newer.join("FEDBROKER-STORE"), b"fedbroker-store 2 something-else\n").unwrap();
    let err = open_error(&newer);
    assert!(err.to_string().contains("another format"), "{err}");
}

#[test]
fn a_store_open_elsewhere_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = Store::open(dir.path(), SyncPolicy::Always, Limits::default()).unwrap();
    let err = open_error(dir.path());
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn errors_read_as_one_sentence() {
    for e in [
        StoreError::Busy,
        StoreError::Io("disk full".into()),
        StoreError::Corrupt {
            id: 4,
            seq: 2,
            reason: "the value is empty",
        },
        StoreError::NotAStore("/x is not a folder".into()),
        StoreError::Locked("/x".into()),
        StoreError::Closed,
    ] {
        let s = e.to_string();
        assert!(!s.is_empty() && !s.contains('\n') && !s.ends_with('.'), "{s:?}");
    }
}
