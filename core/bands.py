"""The Sentinel-2 MSI band table: the single source of band ids, resolutions and wavelengths."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """One MSI band: id as written in file names, native resolution, centre wavelength."""

    id: str  # "B02", "B8A" …
    resolution: int  # metres
    wavelength_nm: int
    band_index: int  # position in the product metadata (band_id attribute, 0…12)
    common_name: str  # STAC eo:common_name ("blue", "nir", "swir16" …), as models name their inputs

    @property
    def scale(self) -> int:
        """Size of one native pixel in 10 m pixels (1, 2 or 6)."""
        return self.resolution // 10


BANDS: tuple[Band, ...] = (
    Band("B01", 60, 443, 0, "coastal"),
    Band("B02", 10, 490, 1, "blue"),
    Band("B03", 10, 560, 2, "green"),
    Band("B04", 10, 665, 3, "red"),
    Band("B05", 20, 705, 4, "rededge071"),
    Band("B06", 20, 740, 5, "rededge075"),
    Band("B07", 20, 783, 6, "rededge078"),
    Band("B08", 10, 842, 7, "nir"),
    Band("B8A", 20, 865, 8, "nir08"),
    Band("B09", 60, 945, 9, "nir09"),
    Band("B10", 60, 1375, 10, "cirrus"),
    Band("B11", 20, 1610, 11, "swir16"),
    Band("B12", 20, 2190, 12, "swir22"),
)
BAND_BY_ID: dict[str, Band] = {b.id: b for b in BANDS}
BAND_IDS: tuple[str, ...] = tuple(b.id for b in BANDS)
BAND_BY_COMMON_NAME: dict[str, Band] = {b.common_name: b for b in BANDS}
#: Every band resolution is a divisor of this many 10 m pixels.
RESOLUTION_LCM = 6
#: Width and height of a full Sentinel-2 tile (a 109.8 km MGRS square) at 10 m, its finest
#: resolution: no band file of a tile, or of a crop of one, has more pixels along either axis.
TILE_SIZE_PX = 10980


def band(band_id: str) -> Band:
    """Look a band up by id, accepting "B2"/"b02"/"B8a" spellings."""
    key = normalise_band_id(band_id)
    try:
        return BAND_BY_ID[key]
    except KeyError:
        raise KeyError(f"unknown Sentinel-2 band {band_id!r}; known: {', '.join(BAND_IDS)}") from None


def normalise_band_id(band_id: str) -> str:
    """"b2" → "B02", "B8a" → "B8A"; other strings are upper-cased unchanged."""
    value = band_id.strip().upper()
    if value.startswith("B") and value[1:].isdigit():
        return f"B{int(value[1:]):02d}"
    return value
