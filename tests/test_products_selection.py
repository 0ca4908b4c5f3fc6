"""Choosing products (--products, --vector, --cog, --mmu) through the real engine, and resuming a run
stopped in its post-steps (polygons, COGs, STAC item)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from osgeo import ogr

from doubles import SpectralPatchModel

from s2seg.core import options, poststeps
from s2seg.core.cli import _parser
from s2seg.core.cog import is_cog
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, OutputError
from s2seg.core.journal import journal_path
from s2seg.core.pipeline import segment
from s2seg.core.products import effective_config, select
from s2seg.core.sentinel2 import discover

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore::FutureWarning")]
CHUNK = 96  # 9 chunks on the 240 px tile with 32 px patches


def model():
    return SpectralPatchModel(patch_size=32)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def everything(small_tile, tmp_path_factory):
    """A run with every default product, as the reference."""
    out = tmp_path_factory.mktemp("all")
    return segment(small_tile, out, model=model(), config=EngineConfig(chunk_size=CHUNK))


def test_class_only_writes_the_class_raster_and_the_same_pixels(small_tile, everything, tmp_path):
    result = segment(small_tile, tmp_path, model=model(), config=EngineConfig(chunk_size=CHUNK, products=("class",)))
    assert set(result.products) == {"class"}
    rasters = sorted(p.name for p in tmp_path.glob("*.tif"))
    assert rasters == [f"{result.tile_name}_class.tif"]
    assert np.array_equal(read(result.products["class"]), read(everything.products["class"]))
    assert not list(tmp_path.glob("*.part")) and not journal_path(tmp_path, result.tile_name).exists()
    report = json.loads(result.report.read_text())
    assert list(report["products"]) == ["class", "preview"]
    assert report["config"]["products"] == ["class"]
    assert set(result.outputs) >= {"class.qml", "class.sld"} and "vector" not in result.outputs


def test_products_and_probs_combine_and_vector_can_be_a_product():
    config, selection = effective_config(EngineConfig(products=("gap", "class", "vector"), write_probs=True))
    assert selection.rasters == ("class", "gap", "probs") and selection.vector
    assert config.write_probs and config.vector
    assert select(EngineConfig()).rasters == ("class", "maxprob", "entropy", "gap") and not select(EngineConfig()).vector


@pytest.mark.parametrize("products, message", [(("class", "clouds"), "unknown product 'clouds'"),
                                               (("maxprob",), "products must include class")])
def test_bad_selections_are_refused_before_any_work(small_tile, tmp_path, products, message):
    with pytest.raises(ConfigError, match=message):
        segment(small_tile, tmp_path / "out", model=model(), config=EngineConfig(products=products))
    assert not (tmp_path / "out").exists()


def test_the_output_options_are_shared_by_segment_and_batch():
    argv = ["T", "O", "--products", "class, gap,vector", "--cog", "--mmu", "1.5", "--vector", "--mask", "none"]
    expected = EngineConfig(products=("class", "gap", "vector"), cog=True, mmu=1.5, vector=True)
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("segment", "batch"):
        assert options.engine_config(subparsers.choices[name].parse_args(argv)) == expected, name


def test_vector_and_cog_through_the_engine(small_tile, everything, tmp_path):
    config = EngineConfig(chunk_size=CHUNK, vector=True, cog=True, mmu=0.2)
    result = segment(small_tile, tmp_path, model=model(), config=config)
    for key, path in result.products.items():
        ok, errors = is_cog(path)
        assert ok, (key, errors)
        assert np.array_equal(read(path), read(everything.products[key]), equal_nan=True)
    ds = ogr.Open(str(result.outputs["vector"]))
    layer = ds.GetLayerByName("landcover")
    area = sum(f.GetField("area_ha") for f in layer)
    assert area == pytest.approx(result.valid_pixels * result.pixel_area_m2 / 1e4)
    assert json.loads(result.report.read_text())["outputs"]["vector"] == str(result.outputs["vector"])


def test_a_crash_in_the_post_steps_is_finished_by_a_rerun(small_tile, everything, tmp_path, monkeypatch):
    """The polygons fail once, then the COG copy of the second product: each time the journal stays,
    and the next run only finishes (no chunk computed again)."""
    config = EngineConfig(chunk_size=CHUNK, vector=True, cog=True)
    real_vectorize, real_to_cog = poststeps.vectorize, poststeps.to_cog

    def failing_vectorize(*args, **kwargs):
        raise OutputError("disk full while writing the polygons")

    monkeypatch.setattr(poststeps, "vectorize", failing_vectorize)
    with pytest.raises(OutputError, match="saved"):
        segment(small_tile, tmp_path, model=model(), config=config)
    assert journal_path(tmp_path, everything.tile_name).exists()
    assert not list(tmp_path.glob("*.gpkg"))

    converted = []

    def failing_to_cog(path, *args, **kwargs):
        if converted:
            raise OutputError(f"cannot write {path}")
        converted.append(real_to_cog(path, *args, **kwargs))

    monkeypatch.setattr(poststeps, "vectorize", real_vectorize)
    monkeypatch.setattr(poststeps, "to_cog", failing_to_cog)
    with pytest.raises(OutputError):
        segment(small_tile, tmp_path, model=model(), config=config)
    assert journal_path(tmp_path, everything.tile_name).exists()

    monkeypatch.setattr(poststeps, "to_cog", real_to_cog)
    calls = model()
    result = segment(small_tile, tmp_path, model=calls, config=config)
    assert calls.calls == 0 and result.resumed_chunks == result.n_chunks
    assert not journal_path(tmp_path, result.tile_name).exists() and not list(tmp_path.glob("*.part"))
    for key, path in result.products.items():
        assert is_cog(path)[0], key
        assert np.array_equal(read(path), read(everything.products[key]), equal_nan=True)
    assert result.outputs["vector"].exists()


def test_a_journal_of_other_products_is_not_resumed(small_tile, tmp_path):
    """The chosen rasters are part of the journal's key: a run stopped while writing the class raster
    only is not continued by a run that writes every product (its files lack them)."""
    with pytest.raises(Exception, match="saved"):
        segment(small_tile, tmp_path, model=SpectralPatchModel(patch_size=32, fail_on_call=12),
                config=EngineConfig(chunk_size=CHUNK, products=("class",)))
    assert journal_path(tmp_path, discover(small_tile).name).exists()
    messages = []
    result = segment(small_tile, tmp_path, model=model(), config=EngineConfig(chunk_size=CHUNK), log=messages.append)
    assert result.resumed_chunks == 0 and set(result.products) == {"class", "maxprob", "entropy", "gap"}
    assert any("not resuming" in m and "products" in m for m in messages), messages
