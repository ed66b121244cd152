//! Record-batch encode, validate (the broker's per-produce check), decode, and raw CRC-32C.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rill_protocol::batch::{self, BatchBuilder, RecordIter, ValidBatch};
use std::hint::black_box;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch/encode");
    for value_len in [100usize, 1024] {
        let value = vec![7u8; value_len];
        g.throughput(Throughput::Elements(1000));
        g.bench_with_input(
            BenchmarkId::new("1000 records", value_len),
            &value,
            |b, value| {
                b.iter(|| {
                    let mut builder = BatchBuilder::with_capacity(1000 * (value_len + 24));
                    for i in 0..1000u64 {
                        builder.push(Some(&i.to_be_bytes()), value, &[], 1_700_000_000_000);
                    }
                    black_box(builder.finish())
                })
            },
        );
    }
}

fn validate_and_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch");
    for value_len in [100usize, 1024] {
        let input = rill_benches::batch(1000, value_len);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("validate", value_len),
            &input,
            |b, input| b.iter(|| black_box(batch::validate(input).map(|h| h.record_count))),
        );
        g.bench_with_input(BenchmarkId::new("decode", value_len), &input, |b, input| {
            b.iter(|| {
                RecordIter::new(input.clone())
                    .map(|it| it.map(|r| r.map_or(0, |r| r.value.len())).sum::<usize>())
            })
        });
        // What a consumer's batch API pays: validate once, then borrow each record.
        g.bench_with_input(BenchmarkId::new("views", value_len), &input, |b, input| {
            b.iter(|| {
                ValidBatch::new(input.clone())
                    .map(|v| v.records().map(|r| r.value.len()).sum::<usize>())
            })
        });
    }
}

fn crc(c: &mut Criterion) {
    let data = vec![0x5au8; 1 << 20];
    let mut g = c.benchmark_group("crc32c");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("1 MiB", |b| b.iter(|| black_box(crc32c::crc32c(&data))));
}

criterion_group!(benches, encode, validate_and_decode, crc);
criterion_main!(benches);
