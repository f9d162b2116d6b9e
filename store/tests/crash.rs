//! SIGKILL in the middle of writing: a child process (this test binary, re-run with
//! `CHILD_ENV` set) appends and trims as fast as the store takes them and prints every op the
//! store acknowledges; the parent kills it with SIGKILL mid-run, reopens the store, and checks
//! that every acknowledged op is there and that what is there is a prefix of what was submitted.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::message;
use fedbroker_store::{Limits, Op, Store, StoreError, SyncPolicy};

const CHILD_ENV: &str = "FEDBROKER_STORE_CRASH_CHILD";
/// Ids the child writes to; append `n` goes to id `n % IDS + 1` with seq `n`.
const IDS: u64 = 16;
/// Every `TRIM_EVERY` appends the child trims the current id through `n - TRIM_LAG`.
const TRIM_EVERY: u64 = 50;
const TRIM_LAG: u64 = 40;
/// The child's most appends (it is killed long before).
const CHILD_APPENDS: u64 = 2_000_000;
/// Acknowledgements the parent waits for before it kills the child.
const KILL_AFTER_ACKS: usize = 5_000;

fn id_of(n: u64) -> u32 {
    (n % IDS + 1) as u32
}

/// The child's side: does nothing in a normal test run.
#[test]
fn crash_child_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (sync, path) = spec.split_once(':').unwrap();
    let (store, _) = Store::open(Path::new(path), sync.parse().unwrap(), Limits::default()).unwrap();
    let busy = Arc::new(AtomicBool::new(false));
    // Submits `op`, printing `line` once it is acknowledged; retries while the queue is full
    // (Busy is answered on this thread, before `submit` returns).
    let submit = |op: Op, line: String| loop {
        let busy2 = busy.clone();
        let line = line.clone();
        store.submit(
            op.clone(),
            Some(Box::new(move |r| match r {
                Ok(()) => println!("{line}"),
                Err(StoreError::Busy) => busy2.store(true, Ordering::SeqCst),
                Err(e) => panic!("{e}"),
            })),
        );
        if !busy.swap(false, Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    println!("started");
    for n in 1..=CHILD_APPENDS {
        submit(Op::Append(message(id_of(n), n)), format!("acked {} {n}", id_of(n)));
        if n % TRIM_EVERY == 0 {
            let through = n - TRIM_LAG;
            submit(
                Op::Trim { id: id_of(n), through },
                format!("trimmed {} {through}", id_of(n)),
            );
        }
    }
    store.flush().unwrap();
    println!("finished");
}

/// Runs the child under `sync`, SIGKILLs it after `KILL_AFTER_ACKS` acknowledgements, and
/// checks the reopened store. Returns (highest acknowledged seq, highest seq on disk).
fn crash_and_check(sync: SyncPolicy) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_process", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{sync}:{}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked: Vec<(u32, u64)> = Vec::new();
    let mut trims: BTreeMap<u32, u64> = BTreeMap::new();
    let mut trims_acked = 0;
    let mut killed = false;
    // Reads until the pipe closes: after the kill, what the child printed before it died. A
    // line cut short by the kill (no newline) is not an acknowledgement.
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        let Some(complete) = line.strip_suffix('\n') else { break };
        let words: Vec<&str> = complete.split(' ').collect();
        match words[..] {
            ["acked", id, seq] => acked.push((id.parse().unwrap(), seq.parse().unwrap())),
            ["trimmed", id, through] => {
                trims_acked += 1;
                let t = trims.entry(id.parse().unwrap()).or_default();
                *t = (*t).max(through.parse().unwrap());
            }
            ["finished"] => panic!("the child finished before it was killed"),
            _ => {}
        }
        if !killed && acked.len() >= KILL_AFTER_ACKS {
            child.kill().unwrap(); // SIGKILL
            killed = true;
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child exited on its own: {status}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );

    let (_store, loaded) = Store::open(&path, sync, Limits::default()).unwrap();
    let by_id: BTreeMap<u32, _> = loaded.iter().map(|l| (l.id, l)).collect();
    // What is on disk is a prefix of what was submitted: per id, exactly the submitted seqs
    // above its trim mark up to the highest seq stored for any id, each record as written.
    let highest = loaded
        .iter()
        .flat_map(|l| l.records.last())
        .map(|r| r.seq)
        .max()
        .unwrap();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        (1..=IDS as u32).collect::<Vec<_>>()
    );
    let mut on_disk = 0;
    for l in &loaded {
        let expected: Vec<u64> = (l.trimmed_through + 1..=highest)
            .filter(|&n| id_of(n) == l.id)
            .collect();
        let seqs: Vec<u64> = l.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, expected, "id {} is not a prefix of what was submitted", l.id);
        // The trim at append n (through n - TRIM_LAG) was submitted after append n.
        assert!(
            l.trimmed_through == 0 || l.trimmed_through + TRIM_LAG <= highest,
            "id {}: a trim through {} is on disk without the appends submitted before it",
            l.id,
            l.trimmed_through
        );
        for r in &l.records {
            assert_eq!(*r, message(r.id, r.seq));
        }
        on_disk += l.records.len();
    }
    // Every acknowledged append is there, unless a later trim took it.
    for &(id, seq) in &acked {
        let l = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("acknowledged id {id} is missing"));
        assert!(
            seq <= l.trimmed_through || l.records.binary_search_by_key(&seq, |r| r.seq).is_ok(),
            "acknowledged seq {seq} of id {id} is missing ({sync})"
        );
    }
    // Every acknowledged trim is there.
    for (&id, &through) in &trims {
        assert!(
            by_id[&id].trimmed_through >= through,
            "acknowledged trim of id {id} through {through} is missing"
        );
    }
    eprintln!(
        "{sync}: {} appends and {trims_acked} trims acknowledged before SIGKILL; the reopened store holds every \
         append up to seq {highest} ({on_disk} records left after trims)",
        acked.len(),
    );
    (acked.last().unwrap().1, highest)
}

#[test]
fn sigkill_under_always_loses_nothing_acknowledged() {
    let (acked, stored) = crash_and_check(SyncPolicy::Always);
    assert!(stored >= acked);
}

#[test]
fn sigkill_under_batch_loses_nothing_acknowledged() {
    // Batch acknowledges after the write to the OS, before the fsync: a process crash leaves
    // the page cache, and so the acknowledged ops, intact (power loss would not).
    let (acked, stored) = crash_and_check(SyncPolicy::Batch);
    assert!(stored >= acked);
}
