"""GDAL's progress callbacks as a way to cancel: one callback that asks the run's cancel check."""
from __future__ import annotations

from typing import Callable


def cancellable(check: Callable[[], None]) -> Callable[[float, str, object], int]:
    """A GDAL progress callback that returns 0 (GDAL stops the operation) once ``check`` raises; the
    caller calls ``check()`` again after the GDAL call, so the cancel (or error) is raised there."""
    def progress(fraction: float, message: str, data: object) -> int:
        try:
            check()
        except BaseException:
            return 0
        return 1
    return progress
