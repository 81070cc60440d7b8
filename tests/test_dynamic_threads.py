"""Shared CPUs: no call runs more threads than the usable CPUs; under contention the
team shrinks to the CPUs its threads actually get (``team.h``), and grows back when the
machine is free; results stay those of the NumPy oracle throughout.  OpenMP's idle
threads spin briefly after a call (``GOMP_SPINCOUNT``), unless the user chose."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastlstm
from fastlstm._ext import kernels
from fastlstm._ext.openmp import openmp_enabled
from tests._helpers import ROOT, TOL
from tests._helpers.reference import reference_forward

needs_threads = pytest.mark.skipif(
    not openmp_enabled() or len(os.sched_getaffinity(0)) < 2,
    reason="needs an OpenMP build and 2 CPUs or more")


@pytest.fixture(autouse=True)
def _fresh_controller():
    fastlstm.set_dynamic_threads(True)  # also clears the controller's state
    yield
    fastlstm.set_num_threads(None)
    fastlstm.set_dynamic_threads(True)


# --------------------------------------------------------------- the decision rule
@pytest.mark.parametrize("team, speed, cpus, cap", [
    # 2 threads meeting every step beside one busy process: each runs 2/3 of the
    # time, both at once 1/3: 0.67x one thread, and one thread gets a whole CPU.
    (2, 2 * (1 - 2 / 3), 2 * 2 / 3, 1),
    # The same team meeting once a call (batch chunks): the slower thread sets the
    # pace, 2 x 2/3 = 1.33x one thread: keep both.
    (2, 2 * 2 / 3, 2 * 2 / 3, 0),
    (2, 1.95, 1.98, 0),                    # an idle machine
    (4, 0.0, 2.0, 2),                      # 4 threads on 2 CPUs: the 2 they got
    (16, 16 * (1 - 0.5), 15.5, 15),        # 16 threads, one sharing its CPU
    (16, 15.6, 15.8, 0),                   # 16 threads, a little noise
    (1, 0.2, 0.2, 0),                      # one thread has nothing to shrink
])
def test_decision(team, speed, cpus, cap):
    assert kernels.team_decision(team, speed, cpus) == cap


# ------------------------------------------------------------- the usable CPUs
@needs_threads
def test_no_team_larger_than_the_cpus():
    cpus = kernels.team_state()["cpus"] or os.cpu_count()
    fastlstm.set_num_threads(4 * cpus)
    assert fastlstm.get_num_threads() == 4 * cpus  # what was asked, as torch reports it
    assert kernels.team_size(4 * cpus) == cpus
    assert kernels.team_size(1) == 1


@needs_threads
def test_oversubscribed_calls_match_the_oracle():
    rnn = fastlstm.LSTM(32, 48, num_layers=2, bidirectional=True, proj_size=16)
    x = np.random.default_rng(0).standard_normal((20, 3, 32)).astype(np.float32)
    want, (wh, wc) = reference_forward(rnn, x)
    fastlstm.set_num_threads(8 * len(os.sched_getaffinity(0)))
    out, (h, c) = rnn(x)
    for got, ref in ((out, want), (h, wh), (c, wc)):
        np.testing.assert_allclose(got, ref, atol=TOL[np.float32], rtol=0)


def _run(code, unset=(), **env):
    env = {k: v for k, v in {**os.environ, **env}.items() if k not in unset}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@needs_threads
def test_one_cpu_of_affinity_runs_one_thread():
    out = _run("""
