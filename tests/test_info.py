"""show_config reports what the kernels really run with."""

import fastlstm
from fastlstm import _lstm
from fastlstm._openmp import openmp_enabled


def test_show_config_dict_matches_runtime():
    info = fastlstm.show_config(as_dict=True)
    assert info["version"] == fastlstm.__version__
    assert info["simd"] == _lstm.simd_level()
    assert info["simd_available"] == _lstm.simd_available()
    assert info["openmp"] == openmp_enabled()
    assert info["num_threads"] == fastlstm.get_num_threads()
    assert info["blas"] and all("filepath" in lib for lib in info["blas"])


def test_show_config_follows_forced_level():
    try:
        _lstm.set_simd_level("portable")
        assert fastlstm.show_config(as_dict=True)["simd"] == "portable"
    finally:
        _lstm.set_simd_level(None)


def test_show_config_prints(capsys):
    assert fastlstm.show_config() is None
    out = capsys.readouterr().out
    assert f"simd            {_lstm.simd_level()}" in out
    assert "openblas" in out or "blas" in out
