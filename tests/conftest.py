"""Shared test fixtures (fixtures only: what the tests share otherwise is in ``_helpers``).

PyTorch is the oracle for the parity tests.  On a user's machine without torch
those tests skip; in CI (``CI=true``) a missing torch is an error, so parity is
never silently skipped there.
"""

import numpy as np
import pytest
from _helpers import TORCH


@pytest.fixture(scope="session")
def torch():
    """The torch module; skips the test when torch is missing outside CI."""
    if TORCH is None:
        pytest.skip("torch is not installed (parity tests need torch==2.13.0)")
    return TORCH


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    """Run the test with fastlstm on 1 and on 2 threads; the default is restored after."""
    import fastlstm

    fastlstm.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        fastlstm.set_num_threads(None)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
