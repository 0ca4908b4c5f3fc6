"""Optional numba compilation of the engine's CPU kernels: one switch and one set of options.

Every kernel has a torch path that gives the same results, so numba is an accelerator,
never a requirement: without it (or with ``S2SEG_NO_NUMBA=1``, which the benchmark and
tests use to exercise the torch paths) :func:`enabled` is False and callers take their
torch path. Kernels release the GIL, so the pipeline's threads run them side by side.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

try:  # optional accelerator
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None

#: Reassociation off: blending sums keep the order of the reference implementation.
FASTMATH_EXACT = frozenset({"contract", "nsz"})
#: Also approximate reciprocals and functions: for the confidence kernel's own polynomial ``ln``.
FASTMATH_APPROX = frozenset({"contract", "arcp", "nsz", "afn"})

F = TypeVar("F", bound=Callable)


def enabled() -> bool:
    """Are the compiled kernels to be used (numba installed and not switched off)?"""
    return numba is not None and os.environ.get("S2SEG_NO_NUMBA") != "1"


def njit(fastmath: frozenset[str] = FASTMATH_EXACT) -> Callable[[F], F]:
    """``numba.njit`` with the engine's options (compiled lazily, on first call); without numba the plain
    function, which callers never run (they check :func:`enabled`)."""
    def decorate(function: F) -> F:
        if numba is None:
            return function
        return numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False, fastmath=set(fastmath))(function)
    return decorate
