"""How an epoch runs: one compiled call when every part is built-in, else layer by layer.

A compiled plan covers models made only of built-in layers (Linear, Relu, Sigmoid, Tanh,
Softmax), trained with a built-in loss and optimizer. It runs whole epochs (batches,
shuffling, forward, backward, update, loss) inside ``fastbp.kernels.plan_train``, with
every buffer allocated once. Anything custom falls back to the layer-by-layer path,
which calls the same kernels in the same order, so both give the same numbers.
"""
import numpy as np

from . import kernels as K
from . import loss as L
from . import optim as O
from .modules import Identity, Linear, Relu, Sigmoid, Softmax, Tanh
from .pairs import pair_code
from .reference.loss import clip_eps

_ACT_CODES = {Relu: K.RELU, Sigmoid: K.SIGMOID, Tanh: K.TANH, Softmax: K.SOFTMAX}
_LOSS_CODES = {L.MSE: K.MSE, L.CategoricalCrossentropy: K.CCE, L.BinaryCrossentropy: K.BCE}
_OPTIMIZERS = (O.SGD, O.Momentum, O.RMSProp, O.Adam)
_ACT_CODES[Identity] = K.IDENTITY
_LOSS_CODES[L.SquaredError] = K.HALF_SE
_OPTIMIZERS += (O.Nesterov, O.AdamLR)


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
    """Preallocated buffers for batches of at most ``batch`` rows, and the two compiled
    entry points (train epochs, predict)."""

    def __init__(self, model, spec, batch):
        self.model, self.spec, self.batch = model, spec, batch
        dtype = model.dtype
        sizes = batch * spec[:, 3]
        self.a_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.acts = np.empty(int(sizes.sum()), dtype)
        widest = int(max(spec[:, 2].max(), spec[:, 3].max()))
        self.g1, self.g2 = np.empty(batch * widest, dtype), np.empty(batch * widest, dtype)
        self.xb = np.empty(batch * int(spec[0, 2]), dtype)
        self.yb = np.empty(batch * int(spec[-1, 3]), dtype)

    def train(self, x, y, orders, loss_code, optim, mean=False, eps=None):
        """Run one epoch per entry of ``orders`` (None = natural order); returns the epoch
        losses, stopping after the first that is NaN or Inf. ``mean``: the loss has
        reduction="mean"; ``eps``: the loss's clip (None: the dtype's default)."""
        model = self.model
        if orders[0] is None:
            order_arr = np.empty((0, 0), np.int64)
        else:
            order_arr = np.stack(orders).astype(np.int64, copy=False)
        losses = np.empty(len(orders))
        slots = optim._slots("flat", model.params)
        hp = optim.hyper()
        done = K.plan_train(self.spec, self.a_off, model.params, model.grads, x, y, order_arr,
                            self.batch, loss_code,
                            clip_eps(model.dtype) if eps is None else eps, optim.code,
                            slots[0], slots[-1], hp, float(optim.t), self.acts, self.g1,
                            self.g2, self.xb, self.yb, losses,
                            getattr(optim, "weight_decay", 0.0), mean)
        optim.t += done * (-(-len(x) // self.batch))
        return losses[:done].tolist()

    def predict(self, x):
        out = np.empty((len(x), int(self.spec[-1, 3])), self.model.dtype)
        K.plan_predict(self.spec, self.a_off, self.model.params, x, self.batch, self.acts,
                       self.xb, out)
        return out


def plan_for(model, batch):
    """A cached Plan for ``model`` and batches of ``batch`` rows, or None if not possible."""
    spec = blocks(model)
    if spec is None:
        return None
    cached = getattr(model, "_plan", None)
    if cached is not None and cached.batch == batch and np.array_equal(cached.spec, spec) \
            and cached.acts.dtype == model.dtype:
        return cached
    model._plan = Plan(model, spec, batch)
    return model._plan


def layerwise_epoch(model, x, y, order, batch_size, optim, loss):
    """One epoch, layer by layer (any layers, loss and optimizer); returns the mean loss."""
    n = len(x)
    losses = []
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = (x, y) if batch_size >= n else (x[start:start + batch_size],
                                                     y[start:start + batch_size])
        else:
            rows = order[start:start + batch_size]
            xb, yb = x[rows], y[rows]
        losses.append(loss(model._forward(xb), yb) + _penalty(optim, model, loss, len(xb)))
        optim(model, loss)
    if getattr(loss, "reduction", "sum") == "mean":   # mean over samples
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        return float(np.dot(losses, sizes) / n)
    return float(np.mean(losses))


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
        n_out = int(plan.spec[-1, 3])
        if y.shape[1] != n_out:  # the kernel does not check bounds: check here
            raise ValueError(f"{type(loss).__name__}: y has shape {y.shape} but the "
                             f"prediction has shape {(len(x), n_out)}; they must match "
                             f"(one-hot encode class labels, reshape a 1-D target with "
                             f"y.reshape(-1, 1))")
        mean = getattr(loss, "reduction", "sum") == "mean"
        eps = getattr(loss, "eps", None)
        return lambda orders: plan.train(x, y, orders, code, optim, mean, eps)

    def layerwise(orders):
        values = []
        for order in orders:
            values.append(layerwise_epoch(model, x, y, order, batch_size, optim, loss))
            if not np.isfinite(values[-1]):
                break
        return values
    return layerwise
