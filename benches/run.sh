#!/usr/bin/env bash
# Reruns every rill-bench scenario of BENCHMARKS.md and prints its results table (markdown).
# Each scenario starts its own rilld on a temporary directory (--spawn-broker).
# Usage: benches/run.sh [extra rill-bench flags]      e.g. benches/run.sh --in-flight 16
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin rilld --bin rill-bench
bench=target/release/rill-bench
results=$(mktemp)
trap 'rm -f "$results"' EXIT

run() {
    local label=$1
    shift
    echo "running: $label" >&2
    local json
    json=$("$bench" --spawn-broker --json "$@" "${EXTRA[@]}" 2>/dev/null)
    printf '%s\t%s\t%s\n' "$label" "$*" "$json" >>"$results"
}
EXTRA=("$@")

run "produce, 1 producer, 1 partition, 100 B, fsync=always" produce --messages 10000000
run "produce, same, fsync=interval:1000" --fsync interval:1000 produce --messages 10000000
run "consume the same from the start (PartitionReader::next, defaults)" consume --messages 10000000
run "consume the same, records read in place (PartitionReader::poll_batch, defaults)" consume --reader batches --messages 10000000
run "consume as a group (2 members, 4 partitions)" group-consume --partitions 4 --consumers 2 --messages 5000000
run "consume as a group, next_batch and commit_async after every batch" group-consume --reader batches --commit async --messages 5000000
run "produce 1 KiB, fsync=always" produce --message-size 1024 --messages 1000000
run "produce 1 KiB, fsync=interval:1000" --fsync interval:1000 produce --message-size 1024 --messages 1000000
run "consume 1 KiB (PartitionReader::next)" consume --message-size 1024 --messages 1000000
run "consume 1 KiB (PartitionReader::poll_batch)" consume --reader batches --message-size 1024 --messages 1000000
run "produce, 4 producers, 100 B, fsync=always" produce --producers 4 --messages 10000000
run "produce, 4 producers, 100 partitions" produce --producers 4 --partitions 100 --messages 10000000
run "produce and consume together, 100 B" produce-consume --messages 5000000
run "end-to-end latency at 10,000 msg/s, 100 B, fsync=always" latency --rate 10000 --duration 10
run "produce 100 B through the per-record Producer API (its defaults: 256 KiB batches, 5 in flight, linger 5 ms)" produce --api producer --messages 5000000
run "latency at 10,000 msg/s alone, then beside 1,000 idle connections and 40,000 tiny requests/s (fsync=interval:1000)" --fsync interval:1000 hostile --rate 10000 --duration 10

python3 - "$results" <<'PY'
import json, sys
print("| scenario | msgs/s | MB/s | latency p50 / p99 / p99.9 / max | broker CPU | broker peak RSS | rill-bench arguments |")
print("| --- | ---: | ---: | --- | ---: | ---: | --- |")
for line in open(sys.argv[1]):
    label, args, raw = line.rstrip("\n").split("\t")
    r = json.loads(raw)
    phase = "latency" if "latency_msgs_per_sec" in r else ("consume" if "consume_msgs_per_sec" in r and "produce_msgs_per_sec" not in r else "produce")
    rates = []
    for p in ("produce", "consume", "latency", "abused"):
        if f"{p}_msgs_per_sec" in r:
            rates.append((p, r[f"{p}_msgs_per_sec"], r[f"{p}_mb_per_sec"]))
    msgs = " / ".join(f"{m:,.0f}" + (f" ({p})" if len(rates) > 1 else "") for p, m, _ in rates)
    mbs = " / ".join(f"{b:,.1f}" for _, _, b in rates)
    lat = ""
    for p in ("latency", "consume", "produce"):
        if f"{p}_p50_us" in r:
            kind = "end to end" if p != "produce" else "batch ack"
            lat = f"{r[f'{p}_p50_us']/1000:.2f} / {r[f'{p}_p99_us']/1000:.2f} / {r[f'{p}_p999_us']/1000:.2f} / {r[f'{p}_max_us']/1000:.2f} ms ({kind})"
            break
    if "abused_p50_us" in r:
        ms = lambda p: f"{r[f'{p}_p50_us']/1000:.2f} / {r[f'{p}_p99_us']/1000:.2f} / {r[f'{p}_p999_us']/1000:.2f}"
        lat = f"alone {ms('alone')}, abused {ms('abused')} ms (end to end; ratio p50 {r['p50_ratio']:.2f}x, p99 {r['p99_ratio']:.2f}x, p99.9 {r['p999_ratio']:.2f}x)"
    cpu = f"{r['broker_cpu_percent']}%" if "broker_cpu_percent" in r else ""
    rss = f"{r['broker_peak_rss_mib']} MiB" if "broker_peak_rss_mib" in r else ""
    print(f"| {label} | {msgs} | {mbs} | {lat} | {cpu} | {rss} | `{args}` |")
PY
