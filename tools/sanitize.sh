#!/usr/bin/env bash
# Build fastlstm for AddressSanitizer + UndefinedBehaviorSanitizer in a temporary
# copy of the repository and run the test suite against that build.
#
#   tools/sanitize.sh                       # the whole suite (about a minute on 2 cores)
#   tools/sanitize.sh tests/test_kernels.py -k float32    # any pytest arguments
#
# The extensions are compiled with -fsanitize=address,undefined (FASTLSTM_SANITIZE=1 in
# setup.py); Python is not, so gcc's sanitizer runtimes are preloaded.  Leak detection is
# off (CPython leaks by design at exit); any ASan report or undefined behaviour aborts the
# process, which fails the run.  The tests that build other variants or lint the sources
# are left out, and so are the RSS-based memory tests (ASan's quarantine holds freed memory).
#
# Environment: PYTHON (default python3), CC (default gcc), FASTLSTM_SANITIZE_DIR (build
# there and keep it, instead of a temporary folder that is removed).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
cc="${CC:-gcc}"

if [[ -n "${FASTLSTM_SANITIZE_DIR:-}" ]]; then
    work="$FASTLSTM_SANITIZE_DIR"
    mkdir -p "$work"
else
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi

# The sources: what git tracks plus untracked files it does not ignore (no build outputs).
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard) |
        while IFS= read -r -d '' f; do
            [[ -e "$root/$f" ]] || continue
            mkdir -p "$work/$(dirname "$f")"
            cp -p "$root/$f" "$work/$f"
        done
else
    (cd "$root" && tar cf - --exclude=.git --exclude=build --exclude='*.so' \
        --exclude='fastlstm/_ext/*.c' --exclude=__pycache__ --exclude='.venv*' .) |
        (cd "$work" && tar xf -)
fi

asan="$("$cc" -print-file-name=libasan.so)"
ubsan="$("$cc" -print-file-name=libubsan.so)"
for lib in "$asan" "$ubsan"; do
    if [[ "$lib" != /* || ! -e "$lib" ]]; then
        echo "sanitize.sh: $cc has no sanitizer runtime ($lib); install gcc's libasan/libubsan" >&2
        exit 2
    fi
done

echo "sanitize.sh: building in $work"
(cd "$work" && FASTLSTM_SANITIZE=1 "$python" setup.py build_ext --inplace -j 2 \
    >"$work/build.log" 2>&1) || { tail -50 "$work/build.log" >&2; exit 1; }
grep -q "building for AddressSanitizer" "$work/build.log"

if [[ $# -eq 0 ]]; then
    set -- tests
fi

cd "$work"
rm -f "$work"/sanitizer.*
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$asan $ubsan"
# Reports go to files as well as stderr: pytest captures the output of a test that aborts.
# allocator_may_return_null: a huge allocation gives MemoryError as without ASan.
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:abort_on_error=1:log_path=$work/sanitizer${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$work/sanitizer${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
status=0
"$python" -m pytest -p no:cacheprovider -q \
    --deselect tests/test_serial_build.py --deselect tests/test_sanitizers.py \
    --deselect tests/test_lint.py "$@" || status=$?
unset LD_PRELOAD
if compgen -G "$work/sanitizer.*" >/dev/null; then
    echo "sanitize.sh: sanitizer reports:" >&2
    cat "$work"/sanitizer.* >&2
    status=1
fi
echo "sanitize.sh: pytest exit status $status, $(compgen -G "$work/sanitizer.*" | wc -l) sanitizer report(s)"
exit "$status"
