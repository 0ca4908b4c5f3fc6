"""What model loaders tell the user goes through the run's log callback, never ``logging``.

QGIS shows what the Processing feedback receives and nothing that a library prints to stderr
or sends to Python's ``logging``: a notice such as "the ONNX model runs on the CPU" must reach
the run's ``log(str)``. Without a callback (the Python API used directly), notices become Python
warnings, which stderr shows by default.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

#: The run's log: one line of text per call (the CLI prints it, QGIS pushes it to the feedback).
Log = Callable[[str], None]
#: Warnings meant for the developers of a library, not for the person running a model.
_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def notify(log: Log | None, message: str) -> None:
    """Send ``message`` to ``log``, or issue it as a RuntimeWarning when there is no log."""
    if log is not None:
        log(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@contextmanager
def forward_warnings(log: Log | None, source: str) -> Iterator[None]:
    """Python warnings raised inside go to ``log`` as ``"<source>: <message>"`` lines, each once,
    instead of stderr; developer-facing ones (deprecations) are dropped. Without a log, nothing is
    changed. Like :func:`warnings.catch_warnings`, it is meant for the thread that loads the model
    (the engine loads it before its worker threads start)."""
    if log is None:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:  # also when loading fails: a warning may say why
            lines = (f"{source}: {w.message}" for w in caught if not issubclass(w.category, _DEVELOPER_WARNINGS))
            for line in dict.fromkeys(lines):
                log(line)
