"""Start-up and memory in fresh processes (issue 23).

* **Start-up**: ``s2seg segment`` on a 600² tile with the built-in model, wall time of the whole
  command, against ``python -c "import torch"``; interleaved, best of ``repeats``. Target ≤ 2 ×.
* **Peak RSS per model kind** on a small crop against its import baseline: a fresh process that
  imports what the run imports (the engine, and onnxruntime for an ONNX model) and loads the model,
  then stops; and a fresh process that also segments the crop. VmHWM from the OS. Target ≤ 1.2 ×.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .common import Log, fmt_s, sample_tile
from .report import BenchResult, Section, Target

STARTUP_MAX = 2.0
RSS_OVER_IMPORT_MAX = 1.2
STARTUP_SIZE = 600


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB; getrusage where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(mode: str, model: str, tile: str, output: str, aoi: str = "") -> None:
    """Run by :func:`memory_section` in a fresh process: load (``mode`` "import") or also segment ("run")."""
    from s2seg.core.config import EngineConfig
    from s2seg.core.models import load_model, pick_device, resolve_card
    from s2seg.core.pipeline import segment

    loaded = load_model(resolve_card(model), pick_device("cpu"))
    if mode == "run":
        segment(tile, output, model=loaded, config=EngineConfig(overwrite=True, resume="never", aoi=aoi or None))
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def _child(args: list[str]) -> float:
    code = f"import sys; from s2seg.benchmarks.startup import rss_child; rss_child(*{args!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"fresh-process run {args[:2]} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _wall(command: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def startup_section(result: BenchResult, work: Path, log: Log, repeats: int = 3) -> None:
    tile = sample_tile(work, STARTUP_SIZE, log)
    commands = {"import torch": [sys.executable, "-c", "import torch"],
                "s2seg segment": [sys.executable, "-m", "s2seg.core.cli", "segment", str(tile),
                                  str(work / "out-startup"), "--overwrite", "--no-resume"]}
    best = {k: float("inf") for k in commands}
    for i in range(repeats):
        for key, command in commands.items():  # interleaved
            log(f"[bench] start-up: {key}, round {i + 1}/{repeats}")
            best[key] = min(best[key], _wall(command))
    ratio = best["s2seg segment"] / best["import torch"]
    result.ratios["startup_over_import_torch"] = ratio
    result.sections.append(Section(
        f"Start-up: whole commands in fresh processes (best of {repeats}, interleaved)", ["command", "seconds", "÷ import torch"],
        [["python -c 'import torch'", fmt_s(best["import torch"]), "1.00"],
         [f"s2seg segment, {STARTUP_SIZE}² tile, built-in model", fmt_s(best["s2seg segment"]), f"{ratio:.2f}"]]))
    result.targets.append(Target(f"s2seg segment ({STARTUP_SIZE}², built-in) ≤ {STARTUP_MAX} × import torch",
                                 f"{ratio:.2f}×", f"≤ {STARTUP_MAX}×", ratio <= STARTUP_MAX))


def memory_section(result: BenchResult, cases: list[tuple[str, str, Path, str]], work: Path, log: Log) -> None:
    """``cases``: ``(label, model name or folder, tile, aoi)``; one row and one target each."""
    section = Section("Peak RSS of a small crop ÷ its import baseline (fresh processes)",
                      ["model", "crop", "import + load MB", "segment MB", "÷ import"])
    for label, model, tile, aoi in cases:
        log(f"[bench] peak RSS: {label}")
        base = _child(["import", model, str(tile), ""])
        run = _child(["run", model, str(tile), str(work / f"out-rss-{label}"), aoi])
        ratio = run / base
        result.ratios[f"rss_over_import_{label}"] = ratio
        section.rows.append([label, "AOI" if aoi else tile.parent.name, f"{base:.0f}", f"{run:.0f}", f"{ratio:.2f}"])
        result.targets.append(Target(f"peak RSS ≤ {RSS_OVER_IMPORT_MAX} × import baseline, {label}", f"{ratio:.2f}×",
                                     f"≤ {RSS_OVER_IMPORT_MAX}×", ratio <= RSS_OVER_IMPORT_MAX))
    result.sections.append(section)
