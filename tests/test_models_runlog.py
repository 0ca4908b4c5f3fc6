"""runlog: loaders' notices reach the run's log callback (what QGIS shows), never stderr or logging."""
from __future__ import annotations

import warnings

import pytest

from s2seg.core.models.runlog import forward_warnings, notify


def test_warnings_are_forwarded_once_each_and_deprecations_dropped(recwarn):
    lines: list[str] = []
    with forward_warnings(lines.append, "onnxruntime"):
        warnings.warn("provider missing", UserWarning)
        warnings.warn("provider missing", UserWarning)
        warnings.warn("odd value", RuntimeWarning)
        warnings.warn("old API", DeprecationWarning)
        warnings.warn("going away", FutureWarning)
    assert lines == ["onnxruntime: provider missing", "onnxruntime: odd value"]
    assert len(recwarn) == 0  # nothing left for Python's warning machinery (stderr)


def test_warnings_are_forwarded_when_loading_fails():
    lines: list[str] = []
    with pytest.raises(ValueError), forward_warnings(lines.append, "loading m.pt"):
        warnings.warn("this is why", UserWarning)
        raise ValueError("broken")
    assert lines == ["loading m.pt: this is why"]


def test_without_a_log_warnings_and_notices_stay_python_warnings():
    with pytest.warns(UserWarning, match="untouched"), forward_warnings(None, "x"):
        warnings.warn("untouched", UserWarning)
    with pytest.warns(RuntimeWarning, match="runs on the CPU"):
        notify(None, "the model runs on the CPU")
    lines: list[str] = []
    notify(lines.append, "the model runs on the CPU")
    assert lines == ["the model runs on the CPU"]
