"""Threads joined by bounded queues: the first failure or a cancel stops them all.

The runner knows nothing of chunks or files: a stage is a named callable; stages pass
items through :meth:`StageRunner.put`/:meth:`StageRunner.get`, which wait in short steps
and raise :class:`Stopped` once another stage failed or the run was cancelled, so no
stage blocks forever on a full or empty queue. Memory stays bounded by the queues' sizes.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Sequence

#: Put by a stage after its last item.
END = object()
#: How long a queue operation or the caller's join waits before looking at cancel again (s).
POLL_S = 0.1


class Stopped(Exception):
    """Raised inside a stage when another stage failed or the run was cancelled."""


class StageRunner:
    """Runs stages on threads; remembers the first exception and which stage raised it."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.stage = ""
        self._lock = threading.Lock()

    # --- inside a stage -------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`Stopped` when the run must end (failure elsewhere or cancel)."""
        if self.stop.is_set() or self.cancel.is_set():
            raise Stopped

    def put(self, q: queue.Queue, item: Any) -> None:
        while True:
            self.check()
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue) -> Any:
        while True:
            self.check()
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue

    # --- from the caller ------------------------------------------------------------
    def run(self, stages: Sequence[tuple[str, Callable[..., None], tuple]]) -> None:
        """Run ``(name, body, args)`` stages on threads named ``s2seg-<name>`` until all end.

        Does not raise: afterwards :attr:`error`/:attr:`stage` hold the first failure and
        :attr:`cancel` tells a cancel. A KeyboardInterrupt in the caller counts as a cancel.
        """
        threads = [threading.Thread(target=self._body, args=(name, body, *args), name=f"s2seg-{name}", daemon=True)
                   for name, body, args in stages]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(timeout=POLL_S)
                if self.cancel.is_set():
                    self.stop.set()
        except KeyboardInterrupt:
            self.cancel.set()
            self.stop.set()
            for thread in threads:
                thread.join()

    @property
    def stopped(self) -> bool:
        """Did a stage fail or the user cancel?"""
        return self.error is not None or self.cancel.is_set()

    def _body(self, name: str, body: Callable[..., None], *args: Any) -> None:
        try:
            body(*args)
        except Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the caller
            self._record(name, exc)

    def _record(self, stage: str, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error, self.stage = error, stage
        self.stop.set()
