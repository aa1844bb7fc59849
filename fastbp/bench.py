"""``fastbp bench``: the workloads of the speed issues, fastbp against its competitors.

Fair by construction:

- every library runs in its own long-lived worker process (``fastbp/_bench_workers.py``,
  which imports NumPy and that library only), so one library's thread pools never share
  a process with another's;
- one worker runs at a time (the others block on their pipe); after each timed run the
  bench waits until the worker's CPU time stops growing (BLAS / OpenMP / TBB threads spin
  for a while after their work) and at least ``MIN_GAP`` seconds;
- rounds interleave the competitors, in an order rotated each round, so machine noise
  hits all of them alike; the report gives medians and the median of per-round ratios
  with their min-max, the CPU steal time of the run, and each competitor's final loss;
- every competitor gets the same data, initial weights, batches, learning rate and
  summed loss (see ``_bench_workers``).

PyTorch and JAX are not dependencies: install them yourself (``pip install torch jax``);
a competitor that is not installed is left out, with a note. A new competitor (say
scikit-learn) is a Runner in ``_bench_workers.RUNNERS``, its import name in
``_bench_workers.LIBRARIES`` and a ``Row`` in the workloads it joins.
"""
import collections
import importlib.metadata
import importlib.util
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from . import _bench_workers as W

WORKER = os.path.abspath(W.__file__)
MIN_GAP = 0.15     # seconds of idle time after each timed run, at least
QUIET = 0.05       # the worker is idle once its CPU time has not grown for this long
MAX_WAIT = 3.0     # ... or after this long, whatever its threads do
ROUNDS, QUICK_ROUNDS = 7, 3
LR_NOTE = ("same initial weights, data, batches and learning rate for every competitor; "
           "losses summed over the batch rows as fastbp's (cross-entropy: PyTorch "
           "reduction=\"sum\", JAX -sum(y log_softmax); MSE: mean over a row's outputs, summed "
           "over rows), so no learning rate is scaled")

# A row of the table: its name, the worker library that runs it, the runner's variant.
Row = collections.namedtuple("Row", "name library variant")
Workload = collections.namedtuple("Workload", "label spec rows base flops")
WORKLOADS = {}

FASTBP, REFERENCE = Row("fastbp", "fastbp", "train"), Row("reference", "reference", "train")
PYTORCH = Row("pytorch", "torch", "eager")
JAX_ROWS = [Row("jax (jit step loop)", "jax", "step"), Row("jax (lax.scan)", "jax", "scan")]
GEMM = Row("GEMM", "blas", "gemm")
GEMM_SHAPE = (512, 2048, 2048)    # M, K, N of the product that measures the GEMM rate


def workload(name, label, spec, rows, base="fastbp", flops=None):
    WORKLOADS[name] = Workload(label, spec, rows, base, flops)


def _mlp(sizes, acts, dtype, rows, batch, epochs, optim="SGD", lr=1e-3, loss="CCE",
         inner=1):
    return dict(kind="mlp", data="random", sizes=sizes, acts=acts, dtype=dtype, rows=rows,
                batch=batch, epochs=epochs, optim=optim, lr=lr, inner=inner,
                loss="CategoricalCrossentropy" if loss == "CCE" else loss)


def step_flops(spec):
    """6 x rows x parameters: forward product (2), both backward products (4)."""
    sizes = spec["sizes"]
    return 6 * (spec["batch"] or spec["rows"]) * sum(a * b + b for a, b in
                                                     zip(sizes[:-1], sizes[1:]))


# A timed run is 400 epochs from the initial weights, repeated (reset untimed) until the
# run has lasted XOR_SECONDS. With one call per run, the core's wake-up after the idle gap
# was in fastbp's figure: its 400 epochs took 1.05-1.28 ms back to back and 1.68-1.71 ms
# right after a 0.2 s sleep (medians of 9, in one process, 2026-11-28 18:33 UTC), while
# the reference's 75-130 ms moved with the VM either way. One call per run gave 73.6x
# (66-78 over rounds), `fastbp bench --rounds 5 xor`, 18:30 UTC.
XOR_SECONDS = 0.02
XOR = dict(kind="mlp", data="xor", sizes=[2, 8, 4, 1], acts=["Relu", "Sigmoid", "Sigmoid"],
           dtype="float64", loss="MSE", optim="SGD", lr=0.6, epochs=400, batch=None, inner=1,
           min_seconds=XOR_SECONDS)
