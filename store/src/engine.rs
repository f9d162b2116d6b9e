//! The store on disk: a folder holding a marker file and a fjall database with two keyspaces,
//! `records` (key: id BE + seq BE, value: `encode_value`) and `trims` (key: id BE, value: the
//! id's `trimmed_through` BE). Only the writer thread (and `Store::open`, before it starts)
//! touches it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::record::{decode_value, encode_value, parse_record_key, record_key, KEY_LEN};
use crate::{Loaded, Op, StoreError};

/// The marker file's name inside a store's folder, and its exact contents.
const MARKER: &str = "FEDBROKER-STORE";
const MARKER_CONTENTS: &str = "fedbroker-store 1 fjall-3\n";
const MARKER_TMP: &str = "FEDBROKER-STORE.tmp";
/// The fjall database's folder inside a store's folder.
const DATA_DIR: &str = "data";

pub(crate) struct Engine {
    db: Database,
    records: Keyspace,
    trims: Keyspace,
    /// Every id's `trimmed_through` as committed (ids never trimmed are absent).
    trimmed: HashMap<u32, u64>,
}

impl Engine {
    /// Opens (creating when missing or an empty folder) the store at `path` and loads it.
    pub(crate) fn open(path: &Path) -> Result<(Engine, Vec<Loaded>), StoreError> {
        prepare_folder(path)?;
        let db = Database::builder(path.join(DATA_DIR)).open().map_err(|e| match e {
            fjall::Error::Locked => StoreError::Locked(path.display().to_string()),
            e => StoreError::Io(format!("cannot open {}: {e}", path.display())),
        })?;
        let records = db.keyspace("records", KeyspaceCreateOptions::default)?;
        let trims = db.keyspace("trims", KeyspaceCreateOptions::default)?;
        let mut engine = Engine {
            db,
            records,
            trims,
            trimmed: HashMap::new(),
        };
        let loaded = engine.load()?;
        Ok((engine, loaded))
    }

    fn load(&mut self) -> Result<Vec<Loaded>, StoreError> {
        let mut by_id: BTreeMap<u32, Loaded> = BTreeMap::new();
        for g in self.trims.iter() {
            let (k, v) = g.into_inner()?;
            let bad = |reason| StoreError::Corrupt { id: 0, seq: 0, reason };
            let id = u32::from_be_bytes(k[..].try_into().map_err(|_| bad("a trim mark's key is not 4 bytes"))?);
            let through = u64::from_be_bytes(v[..].try_into().map_err(|_| bad("a trim mark is not 8 bytes"))?);
            self.trimmed.insert(id, through);
            by_id.insert(
                id,
                Loaded {
                    id,
                    trimmed_through: through,
                    records: Vec::new(),
                },
            );
        }
        for g in self.records.iter() {
            let (k, v) = g.into_inner()?;
            let (id, seq) = parse_record_key(&k).ok_or(StoreError::Corrupt {
                id: 0,
                seq: 0,
                reason: "a record's key is not 12 bytes",
            })?;
            let record = decode_value(id, seq, &v)?;
            by_id
                .entry(id)
                .or_insert_with(|| Loaded {
                    id,
                    trimmed_through: 0,
                    records: Vec::new(),
                })
                .records
                .push(record);
        }
        Ok(by_id.into_values().collect())
    }

    /// Applies `ops` in order in one atomic batch and commits it: with `PersistMode::SyncAll`
    /// it is on disk when this returns, with `Buffer` it is in the OS (it survives the process).
    pub(crate) fn commit<'a>(
        &mut self,
        ops: impl Iterator<Item = &'a Op>,
        mode: PersistMode,
    ) -> Result<(), StoreError> {
        // Appends of this group not yet written (a later trim in the group may drop them), and
        // the trim marks the group moves.
        let mut appends: BTreeMap<[u8; KEY_LEN], Vec<u8>> = BTreeMap::new();
        let mut marks: BTreeMap<u32, u64> = BTreeMap::new();
        let mut batch = self.db.batch().durability(Some(mode));
        for op in ops {
            match op {
                Op::Append(r) => {
                    // A record at or below its id's trim mark would be trimmed at once: loading
                    // relies on every record being above its id's mark.
                    if r.seq > self.mark(r.id, &marks) {
                        appends.insert(record_key(r.id, r.seq), encode_value(r));
                    }
                }
                &Op::Trim { id, through } => {
                    let prev = self.mark(id, &marks);
                    if through <= prev {
                        continue;
                    }
                    // Records up to `prev` are gone already: delete only (prev, through].
                    let (lo, hi) = (record_key(id, prev + 1), record_key(id, through));
                    for g in self.records.range(lo..=hi) {
                        batch.remove(&self.records, g.key()?);
                    }
                    let pending: Vec<_> = appends.range(lo..=hi).map(|(k, _)| *k).collect();
                    for k in pending {
                        appends.remove(&k);
                    }
                    marks.insert(id, through);
                }
            }
        }
        for (k, v) in appends {
            batch.insert(&self.records, k.to_vec(), v);
        }
        for (&id, &through) in &marks {
            batch.insert(&self.trims, id.to_be_bytes().to_vec(), through.to_be_bytes().to_vec());
        }
        batch.commit()?;
        self.trimmed.extend(marks);
        Ok(())
    }

    /// Makes everything committed so far durable (fsync of the journal).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    fn mark(&self, id: u32, group: &BTreeMap<u32, u64>) -> u64 {
        group.get(&id).or_else(|| self.trimmed.get(&id)).copied().unwrap_or(0)
    }
}

/// Makes sure `path` is a store's folder: creates it (or fills an empty folder) with the
/// marker; refuses anything else.
fn prepare_folder(path: &Path) -> Result<(), StoreError> {
    let shown = path.display();
    let not_a_store = |why: String| StoreError::NotAStore(why);
    match fs::metadata(path) {
        Ok(m) if !m.is_dir() => return Err(not_a_store(format!("{shown} is not a folder"))),
        Ok(_) => match fs::read(path.join(MARKER)) {
            Ok(contents) if contents == MARKER_CONTENTS.as_bytes() => return Ok(()),
            Ok(_) => return Err(not_a_store(format!("{shown} holds a store of another format"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A marker's temporary file alone is what a crash during creation leaves.
                let mut entries = fs::read_dir(path)?;
                if entries.any(|e| e.map_or(true, |e| e.file_name() != MARKER_TMP)) {
                    return Err(not_a_store(format!("{shown} is a folder with other contents")));
                }
            }
            Err(e) => {
                return Err(StoreError::Io(format!(
                    "cannot read {}: {e}",
                    path.join(MARKER).display()
                )))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(path)?,
        Err(e) => return Err(StoreError::Io(format!("cannot open {shown}: {e}"))),
    }
    // The marker is written whole under another name, then renamed, before any data: a crash
    // during creation leaves a folder that is created again on the next open.
    let tmp = path.join(MARKER_TMP);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(MARKER_CONTENTS.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path.join(MARKER))?;
    fs::File::open(path)?.sync_all()?;
    Ok(())
}
