#!/usr/bin/env bash
# The C core under AddressSanitizer + UndefinedBehaviorSanitizer: builds a
# copy of the checkout with -fsanitize=address,undefined (the CPU variant),
# then runs the test suite (or the files given) with the sanitizer runtimes
# preloaded into Python. Any report fails the run (halt_on_error, and UBSan
# aborts on its first finding).
#
#   bash scripts/sanitize.sh                       # the whole suite
#   bash scripts/sanitize.sh tests/test_layers.py  # some of it
#
# Needs gcc with libasan and libubsan (Debian: part of gcc), and the test
# dependencies in the current Python. Leak checking is off: the Python
# interpreter itself does not free everything at exit. The copy is built in
# a temporary folder, so the checkout's own build is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/pydarknet-sanitize.XXXXXX")
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard | tar cf - -T - | tar xf - -C "$work"
cd "$work"
echo "building with -fsanitize=address,undefined in $work ..."
PYDARKNET_CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
    $PY setup.py -q build_ext --inplace > build.log 2>&1 || { tail -30 build.log; exit 1; }
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
for rt in "$asan" "$ubsan"; do   # gcc prints the bare name when it has no such library
    [ -f "$rt" ] || { echo "sanitize.sh: gcc has no sanitizer runtime $rt (Debian: part of gcc's libgcc-dev)" >&2; exit 2; }
done
export LD_PRELOAD="$asan:$ubsan${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH=$work${PYTHONPATH:+:$PYTHONPATH}
# left out by default: the tests that start compilers or mpiexec (test_build, test_embed, test_cuda's nvcc compiles,
# test_distributed), which the preloaded runtimes would follow into those programs (nvcc crashes under them)
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/ --ignore=tests/test_distributed.py --ignore=tests/test_build.py
                                --ignore=tests/test_cuda.py --ignore=tests/test_embed.py)
# --capture=sys: a sanitizer report (written to fd 2 just before it aborts the process) reaches the terminal
$PY -m pytest -q -p no:cacheprovider --capture=sys -x "${args[@]}"
