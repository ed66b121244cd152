//! A `rilld` started by the benchmark on a temporary directory, and its resource use.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `rilld` (from `path`, or next to this executable) on a free loopback port.
    pub fn start(path: Option<PathBuf>, extra: &[String]) -> anyhow::Result<Spawned> {
        let rilld = match path {
            Some(p) => p,
            None => std::env::current_exe()?.with_file_name("rilld"),
        };
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(&rilld)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--log-level",
                "warn",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with: cargo build --release --bin rilld)",
                    rilld.display()
                )
            })?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("rilld stdout")?).read_line(&mut line)?;
        let Some(addr) = line
            .strip_prefix("rilld listening on ")
            .and_then(|r| r.split(',').next())
        else {
            let _ = child.kill();
            bail!("rilld did not start: {line:?}");
        };
        Ok(Spawned {
            addr: addr.to_string(),
            child,
            _dir: dir,
        })
    }

    /// CPU seconds (user + system) the broker has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0) // USER_HZ
    }

    /// Peak resident set size in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
