//! The `rilld` (or the cluster of them) started by the benchmark on a temporary directory,
//! and its resource use.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct Spawned {
    /// One process per node (one for a single broker).
    children: Vec<Child>,
    /// Client addresses, comma-separated (what `Client::connect` takes).
    pub addr: String,
    /// With TLS: the CA that signed the broker's certificate, for the clients to trust.
    pub ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `rilld` (from `path`, or next to this executable) on a free loopback port; with
    /// `nodes` above 1, that many nodes forming a cluster (node ids 1..=nodes, each with its
    /// own data directory and cluster port).
    /// With `tls`, each node serves TLS with a certificate for 127.0.0.1 from a CA made here.
    pub fn start(
        path: Option<PathBuf>,
        extra: &[String],
        env: &[(&str, &str)],
        nodes: usize,
        tls: bool,
    ) -> anyhow::Result<Spawned> {
        let rilld = match path {
            Some(p) => p,
            None => std::env::current_exe()?.with_file_name("rilld"),
        };
        let dir = tempfile::tempdir()?;
        let (ca, tls_args) = match tls {
            true => {
                let (ca, cert, key) = make_certificates(dir.path())?;
                let args = vec![
                    "--tls-cert".to_string(),
                    cert.display().to_string(),
                    "--tls-key".to_string(),
                    key.display().to_string(),
                ];
                (Some(ca), args)
            }
            false => (None, Vec::new()),
        };
        // Cluster ports must be known before any node starts: free ones, taken from the OS.
        let cluster_ports: Vec<u16> = match nodes {
            0 | 1 => Vec::new(),
            n => {
                let held: Vec<std::net::TcpListener> = (0..n)
                    .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                    .collect::<Result<_, _>>()?;
                held.iter()
                    .map(|l| l.local_addr().map(|a| a.port()))
                    .collect::<Result<_, _>>()?
            }
        };
        let peers = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for node in 0..nodes.max(1) {
            let data = dir.path().join(format!("n{}", node + 1));
            let mut cmd = Command::new(&rilld);
            cmd.args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "off",
                "--kafka-listen",
                "off",
                "--log-level",
                "warn",
                "--data-dir",
            ])
            .arg(&data)
            .args(extra)
            .args(&tls_args)
            .envs(env.iter().copied());
            if let Some(port) = cluster_ports.get(node) {
                cmd.args(["--node-id", &(node + 1).to_string()])
                    .args(["--cluster-listen", &format!("127.0.0.1:{port}")])
                    .args(["--peers", &peers]);
            }
            // A cluster's nodes log elections and unreachable peers at warn: to files.
            let stderr = match nodes {
                0 | 1 => Stdio::inherit(),
                _ => Stdio::from(std::fs::File::create(data.with_extension("log"))?),
            };
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(stderr)
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
            addrs.push(addr.to_string());
            children.push(child);
        }
        Ok(Spawned {
            addr: addrs.join(","),
            children,
            ca,
            _dir: dir,
        })
    }

    /// The CA file clients trust when the broker serves TLS.
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    pub fn nodes(&self) -> usize {
        self.children.len()
    }

    /// CPU seconds (user + system) the broker (every node) has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let mut total = 0.0;
        for child in &self.children {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            total += ticks / 100.0; // USER_HZ
        }
        Some(total)
    }

    /// Peak resident set size in MiB (summed over the nodes).
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let mut total = 0.0;
        for child in &self.children {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
            let kib: f64 = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            total += kib / 1024.0;
        }
        Some(total)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files in `dir`: (CA, cert, key).
fn make_certificates(dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rill-bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?
        .signed_by(&key, &ca, &ca_key)?;
    let paths = (
        dir.join("ca.pem"),
        dir.join("broker.pem"),
        dir.join("broker.key"),
    );
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}
