"""Reference losses: MSE, CategoricalCrossentropy, BinaryCrossentropy, SquaredError.

reduction="mean" divides a loss and its gradient by the batch rows ("sum" is the default).
"""
import numpy as np


def clip_eps(dtype):
    """How far from 0 (and 1) probabilities are clipped inside the logarithms."""
    return 1e-7 if np.dtype(dtype) == np.float32 else 1e-12


class MSE:
    """mean(e**2) over all elements, e = pred - y; backward 2 e / O (the original's)."""

    def __call__(self, pred, y):
        self.error = pred - y
        return np.mean(self.error ** 2)

    def backward(self):
        return 2 * self.error / self.error.shape[-1]


class Reduced:
    """reduction="sum" or "mean" (the sum divided by the batch rows)."""

    def __init__(self, reduction="sum", eps=None):
        self.reduction, self.eps = reduction, eps

    @property
    def summed(self):
        """True when the value sums over samples: train then reports it per sample."""
        return self.reduction == "sum"

    def _eps(self, dtype):
        return clip_eps(dtype) if self.eps is None else self.eps

    def _reduce(self, value, rows):
        return value / rows if self.reduction == "mean" else value


class CategoricalCrossentropy(Reduced):
    """-sum(y * log(p)) summed over batch and classes; p clipped below at eps. ``backward``
    is the gradient of the clipped sum w.r.t. p; after a Softmax, Model.backward uses the
    unclipped loss's gradient w.r.t. the logits instead (see ``logits_gradient``)."""

    def __call__(self, pred, y):
        self.pred, self.y = pred, y
        self.p = np.maximum(pred, self._eps(pred.dtype))
        return self._reduce(-np.sum(y * np.log(self.p)), len(pred))

    def backward(self):
        return self._reduce(-self.y / self.p, len(self.p))

    def logits_gradient(self):
        """d/dz of -sum(y * log softmax(z)): p * sum(y) - y, with p unclipped."""
        return self._reduce(self.pred * self.y.sum(axis=1, keepdims=True) - self.y,
                            len(self.pred))


class BinaryCrossentropy(Reduced):
    """-sum(y log p + (1 - y) log(1 - p)) over batch and outputs; p clipped to [eps, 1-eps].

    Computed in float64 whatever the input dtype: in float32, 1 - eps (eps = 1e-7) would
    round to 1 - 1.19e-7, and a p of exactly 1 would cost less than a p of exactly 0.
    """

    def __call__(self, pred, y):
        eps = self._eps(pred.dtype)
        self.pred = pred
        self.dtype, self.y = pred.dtype, np.asarray(y, np.float64)
        self.p = np.clip(np.asarray(pred, np.float64), eps, 1 - eps)
        return self._reduce(-np.sum(self.y * np.log(self.p) + (1 - self.y)
                                    * np.log1p(-self.p)), len(self.p))

    def backward(self):
        grad = self._reduce((self.p - self.y) / (self.p * (1 - self.p)), len(self.p))
        return grad.astype(self.dtype)

    def logits_gradient(self):
        """d/dz of the binary cross-entropy of sigmoid(z): p - y, with p unclipped."""
        return self._reduce(self.pred - self.y.astype(self.dtype), len(self.pred))


class SquaredError(Reduced):
    """Per row 0.5 * mean over outputs of e**2, e = pred - y; backward e, the gradient of
    half the summed squared error per row (scikit-learn's squared_error convention)."""

    def __call__(self, pred, y):
        self.error = pred - y
        return self._reduce(0.5 * np.sum(np.mean(self.error ** 2, axis=1)), len(pred))

    def backward(self):
        return self._reduce(self.error, len(self.error))
