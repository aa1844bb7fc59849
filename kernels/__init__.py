"""fastbp.kernels: fused Numba kernels (installed from the top-level ``kernels/`` folder).

Importing this package compiles nothing; each kernel compiles on its first call (or is
loaded from Numba's on-disk cache) for the dtypes it is called with.
"""
from .config import PARALLEL_MIN_ELEMENTS, THREADING_LAYER, serialized
from .nn import (ADAM, BCE, CCE, IDENTITY, MOMENTUM, MSE, RELU, RMSPROP, SGD, SIGMOID,
                 SIGMOID_BCE, SOFTMAX, SOFTMAX_CCE, TANH, activation_backward,
                 ADAM_LR, HALF_SE, NESTEROV,
                 activation_backward_bias, bias_activation_forward, column_sum, linear_backward,
                 linear_forward, loss_forward_backward, matmul, matmul_nt, matmul_tn,
                 optim_update, plan_predict, plan_train)

ENTRY_POINTS = ("activation_backward", "activation_backward_bias", "bias_activation_forward",
                "column_sum", "linear_backward", "linear_forward", "loss_forward_backward",
                "matmul", "matmul_nt", "matmul_tn", "optim_update", "plan_predict",
                "plan_train")


def _start_threads_on_first_use(name, kernel):
    """Start Numba's thread pool before the first kernel runs, then step aside.

    A kernel loaded from the cache that calls a ``parallel=True`` kernel can fail to link
    ("LLVM ERROR: Symbol not found: allocate_sched", Numba issue 8578) when the pool has
    not been started in this process; starting it costs a few milliseconds, once.
    """
    def first_call(*args):
        try:
            from numba.np.ufunc.parallel import _launch_threads
            _launch_threads()
        except ImportError:  # Numba moved it: its own lazy start then applies
            pass
        for entry in ENTRY_POINTS:  # every entry point goes straight to its kernel now
            globals()[entry] = _KERNELS[entry]
        return kernel(*args)
    first_call.__name__ = first_call.__qualname__ = name
    first_call.__doc__ = kernel.__doc__
    return first_call


# Under a threading layer that is not thread-safe (workqueue), one Python thread at a time
# runs the kernels (config.serialized); under TBB the kernels themselves are used.
_KERNELS = {name: serialized(globals()[name]) for name in ENTRY_POINTS}
for _name in ENTRY_POINTS:
    globals()[_name] = _start_threads_on_first_use(_name, _KERNELS[_name])
del _name
