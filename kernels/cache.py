"""Numba's on-disk cache, made safe for processes that compile at the same time.

Numba numbers each function's cache data files 1, 2, ... in the order signatures are
compiled. Two processes compiling different signatures of one kernel at the same moment
(a multiprocessing pool, two test runs) can both pick number 1; the index written last
then points one signature at the other's machine code, and the next process to load it
crashes or computes garbage. Here each data file is named after its index key (the
signature, the CPU, and a hash of the function's bytecode), and written before the index:
two writers of one file write the same bytes, and a lost index update costs only a
recompile.
"""
import hashlib

from numba.core.caching import IndexDataCacheFile
from numba.core.registry import CPUDispatcher


class KeyedCacheFile(IndexDataCacheFile):
    def save(self, key, data):
        name = self._data_name(int(hashlib.sha256(repr(key).encode()).hexdigest()[:15], 16))
        self._save_data(name, data)
        overloads = self._load_index()
        overloads[key] = name
        self._save_index(overloads)


def harden(namespace):
    """Switch every cached dispatcher in ``namespace`` (a module's globals) to KeyedCacheFile."""
    for obj in list(namespace.values()):
        cache = getattr(obj, "_cache", None) if isinstance(obj, CPUDispatcher) else None
        cache_file = getattr(cache, "_cache_file", None)
        if type(cache_file) is IndexDataCacheFile:
            cache_file.__class__ = KeyedCacheFile
