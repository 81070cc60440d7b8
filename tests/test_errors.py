"""Error parity with ``torch.nn.LSTM``.

Every invalid constructor argument and every invalid forward input is run on
``torch.nn.LSTM`` and on ``fastlstm.LSTM``; both must raise the same exception
type with the same message (torch's message is computed here, never
hard-coded).  Where fastlstm's message differs on purpose (numpy dtype names
instead of torch's), the type and the stable prefix are checked.
"""

import re
import warnings

import numpy as np
import pytest
from _helpers import TOL, torch_single_thread
from _helpers import raised as _raised

import fastlstm

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning"
)

# Tolerances of the parity checks (max abs error), as in conftest.py.


# torch's tiny-LSTM calls are ~100x slower with OpenMP threads on a busy machine.
_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

# --------------------------------------------------------------------- helpers




def assert_same_error(torch_fn, fast_fn, *, same_message=True):
    """Both callables raise; same type and (by default) the same message."""
    t_exc = _raised(torch_fn)
    f_exc = _raised(fast_fn)
    assert t_exc is not None, "torch did not raise: the test case is not an error case"
    assert f_exc is not None, (
        f"fastlstm did not raise; torch raised {type(t_exc).__name__}: {t_exc}"
    )
    assert type(f_exc) is type(t_exc), (
        f"exception type differs: torch {type(t_exc).__name__}: {t_exc} / "
        f"fastlstm {type(f_exc).__name__}: {f_exc}"
    )
    if same_message:
        assert str(f_exc) == str(t_exc)
    return t_exc, f_exc


def _ctor_args(kwargs):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    return args


# ----------------------------------------------------------------- constructor

# Values rejected by torch's own validation in RNNBase.__init__ (explicit
# checks with explicit messages): fastlstm must give type and message verbatim.
CTOR_CASES = [
    # dropout outside [0, 1], bool, a string (torch: float("0.5") passes, then
    # the isinstance(numbers.Number) check fails), NaN
    dict(dropout=1.5),
    dict(dropout=-0.1),
    dict(dropout=1.0000001),
    dict(dropout=True),
    dict(dropout=False),
    dict(dropout="0.5"),
    dict(dropout=float("nan")),
    dict(dropout=float("inf")),
    # bias / batch_first not bool
    dict(bias=1),
    dict(bias=0),
    dict(bias="True"),
    dict(bias=None),
    dict(bias=np.bool_(True)),
    dict(batch_first=1),
    dict(batch_first="yes"),
    dict(batch_first=None),
    # input_size / hidden_size: non-int, zero, negative
    dict(input_size=3.0),
    dict(input_size="3"),
    dict(input_size=None),
    dict(input_size=np.int64(3)),
    dict(input_size=0),
    dict(input_size=-2),
    dict(hidden_size=4.0),
    dict(hidden_size="4"),
    dict(hidden_size=None),
    dict(hidden_size=np.int32(4)),
    dict(hidden_size=0),
    dict(hidden_size=-1),
    # num_layers zero / negative
    dict(num_layers=0),
    dict(num_layers=-1),
    # proj_size negative, >= hidden_size
    dict(proj_size=-1),
    dict(proj_size=4),
    dict(proj_size=5),
    dict(hidden_size=1, proj_size=1),
    # checks come in torch's order: the first failing one wins
    dict(dropout=2.0, bias=1),
    dict(bias=1, batch_first=1),
    dict(batch_first=1, input_size=0),
    dict(input_size=0, hidden_size=0),
    dict(hidden_size=0, num_layers=0),
    dict(num_layers=0, proj_size=-1),
    dict(input_size="3", hidden_size=-1),
]


@pytest.mark.parametrize("kwargs", CTOR_CASES, ids=repr)
def test_constructor_error_parity(torch, kwargs):
    args = _ctor_args(kwargs)
    assert_same_error(lambda: torch.nn.LSTM(**args), lambda: fastlstm.LSTM(**args))


