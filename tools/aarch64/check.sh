#!/usr/bin/env bash
# The portable level of the kernels on AArch64, against the same level on x86: the C
# headers cross-compiled for AArch64 and run under QEMU's user mode on the inputs of an
# x86 run (docs/kernels.md, "SIMD levels").  Needs Debian's gcc-aarch64-linux-gnu and
# qemu-user (apt-get install gcc-aarch64-linux-gnu qemu-user) and a Python with fastlstm
# and torch installed (PYTHON, default python3).
#
#   tools/aarch64/check.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../../fastlstm/_ext/src"
python="${PYTHON:-python3}"
for tool in gcc aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" > /dev/null || { echo "check.sh: $tool not found" >&2; exit 2; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" "$here/compare.py" inputs "$work"
gcc -O3 -I"$src" "$here/harness.c" -o "$work/x86" -lm
aarch64-linux-gnu-gcc -O3 -static -I"$src" "$here/harness.c" -o "$work/aarch64" -lm
(cd "$work" && ./x86 x86.out > /dev/null && qemu-aarch64 ./aarch64 aarch64.out > /dev/null)
"$python" "$here/compare.py" compare "$work/x86.out" "$work/aarch64.out"
