//! Damage every kind of file rilld writes while it is stopped; on start it must recover what
//! is valid, rebuild indexes, report what it dropped, and never serve a corrupt record.

use rill_client::{
    Admin, Client, ErrorCode, FetchOptions, OffsetSpec, Producer, ProducerConfig, ProducerRecord,
    TopicConfig,
};
use rill_e2e::Broker;
use rill_protocol::messages::{CommitOffsetsRequest, TopicPartition};
use std::path::{Path, PathBuf};
use std::time::Duration;

const RECORDS: u64 = 400;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst)
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// A cleanly stopped data directory: topic "c" (one partition, 4 KiB segments, many small
/// batches, timestamps 1000 + offset) and group "g" with committed offsets.
async fn pristine(root: &Path) -> PathBuf {
    let data = root.join("pristine");
    // Dense index entries: start-up then checks only each segment's last few batches, so a flip
    // early in a sealed segment is left for the read path to catch.
    let mut broker = Broker::start(&data, &["--index-interval-bytes", "64"]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let config = TopicConfig {
        segment_bytes: Some(4096),
        retention_ms: Some(0),
        ..TopicConfig::default()
    };
    Admin::new(client.clone())
        .create_topic("c", 1, config)
        .await
        .unwrap();
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 400,
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
    );
    for i in 0..RECORDS {
        let d = producer
            .send(ProducerRecord::new("c", format!("record-{i:04}")).timestamp(1000 + i as i64))
            .await
            .unwrap();
        d.await.unwrap();
    }
    let tp = TopicPartition {
        topic: rill_protocol::TopicName::new("c").unwrap(),
        partition: 0,
    };
    for o in [10, 20, 30] {
        client
            .call(&CommitOffsetsRequest {
                group: "g".into(),
                member_id: None,
                generation: None,
                offsets: vec![(tp.clone(), o)],
            })
            .await
            .unwrap();
    }
    drop((producer, client));
    broker.stop();
    data
}

