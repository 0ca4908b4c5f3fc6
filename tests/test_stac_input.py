"""STAC items and cloud-optimised GeoTIFFs, served by a local HTTP server on 127.0.0.1 that answers
range requests and counts the bytes it sends: the windowed reader fetches only what it needs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from doubles import SpectralPatchModel
from s2seg.core.config import EngineConfig
from s2seg.core.errors import InputError
from s2seg.core.inputs import discover_input
from s2seg.core.pipeline import segment
from s2seg.core.products import DEFAULT_PRODUCTS
from s2seg.core.sample import ORIGIN, write_sample_tile

from range_server import _server_reset, server  # noqa: F401 - fixtures: the module's range server
from rasters import read_products

SIZE = 960
PRODUCTS = DEFAULT_PRODUCTS
#: Earth Search asset names of the bands SpectralPatchModel reads, and a few others
EARTH_SEARCH = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11"}
SECRET = "sig=Zm9vYmFyc2VjcmV0"


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("safe"), size=SIZE, seed=7, level="L2A", layout="safe")


@pytest.fixture(scope="module")
def cogs(product, server):
    """The product's bands as COGs (256 px blocks, DEFLATE) in the served folder."""
    pytest.importorskip("pystac")
    root = server.root
    for band_id in EARTH_SEARCH.values():
        src = next(product.rglob(f"*_{band_id}_*.tif"))
        rasterio.shutil.copy(src, root / f"{band_id}.tif", driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE",
                             OVERVIEWS="NONE")
    return root


def earth_search_item(base: str, folder: Path, name: str = "item.json", query: str = "", hrefs=None,
                      **properties) -> Path:
    """An Item JSON in Earth Search's layout (asset keys blue, nir08 …; scl and thumbnail too)."""
    assets = {key: {"href": f"{base}/{band_id}.tif{query}", "type": "image/tiff; application=geotiff; "
                    "profile=cloud-optimized", "roles": ["data"]} for key, band_id in EARTH_SEARCH.items()}
    assets["blue-jp2"] = {"href": f"{base}/missing/B02.jp2", "roles": ["data"]}
    assets["thumbnail"] = {"href": f"{base}/thumb.jpg", "roles": ["thumbnail"]}
    assets.update(hrefs or {})
    left, top = ORIGIN
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2B_32UNU_20240612_0_L2A",
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[[9.0, 47.8], [9.1, 47.8], [9.1, 47.9], [9.0, 47.8]]]},
        "bbox": [9.0, 47.8, 9.1, 47.9],
        "properties": {"datetime": "2024-06-12T10:30:31Z", "s2:processing_baseline": "05.10",
                       "earthsearch:boa_offset_applied": False, "s2:product_type": "S2MSI2A", "proj:epsg": 32632,
                       **properties},
        "links": [], "assets": assets,
    }
    path = folder / name
    path.write_text(json.dumps(item))
    return path


def test_an_earth_search_item_gives_the_products_of_the_safe_fetching_only_the_ranges_needed(product, server, cogs,
                                                                                               tmp_path):
    base, root, sent = server.base, server.root, server.sent
    item = earth_search_item(base, tmp_path)
    bandset = discover_input(item)
    assert set(bandset.files) == set(EARTH_SEARCH.values()) and bandset.offsets["B02"] == -1000
    assert bandset.level == "L2A" and bandset.name == "S2B_32UNU_20240612_0_L2A"
    reference = read_products(segment(product, tmp_path / "product", model=SpectralPatchModel()))

    sent.clear()
    log: list[str] = []
    aoi = f"{ORIGIN[0] + 2000},{ORIGIN[1] - 2600},{ORIGIN[0] + 2600},{ORIGIN[1] - 2000}"  # 60² px of 960²
    part = read_products(segment(item, tmp_path / "aoi", model=SpectralPatchModel(), config=EngineConfig(aoi=aoi),
                        log=log.append))
    sizes = {p.name: p.stat().st_size for p in root.glob("*.tif")}
    read_bands = {f"{b}.tif" for b in ("B02", "B04", "B08", "B11")}
    assert set(sent) <= set(sizes) and read_bands <= set(sent)
    fetched = sum(sent.values())
    total = sum(sizes[name] for name in read_bands)
    print(f"\nAOI of 60² px: {fetched} bytes fetched of {total} in the 4 COGs read ({sizes})")
    assert fetched < total / 3  # headers and the blocks under the AOI's chunk only
    for key in PRODUCTS:
        assert part[key].tobytes() == reference[key][200:260, 200:260].tobytes(), key
    assert any("assets blue, red, nir, swir16" in line or "as bands" in line for line in log)

    sent.clear()
    whole = read_products(segment(item, tmp_path / "whole", model=SpectralPatchModel(), config=EngineConfig(chunk_size=240)))
    fetched = sum(sent.values())
    print(f"whole tile: {fetched} bytes fetched of {total}")
    assert fetched < 1.3 * total + 200_000  # each block about once: no whole-file downloads on top
    for key in PRODUCTS:
        assert whole[key].tobytes() == reference[key].tobytes(), key


def test_the_offset_follows_the_items_properties(server, cogs, tmp_path):
    base = server.base
    applied = discover_input(earth_search_item(base, tmp_path, "a.json", **{"earthsearch:boa_offset_applied": True}))
    old = discover_input(earth_search_item(base, tmp_path, "b.json", **{"s2:processing_baseline": "03.01"}))
    assert applied.offsets == {} and old.offsets == {}


