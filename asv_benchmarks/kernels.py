"""One operation at a time, fastbp against the NumPy reference (``impl``).

Both sides run their public classes (each fastbp call is one fused kernel), except the
optimizer update: fastbp's is the fused kernel over one flat parameter buffer, the
reference's its ``update`` of one array (the public optimizers also run the backward
pass). Sizes are in ``common.SIZES``. Each setup runs the operation once, so Numba's
compilation (or the load from its cache) is never timed.
"""
from functools import partial

import numpy as np

from fastbp import kernels as K

from .common import DTYPES, IMPLS, SIZES, api, linear, normal, one_hot, probabilities, rng

ACTIVATIONS = ["Relu", "Sigmoid", "Tanh", "Softmax"]
LOSSES = ["MSE", "CategoricalCrossentropy", "BinaryCrossentropy"]
OPTIMIZERS = ["SGD", "Momentum", "RMSProp", "Adam"]


class Linear:
    """x @ w + b (N, I) -> (N, O), and its backward (dx, dw, db)."""
    params = [list(SIZES), DTYPES, IMPLS]
    param_names = ["size", "dtype", "impl"]

    def setup(self, size, dtype, impl):
        n, n_in, n_out = SIZES[size]
        gen = rng()
        self.x, self.grad = normal((n, n_in), dtype, gen), normal((n, n_out), dtype, gen)
        self.layer = linear(impl, n_out, dtype)
        self.layer(self.x)
        self.layer.backward(self.grad)

    def time_forward(self, size, dtype, impl):
        self.layer(self.x)

    def time_backward(self, size, dtype, impl):
        self.layer.backward(self.grad)


class Activation:
    """act(z) on (N, O), and its backward (the derivative applied to the incoming
    gradient; for Softmax the Jacobian-vector product)."""
    params = [list(SIZES), DTYPES, ACTIVATIONS, IMPLS]
    param_names = ["size", "dtype", "activation", "impl"]

    def setup(self, size, dtype, activation, impl):
        n, _, n_out = SIZES[size]
        gen = rng()
        self.z, self.grad = normal((n, n_out), dtype, gen), normal((n, n_out), dtype, gen)
        self.layer = getattr(api(impl).layers, activation)()
        self.layer(self.z)
        self.layer.backward(self.grad)

    def time_forward(self, size, dtype, activation, impl):
        self.layer(self.z)

    def time_backward(self, size, dtype, activation, impl):
        self.layer.backward(self.grad)


class Loss:
    """Loss value and dL/dpred on (N, O) softmax-row predictions and one-hot targets."""
    params = [list(SIZES), DTYPES, LOSSES, IMPLS]
    param_names = ["size", "dtype", "loss", "impl"]

    def setup(self, size, dtype, loss, impl):
        n, _, n_out = SIZES[size]
        gen = rng()
        self.pred, self.y = probabilities((n, n_out), dtype, gen), one_hot(n, n_out, dtype, gen)
        self.loss = getattr(api(impl).loss, loss)()
        self.time_value_and_gradient(size, dtype, loss, impl)

    def time_value_and_gradient(self, size, dtype, loss, impl):
        self.loss(self.pred, self.y), self.loss.backward()


class Optimizer:
    """One first-step update of a Linear layer's I * O + O parameters."""
    params = [list(SIZES), DTYPES, OPTIMIZERS, IMPLS]
    param_names = ["size", "dtype", "optimizer", "impl"]

    def setup(self, size, dtype, optimizer, impl):
        _, n_in, n_out = SIZES[size]
        gen = rng()
        p, g = normal(n_in * n_out + n_out, dtype, gen), normal(n_in * n_out + n_out, dtype, gen)
        opt = getattr(api(impl).optim, optimizer)()
        if impl == "fastbp":
            opt.t = 1
            self.update = partial(K.optim_update, opt.code, p, g, np.zeros_like(p),
                                  np.zeros_like(p), opt.hyper())
        else:
            opt.begin_step()
            self.update = partial(opt.update, p, g, {})
        self.update()

    def time_update(self, size, dtype, optimizer, impl):
        self.update()
