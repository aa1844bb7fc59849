"""Measure where the kernels' switches should sit on this machine.

``python -m fastbp.breakeven`` prints, for the two size switches in kernels/config.py:
- PARALLEL_MIN_ELEMENTS: time of the serial and the parallel row kernels (bias + ReLU
  forward, ReLU derivative + bias gradient, softmax forward) by element count;
- the optimizer update (kernels/__init__.py keeps it serial): serial and parallel Adam
  right after a GEMM, as in a training step;
- SMALL_GEMM_FLOPS: time of the loop product and of the BLAS call by multiply-adds.
Competitors are interleaved over rounds and medians reported, as ratios serial/parallel
and loop/BLAS (above 1: the second is faster).
"""
import statistics
import time

import numpy as np

from .kernels import nn


def _median_ratio(first, second, rounds=15, reps=20):
    ratios = []
    for _ in range(rounds):
        times = []
        for fn in (first, second):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def parallel_table(widths=(256,), rows=(8, 32, 64, 128, 256, 512, 1024, 4096)):
    rng = np.random.default_rng(0)
    print("elements | fwd bias+relu serial/parallel | bwd relu+db serial/parallel | "
          "softmax serial/parallel")
    for w in widths:
        for n in rows:
            z = rng.standard_normal((n, w))
            out, b, db = np.empty_like(z), rng.standard_normal(w), np.empty(w)
            cases = [
                (lambda: nn._forward_rows(out, z, b, nn.RELU, 0, n),
                 lambda: nn.bias_activation_forward_par(out, z, b, nn.RELU)),
                (lambda: nn._backward_cols(out, db, z, z, nn.RELU, 0, w),
                 lambda: nn._backward_cols_par(out, db, z, z, nn.RELU)),
                (lambda: nn._forward_rows(out, z, b, nn.SOFTMAX, 0, n),
                 lambda: nn.bias_activation_forward_par(out, z, b, nn.SOFTMAX)),
            ]
            for a, p in cases:
                a()
                p()
            ratios = [_median_ratio(a, p) for a, p in cases]
            print(f"{n * w:8d} | " + " | ".join(f"{r:6.2f}" for r in ratios))


def update_table(sizes=(32768, 269322, 5820426)):
    """The Adam update, serial and parallel, each run right after a GEMM as in a training
    step (BLAS threads still spinning), by parameter count (784-256-256-10 has 269,322,
    784-2048-2048-10 5,820,426). Not interleaved per call: each side runs its own block of
    GEMM + update pairs, timing the update only."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((128, 784)), rng.standard_normal((784, 256))
    out = np.empty((128, 256))
    print("parameters | Adam update after a GEMM, serial/parallel")
    for n in sizes:
        p, g = rng.standard_normal(n), rng.standard_normal(n) * 1e-3
        s1, s2 = np.zeros(n), np.zeros(n)
        hp = np.array([1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001])

        def timed(update, reps=20):
            seconds = []
            for _ in range(reps):
                _blas(out, a, b)
                start = time.perf_counter()
                update(nn.ADAM, p, g, s1, s2, hp)
                seconds.append(time.perf_counter() - start)
            return statistics.median(seconds)
        ratios = []
        for _ in range(5):
            ratios.append(timed(nn.optim_update) / timed(nn.optim_update_par))
        print(f"{n:10d} | {statistics.median(ratios):6.2f}")


def gemm_table(sizes=(2, 4, 8, 12, 16, 24, 32, 48)):
    rng = np.random.default_rng(0)
    print("multiply-adds | loop/BLAS (a @ b) | loop/BLAS (a.T @ b)")
    for s in sizes:
        a, b = rng.standard_normal((s, s)), rng.standard_normal((s, s))
        out = np.empty((s, s))
        loop = (lambda: _loop(out, a, b), lambda: _loop_tn(out, a, b))
        nn.matmul(out, a, b)
        nn.matmul_tn(out, a, b)
        blas = (lambda: _blas(out, a, b), lambda: _blas_tn(out, a, b))
        for f in loop + blas:
            f()
        r1, r2 = _median_ratio(loop[0], blas[0]), _median_ratio(loop[1], blas[1])
        print(f"{s ** 3:13d} | {r1:6.2f} | {r2:6.2f}")


def _make_helpers():
    from numba import njit

    @njit
    def loop(out, a, b):
        n, k_dim = a.shape
        for i in range(n):
            for j in range(b.shape[1]):
                s = 0.0
                for k in range(k_dim):
                    s += a[i, k] * b[k, j]
                out[i, j] = s

    @njit
    def loop_tn(out, a, b):
        for i in range(a.shape[1]):
            for j in range(b.shape[1]):
                s = 0.0
                for r in range(a.shape[0]):
                    s += a[r, i] * b[r, j]
                out[i, j] = s

    @njit
    def blas(out, a, b):
        np.dot(a, b, out)

    @njit
    def blas_tn(out, a, b):
        np.dot(a.T, b, out)
    return loop, loop_tn, blas, blas_tn


if __name__ == "__main__":
    _loop, _loop_tn, _blas, _blas_tn = _make_helpers()
    parallel_table()
    print()
    update_table()
    print()
    gemm_table()
