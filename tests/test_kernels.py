"""Every kernel against the NumPy reference, on awkward shapes and both dtypes."""
import numpy as np
import pytest
from numba import njit

from fastbp.kernels.nn import _exp, _sigmoid, _tanh

from fastbp import kernels as K
from fastbp.reference import layers as R
from fastbp.reference import loss as RL
from fastbp.reference import optim as RO
from conftest import SHAPES, assert_close

DTYPES = [np.float64, np.float32]
ACTS = {K.IDENTITY: None, K.RELU: R.Relu, K.SIGMOID: R.Sigmoid, K.TANH: R.Tanh,
        K.SOFTMAX: R.Softmax}


def _ref_act(code, z):
    if ACTS[code] is None:
        return z.copy()
    return ACTS[code]()(z)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("code", list(ACTS))
def test_bias_activation_forward_and_backward(code, shape, dtype, rng):
    z = (3 * rng.standard_normal(shape)).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    out = np.empty_like(z)
    K.bias_activation_forward(out, z, b, code)
    assert_close(out, _ref_act(code, z + b), dtype)

    g = rng.standard_normal(shape).astype(dtype)
    dz = np.empty_like(g)
    K.activation_backward(dz, g, out, code)
    expected = g.copy() if ACTS[code] is None else ACTS[code]()
    if ACTS[code] is not None:
        expected(z + b)
        expected = expected.backward(g)
    assert_close(dz, expected, dtype)

    dz2, db = np.empty_like(g), np.empty(shape[1], dtype)
    K.activation_backward_bias(dz2, db, g, out, code)
    np.testing.assert_array_equal(dz2, dz)  # the fused sweep computes the same dz
    assert_close(db, dz.astype(np.float64).sum(0), dtype, scale=np.abs(dz).sum(0).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,i,o", [(1, 1, 1), (1, 5, 3), (7, 3, 11), (33, 17, 9),
                                   (700, 64, 128), (1, 300, 2)])
