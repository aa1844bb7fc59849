"""The core additions the scikit-learn estimators need, each against the reference and
central finite differences: Identity, mean-reduced losses and SquaredError, L2 weight
decay on weights only, Nesterov momentum, AdamLR (Adam's bias correction in the step)."""
import numpy as np
import pytest

from fastbp import data, kernels as K, layers, loss, optim
from fastbp.reference import layers as R
from fastbp.reference import loss as RL
from conftest import assert_close
from test_layers import _numeric_grad
from test_plan import train_three_ways


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_identity_matches_reference_and_finite_differences(dtype, rng):
    x = (3 * rng.standard_normal((7, 5))).astype(dtype)
    g = rng.standard_normal((7, 5)).astype(dtype)
    f, r = layers.Identity(), R.Identity()
    np.testing.assert_array_equal(f(x), r(x))
    np.testing.assert_array_equal(f.backward(g), g)
    x64 = x.astype(np.float64)
    c = g.astype(np.float64)
    layer = layers.Identity()
    layer(x64)
    dx = layer.backward(c)
    fd = _numeric_grad(lambda: float(np.sum(c * layers.Identity()(x64))), x64)
    np.testing.assert_allclose(dx, fd, rtol=1e-6, atol=1e-8)


REDUCED = [(loss.CategoricalCrossentropy, RL.CategoricalCrossentropy),
           (loss.BinaryCrossentropy, RL.BinaryCrossentropy),
           (loss.SquaredError, RL.SquaredError)]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("fast,ref", REDUCED)
def test_reduced_losses_match_reference(fast, ref, reduction, rng):
    pred = R.Softmax()(rng.standard_normal((9, 4)))
    y = np.eye(4)[rng.integers(0, 4, 9)]
    f, r = fast(reduction=reduction), ref(reduction=reduction)
    assert_close(f(pred, y), r(pred, y), np.float64)
    assert_close(f.backward(), r.backward(), np.float64)


def test_mean_is_the_sum_over_rows():
    """Independent numbers: the mean reduction is the sum / rows, by hand."""
    pred = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    y = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    total = -(np.log(0.8) + np.log(0.6) + np.log(0.1))
    assert loss.CategoricalCrossentropy()(pred, y) == pytest.approx(total, rel=1e-14)
    assert loss.CategoricalCrossentropy(reduction="mean")(pred, y) == \
        pytest.approx(total / 3, rel=1e-14)
    se = loss.SquaredError(reduction="mean")
    # per row 0.5 * mean of e**2: rows give 0.5*(0.04+0.04)/2, 0.5*(0.16+0.16)/2, ...
    expected = (0.5 * 0.04 + 0.5 * 0.16 + 0.5 * 0.81) / 3
    assert se(pred, y) == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(se.backward(), (pred - y) / 3, rtol=1e-15)
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss.BinaryCrossentropy(reduction="avg")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("cls", [loss.CategoricalCrossentropy, loss.BinaryCrossentropy,
                                 loss.SquaredError])