CLASSIFIER = ["Relu", "Relu", "Softmax"]
DIGITS = _mlp([64, 128, 64, 10], CLASSIFIER, "float32", 56 * 32, 32, 1)
MEDIUM = _mlp([784, 256, 256, 10], CLASSIFIER, "float32", 128, 128, 1, lr=1e-4, inner=3)
LARGE = _mlp([784, 2048, 2048, 10], CLASSIFIER, "float32", 512, 512, 1, lr=1e-4)
EVERYONE = [FASTBP, REFERENCE, PYTORCH] + JAX_ROWS

workload("xor", f"XOR 2-8-4-1, 400 full-batch epochs, float64 (runs from the initial "
         f"weights, repeated to >= {1e3 * XOR_SECONDS:.0f} ms per timed run)", XOR, EVERYONE)
workload("digits", "digits epoch 64-128-64-10, 56 steps of 32, float32, SGD", DIGITS, EVERYONE)
workload("digits-adam", "digits epoch 64-128-64-10, 56 steps of 32, float32, Adam",
         dict(DIGITS, optim="Adam"), EVERYONE)
workload("medium", "medium step 784-256-256-10, batch 128, float32", MEDIUM,
         EVERYONE + [GEMM], flops=step_flops(MEDIUM))
workload("medium64", "medium step 784-256-256-10, batch 128, float64",
         dict(MEDIUM, dtype="float64"), EVERYONE + [GEMM], flops=step_flops(MEDIUM))
workload("large32", "large step 784-2048-2048-10, batch 512, float32", LARGE,
         EVERYONE + [GEMM], flops=step_flops(LARGE))
workload("large64", "large step 784-2048-2048-10, batch 512, float64",
         dict(LARGE, dtype="float64"), EVERYONE + [GEMM], flops=step_flops(LARGE))
# 100 calls per timed run (about 50 ms): with 10 (about 5 ms), what the first calls after
# the idle gap cost decided the figure, and per-round ratios of the layer to the raw kernel
# spread over 0.43-1.82 (`fastbp bench --rounds 5 softmax`, 2026-11-28 15:56 UTC); with
# 100 they spread over 0.80-0.90 (the same command minutes later).
workload("softmax", "softmax backward N=512, n=1000, float64 (`Softmax.backward`)",
         dict(kind="softmax", dtype="float64", rows=512, width=1000, inner=100),
         [Row("fastbp", "fastbp", "layer"),
          Row("fastbp raw kernel (activation_backward)", "fastbp", "kernel"),
          Row("reference", "reference", "layer"), Row("pytorch autograd", "torch", "eager")])
workload("layerwise", "medium step, float32: `train()` vs `loss(net(x), y); optim(net, loss)`",
         MEDIUM, [Row("fastbp train()", "fastbp", "train"),
                  Row("fastbp layer by layer", "fastbp", "layerwise")],
         base="fastbp train()")
workload("train-overhead", "XOR, train(epochs=1) vs the compiled plan's call alone",
         dict(XOR, epochs=1, inner=2000, min_seconds=0.0),
         [Row("fastbp train()", "fastbp", "train"),
          Row("fastbp compiled plan call", "fastbp", "plan")], base="fastbp train()")
# scikit-learn's MLPClassifier against fastbp.sklearn's, whole fits (issue 14); not in the
# default run (a 50,000-row fit takes scikit-learn tens of seconds): name them to run them.
SKLEARN_ROWS = [Row("fastbp.sklearn", "fastbp", "fit"), Row("scikit-learn", "sklearn", "fit")]
for _dtype in ("float64", "float32"):
    _bits = "" if _dtype == "float64" else "32"
    workload(f"sklearn-digits{_bits}", f"MLPClassifier fit, digits 1797x64, (128, 64), adam, "
             f"200 iterations, batch auto, {_dtype}",
             dict(kind="sklearn", name="digits (128, 64) adam 200 it", dtype=_dtype),
             SKLEARN_ROWS, base="fastbp.sklearn")
    workload(f"sklearn-50k{_bits}", f"MLPClassifier fit, make_classification 50000x100, "
             f"10 classes, (256, 256), adam, 20 iterations, {_dtype}",
             dict(kind="sklearn", name="make_classification 50000x100 (256, 256) adam 20 it",
                  dtype=_dtype), SKLEARN_ROWS, base="fastbp.sklearn")
OPTIONAL = {name for name in WORKLOADS if name.startswith("sklearn")}
# "process" is timed from here, one fresh process per run (see run_process_workload).
PROCESS_ROWS = [Row("fastbp", "fastbp", "process"), Row("reference", "reference", "process"),
                Row("pytorch", "torch", "process"), Row("jax", "jax", "process")]
workload("process", "whole process: import + XOR's first training step (warm Numba cache)",
         W.PROCESS_SPECS["xor"], PROCESS_ROWS)


