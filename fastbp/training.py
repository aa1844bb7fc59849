"""The training loop behind Model.train / predict / evaluate: epochs in chunks, the
progress bar, validation, History. Works on any object with Model's attributes
(``layers``, ``dtype``, ``build``, ``_forward``); ``fastbp.model`` sits above it."""
import _signal
import contextlib
import copy
import functools
import itertools
import math
import sys
import threading
import time
import warnings

import numpy as np

from . import distributed
from ._checks import as_batch, positive_int
from .compile_log import compile_notice
from .loss import MSE, Loss
from .optim import SGD, Optimizer
from .plan import epoch_runner, plan_for

# A forward pass through custom layers keeps activations on the layers: predictions that
# cannot use the compiled plan run one at a time.
_FORWARD_LOCK = threading.Lock()


class History(list):
    """Per-epoch training loss (a list, as the original returned), plus ``history``:
    a dict with "loss" and, with validation data, "val_loss" and "val_accuracy"."""

    def __init__(self):
        super().__init__()
        self.history = {"loss": self}


def _pick(value, alias, name, alias_name, default):
    if value is not None and alias is not None:
        raise TypeError(f"train: pass either {name}= or {alias_name}=, not both")
    value = value if value is not None else alias
    return default() if value is None else value


def _xy(model, x, y, who):
    x = as_batch(x, model.dtype, who, "x")
    y = as_batch(y, model.dtype, who, "y")
    if len(x) != len(y):
        raise ValueError(f"{who}: x has {len(x)} rows but y has {len(y)}; they must match")
    return x, y


def accuracy(pred, y):
    """Fraction of rows classified right: argmax for several outputs, 0.5 threshold for one."""
    if pred.shape[1] == 1:
        return float(np.mean((pred > 0.5) == (y > 0.5)))
    return float(np.mean(pred.argmax(1) == y.argmax(1)))


def per_sample(loss, values, n_rows, n_batches=1):
    """``values``, each a mean of ``n_batches`` batch losses over ``n_rows`` rows, as means
    over samples of the per-sample loss (a list). Summed losses (cross-entropies,
    ``loss.summed``) are divided by the rows; MSE is already a mean per sample (a mean of
    batch means, exact when the batches have equal size). One call per chunk of epochs."""
    if getattr(loss, "summed", False):
        return [value * n_batches / n_rows for value in values]
    return list(values)


class interrupts_deferred:
    """Hold Ctrl-C (SIGINT) back while a chunk of epochs and its bookkeeping run, then raise
    KeyboardInterrupt: weights, optimizer state, ``optim.t`` and the History then describe
    the same completed steps. A second Ctrl-C interrupts at once (a custom layer that
    hangs). Only in the main thread, and only over Python's default handler.

    ``with interrupts_deferred() as caught``: ``caught`` is a list that a Ctrl-C fills; a
    runner that sees it filled stops at the next step. A class, and ``_signal`` (the
    functions behind ``signal``, without its conversions to enums): a short ``train``
    call pays for this twice per chunk."""

    def __enter__(self):
        caught = self.caught = []
        self.active = _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler
        if self.active:
            def hold(signum, frame):
                if caught:
                    raise KeyboardInterrupt
                caught.append(signum)
            try:
                _signal.signal(_signal.SIGINT, hold)
            except ValueError:   # not the main thread: signals are not ours to take
                self.active = False
        return caught

    def __exit__(self, *exc):
        if self.active:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            if self.caught and exc[0] is None:
                raise KeyboardInterrupt
        return False


def _instance(value, who, example, caller="train"):
    """Refuse a class given where an instance is needed (``optim=optim.SGD``)."""
    if isinstance(value, type):
        raise TypeError(f"{caller}: {who} must be an instance, not the class "
                        f"{value.__name__}; pass an instance, e.g. {example}")
    return value


class _NoBar:
    """Stands in for the progress bar when verbose=False."""

    def update(self, n):
        pass


_NO_PROGRESS = contextlib.nullcontext(_NoBar())   # holds no state: one for every call


def fit(model, x, y, *, optim, loss, epochs, batch_size, shuffle, seed, validation_data,
        verbose, loss_fn, optimizer, comm=None):
    """Model.train: one training call at a time per model (``_fit`` does the work).
    Two threads training one model at once would interleave their updates on the same
    weights and buffers: the second is refused instead."""
    key = id(model)
    with _TRAINING_LOCK:
        if key in _TRAINING:
            raise RuntimeError(f"train: {type(model).__name__} is already being trained "
                               f"(by another thread, or by a call this one is inside); "
                               f"train a model from one thread at a time, and give each "
                               f"thread its own model")
        _TRAINING.add(key)
    try:
        return _fit(model, x, y, optim, loss, epochs, batch_size, shuffle, seed,
                    validation_data, verbose, loss_fn, optimizer, comm)
    finally:
        _TRAINING.discard(key)


