//! The one narrow interface every file operation of the partition log goes through.
//!
//! [`Storage`] is a directory tree (list, open, create, remove, whole-file read and synced
//! write, directory fsync); [`StorageFile`] one open file (positional reads and writes, length,
//! truncation, `fdatasync`). [`Disk`] is the real implementation over `std::fs`;
//! [`sim::SimDisk`] a simulated disk for tests that can fail any call, return short writes,
//! slow writes down, and on a simulated power loss keep an arbitrary subset of every file's
//! unsynced writes (and of unsynced directory entries).
//!
//! Segments, their indexes, the committed-offsets log (a partition log itself) and topic
//! directories and metadata use it. Outside it: the data directory's lock and clean-shutdown
//! marker (`server.rs`), and the offline `rilld --check` (read-only, real disk).

pub mod sim;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A directory tree of files.
pub trait Storage: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The paths of the entries of `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a file that must not exist yet. Durable only after `sync_dir` of its directory.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or replaces `path` with `bytes` and fsyncs the file (not its directory).
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Creates or replaces a file with `bytes`, not waiting for them to reach the disk (for
    /// hints that cost only work if lost). Synced unless the storage knows better.
    fn write_unsynced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.write_synced(path, bytes)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Renames a file or a whole directory, atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a directory and everything under it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
}

/// Writes `value` (bincode, then CRC-32C) to `dir/name` through a temporary file and a rename.
pub fn save<T: serde::Serialize>(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    value: &T,
    synced: bool,
) -> std::io::Result<()> {
    let mut bytes = bytes::BytesMut::new();
    rill_protocol::codec::encode(value, &mut bytes);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{name}.tmp"));
    if synced {
        storage.write_synced(&tmp, &bytes)?;
    } else {
        storage.write_unsynced(&tmp, &bytes)?;
    }
    storage.rename(&tmp, &dir.join(name))?;
    if synced {
        storage.sync_dir(dir)?;
    }
    Ok(())
}

/// Reads what [`save`] wrote: `None` if the file does not exist; an error if it is damaged.
pub fn load<T: serde::de::DeserializeOwned>(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
) -> Result<Option<T>, String> {
    let path = dir.join(name);
    if !storage.exists(&path) {
        return Ok(None);
    }
    let bytes = storage
        .read(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let body = bytes
        .len()
        .checked_sub(4)
        .ok_or_else(|| format!("{}: too short", path.display()))?;
    let (value, crc) = bytes.split_at(body);
    if crc32c::crc32c(value).to_le_bytes() != crc {
        return Err(format!("{}: CRC mismatch", path.display()));
    }
    rill_protocol::codec::decode(value, "saved state")
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// One open file.
pub trait StorageFile: Send + Sync + fmt::Debug {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Reads exactly `len` bytes at `pos` into a new buffer. This default zero-fills the buffer
    /// first; a real file reads into its spare capacity instead (a fetch's read is up to
    /// `max_bytes`, and zeroing it cost as much as copying it from the page cache).
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }
    /// Writes some prefix of `bufs` at `pos`; returns how many bytes (may be fewer than asked).
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: everything written before it survives a power loss once it returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;
    /// A hint to start writing `len` bytes from `pos` back to the device, without waiting.
    fn start_writeback(&self, _pos: u64, _len: u64) {}
    /// When the file was last written, in milliseconds since the epoch.
    fn modified_ms(&self) -> Option<i64>;
}

impl dyn StorageFile {
    /// Writes all of `slices` at `pos`, retrying short writes.
    pub fn write_all_vectored_at(
        &self,
        mut slices: &mut [IoSlice<'_>],
        mut pos: u64,
    ) -> io::Result<()> {
        while !slices.is_empty() {
            match self.write_vectored_at(slices, pos) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
                Ok(n) => {
                    IoSlice::advance_slices(&mut slices, n);
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The real disk, through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Disk;

/// The real disk as a shared handle.
pub fn disk() -> Arc<dyn Storage> {
    Arc::new(Disk)
}

impl Disk {
    /// Opens a file for reading only (the offline check must not need write permission).
    pub fn open_read_only(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(RealFile::new(File::open(path)?)))
    }
}

impl Storage for Disk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile::new(file)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(RealFile::new(file)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let f = File::create(path)?;
        (&f).write_all(bytes)?;
        f.sync_data()
    }

    fn write_unsynced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        std::fs::write(path, bytes)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }
}

/// A real file. Vectored writes go through the file's cursor (positioned first), which only
/// the partition's writer thread uses; reads are positional and need no cursor.
#[derive(Debug)]
struct RealFile {
    file: File,
    cursor: Mutex<()>,
}

impl RealFile {
    fn new(file: File) -> Self {
        RealFile {
            file,
            cursor: Mutex::new(()),
        }
    }
}

impl StorageFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, pos)
    }

    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = pos.saturating_add(buf.len() as u64);
            // Fills (part of) the spare capacity and extends `buf` by what was read.
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(len);
        Ok(buf)
    }

    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
        let _cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        (&self.file).seek(SeekFrom::Start(pos))?;
        (&self.file).write_vectored(bufs)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, pos: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a file descriptor this handle owns; no memory is passed.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    i64::try_from(pos).unwrap_or(i64::MAX),
                    i64::try_from(len).unwrap_or(i64::MAX),
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if rc != 0 {
                // Only a hint: a later fdatasync still makes the data durable.
                tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed");
            }
        }
    }

    fn modified_ms(&self) -> Option<i64> {
        let t = self.file.metadata().ok()?.modified().ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_millis()).ok()
    }
}

/// A storage whose writes take as long as they would at `bytes_per_sec`: a slow disk, for
/// tests of backpressure against the real broker (`rilld --test-write-rate`).
/// The rate is the whole device's: writes to every file share it.
#[derive(Debug)]
pub struct Throttled {
    inner: Arc<dyn Storage>,
    device: Arc<Device>,
}

/// One simulated device: when it is free again, and how fast it writes.
#[derive(Debug)]
struct Device {
    busy_until: Mutex<std::time::Instant>,
    bytes_per_sec: u64,
}

impl Device {
    /// Books `n` bytes of device time and waits until they are written.
    fn write(&self, n: usize) {
        let done = {
            let mut busy = self.busy_until.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*busy).max(std::time::Instant::now());
            *busy =
                start + std::time::Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            *busy
        };
        let wait = done.saturating_duration_since(std::time::Instant::now());
        // The device's own time: only partition writer threads write, never async workers.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(wait);
    }
}

impl Throttled {
    pub fn new(inner: Arc<dyn Storage>, bytes_per_sec: u64) -> Self {
        Throttled {
            inner,
            device: Arc::new(Device {
                busy_until: Mutex::new(std::time::Instant::now()),
                bytes_per_sec: bytes_per_sec.max(1),
            }),
        }
    }
}

#[derive(Debug)]
struct ThrottledFile {
    inner: Arc<dyn StorageFile>,
    device: Arc<Device>,
}

impl Storage for Throttled {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(ThrottledFile {
            inner: self.inner.open(path)?,
            device: self.device.clone(),
        }))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(ThrottledFile {
            inner: self.inner.create_new(path)?,
            device: self.device.clone(),
        }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_synced(path, bytes)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
}

impl StorageFile for ThrottledFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, pos)
    }
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        self.inner.read_vec_at(len, pos)
    }
    fn write_vectored_at(&self, bufs: &[IoSlice<'_>], pos: u64) -> io::Result<usize> {
        let n = self.inner.write_vectored_at(bufs, pos)?;
        self.device.write(n);
        Ok(n)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn start_writeback(&self, pos: u64, len: u64) {
        self.inner.start_writeback(pos, len)
    }
    fn modified_ms(&self) -> Option<i64> {
        self.inner.modified_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unzeroed read returns exactly the bytes at the position, whole or not at all, as
    /// the zero-filling one does.
    #[test]
    fn a_read_into_spare_capacity_matches_the_plain_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        Disk.write_synced(&path, &bytes).unwrap();
        let file = Disk.open(&path).unwrap();
        for (pos, len) in [(0, 0), (0, 300_000), (12_345, 200_000), (299_999, 1)] {
            let got = file.read_vec_at(len, pos as u64).unwrap();
            let mut plain = vec![0; len];
            file.read_exact_at(&mut plain, pos as u64).unwrap();
            assert_eq!(got, bytes[pos..pos + len]);
            assert_eq!(got, plain);
        }
        let past = file.read_vec_at(10, 299_995).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }
}
