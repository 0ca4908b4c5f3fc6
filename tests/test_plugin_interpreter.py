"""QGIS with a foreign ``python3`` first on PATH (a pyenv shim, here a stub): QGIS's embedded Python then
reports that program as ``sys.executable``. ``s2seg:segmenttiles`` must still start its Dask workers with
QGIS's own Python (it died with "Nanny failed to start"), through the real ``qgis_process``."""
from __future__ import annotations

import json
import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

from conftest import QGIS_PROCESS, qgis_process_env


@pytest.fixture()
def foreign_qgis_env(tmp_path: Path) -> dict[str, str]:
    """qgis_process environment: throw-away profile with s2seg enabled, a stub ``python3`` first on PATH,
    and the test environment's packages (torch, dask) on PYTHONPATH instead of an activated venv."""
    if not Path(QGIS_PROCESS).exists():
        pytest.skip("qgis_process.bin is not installed")
    plugin_path = tmp_path / "plugins"
    plugin_path.mkdir()
    (plugin_path / "s2seg").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    shims = tmp_path / "shims"
    shims.mkdir()
    foreign = shims / "python3"
    foreign.write_text("#!/bin/sh\necho 'this is not QGIS Python' >&2\nexit 3\n")
    foreign.chmod(0o755)
    env = qgis_process_env(tmp_path / "profile", plugin_path)
    venv_bin = str(Path(sysconfig.get_path("scripts")))
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    env["PATH"] = os.pathsep.join([str(shims), *path])
    env["PYTHONPATH"] = sysconfig.get_path("purelib")
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "s2seg"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert enable.returncode == 0, enable.stderr
    return env


def test_segmenttiles_with_a_foreign_python_first_on_path(foreign_qgis_env, small_tile, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [QGIS_PROCESS, "--json", "run", "s2seg:segmenttiles", "--", f"INPUTS={small_tile}", "DEVICE=cpu",
         "WORKERS=1", "THREADS_PER_WORKER=1", f"OUTPUT_FOLDER={out}"],
        env=foreign_qgis_env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Nanny failed" not in proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert (results["OK"], results["FAILED"]) == (1, 0)
    assert any(out.glob("*/*_class.tif"))


def test_diagnose_names_qgis_python_not_the_foreign_one(foreign_qgis_env, tmp_path):
    report = tmp_path / "diag.html"
    proc = subprocess.run(
        [QGIS_PROCESS, "--json", "run", "s2seg:diagnose", "--", "SELF_TEST=false", f"OUTPUT={report}"],
        env=foreign_qgis_env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = "\n".join(json.loads(proc.stdout)["log"]["info"])
    (line,) = [x for x in log.splitlines() if "QGIS's Python program" in x]
    assert "shims" not in line and line.split(": ", 1)[1].startswith("/usr/bin/python3")
    assert "sys.executable: " + str(tmp_path / "shims" / "python3") in log  # the trap was set
