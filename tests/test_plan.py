"""The compiled plan gives the layer-by-layer path's numbers (and so the reference's)."""
import numpy as np
import pytest

from fastbp import data, layers, loss, optim
from fastbp.reference import layers as R
from fastbp.reference import loss as RLoss
from fastbp.reference import optim as ROpt

OPTIMS = {"SGD": dict(lr=0.005), "Momentum": dict(lr=0.002, beta=0.9),
          "RMSProp": dict(lr=0.003), "Adam": dict(lr=0.01)}
STACKS = {
    "softmax_cce": (lambda m: [m.Linear(12), m.Relu(), m.Linear(7), m.Tanh(), m.Linear(3),
                               m.Softmax()], "CategoricalCrossentropy", 3),
    "sigmoid_bce": (lambda m: [m.Linear(9), m.Sigmoid(), m.Linear(1), m.Sigmoid()],
                    "BinaryCrossentropy", 1),
    "mse_stacked": (lambda m: [m.Linear(6), m.Linear(5), m.Relu(), m.Tanh(), m.Linear(3),
                               m.Softmax()], "MSE", 3),
    "cce_unfused": (lambda m: [m.Linear(8), m.Relu(), m.Linear(3), m.Sigmoid()],
                    "CategoricalCrossentropy", 3),
}


def layerwise(optimizer):
    """The same optimizer, hyper-parameters included, as a subclass, which the plan does
    not take: it trains layer by layer."""
    sub = type("Layerwise" + type(optimizer).__name__, (type(optimizer),), {})(
        lr=optimizer.lr)
    for k, v in vars(optimizer).items():
        if isinstance(v, float):
            setattr(sub, k, v)
    return sub


def train_three_ways(make, loss_name, opt_name, opt_kw, x, y, dtype, fits, loss_kw=None):
    """Train the stack ``make(module)`` on the compiled plan, layer by layer and with the
    reference, from the same weights; ``fits``: (epochs, batch_size, seed) per train call.
    Returns {path: (history, prediction, model, whether a plan was made)}."""
    runs = {}
    for path in ("plan", "layerwise", "reference"):
        np.random.seed(11)
        mod = R if path == "reference" else layers
        net = mod.Model(make(mod), dtype=dtype)
        opt = getattr(ROpt if path == "reference" else optim, opt_name)(**opt_kw)
        if path == "layerwise":
            opt = layerwise(opt)
        lossf = getattr(RLoss if path == "reference" else loss, loss_name)(**(loss_kw or {}))
        kw = {} if path == "reference" else {"verbose": False}
        hist = []
        for epochs, batch_size, seed in fits:
            hist += net.train(x, y, opt, lossf, epochs=epochs, batch_size=batch_size,
                              seed=seed, **kw)
        planned = getattr(net, "_plan", None) is not None
        pred = net.predict(x) if path != "reference" else net(x)
        runs[path] = (np.array(hist), pred, net, planned)
    return runs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size", [None, 16, 50])
