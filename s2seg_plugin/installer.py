"""Create or repair the plugin's own Python environment and install the engine's packages into it.

The environment is a virtual environment made from QGIS's own interpreter with
``--system-site-packages``: QGIS's numpy, GDAL and rasterio stay visible (and in
charge: numpy is constrained to QGIS's version, so nothing installed shadows it),
and torch & co. go into a folder the plugin owns — no administrator rights, no
change to QGIS's files, removable by deleting one folder. Re-running repairs or
upgrades it.

QGIS-free: the ``s2seg:setup`` algorithm drives :func:`run_install` with its
feedback; every step is a subprocess whose output is relayed line by line and
which Cancel terminates.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..core.errors import Cancelled, S2SegError
from ..core.interpreter import find_interpreter
from .dependencies import TORCH_CPU_INDEX

#: What the engine imports at run time (batch, fused kernels and ONNX models included).
RUNTIME_PACKAGES: tuple[str, ...] = (
    "torch", "safetensors", "timm", "onnxruntime", "numba", "tqdm", "dask", "distributed", "rasterio",
)
#: Packages linked to QGIS's own GDAL where QGIS ships them: installed when missing, never upgraded over
#: QGIS's copy (a pip rasterio brings its own GDAL).
QGIS_LINKED: tuple[str, ...] = ("rasterio",)
#: PyTorch's CUDA wheel indexes, newest first, with the CUDA version each needs from the driver.
TORCH_CUDA_INDEXES: tuple[tuple[tuple[int, int], str], ...] = (
    ((13, 0), "https://download.pytorch.org/whl/cu130"),
    ((12, 8), "https://download.pytorch.org/whl/cu128"),
    ((12, 6), "https://download.pytorch.org/whl/cu126"),
    ((11, 8), "https://download.pytorch.org/whl/cu118"),
)
#: Lines of a failed step's output repeated in the error message.
ERROR_TAIL_LINES = 6


class InstallError(S2SegError):
    """A step of the installation failed; the message names the step and pip's own explanation."""


