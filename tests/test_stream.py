"""fastlstm.Stream: frame-by-frame steps with the state carried in place."""

import copy

import numpy as np
import pytest
from _helpers import torch_single_thread
from _helpers.reference import reference_forward

import fastlstm
from fastlstm._ext import kernels

_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.mark.parametrize("batch", [None, 1, 3, 9])
@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, proj_size=5)])
def test_frames_equal_one_call(threads, batch, kwargs):
    m = fastlstm.LSTM(6, 17, dtype=np.float64, rng=4, **kwargs)
    shape = (30, 6) if batch is None else (30, batch, 6)
    x = np.random.default_rng(5).standard_normal(shape)
    stream = fastlstm.Stream(m, batch)
    outs = [stream.step(frame).copy() for frame in x]
    ref, (ref_h, ref_c) = reference_forward(m, x)
    assert np.abs(np.stack(outs) - ref).max() <= 1e-12
    assert np.abs(stream.h - ref_h).max() <= 1e-12
    assert np.abs(stream.c - ref_c).max() <= 1e-12


def test_reset_with_state_and_chunks(threads):
    m = fastlstm.LSTM(4, 12, num_layers=2, dtype=np.float64, rng=0)
    x = np.random.default_rng(1).standard_normal((20, 2, 4))
    hx = (np.full((2, 2, 12), 0.3), np.full((2, 2, 12), -0.1))
    stream = fastlstm.Stream(m, 2)
    stream.reset(hx)
    for frame in x[:10]:
        stream.step(frame)
    # Continue with one call from the stream's state: the same as one call over all.
    out, (h, c) = m(x[10:], (stream.h.copy(), stream.c.copy()))
    ref, (ref_h, ref_c) = m(x, hx)
    assert np.abs(out - ref[10:]).max() <= 1e-12 and np.abs(h - ref_h).max() <= 1e-12
    stream.reset()
    assert not stream.h.any() and not stream.c.any()


@pytest.mark.parametrize("batch", [None, 2])
def test_writes_into_the_state_set_the_next_step(threads, batch):
    # Through the views h and c: on a new stream, after reset() and after steps.
    m = fastlstm.LSTM(4, 6, num_layers=2, proj_size=3, dtype=np.float64, rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4) if batch is None else (3, batch, 4))
    stream = fastlstm.Stream(m, batch)
    for _ in range(3):
        h0, c0 = rng.standard_normal(stream.h.shape), rng.standard_normal(stream.c.shape)
        stream.h[...] = h0
        stream.c[...] = c0
        outs = [stream.step(frame).copy() for frame in x]
        ref, (ref_h, ref_c) = reference_forward(m, x, (h0, c0))
        assert np.abs(np.stack(outs) - ref).max() <= 1e-12
        assert np.abs(stream.h - ref_h).max() <= 1e-12
        assert np.abs(stream.c - ref_c).max() <= 1e-12
        stream.reset()


def test_cell_frame_loop_matches_torch(torch):
    # 1000 frames, state in place, against torch's LSTMCell loop.
    t = torch.nn.LSTMCell(32, 48, dtype=torch.float64)
    stream = fastlstm.Stream(fastlstm.LSTMCell.from_torch(t), batch_size=2)
    frames = np.random.default_rng(0).standard_normal((1000, 2, 32))
    th = tc = torch.zeros(2, 48, dtype=torch.float64)
    with torch.no_grad():
        for frame in frames:
            y = stream.step(frame)
            th, tc = t(torch.from_numpy(frame), (th, tc))
    assert np.abs(y - th.numpy()).max() <= 1e-12
    assert np.abs(stream.c[0] - tc.numpy()).max() <= 1e-12


def test_float32_stream_matches_torch_lstm(torch):
    t = torch.nn.LSTM(16, 32, num_layers=2)
    stream = fastlstm.Stream(fastlstm.LSTM.from_torch(t))
    x = torch.randn(50, 16)
    with torch.no_grad():
        ref, (ref_h, _) = t(x)
    outs = np.stack([stream.step(frame).copy() for frame in x.numpy()])
    assert np.abs(outs - ref.numpy()).max() <= 1e-5
    assert np.abs(stream.h - ref_h.numpy()).max() <= 1e-5


