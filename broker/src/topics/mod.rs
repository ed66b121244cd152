//! The topic registry: which topics exist, their partitions' logs, and their persisted metadata.
//!
//! ```text
//! <data>/topics/<name>/topic.meta        see metadata.rs
//! <data>/topics/<name>/<partition>/...   one partition log per directory
//! <data>/staging/   topics being created; renamed into topics/ when complete
//! <data>/trash/     deleted topics, renamed out of topics/ before their files are removed
//! ```
//!
//! Creation and deletion are atomic through a directory rename, so a crash never leaves half a
//! topic visible; leftovers in staging/ and trash/ are removed at the next start. Lookups take a
//! short read lock on the name map and hand out `Arc`s; a deleted topic's logs stay readable by
//! whoever still holds them until they let go.

mod metadata;

pub use metadata::TopicMeta;

use crate::log::{LogConfig, PartitionLog, RecoveryReport, StorageError};
use crate::storage::Storage;
use rill_protocol::{TopicConfig, TopicName};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Largest partition count one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("unknown topic '{0}'")]
    UnknownTopic(TopicName),
    #[error("topic '{topic}' has {count} partitions; there is no partition {partition}")]
    UnknownPartition {
        topic: TopicName,
        partition: u32,
        count: u32,
    },
    #[error("topic '{0}' already exists")]
    AlreadyExists(TopicName),
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Debug)]
pub struct Topic {
    pub name: TopicName,
    pub config: TopicConfig,
    pub partitions: Vec<Arc<PartitionLog>>,
}

#[derive(Debug)]
pub struct Topics {
    root: PathBuf,
    defaults: LogConfig,
    map: RwLock<HashMap<TopicName, Arc<Topic>>>,
    /// Serialises create and delete (blocking file work, run off the async workers).
    admin: Mutex<()>,
    /// Where topic directories, their metadata and partition logs live.
    storage: Arc<dyn Storage>,
}

fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), StorageError> {
    storage
        .sync_dir(dir)
        .map_err(StorageError::io("fsync directory", dir))
}

/// Opens partitions `range` of topic `name` under `dir` (recovering each).
fn open_partitions(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    name: &TopicName,
    range: std::ops::Range<u32>,
    config: &LogConfig,
    clean: bool,
) -> Result<Vec<(Arc<PartitionLog>, RecoveryReport)>, StorageError> {
    range
        .map(|p| {
            let (log, report) = PartitionLog::open_on(
                storage.clone(),
                &dir.join(p.to_string()),
                format!("{name}-{p}"),
                config.clone(),
                clean,
            )?;
            Ok((Arc::new(log), report))
        })
        .collect()
}

/// Reads and checks the metadata of the topic stored in `topic_dir`.
pub fn read_meta(storage: &dyn Storage, topic_dir: &Path) -> Result<TopicMeta, StorageError> {
    let path = topic_dir.join(metadata::FILE_NAME);
    storage
        .read(&path)
        .map_err(StorageError::io("read", &path))
        .and_then(|bytes| metadata::decode(&bytes, &path))
}

/// Writes `meta` to `path` and fsyncs it.
/// In a cluster node's topic directory: the topic's id in the cluster metadata (u64 LE, then
/// CRC-32C of it, LE).
const CLUSTER_ID: &str = "cluster-id";

fn write_cluster_id(storage: &dyn Storage, dir: &Path, id: u64) -> Result<(), StorageError> {
    crate::log::recovery::write_numbers(storage, dir, CLUSTER_ID, &[id])
}

fn write_meta(storage: &dyn Storage, path: &Path, meta: &TopicMeta) -> Result<(), StorageError> {
    storage
        .write_synced(path, &metadata::encode(meta))
        .map_err(StorageError::io("write", path))
}

