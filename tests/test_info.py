"""show_config reports what the kernels really run with."""

import re

import fastlstm
from fastlstm._ext import kernels
from fastlstm._ext.openmp import openmp_enabled


def test_show_config_dict_matches_runtime():
    info = fastlstm.show_config(as_dict=True)
    assert info["version"] == fastlstm.__version__
    assert info["simd"] == kernels.simd_level()
    assert info["simd_available"] == kernels.simd_available()
    assert info["openmp"] == openmp_enabled()
    assert info["num_threads"] == fastlstm.get_num_threads()
    assert info["blas"] and all("filepath" in lib for lib in info["blas"])


def test_show_config_follows_forced_level():
    try:
        kernels.set_simd_level("portable")
        assert fastlstm.show_config(as_dict=True)["simd"] == "portable"
    finally:
        kernels.set_simd_level(None)


def test_show_config_prints(capsys):
    assert fastlstm.show_config() is None
    out = capsys.readouterr().out
    assert re.search(rf"^simd +{kernels.simd_level()}$", out, flags=re.M), out
    bound = re.escape(fastlstm.show_config(as_dict=True)["num_threads_bound"])
    assert re.search(rf"^num_threads_bound +{bound}$", out, flags=re.M), out
    assert "openblas" in out or "blas" in out
