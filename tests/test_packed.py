"""``LSTM.forward`` on packed sequences (fastlstm's and torch's ``PackedSequence``).

Oracles: torch's own packed forward, and the NumPy reference run on each
sequence alone (a packed batch must equal its sequences run one by one).
"""

import numpy as np
import pytest
from _helpers import TOL, raised
from _helpers.reference import reference_forward

import fastlstm
from fastlstm._ext import kernels
from fastlstm.rnn import PackedSequence, pack_padded_sequence, pack_sequence


def _lengths(rng, n, max_len):
    lengths = rng.integers(1, max_len + 1, size=n)
    lengths[rng.integers(n)] = max_len
    return lengths


def _sequences(rng, lengths, size, dtype=np.float32):
    return [rng.standard_normal((int(n), size)).astype(dtype) for n in lengths]


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, proj_size=3),
    dict(proj_size=4, bias=False),
    dict(num_layers=3, bidirectional=True, batch_first=True),
]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in
                                                                  k.items()) or "default")
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_parity_with_torch(torch, threads, kwargs, enforce_sorted, with_hx, dtype):
    rng = np.random.default_rng(hash((str(kwargs), enforce_sorted, with_hx)) % 2**32)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(int(rng.integers(1 << 30)))
    ref = torch.nn.LSTM(5, 6, dtype=tdtype, **kwargs).eval()
    mod = fastlstm.LSTM.from_torch(ref)
    n = 9
    lengths = _lengths(rng, n, 11)
    if enforce_sorted:
        lengths = np.sort(lengths)[::-1].copy()
    seqs = [torch.from_numpy(s) for s in _sequences(rng, lengths, 5, dtype)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=enforce_sorted)
    states = ref.num_layers * (2 if ref.bidirectional else 1)
    hx = None
    if with_hx:
        out_size = ref.proj_size or ref.hidden_size
        hx = (torch.randn(states, n, out_size, dtype=tdtype),
              torch.randn(states, n, ref.hidden_size, dtype=tdtype))
    with torch.no_grad():
        expected, (h_exp, c_exp) = ref(packed, hx)
    got, (h_n, c_n) = mod(packed, hx)
    # torch in, torch out: the same PackedSequence type, the same index tensors
    assert type(got) is type(packed)
    assert torch.equal(got.batch_sizes, packed.batch_sizes)
    if enforce_sorted:
        assert got.sorted_indices is None and got.unsorted_indices is None
    else:
        assert torch.equal(got.sorted_indices, packed.sorted_indices)
        assert torch.equal(got.unsorted_indices, packed.unsorted_indices)
    assert isinstance(h_n, torch.Tensor) and isinstance(c_n, torch.Tensor)
    assert got.data.dtype == tdtype and got.data.shape == expected.data.shape
    tol = TOL[dtype]
    assert _max_err(got.data, expected.data) < tol
    assert _max_err(h_n, h_exp) < tol
    assert _max_err(c_n, c_exp) < tol


@pytest.mark.parametrize("kwargs", CONFIGS[:4], ids=str)
def test_packed_equals_each_sequence_alone(kwargs, threads):
    """The NumPy oracle on every sequence alone (unbatched) gives the packed result."""
    rng = np.random.default_rng(7)
    mod = fastlstm.LSTM(4, 7, rng=1, dtype=np.float64, **kwargs)
    lengths = np.array([6, 1, 4, 6, 3])
    seqs = _sequences(rng, lengths, 4, np.float64)
    states = mod.num_layers * (2 if mod.bidirectional else 1)
    out_size = mod.proj_size or mod.hidden_size
    h0 = rng.standard_normal((states, len(seqs), out_size))
    c0 = rng.standard_normal((states, len(seqs), mod.hidden_size))
    packed = pack_sequence(seqs, enforce_sorted=False)
    got, (h_n, c_n) = mod(packed, (h0, c0))
    assert isinstance(got, PackedSequence)
    padded, lens = fastlstm.pad_packed_sequence(got)
    assert np.array_equal(lens, lengths)
    for i, seq in enumerate(seqs):
        out, (h, c) = reference_forward(mod, seq, (h0[:, i], c0[:, i]))
        assert _max_err(padded[: lengths[i], i], out) < 1e-12
        assert np.all(padded[lengths[i]:, i] == 0)
        assert _max_err(h_n[:, i], h) < 1e-12
        assert _max_err(c_n[:, i], c) < 1e-12


