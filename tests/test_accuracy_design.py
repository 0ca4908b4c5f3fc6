"""Sample design drawn from real products of a segmented sample tile (240², nodata corner)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from osgeo import ogr

from s2seg.core.accuracy.config import REFERENCE_FIELD, SAMPLE_FIELDS, SAMPLE_LAYER, STRATA_LAYER, DesignConfig
from s2seg.core.accuracy.design import draw_design, find_products, sample_design
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, InputError, OutputsExist
from s2seg.core.pipeline import segment
from s2seg.core.sample import write_sample_tile


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    root = tmp_path_factory.mktemp("design")
    tile = write_sample_tile(root / "tile", size=240, seed=1, nodata_corner=True)
    result = segment(tile, root / "out", config=EngineConfig())
    return find_products(result.output_dir)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_strata_counts_and_units_follow_the_rasters(products):
    config = DesignConfig(total=300, minimum=10, confidence="gap", threshold=0.3, seed=4, block_rows=7)
    design = draw_design(products, config)
    classes, gap = read(products.paths["class"]), read(products.paths["gap"])
    valid = classes != 255
    assert valid.sum() < classes.size  # the nodata corner exists, and is never drawn
    for s in design.strata:
        in_stratum = valid & (classes == s.map_class) & ((gap < 0.3) == (s.confidence == "uncertain"))
        assert s.pixels == in_stratum.sum()
        picked = design.stratum == s.code
        assert picked.sum() == s.sample and in_stratum[design.rows[picked], design.cols[picked]].all()
    assert sum(s.sample for s in design.strata) == 300 and min(s.sample for s in design.strata) >= min(
        10, min(s.pixels for s in design.strata))
    assert len(set(zip(design.rows.tolist(), design.cols.tolist()))) == len(design.rows)  # without replacement
    assert (classes[design.rows, design.cols] == design.map_class).all()
    np.testing.assert_array_equal(gap[design.rows, design.cols], design.gap)


def test_reproducible_and_independent_of_the_strip_height(products):
    a = draw_design(products, DesignConfig(total=200, minimum=5, seed=9, block_rows=240))
    b = draw_design(products, DesignConfig(total=200, minimum=5, seed=9, block_rows=13))
    c = draw_design(products, DesignConfig(total=200, minimum=5, seed=10))
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert not np.array_equal(np.sort(a.rows * 240 + a.cols), np.sort(c.rows * 240 + c.cols))


def test_size_from_target_se(products):
    loose = draw_design(products, DesignConfig(target_se=0.05, minimum=0, seed=1))
    tight = draw_design(products, DesignConfig(target_se=0.01, minimum=0, seed=1))
    assert len(tight.rows) > len(loose.rows)
    assert any("eq. 13" in m for m in tight.messages)


def test_geopackage_points_and_strata(products, tmp_path):
    out = tmp_path / "sample.gpkg"
    design = sample_design(products.paths["class"].parent, out, DesignConfig(total=120, minimum=5, seed=2,
                                                                               confidence="entropy", threshold=1.0))
    ds = ogr.Open(str(out))
    points = ds.GetLayerByName(SAMPLE_LAYER)
    assert points.GetFeatureCount() == 120 and points.GetSpatialRef().GetAuthorityCode(None) == "32632"
    defn = points.GetLayerDefn()
    assert set(SAMPLE_FIELDS) <= {defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())}
    t = products.transform
    for feature in points:
        geom = feature.GetGeometryRef()
        col, row = feature.GetField("col"), feature.GetField("row")
        assert geom.GetX() == pytest.approx(t[0] + (col + 0.5) * t[1])
        assert geom.GetY() == pytest.approx(t[3] + (row + 0.5) * t[5])
        assert not feature.IsFieldSetAndNotNull(REFERENCE_FIELD)
        assert feature.GetField("map_class_name") == products.class_names[feature.GetField("map_class")]
    strata = ds.GetLayerByName(STRATA_LAYER)
    assert strata.GetFeatureCount() == len(design.strata)
    assert sum(f.GetField("area") for f in strata) == pytest.approx(
        (read(products.paths["class"]) != 255).sum() * 100.0)
    styles = [f for f in ds.GetLayerByName("layer_styles")]  # QGIS's default style of the points
    assert [(f.GetField("f_table_name"), f.GetField("useAsDefault")) for f in styles] == [(SAMPLE_LAYER, 1)]
    assert f'&quot;{REFERENCE_FIELD}&quot; IS NULL' in styles[0].GetField("styleQML")
    ds = None
    with pytest.raises(OutputsExist, match="sample.gpkg exists"):
        sample_design(products.paths["class"].parent, out, DesignConfig(total=10))
    assert not list(tmp_path.glob("*.tmp"))


def test_errors_name_the_problem(products, tmp_path):
    with pytest.raises(InputError, match="no class raster"):
        find_products(tmp_path)
    with pytest.raises(ConfigError, match="confidence measure 'margin'"):
        DesignConfig(confidence="margin")


def test_memory_is_bounded_by_the_strip_not_the_raster(products):
    """The rasters are read strip by strip: the peak of numpy memory follows the strip height."""
    import tracemalloc

    def peak(block_rows: int) -> int:
        config = DesignConfig(total=200, minimum=5, confidence="entropy", threshold=1.0, block_rows=block_rows)
        tracemalloc.start()
        try:
            draw_design(products, config)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(8)  # first use: imports and caches
    strips, whole = peak(8), peak(products.height)
    assert strips * 4 < whole and strips < products.width * products.height * 4  # < one float raster


def test_target_se_of_users_accuracy_raises_the_strata_that_need_it(products):
    base = draw_design(products, DesignConfig(total=100, minimum=2, seed=0))
    users = draw_design(products, DesignConfig(total=100, minimum=2, seed=0, target_se_users=0.05))
    need = 0.9 * 0.1 / 0.05 ** 2 + 1  # SE(U)² = U(1 − U)/(n − 1) with the expected U = 0.9
    for a, b in zip(base.strata, users.strata):
        assert b.sample == max(a.sample, min(a.pixels, int(np.ceil(need))))
    assert any("user's accuracy" in m for m in users.messages)
