"""Optimizers: SGD, Momentum, Nesterov, RMSProp, Adam, AdamLR, called as ``optim(model, loss)``.

A call runs the backward pass (last layer to first), then updates every parameter. The
built-in Linear layers of a fastbp Model share one flat buffer, updated by one fused
kernel call; the ``w`` and ``b`` of any other Layer are updated by the same kernel, one
array at a time. State (moments, step count) lives in the optimizer, per parameter, and
survives across ``train`` calls.

``weight_decay`` (every optimizer) adds the L2 penalty 0.5 * weight_decay * sum(w**2) of
every Layer's weights ``w`` (never the biases) to the objective: the weight gradients gain
weight_decay * w, divided by the batch rows when the loss has reduction="mean" (the mean
divides the whole batch objective, penalty included, as scikit-learn's ``alpha`` does).
"""
import numbers

import numpy as np

from . import kernels as K
from ._checks import positive_number, unit_interval
from .modules import Layer, Linear

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "RMSProp", "Adam", "AdamLR"]


class Optimizer:
    code = None
    n_slots = 0  # state arrays per parameter

    def __init__(self, lr, weight_decay=0.0):
        self.lr = positive_number(lr, type(self).__name__, "lr")
        self.weight_decay = _non_negative(weight_decay, type(self).__name__, "weight_decay")
        self.t = 0          # steps taken
        self.state = {}     # key -> list of n_slots arrays shaped like the parameter

    def __call__(self, model, loss):
        if callable(getattr(model, "backward", None)):   # a fastbp Model (fused pairs)
            model.backward(loss)
        else:
            grad = loss.backward()
            for layer in reversed(model.layers):
                grad = layer.backward(grad)
        if self.weight_decay:
            self.decay_gradients(model, loss)
        self.step(model)

    def penalty(self, model):
        """0.5 * weight_decay * sum(w**2) over every Layer's weights (biases excluded)."""
        if not self.weight_decay:
            return 0.0
        squares = sum(float(np.vdot(w, w)) for w in _weights(model))
        return 0.5 * self.weight_decay * squares

    def decay_gradients(self, model, loss):
        """w_gradient += weight_decay * w (/ batch rows for a loss with reduction="mean")."""
        scale = self.weight_decay
        if getattr(loss, "reduction", "sum") == "mean":
            scale = scale / len(loss.pred)
        for layer in model.layers:
            if isinstance(layer, Layer):
                dw = layer.w_gradient
                dw += scale * np.asarray(layer.w, dw.dtype)

    def hyper(self):
        """(lr, a, b, eps, c1, c2) for the update kernel, at the current step ``t``."""
        raise NotImplementedError

    def _slots(self, key, like):
        slots = self.state.get(key)
        if slots is None or slots[0].shape != like.shape or slots[0].dtype != like.dtype:
            slots = self.state[key] = [np.zeros_like(like) for _ in range(max(self.n_slots, 1))]
        return slots

    def _update(self, key, p, g, hp):
        s = self._slots(key, p)
        K.optim_update(self.code, p, g, s[0], s[-1], hp)

    def step(self, model):
        """Update every parameter of ``model`` from the gradients of the last backward."""
        self.t += 1
        hp = self.hyper()
        flat = getattr(model, "params", None)
        if flat is not None:
            self._update("flat", flat, model.grads, hp)
        for i, layer in enumerate(model.layers):
            if not isinstance(layer, Layer) or (flat is not None and isinstance(layer, Linear)):
                continue
            for name in ("w", "b"):
                p, g = getattr(layer, name), getattr(layer, name + "_gradient")
                p = np.asarray(p)
                if p.dtype not in (np.float32, np.float64) or not p.flags.c_contiguous \
                        or not p.flags.writeable:
                    raise TypeError(f"{type(self).__name__}: layer {i} ({layer!r}) has a "
                                    f"{name} the optimizer cannot update in place (dtype "
                                    f"{p.dtype}); keep w and b as writable float arrays")
                g = np.ascontiguousarray(np.broadcast_to(g, p.shape), dtype=p.dtype)
                self._update((i, name), p.reshape(-1), g.reshape(-1), hp)

    def state_dict(self):
        """Arrays and numbers that let a saved run resume exactly."""
        return {"t": self.t, "state": {k: [a.copy() for a in v] for k, v in self.state.items()}}

    def load_state_dict(self, d):
        self.t = int(d["t"])
        self.state = {k: [np.array(a) for a in v] for k, v in d["state"].items()}

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr})"


def _non_negative(value, who, name):
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0:
        return 0.0
    if isinstance(value, numbers.Real) and value < 0:
        raise ValueError(f"{who}: {name} must be >= 0, got {value!r}")
    return positive_number(value, who, name)


def _weights(model):
    return [np.asarray(layer.w) for layer in model.layers if isinstance(layer, Layer)]


class SGD(Optimizer):
    """p -= lr * g."""
    code = K.SGD

    def __init__(self, lr=0.01, weight_decay=0.0):
        super().__init__(lr, weight_decay)

    def hyper(self):
        return np.array([self.lr, 0, 0, 0, 1, 1], np.float64)


class Momentum(Optimizer):
    """v = beta * v + lr * g; p -= v."""
    code, n_slots = K.MOMENTUM, 1

    def __init__(self, lr=0.01, beta=0.9, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.beta = unit_interval(beta, type(self).__name__, "beta")

    def hyper(self):
        return np.array([self.lr, self.beta, 0, 0, 1, 1], np.float64)


class Nesterov(Momentum):
    """Nesterov momentum, as scikit-learn's SGDOptimizer(nesterov=True):
    v = beta * v + lr * g; p -= beta * v + lr * g."""
    code = K.NESTEROV


class RMSProp(Optimizer):
    """As torch.optim.RMSprop: v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps)."""
    code, n_slots = K.RMSPROP, 1

    def __init__(self, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.alpha = unit_interval(alpha, "RMSProp", "alpha")
        self.eps = positive_number(eps, "RMSProp", "eps")

    def hyper(self):
        return np.array([self.lr, self.alpha, 0, self.eps, 1, 1], np.float64)


class Adam(Optimizer):
    """As torch.optim.Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), t = 1 on the first step."""
    code, n_slots = K.ADAM, 2

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.beta1 = unit_interval(beta1, type(self).__name__, "beta1")
        self.beta2 = unit_interval(beta2, type(self).__name__, "beta2")
        self.eps = positive_number(eps, type(self).__name__, "eps")

    def hyper(self):
        return np.array([self.lr, self.beta1, self.beta2, self.eps,
                         1 - self.beta1 ** self.t, 1 - self.beta2 ** self.t], np.float64)


class AdamLR(Adam):
    """Adam with the bias correction folded into the step size (Kingma & Ba, section 2;
    scikit-learn's AdamOptimizer): m, v as Adam; lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t);
    p -= lr_t * m / (sqrt(v) + eps). Differs from Adam only in where eps sits."""
    code = K.ADAM_LR
