"""``fastlstm.rnn`` against ``torch.nn.utils.rnn``.

Parity tests run the same data through both and compare the arrays exactly; error tests run
the same invalid call through both and compare the exception type and message (torch's
message is computed here, never hard-coded).  The tests without the ``torch`` fixture check
round trips against plain NumPy and run without torch.
"""

import doctest
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import raised as _raised

from fastlstm import rnn

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rnn.md"

# ---------------------------------------------------------------------- helpers


def _distinct_lengths(rng, batch, steps):
    """``batch`` distinct lengths in 1..steps, the longest equal to ``steps``, unsorted."""
    lengths = rng.choice(np.arange(1, steps), size=batch - 1, replace=False)
    return rng.permutation(np.append(lengths, steps))


def _padded(rng, lengths, trailing, dtype, batch_first, padding=0):
    """A random padded batch ``(T, B, *)`` / ``(B, T, *)`` with ``padding`` past each length."""
    steps, batch = int(max(lengths)), len(lengths)
    x = (rng.standard_normal((steps, batch) + trailing) * 10).astype(dtype)
    x[np.arange(steps)[:, None] >= np.asarray(lengths)[None, :]] = padding
    return np.ascontiguousarray(np.swapaxes(x, 0, 1)) if batch_first else x


def _np(value):
    return None if value is None else value.detach().numpy()


def _assert_packed_equal(ours, ref):
    """Our PackedSequence equals torch's exactly (arrays, dtypes, None-ness)."""
    assert isinstance(ours, rnn.PackedSequence)
    for mine, theirs in zip(ours, ref):
        if theirs is None:
            assert mine is None
        else:
            assert isinstance(mine, np.ndarray) and mine.dtype == _np(theirs).dtype
            np.testing.assert_array_equal(mine, _np(theirs))




def _map_args(torch, value, numpy):
    """``value`` with every tensor cloned (torch's ``unpad_sequence`` transposes its argument
    in place), or made an ndarray and torch PackedSequences converted with ``numpy``."""
    if isinstance(value, torch.nn.utils.rnn.PackedSequence):
        return rnn.from_torch_packed(value) if numpy else value
    if isinstance(value, torch.Tensor):
        return value.numpy() if numpy else value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_map_args(torch, v, numpy) for v in value)
    if isinstance(value, dict):
        return {k: _map_args(torch, v, numpy) for k, v in value.items()}
    return value


# ----------------------------------------------------- parity: packing and padding

TRAILING = [(), (3,), (2, 3)]


@pytest.mark.parametrize("trailing", TRAILING, ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("lengths_as", ["list", "ndarray", "tensor"])
def test_pack_padded_sequence_matches_torch(torch, rng, trailing, batch_first, enforce_sorted,
                                            lengths_as):
    tr = torch.nn.utils.rnn
    for batch, steps in [(1, 1), (1, 4), (5, 7), (6, 6)]:
        lengths = _distinct_lengths(rng, batch, steps) if batch > 1 else np.array([steps])
        if enforce_sorted:
            lengths = np.sort(lengths)[::-1].copy()
        x = _padded(rng, lengths, trailing, np.float32, batch_first)
        given = {"list": lengths.tolist(), "ndarray": lengths,
                 "tensor": torch.from_numpy(lengths)}[lengths_as]
        ref = tr.pack_padded_sequence(torch.from_numpy(x), given, batch_first, enforce_sorted)
        ours = rnn.pack_padded_sequence(x, given, batch_first, enforce_sorted)
        _assert_packed_equal(ours, ref)
        # A torch tensor as input gives the same.
        _assert_packed_equal(rnn.pack_padded_sequence(torch.from_numpy(x), given, batch_first,
                                                      enforce_sorted), ref)


def test_packed_sequence_methods_match_torch(torch, rng):
    seqs = [rng.standard_normal((n, 3)).astype(np.float32) for n in (4, 2, 3)]
    ours = rnn.pack_sequence(seqs, enforce_sorted=False)
    theirs = torch.nn.utils.rnn.pack_sequence([torch.from_numpy(s) for s in seqs],
                                              enforce_sorted=False)
    for name in ("double", "float", "half", "long", "int", "short", "char", "byte", "cpu"):
        got, want = getattr(ours, name)(), getattr(theirs, name)()
        assert str(got.data.dtype) == str(want.data.dtype).replace("torch.", ""), name
        np.testing.assert_array_equal(got.data, want.data.numpy())
        np.testing.assert_array_equal(got.unsorted_indices, want.unsorted_indices.numpy())
    for args, kwargs in (((torch.float64,), {}), (("cpu", np.float64), {}),
                         ((), {"dtype": torch.float64, "device": "cpu"}),
                         ((torch.zeros(1, dtype=torch.float64),), {})):
        assert ours.to(*args, **kwargs).data.dtype == np.float64
    assert ours.to("cpu") is ours and ours.to(np.float32) is ours and ours.cpu() is ours
    assert ours.is_cuda is False and ours.is_pinned() is False
    with pytest.raises(ValueError, match="CPU only"):
        ours.to("cuda")
    with pytest.raises(TypeError, match="no NumPy dtype"):
        ours.to(torch.bfloat16)


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.int32, np.float16, np.bool_])
def test_pack_padded_sequence_keeps_dtype(torch, rng, dtype):
    lengths = np.array([4, 3, 1])
    x = _padded(rng, lengths, (2,), np.float64, False).astype(dtype)
    ref = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths)
    ours = rnn.pack_padded_sequence(x, lengths)
    _assert_packed_equal(ours, ref)
    assert ours.data.dtype == dtype


