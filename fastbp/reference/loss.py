"""Reference losses: MSE, CategoricalCrossentropy, BinaryCrossentropy."""
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


class CategoricalCrossentropy:
    """-sum(y * log(p)) summed over batch and classes; p clipped to [eps, 1]. ``backward``
    is the gradient of the clipped sum w.r.t. p; after a Softmax, Model.backward uses the
    unclipped loss's gradient w.r.t. the logits instead (see ``logits_gradient``)."""

    summed = True

    def __call__(self, pred, y):
        self.pred, self.y = pred, y
        self.p = np.maximum(pred, clip_eps(pred.dtype))
        return -np.sum(y * np.log(self.p))

    def backward(self):
        return -self.y / self.p

    def logits_gradient(self):
        """d/dz of -sum(y * log softmax(z)): p * sum(y) - y, with p unclipped."""
        return self.pred * self.y.sum(axis=1, keepdims=True) - self.y


class BinaryCrossentropy:
    """-sum(y log p + (1 - y) log(1 - p)) over batch and outputs; p clipped to [eps, 1-eps].

    Computed in float64 whatever the input dtype: in float32, 1 - eps (eps = 1e-7) would
    round to 1 - 1.19e-7, and a p of exactly 1 would cost less than a p of exactly 0.
    """

    summed = True

    def __call__(self, pred, y):
        eps = clip_eps(pred.dtype)
        self.pred = pred
        self.dtype, self.y = pred.dtype, np.asarray(y, np.float64)
        self.p = np.clip(np.asarray(pred, np.float64), eps, 1 - eps)
        return -np.sum(self.y * np.log(self.p) + (1 - self.y) * np.log1p(-self.p))

    def backward(self):
        return ((self.p - self.y) / (self.p * (1 - self.p))).astype(self.dtype)

    def logits_gradient(self):
        """d/dz of the binary cross-entropy of sigmoid(z): p - y, with p unclipped."""
        return self.pred - self.y.astype(self.dtype)