def test_step_returns_a_reused_buffer():
    stream = fastlstm.Stream(fastlstm.LSTMCell(3, 4, rng=0))
    first = stream.step(np.ones(3, np.float32))
    kept = first.copy()
    second = stream.step(np.zeros(3, np.float32))
    assert second is first or np.shares_memory(first, second)
    assert not np.array_equal(kept, second)


@pytest.mark.parametrize("kind", ["plain", "float64", "strided", "list", "fortran"])
@pytest.mark.parametrize("batch", [None, 1, 4])
def test_every_kind_of_frame(kind, batch):
    """Plain frames are checked and copied in C, others converted in Python:
    both give the oracle's answer."""
    m = fastlstm.LSTM(5, 9, num_layers=2, rng=2)
    shape = (12, 5) if batch is None else (12, batch, 5)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    stream = fastlstm.Stream(m, batch)
    plan_takes = []
    outs = []
    for frame in x:
        if kind == "float64":
            frame = frame.astype(np.float64)
        elif kind == "strided":
            frame = np.repeat(frame, 2, axis=-1)[..., ::2]
        elif kind == "list":
            frame = frame.tolist()
        elif kind == "fortran" and frame.ndim == 2:
            frame = np.asfortranarray(frame)
        plan_takes.append(type(frame) is np.ndarray and frame.dtype == np.float32
                          and frame.flags.c_contiguous)
        outs.append(stream.step(frame).copy())
    ref, (ref_h, ref_c) = reference_forward(m, x)
    assert np.abs(np.stack(outs) - ref).max() <= 2e-6
    assert np.abs(stream.h - ref_h).max() <= 2e-6 and np.abs(stream.c - ref_c).max() <= 2e-6
    assert all(plan_takes) == (kind == "plain" or (kind == "fortran" and batch in (None, 1)))
    # The plan itself refuses what it cannot copy as it is.
    plan = stream._plan()
    assert plan.stream_step(np.zeros((batch or 1, 5), np.float32), 1) is True
    assert plan.stream_step(np.zeros((batch or 1, 6), np.float32), 1) is False
    assert plan.stream_step(np.zeros((batch or 1) * 5, np.float64), 1) is False


def test_errors():
    with pytest.raises(ValueError, match="unidirectional"):
        fastlstm.Stream(fastlstm.LSTM(3, 4, bidirectional=True))
    with pytest.raises(TypeError, match="fastlstm.LSTM or LSTMCell"):
        fastlstm.Stream(object())
    with pytest.raises(ValueError, match="batch_size"):
        fastlstm.Stream(fastlstm.LSTM(3, 4), 0)
    stream = fastlstm.Stream(fastlstm.LSTM(3, 4), 2)
    with pytest.raises(ValueError, match=r"expected a frame of shape \(2, 3\)"):
        stream.step(np.zeros(3))
    with pytest.raises(ValueError, match="floating point"):
        stream.step(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match="Stream.reset"):
        stream.reset((np.zeros((1, 2, 4)), np.zeros((2, 4))))
    with pytest.raises(ValueError, match="Stream.step: input must be a rectangular array"):
        stream.step([[1.0] * 3, [1.0] * 2])  # ragged
    for bad in ("2", 2.0, True):
        with pytest.raises(TypeError, match="batch_size"):
            fastlstm.Stream(fastlstm.LSTM(3, 4), bad)
    assert fastlstm.Stream(fastlstm.LSTM(3, 4), np.int64(2)).h.shape == (1, 2, 4)


def test_a_refused_reset_leaves_the_state_as_it_was():
    stream = fastlstm.Stream(fastlstm.LSTM(3, 4, rng=0), 2)
    stream.step(np.ones((2, 3), np.float32))
    h, c = stream.h.copy(), stream.c.copy()
    good = np.full((1, 2, 4), 7.0)
    for bad in (np.full((1, 2, 4), "x"), np.full((1, 2, 4), None), np.full((1, 2, 4), 1 + 2j),
                np.zeros((1, 2, 4), np.int64)):
        with pytest.raises(ValueError, match="Stream.reset"):
            stream.reset((good, bad))
        np.testing.assert_array_equal(stream.h, h)
        np.testing.assert_array_equal(stream.c, c)


