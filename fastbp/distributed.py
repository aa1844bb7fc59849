"""Data parallelism over MPI: ``Model.train(x, y, ..., comm=MPI.COMM_WORLD)``.

Every rank holds the same model and its own shard of the rows. Before training, one
allgather checks the shards (shapes, dtype, finite values) so that bad input on one rank
raises the same error on every rank. Then rank 0's weights are broadcast, and each step
every rank computes the gradients of its own batch (the compiled plan's ``gradient``, or
layer by layer), ONE allreduce sums the flat gradient buffer and the batch loss, and every
rank applies the identical optimizer update: the weights stay bitwise identical.

Why the sum is right: every built-in loss's gradient is a sum over the batch's rows (MSE's
backward is ``2 e / O`` per row, summed; cross-entropies sum), so the summed gradient of N
ranks' batches of b rows IS the gradient of their union, one batch of N*b rows. The loss
values combine as that union batch's loss: summed (cross-entropies), or for MSE (a mean
over the batch) weighted by rows, ``sum(loss_r * rows_r) / sum(rows_r)``. What applies
to the union batch as a whole comes after the sum, once: a loss with reduction="mean"
divides by the union's rows (each rank sends its plain sum), and weight decay adds
``weight_decay * w`` to the summed weight gradients, and its penalty to the loss, as one
process does for that batch.

The allreduce runs in Python between compiled calls (mpi4py), not inside the compiled
epoch (numba-mpi): Numba cannot cache a function that calls numba-mpi, so that would put
a full compilation into every run; one Python call per step costs microseconds against
steps of milliseconds. mpi4py is imported here only when a communicator is given.
"""
import contextlib
import math
import sys
import time
import traceback

import numpy as np

from ._checks import as_batch, positive_int
from .loss import MSE
from .modules import Layer, Linear
from .plan import _OPTIMIZERS, _loss_code, plan_for


class DistributedInputError(ValueError):
    """The ranks' inputs are bad or disagree; raised with the same text on every rank."""


def _world(comm):
    """(rank, size) of an mpi4py communicator, with a clear error for anything else."""
    if not (hasattr(comm, "Get_rank") and hasattr(comm, "Allreduce")):
        raise TypeError(f"train: comm must be an mpi4py communicator such as "
                        f"mpi4py.MPI.COMM_WORLD, got {comm!r}")
    return comm.Get_rank(), comm.Get_size()


def rank_seed(seed, comm):
    """The shuffling generator of this rank: ``SeedSequence(seed).spawn(size)[rank]``, so
    ranks shuffle their shards independently and reproducibly (seed=None: fresh entropy)."""
    rank, size = _world(comm)
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(size)[rank])


def _describe(model, x, y, batch_size, validation_data):
    """This rank's side of the pre-training check: the error its inputs raise here (as
    text), or None, and the facts every rank must agree on."""
    facts = {"error": None, "dtype": model.dtype.name, "batch_size": batch_size}
    try:
        for name, arr in (("x", x), ("y", y)):
            facts[name] = as_batch(arr, model.dtype, "train", name).shape
        if facts["x"][0] != facts["y"][0]:
            raise ValueError(f"train: x has {facts['x'][0]} rows but y has {facts['y'][0]}; "
                             f"they must match")
        if batch_size is not None:
            positive_int(batch_size, "train", "batch_size")
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("train: validation_data must be a pair (x_val, y_val)")
            shapes = [as_batch(a, model.dtype, "train (validation_data)", name).shape
                      for a, name in zip(validation_data, ("x_val", "y_val"))]
            if shapes[0][1] != facts["x"][1] or shapes[1][1] != facts["y"][1]:
                raise ValueError(f"train: validation_data has shapes {shapes[0]} and "
                                 f"{shapes[1]}, but x has {facts['x'][1]} columns and y "
                                 f"has {facts['y'][1]}; they must match")
    except Exception as err:   # any error: raising here alone would hang the others
        facts["error"] = f"{type(err).__name__}: {err}"
    return facts


def check_shards(comm, model, x, y, batch_size, validation_data):
    """Before any other collective: each rank checks its own inputs, one allgather shares
    the results, and if any rank's input is bad or the ranks disagree (columns, dtype,
    batch size), every rank raises the same :class:`DistributedInputError`. Without
    this, a rank raising alone would leave the others waiting forever in a collective."""
    rank, size = _world(comm)
    everyone = comm.allgather(_describe(model, x, y, batch_size, validation_data))
    who = f"train (distributed over {size} ranks)"
    bad = [f"rank {r}: {facts['error']}" for r, facts in enumerate(everyone)
           if facts["error"]]
    if bad:
        raise DistributedInputError(f"{who}: bad input on {len(bad)} rank(s); every rank "
                                    f"stops. " + " | ".join(bad))
    for key, what, fix in (("dtype", "model dtype", "build the same Model on every rank"),
                           ("batch_size", "batch_size", "pass the same batch_size"),
                           ("x", "x columns", "shard one dataset: fastbp.data.shard"),
                           ("y", "y columns", "shard one dataset: fastbp.data.shard")):
        values = [f[key][1] if key in "xy" else f[key] for f in everyone]
        if any(v != values[0] for v in values):
            listing = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise DistributedInputError(f"{who}: the ranks disagree on the {what} "
                                        f"({listing}); {fix}")