def test_pack_padded_sequence_ties_and_truncation(torch, rng):
    """Equal lengths and padded steps beyond the longest length.

    torch's sort is not stable, so with ties the order within equal lengths may differ: the
    batch sizes and the padded round trip must still agree exactly."""
    tr = torch.nn.utils.rnn
    lengths = rng.integers(1, 4, size=40)
    x = rng.standard_normal((6, 40, 2))  # 6 steps, lengths at most 3
    for batch_first in (False, True):
        xi = np.ascontiguousarray(np.swapaxes(x, 0, 1)) if batch_first else x
        ref = tr.pack_padded_sequence(torch.from_numpy(xi), lengths, batch_first, False)
        ours = rnn.pack_padded_sequence(xi, lengths, batch_first, False)
        np.testing.assert_array_equal(ours.batch_sizes, ref.batch_sizes.numpy())
        # Our sort is stable: equal lengths keep their order.
        np.testing.assert_array_equal(ours.sorted_indices,
                                      np.argsort(-lengths, kind="stable"))
        ref_padded, ref_lengths = tr.pad_packed_sequence(ref, batch_first, total_length=6)
        padded, out_lengths = rnn.pad_packed_sequence(ours, batch_first, total_length=6)
        np.testing.assert_array_equal(padded, ref_padded.numpy())
        np.testing.assert_array_equal(out_lengths, ref_lengths.numpy())


def test_pack_padded_sequence_truncates_float_lengths(torch, rng):
    x = rng.standard_normal((4, 3))
    for lengths in ([3.7, 2.2, 1.9], np.array([3.7, 2.2, 1.9]), [True, True, True]):
        ref = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths)
        _assert_packed_equal(rnn.pack_padded_sequence(x, lengths), ref)
    lengths_t = torch.tensor([3.7, 2.2, 1.9])
    ref = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths_t)
    _assert_packed_equal(rnn.pack_padded_sequence(x, lengths_t), ref)


def test_lengths_that_are_no_int64_raise_as_torch(torch):
    """NaN, infinite or out-of-range lengths: torch's errors, no NumPy cast warning."""
    import warnings

    x = np.zeros((4, 3, 2))
    for lengths in ([4.0, float("nan"), 1.0], [float("inf"), 3, 1], [4.0, -1e300, 1.0],
                    [2**63, 3, 1], [4, 3, 2**64]):
        expected = _raised(lambda v=lengths: torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(x), v))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = _raised(lambda v=lengths: rnn.pack_padded_sequence(x, v))
        assert expected is not None and type(got) is type(expected), (lengths, got)
        assert str(got) == str(expected), lengths
    # torch casts a NaN of an ndarray to some integer and then fails on the order, if at all.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="cannot be converted to type int64"):
            rnn.pack_padded_sequence(x, np.array([4.0, np.nan, 1.0]))


def test_pack_padded_sequence_unsorted_with_fewer_lengths_matches_torch(torch, rng):
    """torch's enforce_sorted=False gathers only the listed batch entries: mirrored."""
    x = rng.standard_normal((5, 3, 2))
    ref = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), [3, 5],
                                                  enforce_sorted=False)
    _assert_packed_equal(rnn.pack_padded_sequence(x, [3, 5], enforce_sorted=False), ref)


