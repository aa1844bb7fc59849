"""fastbp.kernels: fused Numba kernels (installed from the top-level ``kernels/`` folder).

Importing this package compiles nothing; each kernel compiles on its first call (or is
loaded from Numba's on-disk cache) for the dtypes it is called with.

The row-wise kernels come in a serial and a parallel variant with the same bits
(``kernels/nn.py``); the functions below pick one by size, here in Python, so that small
arrays never compile a ``parallel=True`` kernel nor start Numba's thread pool.
"""
from . import nn
from .config import PARALLEL_MIN_ELEMENTS, SMALL_GEMM_FLOPS, THREADING_LAYER, serialized
from .nn import (ADAM, ADAM_LR, BCE, CCE, HALF_SE, IDENTITY, MOMENTUM, MSE, NESTEROV,
                 RELU, RMSPROP, SGD, SIGMOID,
                 SIGMOID_BCE, SOFTMAX, SOFTMAX_CCE, TANH, activation_backward_bias,
                 column_sum, linear_backward, matmul, matmul_nt, matmul_tn, plan_train,
                 tiny_train)

PARALLEL_KERNELS = ("bias_activation_forward_par", "activation_backward_par",
                    "loss_forward_backward_par", "optim_update_par")


def _start_threads():
    """Start Numba's thread pool before a parallel kernel first runs, then step aside.

    A parallel kernel loaded from the cache can fail to link ("LLVM ERROR: Symbol not
    found: allocate_sched", Numba issue 8578) when the pool has not been started in this
    process; starting it costs a few milliseconds, once, and only runs that use a
    parallel kernel pay it.
    """
    try:
        from numba.np.ufunc.parallel import _launch_threads
        _launch_threads()
    except ImportError:  # Numba moved it: its own lazy start then applies
        pass
    _PAR.update({name: serialized(getattr(nn, name)) for name in PARALLEL_KERNELS})


def _first_parallel_call(name):
    def first(*args):
        _start_threads()
        return _PAR[name](*args)
    return first


# Under a threading layer that is not thread-safe (workqueue), one Python thread at a time
# runs the parallel kernels (config.serialized); serial kernels never need the lock.
_PAR = {name: _first_parallel_call(name) for name in PARALLEL_KERNELS}


def bias_activation_forward(out, z, b, act):
    """out = act(z + b) row-wise (see nn.bias_activation_forward); parallel when large."""
    if out.size >= PARALLEL_MIN_ELEMENTS:
        _PAR["bias_activation_forward_par"](out, z, b, act)
    else:
        nn.bias_activation_forward(out, z, b, act)


def linear_forward(out, x, w, b, act):
    """out = act(x @ w + b) (see nn.linear_forward); the sweep after the GEMM is parallel
    when large."""
    if out.size >= PARALLEL_MIN_ELEMENTS:
        nn.matmul(out, x, w)
        _PAR["bias_activation_forward_par"](out, out, b, act)
    else:
        nn.linear_forward(out, x, w, b, act)


def activation_backward(dz, dout, out, act):
    """dz = dL/dz from dL/d(act(z)) (see nn.activation_backward); parallel when large."""
    if out.size >= PARALLEL_MIN_ELEMENTS:
        _PAR["activation_backward_par"](dz, dout, out, act)
    else:
        nn.activation_backward(dz, dout, out, act)


def loss_forward_backward(code, dpred, pred, y, eps):
    """Loss value and gradient (see nn.loss_forward_backward); parallel when large."""
    if pred.size >= PARALLEL_MIN_ELEMENTS:
        return _PAR["loss_forward_backward_par"](code, dpred, pred, y, eps)
    return nn.loss_forward_backward(code, dpred, pred, y, eps)


def optim_update(code, p, g, s1, s2, hp):
    """One fused optimizer step (see nn.optim_update); parallel when large."""
    if p.shape[0] >= PARALLEL_MIN_ELEMENTS:
        _PAR["optim_update_par"](code, p, g, s1, s2, hp)
    else:
        nn.optim_update(code, p, g, s1, s2, hp)


ENTRY_POINTS = ("activation_backward", "activation_backward_bias", "bias_activation_forward",
                "column_sum", "linear_backward", "linear_forward", "loss_forward_backward",
                "matmul", "matmul_nt", "matmul_tn", "optim_update", "plan_train", "tiny_train")
