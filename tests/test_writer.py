import math
import warnings

import numpy as np
import pytest
import rasterio
from osgeo import gdal
from rasterio.crs import CRS
from rasterio.transform import from_origin

from s2seg.core.uncertainty import CLASS_NODATA
from s2seg.core.writer import OVERVIEW_BLOCK, ProductWriter

W, H = 1300, 1050  # odd-sized levels (650 × 525, 325 × 263, …) and a last block row cut short


def _products(seed=0):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 5, (H, W), dtype=np.uint8)
    maxprob = rng.random((H, W), dtype=np.float32)
    maxprob[100:300, 200:700] = np.nan  # nodata areas: not averaged in
    maxprob[::7, ::3] = np.nan
    classes[np.isnan(maxprob)] = CLASS_NODATA
    probs = rng.random((3, H, W), dtype=np.float32)
    probs[:, np.isnan(maxprob)] = np.nan
    return classes, maxprob, probs


def _writer(tmp_path, write_probs):
    return ProductWriter(tmp_path, "T", width=W, height=H, crs=CRS.from_epsg(32633),
                         transform=from_origin(500000, 6000000, 10, 10), class_names=["a", "b", "c"],
                         class_colours=["#ff0000", "#00ff00", "#0000ff"], write_probs=write_probs, block=240)


def _write(tmp_path, classes, maxprob, probs, chunk=480):
    writer = _writer(tmp_path, write_probs=True)
    for row0 in range(0, H, chunk):
        for col0 in range(0, W, chunk):
            window = np.s_[row0: row0 + chunk, col0: col0 + chunk]
            writer.write("class", classes[window], row0, col0)
            for key in ("maxprob", "entropy", "gap"):
                writer.write(key, maxprob[window], row0, col0)
            writer.write("probs", probs[(slice(None), *window)], row0, col0)
    return writer.commit()


def _halve_mean(x):
    """Mean of each 2 × 2 block of the valid (non-NaN) pixels, in float64; NaN where none is valid."""
    h, w = x.shape
    padded = np.full((h + h % 2, w + w % 2), np.nan, dtype=np.float64)
    padded[:h, :w] = x
    blocks = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return np.nanmean(blocks, axis=(1, 3))


def _levels(path, band=1):
    ds = gdal.Open(str(path))
    b = ds.GetRasterBand(band)
    return [b.GetOverview(i).ReadAsArray() for i in range(b.GetOverviewCount())], b.GetOverview(0).GetBlockSize()


def test_overviews_are_nan_ignoring_means_level_by_level_and_nearest_for_classes(tmp_path):
    classes, maxprob, probs = _products()
    paths = _write(tmp_path, classes, maxprob, probs)

    levels, block = _levels(paths["maxprob"])
    assert block == [OVERVIEW_BLOCK, OVERVIEW_BLOCK]
    assert len(levels) == 2  # 1300 / 4 = 325 ≥ 256 > 1300 / 8
    expected = maxprob.astype(np.float64)
    for level in levels:
        expected = _halve_mean(expected)
        assert level.shape == expected.shape
        np.testing.assert_allclose(level, expected, rtol=0, atol=1e-6, equal_nan=True)

    class_levels, _ = _levels(paths["class"])
    for k, level in enumerate(class_levels, start=1):
        assert np.array_equal(level, classes[:: 2**k, :: 2**k])

    for band in range(3):  # multi-band product: every band its own pyramid
        probs_levels, _ = _levels(paths["probs"], band + 1)
        np.testing.assert_allclose(probs_levels[0], _halve_mean(probs[band].astype(np.float64)), atol=1e-6, equal_nan=True)


def test_first_level_equals_gdal_average(tmp_path):
    """Against GDAL's own AVERAGE overview of the same full-resolution pixels (it ignores NaN too)."""
    classes, maxprob, probs = _products(1)
    paths = _write(tmp_path, classes, maxprob, probs)
    copy = tmp_path / "gdal.tif"
    gdal.Translate(str(copy), str(paths["maxprob"]), creationOptions=["TILED=YES"])
    ds = gdal.Open(str(copy), gdal.GA_Update)
    ds.BuildOverviews("AVERAGE", [2])
    reference = ds.GetRasterBand(1).GetOverview(0).ReadAsArray()
    ds = None
    ours, _ = _levels(paths["maxprob"])
    np.testing.assert_allclose(ours[0], reference, atol=1e-6, equal_nan=True)