/// Every record readable from `from`, in order, until the end or an error.
async fn read(client: &Client, from: u64) -> (Vec<(u64, String)>, Option<rill_client::Error>) {
    let options = FetchOptions {
        max_wait: Duration::ZERO,
        max_bytes: 1024,
        ..FetchOptions::default()
    };
    let (mut out, mut offset) = (Vec::new(), from);
    loop {
        match client.fetch("c", 0, offset, &options).await {
            Ok(r) if r.records.is_empty() => return (out, None),
            Ok(r) => {
                for rec in r.records {
                    out.push((rec.offset, String::from_utf8(rec.value.to_vec()).unwrap()));
                }
                offset = r.next_offset;
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

/// The base offset of the partition's second segment (the first one damage left alone).
fn second_segment_base(data: &std::path::Path) -> u64 {
    files(&data.join("topics/c/0"), "log")[1]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment file name is its base offset")
}

fn assert_intact(records: &[(u64, String)]) {
    for (o, v) in records {
        assert_eq!(v, &format!("record-{o:04}"), "record {o} came back altered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damaged_file_is_recovered_reported_or_refused_never_served() {
    let root = tempfile::tempdir().unwrap();
    let pristine = pristine(root.path()).await;
    let part = |data: &Path| data.join("topics/c/0");
    let case = |name: &str| {
        let data = root.path().join(name);
        copy_dir(&pristine, &data);
        data
    };

    // 1. A bit flip in the tail segment: cut there, reported, everything before intact.
    let data = case("tail");
    let tail = files(&part(&data), "log").pop().unwrap();
    let tail_len = std::fs::metadata(&tail).unwrap().len() as usize;
    flip(&tail, tail_len - 10);
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let (records, err) = read(&client, 0).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        (records.len() as u64) < RECORDS && records.len() as u64 > RECORDS - 40,
        "{} records left",
        records.len()
    );
    assert_intact(&records);
    let log = broker.log();
    assert!(
        log.contains("recovery cut data")
            && log.contains(tail.file_name().unwrap().to_str().unwrap()),
        "{log}"
    );
    drop((client, broker));

    // 2. A bit flip early in a sealed segment (not re-checked at start): refused on read, never
    // served; the rest reads.
    let data = case("sealed");
    let first = files(&part(&data), "log").remove(0);
    flip(&first, 70); // inside the first batch's records: covered by its CRC
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let (records, err) = read(&client, 0).await;
    assert_intact(&records);
    let err = err.expect("the corrupt batch must not be served");
    assert_eq!(err.code(), Some(ErrorCode::StorageError), "{err}");
    assert!(err.to_string().contains("CRC"), "{err}");
    let second_base = second_segment_base(&data);
    let (rest, err) = read(&client, second_base).await;
    assert!(err.is_none());
    assert_eq!(rest.len() as u64, RECORDS - second_base);
    assert!(broker.log().contains("corrupt batch on disk"));
    drop((client, broker));

    // 2b. A flip in a base offset, which the CRC does not cover: caught by offset continuity.
    let data = case("base-offset");
    let first = files(&part(&data), "log").remove(0);
    let first_len =
        u32::from_be_bytes(std::fs::read(&first).unwrap()[8..12].try_into().unwrap()) as usize + 12;
    flip(&first, first_len + 7); // low byte of the second batch's base offset
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let (records, err) = read(&client, 0).await;
    assert_intact(&records);
    let err = err.expect("a batch under the wrong offset must not be served");
    assert!(err.to_string().contains("out of sequence"), "{err}");
    drop((client, broker));

    // 2c. A bit flip at the end of a sealed segment: found at start (start-up checks a sealed
    // segment's last batches), kept, not cut: a read inside it gets `RecordsLost` naming the
    // range, and everything after it still reads.
    let data = case("sealed-end");
    let first = files(&part(&data), "log").remove(0);
    let len_before = std::fs::metadata(&first).unwrap().len();
    flip(&first, len_before as usize - 10);
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let (records, err) = read(&client, 0).await;
    assert_intact(&records);
    let err = err.expect("the damaged batch must not be served");
    assert_eq!(err.code(), Some(ErrorCode::RecordsLost), "{err}");
    let lost_from = records.last().map_or(0, |(o, _)| o + 1);
    assert!(
        err.to_string().contains(&format!("offsets {lost_from}..")),
        "the error names the lost range: {err}"
    );
    let second_base = second_segment_base(&data);
    let (rest, err) = read(&client, second_base).await;
    assert!(err.is_none(), "{err:?}");
    assert_intact(&rest);
    assert_eq!(rest.len() as u64, RECORDS - second_base);
    assert_eq!(
        std::fs::metadata(&first).unwrap().len(),
        len_before,
        "a sealed segment is never truncated"
    );
    assert!(
        broker.log().contains("corruption in a sealed segment"),
        "{}",
        broker.log()
    );
    drop((client, broker));

    // 3 and 4. Damaged offset and time indexes are detected (CRC) and rebuilt.
    for ext in ["index", "timeindex"] {
        let data = case(ext);
        for f in files(&part(&data), ext) {
            flip(&f, 5);
        }
        let broker = Broker::start(&data, &[]);
        let client = Client::connect(broker.addr()).await.unwrap();
        let (records, err) = read(&client, 0).await;
        assert!(err.is_none(), "{ext}: {err:?}");
        assert_eq!(records.len() as u64, RECORDS, "{ext}");
        assert_intact(&records);
        assert_eq!(
            client
                .list_offset("c", 0, OffsetSpec::Timestamp(1000 + 321))
                .await
                .unwrap(),
            Some(321),
            "{ext}"
        );
        assert!(broker.log().contains("rebuilt indexes"), "{ext}");
        drop((client, broker));
    }

    // 5. Damaged topic metadata: rebuilt from the partition directories, data kept, reported.
    let data = case("meta");
    flip(&data.join("topics/c/topic.meta"), 12);
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let described = Admin::new(client.clone())
        .describe_topic("c")
        .await
        .unwrap();
    assert_eq!(described.partitions.len(), 1);
    assert_eq!(
        described.config.retention_ms,
        Some(0),
        "a rebuilt topic keeps its data: retention off"
    );
    let (records, err) = read(&client, 0).await;
    assert!(err.is_none());
    assert_eq!(records.len() as u64, RECORDS);
    assert!(broker.log().contains("topic metadata is unreadable"));
    drop((client, broker));

    // 6. Damaged committed-offsets log: start-up goes on, the damage is reported.
    let data = case("offsets");
    for f in files(&data.join("groups/offsets"), "log") {
        let len = std::fs::metadata(&f).unwrap().len() as usize;
        flip(&f, len.saturating_sub(10));
    }
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    assert!(Admin::new(client.clone()).list_topics().await.is_ok());
    assert!(
        broker.log().contains("recovery cut data"),
        "{}",
        broker.log()
    );
    drop((client, broker));

    // 7. A truncated tail (a torn write): cut to the last whole batch.
    let data = case("torn");
    let tail = files(&part(&data), "log").pop().unwrap();
    let len = std::fs::metadata(&tail).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tail)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let broker = Broker::start(&data, &[]);
    let client = Client::connect(broker.addr()).await.unwrap();
    let (records, err) = read(&client, 0).await;
    assert!(err.is_none());
    assert!((records.len() as u64) < RECORDS);
    assert_intact(&records);
    assert!(broker.log().contains("recovery cut data"));
}

/// Every file under `dir`, recursively, that holds at least one byte.
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            all_files(&p, out);
        } else if std::fs::metadata(&p).unwrap().len() > 0 {
            out.push(p);
        }
    }
}

/// Damage at random places: cases from `RILL_CORRUPTION_CASES` (default 12), seed from
/// `RILL_CORRUPTION_SEED` (default: the clock, printed so a failure can be replayed). Each case
/// flips a byte in, or truncates, one to three random files of a cleanly stopped data
/// directory; the broker must start, serve only intact records (or refuse with a typed storage
/// error), keep a committed offset that was really committed, and keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_damage_never_crashes_the_broker_or_serves_a_corrupt_record() {
    let cases: usize = std::env::var("RILL_CORRUPTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("RILL_CORRUPTION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rill_e2e::now_ms() as u64);
    println!("corruption seed {seed} (replay: RILL_CORRUPTION_SEED={seed})");
    let mut state = seed | 1;
    let mut rand = move |n: usize| {
        // xorshift64*: plenty for picking files and positions.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    };
    let root = tempfile::tempdir().unwrap();
    let pristine = pristine(root.path()).await;
    let tp = TopicPartition {
        topic: rill_protocol::TopicName::new("c").unwrap(),
        partition: 0,
    };
    for case in 0..cases {
        let data = root.path().join(format!("random-{case}"));
        copy_dir(&pristine, &data);
        let mut files = Vec::new();
        all_files(&data, &mut files);
        let mut damage = Vec::new();
        for _ in 0..1 + rand(3) {
            let f = files[rand(files.len())].clone();
            let len = std::fs::metadata(&f).unwrap().len() as usize;
            let at = rand(len);
            if rand(2) == 0 {
                flip(&f, at);
                damage.push(format!("flip {}@{at}", f.display()));
            } else {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(at as u64)
                    .unwrap();
                damage.push(format!("truncate {} to {at}", f.display()));
            }
        }
        let what = format!("seed {seed} case {case}: {}", damage.join(", "));
        // The scrub runs on the damaged directory first (start-up repairs it).
        let (scrub_code, scrub) = check(&data);
        assert!(scrub_code == 0 || scrub_code == 1, "{what}: {scrub}");
        let broker = Broker::start(&data, &[]);
        let client = Client::connect(broker.addr()).await.unwrap();
        let start = client
            .list_offset("c", 0, OffsetSpec::Earliest)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or(0);
        let (records, err) = read(&client, start).await;
        assert_intact(&records);
        if let Some(e) = err {
            assert!(
                matches!(
                    e.code(),
                    Some(ErrorCode::StorageError | ErrorCode::RecordsLost)
                ),
                "{what}: {e}"
            );
        }
        let committed = client
            .call(&rill_protocol::messages::FetchOffsetsRequest {
                group: "g".into(),
                partitions: vec![tp.clone()],
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .0
            .offsets[0]
            .1;
        assert!(
            committed.is_none_or(|c| [10, 20, 30].contains(&c)),
            "{what}: committed offset {committed:?} was never committed"
        );
        assert!(
            Admin::new(client.clone()).list_topics().await.is_ok(),
            "{what}"
        );
        if (records.len() as u64) < RECORDS {
            assert!(
                scrub.contains("c/0: DAMAGED"),
                "{what}: {} records served, but rilld --check found c/0 intact:\n{scrub}",
                records.len()
            );
            let log = broker.log();
            assert!(
                [
                    "recovery cut data",
                    "corrupt batch on disk",
                    "corruption in a sealed segment",
                    "segments do not follow each other",
                ]
                .iter()
                .any(|m| log.contains(m)),
                "{what}: {} records served, and the broker log does not say why:\n{log}",
                records.len()
            );
        }
        println!(
            "{what}: {} of {RECORDS} records served intact",
            records.len()
        );
        drop((client, broker));
    }
}

/// `rilld --check` on a data directory; returns the exit code and the report.
fn check(data: &Path) -> (i32, String) {
    let out = std::process::Command::new(&rill_e2e::binaries().rilld)
        .arg("--check")
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run rilld --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), text)
}

/// The scrub finds what start-up deliberately does not scan (damage early in a sealed segment),
/// separates damage from rebuildable indexes, and refuses a directory a broker holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rilld_check_reports_damage_that_start_up_does_not_scan() {
    let root = tempfile::tempdir().unwrap();
    let pristine = pristine(root.path()).await;
    let (code, text) = check(&pristine);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("c/0: ok"), "{text}");
    assert!(text.contains("committed offsets: ok"), "{text}");
    assert!(
        text.contains("bytes: 0 damaged, 0 index files to rebuild"),
        "{text}"
    );
    assert!(text.contains(&format!("offsets 0..{RECORDS}")), "{text}");

    // Damage inside the first batch of a sealed segment.
    let data = root.path().join("sealed");
    copy_dir(&pristine, &data);
    let first = files(&data.join("topics/c/0"), "log").remove(0);
    flip(&first, 70);
    let (code, text) = check(&data);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("c/0: DAMAGED"), "{text}");
    assert!(
        text.contains(&format!("{}: bytes 0..", first.display())) && text.contains("CRC"),
        "{text}"
    );
    assert!(text.contains("bytes: 1 damaged,"), "{text}");

    // A damaged index is not damage: start-up rebuilds it.
    let data = root.path().join("index");
    copy_dir(&pristine, &data);
    let index = files(&data.join("topics/c/0"), "index").remove(0);
    flip(&index, 3);
    let (code, text) = check(&data);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "index to rebuild: {}:",
            index.with_extension("log").display()
        )),
        "{text}"
    );

    // Not while a broker runs on it.
    let broker = Broker::start(&pristine, &[]);
    let (code, text) = check(&pristine);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("in use by another rilld"), "{text}");
    drop(broker);
}
