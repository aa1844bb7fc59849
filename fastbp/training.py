"""The training loop behind Model.train / predict / evaluate: epochs in chunks, the
progress bar, validation, History. Works on any object with Model's attributes
(``layers``, ``dtype``, ``build``, ``_forward``); ``fastbp.model`` sits above it."""
import contextlib
import math
import time

import numpy as np
from tqdm.auto import tqdm

from . import distributed
from ._checks import as_batch, positive_int
from .loss import MSE
from .optim import SGD
from .plan import epoch_runner, plan_for


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


class _NoBar:
    """Stands in for the progress bar when verbose=False."""

    def update(self, n):
        pass


def fit(model, x, y, *, optim, loss, epochs, batch_size, shuffle, seed, validation_data,
        verbose, loss_fn, optimizer, comm=None):
    optim = _pick(optim, optimizer, "optim", "optimizer", SGD)
    loss = _pick(loss, loss_fn, "loss", "loss_fn", MSE)
    if not callable(optim):
        raise TypeError(f"train: optim must be an optimizer object such as "
                        f"optim.SGD(lr=0.1), got {optim!r}")
    if not callable(loss) or not hasattr(loss, "backward"):
        raise TypeError(f"train: loss must be a loss object such as loss.MSE(), got {loss!r}")
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
    history = History()
    if validation_data is not None:
        history.history.update(val_loss=[], val_accuracy=[])
    if comm is None:
        run_epochs = epoch_runner(model, x, y, batch_size, optim, loss)
    else:
        run_epochs = distributed.epoch_runner(model, x, y, batch_size, optim, loss, comm)
    shuffled = shuffle and batch_size < n
    rng = np.random.default_rng(seed) if shuffled else None
    if shuffled and comm is not None:
        rng = distributed.rank_seed(seed, comm)
    # Epochs run in chunks (one compiled call each when the plan applies), sized to take
    # about `target` seconds: Python gets control back that often, for the progress bar
    # and for Ctrl-C (compiled code cannot be interrupted). Validation needs every epoch;
    # the row orders of a chunk take at most ~8 MB.
    most = max(1, min(epochs, 1_000_000 // n)) if shuffled else epochs
    target = 0.1 if verbose else 1.0
    chunk = 1
    bar_context = tqdm(total=epochs, unit="epoch", desc="train", dynamic_ncols=True) \
        if verbose else contextlib.nullcontext(_NoBar())
    with bar_context as bar:
        while len(history) < epochs:
            count = min(chunk, epochs - len(history))
            orders = [rng.permutation(n) if shuffled else None for _ in range(count)]
            started = time.perf_counter()
            values = run_epochs(orders)
            elapsed = time.perf_counter() - started
            for value in values:
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"train: the loss became {value} at epoch {len(history) + 1} "
                        f"(optimizer {optim!r}); training diverged. Lower the learning "
                        f"rate, scale the inputs, or use float64")
                history.append(value)
            postfix = {"loss": history[-1]}
            if validation_data is not None:
                pred = predict(model, x_val, None)
                postfix["val_loss"] = float(loss(pred, y_val))
                history.history["val_loss"].append(postfix["val_loss"])
                history.history["val_accuracy"].append(accuracy(pred, y_val))
            else:
                chunk = int(min(most, max(1, chunk * target / max(elapsed, 1e-6))))
            if verbose:
                bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            bar.update(len(values))
    return history


def predict(model, x, batch_size=None):
    x = as_batch(x, model.dtype, "predict", "x")
    batch_size = len(x) if batch_size is None else positive_int(batch_size, "predict",
                                                                "batch_size")
    model.build(x.shape[1])
    plan = plan_for(model, min(batch_size, len(x)))
    if plan is not None:
        return plan.predict(x)
    if batch_size >= len(x):
        return model._forward(x)
    return np.concatenate([model._forward(x[i:i + batch_size])
                           for i in range(0, len(x), batch_size)])


def evaluate(model, x, y, loss=None):
    x, y = _xy(model, x, y, "evaluate")
    loss = MSE() if loss is None else loss
    return float(loss(model._forward(x), y))
