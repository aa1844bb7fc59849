import os
import subprocess
import sys

import numpy as np
import pytest

from fastbp import optim
from fastbp.kernels import PARALLEL_MIN_ELEMENTS

RTOL = {np.float64: 1e-10, np.float32: 1e-4}


class LayerwiseSGD(optim.SGD):
    """A custom optimizer (SGD's update): forces the layer-by-layer path."""


# Batch shapes (N, O): one row, odd sizes, and both sides of the serial/parallel switch.
SMALL_SHAPES = [(1, 1), (1, 7), (3, 5), (17, 2), (64, 10), (65, 3)]
LARGE_SHAPES = [(PARALLEL_MIN_ELEMENTS // 97 + 3, 97), (PARALLEL_MIN_ELEMENTS // 130 + 1, 131)]
# The sweeps at the large shapes compile every parallel kernel for both dtypes (about 11 s
# of a run with an empty Numba cache): marked slow, run by .ci/run (`pytest -m slow`). The
# default run still checks the parallel kernels against the serial ones bit for bit
# (test_kernels.test_serial_and_parallel_variants_agree_bitwise).
SHAPES = SMALL_SHAPES + [pytest.param(shape, marks=pytest.mark.slow) for shape in LARGE_SHAPES]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def assert_close(actual, expected, dtype, scale=None):
    """Relative agreement at the dtype's tolerance; ``scale`` guards entries near zero."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    rtol = RTOL[np.dtype(dtype).type]
    atol = rtol * (np.abs(expected).max() if scale is None else scale) if expected.size else 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# The original from-scratch XOR examples: note its 4th row repeats [0, 1].
XOR_X = np.array([[0, 1], [0, 0], [1, 1], [0, 1]])
XOR_Y = np.array([[1], [0], [0], [1]])
XOR_Y2 = np.array([[0, 1], [1, 0], [1, 0], [0, 1]])


def run_at_once(commands, cwd, envs=None, timeout=600):
    """Run each command (an argv list) in its own process, all at once (for independent
    processes that spend most of their time importing), and return their stdouts in
    order. ``envs``: extra environment variables per command. Fails on any exit status
    but 0, with that command's stderr."""
    envs = envs or [{}] * len(commands)
    procs = [subprocess.Popen(argv, cwd=cwd, env=dict(os.environ, PYTHONFAULTHANDLER="1", **env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv, env in zip(commands, envs)]
    outs = []
    try:
        for argv, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, \
                f"{' '.join(argv)[:80]!r}... exited with {proc.returncode}:\n{err[-5000:]}"
            outs.append(out)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return outs


def run_scripts(scripts, cwd, envs=None, timeout=600):
    """run_at_once for Python scripts, each in a fresh interpreter."""
    return run_at_once([[sys.executable, "-c", code] for code in scripts], cwd, envs, timeout)
