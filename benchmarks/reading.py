"""The reading row of ``make bench`` (issue 23): s2seg's read stage on the peer crop against
``gdal_translate -srcwin`` of the same native windows, measured in one run.

The crop is the peer section's (:data:`.peer_row.CROP` of the demo L1C scene) and the model its
(``s2-cloud-l1c``, 30 m): the engine plans the crop as the pipeline does and reads every chunk's
input region (:meth:`s2seg.core.reader.ChunkReader.read`: decode, resample to the 10 m grid with
reflection past the scene, block means to the model's 30 m pixels). ``gdal_translate`` decodes the
native pixels of the same windows (:meth:`~s2seg.core.reader.ChunkReader.native_windows`, one command
per band file, sequentially, output an uncompressed GeoTIFF); its process start-up is measured alone
(1 × 1 windows), and the same library call in this process (``gdal.Translate``, no start-up) is the
denominator. Also the windows of the crop alone (what a reader without patch halo would decode), and
rasterio reading the same windows (decode without resampling). Interleaved, best of ``repeats``.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import Log, fmt_s
from .peer_row import CROP, DEMO_SCENE, PEER_MODEL
from .report import BenchResult, Section, Target

READ_OVER_TRANSLATE_MAX = 1.0  # s2seg's read stage ÷ gdal_translate of the same windows (no process start-up)


def _translate(path: Path, window, out: Path) -> float:
    """Seconds of one ``gdal_translate -srcwin`` command (process start-up included)."""
    command = ["gdal_translate", "-q", "-of", "GTiff", "-srcwin", str(window.col_off), str(window.row_off),
               str(window.width), str(window.height), str(path), str(out)]
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

    from s2seg.core.errors import S2SegError
    from s2seg.core.grid import plan_window
    from s2seg.core.models import pick_device, resolve_card
    from s2seg.core.reader import ChunkReader
    from s2seg.core.sentinel2 import discover

    from .engine_parts import auto_chunk_size

    name = f"s2seg read stage ≤ {READ_OVER_TRANSLATE_MAX:.0f} × gdal_translate (same windows, {PEER_MODEL} crop)"
    section = Section(f"Reading: s2seg's read stage against gdal_translate ({window[3]} × {window[2]} px crop, {PEER_MODEL} bands)",
                      ["run", "native pixels decoded", "10 m values out", f"seconds (best of {repeats})", "÷ gdal_translate"])
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
    with ChunkReader(bandset, card.bands, card.name, card.resampling, 4, card.pixel_factor) as reader:
        region_windows = [w for rows, cols in regions for w in reader.native_windows(rows, cols)]
        crop_windows = reader.native_windows((row0, row0 + height), (col0, col0 + width))
    region_paths = [f.path for _ in regions for f in files]
    crop_paths = [f.path for f in files]
    drivers = set()
    for f in files:
        with rasterio.open(f.path) as ds:
            drivers.add(f"{ds.driver} ({ds.profile.get('compress', 'uncompressed')})")

    def s2seg_read() -> float:
        t0 = time.perf_counter()
        with ChunkReader(bandset, card.bands, card.name, card.resampling, 4, card.pixel_factor) as reader:
            for rows, cols in regions:
                reader.read(rows, cols)
        return time.perf_counter() - t0

    def translate(paths, windows) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            return sum(_translate(Path(p), w, Path(tmp) / f"{i}.tif") for i, (p, w) in enumerate(zip(paths, windows)))

    def translate_in_process(paths, windows) -> float:
        from osgeo import gdal

        t0 = time.perf_counter()
        for i, (path, w) in enumerate(zip(paths, windows)):
            out = f"/vsimem/s2seg-bench-read-{i}.tif"
            gdal.Translate(out, str(path), srcWin=[w.col_off, w.row_off, w.width, w.height], format="GTiff")
            gdal.Unlink(out)
        return time.perf_counter() - t0

    def rasterio_read() -> float:
        t0 = time.perf_counter()
        for path, w in zip(region_paths, region_windows):
            with rasterio.open(path) as ds:
                ds.read(1, window=w)
        return time.perf_counter() - t0

    runs = {
        "s2seg": s2seg_read,
        "translate": lambda: translate(region_paths, region_windows),
        "startup": lambda: translate(region_paths, [Window(0, 0, 1, 1)] * len(region_paths)),
        "in_process": lambda: translate_in_process(region_paths, region_windows),
        "in_process_crop": lambda: translate_in_process(crop_paths, crop_windows),
        "rasterio": rasterio_read,
    }
    best = {k: float("inf") for k in runs}
    for i in range(repeats):
        for key, fn in runs.items():  # interleaved
            log(f"[bench] reading: {key}, round {i + 1}/{repeats}")
            best[key] = min(best[key], fn())
    decode = best["in_process"]
    native = sum(w.width * w.height for w in region_windows)
    native_crop = sum(w.width * w.height for w in crop_windows)
    out_px = sum((r[1] - r[0]) * (c[1] - c[0]) for r, c in regions) * len(files)
    ratio = best["s2seg"] / decode
    section.rows += [
        [f"s2seg ChunkReader.read, {len(regions)} chunk region(s) with patch halo", f"{native:,}", f"{out_px:,}",
         fmt_s(best["s2seg"]), f"{ratio:.2f}"],
        ["gdal_translate -srcwin (a command per band), same native windows", f"{native:,}", "—",
         fmt_s(best["translate"]), f"{best['translate'] / decode:.2f}"],
        ["  the same commands on 1 × 1 windows (process start-up)", "—", "—", fmt_s(best["startup"]),
         f"{best['startup'] / decode:.2f}"],
        ["gdal.Translate in this process (the command's code, no start-up), same windows", f"{native:,}", "—",
         fmt_s(decode), "1.00"],
        ["rasterio window reads, same windows, one thread (decode only)", f"{native:,}", "—", fmt_s(best["rasterio"]),
         f"{best['rasterio'] / decode:.2f}"],
        ["gdal.Translate in this process, the crop's windows only", f"{native_crop:,}", f"{height * width * len(files):,}",
         fmt_s(best["in_process_crop"]), f"{best['in_process_crop'] / decode:.2f}"],
    ]
    section.notes.append(
        f"Band files: {', '.join(sorted(drivers))}, {len(files)} bands. s2seg's read decodes the native pixels under every "
        "chunk's input region (the crop plus the patch halo, clipped to the scene) and makes "
        f"{out_px / max(native, 1):.1f} × as many 10 m values (reflection past the scene edge, 20 m bands sampled at "
        "10 m), then block means at the model's 30 m. ÷ gdal_translate = seconds ÷ gdal.Translate in this process "
        "(the commands' time is mostly process start-up).")
    result.sections.append(section)
    result.ratios["read_over_gdal_translate"] = ratio
    result.seconds.update({"read_s2seg": best["s2seg"], "read_gdal_translate": decode})
    note = ""
    if ratio > READ_OVER_TRANSLATE_MAX:
        note = (f"s2seg's read makes {out_px:,} resampled 10 m values from {native:,} decoded native pixels "
                f"({out_px / max(native, 1):.1f}×: the patch halo of a 30 m model is a patch, 768 px a side, much of it "
                f"reflected past the scene); decoding those pixels takes {fmt_s(best['rasterio'])} s (rasterio), the rest "
                "is sampling onto the 10 m grid and block means (numpy).")
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
