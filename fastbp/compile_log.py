"""What Numba compiles, and when: the first-run notice and ``fastbp warmup --report``.

Numba fires events while it works (``numba.core.event``): "numba:compile" around every
dispatcher's compilation, and "numba:run_pass" for every compiler pass. A load from the
on-disk cache fires neither: ``recording`` times those itself. Listening costs nothing
when nothing compiles.
"""
import contextlib
import sys
import time

from numba.core import event
from numba.core.registry import CPUDispatcher as Dispatcher

from . import kernels


class _FirstPass(event.Listener):
    """Calls ``announce()`` once, when Numba starts compiling (not loading) anything, and
    adds up in ``seconds`` the time spent in Numba's compiler passes (nested passes, a
    callee compiled inside its caller's, count once), not the training around them."""

    def __init__(self, announce):
        # Not ``self.notify``: that is event.Listener's own dispatch method, and
        # shadowing it made every real compilation under the notice raise TypeError.
        self.announce, self.compiled = announce, False
        self.seconds, self._depth, self._since = 0.0, 0, 0.0

    def on_start(self, ev):
        if not self.compiled:
            self.compiled = True
            self.announce()
        if self._depth == 0:
            self._since = time.perf_counter()
        self._depth += 1

    def on_end(self, ev):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._since


_SILENT = contextlib.nullcontext()


def compile_notice(enabled, write=None):
    """While the body runs, say once that the kernels are being compiled (only when
    Numba really compiles: a warm cache stays silent), and after it how long compiling
    took (the body's training time excluded)."""
    return _notice(write) if enabled else _SILENT


@contextlib.contextmanager
def _notice(write):
    write = write or (lambda text: print(text, file=sys.stderr, flush=True))
    listener = _FirstPass(lambda: write("fastbp: compiling the kernels for this machine "
                                        "(first run only; Numba caches them on disk)..."))
    with event.install_listener("numba:run_pass", listener):
        yield
    if listener.compiled:
        write(f"fastbp: compiled in {listener.seconds:.1f} s")


class CompileRecord(event.Listener):
    """Every compilation ("numba:compile" events) and every load from Numba's on-disk
    cache (which fires no event: ``recording`` times the dispatchers' cache reads) of the
    body: which kernel, which signature, compiled or loaded, seconds with and without the
    dispatchers it compiled or loaded on the way."""

    def __init__(self):
        self.rows, self._stack = [], []

    def on_start(self, ev):
        self.begin(ev.data["dispatcher"], ev.data["args"])

    def on_end(self, ev):
        self.end(loaded=False)

    def begin(self, dispatcher, args):
        self._stack.append([dispatcher, args, time.perf_counter(), 0.0])

    def end(self, loaded):
        """Close the innermost open entry; ``loaded=None``: a cache miss, not recorded
        (the compilation that follows is)."""
        dispatcher, args, start, nested = self._stack.pop()
        if loaded is None:
            return
        seconds = time.perf_counter() - start
        if self._stack:
            self._stack[-1][3] += seconds
        self.rows.append({"kernel": getattr(dispatcher.py_func, "__qualname__", "?"),
                          "module": getattr(dispatcher.py_func, "__module__", "?"),
                          "signature": _short(args), "loaded": loaded,
                          "seconds": seconds, "own_seconds": seconds - nested})

    def table(self, only_prefix="fastbp"):
        """Markdown rows for fastbp's kernels (Numba's own helpers count in the own time
        of the kernel that needed them), slowest first."""
        rows = [r for r in self.rows if r["module"].startswith(only_prefix)]
        rows.sort(key=lambda r: -r["seconds"])
        lines = ["| kernel | signature | how | seconds | own seconds |",
                 "|---|---|---|---:|---:|"]
        for r in rows:
            how = "loaded from cache" if r["loaded"] else "compiled"
            lines.append(f"| {r['kernel']} | {r['signature']} | {how} | "
                         f"{r['seconds']:.2f} | {r['own_seconds']:.2f} |")
        compiled = sum(r["own_seconds"] for r in self.rows if not r["loaded"])
        loaded = sum(r["own_seconds"] for r in self.rows if r["loaded"])
        lines.append(f"\ntotal: {compiled:.2f} s compiling, {loaded:.2f} s loading from the "
                     f"cache, {len(rows)} fastbp kernel signatures (a process's first load "
                     f"or compilation includes Numba's one-time set-up of its registries)")
        return "\n".join(lines)


def _short(args):
    """A signature in a few characters: arrays as f64[:, :] / i64[:], scalars by name."""
    names = {"float64": "f64", "float32": "f32", "int64": "i64"}
    out = []
    for a in args:
        dtype = getattr(a, "dtype", None)
        if dtype is not None and hasattr(a, "ndim"):
            out.append(f"{names.get(str(dtype), str(dtype))}[{', '.join(':' * a.ndim)}]")
        else:
            out.append(names.get(str(a), str(a)))
    return "(" + ", ".join(out) + ")"


def _timed_load(record, dispatcher, load):
    def timed(sig, target_context):
        record.begin(dispatcher, sig)
        result = None
        try:
            result = load(sig, target_context)
        finally:
            record.end(loaded=None if result is None else True)
        return result
    return timed


def _kernel_dispatchers():
    return [obj for obj in vars(kernels.nn).values() if isinstance(obj, Dispatcher)]


@contextlib.contextmanager
def recording(dispatchers=None):
    """Record every compilation in the body, and every cache load of ``dispatchers``
    (default: fastbp's kernels): ``with recording() as r``. Loads are timed by wrapping
    each dispatcher's cache reader for the duration of the body."""
    record = CompileRecord()
    patched = []
    for dispatcher in _kernel_dispatchers() if dispatchers is None else dispatchers:
        cache = getattr(dispatcher, "_cache", None)
        if hasattr(cache, "load_overload"):
            cache.load_overload = _timed_load(record, dispatcher, cache.load_overload)
            patched.append(cache)
    try:
        with event.install_listener("numba:compile", record):
            yield record
    finally:
        for cache in patched:
            del cache.load_overload   # the class's method again
