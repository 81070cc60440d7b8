"""``fastlstm.accelerate``: torch models whose LSTMs run on fastlstm, against the same
models run by torch (the oracle), on a seq2seq model built here and on every form of
``forward`` of ``nn.LSTM`` and ``nn.LSTMCell``."""

import copy
import io
import sys

import numpy as np
import pytest

import fastlstm


class _Seq2Seq:
    """Embedding, 2-layer LSTM encoder, 2-layer LSTM decoder, linear head, greedy loop."""

    def __new__(cls, torch, seed=0):
        class Seq2Seq(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = torch.nn.Embedding(40, 24)
                self.encoder = torch.nn.LSTM(24, 32, num_layers=2, batch_first=True)
                self.decoder = torch.nn.LSTM(24, 32, num_layers=2, batch_first=True)
                self.head = torch.nn.Linear(32, 40)

            def forward(self, src, steps=12):
                _, state = self.encoder(self.embedding(src))
                token = torch.zeros(src.shape[0], 1, dtype=torch.long)
                tokens, logits = [], []
                for _ in range(steps):
                    y, state = self.decoder(self.embedding(token), state)
                    scores = self.head(y[:, -1])
                    token = scores.argmax(-1, keepdim=True)
                    tokens.append(token)
                    logits.append(scores)
                return torch.cat(tokens, 1), torch.stack(logits, 1)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Seq2Seq().eval()


def test_seq2seq_gives_the_same_tokens(torch):
    model = _Seq2Seq(torch)
    fast = fastlstm.accelerate(model)
    assert fast is not model and type(model.encoder) is torch.nn.LSTM  # a copy by default
    assert type(fast.encoder).__name__ == "AcceleratedLSTM"
    assert isinstance(fast.encoder, torch.nn.LSTM) and repr(fast) == repr(model)
    assert list(fast.state_dict()) == list(model.state_dict())
    src = torch.randint(0, 40, (5, 9), generator=torch.Generator().manual_seed(1))
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            want_tokens, want_logits = model(src)
            got_tokens, got_logits = fast(src)
        assert torch.equal(got_tokens, want_tokens)
        np.testing.assert_allclose(got_logits.numpy(), want_logits.numpy(), atol=1e-5)
    # the fastlstm path really ran (not torch's fallback)
    assert fast.encoder.__dict__.get("_fastlstm_cache") is not None


def test_a_loaded_checkpoint_is_used(torch):
    model = _Seq2Seq(torch)
    fast = fastlstm.accelerate(model)
    other = _Seq2Seq(torch, seed=5)
    src = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast(src)
        fast.load_state_dict(other.state_dict())
        np.testing.assert_allclose(fast(src)[1].numpy(), other(src)[1].numpy(), atol=1e-5)
        with torch.no_grad():
            fast.encoder.weight_hh_l0.mul_(0.5)  # an in-place change is seen too
            other.encoder.weight_hh_l0.mul_(0.5)
        np.testing.assert_allclose(fast(src)[1].numpy(), other(src)[1].numpy(), atol=1e-5)


LSTM_CONFIGS = [dict(), dict(batch_first=True), dict(bidirectional=True), dict(proj_size=3),
                dict(num_layers=2, bidirectional=True, proj_size=4, batch_first=True)]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("cfg", LSTM_CONFIGS,
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_every_form_of_lstm_forward(torch, cfg):
    gen = torch.Generator().manual_seed(3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        lstm = torch.nn.LSTM(6, 8, **cfg).eval()
    fast = fastlstm.accelerate(lstm)
    d = lstm.num_layers * (2 if lstm.bidirectional else 1)
    out_size = lstm.proj_size or 8
    x = torch.randn(3, 5, 6, generator=gen)  # (N, L, H_in) with batch_first, else (L, N, H_in)
    one = x[0] if lstm.batch_first else x[:, 0]  # unbatched
    n = 3 if lstm.batch_first else 5
    hx = (torch.randn(d, n, out_size, generator=gen), torch.randn(d, n, 8, generator=gen))
    seqs = [torch.randn(k, 6, generator=gen) for k in (5, 2, 4)]
    packed = torch.nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    hx3 = (hx[0][:, :3], hx[1][:, :3])
    calls = [(x, None), (x, hx), (one, None), (one, (hx[0][:, 0], hx[1][:, 0])),
             (packed, None), (packed, hx3)]
    with torch.no_grad():
        for inp, state in calls:
            want, (wh, wc) = lstm(inp, state)
            got, (gh, gc) = fast(inp, state)
            if isinstance(want, torch.nn.utils.rnn.PackedSequence):
                assert isinstance(got, torch.nn.utils.rnn.PackedSequence)
                assert torch.equal(got.batch_sizes, want.batch_sizes)
                assert torch.equal(got.unsorted_indices, want.unsorted_indices)
                want, got = want.data, got.data
            assert isinstance(got, torch.Tensor) and got.shape == want.shape
            for a, b in ((got, want), (gh, wh), (gc, wc)):
                np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_every_form_of_cell_forward(torch):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        model = torch.nn.Sequential(torch.nn.LSTMCell(6, 8)).eval()
    fast = fastlstm.accelerate(model)
    assert type(fast[0]).__name__ == "AcceleratedLSTMCell" and repr(fast) == repr(model)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 6, generator=gen)
    hx = (torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen))
    with torch.no_grad():
        for inp, state in ((x, None), (x, hx), (x[0], (hx[0][0], hx[1][0])), (x[0], None)):
            for a, b in zip(fast[0](inp, state), model[0](inp, state)):
                assert a.shape == b.shape
                np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_what_fastlstm_does_not_serve_runs_torch(torch):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(8)
        lstm = torch.nn.LSTM(4, 5, num_layers=2, dropout=0.5)
    fast = fastlstm.accelerate(lstm)
    x = torch.randn(3, 2, 4)
    # training with autograd: torch's forward, gradients flow, dropout applies
    out, _ = fast.train()(x)
    assert out.requires_grad
    out.sum().backward()
    assert fast.weight_ih_l0.grad is not None
    fast.eval()
    # an input that requires grad: torch's forward, so the graph is kept
    xg = x.clone().requires_grad_()
    assert fast(xg)[0].requires_grad
    # float16 input: torch's forward, so torch's own error
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float16\) does not "
                                             r"match weight dtype \(torch.float32\)"):
            fast(x.half())
        # eval mode without autograd: fastlstm, no graph
        out = fast(x)[0]
        assert not out.requires_grad
    assert fast.__dict__.get("_fastlstm_cache") is not None


