#!/bin/bash
# Run from the repository root after: cargo build --release --bin rilld; cargo build --bin rill
# Issue 14, acceptance 2: 100 wrong attempts from one client, timed (each a new connection
# with a wrong password through `rill`, one after another).
set -u
D=$(mktemp -d)
RILL_SUPERUSER_PASSWORD=right ./target/release/rilld --data-dir $D/data --listen 127.0.0.1:0 \
  --metrics-listen off --auth --superuser admin > $D/out 2> $D/log &
PID=$!
for i in $(seq 50); do grep -q "listening on" $D/out 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's/^rilld listening on \([^,]*\),.*/\1/p' $D/out)
START=$(date +%s.%N)
for i in $(seq 100); do
  T0=$(date +%s.%N)
  RILL_PASSWORD=wrong timeout 120 ./target/debug/rill --broker $ADDR --user admin topic list > /dev/null 2> $D/err
  T1=$(date +%s.%N)
  echo "$i $(echo "$T1 - $T0" | bc) $(echo "$T1 - $START" | bc) $(head -c 120 $D/err | tr '\n' ' ')"
done
T0=$(date +%s.%N)
RILL_PASSWORD=right ./target/debug/rill --broker $ADDR --user admin topic list > /dev/null 2>&1; echo "right password after: exit $? in $(echo "$(date +%s.%N) - $T0" | bc) s"
echo "failures logged: $(grep -c 'authentication failed' $D/log)"
kill $PID; wait $PID 2>/dev/null; rm -rf $D
