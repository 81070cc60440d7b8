#!/usr/bin/env bash
# A short valgrind memcheck run of fastlstm: tools/valgrind_workload.py (every public entry
# point, both dtypes, 1 and 2 threads, every SIMD level valgrind emulates, results checked
# against the NumPy oracle) under memcheck, with CPython's allocator switched to malloc.
#
#   tools/valgrind.sh            # uses the fastlstm that python imports (build it in place first)
#   tools/valgrind.sh other.py   # another workload
#
# CPython, numpy and scipy report errors and leaks of their own under valgrind (without a
# debug build of CPython); they are counted but only those with a fastlstm frame in their
# stack (its extension modules or sources) fail the run.  The full log and valgrind's XML
# are kept in $FASTLSTM_VALGRIND_DIR (default: a temporary folder, printed at the end).
#
# Environment: PYTHON (default python3), FASTLSTM_VALGRIND_DIR.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
# The real interpreter, not a shim script (valgrind would trace the shell otherwise).
python="$("$python" -c 'import sys; print(sys.executable)')"
out="${FASTLSTM_VALGRIND_DIR:-$(mktemp -d)}"
mkdir -p "$out"

command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 2; }

supp=()
for f in "$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("srcdir") or "")')/Misc/valgrind-python.supp" \
         /usr/lib/valgrind/python3.supp; do
    [[ -f "$f" ]] && supp+=("--suppressions=$f")
done

workload="$(cd "$(dirname "${1:-$root/tools/valgrind_workload.py}")" && pwd)/$(basename "${1:-valgrind_workload.py}")"
cd "$root"
status=0
PYTHONMALLOC=malloc OMP_NUM_THREADS=2 valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite --errors-for-leak-kinds=definite --num-callers=40 \
    --xml=yes --xml-file="$out/memcheck.xml" --log-file="$out/memcheck.log" \
    "${supp[@]}" "$python" "$workload" || status=$?

"$python" - "$out/memcheck.xml" "$status" <<'EOF'
import sys
import xml.etree.ElementTree as ET

path, status = sys.argv[1], int(sys.argv[2])
root = ET.parse(path).getroot()


def ours(error):
    for frame in error.iter("frame"):
        text = " ".join((frame.findtext(k) or "") for k in ("obj", "fn", "file", "dir"))
        if "fastlstm" in text or "kernels.h" in text:
            return True
    return False


errors = [e for e in root.iter("error")]
leaks = [e for e in errors if (e.findtext("kind") or "").startswith("Leak_")]
others = [e for e in errors if e not in leaks]


def leaked(es):
    total = 0
    for e in es:
        x = e.find("xwhat")
        if x is not None:
            total += int(x.findtext("leakedbytes") or 0)
    return total


def count(es):  # occurrences, as valgrind's ERROR SUMMARY counts them
    return sum(int(c.findtext("count")) for c in root.iter("pair")
               if c.findtext("unique") in {e.findtext("unique") for e in es})


ours_errors = [e for e in others if ours(e)]
ours_leaks = [e for e in leaks if ours(e)]
print(f"valgrind.sh: workload exit status {status}")
print(f"valgrind.sh: memory errors: {count(others)} in {len(others)} contexts; "
      f"with a fastlstm frame: {count(ours_errors)}")
print(f"valgrind.sh: definitely lost: {leaked(leaks)} bytes in {len(leaks)} records; "
      f"with a fastlstm frame: {leaked(ours_leaks)} bytes")
for e in ours_errors + ours_leaks:
    print("  ", e.findtext("kind"), (e.findtext("what") or e.find("xwhat").findtext("text")))
sys.exit(1 if status or ours_errors or ours_leaks else 0)
EOF
rc=$?
echo "valgrind.sh: log and XML in $out"
exit "$rc"
