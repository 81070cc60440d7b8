"""The README's Python examples run as written and give the results they claim."""

import os
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_port_example_runs():
    block = _python_blocks()[0]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["output"].shape == (5, 3, 20)
    assert namespace["hn"].shape == (2, 3, 20) and namespace["cn"].shape == (2, 3, 20)


def test_from_torch_example_matches_torch(torch):
    block = _python_blocks()[1]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    x = torch.randn(5, 3, 10)
    with torch.no_grad():
        ref, _ = namespace["torch_lstm"](x)
    out, _ = namespace["fast"](x.numpy())
    assert np.abs(out - ref.numpy()).max() < 1e-5


def test_docs_examples_run(request):
    # Every Python example in docs/ runs as written (their asserts check the claims);
    # the ones that use torch need it (the torch fixture: skipped without it, outside CI).
    for page in sorted((README.parent / "docs").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
            if re.search(r"^import torch$", block, flags=re.M):
                request.getfixturevalue("torch")
            if "torch.onnx" in block:
                _require("onnx")
            if re.search(r"^(import|from) (dask|distributed)", block, flags=re.M):
                _require("dask")
                _require("distributed")
            saved = dict(os.environ)
            try:
                exec(compile(block, page.name, "exec"), {"__name__": "__main__"})
            finally:  # distributed's LocalCluster sets OMP_NUM_THREADS=1 here: put it back
                os.environ.clear()
                os.environ.update(saved)


def _require(module):
    """An optional package a docs example needs: skipped without it, but not in CI."""
    import importlib

    import pytest

    from tests._helpers import IN_CI

    try:
        importlib.import_module(module)
    except ImportError:
        if IN_CI:
            raise
        pytest.skip(f"{module} is not installed (a docs example needs it)")
