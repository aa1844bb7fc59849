"""How an epoch runs: one compiled call when every part is built-in, else layer by layer.

A compiled plan covers models made only of built-in layers (Linear, Relu, Sigmoid, Tanh,
Softmax), trained with a built-in loss and optimizer. It runs whole epochs (batches,
shuffling, forward, backward, update, loss) inside ``fastbp.kernels.plan_train``, with
every buffer allocated once. Anything custom falls back to the layer-by-layer path,
which calls the same kernels in the same order, so both give the same numbers.
"""
import math
import numbers

import numpy as np

from . import kernels as K
from . import loss as L
from . import optim as O
from .modules import Identity, Linear, Relu, Sigmoid, Softmax, Tanh
from .pairs import pair_code
from .reference.loss import clip_eps

_ACT_CODES = {Relu: K.RELU, Sigmoid: K.SIGMOID, Tanh: K.TANH, Softmax: K.SOFTMAX,
              Identity: K.IDENTITY}
_LOSS_CODES = {L.MSE: K.MSE, L.CategoricalCrossentropy: K.CCE, L.BinaryCrossentropy: K.BCE,
               L.SquaredError: K.HALF_SE}
_OPTIMIZERS = (O.SGD, O.Momentum, O.RMSProp, O.Adam, O.Nesterov, O.AdamLR)


def _loss_code(loss, last_layer):
    """The kernel code of a built-in loss after ``last_layer`` (a fused pair when it is
    one), or None for any other loss."""
    code = _LOSS_CODES.get(type(loss))
    return None if code is None else (pair_code(loss, last_layer) or code)


def blocks(model):
    """The model as rows (has_linear, act, I, O, w_offset, b_offset), or None when a layer
    is not built-in or the model has no flat buffers yet (see Model.build)."""
    if not model.layers or not all(type(l) is Linear or type(l) in _ACT_CODES
                                   for l in model.layers):
        return None
    if model.params is None:
        return None
    rows, width, offset = [], None, 0
    for layer in model.layers:
        if type(layer) is Linear:
            k = layer.n_in * layer.units
            rows.append([1, K.IDENTITY, layer.n_in, layer.units, offset, offset + k])
            offset += layer.n_params
            width = layer.units
        elif rows and rows[-1][0] == 1 and rows[-1][1] == K.IDENTITY:
            rows[-1][1] = _ACT_CODES[type(layer)]   # fuse into the preceding Linear
        else:
            if width is None:
                return None  # an activation before any Linear: width unknown until called
            rows.append([0, _ACT_CODES[type(layer)], width, width, 0, 0])
    return np.array(rows, dtype=np.int64)


