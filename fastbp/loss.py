"""Losses: MSE, CategoricalCrossentropy, BinaryCrossentropy; ``loss(pred, y)`` then
``loss.backward()``, each value and gradient computed in one fused kernel pass."""
import numbers

import numpy as np

from . import kernels as K
from ._checks import as_batch, input_dtype
from .reference.loss import clip_eps

__all__ = ["Loss", "MSE", "CategoricalCrossentropy", "BinaryCrossentropy", "SquaredError"]
REDUCTIONS = ("sum", "mean")
_F32_TINY = float(np.finfo(np.float32).tiny)


class Loss:
    """Base of the built-in losses: ``__call__(pred, y)`` returns the loss as a float and
    keeps dL/dpred for ``backward()``."""

    code = None
    sums_rows = False  # the value sums over the batch rows (the cross-entropies)
    reduction = "sum"

    eps = None

    def __init__(self, reduction="sum", eps=None):
        """reduction: "sum" or "mean" (divided by the batch rows). eps: how far from 0
        (and 1) probabilities are clipped inside the logarithms; None is 1e-12 in float64,
        1e-7 in float32 (scikit-learn clips at np.finfo(dtype).eps)."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, "
                             f"got {reduction!r}")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
                                or not 0 < eps < 0.5):
            raise ValueError(f"{type(self).__name__}: eps must be in (0, 0.5), got {eps!r}")
        # A Python float: the kernels then compile one signature for any eps given.
        self.reduction, self.eps = reduction, None if eps is None else float(eps)

    @property
    def summed(self):
        """True when the value sums over samples: train then reports it per sample."""
        return self.sums_rows and self.reduction == "sum"

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

    def _eps_for(self, dtype):
        """The loss's eps for predictions of ``dtype`` (None: the dtype's default). In
        float32 an eps below float32's smallest normal number is refused: the gradient at
        p <= eps, -y / eps, would be -inf while the loss (summed in float64) is finite."""
        if self.eps is None:
            return None
        if self.eps < _F32_TINY and dtype == np.float32:
            raise ValueError(f"{type(self).__name__}: eps={self.eps!r} is below float32's "
                             f"smallest normal number ({_F32_TINY:.3g}): the gradient "
                             f"-y / eps would overflow to -inf; use an eps of at least "
                             f"{_F32_TINY:.3g} (the default is 1e-7) or float64")
        return self.eps

    def __call__(self, pred, y):
        self._given_pred = pred  # lets fastbp.pairs check that pred came from the model
        self.pred, self.y = self._prepare(pred, y)
        self.grad = np.empty_like(self.pred)
        eps = self._eps_for(self.pred.dtype)
        if eps is None:
            eps = clip_eps(self.pred.dtype)
        value = float(K.loss_forward_backward(self.code, self.grad, self.pred, self.y, eps))
        if self.reduction == "mean":   # the batch objective divided by its rows
            rows = len(self.pred)
            self.grad /= rows
            value /= rows
        return value

    def backward(self):
        """dL/dpred for the last call, shape (N, O)."""
        if not hasattr(self, "grad"):
            raise RuntimeError(f"{self!r}.backward was called before the loss was computed; "
                               f"call loss(pred, y) first")
        return self.grad

    def __repr__(self):
        arg = "" if self.reduction == "sum" else f"reduction={self.reduction!r}"
        return f"{type(self).__name__}({arg})"


class MSE(Loss):
    """Mean squared error: loss = mean(e**2) over all elements, e = pred - y.

    ``backward`` returns 2 * e / O (O = outputs per sample): the original's convention,
    the gradient of the per-sample mean summed over the batch, so a learning rate tuned
    for the original trains the same.
    """
    code = K.MSE

    def __init__(self):   # already a mean over all elements: no reduction option
        pass


class CategoricalCrossentropy(Loss):
    """loss = -sum(y * log(p)), summed over the batch and the classes (reduction="sum",
    the default; "mean" divides loss and gradient by the batch rows); p is clipped below
    at eps (1e-12 in float64, 1e-7 in float32; not above). ``backward`` is the
    gradient -y / p of that clipped sum w.r.t. p (-y / eps where p < eps). After a Softmax in a
    Model, the pair runs fused: the gradient w.r.t. the logits is that of the unclipped
    loss, p * sum(y) - y (= p - y for one-hot y), which stays right at saturation."""
    code, sums_rows = K.CCE, True


class BinaryCrossentropy(Loss):
    """loss = -sum(y log p + (1 - y) log(1 - p)), summed over the batch and the outputs
    (reduction="sum"; "mean" divides loss and gradient by the batch rows); p clipped to
    [eps, 1 - eps]. ``backward`` is the gradient (p - y) / (p (1 - p)) of that clipped
    sum w.r.t. p. After a Sigmoid in a Model, the pair runs fused with the unclipped
    loss's gradient p - y w.r.t. the logits (see fastbp.pairs)."""
    code, sums_rows = K.BCE, True

    def __init__(self, reduction="sum", eps=None):
        super().__init__(reduction, eps)
        if self.eps is not None and 1.0 - self.eps == 1.0:
            raise ValueError(f"BinaryCrossentropy: eps={eps!r} is too small: 1 - eps rounds "
                             f"to 1, so a prediction of exactly 1 would not be clipped and "
                             f"log(1 - p) would make the loss NaN; use eps >= 1e-15 (the "
                             f"default is 1e-12 in float64, 1e-7 in float32)")


class SquaredError(Loss):
    """Half squared error, scikit-learn's ``squared_error``: per row 0.5 * mean over the
    O outputs of e**2 (e = pred - y), summed over the batch (reduction="sum") or averaged
    over its rows ("mean", as scikit-learn's MLPRegressor).

    ``backward`` returns e (divided by the rows for "mean"): the gradient of *half the
    summed* squared error per row, which is what scikit-learn back-propagates. The value
    and that objective agree for one output; for O outputs the value is 1/O of it.
    """
    code, sums_rows = K.HALF_SE, True
