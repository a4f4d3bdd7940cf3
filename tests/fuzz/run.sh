#!/usr/bin/env bash
# tests/fuzz/run.sh: coverage-guided fuzzing of everything that parses outside input, with
# cargo-afl (AFL++). Installs cargo-afl when missing, builds the targets instrumented,
# fuzzes each for SECONDS starting from corpus/<target>, and fails if any input crashed a
# target (the crashing inputs are printed as hex and kept under the output directory).
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     default: 20 s each, every target
#   FUZZ_SAVE=1 tests/fuzz/run.sh 600          also keep what found new coverage in corpus/
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames commands amqp091 sasl xquery xml_route jsonrpc events acl recovery)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../../target/fuzz}"
if ! cargo afl --version >/dev/null 2>&1; then
  echo "== installing cargo-afl"
  cargo install cargo-afl --locked --quiet
fi
# The AFL++ runtime for this compiler (a no-op once built).
cargo afl config --build >/dev/null 2>&1 || true

echo "== building the fuzz targets"
cargo afl build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release"
# The starting corpus is committed; the generator refreshes its seeds.
"$bin/seeds"

out="$CARGO_TARGET_DIR/afl-out"
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  AFL_NO_AFFINITY=1 AFL_QUIET=1
failed=0
for t in "${targets[@]}"; do
  rm -rf "${out:?}/$t"
  mkdir -p "$out/$t"
  cargo afl fuzz -i "corpus/$t" -o "$out/$t" -V "$seconds" "$bin/$t" >"$out/$t.log" 2>&1 || true
  stats="$out/$t/default/fuzzer_stats"
  execs=$(awk -F: '/^execs_done/ {gsub(/ /,"",$2); print $2}' "$stats" 2>/dev/null || echo 0)
  paths=$(awk -F: '/^corpus_count/ {gsub(/ /,"",$2); print $2}' "$stats" 2>/dev/null || echo 0)
  crashes=$(find "$out/$t/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
  printf '%-10s %8s execs  %5s inputs in queue  %s crashes\n' "$t" "$execs" "$paths" "$crashes"
  if [ ! -f "$stats" ]; then
    echo "afl-fuzz did not run $t:"; tail -20 "$out/$t.log"; failed=1
  elif [ "$crashes" -gt 0 ]; then
    failed=1
    for c in "$out/$t"/default/crashes/id:*; do
      echo "crash in $t: $c"; od -A x -t x1z "$c" | head -20
    done
  fi
  if [ "${FUZZ_SAVE:-0}" = 1 ] && [ -d "$out/$t/default/queue" ]; then
    # Keep the corpus small: only the inputs that found new coverage ("+cov"), by content.
    for f in "$out/$t"/default/queue/*+cov*; do
      [ -f "$f" ] && cp "$f" "corpus/$t/$(sha1sum <"$f" | cut -c1-16)"
    done
  fi
done
exit $failed
