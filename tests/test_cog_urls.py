"""Per-band COG URLs as a tile (no STAC item), served by the local range server
(:mod:`range_server`): bands by file name, only the byte ranges needed fetched, errors naming the URL."""
from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from doubles import SpectralPatchModel
from range_server import _server_reset, server  # noqa: F401 - fixtures: the module's range server
from rasters import read_products
from s2seg.core import cli
from s2seg.core.config import EngineConfig
from s2seg.core.errors import ConfigError, InputError
from s2seg.core.inputs import discover_input
from s2seg.core.pipeline import segment
from s2seg.core.products import DEFAULT_PRODUCTS
from s2seg.core.sample import ORIGIN, write_sample_tile

SIZE = 480
#: Earth Search's COG folder of a scene: the level is in its name, the bands are B02.tif …
FOLDER = "S2B_32UNU_20240612_0_L2A"
BANDS = ("B02", "B03", "B04", "B08", "B11")
SECRET = "sig=Zm9vYmFyc2VjcmV0"
#: the product's baseline (05.10) offset, given as an option: band URLs carry no metadata
OFFSET = -0.1


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    return write_sample_tile(tmp_path_factory.mktemp("safe"), size=SIZE, seed=3, level="L2A", layout="safe")


@pytest.fixture(scope="module")
def reference(product, tmp_path_factory):
    """The products of the .SAFE itself (its metadata offset applied)."""
    return read_products(segment(product, tmp_path_factory.mktemp("reference"), model=SpectralPatchModel()))


@pytest.fixture(scope="module")
def urls(product, server) -> list[str]:
    """The product's bands as COGs (128 px blocks) in ``FOLDER`` of the served folder."""
    folder = server.root / FOLDER
    folder.mkdir()
    for band_id in BANDS:
        src = next(product.rglob(f"*_{band_id}_*.tif"))
        rasterio.shutil.copy(src, folder / f"{band_id}.tif", driver="COG", BLOCKSIZE=128, COMPRESS="DEFLATE",
                             OVERVIEWS="NONE")
    return [f"{server.base}/{FOLDER}/{band_id}.tif" for band_id in BANDS]


def test_a_list_of_band_urls_with_an_aoi_fetches_only_the_ranges_needed_and_gives_the_products_of_the_safe(
        server, urls, reference, tmp_path):
    listed = tmp_path / "bands.txt"
    listed.write_text("# Earth Search COGs\n" + "\n".join(f"{u}?st=2024&{SECRET}" for u in urls) + "\n\n")
    bandset = discover_input(listed, offset=OFFSET)
    assert sorted(bandset.files) == sorted(BANDS) and bandset.level == "L2A" and bandset.name == FOLDER
    assert bandset.offsets["B02"] == -1000 and all(f.path.startswith("/vsicurl?") for f in bandset.files.values())

    server.sent.clear()
    log: list[str] = []
    aoi = f"{ORIGIN[0] + 1000},{ORIGIN[1] - 1600},{ORIGIN[0] + 1600},{ORIGIN[1] - 1000}"  # 60² px of 480²
    part = read_products(segment(listed, tmp_path / "aoi", model=SpectralPatchModel(),
                                 config=EngineConfig(aoi=aoi, offset=OFFSET), log=log.append))
    read = {f"{FOLDER}/{b}.tif" for b in SpectralPatchModel().card.bands}
    sizes = {f"{FOLDER}/{p.name}": p.stat().st_size for p in (server.root / FOLDER).glob("*.tif")}
    fetched, total = sum(server.sent.values()), sum(sizes[name] for name in read)
    print(f"\nband URLs, AOI of 60² px: {fetched} bytes fetched of {total} in the {len(read)} COGs read")
    assert read <= set(server.sent) <= set(sizes)
    assert fetched < total / 2  # headers and the blocks under the AOI's chunk only
    for key in DEFAULT_PRODUCTS:
        assert part[key].tobytes() == reference[key][100:160, 100:160].tobytes(), key
    assert any("band URLs: B02 ← B02.tif" in line and "no processing-baseline offset" in line for line in log), log
    assert all("Zm9vYmFy" not in line for line in log)