@pytest.mark.parametrize("trailing", TRAILING, ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_pad_packed_sequence_matches_torch(torch, rng, trailing, batch_first, enforce_sorted):
    tr = torch.nn.utils.rnn
    lengths = _distinct_lengths(rng, 5, 8)
    if enforce_sorted:
        lengths = np.sort(lengths)[::-1].copy()
    x = _padded(rng, lengths, trailing, np.float64, False)
    ref_packed = tr.pack_padded_sequence(torch.from_numpy(x), lengths,
                                         enforce_sorted=enforce_sorted)
    ours_packed = rnn.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    for padding_value, total_length in [(0.0, None), (-1.5, None), (7, 8), (2.5, 11)]:
        ref, ref_lengths = tr.pad_packed_sequence(ref_packed, batch_first, padding_value,
                                                  total_length)
        for packed in (ours_packed, ref_packed):  # ours, and torch's PackedSequence as is
            padded, out_lengths = rnn.pad_packed_sequence(packed, batch_first, padding_value,
                                                          total_length)
            assert padded.dtype == np.float64 and out_lengths.dtype == np.int64
            assert padded.flags.c_contiguous
            np.testing.assert_array_equal(padded, ref.numpy())
            np.testing.assert_array_equal(out_lengths, ref_lengths.numpy())


def test_pad_packed_sequence_with_any_unsorted_indices_matches_torch(torch, rng):
    """unsorted_indices that are not a permutation select batch entries, as index_select."""
    data = rng.standard_normal((6, 2))
    for unsorted in ([1, 1, 0], [2, 0]):
        ref = torch.nn.utils.rnn.PackedSequence(torch.from_numpy(data), torch.tensor([3, 2, 1]),
                                                None, torch.tensor(unsorted))
        ours = rnn.PackedSequence(data, [3, 2, 1], None, unsorted)
        for batch_first in (False, True):
            expected = torch.nn.utils.rnn.pad_packed_sequence(ref, batch_first)
            for got, theirs in zip(rnn.pad_packed_sequence(ours, batch_first), expected):
                np.testing.assert_array_equal(got, theirs.numpy())


def test_unsorted_indices_out_of_range_raise_as_torch(torch, rng):
    """Negative or too large unsorted_indices: torch's errors (NumPy would wrap -1)."""
    tr = torch.nn.utils.rnn
    data = rng.standard_normal((6, 2))
    for unsorted in ([-1, 0, 1], [0, 3, 1], [2, 0, -3]):
        ref = tr.PackedSequence(torch.from_numpy(data), torch.tensor([3, 2, 1]), None,
                                torch.tensor(unsorted))
        ours = rnn.PackedSequence(data, [3, 2, 1], None, unsorted)
        for theirs, mine in ((tr.pad_packed_sequence, rnn.pad_packed_sequence),
                             (tr.unpack_sequence, rnn.unpack_sequence)):
            expected = _raised(lambda f=theirs, p=ref: f(p))
            got = _raised(lambda f=mine, p=ours: f(p))
            assert expected is not None and type(got) is type(expected), (unsorted, got)
            assert str(got) == str(expected), unsorted


def test_padding_value_conversion_matches_torch(torch):
    """padding_value into each dtype: same values, or the same overflow error."""
    tr = torch.nn.utils.rnn
    dtypes = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32,
              np.float64, np.bool_]
    values = [-1, -1.0, 300, 1e10, 1e300, float("nan"), float("inf"), 2**40, -2.7, 70000.0,
              True, np.float32(1.5), torch.tensor(2.0)]
    for dtype in dtypes:
        x = np.ones((3, 2), dtype=dtype)
        ref_packed = tr.pack_padded_sequence(torch.from_numpy(x), [3, 1])
        ours_packed = rnn.pack_padded_sequence(x, [3, 1])
        seqs = [x[:, 0], x[:1, 0]]
        tensors = [torch.from_numpy(s) for s in seqs]
        calls = [
            (lambda v, p=ref_packed: tr.pad_packed_sequence(p, padding_value=v)[0].numpy(),
             lambda v, p=ours_packed: rnn.pad_packed_sequence(p, padding_value=v)[0]),
            (lambda v, s=tensors: tr.pad_sequence(s, padding_value=v).numpy(),
             lambda v, s=seqs: rnn.pad_sequence(s, padding_value=v)),
        ]
        for value in values:
            for theirs, ours in calls:
                expected = _raised(lambda: theirs(value))  # noqa: B023 - called at once
                got = _raised(lambda: ours(value))  # noqa: B023
                label = f"{np.dtype(dtype).name} {value!r}"
                if expected is None:
                    assert got is None, f"{label}: {got!r}"
                    np.testing.assert_array_equal(ours(value), theirs(value), err_msg=label)
                else:
                    assert type(got) is type(expected), f"{label}: {got!r} vs {expected!r}"
                    assert str(got) == str(expected), label


@pytest.mark.parametrize("trailing", TRAILING, ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pad_sequence_matches_torch(torch, rng, trailing, batch_first, padding_side):
    seqs = [rng.standard_normal((n,) + trailing).astype(np.float32) for n in (3, 6, 1, 6, 4)]
    for padding_value in (0.0, -2.5):
        ref = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(s) for s in seqs], batch_first,
                                              padding_value, padding_side)
        ours = rnn.pad_sequence(seqs, batch_first, padding_value, padding_side)
        assert ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ref.numpy())
        from_tensors = rnn.pad_sequence((torch.from_numpy(s) for s in seqs), batch_first,
                                        padding_value, padding_side)
        np.testing.assert_array_equal(from_tensors, ref.numpy())


