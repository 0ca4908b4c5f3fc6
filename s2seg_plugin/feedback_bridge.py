"""Run an engine call on a worker thread while the algorithm's thread relays its feedback.

The engine reports progress from its own threads. ``QgsProcessingFeedback`` is
only safe to drive from the thread that runs the algorithm (a QgsTask thread
in the dialog, the main thread under ``processing.run`` and ``qgis_process``),
so engine callbacks only queue events; this thread forwards them, and polls
``feedback.isCanceled()`` every :data:`POLL_SECONDS` to set the engine's
cancel flag — cancel therefore works even between two engine callbacks.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Optional

from qgis.core import QgsProcessingFeedback

POLL_SECONDS = 0.1


def message_head(message: str) -> str:
    """The part of a progress message before its first ``:`` — "chunk 3/12" in "chunk 3/12: batch 5/40"."""
    return message.split(":", 1)[0].strip()


class EngineBridge:
    """Queues progress/log events from any thread; :meth:`run` forwards them to ``feedback``.

    ``work`` is called on a worker thread as ``work(progress=…, cancel=…, log=…)``
    with the engine's callback signatures: ``progress(fraction, message)``,
    ``cancel`` a :class:`threading.Event`, ``log(message)``.

    A progress message goes to the log only when its head changes, i.e. once
    per chunk rather than once per batch. (``setProgressText`` is not used:
    qgis_process prints it as well as the log, doubling every line.)
    """

    def __init__(self, feedback: QgsProcessingFeedback) -> None:
        self.feedback = feedback
        self.cancel = threading.Event()
        self._events: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._last_percent = -1.0
        self._last_head = ""

    # --- callbacks handed to the engine (any thread) ---------------------------------------------
    def progress(self, fraction: float, message: str = "") -> None:
        self._events.put(("progress", float(fraction), str(message or "")))

    def log(self, message: str) -> None:
        self._events.put(("log", str(message)))

    # --- relay (algorithm thread) ----------------------------------------------------------------
    def _forward(self, event: tuple) -> None:
        if event[0] == "log":
            self.feedback.pushInfo(event[1])
            return
        percent = max(0.0, min(100.0, 100.0 * event[1]))
        if percent != self._last_percent:
            self._last_percent = percent
            self.feedback.setProgress(percent)
        message = event[2]
        if message:
            head = message_head(message)
            if head != self._last_head:
                self._last_head = head
                self.feedback.pushInfo(message)

    def run(self, work: Callable[..., Any]) -> Any:
        """Run ``work`` to completion, relaying feedback; re-raise its exception, if any."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = work(progress=self.progress, cancel=self.cancel, log=self.log)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the algorithm's thread
                outcome["error"] = exc
            finally:
                self._events.put(("done",))

        worker = threading.Thread(target=target, name="s2seg-engine", daemon=True)
        worker.start()
        while True:
            if self.feedback.isCanceled() and not self.cancel.is_set():
                self.cancel.set()
            try:
                event: Optional[tuple] = self._events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if event[0] == "done":
                break
            self._forward(event)
        worker.join()  # "done" is the worker's last event: nothing is left in the queue
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")
