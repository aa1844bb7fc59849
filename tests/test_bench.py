"""``fastbp bench``: the harness's arithmetic on given numbers, and its workers (real
processes) on a tiny workload. No timings are asserted: only what the bench computes
from them, and that every competitor starts from the same weights and ends at the same
loss."""
import numpy as np
import pytest

from fastbp import _bench_workers as W
from fastbp import bench as B

# Two /proc/stat snapshots: user nice system idle iowait irq softirq steal guest guest_nice
STAT_BEFORE = "cpu  1000 10 500 8000 100 0 50 40 0 0\ncpu0 500 5 250 4000 50 0 25 20 0 0\n"
STAT_AFTER = "cpu  1600 10 700 8900 100 0 70 120 0 0\ncpu0 800 5 350 4450 50 0 35 60 0 0\n"


def test_rotation_puts_each_competitor_first_once_per_cycle():
    order = ["fastbp", "reference", "pytorch"]
    assert B.rotated(order, 0) == order
    assert B.rotated(order, 1) == ["reference", "pytorch", "fastbp"]
    assert B.rotated(order, 2) == ["pytorch", "fastbp", "reference"]
    assert B.rotated(order, 3) == order
    assert [B.rotated(order, r)[0] for r in range(3)] == order


def test_ratios_are_per_round_then_median_with_min_max():
    base = [1.0, 2.0, 4.0]
    times = [3.0, 3.0, 4.0]         # per round: 3.0, 1.5, 1.0
    median, ratio, low, high = B.ratio_stats(times, base)
    assert median == 3.0
    assert ratio == 1.5
    assert (low, high) == (1.0, 3.0)
    # per-round ratios 2, 2, 9, 0.09: median 2, where the ratio of medians would be 5.5
    _, ratio, _, _ = B.ratio_stats([2.0, 2.0, 9.0, 9.0], [1.0, 1.0, 1.0, 100.0])
    assert ratio == 2.0


def test_steal_is_the_steal_delta_over_all_cpu_time():
    # deltas: user 600, system 200, idle 900, softirq 20, steal 80 -> total 1800
    assert B.steal_percent(STAT_BEFORE, STAT_AFTER) == pytest.approx(100 * 80 / 1800)
    assert B.steal_percent(STAT_BEFORE, STAT_BEFORE) == 0.0


def test_process_cpu_time_reads_utime_and_stime_after_the_command_name():
    # a command name with spaces and a ")" must not shift the fields
    stat = "4242 (py (x) y) S 1 4242 4242 0 -1 4194304 900 0 0 0 123 45 0 0 20 0 3 0 77"
    assert B.process_cpu_ticks(stat) == 123 + 45


def test_gemm_share_and_ratios_in_the_table():
    name = "large32"
    flops = B.WORKLOADS[name].flops
    gemm = 2 * 512 * 2048 * 2048
    results = {"fastbp": ([flops / 80e9, flops / 100e9], [0.5, 0.5]),    # 80, 100 GFLOP/s
               "pytorch": ([flops / 40e9, flops / 100e9], [0.5, 0.5]),   # ratios 2.0, 1.0
               "GEMM": ([gemm / 100e9, gemm / 100e9], [np.nan, np.nan])}
    rows = [B.FASTBP, B.PYTORCH, B.GEMM]
    first, second = B.table_rows(name, rows, results)
    cells = [c.strip() for c in first.split("|")]
    assert cells[3] == "pytorch" and cells[5] == "1.50" and cells[6] == "1.00-2.00"
    assert cells[7] == "0.5 / 0.5"
    cells = [c.strip() for c in second.split("|")]
    assert "fastbp 88.9 of 100.0 GFLOP/s" in cells[3]     # flops / median time
    assert cells[5] == "90%" and cells[6] == "80%-100%"   # per-round shares


class _Clocked(W.Runner):
    """A runner on a fake clock: each call takes the next of ``durations`` seconds."""

    def __init__(self, spec, durations, clock):
        super().__init__(spec, "fake")
        self.durations, self.clock, self.log = list(durations), clock, []

    def reset(self):
        self.log.append("reset")

    def call(self):
        self.log.append("call")
        self.clock[0] += self.durations.pop(0)

    def loss(self):
        return len(self.log)


