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


# Errors a user fixes by changing one option. The engine's message says what is wrong, neutrally;
# each front end (CLI, QGIS) adds how to change the option in its own words, keyed on the type.
class OutputsExist(OutputError):
    """Products of an earlier, finished run are in the output folder and overwriting is off."""


class ResumeImpossible(OutputError):
    """A resume was required but there is no matching interrupted run to continue."""


class DeviceUnavailable(ConfigError):
    """The requested device (CUDA, MPS) is not usable by torch on this machine."""
