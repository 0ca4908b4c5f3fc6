"""The Python interpreter that runs this code, as a program another process can start.

``sys.executable`` is not it inside an application that embeds Python: QGIS's
embedded interpreter sets it to the first ``python3`` on PATH (a pyenv shim, a
conda python …: another Python, without QGIS's packages), to ``qgis-bin.exe`` on
Windows or to the QGIS app on macOS. The prefixes Python computed at start-up
(``sys.prefix``, ``sys.exec_prefix``) do describe the running interpreter, so the
program is derived from them and the platform's layout:

* a virtual environment (``prefix != base_prefix``): ``<prefix>/bin/python3.X``,
  ``<prefix>\\Scripts\\python.exe`` on Windows;
* Linux, Flatpak (``/app``), macOS frameworks: ``<exec_prefix>/bin/python3.X``;
* Windows, OSGeo4W or the standalone installer: ``<prefix>\\python.exe``
  (``…\\apps\\Python39\\python.exe``);
* macOS QGIS.app: ``QGIS.app/Contents/MacOS/bin/python3`` (``sys.prefix`` is
  ``…/Contents/MacOS`` or ``…/Contents/Frameworks/Python.framework/Versions/3.X``).

QGIS-free: the CLI, Dask workers and the plugin all use :func:`find_interpreter`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import PurePath, PurePosixPath, PureWindowsPath
from typing import Callable


@dataclass(frozen=True)
class PythonLayout:
    """What the running interpreter knows about itself (``sys`` attributes), as plain data for tests."""

    platform: str  # sys.platform: "linux", "win32", "darwin" …
    version: tuple[int, int]  # sys.version_info[:2]
    prefix: str
    base_prefix: str
    exec_prefix: str
    base_exec_prefix: str
    executable: str  # sys.executable: a hint only, trusted last

    @classmethod
    def current(cls) -> "PythonLayout":
        return cls(
            platform=sys.platform,
            version=(sys.version_info.major, sys.version_info.minor),
            prefix=sys.prefix,
            base_prefix=getattr(sys, "base_prefix", sys.prefix),
            exec_prefix=sys.exec_prefix,
            base_exec_prefix=getattr(sys, "base_exec_prefix", sys.exec_prefix),
            executable=sys.executable or "",
        )

    @property
    def windows(self) -> bool:
        return self.platform.startswith("win")

    @property
    def in_virtualenv(self) -> bool:
        return self.prefix != self.base_prefix

    def path(self, *parts: str) -> PurePath:
        """A path of this layout's platform (Windows paths parse on Linux too, for tests)."""
        return PureWindowsPath(*parts) if self.windows else PurePosixPath(*parts)


def interpreter_candidates(layout: PythonLayout) -> list[str]:
    """Programs that are the running interpreter, most specific first (existence not checked)."""
    major, minor = layout.version
    posix_names = (f"python{major}.{minor}", f"python{major}", "python")
    candidates: list[PurePath] = []
    if layout.windows:
        roots = [layout.path(layout.prefix)]
        if layout.in_virtualenv:
            roots = [layout.path(layout.prefix) / "Scripts", *roots]
        roots.append(layout.path(layout.exec_prefix))
        for root in roots:
            candidates += [root / "python.exe", root / f"python{major}.exe"]
    else:
        # The venv first: it is what the running code imports from; then the base installation.
        prefixes = [layout.prefix, layout.exec_prefix] if layout.in_virtualenv else [layout.exec_prefix, layout.prefix]
        for prefix in prefixes:
            candidates += [layout.path(prefix) / "bin" / name for name in posix_names]
        # QGIS.app keeps its python3 in Contents/MacOS/bin whichever prefix its Python reports.
        for value in (layout.executable, layout.prefix):
            parts = layout.path(value).parts
            if "Contents" in parts and any(p.endswith(".app") for p in parts):
                contents = layout.path(*parts[: parts.index("Contents") + 1])
                candidates += [contents / "MacOS" / "bin" / name for name in posix_names]
    unique: list[str] = []
    for candidate in candidates:
        text = str(candidate)
        if text not in unique:
            unique.append(text)
    return unique


def _is_program(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_interpreter(layout: PythonLayout | None = None, exists: Callable[[str], bool] = _is_program) -> str:
    """The program of the running Python (see the module docstring); ``sys.executable`` only as a last resort.

    ``exists`` tells whether a candidate is an executable file (replaceable to test other platforms'
    layouts). Raises ``FileNotFoundError`` naming the folders searched when nothing fits.
    """
    layout = layout or PythonLayout.current()
    candidates = interpreter_candidates(layout)
    for candidate in candidates:
        if exists(candidate):
            return candidate
    name = layout.path(layout.executable).name.lower() if layout.executable else ""
    if name.startswith("python") and exists(layout.executable):
        return layout.executable
    raise FileNotFoundError(
        "cannot find the program of the running Python {}.{} (prefix {}); looked for: {}".format(
            *layout.version, layout.prefix, ", ".join(candidates)
        )
    )
