#!/usr/bin/env bash
# Fuzz tollgate with cargo-fuzz (libFuzzer): run each target in fuzz/fuzz_targets/ for a bounded time.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
#   scripts/fuzz.sh 3600 harden                          an hour on one target
#   scripts/fuzz.sh ci [TARGET...]                       each target for its time in fuzz/ci-budget (CI's budget)
#
# Installs nothing: needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Runs on the stable toolchain
# with RUSTC_BOOTSTRAP=1 (no nightly is needed; the variable is always set, so that the build cache
# stays valid and TOLLGATE_FUZZ_SANITIZER=address can use -Zsanitizer).
# Seeds come from fuzz/corpus/<target>/ (checked in, never written to); what the fuzzer learns goes to
# $TOLLGATE_FUZZ_CORPUS_DIR/<target>/ (default fuzz/target/corpus) and is replayed first by the next run; a
# learned corpus of more than 3000 inputs is first minimized (libFuzzer -merge). Fails if any target finds a
# crash, a timeout (an input taking over TOLLGATE_FUZZ_TIMEOUT seconds, default 10) or runs out of memory,
# and prints where the input that did it was saved (fuzz/artifacts/<target>/) with its hex.
#
# Environment: TOLLGATE_FUZZ_PROFILE=release (default: optimized; a cold build takes 15-20 minutes on 2
# cores, a rebuild of tollgate's own crates 3-5) or dev (unoptimized: builds 3-4 times faster, runs 5-20 times
# slower: finds little), both with debug assertions and overflow checks; TOLLGATE_FUZZ_SANITIZER=none
# (default; safe Rust needs none) or address; TOLLGATE_FUZZ_TARGET_DIR=DIR builds there instead of fuzz/target
# (CI keeps its build in ~/.cache/tollgate/fuzz-release, outside the checkout, so that only its first run pays
# for it); TOLLGATE_FUZZ_CORPUS_DIR=DIR keeps the learned corpus there (CI: ~/.cache/tollgate/fuzz-corpus, so
# that each run starts where the last one stopped); TOLLGATE_FUZZ_FRESH=1 starts from the checked-in seeds
# alone (nothing learned is read or kept; for measuring); TOLLGATE_FUZZ_JOBS=N runs N workers per target
# (libFuzzer -fork; default 1: CI, alone on its machine, uses every core).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[1-9][0-9]*$ || $seconds == ci ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET|ci] [TARGET...]" >&2
  exit 2
