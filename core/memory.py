"""Memory a run holds besides its chunks, kept from growing with the tile.

Two things grew with the tile size (docs/benchmarks.md, peak RSS), not with the chunk size:

* GDAL's block cache. It is process-wide and by default 5 % of the RAM (1.2 GB on a 24 GB
  machine, 3.2 GB on 64 GB); the decoded input blocks and written output blocks of a full tile
  fill it, those of a small tile do not. A run lowers it to :func:`cache_budget`, what the run
  needs to decode no block twice, and restores it afterwards (:func:`gdal_cache_limit`). Smaller
  is slower: a JPEG 2000 tile read with a 64 MB cache took 1.5× as long (tiles decoded again).
* Freed heap pages. glibc raises its mmap threshold each time a large buffer is freed, so the
  chunk-sized numpy/torch buffers end up on the heap, whose free pages between live blocks are
  never returned to the OS: RSS crept up by hundreds of MB over 64 chunks.
  :func:`release_freed_memory` hands them back once per chunk. (A fixed threshold instead,
  ``MALLOC_MMAP_THRESHOLD_`` of 1–4 MB, made a full tile 1.4–1.6× slower: every buffer mapped and
  zeroed afresh.)
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import threading
from typing import Callable, Iterator

#: Never lower GDAL's cache below this: a few blocks of every band and product must fit.
MIN_CACHE_BYTES = 64 * 2**20

_lock = threading.Lock()
_budgets: dict[int, int] = {}  # run token → bytes, for runs in progress in this process
_saved_max: int | None = None  # GDAL's cache size before the first of them started


def cache_budget(input_bytes: int, output_bytes: int) -> int:
    """GDAL cache bytes for a run whose reads need ``input_bytes`` of cached input blocks
    (see :func:`s2seg.core.reader.input_cache_bytes`) and whose writes leave
    ``output_bytes`` of dirty blocks between two flushes (one chunk of products)."""
    return max(MIN_CACHE_BYTES, input_bytes + output_bytes)


def user_cache_setting() -> str | None:
    """The GDAL_CACHEMAX the user chose (environment or GDAL config option), else None."""
    from osgeo import gdal

    return gdal.GetConfigOption("GDAL_CACHEMAX") or None  # also reads the environment; "" is unset


@contextlib.contextmanager
def gdal_cache_limit(budget_bytes: int) -> Iterator[int | None]:
    """Lower GDAL's block cache to ``budget_bytes`` while the block runs; yields the limit set.

    Runs in progress at once in one process (a batch, two QGIS algorithms) share the cache,
    so the limit is the sum of their budgets; the size found before the first of them is put
    back when the last ends. The cache is never raised above that size (unless it was below
    :data:`MIN_CACHE_BYTES`, as GDAL makes it of an empty GDAL_CACHEMAX), and left alone (yields
    None) where the user set GDAL_CACHEMAX.
    """
    global _saved_max
    if user_cache_setting() is not None:
        yield None
        return
    from osgeo import gdal

    token = object()
    with _lock:
        if not _budgets:
            _saved_max = gdal.GetCacheMax()
        _budgets[id(token)] = budget_bytes
        limit = _apply()
    try:
        yield limit
    finally:
        with _lock:
            del _budgets[id(token)]
            if _budgets:
                _apply()
            else:
                gdal.SetCacheMax(_saved_max)
                _saved_max = None


def _apply() -> int:
    """Set GDAL's cache to the sum of the budgets in progress, at most the saved size (under _lock)."""
    from osgeo import gdal

    assert _saved_max is not None
    total = sum(_budgets.values())
    limit = total if _saved_max < MIN_CACHE_BYTES else min(_saved_max, total)
    gdal.SetCacheMax(limit)  # evicts (writing dirty blocks) down to the new size
    return limit


def _load_malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_freed_memory() -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``); False where unavailable."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
