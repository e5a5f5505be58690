#!/usr/bin/env bash
# perf/swap-pause.sh: the longest pause an NBD client sees across a hot swap (issue 16).
#
# For each client count (CLIENTS, default "1 16"): a fresh engine on file targets, fio's nbd
# engine doing 4 KiB random writes at QD 1 per client (one connection each) for RUNTIME
# seconds, first without a swap (the baseline maximum latency), then with SWAPS swaps
# (`strata system swap --binary` to the same build) spread over the run. The longest pause a
# client sees is fio's maximum completion latency (lat_ns.max over every job); the swap's own
# breakdown (freeze, checkpoint, hand-off, open, as the old engine measured them) comes from
# `system swap --json`. Then the baseline a user has today: `system stop` and a new
# `strata-engine run`, timed from the stop request to the new engine's NBD listener answering
# (a client with qemu's reconnect-delay waits at least that long).
# Nothing here asserts a timing. Needs fio and a Release build (./build.sh build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DLL="$ROOT/build/bin/Strata.Engine.Host/Release/net10.0/strata-engine.dll"
CLI_DLL="$ROOT/build/bin/Strata.Cli/Release/net10.0/strata.dll"
CLIENTS="${CLIENTS:-1 16}"
RUNTIME="${RUNTIME:-20}"
SWAPS="${SWAPS:-3}"
command -v fio >/dev/null || { echo "swap-pause: fio is not on PATH (apt-get install fio)" >&2; exit 1; }

ms() { python3 -c "import sys,json; t=open(sys.argv[1]).read(); d=json.loads(t[t.index('{'):]); print(round(d['jobs'][0]['write']['lat_ns']['max']/1e6,1), round(d['jobs'][0]['write']['iops']))" "$1"; }

run_fio() { # $1 clients, $2 output file
  fio --name=pause --ioengine=nbd --uri="nbd+unix:///p/c/img?socket=$DIR/data/run/nbd.sock" --rw=randwrite --bs=4k \
    --numjobs="$1" --iodepth=1 --size=32M --offset_increment=32M --time_based --runtime="$RUNTIME" --randrepeat=0 \
    --group_reporting --output-format=json >"$2"
}

start_engine() {
  dotnet "$DLL" run --config "$DIR/strata.yaml" --data-dir "$DIR/data" >>"$DIR/engine.log" 2>&1 &
  until $STRATA system query >/dev/null 2>&1; do sleep 0.1; done
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
printf '%-8s %-22s %-12s %-10s %s\n' clients case max-pause-ms iops "swap breakdown (ms): total / freeze / checkpoint / hand-off / open"
for n in $CLIENTS; do
  DIR="$(mktemp -d /tmp/strata-swap-perf.XXXXXX)"
  STRATA="dotnet $CLI_DLL --socket $DIR/data/run/strata.sock"
  cat >"$DIR/strata.yaml" <<YAML
targets:
  - file:$DIR/data/t0.img?create=1&size=4G
  - file:$DIR/data/t1.img?create=1&size=4G
nbd:
  - unix:run/nbd.sock
YAML
  start_engine
  $STRATA pool create p --size 6G >/dev/null
  $STRATA cont create p c >/dev/null
  $STRATA image create p c img --size 1G >/dev/null

  run_fio "$n" "$DIR/base.json"
  read -r base iops <<<"$(ms "$DIR/base.json")"
  printf '%-8s %-22s %-12s %-10s\n' "$n" "no swap" "$base" "$iops"

  run_fio "$n" "$DIR/swap.json" &
  fio_pid=$!
  gap=$(( RUNTIME / (SWAPS + 1) ))
  : >"$DIR/swaps.jsonl"
  for _ in $(seq "$SWAPS"); do
    sleep "$gap"
    $STRATA system swap --binary "$DLL" --json | tr -d '\n' >>"$DIR/swaps.jsonl"
    echo >>"$DIR/swaps.jsonl"
  done
  wait "$fio_pid"
  read -r worst iops <<<"$(ms "$DIR/swap.json")"
  breakdown=$(python3 -c "
import json,sys
for l in open(sys.argv[1]):
    if l.strip():
        d=json.loads(l); print('%.0f / %.0f / %.0f / %.0f / %.0f' % (d['totalMs'],d['freezeMs'],d['checkpointMs'],d['handoffMs'],d['openMs']), end='; ')
" "$DIR/swaps.jsonl")
  printf '%-8s %-22s %-12s %-10s %s\n' "$n" "$SWAPS swaps" "$worst" "$iops" "$breakdown"

  # Stop-and-restart: from the stop request until the NBD listener answers again.
  t0=$(date +%s.%N)
  $STRATA system stop >/dev/null
  start_engine
  until qemu-img info "nbd+unix:///p/c/img?socket=$DIR/data/run/nbd.sock" >/dev/null 2>&1; do sleep 0.05; done
  t1=$(date +%s.%N)
  printf '%-8s %-22s %-12s\n' "$n" "stop+restart (window)" "$(python3 -c "print(round(($t1-$t0)*1000))")"
  $STRATA system stop >/dev/null
  rm -rf "$DIR"
done
