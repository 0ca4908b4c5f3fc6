"""Optional numba compilation of the engine's CPU kernels: one switch and one set of options.

Every kernel has a torch path that gives the same results, so numba is an accelerator,
never a requirement: without it (or with ``S2SEG_NO_NUMBA=1``, which the benchmark and
tests use to exercise the torch paths) :func:`enabled` is False and callers take their
torch path. Kernels release the GIL, so the pipeline's threads run them side by side.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Sequence, TypeVar

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


def run_shares(kernel: Callable[..., None], args: tuple, bounds: Sequence[int], name: str) -> None:
    """``kernel(*args, a, b)`` for each consecutive pair ``a < b`` of ``bounds``: the calling thread computes
    the first share, threads started for this call the others (the kernels release the GIL).

    They are joined before it returns, also when a share fails (the first error is re-raised then), so
    nothing outlives the call and the thread count follows the cores usable now."""
    errors: list[BaseException] = []

    def share(a: int, b: int) -> None:
        try:
            kernel(*args, a, b)
        except BaseException as exc:  # re-raised by the caller, after every worker has ended
            errors.append(exc)

    workers = [threading.Thread(target=share, args=(a, b), name=f"{name}-{i}", daemon=True)
               for i, (a, b) in enumerate(zip(bounds[1:-1], bounds[2:]), start=1) if a < b]
    try:
        for worker in workers:
            worker.start()
        share(bounds[0], bounds[1])
    finally:
        for worker in workers:
            if worker.ident is not None:  # started (starting can fail: no thread left)
                worker.join()
    if errors:
        raise errors[0]
