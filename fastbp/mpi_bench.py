"""Scaling benchmark of data-parallel training over MPI, and the scaling model for many
machines.

``python -m fastbp.mpi_bench --ranks 1 2`` launches ``mpiexec -n R`` for each R (one
BLAS and Numba thread per rank) on the large step, 784-2048-2048-10 (Relu, softmax +
cross-entropy, Adam), batch 512 per rank, and prints time per step, allreduce time per
step, samples/s and the scaling efficiency against one rank; then the scaling model
(:func:`scaling_table`) with the measured compute time per sample.
``python -m fastbp.mpi_bench --model-only [--seconds-per-sample S]`` prints the model
alone; ``--startup 5`` times a whole small run, one process against ``mpiexec -n 2``,
with a warm Numba cache. A benchmark, not a test: numbers depend on the machine and its load.
"""
import argparse
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

LARGE = (784, 2048, 2048, 10)
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def n_parameters(widths=LARGE):
    """Weights and biases of an MLP with these layer widths."""
    return sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))


# ------------------------------------------------------------------ the scaling model

def ring_allreduce_seconds(n_bytes, ranks, gbit_per_s):
    """Bandwidth term of a ring allreduce: each rank sends and receives 2 (p-1)/p of the
    buffer (reduce-scatter, then allgather). Latency (2 (p-1) messages) is left out: at
    megabytes per step it is small against the bandwidth term."""
    return 2 * (ranks - 1) / ranks * n_bytes / (gbit_per_s * 1e9 / 8)


def min_batch_per_rank(seconds_per_sample, n_bytes, ranks, gbit_per_s, efficiency=0.8):
    """The smallest per-rank batch b whose step keeps ``efficiency``: a step costs
    b c (compute, c = seconds per sample) + T (allreduce, not overlapped), so the
    efficiency against perfect scaling is b c / (b c + T), and
    b >= efficiency / (1 - efficiency) * T / c."""
    t = ring_allreduce_seconds(n_bytes, ranks, gbit_per_s)
    return math.ceil(efficiency / (1 - efficiency) * t / seconds_per_sample)


def scaling_table(n_params, itemsize, seconds_per_sample=None, ranks=(8, 64),
                  bandwidths=(10, 100), efficiency=0.8):
    """Rows (ranks, Gbit/s, MB per allreduce, allreduce ms, min per-rank batch or None).
    The bytes and times need no measurement; the batch needs the measured compute time
    per sample (one rank, one thread) and is None without it."""
    n_bytes = (n_params + 2) * itemsize   # + the loss and the row count
    rows = []
    for p in ranks:
        for gbit in bandwidths:
            t = ring_allreduce_seconds(n_bytes, p, gbit)
            b = None if seconds_per_sample is None else \
                min_batch_per_rank(seconds_per_sample, n_bytes, p, gbit, efficiency)
            rows.append((p, gbit, n_bytes / 1e6, t * 1e3, b))
    return rows


def print_scaling_table(n_params, itemsize, seconds_per_sample=None):
    print(f"scaling model: {n_params:,} parameters x {itemsize} bytes per allreduce; "
          f"ring allreduce 2(p-1)/p x bytes / bandwidth; efficiency b c / (b c + T) >= 80% "
          f"needs b >= 4 T / c")
    c = "measured by the integrator" if seconds_per_sample is None else \
        f"{seconds_per_sample * 1e3:.3f} ms (measured)"
    print(f"compute per sample c: {c}")
    print(f"{'ranks':>5} {'Gbit/s':>6} {'MB/step':>8} {'allreduce ms':>12} "
          f"{'min batch/rank for 80%':>23}")
    for p, gbit, mb, ms, b in scaling_table(n_params, itemsize, seconds_per_sample):
        print(f"{p:>5} {gbit:>6} {mb:>8.1f} {ms:>12.2f} "
              f"{'(needs c)' if b is None else b:>23}")


# ------------------------------------------------------------------ one measurement

def _worker(steps, batch, dtype, warmup):
    """Runs inside mpiexec: ``steps`` data-parallel steps on this rank's ``batch`` rows
    each; rank 0 prints one ``MPI_BENCH {json}`` line."""
    from mpi4py import MPI

    from . import distributed, loss, optim
    from .model import Model
    from .modules import Linear, Relu, Softmax
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    x = rng.random((batch * steps, LARGE[0])).astype(dtype)
    y = np.eye(LARGE[-1], dtype=dtype)[rng.integers(0, LARGE[-1], len(x))]
    init = np.random.default_rng(0)
    stack = []
    for units in LARGE[1:-1]:
        stack += [Linear(units, init="he", rng=init), Relu()]
    stack += [Linear(LARGE[-1], init="xavier", rng=init), Softmax()]
    net = Model(stack, dtype=dtype)
    opt, cce = optim.Adam(lr=1e-4), loss.CategoricalCrossentropy()
    for _ in range(warmup):   # compile / load kernels, touch every buffer
        distributed.epoch_runner(net, x[:batch], y[:batch], batch, opt, cce, comm)([None])
    run = distributed.epoch_runner(net, x, y, batch, opt, cce, comm)
    comm.Barrier()
    started = time.perf_counter()
    run([None])
    elapsed = time.perf_counter() - started
    stats = comm.gather((elapsed, run.exchange.seconds), root=0)
    baseline = None
    if size == 1:   # the same steps without MPI: the compiled epoch of one process
        net.train(x[:batch], y[:batch], opt, cce, 1, shuffle=False, verbose=False)  # warm
        started = time.perf_counter()
        net.train(x, y, opt, cce, 1, batch_size=batch, shuffle=False, verbose=False)
        baseline = (time.perf_counter() - started) / steps
    if rank == 0:
        wall = max(e for e, _ in stats)
        print("MPI_BENCH " + json.dumps({
            "ranks": size, "steps": steps, "batch_per_rank": batch, "dtype": np.dtype(dtype).name,
            "step_s": wall / steps, "allreduce_s": max(a for _, a in stats) / steps,
            "samples_per_s": size * batch * steps / wall, "no_mpi_step_s": baseline}),
            flush=True)