def test_packed_from_padded_batch_first(torch):
    """pack_padded_sequence(batch_first=True) in; pad back and compare with torch."""
    rng = np.random.default_rng(3)
    ref = torch.nn.LSTM(3, 5, batch_first=True, bidirectional=True).eval()
    mod = fastlstm.LSTM.from_torch(ref)
    x = rng.standard_normal((4, 8, 3)).astype(np.float32)
    lengths = [5, 8, 2, 7]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    t_packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths,
                                                       batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        t_out, (t_h, t_c) = ref(t_packed)
    out, (h_n, c_n) = mod(packed)
    assert isinstance(out, PackedSequence) and isinstance(h_n, np.ndarray)
    padded, lens = fastlstm.pad_packed_sequence(out, batch_first=True)
    t_padded, _ = torch.nn.utils.rnn.pad_packed_sequence(t_out, batch_first=True)
    assert _max_err(padded, t_padded) < 1e-5
    assert _max_err(h_n, t_h) < 1e-5 and _max_err(c_n, t_c) < 1e-5


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 16, 40])
def test_packed_thread_counts_and_time_chunks(n_threads, batch):
    """Every sharing of the work (split mode, batch chunks balanced by length, one
    thread per direction) and many time chunks give the one-thread answer."""
    rng = np.random.default_rng(batch)
    mod = fastlstm.LSTM(8, 20, bidirectional=batch % 2 == 1, proj_size=6 if batch == 3 else 0,
                        rng=2)
    lengths = np.sort(_lengths(rng, batch, 30))[::-1].copy()
    packed = pack_sequence(_sequences(rng, lengths, 8))
    fastlstm.set_num_threads(1)
    try:
        expected, (h_exp, c_exp) = mod(packed)
        mod._set_tuning(kernels.Tuning(gate_buffer_bytes=1, min_chunk_rows=2))
        fastlstm.set_num_threads(n_threads)
        got, (h_n, c_n) = mod(packed)
    finally:
        fastlstm.set_num_threads(None)
    assert _max_err(got.data, expected.data) < 1e-6
    assert _max_err(h_n, h_exp) < 1e-6 and _max_err(c_n, c_exp) < 1e-6


@pytest.mark.parametrize("level", kernels.simd_available())
def test_packed_every_simd_level(torch, level):
    rng = np.random.default_rng(11)
    ref = torch.nn.LSTM(6, 40, num_layers=2, bidirectional=True).eval()
    mod = fastlstm.LSTM.from_torch(ref)
    seqs = [torch.from_numpy(s) for s in _sequences(rng, _lengths(rng, 7, 9), 6)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    with torch.no_grad():
        expected, (h_exp, _) = ref(packed)
    kernels.set_simd_level(level)
    try:
        got, (h_n, _) = mod(packed)
    finally:
        kernels.set_simd_level(None)
    assert _max_err(got.data, expected.data) < 1e-5 and _max_err(h_n, h_exp) < 1e-5


def test_packed_equals_padded_when_all_lengths_equal():
    rng = np.random.default_rng(5)
    mod = fastlstm.LSTM(4, 9, num_layers=2, bidirectional=True, rng=0)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    out, (h_n, c_n) = mod(x)
    p_out, (p_h, p_c) = mod(pack_padded_sequence(x, [6, 6, 6]))
    assert np.array_equal(p_out.data.reshape(6, 3, -1), out)
    assert np.array_equal(p_h, h_n) and np.array_equal(p_c, c_n)


def test_packed_single_sequence_and_single_step():
    mod = fastlstm.LSTM(3, 4, bidirectional=True, rng=0)
    x = np.arange(3, dtype=np.float32)[None]
    out, (h_n, _) = mod(pack_sequence([x]))
    ref, (h_ref, _) = mod(x)
    assert np.array_equal(out.data, ref) and np.array_equal(h_n[:, 0], h_ref)


def test_packed_hx_arrays_give_arrays_and_are_not_modified():
    rng = np.random.default_rng(0)
    mod = fastlstm.LSTM(2, 3, rng=0)
    packed = pack_sequence(_sequences(rng, [2, 4, 3], 2), enforce_sorted=False)
    h0 = rng.standard_normal((1, 3, 3)).astype(np.float32)
    c0 = rng.standard_normal((1, 3, 3)).astype(np.float32)
    h_copy, c_copy = h0.copy(), c0.copy()
    out, (h_n, c_n) = mod(packed, (h0, c0))
    assert isinstance(out, PackedSequence) and isinstance(h_n, np.ndarray)
    assert np.array_equal(h0, h_copy) and np.array_equal(c0, c_copy)


def test_packed_output_kind_follows_the_packed_input_and_states_the_rule(torch):
    # docs/porting.md: the output is a PackedSequence of the input's kind whatever h_0
    # is; h_n and c_n are tensors when the input or h_0 was one.
    rng = np.random.default_rng(0)
    mod = fastlstm.LSTM(2, 3, rng=0)
    seqs = _sequences(rng, [2, 4, 3], 2)
    ours = pack_sequence(seqs, enforce_sorted=False)
    theirs = torch.nn.utils.rnn.pack_sequence([torch.from_numpy(s) for s in seqs],
                                              enforce_sorted=False)
    h0 = np.zeros((1, 3, 3), np.float32)
    for packed, state, out_kind, state_kind in (
            (ours, torch.from_numpy(h0), PackedSequence, torch.Tensor),
            (theirs, h0, torch.nn.utils.rnn.PackedSequence, torch.Tensor),
            (ours, h0, PackedSequence, np.ndarray)):
        out, (h_n, c_n) = mod(packed, (state, state))
        assert type(out) is out_kind and isinstance(h_n, state_kind)
        assert isinstance(c_n, state_kind)
        assert isinstance(out.data, torch.Tensor if out_kind is not PackedSequence
                          else np.ndarray)


# --------------------------------------------------------------------- errors
def _packed_and_module():
    rng = np.random.default_rng(0)
    mod = fastlstm.LSTM(4, 5, num_layers=2, rng=0)
    return mod, pack_sequence(_sequences(rng, [3, 5, 2], 4), enforce_sorted=False)


def test_packed_wrong_feature_size_message():
    mod, packed = _packed_and_module()
    bad = PackedSequence(packed.data[:, :3], packed.batch_sizes, packed.sorted_indices)
    with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size. "
                                           r"Expected 4, got 3"):
        mod(bad)


