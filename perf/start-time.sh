#!/usr/bin/env bash
# perf/start-time.sh: how long `strata-engine run` takes from its start until the control API and NBD
# answer, on the swap benchmark's targets (two 4 GiB files, pool 6 GiB, image 1 GiB) after fio wrote
# through the pools' logs, and where the storage open spent it (log events 1015 and 1016).
# ENGINE_DLL picks another build (e.g. main's, for a before/after); STARTS (default 5) starts are timed.
# Nothing here asserts a timing. Needs fio and a Release build (./build.sh build).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DLL="${ENGINE_DLL:-$ROOT/build/bin/Strata.Engine.Host/Release/net10.0/strata-engine.dll}"
CLI_DLL="$ROOT/build/bin/Strata.Cli/Release/net10.0/strata.dll"
STARTS="${STARTS:-5}"
FILL="${FILL:-20}"
command -v fio >/dev/null || { echo "start-time: fio is not on PATH (apt-get install fio)" >&2; exit 1; }
DIR="$(mktemp -d /tmp/strata-start-perf.XXXXXX)"
STRATA="dotnet $CLI_DLL --socket $DIR/data/run/strata.sock"
cat >"$DIR/strata.yaml" <<YAML
targets:
  - file:$DIR/data/t0.img?create=1&size=4G
  - file:$DIR/data/t1.img?create=1&size=4G
nbd:
  - unix:run/nbd.sock
YAML
now() { date +%s.%N; }
start_engine() {
  dotnet "$DLL" run --config "$DIR/strata.yaml" --data-dir "$DIR/data" >"$DIR/engine.log" 2>&1 &
  ENGINE=$!
  until $STRATA system query >/dev/null 2>&1; do sleep 0.02; done
}
start_engine
$STRATA pool create p --size 6G >/dev/null
$STRATA cont create p c >/dev/null
$STRATA image create p c img --size 1G >/dev/null
# Writes through the logs (every round is a batch; the log checkpoints when half full and wraps).
fio --name=fill --ioengine=nbd --uri="nbd+unix:///p/c/img?socket=$DIR/data/run/nbd.sock" --rw=randwrite --bs=4k \
  --numjobs=16 --iodepth=1 --size=32M --offset_increment=32M --time_based --runtime="$FILL" --randrepeat=0 \
  --group_reporting >/dev/null
$STRATA system stop >/dev/null
wait "$ENGINE"
echo "engine: $DLL; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$STARTS"); do
  t0=$(now)
  start_engine
  until qemu-img info "nbd+unix:///p/c/img?socket=$DIR/data/run/nbd.sock" >/dev/null 2>&1; do sleep 0.02; done
  t1=$(now)
  printf 'start %d: %s ms to listener-ready; %s\n' "$i" "$(python3 -c "print(round(($t1-$t0)*1000))")" \
    "$(grep -hoE '(storage opened|pool p opened) in .*' "$DIR/engine.log" | tr '\n' ';')"
  $STRATA system stop >/dev/null
  wait "$ENGINE"
done
rm -rf "$DIR"
