"""The serial build: compiled without OpenMP (FASTLSTM_NO_OPENMP=1), it must
still build, report one thread, and pass the parity and kernel tests.

The sources are copied to a temporary folder, built in place there, and the
tests run in a subprocess that imports that copy.  Skipped outside CI when no
compiler or Cython is available; in CI (CI=true) it always runs.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import IN_CI

ROOT = Path(__file__).resolve().parents[1]


def _can_build():
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return shutil.which(os.environ.get("CC", "cc")) is not None or shutil.which("gcc") is not None


@pytest.mark.skipif(not IN_CI and not _can_build(), reason="needs Cython and a C compiler")
def test_serial_build_passes_parity(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "fastlstm", src / "fastlstm",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    shutil.copytree(ROOT / "tests", src / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "test_serial_build.py"))
    env = dict(os.environ, FASTLSTM_NO_OPENMP="1")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src,
                           env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "building without OpenMP" in build.stdout

    env["PYTHONPATH"] = str(src)
    check = subprocess.run(
        [sys.executable, "-c",
         "import fastlstm, fastlstm._ext.openmp as o; "
         "assert not o.openmp_enabled(); fastlstm.set_num_threads(4); "
         "print(fastlstm.__file__, fastlstm.get_num_threads())"],
        cwd=src, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    path, threads = check.stdout.split()
    assert Path(path).resolve().is_relative_to(src.resolve())
    assert threads == "1"

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_parity.py", "tests/test_reference.py", "tests/test_kernels.py"],
        cwd=src, env=env, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout[-5000:] + tests.stderr[-2000:]
