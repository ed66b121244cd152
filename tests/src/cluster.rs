//! A cluster of real `rilld` nodes on loopback, for replication tests.

use super::Broker;
use crate::link::Link;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Several `rilld` processes forming one cluster; node `i` (from 1) is `nodes[i - 1]`.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Broker>,
    pub cluster_addrs: Vec<String>,
    /// With [`Cluster::start_linked`]: node j reaches node k through `links[(j, k)]`.
    links: BTreeMap<(u64, u64), Link>,
    root: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes under `root` (`root/n1`, ...), each with `extra` flags.
    pub fn start(root: &Path, n: u64, extra: &[&str]) -> Cluster {
        Self::launch(root, n, extra, &[], false)
    }

    /// [`Cluster::start`] with these environment variables set for every node.
    pub fn start_with_env(root: &Path, n: u64, extra: &[&str], env: &[(&str, &str)]) -> Cluster {
        Self::launch(root, n, extra, env, false)
    }

    /// Like [`Cluster::start`], but every node reaches every other through its own proxied
    /// link, which [`Cluster::isolate`] cuts: a network partition the test controls.
    pub fn start_linked(root: &Path, n: u64, extra: &[&str]) -> Cluster {
        Self::launch(root, n, extra, &[], true)
    }

    fn launch(root: &Path, n: u64, extra: &[&str], env: &[(&str, &str)], linked: bool) -> Cluster {
        let cluster_addrs: Vec<String> = (0..n).map(|_| crate::fixed_addr()).collect();
        let mut links = BTreeMap::new();
        if linked {
            for j in 1..=n {
                for k in (1..=n).filter(|k| *k != j) {
                    links.insert((j, k), Link::start(cluster_addrs[k as usize - 1].clone()));
                }
            }
        }
        // Node `id`'s view: itself at its own address, the others through its links.
        let peers_of = |id: u64| {
            (1..=n)
                .map(|k| {
                    let addr = match links.get(&(id, k)) {
                        Some(link) => link.addr(),
                        None => &cluster_addrs[k as usize - 1],
                    };
                    format!("{k}={addr}")
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let nodes = (1..=n)
            .map(|id| {
                let id_s = id.to_string();
                let peers = peers_of(id);
                let mut args = vec![
                    "--node-id",
                    &id_s,
                    "--cluster-listen",
                    &cluster_addrs[id as usize - 1],
                    "--peers",
                    &peers,
                ];
                args.extend_from_slice(extra);
                Broker::start_with_env(&root.join(format!("n{id}")), &args, env)
            })
            .collect();
        Cluster {
            nodes,
            cluster_addrs,
            links,
            root: root.to_path_buf(),
        }
    }

    /// Starts one more node (the next id) that knows every node so far as a peer, as an
    /// operator adds a node to a running cluster: it asks to join by itself. Returns its id.
    /// (A cluster started with `start`, not `start_linked`.)
    pub fn add_node(&mut self, extra: &[&str]) -> u64 {
        assert!(self.links.is_empty(), "add_node does not link the new node");
        let id = self.nodes.len() as u64 + 1;
        self.cluster_addrs.push(crate::fixed_addr());
        let peers = self
            .cluster_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let id_s = id.to_string();
        let mut args = vec![
            "--node-id",
            &id_s,
            "--cluster-listen",
            &self.cluster_addrs[id as usize - 1],
            "--peers",
            &peers,
        ];
        args.extend_from_slice(extra);
        let node = Broker::start(&self.root.join(format!("n{id}")), &args);
        self.nodes.push(node);
        id
    }

    /// Cuts every link to and from node `id` (a cluster started with `start_linked`).
    pub fn isolate(&self, id: u64) {
        for ((j, k), link) in &self.links {
            if *j == id || *k == id {
                link.cut();
            }
        }
    }

    /// Heals every link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.heal();
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

    /// The size of every segment of a partition on node `id`, summed.
    pub fn partition_size(&self, id: u64, topic: &str, p: u32) -> u64 {
        std::fs::read_dir(self.partition_dir(id, topic, p))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The file names of a partition's segments on node `id`, in order.
    pub fn segment_names(&self, id: u64, topic: &str, p: u32) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.partition_dir(id, topic, p))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
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