@pytest.mark.parametrize("opt_name", list(OPTIMS))
@pytest.mark.parametrize("stack", list(STACKS))
def test_plan_equals_layerwise_and_reference(stack, opt_name, batch_size, dtype):
    make, loss_name, n_out = STACKS[stack]
    x, y = data.spirals(n_per_class=40, seed=4)
    y = y[:, :n_out]
    runs = train_three_ways(make, loss_name, opt_name, OPTIMS[opt_name], x, y, dtype,
                            [(4, batch_size, 3), (2, batch_size, 5)])
    assert runs["plan"][3] and not runs["layerwise"][3]
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(runs["plan"][0], runs["layerwise"][0], rtol=rtol)
    np.testing.assert_allclose(runs["plan"][1], runs["layerwise"][1], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(runs["plan"][2].params, runs["layerwise"][2].params, rtol=rtol,
                               atol=rtol)
    ref_tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(runs["plan"][0], runs["reference"][0], rtol=ref_tol)
    np.testing.assert_allclose(runs["plan"][1], runs["reference"][1], rtol=ref_tol,
                               atol=ref_tol)


def test_plan_predict_equals_the_layer_forward():
    x, _ = data.spirals(n_per_class=30, seed=1)
    net = layers.Model(STACKS["softmax_cce"][0](layers))
    np.testing.assert_allclose(net.predict(x), net(x), rtol=1e-12)
    np.testing.assert_allclose(net.predict(x, batch_size=8), net(x), rtol=1e-12)


def test_plan_stops_at_the_diverging_epoch():
    """Both paths stop at the first epoch whose loss is not finite, and say which."""
    x, y = data.spirals(n_per_class=20, seed=1)
    messages = []
    for opt in (optim.SGD(lr=1e8), layerwise(optim.SGD(lr=1e8))):
        np.random.seed(0)
        net = layers.Model([layers.Linear(16), layers.Relu(), layers.Linear(3)])
        with pytest.raises(FloatingPointError, match=r"at epoch (\d+) .*lr=100000000.0") as e:
            net.train(x * 1e3, y, opt, loss.MSE(), epochs=200, verbose=False)
        messages.append(str(e.value).split(" (optimizer")[0])
    assert messages[0] == messages[1]
    assert int(messages[0].rsplit(" ", 1)[1]) < 200


TINY_STACKS = {   # every product at most SMALL_GEMM_FLOPS multiply-adds at batch 4
    "xor_mse": (lambda m: [m.Linear(8), m.Relu(), m.Linear(4), m.Sigmoid(), m.Linear(1),
                           m.Sigmoid()], "MSE", 1),
    "softmax_cce": (lambda m: [m.Linear(5), m.Tanh(), m.Linear(3), m.Softmax()],
                    "CategoricalCrossentropy", 3),
    "sigmoid_bce": (lambda m: [m.Linear(4), m.Tanh(), m.Sigmoid(), m.Linear(2), m.Sigmoid()],
                    "BinaryCrossentropy", 2),
    "softmax_mse": (lambda m: [m.Linear(3), m.Softmax(), m.Linear(2), m.Relu()], "MSE", 2),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt_name", list(OPTIMS))
@pytest.mark.parametrize("stack", list(TINY_STACKS))
def test_tiny_plan_equals_general_plan_and_layerwise_bitwise(stack, opt_name, dtype,
                                                           monkeypatch):
    """XOR-sized nets train in the tiny-net kernel; it computes every value as the
    layer kernels do at these sizes, so all three paths give the same bits."""
    from fastbp import plan as P
    make, loss_name, n_out = TINY_STACKS[stack]
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 2)), rng.random((8, n_out))
    if loss_name == "CategoricalCrossentropy":
        y = np.eye(n_out)[rng.integers(0, n_out, 8)]
    runs = {}
    for path in ("tiny", "general", "layerwise"):
        if path == "general":   # the same model through plan_train / plan_predict
            monkeypatch.setattr(P.Plan, "tiny", property(lambda s: False, lambda s, v: None),
                                raising=False)
        np.random.seed(5)
        net = layers.Model(make(layers), dtype=dtype)
        opt = getattr(optim, opt_name)(**OPTIMS[opt_name])
        if path == "layerwise":
            opt = layerwise(opt)
        lossf = getattr(loss, loss_name)()
        hist = net.train(x, y, opt, lossf, epochs=3, batch_size=3, seed=1, verbose=False)
        hist += net.train(x, y, opt, lossf, epochs=2, verbose=False)   # full batch of 8
        if path == "tiny":
            assert net._plan.tiny
        runs[path] = (hist, net.params.copy(), net.predict(x))
    for path in ("general", "layerwise"):
        assert runs[path][0] == runs["tiny"][0], path
        np.testing.assert_array_equal(runs[path][1], runs["tiny"][1], err_msg=path)
        np.testing.assert_array_equal(runs[path][2], runs["tiny"][2], err_msg=path)
