"""Data parallelism over MPI (fastbp.distributed): N ranks with per-rank batch b train the
same model as one process with batch N*b whose rows at each step are the union of the
ranks' rows (the single-process run is the oracle), every rank ends bitwise identical,
and faults end the job with the error on every rank instead of a hang.

Each group of scenarios runs in one ``mpiexec`` launch of tests/mpi_scenarios.py (a
launch costs process starts and a Numba cache load); rank 0 prints the numbers as JSON.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT = 120   # seconds; a deadlock fails the test instead of hanging CI


def _mpiexec():
    beside = pathlib.Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _needs_mpi():
    pytest.importorskip("mpi4py", reason='the mpi extra is not installed '
                                         '(pip install ".[mpi]"); MPI tests not run')
    if _mpiexec() is None:
        pytest.skip('no mpiexec on PATH (pip install ".[mpi]" brings MPICH\'s)')


def launch(ranks, *args):
    """``mpiexec -n ranks python args...`` with one thread per rank; returns the result."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    # cwd away from the repository root: there, the source folder fastbp/ (without
    # fastbp.kernels) would shadow the installed package.
    return subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, *args], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=tempfile.gettempdir())


def results(ranks, group):
    done = launch(ranks, str(HERE / "mpi_scenarios.py"), group)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and len(lines) == 1, done.stdout + done.stderr
    return json.loads(lines[0][len("RESULTS "):])


@pytest.fixture(scope="module")
def two_ranks():
    _needs_mpi()
    return results(2, "equivalence")


@pytest.fixture(scope="module")
def three_ranks():
    _needs_mpi()
    return results(3, "uneven")


def _assert_equivalent(result):
    assert result["params_rel"] < 1e-10 and result["loss_rel"] < 1e-10, result
    assert result["ranks_identical"] and result["histories_identical"], result
    assert result["epochs"] == 6


@pytest.mark.parametrize("optimizer", ["SGD", "Momentum", "RMSProp", "Adam"])
@pytest.mark.parametrize("kind", ["mse", "cce"])
def test_two_ranks_train_as_one_process_with_the_union_batch(two_ranks, optimizer, kind):
    _assert_equivalent(two_ranks[f"{optimizer}-{kind}"])


def test_validation_history_matches_the_single_process(two_ranks):
    for name in ("SGD-mse", "SGD-cce"):
        assert two_ranks[name]["val_loss_rel"] < 1e-10


def test_custom_layers_train_layer_by_layer_across_ranks(two_ranks):
    result = two_ranks["custom-Adam-mse"]
    _assert_equivalent(result)
    assert result["custom_rel"] < 1e-10


@pytest.mark.parametrize("case", ["plan-decay-Adam-cce", "plan-mean-Adam-cce",
                                  "plan-mean-decay-Adam-cce", "custom-decay-Adam-cce",
                                  "custom-mean-Adam-cce", "custom-mean-decay-Adam-cce",
                                  "plan-eps-SGD-cce", "plan-decay-SGD-mse"])
def test_weight_decay_mean_reduction_and_eps_apply_to_the_union_batch(two_ranks, case):
    # They were dropped with comm= (decay and the loss's eps never reached the gradient,
    # and "mean" trained as "sum" with a history 40x too large), with no error.
    _assert_equivalent(two_ranks[case])


@pytest.mark.parametrize("path", ["plan", "custom"])
def test_divergence_stops_every_rank_before_the_step_with_a_non_finite_loss(two_ranks, path):
    """As one process on the union batch: the same error, the same steps taken (the one
    whose loss is not finite is not), the same finite weights."""
    result = two_ranks[f"diverge-{path}"]
    assert result["messages"][0] == result["messages"][1], result
    assert "loss became" in result["messages"][0], result
    assert result["t"][0] == result["t"][1] >= 1, result
    assert result["finite"] and result["ranks_identical"], result
    assert result["params_rel"] < 1e-10, result


def test_full_batch_uses_every_rank_s_whole_shard(two_ranks):
    result = two_ranks["fullbatch-RMSProp-cce"]
    _assert_equivalent(result)
    assert result["rows_per_epoch"] == 14


def test_shuffled_ranks_stay_identical_and_rank0_saves_once(two_ranks):
    result = two_ranks["shuffle-save"]
    assert result == {"ranks_identical": True, "loaded_equal": True, "files": ["model.npz"]}


@pytest.mark.parametrize("name, rows", [("partial", 33), ("drop", 24)])
@pytest.mark.parametrize("case", ["Adam-mse", "Momentum-cce"])
def test_uneven_shards_follow_the_fewest_batches_rule(three_ranks, name, rows, case):
    """partial: shards 10, 11, 12 rows, batch 4 -> 3 steps, the last one short on two
    ranks; drop: shards 8, 9, 13 -> 2 steps, the longer shards' last rows unused."""
    result = three_ranks[f"{name}-{case}"]
    _assert_equivalent(result)
    assert result["rows_per_epoch"] == rows


