"""Reference optimizers: SGD, Momentum, RMSProp, Adam, called as ``optim(model, loss)``.

Each call runs the backward pass from the last layer to the first, then updates every
Layer's ``w`` and ``b`` in place. An optimizer with state (all but SGD) serves one model:
its moments and its step count t belong to that model, so another model is refused.
"""
import numpy as np

from .modules import Layer


class Optimizer:
    stateful = True

    def __init__(self, lr):
        self.lr = lr
        self.state = {}
        self.model = None

    def __call__(self, model, loss):
        if self.stateful:
            if self.model is not None and self.model is not model:
                raise ValueError(f"{type(self).__name__} already holds the state of another "
                                 f"model; make one optimizer per model")
            self.model = model
        if callable(getattr(model, "backward", None)):
            model.backward(loss)
        else:
            grad = loss.backward()
            for layer in reversed(model.layers):
                grad = layer.backward(grad)
        self.begin_step()
        for layer in model.layers:
            if isinstance(layer, Layer):
                for name in ("w", "b"):
                    self.update(getattr(layer, name), getattr(layer, name + "_gradient"),
                                self.state.setdefault((id(layer), name), {}))

    def begin_step(self):
        pass


class SGD(Optimizer):
    stateful = False

    def __init__(self, lr=0.01):
        super().__init__(lr)

    def update(self, p, g, state):
        p -= self.lr * g


class Momentum(Optimizer):
    """v = beta * v + lr * g; p -= v."""

    def __init__(self, lr=0.01, beta=0.9):
        super().__init__(lr)
        self.beta = beta

    def update(self, p, g, state):
        v = state.setdefault("v", np.zeros_like(p))
        v[...] = self.beta * v + self.lr * g
        p -= v


def _either(value, alias, default):
    """A parameter given under fastbp's name or the series' alias (never both)."""
    if value is not None and alias is not None:
        raise TypeError("pass a parameter under one name only")
    value = value if value is not None else alias
    return default if value is None else value


class RMSProp(Optimizer):
    """torch.optim.RMSprop: v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps).
    ``beta`` and ``epsilon`` are the from-scratch series' names of ``alpha`` and ``eps``."""

    def __init__(self, lr=0.01, alpha=None, eps=None, *, beta=None, epsilon=None):
        super().__init__(lr)
        self.alpha = _either(alpha, beta, 0.99)
        self.eps = _either(eps, epsilon, 1e-8)

    def update(self, p, g, state):
        v = state.setdefault("v", np.zeros_like(p))
        v[...] = self.alpha * v + (1 - self.alpha) * g * g
        p -= self.lr * g / (np.sqrt(v) + self.eps)


class Adam(Optimizer):
    """torch.optim.Adam, bias-corrected by the step count t (1 on the first step)."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=None, *, epsilon=None):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, _either(eps, epsilon, 1e-8)
        self.t = 0

    def begin_step(self):
        self.t += 1

    def update(self, p, g, state):
        m = state.setdefault("m", np.zeros_like(p))
        v = state.setdefault("v", np.zeros_like(p))
        m[...] = self.beta1 * m + (1 - self.beta1) * g
        v[...] = self.beta2 * v + (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1 ** self.t)
        v_hat = v / (1 - self.beta2 ** self.t)
        p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
