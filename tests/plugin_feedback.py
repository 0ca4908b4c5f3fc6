"""Processing feedback objects shared by the plugin tests: what the algorithm told the user, and a user
who presses Cancel."""
from __future__ import annotations

from qgis.core import QgsProcessingFeedback


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps what the algorithm told the user: log lines, errors and progress values."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.errors: list[str] = []
        self.progress_values: list[float] = []

    def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
        self.infos.append(info)
        super().pushInfo(info)

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803 - QGIS API
        self.errors.append(error)
        super().reportError(error, fatalError)

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        self.progress_values.append(progress)
        super().setProgress(progress)


class CancelAtFirstProgress(QgsProcessingFeedback):
    """The user presses Cancel as soon as the first chunk reports progress."""

    def setProgress(self, progress: float) -> None:  # noqa: N802 - QGIS API
        super().setProgress(progress)
        if progress > 0:
            self.cancel()