@contextlib.contextmanager
def abort_on_error(comm):
    """Any exception inside (a custom layer raising on one rank, say) prints its traceback
    and ends the whole job with ``comm.Abort(1)``: the other ranks are, or soon will be,
    waiting in a collective that this rank will never join."""
    try:
        yield
    except Exception:
        rank, size = comm.Get_rank(), comm.Get_size()
        traceback.print_exc(file=sys.stderr)
        print(f"fastbp: rank {rank} of {size} failed during distributed training (see the "
              f"error above); aborting the MPI job so that no rank waits forever",
              file=sys.stderr, flush=True)
        # mpiexec forwards each rank's output asynchronously and drops what is still in
        # transit when the job is aborted (seen: a traceback cut after its first line):
        # give it a moment to pass the message on.
        time.sleep(0.5)
        comm.Abort(1)


def _custom_layers(model):
    """Layers with parameters that live outside the model's flat buffer."""
    flat = model.params is not None
    return [layer for layer in model.layers
            if isinstance(layer, Layer) and not (flat and isinstance(layer, Linear))]


class GradientExchange:
    """The one buffer summed across ranks each step:
    ``[model.grads | custom layers' w_gradient, b_gradient | loss, rows]``.

    The model's flat gradient buffer is re-pointed into it once (the Linear layers'
    gradient views with it), so the compiled gradient writes straight into the buffer
    that is sent; only custom layers' gradients are copied in and out.
    """

    def __init__(self, model, comm, mean_loss):
        from mpi4py import MPI   # only reached with a communicator
        self.model, self.comm, self.mean_loss = model, comm, mean_loss
        self.in_place, self.op = MPI.IN_PLACE, MPI.SUM
        n_flat = 0 if model.grads is None else len(model.grads)
        self.slots = []   # (layer, "w" or "b", shape, offset) of custom layers' gradients
        offset = n_flat
        for layer in _custom_layers(model):
            for name in ("w", "b"):
                shape = np.shape(getattr(layer, name))
                self.slots.append((layer, name, shape, offset))
                offset += int(np.prod(shape))
        self.buf = np.zeros(offset + 2, model.dtype)
        if n_flat:
            self._adopt_flat_grads(n_flat)
        self.seconds = 0.0   # time spent in the allreduce, for the benchmark

    def _adopt_flat_grads(self, n_flat):
        model = self.model
        grads = self.buf[:n_flat]
        grads[:] = model.grads
        start = 0
        for layer in model.linear_layers:
            stop = start + layer.n_params
            layer._bind(model.params[start:stop], grads[start:stop])
            start = stop
        model.grads = grads

    def sum(self, loss_value, rows):
        """Allreduce the gradients of this rank's batch of ``rows`` rows (and its loss);
        leaves the union batch's gradients in place and returns the union batch's loss."""
        buf = self.buf
        for layer, name, shape, offset in self.slots:
            grad = np.broadcast_to(getattr(layer, name + "_gradient"), shape)
            buf[offset:offset + grad.size] = grad.reshape(-1)
        buf[-2] = loss_value * rows if self.mean_loss else loss_value
        buf[-1] = rows
        started = time.perf_counter()
        self.comm.Allreduce(self.in_place, buf, op=self.op)
        self.seconds += time.perf_counter() - started
        for layer, name, shape, offset in self.slots:
            size = int(np.prod(shape))
            setattr(layer, name + "_gradient", buf[offset:offset + size].reshape(shape).copy())
        return (float(buf[-2] / buf[-1]) if self.mean_loss else float(buf[-2])), int(buf[-1])


def _parameter_layers(model):
    """Every layer with w and b (the Linear layers' are views into the flat buffers)."""
    return [layer for layer in model.layers if isinstance(layer, Layer)]


def _scale_gradients(model, factor):
    for layer in _parameter_layers(model):
        for name in ("w_gradient", "b_gradient"):
            setattr(layer, name, np.asarray(getattr(layer, name)) * factor)


def _regularize(model, decay, rows):
    """The summed gradients of the union batch become (g + decay * w) / rows for the
    weights and g / rows for the biases, as one process computes them for that batch."""
    for layer in _parameter_layers(model):
        dw = np.asarray(layer.w_gradient) + decay * np.asarray(layer.w)
        layer.w_gradient = dw / rows
        layer.b_gradient = np.asarray(layer.b_gradient) / rows


