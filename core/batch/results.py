"""What a batch runs and what it reports: the job of one tile, its outcome, the batch's result."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

#: A tile's status in a batch.
OK, SKIPPED, FAILED, CANCELLED = "ok", "skipped", "failed", "cancelled"

ProgressCallback = Callable[[float, str], None]
LogCallback = Callable[[str], None]


@dataclass(frozen=True)
class TileJob:
    """One tile and the folder its products go to."""

    source: Path | str  # str: a URL (a STAC item's)
    name: str
    output_dir: Path


@dataclass
class TileOutcome:
    """What happened to one tile. ``result`` is the engine's ``SegmentResult`` for tiles run now.

    ``error_type``: the class name of the exception that failed the tile (front ends key their option
    wording on it); ``traceback``: the formatted traceback of an unexpected exception (a programming
    error, not an :class:`~s2seg.core.errors.S2SegError`), so the summary keeps where it happened.
    """

    name: str
    source: str
    output_dir: str
    status: str
    seconds: float = 0.0
    device: str = ""
    message: str = ""
    worker: str = ""
    resumed: bool = False
    error_type: str = ""
    traceback: str = ""
    result: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}


@dataclass
class BatchResult:
    """The outcome of every tile, in input order, and where the summaries are."""

    outcomes: list[TileOutcome]
    seconds: float
    cluster: str
    summary_json: Path | None = None
    summary_html: Path | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[TileOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def cancelled(self) -> bool:
        return any(o.status == CANCELLED for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when every tile is done, 1 when any failed, 130 when cancelled (as ``s2seg segment``)."""
        return 130 if self.cancelled else 1 if self.failed else 0

