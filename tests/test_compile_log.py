"""The first-run compile notice and the compile record (fastbp.compile_log), run around
small functions compiled here, so that Numba really compiles under them."""
import time

import numba
import numpy as np

from fastbp import compile_log


def _fresh_kernel():
    """A function no process has compiled before (no cache): calling it compiles."""
    @numba.njit
    def triple_sum(x):
        return 3.0 * x.sum()
    return triple_sum


def test_notice_says_once_that_it_compiles_and_how_long_compiling_took():
    said, kernel = [], _fresh_kernel()
    started = time.perf_counter()
    with compile_log.compile_notice(True, write=said.append):
        assert kernel(np.arange(4.0)) == 18.0
        time.sleep(1.0)                                        # "training", not compiling
        assert kernel(np.arange(4, dtype=np.int64)) == 18.0   # a second compilation
        time.sleep(1.0)
    body = time.perf_counter() - started
    assert len(said) == 2
    assert said[0].startswith("fastbp: compiling the kernels for this machine (first run")
    seconds = float(said[1].removeprefix("fastbp: compiled in ").removesuffix(" s"))
    assert 0 <= seconds <= body - 1.9     # the compilations counted, the sleeps not


def test_notice_stays_silent_when_nothing_compiles():
    said, kernel = [], _fresh_kernel()
    kernel(np.arange(3.0))
    with compile_log.compile_notice(True, write=said.append):
        assert kernel(np.arange(3.0)) == 9.0
    with compile_log.compile_notice(False, write=said.append):
        assert _fresh_kernel()(np.arange(2.0)) == 3.0           # compiles, notice off
    assert said == []


def test_record_lists_each_compiled_signature():
    kernel = _fresh_kernel()
    with compile_log.recording() as record:
        kernel(np.ones(2))
        kernel(np.ones((2, 2), dtype=np.float32))
    rows = [r for r in record.rows if r["kernel"].endswith("triple_sum")]
    assert [r["signature"] for r in rows] == ["(f64[:])", "(f32[:, :])"]
    assert not any(r["loaded"] for r in rows)
    assert all(r["seconds"] >= r["own_seconds"] >= 0 for r in rows)
    table = record.table(only_prefix=__name__)
    assert table.count("| compiled |") == 2 and "2 fastbp kernel signatures" in table


def test_record_times_loads_from_the_on_disk_cache(tmp_path, monkeypatch):
    """A cached function compiled by one dispatcher, then loaded by a second one made
    from the same file (as the next process would): the load is a row of its own."""
    (tmp_path / "cached_mod.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef halve(x):\n    return x / 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import cached_mod
    with compile_log.recording([cached_mod.halve]) as first:
        assert cached_mod.halve(3.0) == 1.5
    fresh = importlib.reload(cached_mod).halve          # a new dispatcher, same source
    with compile_log.recording([fresh]) as second:
        assert fresh(5.0) == 2.5
    assert [(r["kernel"], r["loaded"]) for r in first.rows] == [("halve", False)]
    assert [(r["kernel"], r["signature"], r["loaded"]) for r in second.rows] == \
        [("halve", "(f64)", True)]
    assert "| halve | (f64) | loaded from cache |" in second.table(only_prefix="cached")
    assert "load_overload" not in vars(fresh._cache)     # the reader is restored
