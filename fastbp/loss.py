"""Losses: MSE, CategoricalCrossentropy, BinaryCrossentropy; ``loss(pred, y)`` then
``loss.backward()``, each value and gradient computed in one fused kernel pass."""
import numpy as np

from . import kernels as K
from ._checks import as_batch, input_dtype
from .reference.loss import clip_eps

__all__ = ["Loss", "MSE", "CategoricalCrossentropy", "BinaryCrossentropy"]


class Loss:
    """Base of the built-in losses: ``__call__(pred, y)`` returns the loss as a float and
    keeps dL/dpred for ``backward()``."""

    code = None
    summed = False  # True: the value sums over samples (train reports it per sample)

    def _prepare(self, pred, y):
        name = type(self).__name__
        dtype = input_dtype(pred)
        pred = as_batch(pred, dtype, name, "pred", check_finite=False)
        y = as_batch(y, dtype, name, "y", check_finite=False)
        if y.shape != pred.shape:
            raise ValueError(f"{name}: y has shape {y.shape} but the prediction has shape "
                             f"{pred.shape}; they must match (one-hot encode class labels, "
                             f"reshape a 1-D target with y.reshape(-1, 1))")
        return pred, y

    def __call__(self, pred, y):
        self._given_pred = pred  # lets fastbp.pairs check that pred came from the model
        self.pred, self.y = self._prepare(pred, y)
        self.grad = np.empty_like(self.pred)
        return float(K.loss_forward_backward(self.code, self.grad, self.pred, self.y,
                                             clip_eps(self.pred.dtype)))

    def backward(self):
        """dL/dpred for the last call, shape (N, O)."""
        if not hasattr(self, "grad"):
            raise RuntimeError(f"{self!r}.backward was called before the loss was computed; "
                               f"call loss(pred, y) first")
        return self.grad

    def __repr__(self):
        return f"{type(self).__name__}()"


class MSE(Loss):
    """Mean squared error: loss = mean(e**2) over all elements, e = pred - y.

    ``backward`` returns 2 * e / O (O = outputs per sample): the original's convention,
    the gradient of the per-sample mean summed over the batch, so a learning rate tuned
    for the original trains the same.
    """
    code = K.MSE


class CategoricalCrossentropy(Loss):
    """loss = -sum(y * log(p)), summed over the batch and the classes (no mean); p is
    clipped to [eps, 1] (eps 1e-12 in float64, 1e-7 in float32). ``backward`` is the
    gradient -y / p of that clipped sum w.r.t. p (0 where p < eps). After a Softmax in a
    Model, the pair runs fused: the gradient w.r.t. the logits is that of the unclipped
    loss, p * sum(y) - y (= p - y for one-hot y), which stays right at saturation."""
    code, summed = K.CCE, True


class BinaryCrossentropy(Loss):
    """loss = -sum(y log p + (1 - y) log(1 - p)), summed over the batch and the outputs;
    p clipped to [eps, 1 - eps]. ``backward`` is the gradient (p - y) / (p (1 - p)) of
    that clipped sum w.r.t. p. After a Sigmoid in a Model, the pair runs fused with the
    unclipped loss's gradient p - y w.r.t. the logits (see fastbp.pairs)."""
    code, summed = K.BCE, True
