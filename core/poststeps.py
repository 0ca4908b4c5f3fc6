"""The outputs made from the finished rasters (issue 21): styles, polygons, COGs, the STAC item.

:func:`derived_outputs` runs once the raster products are committed (renamed), and
:func:`write_stac` once the preview exists, both before the run's report: until the report is
written the journal stays, so a run stopped here (error, cancel, crash) is finished by a re-run,
which commits the rasters again and redoes these steps. Each file is written under a temporary
name and renamed when complete, so none looks finished before it is.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import __version__
from .cog import to_cog
from .config import EngineConfig
from .models.card import ModelCard
from .products import Selection, stac_path, vector_path
from .sentinel2 import BandSet
from .stac_item import available, build_item, write_item
from .styles import write_style_sidecars
from .vectorize import vectorize

Report = Callable[[float, str], None]


def derived_outputs(products: dict[str, Path], selection: Selection, config: EngineConfig, bandset: BandSet,
                    card: ModelCard, output_dir: Path, check: Callable[[], None], report: Report,
                    log: Callable[[str], None], timings: dict[str, float] | None = None) -> dict[str, Path]:
    """Style files beside every raster, the polygons (when selected), then the COG copies (with
    ``config.cog``); returns output key → file (``"vector"``, ``"class.qml"``, …). The seconds each
    step took go into ``timings`` (``styles``, ``vector``, ``cog``)."""
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    outputs: dict[str, Path] = dict(write_style_sidecars(products, card.class_names, card.class_colours))
    timings["styles"] = time.perf_counter() - t0
    if selection.vector:
        t0 = time.perf_counter()
        check()
        report(0.975, "writing polygons")
        summary = vectorize(products["class"], vector_path(output_dir, bandset.name), card.class_names,
                            card.class_colours, mmu_ha=config.mmu, maxprob_path=products.get("maxprob"),
                            gap_path=products.get("gap"), check=check)
        log(f"polygons: {summary.polygons} in {summary.path.name}"
            + (f" (patches under {summary.sieve_pixels} px merged into a neighbour)" if summary.sieve_pixels else ""))
        outputs["vector"] = summary.path
        timings["vector"] = time.perf_counter() - t0
    if config.cog:
        t0 = time.perf_counter()
        report(0.98, "writing cloud-optimised GeoTIFFs")
        for key, path in products.items():
            to_cog(path, config.compress, categorical=key == "class", check=check)
        timings["cog"] = time.perf_counter() - t0
    return outputs


def write_stac(products: dict[str, Path], outputs: dict[str, Path], preview: Path, config: EngineConfig,
               bandset: BandSet, card: ModelCard, output_dir: Path, log: Callable[[str], None]) -> Path | None:
    """``<tile>_stac.json`` describing the products; None (with a note) where pystac is not installed."""
    if not available():
        log("note: no STAC item written: the Python package pystac is not installed")
        return None
    from .journal import digest

    # The card's own revision when it states one, else a digest of the card (it names the weights file)
    revision = str(card.extra.get("revision") or "") or f"card-sha256:{digest(card.to_dict())[:16]}"
    others = {key: path for key, path in outputs.items() if key != "vector"} | {"preview": preview}
    item = build_item(tile_name=bandset.name, source=str(bandset.source), crs=bandset.crs, transform=bandset.transform,
                      width=bandset.width, height=bandset.height, rasters=products, vector=outputs.get("vector"),
                      others=others, cog=config.cog, class_names=list(card.class_names),
                      class_colours=list(card.class_colours),
                      model={"name": card.name, "revision": revision, "source": card.source}, s2seg_version=__version__)
    return write_item(item, stac_path(output_dir, bandset.name))