def broadcast_weights(model, comm):
    """Every rank takes rank 0's weights (flat buffer and custom layers' w, b)."""
    if model.params is not None:
        comm.Bcast(model.params, root=0)
    for layer in _custom_layers(model):
        for name in ("w", "b"):
            arr = np.ascontiguousarray(getattr(layer, name))
            comm.Bcast(arr, root=0)
            setattr(layer, name, arr)


def _build(model, x):
    """Create every weight now (a forward of one row when custom layers hide the widths),
    so that rank 0's can be broadcast before the first step."""
    model.build(x.shape[1])
    if model.params is None or _custom_layers(model):
        model._forward(x[:1])


def epoch_runner(model, x, y, batch_size, optim, loss, comm):
    """The distributed twin of ``plan.epoch_runner``: a function, list of row orders (one
    per epoch, each a permutation of this rank's rows; None = natural) -> epoch losses,
    identical on every rank. Call :func:`check_shards` first.

    Every rank runs the same number of steps per epoch: the smallest number of batches
    of any rank, ``min_r ceil(n_r / batch_size)``. Step s takes rows
    ``order[s * batch_size:(s + 1) * batch_size]`` of each rank's order; a rank with more
    rows leaves its last ones out of that epoch (other ones each epoch when shuffling).
    The function has ``exchange`` (its :class:`GradientExchange`), ``steps`` and ``rows``
    (the rows of all ranks that one epoch trains on).
    """
    if not callable(getattr(optim, "step", None)):
        raise TypeError(f"train: with comm=, the optimizer needs a step(model) method (the "
                        f"gradients are summed across ranks between the backward pass and "
                        f"the update); subclass fastbp.optim.Optimizer. Got {optim!r}")
    n = len(x)
    with abort_on_error(comm):
        _build(model, x)
    plan = plan_for(model, batch_size) if type(optim) in _OPTIMIZERS else None
    code = _loss_code(loss, model.layers[-1]) if plan is not None else None
    if plan is not None and code is not None and y.shape[1] != plan.n_out:
        raise ValueError(f"{type(loss).__name__}: y has shape {y.shape} but the prediction "
                         f"has shape {(n, plan.n_out)}; they must match")
    n_params = (0 if model.params is None else len(model.params)) + sum(
        np.size(getattr(layer, name)) for layer in _custom_layers(model) for name in "wb")
    everyone = comm.allgather((n_params, -(-n // batch_size), n))
    if any(p != everyone[0][0] for p, _, _ in everyone):   # else the buffers would not match
        raise DistributedInputError(f"train (distributed): the models differ in size across "
                                    f"ranks ({[p for p, _, _ in everyone]} parameters); build "
                                    f"the same Model on every rank")
    steps = min(b for _, b, _ in everyone)
    rows = sum(min(n_r, steps * batch_size) for _, _, n_r in everyone)   # per epoch
    broadcast_weights(model, comm)
    mean = getattr(loss, "reduction", "sum") == "mean"
    decay = float(getattr(optim, "weight_decay", 0.0))
    exchange = GradientExchange(model, comm, mean_loss=isinstance(loss, MSE))
    natural = np.arange(n, dtype=np.int64)
    if plan is not None:   # plain sums from every rank, with the loss's own clip
        plan.mean, plan.eps = False, None if code is None else loss._eps_for(model.dtype)

    def batch_gradient(rows):
        """This rank's batch loss and gradients; sums, never means over its rows (MSE,
        itself a mean over the batch, is weighted by the rows in the exchange)."""
        if plan is not None and code is not None:
            return plan.gradient(x, y, rows, code)
        value = loss(model._forward(x[rows]), y[rows])
        model.backward(loss)
        if mean:   # the loss divided both by this rank's rows: back to sums
            _scale_gradients(model, len(rows))
            value *= len(rows)
        return value

    def run(orders, stop=()):   # ranks stop together: Ctrl-C waits for the chunk's end
        values = []
        with abort_on_error(comm):
            for order in orders:
                order = natural if order is None else order.astype(np.int64, copy=False)
                total, union_rows = 0.0, 0
                for s in range(steps):
                    rows = order[s * batch_size:(s + 1) * batch_size]
                    value, n_union = exchange.sum(batch_gradient(rows), len(rows))
                    penalty = optim.penalty(model) if decay else 0.0   # at the weights used
                    if not math.isfinite(value + penalty):   # the same on every rank:
                        values.append(value + penalty)       # no step on a NaN / Inf loss
                        return values
                    if decay or mean:
                        _regularize(model, decay, n_union if mean else 1)
                    optim.step(model)
                    # The union batch's loss as one process computes it: for "mean", its
                    # sum and penalty, divided by the epoch's rows at the end.
                    total += value + penalty
                    union_rows += n_union
                values.append(total / union_rows if mean else total / steps)
                if not np.isfinite(values[-1]):   # the same on every rank: a joint stop
                    break
        return values
    run.exchange, run.steps, run.rows = exchange, steps, rows
    return run