def test_pad_sequence_casts_and_broadcasts_like_torch(torch, rng):
    """Output dtype and trailing shape are the first sequence's; the others are cast and
    broadcast into it; an array is the sequence of its rows."""
    tr = torch.nn.utils.rnn
    cases = [
        [np.arange(3), rng.standard_normal(4)],              # float into int64: truncated
        [rng.standard_normal((3, 2)), rng.standard_normal((2, 1))],  # broadcast trailing dim
        [rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal((1, 3))],
    ]
    for seqs in cases:
        ref = tr.pad_sequence([torch.from_numpy(s) for s in seqs], padding_value=2.7)
        ours = rnn.pad_sequence(seqs, padding_value=2.7)
        assert ours.dtype == ref.numpy().dtype
        np.testing.assert_array_equal(ours, ref.numpy())
    matrix = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(rnn.pad_sequence(matrix),
                                  tr.pad_sequence(torch.from_numpy(matrix)).numpy())


@pytest.mark.parametrize("trailing", TRAILING, ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_pack_and_unpack_sequence_match_torch(torch, rng, trailing, enforce_sorted):
    tr = torch.nn.utils.rnn
    sizes = [7, 5, 4, 2, 1] if enforce_sorted else [2, 7, 1, 5, 4]
    seqs = [rng.standard_normal((n,) + trailing) for n in sizes]
    ref = tr.pack_sequence([torch.from_numpy(s) for s in seqs], enforce_sorted)
    ours = rnn.pack_sequence(seqs, enforce_sorted)
    _assert_packed_equal(ours, ref)
    ref_unpacked = tr.unpack_sequence(ref)
    for unpacked in (rnn.unpack_sequence(ours), rnn.unpack_sequence(ref)):
        assert len(unpacked) == len(seqs)
        for mine, theirs, original in zip(unpacked, ref_unpacked, seqs):
            np.testing.assert_array_equal(mine, theirs.numpy())
            np.testing.assert_array_equal(mine, original)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unpad_sequence_matches_torch(torch, rng, batch_first):
    tr = torch.nn.utils.rnn
    padded = rng.standard_normal((5, 4, 3) if not batch_first else (4, 5, 3))
    lengths = np.array([5, 2, 0, 9])  # torch keeps steps t < length: 0 and > T are fine
    # torch transposes its argument in place: give it a copy.
    ref = tr.unpad_sequence(torch.from_numpy(padded.copy()), torch.from_numpy(lengths),
                            batch_first)
    before = padded.copy()
    for given in (lengths, torch.from_numpy(lengths), lengths.tolist()):
        ours = rnn.unpad_sequence(padded, given, batch_first)
        assert len(ours) == len(ref)
        for mine, theirs in zip(ours, ref):
            np.testing.assert_array_equal(mine, theirs.numpy())
    np.testing.assert_array_equal(padded, before)  # never modified


# ------------------------------------------------------------ torch conversion


def test_to_and_from_torch_packed(torch, rng):
    tr = torch.nn.utils.rnn
    seqs = [rng.standard_normal((n, 2)).astype(np.float32) for n in (2, 4, 3)]
    ours = rnn.pack_sequence(seqs, enforce_sorted=False)
    as_torch = rnn.to_torch_packed(ours)
    assert type(as_torch) is tr.PackedSequence
    assert as_torch.batch_sizes.dtype == torch.int64
    assert as_torch.sorted_indices.dtype == torch.int64
    _assert_packed_equal(ours, as_torch)
    ref_padded, _ = tr.pad_packed_sequence(as_torch, batch_first=True)
    np.testing.assert_array_equal(ref_padded.numpy(), rnn.pad_packed_sequence(ours, True)[0])
    # torch's PackedSequence (sorted and not) converts back.
    for enforce_sorted in (True, False):
        ref = tr.pack_sequence([torch.from_numpy(s) for s in sorted(seqs, key=len)[::-1]],
                               enforce_sorted)
        back = rnn.from_torch_packed(ref)
        _assert_packed_equal(back, ref)
        assert rnn.from_torch_packed(back) is back
    assert rnn.to_torch_packed(ref) is ref
    # Read-only and non-contiguous arrays convert too.
    data = np.arange(12.0).reshape(6, 2)[:, ::-1]
    data.flags.writeable = False
    converted = rnn.to_torch_packed(rnn.PackedSequence(data, [3, 2, 1]))
    np.testing.assert_array_equal(converted.data.numpy(), data)
    assert converted.sorted_indices is None and converted.unsorted_indices is None


def test_a_torch_packed_sequence_without_unsorted_indices_is_taken_as_torch_takes_it(torch,
                                                                                      rng):
    # torch's _replace and _make skip its __new__: a None unsorted_indices beside
    # sorted_indices stays None, and torch leaves results in the sorted order.
    import fastlstm

    tr = torch.nn.utils.rnn
    seqs = [torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float32)) for n in (2, 4, 1)]
    packed = tr.pack_sequence(seqs, enforce_sorted=False)._replace(unsorted_indices=None)
    assert packed.sorted_indices is not None
    for batch_first in (False, True):
        want, want_lengths = tr.pad_packed_sequence(packed, batch_first=batch_first)
        got, lengths = rnn.pad_packed_sequence(packed, batch_first=batch_first)
        np.testing.assert_array_equal(got, want.numpy())
        np.testing.assert_array_equal(lengths, want_lengths.numpy())
    for ours, theirs in zip(rnn.unpack_sequence(packed), tr.unpack_sequence(packed)):
        np.testing.assert_array_equal(ours, theirs.numpy())
    assert rnn.from_torch_packed(packed).unsorted_indices is None
    assert rnn.to_torch_packed(rnn.from_torch_packed(packed)).unsorted_indices is None
    ref = torch.nn.LSTM(3, 5)
    fast = fastlstm.LSTM.from_torch(ref)
    with torch.no_grad():
        want_out, (want_h, want_c) = ref(packed)
    out, (h, c) = fast(packed)
    assert out.unsorted_indices is not None  # torch's output is made by __new__
    np.testing.assert_allclose(out.data.numpy(), want_out.data.numpy(), atol=1e-6)
    np.testing.assert_allclose(h.numpy(), want_h.numpy(), atol=1e-6)
    np.testing.assert_allclose(c.numpy(), want_c.numpy(), atol=1e-6)