def test_a_reset_after_a_cast_keeps_the_new_precision():
    module = fastlstm.LSTM(3, 4, rng=0)
    stream = fastlstm.Stream(module, 2)
    stream.step(np.ones((2, 3), np.float32))
    module.double()
    rng = np.random.default_rng(1)
    hx = tuple(rng.standard_normal((1, 2, 4)) for _ in range(2))
    stream.reset(hx)  # before any step in float64
    assert stream.h.dtype == np.float64
    np.testing.assert_array_equal(stream.h, hx[0])
    x = rng.standard_normal((2, 3))
    want = module(x[None], hx)[0][0]
    np.testing.assert_array_equal(stream.step(x), want)


def test_a_stream_that_stepped_pickles_and_copies():
    import copy
    import pickle

    stream = fastlstm.Stream(fastlstm.LSTM(3, 4, num_layers=2, rng=0), 2)
    x = np.random.default_rng(2).standard_normal((3, 2, 3)).astype(np.float32)
    stream.step(x[0])
    for twin in (pickle.loads(pickle.dumps(stream)), copy.deepcopy(stream)):
        np.testing.assert_array_equal(twin.h, stream.h)
        got = [twin.step(frame).copy() for frame in x[1:]]
        assert twin.h is not stream.h
        mirror = copy.deepcopy(stream)
        np.testing.assert_array_equal(got, [mirror.step(frame).copy() for frame in x[1:]])
    want = [stream.step(frame).copy() for frame in x[1:]]
    np.testing.assert_array_equal(got, want)


def test_a_stream_unpickled_from_read_only_buffers_steps_in_arrays_of_its_own():
    # Out-of-band buffers (pickle 5, as Dask and Ray pass arrays) and joblib's read-only
    # memory maps: the stream wrote its steps into the sender's immutable bytes, refused a
    # memory-mapped gate buffer with a message naming the right dtype and shape, and lost
    # the gate buffer's alignment.
    import pickle

    rng = np.random.default_rng(4)
    lstm = fastlstm.LSTM(8, 16, num_layers=2, rng=0)
    stream = fastlstm.Stream(lstm, batch_size=2)
    frames = rng.standard_normal((3, 2, 8)).astype(np.float32)
    stream.step(frames[0])
    buffers = []
    data = pickle.dumps(stream, protocol=5, buffer_callback=buffers.append)
    raw = [bytes(b.raw()) for b in buffers]
    before = [bytes(r) for r in raw]
    twin = pickle.loads(data, buffers=raw)
    for frame in frames[1:]:
        np.testing.assert_array_equal(twin.step(frame), stream.step(frame))
    assert raw == before
    assert twin._gates.ctypes.data % 64 == 0
    for a in (twin._h, twin._c, twin._x, twin._gates):
        assert a.flags.writeable and type(a) is np.ndarray
    assert twin._h.flags.owndata and twin._c.flags.owndata


def test_a_module_holding_its_stream_pickles_and_deep_copies():
    # Unpickling made the stream's buffers from its module before the module was restored
    # (it is rebuilt around the stream it holds): AttributeError on input_size.
    import pickle

    lstm = fastlstm.LSTM(3, 4, rng=0)
    stream = fastlstm.Stream(lstm)
    frames = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    stream.step(frames[0])
    lstm.my_stream = stream
    for twin in (pickle.loads(pickle.dumps(lstm)), copy.deepcopy(lstm)):
        assert twin.my_stream._module is twin
        np.testing.assert_array_equal(twin.my_stream.step(frames[1]),
                                      copy.deepcopy(stream).step(frames[1]))


