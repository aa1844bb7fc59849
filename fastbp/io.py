"""Saving and loading models as .npz files: architecture as JSON, weights as arrays.

No pickle anywhere: files are read with ``allow_pickle=False`` and every array is checked
against the architecture before a model is built. Writes go to a temporary file in the
same folder, are flushed to disk, then renamed over the target, so a crash mid-save
leaves the previous file intact.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from . import modules as L
from . import optim as O
from .model import Model

FORMAT = "fastbp-model"
VERSION = 1
_ACTIVATIONS = {cls.__name__: cls for cls in (L.Relu, L.Sigmoid, L.Tanh, L.Softmax)}
_OPTIMIZERS = {cls.__name__: cls for cls in (O.SGD, O.Momentum, O.RMSProp, O.Adam)}
_HYPER = {"SGD": ("lr",), "Momentum": ("lr", "beta"), "RMSProp": ("lr", "alpha", "eps"),
          "Adam": ("lr", "beta1", "beta2", "eps")}
# Added with the scikit-learn estimators (issue 14); files without weight_decay load as 0.
_ACTIVATIONS["Identity"] = L.Identity
_OPTIMIZERS.update(Nesterov=O.Nesterov, AdamLR=O.AdamLR)
_HYPER.update(Nesterov=_HYPER["Momentum"], AdamLR=_HYPER["Adam"])
_HYPER = {name: names + ("weight_decay",) for name, names in _HYPER.items()}


class ModelFileError(ValueError):
    """A file that is not a complete, consistent fastbp model file."""


def _architecture(model):
    spec = []
    for i, layer in enumerate(model.layers):
        if type(layer) is L.Linear:
            if not layer.initialized:
                raise ValueError(f"save: layer {i} ({layer!r}) has no weights yet; call the "
                                 f"model on data (or train it) before saving")
            spec.append({"type": "Linear", "units": layer.units, "n_in": layer.n_in,
                         "init": layer.init})
        elif type(layer).__name__ in _ACTIVATIONS and type(layer) is _ACTIVATIONS[
                type(layer).__name__]:
            spec.append({"type": type(layer).__name__})
        else:
            raise TypeError(f"save: layer {i} ({type(layer).__name__}) is not a built-in "
                            f"fastbp layer; a model file holds no code, so custom layers "
                            f"cannot be saved (save their arrays with np.savez yourself)")
    return spec


def _state_key(key):
    return key if isinstance(key, str) else f"{key[0]}.{key[1]}"


def save(model, path, optimizer=None):
    """Write ``model`` (and ``optimizer``'s state, to resume training exactly) to ``path``.

    The file is a NumPy .npz archive, written exactly at ``path`` (no suffix is added).
    """
    meta = {"format": FORMAT, "version": VERSION, "dtype": model.dtype.name,
            "layers": _architecture(model)}
    arrays = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, L.Linear):
            arrays[f"layer{i}.w"], arrays[f"layer{i}.b"] = layer.w, layer.b
    if optimizer is not None:
        name = type(optimizer).__name__
        if name not in _OPTIMIZERS:
            raise TypeError(f"save: only built-in optimizers can be saved, got {name}")
        meta["optimizer"] = {"type": name, "t": optimizer.t,
                             "hyper": {k: getattr(optimizer, k) for k in _HYPER[name]},
                             "state": {_state_key(k): len(v) for k, v in
                                       optimizer.state.items()}}
        for key, slots in optimizer.state.items():
            for j, arr in enumerate(slots):
                arrays[f"optim.{_state_key(key)}.{j}"] = arr
    arrays["__fastbp__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{path} is a single .npy array, not a fastbp model")
            arrays = {k: data[k] for k in data.files}
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise ModelFileError(f"{path} holds pickled data; fastbp never loads pickle (it "
                                 f"can run code). Re-save the model with fastbp.save") from e
        raise ModelFileError(f"{path} is not a readable fastbp model file ({e})") from e
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise ModelFileError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}); "
                             f"it is not a complete fastbp model file") from e
    if "__fastbp__" not in arrays:
        raise ModelFileError(f"{path} is an .npz archive but not a fastbp model file "
                             f"(no __fastbp__ entry)")
    try:
        meta = json.loads(arrays.pop("__fastbp__").tobytes().decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: the architecture entry is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise ModelFileError(f"{path}: format version {meta.get('version')} is not "
                             f"supported (this fastbp reads version {VERSION})")
    return meta, arrays


def _take(arrays, name, shape, dtype, path):
    if name not in arrays:
        raise ModelFileError(f"{path}: array {name!r} is missing")
    arr = arrays[name]
    if arr.shape != tuple(shape) or arr.dtype != dtype:
        raise ModelFileError(f"{path}: array {name!r} has shape {arr.shape} and dtype "
                             f"{arr.dtype}, the architecture needs {tuple(shape)} {dtype}")
    return arr


def load(path, optimizer=None):
    """Read a model written by :func:`save`; restore ``optimizer``'s state if given.

    Raises ModelFileError (a ValueError) for pickle, truncated, corrupted or inconsistent
    files. The model comes back in the dtype it was saved in.
    """
    path = os.fspath(path)
    meta, arrays = _read(path)
    try:
        dtype = np.dtype(meta["dtype"])
        if dtype not in (np.float32, np.float64):
            raise ModelFileError(f"{path}: dtype {dtype} is not float32 or float64")
        stack = []
        for i, spec in enumerate(meta["layers"]):
            kind = spec["type"]
            if kind == "Linear":
                layer = L.Linear(int(spec["units"]), init=spec.get("init", "uniform"))
                n_in = int(spec["n_in"])
                layer.allocate(n_in, dtype)
                layer.w = _take(arrays, f"layer{i}.w", (n_in, layer.units), dtype, path)
                layer.b = _take(arrays, f"layer{i}.b", (layer.units,), dtype, path)
            elif kind in _ACTIVATIONS:
                layer = _ACTIVATIONS[kind]()
            else:
                raise ModelFileError(f"{path}: unknown layer type {kind!r}")
            stack.append(layer)
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: malformed architecture ({type(e).__name__}: {e})") \
            from e
    model = Model(stack, dtype=dtype)
    model._flatten()
    if optimizer is not None:
        _restore_optimizer(optimizer, meta, arrays, path)
    return model


def _restore_optimizer(optimizer, meta, arrays, path):
    saved = meta.get("optimizer")
    if saved is None:
        raise ModelFileError(f"{path} holds no optimizer state; save with "
                             f"fastbp.save(model, path, optimizer)")
    if saved["type"] != type(optimizer).__name__:
        raise TypeError(f"load: the file holds {saved['type']} state, not "
                        f"{type(optimizer).__name__}")
    state = {}
    for key, n_slots in saved["state"].items():
        slots = []
        for j in range(n_slots):
            name = f"optim.{key}.{j}"
            if name not in arrays:
                raise ModelFileError(f"{path}: optimizer array {name!r} is missing")
            slots.append(arrays[name].copy())
        state[key if key == "flat" else (int(key.split(".")[0]), key.split(".")[1])] = slots
    optimizer.load_state_dict({"t": saved["t"], "state": state})


def load_optimizer(path):
    """A new optimizer with the hyper-parameters and state saved in ``path``."""
    meta, arrays = _read(os.fspath(path))
    saved = meta.get("optimizer")
    if saved is None:
        raise ModelFileError(f"{path} holds no optimizer state")
    opt = _OPTIMIZERS[saved["type"]](**saved["hyper"])
    _restore_optimizer(opt, meta, arrays, path)
    return opt