impl Topics {
    /// Opens every topic under `data_dir`, recovering each partition, with partition logs on
    /// `storage`. Blocking.
    pub fn open(
        storage: Arc<dyn Storage>,
        data_dir: &Path,
        defaults: LogConfig,
        clean: bool,
    ) -> Result<(Self, Vec<(String, RecoveryReport)>), StorageError> {
        let topics = Topics {
            root: data_dir.to_path_buf(),
            defaults,
            map: RwLock::new(HashMap::new()),
            admin: Mutex::new(()),
            storage,
        };
        let storage = topics.storage.clone();
        for dir in ["topics", "staging", "trash"] {
            storage
                .create_dir_all(&data_dir.join(dir))
                .map_err(StorageError::io("create directory", data_dir.join(dir)))?;
        }
        for leftover in ["staging", "trash"] {
            let dir = data_dir.join(leftover);
            for path in storage.list(&dir).map_err(StorageError::io("list", &dir))? {
                tracing::info!(path = %path.display(), "removing an incomplete topic creation or deletion");
                storage
                    .remove_dir_all(&path)
                    .map_err(StorageError::io("remove", &path))?;
            }
        }
        let mut reports = Vec::new();
        let dir = topics.topics_dir();
        let mut names: Vec<PathBuf> = storage.list(&dir).map_err(StorageError::io("list", &dir))?;
        names.sort();
        for path in names {
            let meta_path = path.join(metadata::FILE_NAME);
            let meta = match read_meta(&*storage, &path) {
                Ok(meta) => meta,
                Err(e) => topics.rebuild_meta(&path, &e)?,
            };
            let config =
                topics
                    .log_config(&meta.config)
                    .map_err(|reason| StorageError::Corrupt {
                        path: meta_path.clone(),
                        position: 0,
                        reason,
                    })?;
            let mut partitions = Vec::with_capacity(meta.partitions as usize);
            for (log, report) in open_partitions(
                &topics.storage,
                &path,
                &meta.name,
                0..meta.partitions,
                &config,
                clean,
            )? {
                reports.push((log.label().to_string(), report));
                partitions.push(log);
            }
            let topic = Topic {
                name: meta.name.clone(),
                config: meta.config,
                partitions,
            };
            topics.write_map().insert(meta.name, Arc::new(topic));
        }
        Ok((topics, reports))
    }

