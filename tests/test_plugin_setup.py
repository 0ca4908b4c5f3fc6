"""``s2seg:setup`` (Install dependencies): the install plan (torch's index only for torch, numpy held at
QGIS's version, CUDA build when nvidia-smi reports a driver), a real install of a local package into a fresh
environment, a failed install (an empty local index: nothing goes to the network) and a cancelled one that
leave QGIS as it was with a clear message."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import processing
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from s2seg.s2seg_plugin import installer, settings
from s2seg.s2seg_plugin.dependencies import TORCH_CPU_INDEX

pytestmark = pytest.mark.timeout(300)


@pytest.fixture()
def untouched_settings():
    """Restores the plugin settings and sys.path; yields the settings as they were."""
    before, path = settings.load(), list(sys.path)
    yield before
    settings.save(before)
    sys.path[:] = path


def test_plan_keeps_torchs_index_to_torch_and_numpy_at_qgis_version(tmp_path):
    import numpy

    plan = installer.make_plan(tmp_path / "env")
    steps = plan.steps(tmp_path / "c.txt")
    assert steps[0][1][1:] == ["-m", "venv", "--system-site-packages", str(tmp_path / "env")]
    assert "shims" not in steps[0][1][0]
    torch = [cmd for desc, cmd in steps if desc == "install torch"][0]
    assert torch[-3:] == ["torch", "--extra-index-url", TORCH_CPU_INDEX]
    others = [cmd for desc, cmd in steps[1:] if desc != "install torch"]
    assert others and not any("download.pytorch.org" in " ".join(c) or "--index-url" in c for c in others)
    assert all(cmd[cmd.index("-c") + 1] == str(tmp_path / "c.txt") for _, cmd in steps[1:])
    assert plan.constraints == (f"numpy=={numpy.__version__}",)
    assert all("--upgrade" not in cmd for _, cmd in steps)  # a re-run repairs; upgrading is asked for
    (rasterio,) = [cmd for desc, cmd in steps if "rasterio" in desc]
    upgraded = installer.make_plan(tmp_path / "env", upgrade=True).steps(tmp_path / "c.txt")
    assert "--upgrade" in upgraded[1][1] and "--upgrade" not in upgraded[-1][1]  # never over QGIS's rasterio


@pytest.mark.parametrize("header, index", [
    ("| NVIDIA-SMI 580.65   Driver Version: 580.65   CUDA Version: 13.0 |", "cu130"),
    ("| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |", "cu118"),
    ("| NVIDIA-SMI 470.1    Driver Version: 470.1    CUDA Version: 11.4 |", "whl/cpu"),
])
def test_cuda_build_follows_the_driver(monkeypatch, header, index):
    monkeypatch.setattr(installer.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    cuda = installer.driver_cuda_version(lambda *a, **k: subprocess.CompletedProcess(a, 0, header + "\n", ""))
    assert installer.torch_index(cuda).endswith(index)
    monkeypatch.setattr(installer.shutil, "which", lambda name: None)
    assert installer.driver_cuda_version() is None and installer.torch_index(None) == TORCH_CPU_INDEX


def local_index(root: Path) -> str:
    """A PEP 503 package index in a folder with one tiny pure-Python wheel, ``s2seg-probe``."""
    project = root / "s2seg-probe"
    project.mkdir(parents=True)
    with zipfile.ZipFile(project / "s2seg_probe-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("s2seg_probe/__init__.py", "VALUE = 42\n")
        wheel.writestr("s2seg_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: s2seg-probe\nVersion: 1.0\n")
        wheel.writestr("s2seg_probe-1.0.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: s2seg-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("s2seg_probe-1.0.dist-info/RECORD", "")
    # pip reads a folder index through its index.html pages.
    (project / "index.html").write_text('<a href="s2seg_probe-1.0-py3-none-any.whl">s2seg_probe-1.0-py3-none-any.whl</a>')
    (root / "index.html").write_text('<a href="s2seg-probe/">s2seg-probe</a>')
    return root.as_uri()


def test_install_into_a_fresh_environment_is_used_at_once(s2seg_provider, untouched_settings, tmp_path):
    env = tmp_path / "env"
    results = processing.run("s2seg:setup", {"ENVIRONMENT": str(env), "PACKAGES": "s2seg-probe",
                                             "INDEX_URL": local_index(tmp_path / "index")})
    assert Path(results["ENVIRONMENT"]) == env
    assert subprocess.run([results["PYTHON"], "-c", "import s2seg_probe, numpy"], timeout=60).returncode == 0
    assert settings.load().environment == str(env)
    (site,) = [p for p in sys.path if p.startswith(str(env))]
    assert sys.path.index(site) > max(i for i, p in enumerate(sys.path) if p.endswith(("site-packages", "dist-packages"))
                                      and not p.startswith(str(env)))  # after QGIS's own packages
    import s2seg_probe

    assert s2seg_probe.VALUE == 42
    sys.modules.pop("s2seg_probe")


def test_failed_install_leaves_qgis_healthy_with_a_clear_message(s2seg_provider, untouched_settings, tmp_path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    path_before = list(sys.path)
    with pytest.raises(QgsProcessingException) as info:
        processing.run("s2seg:setup", {"ENVIRONMENT": str(tmp_path / "env"), "INDEX_URL": empty.as_uri()})
    message = str(info.value)
    assert message.startswith("Installing the dependencies failed; QGIS is unchanged")
    assert "cannot install torch" in message and "No matching distribution found for torch" in message
    assert settings.load() == untouched_settings and sys.path == path_before
    report = tmp_path / "diag.html"
    processing.run("s2seg:diagnose", {"SELF_TEST": False, "OUTPUT": str(report)})  # QGIS still works
    assert report.is_file()


class CancelWhenVenvStarts(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.console: list[str] = []

    def pushConsoleInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
        self.console.append(info)
        super().pushConsoleInfo(info)
        if "-m venv" in info:
            self.cancel()


def test_cancel_stops_the_install(s2seg_provider, untouched_settings, tmp_path):
    feedback = CancelWhenVenvStarts()
    path_before = list(sys.path)
    with pytest.raises(QgsProcessingException, match="Cancelled: .* run Install dependencies again"):
        processing.run("s2seg:setup", {"ENVIRONMENT": str(tmp_path / "env"), "INDEX_URL": (tmp_path).as_uri()},
                       feedback=feedback)
    assert not any(line.startswith("[2/") for line in feedback.console)  # pip never started
    assert settings.load() == untouched_settings and sys.path == path_before


def test_fresh_profile_uses_the_configured_environment_and_passes_the_self_test(tmp_path):
    """QGIS's own Python (no venv on PATH: torch is not importable there) in a fresh profile whose settings
    name an environment with torch — this test's venv, as "Use an existing environment" would: the plugin
    appends it at load and s2seg:diagnose's self-test segments the sample tile."""
    import json
    import os

    from conftest import QGIS_PROCESS

    if sys.prefix == sys.base_prefix or not Path(QGIS_PROCESS).exists():
        pytest.skip("needs qgis_process and a virtual environment holding torch")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "s2seg").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    ini = tmp_path / "profile" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text(f"[PythonPlugins]\ns2seg=true\n\n[s2seg]\nenvironment={sys.prefix}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               QGIS_PLUGINPATH=str(plugins), PATH="/usr/bin:/bin")
    assert subprocess.run(["/usr/bin/python3", "-c", "import torch"], env=env, capture_output=True).returncode != 0
    proc = subprocess.run([QGIS_PROCESS, "--json", "run", "s2seg:diagnose", "--", "DEVICE=cpu",
                           f"OUTPUT={tmp_path / 'report.html'}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = "\n".join(json.loads(proc.stdout)["log"]["info"])
    assert f"torch loaded from: {sys.prefix}" in log and "Self-test · Result: passed" in log


@pytest.mark.slow
def test_install_from_the_package_registry_into_a_fresh_environment(s2seg_provider, untouched_settings, tmp_path):
    """The real path: pip with the machine's own configuration and package registry (no INDEX_URL), a real
    wheel (safetensors, small, not in QGIS's Python). torch itself is left out: from the registry it is the
    CUDA build with several GB of dependencies; the CPU index it comes from in the plugin is not reachable here."""
    env = tmp_path / "env"
    results = processing.run("s2seg:setup", {"ENVIRONMENT": str(env), "PACKAGES": "safetensors==0.8.0"})
    python = results["PYTHON"]
    probe = "import safetensors, numpy; print(safetensors.__version__, numpy.__file__)"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out[0] == "0.8.0"
    assert out[1].startswith("/usr/lib/python3/")  # QGIS's numpy stays in charge: nothing shadowed it
    assert settings.load().environment == str(env)
