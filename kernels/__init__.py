"""fastbp.kernels: fused Numba kernels (installed from the top-level ``kernels/`` folder).

Importing this package compiles nothing; each kernel compiles on its first call (or is
loaded from Numba's on-disk cache) for the dtypes it is called with.

The row-wise kernels come in a serial and a parallel variant with the same bits
(``kernels/nn.py``); the functions below pick one by size, here in Python, so that small
arrays never compile a ``parallel=True`` kernel nor start Numba's thread pool.
"""
from . import ahead, nn
from .config import PARALLEL_MIN_ELEMENTS, SMALL_GEMM_FLOPS, THREADING_LAYER, serialized
from .nn import (ADAM, ADAM_LR, BCE, CCE, HALF_SE, IDENTITY, MOMENTUM, MSE, NESTEROV,
                 RELU, RMSPROP, SGD, SIGMOID,
                 SIGMOID_BCE, SOFTMAX, SOFTMAX_CCE, TANH, activation_backward_bias,
                 column_sum, linear_backward, matmul, matmul_nt, matmul_tn, plan_train,
                 tiny_train)

PARALLEL_KERNELS = ("bias_activation_forward_par", "activation_backward_par",
                    "loss_forward_backward_par")


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


def _by_size(name, size, doc):
    """The kernel ``name``: its parallel variant when ``size(args)`` reaches
    PARALLEL_MIN_ELEMENTS, else the serial one (both give the same bits)."""
    serial, parallel = getattr(nn, name), name + "_par"

    def kernel(*args):
        if size(args) >= PARALLEL_MIN_ELEMENTS:
            return _PAR[parallel](*args)
        return serial(*args)
    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"{doc} (see nn.{name}); parallel when large."
    return kernel


bias_activation_forward = _by_size("bias_activation_forward", lambda a: a[0].size,
                                   "out = act(z + b), row-wise")
activation_backward = _by_size("activation_backward", lambda a: a[2].size,
                               "dz = dL/dz from dL/d(act(z))")
loss_forward_backward = _by_size("loss_forward_backward", lambda a: a[2].size,
                                 "Loss value and gradient")
# The optimizer step stays serial at every size: in training it always follows the
# step's BLAS products, whose threads keep spinning for ~0.1 s, and a parallel update
# competing with them ran 3-5x slower than the serial one (784-256-256-10 and
# 784-2048-2048-10, Adam, float32, on 2 cores; `python -m fastbp.breakeven` measures it).
# optim_update_par is kept for that measurement and for the serial = parallel bits test.
optim_update = nn.optim_update


def linear_forward(out, x, w, b, act):
    """out = act(x @ w + b) (see nn.linear_forward); the sweep after the GEMM is parallel
    when large."""
    if out.size >= PARALLEL_MIN_ELEMENTS:
        nn.matmul(out, x, w)
        _PAR["bias_activation_forward_par"](out, out, b, act)
    else:
        nn.linear_forward(out, x, w, b, act)
