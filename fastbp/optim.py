"""Optimizers: SGD, Momentum, Nesterov, RMSProp, Adam, AdamLR, called as ``optim(model, loss)``.

A call runs the backward pass (last layer to first), then updates every parameter. The
built-in Linear layers of a fastbp Model share one flat buffer, updated by one fused
kernel call; the ``w`` and ``b`` of any other Layer are updated by the same kernel, one
array at a time. State (moments, step count) lives in the optimizer, per parameter, and
survives across ``train`` calls.

An optimizer with state (Momentum, RMSProp, Adam) belongs to the first model it steps:
its moments describe that model's parameters and its step count ``t`` that model's
steps, so stepping another model is refused (make one optimizer per model, or call
``reset()``). SGD keeps no state and may serve any number of models.

``weight_decay`` (every optimizer) adds the L2 penalty 0.5 * weight_decay * sum(w**2) of
every Layer's weights ``w`` (never the biases) to the objective: the weight gradients gain
weight_decay * w, divided by the batch rows when the loss has reduction="mean" (the mean
divides the whole batch objective, penalty included, as scikit-learn's ``alpha`` does).
"""
import numbers
import weakref

import numpy as np

from . import kernels as K
from ._checks import positive_number, unit_interval
from .modules import Layer, Linear

__all__ = ["Optimizer", "SGD", "Momentum", "Nesterov", "RMSProp", "Adam", "AdamLR"]


def spelled(who, value, default, alias_value, name, alias):
    """One hyper-parameter that the later scripts of the from-scratch series spell
    ``alias`` (``beta``, ``epsilon``): either spelling, never both, else ``default``."""
    if value is not None and alias_value is not None:
        raise TypeError(f"{who}: pass either {name}= or {alias}= (the same parameter), "
                        f"not both")
    value = value if value is not None else alias_value
    return default if value is None else value


