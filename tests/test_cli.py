"""The ``fastlstm`` command line: info, inspect, convert, help and one-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from _helpers import run_cli
from _helpers.weights_files import glob, seq2seq, torch_zip

import fastlstm
from fastlstm.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_and_each_has_its_own_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    names = [c.name for c in COMMANDS]
    assert {"bench", "info", "inspect", "convert"} <= set(names)
    for name in names:
        assert name in out
        assert main([name, "--help"]) == 0
        assert f"usage: fastlstm {name}" in capsys.readouterr().out


def test_info_prints_show_config(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    fastlstm.show_config()
    assert out == capsys.readouterr().out
    for key in ("version", "simd", "simd_available", "openmp", "num_threads", "blas", "numpy",
                "scipy"):
        assert key in out
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(
        fastlstm.show_config(as_dict=True)))


def test_inspect_and_convert(torch, tmp_path, capsys):
    model = seq2seq(torch)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "LSTM at 'encoder.rnn.' (8 tensors, 3,840 float32 parameters)" in out
    assert "    input_size=8, hidden_size=16, num_layers=2, bias=True" in out
    assert "prefix='decoder.rnn.'" in out and "head.weight" in out
    assert main(["inspect", "--json", str(path)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [m["prefix"] for m in found["modules"]] == ["encoder.rnn.", "decoder.rnn."]

    out_path = tmp_path / "encoder.safetensors"
    assert main(["convert", str(path), str(out_path), "--prefix", "encoder.rnn"]) == 0
    assert "wrote" in capsys.readouterr().out
    rnn = fastlstm.LSTM.from_state_dict(out_path)
    np.testing.assert_array_equal(rnn.weight_hh_l1,
                                  model["encoder"]["rnn"].weight_hh_l1.detach().numpy())
    assert main(["convert", str(path), str(tmp_path / "half.bin"), "--format", "npz",
                 "--dtype", "float16"]) == 0
    half = fastlstm.load(tmp_path / "half.bin")
    assert half["head.weight"].dtype == np.float16 and len(half) == len(model.state_dict())


@pytest.mark.parametrize("case", ["missing", "corrupt", "refused", "directory", "not weights"])
def test_errors_are_one_line_without_traceback(tmp_path, capsys, case):
    marker = tmp_path / "marker"
    path = {
        "missing": tmp_path / "missing.pt",
        "corrupt": tmp_path / "corrupt.pt",
        "refused": tmp_path / "evil.pt",
        "directory": tmp_path,
        "not weights": tmp_path / "notes.txt",
    }[case]
    if case == "corrupt":
        arrays = {"w": np.ones((4, 4), np.float32)}
        fastlstm.save(arrays, tmp_path / "ok.npz")
        path.write_bytes((tmp_path / "ok.npz").read_bytes()[:-30])
    elif case == "refused":
        torch_zip(path, b"\x80\x02" + glob("os", "system") + b"(X\x05\x00\x00\x00touch"
                  + f" {marker}".encode() + b"tR.")
    elif case == "not weights":
        path.write_text("not weights\nat all\n")
    for command in (["inspect", path], ["convert", path, tmp_path / "out.npz"]):
        if case == "refused" and command[0] == "inspect":  # once as a real program
            status, out, err = run_cli(*command)
        else:
            status = main([str(arg) for arg in command])
            err = capsys.readouterr().err
        assert status == 1
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"fastlstm {command[0]}: error: {path}: ")
        if case == "refused":
            assert "refused global 'os.system'" in err
        if case == "missing":
            assert err.strip().endswith("no such file")
    assert not marker.exists()
    assert not (tmp_path / "out.npz").exists()


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["inspect"]) == 2
    assert main(["convert", "a.pt", "b.weird"]) == 2
    assert main(["nonsense"]) == 2
    for line in capsys.readouterr().err.splitlines():
        assert line.startswith("fastlstm")


def test_inspect_escapes_key_names_that_would_act_on_the_terminal(tmp_path, capsys):
    # Key names come from the file: escape sequences and newlines in them must
    # not clear the screen or fake lines of the report.
    evil = "\x1b[2J\x1b[31mEVIL\x1b[0m\nfake line"
    path = tmp_path / "evil.safetensors"
    fastlstm.save({evil: np.zeros(1, np.float32),
                   "enc\x1b[1A\nnote: all good.weight_ih_l0": np.zeros((3, 2), np.float32),
                   "x\u202ey": np.zeros(2, np.float32), "plain.weight": np.zeros(2, np.float32)},
                  path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    lines = out.splitlines()
    assert not any(line.startswith(("fake line", "note: all good")) for line in lines)
    assert any(line.startswith(f"    {evil!r}  ") and "float32  (1,)" in line for line in lines)
    assert "    'x\\u202ey'" in out and "    plain.weight " in out
    assert [line for line in lines if line.startswith("note: ")] == [
        "note: 'enc\\x1b[1A\\nnote: all good.weight_ih_l0' has 3 rows, not 4*hidden_size "
        "(gates i, f, g, o): not an LSTM weight"]
    assert main(["inspect", "--json", str(path)]) == 0  # JSON escapes them itself
    found = json.loads(capsys.readouterr().out)
    assert evil in found["tensors"]


@pytest.mark.parametrize("argv, words", [
    (["--threads", "100000"], "argument --threads: expected at most 256 threads"),
    (["--contention", "--repeat", "5"], "--repeat is for the case grid, not for --contention"),
    (["--seq2seq", "--pause", "0"], "--pause is for the case grid, not for --seq2seq"),
    (["--throughput", "--peak-size", "0"], "--peak-size is for the case grid"),
    (["--precision", "--no-onnx"], "--no-onnx is for the case grid, not for --precision"),
    (["--seq2seq", "--no-streams"], "--no-streams is for the case grid"),
    (["--contention", "--no-openvino"], "--no-openvino is for the case grid and --precision"),
    (["--contention", "--budget", "3"], "--budget is not for --contention"),
    (["--json", ""], "--json needs a path"),
    (["--json", "/proc/fastlstm-bench.json"], "/proc/fastlstm-bench.json: No such file"),
    (["--json", "{tmp}/same", "--markdown", "{tmp}/same"],
     "--json and --markdown name the same file"),
])
def test_bench_options_that_would_do_nothing_or_fail_late_are_refused(argv, words, tmp_path,
                                                                      capsys):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(["bench", *argv]) == 2  # at once: no case has run
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastlstm bench: error:") and words in err
    assert list(tmp_path.iterdir()) == []


def test_convert_writes_through_links_and_refuses_special_files(tmp_path, capsys):
    import os

    source = tmp_path / "m.safetensors"
    fastlstm.LSTM(3, 4, rng=0).save(source)
    (tmp_path / "target.npz").write_bytes(b"")
    os.symlink("target.npz", tmp_path / "link.npz")
    assert main(["convert", str(source), str(tmp_path / "link.npz")]) == 0
    assert os.path.islink(tmp_path / "link.npz")
    assert set(fastlstm.load(tmp_path / "target.npz")) == set(fastlstm.load(source))
    os.mkfifo(tmp_path / "fifo.npz")
    assert main(["convert", str(source), str(tmp_path / "fifo.npz")]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert not os.path.isfile(tmp_path / "fifo.npz")  # still the FIFO
    assert main(["convert", str(source), "/proc/fastlstm-out.npz"]) == 1
    err = capsys.readouterr().err
    assert "directory does not exist" not in err and "No such file" in err


def test_a_closed_pipe_and_the_traceback_switch(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run(f"'{sys.executable}' -m fastlstm bench --list | head -1",
                          shell=True, capture_output=True, text=True, env=env, timeout=120,
                          executable="/bin/bash")
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""
    # Only FASTLSTM_TRACEBACK=1 shows an unexpected error's traceback.
    code = ("import fastlstm.cli as c; c.build_parser = lambda only=None: 1 / 0; "
            "raise SystemExit(c.main(['info']))")
    for value, traceback in (("0", False), ("", False), ("1", True)):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(env, FASTLSTM_TRACEBACK=value), timeout=120)
        assert proc.returncode == 1 and ("Traceback" in proc.stderr) == traceback, value


def _safetensors_header(path):
    """The JSON header of a safetensors file, parsed here (8-byte length, then JSON)."""
    raw = Path(path).read_bytes()
    return json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def test_convert_keeps_a_reduced_precision_modules_file(tmp_path, capsys):
    """A bfloat16 module's file stays one (BF16 weights, the storage type and the other
    metadata in the header), to safetensors only; an int8 module's scales stay float32
    under --dtype.  The oracle: the saved module's outputs, bit for bit."""
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    bf16 = fastlstm.quantize(fastlstm.LSTM(3, 4, num_layers=2, rng=0), "bfloat16")
    source = tmp_path / "bf16.safetensors"
    fastlstm.save(bf16.state_dict(), source, metadata={
        "format": "pt", "fastlstm.weight_dtype": "bfloat16", "author": "me"},
        bfloat16=[k for k in bf16.state_dict() if k.startswith("weight_")])
    copy = tmp_path / "copy.safetensors"
    assert main(["convert", str(source), str(copy)]) == 0
    header = _safetensors_header(copy)
    assert header["__metadata__"] == _safetensors_header(source)["__metadata__"]
    assert {k: v["dtype"] for k, v in header.items() if k != "__metadata__"} == {
        k: v["dtype"] for k, v in _safetensors_header(source).items() if k != "__metadata__"}
    loaded = fastlstm.LSTM.from_state_dict(copy)
    assert loaded.weight_dtype == "bfloat16"
    np.testing.assert_array_equal(loaded(x)[0], bf16(x)[0])
    capsys.readouterr()
    assert main(["convert", str(source), str(tmp_path / "bf16.npz")]) == 2
    assert "convert to safetensors only" in capsys.readouterr().err
    assert not (tmp_path / "bf16.npz").exists()

    int8 = fastlstm.quantize(fastlstm.LSTM(3, 4, rng=0), "int8")
    int8.save(tmp_path / "i8.safetensors")
    for dtype in ("float64", "float16"):
        out = tmp_path / f"i8-{dtype}.safetensors"
        assert main(["convert", str(tmp_path / "i8.safetensors"), str(out),
                     "--dtype", dtype]) == 0
        assert _safetensors_header(out)["weight_ih_l0_scale"]["dtype"] == "F32"
        loaded = fastlstm.LSTM.from_state_dict(out)
        assert loaded.weight_dtype == "int8"
        if dtype == "float64":  # the biases cast to float64 and back: the same values
            np.testing.assert_array_equal(loaded(x)[0], int8(x)[0])