def test_reduced_precision_weights(torch):
    model = _Seq2Seq(torch)
    src = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = model(src)[1]
        for weight_dtype, tol in (("bfloat16", 2e-2), ("int8", 6e-2)):
            fast = fastlstm.accelerate(model, weight_dtype=weight_dtype)
            got = fast(src)[1]
            err = float((got - want).abs().max() / want.abs().max())
            assert 0 < err < tol, (weight_dtype, err)
            assert fast.encoder.__dict__["_fastlstm_cache"][-1].weight_dtype == weight_dtype
    with pytest.raises(ValueError, match="weight_dtype must be None, 'bfloat16' or 'int8'"):
        fastlstm.accelerate(model, weight_dtype="int4")


def test_reduced_precision_float64_models_run_torchs_forward(torch):
    model = torch.nn.LSTM(5, 8).double().eval()
    x = torch.randn(4, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for weight_dtype in ("bfloat16", "int8"):
        fast = fastlstm.accelerate(model, weight_dtype=weight_dtype)
        with torch.no_grad():
            torch.testing.assert_close(fast(x)[0], model(x)[0], rtol=0, atol=0)
        assert fast.__dict__.get("_fastlstm_cache") is None  # torch's forward ran
        fast.float()  # made float32: fastlstm runs it, with the reduced weights
        with torch.no_grad():
            got = fast(x.float())[0]
            want = model(x)[0].float()
        assert fast.__dict__["_fastlstm_cache"][-1].weight_dtype == weight_dtype
        assert 0 < float((got - want).abs().max()) < 5e-2


def test_inplace_pickling_subclasses_and_errors(torch):
    model = _Seq2Seq(torch)
    same = fastlstm.accelerate(model, inplace=True)
    assert same is model and type(model.decoder).__name__ == "AcceleratedLSTM"
    assert fastlstm.accelerate(model, inplace=True) is model  # again: nothing changes
    src = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        want = model(src)[0]
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(model)(src)[0], want)
    # a whole model pickles (torch.save) with its accelerated classes, found by name
    plain = torch.nn.Sequential(torch.nn.LSTM(3, 4), torch.nn.LSTMCell(3, 4)).eval()
    saved = fastlstm.accelerate(plain)
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert [type(m).__name__ for m in back] == ["AcceleratedLSTM", "AcceleratedLSTMCell"]
    x = torch.randn(2, 1, 3)
    with torch.no_grad():
        assert torch.equal(back[0](x)[0], saved[0](x)[0])

    class MyLSTM(torch.nn.LSTM):  # its forward may do anything: left alone
        pass

    mine = fastlstm.accelerate(torch.nn.Sequential(MyLSTM(2, 3)))
    assert type(mine[0]) is MyLSTM
    bare = fastlstm.accelerate(torch.nn.LSTM(2, 3))
    assert type(bare).__name__ == "AcceleratedLSTM"
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        fastlstm.accelerate(fastlstm.LSTM(2, 3))