def test_replace_and_make_convert_fields_as_the_constructor(torch):
    import fastlstm

    packed = rnn.pack_sequence([np.ones((2, 3), np.float32), np.ones((3, 3), np.float32)],
                               enforce_sorted=False)
    swapped = packed._replace(sorted_indices=[1, 0], unsorted_indices=torch.tensor([1, 0]))
    for field in swapped[1:]:
        assert isinstance(field, np.ndarray) and field.dtype == np.int64
    kept = packed._replace(unsorted_indices=None)
    assert kept.unsorted_indices is None and kept.sorted_indices is packed.sorted_indices
    made = rnn.PackedSequence._make([[1.0, 2.0], [1, 1], None, None])
    assert made.data.dtype == np.float64 and made.batch_sizes.dtype == np.int64
    with pytest.raises(TypeError, match="Expected 4 arguments, got 3"):
        rnn.PackedSequence._make([[1.0], [1], None])
    with pytest.raises(TypeError, match="sorted_indices must hold integers"):
        packed._replace(sorted_indices=[0.5, 1.5])
    # the fields reach the module as arrays of int64
    out, _ = fastlstm.LSTM(3, 4, rng=0)(swapped)
    assert out.sorted_indices.dtype == np.int64
    assert swapped.to(np.float64).data.dtype == np.float64


def test_packed_sequence_hashes_as_torch_s():
    packed = rnn.pack_sequence([np.ones(2), np.ones(1)])
    assert hash(packed) == hash(packed) and packed in {packed}
    same_fields = rnn.PackedSequence._make(tuple(packed))
    assert same_fields == packed and hash(same_fields) == hash(packed)


def test_float16_lengths_give_no_warning(torch):
    import warnings

    x = np.ones((4, 3, 2), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = rnn.pack_padded_sequence(x, np.array([4, 2, 1], np.float16))
        want = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(x), torch.tensor([4, 2, 1], dtype=torch.float16))
    _assert_packed_equal(got, want)


def test_is_packed_sequence(torch):
    ours = rnn.pack_sequence([np.ones(2), np.ones(1)])
    assert rnn.is_packed_sequence(ours)
    assert rnn.is_packed_sequence(rnn.to_torch_packed(ours))
    for other in (np.ones(3), torch.ones(3), tuple(ours), None):
        assert not rnn.is_packed_sequence(other)
    with pytest.raises(TypeError):
        rnn.from_torch_packed(tuple(ours))
    with pytest.raises(TypeError):
        rnn.to_torch_packed(tuple(ours))