def test_a_403_names_the_asset_and_url_without_the_signature(server, cogs, tmp_path):
    base = server.base
    item = earth_search_item(base, tmp_path, query=f"?st=2024-06-12&se=2024-06-13&{SECRET}",
                             hrefs={"blue": {"href": f"{base}/forbidden/B02.tif?st=2024&{SECRET}", "roles": ["data"]}})
    with pytest.raises(InputError) as caught:
        discover_input(item)
    message = str(caught.value)
    assert "asset 'blue' of STAC item S2B_32UNU_20240612_0_L2A" in message
    assert f"{base}/forbidden/B02.tif?…" in message and "HTTP 403: access denied" in message
    assert "Zm9vYmFy" not in message and "sig=" not in message


def test_signed_urls_are_read_and_kept_out_of_the_journal(server, cogs, tmp_path):
    base = server.base
    item = earth_search_item(base, tmp_path, query=f"?st=2024-06-12&{SECRET}")
    out = tmp_path / "out"
    aoi = f"{ORIGIN[0]},{ORIGIN[1] - 600},{ORIGIN[0] + 600},{ORIGIN[1]}"
    segment(item, out, model=SpectralPatchModel(), config=EngineConfig(aoi=aoi))
    from s2seg.core.journal import run_fields
    from s2seg.core.models.card import ModelCard  # noqa: F401 - the card of the test double

    fields = json.dumps(run_fields(discover_input(item), SpectralPatchModel().card, chunk_size=240, write_probs=False,
                                   compress="ZSTD", block=256), ensure_ascii=False)
    assert "Zm9vYmFy" not in fields, fields[max(0, fields.find("Zm9vYmFy") - 300):fields.find("Zm9vYmFy") + 50]
    assert f"{base}/B02.tif?…" in fields
    for path in out.iterdir():
        if path.is_file() and path.suffix in (".json", ".html", ".xml"):
            assert "Zm9vYmFy" not in path.read_text(errors="replace"), path


def test_an_unreachable_host_names_the_asset(server, cogs, tmp_path):
    base = server.base
    item = earth_search_item(base, tmp_path, hrefs={"red": {"href": "http://127.0.0.1:9/B04.tif", "roles": ["data"]}})
    with pytest.raises(InputError, match=r"cannot read asset 'red' of STAC item .* \(http://127.0.0.1:9/B04.tif\): "
                                         r"the host cannot be reached"):
        discover_input(item)


def test_an_item_url_is_read_over_http(server, cogs, tmp_path):
    base, root = server.base, server.root
    earth_search_item(base, root, "served_item.json")
    bandset = discover_input(f"{base}/served_item.json")
    assert bandset.files["B02"].path.startswith("/vsicurl?")
    with pytest.raises(InputError, match=r"cannot read STAC item http://127.0.0.1:\d+/nothing.json"):
        discover_input(f"{base}/nothing.json")


def test_without_pystac_an_item_is_refused_naming_the_package(tmp_path, monkeypatch):
    import sys

    item = earth_search_item("http://127.0.0.1:9", tmp_path)
    monkeypatch.setitem(sys.modules, "pystac", None)  # as if not installed
    with pytest.raises(InputError, match=r"reading the STAC item .*item.json needs the pystac package "
                                         r"\(pip install pystac==1.15.2\)"):
        discover_input(item)


def test_a_planetary_computer_item_with_band_keys_and_signed_hrefs(server, cogs, tmp_path):
    base = server.base
    item = earth_search_item(base, tmp_path, hrefs={})
    content = json.loads(item.read_text())
    content["assets"] = {band_id: {"href": f"{base}/{band_id}.tif?st=2024&{SECRET}", "roles": ["data"]}
                         for band_id in ("B02", "B03", "B04", "B08", "B11")}
    content["assets"]["SCL"] = {"href": f"{base}/missing/SCL.tif", "roles": ["data"]}
    content["properties"] = {"datetime": "2024-06-12T10:30:31Z", "s2:processing_baseline": "05.10",
                             "s2:product_type": "S2MSI2A"}
    item.write_text(json.dumps(content))
    bandset = discover_input(item)
    assert sorted(bandset.files) == ["B02", "B03", "B04", "B08", "B11"] and bandset.offsets["B11"] == -1000
    assert SECRET in bandset.files["B02"].path.replace("%3D", "=")  # the signed URL is what GDAL reads
    assert all("Zm9vYmFy" not in note for note in bandset.notes)


def test_a_url_that_expires_during_the_run_names_the_band_without_the_signature(server, cogs, tmp_path):
    base = server.base
    item = earth_search_item(base, tmp_path, "expiring.json", query=f"?st=2024-06-12&{SECRET}")
    discover_input(item)  # the headers are read: the item is fine until now
    server.expire_after["B08.tif"] = 1  # the first block read is still answered, the next ones get 403
    with pytest.raises(InputError) as caught:
        segment(item, tmp_path / "out", model=SpectralPatchModel(),
                config=EngineConfig(chunk_size=240, aoi=f"{ORIGIN[0] + 3000},{ORIGIN[1] - 5400},{ORIGIN[0] + 5400},"
                                                         f"{ORIGIN[1] - 3000}"))
    message = str(caught.value)
    assert re.search(r"cannot (read band B08 from|open band file) /vsicurl/http://127.0.0.1:\d+/B08.tif\?…", message), message
    assert "HTTP 403: access denied (a signed URL may have expired" in message, message
    assert "Zm9vYmFy" not in message