def test_importing_fastlstm_does_not_import_torch():
    import subprocess

    code = ("import sys, fastlstm, fastlstm.accelerate; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_new_parameters_and_arguments_are_seen(torch):
    gen = torch.Generator().manual_seed(5)
    model = torch.nn.LSTM(4, 6).eval()
    fast = fastlstm.accelerate(model)
    x = torch.randn(3, 2, 4, generator=gen)
    for _ in range(20):  # a new Parameter often lands at a freed one's address
        with torch.no_grad():
            fast(x)
        fast.weight_ih_l0 = torch.nn.Parameter(torch.empty(24, 4))
        fast.weight_ih_l0 = torch.nn.Parameter(torch.randn(24, 4, generator=gen))
        model.load_state_dict(fast.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(fast(x)[0], model(x)[0], rtol=0, atol=1e-5)
    fast.batch_first = model.batch_first = True  # read by torch at every call
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], model(x)[0], rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore")  # torch.jit.trace's deprecation and tracer warnings
def test_what_torchs_forward_serves_instead(torch):
    x = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(6))
    # Dropout in training mode, even without autograd: torch's forward, same random draws.
    model = torch.nn.LSTM(4, 6, num_layers=2, dropout=0.5).train()
    fast = fastlstm.accelerate(model)
    with torch.no_grad():
        torch.manual_seed(1)
        want = model(x)[0]
        torch.manual_seed(1)
        torch.testing.assert_close(fast(x)[0], want, rtol=0, atol=0)
    assert "_fastlstm_cache" not in fast.__dict__
    # Pruned weights (weight_hh_l0 computed from weight_hh_l0_orig and a mask).
    from torch.nn.utils import prune

    pruned = torch.nn.LSTM(4, 6).eval()
    prune.l1_unstructured(pruned, "weight_hh_l0", 0.5)
    with torch.no_grad():
        want = pruned(x)[0]
        fastlstm.accelerate(pruned, inplace=True)
        torch.testing.assert_close(pruned(x)[0], want, rtol=0, atol=0)
    # A trace records torch's operations, not a constant of fastlstm's output.
    model = torch.nn.LSTM(4, 6).eval()
    with torch.no_grad():
        traced = torch.jit.trace(fastlstm.accelerate(model), (x,))
        torch.testing.assert_close(traced(2 * x)[0], model(2 * x)[0], rtol=0, atol=1e-6)
    # An input of another dtype than the weights: torch's error.
    with torch.no_grad(), pytest.raises(ValueError, match="does not match weight dtype"):
        fastlstm.accelerate(model)(x.double())


