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


@pytest.fixture(autouse=True)
def threads_as_asked():
    """One-timestep layers on the threads a test asks for, however small: by
    default fastlstm runs small ones on one thread (see
    ``kernels._single_step_region``), and the tests use small layers to check
    every way threads share a step.  ``test_single_step`` checks the rule."""
    from fastlstm._ext import kernels

    kernels._set_serial_rule_for_tests(False)
    try:
        yield
    finally:
        kernels._set_serial_rule_for_tests(None)


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
