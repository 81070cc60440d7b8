"""OpenBLAS's parallel jobs on fastlstm's pool (``set_blas_sharing``, src/blas_share.h).

Products are checked against a float64 oracle computed with OpenBLAS's own threads
(sharing off) and against an elementwise NumPy sum; every check that could hang (fork,
concurrent threads) runs in a subprocess with a timeout.
"""

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _helpers import batch_invariant

import fastlstm
from fastlstm._ext import kernels

IN_CI = os.environ.get("CI", "").lower() == "true"

if not fastlstm.get_blas_sharing():
    if IN_CI:
        raise AssertionError("CI installs NumPy/SciPy wheels with OpenBLAS 0.3.28+: "
                             f"sharing should be on ({fastlstm.show_config(as_dict=True)})")
    pytest.skip("no OpenBLAS 0.3.28+ (pthreads) in this process", allow_module_level=True)


@pytest.fixture(autouse=True)
def _sharing_on():
    yield
    fastlstm.set_blas_sharing(True)


def _oracle(a, b):
    """a @ b in float64 with OpenBLAS's own threads."""
    fastlstm.set_blas_sharing(False)
    try:
        return a.astype(np.float64) @ b.astype(np.float64)
    finally:
        fastlstm.set_blas_sharing(True)


def _run(code, timeout=120, env=None):
    full_env = dict(os.environ, **(env or {}))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=full_env)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(300, 256, 1000), (512, 512, 512), (64, 2048, 64),
                                   (1000, 40, 700)])
def test_products_on_the_pool_match_the_oracle(dtype, shape):
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    expected = _oracle(a, b)
    calls = kernels.blas_route_counts()[0]
    got = a @ b
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.sqrt(k))
    if np.__config__.CONFIG["Build Dependencies"]["blas"]["name"].startswith("scipy-openblas"):
        assert kernels.blas_route_counts()[0] > calls, "the product ran no parallel jobs here"


def test_scipy_blas_and_lapack_on_the_pool():
    import scipy.linalg

    rng = np.random.default_rng(1)
    a = rng.standard_normal((600, 600))
    spd = a @ a.T + 600 * np.eye(600)
    c = scipy.linalg.cholesky(spd, lower=True)
    np.testing.assert_allclose(c @ c.T, spd, rtol=1e-10, atol=1e-8)
    g = scipy.linalg.blas.dgemm(1.0, a, a.T)
    np.testing.assert_allclose(g, (a[:, None, :] * a[None, :, :]).sum(-1), rtol=1e-9,
                               atol=1e-9)


def test_concurrent_callers_and_lstm_calls():
    """Python threads doing matmuls and fastlstm forwards at once: every result right."""
    rng = np.random.default_rng(2)
    mats = [rng.standard_normal((400, 300)).astype(np.float32) for _ in range(4)]
    expected = [_oracle(m, m.T) for m in mats]
    lstm = fastlstm.LSTM(32, 48)
    x = rng.standard_normal((20, 8, 32)).astype(np.float32)
    y_ref = lstm(x)[0]

    def work(i):
        for _ in range(15):
            np.testing.assert_allclose(mats[i] @ mats[i].T, expected[i], rtol=1e-4,
                                       atol=1e-3)
            # The same bits unless the thread count moved a projection to or from BLAS.
            np.testing.assert_allclose(lstm(x)[0], y_ref, rtol=0,
                                       atol=0 if batch_invariant() else 1e-6)
        return i

    with ThreadPoolExecutor(4) as ex:
        assert sorted(ex.map(work, range(4))) == [0, 1, 2, 3]


@pytest.fixture
def _two_fixed_threads():
    dynamic = fastlstm.get_dynamic_threads()
    fastlstm.set_num_threads(2)
    fastlstm.set_dynamic_threads(False)
    yield
    fastlstm.set_num_threads(None)
    fastlstm.set_dynamic_threads(dynamic)


def test_pool_sleeps_when_a_fastlstm_team_starts(_two_fixed_threads):
    a = np.ones((400, 400), np.float32)
    lstm = fastlstm.LSTM(64, 64)
    x = np.zeros((50, 8, 64), np.float32)
    a @ a
    time.sleep(0.003)
    # OpenBLAS's wait: the pool spins for about 0.1 s after a call...
    assert kernels.blas_route_counts()[3] == 0
    a @ a
    lstm(x)
    deadline = time.perf_counter() + 0.05
    _, _, workers, sleepers = kernels.blas_route_counts()
    while sleepers < workers and time.perf_counter() < deadline:
        time.sleep(0.001)
        _, _, workers, sleepers = kernels.blas_route_counts()
    # ...but not after a fastlstm team started: it sleeps at once.
    assert workers >= 1 and sleepers == workers