def test_copies_make_their_own_fastlstm_module(torch):
    import pickle

    fast = fastlstm.accelerate(torch.nn.LSTM(4, 6).eval())
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = fast(x)[0]
        for twin in (pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)):
            assert "_fastlstm_cache" not in twin.__dict__
            torch.testing.assert_close(twin(x)[0], want, rtol=0, atol=0)
            assert "_fastlstm_cache" in twin.__dict__


def test_accelerated_inside_inference_mode(torch):
    # The copy made there holds inference tensors, which have no version counter.
    model = torch.nn.Sequential(torch.nn.LSTM(8, 16)).eval()
    x = torch.randn(5, 3, 8)
    with torch.inference_mode():
        want = model(x)[0]
        fast = fastlstm.accelerate(model)
        got = fast(x)[0]
    assert fast[0].__dict__.get("_fastlstm_cache") is not None  # fastlstm served it
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_torch_fx_export_func_and_subclasses_run_as_with_torch(torch):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 16)

        def forward(self, x):
            return self.rnn(x)[0]

    model = Model().eval()
    fast = fastlstm.accelerate(model)
    x = torch.randn(4, 2, 8)
    with torch.no_grad():
        want = model(x)
    # fx keeps the LSTM a leaf, as torch's, and the traced module runs fastlstm
    traced = torch.fx.symbolic_trace(fast)
    assert [n.target for n in traced.graph.find_nodes(op="call_module")] == ["rnn"]
    with torch.no_grad():
        np.testing.assert_allclose(traced(x).numpy(), want.numpy(), atol=1e-5)
    assert fast.rnn.__dict__.get("_fastlstm_cache") is not None
    # torch.export's fake tensors and torch.func's wrappers run torch's forward
    exported = torch.export.export(fast, (x,))
    np.testing.assert_allclose(exported.module()(x).detach().numpy(), want.numpy(), atol=1e-5)
    params = dict(fast.named_parameters())
    grads = torch.func.grad(
        lambda p: torch.func.functional_call(fast, p, (x,)).sum())(params)
    want_grads = torch.func.grad(
        lambda p: torch.func.functional_call(model, p, (x,)).sum())(dict(
            model.named_parameters()))
    for name in want_grads:
        np.testing.assert_allclose(grads[name].detach().numpy(),
                                   want_grads[name].detach().numpy(), atol=1e-5)

    class Marked(torch.Tensor):
        pass

    with torch.no_grad():
        assert type(fast(x.as_subclass(Marked))) is type(model(x.as_subclass(Marked)))


