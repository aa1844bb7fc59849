"""The fused output pairs, in one place: Model.backward and the compiled plan both ask here.

For Softmax followed by CategoricalCrossentropy, and Sigmoid followed by
BinaryCrossentropy, the gradient of the loss w.r.t. the activation's *input* (the logits)
is ``p * sum(y) - y`` (``p - y`` for one-hot rows) and ``p - y``: it needs no division by
p and no Jacobian, so the pair runs as one kernel and the activation's own backward is
skipped. No other pair has that property.
"""
import numpy as np

from . import kernels as K
from .loss import BinaryCrossentropy, CategoricalCrossentropy
from .modules import Sigmoid, Softmax
from .reference.loss import clip_eps

# loss class -> (the output activation it fuses with, the pair's kernel code)
PAIRS = {CategoricalCrossentropy: (Softmax, K.SOFTMAX_CCE),
         BinaryCrossentropy: (Sigmoid, K.SIGMOID_BCE)}


def pair_code(loss, last_layer):
    """The kernel code of the fused pair ``last_layer`` -> ``loss``, or None."""
    for loss_class, (activation, code) in PAIRS.items():
        if isinstance(loss, loss_class) and type(last_layer) is activation:
            return code
    return None


def fused_gradient(loss, last_layer):
    """dL/dlogits of the pair when ``loss`` was last called on ``last_layer``'s output;
    else None (the caller then runs ``loss.backward()`` and the layer's backward)."""
    code = pair_code(loss, last_layer)
    if code is None or getattr(last_layer, "output", None) is not \
            getattr(loss, "_given_pred", None):
        return None
    grad = np.empty_like(loss.pred)
    K.loss_forward_backward(code, grad, loss.pred, loss.y, clip_eps(loss.pred.dtype))
    if getattr(loss, "reduction", "sum") == "mean":
        grad /= len(grad)
    return grad
