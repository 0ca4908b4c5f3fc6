"""Settings and file layout of a sample design: light (no numpy, no torch), so the command line
can declare its options without loading the engine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

CONFIDENCE_MEASURES = ("none", "gap", "entropy")

#: GeoPackage layers and fields of a sample design: the one definition read by :mod:`.assess`.
SAMPLE_LAYER = "sample"
STRATA_LAYER = "strata"
DESIGN_LAYER = "design"
REFERENCE_FIELD = "reference"
SAMPLE_FIELDS = ("stratum", "stratum_name", "map_class", "map_class_name", "maxprob", "gap", "entropy",
                 REFERENCE_FIELD)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class DesignConfig:
    """How to draw the sample. ``total=0``: size from ``target_se`` by Olofsson 2014 eq. 13."""

    total: int = 0
    target_se: float = 0.01  # target standard error of overall accuracy
    target_se_users: float = 0.0  # target standard error of each stratum's user's accuracy (0: none)
    minimum: int = 50  # units per stratum at least (§5.1.1 suggests 50-100)
    confidence: str = "none"  # split each class by "gap" or "entropy", or not ("none")
    threshold: float = 0.2  # gap below it, or entropy (bits) above it: "uncertain"
    expected_user: float = 0.9  # expected user's accuracy of a class (or its confident part)
    expected_uncertain: float = 0.6  # … of an uncertain part
    seed: int = 0
    block_rows: int = 256  # rows per strip read

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCE_MEASURES:
            raise ConfigError(f"confidence measure {self.confidence!r} is not one of {', '.join(CONFIDENCE_MEASURES)}")
        if self.total < 0 or self.minimum < 0:
            raise ConfigError(f"sample size {self.total} and minimum per stratum {self.minimum} must not be negative")
        if self.total == 0 and not 0 < self.target_se < 1:
            raise ConfigError(f"target standard error {self.target_se} must lie between 0 and 1")
        if not 0 <= self.target_se_users < 1:
            raise ConfigError(f"target standard error of user's accuracy {self.target_se_users} must lie in [0, 1)")
        for name in ("expected_user", "expected_uncertain"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)} must lie between 0 and 1")
        if self.block_rows < 1:
            raise ConfigError(f"block rows {self.block_rows} must be positive")
