"""fastbp.kernels: fused Numba kernels (installed from the top-level ``kernels/`` folder).

Importing this package compiles nothing; each kernel compiles on its first call (or is
loaded from Numba's on-disk cache) for the dtypes it is called with.
"""
from .config import PARALLEL_MIN_ELEMENTS, THREADING_LAYER
from .nn import (ADAM, BCE, CCE, IDENTITY, MOMENTUM, MSE, RELU, RMSPROP, SGD, SIGMOID,
                 SIGMOID_BCE, SOFTMAX, SOFTMAX_CCE, TANH, activation_backward,
                 activation_backward_bias, bias_activation_forward, column_sum, linear_backward,
                 linear_forward, loss_forward_backward, matmul, matmul_nt, matmul_tn,
                 optim_update, plan_predict, plan_train)
