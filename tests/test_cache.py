"""Numba's cache under concurrent writers: data files named by key never cross-link."""
import numpy as np
from numba.core.caching import IndexDataCacheFile
from numba.core.registry import CPUDispatcher

from fastbp.kernels import nn
from fastbp.kernels.cache import KeyedCacheFile, source_stamp


def _race(cls, tmp_path):
    """Process A saves signature A; process B, which read the index before A wrote it,
    saves signature B; A's index write lands last. Then load A."""
    f = cls(cache_path=str(tmp_path), filename_base="k", source_stamp=(1.0, 10))
    f.save("sigA", b"code for A")
    index_after_a = (tmp_path / "k.nbi").read_bytes()
    (tmp_path / "k.nbi").unlink()             # B saw no index yet
    f.save("sigB", b"code for B")
    (tmp_path / "k.nbi").write_bytes(index_after_a)  # A's index wins the race
    return f.load("sigA")


def test_numbered_files_cross_link_but_keyed_files_do_not(tmp_path):
    (tmp_path / "numba").mkdir()
    (tmp_path / "fastbp").mkdir()
    assert _race(IndexDataCacheFile, tmp_path / "numba") == b"code for B"  # Numba's flaw
    assert _race(KeyedCacheFile, tmp_path / "fastbp") == b"code for A"


def test_every_cached_kernel_uses_keyed_files():
    cached = [d for d in vars(nn).values()
              if isinstance(d, CPUDispatcher) and getattr(d, "_cache", None) is not None
              and hasattr(d._cache, "_cache_file")]
    assert len(cached) > 10
    assert all(type(d._cache._cache_file) is KeyedCacheFile for d in cached)


def test_cache_entries_are_keyed_by_source_content(tmp_path):
    """An entry written from other sources (an older fastbp) is never read."""
    old = KeyedCacheFile(cache_path=str(tmp_path), filename_base="k",
                         source_stamp=("sha256", "old sources"))
    old.save("sig", b"old machine code")
    new = KeyedCacheFile(cache_path=str(tmp_path), filename_base="k",
                         source_stamp=source_stamp())
    assert new.load("sig") is None            # stale index: recompile
    new.save("sig", b"new machine code")
    assert new.load("sig") == b"new machine code"
    old.save("sig", b"old machine code")      # an old process still running writes late
    assert new.load("sig") is None            # ... and is still not read
    assert len(list(tmp_path.glob("k.*.nbc"))) == 2
