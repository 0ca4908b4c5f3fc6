"""The STAC item of a run (core/stac_item.py), validated offline.

What is validated, exactly: the whole item against the STAC 1.1.0 core item schema and the GeoJSON
schemas that pystac ships (``pystac.validation.local_validator``), with jsonschema's Draft 7
validator and no network. The four extension schemas (proj, raster, classification, file) are not
shipped and cannot be fetched here, so their fields are checked against the requirements of those
schemas written out below (types, patterns, required fields), and against the files themselves.
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest
from osgeo import gdal

pystac = pytest.importorskip("pystac")

from doubles import SpectralPatchModel  # noqa: E402

from s2seg.core.config import EngineConfig  # noqa: E402
from s2seg.core.pipeline import segment  # noqa: E402
from s2seg.core.stac_item import class_slug, sensing_time  # noqa: E402

pytestmark = [pytest.mark.timeout(180), pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def run(small_tile, tmp_path_factory):
    out = tmp_path_factory.mktemp("stac")
    result = segment(small_tile, out, model=SpectralPatchModel(patch_size=32),
                     config=EngineConfig(chunk_size=96, vector=True, cog=True, products=("class", "gap", "entropy")))
    return result, json.loads(result.outputs["stac"].read_text())


def core_errors(item: dict) -> list[str]:
    """Errors of ``item`` against pystac's bundled STAC core item schema (offline)."""
    import jsonschema
    from pystac.validation.local_validator import get_local_schema_cache

    cache = get_local_schema_cache()
    uri = f"https://schemas.stacspec.org/v{item['stac_version']}/item-spec/json-schema/item.json"
    schema = cache[uri]
    resolver = jsonschema.RefResolver(base_uri=uri, referrer=schema, store=cache)
    validator = jsonschema.Draft7Validator(schema, resolver=resolver)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(item)]


def test_the_item_is_valid_against_the_core_schema(run):
    _, item = run
    assert core_errors(item) == []
    broken = json.loads(json.dumps(item))
    del broken["properties"]["datetime"]
    broken["bbox"] = [1, 2]
    assert core_errors(broken)  # the check can fail


def test_footprint_time_and_projection(run):
    result, item = run
    ds = gdal.Open(str(result.products["class"]))
    gt = ds.GetGeoTransform()
    props = item["properties"]
    assert item["id"] == result.tile_name
    assert props["datetime"] == "2024-06-12T10:30:31Z"  # sensing time of the sample product
    assert props["proj:code"] == "EPSG:32632"
    assert props["proj:shape"] == [ds.RasterYSize, ds.RasterXSize]
    assert props["proj:transform"] == [gt[1], gt[2], gt[0], gt[4], gt[5], gt[3]]
    west, south, east, north = item["bbox"]
    assert 10.3 < west < east < 10.4 and 47.8 < south < north < 47.9  # T32UNU sample corner, in WGS 84
    ring = item["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert all(west <= x <= east and south <= y <= north for x, y in ring)
    links = {link["rel"]: link for link in item["links"]}
    assert links["derived_from"]["href"].endswith(".SAFE")
    assert props["s2seg:model"] == "patch-test" and props["s2seg:model_revision"]


def test_extension_fields_meet_their_schemas(run):
    result, item = run
    uris = set(item["stac_extensions"])
    assert {"https://stac-extensions.github.io/projection/v2.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json"} <= uris
    assets = item["assets"]
    assert set(assets) >= {"class", "gap", "entropy", "vector", "preview", "class_qml", "class_sld"}
    assert "maxprob" not in assets  # not selected, not described
    for key in ("class", "gap", "entropy"):
        asset = assets[key]
        assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
        (band,) = asset["raster:bands"]
        assert band["data_type"] in ("uint8", "float32")
        assert band["nodata"] == (255 if key == "class" else "nan")
    assert assets["entropy"]["raster:bands"][0]["unit"] == "bit"
    classes = assets["class"]["classification:classes"]
    card = result.card
    assert [c["value"] for c in classes] == [*range(card.num_classes), 255]
    for c, name, colour in zip(classes, card.class_names, card.class_colours):
        assert re.fullmatch(r"[0-9A-Za-z_-]+", c["name"]) and c["title"] == name  # schema: name pattern
        assert re.fullmatch(r"[0-9A-Fa-f]{6}", c["color_hint"]) and c["color_hint"] == colour[1:].upper()
    assert classes[-1]["nodata"] is True
    assert assets["vector"]["type"] == "application/geopackage+sqlite3"
    for key, asset in assets.items():  # file: size and a SHA-256 multihash of the file as it is
        path = result.output_dir / asset["href"]
        assert asset["file:size"] == path.stat().st_size, key
        assert asset["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest(), key


def test_names_and_times():
    assert class_slug("Beaches, dunes, sands") == "beaches_dunes_sands"
    assert class_slug("Agro-forestry areas") == "agro-forestry_areas"
    assert sensing_time("S2B_MSIL2A_20240612T103031_N0510_R108_T32UNU_20240612T142331.SAFE").hour == 10
    assert sensing_time("no time here") is None