@pytest.mark.parametrize("code", [K.IDENTITY, K.RELU, K.SOFTMAX])
def test_linear_forward_backward(n, i, o, code, dtype, rng):
    x = rng.standard_normal((n, i)).astype(dtype)
    w = rng.standard_normal((i, o)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    out = np.empty((n, o), dtype)
    K.linear_forward(out, x, w, b, code)
    assert_close(out, _ref_act(code, x.astype(np.float64) @ w + b), dtype)

    g = rng.standard_normal((n, o)).astype(dtype)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    K.linear_backward(dx, dw, db, g, x, w, True)
    ref = R.Linear(o)
    ref.w, ref.b, ref.initialized = w.astype(np.float64), b.astype(np.float64), True
    ref(x.astype(np.float64))
    assert_close(dx, ref.backward(g.astype(np.float64)), dtype)
    assert_close(dw, ref.w_gradient, dtype)
    assert_close(db, ref.b_gradient, dtype, scale=np.abs(g).sum(0).max())


LOSSES = {K.MSE: RL.MSE, K.CCE: RL.CategoricalCrossentropy, K.BCE: RL.BinaryCrossentropy}


def _probabilities(rng, shape, dtype, softmax):
    z = rng.standard_normal(shape)
    p = R.Softmax()(z) if softmax else R.Sigmoid()(z)
    return z, p.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("code", list(LOSSES))
def test_loss_value_and_gradient(code, shape, dtype, rng):
    _, pred = _probabilities(rng, shape, dtype, softmax=code == K.CCE)
    y = (rng.random(shape) < 0.5).astype(dtype)
    grad = np.empty_like(pred)
    value = K.loss_forward_backward(code, grad, pred, y, RL.clip_eps(dtype))
    ref = LOSSES[code]()
    expected = ref(pred.astype(np.float64), y.astype(np.float64))
    assert_close(value, expected, dtype)
    assert_close(grad, ref.backward(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("code,act", [(K.SOFTMAX_CCE, R.Softmax), (K.SIGMOID_BCE, R.Sigmoid)])
def test_fused_output_pairs(code, act, shape, dtype, rng):
    """The fused gradient equals the chained reference gradient loss -> activation."""
    z = rng.standard_normal(shape)
    y = np.eye(shape[1])[rng.integers(0, shape[1], shape[0])] if act is R.Softmax \
        else (rng.random(shape) < 0.5).astype(np.float64)
    a = act()
    p = a(z)
    ref = (RL.CategoricalCrossentropy if act is R.Softmax else RL.BinaryCrossentropy)()
    expected_loss = ref(p, y)
    expected_grad = a.backward(ref.backward())
    grad = np.empty(shape, dtype)
    value = K.loss_forward_backward(code, grad, p.astype(dtype), y.astype(dtype),
                                    RL.clip_eps(dtype))
    assert_close(value, expected_loss, dtype)
    assert_close(grad, expected_grad, dtype, scale=1.0)


OPTIMS = {K.SGD: (RO.SGD, {"lr": 0.1}), K.MOMENTUM: (RO.Momentum, {"lr": 0.1, "beta": 0.8}),
          K.RMSPROP: (RO.RMSProp, {"lr": 0.01, "alpha": 0.9, "eps": 1e-8}),
          K.ADAM: (RO.Adam, {"lr": 0.01, "beta1": 0.8, "beta2": 0.9, "eps": 1e-8})}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 13, 1000, K.PARALLEL_MIN_ELEMENTS + 17])
@pytest.mark.parametrize("code", list(OPTIMS))
def test_optimizer_updates(code, size, dtype, rng):
    cls, kw = OPTIMS[code]
    ref = cls(**kw)
    p = rng.standard_normal(size).astype(dtype)
    p_ref = p.astype(np.float64)
    s1, s2 = np.zeros_like(p), np.zeros_like(p)
    state = {}
    for t in range(1, 4):
        g = rng.standard_normal(size).astype(dtype)
        b1, b2 = kw.get("beta1", kw.get("beta", kw.get("alpha", 0))), kw.get("beta2", 0)
        hp = np.array([kw["lr"], b1, b2, kw.get("eps", 0), 1 - b1 ** t, 1 - b2 ** t])
        K.optim_update(code, p, g, s1, s2, hp)
        ref.t = t
        ref.update(p_ref, g.astype(np.float64), state)
        assert_close(p, p_ref, dtype)


def test_serial_and_parallel_variants_agree_bitwise(rng):
    """Fixed-size chunks: a reduction adds in the same order on one thread or many."""
    from fastbp.kernels import nn
    z = rng.standard_normal((K.PARALLEL_MIN_ELEMENTS // 50 + 7, 200))
    y = np.eye(200)[rng.integers(0, 200, len(z))]
    p = np.empty_like(z)
    K.bias_activation_forward(p, z, np.empty(0), K.SOFTMAX)
    g_par, g_ser = np.empty_like(p), np.empty_like(p)
    v_par = K.loss_forward_backward(K.SOFTMAX_CCE, g_par, p, y, 1e-12)
    partial = np.empty((len(z) + 63) // 64)
    v_ser = sum(nn._loss_rows(K.SOFTMAX_CCE, g_ser, p, y, 1e-12, c * 64,
                              min(len(z), (c + 1) * 64)) for c in range(len(partial)))
    assert v_par == v_ser
    np.testing.assert_array_equal(g_par, g_ser)
    # The column-parallel variants (used when config.PARALLEL_COLUMN_SUMS is on).
    db_par, db_ser = np.empty(200), np.empty(200)
    nn._colsum_par(db_par, z)
    nn._colsum_cols(db_ser, z, 0, 200)
    np.testing.assert_array_equal(db_par, db_ser)
    dz_par, dz_ser = np.empty_like(z), np.empty_like(z)
    nn._backward_cols_par(dz_par, db_par, z, p, K.TANH)
    nn._backward_cols(dz_ser, db_ser, z, p, K.TANH, 0, 200)
    np.testing.assert_array_equal(dz_par, dz_ser)
    np.testing.assert_array_equal(db_par, db_ser)
    # The parallel update (kept for python -m fastbp.breakeven; training runs the serial).
    hp = np.array([0.01, 0.8, 0.9, 1e-8, 0.2, 0.1])
    p_par, s1_par, s2_par = z.ravel().copy(), np.zeros(z.size), np.full(z.size, 0.5)
    p_ser, s1_ser, s2_ser = p_par.copy(), s1_par.copy(), s2_par.copy()
    g = p.ravel()
    nn.optim_update_par(K.ADAM, p_par, g, s1_par, s2_par, hp)
    nn.optim_update(K.ADAM, p_ser, g, s1_ser, s2_ser, hp)
    assert not np.array_equal(p_par, z.ravel())
    for a, b in ((p_par, p_ser), (s1_par, s1_ser), (s2_par, s2_ser)):
        np.testing.assert_array_equal(a, b)


@njit
def _apply(fn_code, out, z):
    for i in range(z.size):
        out[i] = _exp(z[i]) if fn_code == 0 else (_tanh(z[i]) if fn_code == 1
                                                  else _sigmoid(z[i]))


def test_vectorizable_exp_tanh_sigmoid_match_numpy_to_a_few_ulp(rng):
    z = np.concatenate([rng.standard_normal(20000) * 30, rng.standard_normal(20000) * 1e-3,
                        rng.uniform(-0.2, 0.2, 20000), rng.uniform(-745.2, 709.8, 20000),
                        [0.0, -0.0, 1e-300, -1e-300, 5e-324, 0.17, -0.17, 709.78, 709.79,
                         -745.13, -745.14, 1000.0, -1000.0, np.inf, -np.inf, np.nan]])
    with np.errstate(all="ignore"):
        expected = [np.exp(z), np.tanh(z), np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))),
                                                    np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))]
    for code, want in enumerate(expected):
        got = np.empty_like(z)
        _apply(code, got, z)
        finite = np.isfinite(want) & (want != 0)
        normal = finite & (np.abs(want) >= np.finfo(np.float64).tiny)
        rel = np.abs(got[normal] - want[normal]) / np.abs(want[normal])
        assert rel.max() <= 4 * np.finfo(np.float64).eps, (code, rel.max())
        subnormal = finite & ~normal  # few significant bits: compare in absolute terms
        assert np.abs(got[subnormal] - want[subnormal]).max(initial=0) <= 2 * 5e-324
        special = ~finite
        np.testing.assert_array_equal(got[special], want[special])
        assert np.array_equal(np.signbit(got[special]), np.signbit(want[special]))
