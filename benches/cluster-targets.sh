#!/bin/bash
# The replication issue's throughput and latency targets, single node and three nodes
# alternating, ROUNDS rounds (default 3), `sync` before each run so one run's writeback does not
# land in the next. Build first: cargo build --release --bin rilld --bin rill-bench
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/rill-bench
ROUNDS=${ROUNDS:-3}
run() {
    sync
    echo "== $*"
    $B "$@" 2>&1 | grep -E "^(produce|latency) |latency  p50"
}
for round in $(seq "$ROUNDS"); do
    echo "# round $round"
    for mode in --spawn-broker "--cluster 3"; do
        # shellcheck disable=SC2086
        run $mode produce --messages 2000000 --batch 4096 --in-flight 1
        # shellcheck disable=SC2086
        run $mode produce --messages 2000000 --api producer
        # shellcheck disable=SC2086
        run $mode produce --message-size 1024 --messages 500000 --batch 256 --in-flight 16
        # shellcheck disable=SC2086
        run $mode produce --message-size 1024 --messages 500000 --api producer
    done
done
for mode in --spawn-broker "--cluster 3"; do
    # shellcheck disable=SC2086
    run $mode latency --rate 10000 --duration 10
done
