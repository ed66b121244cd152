#!/usr/bin/env bash
# Idle cost of a cluster: three rilld nodes on loopback, one topic of 100 partitions with
# replication factor 3, nothing produced; CPU of each node over 30 s from /proc.
# Build first: cargo build --release --bin rilld --bin rill
set -euo pipefail
BIN=${BIN:-target/release}
PARTITIONS=${PARTITIONS:-100}
D=$(mktemp -d)
trap 'kill $(cat "$D/pids") 2>/dev/null || true; sleep 1; rm -rf "$D"' EXIT
P=1=127.0.0.1:27271,2=127.0.0.1:27272,3=127.0.0.1:27273
for i in 1 2 3; do
  "$BIN/rilld" --node-id "$i" --cluster-listen "127.0.0.1:2727$i" --peers "$P" \
    --listen "127.0.0.1:2717$i" --data-dir "$D/n$i" --metrics-listen off \
    > "$D/out$i" 2> "$D/log$i" &
  echo $! >> "$D/pids"
done
sleep 3
"$BIN/rill" --broker 127.0.0.1:27171,127.0.0.1:27172,127.0.0.1:27173 \
  topic create idle --partitions "$PARTITIONS"
sleep 15
"$BIN/rill" --broker 127.0.0.1:27171 cluster status | tail -1
ticks() { local s; s=($(cut -d' ' -f14,15 "/proc/$1/stat")); echo $((s[0] + s[1])); }
pids=($(cat "$D/pids"))
before=(); for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
sleep 30
hz=$(getconf CLK_TCK); total=0; per=""
for i in 0 1 2; do
  used=$(( $(ticks "${pids[$i]}") - before[i] ))
  total=$((total + used))
  per="$per $((used * 1000 / hz / 30))"
done
echo "idle, $PARTITIONS partitions x RF 3: per node${per} thousandths of one core; three nodes $((total * 1000 / hz / 30)) thousandths"