class Optimizer:
    code = None
    n_slots = 0  # state arrays per parameter

    def __init__(self, lr, weight_decay=0.0):
        self.lr = positive_number(lr, type(self).__name__, "lr")
        self.weight_decay = _non_negative(weight_decay, type(self).__name__, "weight_decay")
        self.t = 0          # steps taken
        self.state = {}     # key -> list of n_slots arrays shaped like the parameter
        self._model = None  # weak reference to the model the state belongs to
        self._flat = None   # weak reference to the flat buffer state["flat"] belongs to

    def reset(self):
        """Forget the state and the step count, so the optimizer can train another model."""
        self.t, self.state, self._model, self._flat = 0, {}, None, None

    def _bind(self, model):
        """Tie the state to ``model`` on its first step; refuse any other model after."""
        if self.n_slots == 0:
            return  # no state: any model may share it
        if self._bound_elsewhere(model):
            raise ValueError(f"{self!r} already holds the state of another model ({self.t} "
                             f"steps: moments and step count t belong to that model); make "
                             f"one optimizer per model, e.g. {type(self).__name__}"
                             f"(lr={self.lr}), or call .reset() first")
        if self._model is None:
            self._model = _weak(model)

    def _bound_elsewhere(self, model):
        """Whether the state belongs to a model other than ``model`` (alive or not)."""
        return self._model is not None and self._model() is not model

    def __call__(self, model, loss):
        if getattr(type(model), "input_gradient_optional", False):   # a fastbp Model
            model.backward(loss, input_gradient=False)   # fused pairs; no dL/dx GEMM
        elif callable(getattr(model, "backward", None)):
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
        if key == "flat":
            self._check_flat(like)
        slots = self.state.get(key)
        if slots is None or slots[0].shape != like.shape or slots[0].dtype != like.dtype:
            slots = self.state[key] = [np.zeros_like(like) for _ in range(max(self.n_slots, 1))]
        return slots

    def _check_flat(self, params):
        """The flat state belongs to one parameter buffer: a model whose buffers were
        rebuilt (layers replaced or added) cannot continue with the old moments."""
        if self.n_slots == 0:
            return
        problem = self._flat_mismatch(params)
        if problem:
            raise ValueError(f"{self!r}: {problem}")
        self._flat = _weak(params)

    def _flat_mismatch(self, params):
        """Why the flat state cannot continue on the buffer ``params`` (a message), or
        "" when it can: it was made for a buffer since rebuilt, or (loaded) it has
        another size or dtype."""
        if self._flat is not None and self._flat() is params:
            return ""
        if self._flat is not None and "flat" in self.state:
            return ("the model's parameters were rebuilt (its layers changed) after this "
                    "optimizer's state was made for them; make a new optimizer, or call "
                    ".reset() first")
        slots = self.state.get("flat")
        if slots is not None and slots[0].shape != params.shape:
            return (f"its state is for {slots[0].size} parameters, the model has "
                    f"{params.size}; load the matching model, or call .reset() first")
        if slots is not None and slots[0].dtype != params.dtype:
            return (f"its state is {slots[0].dtype}, the model is {params.dtype}; load "
                    f"the state with a model of that dtype, or call .reset() first")
        return ""

    def _update(self, key, p, g, hp):
        s = self._slots(key, p)
        K.optim_update(self.code, p, g, s[0], s[-1], hp)

    def step(self, model):
        """Update every parameter of ``model`` from the gradients of the last backward."""
        self._bind(model)
        flat = getattr(model, "params", None)
        if flat is not None:
            self._check_flat(flat)
        self.t += 1
        hp = self.hyper()
        if flat is not None:
            self._update("flat", flat, model.grads, hp)
        for i, layer in enumerate(model.layers):
            if not isinstance(layer, Layer) or (flat is not None and isinstance(layer, Linear)):
                continue
            for name in ("w", "b"):
                p, g = _parameter(self, i, layer, name)
                self._update((i, name), p, g, hp)

    def state_dict(self):
        """Arrays and numbers that let a saved run resume exactly."""
        return {"t": self.t, "state": {k: [a.copy() for a in v] for k, v in self.state.items()}}

    def load_state_dict(self, d):
        """Restore ``state_dict()``'s output; the optimizer then belongs to the first
        model it steps (whose parameters must match the state's shapes and dtype).
        Anything else than what ``state_dict`` gives for this optimizer is refused."""
        who = f"{type(self).__name__}.load_state_dict"
        if not isinstance(d, dict) or set(d) != {"t", "state"}:
            raise ValueError(f"{who}: expected a dict with keys 't' and 'state' (as "
                             f"state_dict() gives), got {d!r:.80}")
        t, state = d["t"], d["state"]
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ValueError(f"{who}: t (steps taken) must be an integer >= 0, got {t!r}")
        if not isinstance(state, dict):
            raise ValueError(f"{who}: state must be a dict, got {type(state).__name__}")
        n_slots = max(self.n_slots, 1)
        loaded = {}
        for key, slots in state.items():
            slots = [np.array(a) for a in slots] if isinstance(slots, (list, tuple)) \
                else None
            if slots is None or len(slots) != n_slots:
                raise ValueError(f"{who}: state[{key!r}] must be a list of {n_slots} "
                                 f"arrays for {type(self).__name__}, got {state[key]!r:.80}")
            first = slots[0]
            if first.dtype not in (np.float32, np.float64) or \
                    (key == "flat" and first.ndim != 1) or \
                    any(a.shape != first.shape or a.dtype != first.dtype for a in slots):
                raise ValueError(f"{who}: state[{key!r}] must hold float32 or float64 "
                                 f"arrays of one shape (1-D for 'flat'), got "
                                 f"{[(a.shape, a.dtype.name) for a in slots]}")
            loaded[key] = slots
        self.t, self.state = int(t), loaded
        self._model = self._flat = None

    def __getstate__(self):
        """Pickling (scikit-learn clones and caches estimators) keeps the state but not the
        weak references to its model: the copy binds to the next model it steps, whose
        parameters must match the state's shapes, as after load_state_dict."""
        state = dict(self.__dict__)
        state["_model"] = state["_flat"] = None
        return state

    hyper_names = ("lr",)   # constructor arguments, as fastbp spells them

    def __repr__(self):
        names = self.hyper_names + (("weight_decay",) if self.weight_decay else ())
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({args})"