# The ids of the models being trained right now (see fit).
_TRAINING = set()
_TRAINING_LOCK = threading.Lock()


def _fit(model, x, y, optim, loss, epochs, batch_size, shuffle, seed, validation_data,
         verbose, loss_fn, optimizer, comm):
    if optim is None or optimizer is not None:
        optim = _pick(optim, optimizer, "optim", "optimizer", SGD)
    if loss is None or loss_fn is not None:
        loss = _pick(loss, loss_fn, "loss", "loss_fn", MSE)
    if not (isinstance(optim, Optimizer) and isinstance(loss, Loss)):   # both built-in: valid
        _check_custom(optim, loss)
    if type(epochs) is not int or epochs < 1:
        epochs = positive_int(epochs, "train", "epochs")
    if comm is not None:   # all ranks agree on the inputs before anyone can raise alone
        distributed.check_shards(comm, model, x, y, batch_size, validation_data)
        verbose = verbose and comm.Get_rank() == 0
    x, y = _xy(model, x, y, "train")
    n = len(x)
    batch_size = n if batch_size is None else min(positive_int(batch_size, "train",
                                                               "batch_size"), n)
    if validation_data is not None:
        if len(validation_data) != 2:
            raise ValueError("train: validation_data must be a pair (x_val, y_val)")
        x_val, y_val = _xy(model, *validation_data, "train (validation_data)")
        if x_val.shape[1] != x.shape[1] or y_val.shape[1] != y.shape[1]:
            raise ValueError(f"train: validation_data has shapes {x_val.shape} and "
                             f"{y_val.shape}, but x has {x.shape[1]} columns and y has "
                             f"{y.shape[1]}; they must match")
        validation_data = (x_val, y_val)
    if isinstance(optim, Optimizer):
        optim._bind(model)  # refuse another model's optimizer before any step
    history = model.history = History()  # kept on the model: still there after Ctrl-C
    if validation_data is not None:
        history.history.update(val_loss=[], val_accuracy=[])
    # The epoch loss per sample: over every rank's rows and steps when distributed.
    if comm is None:
        run_epochs = epoch_runner(model, x, y, batch_size, optim, loss)
        rows_per_epoch, n_batches = n, -(-n // batch_size)
    else:
        run_epochs = distributed.epoch_runner(model, x, y, batch_size, optim, loss, comm)
        rows_per_epoch, n_batches = run_epochs.rows, run_epochs.steps
    shuffled = shuffle and batch_size < n
    rng = _shuffling_generator(seed) if shuffled else None
    if shuffled and comm is not None:
        rng = distributed.rank_seed(seed, comm)
    # Epochs run in chunks (one compiled call each when the plan applies), sized to take
    # about `target` seconds: Python gets control back that often, for the progress bar
    # and for Ctrl-C (compiled code cannot be interrupted). Validation needs every epoch;
    # the row orders of a chunk take at most ~8 MB.
    most = max(1, min(epochs, 1_000_000 // n)) if shuffled else epochs
    target = 0.1 if verbose else 1.0
    chunk = 1
    t_start = getattr(optim, "t", None)   # no step taken yet: see _diverged
    with (_progress(epochs) if verbose else _NO_PROGRESS) as bar:
        while len(history) < epochs:
            with interrupts_deferred() as caught:
                elapsed = _chunk(model, history, lambda orders: run_epochs(orders, caught),
                                 chunk, epochs, shuffled, rng, n, rows_per_epoch, n_batches,
                                 optim, loss, validation_data, bar, verbose, t_start)
            if validation_data is None:
                chunk = int(min(most, max(1, chunk * target / max(elapsed, 1e-6))))
    return history


@contextlib.contextmanager
def _progress(epochs):
    """The progress bar over epochs, and above it, on a first run, the notice that the
    kernels are compiling (instead of a silent first epoch)."""
    tqdm = _tqdm()
    with tqdm(total=epochs, unit="epoch", desc="train", dynamic_ncols=True) as bar, \
            compile_notice(True, write=lambda text: tqdm.write(text, file=sys.stderr)):
        yield bar


@functools.cache
def _tqdm():
    """tqdm's bar class, imported on the first bar (once per process): a notebook bar in Jupyter, else the
    console bar. As ``tqdm.auto`` picks it (its warning silenced the same way), without
    the asyncio mixin that ``tqdm.auto`` adds: importing asyncio took 24-35 ms of every
    process (``python -X importtime``, 2026-11-28), and a run without a bar pays none."""
    from tqdm.std import TqdmExperimentalWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=TqdmExperimentalWarning)
        from tqdm.autonotebook import tqdm
    return tqdm


def _check_custom(optim, loss):
    """Refuse an optimizer or loss that cannot train (a class, or no way to call it)."""
    _instance(optim, "optim", "optim.SGD(lr=0.01)")
    _instance(loss, "loss", "loss.MSE()")
    if not callable(optim):
        raise TypeError(f"train: optim must be an optimizer object such as "
                        f"optim.SGD(lr=0.1), got {optim!r}")
    if not callable(loss) or not hasattr(loss, "backward"):
        raise TypeError(f"train: loss must be a loss object such as loss.MSE(), got {loss!r}")


def _shuffling_generator(seed):
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as error:   # NumPy's message does not say which call
        raise type(error)(f"train: seed must be None, an integer >= 0, or a NumPy "
                          f"Generator or SeedSequence, got {seed!r} ({error})") from None


def _chunk(model, history, run_epochs, chunk, epochs, shuffled, rng, n, rows_per_epoch,
           n_batches, optim, loss, validation_data, bar, verbose, t_start):
    """Run up to ``chunk`` epochs and record them (loss per sample, validation, bar);
    returns the seconds the epochs took."""
    count = min(chunk, epochs - len(history))
    orders = [rng.permutation(n) for _ in range(count)] if shuffled else [None] * count
    started = time.perf_counter()
    values = run_epochs(orders)
    elapsed = time.perf_counter() - started
    finite = values if all(map(math.isfinite, values)) else \
        list(itertools.takewhile(math.isfinite, values))
    history.extend(per_sample(loss, finite, rows_per_epoch, n_batches))
    if len(finite) < len(values):
        _diverged(model, values[len(finite)], len(history) + 1, optim, t_start)
    # Ctrl-C inside the chunk's first epoch (nothing to record), or nothing to show or add
    if not values or not (verbose or validation_data is not None):
        return elapsed
    postfix = {"loss": history[-1]}
    if validation_data is not None:
        x_val, y_val = validation_data
        pred = predict(model, x_val, None)
        postfix["val_loss"] = per_sample(loss, [float(loss(pred, y_val))], len(x_val))[0]
        history.history["val_loss"].append(postfix["val_loss"])
        history.history["val_accuracy"].append(accuracy(pred, y_val))
    if verbose:
        bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    bar.update(len(values))
    return elapsed


def _diverged(model, value, epoch, optim, t_start):
    """The FloatingPointError of a NaN or Inf loss. Every path stops before the step
    whose loss that is, so the weights are those the loss was computed at; when no step
    was taken at all, the learning rate cannot be the cause."""
    if t_start is not None and getattr(optim, "t", None) == t_start:
        raise FloatingPointError(
            f"train: the loss is {value} at the weights train started from (epoch "
            f"{epoch}, before any update), so nothing was changed; this is not a "
            f"learning-rate problem. Check x and y for values whose squares overflow "
            f"{model.dtype} (max {np.finfo(model.dtype).max:.3g}), and the loss's eps")
    wider = ", or use float64" if model.dtype == np.float32 else ""
    raise FloatingPointError(
        f"train: the loss became {value} at epoch {epoch} (optimizer {optim!r}); training "
        f"diverged. The step with that loss was not taken: the weights are those of the "
        f"step before. Lower the learning rate, scale the inputs{wider}")


def predict(model, x, batch_size=None):
    x = as_batch(x, model.dtype, "predict", "x")
    batch_size = len(x) if batch_size is None else positive_int(batch_size, "predict",
                                                                "batch_size")
    model.build(x.shape[1])
    plan = plan_for(model, min(batch_size, len(x)))
    if plan is not None:
        return plan.predict(x)
    with _FORWARD_LOCK:
        if batch_size >= len(x):
            return model._forward(x)
        return np.concatenate([model._forward(x[i:i + batch_size])
                               for i in range(0, len(x), batch_size)])


def evaluate(model, x, y, loss=None):
    x, y = _xy(model, x, y, "evaluate")
    # A copy of the loss: it keeps its last inputs, and evaluate may run in many threads.
    if loss is None:
        loss = MSE()
    else:
        loss = copy.copy(_instance(loss, "loss", "loss.MSE()", caller="evaluate"))
    return float(loss(predict(model, x), y))
