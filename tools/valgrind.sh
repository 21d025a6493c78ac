#!/usr/bin/env bash
# Runs the core tests under valgrind memcheck: no invalid read or write in
# our code and no block "definitely lost" that our extension allocated.
#
#   bash tools/valgrind.sh                   # the default selection (below)
#   bash tools/valgrind.sh tests/test_seed.py   # any pytest arguments
#
# Builds a scratch copy (never the checkout's fastgrad/) with FASTGRAD_DEBUG=1,
# so the stacks name src_c lines, and runs with PYTHONMALLOC=malloc so Python
# objects are malloc blocks valgrind can see.  CPython itself leaves memory
# behind at exit; only records whose allocation stack passes through our
# extension (fastgrad/_core*.so: the Cython glue and src_c) count.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
# The interpreter itself, not a wrapper script (pyenv shims are shell scripts,
# and valgrind does not follow children).
PY=$("$PY" -c 'import sys; print(sys.executable)')
START=$SECONDS
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastgrad-valgrind.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then echo "scratch copy kept in $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
tar -C "$ROOT" -cf - \
    --exclude='*.so' --exclude='fastgrad/_core.c' --exclude='__pycache__' \
    --exclude='.hypothesis' --exclude='*.pyc' \
    setup.py pyproject.toml README.md LICENSE fastgrad src_c tests examples \
    | tar -C "$WORK" -xf -
# FASTGRAD_DEBUG=1: -O0 -g (stacks with src_c lines), C asserts and Cython
# bounds checks on.
(cd "$WORK" && FASTGRAD_DEBUG=1 "$PY" setup.py build_ext --inplace -q >/dev/null)
echo "== built in $((SECONDS - START))s"

# The core tests, without the ones that are long under valgrind (a million-node
# chain, 200 training steps, hundreds of Hypothesis programs, the thread soak).
DEFAULT=(tests/test_seed.py tests/test_semantics.py tests/test_errors.py tests/test_lifetime.py
         tests/test_replay.py tests/test_catalogue.py tests/test_numerics.py
         -k "not million and not micrograd_style and not fresh_dynamic_graph and not large_batch and not memory_limit")
[ $# -gt 0 ] || set -- "${DEFAULT[@]}"

LOG="$WORK/valgrind.log"
cd "$WORK"
set +e
PYTHONMALLOC=malloc FASTGRAD_VALGRIND=1 valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite --errors-for-leak-kinds=none --num-callers=40 \
    --log-file="$LOG" "$PY" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
"$PY" - "$LOG" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
records = re.split(r"\n==\d+== \n", text)
ours = lambda r: "_core.cpython" in r or "src_c/" in r or " fg_" in r
errors = [r for r in records if re.search(r"Invalid (read|write)|uninitialised|Invalid free|Mismatched free", r)]
lost = [r for r in records if "definitely lost" in r and "blocks are definitely lost" in r]
bad = [r for r in errors if ours(r)] + [r for r in lost if ours(r)]
pid = re.search(r"==(\d+)== Command:", text).group(1)
summary = re.search(rf"=={pid}==    (definitely lost: [\d,]+ bytes in [\d,]+ blocks)", text)
print(f"valgrind: {len(errors)} memory errors ({sum(map(ours, errors))} in fastgrad), "
      f"{len(lost)} definitely-lost records ({sum(map(ours, lost))} from fastgrad); "
      f"whole process (CPython and numpy included): {summary.group(1) if summary else 'no leak summary'}")
for r in bad:
    print(r[:4000], "\n")
sys.exit(1 if bad else 0)
PYEOF
vrc=$?
echo "== valgrind run: pytest exit $rc, report exit $vrc, after $((SECONDS - START))s"
[ "$rc" = 0 ] && [ "$vrc" = 0 ]