class Plan:
    """Preallocated buffers for batches of at most ``batch`` rows, and the compiled entry
    points (train epochs, one batch's gradient, predict).

    Models with fewer than ``K.PARALLEL_MIN_ELEMENTS`` parameters train whole epochs in one
    compiled call. Larger ones run one compiled call per step (its gradient) and the
    optimizer update from Python (serial, see kernels/__init__.py): a step then takes
    milliseconds, so the call costs nothing measurable, and Ctrl-C is never more than a
    step away.
    """

    def __init__(self, model, spec, batch):
        self.model, self.spec, self.batch = model, spec, batch
        self.params = model.params   # the buffer the spec's offsets describe
        self.n_in, self.n_out = int(spec[0, 2]), int(spec[-1, 3])
        dtype = model.dtype
        sizes = batch * spec[:, 3]
        self.a_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.acts = np.empty(int(sizes.sum()), dtype)
        widest = int(max(spec[:, 2].max(), spec[:, 3].max()))
        self.g1, self.g2 = np.empty(batch * widest, dtype), np.empty(batch * widest, dtype)
        self.xb = np.empty(batch * self.n_in, dtype)
        self.yb = np.empty(batch * self.n_out, dtype)
        # Every product at most SMALL_GEMM_FLOPS multiply-adds: the tiny-net kernels.
        self.tiny = bool((batch * spec[:, 2] * spec[:, 3] * spec[:, 0]).max()
                         <= K.SMALL_GEMM_FLOPS)
        self._no_output = np.empty((0, self.n_out), dtype)
        # The tiny kernel keeps the batch's input rows in front of the activations.
        lead = batch * self.n_in
        self.tiny_a_off = self.a_off + lead
        self.tiny_acts = np.empty(lead + self.acts.size, dtype) if self.tiny else None
        if self.tiny:   # the output rows, their gradient and the targets, as (batch, O)
            n_out, last = self.n_out, int(self.tiny_a_off[-1])
            rows = batch * n_out
            self.tiny_views = (self.tiny_acts[last:last + rows].reshape(batch, n_out),
                               self.g1[:rows].reshape(batch, n_out),
                               self.yb.reshape(batch, n_out))
        self.mean, self.eps = False, None   # the loss's reduction and clip (see train)
        self.default_eps = float(clip_eps(dtype))   # the clip when the loss sets none
        # Large models train step by step (see the class's docstring). A plan belongs to
        # one parameter buffer (plan_for), so this never changes.
        self.by_steps = self.params.shape[0] >= K.PARALLEL_MIN_ELEMENTS

    def train(self, x, y, orders, loss_code, optim, mean=False, eps=None, stop=()):
        """Run one epoch per entry of ``orders`` (None = natural order); returns the epoch
        losses, stopping after the first that is NaN or Inf. ``mean``: the loss has
        reduction="mean"; ``eps``: the loss's clip (None: the dtype's default). ``stop``:
        when it becomes truthy (Ctrl-C), large models stop after the running step and the
        completed epochs are returned."""
        self.mean, self.eps = mean, eps
        decay = getattr(optim, "weight_decay", 0.0)
        if self.by_steps:
            return self._train_by_steps(x, y, orders, loss_code, optim, stop)
        self.model._keep_held_gradients()   # gradient arrays a caller kept stay as they are
        # The tiny kernel has no weight decay nor mean reduction (scikit-learn's options).
        kernel = self._tiny_train if self.tiny and not (decay or mean) else self._plan_train
        steps, losses = kernel(x, y, _order_array(orders), loss_code, optim,
                               np.empty(len(orders)), self._no_output)
        per_epoch = -(-len(x) // self.batch)
        if optim is not None:
            optim.t += steps
        # Fewer steps than asked: the kernel stopped before a step whose loss was NaN or
        # Inf, in the epoch after the completed ones (its loss is that NaN or Inf).
        done = len(orders) if steps == len(orders) * per_epoch else steps // per_epoch + 1
        return losses[:done].tolist()

    def _kernel_args(self, loss_code, optim, acts=None):
        """The arguments shared by every call of plan_train / tiny_train."""
        model = self.model
        acts = self.acts if acts is None else acts
        eps = self.default_eps if self.eps is None else float(self.eps)
        if optim is None:    # gradient or predict: no step is taken, no state is read
            code, s1, s2, hp, t = 0, model.params[:0], model.params[:0], _NO_HYPER, 0.0
        else:
            slots = optim._slots("flat", model.params)
            code, s1, s2, hp, t = (optim.code, slots[0], slots[-1], optim.hyper(),
                                   float(optim.t))
        return (self.spec, self.a_off, model.params, model.grads), \
            (self.batch, loss_code, eps, code, s1, s2, hp, t, acts, self.g1, self.g2)

    def _plan_train(self, x, y, orders, loss_code, optim, losses, out, mode=K.nn.TRAIN,
                    acts=None, xb=None, decay=None):
        head, tail = self._kernel_args(loss_code, optim, acts)
        xb = self.xb if xb is None else xb
        if decay is None:
            decay = getattr(optim, "weight_decay", 0.0) if mode == K.nn.TRAIN else 0.0
        args = (mode, *head, x, y, orders, *tail, xb, self.yb, losses, out, float(decay),
                bool(self.mean))
        return K.ahead.call("plan", K.plan_train, args), losses

    def _tiny_train(self, x, y, orders, loss_code, optim, losses, out, acts=None):
        if acts is None:
            acts, views = self.tiny_acts, self.tiny_views
        else:   # predict's own buffer
            n_out, last = self.n_out, int(self.tiny_a_off[-1])
            views = (acts[last:last + self.batch * n_out].reshape(self.batch, n_out),) + \
                self.tiny_views[1:]
        (spec, _, params, grads), tail = self._kernel_args(loss_code, optim, acts)
        args = (spec, self.tiny_a_off, params, grads, x, y, orders, *tail, *views, losses,
                out)
        return K.ahead.call("tiny", K.tiny_train, args), losses

    def _train_by_steps(self, x, y, orders, loss_code, optim, stop=()):
        """As ``train``, one compiled call per step, with the update from Python (parallel
        for large models): the same kernels in the same order, so the same numbers."""
        model, n = self.model, len(x)
        slots = optim._slots("flat", model.params)
        natural = np.arange(n, dtype=np.int64)
        losses = []
        for order in orders:
            order = natural if order is None else order.astype(np.int64, copy=False)
            total, n_batches = 0.0, 0
            for lo in range(0, n, self.batch):
                total += self.gradient(x, y, order[lo:lo + self.batch], loss_code,
                                       getattr(optim, "weight_decay", 0.0))
                n_batches += 1
                if not math.isfinite(total):   # no step on a NaN / Inf loss (as plan_train)
                    return losses + [total]
                optim.t += 1
                K.optim_update(optim.code, model.params, model.grads, slots[0], slots[-1],
                               optim.hyper())
                if stop:   # Ctrl-C: weights and t describe the steps taken; the epoch is lost
                    return losses
            losses.append(total / n if self.mean else total / n_batches)
            if not np.isfinite(losses[-1]):
                break
        return losses

    def gradient(self, x, y, rows, loss_code, decay=0.0):
        """Gradients of the batch x[rows], y[rows] into ``model.grads``, no update;
        returns the batch loss. rows: int64 indices, at most ``batch`` of them. ``decay``:
        L2 on the weights, in the loss and the gradients (see plan_train)."""
        self.model._keep_held_gradients()
        losses = np.empty(1)
        rows = np.ascontiguousarray(rows, dtype=np.int64)[None, :]
        self._plan_train(x, y, rows, loss_code, None, losses, self._no_output,
                         mode=K.nn.GRADIENT, decay=decay)
        return float(losses[0])

    def predict(self, x):
        # Activation buffers of its own per call: predict is safe from many threads at once.
        n_out = self.n_out
        out = np.empty((len(x), n_out), self.model.dtype)
        no_y = np.empty((0, n_out), self.model.dtype)
        if self.tiny:   # the tiny kernel keeps the batch's rows in its acts buffer
            self._tiny_train(x, no_y, _NATURAL, K.MSE, None, np.empty(0), out,
                             acts=np.empty_like(self.tiny_acts))
        else:
            self._plan_train(x, no_y, _NATURAL, K.MSE, None, np.empty(0), out,
                             mode=K.nn.PREDICT, acts=np.empty_like(self.acts),
                             xb=np.empty_like(self.xb))
        return out


_NO_HYPER = np.zeros(6)
_NATURAL = np.empty((1, 0), np.int64)   # "no row order": the rows as they come


def _order_array(orders):
    """The row orders of a chunk of epochs as one (epochs, N) int64 array, or the
    natural order."""
    if not orders or orders[0] is None:
        return _NATURAL
    return np.stack(orders).astype(np.int64, copy=False)


def plan_for(model, batch):
    """A cached Plan for ``model`` and batches of ``batch`` rows, or None if not possible.
    ``model.build`` (or ``_sync``) must run first: it drops the cached plan whenever the
    layers or the flat buffers changed, so a cached plan for the same batch is current."""
    cached = getattr(model, "_plan", None)
    if cached is not None and cached.batch == batch and cached.params is model.params \
            and cached.acts.dtype == model.dtype:
        return cached
    spec = blocks(model)
    if spec is None:
        return None
    model._plan = Plan(model, spec, batch)
    return model._plan


def layerwise_epoch(model, x, y, order, batch_size, optim, loss, stop=()):
    """One epoch, layer by layer (any layers, loss and optimizer); returns the mean loss,
    or None when ``stop`` became truthy (Ctrl-C) before the epoch ended."""
    n = len(x)
    losses = []
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = (x, y) if batch_size >= n else (x[start:start + batch_size],
                                                     y[start:start + batch_size])
        else:
            rows = order[start:start + batch_size]
            xb, yb = x[rows], y[rows]
        value = _number(loss(model._forward(xb), yb), loss)
        losses.append(value + _penalty(optim, model, loss, len(xb)))
        if not np.isfinite(losses[-1]).all():   # no step on a NaN / Inf loss (as the plan)
            return float(np.sum(losses[-1]))
        optim(model, loss)
        if stop and start + batch_size < n:
            return None
    if getattr(loss, "reduction", "sum") == "mean":   # mean over samples
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        return float(np.dot(losses, sizes) / n)
    return float(np.mean(losses))


def _number(value, loss):
    """A batch's loss value: a real number (a one-element real array too), else a
    TypeError that names the loss (a custom loss returning a string, an array, ...)."""
    if isinstance(value, numbers.Real) or (isinstance(value, np.ndarray) and
                                           value.size == 1 and value.dtype.kind in "biuf"):
        return value
    raise TypeError(f"train: {type(loss).__name__}(pred, y) returned {value!r:.60} "
                    f"({type(value).__name__}); a loss must return one real number per batch")


def _penalty(optim, model, loss, rows):
    """The optimizer's weight-decay penalty as part of one batch's loss."""
    penalty = getattr(optim, "penalty", None)
    if penalty is None:
        return 0.0
    value = penalty(model)
    return value / rows if getattr(loss, "reduction", "sum") == "mean" else value


def epoch_runner(model, x, y, batch_size, optim, loss):
    """A function: list of row orders (one per epoch; None = natural) -> epoch losses."""
    model.build(x.shape[1])
    plan = plan_for(model, batch_size) if type(optim) in _OPTIMIZERS else None
    code = _loss_code(loss, model.layers[-1]) if plan is not None else None
    if plan is not None and code is not None:
        n_out = plan.n_out
        if y.shape[1] != n_out:  # the kernel does not check bounds: check here
            raise ValueError(f"{type(loss).__name__}: y has shape {y.shape} but the "
                             f"prediction has shape {(len(x), n_out)}; they must match "
                             f"(one-hot encode class labels, reshape a 1-D target with "
                             f"y.reshape(-1, 1))")
        mean = getattr(loss, "reduction", "sum") == "mean"
        eps = loss._eps_for(model.dtype)
        return lambda orders, stop=(): plan.train(x, y, orders, code, optim, mean, eps, stop)

    def layerwise(orders, stop=()):
        values = []
        for order in orders:
            value = layerwise_epoch(model, x, y, order, batch_size, optim, loss, stop)
            if value is None:   # Ctrl-C in the middle of the epoch
                break
            values.append(value)
            if not np.isfinite(value) or stop:
                break
        return values
    return layerwise
