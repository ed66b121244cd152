//! Topic names and per-topic configuration as they travel on the wire and rest in metadata.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A validated topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
/// The same rule as Kafka's, so names are also safe as directory names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TopicName(String);

impl TopicName {
    pub const MAX_LEN: usize = 249;

    pub fn new(name: impl Into<String>) -> Result<Self, InvalidTopicName> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("is longer than 249 characters")
        } else if name == "." || name == ".." {
            Some("may not be '.' or '..'")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            Some("may contain only ASCII letters, digits, '.', '_' and '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidTopicName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by topic name be searched with a `&str` (the hash of a `String` is its
/// `str`'s), so a client looks a topic up without validating or allocating its name again.
impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopicName::new(s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic name {name:?}: {reason}")]
pub struct InvalidTopicName {
    pub name: String,
    pub reason: &'static str,
}

/// When a partition's appended data reaches the disk, relative to the acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FsyncPolicy {
    /// Acknowledge only after `fdatasync`; one sync covers every batch waiting on the partition
    /// (group commit). Nothing acknowledged is lost on a crash or power loss.
    #[default]
    Always,
    /// Acknowledge after the write reaches the OS, and `fdatasync` at least every `ms`
    /// milliseconds. A process crash loses nothing; a power loss or kernel crash may lose up to
    /// the last interval's acknowledged writes.
    Interval { ms: u32 },
}

impl FsyncPolicy {
    pub fn interval(&self) -> Option<Duration> {
        match self {
            FsyncPolicy::Always => None,
            FsyncPolicy::Interval { ms } => Some(Duration::from_millis(u64::from(*ms))),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Interval { ms } => write!(f, "interval:{ms}"),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "always" {
            return Ok(FsyncPolicy::Always);
        }
        if let Some(ms) = s.strip_prefix("interval:") {
            let ms: u32 = ms.parse().map_err(|_| {
                format!("bad interval in fsync policy {s:?}: expected milliseconds")
            })?;
            if ms == 0 {
                return Err(
                    "fsync interval must be at least 1 ms (use 'always' to sync every write)"
                        .into(),
                );
            }
            return Ok(FsyncPolicy::Interval { ms });
        }
        Err(format!(
            "unknown fsync policy {s:?}: expected 'always' or 'interval:MS'"
        ))
    }
}

/// Per-topic settings. Each `None` means "the broker's default".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TopicConfig {
    pub fsync: Option<FsyncPolicy>,
    /// Roll the active segment once it would grow past this many bytes.
    pub segment_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this many milliseconds
    /// (0: keep forever).
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while a partition is larger than this many bytes
    /// (0: no size limit).
    pub retention_bytes: Option<u64>,
}

impl TopicConfig {
    /// `self` with every field that `changes` sets replaced.
    pub fn merged(&self, changes: &TopicConfig) -> TopicConfig {
        TopicConfig {
            fsync: changes.fsync.or(self.fsync),
            segment_bytes: changes.segment_bytes.or(self.segment_bytes),
            retention_ms: changes.retention_ms.or(self.retention_ms),
            retention_bytes: changes.retention_bytes.or(self.retention_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_rule() {
        assert!(TopicName::new("orders.v2_eu-1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(TopicName::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn fsync_policy_parses_and_prints() {
        assert_eq!("always".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Always));
        assert_eq!(
            "interval:250".parse::<FsyncPolicy>(),
            Ok(FsyncPolicy::Interval { ms: 250 })
        );
        assert_eq!(
            FsyncPolicy::Interval { ms: 250 }.to_string(),
            "interval:250"
        );
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
