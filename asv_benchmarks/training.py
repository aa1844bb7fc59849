"""Whole training calls, fastbp against the NumPy reference (``impl``).

The workloads are built in ``common`` (weights drawn and kernels compiled in setup); each
sample trains a freshly set-up model, so every sample does the same work.
"""
from .common import IMPLS, digits_epoch, large_step, xor_run


class Xor:
    """The original example: 2-8-4-1, SGD lr 0.6, MSE, 400 full-batch epochs, float64."""
    params = [IMPLS]
    param_names = ["impl"]
    timeout = 240  # setup compiles the kernels in a fresh environment

    def setup(self, impl):
        self.model, self.x, self.y, self.kwargs = xor_run(impl)

    def time_train(self, impl):
        self.model.train(self.x, self.y, **self.kwargs)


class DigitsEpoch:
    """One epoch of 64-128-64-10 on 1797 rows, batch 32, Softmax + cross-entropy, float32."""
    params = [IMPLS]
    param_names = ["impl"]
    timeout = 240

    def setup(self, impl):
        self.model, self.x, self.y, self.kwargs = digits_epoch(impl)

    def time_epoch(self, impl):
        self.model.train(self.x, self.y, **self.kwargs)


class LargeStep:
    """One SGD step of 784-2048-2048-10 on 512 rows, float32."""
    params = [IMPLS]
    param_names = ["impl"]
    timeout = 240

    def setup(self, impl):
        self.model, self.x, self.y, self.kwargs = large_step(impl)

    def time_step(self, impl):
        self.model.train(self.x, self.y, **self.kwargs)