# --------------------------------------------------------------------- pure helpers

def row_spec(spec, row):
    """What ``row``'s worker sets up: the workload itself, or for the GEMM row the
    product that measures the machine's rate in the workload's dtype."""
    if row is GEMM:
        return dict(kind="gemm", dtype=spec["dtype"], gemm=GEMM_SHAPE)
    return spec


def rotated(order, round_index):
    """The run order of round ``round_index``: ``order`` rotated left by that many."""
    k = round_index % len(order) if order else 0
    return list(order[k:]) + list(order[:k])


def ratio_stats(times, base_times):
    """(median time, median ratio, min ratio, max ratio); ratio = time / base time of the
    same round, so > 1 means the base (fastbp) was faster."""
    ratios = [t / b for t, b in zip(times, base_times)]
    return statistics.median(times), statistics.median(ratios), min(ratios), max(ratios)


def steal_percent(before, after):
    """CPU steal between two /proc/stat texts, as a percentage of all CPU time.

    The ``cpu`` line counts user nice system idle iowait irq softirq steal (guest time is
    already inside user); steal is time the hypervisor gave our virtual CPUs to others."""
    def totals(text):
        fields = next(line for line in text.splitlines() if line.startswith("cpu ")).split()
        return [int(v) for v in fields[1:9]]
    a, b = totals(before), totals(after)
    delta = [y - x for x, y in zip(a, b)]
    return 100.0 * delta[7] / sum(delta) if sum(delta) else 0.0


