"""Start-up stays light (issue 23): the command line's ``--help`` and ``models`` and the QGIS provider's
load import neither torch nor onnxruntime (checked in fresh processes, by module, never by time)."""
import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "timm", "rasterio", "numba")


def imported_after(code: str) -> dict[str, bool]:
    """Which HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["segment", "--help"], ["batch", "--help"]],
                         ids=["help", "models", "segment-help", "batch-help"])
def test_cli_commands_that_compute_nothing_import_no_engine_runtime(argv):
    code = ("import contextlib, io\nfrom s2seg.core.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass")
    loaded = imported_after(code)
    assert not loaded["torch"] and not loaded["onnxruntime"], loaded


def test_qgis_provider_load_imports_no_engine_runtime():
    pytest.importorskip("qgis.core")
    code = ("from qgis.core import QgsApplication\napp = QgsApplication([], False)\napp.initQgis()\n"
            "import s2seg\nfrom s2seg.s2seg_plugin.provider import S2SegProvider\np = S2SegProvider()\n"
            "QgsApplication.processingRegistry().addProvider(p)\nassert len(p.algorithms()) > 0")
    loaded = imported_after(code)
    assert not any(loaded[m] for m in ("torch", "onnxruntime", "timm")), loaded


def test_the_probe_sees_an_import():
    """The check can fail: importing the pipeline does load torch."""
    assert imported_after("import s2seg.core.pipeline")["torch"]


def _wait_policy(code: str, env: dict[str, str]) -> str:
    probe = f"{code}\nimport os\nprint(os.environ.get('OMP_WAIT_POLICY'))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("entry", ["import s2seg.core.cli", "import s2seg.benchmarks", "import s2seg.core.pipeline"])
def test_the_engine_sets_the_openmp_wait_policy_before_torch_loads(entry):
    """Idle OpenMP threads must not spin on the cores the reader and writer need (core/__init__.py): any
    entry to the engine, the benchmark harness included, sets the policy on its first import."""
    from s2seg.core import OMP_WAIT_POLICY

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _wait_policy(entry, env) == OMP_WAIT_POLICY == "PASSIVE"


def test_a_wait_policy_set_by_the_user_is_kept():
    assert _wait_policy("import s2seg.core.pipeline", {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
