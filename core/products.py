"""Which products a run writes: the table of product names, and the user's selection checked against it.

:data:`RASTER_PRODUCTS` are written chunk by chunk (:mod:`.writer` holds their data types and
nodata, :class:`.writer.ProductWriter` the specs); :data:`DERIVED_PRODUCTS` are made from the
finished rasters (:mod:`.poststeps`). A product added to these tables is selectable everywhere
(``--products``, QGIS). The class raster is always needed: the preview, the statistics, the
polygons and a resumed run are all built from it.

Light on purpose (the command line's parser imports it): no numpy, torch or GDAL.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import EngineConfig
from .errors import ConfigError

#: Every raster product, in file order (the one table: selection, paths and writer specs follow it).
RASTER_PRODUCTS = ("class", "maxprob", "entropy", "gap", "probs", "mask")
#: Written when no selection is given (``probs`` only on request).
DEFAULT_PRODUCTS = ("class", "maxprob", "entropy", "gap")
VECTOR = "vector"
#: The cloud/shadow/snow mask (:mod:`.mask`): written whenever the run masks (``EngineConfig.mask``).
MASK = "mask"
#: Products made from the finished rasters (not written chunk by chunk).
DERIVED_PRODUCTS = (VECTOR,)


@dataclass(frozen=True)
class Selection:
    """The products of one run: raster keys in file order, and whether polygons are written."""

    rasters: tuple[str, ...]
    vector: bool

    @property
    def probs(self) -> bool:
        return "probs" in self.rasters


def all_products() -> tuple[str, ...]:
    """Every selectable product name, rasters first."""
    return (*RASTER_PRODUCTS, *DERIVED_PRODUCTS)


def parse_products(text: str) -> tuple[str, ...]:
    """``"class,gap, vector"`` → ``("class", "gap", "vector")`` (names are checked by :func:`select`)."""
    return tuple(name.strip().lower() for name in text.split(",") if name.strip())


def select(config: EngineConfig) -> Selection:
    """The products ``config`` asks for: ``config.products`` (empty: the default rasters), plus
    probabilities with ``write_probs`` and polygons with ``vector``. Raises :class:`ConfigError`
    naming an unknown product, or when the class raster is left out."""
    requested = config.products or DEFAULT_PRODUCTS
    unknown = [name for name in requested if name not in all_products()]
    if unknown:
        raise ConfigError(f"unknown product {unknown[0]!r}: choose among {', '.join(all_products())}")
    if "class" not in requested:
        raise ConfigError(f"products must include class (the preview, statistics, polygons and resume are built "
                          f"from it), got {', '.join(requested)}")
    if MASK in requested and config.mask == "none":
        raise ConfigError("product mask needs a cloud/shadow/snow mask source: choose a mask other than none")
    wanted = set(requested) | ({"probs"} if config.write_probs else set()) | ({MASK} if config.mask != "none" else set())
    return Selection(rasters=tuple(key for key in RASTER_PRODUCTS if key in wanted),
                     vector=config.vector or VECTOR in wanted)


def effective_config(config: EngineConfig) -> tuple[EngineConfig, Selection]:
    """``config`` with ``write_probs`` and ``vector`` agreeing with its selection, and the selection."""
    selection = select(config)
    return config.with_(write_probs=selection.probs, vector=selection.vector), selection


def vector_path(output_dir: Path, tile_name: str) -> Path:
    """The polygons of a tile: ``<tile>_landcover.gpkg``."""
    return Path(output_dir) / f"{tile_name}_landcover.gpkg"


def stac_path(output_dir: Path, tile_name: str) -> Path:
    """The STAC item of a tile: ``<tile>_stac.json``."""
    return Path(output_dir) / f"{tile_name}_stac.json"