def test_reduced_loss_backward_matches_finite_differences(cls, reduction, rng):
    """CE losses: backward is the gradient of the value. SquaredError: of its documented
    objective, half the summed squared error per row (reduced over the rows)."""
    pred = R.Sigmoid()(rng.standard_normal((6, 3)))
    y = (rng.random((6, 3)) < 0.5).astype(float)
    f = cls(reduction=reduction)
    f(pred, y)
    grad = f.backward().copy()
    rows = 6 if reduction == "mean" else 1
    if cls is loss.SquaredError:
        objective = lambda: float(0.5 * np.sum((pred - y) ** 2) / rows)  # noqa: E731
    else:
        objective = lambda: cls(reduction=reduction)(pred, y)  # noqa: E731
    np.testing.assert_allclose(grad, _numeric_grad(objective, pred), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_weight_decay_gradient_matches_finite_differences(reduction, rng):
    """After optim(model, loss) the weight gradients are those of loss + penalty (/ rows
    for the mean), and the bias gradients carry no penalty."""
    x = rng.standard_normal((7, 4))
    y = np.eye(3)[rng.integers(0, 3, 7)]
    np.random.seed(2)
    net = layers.Model([layers.Linear(5), layers.Tanh(), layers.Linear(3), layers.Softmax()])
    lossf = loss.CategoricalCrossentropy(reduction=reduction)
    opt = optim.SGD(lr=1e-300, weight_decay=0.7)   # a step that changes nothing measurable
    lossf(net(x), y)
    opt(net, lossf)
    rows = 7 if reduction == "mean" else 1

    def objective():
        return lossf(net(x), y) + opt.penalty(net) / rows

    for layer in net.linear_layers:
        np.testing.assert_allclose(layer.w_gradient, _numeric_grad(objective, layer.w),
                                   rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(layer.b_gradient, _numeric_grad(objective, layer.b),
                                   rtol=1e-6, atol=1e-8)
    w = [layer.w for layer in net.linear_layers]
    assert opt.penalty(net) == pytest.approx(0.35 * sum(np.sum(a ** 2) for a in w), rel=1e-14)


def test_one_hand_worked_step_of_nesterov_and_adam_lr():
    """The kernels' update on two numbers, worked out by hand."""
    g = np.array([0.5, -2.0])
    # Nesterov, lr 0.1, beta 0.9, v0 = (1, 0): v = 0.9 v0 + 0.1 g = (0.95, -0.2);
    # p -= 0.9 v + 0.1 g = (0.905, -0.38)
    p, v = np.array([1.0, 1.0]), np.array([1.0, 0.0])
    K.optim_update(K.NESTEROV, p, g, v, v, np.array([0.1, 0.9, 0, 0, 1, 1.0]))
    np.testing.assert_allclose(v, [0.95, -0.2], rtol=1e-14)
    np.testing.assert_allclose(p, [1 - 0.905, 1 + 0.38], rtol=1e-14)
    # AdamLR at t = 1: m = 0.1 g, v = 0.001 g^2, lr_t = 0.01 sqrt(0.001) / 0.1;
    # p -= lr_t m / (sqrt(v) + eps) = 0.01 sqrt(0.001) sign(g) |g| / (sqrt(0.001) |g| + eps)
    p, m, s = np.zeros(2), np.zeros(2), np.zeros(2)
    eps = 1e-8
    K.optim_update(K.ADAM_LR, p, g, m, s, np.array([0.01, 0.9, 0.999, eps, 0.1, 0.001]))
    expected = -0.01 * np.sqrt(0.001) * g / (np.sqrt(0.001) * np.abs(g) + eps)
    np.testing.assert_allclose(p, expected, rtol=1e-14)


OPTIMS = {"Nesterov": dict(lr=0.01, beta=0.9, weight_decay=0.3),
          "AdamLR": dict(lr=0.01, weight_decay=0.05),
          "SGD": dict(lr=0.05, weight_decay=0.2),
          "Adam": dict(lr=0.01, weight_decay=0.1)}
STACKS = {
    "softmax_cce": (lambda m: [m.Linear(8), m.Relu(), m.Linear(3), m.Softmax()],
                    "CategoricalCrossentropy", 3),
    "sigmoid_bce": (lambda m: [m.Linear(6), m.Tanh(), m.Linear(2), m.Sigmoid()],
                    "BinaryCrossentropy", 2),
    "identity_se": (lambda m: [m.Linear(7), m.Sigmoid(), m.Linear(2), m.Identity()],
                    "SquaredError", 2),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("opt_name", list(OPTIMS))
@pytest.mark.parametrize("stack", list(STACKS))
def test_plan_layerwise_and_reference_agree(stack, opt_name, reduction, dtype):
    make, loss_name, n_out = STACKS[stack]
    x, y = data.spirals(n_per_class=30, seed=4)   # 90 rows: batches of 40, 40, 10
    y = y[:, :n_out]
    if loss_name == "SquaredError":
        y = y + 0.3 * x[:, :1]
    runs = train_three_ways(make, loss_name, opt_name, OPTIMS[opt_name], x, y, dtype,
                            [(3, 40, 3), (2, 40, 5)], loss_kw={"reduction": reduction})
    assert runs["plan"][3] and not runs["layerwise"][3]
    tol = 1e-10 if dtype == np.float64 else 2e-3
    for other in ("layerwise", "reference"):
        np.testing.assert_allclose(runs["plan"][0], runs[other][0], rtol=tol)
        np.testing.assert_allclose(runs["plan"][1], runs[other][1], rtol=tol, atol=tol)


def test_weight_decay_changes_the_run():
    """The penalty is not silently ignored: the same run without it differs."""
    x, y = data.spirals(n_per_class=20, seed=1)
    out = []
    for wd in (0.0, 0.5):
        np.random.seed(3)
        net = layers.Model([layers.Linear(6), layers.Relu(), layers.Linear(3),
                            layers.Softmax()])
        out.append(net.train(x, y, optim.Nesterov(lr=0.01, weight_decay=wd),
                             loss.CategoricalCrossentropy(reduction="mean"), epochs=3,
                             batch_size=16, verbose=False))
    assert out[1][0] > out[0][0] and out[1][-1] != out[0][-1]


@pytest.mark.parametrize("cls,ref", [(loss.CategoricalCrossentropy, RL.CategoricalCrossentropy),
                                     (loss.BinaryCrossentropy, RL.BinaryCrossentropy)])
def test_eps_sets_the_clip_inside_the_logarithms(cls, ref):
    """Default clip 1e-12 in float64; eps=1e-15 lets p = 1e-14 count as itself."""
    pred = np.array([[1e-14, 1 - 1e-14]])
    y = np.array([[1.0, 0.0]])
    per_term = {None: -np.log(1e-12), 1e-15: -np.log(1e-14)}
    for eps, expected in per_term.items():
        terms = 1 if cls is loss.CategoricalCrossentropy else 2   # BCE: both entries clip
        assert cls(eps=eps)(pred, y) == pytest.approx(terms * expected, rel=1e-3)
        assert_close(cls(eps=eps)(pred, y), ref(eps=eps)(pred, y), np.float64)
    with pytest.raises(ValueError, match="eps must be in"):
        cls(eps=0.0)


def test_save_and_load_keep_identity_weight_decay_and_the_new_optimizers(tmp_path):
    """A run resumed from a file continues exactly as the uninterrupted run."""
    import fastbp
    x, y = data.spirals(n_per_class=15, seed=2)
    for make_opt in (lambda: optim.AdamLR(lr=0.01, weight_decay=0.2),
                     lambda: optim.Nesterov(lr=0.01, beta=0.8, weight_decay=0.1)):
        np.random.seed(5)
        net = layers.Model([layers.Linear(5), layers.Tanh(), layers.Linear(3),
                            layers.Identity()])
        opt, lossf = make_opt(), loss.SquaredError(reduction="mean")
        net.train(x, y, opt, lossf, epochs=2, batch_size=16, seed=1, verbose=False)
        fastbp.save(net, tmp_path / "m.npz", opt)
        again, opt2 = fastbp.load(tmp_path / "m.npz"), fastbp.load_optimizer(tmp_path / "m.npz")
        assert type(opt2) is type(opt) and opt2.weight_decay == opt.weight_decay
        assert type(again.layers[-1]) is layers.Identity
        a = net.train(x, y, opt, lossf, epochs=2, batch_size=16, seed=3, verbose=False)
        b = again.train(x, y, opt2, lossf, epochs=2, batch_size=16, seed=3, verbose=False)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(net.params, again.params)