def test_several_urls_on_the_command_line_are_one_tile(urls, reference, tmp_path, capsys):
    aoi = f"{ORIGIN[0]},{ORIGIN[1] - 600},{ORIGIN[0] + 600},{ORIGIN[1]}"
    out = tmp_path / "out"
    args = cli._parser().parse_args(["segment", *urls, str(out), "--aoi", aoi, "--offset", str(OFFSET)])
    assert args.tile == urls and args.output == out
    result = segment(urls, out, model=SpectralPatchModel(), config=EngineConfig(aoi=aoi, offset=OFFSET))
    part = read_products(result)
    assert result.tile_name == FOLDER  # the folder name (no tile stem in B02.tif)
    for key in DEFAULT_PRODUCTS:
        assert part[key].tobytes() == reference[key][:60, :60].tobytes(), key


def test_a_403_or_an_unreachable_host_names_the_url_without_the_signature(server, urls, tmp_path):
    forbidden = f"{server.base}/forbidden/B04.tif?st=2024&{SECRET}"
    with pytest.raises(InputError) as caught:
        discover_input([urls[0], forbidden])
    message = str(caught.value)
    assert f"cannot read band URL {server.base}/forbidden/B04.tif?…: HTTP 403: access denied" in message, message
    assert "Zm9vYmFy" not in message
    with pytest.raises(InputError, match=r"cannot read band URL http://127.0.0.1:9/B04.tif: the host cannot be reached"):
        discover_input([urls[0], "http://127.0.0.1:9/B04.tif"])


def test_a_url_that_expires_during_the_run_says_http_403(server, urls, tmp_path):
    signed = [f"{u}?se=2024&{SECRET}" for u in urls]
    discover_input(signed)  # headers read: fine until now
    server.expire_after[f"{FOLDER}/B08.tif"] = 0  # refused from now on, after the headers were read
    with pytest.raises(InputError) as caught:
        segment(signed, tmp_path / "out", model=SpectralPatchModel(),
                config=EngineConfig(chunk_size=240, aoi=f"{ORIGIN[0] + 2400},{ORIGIN[1] - 4800},{ORIGIN[0] + 4800},"
                                                         f"{ORIGIN[1] - 2400}"))
    message = str(caught.value)
    assert re.search(rf"band B08 .*/vsicurl/{re.escape(server.base)}/{FOLDER}/B08.tif\?….*: HTTP 403: access denied",
                     message), message
    assert "Zm9vYmFy" not in message


def test_urls_that_name_no_band_twice_a_band_or_no_10m_band_are_refused(server, urls, tmp_path):
    with pytest.raises(InputError, match=r"cannot tell which band the URL .*/scene.tif\?… holds"):
        discover_input([urls[0], f"{server.base}/scene.tif?{SECRET}"])
    with pytest.raises(InputError, match=r"band B02 is given twice: .*/B02.tif and .*/T32UNU_20240612T103031_B02_10m.tif"):
        discover_input([urls[0], f"{server.base}/T32UNU_20240612T103031_B02_10m.tif"])
    with pytest.raises(InputError, match=r"hold no 10 m band \(B02, B03, B04 or B08\) among B11"):
        discover_input(urls[4])
    with pytest.raises(ConfigError, match="several tile values must all be band URLs"):
        discover_input([urls[0], str(tmp_path)])
    with pytest.raises(ConfigError, match="a band list applies to a stacked raster, not to band URLs"):
        discover_input(urls, bands="B02,B03")


def test_a_list_file_with_a_line_that_is_not_a_url_or_no_url_is_refused_naming_the_line(tmp_path, urls):
    listed = tmp_path / "bands.txt"
    listed.write_text(f"{urls[0]}\n\n/data/B03.tif\n")
    with pytest.raises(InputError, match=rf"line 3 of the list of band URLs {re.escape(str(listed))} is not an "
                                         r"http\(s\) URL: '/data/B03.tif'"):
        discover_input(listed)
    listed.write_text("# nothing yet\n")
    with pytest.raises(InputError, match="lists no URL"):
        discover_input(listed)


def test_band_identification_and_level_follow_the_file_names(server, urls):
    from s2seg.core.cog_urls import _level, band_urls

    assert band_urls(f"{server.base}/x/B02.tif?{SECRET}") == [f"{server.base}/x/B02.tif?{SECRET}"]
    assert band_urls(f"{server.base}/item.json") is None  # a STAC item's URL
    assert _level(["/S2A_MSIL1C_20240612T103031_N0510_R108_T32UNU/B02.tif"]) == "L1C"
    assert _level(["/sentinel-s2-l2a-cogs/32/U/NU/2024/6/x/B02.tif"]) == "L2A"
    assert _level(["/cogs/T32UNU_20240612T103031_B02_10m.tif"]) is None
    assert np.array_equal(sorted(discover_input(urls[:4]).files), sorted(BANDS[:4]))