def _parameter(opt, i, layer, name):
    """Layer ``i``'s parameter ``name`` and its gradient as two 1-D arrays of the same
    length and dtype, the first a view of the parameter (the update writes into it).
    The parameter must be a writable, contiguous float array (C or Fortran order), the
    gradient real numbers of a shape that broadcasts to it; anything else is refused by
    name, never skipped."""
    who = f"{type(opt).__name__}: layer {i} ({type(layer).__name__})"
    if not hasattr(layer, name):
        raise AttributeError(f"{who} is a Layer without a parameter {name!r}; a layer with "
                             f"no parameters should subclass layers.Activation")
    p = getattr(layer, name)
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{who}: {name} is a {type(p).__name__}, which the optimizer cannot "
                        f"update in place; make it a float array, e.g. "
                        f"self.{name} = np.array({name}_value, dtype=float)")
    if p.dtype not in (np.float32, np.float64) or not p.flags.writeable:
        raise TypeError(f"{who} has a {name} the optimizer cannot update in place (dtype "
                        f"{p.dtype}, writeable {p.flags.writeable}); keep w and b as "
                        f"writable float32 or float64 arrays")
    if not hasattr(layer, name + "_gradient"):
        raise AttributeError(f"{who}: backward did not set {name}_gradient; it must set "
                             f"w_gradient and b_gradient, shaped like w and b")
    g = np.asarray(getattr(layer, name + "_gradient"))
    if g.dtype.kind not in "biuf":
        raise TypeError(f"{who}: {name}_gradient must be real numbers, got dtype {g.dtype}")
    try:
        g = np.broadcast_to(g, p.shape)
    except ValueError:
        raise ValueError(f"{who}: {name}_gradient has shape {g.shape}, which does not fit "
                         f"{name}'s shape {p.shape}; backward must set {name}_gradient "
                         f"with {name}'s shape") from None
    if not p.flags.c_contiguous and p.flags.f_contiguous:
        p, g = p.T, g.T  # a Fortran-ordered array is its transpose in C order
    if not p.flags.c_contiguous:
        raise TypeError(f"{who} has a {name} that is not contiguous in memory (strides "
                        f"{p.strides}), so it cannot be updated in place; make it with "
                        f"np.ascontiguousarray")
    return p.reshape(-1), np.ascontiguousarray(g, dtype=p.dtype).reshape(-1)


def _weak(obj):
    try:
        return weakref.ref(obj)
    except TypeError:  # an object without weak references: hold it
        return lambda: obj


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
    hyper_names = ("lr", "beta")

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
    """As torch.optim.RMSprop: v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps).

    ``beta=`` and ``epsilon=`` (the from-scratch series' names) are accepted for ``alpha``
    and ``eps``; the series' own update divides by sqrt(v + epsilon) with decay 0.9.
    """
    code, n_slots = K.RMSPROP, 1
    hyper_names = ("lr", "alpha", "eps")

    def __init__(self, lr=0.01, alpha=None, eps=None, weight_decay=0.0, *, beta=None,
                 epsilon=None):
        super().__init__(lr, weight_decay)
        alpha = spelled("RMSProp", alpha, 0.99, beta, "alpha", "beta")
        eps = spelled("RMSProp", eps, 1e-8, epsilon, "eps", "epsilon")
        self.alpha = unit_interval(alpha, "RMSProp", "alpha")
        self.eps = positive_number(eps, "RMSProp", "eps")

    def hyper(self):
        return np.array([self.lr, self.alpha, 0, self.eps, 1, 1], np.float64)


class Adam(Optimizer):
    """As torch.optim.Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), t = 1 on the first step.
    ``epsilon=`` (the from-scratch series' name) is accepted for ``eps``."""
    code, n_slots = K.ADAM, 2
    hyper_names = ("lr", "beta1", "beta2", "eps")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=None, weight_decay=0.0, *,
                 epsilon=None):
        super().__init__(lr, weight_decay)
        eps = spelled(type(self).__name__, eps, 1e-8, epsilon, "eps", "epsilon")
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
