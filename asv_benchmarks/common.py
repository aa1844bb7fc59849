"""Shared fixtures of the asv suites: sizes, dtypes, seeded inputs, the two implementations.

Every input comes from ``np.random.default_rng(0)``. NumPy's global generator is seeded
only where a benchmark rebuilds the original XOR network, whose Linear layers draw their
weights from it (``np.random.rand``).
"""
import numpy as np

import fastbp
import fastbp.reference

IMPLS = ["fastbp", "reference"]
DTYPES = ["float32", "float64"]
# One Linear layer as (N, I, O) = (batch rows, input features, output features): tiny is
# XOR's first layer, medium the digits net's first layer at batch 32, large the first
# layer of the 784-2048-2048-10 net at batch 512 (above the parallel-kernel threshold).
SIZES = {"tiny": (4, 2, 8), "medium": (32, 64, 128), "large": (512, 784, 2048)}

# Networks as (units, activation) per Linear layer.
XOR_NET = [(8, "Relu"), (4, "Sigmoid"), (1, "Sigmoid")]
DIGITS_NET = [(128, "Relu"), (64, "Relu"), (10, "Softmax")]
LARGE_NET = [(2048, "Relu"), (2048, "Relu"), (10, "Softmax")]
XOR_X = [[0, 1], [0, 0], [1, 1], [1, 0]]
XOR_Y = [[1], [0], [0], [1]]


def api(impl):
    """fastbp or fastbp.reference: a namespace with ``layers``, ``loss`` and ``optim``."""
    return {"fastbp": fastbp, "reference": fastbp.reference}[impl]


def rng():
    return np.random.default_rng(0)


def normal(shape, dtype, gen):
    return gen.standard_normal(shape, dtype=np.dtype(dtype).type)


def uniform(shape, dtype, gen):
    return gen.random(shape, dtype=np.dtype(dtype).type)


def probabilities(shape, dtype, gen):
    """Rows of a softmax: valid predictions for every loss."""
    z = normal(shape, dtype, gen)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_hot(n, classes, dtype, gen):
    y = np.zeros((n, classes), dtype)
    y[np.arange(n), gen.integers(classes, size=n)] = 1
    return y


def linear(impl, units, dtype):
    """A lone He-initialised Linear(units) working in ``dtype``."""
    layers = api(impl).layers
    if impl == "reference":
        return layers.Linear(units, init="he", rng=rng(), dtype=dtype)
    return layers.Linear(units, init="he", rng=rng())  # takes the input's dtype


def mlp(impl, net, dtype, gen=None):
    """Model of Linear + activation pairs; He weights from ``gen``, else the original's
    ``np.random.rand`` weights from NumPy's global generator."""
    layers = api(impl).layers
    stack = []
    for units, activation in net:
        stack.append(layers.Linear(units) if gen is None
                     else layers.Linear(units, init="he", rng=gen))
        stack.append(getattr(layers, activation)())
    return layers.Model(stack, dtype=dtype)


def train_kwargs(impl, **kwargs):
    """``train`` keywords; fastbp's progress bar off (the reference has none)."""
    return dict(kwargs, verbose=False) if impl == "fastbp" else kwargs


def compile_training(impl, net, dtype, loss):
    """One step of a 4-row, 3-wide copy of ``net``: compiles (or loads from Numba's cache)
    every kernel that training ``net`` with ``loss`` calls, for ``dtype``."""
    if impl != "fastbp":
        return
    gen = rng()
    small = [(3, activation) for _, activation in net[:-1]] + net[-1:]
    model = mlp(impl, small, dtype, gen)
    x, y = normal((4, 2), dtype, gen), one_hot(4, net[-1][0], dtype, gen)
    model.train(x, y, optim=fastbp.optim.SGD(), loss=getattr(fastbp.loss, loss)(), epochs=1,
                verbose=False)


# Workloads: each returns (model, x, y, train keywords), compiled and with weights drawn,
# so that ``model.train(x, y, **kwargs)`` times training only.

def xor_run(impl):
    """The original example: 2-8-4-1, np.random.seed(0) weights, MSE, SGD lr 0.6,
    400 full-batch epochs, float64."""
    compile_training(impl, XOR_NET, "float64", "MSE")
    x, y = np.array(XOR_X, np.float64), np.array(XOR_Y, np.float64)
    np.random.seed(0)
    model = mlp(impl, XOR_NET, "float64")
    model(x)  # draws the weights
    ns = api(impl)
    return model, x, y, train_kwargs(impl, optim=ns.optim.SGD(lr=0.6), loss=ns.loss.MSE(),
                                     epochs=400)


def _softmax_mlp_epoch(impl, net, rows, n_in, lr, batch_size):
    """A float32 Softmax + CategoricalCrossentropy MLP, SGD, one epoch over ``rows`` rows
    of ``n_in`` features."""
    compile_training(impl, net, "float32", "CategoricalCrossentropy")
    gen = rng()
    x, y = uniform((rows, n_in), "float32", gen), one_hot(rows, net[-1][0], "float32", gen)
    model = mlp(impl, net, "float32", gen)
    model(x)
    ns = api(impl)
    return model, x, y, train_kwargs(impl, optim=ns.optim.SGD(lr=lr),
                                     loss=ns.loss.CategoricalCrossentropy(), epochs=1,
                                     batch_size=batch_size, seed=0)


def digits_epoch(impl):
    """One epoch of a digits-sized MLP: 1797 rows x 64 features, 64-128-64-10,
    Softmax + CategoricalCrossentropy, SGD, batch 32, float32."""
    return _softmax_mlp_epoch(impl, DIGITS_NET, 1797, 64, 0.01, 32)


def large_step(impl):
    """One SGD step of a 784-2048-2048-10 MLP on a batch of 512 rows, float32."""
    return _softmax_mlp_epoch(impl, LARGE_NET, 512, 784, 0.001, 512)
