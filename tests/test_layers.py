"""Every public class against its reference twin, and finite-difference gradient checks."""
import numpy as np
import pytest

from fastbp import layers, loss
from fastbp.reference import layers as R
from fastbp.reference import loss as RL
from conftest import assert_close

ACTIVATIONS = [(layers.Relu, R.Relu), (layers.Sigmoid, R.Sigmoid), (layers.Tanh, R.Tanh),
               (layers.Softmax, R.Softmax)]
LOSSES = [(loss.MSE, RL.MSE), (loss.CategoricalCrossentropy, RL.CategoricalCrossentropy),
          (loss.BinaryCrossentropy, RL.BinaryCrossentropy)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fast,ref", ACTIVATIONS)
def test_activation_classes_match_reference(fast, ref, dtype, rng):
    x = (2 * rng.standard_normal((9, 6))).astype(dtype)
    g = rng.standard_normal((9, 6)).astype(dtype)
    f, r = fast(), ref()
    out = f(x)
    assert out.dtype == dtype
    assert_close(out, r(x.astype(np.float64)), dtype)
    assert_close(f.backward(g), r.backward(g.astype(np.float64)), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_matches_reference_and_draws_the_original_weights(dtype, rng):
    x = rng.standard_normal((5, 3)).astype(dtype)
    np.random.seed(7)
    f = layers.Model([layers.Linear(4)], dtype=dtype).layers[0]
    out = f(x)
    np.random.seed(7)
    w0, b0 = np.random.rand(3, 4), np.random.rand(4)  # the original's init, in this order
    np.testing.assert_array_equal(f.w, w0.astype(dtype))
    np.testing.assert_array_equal(f.b, b0.astype(dtype))
    r = R.Linear(4)
    r.w, r.b, r.initialized = f.w.astype(np.float64), f.b.astype(np.float64), True
    assert_close(out, r(x.astype(np.float64)), dtype)
    g = rng.standard_normal((5, 4)).astype(dtype)
    assert_close(f.backward(g), r.backward(g.astype(np.float64)), dtype)
    assert_close(f.w_gradient, r.w_gradient, dtype)
    assert_close(f.b_gradient, r.b_gradient, dtype)


@pytest.mark.parametrize("fast,ref", LOSSES)
def test_loss_classes_match_reference(fast, ref, rng):
    pred = R.Softmax()(rng.standard_normal((7, 4)))
    y = np.eye(4)[rng.integers(0, 4, 7)]
    f, r = fast(), ref()
    assert_close(f(pred, y), r(pred, y), np.float64)
    assert_close(f.backward(), r.backward(), np.float64)


def _numeric_grad(fn, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = fn()
        x[idx] = old - h
        down = fn()
        x[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("cls", [layers.Relu, layers.Sigmoid, layers.Tanh, layers.Softmax,
                                 lambda: layers.Linear(3)])
def test_backward_matches_finite_differences(cls, rng):
    """For L = sum(c * layer(x)), backward(c) must be dL/dx (and dL/dw, dL/db)."""
    layer = cls()
    x = rng.standard_normal((4, 5))
    if isinstance(layer, layers.Relu):
        x[np.abs(x) < 0.05] = 0.3  # keep away from the kink
    out = layer(x)
    c = rng.standard_normal(out.shape)
    dx = layer.backward(c)
    objective = lambda: float(np.sum(c * layer(x)))  # noqa: E731
    np.testing.assert_allclose(dx, _numeric_grad(objective, x), rtol=1e-6, atol=1e-8)
    if isinstance(layer, layers.Linear):
        layer(x)
        layer.backward(c)
        dw, db = layer.w_gradient.copy(), layer.b_gradient.copy()
        np.testing.assert_allclose(dw, _numeric_grad(objective, layer.w), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(db, _numeric_grad(objective, layer.b), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls", [loss.MSE, loss.CategoricalCrossentropy,
                                 loss.BinaryCrossentropy])
def test_loss_backward_matches_finite_differences(cls, rng):
    """CE losses: backward is the gradient of the loss they return. MSE: of its documented
    objective, the per-sample mean of squared errors summed over the batch."""
    pred = R.Sigmoid()(rng.standard_normal((6, 3)))
    y = (rng.random((6, 3)) < 0.5).astype(float)
    f = cls()
    f(pred, y)
    grad = f.backward().copy()
    if cls is loss.MSE:
        objective = lambda: float(np.sum(np.mean((pred - y) ** 2, axis=1)))  # noqa: E731
    else:
        objective = lambda: cls()(pred, y)  # noqa: E731
    np.testing.assert_allclose(grad, _numeric_grad(objective, pred), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("act,cls", [(layers.Softmax, loss.CategoricalCrossentropy),
                                     (layers.Sigmoid, loss.BinaryCrossentropy)])
def test_fused_output_pair_gradient_matches_finite_differences(act, cls, reduction, rng):
    """Model.backward's fused pair gradient (p - y, divided by the rows for the mean) is
    d loss(act(z)) / dz."""
    z = rng.standard_normal((5, 4))
    y = np.eye(4)[rng.integers(0, 4, 5)] if act is layers.Softmax \
        else (rng.random((5, 4)) < 0.5).astype(float)
    model = layers.Model([act()])
    f = cls(reduction=reduction)
    f(model(z), y)
    grad = model.backward(f)
    objective = lambda: cls(reduction=reduction)(act()(z), y)  # noqa: E731
    np.testing.assert_allclose(grad, _numeric_grad(objective, z), rtol=1e-6, atol=1e-8)


def test_assigning_w_copies_into_the_flat_buffer(rng):
    net = layers.Model([layers.Linear(3), layers.Relu(), layers.Linear(2)])
    net(rng.standard_normal((4, 5)))
    first = net.layers[0]
    assert np.shares_memory(first.w, net.params) and np.shares_memory(first.w_gradient,
                                                                      net.grads)
    new = rng.standard_normal((5, 3))
    first.w = new
    np.testing.assert_array_equal(net.params[:15], new.ravel())
    with pytest.raises(ValueError, match=r"Linear: w must have shape \(5, 3\)"):
        first.w = np.zeros((3, 5))
    with pytest.raises(TypeError, match=r"Linear: b must be real numbers, got dtype complex"):
        first.b = np.zeros(3) + 1j   # was a ComplexWarning and the imaginary part dropped
    np.testing.assert_array_equal(net.params[:15], new.ravel())


@pytest.mark.parametrize("touch", [lambda lin: lin.w,
                                   lambda lin: setattr(lin, "w", np.zeros((5, 3)))],
                         ids=["read", "assign"])
def test_w_before_the_first_call_names_the_layer_and_the_fix(touch):
    # Was "'Linear' object has no attribute '_w'".
    with pytest.raises(AttributeError, match=r"Linear\(3\): w does not exist before the "
                                             r"first call .* call the layer or its model"):
        touch(layers.Linear(3))


def test_model_backward_does_not_compute_the_first_linears_input_gradient():
    """Nobody needs dL/dx of the first Linear: the optimizers' Model.backward call skips
    that GEMM (and returns None), while the gradients stay the reference's."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    net = layers.Model([layers.Linear(4), layers.Tanh(), layers.Linear(2)])
    ref = R.Model([R.Linear(4), R.Tanh(), R.Linear(2)])
    lf, rf = loss.MSE(), RL.MSE()
    np.random.seed(0)      # the weights are drawn at the first call
    lf(net(x), y)
    np.random.seed(0)
    rf(ref(x), y)
    assert net.backward(lf, input_gradient=False) is None
    g = rf.backward()
    for layer in reversed(ref.layers):
        g = layer.backward(g)
    for fast, slow in zip(net.linear_layers, [l for l in ref.layers if hasattr(l, "w")]):
        np.testing.assert_allclose(fast.w_gradient, slow.w_gradient, rtol=1e-12)
        np.testing.assert_allclose(fast.b_gradient, slow.b_gradient, rtol=1e-12)
    np.testing.assert_allclose(net.backward(lf), g, rtol=1e-12)   # by default: dL/dx
    dx = net.layers[0].backward(np.ones((5, 4)))   # alone, a Linear still returns dL/dx
    np.testing.assert_allclose(dx, np.ones((5, 4)) @ net.layers[0].w.T, rtol=1e-12)
