"""Numba options for every fastbp kernel, in one place.

Nothing here compiles anything. Importing this module picks the threading layer
(see :func:`_choose_threading_layer`) and fixes the flags each kernel is built with.
"""
import ctypes
import functools
import glob
import os
import sys
import threading
import types

import numba


def _numba_can_cache():
    """Whether Numba finds a writable folder for the kernels' on-disk cache.

    Numba tries ``NUMBA_CACHE_DIR``, then the ``__pycache__`` folder beside ``nn.py``,
    then the user-wide cache folder. When none is writable (a read-only install, a
    read-only home), it refuses to define a ``cache=True`` function at all, which would
    make ``import fastbp`` fail; the kernels then compile in memory in each process.
    """
    def kernel_of_nn():
        pass
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nn.py")
    # A stand-in for a kernel of nn.py: Numba's locators read only its file and first line.
    stand_in = types.FunctionType(kernel_of_nn.__code__.replace(co_filename=source), {})
    try:
        from numba.core.caching import FunctionCache
        FunctionCache(stand_in)
    except RuntimeError:   # "cannot cache function ...: no locator available"
        return False
    except Exception:      # Numba's internals moved: keep its own behaviour
        return True
    return True


# Never assume "no NaN / no Inf": fastbp reports divergence instead of hiding it.
FASTMATH = False
CACHE = _numba_can_cache()

SERIAL = dict(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy")
PARALLEL = dict(SERIAL, parallel=True)

# Below this many elements a serial loop beats a parallel launch on this 2-core machine.
# `python -m fastbp.breakeven` (2026-11-26, 2 cores, width 256): bias+ReLU forward
# serial/parallel time 0.60 at 16384 elements, 1.07 at 32768, 1.48 at 65536; softmax
# 0.95 at 16384, 1.85 at 32768.
PARALLEL_MIN_ELEMENTS = 32768
# Column sums (bias gradients, fused with the activation derivative) parallel over blocks
# of columns never beat the serial sweep in the same measurement (serial/parallel 0.46 to
# 0.89 from 2048 to 1M elements): they stay serial. So does the optimizer update: run right
# after a GEMM, as in every training step, serial/parallel Adam time was 0.25 at 32768
# parameters, 0.29 at 269,322 and 0.31 at 5,820,426 (`python -m fastbp.breakeven`,
# update table, 2026-11-28): the BLAS threads still spinning take the second core.

# Matrix products with at most this many multiply-adds run as a plain loop; above it, a
# BLAS call's fixed cost pays off. Same measurement, square products: loop/BLAS time 0.91
# at 64 multiply-adds, 1.14 at 512, 1.93 at 1728.
SMALL_GEMM_FLOPS = 256

# Parallel row-wise kernels split the rows into chunks of this many rows, independent of
# the thread count, so reductions add in the same order however the threads are scheduled.
ROWS_PER_CHUNK = 64
# Column blocks for the bias gradient (a column sum), parallel over blocks of output features.
COLS_PER_BLOCK = 64


def _choose_threading_layer():
    """Use TBB when its library is installed (pip package ``tbb``), else Numba's default.

    Numba's ``workqueue`` layer aborts the process when two Python threads launch
    parallel kernels at once, and ``omp`` is not fork-safe; TBB is both. The pip wheel
    puts ``libtbb.so.12`` into ``<prefix>/lib``, which the loader does not search in a
    virtualenv, so it is loaded by path first. A user's ``NUMBA_THREADING_LAYER`` wins.
    """
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        for lib in sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*"))):
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            numba.config.THREADING_LAYER = "tbb"
            return "tbb"
    return numba.config.THREADING_LAYER


THREADING_LAYER = _choose_threading_layer()

# Numba's workqueue layer is not thread-safe: two Python threads inside parallel kernels
# at once abort the process. Unless the chosen layer is known to be thread-safe (Numba's
# "default" falls back to workqueue when neither TBB nor OpenMP loads), the kernel entry
# points let one thread in at a time.
THREAD_SAFE = THREADING_LAYER in ("tbb", "omp", "threadsafe", "safe")
_KERNEL_LOCK = threading.Lock()


def serialized(kernel):
    """``kernel`` itself under a thread-safe threading layer; else a wrapper that holds a
    process-wide lock while it runs."""
    if THREAD_SAFE:
        return kernel

    @functools.wraps(kernel, updated=())
    def one_thread_at_a_time(*args):
        with _KERNEL_LOCK:
            return kernel(*args)
    return one_thread_at_a_time
