"""Compiling ahead on the second core: a first run's plan kernel compiles in two processes.

Numba compiles a kernel and every kernel it calls in one thread, one after the other, in
the order its type inference meets the calls. When a plan kernel (plan_train, tiny_train)
is about to compile, ``call`` starts a helper process (``main`` below), which
compiles ``nn.plan_tail`` / ``nn.tiny_tail`` for the same argument types: the leaf
kernels the plan calls last, in reverse order, saved to Numba's on-disk cache. When this
process's type inference reaches them, Numba loads them from the cache instead of
compiling them (a leaf the helper has not finished yet is compiled here as before). The
compiled code is the same either way, so are the numbers. The helper is stopped as soon
as the plan call returns.

Only when it can pay: the plan kernel is neither compiled in this process nor in the
cache, the cache is on disk, the process may use two cores or more, it is not an MPI rank
(the ranks already fill the cores), and ``FASTBP_COMPILE_AHEAD`` is not ``0``.
"""
import contextlib
import json
import os
import subprocess
import sys
import threading

import numpy as np

_NOTHING = contextlib.nullcontext()
_LOCK = threading.Lock()
_started = set()
# Set by the MPI launchers (MPICH / Hydra, Open MPI, Slurm).
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID")


def call(kind, dispatcher, args):
    """``dispatcher(*args)``; when that call is about to compile, with the helper."""
    if dispatcher.overloads:   # compiled in this process: the steady state, one check
        return dispatcher(*args)
    with compiling(kind, dispatcher, args):
        return dispatcher(*args)


def compiling(kind, dispatcher, args):
    """A context for the call ``dispatcher(*args)`` (kind "plan" or "tiny"): starts the
    helper when that call is about to compile, stops it when the call is done."""
    if dispatcher.overloads or kind in _started:
        return _NOTHING
    with _LOCK:
        if kind in _started:
            return _NOTHING
        _started.add(kind)
    if not _worth_it(dispatcher, args):
        return _NOTHING
    return _helper(kind, args)


def _worth_it(dispatcher, args):
    if os.environ.get("FASTBP_COMPILE_AHEAD", "1") == "0" or \
            any(name in os.environ for name in _MPI_ENV):
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    return cores >= 2 and not _in_cache(dispatcher, args)


def _in_cache(dispatcher, args):
    """True when the call would load its kernel from the cache (or there is no cache on
    disk for a helper to fill)."""
    cache = getattr(dispatcher, "_cache", None)
    cache_file = getattr(cache, "_cache_file", None)
    if cache_file is None:
        return True
    try:
        sig = tuple(dispatcher.typeof_pyval(a) for a in args)
        key = cache._index_key(sig, dispatcher.targetctx.codegen())
        return key in cache_file._load_index()
    except Exception:   # Numba's internals moved: do not guess, do not help
        return True


def describe(args):
    """The argument types as JSON-able tags: "i", "f", "b", or [dtype, ndim]."""
    tags = []
    for a in args:
        if isinstance(a, np.ndarray):
            tags.append([a.dtype.str, a.ndim])
        else:
            tags.append("b" if isinstance(a, bool) else "i" if isinstance(a, int) else "f")
    return tags


def build(tags):
    """Arguments of the described types: C-contiguous arrays of one element, 0, 0.0, False."""
    made = []
    for tag in tags:
        if isinstance(tag, list):
            made.append(np.zeros((1,) * tag[1], np.dtype(tag[0])))
        else:
            made.append({"i": 0, "f": 0.0, "b": False}[tag])
    return made


def _spawn(kind, args):
    """The helper process, with this process's module path (so that it imports this very
    fastbp, wherever it was imported from) and environment (NUMBA_CACHE_DIR). It freezes
    what its imports made, as the ``fastbp`` command does (see cli.command), to reach the
    compiler sooner."""
    code = ("import gc, sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from fastbp.kernels.ahead import main; gc.freeze(); main(sys.argv[2:])")
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(sys.path), kind, json.dumps(describe(args))],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def _helper(kind, args):
    try:
        proc = _spawn(kind, args)
    except OSError:   # no process to spare: compile here alone, as without it
        yield
        return
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()


def main(argv):
    from . import nn
    kind, tags = argv[0], json.loads(argv[1])
    tail = {"plan": nn.plan_tail, "tiny": nn.tiny_tail}[kind]
    tail(*build(tags))   # compiles the leaves; the body returns at once
