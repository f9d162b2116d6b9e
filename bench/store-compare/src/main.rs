//! Compares redb, fjall and SQLite (rusqlite) for fedbroker's mailbox store workload:
//! appends keyed (id u32 BE, seq u64 BE) with small values from concurrent senders, each waiting
//! for its acknowledgement, carried out by one writer thread that group-commits whatever is
//! pending (the design of `fedbroker-store`); range reads of one id after a seq; trims of an id's
//! oldest records; a reopen and full load. See docs/store.md for the figures and the choice.
//!
//!   cargo run --release -- [SECONDS_PER_APPEND_RUN] [ENGINE...]
//!   cargo run --release -- crash      # what a SIGKILL loses, per engine and mode
//!
//! Prints markdown tables.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDS: u32 = 1000;
/// The most appends one group commit takes (the store's bound too).
const GROUP_MAX: usize = 1024;

fn key(id: u32, seq: u64) -> [u8; 12] {
    let mut k = [0; 12];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// What one engine must do; the writer thread owns it.
trait Engine: Send {
    /// One transaction: the appends, then the trims (delete id's records with seq <= through).
    fn commit(&mut self, appends: &[(u32, u64, Vec<u8>)], trims: &[(u32, u64)]);
    /// Reads id's records with seq > after; returns how many.
    fn range(&mut self, id: u32, after: u64) -> usize;
    /// Reads every record, in key order; returns how many.
    fn load_all(&mut self) -> usize;
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Redb,
    Fjall,
    Sqlite,
}

impl Kind {
    fn parse(a: &str) -> Kind {
        match a {
            "redb" => Kind::Redb,
            "fjall" => Kind::Fjall,
            "sqlite" => Kind::Sqlite,
            _ => panic!("engines: redb fjall sqlite"),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::Sqlite => "sqlite",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb 5.0.0",
            Kind::Fjall => "fjall 3.1.13",
            Kind::Sqlite => "SQLite 3 (rusqlite 0.43, WAL)",
        }
    }
}

fn open(kind: Kind, dir: &Path, durable: bool) -> Box<dyn Engine> {
    match kind {
        Kind::Redb => Box::new(RedbEngine::open(dir, durable)),
        Kind::Fjall => Box::new(FjallEngine::open(dir, durable)),
        Kind::Sqlite => Box::new(SqliteEngine::open(dir, durable)),
    }
}

// ---- redb ---------------------------------------------------------------------------------

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("records");

struct RedbEngine {
    db: redb::Database,
    durable: bool,
}

impl RedbEngine {
    fn open(dir: &Path, durable: bool) -> Self {
        let db = redb::Database::create(dir.join("store.redb")).unwrap();
        RedbEngine { db, durable }
    }
}

impl Engine for RedbEngine {
    fn commit(&mut self, appends: &[(u32, u64, Vec<u8>)], trims: &[(u32, u64)]) {
        let mut tx = self.db.begin_write().unwrap();
        if !self.durable {
            tx.set_durability(redb::Durability::None).unwrap();
        }
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (id, seq, v) in appends {
                t.insert(&key(*id, *seq)[..], &v[..]).unwrap();
            }
            for &(id, through) in trims {
                let (lo, hi) = (key(id, 0), key(id, through));
                t.retain_in(&lo[..]..=&hi[..], |_, _| false).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn range(&mut self, id: u32, after: u64) -> usize {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        let (lo, hi) = (key(id, after + 1), key(id, u64::MAX));
        let mut n = 0;
        for r in t.range(&lo[..]..=&hi[..]).unwrap() {
            let (_, v) = r.unwrap();
            std::hint::black_box(v.value());
            n += 1;
        }
        n
    }

    fn load_all(&mut self) -> usize {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().unwrap();
        let t = match tx.open_table(TABLE) {
            Err(redb::TableError::TableDoesNotExist(_)) => return 0, // nothing was ever committed
            t => t.unwrap(),
        };
        let mut n = 0;
        for r in t.iter().unwrap() {
            let (k, v) = r.unwrap();
            std::hint::black_box((k.value().to_vec(), v.value().to_vec()));
            n += 1;
        }
        n
    }
}

// ---- fjall --------------------------------------------------------------------------------

struct FjallEngine {
    db: fjall::Database,
    ks: fjall::Keyspace,
    durable: bool,
}

impl FjallEngine {
    fn open(dir: &Path, durable: bool) -> Self {
        let db = fjall::Database::builder(dir.join("fjall")).open().unwrap();
        let ks = db.keyspace("records", fjall::KeyspaceCreateOptions::default).unwrap();
        FjallEngine { db, ks, durable }
    }
}

impl Engine for FjallEngine {
    fn commit(&mut self, appends: &[(u32, u64, Vec<u8>)], trims: &[(u32, u64)]) {
        // Buffer writes the journal to the OS on commit, so a process crash loses nothing (with
        // no durability at all, a batch may stay in fjall's 8 KiB user-space buffer); SyncAll
        // also fsyncs the journal.
        let mode = if self.durable {
            fjall::PersistMode::SyncAll
        } else {
            fjall::PersistMode::Buffer
        };
        let mut b = self.db.batch().durability(Some(mode));
        for (id, seq, v) in appends {
            b.insert(&self.ks, key(*id, *seq).to_vec(), v.clone());
        }
        for &(id, through) in trims {
            // An LSM tree has no range delete here: a tombstone per key.
            for g in self.ks.range(key(id, 0)..=key(id, through)) {
                b.remove(&self.ks, g.key().unwrap());
            }
        }
        b.commit().unwrap();
    }

    fn range(&mut self, id: u32, after: u64) -> usize {
        let mut n = 0;
        for g in self.ks.range(key(id, after + 1)..=key(id, u64::MAX)) {
            std::hint::black_box(g.into_inner().unwrap());
            n += 1;
        }
        n
    }

    fn load_all(&mut self) -> usize {
        let mut n = 0;
        for g in self.ks.iter() {
            let (k, v) = g.into_inner().unwrap();
            std::hint::black_box((k.to_vec(), v.to_vec()));
            n += 1;
        }
        n
    }
}

// ---- SQLite -------------------------------------------------------------------------------

struct SqliteEngine {
    conn: rusqlite::Connection,
}

impl SqliteEngine {
    fn open(dir: &Path, durable: bool) -> Self {
        let conn = rusqlite::Connection::open(dir.join("store.sqlite")).unwrap();
        // WAL: FULL fsyncs the WAL on every commit; NORMAL does not (the WAL is written to the
        // OS on commit and fsynced at checkpoints), so a process crash loses nothing.
        let sync = if durable { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
             CREATE TABLE IF NOT EXISTS records (id INTEGER NOT NULL, seq INTEGER NOT NULL,
               value BLOB NOT NULL, PRIMARY KEY (id, seq)) WITHOUT ROWID;"
        ))
        .unwrap();
        SqliteEngine { conn }
    }
}

impl Engine for SqliteEngine {
    fn commit(&mut self, appends: &[(u32, u64, Vec<u8>)], trims: &[(u32, u64)]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO records (id, seq, value) VALUES (?1, ?2, ?3)")
                .unwrap();
            for (id, seq, v) in appends {
                ins.execute(rusqlite::params![id, *seq as i64, v]).unwrap();
            }
            let mut del = tx
                .prepare_cached("DELETE FROM records WHERE id = ?1 AND seq <= ?2")
                .unwrap();
            for &(id, through) in trims {
                del.execute(rusqlite::params![id, through as i64]).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn range(&mut self, id: u32, after: u64) -> usize {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, value FROM records WHERE id = ?1 AND seq > ?2 ORDER BY seq")
            .unwrap();
        let mut rows = st.query(rusqlite::params![id, after as i64]).unwrap();
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            std::hint::black_box((r.get::<_, i64>(0).unwrap(), r.get::<_, Vec<u8>>(1).unwrap()));
            n += 1;
        }
        n
    }

    fn load_all(&mut self) -> usize {
        let mut st = self
            .conn
            .prepare("SELECT id, seq, value FROM records ORDER BY id, seq")
            .unwrap();
        let mut rows = st.query([]).unwrap();
        let mut n = 0;
        while let Some(r) = rows.next().unwrap() {
            std::hint::black_box((
                r.get::<_, i64>(0).unwrap(),
                r.get::<_, i64>(1).unwrap(),
                r.get::<_, Vec<u8>>(2).unwrap(),
            ));
            n += 1;
        }
        n
    }
}

// ---- the workload -------------------------------------------------------------------------

struct AppendResult {
    appends: u64,
    commits: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

/// `writers` threads each append one record and wait for its acknowledgement, again and again
/// for `secs`; one writer thread group-commits everything pending.
fn append_run(engine: Box<dyn Engine>, writers: usize, value: usize, secs: f64) -> (Box<dyn Engine>, AppendResult) {
    type Req = ((u32, u64, Vec<u8>), mpsc::Sender<()>);
    let (tx, rx) = mpsc::channel::<Req>();
    let commits = Arc::new(AtomicU64::new(0));
    let committer = {
        let commits = commits.clone();
        std::thread::spawn(move || {
            let mut engine = engine;
            let mut group = Vec::with_capacity(GROUP_MAX);
            let mut acks = Vec::with_capacity(GROUP_MAX);
            while let Ok(first) = rx.recv() {
                let mut next = Some(first);
                while let Some((rec, ack)) = next {
                    group.push(rec);
                    acks.push(ack);
                    next = if group.len() < GROUP_MAX {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                engine.commit(&group, &[]);
                commits.fetch_add(1, Ordering::Relaxed);
                group.clear();
                for a in acks.drain(..) {
                    let _ = a.send(());
                }
            }
            engine
        })
    };
    let seq = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients: Vec<_> = (0..writers)
        .map(|w| {
            let (tx, seq, stop) = (tx.clone(), seq.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
                let (atx, arx) = mpsc::channel();
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % IDS as u64) as u32 + 1;
                    let s = seq.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    tx.send(((id, s, vec![(s & 0xff) as u8; value]), atx.clone())).unwrap();
                    arx.recv().unwrap();
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    drop(tx);
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u64> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let elapsed = start.elapsed().as_secs_f64();
    let engine = committer.join().unwrap();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    let res = AppendResult {
        appends: lat.len() as u64,
        commits: commits.load(Ordering::Relaxed),
        secs: elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    };
    (engine, res)
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    n
}

/// `store-compare crash`: for each engine and mode, a child process (this binary, `child`)
/// commits one record at a time (id 1, seq 1, 2, …) and prints each seq once its commit
/// returned; the parent SIGKILLs it after `CRASH_AFTER_ACKS` and reopens the database.
const CRASH_AFTER_ACKS: u64 = 300;

fn crash_child(kind: Kind, durable: bool, dir: &Path) {
    use std::io::Write;
    let mut e = open(kind, dir, durable);
    let mut out = std::io::stdout().lock();
    for seq in 1.. {
        e.commit(&[(1, seq, vec![7; 64])], &[]);
        out.write_all(format!("acked {seq}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

fn crash_check(kind: Kind, durable: bool) -> (u64, usize) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child", kind.arg(), if durable { "durable" } else { "nosync" }])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut line, mut acked) = (String::new(), 0);
    while out.read_line(&mut line).unwrap() > 0 {
        let Some(seq) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("acked ")) else {
            break;
        };
        acked = seq.parse().unwrap();
        if acked == CRASH_AFTER_ACKS {
            child.kill().unwrap();
        }
        line.clear();
    }
    child.wait().unwrap();
    let found = open(kind, dir.path(), durable).load_all();
    (acked, found)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return crash_child(Kind::parse(&args[1]), args[2] == "durable", Path::new(&args[3]));
    }
    if args.first().map(String::as_str) == Some("crash") {
        println!("## SIGKILL after {CRASH_AFTER_ACKS} acknowledged commits (one record each)\n");
        println!("| engine | fsync per commit | acknowledged | found after reopen | acknowledged but lost |");
        println!("|---|---|---|---|---|");
        for kind in [Kind::Redb, Kind::Fjall, Kind::Sqlite] {
            for durable in [true, false] {
                let (acked, found) = crash_check(kind, durable);
                let lost = acked.saturating_sub(found as u64);
                let yes = if durable { "yes" } else { "no" };
                println!("| {} | {yes} | {acked} | {found} | {lost} |", kind.name());
            }
        }
        return;
    }
    let mut args = args.into_iter();
    let secs: f64 = args.next().map(|s| s.parse().unwrap()).unwrap_or(3.0);
    let mut kinds: Vec<Kind> = args.map(|a| Kind::parse(&a)).collect();
    if kinds.is_empty() {
        kinds = vec![Kind::Redb, Kind::Fjall, Kind::Sqlite];
    }

    // STORE_COMPARE_ONE=durable,value,writers runs that one append configuration per engine
    // and nothing else (to count fsyncs under `strace -f -c`).
    let one: Option<(bool, usize, usize)> = std::env::var("STORE_COMPARE_ONE").ok().map(|v| {
        let f: Vec<&str> = v.split(',').collect();
        (f[0] == "durable", f[1].parse().unwrap(), f[2].parse().unwrap())
    });
    println!("## appends ({IDS} ids, each writer waits for its ack; one writer thread, group commit)\n");
    println!("| engine | fsync per commit | value | writers | appends/s | commits/s | appends/commit | p50 ack µs | p99 ack µs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &kind in &kinds {
        for durable in [true, false] {
            for value in [64, 1024] {
                for writers in [1, 16] {
                    if one.is_some_and(|o| o != (durable, value, writers)) {
                        continue;
                    }
                    let dir = tempfile::tempdir().unwrap();
                    let engine = open(kind, dir.path(), durable);
                    let (engine, r) = append_run(engine, writers, value, secs);
                    drop(engine);
                    println!(
                        "| {} | {} | {value} B | {writers} | {:.0} | {:.0} | {:.1} | {} | {} |",
                        kind.name(),
                        if durable { "yes" } else { "no" },
                        r.appends as f64 / r.secs,
                        r.commits as f64 / r.secs,
                        r.appends as f64 / r.commits.max(1) as f64,
                        r.p50_us,
                        r.p99_us
                    );
                }
            }
        }
    }

    if one.is_some() {
        return;
    }
    println!("\n## 100k records of 64 B (100 per id): range read, trim, reopen + full load, size\n");
    println!("| engine | fill s (100 durable commits) | size MiB | reopen + load 100k s | range after seq 50 (50 records), µs per id | trim 50 oldest of every id, s (10 durable commits) | size after trim MiB |");
    println!("|---|---|---|---|---|---|---|");
    for &kind in &kinds {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let mut e = open(kind, dir.path(), true);
        // Seqs 1..=100 for every id, in rounds so that ids interleave as they would live.
        for round in 0..100u64 {
            let batch: Vec<_> = (1..=IDS).map(|id| (id, round + 1, vec![round as u8; 64])).collect();
            e.commit(&batch, &[]);
        }
        let fill = t.elapsed().as_secs_f64();
        drop(e);
        let size = dir_size(dir.path());
        let t = Instant::now();
        let mut e = open(kind, dir.path(), true);
        let n = e.load_all();
        let load = t.elapsed().as_secs_f64();
        assert_eq!(n, 100 * IDS as usize);
        let t = Instant::now();
        let mut got = 0;
        for id in 1..=IDS {
            got += e.range(id, 50);
        }
        assert_eq!(got, 50 * IDS as usize);
        let range_us = t.elapsed().as_secs_f64() * 1e6 / IDS as f64;
        let t = Instant::now();
        for chunk in (1..=IDS).collect::<Vec<_>>().chunks(100) {
            let trims: Vec<_> = chunk.iter().map(|&id| (id, 50)).collect();
            e.commit(&[], &trims);
        }
        let trim = t.elapsed().as_secs_f64();
        drop(e);
        let size_after = dir_size(dir.path());
        println!(
            "| {} | {fill:.2} | {:.1} | {load:.3} | {range_us:.0} | {trim:.3} | {:.1} |",
            kind.name(),
            size as f64 / 1048576.0,
            size_after as f64 / 1048576.0
        );
    }
}