def test_commit_twice_replaces_the_overviews(tmp_path):
    """A commit that failed after building overviews is retried on the same .part files: the
    levels are rebuilt, not added to."""
    classes, maxprob, probs = _products(2)
    writer = _writer(tmp_path, write_probs=False)
    writer.write("class", classes, 0, 0)
    for key in ("maxprob", "entropy", "gap"):
        writer.write(key, maxprob, 0, 0)
    writer.flush()
    writer._finish("maxprob")
    paths = writer.commit()
    levels, _ = _levels(paths["maxprob"])
    assert len(levels) == 2
    np.testing.assert_allclose(levels[1], _halve_mean(_halve_mean(maxprob.astype(np.float64))), atol=1e-6, equal_nan=True)
    assert math.ceil(W / 4) == levels[1].shape[1]


def _part_bytes(writer):
    return sum(p.stat().st_size for p in writer.partial_paths)


def test_part_files_grow_with_the_pixels_written_not_with_the_declared_size(tmp_path):
    """A tile declared 20000 × 20000 px (1600 blocks of 512 px per product) of which one block is
    written, flushed, and the files closed as a stopped run does; then resumed for one more block."""
    size, block = 20000, 512

    def writer(resume):
        return ProductWriter(tmp_path, "T", width=size, height=size, crs=CRS.from_epsg(32633),
                             transform=from_origin(500000, 6000000, 10, 10), class_names=["a", "b"],
                             class_colours=["#ff0000", "#00ff00"], write_probs=False, block=block, resume=resume)

    rng = np.random.default_rng(0)
    values = rng.random((block, block), dtype=np.float32)
    pixel_bytes = block * block * (1 + 3 * 4)  # one block of every product, uncompressed
    for resume, col0 in ((False, 0), (True, block)):
        w = writer(resume)
        w.write("class", (values * 2).astype(np.uint8), 0, col0)
        for key in ("maxprob", "entropy", "gap"):
            w.write(key, values, 0, col0)
        w.flush([(0, col0, block, block)])
        assert w.close()
        tile_index = 4 * 1600 * 2 * 8  # offsets and byte counts of every block, 4 products
        assert _part_bytes(w) < (col0 // block + 1) * pixel_bytes + tile_index, _part_bytes(w)
    with rasterio.open(w.partial_paths[1]) as ds:  # the stored blocks read back; absent ones as nodata
        assert np.array_equal(ds.read(1, window=((0, block), (block, 2 * block))), values)
        assert np.isnan(ds.read(1, window=((block, 2 * block), (0, block)))).all()


def test_overviews_are_built_under_the_runs_gdal_cache_limit(tmp_path, monkeypatch, request):
    """Building the overviews reads every product back: under GDAL's default cache (5 % of the RAM) its decoded
    blocks raised a full tile's peak RSS from 1.36 to 1.95 GB. segment() keeps its own limit until the commit ends."""
    from s2seg.core.config import EngineConfig
    from s2seg.core.pipeline import segment
    from s2seg.core.sample import write_sample_tile

    tile = write_sample_tile(tmp_path / "tile", size=240, seed=1, level="L2A", layout="safe")
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    # A known process cache well above any run's limit (other tests may leave GDAL's at 64 MB, a run's size).
    before = gdal.GetCacheMax()
    default = 2 * 2**30
    gdal.SetCacheMax(default)
    request.addfinalizer(lambda: gdal.SetCacheMax(before))
    seen = []
    commit = ProductWriter.commit
    monkeypatch.setattr(ProductWriter, "commit", lambda self, *a, **k: (seen.append(gdal.GetCacheMax()), commit(self, *a, **k))[1])
    segment(tile, tmp_path / "out", config=EngineConfig())
    assert seen and seen[0] < default
    assert gdal.GetCacheMax() == default  # put back afterwards


def _write_chunks(writer, arrays, chunks, chunk=480, strip=120):
    """Write ``arrays`` (key → 2-D) chunk by chunk (``chunks``: their (row0, col0)), in strips as the pipeline does."""
    for row0, col0 in chunks:
        for r0 in range(row0, min(row0 + chunk, H), strip):
            window = np.s_[r0: min(r0 + strip, row0 + chunk), col0: col0 + chunk]
            for key, array in arrays.items():
                writer.write(key, array[window], r0, col0)


def _all_levels(paths):
    return {key: _levels(path)[0] for key, path in paths.items()}


def _assert_same_levels(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]) > 0
        for x, y in zip(a[key], b[key]):
            assert x.dtype == y.dtype and np.array_equal(x.view(np.uint8), y.view(np.uint8)), key  # same bits


