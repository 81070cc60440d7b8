"""Memory safety: a fast subset of the suite under AddressSanitizer and
UndefinedBehaviorSanitizer.

``tools/sanitize.sh`` copies the sources to a temporary folder, builds the
extensions there with ``FASTLSTM_SANITIZE=1`` (``-fsanitize=address,undefined``,
UB fatal) and runs pytest with gcc's sanitizer runtimes preloaded.  Here it runs
the kernel (float, bfloat16 and int8), int8 module, cell, stream, rnn, error, property and
thread tests; run the script with no arguments for the whole suite (docs/hardening.md).  The harness
itself is checked too: the build is instrumented, and a planted out-of-bounds
read and a planted undefined behaviour are reported and abort.

The valgrind run (tools/valgrind.sh) is here too, when valgrind is installed.

Skipped outside CI without bash, gcc's sanitizer runtimes or Cython; in CI
(``CI=true``) it always runs.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import IN_CI

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "sanitize.sh"

SUBSET = [
    "tests/test_kernels.py",
    "tests/test_bf16_kernels.py",
    "tests/test_int8_kernels.py",
    "tests/test_int8_modules.py",
    "tests/test_cell.py",
    "tests/test_stream.py",
    "tests/test_rnn.py",
    "tests/test_errors.py",
    "tests/test_properties.py",
    "tests/test_threads.py",
]


def _runtime(name):
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        return None
    out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def _can_run():
    if not sys.platform.startswith("linux") or shutil.which("bash") is None:
        return False
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return _runtime("libasan.so") is not None and _runtime("libubsan.so") is not None


pytestmark = pytest.mark.skipif(not IN_CI and not _can_run(),
                                reason="needs Linux, bash, Cython and gcc's libasan/libubsan")


def _sanitizer_env(work):
    return dict(
        os.environ,
        PYTHONPATH=str(work),
        LD_PRELOAD=f"{_runtime('libasan.so')} {_runtime('libubsan.so')}",
        ASAN_OPTIONS="detect_leaks=0",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """The subset run by tools/sanitize.sh; the build folder and the finished process."""
    work = tmp_path_factory.mktemp("sanitize")
    env = dict(os.environ, FASTLSTM_SANITIZE_DIR=str(work), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), *SUBSET], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=540)
    return work, proc


def test_subset_passes_under_asan_and_ubsan(sanitized):
    _, proc = sanitized
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "0 sanitizer report(s)" in out, out[-3000:]
    assert " passed" in out and " failed" not in out, out[-3000:]


def test_build_is_instrumented(sanitized):
    work, proc = sanitized
    libs = sorted((work / "fastlstm" / "_ext").glob("*.so"))
    assert len(libs) == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    for lib in libs:
        data = lib.read_bytes()
        assert b"__asan_report_" in data, f"{lib.name} is not built for ASan"
        assert b"__ubsan_handle_" in data, f"{lib.name} is not built for UBSan"


def test_asan_catches_an_out_of_bounds_read(sanitized):
    # The kernels' product with a packed weight buffer 1000 values too short.
    work, _ = sanitized
    code = (
        "import numpy as np\n"
        "from fastlstm._ext import kernels\n"
        "w = kernels.panel_width('float64')\n"
        "a, g = np.ones((3, 300)), np.zeros((3, w))\n"
        "kernels._matmul_for_tests(a, np.ones(300 * w - 1000), g, False)\n"
        "print('not caught')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=_sanitizer_env(work),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not caught" not in proc.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert "kernels.h" in proc.stderr  # symbolized down to the kernel source


def test_ubsan_aborts_on_undefined_behaviour(sanitized, tmp_path):
    # A signed overflow in a library built with the same flags, loaded the same way.
    work, _ = sanitized
    src = tmp_path / "ub.c"
    src.write_text("int fl_overflow(int x) { return x + 1; }\n")
    lib = tmp_path / "libub.so"
    cc = os.environ.get("CC", "gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-O0", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", str(src), "-o", str(lib)], check=True)
    code = (f"import ctypes; lib = ctypes.CDLL({str(lib)!r}); "
            "print(lib.fl_overflow(2**31 - 1)); print('not caught')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=_sanitizer_env(work),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not caught" not in proc.stdout
    assert "signed integer overflow" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.skipif(shutil.which("valgrind") is None or not sys.platform.startswith("linux"),
                    reason="valgrind is not installed")
def test_valgrind_memcheck_clean(tmp_path):
    """tools/valgrind.sh: the short workload, checked against the oracle, with no
    memcheck error or definite leak that has a fastlstm frame in its stack."""
    env = dict(os.environ, PYTHON=sys.executable, FASTLSTM_VALGRIND_DIR=str(tmp_path))
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run(["bash", str(ROOT / "tools" / "valgrind.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "all results match the oracle" in (tmp_path / "memcheck.log").read_text() + out
    assert "with a fastlstm frame: 0\n" in out and "with a fastlstm frame: 0 bytes" in out, out