def test_min_seconds_repeats_calls_each_from_a_reset_until_they_add_up(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(W.time, "perf_counter", lambda: clock[0])
    runner = _Clocked(dict(min_seconds=0.02, inner=1), [0.008, 0.007, 0.006, 0.5], clock)
    seconds, loss = runner.run()
    # 8 + 7 ms < 20 ms, 8 + 7 + 6 >= 20: three calls, each right after its own reset
    assert runner.log == ["reset", "call"] * 3 and loss == 6
    assert seconds == pytest.approx(0.021 / 3)
    # one call already longer than the minimum: one call, as without min_seconds
    runner = _Clocked(dict(min_seconds=0.02), [0.05, 1.0], clock)
    assert runner.run() == (pytest.approx(0.05), 2)
    # without min_seconds: one reset, then `inner` calls back to back
    runner = _Clocked(dict(inner=3), [0.001, 0.002, 0.003], clock)
    assert runner.run() == (pytest.approx(0.002), 4) and runner.log == ["reset"] + ["call"] * 3


def test_only_the_xor_workload_repeats_runs_from_the_initial_weights():
    assert B.WORKLOADS["xor"].spec["min_seconds"] == B.XOR_SECONDS > 0
    assert not B.WORKLOADS["train-overhead"].spec["min_seconds"]   # 2000 calls, no reset
    assert all(not w.spec.get("min_seconds") for name, w in B.WORKLOADS.items()
               if name != "xor")


TINY = dict(kind="mlp", data="random", rows=12, sizes=[5, 7, 3], acts=["Relu", "Softmax"],
            dtype="float64", loss="CategoricalCrossentropy", optim="Adam", lr=0.01, epochs=3,
            batch=4, inner=1)
TINY_ROWS = [B.FASTBP, B.REFERENCE, B.PYTORCH] + B.JAX_ROWS


@pytest.fixture(scope="module")
def tiny_bench():   # starts every competitor's worker process: the tests using it are slow
    """Real workers, set up once for a tiny workload registered under 'tiny'."""
    B.WORKLOADS["tiny"] = B.Workload("tiny", TINY, TINY_ROWS, "fastbp", None)
    bench = B.Bench(log=lambda message: None)
    rows = bench.setup("tiny", TINY_ROWS)
    yield bench, rows
    bench.close()
    del B.WORKLOADS["tiny"]


@pytest.mark.slow
def test_every_competitor_starts_from_the_same_weights(tiny_bench):
    bench, rows = tiny_bench
    assert {"fastbp", "reference"} <= {row.name for row in rows}, bench.notes
    expected = W.shared_weights(TINY["sizes"], TINY["dtype"])
    for row in rows:
        got = bench.worker(row.library).ask("weights", ("tiny", row.name))
        assert len(got) == len(expected), row.name
        for (w, b), (w0, b0) in zip(got, expected):
            assert w.dtype == w0.dtype and w.shape == w0.shape, row.name
            np.testing.assert_array_equal(w, w0, err_msg=row.name)
            np.testing.assert_array_equal(b, b0, err_msg=row.name)


@pytest.mark.slow
def test_workers_train_to_the_same_final_loss(tiny_bench):
    bench, rows = tiny_bench
    results = bench.measure("tiny", rows, rounds=1)
    losses = {name: values[-1] for name, (times, values) in results.items()}
    assert all(len(times) == 1 and times[0] > 0 for times, _ in results.values())
    # three epochs of Adam moved the weights: the loss is not the initial one
    initial = W.shared_weights(TINY["sizes"], TINY["dtype"])
    x, y = W.shared_data(TINY)
    h = np.maximum(x @ initial[0][0] + initial[0][1], 0) @ initial[1][0] + initial[1][1]
    p = np.exp(h - h.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert abs(losses["fastbp"] - W.final_loss(p, y, TINY["loss"])) > 1e-3
    for name, value in losses.items():
        assert value == pytest.approx(losses["fastbp"], rel=1e-9), name


@pytest.mark.slow
def test_each_worker_imports_only_its_own_library(tiny_bench):
    bench, rows = tiny_bench
    libraries = {"fastbp": "fastbp", "numba": "fastbp", "torch": "torch", "jax": "jax"}
    for library in {row.library for row in rows}:
        held = bench.worker(library).ask("imported", sorted(libraries))
        assert held == sorted(m for m, owner in libraries.items() if owner == library), library
