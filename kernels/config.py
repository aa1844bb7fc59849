"""Numba options for every fastbp kernel, in one place.

Nothing here compiles anything. Importing this module picks the threading layer
(see :func:`_choose_threading_layer`) and fixes the flags each kernel is built with.
"""
import ctypes
import glob
import os
import sys

import numba

# Never assume "no NaN / no Inf": fastbp reports divergence instead of hiding it.
FASTMATH = False
CACHE = True

SERIAL = dict(nogil=True, cache=CACHE, fastmath=FASTMATH, error_model="numpy")
PARALLEL = dict(SERIAL, parallel=True)

# Below this many elements a serial loop beats a parallel launch on this 2-core machine.
# Measured with `python -m fastbp.tools.breakeven` (see README, "Performance").
PARALLEL_MIN_ELEMENTS = 65536

# Matrix products with at most this many multiply-adds run as a plain loop; above it, a
# BLAS call's fixed cost pays off. Measured with `python -m fastbp.tools.breakeven`.
SMALL_GEMM_FLOPS = 4096

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
