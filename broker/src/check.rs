//! `rilld --check`: scrub a stopped broker's data directory and say what is damaged.
//!
//! Every topic's metadata and every partition log (the committed-offsets log too) is checked
//! with [`log::check_partition`](crate::log::check_partition); nothing is written. One line per
//! partition as it goes, then a summary. Damage means records that are unreadable or missing;
//! index files that start-up would rebuild are listed but are not damage.

use crate::log::{PartitionCheck, check_partition};
use std::io::Write;
use std::path::Path;

/// Totals of a data-directory check.
#[derive(Debug, Default)]
pub struct Summary {
    pub topics: usize,
    pub partitions: usize,
    pub segments: usize,
    pub bytes: u64,
    pub damaged: usize,
    pub rebuilds: usize,
}

impl Summary {
    /// True when nothing stored is damaged.
    pub fn intact(&self) -> bool {
        self.damaged == 0
    }
}

/// Checks the data directory `dir`, writing the report to `out`. Fails if a broker holds the
/// directory or a file cannot be read at all.
pub fn check_data_dir(dir: &Path, out: &mut impl Write) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        dir.join("topics").is_dir(),
        "{} is not a rilld data directory (no topics/ in it)",
        dir.display()
    );
    let _lock = crate::server::lock_data_dir(dir)?;
    let mut sum = Summary::default();
    let mut topics: Vec<_> = std::fs::read_dir(dir.join("topics"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    topics.sort();
    for topic in topics {
        sum.topics += 1;
        let name = topic.file_name().unwrap_or_default().to_string_lossy();
        let mut parts: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(&topic)?
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect();
        parts.sort();
        match crate::topics::read_meta(&crate::storage::Disk, &topic) {
            Ok(meta) if meta.partitions as usize != parts.len() => {
                sum.damaged += 1;
                writeln!(
                    out,
                    "{name}: DAMAGED: topic.meta says {} partitions, {} directories found",
                    meta.partitions,
                    parts.len()
                )?;
            }
            Ok(_) => {}
            Err(e) => {
                sum.rebuilds += 1;
                writeln!(
                    out,
                    "{name}: topic.meta unreadable ({e}); start-up rebuilds it from the partition directories with default settings"
                )?;
            }
        }
        for (p, path) in parts {
            report(
                &format!("{name}/{p}"),
                &check_partition(&path)?,
                &mut sum,
                out,
            )?;
        }
    }
    let offsets = dir.join("groups").join("offsets");
    if offsets.is_dir() {
        report(
            "committed offsets",
            &check_partition(&offsets)?,
            &mut sum,
            out,
        )?;
    }
    writeln!(
        out,
        "checked {} topics, {} partitions, {} segments, {} bytes: {} damaged, {} index files to rebuild",
        sum.topics, sum.partitions, sum.segments, sum.bytes, sum.damaged, sum.rebuilds
    )?;
    Ok(sum)
}

fn report(
    label: &str,
    c: &PartitionCheck,
    sum: &mut Summary,
    out: &mut impl Write,
) -> std::io::Result<()> {
    sum.partitions += 1;
    sum.segments += c.segments;
    sum.bytes += c.bytes;
    sum.rebuilds += c.rebuilds.len();
    let state = if c.damage.is_empty() {
        "ok"
    } else {
        sum.damaged += 1;
        "DAMAGED"
    };
    writeln!(
        out,
        "{label}: {state}: {} segments, offsets {}..{}, {} bytes",
        c.segments, c.start_offset, c.end_offset, c.bytes
    )?;
    for d in &c.damage {
        writeln!(out, "  damage: {d}")?;
    }
    for r in &c.rebuilds {
        writeln!(out, "  index to rebuild: {r}")?;
    }
    Ok(())
}
