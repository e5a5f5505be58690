#!/usr/bin/env bash
# Runs one fuzz harness under afl-fuzz (not part of CI; CI runs the corpus through FuzzCorpusTests).
#   tests/Strata.Fuzz/fuzz.sh HARNESS [SECONDS | --execs N]
# Harnesses: superblock shard-header checkpoint wal wal-v2 block-table nbd-handshake nbd-request.
# Builds Strata.Fuzz (Release), copies it to build/fuzz/bin, instruments that copy of
# Strata.Engine.dll with sharpfuzz (the SharpFuzz.CommandLine tool of this folder's manifest),
# then fuzzes from corpus/HARNESS into build/fuzz/out/HARNESS (resumed when it exists). Without
# a limit it runs until interrupted. Crashes land in build/fuzz/out/HARNESS/default/crashes/;
# replay one with: dotnet build/fuzz/bin/Strata.Fuzz.dll HARNESS FILE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
harness=${1:?usage: fuzz.sh HARNESS [SECONDS|--execs N]}
limit=()
case "${2:-}" in
  "") ;;
  --execs) limit=(-E "${3:?--execs needs a count}") ;;
  *) limit=(-V "$2") ;;
esac
[ -d "$here/corpus/$harness" ] || { echo "fuzz.sh: no corpus for harness '$harness' (have: $(ls "$here/corpus" | tr '\n' ' '))" >&2; exit 2; }
if ! command -v afl-fuzz >/dev/null; then
  echo "fuzz.sh: installing Debian's afl++" >&2
  { apt-get update -qq && apt-get install -y -qq afl++ >/dev/null; } || { echo "fuzz.sh: afl-fuzz not found and apt-get install afl++ failed" >&2; exit 2; }
fi

bin=$root/build/fuzz/bin
out=$root/build/fuzz/out/$harness
dotnet build "$here/Strata.Fuzz.csproj" -c Release -p:SkipNativeBuild=true -nologo -clp:ErrorsOnly -v:q
# Instrument a fresh copy only when the build changed (instrumenting twice fails).
built=$root/build/bin/Strata.Fuzz/Release/net10.0
if [ ! -f "$bin/.instrumented" ] || [ -n "$(find "$built" -newer "$bin/.instrumented" -print -quit)" ]; then
  rm -rf "$bin" && mkdir -p "$bin"
  cp -r "$built/." "$bin/"
  (cd "$here" && dotnet tool restore >/dev/null && dotnet tool run sharpfuzz "$bin/Strata.Engine.dll")
  touch "$bin/.instrumented"
fi

input=(-i "$here/corpus/$harness")
if [ -f "$out/default/fuzzer_stats" ]; then
  export AFL_AUTORESUME=1
fi
mkdir -p "$out"
export AFL_SKIP_BIN_CHECK=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
[ -t 1 ] || export AFL_NO_UI=1
# The .NET runtime starts slowly: a generous timeout for the first run, -m none for its address space.
nice -n 10 afl-fuzz "${input[@]}" -o "$out" -t 10000 -m none "${limit[@]}" -- dotnet "$bin/Strata.Fuzz.dll" "$harness"
stats=$out/default/fuzzer_stats
grep -E '^(execs_done|execs_per_sec|run_time|saved_crashes|saved_hangs|corpus_count)' "$stats"
