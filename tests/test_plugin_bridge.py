"""EngineBridge: engine callbacks from worker threads reach the feedback on the algorithm's thread."""
from __future__ import annotations

import threading
import time

import pytest
from qgis.core import QgsProcessingFeedback

from s2seg.s2seg_plugin.feedback_bridge import EngineBridge, message_head


class Recorder(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.progress: list[float] = []
        self.threads: set[str] = set()

    def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
        self.threads.add(threading.current_thread().name)
        self.infos.append(info)

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        self.threads.add(threading.current_thread().name)
        self.progress.append(progress)


def test_message_head():
    assert message_head("chunk 3/12: batch 5/40") == "chunk 3/12"
    assert message_head("done") == "done"


def test_progress_and_log_are_relayed_once_per_chunk_on_the_calling_thread():
    feedback = Recorder()

    def work(progress, cancel, log):
        log("model x on cpu")
        for chunk in (1, 2):
            for batch in (1, 2, 3):
                progress((chunk - 1 + batch / 3) / 2, f"chunk {chunk}/2: batch {batch}/3")
            progress(chunk / 2, f"chunk {chunk}/2 written")
        return 42

    assert EngineBridge(feedback).run(work) == 42
    assert feedback.infos == ["model x on cpu", "chunk 1/2: batch 1/3", "chunk 1/2 written", "chunk 2/2: batch 1/3",
                              "chunk 2/2 written"]
    assert feedback.progress[-1] == pytest.approx(100.0) and feedback.progress == sorted(feedback.progress)
    assert feedback.threads == {threading.current_thread().name}


def test_cancel_reaches_an_engine_that_reports_nothing():
    feedback = Recorder()

    def work(progress, cancel, log):
        assert cancel.wait(timeout=10), "cancel flag never set"
        raise RuntimeError("stopped")

    threading.Timer(0.2, feedback.cancel).start()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="stopped"):
        EngineBridge(feedback).run(work)
    assert time.monotonic() - started < 5