def test_overviews_made_while_writing_equal_those_read_back_at_the_commit(tmp_path, monkeypatch):
    """A new file's overviews are fed from the windows as they are written (_OverviewFeed): nothing is read
    back at the commit, one row of chunks at most is held, and the levels are the bits a resumed run reads back."""
    from s2seg.core import writer as writer_module

    classes, maxprob, _ = _products(3)
    arrays = {"class": classes, "maxprob": maxprob, "entropy": maxprob * 2, "gap": 1 - maxprob}
    chunks = [(r, c) for r in range(0, H, 480) for c in range(0, W, 480)]
    read_back = []
    fill = writer_module.ProductWriter._fill_overviews
    monkeypatch.setattr(writer_module.ProductWriter, "_fill_overviews",
                        lambda self, key, *a: read_back.append(key) or fill(self, key, *a))

    (tmp_path / "fed").mkdir()
    (tmp_path / "resumed").mkdir()
    fed = _writer(tmp_path / "fed", write_probs=False)
    _write_chunks(fed, arrays, chunks[:3])  # the first row of chunks: its first-level rows are handed over
    feed = fed._feeds["maxprob"]
    assert feed.top == 240 and feed.rows.shape[1] == 0
    _write_chunks(fed, arrays, chunks[3:5])  # part of the second row: held, at most one row of chunks
    assert feed.top == 240 and feed.rows.shape[1] == 240
    _write_chunks(fed, arrays, chunks[5:])
    made = _all_levels(fed.commit())
    assert read_back == []

    resumed = _writer(tmp_path / "resumed", write_probs=False)
    _write_chunks(resumed, arrays, chunks[:4])
    resumed.flush()
    assert resumed.close()
    resumed = ProductWriter(tmp_path / "resumed", "T", width=W, height=H, crs=CRS.from_epsg(32633),
                            transform=from_origin(500000, 6000000, 10, 10), class_names=["a", "b", "c"],
                            class_colours=["#ff0000", "#00ff00", "#0000ff"], write_probs=False, block=240, resume=True)
    _write_chunks(resumed, arrays, chunks[4:])
    _assert_same_levels(made, _all_levels(resumed.commit()))
    assert sorted(read_back) == sorted(arrays)
    expected = maxprob.astype(np.float64)
    for level in made["maxprob"]:
        expected = _halve_mean(expected)
        np.testing.assert_allclose(level, expected, rtol=0, atol=1e-6, equal_nan=True)


def test_a_pixel_written_twice_stops_the_feed_and_the_commit_reads_the_file_back(tmp_path):
    classes, maxprob, _ = _products(4)
    writer = _writer(tmp_path, write_probs=False)
    chunks = [(r, c) for r in range(0, H, 480) for c in range(0, W, 480)]
    stale = {"class": np.zeros_like(classes), "maxprob": np.zeros_like(maxprob),
             "entropy": np.zeros_like(maxprob), "gap": np.zeros_like(maxprob)}
    _write_chunks(writer, stale, chunks[:1])  # overwritten below: the file holds the last values
    _write_chunks(writer, {"class": classes, "maxprob": maxprob, "entropy": maxprob, "gap": maxprob}, chunks)
    assert writer._feeds["maxprob"].broken
    levels = _all_levels(writer.commit())
    expected = maxprob.astype(np.float64)
    for level in levels["maxprob"]:
        expected = _halve_mean(expected)
        np.testing.assert_allclose(level, expected, rtol=0, atol=1e-6, equal_nan=True)
    for k, level in enumerate(levels["class"], start=1):
        assert np.array_equal(level, classes[:: 2**k, :: 2**k])


def test_a_window_written_twice_cannot_make_up_for_one_never_written(tmp_path):
    """Counting pixels per row is not enough: a chunk written twice beside one never written adds up to the
    row's width. The feed stops at the second write, and the overviews are read back from the file (where the
    hole is nodata)."""
    classes, maxprob, _ = _products(5)
    writer = _writer(tmp_path, write_probs=False)
    arrays = {"class": classes, "maxprob": maxprob, "entropy": maxprob, "gap": maxprob}
    chunks = [(r, c) for r in range(0, H, 480) for c in range(0, W, 480)]
    assert math.ceil(W / 2) == 2 * 240 + 170  # chunk (0, 0) twice + chunk (0, 960): the first level's width
    _write_chunks(writer, arrays, [(0, 0), (0, 0)] + [c for c in chunks if c not in ((0, 0), (0, 480))])
    assert writer._feeds["maxprob"].broken
    levels = _all_levels(writer.commit())
    hole = maxprob.copy()
    hole[:480, 480:960] = np.nan  # never written: nodata in the file
    expected = hole.astype(np.float64)
    for level in levels["maxprob"]:
        expected = _halve_mean(expected)
        np.testing.assert_allclose(level, expected, rtol=0, atol=1e-6, equal_nan=True)
