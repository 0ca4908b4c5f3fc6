"""Runtime dependencies of the engine and the exact command that installs a missing one.

QGIS runs plugins in its own Python. torch is rarely there, so the provider must
load without it and the algorithm must fail early with a message that names
what is missing and the one command that installs it into *that* Python.
"""
from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.interpreter import find_interpreter

#: PyTorch's CPU-only wheels: a tenth of the download of the default CUDA build,
#: and what QGIS users without an NVIDIA GPU need. Given as an *extra* index: a
#: replacing ``--index-url`` hides PyPI, where torch's own dependencies live.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Requirement:
    """A module the engine imports and how to install it."""

    module: str  # import name
    pip_name: str  # distribution name on PyPI
    purpose: str
    pip_args: tuple[str, ...] = ()
    #: Debian/Ubuntu package of the same library: distribution-managed Pythons (PEP 668)
    #: must get GDAL-linked libraries from the system, not from pip.
    apt_name: str = ""


REQUIRED: tuple[Requirement, ...] = (
    Requirement("torch", "torch", "runs the segmentation model", ("--extra-index-url", TORCH_CPU_INDEX)),
    Requirement("numpy", "numpy", "array maths", apt_name="python3-numpy"),
    Requirement("rasterio", "rasterio", "reads the Sentinel-2 bands and writes the GeoTIFFs", apt_name="python3-rasterio"),
)


@dataclass(frozen=True)
class MissingRequirement:
    requirement: Requirement
    error: str  # why the import failed, e.g. "No module named 'torch'"


def missing_requirements(requirements: tuple[Requirement, ...] = REQUIRED) -> list[MissingRequirement]:
    """The requirements that cannot be imported, with the import error.

    Importing (rather than ``find_spec``) also catches broken installs, e.g. a
    torch wheel whose shared libraries do not load.
    """
    missing = []
    for requirement in requirements:
        try:
            importlib.import_module(requirement.module)
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError from shared libraries …
            missing.append(MissingRequirement(requirement, f"{type(exc).__name__}: {exc}"))
    return missing


def python_executable() -> str:
    """The program of the Python QGIS runs plugins with (never the PATH ``python3``; see
    :mod:`s2seg.core.interpreter`)."""
    try:
        return find_interpreter()
    except FileNotFoundError:
        return "python3"


def _in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _externally_managed() -> bool:
    """PEP 668 marker of a distribution-managed Python (Debian, Ubuntu …)."""
    try:
        return Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").is_file()
    except (KeyError, TypeError):
        return False


def install_commands(missing: list[MissingRequirement]) -> list[str]:
    """Shell commands that install ``missing`` into the Python QGIS runs (usually exactly one)."""
    managed = _externally_managed() and not _in_virtualenv()
    apt = [m.requirement.apt_name for m in missing if managed and m.requirement.apt_name]
    pip = [m.requirement for m in missing if not (managed and m.requirement.apt_name)]
    commands = []
    if apt:
        commands.append("sudo apt install " + " ".join(apt))
    if pip:
        python = python_executable()
        if " " in python:
            python = f'"{python}"'
        flags = []
        if not _in_virtualenv():
            flags.append("--user")  # never needs administrator rights, never touches QGIS's own files
            if managed:
                flags.append("--break-system-packages")  # PEP 668 refuses --user installs otherwise
        # One command per set of extra pip arguments: an index meant for torch must not apply to the others.
        groups: dict[tuple[str, ...], list[str]] = {}
        for requirement in pip:
            groups.setdefault(requirement.pip_args, []).append(requirement.pip_name)
        for args, names in sorted(groups.items(), key=lambda item: len(item[0])):
            commands.append(" ".join([python, "-m", "pip", "install", *flags, *names, *args]))
    return commands


def missing_dependencies_message(requirements: tuple[Requirement, ...] = REQUIRED) -> Optional[str]:
    """A user-facing explanation of what is missing and how to install it, or ``None`` when all is there."""
    missing = missing_requirements(requirements)
    if not missing:
        return None
    lines = ["s2seg cannot run: QGIS's Python ({}) lacks {}.".format(
        python_executable(), ", ".join(m.requirement.pip_name for m in missing))]
    for m in missing:
        lines.append(f"  - {m.requirement.pip_name}: {m.requirement.purpose} ({m.error})")
    lines.append("Easiest: Plugins ▸ S2Seg ▸ Install dependencies… (Processing algorithm s2seg:setup; "
                 "qgis_process run s2seg:setup) installs them into an environment of the plugin, no terminal needed.")
    commands = install_commands(missing)
    lines.append("Or install {} into QGIS's Python yourself with:".format("it" if len(missing) == 1 else "them"))
    lines.extend(f"    {command}" for command in commands)
    lines.append("then restart QGIS.")
    if os.name != "nt" and not _in_virtualenv():
        lines.append(
            "Alternatively, from a checkout of s2seg, `make install` lets QGIS use the torch of the project's .venv."
        )
    return "\n".join(lines)
