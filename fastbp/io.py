"""Saving and loading models as .npz files: architecture as JSON, weights as arrays.

No pickle anywhere. Loading trusts nothing in the file: the JSON architecture is
validated first (types, known names, consistent widths), it fixes which entries must
exist and the shape, dtype and byte count of each, and every entry's .npy header and zip
size are checked against that before any of its data is read. A file can therefore make
fastbp read and allocate only what its architecture implies (a zip bomb or a header
claiming 1e12 floats is refused without being read), and any bad file raises
ModelFileError. Writes go to a temporary file in the target's folder (through symbolic
links), are flushed to disk, then renamed over the target, so a crash mid-save leaves the
previous file intact; the file gets the mode ``np.save`` would give it.
"""
import json
import math
import numbers
import os
import stat
import tempfile
import zipfile
import zlib

import numpy as np

from . import modules as L
from .reference.modules import INITS
from . import optim as O
from .model import Model

FORMAT = "fastbp-model"
VERSION = 1
_ACTIVATIONS = {cls.__name__: cls for cls in (L.Relu, L.Sigmoid, L.Tanh, L.Softmax)}
_OPTIMIZERS = {cls.__name__: cls for cls in (O.SGD, O.Momentum, O.RMSProp, O.Adam)}
# Identity, Nesterov and AdamLR came with the scikit-learn estimators (issue 14); files
# without weight_decay load with 0.
_ACTIVATIONS["Identity"] = L.Identity
_OPTIMIZERS.update(Nesterov=O.Nesterov, AdamLR=O.AdamLR)
_HYPER = {name: cls.hyper_names + ("weight_decay",) for name, cls in _OPTIMIZERS.items()}


# The JSON entry of a real model is a few KB; anything far larger is not one.
_MAX_META_BYTES = 1 << 20
# Deflate packs at most ~1032 bytes into one; fastbp writes entries uncompressed.
_MAX_RATIO = 1100


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


