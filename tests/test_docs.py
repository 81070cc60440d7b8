"""The documentation: Sphinx builds it with warnings as errors, every public name is in the
API reference with an example in its docstring, and every docstring example runs and prints
what it shows.

The Markdown pages' own examples run in ``tests/test_readme.py``.  Sphinx, numpydoc,
myst-parser and the theme come with the ``docs`` extra, which the ``test`` extra includes;
outside CI, without them the build test skips, and in CI (``CI=true``) that is a failure.
Docstring examples that use torch run wherever torch is installed (always in CI); without
it, a docstring's examples run up to its first ``import torch`` and the rest is skipped.
"""

import doctest
import importlib
import importlib.util
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import IN_CI

import fastlstm
import fastlstm.rnn
import fastlstm.serialization

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The modules whose __all__ is public API, and the classes whose public methods are.
MODULES = (fastlstm, fastlstm.rnn, fastlstm.serialization)
CLASSES = (fastlstm.LSTM, fastlstm.LSTMCell, fastlstm.Stream, fastlstm.PackedSequence,
           fastlstm.serialization.Inspection)
# Public names without an example of their own: a version string and a constant.
NO_EXAMPLE = {"fastlstm.__version__", "fastlstm.serialization.FORMATS"}


def _public():
    """{qualified name: object} for every public name and public method, each object once
    (under the first name that exports it: ``fastlstm.pack_sequence`` is also
    ``fastlstm.rnn.pack_sequence``)."""
    names, seen = {}, set()

    def add(name, obj):
        if id(obj) not in seen or isinstance(obj, (str, int, bool)):
            seen.add(id(obj))
            names[name] = obj

    for module in MODULES:
        add(module.__name__, module)
        for name in module.__all__:
            add(f"{module.__name__}.{name}", getattr(module, name))
    for cls in CLASSES:
        for name, member in inspect.getmembers(cls):
            if (not name.startswith("_") and inspect.isroutine(member)
                    and getattr(member, "__module__", "").startswith("fastlstm")):
                add(f"fastlstm.{cls.__name__}.{name}", member)
    return names


PUBLIC = _public()
ROUTINES_AND_CLASSES = {name: obj for name, obj in PUBLIC.items()
                        if name not in NO_EXAMPLE and not inspect.ismodule(obj)}


def _doctest(name):
    """The docstring examples of one public name, as a DocTest with fresh globals."""
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(PUBLIC[name], name, globs={}) if t.examples]
    return tests[0] if tests else None


DOCTESTS = sorted(name for name in PUBLIC if _doctest(name) is not None)


def _uses_torch(example):
    return re.search(r"^\s*(import torch|from torch\b)", example.source, flags=re.M) is not None


@pytest.mark.parametrize("name", sorted(ROUTINES_AND_CLASSES))
def test_public_name_has_numpydoc_example(name):
    doc = inspect.getdoc(ROUTINES_AND_CLASSES[name]) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert re.search(r"^Examples\n--------\n", doc, flags=re.M), \
        f"{name}'s docstring has no numpydoc 'Examples' section"
    assert ">>> " in doc.split("Examples\n--------\n", 1)[1], f"{name}: Examples without code"


@pytest.mark.parametrize("name", DOCTESTS)
def test_docstring_examples_run(name, request):
    test = _doctest(name)
    cut = next((i for i, ex in enumerate(test.examples) if _uses_torch(ex)), None)
    skipped = False
    if cut is not None:
        try:
            request.getfixturevalue("torch")
        except pytest.skip.Exception:
            test.examples, skipped = test.examples[:cut], True
    out = io.StringIO()
    result = doctest.DocTestRunner(verbose=False).run(test, out=out.write)
    assert result.failed == 0, out.getvalue()
    if skipped:
        pytest.skip(f"{name}: the examples from the first 'import torch' on need torch")


def _optional(name):
    """Module ``name``, imported; None for ``fastlstm.dask`` without Dask, outside CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if IN_CI or name != "fastlstm.dask":
            raise
        return None


def test_every_public_name_is_in_the_api_reference():
    # Follow api.rst's currentmodule directives; every public object must be the target of
    # an auto* directive (under any of its names).
    documented, module = set(), None
    for line in (DOCS / "api.rst").read_text().splitlines():
        m = re.match(r"\.\. (currentmodule|automodule|auto\w+):: (\S+)", line)
        if not m:
            continue
        if m.group(1) in ("currentmodule", "automodule"):
            module = m.group(2)
            if _optional(module) is not None:
                documented.add(id(sys.modules[module]))
        elif _optional(module) is not None:
            obj = sys.modules[module]
            for part in m.group(2).split("."):
                obj = getattr(obj, part)
            documented.add(id(obj))
    missing = [f"{m.__name__}.{n}" for m in MODULES for n in m.__all__
               if n != "__version__" and id(getattr(m, n)) not in documented]
    assert not missing, f"not in docs/api.rst: {missing}"


def test_sphinx_build_without_warnings(tmp_path):
    for module in ("sphinx", "numpydoc", "myst_parser", "furo"):
        if importlib.util.find_spec(module) is None:
            if IN_CI:
                pytest.fail(f"{module} is required in CI (CI=true): install the 'docs' extra")
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "html" / "api.html").is_file()
