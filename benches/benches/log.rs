//! The partition log: append (both fsync policies), and reads that go through the sparse index.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rill_broker::log::{LogConfig, PartitionLog};
use rill_protocol::FsyncPolicy;
use std::hint::black_box;

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        index_interval_bytes: 4096,
        fsync,
        retention_ms: 0,
        retention_bytes: 0,
        producer_expiration_ms: 86_400_000,
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log/append 64 batches of 1000 x 100 B");
    g.sample_size(10);
    let batch = rill_benches::batch(1000, 100);
    g.throughput(Throughput::Elements(64 * 1000));
    for (name, fsync) in [
        ("always", FsyncPolicy::Always),
        ("interval:1000", FsyncPolicy::Interval { ms: 1000 }),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _) = PartitionLog::open(dir.path(), "bench-0".into(), config(fsync), true)
            .expect("open log");
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                // 64 appends queued at once: the writer group-commits them.
                let pending: Vec<_> = (0..64)
                    .map(|_| log.append(batch.clone()).expect("queued"))
                    .collect();
                for p in pending {
                    black_box(p.wait_blocking().expect("appended"));
                }
            })
        });
    }
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = PartitionLog::open(
        dir.path(),
        "bench-0".into(),
        config(FsyncPolicy::Interval { ms: 1000 }),
        true,
    )
    .expect("open log");
    let batch = rill_benches::batch(100, 100);
    let pending: Vec<_> = (0..2000)
        .map(|_| log.append(batch.clone()).expect("queued"))
        .collect();
    for p in pending {
        p.wait_blocking().expect("appended");
    }
    let end = log.high_watermark();
    let mut g = c.benchmark_group("log/read");
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("1 MiB from a random offset", |b| {
        let mut offset = 12_345u64;
        b.iter(|| {
            offset = (offset * 7919 + 13) % end;
            black_box(log.read(offset, 1 << 20).expect("read").batches.len())
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("index lookup + first batch", |b| {
        let mut offset = 777u64;
        b.iter(|| {
            offset = (offset * 7919 + 13) % end;
            black_box(log.read(offset, 1).expect("read").batches.len())
        })
    });
}

criterion_group!(benches, append, read);
criterion_main!(benches);
