//! Producer ids: allocated durably, never handed out twice, and stable per producer name.
//!
//! `<data>/producer-ids` is an append-only file of records, each `kind: u8`, its fields
//! (little-endian), then the CRC-32C of kind and fields (u32 LE):
//! - kind 1, block: `until: i64`: ids below `until` may have been handed out;
//! - kind 2, name: `len: u16, name: len bytes, id: i64, epoch: i16`: the name's current id
//!   and epoch (the last record for a name wins).
//!
//! Ids are handed out from a block that was reserved by an fsynced record first, so after a
//! crash the next id comes from a fresh block and none is reused. A name's record is fsynced
//! before its epoch is returned, so a fenced instance stays fenced after a restart. A torn or
//! damaged tail (a crash mid-append) is cut at the last whole record; what it held was never
//! acknowledged. All file access goes through the storage interface.

use crate::log::StorageError;
use crate::storage::{Storage, StorageFile};
use std::collections::HashMap;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

pub const FILE_NAME: &str = "producer-ids";
/// Ids reserved by one block record.
const BLOCK: i64 = 1000;
const KIND_BLOCK: u8 = 1;
const KIND_NAME: u8 = 2;
/// Longest producer name.
pub const MAX_NAME: usize = 255;

#[derive(Debug)]
struct State {
    file: Arc<dyn StorageFile>,
    len: u64,
    next: i64,
    reserved: i64,
    names: HashMap<String, (i64, i16)>,
}

#[derive(Debug)]
pub struct ProducerIds {
    path: PathBuf,
    state: Mutex<State>,
    /// Current epoch of every named producer's id, read by each produce of an idempotent
    /// batch (see [`ProducerIds::fenced`]); written only by `init`.
    epochs: RwLock<HashMap<i64, i16>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("producer name of {0} bytes; at most {MAX_NAME}")]
    NameTooLong(usize),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Parses records from the start of `bytes`; returns them and the length of the whole-record
/// prefix.
fn parse(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((record, len)) = parse_one(bytes.get(pos..).unwrap_or_default()) {
        out.push(record);
        pos += len;
    }
    (out, pos)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Block(i64),
    Name(String, i64, i16),
}

fn parse_one(b: &[u8]) -> Option<(Record, usize)> {
    let take = |at: usize, n: usize| b.get(at..at + n);
    let (record, body) = match *b.first()? {
        KIND_BLOCK => (
            Record::Block(i64::from_le_bytes(take(1, 8)?.try_into().ok()?)),
            9,
        ),
        KIND_NAME => {
            let len = u16::from_le_bytes(take(1, 2)?.try_into().ok()?) as usize;
            let name = String::from_utf8(take(3, len)?.to_vec()).ok()?;
            let id = i64::from_le_bytes(take(3 + len, 8)?.try_into().ok()?);
            let epoch = i16::from_le_bytes(take(11 + len, 2)?.try_into().ok()?);
            (Record::Name(name, id, epoch), 13 + len)
        }
        _ => return None,
    };
    let crc = u32::from_le_bytes(take(body, 4)?.try_into().ok()?);
    (crc32c::crc32c(take(0, body)?) == crc).then_some((record, body + 4))
}

