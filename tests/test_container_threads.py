"""The default thread count respects containers: the smallest of OpenMP's count
(``OMP_NUM_THREADS`` or the cores), the CPU affinity mask and the cgroup CPU quota;
``show_config`` names the bound that applied.  The quota reader runs on fixture
files laid out as cgroup v1 and v2 write them; the affinity bound runs for real."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastlstm
from fastlstm._ext.openmp import openmp_enabled
from fastlstm._threads import cgroup_cpu_limit

ROOT = Path(__file__).resolve().parents[1]


def _tree(tmp_path, files, proc_cgroup):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_cgroup)
    return str(root), str(proc)


def test_cgroup_v2_quota(tmp_path):
    root, proc = _tree(tmp_path, {"cpu.max": "150000 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_no_quota(tmp_path):
    root, proc = _tree(tmp_path, {"cpu.max": "max 100000\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_v2_the_smallest_along_the_path(tmp_path):
    # A pod limited to 2 CPUs, its container to 3: the pod's quota binds.
    root, proc = _tree(tmp_path, {"kubepods/pod1/cpu.max": "200000 100000",
                                  "kubepods/pod1/ctr/cpu.max": "300000 100000",
                                  "cpu.max": "max 100000"}, "0::/kubepods/pod1/ctr\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.0)


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    root, proc = _tree(tmp_path, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
                                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"},
                       "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    root, proc = _tree(tmp_path / "b", {"cpu/cpu.cfs_quota_us": "-1\n",
                                        "cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n")
    assert cgroup_cpu_limit(root, proc) is None


def test_cgroup_missing_or_garbled_files(tmp_path):
    assert cgroup_cpu_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None
    root, proc = _tree(tmp_path, {"cpu.max": "lots of cpus\n"}, "0::/\n")
    assert cgroup_cpu_limit(root, proc) is None
    root, proc = _tree(tmp_path / "c", {"cpu.max": "0 100000\n"}, "0::/../../etc\n")
    assert cgroup_cpu_limit(root, proc) is None  # a zero quota, and no escape from root


def _run(code, **env):
    # Only the bounds a test sets: not an OMP_NUM_THREADS this process got from elsewhere.
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=dict(base, PYTHONPATH=str(ROOT), **env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not openmp_enabled(), reason="a serial build has one thread")
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs an affinity mask of 2 CPUs or more")
def test_the_affinity_mask_bounds_the_default():
    out = _run("""
import os, fastlstm
cpu = sorted(os.sched_getaffinity(0))[0]
os.sched_setaffinity(0, {cpu})
fastlstm.set_num_threads(None)   # the default is read again
cfg = fastlstm.show_config(as_dict=True)
print(fastlstm.get_num_threads(), cfg["num_threads"], cfg["num_threads_bound"])
""")
    assert out == "1 1 the CPU affinity mask"


@pytest.mark.skipif(not openmp_enabled(), reason="a serial build has one thread")
def test_omp_num_threads_bounds_the_default_and_set_num_threads_overrides():
    out = _run("""
import fastlstm
print(fastlstm.get_num_threads(), fastlstm.show_config(as_dict=True)["num_threads_bound"])
fastlstm.set_num_threads(3)
print(fastlstm.get_num_threads(), fastlstm.show_config(as_dict=True)["num_threads_bound"])
""", OMP_NUM_THREADS="1")
    assert out.splitlines() == ["1 OMP_NUM_THREADS=1", "3 set_num_threads"]


def test_info_names_the_bound():
    from fastlstm.cli import main

    cfg = fastlstm.show_config(as_dict=True)
    assert cfg["num_threads"] == fastlstm.get_num_threads()
    assert cfg["num_threads_bound"]
    assert main(["info"]) == 0


_TWO_CPUS = pytest.mark.skipif(
    not openmp_enabled() or not hasattr(os, "sched_setaffinity")
    or len(os.sched_getaffinity(0)) < 2, reason="needs OpenMP and 2 CPUs or more")


@_TWO_CPUS
@pytest.mark.parametrize("variable, value", [("OMP_PROC_BIND", "true"), ("OMP_PLACES", "cores"),
                                             ("GOMP_CPU_AFFINITY", "0-1")])
def test_openmp_binding_does_not_shrink_the_default(variable, value):
    # The runtime pins the initial thread to its first place when it loads; the places
    # still hold the process's CPUs, and so does the default and the calls' cap.
    expected = min(2, len(os.sched_getaffinity(0)), os.cpu_count() or 1)
    out = _run("""
import os, fastlstm
from fastlstm._ext import kernels
fastlstm.set_num_threads(2)
print(fastlstm.get_num_threads() >= 1, kernels.team_size(2), len(os.sched_getaffinity(0)))
fastlstm.set_num_threads(None)
print(fastlstm.get_num_threads())
""", **{variable: value})
    runs = out.splitlines()[0].split()[1]  # libgomp pinned this thread to one CPU
    assert int(runs) == expected
    assert int(out.splitlines()[1]) >= expected


@_TWO_CPUS
def test_a_mask_set_before_start_is_named_and_a_thread_limit_bounds_the_default():
    code = "import fastlstm; print(fastlstm.get_num_threads(), " \
           "fastlstm.show_config(as_dict=True)['num_threads_bound'])"
    proc = subprocess.run(
        [sys.executable, "-c",
         "import os, sys; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
         f"exec({code!r})"],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
             "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "1 the CPU affinity mask", proc.stderr
    assert _run(code, OMP_THREAD_LIMIT="1") == "1 OMP_THREAD_LIMIT=1"


def test_an_unreadable_blas_sharing_variable_warns():
    code = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import fastlstm
print(sum("FASTLSTM_SHARE_BLAS='maybe'" in str(w.message) for w in caught),
      fastlstm.get_blas_sharing() == bool(fastlstm._threads._openblas_setters()[0]))
"""
    assert _run(code, FASTLSTM_SHARE_BLAS="maybe") == "1 True"
    assert _run(code, FASTLSTM_SHARE_BLAS="on").split()[0] == "0"
