//! A cluster of real `rilld` nodes on loopback, for replication tests.

use super::Broker;
use std::path::{Path, PathBuf};

/// Several `rilld` processes forming one cluster; node `i` (from 1) is `nodes[i - 1]`.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Broker>,
    pub cluster_addrs: Vec<String>,
    root: PathBuf,
}

/// A free loopback port (bound and released; nothing else on a test machine races for it).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").to_string()
}

impl Cluster {
    /// Starts `n` nodes under `root` (`root/n1`, ...), each with `extra` flags.
    pub fn start(root: &Path, n: u64, extra: &[&str]) -> Cluster {
        let cluster_addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let peers = cluster_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|id| {
                let id_s = id.to_string();
                let mut args = vec![
                    "--node-id",
                    &id_s,
                    "--cluster-listen",
                    &cluster_addrs[id as usize - 1],
                    "--peers",
                    &peers,
                ];
                args.extend_from_slice(extra);
                Broker::start(&root.join(format!("n{id}")), &args)
            })
            .collect();
        Cluster {
            nodes,
            cluster_addrs,
            root: root.to_path_buf(),
        }
    }

    /// Client addresses of the running nodes, comma-separated.
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`'s broker.
    pub fn node(&mut self, id: u64) -> &mut Broker {
        &mut self.nodes[id as usize - 1]
    }

    /// Where node `id` keeps partition `p` of `topic`.
    pub fn partition_dir(&self, id: u64, topic: &str, p: u32) -> PathBuf {
        self.root
            .join(format!("n{id}"))
            .join("topics")
            .join(topic)
            .join(p.to_string())
    }

    /// The bytes of every segment of a partition on node `id`, concatenated in order.
    pub fn partition_bytes(&self, id: u64, topic: &str, p: u32) -> Vec<u8> {
        let dir = self.partition_dir(id, topic, p);
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        logs.iter()
            .flat_map(|p| std::fs::read(p).unwrap_or_default())
            .collect()
    }
}