fn encode(record: &Record) -> Vec<u8> {
    let mut b = Vec::new();
    match record {
        Record::Block(until) => {
            b.push(KIND_BLOCK);
            b.extend_from_slice(&until.to_le_bytes());
        }
        Record::Name(name, id, epoch) => {
            b.push(KIND_NAME);
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&epoch.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

impl ProducerIds {
    /// Opens (creating if needed) the id file in `data_dir`. Blocking.
    pub fn open(storage: &dyn Storage, data_dir: &Path) -> Result<Self, StorageError> {
        let path = data_dir.join(FILE_NAME);
        let file = if storage.exists(&path) {
            storage.open(&path)
        } else {
            let f = storage.create_new(&path);
            storage
                .sync_dir(data_dir)
                .map_err(StorageError::io("fsync directory", data_dir))?;
            f
        }
        .map_err(StorageError::io("open", &path))?;
        let bytes = storage
            .read(&path)
            .map_err(StorageError::io("read", &path))?;
        let (records, valid) = parse(&bytes);
        let lost = bytes.len() - valid;
        if lost > 0 {
            tracing::warn!(file = %path.display(), position = valid, bytes = lost, "cutting a torn or damaged tail of the producer id file; skipping every block it could have reserved");
            file.set_len(valid as u64)
                .and_then(|()| file.sync_data())
                .map_err(StorageError::io("truncate", &path))?;
        }
        let mut reserved = 0;
        let mut names = HashMap::new();
        for r in records {
            match r {
                Record::Block(until) => reserved = reserved.max(until),
                Record::Name(name, id, epoch) => {
                    names.insert(name, (id, epoch));
                }
            }
        }
        if lost > 0 {
            // Each cut record could have reserved a block (13 bytes each): skip them all, so
            // no id is handed out twice even when damage, not a torn append, cut the file.
            reserved += (lost as i64 / 13 + 1) * BLOCK;
        }
        let epochs = names.values().copied().collect();
        Ok(ProducerIds {
            path,
            epochs: RwLock::new(epochs),
            state: Mutex::new(State {
                file,
                len: valid as u64,
                // Whatever was handed out of the last block before a restart is skipped.
                next: reserved,
                reserved,
                names,
            }),
        })
    }

    fn append(&self, st: &mut State, record: &Record) -> Result<(), StorageError> {
        let bytes = encode(record);
        let mut slices = [IoSlice::new(&bytes)];
        st.file
            .write_all_vectored_at(&mut slices, st.len)
            .and_then(|()| st.file.sync_data())
            .map_err(StorageError::io("append", &self.path))?;
        st.len += bytes.len() as u64;
        Ok(())
    }

    fn allocate(&self, st: &mut State) -> Result<i64, StorageError> {
        if st.next >= st.reserved {
            let until = st.reserved + BLOCK;
            self.append(st, &Record::Block(until))?;
            st.reserved = until;
        }
        let id = st.next;
        st.next += 1;
        Ok(id)
    }

    /// A producer id and epoch: a new id (epoch 0) without a name; with one, the name's id with
    /// its epoch bumped (a new id once the epoch is exhausted). Durable before it returns.
    /// Blocking.
    pub fn init(&self, name: Option<&str>) -> Result<(i64, i16), InitError> {
        if let Some(n) = name.filter(|n| n.len() > MAX_NAME) {
            return Err(InitError::NameTooLong(n.len()));
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(name) = name else {
            return Ok((self.allocate(&mut st)?, 0));
        };
        let (id, epoch) = match st.names.get(name).copied() {
            Some((id, epoch)) if epoch < i16::MAX => (id, epoch + 1),
            _ => (self.allocate(&mut st)?, 0),
        };
        self.append(&mut st, &Record::Name(name.to_string(), id, epoch))?;
        st.names.insert(name.to_string(), (id, epoch));
        self.epochs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, epoch);
        Ok((id, epoch))
    }

    /// The current epoch of a named producer's id, if `epoch` is older: a newer instance took
    /// over, and the partitions must refuse this one's batches even where the newer one has
    /// not written yet. Ids without a name are never fenced here.
    pub fn fenced(&self, id: i64, epoch: i16) -> Option<i16> {
        let epochs = self.epochs.read().unwrap_or_else(|p| p.into_inner());
        epochs.get(&id).copied().filter(|current| epoch < *current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimDisk;

    #[test]
    fn ids_are_never_reused_and_names_keep_their_id_across_power_loss() {
        let disk = SimDisk::new(21);
        let dir = Path::new("/data");
        disk.create_dir_all(dir).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut named = None;
        for round in 0..5 {
            let ids = ProducerIds::open(&disk, dir).unwrap();
            for _ in 0..30 {
                let (id, epoch) = ids.init(None).unwrap();
                assert_eq!(epoch, 0);
                assert!(seen.insert(id), "round {round}: id {id} handed out twice");
            }
            let (id, epoch) = ids.init(Some("billing")).unwrap();
            match named {
                None => assert_eq!(epoch, 0),
                Some((first, last)) => {
                    assert_eq!(id, first, "a name keeps its id");
                    assert_eq!(epoch, last + 1, "and each init fences the previous one");
                }
            }
            named = Some((id, epoch));
            seen.insert(id);
            drop(ids);
            disk.power_loss();
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_names_are_bounded() {
        let disk = SimDisk::new(3);
        let dir = Path::new("/data");
        disk.create_dir_all(dir).unwrap();
        let ids = ProducerIds::open(&disk, dir).unwrap();
        let (id, _) = ids.init(Some("a")).unwrap();
        drop(ids);
        let path = dir.join(FILE_NAME);
        let mut bytes = disk.read(&path).unwrap();
        bytes.extend_from_slice(&[KIND_NAME, 9, 0, b'x']); // a record cut short
        disk.write_synced(&path, &bytes).unwrap();
        let ids = ProducerIds::open(&disk, dir).unwrap();
        assert_eq!(ids.init(Some("a")).unwrap(), (id, 1));
        assert_eq!(ids.fenced(id, 0), Some(1), "epoch 0 is fenced by 1");
        assert_eq!(ids.fenced(id, 1), None);
        let (anonymous, _) = ids.init(None).unwrap();
        assert_eq!(ids.fenced(anonymous, 0), None);
        drop(ids);
        let ids = ProducerIds::open(&disk, dir).unwrap();
        assert_eq!(ids.fenced(id, 0), Some(1), "fencing survives a restart");
        assert!(matches!(
            ids.init(Some(&"n".repeat(300))),
            Err(InitError::NameTooLong(300))
        ));
    }
}