    /// A topic whose metadata is unreadable keeps its data: the partition count comes from its
    /// partition directories, its settings revert to the broker defaults with retention off,
    /// and this is reported.
    fn rebuild_meta(&self, dir: &Path, why: &StorageError) -> Result<TopicMeta, StorageError> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| TopicName::new(n).ok());
        let Some(name) = name else {
            return Err(StorageError::Corrupt {
                path: dir.to_path_buf(),
                position: 0,
                reason: format!("not a topic directory ({why})"),
            });
        };
        // Partition directories are the entries named by a number.
        let partitions = self
            .storage
            .list(dir)
            .map_err(StorageError::io("list", dir))?
            .iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count() as u32;
        // Retention off: a rebuilt topic must not lose data to defaults nobody chose for it.
        let config = TopicConfig {
            retention_ms: Some(0),
            retention_bytes: Some(0),
            ..TopicConfig::default()
        };
        let meta = TopicMeta {
            name,
            partitions,
            config,
        };
        tracing::error!(topic = %meta.name, partitions, error = %why, "topic metadata is unreadable; rebuilt from its partition directories with default settings and retention off (set it again with rill topic alter)");
        self.replace_meta(&meta)?;
        Ok(meta)
    }

    fn topics_dir(&self) -> PathBuf {
        self.root.join("topics")
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TopicName, Arc<Topic>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicName, Arc<Topic>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The storage settings for a topic: its overrides on top of the broker defaults.
    pub fn log_config(&self, overrides: &TopicConfig) -> Result<LogConfig, String> {
        let config = LogConfig {
            segment_bytes: overrides
                .segment_bytes
                .unwrap_or(self.defaults.segment_bytes),
            index_interval_bytes: self.defaults.index_interval_bytes,
            fsync: overrides.fsync.unwrap_or(self.defaults.fsync),
            retention_ms: overrides.retention_ms.unwrap_or(self.defaults.retention_ms),
            retention_bytes: overrides
                .retention_bytes
                .unwrap_or(self.defaults.retention_bytes),
            producer_expiration_ms: self.defaults.producer_expiration_ms,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn get(&self, name: &TopicName) -> Result<Arc<Topic>, TopicError> {
        self.read_map()
            .get(name)
            .cloned()
            .ok_or_else(|| TopicError::UnknownTopic(name.clone()))
    }

    pub fn partition(
        &self,
        name: &TopicName,
        partition: u32,
    ) -> Result<Arc<PartitionLog>, TopicError> {
        let topic = self.get(name)?;
        topic
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or(TopicError::UnknownPartition {
                topic: name.clone(),
                partition,
                count: topic.partitions.len() as u32,
            })
    }

    /// All topics, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.read_map().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates a topic durably: staged, fsynced, then renamed into place. Blocking.
    pub fn create(
        &self,
        name: TopicName,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<(), TopicError> {
        self.create_with_id(name, partitions, config, None)
    }

    /// [`Topics::create`] for a cluster's topic: its id in the cluster's metadata is staged
    /// with it (`cluster-id`), so a node can tell this topic from a later one of the same name.
    pub fn create_with_id(
        &self,
        name: TopicName,
        partitions: u32,
        config: TopicConfig,
        cluster_id: Option<u64>,
    ) -> Result<(), TopicError> {
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidConfig(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}"
            )));
        }
        let log_config = self
            .log_config(&config)
            .map_err(TopicError::InvalidConfig)?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if self.read_map().contains_key(&name) {
            return Err(TopicError::AlreadyExists(name));
        }
        let staged = self.root.join("staging").join(name.as_str());
        let result = self.stage(&staged, &name, partitions, &config, cluster_id);
        if let Err(e) = result {
            let _ = self.storage.remove_dir_all(&staged);
            return Err(e.into());
        }
        let dest = self.topics_dir().join(name.as_str());
        self.storage
            .rename(&staged, &dest)
            .map_err(StorageError::io("rename into place", &dest))?;
        sync_dir(&*self.storage, &self.topics_dir())?;
        sync_dir(&*self.storage, &self.root.join("staging"))?;
        let logs = open_partitions(
            &self.storage,
            &dest,
            &name,
            0..partitions,
            &log_config,
            true,
        )?
        .into_iter()
        .map(|(log, _)| log)
        .collect();
        tracing::info!(topic = %name, partitions, "topic created");
        let topic = Topic {
            name: name.clone(),
            config,
            partitions: logs,
        };
        self.write_map().insert(name, Arc::new(topic));
        Ok(())
    }

    fn stage(
        &self,
        staged: &Path,
        name: &TopicName,
        partitions: u32,
        config: &TopicConfig,
        cluster_id: Option<u64>,
    ) -> Result<(), StorageError> {
        self.storage
            .create_dir_all(staged)
            .map_err(StorageError::io("create directory", staged))?;
        if let Some(id) = cluster_id {
            write_cluster_id(&*self.storage, staged, id)?;
        }
        for p in 0..partitions {
            let dir = staged.join(p.to_string());
            self.storage
                .create_dir_all(&dir)
                .map_err(StorageError::io("create directory", &dir))?;
            sync_dir(&*self.storage, &dir)?;
        }
        let meta = TopicMeta {
            name: name.clone(),
            partitions,
            config: config.clone(),
        };
        write_meta(&*self.storage, &staged.join(metadata::FILE_NAME), &meta)?;
        sync_dir(&*self.storage, staged)
    }

    /// The id of the cluster topic this local topic holds (see [`Topics::create_with_id`]):
    /// `None` for a topic created by a single node or before ids were recorded. Blocking.
    pub fn cluster_id(&self, name: &TopicName) -> Option<u64> {
        let path = self.topics_dir().join(name.as_str()).join(CLUSTER_ID);
        crate::log::recovery::read_numbers(&*self.storage, &path, 1)?
            .first()
            .copied()
    }

    /// Records that an existing local topic holds cluster topic `id` (one created before ids
    /// were recorded). Blocking.
    pub fn set_cluster_id(&self, name: &TopicName, id: u64) -> Result<(), StorageError> {
        write_cluster_id(&*self.storage, &self.topics_dir().join(name.as_str()), id)
    }

    /// Grows a topic to `partitions` partitions. The new partitions' logs are created first and
    /// the metadata replaced atomically (temp file, fsync, rename) last, so a crash leaves either
    /// the old count or the new one. Blocking.
    pub fn add_partitions(&self, name: &TopicName, partitions: u32) -> Result<(), TopicError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self.get(name)?;
        let current = topic.partitions.len() as u32;
        if partitions <= current || partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidConfig(format!(
                "topic '{name}' has {current} partitions; it can grow to at most {MAX_PARTITIONS}, never shrink (asked for {partitions})"
            )));
        }
        let log_config = self
            .log_config(&topic.config)
            .map_err(TopicError::InvalidConfig)?;
        let dir = self.topics_dir().join(name.as_str());
        let mut logs = topic.partitions.clone();
        logs.extend(
            open_partitions(
                &self.storage,
                &dir,
                name,
                current..partitions,
                &log_config,
                true,
            )?
            .into_iter()
            .map(|(log, _)| log),
        );
        sync_dir(&*self.storage, &dir)?;
        let meta = TopicMeta {
            name: name.clone(),
            partitions,
            config: topic.config.clone(),
        };
        self.replace_meta(&meta)?;
        let grown = Topic {
            name: name.clone(),
            config: topic.config.clone(),
            partitions: logs,
        };
        self.write_map().insert(name.clone(), Arc::new(grown));
        tracing::info!(topic = %name, from = current, to = partitions, "partitions added");
        Ok(())
    }

    /// Changes a live topic's settings: persisted (atomic replace of topic.meta), then applied
    /// to every partition. Returns the topic's settings after the change. Blocking.
    pub fn alter(
        &self,
        name: &TopicName,
        changes: &TopicConfig,
    ) -> Result<TopicConfig, TopicError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self.get(name)?;
        let config = topic.config.merged(changes);
        let log_config = self
            .log_config(&config)
            .map_err(TopicError::InvalidConfig)?;
        self.replace_meta(&TopicMeta {
            name: name.clone(),
            partitions: topic.partitions.len() as u32,
            config: config.clone(),
        })?;
        for log in &topic.partitions {
            log.reconfigure(log_config.clone())?;
        }
        let altered = Topic {
            name: name.clone(),
            config: config.clone(),
            partitions: topic.partitions.clone(),
        };
        self.write_map().insert(name.clone(), Arc::new(altered));
        tracing::info!(topic = %name, ?config, "topic altered");
        Ok(config)
    }

    /// Replaces a topic's metadata file atomically: temp file, fsync, rename, fsync directory.
    fn replace_meta(&self, meta: &TopicMeta) -> Result<(), StorageError> {
        let dir = self.topics_dir().join(meta.name.as_str());
        let tmp = dir.join(format!("{}.tmp", metadata::FILE_NAME));
        write_meta(&*self.storage, &tmp, meta)?;
        self.storage
            .rename(&tmp, &dir.join(metadata::FILE_NAME))
            .map_err(StorageError::io("replace", &tmp))?;
        sync_dir(&*self.storage, &dir)
    }

    /// Applies retention to every partition of every topic; returns segments deleted. Blocking.
    pub fn enforce_retention(&self, now_ms: i64) -> usize {
        let mut deleted = 0;
        for topic in self.list() {
            for log in &topic.partitions {
                match log.enforce_retention(now_ms) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(
                            partition = log.label(),
                            segments = n,
                            log_start = log.stats().log_start_offset,
                            "retention deleted old segments"
                        );
                        deleted += n;
                    }
                    Err(e) => {
                        tracing::warn!(partition = log.label(), error = %e, "retention could not delete segments")
                    }
                }
            }
        }
        deleted
    }

    /// Deletes a topic: unlisted at once, its writers stopped, its files removed. Blocking.
    pub fn delete(&self, name: &TopicName) -> Result<(), TopicError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let topic = self
            .write_map()
            .remove(name)
            .ok_or_else(|| TopicError::UnknownTopic(name.clone()))?;
        for log in &topic.partitions {
            log.close();
        }
        let from = self.topics_dir().join(name.as_str());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let to = self.root.join("trash").join(format!("{name}.{nanos}"));
        self.storage
            .rename(&from, &to)
            .map_err(StorageError::io("move to trash", &from))?;
        sync_dir(&*self.storage, &self.topics_dir())?;
        self.storage
            .remove_dir_all(&to)
            .map_err(StorageError::io("remove", &to))?;
        tracing::info!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Stops every writer after it has committed and synced what was queued. Blocking. Returns
    /// false if any partition is fail-stopped, in which case the shutdown must not count as clean.
    pub fn close(&self) -> bool {
        let mut healthy = true;
        for topic in self.list() {
            for log in &topic.partitions {
                log.close();
                healthy &= log.failed().is_none();
            }
        }
        healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::{OpKind, SimDisk};
    use rill_protocol::FsyncPolicy;

    fn defaults() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            fsync: FsyncPolicy::Always,
            retention_ms: 0,
            retention_bytes: 0,
            producer_expiration_ms: 86_400_000,
        }
    }

    /// Topic directories and metadata go through the storage interface too: on the simulated
    /// disk a created topic survives a power cut, and a metadata replacement whose rename
    /// fails leaves the old metadata in force.
    #[test]
    fn topic_metadata_survives_power_loss_and_failed_replacements() {
        let disk = SimDisk::new(9);
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        let root = Path::new("/data");
        let name = TopicName::new("orders").unwrap();
        {
            let (topics, _) = Topics::open(storage.clone(), root, defaults(), true).unwrap();
            topics
                .create(name.clone(), 3, TopicConfig::default())
                .unwrap();
            disk.set_fault(|op| {
                (op.kind == OpKind::Rename && op.path.ends_with("topic.meta.tmp"))
                    .then(|| std::io::Error::other("injected rename failure"))
            });
            let changes = TopicConfig {
                retention_ms: Some(5),
                ..TopicConfig::default()
            };
            assert!(topics.alter(&name, &changes).is_err());
            disk.clear_faults();
            topics.close();
        }
        disk.power_loss();
        let (topics, _) = Topics::open(storage, root, defaults(), false).unwrap();
        let topic = topics.get(&name).expect("the created topic survived");
        assert_eq!(topic.partitions.len(), 3);
        assert_eq!(
            topic.config.retention_ms, None,
            "the failed alter changed nothing"
        );
    }
}