fi
shift $(($# > 0 ? 1 : 0))
# fuzz/ci-budget: "<target> <seconds>" per line (# comments), the time CI gives each target.
declare -A budget=()
if [ "$seconds" = ci ]; then
  while read -r name time _; do
    [[ -z $name || $name == \#* ]] && continue
    budget[$name]=$time
  done < fuzz/ci-budget
fi

all=()
for file in fuzz/fuzz_targets/*.rs; do
  all+=("$(basename "$file" .rs)")
done
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
for target in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
    echo "fuzz.sh: no target $target (known: ${all[*]})" >&2
    exit 2
  fi
  if [ "$seconds" = ci ] && ! [[ ${budget[$target]:-} =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: fuzz/ci-budget gives $target no time" >&2
    exit 2
  fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

export RUSTC_BOOTSTRAP=1
profile=${TOLLGATE_FUZZ_PROFILE:-release}
sanitizer=${TOLLGATE_FUZZ_SANITIZER:-none}
timeout=${TOLLGATE_FUZZ_TIMEOUT:-10}
case $profile in
  release) build_flags=(--sanitizer "$sanitizer") ;;
  dev) build_flags=(--sanitizer "$sanitizer" --dev) ;;
  *) echo "fuzz.sh: TOLLGATE_FUZZ_PROFILE must be release or dev" >&2; exit 2 ;;
esac
if [ -n "${TOLLGATE_FUZZ_TARGET_DIR:-}" ]; then
  mkdir -p "$TOLLGATE_FUZZ_TARGET_DIR"
  build_flags+=(--target-dir "$TOLLGATE_FUZZ_TARGET_DIR")
fi

# fuzz/ is its own workspace with its own Cargo.lock; cargo-fuzz cannot pass --locked, so check first
# that the lock file needs no change.
if ! cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
  echo "fuzz.sh: fuzz/Cargo.lock is out of date (run: cargo update --manifest-path fuzz/Cargo.toml --workspace, and commit it)" >&2
  exit 1
fi

start=$SECONDS
echo "fuzz.sh: building ${targets[*]} ($profile, sanitizer $sanitizer)"
if ((${#targets[@]} == 1)); then
  cargo fuzz build "${build_flags[@]}" "${targets[0]}"
else
  cargo fuzz build "${build_flags[@]}"
fi
built=$((SECONDS - start))
if [ "$seconds" = ci ]; then
  echo "fuzz.sh: built in $built s; fuzzing each target for its time in fuzz/ci-budget"
else
  echo "fuzz.sh: built in $built s; fuzzing each target for $seconds s"
fi

corpora=${TOLLGATE_FUZZ_CORPUS_DIR:-fuzz/target/corpus}
jobs=${TOLLGATE_FUZZ_JOBS:-1}
mkdir -p fuzz/target/logs
failed=()
for target in "${targets[@]}"; do
  time=$seconds
  [ "$seconds" = ci ] && time=${budget[$target]}
  work=$corpora/$target
  if [ "${TOLLGATE_FUZZ_FRESH:-0}" = 1 ]; then
    work=fuzz/target/corpus-fresh/$target
    rm -rf "$work"
  fi
  artifacts=fuzz/artifacts/$target
  log=fuzz/target/logs/$target.log
  mkdir -p "$work" "$artifacts"
  # A learned corpus only grows: past 3000 inputs, keep the ones that add coverage (a few seconds).
  if (($(find "$work" -type f | wc -l) > 3000)); then
    rm -rf "$work.min" && mkdir -p "$work.min"
    if cargo fuzz run "${build_flags[@]}" "$target" "$work.min" "$work" -- -merge=1 -timeout="$timeout" >"$log.merge" 2>&1; then
      rm -rf "$work" && mv "$work.min" "$work"
    else
      rm -rf "$work.min"
    fi
  fi
  marker=$(mktemp)
  args=(-max_total_time="$time" -timeout="$timeout" -print_final_stats=1)
  # Several workers (libFuzzer -fork) share what they find; it stops at the first failure as one does.
  ((jobs > 1)) && args+=(-fork="$jobs")
  [ -f "fuzz/dicts/$target.dict" ] && args+=(-dict="fuzz/dicts/$target.dict")
  status=0
  cargo fuzz run "${build_flags[@]}" "$target" "$work" "fuzz/corpus/$target" -- "${args[@]}" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # Forked workers report in their own lines: "#1234567: cov: ... exec/s: 890 ...".
  [ -z "$runs" ] && runs=$(sed -n 's/^#\([0-9]*\): cov.*/\1/p' "$log" | tail -1)
  [ -z "$speed" ] && speed=$(sed -n 's/^#[0-9]*: cov.* exec\/s: \([0-9]*\).*/\1/p' "$log" | tail -1)
  if ((status == 0)); then
    printf 'fuzz.sh: %-15s ok      %9s runs in %4s s, %6s/s, corpus %s\n' "$target" "${runs:-?}" "$time" "${speed:-?}" "$(find "$work" -type f | wc -l)"
  else
    failed+=("$target")
    printf 'fuzz.sh: %-15s FAILED  (exit %s) after %s runs; log: %s\n' "$target" "$status" "${runs:-?}" "$log"
    # The panic and the first lines of its message, then libFuzzer's verdict.
    awk '/panicked at/ {n = 4} n > 0 {print substr($0, 1, 400); n--} /ERROR: libFuzzer|^SUMMARY/' "$log" | head -20 | sed 's/^/    /'
    while IFS= read -r artifact; do
      echo "    input saved at $artifact ($(stat -c %s "$artifact") bytes), hex: $(head -c 256 "$artifact" | od -An -tx1 -v | tr -d ' \n')"
      echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $artifact"
    done < <(find "$artifacts" -type f -newer "$marker")
  fi
  rm -f "$marker"
done

echo "fuzz.sh: done in $((SECONDS - start)) s"
if ((${#failed[@]})); then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs under fuzz/artifacts/; add each to fuzz/corpus/<target>/ and a regression test once fixed)" >&2
  exit 1
fi