# num_layers / proj_size of a non-int type: torch has no explicit type check,
# it fails later inside Python (``'<=' not supported ...``, ``range()`` or
# ``torch.empty()`` errors).  fastlstm checks them explicitly like input_size;
# the exception type must still be torch's.
NONINT_COUNT_CASES = [
    dict(num_layers=2.0),
    dict(num_layers="2"),
    dict(num_layers=None),
    dict(proj_size=1.0),
    dict(proj_size="1"),
    dict(proj_size=None),
]


@pytest.mark.parametrize("kwargs", NONINT_COUNT_CASES, ids=repr)
def test_constructor_nonint_count_type_parity(torch, kwargs):
    args = _ctor_args(kwargs)
    _, f_exc = assert_same_error(
        lambda: torch.nn.LSTM(**args), lambda: fastlstm.LSTM(**args), same_message=False
    )
    (name, value), = kwargs.items()
    assert str(f_exc) == f"{name} should be of type int, got: {type(value).__name__}"


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers", "proj_size"])
@pytest.mark.parametrize("flag", [True, False])
def test_constructor_refuses_flags_as_sizes(name, flag):
    # A deliberate difference (docs/porting.md): torch reads True and False as 1 and 0.
    args = dict(input_size=3, hidden_size=4)
    args[name] = flag
    with pytest.raises(TypeError) as exc:
        fastlstm.LSTM(**args)
    assert str(exc.value) == f"{name} should be of type int, got: bool"
    if name in ("input_size", "hidden_size"):
        cell_args = dict(input_size=3, hidden_size=4)
        cell_args[name] = flag
        with pytest.raises(TypeError) as exc:
            fastlstm.LSTMCell(**cell_args)
        assert str(exc.value) == f"{name} should be of type int, got: bool"


# Values that torch converts with float(dropout) *before* validating it, so
# torch's error is float()'s own.  The exception type must match.
@pytest.mark.parametrize("dropout", ["abc", None, [0.5]], ids=repr)
def test_constructor_dropout_unconvertible_type_parity(torch, dropout):
    args = _ctor_args(dict(dropout=dropout))
    assert_same_error(
        lambda: torch.nn.LSTM(**args), lambda: fastlstm.LSTM(**args), same_message=False
    )


# numpy integers: torch has no isinstance(int) check for num_layers and
# proj_size, so it accepts them; a torch-valid call must be fastlstm-valid.
@pytest.mark.parametrize(
    "kwargs", [dict(num_layers=np.int64(2)), dict(proj_size=np.int64(2))], ids=repr
)
def test_constructor_numpy_int_counts_accepted_like_torch(torch, kwargs):
    args = _ctor_args(kwargs)
    t = torch.nn.LSTM(**args)
    m = fastlstm.LSTM(**args)
    assert [k for k, _ in m.named_parameters()] == list(t.state_dict())


@pytest.mark.parametrize("dropout", [0.5, 1.0, 1, 0.25])
def test_dropout_warning_single_layer(torch, dropout):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.nn.LSTM(3, 4, num_layers=1, dropout=dropout)
    t_msgs = [str(w.message) for w in rec if issubclass(w.category, UserWarning)]
    assert len(t_msgs) == 1
    with pytest.warns(UserWarning) as rec_f:
        fastlstm.LSTM(3, 4, num_layers=1, dropout=dropout)
    f_msgs = [str(w.message) for w in rec_f if issubclass(w.category, UserWarning)]
    assert f_msgs == t_msgs
    assert f"dropout={dropout}" in f_msgs[0] and "num_layers=1" in f_msgs[0]


def test_dropout_warning_points_at_caller():
    with pytest.warns(UserWarning, match="non-zero dropout expects") as rec:
        fastlstm.LSTM(3, 4, dropout=0.5)
    assert rec[0].filename == __file__


