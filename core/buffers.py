"""Large CPU work buffers: fresh anonymous mappings on transparent huge pages.

Used by the blending and confidence kernels for their chunk-sized outputs. Its own module so
that every kernel module can allocate without importing another (no import cycle).
"""
from __future__ import annotations

import math
import mmap

import torch

#: CPU buffers at least this large are mapped with transparent huge pages (see :func:`empty`).
HUGE_PAGE_MIN_BYTES = 4 * 2**20


def empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty``, but large CPU buffers are fresh anonymous mappings advised to use transparent huge
    pages. A chunk's buffers are hundreds of MB used once: with 4 kB pages, first touching them costs a
    page fault per 4 kB, which on a VM is slower than the arithmetic done on them (measured 2–4× per pass).
    Falls back to ``torch.empty`` where the platform has no such mapping."""
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or nbytes < HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype, device=device)
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return torch.empty(shape, dtype=dtype, device=device)
    # The tensor keeps the mapping alive; it is unmapped when the tensor is freed.
    return torch.frombuffer(buffer, dtype=dtype, count=numel).view(shape)