def driver_cuda_version(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Optional[tuple[int, int]]:
    """The CUDA version the NVIDIA driver supports (``nvidia-smi``'s header), None without an NVIDIA GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = run([exe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out.stdout or "")
    return (int(match.group(1)), int(match.group(2))) if out.returncode == 0 and match else None


def torch_index(cuda: Optional[tuple[int, int]]) -> str:
    """The newest CUDA wheel index the driver supports, else the CPU index."""
    for needed, url in TORCH_CUDA_INDEXES:
        if cuda is not None and cuda >= needed:
            return url
    return TORCH_CPU_INDEX


def environment_python(env: Path) -> Path:
    return env / "Scripts" / "python.exe" if os.name == "nt" else env / "bin" / "python"


@dataclass(frozen=True)
class InstallPlan:
    """What :func:`run_install` does; :meth:`steps` are the exact commands."""

    environment: Path
    base_python: str  # QGIS's interpreter: the environment is made from it
    packages: tuple[str, ...] = RUNTIME_PACKAGES
    torch_index: str = TORCH_CPU_INDEX
    #: A package index that replaces PyPI and pip's configuration (offline mirror, tests); empty: PyPI.
    index_url: str = ""
    #: ``numpy==<QGIS's version>``: pip may not replace the numpy QGIS's GDAL bindings were built for.
    constraints: tuple[str, ...] = field(default_factory=tuple)
    #: Upgrade what is installed (else a re-run only repairs: installs what is missing).
    upgrade: bool = False

    def environ(self) -> dict[str, str]:
        """The steps' environment variables: with :attr:`index_url`, no pip configuration file or
        ``PIP_*`` variable applies (``--isolated`` alone still reads the site-wide file)."""
        # QGIS's PYTHONPATH/PYTHONHOME describe QGIS's Python, not the environment being built.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
        if self.index_url:
            env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
            env["PIP_CONFIG_FILE"] = os.devnull
        return env

    def pip(self, constraints_file: Path, upgrade: bool) -> list[str]:
        command = [str(environment_python(self.environment)), "-m", "pip"]
        if self.index_url:
            command += ["--isolated"]  # only the given index: no user or site pip configuration
        command += ["install", "--disable-pip-version-check", "-c", str(constraints_file)]
        if upgrade:
            command += ["--upgrade", "--upgrade-strategy", "only-if-needed"]
        if self.index_url:
            command += ["--index-url", self.index_url]
        return command

    def steps(self, constraints_file: Path) -> list[tuple[str, list[str]]]:
        """(description, command) pairs: the environment, then torch from its index, then the rest from PyPI."""
        steps = [("create the environment",
                  [self.base_python, "-m", "venv", "--system-site-packages", str(self.environment)])]
        torch = [p for p in self.packages if re.match(r"torch($|[=<>!~\[ ])", p)]
        linked = [p for p in self.packages if p in QGIS_LINKED]
        rest = [p for p in self.packages if p not in torch and p not in linked]
        if torch:
            extra = [] if self.index_url else ["--extra-index-url", self.torch_index]
            steps.append(("install " + " ".join(torch), self.pip(constraints_file, self.upgrade) + torch + extra))
        if rest:
            steps.append(("install " + " ".join(rest), self.pip(constraints_file, self.upgrade) + rest))
        if linked:
            steps.append(("install " + " ".join(linked), self.pip(constraints_file, False) + linked))
        return steps


def qgis_numpy_constraints() -> tuple[str, ...]:
    """Pin numpy to the version QGIS's Python has (none when it has none)."""
    try:
        import numpy
    except ImportError:
        return ()
    return (f"numpy=={numpy.__version__}",)


def make_plan(environment: str | Path, packages: tuple[str, ...] = RUNTIME_PACKAGES, index_url: str = "",
              cuda: Optional[tuple[int, int]] = None, upgrade: bool = False) -> InstallPlan:
    """The plan for this QGIS: its interpreter, its numpy, the torch build for ``cuda`` (None: CPU)."""
    return InstallPlan(environment=Path(environment).expanduser(), base_python=find_interpreter(),
                       packages=packages, torch_index=torch_index(cuda), index_url=index_url,
                       constraints=qgis_numpy_constraints(), upgrade=upgrade)


def _terminate(process: subprocess.Popen) -> None:
    """Stop a step and whatever it started (pip runs build subprocesses)."""
    try:
        if os.name == "nt":
            process.terminate()
        else:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait()


def _run_step(command: list[str], env: dict[str, str], log: Callable[[str], None],
              cancelled: Callable[[], bool]) -> tuple[int, list[str]]:
    """Run one command, relaying its output; returns (exit code, output lines). Raises Cancelled."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=os.name != "nt")
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())

    reader = threading.Thread(target=read, name="s2seg-install-output", daemon=True)
    reader.start()
    shown = 0
    while True:
        finished = process.poll() is not None
        while shown < len(lines):
            log(lines[shown])
            shown += 1
        if finished:
            break
        if cancelled():
            _terminate(process)
            reader.join(timeout=5)
            raise Cancelled("the installation was cancelled")
        reader.join(timeout=0.2)
    reader.join()
    for line in lines[shown:]:
        log(line)
    return process.returncode, lines


def run_install(plan: InstallPlan, log: Callable[[str], None] = lambda m: None,
                progress: Callable[[float], None] = lambda f: None,
                cancelled: Callable[[], bool] = lambda: False) -> Path:
    """Run the plan's steps; returns the environment's Python program.

    Raises :class:`InstallError` naming the failed step with pip's last lines, or
    :class:`~s2seg.core.errors.Cancelled`. Nothing outside ``plan.environment`` is changed either way.
    """
    with tempfile.TemporaryDirectory(prefix="s2seg-setup-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(c + "\n" for c in plan.constraints), encoding="utf-8")
        steps = plan.steps(constraints)
        for index, (description, command) in enumerate(steps):
            progress(index / len(steps))
            log(f"[{index + 1}/{len(steps)}] {description}: {' '.join(command)}")
            try:
                code, lines = _run_step(command, plan.environ(), log, cancelled)
            except OSError as exc:
                raise InstallError(f"cannot {description}: {command[0]}: {exc.strerror or exc}") from None
            if code != 0:
                tail = [line for line in lines if line.strip()][-ERROR_TAIL_LINES:]
                raise InstallError(
                    f"cannot {description} in {plan.environment} (exit code {code}):\n" + "\n".join(tail)
                )
    progress(1.0)
    return environment_python(plan.environment)