def process_cpu_ticks(text):
    """utime + stime (clock ticks, all threads) from a /proc/<pid>/stat text."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def fmt_time(seconds):
    if seconds != seconds:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_loss(value):
    return "-" if value is None or value != value else f"{value:.6g}"


# --------------------------------------------------------------------- workers

class WorkerError(RuntimeError):
    pass


class Worker:
    """A long-lived ``_bench_workers.py <library>`` process, spoken to in pickles."""

    def __init__(self, library):
        self.library = library
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        self.proc = subprocess.Popen([sys.executable, WORKER, library], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env,
                                     cwd=tempfile.gettempdir())

    def ask(self, *message):
        try:
            pickle.dump(message, self.proc.stdin)
            self.proc.stdin.flush()
            status, answer = pickle.load(self.proc.stdout)
        except (EOFError, BrokenPipeError):
            raise WorkerError(f"the {self.library} worker died (exit code "
                              f"{self.proc.wait()}); its error is above") from None
        if status != "ok":
            raise WorkerError(answer)
        return answer

    def cpu_ticks(self):
        text = _read(f"/proc/{self.proc.pid}/stat")
        return None if text is None else process_cpu_ticks(text)

    def close(self):
        if self.proc.poll() is None:
            try:
                pickle.dump(("quit",), self.proc.stdin)
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def wait_until_idle(worker=None):
    """Sleep until ``worker``'s threads have stopped burning CPU (its CPU time has not grown
    for QUIET seconds), and at least MIN_GAP; returns how long they kept spinning."""
    start = time.perf_counter()
    last = worker.cpu_ticks() if worker else None
    if last is None:
        time.sleep(MIN_GAP)
        return 0.0
    busy_until = start
    while True:
        time.sleep(0.01)
        now, ticks = time.perf_counter(), worker.cpu_ticks()
        if ticks is None:
            return busy_until - start
        if ticks != last:
            last, busy_until = ticks, now
        if (now - busy_until >= QUIET and now - start >= MIN_GAP) or now - start > MAX_WAIT:
            return busy_until - start


def installed(library):
    return importlib.util.find_spec(W.LIBRARIES[library]) is not None


# --------------------------------------------------------------------- measuring

class Bench:
    """The workers of one run (started on first use, kept until ``close``), the spin
    times seen after each run, and notes for the report."""

    def __init__(self, log=None):
        self.workers, self.spins, self.notes = {}, collections.defaultdict(list), []
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def worker(self, library):
        if library not in self.workers:
            self.workers[library] = Worker(library)
        return self.workers[library]

    def close(self):
        for worker in self.workers.values():
            worker.close()

    def setup(self, name, rows):
        """Set up each row in its worker (untimed); returns the rows that work."""
        ready = []
        for row in rows:
            if not installed(row.library):
                self.notes.append(f"{name}: {row.name} left out ({W.LIBRARIES[row.library]} "
                                  f"is not installed)")
                continue
            try:
                self.worker(row.library).ask("setup", (name, row.name),
                                             row_spec(WORKLOADS[name].spec, row), row.variant)
                wait_until_idle(self.worker(row.library))
                ready.append(row)
            except WorkerError as error:
                self.notes.append(f"{name}: {row.name} left out ({error})")
        return ready

    def measure(self, name, rows, rounds):
        """{row name: ([seconds per round], [final loss per round])}."""
        results = {row.name: ([], []) for row in rows}
        for r in range(rounds):
            self.log(f"  {name}: round {r + 1}/{rounds}")
            for row in rotated(rows, r):
                if row.variant == "process":
                    seconds, loss = self._process_run(name, row)
                    wait_until_idle()
                else:
                    worker = self.worker(row.library)
                    seconds, loss = worker.ask("run", (name, row.name))
                    self.spins[row.library].append(wait_until_idle(worker))
                results[row.name][0].append(seconds)
                results[row.name][1].append(loss)
        return results

    def warm_processes(self, name, rows):
        """One untimed run of each whole-process row (fills fastbp's Numba cache and every
        library's files into the page cache); returns the rows that ran."""
        ready = []
        for row in rows:
            try:
                if installed(row.library):
                    self._process_run(name, row)
                    ready.append(row)
                else:
                    self.notes.append(f"{name}: {row.name} left out (not installed)")
            except WorkerError as error:
                self.notes.append(f"{name}: {row.name} left out ({error})")
            wait_until_idle()
        return ready

    def _process_run(self, name, row):
        return run_process(row.library, name if name in W.PROCESS_SPECS else "xor")

    def workload(self, name, rounds):
        """Measure one workload; returns (rows that ran, results)."""
        rows = WORKLOADS[name].rows
        if rows is PROCESS_ROWS:
            rows = self.warm_processes(name, rows)
        else:
            rows = self.setup(name, rows)
        if not any(row.name == WORKLOADS[name].base for row in rows):
            self.notes.append(f"{name}: skipped, its base row did not set up")
            return rows, {}
        return rows, self.measure(name, rows, rounds)


def run_process(library, workload, env=None):
    """Seconds for one whole ``_bench_workers.py --process`` run, and the loss it printed."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, WORKER, "--process", library, workload], env=env,
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    if out.returncode:
        raise WorkerError(f"{library} --process {workload} failed:\n{out.stderr[-2000:]}")
    return seconds, float(out.stdout.split("loss", 1)[1])


# --------------------------------------------------------------------- the report

def table_rows(name, rows, results):
    """Markdown rows of one workload: the base row's time in the second column, one line
    per other row, and a GEMM-rate line (fraction of the rate per round) when it has one."""
    w = WORKLOADS[name]
    base_times, base_losses = results[w.base]
    base = statistics.median(base_times)
    lines = []
    for row in rows:
        if row.name == w.base:
            continue
        times, losses = results[row.name]
        if row is GEMM:
            rate = [w.flops / f / (2 * _prod(GEMM_SHAPE) / g) for f, g in zip(base_times, times)]
            lines.append(f"| {row.name} {'x'.join(map(str, GEMM_SHAPE))}: fastbp "
                         f"{w.flops / base / 1e9:.1f} of "
                         f"{2 * _prod(GEMM_SHAPE) / statistics.median(times) / 1e9:.1f} "
                         f"GFLOP/s | {fmt_time(statistics.median(times))} | "
                         f"{statistics.median(rate):.0%} | {min(rate):.0%}-{max(rate):.0%} | - |")
            continue
        median, ratio, low, high = ratio_stats(times, base_times)
        lines.append(f"| {row.name} | {fmt_time(median)} | {ratio:.2f} | {low:.2f}-{high:.2f} "
                     f"| {fmt_loss(base_losses[-1])} / {fmt_loss(losses[-1])} |")
    head = f"| {w.label} | {w.base}: {fmt_time(base)} "
    if not lines:
        return [head + "| - | - | - | - | " + fmt_loss(base_losses[-1]) + " |"]
    return [head + lines[0]] + ["|  |  " + line for line in lines[1:]]


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model():
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header(command, rounds, steal):
    versions = ", ".join(f"{d} {_version(d)}" for d in
                         ("numpy", "numba", "scipy", "torch", "jax", "jaxlib"))
    return [f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"machine: {cpu_model()}, {os.cpu_count()} cores; Python "
            f"{platform.python_version()}; {versions}",
            f"CPU steal during the run: {steal:.1f}% (of all CPU time, from /proc/stat)",
            f"{rounds} interleaved rounds, order rotated each round; each library in its own "
            f"worker process, one at a time, each run followed by an idle gap (until the "
            f"worker's CPU time stops growing, at least {MIN_GAP} s)",
            "time = median over rounds; ratio = row's time / the base row's (fastbp) time in "
            "the same round, median and min-max over rounds, above 1 = fastbp faster; final "
            "losses = base / row, per row of the training set, after the timed run "
            "(softmax: sum of the squared input gradient)",
            LR_NOTE, ""]


TABLE_HEAD = ["| workload | base: time | competitor | time | ratio | ratio min-max "
              "| final loss (base / row) |", "|---|---:|---|---:|---:|---:|---|"]


def run(names, rounds, command="fastbp bench", out=print):
    """Measure the named workloads, print the report; returns {workload: results}."""
    stat_before = _read("/proc/stat")
    bench = Bench()
    lines, results = [], {}
    try:
        for name in names:
            bench.log(f"{name}: setting up")
            rows, results[name] = bench.workload(name, rounds)
            if results[name]:
                lines += table_rows(name, rows, results[name])
                lines += _overhead_line(name, results[name])
    finally:
        bench.close()
    stat_after = _read("/proc/stat")
    steal = steal_percent(stat_before, stat_after) if stat_before and stat_after else float("nan")
    for line in header(command, rounds, steal) + TABLE_HEAD + lines:
        out(line)
    spins = [f"{lib} {1e3 * statistics.median(s):.0f} ms (max {1e3 * max(s):.0f})"
             for lib, s in bench.spins.items() if s]
    if spins:
        out("")
        out("Thread pools kept spinning after a run, median: " + ", ".join(spins))
    for note in bench.notes:
        out(f"note: {note}")
    return results


def _overhead_line(name, results):
    """train-overhead: train()'s fixed cost per call, the median per-round difference."""
    if name != "train-overhead":
        return []
    (train, _), (plan, _) = results["fastbp train()"], results["fastbp compiled plan call"]
    cost = statistics.median(t - p for t, p in zip(train, plan))
    return [f"|  |  | train()'s fixed cost per call | {fmt_time(cost)} | - | - | - |"]


# --------------------------------------------------------------------- cold start

def cold_entries():
    """(label, Numba cache, argv) of every whole process ``--cold`` times: ``fastbp xor``
    and ``fastbp train digits --epochs 1`` with an empty and a warm cache; the
    reference's and (when installed) PyTorch's and JAX's XOR and digits first step."""
    cli = [sys.executable, "-m", "fastbp.cli"]
    # As a user runs them (progress bar and first-run notice on), not --quiet: a cold
    # run that only timed --quiet missed a first-run crash in the notice.
    entries = [(label, cache, cli + argv) for label, argv in
               (("fastbp xor", ["xor"]),
                ("fastbp train digits --epochs 1", ["train", "digits", "--epochs", "1"]))
               for cache in ("empty", "warm")]
    for library in ("reference", "torch", "jax"):
        if installed(library):
            entries += [(f"{library}: {wl} first step (_bench_workers.py --process)", "-",
                         [sys.executable, WORKER, "--process", library, wl])
                        for wl in ("xor", "digits")]
    return entries


def cold_start(runs, out=print, entries=None):
    """Time the whole processes of ``entries`` (default ``cold_entries()``), interleaved
    with a rotating order, ``runs`` each; an "empty" entry gets a new NUMBA_CACHE_DIR per
    run, a "warm" one a cache filled by an untimed run first."""
    entries = cold_entries() if entries is None else entries
    times = {entry[:2]: [] for entry in entries}
    with tempfile.TemporaryDirectory() as root:
        warm = os.path.join(root, "warm")
        for _, cache, argv in entries:
            if cache == "warm":
                _timed_process(argv, warm)
        for r in range(runs):
            print(f"  cold start: round {r + 1}/{runs}", file=sys.stderr, flush=True)
            for label, cache, argv in rotated(entries, r):
                folder = tempfile.mkdtemp(dir=root) if cache == "empty" else warm
                times[label, cache].append(_timed_process(argv, folder))
                wait_until_idle()
    out("")
    out(f"Whole processes, {runs} interleaved runs each (median, min-max):")
    out("")
    out("| process | Numba cache | median | min-max |")
    out("|---|---|---:|---:|")
    for (label, cache), ts in times.items():
        out(f"| {label} | {cache} | {fmt_time(statistics.median(ts))} | "
            f"{fmt_time(min(ts))}-{fmt_time(max(ts))} |")


def _timed_process(argv, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def main(args):
    names = args.workloads or [n for n in WORKLOADS if n not in OPTIONAL]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"fastbp bench: unknown workload(s) {unknown}; choose from "
                         f"{list(WORKLOADS)}")
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    command = "fastbp " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else \
        "fastbp bench"
    run(names, rounds, command)
    if args.cold:
        cold_start(2 if args.quick else 3)
