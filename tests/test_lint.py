"""Lint and types: ruff on the Python code, cython-lint on the Cython sources,
mypy on the ``fastlstm`` package, each with its configuration in pyproject.toml.

The tools come with the ``test`` extra.  Outside CI a missing tool skips its
test; in CI (``CI=true``) it is a failure, so the checks never silently vanish.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import IN_CI

ROOT = Path(__file__).resolve().parents[1]

def _require(module):
    if importlib.util.find_spec(module) is None:
        if IN_CI:
            pytest.fail(f"{module} is required in CI (CI=true): install the 'test' extra")
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def _run(args, timeout=120, env=None):
    # Tools that start other tools by name (cython-lint runs ``pycodestyle``) find this
    # interpreter's scripts first, whether or not its environment is activated.
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def test_ruff_clean():
    _require("ruff")
    code, out = _run(["-m", "ruff", "check", "--no-cache", "."])
    assert code == 0, out


def _cython_sources():
    return sorted(p.relative_to(ROOT).as_posix()
                  for ext in ("*.pyx", "*.pxd") for p in (ROOT / "fastlstm").rglob(ext))


@pytest.mark.parametrize("path", _cython_sources())
def test_cython_lint_clean(path):
    _require("cython_lint")
    code, out = _run(["-c", "import sys; from cython_lint.cython_lint import main; "
                            "sys.exit(main())", path])
    findings = [line for line in out.splitlines() if line.strip()]
    assert not findings, "\n".join(findings)
    assert code == 0, out


def test_cython_lint_finds_a_planted_error(tmp_path):
    """The checker works and reads the project's line length (100, not its default 88)."""
    _require("cython_lint")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    src = tmp_path / "bad.pyx"
    long_ok = "x = " + "1 + " * 22 + "1"  # 93 characters: allowed at 100
    src.write_text("import os\n\n" + long_ok + "\n" + "y = " + "1 + " * 30 + "1\n")
    code, out = _run(["-c", "import sys; from cython_lint.cython_lint import main; "
                            "sys.exit(main())", str(src)])
    assert code != 0
    assert "'os' imported but unused" in out
    assert ":4:" in out and "E501" in out and ":3:" not in out, out


def test_mypy_clean():
    _require("mypy")
    # The files to check come from [tool.mypy] in pyproject.toml (the whole package).
    code, out = _run(["-m", "mypy", "--cache-dir", "/dev/null"], timeout=300)
    assert code == 0, out
    assert re.search(r"Success: no issues found in \d+ source files", out), out


USER_CODE = """
from typing import Iterator, List, Tuple

import numpy as np

import fastlstm
import fastlstm as nn
from fastlstm.utils.rnn import pack_sequence


class Tagger(fastlstm.LSTM):
    pass


def ported(x: np.ndarray) -> Tuple[int, float, bool, bool]:
    rnn = nn.LSTM(10, 20, 2).eval()          # eval() keeps the class
    cell: nn.LSTMCell = nn.LSTMCell(3, 4).train(False)
    mine: Tagger = Tagger.from_torch(object())   # from_torch gives the subclass
    outs: List[np.ndarray] = fastlstm.forward_many(rnn, [x, x])   # a list: a list back
    lazy: Iterator[np.ndarray] = fastlstm.forward_many(rnn, iter([x]))
    pairs = fastlstm.forward_many(rnn, [x], return_states=True)
    h_n: np.ndarray = pairs[0][1][0]
    packed = pack_sequence([x])
    del cell, mine, outs, lazy, h_n, packed
    return rnn.hidden_size, rnn.dropout, rnn.training, rnn.bidirectional
"""


def test_user_code_type_checks_strictly(tmp_path):
    # mypy --strict on code ported from torch: train()/eval() gave the private base class,
    # from_torch the base class of a subclass, the configuration attributes Any, and
    # forward_many a list-or-iterator that no list operation took.
    _require("mypy")
    src = tmp_path / "user.py"
    src.write_text(USER_CODE)
    code, out = _run(["-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir",
                      "/dev/null", "--config-file", "/dev/null", str(src)], timeout=300)
    assert code == 0, out


def test_py_typed_marker_and_stubs():
    pkg = ROOT / "fastlstm"
    assert (pkg / "py.typed").exists()
    # Every compiled module that Python code imports has a stub next to it.
    for pyx in pkg.rglob("*.pyx"):
        assert pyx.with_suffix(".pyi").exists(), f"no stub for {pyx.name}"


# The tools that judge the code, each pinned with == in pyproject.toml (CONTRIBUTING.md).
PINNED_TOOLS = ("pytest", "hypothesis", "ruff", "cython-lint", "pycodestyle", "mypy", "sphinx",
                "docutils", "numpydoc", "myst-parser", "furo")


def _extras():
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_dev_tools_are_pinned():
    """A release of a linter on another day must not turn CI red: every judging tool is
    pinned to one version, and in CI that version is the one installed."""
    from importlib.metadata import PackageNotFoundError, version

    pins = {}
    for requirement in _extras()["test"] + _extras()["docs"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(==|>=|~=|<|>|<=|!=)?\s*(\S*)", requirement)
        assert m, requirement
        pins[m.group(1).lower()] = (m.group(2), m.group(3))
    for tool in PINNED_TOOLS:
        assert tool in pins, f"{tool} is not in the test or docs extra"
        op, pinned = pins[tool]
        assert op == "==", f"{tool} must be pinned with ==, not {op or 'no version'}"
        try:
            installed = version(tool)
        except PackageNotFoundError:
            installed = None
        if IN_CI:
            assert installed == pinned, f"{tool} {installed} is installed, pyproject pins {pinned}"


def test_library_dependencies_stay_ranges():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {d.split(">")[0] for d in deps} == {"numpy", "scipy", "threadpoolctl"}
    assert not [d for d in deps if "==" in d], deps


def test_cython_lint_runs_without_the_venv_on_path(tmp_path):
    """cython-lint starts ``pycodestyle`` by name: the suite must find this interpreter's
    copy even when PATH holds nothing of the environment (the README does not activate it)."""
    _require("cython_lint")
    scripts = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(scripts, "pycodestyle")):
        if IN_CI:
            pytest.fail("pycodestyle is required in CI (CI=true): install the 'test' extra")
        pytest.skip("pycodestyle is not installed next to this interpreter")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    src = tmp_path / "spaced.pyx"
    src.write_text("x = 1  # fine\nprint( x)\n")
    env = dict(os.environ, PATH="/nonexistent")
    code, out = _run(["-c", "import sys; from cython_lint.cython_lint import main; "
                            "sys.exit(main())", str(src)], env=env)
    assert "FileNotFoundError" not in out, out
    assert code != 0 and ":2:" in out and "E201" in out, out  # a pycodestyle finding
