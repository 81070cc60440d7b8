"""The NumPy oracle (tests/_reference.py) agrees with torch.nn.LSTM in float64.

If these pass, the oracle can stand in for torch in test_parity.py where torch
is not installed.
"""

import numpy as np
import pytest
from _helpers.reference import lstm_reference, reference_forward

TOL64 = 1e-12

CONFIGS = [
    # (num_layers, bidirectional, proj_size, bias, batch_first, batched, with_hx)
    (1, False, 0, True, False, True, False),
    (1, False, 0, False, True, True, True),
    (2, True, 0, True, False, True, True),
    (3, True, 5, True, True, True, True),
    (2, False, 5, False, False, True, False),
    (2, True, 5, True, False, False, True),
    (1, True, 0, True, True, False, False),
    (3, False, 0, True, True, False, True),
]


def _torch_and_oracle(torch, num_layers, bidirectional, proj_size, bias, batch_first, batched,
                      with_hx, input_size=7, hidden_size=11, seq_len=6, batch=3, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.LSTM(input_size, hidden_size, num_layers=num_layers, bias=bias,
                      batch_first=batch_first, bidirectional=bidirectional,
                      proj_size=proj_size, dtype=torch.float64).eval()
    rng = np.random.default_rng(seed)
    if batched:
        shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
        state = (num_layers * (2 if bidirectional else 1), batch)
    else:
        shape = (seq_len, input_size)
        state = (num_layers * (2 if bidirectional else 1),)
    x = rng.standard_normal(shape)
    out_size = proj_size or hidden_size
    hx = (rng.standard_normal(state + (out_size,)), rng.standard_normal(state + (hidden_size,))) \
        if with_hx else None

    with torch.no_grad():
        if hx is None:
            t_out, (t_h, t_c) = m(torch.from_numpy(x))
        else:
            t_out, (t_h, t_c) = m(torch.from_numpy(x), tuple(torch.from_numpy(a) for a in hx))
    ref = reference_forward(m, x, hx)
    return (t_out.numpy(), t_h.numpy(), t_c.numpy()), ref


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: "L{}-bi{}-p{}-b{}-bf{}-batched{}-hx{}".format(*c))
def test_oracle_matches_torch(torch, config):
    (t_out, t_h, t_c), (r_out, (r_h, r_c)) = _torch_and_oracle(torch, *config)
    for t, r in ((t_out, r_out), (t_h, r_h), (t_c, r_c)):
        assert r.shape == t.shape
        assert r.dtype == np.float64
        np.testing.assert_allclose(r, t, rtol=0, atol=TOL64)


def test_oracle_params_dict_interface(torch):
    """lstm_reference with an explicit params dict (as numpy arrays) equals torch."""
    torch.manual_seed(1)
    m = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3,
                      dtype=torch.float64)
    params = {k: v.numpy() for k, v in m.state_dict().items()}
    x = np.random.default_rng(1).standard_normal((5, 2, 4))
    with torch.no_grad():
        t_out, (t_h, t_c) = m(torch.from_numpy(x))
    r_out, (r_h, r_c) = lstm_reference(params, x, num_layers=2, bidirectional=True,
                                       proj_size=3, batch_first=False, hidden_size=6)
    np.testing.assert_allclose(r_out, t_out.numpy(), rtol=0, atol=TOL64)
    np.testing.assert_allclose(r_h, t_h.numpy(), rtol=0, atol=TOL64)
    np.testing.assert_allclose(r_c, t_c.numpy(), rtol=0, atol=TOL64)


def test_oracle_is_not_trivial(torch):
    """Guard against a degenerate oracle: a perturbed weight changes the answer."""
    torch.manual_seed(2)
    m = torch.nn.LSTM(3, 5, dtype=torch.float64)
    params = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    kw = dict(num_layers=1, bidirectional=False, proj_size=0, batch_first=False, hidden_size=5)
    a, _ = lstm_reference(params, x, **kw)
    params["weight_hh_l0"][0, 0] += 0.5
    b, _ = lstm_reference(params, x, **kw)
    assert np.abs(a - b).max() > 1e-6
