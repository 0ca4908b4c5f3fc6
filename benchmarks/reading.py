"""The reading row of ``make bench`` (issue 23): s2seg's read stage on the peer crop against
``gdal_translate`` of the same native windows to the same output resolution, measured in one run.

The crop is the peer section's (:data:`.peer_row.CROP` of the demo L1C scene) and the model its
(``s2-cloud-l1c``, 30 m): the engine plans the crop as the pipeline does and reads every chunk's
input region (:meth:`s2seg.core.reader.ChunkReader.read`: decode, the native pixels nearest each 10 m
pixel centre (with reflection past the scene), their means over the model's 30 m pixels, straight
from the native pixels where numba is in use). The denominator does the same job with GDAL: the
library call of ``gdal_translate`` in this process (``gdal.Translate``, no process start-up) on the
same native windows (:meth:`~s2seg.core.reader.ChunkReader.native_windows`), one call per band file,
to the model's resolution with area averaging (``-tr 30 30 -r average``: for nested grids the same
means). Beside it: the engine's read with one thread (GDAL's calls run one after the other), the same
windows copied at their own resolution (the earlier denominator), the commands themselves (mostly
process start-up, measured alone on 1 × 1 windows), rasterio decoding the windows, and the windows of
the crop alone (what a reader without patch halo would decode). Interleaved, best of ``repeats``.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import Log
from .peer_row import CROP, DEMO_SCENE, PEER_MODEL
from .report import BenchResult, Section, Target

READ_OVER_TRANSLATE_MAX = 1.0  # s2seg's read stage ÷ gdal_translate of the same windows to the same resolution


def _translate(path: Path, window, out: Path, resolution: float | None) -> float:
    """Seconds of one ``gdal_translate -srcwin`` command (process start-up included), to ``resolution``
    (area average) or at the file's own."""
    command = ["gdal_translate", "-q", "-of", "GTiff", "-srcwin", str(window.col_off), str(window.row_off),
               str(window.width), str(window.height)]
    if resolution is not None:
        command += ["-tr", str(resolution), str(resolution), "-r", "average"]
    command += [str(path), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.strip()[-1000:]}")
    return time.perf_counter() - t0


def _not_run(result: BenchResult, section: Section, name: str, why: str) -> None:
    section.notes.append(f"not run: {why}")
    result.sections.append(section)
    result.targets.append(Target(name, "not run", f"≤ {READ_OVER_TRANSLATE_MAX}×", None, why))


