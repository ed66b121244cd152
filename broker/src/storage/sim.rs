//! A simulated disk for tests: files in memory, with what the page cache holds kept apart from
//! what a power loss would leave.
//!
//! Each file has its current content (what reads see) and its durable content (what was last
//! fsynced), plus the list of writes and truncations since then. `sync_data` makes the current
//! content durable. A file's creation or removal is durable only once its directory is synced.
//! [`SimDisk::power_loss`] keeps, for every file, an arbitrary subset of its unsynced writes
//! (each one whole, torn to a prefix, or lost) in order, and an arbitrary subset of unsynced
//! directory changes; then everything is durable again, as after a reboot.
//!
//! Faults: a rule sees every operation ([`Op`]) and may fail it with an `io::Error`;
//! `short_writes` makes writes take only part of what they are given; `write_rate` makes
//! writes take time, as a slow disk would. All randomness comes from a seed, so a failing
//! case can be replayed.

use super::{Storage, StorageFile};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// What an operation is, for fault rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Create,
    Open,
    Read,
    Write,
    SetLen,
    Sync,
    SyncDir,
    Remove,
    Rename,
    List,
}

/// One operation on the simulated disk, as a fault rule sees it.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    pub path: PathBuf,
}

type Rule = Box<dyn FnMut(&Op) -> Option<io::Error> + Send>;

struct Faults {
    rule: Option<Rule>,
    rng: u64,
    short_writes: bool,
    /// Bytes per second writes are throttled to.
    write_rate: Option<u64>,
}

impl Faults {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn check(&mut self, kind: OpKind, path: &Path) -> io::Result<()> {
        let op = Op {
            kind,
            path: path.to_path_buf(),
        };
        match self.rule.as_mut().and_then(|r| r(&op)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
enum Change {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Content {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Change>,
    modified_ms: i64,
}

fn apply(data: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { pos, data: bytes } => {
            let pos = *pos as usize;
            if data.len() < pos + bytes.len() {
                data.resize(pos + bytes.len(), 0);
            }
            data[pos..pos + bytes.len()].copy_from_slice(bytes);
        }
        Change::SetLen(len) => data.resize(*len as usize, 0),
    }
}

/// A file on the simulated disk.
struct SimFile {
    path: PathBuf,
    content: Mutex<Content>,
    faults: Arc<Mutex<Faults>>,
}

impl std::fmt::Debug for SimFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFile").field("path", &self.path).finish()
    }
}

impl SimFile {
    fn content(&self) -> MutexGuard<'_, Content> {
        self.content.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl StorageFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.faults().check(OpKind::Read, &self.path)?;
        let c = self.content();
        let start = pos as usize;
        let end = start + buf.len();
        match c.current.get(start..end) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            )),
        }
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
        let (take, delay) = {
            let mut f = self.faults();
            f.check(OpKind::Write, &self.path)?;
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let take = if f.short_writes && total > 1 {
                1 + (f.next() % total as u64) as usize
            } else {
                total
            };
            let delay = f
                .write_rate
                .map(|rate| Duration::from_secs_f64(take as f64 / rate.max(1) as f64));
            (take, delay)
        };
        if let Some(d) = delay {
            // The simulated device's own time: a slow disk blocks the writing thread (always a
            // partition's writer thread, never an async worker), as a real one would.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(d);
        }
        let mut data = Vec::with_capacity(take);
        for b in bufs {
            let room = take - data.len();
            data.extend_from_slice(&b[..b.len().min(room)]);
            if data.len() == take {
                break;
            }
        }
        let change = Change::Write { pos, data };
        let mut c = self.content();
        apply(&mut c.current, &change);
        c.unsynced.push(change);
        c.modified_ms = now_ms();
        Ok(take)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.content().current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults().check(OpKind::SetLen, &self.path)?;
        let change = Change::SetLen(len);
        let mut c = self.content();
        apply(&mut c.current, &change);
        c.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults().check(OpKind::Sync, &self.path)?;
        let mut c = self.content();
        c.durable = c.current.clone();
        c.unsynced.clear();
        Ok(())
    }

    fn modified_ms(&self) -> Option<i64> {
        Some(self.content().modified_ms)
    }
}

#[derive(Debug)]
enum Entry {
    Created(PathBuf),
    Removed(PathBuf, Arc<SimFile>),
}

