"""Modules with bfloat16 weights (``fastlstm.quantize``) against the NumPy oracle that
rounds the weights and every activation meeting them to bfloat16 (docs/precision.md), at
every bfloat16 level the CPU has, on 1 and 2 threads, in every input form."""

import copy
import pickle

import numpy as np
import pytest

import fastlstm
from fastlstm._ext import kernels
from tests._helpers import TORCH
from tests._helpers.precision import CONFIGS, bf16, check_every_input_form, check_forward
from tests._helpers.reference import reference_forward
from tests._helpers.trained import accuracy, trained_lstm


@pytest.fixture(autouse=True)
def _restore():
    yield
    kernels.set_bf16_level(None)
    fastlstm.set_num_threads(None)


def _agrees(got, want, what):
    """float32 sums, and now and then a bfloat16 rounding of h that falls the other way
    than in the float64 oracle (one bfloat16 ulp, 2**-8 of the value, which the later
    steps carry on): the median error within 1e-6, none past 5e-3.  Rounding the weights
    but not the activations puts the median near 1e-4 (checked below)."""
    err = np.abs(np.asarray(got, np.float64) - want)
    assert err.max() <= 5e-3, (what, float(err.max()))
    assert np.median(err) <= 1e-6, (what, float(np.median(err)))


def test_the_check_tells_the_semantics_apart():
    rng = np.random.default_rng(1)
    module = fastlstm.quantize(fastlstm.LSTM(13, 24, rng=1), "bfloat16")
    x = rng.standard_normal((7, 5, 13)).astype(np.float32)
    out, _ = module(x)
    _agrees(out, reference_forward(module, x, operand=bf16)[0], "rounded activations")
    with pytest.raises(AssertionError):
        _agrees(out, reference_forward(module, x)[0], "float32 activations")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
def test_forward_matches_the_oracle(cfg):
    check_forward(cfg, "bfloat16", bf16, _agrees, kernels.bf16_levels(), kernels.set_bf16_level,
                  same_on_threads=False)


def test_one_step_calls_cells_streams_and_packed_input():
    check_every_input_form("bfloat16", bf16, _agrees, kernels.bf16_levels(), kernels.set_bf16_level)


def test_error_against_float32_is_bfloat16s():
    """On a seeded grid, the outputs stay within bfloat16's relative 1e-2 of float32's."""
    rng = np.random.default_rng(5)
    for hidden, steps in ((64, 50), (256, 20)):
        base = fastlstm.LSTM(hidden, hidden, num_layers=2, rng=hidden)
        x = rng.standard_normal((steps, 4, hidden)).astype(np.float32)
        want, _ = base(x)
        got, _ = fastlstm.quantize(base, "bfloat16")(x)
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert 1e-5 < rel < 1e-2, (hidden, rel)


def test_quantize_api():
    rnn = fastlstm.LSTM(6, 8, proj_size=3, rng=0)
    q = fastlstm.quantize(rnn, "bfloat16")
    assert type(q) is fastlstm.LSTM and q is not rnn
    assert (q.weight_dtype, rnn.weight_dtype, q.dtype) == ("bfloat16", "float32", np.float32)
    assert repr(q) == "LSTM(6, 8, proj_size=3, weight_dtype='bfloat16')"
    assert repr(rnn) == "LSTM(6, 8, proj_size=3)"
    for name, value in rnn.state_dict().items():
        # The weight matrices are rounded; the biases stay float32 (docs/precision.md).
        expected = bf16(value).astype(np.float32) if name.startswith("weight_") else value
        np.testing.assert_array_equal(q.state_dict()[name], expected)
    assert fastlstm.quantize(rnn, "bf16").weight_dtype == "bfloat16"
    assert fastlstm.LSTM(4, 4, dtype="float64").weight_dtype == "float64"
    cell = fastlstm.quantize(fastlstm.LSTMCell(3, 5, rng=0), "bfloat16")
    assert repr(cell) == "LSTMCell(3, 5, weight_dtype='bfloat16')"
    with pytest.raises(TypeError, match="expects a fastlstm.LSTM or fastlstm.LSTMCell"):
        fastlstm.quantize(object(), "bfloat16")
    with pytest.raises(ValueError, match="dtype must be 'bfloat16'"):
        fastlstm.quantize(rnn, "float16")
    with pytest.raises(ValueError, match="need a float32 module, got float64"):
        fastlstm.quantize(fastlstm.LSTM(4, 4, dtype="float64"), "bfloat16")
    with pytest.raises(TypeError, match="per_channel must be a bool"):
        fastlstm.quantize(rnn, "bfloat16", per_channel="yes")
    with pytest.raises(TypeError, match="cannot cast it to float64"):
        q.double()
    assert q.float() is q


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_quantize_takes_torchs_dtype():
    assert fastlstm.quantize(fastlstm.LSTM(2, 2), TORCH.bfloat16).weight_dtype == "bfloat16"


