"""The `fastbp` command: xor, train, bench; and fastbp.warmup()."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from conftest import run_at_once

# The three heaviest tests here start processes that compile a whole run's kernels (tens of
# seconds each on a fresh install): marked slow, so the default `pytest` stays short; CI
# (.ci/run) runs them with `pytest -m slow`.


def _fastbp(tmp_path, *args, env=None, stderr=False):
    out = subprocess.run([sys.executable, "-m", "fastbp.cli", *args], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600,
                         env=None if env is None else dict(os.environ, **env))
    assert out.returncode == 0, out.stderr
    return (out.stdout, out.stderr) if stderr else out.stdout


COMMANDS = {"xor": ["xor", "--quiet"],
            "plot": ["train", "spirals", "--epochs", "3", "--quiet", "--plot", "c.png"]}


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """(folder, stdout) of each command of COMMANDS; the processes run at once (they
    compile, or load, different kernels)."""
    where = tmp_path_factory.mktemp("commands")
    outs = run_at_once([[sys.executable, "-m", "fastbp.cli", *args]
                        for args in COMMANDS.values()], where)
    return {name: (where, out) for name, out in zip(COMMANDS, outs)}


def test_xor_command_trains_the_network(commands):
    out = commands["xor"][1]
    loss = float(re.search(r"final loss ([0-9.]+)", out).group(1))
    assert loss < 0.005
    preds = [int(m) for m in re.findall(r"-> [0-9.]+ \((\d)\)", out)]
    assert preds == [1, 0, 0, 1]  # rows [0,1], [0,0], [1,1], [1,0]


@pytest.mark.slow
def test_first_run_as_a_new_user_runs_it_says_it_compiles(tmp_path):
    """`fastbp xor` as the README runs it (progress shown), with an empty Numba cache: a
    fresh install's first run. It crashed here once (the notice's listener broke Numba's
    event dispatch) while every --quiet run passed."""
    out, err = _fastbp(tmp_path, "xor", "--epochs", "50",
                       env={"NUMBA_CACHE_DIR": str(tmp_path / "cache")}, stderr=True)
    assert "final loss" in out
    assert "compiling the kernels for this machine (first run only" in err
    assert re.search(r"fastbp: compiled in [0-9.]+ s", err)
    _, err = _fastbp(tmp_path, "xor", "--epochs", "50",
                     env={"NUMBA_CACHE_DIR": str(tmp_path / "cache")}, stderr=True)
    assert "compil" not in err          # the second run loads the cache: no notice


@pytest.mark.slow
def test_train_command_saves_a_loadable_model(tmp_path):
    out = _fastbp(tmp_path, "train", "spirals", "--epochs", "30", "--quiet", "--lr", "0.01",
                  "--save", "m.npz")
    acc = float(re.search(r"test accuracy ([0-9.]+)%", out).group(1))
    assert acc > 60  # three spirals, 30 epochs: far above the 33% of guessing
    model = fastbp.load(tmp_path / "m.npz")
    assert model.dtype == np.float32 and model.layers[0].w.shape == (2, 64)
    opt = fastbp.load_optimizer(tmp_path / "m.npz")
    assert type(opt).__name__ == "Adam" and opt.t == 30 * 8  # 240 rows / batch 32


@pytest.mark.slow
def test_bench_prints_a_row_per_competitor(tmp_path):
    out = _fastbp(tmp_path, "bench", "xor", "softmax", "--rounds", "1")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "reference" in line]
    assert len(rows) == 2
    for row in rows:
        ratio = float(row.split("|")[5])   # workload | base | competitor | time | ratio
        assert ratio > 0


@pytest.mark.slow
def test_warmup_compiles_the_kernels(tmp_path):
    code = ("import fastbp\nfrom fastbp.kernels import nn\n"
            "assert nn.plan_train.signatures == []\n"
            "fastbp.warmup()\n"
            "print(len(nn.plan_train.signatures), len(nn.linear_forward.signatures))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True, timeout=600).stdout.split()
    assert int(out[0]) >= 2 and int(out[1]) >= 2  # float32 and float64
    # The next process loads them all: the report lists each load and compiles nothing.
    report = _fastbp(tmp_path, "warmup", "--report")
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ")][2:]
    assert {row[0] for row in rows} >= {"| plan_train", "| tiny_train", "| linear_forward"}
    assert all(row[2] == "loaded from cache" for row in rows)
    assert re.search(r"total: 0\.00 s compiling, [0-9.]+ s loading from the cache", report)


def test_train_command_writes_the_loss_and_accuracy_plot(commands):
    where, out = commands["plot"]
    assert "wrote c.png" in out
    png = (where / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000  # two panels drawn


def test_digits_without_scikit_learn_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "from fastbp import data\n"
            "try:\n    data.digits()\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert 'pip install "fastbp[digits]"' in out
