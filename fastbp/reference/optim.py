"""Reference optimizers: SGD, Momentum, Nesterov, RMSProp, Adam, AdamLR, called as
``optim(model, loss)``.

Each call runs the backward pass from the last layer to the first, then updates every
Layer's ``w`` and ``b`` in place. ``weight_decay`` adds 0.5 * weight_decay * sum(w**2)
(weights only) to the objective, divided by the batch rows for a mean-reduced loss. An
optimizer with state (all but SGD) serves one model: its moments and its step count t
belong to that model, so another model is refused.
"""
import numpy as np

from .modules import Layer


def _decay_scale(weight_decay, loss):
    """weight_decay, or weight_decay / batch rows when the loss is mean-reduced."""
    if getattr(loss, "reduction", "sum") == "mean":
        return weight_decay / len(loss.backward())
    return weight_decay


class Optimizer:
    stateful = True

    def __init__(self, lr, weight_decay=0.0):
        self.lr, self.weight_decay = lr, weight_decay
        self.state = {}
        self.model = None

    def penalty(self, model):
        """0.5 * weight_decay * sum(w**2) over every Layer's weights (not the biases)."""
        return 0.5 * self.weight_decay * sum(np.sum(layer.w.astype(np.float64) ** 2)
                                             for layer in model.layers
                                             if isinstance(layer, Layer))

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
        scale = _decay_scale(self.weight_decay, loss)
        for layer in model.layers:
            if isinstance(layer, Layer) and self.weight_decay:
                layer.w_gradient = layer.w_gradient + scale * layer.w
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

    def __init__(self, lr=0.01, weight_decay=0.0):
        super().__init__(lr, weight_decay)

    def update(self, p, g, state):
        p -= self.lr * g


class Momentum(Optimizer):
    """v = beta * v + lr * g; p -= v."""

    def __init__(self, lr=0.01, beta=0.9, weight_decay=0.0):
        super().__init__(lr, weight_decay)
        self.beta = beta

    def update(self, p, g, state):
        v = state.setdefault("v", np.zeros_like(p))
        v[...] = self.beta * v + self.lr * g
        p -= v


class Nesterov(Momentum):
    """v = beta * v + lr * g; p -= beta * v + lr * g (scikit-learn's nesterovs_momentum)."""

    def update(self, p, g, state):
        v = state.setdefault("v", np.zeros_like(p))
        v[...] = self.beta * v + self.lr * g
        p -= self.beta * v + self.lr * g


def _either(value, alias, default):
    """A parameter given under fastbp's name or the series' alias (never both)."""
    if value is not None and alias is not None:
        raise TypeError("pass a parameter under one name only")
    value = value if value is not None else alias
    return default if value is None else value


class RMSProp(Optimizer):
    """torch.optim.RMSprop: v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps).
    ``beta`` and ``epsilon`` are the from-scratch series' names of ``alpha`` and ``eps``."""

    def __init__(self, lr=0.01, alpha=None, eps=None, weight_decay=0.0, *, beta=None,
                 epsilon=None):
        super().__init__(lr, weight_decay)
        self.alpha = _either(alpha, beta, 0.99)
        self.eps = _either(eps, epsilon, 1e-8)

    def update(self, p, g, state):
        v = state.setdefault("v", np.zeros_like(p))
        v[...] = self.alpha * v + (1 - self.alpha) * g * g
        p -= self.lr * g / (np.sqrt(v) + self.eps)


class Adam(Optimizer):
    """torch.optim.Adam, bias-corrected by the step count t (1 on the first step)."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=None, weight_decay=0.0, *,
                 epsilon=None):
        super().__init__(lr, weight_decay)
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


class AdamLR(Adam):
    """Adam with the bias correction in the step size (Kingma & Ba, section 2):
    lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t); p -= lr_t m / (sqrt(v) + eps)."""

    def update(self, p, g, state):
        m = state.setdefault("m", np.zeros_like(p))
        v = state.setdefault("v", np.zeros_like(p))
        m[...] = self.beta1 * m + (1 - self.beta1) * g
        v[...] = self.beta2 * v + (1 - self.beta2) * g * g
        lr_t = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        p -= lr_t * m / (np.sqrt(v) + self.eps)