def test_new_weights_are_rounded_and_pickling_keeps_the_storage():
    rng = np.random.default_rng(6)
    q = fastlstm.quantize(fastlstm.LSTM(5, 7, rng=0), "bfloat16")
    w = rng.standard_normal((28, 7)).astype(np.float32)
    q.weight_hh_l0 = w
    np.testing.assert_array_equal(q.weight_hh_l0, bf16(w).astype(np.float32))
    q.load_state_dict(fastlstm.LSTM(5, 7, rng=9).state_dict())
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    out, _ = q(x)
    for clone in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q)):
        assert clone.weight_dtype == "bfloat16"
        np.testing.assert_array_equal(clone(x)[0], out)


def test_packed_weights_take_half_the_bytes():
    rnn = fastlstm.LSTM(256, 256, num_layers=2, bidirectional=True, proj_size=128, rng=0)
    q = fastlstm.quantize(rnn, "bfloat16")

    def panel_bytes(module):
        return sum(layer.w_ih_p.nbytes + layer.w_hh_p.nbytes + layer.w_hr_p.nbytes
                   for layer in module._packed_layers())

    assert panel_bytes(q) * 2 == panel_bytes(rnn)
    assert all(layer.w_ih.size == 0 for layer in q._packed_layers())  # no BLAS copy


def test_save_and_load_keep_the_bfloat16_weights(tmp_path):
    import json
    import struct

    rng = np.random.default_rng(7)
    q = fastlstm.quantize(fastlstm.LSTM(6, 9, num_layers=2, proj_size=4, rng=0), "bfloat16")
    path = tmp_path / "q.safetensors"
    q.save(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"format": "pt", "fastlstm.weight_dtype": "bfloat16"}
    assert header["weight_hh_l1"]["dtype"] == "BF16" and header["weight_hr_l0"]["dtype"] == "BF16"
    assert header["bias_ih_l0"]["dtype"] == "F32"
    again = fastlstm.LSTM.from_state_dict(path)
    assert again.weight_dtype == "bfloat16" and repr(again) == repr(q)
    x = rng.standard_normal((5, 2, 6)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], q(x)[0])
    for name, value in q.state_dict().items():  # BF16 on disk, the same values back
        np.testing.assert_array_equal(fastlstm.load(path)[name], value)
    # A float32 module reads the same file as float32 weights of bfloat16 values.
    plain = fastlstm.LSTM(6, 9, num_layers=2, proj_size=4)
    plain.load_state_dict(fastlstm.load(path))
    assert plain.weight_dtype == "float32"
    with pytest.raises(ValueError, match="saves to safetensors only"):
        q.save(tmp_path / "q.npz")
    cell = fastlstm.quantize(fastlstm.LSTMCell(3, 5, rng=0), "bfloat16")
    cell.save(tmp_path / "c.safetensors", prefix="rnn.")
    back = fastlstm.LSTMCell.from_state_dict(tmp_path / "c.safetensors", prefix="rnn.")
    assert back.weight_dtype == "bfloat16"