def _tiny(with_mpi):
    """A whole small training run (the start-up benchmark times the process)."""
    from . import loss, optim
    from .model import Model
    from .modules import Linear, Relu, Softmax
    comm = None
    if with_mpi:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), np.eye(3)[rng.integers(0, 3, 32)]
    net = Model([Linear(8, init="he", rng=rng), Relu(), Linear(3, init="he", rng=rng),
                 Softmax()])
    net.train(x, y, optim.Adam(), loss.CategoricalCrossentropy(), 3, batch_size=8,
              verbose=False, comm=comm)


def _startup(runs):
    """Median wall time of a whole small run: one process, then 2 ranks under mpiexec,
    both with the Numba cache warm (a first untimed run of each fills it)."""
    tiny = [sys.executable, "-m", "fastbp.mpi_bench", "--tiny"]
    commands = {"1 process": tiny, "mpiexec -n 2": [_mpiexec(), "-n", "2"] + tiny + ["--mpi"]}
    env = dict(os.environ, **{name: "1" for name in THREADS})
    print(f"start-up, warm Numba cache, median of {runs} runs (whole process, tiny model):")
    for name, cmd in commands.items():
        subprocess.run(cmd, env=env, check=True)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, env=env, check=True)
            times.append(time.perf_counter() - started)
        print(f"  {name:>13}: {np.median(times):.2f} s (min {min(times):.2f}, "
              f"max {max(times):.2f})")


def _mpiexec():
    mpiexec = pathlib.Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit('no mpiexec: pip install "fastbp[mpi]" (the mpich wheel brings it)')
    return mpiexec


def _launch(ranks, args):
    env = dict(os.environ, **{name: "1" for name in THREADS})
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, "-m", "fastbp.mpi_bench", "--worker",
           "--steps", str(args.steps), "--batch", str(args.batch), "--dtype", args.dtype,
           "--warmup", str(args.warmup)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [l for l in done.stdout.splitlines() if l.startswith("MPI_BENCH ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[0][len("MPI_BENCH "):])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.mpi_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--batch", type=int, default=512, help="rows per rank per step")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--model-only", action="store_true",
                        help="print the scaling model only (no MPI run)")
    parser.add_argument("--seconds-per-sample", type=float,
                        help="with --model-only: a measured compute time per sample")
    parser.add_argument("--startup", type=int, metavar="RUNS",
                        help="time the start-up of 1 process vs mpiexec -n 2 instead")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        return _tiny(args.mpi)
    if args.startup:
        return _startup(args.startup)
    itemsize = np.dtype(args.dtype).itemsize
    if args.worker:
        return _worker(args.steps, args.batch, np.dtype(args.dtype), args.warmup)
    if args.model_only:
        return print_scaling_table(n_parameters(), itemsize, args.seconds_per_sample)
    print(f"784-2048-2048-10 {args.dtype}, batch {args.batch} per rank, {args.steps} steps, "
          f"one thread per rank")
    print("allreduce ms: time in MPI_Allreduce per step (includes waiting for a slower rank); "
          "efficiency: samples/s / (ranks x samples/s of one rank)")
    print(f"{'ranks':>5} {'step ms':>8} {'allreduce ms':>12} {'samples/s':>10} "
          f"{'efficiency':>10}")
    results = [_launch(r, args) for r in args.ranks]
    one = next((r for r in results if r["ranks"] == 1), None)
    for r in results:
        eff = "" if one is None else \
            f"{r['samples_per_s'] / (r['ranks'] * one['samples_per_s']):.1%}"
        print(f"{r['ranks']:>5} {r['step_s'] * 1e3:>8.1f} {r['allreduce_s'] * 1e3:>12.2f} "
              f"{r['samples_per_s']:>10.0f} {eff:>10}")
    if one is not None:
        print(f"one process without MPI (compiled epoch): {one['no_mpi_step_s'] * 1e3:.1f} ms "
              f"per step")
        print()
        # c: one rank's step over its batch (the allreduce of one rank is ~0); it includes
        # the per-step update, so the bound errs on the safe side for smaller batches
        print_scaling_table(n_parameters(), itemsize, one["step_s"] / args.batch)
    return results


if __name__ == "__main__":
    main()