def test_off_gives_openblas_its_threads_back():
    a = np.ones((500, 500))
    fastlstm.set_blas_sharing(False)
    assert not fastlstm.get_blas_sharing()
    assert fastlstm.show_config(as_dict=True)["blas_sharing"] == "off"
    calls = kernels.blas_route_counts()[0]
    np.testing.assert_array_equal(a @ a, np.full((500, 500), 500.0))
    assert kernels.blas_route_counts()[0] == calls
    fastlstm.set_blas_sharing(True)
    assert fastlstm.get_blas_sharing()
    assert fastlstm.show_config(as_dict=True)["blas_sharing"].startswith("on: ")
    np.testing.assert_array_equal(a @ a, np.full((500, 500), 500.0))


def test_pool_threads_start_with_the_routing_not_at_the_first_product():
    # The pool started its threads at the first threaded product; a process that could no
    # longer start threads then (out of memory or threads, here: thread stacks the size of
    # a 2 GB stack limit under an address-space limit) aborted a plain NumPy matmul that
    # OpenBLAS's own threads, started earlier, would have run.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if hard != resource.RLIM_INFINITY and hard < 2_000_000_000:
        pytest.skip(f"the hard stack limit ({hard}) is below 2 GB")
    if np.__config__.CONFIG["Build Dependencies"]["blas"]["name"] != "scipy-openblas":
        pytest.skip("needs NumPy's own OpenBLAS")

    def big_stacks():
        resource.setrlimit(resource.RLIMIT_STACK, (2_000_000_000, hard))

    code = """
        import resource, numpy as np, fastlstm
        from fastlstm._ext import kernels
        from threadpoolctl import threadpool_info
        assert fastlstm.get_blas_sharing()
        if min(i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas") < 2:
            raise SystemExit(print("one thread"))
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((600, 600)), rng.standard_normal((600, 600))
        want = np.einsum("ik,kj->ij", a, b)  # NumPy's own loops, no BLAS
        pages = int(open("/proc/self/statm").read().split()[0])
        resource.setrlimit(resource.RLIMIT_AS, (pages * 4096 + (600 << 20), -1))
        got = a @ b
        assert kernels.blas_route_counts()[1] >= 1, kernels.blas_route_counts()
        assert np.abs(got - want).max() < 1e-9
        print("ok")
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=120, preexec_fn=big_stacks)
    if res.stdout.strip() == "one thread":
        pytest.skip("OpenBLAS runs one thread here")
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


def test_set_blas_sharing_wants_a_bool():
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastlstm.set_blas_sharing(1)


def test_environment_turns_it_off():
    out = _run("""
        import numpy as np, fastlstm
        from fastlstm._ext import kernels
        a = np.ones((500, 500)); a @ a
        print(fastlstm.get_blas_sharing(), kernels.blas_route_counts()[0],
              fastlstm.show_config(as_dict=True)["blas_sharing"])
    """, env={"FASTLSTM_SHARE_BLAS": "0"})
    assert out.split() == ["False", "0", "off", "(FASTLSTM_SHARE_BLAS=0)"]


def test_fork_child_runs_blas_and_lstm():
    """A child forked after the pool and a fastlstm team ran: its products (on a
    fresh pool) and forwards are right, and nothing hangs."""
    out = _run("""
        import os, numpy as np, fastlstm, multiprocessing as mp
        from fastlstm._ext import kernels
        rng = np.random.default_rng(0)
        a = rng.standard_normal((500, 400))
        expected = (a[:, None, :] * a[None, :, :]).sum(-1)
        lstm = fastlstm.LSTM(16, 32)
        x = rng.standard_normal((10, 4, 16)).astype(np.float32)
        assert np.allclose(a @ a.T, expected) and kernels.blas_route_counts()[2] >= 1
        # The product right after a forward runs on its OpenMP team, still hot: the
        # child, forked after that too, must take neither that team nor the pool's threads.
        teamed = kernels.blas_hot_window()[2]
        for _ in range(50):  # the product must follow within the window: retried
            y = lstm(x)[0]
            assert np.allclose(a @ a.T, expected)
            if kernels.blas_hot_window()[2] > teamed:
                break
        assert kernels.blas_hot_window()[2] > teamed

        def child(_=None):
            ok = np.allclose(a @ a.T, expected) and np.array_equal(lstm(x)[0], y)
            return ok and kernels.blas_route_counts()[2] >= 1

        pid = os.fork()
        if pid == 0:
            os._exit(0 if child() else 3)
        assert os.waitpid(pid, 0)[1] == 0
        with mp.get_context("fork").Pool(2) as pool:
            assert all(pool.map(child, range(4)))
        assert np.allclose(a @ a.T, expected)
        print("ok")
    """)
    assert out.strip() == "ok"


# ---------------------------------------------------------------- the hot team
# Each in a fresh process: the window narrows for good once a second thread of the
# process has started a team (as other tests' threads have here).
_HOT_PRELUDE = """
    import time
    import numpy as np, fastlstm
    from threadpoolctl import threadpool_limits
    from fastlstm._ext import kernels
    fastlstm.set_num_threads(2)
    fastlstm.set_dynamic_threads(False)
    threadpool_limits(limits=2, user_api="blas")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 256)).astype(np.float32)
    b = rng.standard_normal((256, 1000)).astype(np.float32)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    lstm = fastlstm.LSTM(64, 128, rng=0)
    x = rng.standard_normal((5, 16, 64)).astype(np.float32)

    def products_after_forwards(tries=50, gap=0.0):
        teamed = kernels.blas_hot_window()[2]
        for _ in range(tries):
            lstm(x)
            if gap:
                time.sleep(gap)
            assert np.allclose(a @ b, expected, rtol=1e-4, atol=1e-3)
        return kernels.blas_hot_window()[2] - teamed
