"""Fork safety: a process forked after its parent ran fastlstm on several OpenMP
threads runs fastlstm on one thread (GNU OpenMP cannot start threads in such a
child and would hang forever), with the same results; the parent keeps its threads.

Each scenario runs in a fresh interpreter with a time limit, so that a hang fails
the test instead of stalling the suite.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastlstm._ext.openmp import openmp_enabled

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

PRELUDE = textwrap.dedent("""
    import os, sys, threading
    import multiprocessing as mp
    import numpy as np
    import fastlstm

    fastlstm.set_num_threads(2)
    rnn = fastlstm.LSTM(32, 48, num_layers=2, rng=0)
    cell = fastlstm.LSTMCell(32, 48, rng=1)
    xs = [np.random.default_rng(i).standard_normal((30, 3, 32)).astype(np.float32)
          for i in range(4)]

    def forward(k):
        out, (h, c) = rnn(xs[k])
        step = cell(xs[k][0])[0]          # a one-step call
        frames = fastlstm.Stream(rnn, 3)   # a stream
        last = [frames.step(x) for x in xs[k][:3]][-1]
        return out, h, c, step, last, fastlstm.get_num_threads()

    expected = [forward(k)[:5] for k in range(4)]   # the parent runs on 2 threads first

    def same(results):
        for k, got in results:
            for a, b in zip(got[:5], expected[k]):
                assert np.allclose(a, b, rtol=0, atol=1e-6), k
        return True
""")


def _run(body, timeout=120):
    code = PRELUDE + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                    "")]))
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:  # a hang in the child: the test fails
        pytest.fail(f"timed out after {timeout} s (a forked child hung): {exc.stderr!r}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_os_fork_child_completes_with_the_same_results():
    out = _run("""
        from fastlstm._ext import kernels
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                got = [(k, forward(k)) for k in range(4)]
                ok = same(got) and kernels.forked_serial() and got[0][1][5] == 1
            finally:
                os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        # The parent keeps its threads.
        assert not kernels.forked_serial()
        assert fastlstm.get_num_threads() == (2 if fastlstm.show_config(as_dict=True)["openmp"]
                                              else 1)
        assert same([(k, forward(k)) for k in range(4)])
        print("ok")
    """)
    assert out.strip() == "ok"


def test_fork_pool_map():
    out = _run("""
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map_async(forward, range(4)).get(timeout=90)
        assert same(list(enumerate(got)))
        assert {g[5] for g in got} == {1}   # the children run on one thread
        print("ok")
    """)
    assert out.strip() == "ok"


def test_fork_pool_inside_a_thread():
    out = _run("""
        result = {}

        def work():
            with mp.get_context("fork").Pool(2) as pool:
                result["got"] = pool.map_async(forward, range(4)).get(timeout=90)

        t = threading.Thread(target=work)
        t.start()
        t.join(100)
        assert not t.is_alive()
        assert same(list(enumerate(result["got"])))
        print("ok")
    """)
    assert out.strip() == "ok"


def test_process_pool_executor_with_fork():
    out = _run("""
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
            got = list(ex.map(forward, range(4), timeout=90))
        assert same(list(enumerate(got)))
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.skipif(not openmp_enabled(), reason="a serial build has one thread")
def test_a_child_forked_before_any_team_keeps_its_threads():
    code = textwrap.dedent("""
        import os
        import fastlstm
        from fastlstm._ext import kernels
        fastlstm.set_num_threads(2)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not kernels.forked_serial() and fastlstm.get_num_threads() == 2
                     else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0, status
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_a_child_forked_during_a_call_that_holds_blas_gets_its_blas_back():
    """A thread of the parent is inside a call that keeps scipy's BLAS at one thread (as a
    layer's BLAS projection does) when another forks: the child has no such call, so its
    BLAS count is the parent's own again and the next call can pin and restore it."""
    out = _run("""
        from fastlstm import _threads
        from threadpoolctl import threadpool_limits

        ctrls = _threads._scipy_blas_controllers()
        with threadpool_limits(2, user_api="blas"):
            before = [c.get() for c in ctrls]
            inside, leave = threading.Event(), threading.Event()

            def hold():
                with _threads.single_threaded_blas():
                    inside.set()
                    leave.wait()

            holder = threading.Thread(target=hold)
            holder.start()
            inside.wait()
            assert [c.get() for c in ctrls] == [1] * len(ctrls)
            pid = os.fork()
            if pid == 0:
                ok = False
                try:
                    ok = _threads._blas_depth == 0 and [c.get() for c in ctrls] == before
                    with _threads.single_threaded_blas():  # the lock is free, too
                        ok = ok and [c.get() for c in ctrls] == [1] * len(ctrls)
                    ok = ok and [c.get() for c in ctrls] == before
                finally:
                    os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            leave.set()
            holder.join()
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            assert _threads._blas_depth == 0 and [c.get() for c in ctrls] == before
        print("ok", before)
    """)
    assert out.startswith("ok")


def test_a_child_forked_while_a_thread_packs_or_loads_weights_runs_its_module():
    """A thread of the parent holds a module's lock (packing its weights on a first call,
    loading new ones) when another forks: the child's module, whose lock no thread of the
    child can release, hung on its first call."""
    out = _run("""
        import time

        fresh = fastlstm.LSTM(32, 48, num_layers=2, rng=0)  # rnn's weights, not packed yet
        inside, leave = threading.Event(), threading.Event()

        def hold():
            with fresh._pack_lock:
                inside.set()
                leave.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        inside.wait()
        pid = os.fork()
        if pid == 0:
            ok = False
            try:
                out, (h, c) = fresh(xs[0])
                fresh.load_state_dict(rnn.state_dict())
                ok = np.allclose(out, expected[0][0], rtol=0, atol=1e-6)
            finally:
                os._exit(0 if ok else 3)
        deadline = time.monotonic() + 30
        try:
            while not (done := os.waitpid(pid, os.WNOHANG))[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    raise SystemExit("the child hung")
                time.sleep(0.05)
        finally:
            leave.set()
            holder.join()
        assert os.WIFEXITED(done[1]) and os.WEXITSTATUS(done[1]) == 0, done
        print("ok")
    """)
    assert out.startswith("ok")