def test_a_shallow_copy_steps_on_its_own():
    """copy.copy shares the module, not the state: the copy and the original each give
    the module's forward over the whole sequence (the oracle)."""
    import copy

    lstm = fastlstm.LSTM(3, 4, num_layers=2, rng=0)
    stream = fastlstm.Stream(lstm, 2)
    x = np.random.default_rng(3).standard_normal((4, 2, 3)).astype(np.float32)
    want, _ = lstm(x)
    stream.step(x[0])
    twin = copy.copy(stream)
    assert twin._module is lstm and not np.shares_memory(twin.h, stream.h)
    got_twin = [twin.step(frame).copy() for frame in x[1:]]
    got = [stream.step(frame).copy() for frame in x[1:]]
    np.testing.assert_allclose(got_twin, want[1:], atol=1e-6)
    np.testing.assert_allclose(got, want[1:], atol=1e-6)


def test_reset_from_the_streams_own_state():
    stream = fastlstm.Stream(fastlstm.LSTM(3, 4, rng=0), 2)
    stream.step(np.ones((2, 3), np.float32))
    h, c = stream.h.copy(), stream.c.copy()
    stream.reset((stream.c, stream.h))  # views of the state it overwrites: swapped all the same
    np.testing.assert_array_equal(stream.h, c)
    np.testing.assert_array_equal(stream.c, h)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_a_cell_stream_resets_from_the_cells_own_states(batch_size):
    # A cell returns (N, H) states; its stream's are (1, N, H) and refused the cell's.
    cell = fastlstm.LSTMCell(4, 5, rng=0)
    rng = np.random.default_rng(2)
    shape = (4,) if batch_size is None else (batch_size, 4)
    x0, x1 = rng.standard_normal((2, *shape)).astype(np.float32)
    h, c = cell(x0)
    stream = fastlstm.Stream(cell, batch_size)
    stream.reset((h, c))
    out = stream.step(x1)
    want_h, want_c = cell(x1, (h, c))
    np.testing.assert_allclose(out, want_h, atol=1e-6, rtol=0)
    np.testing.assert_allclose(stream.c[0], want_c, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="expected h of shape"):
        fastlstm.Stream(fastlstm.LSTM(4, 5), batch_size).reset((h, c))  # an LSTM's are not


def test_streams_on_several_python_threads_match_one_by_one():
    """Each Python thread steps its own stream at the same time (the GIL is
    released in the kernels); every stream's outputs equal the same frames run
    alone."""
    import threading

    lstm = fastlstm.LSTM(12, 24, num_layers=2, rng=0)
    rng = np.random.default_rng(1)
    frames = [rng.standard_normal((300, 2, 12)).astype(np.float32) for _ in range(4)]
    expected = [lstm(f)[0] for f in frames]
    got = [np.empty_like(e) for e in expected]

    def run(k):
        stream = fastlstm.Stream(lstm, 2)
        for t in range(frames[k].shape[0]):
            got[k][t] = stream.step(frames[k][t])

    workers = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for e, g in zip(expected, got):
        assert np.max(np.abs(e - g)) < 1e-5


def test_new_weights_take_effect_at_the_next_step():
    """A stream binds the module's packed weights once; loading new weights into the
    module rebinds them, and the state carries over."""
    m = fastlstm.LSTM(5, 9, num_layers=2, proj_size=4, rng=0)
    other = fastlstm.LSTM(5, 9, num_layers=2, proj_size=4, rng=1)
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((6, 2, 5)).astype(np.float32)
    stream = fastlstm.Stream(m, 2)
    for frame in frames[:3]:
        stream.step(frame)
    state = (stream.h.copy(), stream.c.copy())
    m.load_state_dict(other.state_dict())
    got = np.stack([stream.step(frame).copy() for frame in frames[3:]])
    expected, _ = other(frames[3:], state)
    assert np.max(np.abs(got - expected)) < 1e-5


@pytest.mark.parametrize("level", kernels.simd_available())
def test_stream_every_simd_level(level):
    m = fastlstm.LSTM(7, 40, num_layers=2, rng=0)
    frames = np.random.default_rng(1).standard_normal((5, 3, 7)).astype(np.float32)
    expected, _ = m(frames)
    kernels.set_simd_level(level)
    try:
        stream = fastlstm.Stream(m, 3)
        got = np.stack([stream.step(frame).copy() for frame in frames])
    finally:
        kernels.set_simd_level(None)
    assert np.max(np.abs(got - expected)) < 1e-5
