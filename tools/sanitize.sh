#!/usr/bin/env bash
# Builds fastgrad with AddressSanitizer + UndefinedBehaviorSanitizer in a
# scratch copy of the tree and runs the whole test suite under it.
#
#   bash tools/sanitize.sh                  # every test in tests/
#   bash tools/sanitize.sh tests/test_seed.py -x   # any pytest arguments
#   FUZZ_SECONDS=60 bash tools/sanitize.sh  # then the fuzzers, 60 s each (below)
#
# The checkout's fastgrad/ is never touched: sources are copied to a temporary
# directory, built in place there, and the tests run from that copy (the
# instrumented extension needs the ASan runtime preloaded into the
# uninstrumented python, which would break everyone else's imports).
# Zero reports is the bar: any ASan or UBSan report aborts the run, so a
# non-zero exit status is a failure; the report is in the output.
#
# Fuzzing (FUZZ_SECONDS > 0; needs atheris): atheris' coverage feedback does
# not work beside gcc's ASan runtime, so each fuzzer (tools/fuzz_load.py,
# tools/fuzz_ops.py) first runs coverage-guided for FUZZ_SECONDS on the
# ordinary build (the checkout's, or the installed package), then every input
# of the corpus it grew is replayed once under this ASan+UBSan build, so an
# out-of-bounds access that did not crash the ordinary build is still caught.
# FUZZ_SEED=N fixes libFuzzer's seed (.ci/run does, so a CI finding replays
# the same way here); unset, every run explores from a new random seed.
#
# Linux with gcc (CC=...; the runtimes come from `$CC -print-file-name`); the
# python running it needs cython>=3,
# setuptools>=77 (the build) and numpy besides the test requirements.
# FASTGRAD_SANITIZE picks the sanitizers (default address,undefined); KEEP=1
# keeps the scratch copy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
CC_=${CC:-gcc}
SANITIZE=${FASTGRAD_SANITIZE:-address,undefined}
START=$SECONDS

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastgrad-sanitize.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
    echo "scratch copy kept in $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

# Sources only: no built extension, generated C, caches or build/ from the checkout.
tar -C "$ROOT" -cf - \
    --exclude='*.so' --exclude='fastgrad/_core.c' --exclude='__pycache__' \
    --exclude='.hypothesis' --exclude='*.pyc' \
    setup.py pyproject.toml README.md LICENSE fastgrad src_c tests examples tools \
    | tar -C "$WORK" -xf -

echo "== building with -fsanitize=$SANITIZE in $WORK"
# -fno-wrapv: Python's own CFLAGS carry -fwrapv, which turns UBSan's signed
# overflow check off; the kernels must not rely on wrapping anyway.
(cd "$WORK" && CC=$CC_ CFLAGS="${CFLAGS:-} -fno-wrapv" FASTGRAD_SANITIZE=$SANITIZE \
    "$PY" setup.py build_ext --inplace -q)
SO=$(echo "$WORK"/fastgrad/_core.*.so)
# The flags really reached the link: the sanitizer runtimes are dependencies.
ldd "$SO" | grep -E 'lib(a|ub)san' || { echo "no sanitizer runtime linked into $SO" >&2; exit 1; }
echo "== built in $((SECONDS - START))s"

PRELOAD=""
case "$SANITIZE" in
    # libstdc++ too: ASan's __cxa_throw interceptor must find the real one at
    # start-up, or the first C++ exception of a C++ extension (matplotlib's
    # ft2font, torch) aborts in an ASan CHECK.
    *address*) PRELOAD="$("$CC_" -print-file-name=libasan.so) $("$CC_" -print-file-name=libstdc++.so)" ;;
esac

# detect_leaks=0: CPython itself does not free everything at exit (LeakSanitizer
# would report the interpreter); leaks of ours are valgrind.sh's job.
# allocator_may_return_null=1: an impossible allocation returns NULL as libc's
# malloc does, so the tests see the MemoryError users would.
# PYTHONMALLOC=malloc: Python objects go through ASan's allocator too, so a
# use-after-free of a Value or a Graph in the Cython glue is caught.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:strict_init_order=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export PYTHONMALLOC=malloc
export FASTGRAD_SANITIZED=1        # tests that cannot run under ASan (RLIMIT_AS) skip
export PYTHONDONTWRITEBYTECODE=1

cd "$WORK"
# The extension imports under the preloaded runtime, from the copy.
LD_PRELOAD="$PRELOAD" "$PY" -c "import fastgrad, fastgrad._core as c; assert c.__file__.startswith('$WORK'), c.__file__; print('imported', c.__file__)"
echo "== pytest under the sanitizers"
set +e
LD_PRELOAD="$PRELOAD" "$PY" -m pytest -q -p no:cacheprovider "${@:-tests}"
rc=$?
set -e
echo "== sanitizer test run: exit $rc after $((SECONDS - START))s"
[ "$rc" = 0 ] || exit "$rc"

FUZZ_SECONDS=${FUZZ_SECONDS:-0}
if [ "$FUZZ_SECONDS" -gt 0 ]; then
    "$PY" -c "import atheris" 2>/dev/null || { echo "FUZZ_SECONDS needs atheris: pip install atheris==3.0.0" >&2; exit 2; }
    mkdir -p "$WORK/artifacts"
    frc=0
    for fuzzer in fuzz_load fuzz_ops; do
        CORPUS="$WORK/corpus-$fuzzer"
        LOG="$WORK/$fuzzer.log"
        mkdir -p "$CORPUS"
        if [ "$fuzzer" = fuzz_load ]; then TMPDIR="$WORK" "$PY" "$ROOT/tools/fuzz_load.py" --write-seeds "$CORPUS"; fi
        echo "== $fuzzer: ${FUZZ_SECONDS}s coverage-guided on the ordinary build"
        set +e
        # TMPDIR: the fuzzers' scratch files go where the trap removes them.
        (cd "$ROOT" && env -u PYTHONMALLOC -u FASTGRAD_SANITIZED TMPDIR="$WORK" "$PY" "tools/$fuzzer.py" \
            -max_total_time="$FUZZ_SECONDS" ${FUZZ_SEED:+-seed="$FUZZ_SEED"} -print_final_stats=1 -artifact_prefix="$WORK/artifacts/" \
            "$CORPUS" >"$LOG" 2>&1)
        r1=$?
        grep -E "^(Done|stat::number_of_executed_units|stat::new_units_added)" "$LOG"
        [ "$r1" = 0 ] || { tail -60 "$LOG"; frc=1; }
        echo "== $fuzzer: its corpus ($(ls "$CORPUS" | wc -l) inputs) replayed under ASan+UBSan"
        LD_PRELOAD="$PRELOAD" TMPDIR="$WORK" "$PY" "tools/$fuzzer.py" -runs=0 -artifact_prefix="$WORK/artifacts/" \
            "$CORPUS" >"$LOG.asan" 2>&1
        r2=$?
        set -e
        grep -E "^(#[0-9]+ +INITED|Done)" "$LOG.asan" || true
        [ "$r2" = 0 ] || { tail -80 "$LOG.asan"; frc=1; }
    done
    if [ "$frc" != 0 ]; then
        mkdir -p "$ROOT/fuzz-artifacts"
        cp "$WORK"/artifacts/* "$ROOT/fuzz-artifacts/" 2>/dev/null || true
        echo "== the fuzzers found a problem; inputs copied to fuzz-artifacts/ (replay: python tools/<fuzzer>.py FILE)" >&2
        exit 1
    fi
    echo "== fuzzing done after $((SECONDS - START))s"
fi