#[derive(Default)]
struct Tree {
    files: BTreeMap<PathBuf, Arc<SimFile>>,
    dirs: BTreeSet<PathBuf>,
    /// Directory changes since the directory was last synced.
    unsynced: Vec<Entry>,
}

/// The simulated disk. Cheap to clone: clones share the same files.
#[derive(Clone)]
pub struct SimDisk {
    tree: Arc<Mutex<Tree>>,
    faults: Arc<Mutex<Faults>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk").finish_non_exhaustive()
    }
}

impl SimDisk {
    /// An empty disk; `seed` drives short writes and what a power loss keeps.
    pub fn new(seed: u64) -> Self {
        SimDisk {
            tree: Arc::default(),
            faults: Arc::new(Mutex::new(Faults {
                rule: None,
                rng: seed | 1,
                short_writes: false,
                write_rate: None,
            })),
        }
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails every operation for which `rule` returns an error (replacing any earlier rule).
    pub fn set_fault(&self, rule: impl FnMut(&Op) -> Option<io::Error> + Send + 'static) {
        self.faults().rule = Some(Box::new(rule));
    }

    pub fn clear_faults(&self) {
        self.faults().rule = None;
    }

    /// Writes take only a random part of what they are given (callers must loop).
    pub fn set_short_writes(&self, on: bool) {
        self.faults().short_writes = on;
    }

    /// Writes take as long as they would at `bytes_per_sec` (`None`: instant).
    pub fn set_write_rate(&self, bytes_per_sec: Option<u64>) {
        self.faults().write_rate = bytes_per_sec;
    }

    /// Bytes that a power loss now could lose: unsynced writes of every file.
    pub fn unsynced_files(&self) -> usize {
        self.tree()
            .files
            .values()
            .filter(|f| !f.content().unsynced.is_empty())
            .count()
    }

    /// Cuts the power: every file keeps its durable content plus an arbitrary (seeded) subset
    /// of its unsynced writes, each whole, torn or lost, in order; every unsynced directory
    /// change is kept or undone at random. Open handles keep working on the result, as if
    /// the machine had rebooted and the files were opened again.
    pub fn power_loss(&self) {
        let mut faults = self.faults();
        let mut tree = self.tree();
        let unsynced = std::mem::take(&mut tree.unsynced);
        for entry in unsynced.into_iter().rev() {
            let keep = faults.next().is_multiple_of(2);
            match entry {
                Entry::Created(path) if !keep => {
                    tree.files.remove(&path);
                }
                Entry::Removed(path, file) if !keep => {
                    tree.files.insert(path, file);
                }
                _ => {}
            }
        }
        for file in tree.files.values() {
            let mut c = file.content();
            let mut data = c.durable.clone();
            for change in std::mem::take(&mut c.unsynced) {
                match faults.next() % 3 {
                    0 => {}
                    1 => apply(&mut data, &change),
                    _ => {
                        // Torn: a prefix of a write reaches the disk.
                        if let Change::Write { pos, data: bytes } = &change {
                            let keep = (faults.next() % (bytes.len() as u64 + 1)) as usize;
                            let torn = Change::Write {
                                pos: *pos,
                                data: bytes[..keep].to_vec(),
                            };
                            apply(&mut data, &torn);
                        } else {
                            apply(&mut data, &change);
                        }
                    }
                }
            }
            c.durable = data.clone();
            c.current = data;
        }
    }

    fn file(&self, path: &Path) -> io::Result<Arc<SimFile>> {
        self.tree().files.get(path).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })
    }

    fn new_file(&self, path: &Path) -> Arc<SimFile> {
        Arc::new(SimFile {
            path: path.to_path_buf(),
            content: Mutex::new(Content {
                modified_ms: now_ms(),
                ..Content::default()
            }),
            faults: self.faults.clone(),
        })
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut tree = self.tree();
        for d in dir.ancestors() {
            tree.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.faults().check(OpKind::List, dir)?;
        let tree = self.tree();
        if !tree.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        let files = tree.files.keys().filter(|p| p.parent() == Some(dir));
        let dirs = tree.dirs.iter().filter(|p| p.parent() == Some(dir));
        Ok(files.chain(dirs).cloned().collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.faults().check(OpKind::Open, path)?;
        Ok(self.file(path)?)
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.faults().check(OpKind::Create, path)?;
        let mut tree = self.tree();
        if tree.files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let file = self.new_file(path);
        tree.files.insert(path.to_path_buf(), file.clone());
        tree.unsynced.push(Entry::Created(path.to_path_buf()));
        Ok(file)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.faults().check(OpKind::Read, path)?;
        Ok(self.file(path)?.content().current.clone())
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.faults().check(OpKind::Write, path)?;
        let file = match self.file(path) {
            Ok(f) => f,
            Err(_) => {
                let f = self.new_file(path);
                let mut tree = self.tree();
                tree.files.insert(path.to_path_buf(), f.clone());
                tree.unsynced.push(Entry::Created(path.to_path_buf()));
                f
            }
        };
        self.faults().check(OpKind::Sync, path)?;
        let mut c = file.content();
        c.current = bytes.to_vec();
        c.durable = bytes.to_vec();
        c.unsynced.clear();
        c.modified_ms = now_ms();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.faults().check(OpKind::Remove, path)?;
        let mut tree = self.tree();
        let file = tree.files.remove(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })?;
        tree.unsynced.push(Entry::Removed(path.to_path_buf(), file));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults().check(OpKind::SyncDir, dir)?;
        self.tree().unsynced.retain(|e| {
            let path = match e {
                Entry::Created(p) | Entry::Removed(p, _) => p,
            };
            path.parent() != Some(dir)
        });
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let tree = self.tree();
        tree.files.contains_key(path) || tree.dirs.contains(path)
    }

    /// Applied at once and durable at once: the simulation models lost writes and lost
    /// creations and removals of files, not lost renames.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults().check(OpKind::Rename, from)?;
        let mut tree = self.tree();
        let moved = |p: &Path| -> Option<PathBuf> {
            p.strip_prefix(from).ok().map(|rest| {
                if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                }
            })
        };
        if !tree.files.contains_key(from) && !tree.dirs.contains(from) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such file or directory",
            ));
        }
        let files: Vec<PathBuf> = tree
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in files {
            if let (Some(file), Some(new)) = (tree.files.remove(&old), moved(&old)) {
                tree.files.insert(new, file);
            }
        }
        let dirs: Vec<PathBuf> = tree
            .dirs
            .iter()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in dirs {
            tree.dirs.remove(&old);
            if let Some(new) = moved(&old) {
                tree.dirs.insert(new);
            }
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults().check(OpKind::Remove, dir)?;
        let mut tree = self.tree();
        tree.files.retain(|p, _| !p.starts_with(dir));
        tree.dirs.retain(|p| !p.starts_with(dir));
        tree.unsynced.retain(|e| {
            let path = match e {
                Entry::Created(p) | Entry::Removed(p, _) => p,
            };
            !path.starts_with(dir)
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_writes_survive_power_loss_and_unsynced_ones_may_not() {
        let disk = SimDisk::new(7);
        let dir = Path::new("/d");
        disk.create_dir_all(dir).unwrap();
        let f = disk.create_new(&dir.join("a")).unwrap();
        disk.sync_dir(dir).unwrap();
        f.write_vectored_at(&[IoSlice::new(b"durable")], 0).unwrap();
        f.sync_data().unwrap();
        f.write_vectored_at(&[IoSlice::new(b"-maybe")], 7).unwrap();
        let _unsynced = disk.create_new(&dir.join("b")).unwrap();
        let mut outcomes = BTreeSet::new();
        for _ in 0..40 {
            let disk2 = disk.clone();
            disk2.power_loss();
            let data = disk2.read(&dir.join("a")).unwrap();
            assert!(data.starts_with(b"durable"), "{data:?}");
            outcomes.insert(data.len());
            // Everything is durable after the reboot; write the unsynced part again.
            f.write_vectored_at(&[IoSlice::new(b"-maybe")], 7).unwrap();
        }
        assert!(
            outcomes.len() > 1,
            "power losses keep different subsets: {outcomes:?}"
        );
    }

    #[test]
    fn faults_and_short_writes_are_injected() {
        let disk = SimDisk::new(3);
        disk.create_dir_all(Path::new("/d")).unwrap();
        let f = disk.create_new(Path::new("/d/a")).unwrap();
        disk.set_short_writes(true);
        let n = f
            .write_vectored_at(&[IoSlice::new(&[1u8; 100])], 0)
            .unwrap();
        assert!((1..=100).contains(&n));
        disk.set_fault(|op| {
            (op.kind == OpKind::Sync).then(|| io::Error::other("injected fsync failure"))
        });
        assert!(f.sync_data().is_err());
        disk.clear_faults();
        assert!(f.sync_data().is_ok());
    }
}
