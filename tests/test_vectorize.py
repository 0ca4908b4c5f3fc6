"""Polygons of the class raster (core/vectorize.py): topology across strips, MMU, attributes, nodata."""
import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from scipy import ndimage

from s2seg.core.uncertainty import CLASS_NODATA
from s2seg.core.vectorize import FIELDS, LAYER, mmu_pixels, vectorize

NAMES = ["water", "forest", "crops"]
COLOURS = ["#0000ff", "#00a600", "#ffffa8"]
PIXEL = 10.0  # m: one pixel is 0.01 ha


def _raster(path, array, dtype):
    h, w = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 1, dtype,
                                              ["TILED=YES", "BLOCKXSIZE=16", "BLOCKYSIZE=16"])
    ds.SetGeoTransform((500000.0, PIXEL, 0.0, 6000000.0, 0.0, -PIXEL))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    band.SetNoDataValue(CLASS_NODATA if dtype == gdal.GDT_Byte else float("nan"))
    band.WriteArray(array)
    ds = None
    return path


def _classes():
    """Shapes that cross strip borders in every way: a U (two arms joined below), a spiral-ish snake
    down many strips, a comb, single-pixel specks, and a nodata hole and border."""
    rng = np.random.default_rng(1)
    c = np.full((61, 47), 2, dtype=np.uint8)  # crops background
    c[5:40, 5:9] = 0  # U: left arm
    c[5:40, 15:19] = 0  # right arm
    c[36:40, 5:19] = 0  # joined at the bottom only
    for r in range(2, 58, 6):  # snake: zig-zag down the whole raster
        c[r:r + 2, 24:44] = 1
        c[r:r + 6, 24 if (r // 6) % 2 else 42:(26 if (r // 6) % 2 else 44)] = 1
    c[45:47, 2:20] = 1  # comb: a bar with teeth going up and down
    c[40:52, 3:20:4] = 1
    specks = rng.random(c.shape) < 0.01
    c[specks] = 0
    c[50:56, 30:40] = CLASS_NODATA  # a hole
    c[:, -1] = CLASS_NODATA  # and a nodata column at the edge
    return c


def _maxprob(shape):
    rows, cols = np.indices(shape)
    return ((rows * 7 + cols * 3) % 100 / 100).astype(np.float32)


def _features(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName(LAYER)
    out = []
    for f in layer:
        out.append({**{name: f.GetField(name) for name in FIELDS}, "geometry": f.GetGeometryRef().Clone()})
    return out


def _reference(classes):
    """Every 4-connected region of one class over the whole raster (no strips): label image."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    n = 0
    for value in range(len(NAMES)):
        regions, found = ndimage.label(classes == value)
        labels[regions > 0] = regions[regions > 0] + n
        n += found
    return labels, n


def _pixel_of(feature):
    """The (row, col) of a pixel inside the feature's polygon."""
    point = feature["geometry"].PointOnSurface()
    return int((6000000.0 - point.GetY()) // PIXEL), int((point.GetX() - 500000.0) // PIXEL)


@pytest.fixture()
def rasters(tmp_path):
    classes = _classes()
    maxprob = _maxprob(classes.shape)
    gap = (maxprob / 2).astype(np.float32)
    maxprob[classes == CLASS_NODATA] = np.nan
    gap[classes == CLASS_NODATA] = np.nan
    return (classes, maxprob, gap, _raster(tmp_path / "c.tif", classes, gdal.GDT_Byte),
            _raster(tmp_path / "m.tif", maxprob, gdal.GDT_Float32), _raster(tmp_path / "g.tif", gap, gdal.GDT_Float32))


@pytest.mark.parametrize("strip_rows", [1, 4, 7, 61])
def test_polygons_are_the_regions_of_the_whole_raster_whatever_the_strips(tmp_path, rasters, strip_rows):
    classes, maxprob, gap, c, m, g = rasters
    out = vectorize(c, tmp_path / "v.gpkg", NAMES, COLOURS, mmu_ha=0, maxprob_path=m, gap_path=g, strip_rows=strip_rows)
    features = _features(out.path)
    labels, n = _reference(classes)
    assert out.polygons == len(features) == n  # one polygon per region: pieces across strips joined
    seen = set()
    for f in features:
        label = labels[_pixel_of(f)]
        seen.add(label)
        region = labels == label
        assert f["geometry"].GetGeometryType() == ogr.wkbPolygon  # one polygon (holes allowed), not pieces
        assert f["class_id"] == classes[region][0] and f["class_name"] == NAMES[f["class_id"]]
        assert f["area_ha"] == pytest.approx(region.sum() * PIXEL**2 / 1e4)
        assert f["geometry"].GetArea() == pytest.approx(region.sum() * PIXEL**2)
        assert f["mean_maxprob"] == pytest.approx(float(maxprob[region].astype(np.float64).mean()), rel=1e-6)
        assert f["mean_gap"] == pytest.approx(float(gap[region].astype(np.float64).mean()), rel=1e-6)
    assert len(seen) == n


def _key(geometry, class_id):
    centroid = geometry.Centroid()
    return class_id, round(geometry.GetArea(), 3), round(centroid.GetX(), 3), round(centroid.GetY(), 3)


def test_geometries_are_gdals_polygons_of_the_class_raster(tmp_path, rasters):
    """Reference: GDAL's polygoniser run on the whole class raster (nodata masked), no strips."""
    _, _, _, c, _, _ = rasters
    source = gdal.Open(str(c))
    band = source.GetRasterBand(1)
    memory = ogr.GetDriverByName("Memory").CreateDataSource("")
    reference = memory.CreateLayer("ref", None, ogr.wkbPolygon)
    reference.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    assert gdal.Polygonize(band, band.GetMaskBand(), reference, 0, []) == 0
    expected = {_key(f.GetGeometryRef(), f.GetField(0)): f.GetGeometryRef().Clone() for f in reference}
    features = _features(vectorize(c, tmp_path / "v.gpkg", NAMES, COLOURS, mmu_ha=0, strip_rows=3).path)
    assert len(features) == len(expected)
    for f in features:
        geometry = f["geometry"]
        assert geometry.IsValid()
        assert geometry.SymDifference(expected[_key(geometry, f["class_id"])]).GetArea() == 0


def test_nodata_is_not_polygonised(tmp_path, rasters):
    classes, _, _, c, _, _ = rasters
    features = _features(vectorize(c, tmp_path / "v.gpkg", NAMES, COLOURS, mmu_ha=0, strip_rows=5).path)
    total = sum(f["geometry"].GetArea() for f in features)
    assert total == pytest.approx((classes != CLASS_NODATA).sum() * PIXEL**2)
    hole = ogr.CreateGeometryFromWkt("POLYGON ((500300.5 5999499.5, 500399.5 5999499.5, 500399.5 5999440.5, "
                                     "500300.5 5999440.5, 500300.5 5999499.5))")  # inside rows 50-56, cols 30-40
    assert not any(f["geometry"].Intersects(hole) for f in features)
    assert {f["class_id"] for f in features} <= {0, 1, 2}


def test_mmu_merges_small_patches_into_their_neighbours(tmp_path, rasters):
    classes, _, _, c, m, g = rasters
    all_regions = _features(vectorize(c, tmp_path / "a.gpkg", NAMES, COLOURS, mmu_ha=0, strip_rows=8).path)
    mmu_ha = 0.2  # 20 pixels
    assert mmu_pixels(mmu_ha, PIXEL**2) == 20
    sieved = vectorize(c, tmp_path / "b.gpkg", NAMES, COLOURS, mmu_ha=mmu_ha, maxprob_path=m, gap_path=g, strip_rows=8)
    features = _features(sieved.path)
    assert sieved.sieve_pixels == 20
    assert any(f["area_ha"] < mmu_ha for f in all_regions)  # the test data has specks
    assert 0 < len(features) < len(all_regions)
    # Sieved patches join a neighbour: only regions cut off by nodata may stay below the MMU, and the
    # valid area is unchanged.
    assert sum(f["area_ha"] for f in features) == pytest.approx(sum(f["area_ha"] for f in all_regions))
    small = [f for f in features if f["area_ha"] < mmu_ha - 1e-9]
    assert not small


def test_the_geopackage_carries_the_class_style_as_its_default(tmp_path, rasters):
    _, _, _, c, _, _ = rasters
    path = vectorize(c, tmp_path / "v.gpkg", NAMES, COLOURS, mmu_ha=0).path
    ds = ogr.Open(str(path))
    styles = ds.GetLayerByName("layer_styles")
    style = next(iter(styles))
    assert style.GetField("f_table_name") == LAYER and style.GetField("useAsDefault") == 1
    assert "categorizedSymbol" in style.GetField("styleQML") and "0,0,255,255" in style.GetField("styleQML")
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_cancel_leaves_no_geopackage(tmp_path, rasters):
    _, _, _, c, _, _ = rasters
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vectorize(c, tmp_path / "v.gpkg", NAMES, COLOURS, mmu_ha=0.2, strip_rows=4, check=check)
    assert not list(tmp_path.glob("v.gpkg*")) and not list(tmp_path.glob(".v.gpkg*"))
