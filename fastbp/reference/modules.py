"""Reference building blocks: Layer, Activation, Linear, Identity, Relu, Sigmoid, Tanh,
Softmax."""
import numpy as np

INITS = ("uniform", "he", "xavier")


def initial_weights(n_in, units, init="uniform", rng=None):
    """Weights (n_in, units) and bias (units,), in float64, drawn in that order.

    "uniform" is the original's ``np.random.rand`` for both (so ``np.random.seed(0)``
    gives the original network); "he" is N(0, 2/n_in), "xavier" is
    U(-a, a) with a = sqrt(6 / (n_in + units)), both with a zero bias. Draws come from
    ``rng`` (a ``np.random.Generator``) when given, else from NumPy's global generator.
    """
    if init not in INITS:
        raise ValueError(f"Linear: init must be one of {INITS}, got {init!r}")
    if init == "uniform":
        if rng is None:
            return np.random.rand(n_in, units), np.random.rand(units)
        return rng.random((n_in, units)), rng.random(units)
    if init == "he":
        normal = np.random.standard_normal if rng is None else rng.standard_normal
        return normal((n_in, units)) * np.sqrt(2.0 / n_in), np.zeros(units)
    a = np.sqrt(6.0 / (n_in + units))
    uniform = np.random.uniform if rng is None else rng.uniform
    return uniform(-a, a, (n_in, units)), np.zeros(units)


class Layer:
    """A layer with parameters ``w``, ``b`` and gradients ``w_gradient``, ``b_gradient``."""


class Activation:
    """A layer without parameters."""


class Linear(Layer):
    """``x @ w + b``; weights made on the first call from the input's last dimension."""

    def __init__(self, units, init="uniform", rng=None, dtype=np.float64):
        self.units, self.init, self.rng, self.dtype = units, init, rng, dtype
        self.initialized = False

    def __call__(self, x):
        self.input = x
        if not self.initialized:
            w, b = initial_weights(x.shape[-1], self.units, self.init, self.rng)
            self.w, self.b = w.astype(self.dtype), b.astype(self.dtype)
            self.initialized = True
        return x @ self.w + self.b

    def backward(self, grad):
        self.w_gradient = self.input.T @ grad
        self.b_gradient = grad.sum(axis=0)
        return grad @ self.w.T


class Identity(Activation):
    def __call__(self, x):
        self.output = x
        return x

    def backward(self, grad):
        return grad


class Relu(Activation):
    def __call__(self, x):
        self.output = np.maximum(0, x)
        return self.output

    def backward(self, grad):
        # Fix: the original multiplied by clip(output, 0, 1), wrong wherever 0 < output < 1.
        return grad * (self.output > 0)


# exp of a large negative number underflows to a tiny number or 0: the right result, as
# in the kernels, so the reference computes it without a warning (or, under
# np.errstate(all="raise"), an error).
QUIET_UNDERFLOW = dict(under="ignore")


class Sigmoid(Activation):
    def __call__(self, x):
        with np.errstate(**QUIET_UNDERFLOW):
            e = np.exp(-np.abs(x))  # never overflows
            self.output = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self.output

    def backward(self, grad):
        with np.errstate(**QUIET_UNDERFLOW):
            return grad * (self.output * (1 - self.output))


class Tanh(Activation):
    def __call__(self, x):
        self.output = np.tanh(x)
        return self.output

    def backward(self, grad):
        return grad * (1 - self.output ** 2)


class Softmax(Activation):
    def __call__(self, x):
        # Fix: each row subtracts its own max (the original used one global max).
        with np.errstate(**QUIET_UNDERFLOW):
            exps = np.exp(x - x.max(axis=1, keepdims=True))
            self.output = exps / exps.sum(axis=1, keepdims=True)
        return self.output

    def backward(self, grad):
        # Fix: the closed form p * (g - sum(g * p)) instead of the N x n x n Jacobian.
        p = self.output
        with np.errstate(**QUIET_UNDERFLOW):
            return p * (grad - (grad * p).sum(axis=1, keepdims=True))
