"""Numba's on-disk cache, keyed by content and safe for processes compiling at once.

Numba's own scheme has two weak points that bit this project:

* It numbers each function's data files 1, 2, ... in the order signatures get compiled.
  Two processes compiling different signatures of one kernel at the same moment can both
  pick number 1, and the index written last then points one signature at the other's
  machine code: the next process to load it crashes (seen here) or computes garbage.
* It trusts a cache whose source file has the same modification time and size, and it
  does not notice a change in another file whose values are compiled in (config.py).

Here the "source stamp" of every fastbp kernel is a SHA-256 of the kernel sources
(nn.py and config.py), and each data file is named after a hash of (stamp, signature,
CPU, bytecode). A cache entry is only ever read by code built from identical sources;
two writers of one file write the same bytes; a lost index update costs a recompile.
"""
import hashlib
import os

from numba.core.caching import IndexDataCacheFile
from numba.core.registry import CPUDispatcher

_SOURCES = ("nn.py", "config.py", "cache.py")


def source_stamp():
    """SHA-256 of the files whose content is compiled into the kernels."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _SOURCES:
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    return ("sha256", digest.hexdigest())


class KeyedCacheFile(IndexDataCacheFile):
    def save(self, key, data):
        tag = repr((self._source_stamp, key)).encode()
        name = self._data_name(int(hashlib.sha256(tag).hexdigest()[:15], 16))
        self._save_data(name, data)
        overloads = self._load_index()
        overloads[key] = name
        self._save_index(overloads)


def harden(namespace):
    """Switch every cached dispatcher in ``namespace`` (a module's globals) to
    KeyedCacheFile with a content stamp. Reads two small files; compiles nothing."""
    stamp = source_stamp()
    for obj in list(namespace.values()):
        cache = getattr(obj, "_cache", None) if isinstance(obj, CPUDispatcher) else None
        cache_file = getattr(cache, "_cache_file", None)
        if type(cache_file) is IndexDataCacheFile:
            cache_file.__class__ = KeyedCacheFile
            cache_file._source_stamp = stamp
