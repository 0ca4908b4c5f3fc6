"""The plugin as users get it: the zip from tools/package.sh, tools/install_plugin.sh, and
qgis_process running the installed plugin from a throw-away profile."""
from __future__ import annotations

import json
import re
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import QGIS_PROCESS, REPO_ROOT, qgis_process_env

PACKAGE = REPO_ROOT / "tools" / "package.sh"
INSTALL = REPO_ROOT / "tools" / "install_plugin.sh"
#: The checkout's venv that `make install` points QGIS at (a git worktree may have none).
PROJECT_VENV = REPO_ROOT / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("dist") / "s2seg.zip"
    proc = subprocess.run(["bash", str(PACKAGE), "-q", "-o", str(target)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)
    return target


def test_zip_follows_the_plugin_repository_rules(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {n.split("/", 1)[0] for n in names} == {"s2seg"}  # one top-level folder, a Python identifier
    for required in ("s2seg/__init__.py", "s2seg/metadata.txt", "s2seg/LICENSE", "s2seg/resources/s2seg.svg",
                     "s2seg/s2seg_plugin/plugin.py", "s2seg/algorithms/segment_tile.py",
                     "s2seg/core/pipeline.py", "s2seg/core/models/builtin.py"):
        assert required in names, required
    forbidden = re.compile(r"(^|/)(tests|tools|docs|\.venv|\.git|__pycache__|\.pytest_cache|\.qgis-settings)/"
                           r"|\.pyc$|(^|/)(Makefile|pytest\.ini|requirements.*\.txt|\.gitignore|\.gitattributes)$")
    assert not [n for n in names if forbidden.search(n.split("/", 1)[1])]
    assert not [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n]
    assert plugin_zip.stat().st_size < 25 * 2**20
    meta = zipfile.ZipFile(plugin_zip).read("s2seg/metadata.txt").decode()
    assert "hasProcessingProvider=yes" in meta


def test_install_script_installs_zip_and_enables_plugin(plugin_zip, tmp_path):
    profile_root = tmp_path / "config"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QGIS_CUSTOM_CONFIG_PATH": str(profile_root)}
    proc = subprocess.run(["bash", str(INSTALL), "--zip", str(plugin_zip)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    profile = profile_root / "profiles" / "default"
    assert (profile / "python" / "plugins" / "s2seg" / "metadata.txt").is_file()
    ini = (profile / "QGIS" / "QGIS3.ini").read_text()
    assert re.search(r"^\[PythonPlugins\]\s*\ns2seg=true", ini, re.M)
    assert ("extraPythonPaths=" in ini) == PROJECT_VENV.exists()  # the project venv's torch, for QGIS's Python
    # A second install replaces the first; a foreign folder of the same name is left alone.
    assert subprocess.run(["bash", str(INSTALL), "--zip", str(plugin_zip), "--no-venv"], capture_output=True,
                          env=env, timeout=120).returncode == 0
    assert "extraPythonPaths" not in (profile / "QGIS" / "QGIS3.ini").read_text()
    other = tmp_path / "other"
    foreign = other / "profiles" / "default" / "python" / "plugins" / "s2seg"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    proc = subprocess.run(["bash", str(INSTALL), "--zip", str(plugin_zip)], capture_output=True, text=True,
                          env={**env, "QGIS_CUSTOM_CONFIG_PATH": str(other)}, timeout=120)
    assert proc.returncode != 0 and "not the s2seg plugin" in proc.stderr
    assert (foreign / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_qgis_process_runs_the_installed_zip(plugin_zip, small_tile, qgis_process, tmp_path):
    """"Install from ZIP" into a fresh profile, enable, then list and run with qgis_process (venv first on PATH)."""
    profile = tmp_path / "profile"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    # Mark the installed copy: the venv also makes the checkout importable as `s2seg`.
    metadata = plugins / "s2seg" / "metadata.txt"
    metadata.write_text(re.sub(r"^version=.*$", "version=9.9.9-installed", metadata.read_text(), flags=re.M))
    # What `qgis_process plugins enable s2seg` (or the Plugin Manager) writes; by hand it costs no QGIS start.
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\ns2seg=true\n")

    listing = qgis_process("list", profile=profile, check=True).stdout
    # The provider's algorithms are listed under its name, sorted by id.
    assert re.search(r"^S2Seg\s*\n(\s+s2seg:\S+\t.*\n)*?\s+s2seg:segmenttile\s+Segment Sentinel-2 tile", listing,
                     re.M), listing

    out = tmp_path / "out"
    proc = qgis_process("--json", "run", "s2seg:segmenttile", "--", f"INPUT={small_tile}", "DEVICE=cpu",
                        f"OUTPUT_FOLDER={out}", profile=profile)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    results = report["results"]
    assert report["algorithm_details"]["id"] == "s2seg:segmenttile"
    assert report["provider_details"]["version"] == "9.9.9-installed"  # the installed copy ran
    for output, product in (("CLASS", "class"), ("MAXPROB", "maxprob"), ("ENTROPY", "entropy"), ("GAP", "gap")):
        assert results[output].endswith(f"_{product}.tif") and Path(results[output]).is_file()
        assert Path(results[output]).parent == out
    assert Path(results["REPORT"]).is_file() and Path(results["PREVIEW"]).is_file()
    log = json.dumps(report.get("log", {}))
    assert "on cpu" in log and "chunk 1/" in log


@pytest.mark.slow
def test_qgis_process_after_make_install_finds_torch_without_venv_on_path(plugin_zip, small_tile, tmp_path):
    """After tools/install_plugin.sh, QGIS's own Python (no venv on PATH) imports torch via the profile setting;
    a bad input fails with the engine's message and exit code 1."""
    if not PROJECT_VENV.exists():
        pytest.skip(f"no project venv at {PROJECT_VENV.parent.parent} for make install to point QGIS at")
    profile = tmp_path / "profile"
    proc = subprocess.run(["bash", str(INSTALL), "--zip", str(plugin_zip)], capture_output=True, text=True,
                          env={**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(profile)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    env = qgis_process_env(profile)
    env["PATH"] = "/usr/bin:/bin"  # system Python only
    out = tmp_path / "out"
    proc = subprocess.run([QGIS_PROCESS, "run", "s2seg:segmenttile", "--", f"INPUT={small_tile}",
                           f"OUTPUT_FOLDER={out}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"CLASS:\t{out}" in proc.stdout
    missing = tmp_path / "no_such_tile.SAFE"
    proc = subprocess.run([QGIS_PROCESS, "run", "s2seg:segmenttile", "--", f"INPUT={missing}",
                           f"OUTPUT_FOLDER={out}"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert str(missing) in proc.stdout + proc.stderr
