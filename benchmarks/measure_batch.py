"""Batch overhead on real-size tiles: `s2seg batch` against a serial loop of `s2seg segment`.

    .venv/bin/python benchmarks/measure_batch.py TILE [TILE …] --work DIR [--layouts 2x1,1x2]

Each variant runs as its own command, as a user would run it, one after the other on the
same tiles: the serial loop (one process calling ``segment`` per tile; torch imported once)
and ``s2seg batch`` with each ``WORKERSxTHREADS`` layout of a local cluster. Prints wall
seconds per command, tiles per hour, and the overhead of each batch layout against the
serial loop (the issue's target: ≤ 5 %).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
S2SEG = REPO / ".venv" / "bin" / "s2seg"

SERIAL = """
import sys, time
from s2seg.core.config import EngineConfig
from s2seg.core.pipeline import segment
out = sys.argv[1]
for tile in sys.argv[2:]:
    name = tile.rstrip('/').rsplit('/', 1)[-1].removesuffix('.zip').removesuffix('.SAFE')
    t0 = time.perf_counter()
    segment(tile, f"{out}/{name}", config=EngineConfig(overwrite=True))
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
"""


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tiles", nargs="+")
    parser.add_argument("--work", required=True, type=Path, help="scratch folder for the outputs (emptied)")
    parser.add_argument("--layouts", default="2x1,1x2", help="local-cluster layouts WORKERSxTHREADS, comma-separated")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    rows = [("serial loop of segment, one process", timed([sys.executable, "-c", SERIAL, str(args.work / "serial"), *args.tiles]))]
    for layout in args.layouts.split(","):
        workers, threads = layout.split("x")
        seconds = timed([str(S2SEG), "batch", *args.tiles, str(args.work / f"batch-{layout}"), "--workers", workers,
                         "--threads-per-worker", threads, "--quiet"])
        rows.append((f"batch {workers} worker(s) × {threads} thread(s)", seconds))
    serial = rows[0][1]
    n = len(args.tiles)
    print(f"| command | wall s | tiles per hour | vs serial loop |\n|---|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.1f} | {3600 * n / seconds:.1f} | {100 * (seconds / serial - 1):+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