"""


def _hot(code):
    return _run(textwrap.dedent(_HOT_PRELUDE) + textwrap.dedent(code)).split()


def test_product_right_after_a_forward_runs_on_its_team():
    # A window is a tenth of a millisecond or so: on a loaded machine some products miss it.
    assert _hot("""
        print(kernels.blas_hot_window()[0] > 0, products_after_forwards() >= 1)
    """) == ["True", "True"]


def test_window_zero_keeps_products_on_the_pool():
    assert _hot("""
        kernels.blas_hot_window(0)
        print(products_after_forwards(10))
    """) == ["0"]


def test_product_after_a_quiet_gap_takes_the_pool():
    assert _hot("""
        print(products_after_forwards(5, gap=0.005))  # past any window: the team may sleep
    """) == ["0"]


def test_product_in_another_thread_takes_the_pool():
    # OpenMP's hot team belongs to the thread that started it: another Python thread's
    # product right after this thread's forward must not take it.
    assert _hot("""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as ex:
            teamed = kernels.blas_hot_window()[2]
            for _ in range(10):
                lstm(x)
                assert np.allclose(ex.submit(lambda: a @ b).result(), expected, atol=1e-3)
        print(kernels.blas_hot_window()[2] - teamed)
    """) == ["0"]


def test_second_thread_with_a_team_narrows_the_window():
    # Two threads' teams: libgomp spins far less (more threads than CPUs), so the
    # shared window applies (set to 0 here: no product may take a team).
    assert _hot("""
        import threading
        kernels.blas_hot_window(10**9, 0)
        before = products_after_forwards(5)
        t = threading.Thread(target=lambda: lstm(x))
        t.start(); t.join()
        print(before >= 1, products_after_forwards(10))
    """) == ["True", "0"]


@pytest.mark.parametrize("env, idle_wait, rounds", [
    ({}, "GOMP_SPINCOUNT=10000 (fastlstm's default)", 10000),
    ({}, "the OpenMP runtime's default (it was loaded before fastlstm)", 300000),
    ({"GOMP_SPINCOUNT": "0"}, "GOMP_SPINCOUNT=0 (set by the user)", 0),
    ({"GOMP_SPINCOUNT": "20k"}, "GOMP_SPINCOUNT=20k (set by the user)", 20000),
    ({"GOMP_SPINCOUNT": "3M"}, "GOMP_SPINCOUNT=3M (set by the user)", 3000000),
    ({"GOMP_SPINCOUNT": "Infinite"}, "GOMP_SPINCOUNT=Infinite (set by the user)", 2**62),
    ({"GOMP_SPINCOUNT": "lots"}, "GOMP_SPINCOUNT=lots (set by the user)", 0),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "OMP_WAIT_POLICY=PASSIVE (set by the user)", 0),
    ({"OMP_WAIT_POLICY": "active"}, "OMP_WAIT_POLICY=active (set by the user)", 2**62),
    ({"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "5000"},
     "GOMP_SPINCOUNT=5000 (set by the user)", 5000),
])
def test_spin_rounds_read_as_libgomp_reads_them(env, idle_wait, rounds):
    from fastlstm import _threads

    assert _threads.omp_spin_rounds(env, idle_wait) == rounds


@pytest.mark.parametrize("rounds, env, throttled", [
    (10000, {}, 100), (300000, {"OMP_WAIT_POLICY": "ACTIVE"}, 1000),
    (2**62, {"OMP_WAIT_POLICY": "active"}, 1000), (50, {}, 50), (0, {}, 0),
])
def test_throttled_spin_is_libgomps(rounds, env, throttled):
    from fastlstm import _threads

    assert _threads.omp_throttled_rounds(rounds, env) == throttled


def test_hot_window_is_most_of_the_spin_at_most_a_fifth_of_a_ms():
    from fastlstm import _threads

    assert _threads.hot_window_ns(0, 25.0) == 0
    assert _threads.hot_window_ns(1000, 24.0) == 18000  # three quarters of the spin
    assert _threads.hot_window_ns(10000, 25.0) == 187500
    assert _threads.hot_window_ns(20000, 25.0) == _threads.HOT_WINDOW_MAX_NS == 200_000
    assert _threads.hot_window_ns(2**62, 25.0) == 200_000
    assert 0.0 <= kernels.pause_ns() < 10_000


def test_passive_wait_policy_turns_the_hot_team_off():
    out = _run("""
        import fastlstm
        from fastlstm._ext import kernels
        print(*kernels.blas_hot_window()[:2])
    """, env={"OMP_WAIT_POLICY": "passive"})
    assert out.split() == ["0", "0"]