def save(model, path, optimizer=None, comm=None):
    """Write ``model`` (and ``optimizer``'s state, to resume training exactly) to ``path``.

    The file is a NumPy .npz archive, written exactly at ``path`` (no suffix is added);
    when ``path`` is a symbolic link, the file it points to is written. Errors name
    ``path``. With ``comm`` (an mpi4py communicator, after data-parallel training: every
    rank holds the same weights), rank 0 alone writes, atomically as always, while the
    other ranks wait for its outcome; an error on rank 0 is raised on every rank.
    """
    if comm is not None:
        return _save_on_rank0(model, path, optimizer, comm)
    if not isinstance(model, Model):
        raise TypeError(f"save: the first argument must be a fastbp Model, got "
                        f"{type(model).__name__}; call fastbp.save(model, path)")
    model._sync()  # the layers as they are now (see Model)
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
        _check_optimizer_matches(optimizer, model)
        # SGD's placeholder slot is not state: an optimizer without state saves none
        state = optimizer.state if optimizer.n_slots else {}
        meta["optimizer"] = {"type": name, "t": optimizer.t,
                             "hyper": {k: getattr(optimizer, k) for k in _HYPER[name]},
                             "state": {_state_key(k): len(v) for k, v in state.items()}}
        for key, slots in state.items():
            for j, arr in enumerate(slots):
                arrays[f"optim.{_state_key(key)}.{j}"] = arr
    arrays["__fastbp__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = os.fsdecode(path)   # str, bytes or path-like
    _write_atomically(path, arrays)
    return path


def _save_on_rank0(model, path, optimizer, comm):
    """Rank 0 writes; its outcome is broadcast, which holds the other ranks back until the
    file is complete (so nobody reads a half-written file) and never leaves them waiting
    for a rank 0 that failed."""
    failure = None
    if comm.Get_rank() == 0:
        try:
            save(model, path, optimizer)
        except Exception as err:   # shared below, then raised on every rank
            failure = err
    text = comm.bcast(None if failure is None else f"{type(failure).__name__}: {failure}",
                      root=0)
    if failure is not None:
        raise failure
    if text is not None:
        raise OSError(f"save: rank 0 could not write {os.fspath(path)} ({text})")
    return os.fspath(path)


def _check_optimizer_matches(optimizer, model):
    """Refuse to save state that belongs to other parameters than ``model``'s, or that
    training ``model`` would refuse."""
    if optimizer.n_slots == 0:   # SGD: no state (it may serve several models)
        return
    if optimizer._bound_elsewhere(model):
        raise ValueError(f"save: {optimizer!r} has trained another model ({optimizer.t} "
                         f"steps; its state describes that model's parameters); save the "
                         f"optimizer with its own model")
    problem = optimizer._flat_mismatch(model.params) if model.params is not None else ""
    if problem:   # train() would refuse this state: a file must not resume with it
        raise ValueError(f"save: {optimizer!r}: {problem}")
    flat = optimizer.state.get("flat")
    n_params = sum(layer.n_params for layer in model.layers if isinstance(layer, L.Linear))
    if flat is not None and flat[0].size != n_params:
        raise ValueError(f"save: {optimizer!r} holds state for {flat[0].size} parameters, "
                         f"the model has {n_params}; save the optimizer with its own model")
    if flat is not None and flat[0].dtype != model.dtype:
        # load() would refuse the file: the state must have the model's dtype.
        raise ValueError(f"save: {optimizer!r} holds {flat[0].dtype} state, the model is "
                         f"{model.dtype}; save the optimizer with the model it trained")
    extra = [k for k in optimizer.state if k != "flat"]
    if extra:
        raise ValueError(f"save: {optimizer!r} holds state for custom layers ({extra}), "
                         f"which a model file cannot hold")


def _new_file_mode(existing):
    """The mode ``np.save`` (open(path, "wb")) gives: an existing file keeps its own,
    a new one gets 0o666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(existing).st_mode)
    except OSError:
        pass
    try:  # Linux: read the umask without changing it (os.umask is process-wide)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _write_atomically(path, arrays):
    target = os.path.realpath(path)  # through symbolic links: write the file they name
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastbp-", suffix=".tmp",
                                   dir=os.path.dirname(target))
    except OSError as e:
        raise type(e)(e.errno, f"save: cannot write there ({e.strerror})", path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _new_file_mode(target))
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            raise type(e)(e.errno, f"save: {e.strerror}", path) from None
        raise


# ---------------------------------------------------------------- loading, validated

def _bad(path, message):
    return ModelFileError(f"{path}: {message}")


def _open_archive(path):
    """The file as an open ZipFile, after telling apart what it could be instead."""
    with open(path, "rb") as f:
        start = f.read(8)
    if start.startswith(b"\x93NUMPY"):
        raise ModelFileError(f"{path} is a single .npy array, not a fastbp model file "
                             f"(an .npz archive written by fastbp.save)")
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelFileError(f"{path} holds pickled data; fastbp never loads pickle (it "
                             f"can run code). Re-save the model with fastbp.save")
    if not start.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise ModelFileError(f"{path} is not a fastbp model file (not an .npz archive; it "
                             f"starts with {start!r})")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError) as e:   # a corrupted directory can name any compression
        raise ModelFileError(f"{path} is truncated or corrupted ({type(e).__name__}: {e}); "
                             f"it is not a complete fastbp model file") from e


def _entry(zf, name, shape, dtype, path, read=True):
    """Entry ``name`` (an .npy) as an array (None unless ``read``), after checking its
    header (shape, dtype) and its declared size against what the architecture needs."""
    label = name[:-4]
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _bad(path, f"array {label!r} is missing") from None
    dtype, shape = np.dtype(dtype), tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize   # Python ints: no wrap-around
    try:
        with zf.open(info) as f:
            major, minor = np.lib.format.read_magic(f)
            if (major, minor) == (1, 0):
                header = np.lib.format.read_array_header_1_0(f)
            elif (major, minor) == (2, 0):
                header = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {major}.{minor}")
            got_shape, fortran, got_dtype = header
            if got_shape != shape or got_dtype != dtype:
                raise _bad(path, f"array {label!r} has shape {got_shape} and dtype "
                                 f"{got_dtype}, the architecture needs {shape} {dtype}")
            if info.file_size != f.tell() + nbytes:
                raise _bad(path, f"array {label!r} declares {info.file_size} bytes, its "
                                 f"header and data take {f.tell() + nbytes}")
            if info.compress_size * _MAX_RATIO < nbytes:  # no compression packs that much
                raise _bad(path, f"array {label!r} claims {nbytes} bytes from "
                                 f"{info.compress_size} stored: not a real model file")
            if not read:
                return None
            raw = f.read(nbytes)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError, zlib.error) as e:  # header, CRC, compression, encryption
        raise _bad(path, f"array {label!r} is truncated or corrupted ({type(e).__name__}: "
                         f"{e})") from e
    if len(raw) != nbytes:
        raise _bad(path, f"array {label!r} is truncated")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _positive_int(value, what, path):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(path, f"{what} must be an integer >= 1, got {value!r}")
    return value


def _check_layers(meta, path):
    """Validate the layer list; returns [(i, n_in, units)] of its Linear layers."""
    specs = meta.get("layers")
    if not isinstance(specs, list) or not specs:
        raise _bad(path, "malformed architecture: 'layers' must be a non-empty list")
    linear, width = [], None
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise _bad(path, f"malformed architecture: layer {i} is {spec!r}")
        kind = spec["type"]
        if kind == "Linear":
            units = _positive_int(spec.get("units"), f"layer {i} (Linear) units", path)
            n_in = _positive_int(spec.get("n_in"), f"layer {i} (Linear) n_in", path)
            if spec.get("init", "uniform") not in INITS:
                raise _bad(path, f"layer {i} (Linear) init {spec.get('init')!r} is not one "
                                 f"of {INITS}")
            if width is not None and n_in != width:
                raise _bad(path, f"layer {i} (Linear) takes {n_in} inputs but the layer "
                                 f"before it gives {width}: inconsistent widths")
            linear.append((i, n_in, units))
            width = units
        elif kind not in _ACTIVATIONS:
            raise _bad(path, f"unknown layer type {kind!r} at layer {i} (known: Linear, "
                             f"{', '.join(_ACTIVATIONS)})")
    return linear


def _check_optimizer(saved, path):
    """Validate the optimizer record; returns its state as {key: n_slots}."""
    if not isinstance(saved, dict) or not isinstance(saved.get("type"), str) or \
            saved["type"] not in _OPTIMIZERS:
        kind = saved.get("type") if isinstance(saved, dict) else saved
        raise _bad(path, f"unknown optimizer {kind!r} (known: {', '.join(_OPTIMIZERS)})")
    name = saved["type"]
    t = saved.get("t")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise _bad(path, f"optimizer step count t must be an integer >= 0, got {t!r}")
    hyper = saved.get("hyper")
    names = set(_HYPER[name])   # files written before weight_decay existed lack it
    if not isinstance(hyper, dict) or set(hyper) not in (names, names - {"weight_decay"}) \
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                       for v in hyper.values()):
        raise _bad(path, f"{name} hyper-parameters must be numbers {_HYPER[name]}, got "
                         f"{hyper!r}")
    try:
        _OPTIMIZERS[name](**hyper)
    except (ValueError, TypeError, OverflowError) as e:
        raise _bad(path, f"bad {name} hyper-parameters ({e})") from e
    state = saved.get("state")
    n_slots = max(_OPTIMIZERS[name].n_slots, 1)
    if state not in ({}, {"flat": n_slots}) or type(state.get("flat", 0)) is not int:
        raise _bad(path, f"{name} state must be {{'flat': {n_slots}}} (or empty), got "
                         f"{state!r}")
    return state


def _read(path, with_optimizer):
    """(meta, arrays) of a validated model file; the optimizer's arrays only when
    ``with_optimizer``. Raises ModelFileError for anything wrong with the file."""
    with _open_archive(path) as zf:
        names = set(zf.namelist())
        if "__fastbp__.npy" not in names:
            raise ModelFileError(f"{path} is an .npz archive but not a fastbp model file "
                                 f"(no __fastbp__ entry)")
        info = zf.getinfo("__fastbp__.npy")
        if info.file_size > _MAX_META_BYTES:
            raise _bad(path, f"the architecture entry declares {info.file_size} bytes; a "
                             f"fastbp architecture takes a few KB")
        text = _entry(zf, "__fastbp__.npy", _meta_shape(zf, info, path), np.uint8, path)
        try:
            meta = json.loads(text.tobytes().decode())
        except (ValueError, UnicodeDecodeError, RecursionError) as e:   # nested too deep
            raise _bad(path, f"the architecture entry is not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelFileError(f"{path}: not a {FORMAT} file")
        if meta.get("version") != VERSION:
            raise ModelFileError(f"{path}: format version {meta.get('version')!r} is not "
                                 f"supported (this fastbp reads version {VERSION})")
        if meta.get("dtype") not in ("float32", "float64"):
            raise _bad(path, f"dtype {meta.get('dtype')!r} is not float32 or float64")
        dtype = np.dtype(meta["dtype"])
        linear = _check_layers(meta, path)
        wanted = {}
        for i, n_in, units in linear:
            wanted[f"layer{i}.w"], wanted[f"layer{i}.b"] = (n_in, units), (units,)
        saved = meta.get("optimizer")
        if saved is not None:
            state = _check_optimizer(saved, path)
            n_params = sum(n_in * units + units for _, n_in, units in linear)
            for j in range(state.get("flat", 0)):
                wanted[f"optim.flat.{j}"] = (n_params,)
        extra = names - {f"{name}.npy" for name in wanted} - {"__fastbp__.npy"}
        if extra:
            raise _bad(path, f"unexpected entries {sorted(extra)[:5]}: the architecture "
                             f"names no such arrays")
        for name, shape in wanted.items():  # every header before any data
            _entry(zf, f"{name}.npy", shape, dtype, path, read=False)
        arrays = {name: _entry(zf, f"{name}.npy", shape, dtype, path)
                  for name, shape in wanted.items()
                  if with_optimizer or not name.startswith("optim.")}
    return meta, arrays


def _meta_shape(zf, info, path):
    """The shape the architecture entry's header declares, bounded by _MAX_META_BYTES."""
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError, zlib.error) as e:
        raise _bad(path, f"the architecture entry is truncated or corrupted ({e})") from e
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > _MAX_META_BYTES:
        raise _bad(path, f"the architecture entry is {shape} {dtype}, not JSON bytes")
    return shape