@pytest.mark.parametrize("kwargs", [dict(dropout=0.0), dict(dropout=0.5, num_layers=2)])
def test_no_dropout_warning_when_valid(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastlstm.LSTM(3, 4, **kwargs)


def test_dropout_warning_before_type_error(torch):
    # torch warns, then fails on bias: both must do the same
    for cls in (torch.nn.LSTM, fastlstm.LSTM):
        with pytest.warns(UserWarning, match="non-zero dropout expects"):
            with pytest.raises(TypeError, match="bias should be of type bool"):
                cls(3, 4, dropout=0.5, bias=1)


# ---------------------------------------------------------------- fastlstm-only


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps", "meta"])
def test_device_not_cpu(device):
    with pytest.raises(ValueError, match="CPU"):
        fastlstm.LSTM(3, 4, device=device)


def test_device_torch_cuda_rejected(torch):
    with pytest.raises(ValueError, match="CPU"):
        fastlstm.LSTM(3, 4, device=torch.device("cuda"))


@pytest.mark.parametrize("device", [None, "cpu"])
def test_device_cpu_accepted(device):
    fastlstm.LSTM(3, 4, device=device)


def test_device_torch_cpu_accepted(torch):
    fastlstm.LSTM(3, 4, device=torch.device("cpu"))


def _odd_tensor(torch, form, x):
    """``x`` as a tensor a CPU product cannot read as it is."""
    if form == "meta":
        return torch.empty(x.shape, device="meta")
    if form == "sparse":
        return x.to_sparse()
    if form == "mkldnn":
        return x.to_mkldnn()
    return torch.quantize_per_tensor(x, 0.1, 0, torch.quint8)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's deprecation of quantized tensors
@pytest.mark.parametrize("form", ["meta", "mkldnn", "quantized"])
def test_tensors_off_the_cpu_or_not_dense_raise_torchs_error_type(torch, form):
    # A meta (or CUDA) tensor was copied to the host behind the user's back or failed in
    # numpy; MKL-DNN and quantized ones raised numpy's TypeError.
    t, tc = torch.nn.LSTM(4, 5), torch.nn.LSTMCell(4, 5)
    f, fc = fastlstm.LSTM.from_torch(t), fastlstm.LSTMCell.from_torch(tc)
    x, h = torch.randn(3, 2, 4), torch.zeros(1, 2, 5)
    odd_x, odd_h, odd_x2 = (_odd_tensor(torch, form, v) for v in (x, h, x[0]))
    want, got = _raised(lambda: t(odd_x)), _raised(lambda: f(odd_x))
    assert type(got) is type(want), (got, want)
    # torch's errors in the states and in its cell come from wherever its code first
    # trips (a product, a copy): each of fastlstm's is one of torch's two types there.
    stream = fastlstm.Stream(f, batch_size=2)
    assert _raised(lambda: tc(odd_x2)) is not None
    for call in (lambda: f(x, (odd_h, h)), lambda: fc(odd_x2), lambda: stream.step(odd_x[0])):
        assert isinstance(_raised(call), (RuntimeError, NotImplementedError))
    if form == "meta":  # torch's words: the device is what a user must change
        for call, torch_call in ((lambda: f(odd_x), lambda: t(odd_x)),
                                 (lambda: f(x, (odd_h, h)), lambda: t(x, (odd_h, h)))):
            assert str(_raised(call)) == str(_raised(torch_call))


def test_sparse_tensors_are_read_as_dense(torch):
    # torch's LSTMCell takes a sparse input and its LSTM sparse states; numpy took neither.
    tc = torch.nn.LSTMCell(4, 5)
    f, fc = fastlstm.LSTM(4, 5, rng=0), fastlstm.LSTMCell.from_torch(tc)
    x, h = torch.randn(3, 2, 4), torch.randn(1, 2, 5)
    with torch.no_grad():
        want_cell = tc(x[0])[0].numpy()
    np.testing.assert_allclose(fc(x[0].to_sparse())[0].numpy(), want_cell, atol=1e-6, rtol=0)
    for got, want in ((f(x.to_sparse())[0], f(x)[0]),
                      (f(x, (h.to_sparse(), h))[0], f(x, (h, h))[0])):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_tensors_are_read_as_float32(torch, name):
    # NumPy has no float8: every one is exact in float32, as bfloat16 and float16 are.
    f, fc = fastlstm.LSTM(4, 5, rng=0), fastlstm.LSTMCell(4, 5, rng=0)
    x = torch.randn(3, 2, 4).to(getattr(torch, name))
    exact = x.float()
    for got, want in ((f(x)[0], f(exact)[0]), (fc(x[0])[0], fc(exact[0])[0]),
                      (f(exact, (x[:1, :, :1].expand(1, 2, 5),) * 2)[0],
                       f(exact, (exact[:1, :, :1].expand(1, 2, 5),) * 2)[0]),
                      (fastlstm.pad_sequence([x[0], x[1, :1]]),
                       fastlstm.pad_sequence([exact[0], exact[1, :1]]))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_complex32_tensors_raise_as_complex64_ones(torch):
    f = fastlstm.LSTM(4, 5)
    x = torch.randn(3, 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: complex32 is experimental
        half = x.to(torch.complex32)
    want = _raised(lambda: f(x.to(torch.complex64)))
    got = _raised(lambda: f(half))
    assert type(got) is type(want) is ValueError and str(got) == str(want)


@pytest.mark.parametrize("state", [None, "h", object()])
def test_a_state_that_is_no_array_raises_type_error_naming_it(state):
    # A None in hx was read as a 0-D array and reported as a wrong number of dimensions.
    f, fc = fastlstm.LSTM(4, 5), fastlstm.LSTMCell(4, 5)
    c3, c2 = np.zeros((1, 2, 5), np.float32), np.zeros((2, 5), np.float32)
    x = np.zeros((3, 2, 4), np.float32)
    calls = [lambda: f(x, (state, c3)), lambda: fc(x[0], (state, c2)),
             lambda: fastlstm.Stream(f, batch_size=2).reset((state, c2))]
    for call in calls:
        with pytest.raises(TypeError, match=r"hx\[0\] must be an array of floats"):
            call()


@pytest.mark.parametrize(
    "dtype", ["int32", "float16", np.int64, np.float16, np.complex64, "bogus", int]
)
def test_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match="float32 and float64"):
        fastlstm.LSTM(3, 4, dtype=dtype)


@pytest.mark.parametrize("name", ["float16", "bfloat16", "int32", "complex64"])
def test_unsupported_torch_dtype(torch, name):
    with pytest.raises(TypeError, match="float32 and float64"):
        fastlstm.LSTM(3, 4, dtype=getattr(torch, name))


@pytest.mark.parametrize(
    "hx",
    [
        "not a tuple",
        3.0,
        (np.zeros((1, 2, 4), np.float32),),
        (np.zeros((1, 2, 4), np.float32),) * 3,
    ],
    ids=["str", "float", "1-tuple", "3-tuple"],
)
def test_hx_not_a_pair(hx):
    m = fastlstm.LSTM(3, 4)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(TypeError, match="hx must be a tuple"):
        m(x, hx)


def test_hx_list_of_two_accepted():
    m = fastlstm.LSTM(3, 4, rng=0)
    x = np.ones((5, 2, 3), np.float32)
    h = np.zeros((1, 2, 4), np.float32)
    out_list, _ = m(x, [h, h])
    out_tuple, _ = m(x, (h, h))
    np.testing.assert_array_equal(out_list, out_tuple)


@pytest.mark.parametrize("mode", ["yes", 1, 0, None, np.bool_(True)], ids=repr)
def test_train_not_bool(torch, mode):
    # fastlstm-only in spirit, but torch's Module.train has the same check
    assert_same_error(
        lambda: torch.nn.LSTM(3, 4).train(mode), lambda: fastlstm.LSTM(3, 4).train(mode)
    )
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        fastlstm.LSTM(3, 4).train(mode)


# --------------------------------------------------------------------- forward


def _pair(torch, cfg, dtype=np.float32):
    t = torch.nn.LSTM(**cfg, dtype=torch.float64 if dtype == np.float64 else torch.float32)
    t.eval()
    return t, fastlstm.LSTM.from_torch(t)


def _forward_parity(torch, cfg, x_shape, hx_shapes=None, x_dtype=np.float32, hx_dtype=np.float32):
    """Run the same invalid forward on both (fastlstm with numpy and with tensors)."""
    t, f = _pair(torch, cfg)
    x = np.zeros(x_shape, dtype=x_dtype)
    hx = None if hx_shapes is None else tuple(np.zeros(s, dtype=hx_dtype) for s in hx_shapes)
    xt = torch.from_numpy(x)
    hxt = None if hx is None else tuple(torch.from_numpy(h) for h in hx)

    def run_torch():
        with torch.no_grad():
            t(xt, hxt)

    t_exc, f_exc = assert_same_error(run_torch, lambda: f(x, hx))
    _, f_exc_t = assert_same_error(run_torch, lambda: f(xt, hxt))
    assert str(f_exc_t) == str(f_exc)
    return t_exc, f_exc


BASE = dict(input_size=3, hidden_size=5)
PROJ = dict(input_size=3, hidden_size=5, proj_size=2)
BIDI = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
BIDI_PROJ = dict(input_size=3, hidden_size=5, num_layers=2, bidirectional=True, proj_size=2)
BF = dict(input_size=3, hidden_size=5, batch_first=True)

FORWARD_CASES = [
    # input rank
    (BASE, (3,), None),
    (BASE, (2, 2, 2, 3), None),
    (BASE, (), None),
    (BASE, (3,), ((1, 5), (1, 5))),
    # feature size
    (BASE, (4, 2, 4), None),
    (BASE, (4, 2), None),
    (BF, (2, 4, 7), None),
    (BASE, (4, 2, 4), ((1, 2, 5), (1, 2, 5))),
    # hx rank, batched input
    (BASE, (4, 2, 3), ((1, 5), (1, 5))),
    (BASE, (4, 2, 3), ((1, 2, 5), (1, 5))),
    (BASE, (4, 2, 3), ((1, 5), (1, 2, 5))),
    (BASE, (4, 2, 3), ((1, 1, 2, 5), (1, 2, 5))),
    # hx rank, unbatched input
    (BASE, (4, 3), ((1, 1, 5), (1, 1, 5))),
    (BASE, (4, 3), ((1, 5), (5,))),
    (BASE, (4, 3), ((5,), (1, 5))),
    # hx rank is checked before the feature size (torch's order)
    (BASE, (4, 2, 9), ((1, 5), (1, 5))),
    # wrong h0 shape
    (BASE, (4, 2, 3), ((1, 3, 5), (1, 2, 5))),
    (BASE, (4, 2, 3), ((2, 2, 5), (1, 2, 5))),
    (BASE, (4, 2, 3), ((1, 2, 4), (1, 2, 5))),
    (BASE, (4, 3), ((1, 4), (1, 5))),
    (BASE, (4, 3), ((2, 5), (1, 5))),
    (BF, (2, 4, 3), ((1, 4, 5), (1, 4, 5))),
    # wrong c0 shape
    (BASE, (4, 2, 3), ((1, 2, 5), (1, 2, 6))),
    (BASE, (4, 2, 3), ((1, 2, 5), (1, 3, 5))),
    (BASE, (4, 3), ((1, 5), (1, 4))),
    # both wrong: h0 reported
    (BASE, (4, 2, 3), ((1, 3, 5), (1, 3, 5))),
    # proj_size: h0 has proj_size features, c0 hidden_size
    (PROJ, (4, 2, 3), ((1, 2, 5), (1, 2, 5))),
    (PROJ, (4, 2, 3), ((1, 2, 2), (1, 2, 2))),
    (PROJ, (4, 3), ((1, 5), (1, 5))),
    (PROJ, (4, 3), ((1, 2), (1, 2))),
    # bidirectional (2 layers x 2 directions = 4 states)
    (BIDI, (4, 2, 3), ((2, 2, 5), (4, 2, 5))),
    (BIDI, (4, 2, 3), ((4, 2, 5), (2, 2, 5))),
    (BIDI, (4, 2, 3), ((4, 2, 10), (4, 2, 5))),
    (BIDI, (4, 3), ((2, 5), (4, 5))),
    (BIDI_PROJ, (4, 2, 3), ((4, 2, 5), (4, 2, 5))),
    (BIDI_PROJ, (4, 2, 3), ((4, 2, 2), (4, 2, 2))),
    (BIDI_PROJ, (4, 3), ((4, 2), (4, 2))),
    (dict(BIDI_PROJ, batch_first=True), (2, 4, 3), ((4, 4, 2), (4, 4, 5))),
    # zero-length sequences
    (BASE, (0, 2, 3), None),
    (BASE, (0, 3), None),
    (BF, (2, 0, 3), None),
    (BIDI_PROJ, (0, 2, 3), None),
    (BASE, (0, 2, 3), ((1, 2, 5), (1, 2, 5))),
    (BASE, (0, 3), ((1, 5), (1, 5))),
    # shape checks come before the sequence-length check
    (BASE, (0, 2, 4), None),
    (BASE, (0, 2, 3), ((1, 3, 5), (1, 2, 5))),
]


@pytest.mark.parametrize(
    "cfg,x_shape,hx_shapes",
    FORWARD_CASES,
    ids=[f"{i}-x{c[1]}-hx{c[2]}" for i, c in enumerate(FORWARD_CASES)],
)
def test_forward_error_parity(torch, cfg, x_shape, hx_shapes):
    _forward_parity(torch, cfg, x_shape, hx_shapes)


# A wrong state shape, then an empty sequence, are reported before a state of a
# non-floating dtype, as torch does (its dtype failures come later, in its kernels).
@pytest.mark.parametrize("x_shape,hx_shapes", [
    ((4, 2, 3), ((1, 2, 5), (1, 2, 6))),
    ((4, 3), ((1, 5), (1, 4))),
    ((0, 2, 3), ((1, 2, 5), (1, 2, 5))),
])
@pytest.mark.parametrize("hx_dtype", [np.int64, np.bool_])
def test_state_shapes_before_state_dtypes(torch, x_shape, hx_shapes, hx_dtype):
    _forward_parity(torch, BASE, x_shape, hx_shapes, hx_dtype=hx_dtype)


def test_zero_length_message(torch):
    _, f_exc = _forward_parity(torch, BASE, (0, 2, 3))
    assert isinstance(f_exc, RuntimeError)
    assert str(f_exc) == "Expected sequence length to be larger than 0 in RNN"
    _, f_exc = _forward_parity(torch, BASE, (0, 3))
    assert str(f_exc) == "Expected sequence length to be larger than 0 in RNN"


@pytest.mark.parametrize("ndim", [1, 4])
def test_rank_message(torch, ndim):
    _, f_exc = _forward_parity(torch, BASE, (3,) * ndim)
    assert isinstance(f_exc, ValueError)
    assert str(f_exc) == f"LSTM: Expected input to be 2D or 3D, got {ndim}D instead"


_DTYPE_CASES = [
    ((4, 2, 3), np.int64),
    ((4, 2, 3), np.int32),
    ((4, 2, 3), np.uint8),
    ((4, 2, 3), np.bool_),
    ((4, 3), np.int64),
    ((4, 3), np.bool_),
    ((4, 2, 7), np.int64),  # dtype is checked before the feature size
]


@pytest.mark.parametrize("model_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape,x_dtype", _DTYPE_CASES)
def test_input_dtype_error(torch, model_dtype, x_shape, x_dtype):
    t, f = _pair(torch, BASE, model_dtype)
    x = np.zeros(x_shape, dtype=x_dtype)
    xt = torch.from_numpy(x)
    for f_input in (x, xt):
        t_exc, f_exc = assert_same_error(
            lambda: t(xt), lambda f_input=f_input: f(f_input), same_message=False
        )
        assert isinstance(f_exc, ValueError)
        np_in, np_w = np.dtype(x_dtype).name, np.dtype(model_dtype).name
        prefix = f"RNN input dtype ({np_in}) does not match weight dtype ({np_w})"
        assert str(f_exc).startswith(prefix), str(f_exc)
        # torch's message is the same sentence with torch's dtype names
        t_dtype_in = str(xt.dtype)
        t_dtype_w = "torch." + np_w
        assert str(t_exc).startswith(
            f"RNN input dtype ({t_dtype_in}) does not match weight dtype ({t_dtype_w})"
        )


def test_input_dtype_checked_before_hx_shape(torch):
    t_exc, f_exc = _forward_parity_dtype(torch)
    assert isinstance(f_exc, ValueError) and isinstance(t_exc, ValueError)


def _forward_parity_dtype(torch):
    t, f = _pair(torch, BASE)
    x = np.zeros((4, 2, 3), np.int64)
    h = np.zeros((1, 3, 5), np.float32)  # wrong batch as well
    return assert_same_error(
        lambda: t(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(h))),
        lambda: f(x, (h, h)),
        same_message=False,
    )


def test_integer_hx_rejected():
    # torch fails deep inside the kernel ("get_mkldnn_dtype: unsupported data
    # type"); fastlstm raises a RuntimeError naming the state.
    m = fastlstm.LSTM(3, 5)
    x = np.zeros((4, 2, 3), np.float32)
    h = np.zeros((1, 2, 5), np.int64)
    c = np.zeros((1, 2, 5), np.float32)
    with pytest.raises(RuntimeError, match=re.escape("hidden[0] dtype (int64)")):
        m(x, (h, c))
    with pytest.raises(RuntimeError, match=re.escape("hidden[1] dtype (int64)")):
        m(x, (c, h))


def test_errors_do_not_break_module(torch):
    # after an error, the module still computes torch's result
    t, f = _pair(torch, BIDI_PROJ)
    for bad in ((3,), (4, 2, 9), (0, 2, 3)):
        with pytest.raises((ValueError, RuntimeError)):
            f(np.zeros(bad, np.float32))
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    with torch.no_grad():
        yt, _ = t(torch.from_numpy(x))
    yf, _ = f(x)
    np.testing.assert_allclose(yf, yt.numpy(), rtol=0, atol=TOL[np.float32])


# ------------------------------------------------------------------ NaN / Inf


def _assert_same_nonfinite(a, b, tol):
    a = np.asarray(a)
    b = np.asarray(b)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b))
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cfg",
    [BASE, dict(BIDI_PROJ), dict(BF, num_layers=2)],
    ids=["base", "bidi-proj-2layers", "batch_first-2layers"],
)
def test_nan_inf_propagate_like_torch(torch, cfg, dtype):
    t, f = _pair(torch, cfg, dtype)
    x = np.random.default_rng(1).standard_normal((6, 4, 3)).astype(dtype)
    x[2, 0, 1] = np.nan  # NaN in one element
    x[3, 1, :] = np.inf  # +Inf in every feature of one step
    x[1, 2, 0] = -np.inf  # a single -Inf (saturates the gates)
    x[4, 3, 2] = np.inf
    with torch.no_grad():
        yt, (ht, ct) = t(torch.from_numpy(x))
    yf, (hf, cf) = f(x)
    for a, b in ((yf, yt), (hf, ht), (cf, ct)):
        _assert_same_nonfinite(a, b.numpy(), TOL[dtype])
    # the case is not vacuous: NaN did propagate
    assert np.isnan(yf).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_in_hx_propagates_like_torch(torch, dtype):
    t, f = _pair(torch, dict(input_size=3, hidden_size=5, num_layers=2), dtype)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 3)).astype(dtype)
    h = rng.standard_normal((2, 3, 5)).astype(dtype)
    c = rng.standard_normal((2, 3, 5)).astype(dtype)
    h[0, 1, 2] = np.nan
    c[1, 2, 0] = np.inf
    with torch.no_grad():
        yt, (ht, ct) = t(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    yf, (hf, cf) = f(x, (h, c))
    for a, b in ((yf, yt), (hf, ht), (cf, ct)):
        _assert_same_nonfinite(a, b.numpy(), TOL[dtype])
    # batch element 0 has only finite input and states: it stays finite
    assert np.isfinite(yf[:, 0]).all()
    assert np.isnan(yf[:, 1]).all()


def test_nan_only_in_one_batch_element():
    m = fastlstm.LSTM(3, 5, num_layers=2, rng=0)
    x = np.random.default_rng(3).standard_normal((6, 3, 3)).astype(np.float32)
    x[2, 1, 0] = np.nan
    y, (h, c) = m(x)
    assert np.isfinite(y[:, [0, 2]]).all()
    assert np.isfinite(y[:2, 1]).all()
    assert np.isnan(y[2:, 1]).all()
    assert np.isnan(h[:, 1]).all() and np.isnan(c[:, 1]).all()
    assert np.isfinite(h[:, [0, 2]]).all()


def test_too_many_rows_raise_value_error():
    # L * N beyond 32-bit row indices: a clear error before any allocation.
    m = fastlstm.LSTM(1, 2)
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**16, 2**15 + 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="rows per call are supported"):
        m(x)