def reading_section(result: BenchResult, log: Log, *, scene: Path = DEMO_SCENE, window: tuple[int, int, int, int] = CROP,
                    repeats: int = 3) -> None:
    """Add the reading table and its target to ``result`` ("not run" without the scene or gdal_translate)."""
    import rasterio
    from rasterio.windows import Window

    from s2seg.core.config import EngineConfig, ThreadBudget
    from s2seg.core.errors import S2SegError
    from s2seg.core.grid import plan_window
    from s2seg.core.models import pick_device, resolve_card
    from s2seg.core.reader import ChunkReader
    from s2seg.core.sentinel2 import discover

    from .engine_parts import auto_chunk_size

    name = f"s2seg read stage ≤ {READ_OVER_TRANSLATE_MAX:.0f} × gdal_translate (same windows, same resolution, {PEER_MODEL} crop)"
    section = Section(f"Reading: s2seg's read stage against gdal_translate ({window[3]} × {window[2]} px crop, {PEER_MODEL} bands)",
                      ["run", "native pixels decoded", "values out", f"seconds (best of {repeats})", "÷ gdal_translate"])
    try:
        bandset = discover(scene)
        card = resolve_card(PEER_MODEL)
    except S2SegError as exc:
        _not_run(result, section, name, f"{exc} (the scene comes from `bash tools/demo.sh`)")
        return
    if shutil.which("gdal_translate") is None:
        _not_run(result, section, name, "gdal_translate is not on PATH")
        return
    chunk_size = auto_chunk_size(card, bandset, pick_device("cpu"))
    grid = plan_window(bandset.height, bandset.width, card.patch_size, chunk_size, window, card.pixel_factor)
    regions = [(c.input_rows, c.input_cols) for c in grid.chunks]
    files = bandset.require(card.bands, card.name)
    row0, col0, height, width = window
    with ChunkReader(bandset, card.bands, card.name, card.resampling, 1, card.pixel_factor) as reader:
        region_windows = [w for rows, cols in regions for w in reader.native_windows(rows, cols)]
        crop_windows = reader.native_windows((row0, row0 + height), (col0, col0 + width))
    region_paths = [f.path for _ in regions for f in files]
    crop_paths = [f.path for f in files]
    drivers = set()
    for f in files:
        with rasterio.open(f.path) as ds:
            drivers.add(f"{ds.driver} ({ds.profile.get('compress', 'uncompressed')})")

    res = card.resolution
    threads = ThreadBudget.for_machine(EngineConfig.read_threads).read  # as the pipeline reads

    def s2seg_read(threads: int) -> float:
        t0 = time.perf_counter()
        with ChunkReader(bandset, card.bands, card.name, card.resampling, threads, card.pixel_factor) as reader:
            for rows, cols in regions:
                reader.read(rows, cols)
        return time.perf_counter() - t0

    def translate(paths, windows, resolution) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            return sum(_translate(Path(p), w, Path(tmp) / f"{i}.tif", resolution)
                       for i, (p, w) in enumerate(zip(paths, windows)))

    def translate_in_process(paths, windows, resolution, sizes: list[int] | None = None) -> float:
        from osgeo import gdal

        options = {} if resolution is None else {"xRes": resolution, "yRes": resolution, "resampleAlg": "average"}
        t0 = time.perf_counter()
        for i, (path, w) in enumerate(zip(paths, windows)):
            out = f"/vsimem/s2seg-bench-read-{i}.tif"
            ds = gdal.Translate(out, str(path), srcWin=[w.col_off, w.row_off, w.width, w.height], format="GTiff", **options)
            if sizes is not None:
                sizes.append(ds.RasterXSize * ds.RasterYSize)
            ds = None  # closed: written
            gdal.Unlink(out)
        return time.perf_counter() - t0

    def rasterio_read() -> float:
        t0 = time.perf_counter()
        for path, w in zip(region_paths, region_windows):
            with rasterio.open(path) as ds:
                ds.read(1, window=w)
        return time.perf_counter() - t0

    gdal_values, gdal_crop_values = [], []  # output pixels GDAL makes at the model's resolution
    translate_in_process(region_paths, region_windows, res, gdal_values)
    translate_in_process(crop_paths, crop_windows, res, gdal_crop_values)
    runs = {
        "s2seg": lambda: s2seg_read(threads),
        "s2seg_one_thread": lambda: s2seg_read(1),
        "model_res": lambda: translate_in_process(region_paths, region_windows, res),
        "native_res": lambda: translate_in_process(region_paths, region_windows, None),
        "commands": lambda: translate(region_paths, region_windows, res),
        "startup": lambda: translate(region_paths, [Window(0, 0, 1, 1)] * len(region_paths), None),
        "rasterio": rasterio_read,
        "crop_only": lambda: translate_in_process(crop_paths, crop_windows, res),
    }
    best = {k: float("inf") for k in runs}
    for i in range(repeats):
        for key, fn in runs.items():  # interleaved
            log(f"[bench] reading: {key}, round {i + 1}/{repeats}")
            best[key] = min(best[key], fn())
    denominator = best["model_res"]  # gdal.Translate of the same windows to the model's resolution
    native = sum(w.width * w.height for w in region_windows)
    native_crop = sum(w.width * w.height for w in crop_windows)
    f = card.pixel_factor
    out_px = sum((r[1] - r[0]) * (c[1] - c[0]) for r, c in regions) * len(files) // (f * f)
    ratio = best["s2seg"] / denominator
    one_thread = best["s2seg_one_thread"] / denominator

    def row(label: str, pixels: int | None, values: int | None, key: str) -> list[str]:
        return [label, "—" if pixels is None else f"{pixels:,}", "—" if values is None else f"{values:,}",
                f"{best[key]:.3f}", f"{best[key] / denominator:.2f}"]  # ms matter here

    section.rows += [
        row(f"s2seg ChunkReader.read, {len(regions)} chunk region(s) with patch halo → {res:g} m, {threads} read thread(s)",
            native, out_px, "s2seg"),
        row("  the same, 1 read thread", native, out_px, "s2seg_one_thread"),
        row(f"gdal.Translate in this process, same windows → {res:g} m (-tr {res:g} -r average)", native, sum(gdal_values),
            "model_res"),
        row("gdal.Translate in this process, same windows at their own resolution (a copy)", native, native, "native_res"),
        row(f"gdal_translate commands (one per band), same windows → {res:g} m", native, sum(gdal_values), "commands"),
        row("  the same commands on 1 × 1 windows (process start-up)", None, None, "startup"),
        row("rasterio window reads, same windows, one thread (decode only)", native, None, "rasterio"),
        row(f"gdal.Translate in this process, the crop's windows only → {res:g} m", native_crop, sum(gdal_crop_values),
            "crop_only"),
    ]
    section.notes.append(
        f"Band files: {', '.join(sorted(drivers))}, {len(files)} bands. Same job on both sides: the native pixels of the "
        f"same windows (every chunk's input region, the crop plus the patch halo, clipped to the scene) to the model's "
        f"{res:g} m. s2seg samples the native pixel nearest each 10 m centre and averages {f} × {f} of them (for nested "
        f"grids GDAL's area average gives the same means) and also makes the halo past the scene edge by reflection "
        f"({out_px:,} values against GDAL's {sum(gdal_values):,}); it reads the bands on {threads} thread(s) "
        f"(the row below: one, as GDAL's calls). ÷ gdal_translate = seconds ÷ gdal.Translate to {res:g} m in this "
        "process (the commands' time is mostly process start-up).")
    result.sections.append(section)
    result.ratios["read_over_gdal_translate"] = ratio
    result.ratios["read_one_thread_over_gdal_translate"] = one_thread
    result.seconds.update({"read_s2seg": best["s2seg"], "read_gdal_translate": denominator})
    note = (f"s2seg's read: {best['s2seg']:.3f} s on {threads} thread(s), {best['s2seg_one_thread']:.3f} s on one "
            f"({one_thread:.2f}×); decoding the windows alone takes {best['rasterio']:.3f} s (rasterio), the rest is "
            f"sampling {out_px * f * f:,} 10 m positions into {out_px:,} model pixels.")
    result.targets.append(Target(name, f"{ratio:.2f}×", f"≤ {READ_OVER_TRANSLATE_MAX}×", ratio <= READ_OVER_TRANSLATE_MAX, note))


def main() -> int:
    """``python -m s2seg.benchmarks.reading``: this section alone, printed."""
    result = BenchResult(machine={})
    reading_section(result, print)
    print(result.text())
    for section in result.sections:
        print("\n".join(f"* {n}" for n in section.notes))
    print("\n".join(f"* {t.note}" for t in result.targets if t.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