def test_a_bare_tensor_as_hx_gets_torchs_error_and_no_second_dropout_warning(torch):
    import warnings

    for make, x, hx in ((lambda: torch.nn.LSTM(4, 6), torch.randn(3, 2, 4), torch.zeros(1, 2, 6)),
                        (lambda: torch.nn.LSTMCell(4, 6), torch.randn(2, 4), torch.zeros(2, 6))):
        model = make().eval()
        fast = fastlstm.accelerate(model)
        with torch.no_grad():
            try:
                model(x, hx)
            except Exception as exc:  # noqa: BLE001 - torch's error is the reference
                want = exc
            with pytest.raises(type(want)) as got:
                fast(x, hx)
        assert str(got.value) == str(want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.nn.LSTM(4, 6, dropout=0.3).eval()  # torch warns here, once
    fast = fastlstm.accelerate(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            fast(torch.randn(3, 2, 4))
    assert fast.__dict__.get("_fastlstm_cache") is not None


def test_inference_tensor_weights_run_torchs_forward_and_edits_show(torch):
    # Made in inference mode and accelerated in place: the weights have no version counter,
    # so a load_state_dict in inference mode could not be seen; torch's forward runs.
    x = torch.randn(5, 3, 8)
    with torch.inference_mode():
        model = torch.nn.LSTM(8, 16).eval()
        fast = fastlstm.accelerate(model, inplace=True)
        fast(x)
        other = torch.nn.LSTM(8, 16).eval()
        fast.load_state_dict(other.state_dict())
        np.testing.assert_allclose(fast(x)[0].numpy(), other(x)[0].numpy(), atol=1e-5)
    assert fast.__dict__.get("_fastlstm_cache") is None
    # A copy made in inference mode has ordinary tensors: fastlstm serves it, and sees edits.
    model = torch.nn.LSTM(8, 16).eval()
    with torch.inference_mode():
        fast = fastlstm.accelerate(model)
        fast(x)
        fast.load_state_dict(other.state_dict())
        np.testing.assert_allclose(fast(x)[0].numpy(), other(x)[0].numpy(), atol=1e-5)
    assert fast.__dict__.get("_fastlstm_cache") is not None


def _cache_of(module):
    return module.__dict__.get("_fastlstm_cache")


def test_fused_optimizer_steps_are_seen_after_eval(torch):
    """torch's fused optimizers change the weights without their version: the cache goes
    when the module leaves training mode, so eval sees the new weights (torch the oracle)."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4)
    for cls, args in ((torch.nn.LSTM, (4, 6)), (torch.nn.LSTMCell, (4, 6))):
        model = cls(*args).eval()
        fast = fastlstm.accelerate(model)
        inp = x if cls is torch.nn.LSTM else x[0]
        for m in (model, fast):
            with torch.no_grad():
                m(inp)
            m.train()
            opt = torch.optim.Adam(m.parameters(), lr=0.5, fused=True)
            m(inp)[0].sum().backward()
            opt.step()
            m.eval()
        assert torch.equal(model.weight_hh_l0 if cls is torch.nn.LSTM else model.weight_hh,
                           fast.weight_hh_l0 if cls is torch.nn.LSTM else fast.weight_hh)
        with torch.no_grad():
            assert (fast(inp)[0] - model(inp)[0]).abs().max() < 1e-5
        cached = _cache_of(fast)
        fast.eval()  # eval in eval mode keeps the cache
        assert _cache_of(fast) is cached


def test_new_data_is_seen_even_at_a_freed_address(torch):
    """``p.data = t`` keeps the Parameter and its version: only the data's address tells,
    and the cache keeps the data it was built from alive so that no new data takes it."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 4)
    for _ in range(30):
        model = torch.nn.LSTM(4, 6).eval()
        fast = fastlstm.accelerate(model)
        with torch.no_grad():
            fast(x)
        for _ in range(2):
            fast.weight_hh_l0.data = torch.randn(24, 6)
        model.weight_hh_l0.data = fast.weight_hh_l0.data.clone()
        with torch.no_grad():
            assert (fast(x)[0] - model(x)[0]).abs().max() < 1e-5


def test_swapping_parameters_on_conversion_works(torch):
    """With torch's swap_tensors conversions, the cache must hold no weak references."""
    x = torch.randn(3, 4)
    flag = torch.__future__.get_swap_module_params_on_conversion()
    for make in (lambda: torch.nn.LSTMCell(4, 6), lambda: torch.nn.LSTM(4, 6)):
        fast = fastlstm.accelerate(make().eval())
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            with torch.no_grad():
                fast(x)
            fast.double()
            if isinstance(fast, torch.nn.LSTMCell):  # (torch's nn.LSTM holds weak ones)
                with torch.no_grad():
                    fast(x.double())
                fast.load_state_dict(make().double().state_dict())
        finally:
            torch.__future__.set_swap_module_params_on_conversion(flag)
        oracle = make().double().eval()
        oracle.load_state_dict(fast.state_dict())
        with torch.no_grad():
            got, want = fast(x.double()), oracle(x.double())
        assert (got[0] - want[0]).abs().max() < 1e-10
        assert _cache_of(fast) is not None  # fastlstm ran, in float64


def test_forward_ad_and_autocast_run_torchs_forward(torch):
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(4, 6).eval()
    fast = fastlstm.accelerate(cell)
    x, t = torch.randn(3, 4), torch.randn(3, 4)
    with fwAD.dual_level():
        want = fwAD.unpack_dual(cell(fwAD.make_dual(x, t))[0]).tangent
        got = fwAD.unpack_dual(fast(fwAD.make_dual(x, t))[0]).tangent
    assert got is not None and torch.allclose(got, want, atol=1e-6)
    lstm = torch.nn.LSTM(4, 6).eval()
    fast = fastlstm.accelerate(lstm)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = lstm(x[None])[0], fast(x[None])[0]
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    assert _cache_of(fast) is None


def test_torch_compile_runs_fastlstm_outside_the_graph(torch):
    torch.manual_seed(0)
    model = torch.nn.LSTM(4, 6).eval()
    compiled = torch.compile(fastlstm.accelerate(model))
    x = torch.randn(5, 3, 4)
    with torch.inference_mode():
        got, want = compiled(x)[0], model(x)[0]
    assert (got - want).abs().max() < 1e-5


def test_a_torch_module_where_a_fastlstm_one_is_wanted_is_named_with_its_module(torch):
    # "Stream expects a fastlstm.LSTM or LSTMCell, got LSTM": the names are the same.
    for call, cls in ((lambda m: fastlstm.Stream(m), torch.nn.LSTM),
                      (lambda m: fastlstm.quantize(m, "int8"), torch.nn.LSTMCell),
                      (lambda m: fastlstm.forward_many(m, []), torch.nn.LSTM)):
        module = cls(4, 8)
        name = cls.__name__
        with pytest.raises(TypeError, match=rf"got torch\.nn\.modules\.rnn\.{name}; make one "
                                            rf"with fastlstm\.{name}\.from_torch\(module\)"):
            call(module)
        with pytest.raises(TypeError, match=r"got fastlstm\.accelerate\.Accelerated"):
            call(fastlstm.accelerate(module))
    with pytest.raises(TypeError, match=r"got fastlstm\.lstm\.LSTM \(a fastlstm module runs "
                                        r"on fastlstm already"):
        fastlstm.accelerate(fastlstm.LSTM(2, 3))


def test_weights_changed_after_the_first_call_are_checked_again(torch):
    # The weights' checks run only when the fastlstm module is made again: weights made
    # inference tensors crashed the key (no version counter), and a Parameter made a
    # subclass in place (swap_tensors: same id, data, version) ran on fastlstm.
    class Logged(torch.Tensor):
        pass

    x = torch.randn(5, 1, 4)
    m = fastlstm.accelerate(torch.nn.LSTM(4, 8).eval())
    with torch.no_grad():
        want = m(x)[0]
    with torch.inference_mode():
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        m.load_state_dict(sd, assign=True)
        got = m(x)[0]  # torch's forward: such weights have no version to watch
    torch.testing.assert_close(got, want)

    cell = fastlstm.accelerate(torch.nn.LSTMCell(4, 8).eval())
    with torch.no_grad():
        plain = cell(x[0])[0]
        for p in list(cell.parameters()):
            torch.utils.swap_tensors(p, torch.nn.Parameter(p.detach().as_subclass(Logged)))
        got = cell(x[0])[0]
    assert type(got) is Logged  # torch's forward, which keeps the subclass
    torch.testing.assert_close(got.as_subclass(torch.Tensor), plain)
