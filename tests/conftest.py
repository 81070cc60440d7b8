"""Shared test configuration.

PyTorch is the oracle for the parity tests.  On a user's machine without torch
those tests skip; in CI (``CI=true``) a missing torch is an error, so parity is
never silently skipped there.
"""

import importlib
import os
import warnings

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _import_torch():
    try:
        return importlib.import_module("torch")
    except ImportError:
        if IN_CI:
            raise RuntimeError("torch is required in CI (CI=true): install torch==2.13.0") from None
        return None


_TORCH = _import_torch()


@pytest.fixture(scope="session")
def torch():
    """The torch module; skips the test when torch is missing outside CI."""
    if _TORCH is None:
        pytest.skip("torch is not installed (parity tests need torch==2.13.0)")
    return _TORCH


@pytest.fixture(autouse=True)
def threads_as_asked():
    """One-timestep layers on the threads a test asks for, however small: by
    default fastlstm runs small ones on one thread (see
    ``_lstm._single_step_region``), and the tests use small layers to check
    every way threads share a step.  ``test_single_step`` checks the rule."""
    from fastlstm import _lstm

    _lstm._set_serial_rule_for_tests(False)
    try:
        yield
    finally:
        _lstm._set_serial_rule_for_tests(None)


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


def torch_single_thread():
    """Generator for a fixture: torch on one thread while it runs, restored after."""
    if _TORCH is None:
        yield
        return
    n = _TORCH.get_num_threads()
    _TORCH.set_num_threads(1)
    try:
        yield
    finally:
        _TORCH.set_num_threads(n)


def raised(fn):
    """The exception ``fn()`` raises (warnings silenced), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any exception is data here
            return exc
    return None


# Tolerances of the parity tests (max abs error on output, h_n and c_n).
TOL = {np.float32: 1e-5, np.float64: 1e-12}