def load(path, optimizer=None):
    """Read a model written by :func:`save`; restore ``optimizer``'s state if given.

    Raises ModelFileError (a ValueError) for any file that is not a complete, consistent
    fastbp model file (pickle, .npy, text, truncated, corrupted, oversized, inconsistent
    architecture or arrays); the file is validated before any array is read. A missing
    or unreadable path raises the usual OSError. The model comes back in the dtype it
    was saved in.
    """
    path = os.fsdecode(path)   # str, bytes or path-like
    meta, arrays = _read(path, optimizer is not None)
    dtype = np.dtype(meta["dtype"])
    stack = []
    for i, spec in enumerate(meta["layers"]):
        if spec["type"] == "Linear":
            layer = L.Linear(spec["units"], init=spec.get("init", "uniform"))
            layer.allocate(spec["n_in"], dtype)
            layer.w, layer.b = arrays[f"layer{i}.w"], arrays[f"layer{i}.b"]
        else:
            layer = _ACTIVATIONS[spec["type"]]()
        stack.append(layer)
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
    state = {key: [arrays[f"optim.{key}.{j}"] for j in range(n_slots)]
             for key, n_slots in saved["state"].items()}
    optimizer.load_state_dict({"t": saved["t"], "state": state})


def load_optimizer(path):
    """A new optimizer with the hyper-parameters and state saved in ``path``."""
    path = os.fsdecode(path)   # str, bytes or path-like
    meta, arrays = _read(path, True)
    saved = meta.get("optimizer")
    if saved is None:
        raise ModelFileError(f"{path} holds no optimizer state")
    opt = _OPTIMIZERS[saved["type"]](**saved["hyper"])
    _restore_optimizer(opt, meta, arrays, path)
    return opt
