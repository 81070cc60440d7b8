"""The source distribution: what ``setup.py sdist`` packs from a clean copy of the
tracked files (the same file list as ``python -m build``, without its isolated build).

It holds every source the build needs and the licence, and leaves out the generated C
(it names the build machine's paths, and the build makes it again) and the tests (they
need the repository).  Skipped outside a git checkout.
"""

import shutil
import subprocess
import sys
import tarfile

import pytest
from _helpers import IN_CI, ROOT


def _tracked():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in out.decode().split("\0") if name]


def test_sdist_holds_the_sources_and_the_licence_only(tmp_path):
    tracked = _tracked()
    if tracked is None:
        if IN_CI:
            raise AssertionError("CI runs from a git clone")
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for name in tracked:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    run = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                         cwd=src, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (archive,) = tmp_path.glob("fastlstm-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    package = {name for name in tracked if name.startswith("fastlstm/")}
    assert package <= names, sorted(package - names)
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py"} <= names
    assert not [name for name in names if name.endswith(".c")]
    assert not [name for name in names if name.startswith("tests/")]
    assert "PKG-INFO" in names
    with tarfile.open(archive) as tar:
        meta = tar.extractfile(f"{archive.name[:-len('.tar.gz')]}/PKG-INFO").read().decode()
    assert "License-Expression: BSD-3-Clause" in meta and "License-File: LICENSE" in meta