def test_module_does_not_import_torch():
    code = ("import sys, numpy as np, fastlstm.rnn as r\n"
            "p = r.pack_sequence([np.ones(2), np.ones(1)])\n"
            "assert r.is_packed_sequence(p) and not r.is_packed_sequence(1)\n"
            "r.pad_packed_sequence(p); r.unpack_sequence(p)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- errors

# Each case: (function name, args, kwargs), built from torch tensors.  fastlstm gets the same
# arguments, then their NumPy versions.


def _error_cases(torch):
    tr = torch.nn.utils.rnn
    x = torch.randn(5, 3, 2)
    packed = tr.pack_padded_sequence(x, [3, 2, 1])
    u8 = tr.pack_padded_sequence(torch.ones(3, 2, dtype=torch.uint8), [3, 1])
    ppad, pack, pseq = "pad_packed_sequence", "pack_padded_sequence", "pad_sequence"
    return [
        # pack_padded_sequence
        (pack, (x, [2, 3, 1]), {}),                                  # unsorted
        (pack, (x, [3, 2, 0]), {}),                                  # zero length
        (pack, (x, [0, 2, 3]), {"enforce_sorted": False}),
        (pack, (x, [3, 2, -1]), {}),
        (pack, (x, [3, 2]), {}),                                     # wrong number
        (pack, (x, [3, 2, 1, 1]), {}),
        (pack, (x, []), {}),
        (pack, (x, [3, 2, 1, 1]), {"enforce_sorted": False}),
        (pack, (x.transpose(0, 1), [3, 2, 1, 1]), {"enforce_sorted": False, "batch_first": True}),
        (pack, (x, [3, 2, 1]), {"batch_first": True}),               # batch is 5
        (pack, (x, torch.tensor([3, 2])), {}),
        (pack, (x, [[3, 2, 1]]), {}),                                # 2-D lengths
        (pack, (x, [[3, 2, 1]]), {"enforce_sorted": False}),
        (pack, (x, 3), {}),                                          # 0-d lengths
        (pack, (x, 3), {"enforce_sorted": False}),
        (pack, (torch.randn(0, 2, 2), [1, 1]), {}),                  # empty
        (pack, (torch.randn(5, 0, 2), []), {"enforce_sorted": False}),
        (pack, (torch.randn(0, 2, 2), [[1]]), {}),
        (pack, (torch.randn(5), [3]), {}),                           # 1-D input
        (pack, (torch.randn(5), [3]), {"batch_first": True}),
        (pack, (torch.randn(5), [3]), {"enforce_sorted": False}),
        (pack, (torch.tensor(1.0), [3]), {}),                        # 0-d input
        (pack, (torch.tensor(1.0), [3]), {"batch_first": True}),
        (pack, (x, "abc"), {}),                                      # lengths not numbers
        (pack, (x, None), {}),
        (pack, (x, [2**70, 2, 1]), {}),
        # pad_packed_sequence
        (ppad, (packed,), {"total_length": 2}),
        (ppad, (packed,), {"total_length": 0}),
        (ppad, (packed,), {"total_length": 2.5}),
        (ppad, (packed,), {"total_length": 4.0}),
        (ppad, (packed,), {"total_length": np.float64(4.0)}),
        (ppad, (packed,), {"total_length": "4"}),
        (ppad, (packed,), {"padding_value": "a"}),
        (ppad, (packed,), {"padding_value": None}),
        (ppad, (packed,), {"padding_value": np.array(2.5)}),
        (ppad, (packed,), {"padding_value": 1e300}),
        (ppad, (u8,), {"padding_value": -1.5}),
        (ppad, (u8,), {"padding_value": 256}),
        (ppad, (u8,), {"padding_value": 1 + 2j}),
        # pad_sequence
        (pseq, ([],), {}),
        (pseq, (5,), {}),
        (pseq, ([torch.randn(3, 2), torch.randn(2, 3)],), {}),
        (pseq, ([torch.randn(3, 2), torch.randn(2, 2, 1)],), {}),
        (pseq, ([torch.randn(3, 2), torch.randn(2, 3)],), {"batch_first": True}),
        (pseq, ([torch.randn(2)],), {"padding_side": "middle"}),
        (pseq, ([],), {"padding_side": "middle"}),
        (pseq, ([torch.randn(2)],), {"padding_side": None}),
        (pseq, ([torch.randn(2)],), {"padding_value": "a"}),
        (pseq, ([torch.randn(2)],), {"padding_value": 1j}),
        (pseq, ([torch.tensor(1.0), torch.randn(2)],), {}),
        (pseq, ([torch.randn(2), torch.tensor(1.0)],), {}),
        (pseq, ([torch.ones(2, dtype=torch.uint8)],), {"padding_value": -1}),
        # pack_sequence / unpack_sequence / unpad_sequence
        ("pack_sequence", ([],), {}),
        ("pack_sequence", ([torch.arange(1), torch.arange(3)],), {}),
        ("pack_sequence", ([torch.arange(3), torch.arange(0)],), {}),
        ("pack_sequence", ([torch.arange(3), torch.tensor(1)],), {}),
        ("unpack_sequence", (x,), {}),
        ("unpad_sequence", (x, torch.tensor([3, 2])), {}),
        ("unpad_sequence", (x, torch.tensor([3, 2, 1, 1])), {}),
        ("unpad_sequence", (x, torch.tensor([3, 2, 1, 1, 1, 1])), {"batch_first": True}),
        ("PackedSequence", (torch.ones(3),), {}),
        # batch_first must be a bool, as torch's argument parser wants
        (pack, (x, [3, 2, 1]), {"batch_first": 1}),
        (pack, (x, [3, 2, 1], None), {}),
        (ppad, (packed,), {"batch_first": 1}),
        (ppad, (packed,), {"batch_first": "yes"}),
        (pseq, ([torch.randn(2)],), {"batch_first": np.bool_(True)}),
        (pseq, ([torch.randn(2)], 0), {}),
        # an empty packed batch; a fill value that complex64 cannot hold
        (ppad, (tr.PackedSequence(torch.zeros(0), torch.zeros(0, dtype=torch.int64)),), {}),
        ("unpack_sequence", (tr.PackedSequence(torch.zeros(0),
                                               torch.zeros(0, dtype=torch.int64)),), {}),
        (pseq, ([torch.ones(2, dtype=torch.complex64)],), {"padding_value": 1e39}),
        (ppad, (tr.pack_sequence([torch.ones(2, dtype=torch.complex64)]),),
         {"padding_value": complex(1, 1e39)}),
    ]


# Messages that name the argument's type: the NumPy version names numpy.ndarray.
_TYPE_NAMING = {"unpack_sequence"}


def test_errors_match_torch(torch):
    tr = torch.nn.utils.rnn
    cases = _error_cases(torch)
    for name, args, kwargs in cases:
        label = f"{name}{args!r:.80} {kwargs}"
        a, k = _map_args(torch, args, False), _map_args(torch, kwargs, False)
        expected = _raised(lambda: getattr(tr, name)(*a, **k))  # noqa: B023
        assert expected is not None, f"torch accepted {label}"
        for numpy_args in (False, True):
            a, k = _map_args(torch, args, numpy_args), _map_args(torch, kwargs, numpy_args)
            got = _raised(lambda: getattr(rnn, name)(*a, **k))  # noqa: B023
            assert type(got) is type(expected), f"{label}: {got!r}, torch: {expected!r}"
            if not (numpy_args and name in _TYPE_NAMING):
                assert str(got) == str(expected), label


def test_lengths_beyond_input_raise(rng):
    """torch returns a malformed PackedSequence there; fastlstm refuses."""
    x = rng.standard_normal((5, 3, 2))
    for batch_first, enforce_sorted in [(False, True), (True, True), (False, False)]:
        xi = np.swapaxes(x, 0, 1) if batch_first else x
        with pytest.raises(ValueError, match=re.escape("at most the padded length of the "
                                                       "input (5), but got a length of 6")):
            rnn.pack_padded_sequence(xi, [6, 2, 1], batch_first, enforce_sorted)


def test_malformed_packed_sequence_raises():
    data = np.arange(6.0)
    for batch_sizes in ([3, 2], [3, 2, 2], [1, 2, 3], [3, 0, 3]):
        packed = rnn.PackedSequence(data, batch_sizes)
        with pytest.raises(ValueError):
            rnn.pad_packed_sequence(packed)
        with pytest.raises(ValueError):
            rnn.unpack_sequence(packed)
    with pytest.raises(RuntimeError, match="1D CPU int64 tensor, but got 2D"):
        rnn.pad_packed_sequence(rnn.PackedSequence(data, [[3, 2, 1]]))
    with pytest.raises(TypeError, match="batch_sizes must hold integers"):
        rnn.PackedSequence(data, [3.0, 2.0, 1.0])


# ------------------------------------------------- without torch: NumPy references


def _pad_reference(seqs, batch_first, padding_value, padding_side="right"):
    steps = max(len(s) for s in seqs)
    out = np.full((len(seqs), steps) + seqs[0].shape[1:], padding_value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if padding_side == "right":
            out[i, :len(s)] = s
        else:
            out[i, steps - len(s):] = s
    return out if batch_first else np.ascontiguousarray(np.swapaxes(out, 0, 1))


def _packed_reference(seqs):
    """Packed data by its definition: step by step, the sequences (longest first) that
    have that step."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    steps = max(len(s) for s in seqs)
    rows = [seqs[i][t] for t in range(steps) for i in order if t < len(seqs[i])]
    sizes = [sum(t < len(s) for s in seqs) for t in range(steps)]
    return np.stack(rows), np.array(sizes), np.array(order)


@pytest.mark.parametrize("trailing", TRAILING, ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_round_trips_against_numpy(rng, trailing, batch_first):
    for sizes in ([1], [3, 3], [4, 1, 6, 2, 6, 3], [2, 5, 1, 1]):
        seqs = [rng.standard_normal((n,) + trailing) for n in sizes]
        padded = rnn.pad_sequence(seqs, batch_first, padding_value=-9.0)
        np.testing.assert_array_equal(padded, _pad_reference(seqs, batch_first, -9.0))
        left = rnn.pad_sequence(seqs, batch_first, -9.0, "left")
        np.testing.assert_array_equal(left, _pad_reference(seqs, batch_first, -9.0, "left"))

        # pad -> pack: the packed layout by definition.
        packed = rnn.pack_padded_sequence(padded, sizes, batch_first, enforce_sorted=False)
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        ref_data, ref_sizes, ref_order = _packed_reference(seqs)
        np.testing.assert_array_equal(data, ref_data)
        np.testing.assert_array_equal(batch_sizes, ref_sizes)
        np.testing.assert_array_equal(sorted_indices, ref_order)
        np.testing.assert_array_equal(unsorted_indices, np.argsort(ref_order))
        assert batch_sizes.dtype == sorted_indices.dtype == unsorted_indices.dtype == np.int64

        # pack -> pad gives the padded batch back, and pack_sequence packs the same.
        repadded, lengths = rnn.pad_packed_sequence(packed, batch_first, padding_value=-9.0)
        np.testing.assert_array_equal(repadded, padded)
        np.testing.assert_array_equal(lengths, sizes)
        assert lengths.dtype == np.int64
        again = rnn.pack_sequence(seqs, enforce_sorted=False)
        for mine, theirs in zip(again, packed):
            np.testing.assert_array_equal(mine, theirs)

        # unpack and unpad give the sequences back.
        for out in (rnn.unpack_sequence(packed), rnn.unpad_sequence(padded, lengths,
                                                                      batch_first)):
            assert len(out) == len(seqs)
            for mine, original in zip(out, seqs):
                np.testing.assert_array_equal(mine, original)


def test_total_length_pads_further(rng):
    seqs = [rng.standard_normal((n, 2)).astype(np.float32) for n in (3, 1)]
    padded, lengths = rnn.pad_packed_sequence(rnn.pack_sequence(seqs), batch_first=True,
                                              total_length=5)
    assert padded.shape == (2, 5, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[1, 1:], 0.0)
    np.testing.assert_array_equal(lengths, [3, 1])


def test_packed_sequence_is_a_named_tuple():
    packed = rnn.PackedSequence(np.array([4, 1, 3, 5, 2, 6]), [3, 2, 1], [2, 0, 1])
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    assert packed._fields == ("data", "batch_sizes", "sorted_indices", "unsorted_indices")
    assert data is packed.data and batch_sizes.dtype == np.int64
    np.testing.assert_array_equal(unsorted_indices, [1, 2, 0])
    assert sorted_indices.dtype == unsorted_indices.dtype == np.int64
    assert repr(packed) == (
        "PackedSequence(data=array([4, 1, 3, 5, 2, 6]), batch_sizes=array([3, 2, 1]), "
        "sorted_indices=array([2, 0, 1]), unsorted_indices=array([1, 2, 0]))"
    )
    pair = rnn.PackedSequence((data, batch_sizes))
    assert pair.sorted_indices is None and pair.unsorted_indices is None
    with pytest.raises(AssertionError, match="Expected data to be a list or tuple of length 2"):
        rnn.PackedSequence(data)
    np.testing.assert_array_equal(rnn.invert_permutation(np.array([3, 0, 2, 1])),
                                  [1, 3, 2, 0])
    assert rnn.invert_permutation(None) is None


def test_docstring_examples():
    result = doctest.testmod(rnn, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20 and result.failed == 0


def test_docs_page_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})


def test_nn_utils_rnn_is_where_torch_has_it(torch):
    # README: "change the import (import fastlstm as nn); the rest runs as written", and
    # code written against torch.nn reaches these through nn.utils.rnn.
    import importlib

    import fastlstm as nn

    module = importlib.import_module("fastlstm.utils.rnn")
    assert module is nn.utils.rnn
    assert all(getattr(module, n) is getattr(nn.rnn, n) for n in nn.rnn.__all__)
    names = ("PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence",
             "pack_sequence", "unpack_sequence", "unpad_sequence")
    assert all(hasattr(torch.nn.utils.rnn, n) and hasattr(nn.utils.rnn, n) for n in names)
    x = np.arange(24, dtype=np.float32).reshape(3, 2, 4)
    packed = nn.utils.rnn.pack_padded_sequence(x, [3, 1])
    want = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), [3, 1])
    np.testing.assert_array_equal(packed.data, want.data.numpy())


def test_packed_cpu_takes_torchs_arguments(torch):
    # torch's PackedSequence.cpu(*args, **kwargs) hands them to to(); ours took none.
    seqs = [np.ones((3, 2), np.float32), np.ones((1, 2), np.float32)]
    ours = rnn.pack_sequence(seqs)
    theirs = torch.nn.utils.rnn.pack_sequence([torch.from_numpy(s) for s in seqs])
    assert ours.cpu(memory_format=torch.preserve_format) is ours
    assert ours.cpu() is ours
    got, want = ours.cpu(torch.float64), theirs.cpu(torch.float64)
    assert got.data.dtype == np.float64 and want.data.dtype == torch.float64
    np.testing.assert_array_equal(got.data, want.data.numpy())