def test_faults_end_the_job_with_the_error_on_every_rank():
    _needs_mpi()
    done = launch(2, str(HERE / "mpi_scenarios.py"), "faults")
    out = done.stdout + done.stderr
    expected = {"nan_input": r"DistributedInputError: .*rank 1: ValueError: train: x "
                             r"contains NaN",
                "wrong_columns": r"DistributedInputError: .*disagree on the x columns "
                                 r"\(rank 0: 5, rank 1: 6\)",
                # rank 1's y * 1e300: the union loss is NaN before any step
                "diverge_one_rank": r"FloatingPointError: train: the loss is (nan|inf) at the "
                                    r"weights train started from \(epoch 1, before any "
                                    r"update\)",
                "save_fails": r"(FileNotFoundError|OSError: save: rank 0 could not write)"}
    for rank in (0, 1):
        for scenario, pattern in expected.items():
            assert re.search(rf"rank={rank} scenario={scenario} {pattern}", out), \
                (scenario, rank, out)
    # Then rank 1's custom layer raises mid-training: printed, and the job aborts.
    assert "RuntimeError: Scale: deliberate failure on rank 1" in out
    assert "aborting the MPI job" in out
    assert "scenario=custom_raises no error" not in out
    assert done.returncode != 0


def test_cli_trains_digits_across_ranks_and_reports_once_with_one_bar(tmp_path):
    _needs_mpi()
    pytest.importorskip("sklearn", reason="digits needs scikit-learn (the test extra)")
    path = tmp_path / "digits.npz"
    # float64: the kernels the other launches compiled (a float32 compile, twice at once
    # on a shared machine, can take a minute)
    done = launch(2, "-m", "fastbp.cli", "train", "digits", "--distributed", "--epochs",
                  "3", "--dtype", "float64", "--save", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.count("100%|") == 1, done.stderr   # one progress bar: rank 0's
    reports = re.findall(r"test accuracy ([\d.]+)%", done.stdout)
    assert len(reports) == 1, done.stdout
    assert float(reports[0]) > 80   # 3 epochs of Adam on 2 x 719 rows
    assert "2 ranks" in done.stdout
    import fastbp
    from fastbp import data
    (_, _), (x_test, y_test) = data.digits()
    pred = fastbp.load(path).predict(x_test)
    assert abs(np.mean(pred.argmax(1) == y_test.argmax(1)) * 100 - float(reports[0])) < 0.01


def test_import_fastbp_never_imports_mpi():
    code = ("import sys, fastbp, fastbp.distributed, fastbp.mpi_bench; "
            "print('mpi4py' in sys.modules, 'numba_mpi' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tempfile.gettempdir())
    assert done.stdout.split() == ["False", "False"], done.stderr


class FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


@pytest.mark.parametrize("n, size", [(10, 3), (7, 7), (100, 8)])
def test_shard_gives_contiguous_shares_that_cover_the_data(n, size):
    from fastbp.data import shard
    x, y = np.arange(n * 2).reshape(n, 2), np.arange(n)[:, None]
    parts = [shard(x, y, FakeComm(r, size)) for r in range(size)]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
    assert [len(p[0]) for p in parts] == [(r + 1) * n // size - r * n // size
                                          for r in range(size)]


def test_shard_refuses_fewer_rows_than_ranks():
    from fastbp.data import shard
    with pytest.raises(ValueError, match="3 rows cannot be split over 4 ranks"):
        shard(np.zeros((3, 2)), np.zeros((3, 1)), FakeComm(0, 4))


def test_readme_mpi_example_runs_on_two_ranks_and_prints_once(tmp_path):
    """The README's ```python mpi block, as written, under mpiexec -n 2."""
    _needs_mpi()
    pytest.importorskip("sklearn", reason="digits needs scikit-learn (the test extra)")
    readme = (HERE.parent / "README.md").read_text()
    blocks = re.findall(r"```python mpi\n(.*?)```", readme, re.S)
    assert len(blocks) == 1
    script = tmp_path / "train_mpi.py"
    script.write_text(blocks[0])
    done = subprocess.run([_mpiexec(), "-n", "2", sys.executable, str(script)], cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
                                   OPENBLAS_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout.split()
    assert len(printed) == 1                       # rank 0 only
    assert 0.93 <= float(printed[0]) <= 0.97       # "~0.95"
    assert (tmp_path / "digits.npz").exists()
