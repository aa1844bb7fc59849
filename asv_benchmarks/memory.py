"""Peak resident memory of the benchmark process (``peakmem_``), imports and setup included.

Every process loads the same fastbp kernels in setup, whichever ``impl`` it measures (Numba
and the compiled code take ~150 MB), so differences between ``impl`` values at the same
parameters are the memory of the operation itself.
"""
from functools import partial

import numpy as np

import fastbp

from .common import IMPLS, LARGE_NET, api, compile_training, large_step, normal, rng


def jacobian_softmax_backward(p, grad):
    """The original's softmax backward: build the (N, n, n) Jacobian diag(p) - p p^T of
    every row, then multiply it by each row's gradient."""
    outer = np.einsum("ij,ik->ijk", p, p)
    diagonal = np.einsum("ij,jk->ijk", p, np.eye(p.shape[1]))
    return np.einsum("ijk,ik->ij", diagonal - outer, grad)


class LargeStep:
    """One SGD step of 784-2048-2048-10 on 512 rows, float32."""
    params = [IMPLS]
    param_names = ["impl"]
    timeout = 240

    def setup(self, impl):
        compile_training("fastbp", LARGE_NET, "float32", "CategoricalCrossentropy")
        self.model, self.x, self.y, self.kwargs = large_step(impl)

    def peakmem_step(self, impl):
        self.model.train(self.x, self.y, **self.kwargs)


class SoftmaxBackward:
    """Softmax backward in float64 at (N, n) = (rows, classes): fastbp's kernel, the
    reference's closed form, and the original's Jacobian."""
    params = [["N512_n1000", "N64_n200"], IMPLS + ["original-jacobian"]]
    param_names = ["shape", "impl"]

    def setup(self, shape, impl):
        if shape == "N512_n1000" and impl == "original-jacobian":
            # The Jacobian approach holds three (512, 1000, 1000) float64 tensors here:
            # 3 x 4.1 GB = 12.3 GB (11.4 GiB). It is measured at N64_n200 only (61 MB).
            raise NotImplementedError("needs 12 GB")
        n, classes = {"N512_n1000": (512, 1000), "N64_n200": (64, 200)}[shape]
        gen = rng()
        z, self.grad = normal((n, classes), "float64", gen), normal((n, classes), "float64", gen)
        baseline = fastbp.layers.Softmax()
        baseline(z[:2]), baseline.backward(self.grad[:2])
        if impl == "original-jacobian":
            p = api("reference").layers.Softmax()(z)
            self.backward = partial(jacobian_softmax_backward, p)
        else:
            layer = api(impl).layers.Softmax()
            layer(z)
            self.backward = layer.backward
        self.backward(self.grad)

    def peakmem_backward(self, shape, impl):
        self.backward(self.grad)
