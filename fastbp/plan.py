"""How an epoch runs: one compiled call when every part is built-in, else layer by layer.

A compiled plan covers models made only of built-in layers (Linear, Relu, Sigmoid, Tanh,
Softmax), trained with a built-in loss and optimizer. It runs whole epochs (batches,
shuffling, forward, backward, update, loss) inside ``fastbp.kernels.plan_train``, with
every buffer allocated once. Anything custom falls back to the layer-by-layer path,
which calls the same kernels in the same order, so both give the same numbers.
"""
import numpy as np

from . import kernels as K
from .layers import Linear, Relu, Sigmoid, Softmax, Tanh
from .reference.loss import clip_eps

_ACT_CODES = {Relu: K.RELU, Sigmoid: K.SIGMOID, Tanh: K.TANH, Softmax: K.SOFTMAX}


def _builtin_optimizer(optim):
    from . import optim as O
    return type(optim) in (O.SGD, O.Momentum, O.RMSProp, O.Adam)


def _loss_code(loss, last_layer):
    from . import loss as L
    kind = type(loss)
    if kind is L.MSE:
        return K.MSE
    if kind is L.CategoricalCrossentropy:
        return K.SOFTMAX_CCE if type(last_layer) is Softmax else K.CCE
    if kind is L.BinaryCrossentropy:
        return K.SIGMOID_BCE if type(last_layer) is Sigmoid else K.BCE
    return None


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

    def train(self, x, y, orders, loss_code, optim):
        """Run one epoch per entry of ``orders`` (None = natural order); returns the epoch
        losses, stopping after the first that is NaN or Inf."""
        model = self.model
        if orders[0] is None:
            order_arr = np.empty((0, 0), np.int64)
        else:
            order_arr = np.stack(orders).astype(np.int64, copy=False)
        losses = np.empty(len(orders))
        slots = optim._slots("flat", model.params)
        hp = optim.hyper()
        done = K.plan_train(self.spec, self.a_off, model.params, model.grads, x, y, order_arr,
                            self.batch, loss_code, clip_eps(model.dtype), optim.code,
                            slots[0], slots[-1], hp, float(optim.t), self.acts, self.g1,
                            self.g2, self.xb, self.yb, losses)
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


def epoch_runner(model, x, y, batch_size, optim, loss):
    """A function: list of row orders (one per epoch; None = natural) -> epoch losses."""
    from .training import layerwise_epoch
    model.build(x.shape[1])
    plan = plan_for(model, batch_size) if _builtin_optimizer(optim) else None
    code = _loss_code(loss, model.layers[-1]) if plan is not None else None
    if plan is not None and code is not None:
        n_out = int(plan.spec[-1, 3])
        if y.shape[1] != n_out:  # the kernel does not check bounds: check here
            raise ValueError(f"{type(loss).__name__}: y has shape {y.shape} but the "
                             f"prediction has shape {(len(x), n_out)}; they must match "
                             f"(one-hot encode class labels, reshape a 1-D target with "
                             f"y.reshape(-1, 1))")
        return lambda orders: plan.train(x, y, orders, code, optim)

    def layerwise(orders):
        values = []
        for order in orders:
            values.append(layerwise_epoch(model, x, y, order, batch_size, optim, loss))
            if not np.isfinite(values[-1]):
                break
        return values
    return layerwise
