//! A full disk: produce fails with a typed, retriable error, nothing acknowledged is damaged,
//! reads keep working, and writes succeed again once space is freed. Runs on a small tmpfs the
//! test mounts itself (CI and developers run as root on this project's machines).

use rill_client::{Admin, Client, ErrorCode, FetchOptions, TopicConfig};
use rill_e2e::Broker;
use rill_protocol::batch::BatchBuilder;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs of `mib` MiB, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (this test needs root)",
            dir.display()
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(i: u64) -> bytes::Bytes {
    let mut b = BatchBuilder::with_capacity(70_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for k in 0..64 {
        let mut v = format!("batch-{i}-record-{k}-").into_bytes();
        v.resize(1000, b'x');
        b.push(None, &v, &[], now);
    }
    b.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&root.path().join("disk"), 8);
    let data = disk.0.join("data");
    // Ballast to free later: 2 MiB of the 8.
    let ballast = disk.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 << 20]).unwrap();

    let mut broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let config = TopicConfig {
        segment_bytes: Some(1 << 20),
        ..TopicConfig::default()
    };
    Admin::new(client.clone())
        .create_topic("full", 1, config)
        .await
        .unwrap();

    // Produce ~64 KiB batches one at a time until the disk is full (bounded: 8 MiB / 64 KiB).
    let mut acked = Vec::new();
    let full = loop {
        assert!(acked.len() < 200, "the 8 MiB disk never filled");
        match client
            .send_batch("full", 0, batch(acked.len() as u64))
            .await
            .unwrap()
            .await
        {
            Ok(base) => acked.push(base),
            Err(e) => break e,
        }
    };
    assert_eq!(full.code(), Some(ErrorCode::DiskFull), "{full}");
    assert!(full.is_retriable());
    assert!(acked.len() > 20, "only {} batches fit", acked.len());

    // Still full: refused again, reads of everything acknowledged work, the broker is healthy.
    let again = client
        .send_batch("full", 0, batch(999))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::DiskFull));
    let read_all = |client: Client| async move {
        let options = FetchOptions {
            max_wait: Duration::ZERO,
            max_bytes: 1 << 20,
            ..FetchOptions::default()
        };
        let (mut n, mut offset) = (0u64, 0u64);
        loop {
            let r = client.fetch("full", 0, offset, &options).await.unwrap();
            if r.records.is_empty() {
                return (n, r.high_watermark);
            }
            for rec in &r.records {
                let (b, k) = (rec.offset / 64, rec.offset % 64);
                assert!(
                    rec.value
                        .starts_with(format!("batch-{b}-record-{k}-").as_bytes()),
                    "record {} damaged",
                    rec.offset
                );
            }
            n += r.records.len() as u64;
            offset = r.next_offset;
        }
    };
    let (read, end) = read_all(client.clone()).await;
    assert_eq!(
        (read, end),
        (acked.len() as u64 * 64, acked.len() as u64 * 64),
        "every acknowledged record reads back, nothing more"
    );
    assert!(Admin::new(client.clone()).list_topics().await.is_ok());
    assert!(
        broker.log().contains("disk full") || broker.log().contains("DiskFull"),
        "{}",
        broker.log()
    );

    // Space returns: writes succeed again, continuing the offsets.
    std::fs::remove_file(&ballast).unwrap();
    let base = client
        .send_batch("full", 0, batch(acked.len() as u64))
        .await
        .unwrap()
        .await
        .expect("writes resume");
    assert_eq!(base, acked.len() as u64 * 64);

    // And the log is whole after a restart.
    drop(client);
    broker.stop();
    broker.restart();
    let client = Client::connect(broker.addr()).await.unwrap();
    let (read, _) = read_all(client).await;
    assert_eq!(read, (acked.len() as u64 + 1) * 64);
    broker.stop();
    drop(disk);
}