import os, fastlstm
from fastlstm._ext import kernels
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
fastlstm.set_num_threads(None)   # the bounds are read again
fastlstm.set_num_threads(8)
print(fastlstm.get_num_threads(), kernels.team_size(8))
""")
    assert out == "8 1"


# ------------------------------------------------------------- under contention
def _busy(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@needs_threads
def test_contention_shrinks_the_team_and_the_free_machine_grows_it_back():
    rnn = fastlstm.LSTM(128, 128)
    x = np.random.default_rng(1).standard_normal((100, 1, 128)).astype(np.float32)
    want, (wh, wc) = reference_forward(rnn, x)
    fastlstm.set_num_threads(2)
    neighbours = _busy(len(os.sched_getaffinity(0)))
    try:
        deadline = time.monotonic() + 20
        while kernels.team_state()["cap"] == 0 and time.monotonic() < deadline:
            out, (h, c) = rnn(x)
            np.testing.assert_allclose(out, want, atol=TOL[np.float32], rtol=0)
        state = kernels.team_state()
        assert state["cap"] == 1 and state["contended_windows"] >= 1, (repr(state), os.getloadavg())
        assert kernels.team_size(2) == 1 or state["cap_left_s"] == 0
        for _ in range(20):  # the serial calls give the same results
            out, (h, c) = rnn(x)
            for got, ref in ((out, want), (h, wh), (c, wc)):
                np.testing.assert_allclose(got, ref, atol=TOL[np.float32], rtol=0)
    finally:
        for p in neighbours:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 30
    while kernels.team_state()["cap"] != 0 and time.monotonic() < deadline:
        out, _ = rnn(x)
        np.testing.assert_allclose(out, want, atol=TOL[np.float32], rtol=0)
    # (Fails only if something else keeps the CPUs busy for the whole 30 s.)
    assert kernels.team_state()["cap"] == 0, (kernels.team_state(), os.getloadavg())
    assert kernels.team_size(2) == 2


@needs_threads
def test_without_dynamic_threads_the_count_holds():
    fastlstm.set_dynamic_threads(False)
    assert fastlstm.get_dynamic_threads() is False
    assert fastlstm.show_config(as_dict=True)["dynamic_threads"] == "off"
    rnn = fastlstm.LSTM(64, 64)
    x = np.random.default_rng(2).standard_normal((50, 1, 64)).astype(np.float32)
    fastlstm.set_num_threads(2)
    neighbours = _busy(len(os.sched_getaffinity(0)))
    try:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            rnn(x)
    finally:
        for p in neighbours:
            p.kill()
            p.wait()
    state = kernels.team_state()
    assert state["cap"] == 0 and state["windows"] == 0, state
    assert kernels.team_size(2) == 2


def test_set_dynamic_threads_takes_a_bool():
    with pytest.raises(TypeError, match="expects a bool, got int"):
        fastlstm.set_dynamic_threads(1)
    assert fastlstm.get_dynamic_threads() is True
    assert fastlstm.show_config(as_dict=True)["dynamic_threads"].startswith("on")


# ------------------------------------------------------- OpenMP's idle threads
@needs_threads
def test_idle_threads_sleep_soon_after_a_call():
    out = _run("""
import os, time, numpy as np, fastlstm
from fastlstm._ext import IDLE_WAIT
print(IDLE_WAIT)
print("GOMP_SPINCOUNT" in os.environ)
fastlstm.set_num_threads(2)
m = fastlstm.LSTM(128, 128)
x = np.ones((50, 16, 128), np.float32)
spent = []
for _ in range(5):
    m(x)
    t = time.process_time()
    time.sleep(0.05)
    spent.append(time.process_time() - t)
print(sorted(spent)[2] * 1e3)
""", unset=("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"))
    lines = out.splitlines()
    assert lines[0] == "GOMP_SPINCOUNT=10000 (fastlstm's default)"
    assert lines[1] == "False"  # set only while libgomp loaded
    # libgomp's default spins about 300,000 rounds (3-10 ms); 10,000 rounds well under 2 ms.
    assert float(lines[2]) < 2.0


def test_the_users_wait_policy_is_kept():
    out = _run("""
import os, fastlstm
from fastlstm._ext import IDLE_WAIT
print(IDLE_WAIT, os.environ["GOMP_SPINCOUNT"])
print(fastlstm.show_config(as_dict=True)["openmp_idle_wait"])
""", GOMP_SPINCOUNT="123")
    assert out.splitlines() == ["GOMP_SPINCOUNT=123 (set by the user) 123",
                                "GOMP_SPINCOUNT=123 (set by the user)"]