def test_save_refuses_values_that_are_not_bfloat16(tmp_path):
    with pytest.raises(ValueError, match="not bfloat16 values"):
        fastlstm.save({"w": np.float32([1.0, 1.001])}, tmp_path / "w.safetensors",
                      bfloat16=["w"])
    with pytest.raises(ValueError, match="safetensors only"):
        fastlstm.save({"w": np.float32([1.0])}, tmp_path / "w.npz", bfloat16=["w"])


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_torch_reads_the_saved_file(tmp_path):
    """The weights under torch's names, as BF16: a torch LSTM loads them (through
    fastlstm.load, which widens BF16 to float32 exactly) and computes the same as the
    float32 module that has the rounded weights."""
    q = fastlstm.quantize(fastlstm.LSTM(4, 6, rng=1), "bfloat16")
    q.save(tmp_path / "q.safetensors")
    t = TORCH.nn.LSTM(4, 6)
    t.load_state_dict({k: TORCH.from_numpy(v) for k, v in
                       fastlstm.load(tmp_path / "q.safetensors").items()})
    for name, value in q.state_dict().items():
        np.testing.assert_array_equal(t.state_dict()[name].numpy(), value)


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_a_trained_model_keeps_its_accuracy():
    """A small LSTM trained here keeps its test accuracy within 0.5 points with bfloat16
    weights."""
    lstm, w, b, x, y = trained_lstm()
    f32 = fastlstm.LSTM.from_torch(lstm)
    full = accuracy(f32, w, b, x, y)
    small = accuracy(fastlstm.quantize(f32, "bfloat16"), w, b, x, y)
    assert full >= 0.9, full  # it did learn the task
    assert abs(small - full) <= 0.005, (full, small)


def test_amx_batches_are_shared_by_units():
    """On AMX (blocks of 16 rows), a batch of 16 to 31 rows on 2 threads shares the hidden
    units (each thread multiplies all the rows) instead of cutting the batch in two."""
    q = fastlstm.quantize(fastlstm.LSTM(256, 256, rng=0), "bfloat16")

    # A 2 MiB L2 (Sapphire Rapids): the size rule splits at 1 MiB (Zen 4's L2) already.
    tuning = kernels.Tuning(l2_bytes=2 << 20)

    def chunks(module, batch):
        return kernels.schedule(module._packed_layers()[0], batch, 100, 256, 2,
                                tuning=tuning)[1]

    if "amx-bf16" in kernels.bf16_levels():
        assert (chunks(q, 16), chunks(q, 31), chunks(q, 32)) == (0, 0, 2)
    kernels.set_bf16_level("portable")
    assert chunks(q, 16) == 2  # elsewhere by the size rule (0.5 MiB of W_hh: chunks)
    tuning = kernels.Tuning(l2_bytes=1 << 20)
    assert chunks(q, 16) == 0  # half of a 1 MiB L2: split


@pytest.mark.parametrize("hidden", [37, 48])
@pytest.mark.parametrize("threads", [1, 2])
def test_sequence_steps_equal_one_step_calls_bit_for_bit(hidden, threads):
    # A sequence's steps round h to bfloat16 once per step, each thread its own units,
    # for every thread's next product (Buffers.hq); one-timestep calls round the whole
    # h themselves.  At the levels whose sums run in the same order for any blocking of
    # the rows, both must agree bit for bit: plain, batch-first and packed input.
    from fastlstm.rnn import pack_sequence
    levels = [lv for lv in kernels.bf16_levels() if lv in ("portable", "avx2", "avx512")]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 6, 11)).astype(np.float32)
    fastlstm.set_num_threads(threads)
    for level in levels:
        kernels.set_bf16_level(level)
        for batch_first in (False, True):
            module = fastlstm.quantize(fastlstm.LSTM(11, hidden, batch_first=batch_first,
                                                     rng=6), "bfloat16")
            xs = np.ascontiguousarray(x.transpose(1, 0, 2)) if batch_first else x
            out, (h, c) = module(xs)
            state, steps = None, []
            for t in range(7):
                xt = xs[:, t:t + 1] if batch_first else xs[t:t + 1]
                o, state = module(xt, state)
                steps.append(o[:, 0] if batch_first else o[0])
            want = np.stack(steps, 1 if batch_first else 0)
            assert np.array_equal(out, want), (level, batch_first)
            assert np.array_equal(h, state[0]) and np.array_equal(c, state[1])
        module = fastlstm.quantize(fastlstm.LSTM(11, hidden, rng=6), "bfloat16")
        seqs = [x[:n, k] for k, n in enumerate((7, 3, 5, 1, 7, 2))]
        packed, (ph, pc) = module(pack_sequence(seqs, enforce_sorted=False))
        for k, seq in enumerate(seqs):
            _, (h_k, c_k) = module(seq[:, None, :].copy())
            assert np.array_equal(ph[:, k], h_k[:, 0]), (level, "packed", k)
            assert np.array_equal(pc[:, k], c_k[:, 0]), (level, "packed", k)
