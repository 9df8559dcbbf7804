#!/bin/bash
# Idle cost of sockmsg-node: key manager and proxy as their own processes, five release
# nodes on loopback, measured from /proc over IDLE_SECS (60). Build first:
#   cargo build --release -p sockmsg-node -p sockmsg-keymgr -p sockmsg-proxy
R=${R:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
D=${TMPDIR:-/tmp}/sockmsg-idle; rm -rf $D; mkdir -p $D; export XDG_DATA_HOME=$D
FP=$($R/sockmsg-keymgr init --data-dir $D/km 2>&1 | grep -oE '[0-9a-f]{64}' | head -1)
$R/sockmsg-keymgr serve --data-dir $D/km --listen 127.0.0.1:17401 >/dev/null 2>&1 & KM=$!
$R/sockmsg-proxy --listen 127.0.0.1:17400 --keymgr 127.0.0.1:17401 --keymgr-fingerprint $FP --data-dir $D/px >/dev/null 2>&1 & PX=$!
sleep 0.5
pids=()
for n in n1 n2 n3 n4 n5; do
  rm -f $D/$n.in; mkfifo $D/$n.in
  $R/sockmsg-node --name $n --json --bind 127.0.0.1:0 --proxy 127.0.0.1:17400 --keymgr 127.0.0.1:17401 < $D/$n.in > $D/$n.out 2>/dev/null &
  pids+=($!)
  exec {fd}>$D/$n.in
  sleep 1.5
done
sleep 10
hz=$(getconf CLK_TCK)
declare -A t0
for p in "${pids[@]}" $KM $PX; do t0[$p]=$(awk '{print $14+$15}' /proc/$p/stat); done
sleep ${IDLE_SECS:-60}
for p in "${pids[@]}" $KM $PX; do
  t1=$(awk '{print $14+$15}' /proc/$p/stat)
  rss=$(awk '/VmRSS/ {print $2}' /proc/$p/status)
  echo "$(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-60) | rss ${rss} kB cpu $(echo "scale=3; ($t1-${t0[$p]})*100/$hz/${IDLE_SECS:-60}" | bc) %"
done
grep '"leader"' $D/n3.out | tail -1
kill ${pids[@]} $KM $PX
