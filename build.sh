#!/usr/bin/env bash
# Strata's one entry point for people and CI.
#   ./build.sh run    install what is missing, build, run the main job on the embedded default
#   ./build.sh test   install what is missing, build, run every test (C and C#), print "N passed, N failed"
#   ./build.sh setup | build | ctest | dotnet-test | check-bindings
# It installs Debian packages with apt-get when they are missing (as root, or through sudo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
CONFIG="${CONFIG:-Release}"
NATIVE_BUILD="$ROOT/build/native"
RESULTS="$ROOT/build/test-results"
DATA_DIR="${STRATA_DATA_DIR:-$ROOT/strata-data}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

# Debian packages the build, the tests and the benchmarks use.
APT_PACKAGES=(cmake make gcc pkg-config liburing-dev libclang1-14 libclang-common-14-dev fio qemu-utils libnbd-bin nbdkit zsh)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 2; }

setup() {
  command -v dotnet >/dev/null || die "the .NET SDK 10 is required (dotnet not on PATH)"
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build_native() {
  log "building native/ (CMake, $CONFIG)"
  cmake -S "$ROOT" -B "$NATIVE_BUILD" -DCMAKE_BUILD_TYPE="$CONFIG" >/dev/null
  cmake --build "$NATIVE_BUILD" -j "$(nproc)" >/dev/null
}

build_dotnet() {
  log "building Engine.sln ($CONFIG)"
  # The native library was just built; the projects need not run CMake again.
  dotnet build "$ROOT/Engine.sln" -c "$CONFIG" -p:SkipNativeBuild=true -nologo -clp:ErrorsOnly -v:q
}

build() { build_native; build_dotnet; }

# Runs ctest; appends "ctest PASSED FAILED" to the tally file.
run_ctest() {
  log "C tests (ctest)"
  local out="$RESULTS/ctest.log" rc=0
  ctest --test-dir "$NATIVE_BUILD" --output-on-failure --timeout 120 -j 2 >"$out" 2>&1 || rc=$?
  tail -n 3 "$out" >&2
  [ $rc -eq 0 ] || grep -E "Failed|\*\*\*" "$out" >&2 || true
  local total failed skipped
  total=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\2/p' "$out" | tail -1)
  failed=$(sed -nE 's/.*tests passed, ([0-9]+) tests failed out of ([0-9]+).*/\1/p' "$out" | tail -1)
  # ctest counts a skip (exit 77, e.g. the SPDK cases without a target) as passed; report it as skipped.
  skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .*\(Skipped\)$' "$out" || true)
  if [ -z "$total" ]; then total=1; failed=1; echo "ctest did not report a summary" >&2; fi
  echo "ctest $((total - failed - skipped)) $failed $skipped" >>"$RESULTS/tally"
}

# The generated bindings must match the header: regenerate in memory and diff.
check_bindings() {
  log "checking generated bindings against native/include/strata_io.h"
  if dotnet "$ROOT/build/bin/Strata.Interop.Generator/$CONFIG/net10.0/Strata.Interop.Generator.dll" \
      --header native/include/strata_io.h --out interop/Strata.Interop/Generated/StrataIo.g.cs --check; then
    echo "bindings 1 0 0" >>"$RESULTS/tally"
  else
    echo "bindings 0 1 0" >>"$RESULTS/tally"
  fi
}

# Runs every MSTest project; appends their counts to the tally file.
run_dotnet_tests() {
  log "C# tests (MSTest)"
  local out="$RESULTS/dotnet-test.log" rc=0
  dotnet test "$ROOT/Engine.sln" -c "$CONFIG" --no-build -nologo \
    --logger "console;verbosity=normal" --results-directory "$RESULTS/trx" --logger trx \
    >"$out" 2>&1 || rc=$?
  grep -E "^\s*Failed [A-Za-z]|Error Message|Aborted|crashed" -A2 "$out" | grep -vE "^\s+at " >&2 || true
  # Count from the TRX files (one per test project): passed, failed (with errors, timeouts,
  # aborts), and the rest (skipped, or Inconclusive where a backend is missing).
  local p=0 f=0 s=0 trx c total passed failed
  for trx in "$RESULTS"/trx/*.trx; do
    [ -e "$trx" ] || continue
    c=$(grep -o '<Counters[^>]*>' "$trx" | head -1)
    total=$(sed -nE 's/.* total="([0-9]+)".*/\1/p' <<<"$c")
    passed=$(sed -nE 's/.* passed="([0-9]+)".*/\1/p' <<<"$c")
    failed=0
    for k in failed error timeout aborted; do
      failed=$((failed + $(sed -nE "s/.* $k=\"([0-9]+)\".*/\1/p" <<<"$c")))
    done
    p=$((p + passed)); f=$((f + failed)); s=$((s + total - passed - failed))
  done
  if [ $rc -ne 0 ] && [ $f -eq 0 ]; then f=1; echo "dotnet test exited $rc (a test host crashed or aborted?)" >&2; fi
  if [ $((p + f)) -eq 0 ]; then f=1; echo "no C# test ran" >&2; fi
  echo "mstest $p $f $s" >>"$RESULTS/tally"
}

test_all() {
  setup
  rm -rf "$RESULTS"; mkdir -p "$RESULTS"
  : >"$RESULTS/tally"
  build
  run_ctest
  check_bindings
  run_dotnet_tests
  local p=0 f=0 s=0 name a b c
  while read -r name a b c; do
    printf '  %-9s %5d passed, %d failed, %d skipped\n' "$name" "$a" "$b" "$c" >&2
    p=$((p + a)); f=$((f + b)); s=$((s + c))
  done <"$RESULTS/tally"
  echo "$p passed, $f failed, $s skipped"
  [ "$f" -eq 0 ]
}

run_main() {
  setup
  build
  local bin="$ROOT/build/bin" engine_dir="$DATA_DIR/engine"
  local engine=(dotnet "$bin/Strata.Engine.Host/$CONFIG/net10.0/strata-engine.dll")
  local strata=(dotnet "$bin/Strata.Cli/$CONFIG/net10.0/strata.dll" --data-dir "$engine_dir")
  log "main job: device self-check on file targets under $DATA_DIR/selfcheck"
  "${engine[@]}" selfcheck --data-dir "$DATA_DIR/selfcheck"
  # The engine's own data dir: the self-check's files are not Strata targets.
  log "main job: strata-engine on the embedded default under $engine_dir"
  mkdir -p "$engine_dir"
  "${engine[@]}" run --data-dir "$engine_dir" >"$engine_dir/engine.log" 2>&1 &
  local pid=$!
  trap 'kill -TERM '"$pid"' 2>/dev/null || true; wait '"$pid"' 2>/dev/null || true' EXIT
  local i
  for i in $(seq 1 150); do
    "${strata[@]}" system query >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$engine_dir/engine.log" >&2; die "strata-engine exited during startup"; }
    sleep 0.2
  done
  "${strata[@]}" system query
  "${strata[@]}" storage query
  "${strata[@]}" pool destroy demo --force >/dev/null 2>&1 || true
  "${strata[@]}" pool create demo --size 1G
  "${strata[@]}" cont create demo vols
  "${strata[@]}" image create demo vols disk0 --size 256M
  head -c 4194304 /dev/urandom >"$engine_dir/payload.bin"
  "${strata[@]}" image write demo vols disk0 --offset 1M --file "$engine_dir/payload.bin"
  "${strata[@]}" image read demo vols disk0 --offset 1M --length 4M --out "$engine_dir/readback.bin"
  cmp "$engine_dir/payload.bin" "$engine_dir/readback.bin" || die "image read back different bytes"
  # A real NBD client on the embedded default's Unix socket: qemu-img writes an image in, then
  # compares it out (the rest of the 64 MiB image must read as zeroes).
  "${strata[@]}" image create demo vols disk1 --size 64M
  local uri
  uri=$("${strata[@]}" image map demo vols disk1 --no-attach | head -n 1)
  log "main job: qemu-img convert and compare through $uri"
  head -c 16777216 /dev/urandom >"$engine_dir/nbd-in.raw"
  qemu-img convert -n -f raw -O raw "$engine_dir/nbd-in.raw" "$uri"
  qemu-img compare -f raw -F raw "$engine_dir/nbd-in.raw" "$uri" || die "qemu-img read back different bytes over NBD"
  "${strata[@]}" pool list
  "${strata[@]}" pool query demo
  "${strata[@]}" system events --since 10m
  "${strata[@]}" system stop
  trap - EXIT
  wait "$pid"
  log "main job: a short device benchmark against fio on $DATA_DIR/bench.img"
  dotnet "$bin/Strata.Perf/$CONFIG/net10.0/Strata.Perf.dll" device --quick --file "$DATA_DIR/bench.img"
}

case "${1:-}" in
  run) run_main ;;
  test) test_all ;;
  setup) setup ;;
  build) setup; build ;;
  ctest) mkdir -p "$RESULTS"; : >"$RESULTS/tally"; run_ctest ;;
  dotnet-test) mkdir -p "$RESULTS"; : >"$RESULTS/tally"; run_dotnet_tests ;;
  check-bindings) mkdir -p "$RESULTS"; : >"$RESULTS/tally"; check_bindings ;;
  *) die "usage: ./build.sh run|test|setup|build|ctest|dotnet-test|check-bindings" ;;
esac