def test_packed_data_rank_and_dtype():
    mod, packed = _packed_and_module()
    with pytest.raises(RuntimeError, match="input must have 2 dimensions, got 3"):
        mod(PackedSequence(packed.data[:, :, None], packed.batch_sizes))
    with pytest.raises(ValueError, match="does not match weight dtype"):
        mod(PackedSequence(packed.data.astype(np.int64), packed.batch_sizes))


def test_packed_inconsistent_batch_sizes():
    mod, packed = _packed_and_module()
    with pytest.raises(ValueError, match="sum\\(batch_sizes\\) = 10 rows"):
        mod(PackedSequence(packed.data[:9], packed.batch_sizes))
    with pytest.raises(ValueError, match="non-increasing"):
        mod(PackedSequence(packed.data, np.array([2, 3, 3, 1, 1])))
    with pytest.raises(IndexError, match="index 0 is out of bounds"):
        mod(PackedSequence(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)))
    with pytest.raises(ValueError, match="sorted_indices must be a permutation"):
        mod(PackedSequence(packed.data, packed.batch_sizes, [0, 0, 1]))


@pytest.mark.parametrize("shapes, what", [
    (((2, 2, 5), (2, 3, 5)), r"Expected hidden\[0\] size \(2, 3, 5\), got \[2, 2, 5\]"),
    (((2, 3, 5), (2, 3, 6)), r"Expected hidden\[1\] size \(2, 3, 5\), got \[2, 3, 6\]"),
    (((2, 4, 5), (2, 4, 5)), r"Expected hidden\[0\] size \(2, 3, 5\), got \[2, 4, 5\]"),
])
def test_packed_hx_shapes(shapes, what):
    mod, packed = _packed_and_module()
    hx = tuple(np.zeros(s, np.float32) for s in shapes)
    with pytest.raises(RuntimeError, match=what):
        mod(packed, hx)


def test_packed_hx_errors_raised_by_torch_too(torch):
    """Where torch rejects a packed call, fastlstm rejects it too (torch's own
    messages are internal ones here; fastlstm's say which size was expected)."""
    mod, packed = _packed_and_module()
    ref = mod.to_torch()
    t_packed = fastlstm.rnn.to_torch_packed(packed)
    for shapes in (((2, 2, 5), (2, 2, 5)), ((2, 3, 5), (2, 3, 6)), ((2, 5), (2, 5))):
        hx_t = tuple(torch.zeros(s) for s in shapes)
        with torch.no_grad():
            assert raised(lambda: ref(t_packed, hx_t)) is not None  # noqa: B023
        assert isinstance(raised(lambda: mod(t_packed, hx_t)), (RuntimeError, IndexError))  # noqa: B023


def test_packed_mixed_kinds(torch):
    """fastlstm's PackedSequence with torch states: the output stays fastlstm's (NumPy),
    h_n and c_n are tensors, as with padded input and tensor states."""
    mod = fastlstm.LSTM(3, 4, rng=0)
    packed = pack_sequence([np.ones((n, 3), np.float32) for n in (2, 3)], enforce_sorted=False)
    out, (h_n, c_n) = mod(packed, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    ref, (h_ref, c_ref) = mod(packed)
    assert isinstance(out, PackedSequence) and isinstance(out.data, np.ndarray)
    assert isinstance(h_n, torch.Tensor) and isinstance(c_n, torch.Tensor)
    assert np.array_equal(out.data, ref.data) and np.array_equal(h_n.numpy(), h_ref)
