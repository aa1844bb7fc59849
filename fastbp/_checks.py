"""Input checks shared by the public classes: clear, typed errors before any kernel runs."""
import contextlib
import math
import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(dtype, who):
    try:
        dtype = np.dtype(dtype)
    except TypeError:   # NumPy's message does not say whose dtype
        raise TypeError(f"{who}: dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _kernel_ready(flags):   # one flags object: each ``x.flags`` makes a new one
    return flags.c_contiguous and flags.writeable and flags.aligned


# Up to this many elements a sum of squares through BLAS (np.vdot: a quarter to half the
# cost of np.add.reduce on a 4 x 2 array, which a train() call pays twice) runs on one
# thread; above it OpenBLAS may wake its threads, which would then spin beside the kernels.
_VDOT_MAX = 8192


def _finite_sum(x):
    """Whether a sum over x is finite: only when every element is (or it overflowed)."""
    if x.size <= _VDOT_MAX:
        return math.isfinite(np.vdot(x, x))
    with np.errstate(over="ignore", invalid="ignore"):   # the full check reports those
        return math.isfinite(np.add.reduce(x, axis=None))


def as_batch(x, dtype, who, name="x", check_finite=True):
    """``x`` as a C-contiguous, writable (N, F) array of ``dtype`` with N >= 1.

    Integer and boolean arrays are converted; complex, object and string arrays, ragged
    lists, wrong ranks, empty batches and (when ``check_finite``) NaN, Inf and values too
    large for ``dtype`` are refused. The caller's array is never modified: a read-only,
    non-contiguous, Fortran-ordered or byte-swapped input is copied.
    """
    if type(x) is np.ndarray and x.dtype == dtype and x.ndim == 2 and x.size and \
            _kernel_ready(x.flags) and (not check_finite or _finite_sum(x)):
        # Already what the kernels take (train called again on the same arrays): returned
        # as it is. An array whose sum is not finite (a NaN or Inf, or a sum that
        # overflowed) takes the full check below, which names the element.
        return x
    masked = sys.modules.get("numpy.ma")   # not imported: x cannot be a masked array
    if masked is not None and isinstance(x, masked.MaskedArray) and masked.is_masked(x):
        raise ValueError(f"{who}: {name} is a masked array with masked values, and the "
                         f"mask would be ignored; drop those rows or fill them first, e.g. "
                         f"{name}.filled(0)")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"{who}: {name} is not a rectangular array of numbers ({err}); "
                         f"pass a 2-D NumPy array") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{who}: {name} must hold real numbers (int, bool or float), got "
                        f"dtype {arr.dtype} (for a list: integers beyond int64, or "
                        f"non-numbers); convert it, e.g. np.asarray({name}, np.float64)")
    if arr.ndim != 2:
        raise ValueError(f"{who}: {name} must be 2-D (batch, features), got shape {arr.shape}; "
                         f"use {name}.reshape(-1, 1) for one feature or {name}[None, :] for "
                         f"one sample")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{who}: {name} is empty (shape {arr.shape}); pass at least one row "
                         f"and one column")
    out = _converted(arr, dtype, who, name)
    if not out.flags.writeable:
        out = out.copy()
    if check_finite and not np.isfinite(out).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(out))[0])
        raise ValueError(f"{who}: {name} contains NaN or Inf (first at index {bad}); "
                         f"clean or impute the data first")
    return out


def _converted(arr, dtype, who, name):
    """``arr`` as a C-contiguous aligned array of ``dtype``; a finite value too large for
    ``dtype`` (float64 data for a float32 layer, a longdouble beyond float64) is refused by
    name instead of becoming inf with NumPy's nameless overflow warning."""
    dtype = np.dtype(dtype)
    narrowing = arr.dtype.kind == "f" and arr.dtype.itemsize > dtype.itemsize
    with np.errstate(over="ignore") if narrowing else contextlib.nullcontext():
        out = np.require(arr, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])
    if narrowing:
        overflowed = np.isinf(out) & np.isfinite(arr)
        if overflowed.any():
            bad = tuple(int(i) for i in np.argwhere(overflowed)[0])
            wider = "; scale the data or use float64" if dtype == np.float32 else \
                "; scale the data"
            raise ValueError(f"{who}: {name}{list(bad)} = {arr[bad]!s} is too large for "
                             f"{dtype} (max {np.finfo(dtype).max:.3g}){wider}")
    return out


def positive_number(value, who, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(_as_float(value)):
        raise ValueError(f"{who}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _as_float(value):
    """float(value), or inf for an integer too large for a float (10**400)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def unit_interval(value, who, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{who}: {name} must be in [0, 1), got {value!r}")
    return float(value)


def positive_int(value, who, name):
    if type(value) is int and value >= 1:   # the common case, without the ABC check below
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{who}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def input_dtype(x):
    """float32 or float64, as x is (in any byte order); float64 for anything else."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(f"f{dtype.itemsize}")
    return np.dtype(np.float64)


def grad_like(grad, shape, dtype, who):
    """The incoming gradient as a C-contiguous writable array of ``shape`` and ``dtype``."""
    grad = np.asarray(grad)
    if grad.shape != shape:
        raise ValueError(f"{who}.backward: grad has shape {grad.shape} but the last forward "
                         f"output had shape {shape}; pass dL/d(output) of that shape")
    if grad.dtype.kind not in "biuf":
        raise TypeError(f"{who}.backward: grad must be real numbers, got dtype {grad.dtype}")
    grad = _converted(grad, dtype, f"{who}.backward", "grad")
    return grad.copy() if not grad.flags.writeable else grad


def require_forward(obj, attribute):
    """Refuse a backward call before the forward pass that keeps ``attribute``."""
    if not hasattr(obj, attribute):
        raise RuntimeError(f"{obj!r}.backward was called before any forward pass; call "
                           f"it on data first (backward needs what the forward kept)")
