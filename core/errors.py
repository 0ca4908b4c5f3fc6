"""Exception types raised by the engine.

Every error a user can cause derives from :class:`S2SegError`; its message
names the offending file or parameter so the CLI and QGIS can show it as is.
"""
from __future__ import annotations


class S2SegError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(S2SegError):
    """The tile (folder, .SAFE, zip or band file) cannot be used."""


class ModelError(S2SegError):
    """The model card or the model file is invalid or misbehaves."""


class ConfigError(S2SegError):
    """A parameter (chunk size, batch size, device …) is out of range."""


class OutputError(S2SegError):
    """The outputs cannot be written (exists, not writable, disk full)."""


class Cancelled(S2SegError):
    """The run was cancelled by the user (QGIS cancel, Ctrl-C).

    Chunks already written stay as ``.part`` files with their journal, so the same
    run resumes from there; when no chunk was finished, nothing is left behind.
    """
