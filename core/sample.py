"""Synthetic but physically plausible Sentinel-2 tiles, for demos, tests and benchmarks.

The scene is a pure function of (size, seed, position): smooth value-noise fields
choose water / forest / urban zones, a rotated grid of parcels carries crops and
bare soil, and a cloud field (with its shadow) lies on top. Every field is
evaluated at the pixel centres of the grid being written, block by block,
so a 10980² tile streams in bounded memory and a pixel never depends on the block
size. Files are named and laid out like real ESA products (SAFE, zipped SAFE or a
flat folder; GeoTIFF or lossless JPEG2000) with baseline 05.10 metadata, so the
reader's discovery code sees them as the real thing.

No qgis import here: this is engine code.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import Affine
from rasterio.windows import Window

from .bands import BANDS, Band
from .errors import ConfigError, OutputError

#: Class codes of :func:`truth_window`; 255 marks nodata.
CLASSES: tuple[str, ...] = ("water", "forest", "crops", "urban", "bare soil", "cloud")
WATER, FOREST, CROPS, URBAN, BARE, CLOUD = range(6)
NODATA_CLASS = 255

LEVELS = ("L2A", "L1C")
LAYOUTS = ("safe", "zip", "flat")
FORMATS = ("gtiff", "jp2")

# Product identity: one real-looking tile (T32UNU, Upper Rhine) for every sample.
TILE_ID = "T32UNU"
SENSING = "20240612T103031"
EPSG = 32632
ORIGIN = (600000.0, 5300040.0)  # upper-left corner shared by every resolution
BASELINE = "05.10"
DN_OFFSET = 1000  # baseline >= 04.00: DN = reflectance * 10000 + 1000
QUANTIFICATION = 10000
BLOCK = 256  # GeoTIFF block size; computed windows are whole blocks, so each is written once

# L2A surface reflectance per class (rows: CLASSES order) and band_index 0..12
# (B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12). Shapes follow textbook
# spectra: water dark beyond red, vegetation red edge up to an NIR plateau,
# soil/urban rising into SWIR, cloud bright and flat.
_SPECTRA = np.array([
    [.045, .040, .035, .020, .015, .010, .008, .006, .005, .004, .001, .003, .002],  # water
    [.020, .025, .045, .025, .070, .200, .260, .290, .300, .300, .002, .150, .070],  # forest
    [.030, .035, .075, .035, .110, .300, .380, .420, .430, .420, .003, .230, .110],  # crops
    [.080, .090, .110, .130, .145, .160, .170, .185, .190, .190, .004, .230, .200],  # urban
    [.070, .085, .125, .180, .210, .235, .255, .275, .285, .295, .005, .350, .290],  # bare soil
    [.500, .510, .510, .520, .520, .530, .530, .540, .540, .480, .090, .420, .300],  # cloud
], dtype=np.float32)
# Relative within-class texture (urban is the most heterogeneous).
_TEXTURE = np.array([0.03, 0.08, 0.05, 0.25, 0.06, 0.0], dtype=np.float32)
# L1C top of atmosphere = surface * transmittance + path radiance (haze, strongest in blue);
# B09 sits in a water-vapour and B10 in a strong absorption band, so little surface shows.
_TRANSMITTANCE = np.array([.80, .84, .88, .92, .93, .94, .95, .96, .96, .35, .05, .95, .92], dtype=np.float32)
_HAZE = np.array([.100, .075, .045, .025, .020, .016, .013, .010, .010, .006, .0005, .003, .001], dtype=np.float32)

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------- scene model

def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place: a cheap hash that makes position-keyed noise."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def _hash2(rows: np.ndarray, cols: np.ndarray, salt: int, seed: int) -> np.ndarray:
    """uint64 hash of every (row, col) pair of two integer vectors (outer product)."""
    key = np.uint64((seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) % 2**64)
    r = _mix(rows.astype(np.int64).view(np.uint64) * np.uint64(0xA24BAED4963EE407) + key)
    c = _mix(cols.astype(np.int64).view(np.uint64) * np.uint64(0x9FB21C651E98DF25))
    return _mix(r[:, None] ^ c[None, :])


def _unit(h: np.ndarray) -> np.ndarray:
    """Top 24 bits of a hash as float32 in [0, 1)."""
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def _interp(ys: np.ndarray, xs: np.ndarray, spacing: float,
            nodes: Callable[[np.ndarray, np.ndarray], np.ndarray], smooth: bool) -> np.ndarray:
    """Interpolate values known at the global lattice (multiples of `spacing`) onto ys × xs.

    `nodes(rows, cols)` gives the lattice values of integer node indices, so any
    window of an infinite field can be evaluated alone. Interpolation is elementwise
    (no BLAS), so a pixel is bit-identical whatever window it is computed in.
    """
    gy, gx = ys / spacing, xs / spacing
    iy, ix = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
    fy, fx = gy - iy, gx - ix
    if smooth:  # smoothstep weights: value noise without visible lattice creases
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    fy, fx = fy.astype(np.float32), fx.astype(np.float32)
    y0, x0 = iy.min(), ix.min()
    lattice = nodes(np.arange(y0, iy.max() + 2), np.arange(x0, ix.max() + 2)).astype(np.float32)
    c = ix - x0
    across = lattice[:, c] * (1 - fx) + lattice[:, c + 1] * fx  # (lattice rows, columns): small
    r = iy - y0
    out = across[r]
    out += (across[r + 1] - out) * fy[:, None]
    return out


def _fbm(ys: np.ndarray, xs: np.ndarray, spacing: float, octaves: int, salt: int, seed: int) -> np.ndarray:
    """Sum of `octaves` value-noise layers, each twice as fine and half as strong, in [0, 1)."""
    total = np.zeros((ys.size, xs.size), np.float32)
    weight = 0.0
    for k in range(octaves):
        def hashed(rows: np.ndarray, cols: np.ndarray, salt: int = salt * 16 + k) -> np.ndarray:
            return _unit(_hash2(rows, cols, salt, seed))
        total += np.float32(0.5**k) * _interp(ys, xs, spacing / 2**k, hashed, smooth=True)
        weight += 0.5**k
    return total / np.float32(weight)


def _field(ys: np.ndarray, xs: np.ndarray, spacing: float, octaves: int, salt: int, seed: int) -> np.ndarray:
    """fbm sampled on a global lattice 16× finer than its finest octave, then linearly interpolated.

    The finest octave varies over hundreds of pixels on a full tile, so this is
    visually identical to evaluating every octave per pixel and several times cheaper.
    """
    step = max(1.0, spacing / 2 ** (octaves - 1) / 16)
    return _interp(ys, xs, step, lambda r, c: _fbm(r * step, c * step, spacing, octaves, salt, seed), smooth=False)


@dataclass(frozen=True)
class _Scene:
    """Parameters of one synthetic scene; thresholds are quantiles over the whole tile."""

    size: int
    seed: int
    water_max: float
    urban_min: float
    forest_min: float
    cloud_min: float
    cloud_span: float
    angle: float  # parcel grid rotation, radians

    # zone fields: (lattice spacing as a fraction of the tile, octaves, salt)
    WATER = (1 / 3, 3, 1)
    URBAN = (1 / 6, 3, 2)
    FOREST = (1 / 4, 3, 3)
    CLOUD = (1 / 5, 4, 4)
    PARCEL = (40.0, 25.0)  # parcel length × width in 10 m pixels (400 m × 250 m)
    SHADOW = (40.0, 30.0)  # cloud shadow displacement (rows, cols) in 10 m pixels

    @classmethod
    def make(cls, size: int, seed: int) -> "_Scene":
        """Fix class thresholds from a 96 × 96 sample so each class covers a set share of any tile."""
        pts = (np.arange(96) + 0.5) * (size / 96)

        def q(spec: tuple[float, int, int], p: float) -> float:
            return float(np.quantile(_field(pts, pts, spec[0] * size, spec[1], spec[2], seed), p))

        cloud_min = q(cls.CLOUD, 0.88)
        angle = math.radians(10 + 30 * float(_unit(_hash2(np.array([0]), np.array([0]), 99, seed))[0, 0]))
        return cls(size, seed, q(cls.WATER, 0.10), q(cls.URBAN, 0.92), q(cls.FOREST, 0.62),
                   cloud_min, q(cls.CLOUD, 0.97) - cloud_min, angle)

    def cloud_pct(self) -> float:
        """Share of the tile under more-than-half-opaque cloud, for the metadata."""
        pts = (np.arange(96) + 0.5) * (self.size / 96)
        return 100 * float(np.mean(self.field(self.CLOUD, pts, pts) > self.cloud_min + self.cloud_span / 2))

    def field(self, spec: tuple[float, int, int], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """One zone field at the given pixel centres."""
        return _field(ys, xs, spec[0] * self.size, spec[1], spec[2], self.seed)

    def render(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class map (uint8), surface gain and cloud opacity at pixel centres ys × xs."""
        cls_map = np.full((ys.size, xs.size), CROPS, np.uint8)
        # Parcels: a rotated grid whose columns are shifted at random, like field strips.
        cos, sin = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
        ys32, xs32 = ys.astype(np.float32), xs.astype(np.float32)
        pu = np.floor(((xs32 * cos)[None, :] + (ys32 * sin)[:, None]) / np.float32(self.PARCEL[0]))
        v = (ys32 * cos)[:, None] - (xs32 * sin)[None, :]
        pu = pu.astype(np.int64)
        lo = pu.min()
        shift = _unit(_hash2(np.arange(lo, pu.max() + 1), np.array([0]), 5, self.seed))[:, 0]
        pv = np.floor(v / self.PARCEL[1] + shift[pu - lo]).astype(np.int64)
        del v
        parcel = _unit(_mix((pu.view(np.uint64) * np.uint64(0xA24BAED4963EE407))
                            ^ (pv.view(np.uint64) + np.uint64(self.seed * 0x9E3779B97F4A7C15 % 2**64))))
        del pu, pv
        cls_map[parcel < 0.3] = BARE
        cls_map[self.field(self.FOREST, ys, xs) > self.forest_min] = FOREST
        cls_map[self.field(self.URBAN, ys, xs) > self.urban_min] = URBAN
        cls_map[self.field(self.WATER, ys, xs) < self.water_max] = WATER
        # Crop vigour / soil moisture varies per parcel; other classes keep their spectrum.
        gain = np.where((cls_map == CROPS) | (cls_map == BARE), np.float32(0.85) + np.float32(0.3) * parcel,
                        np.float32(1))
        del parcel
        cloud, shadow = self.cloud(ys, xs)
        gain *= (1 - np.float32(0.6) * shadow) * (1 - cloud)
        return cls_map, gain, cloud

    def cloud(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cloud opacity and the shadow it casts (both 0…1) at pixel centres ys × xs."""
        cloud = np.clip((self.field(self.CLOUD, ys, xs) - self.cloud_min) / self.cloud_span, 0, 1)
        shadow = np.clip((self.field(self.CLOUD, ys + self.SHADOW[0], xs + self.SHADOW[1]) - self.cloud_min)
                         / self.cloud_span, 0, 1)
        return cloud, shadow

    def nodata(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The swath-edge triangle cutting the lower-left corner."""
        return (xs[None, :] - ys[:, None]) < (-0.65 * self.size)


def truth_window(size: int, seed: int = 0, row_off: int = 0, height: int | None = None,
                 nodata_corner: bool = False) -> np.ndarray:
    """Ground-truth class codes (see :data:`CLASSES`) of 10 m rows ``row_off … row_off+height``.

    Cloud counts where it is more than half opaque; nodata pixels are 255.
    Lets tests and benchmarks score a segmentation of a sample tile.
    """
    height = size - row_off if height is None else height
    scene = _Scene.make(size, seed)
    ys, xs = np.arange(row_off, row_off + height) + 0.5, np.arange(size) + 0.5
    cls_map, _, cloud = scene.render(ys, xs)
    cls_map[cloud > 0.5] = CLOUD
    if nodata_corner:
        cls_map[scene.nodata(ys, xs)] = NODATA_CLASS
    return cls_map


def cloud_truth_window(size: int, seed: int = 0, row_off: int = 0, height: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a cloud mask of a sample tile is scored against, for 10 m rows ``row_off … row_off+height``:
    rendered clouds (more than half opaque), rendered cloud shadows (darkened by more than 30 %, not
    under such a cloud) and clear pixels (no cloud and no shadow rendered at all), as boolean arrays.
    Pixels under a faint cloud edge or shadow edge are none of the three: not scored."""
    height = size - row_off if height is None else height
    scene = _Scene.make(size, seed)
    cloud, shadow = scene.cloud(np.arange(row_off, row_off + height) + 0.5, np.arange(size) + 0.5)
    clouds = cloud > 0.5
    return clouds, (shadow > 0.5) & ~clouds, (cloud == 0) & (shadow == 0)


# SCL codes the sample writes (ESA's Scene Classification: 0 nodata, 3 cloud shadow, 4 vegetation,
# 5 not vegetated, 6 water, 8/9 cloud medium/high probability, 10 thin cirrus; no snow is rendered).
_SCL_OF_CLASS = np.array([6, 4, 4, 5, 5, 9], dtype=np.uint8)  # CLASSES order
# Opacity / shadow strength above which the SCL flags a pixel. Below the truth's 0.5 on purpose:
# a 20 m SCL pixel covers four 10 m pixels, and Sen2Cor dilates its cloud mask the same way.
_SCL_CLOUD, _SCL_CLOUD_HIGH, _SCL_CIRRUS, _SCL_SHADOW = 0.3, 0.6, 0.1, 0.3


def _block_scl(scene: _Scene, window: Window, nodata_corner: bool) -> list[np.ndarray]:
    """SCL, MSK_CLDPRB and MSK_SNWPRB (uint8) of one window of the 20 m grid."""
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    ys, xs = (rows + 0.5) * 2, (cols + 0.5) * 2  # 20 m pixel centres in 10 m units
    cls_map = scene.render(ys, xs)[0]
    cloud, shadow = scene.cloud(ys, xs)
    scl = _SCL_OF_CLASS[cls_map]
    scl[(shadow > _SCL_SHADOW) & (cloud <= _SCL_CIRRUS)] = 3
    scl[(cloud > _SCL_CIRRUS) & (cloud <= _SCL_CLOUD)] = 10
    scl[cloud > _SCL_CLOUD] = 8
    scl[cloud > _SCL_CLOUD_HIGH] = 9
    cldprb = np.rint(cloud * 100).astype(np.uint8)
    snwprb = np.zeros_like(cldprb)
    if nodata_corner:
        mask = scene.nodata(ys, xs)
        for layer in (scl, cldprb, snwprb):
            layer[mask] = 0
    return [scl, cldprb, snwprb]


def _write_scl(scene: _Scene, paths: list[Path], nodata_corner: bool, compressed: bool) -> None:
    """The L2A scene classification and cloud / snow probabilities at 20 m, block row by block row."""
    width = math.ceil(scene.size / 2)
    profile = {**_gtiff_profile(width, 20, compressed), "dtype": "uint8"}
    profile.pop("predictor", None)  # class codes: no predictor
    files = [rasterio.open(p, "w", **profile) for p in paths]
    try:
        for r in range(0, width, BLOCK):
            window = Window(0, r, width, min(BLOCK, width - r))
            for f, layer in zip(files, _block_scl(scene, window, nodata_corner)):
                f.write(layer, 1, window=window)
    finally:
        for f in files:
            f.close()


def _block_dn(scene: _Scene, bands: list[Band], window: Window, scale: int, level: str,
              nodata_corner: bool) -> list[np.ndarray]:
    """uint16 DNs of `bands` (all of one resolution, `scale` 10 m pixels each) in `window`."""
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    ys, xs = (rows + 0.5) * scale, (cols + 0.5) * scale  # pixel centres in 10 m units
    cls_map, gain, cloud = scene.render(ys, xs)
    cls_map = cls_map.astype(np.intp)  # index array for the per-band spectrum look-ups, converted once
    gain *= 1 + np.take(_TEXTURE, cls_map) * (2 * _unit(_hash2(rows, cols, 100 + scale, scene.seed)) - 1)
    thickness = cloud * (np.float32(0.6) + np.float32(0.4) * cloud)  # thick cores are brighter
    mask = scene.nodata(ys, xs) if nodata_corner else None
    out = []
    for i, band in enumerate(bands):
        b = band.band_index
        # Sensor noise: one 64-bit hash per pixel gives four bands 16 bits each.
        if i % 4 == 0:
            bits = _hash2(rows, cols, 200 + 10 * scale + i, scene.seed)
        noise = bits.view(np.uint16).reshape(rows.size, cols.size, 4)[:, :, i % 4].astype(np.float32)
        noise *= np.float32(0.04 / 65535)
        noise += np.float32(0.98)  # ±2 % multiplicative noise
        surface = np.take(_SPECTRA[:, b], cls_map) * gain * noise
        if level == "L1C":
            surface = surface * _TRANSMITTANCE[b] + _HAZE[b]
        surface += thickness * _SPECTRA[CLOUD, b]
        surface *= np.float32(QUANTIFICATION)
        surface += np.float32(DN_OFFSET + 0.5)  # + 0.5: the uint16 cast truncates, so this rounds
        dn = np.clip(surface, 1, 65535).astype(np.uint16)
        if mask is not None:
            dn[mask] = 0
        out.append(dn)
    return out


# ---------------------------------------------------------------- product layout

@dataclass(frozen=True)
class _Names:
    """Every name of one product, as ESA writes them."""

    level: str
    layout: str
    ext: str

    @property
    def safe(self) -> str:
        stamp = "20240612T142331" if self.level == "L2A" else "20240612T124017"
        return f"S2B_MSI{self.level}_{SENSING}_N0510_R108_{TILE_ID}_{stamp}.SAFE"

    @property
    def granule(self) -> str:
        return f"{self.level}_{TILE_ID}_A046789_20240612T103524"

    @property
    def mtd(self) -> str:
        return f"MTD_MSI{self.level}.xml"

    @property
    def top(self) -> str:
        """Name of the finished product under out_dir."""
        return {"safe": self.safe, "zip": self.safe + ".zip", "flat": f"{TILE_ID}_{SENSING}"}[self.layout]

    def band(self, band: Band) -> str:
        """Path of a band image (no extension) relative to the product root."""
        stem = f"{TILE_ID}_{SENSING}_{band.id}"
        if self.layout == "flat":
            return stem
        img = f"GRANULE/{self.granule}/IMG_DATA"
        if self.level == "L2A":
            return f"{img}/R{band.resolution}m/{stem}_{band.resolution}m"
        return f"{img}/{stem}"

    def layers(self) -> list[str]:
        """Paths (no extension) of the L2A scene classification and cloud / snow probability masks."""
        if self.layout == "flat":
            return [f"{TILE_ID}_{SENSING}_SCL_20m", "MSK_CLDPRB_20m", "MSK_SNWPRB_20m"]
        granule = f"GRANULE/{self.granule}"
        return [f"{granule}/IMG_DATA/R20m/{TILE_ID}_{SENSING}_SCL_20m", f"{granule}/QI_DATA/MSK_CLDPRB_20m",
                f"{granule}/QI_DATA/MSK_SNWPRB_20m"]


def _product_xml(names: _Names, bands: list[Band], cloud_pct: float) -> str:
    """MTD_MSIL2A.xml / MTD_MSIL1C.xml, shaped like ESA's (baseline 05.10) but trimmed."""
    l2a = names.level == "L2A"
    kind = "Level-2A" if l2a else "Level-1C"
    files = "\n".join(f"            <IMAGE_FILE>{names.band(b)}</IMAGE_FILE>" for b in bands)
    if l2a:
        quant = ("      <QUANTIFICATION_VALUES_LIST>\n"
                 f'        <BOA_QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</BOA_QUANTIFICATION_VALUE>\n'
                 '        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
                 '        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
                 "      </QUANTIFICATION_VALUES_LIST>\n      <BOA_ADD_OFFSET_VALUES_LIST>\n"
                 + "".join(f'        <BOA_ADD_OFFSET band_id="{b.band_index}">-{DN_OFFSET}</BOA_ADD_OFFSET>\n'
                           for b in BANDS)
                 + "      </BOA_ADD_OFFSET_VALUES_LIST>")
    else:
        quant = (f'      <QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</QUANTIFICATION_VALUE>\n'
                 "      <Radiometric_Offset_List>\n"
                 + "".join(f'        <RADIO_ADD_OFFSET band_id="{b.band_index}">-{DN_OFFSET}</RADIO_ADD_OFFSET>\n'
                           for b in BANDS)
                 + "      </Radiometric_Offset_List>")
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{b.band_index}" physicalBand="{b.id.replace("B0", "B")}">\n'
        f"          <RESOLUTION>{b.resolution}</RESOLUTION>\n"
        f'          <Wavelength><CENTRAL unit="nm">{b.wavelength_nm}</CENTRAL></Wavelength>\n'
        "        </Spectral_Information>" for b in BANDS)
    ns = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_{kind}.xsd"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{kind}_User_Product xmlns:n1="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{ns}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2024-06-12T10:30:31.024Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>2024-06-12T10:30:31.024Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{names.safe}</PRODUCT_URI>
      <PROCESSING_LEVEL>{kind}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{names.level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{BASELINE}</PROCESSING_BASELINE>
      <GENERATION_TIME>2024-06-12T14:23:31.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2B_{SENSING}_037856_N{BASELINE}">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <SENSING_ORBIT_NUMBER>108</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="{names.granule}" imageFormat="{'GeoTIFF' if names.ext == 'tif' else 'JPEG2000'}">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <Image_Display_Order><RED_CHANNEL>3</RED_CHANNEL><GREEN_CHANNEL>2</GREEN_CHANNEL><BLUE_CHANNEL>1</BLUE_CHANNEL></Image_Display_Order>
{quant}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>{cloud_pct:.1f}</Cloud_Coverage_Assessment>
  </n1:Quality_Indicators_Info>
</n1:{kind}_User_Product>
"""


def _tile_xml(names: _Names, size: int) -> str:
    """Granule MTD_TL.xml: CRS and per-resolution geoposition, as in real products."""
    geo = "".join(
        f'      <Size resolution="{r}"><NROWS>{math.ceil(size * 10 / r)}</NROWS><NCOLS>{math.ceil(size * 10 / r)}</NCOLS></Size>\n'
        for r in (10, 20, 60))
    geo += "".join(
        f'      <Geoposition resolution="{r}"><ULX>{ORIGIN[0]:.0f}</ULX><ULY>{ORIGIN[1]:.0f}</ULY>'
        f"<XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>\n" for r in (10, 20, 60))
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{'Level-2A' if names.level == 'L2A' else 'Level-1C'}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{names.level[1:]}_Tile_Metadata.xsd">
  <n1:General_Info><TILE_ID>{names.granule}</TILE_ID></n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding>
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 32N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>
{geo}    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:{'Level-2A' if names.level == 'L2A' else 'Level-1C'}_Tile_ID>
"""


# ---------------------------------------------------------------- writing

def _gtiff_profile(width: int, res: int, compressed: bool) -> dict:
    """Creation options of one square band file: tiled, compressed (ZSTD + predictor) or raw."""
    profile = dict(driver="GTiff", width=width, height=width, count=1, dtype="uint16",
                   crs=f"EPSG:{EPSG}", transform=Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1]),
                   tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
    if compressed:
        profile.update(compress="zstd", zstd_level=1, predictor=2, num_threads="ALL_CPUS")
    return profile


def _write_group(scene: _Scene, group: list[Band], paths: list[Path], level: str, nodata_corner: bool,
                 compressed: bool, on_block: Callable[[int, str], None]) -> None:
    """Write the bands of one resolution block by block, computing blocks on a few threads.

    numpy releases the GIL in its array operations, so a small pool uses every
    core; at most `workers` blocks are in flight, bounding memory. Blocks of
    BLOCK × 4·BLOCK pixels keep numpy's temporaries small enough to be recycled
    by malloc instead of being mapped and page-faulted afresh for every operation.
    """
    res = group[0].resolution
    scale, width = res // 10, math.ceil(scene.size / (res // 10))
    workers = max(1, min(4, os.cpu_count() or 1))
    windows = (Window(c, r, min(4 * BLOCK, width - c), min(BLOCK, width - r))
               for r in range(0, width, BLOCK) for c in range(0, width, 4 * BLOCK))
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20):  # blocks are written whole: a small cache is enough
        files = [rasterio.open(p, "w", **_gtiff_profile(width, res, compressed)) for p in paths]
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="s2seg-sample") as pool:
                pending: deque = deque()
                while True:
                    for window in windows:  # top the queue up to `workers` blocks
                        pending.append((window, pool.submit(_block_dn, scene, group, window, scale, level,
                                                           nodata_corner)))
                        if len(pending) >= workers:
                            break
                    if not pending:
                        break
                    window, future = pending.popleft()
                    for f, dn in zip(files, future.result()):
                        f.write(dn, 1, window=window)
                    on_block(window.width * window.height * len(group),
                             f"{res} m bands: row {window.row_off + window.height}/{width}")
        finally:
            for f in files:
                f.close()


def _zip_safe(root: Path, target: Path) -> None:
    """Zip a .SAFE folder with member paths starting at ``<name>.SAFE/``."""
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                # Images stored, not deflated: GDAL /vsizip/ then reads them without inflating.
                method = zipfile.ZIP_DEFLATED if path.suffix == ".xml" else zipfile.ZIP_STORED
                zf.write(path, f"{root.name}/{path.relative_to(root).as_posix()}", compress_type=method)


def _check(size: int, level: str, layout: str, fmt: str) -> None:
    """ConfigError naming the first bad argument."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 60:
        raise ConfigError(f"size must be an integer of at least 60 pixels (one 60 m pixel = 6), got {size!r}")
    for name, value, allowed in (("level", level, LEVELS), ("layout", layout, LAYOUTS), ("fmt", fmt, FORMATS)):
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def write_sample_tile(out_dir: str | Path, *, size: int = 10980, seed: int = 0, level: str = "L2A",
                      layout: str = "safe", nodata_corner: bool = False, fmt: str = "gtiff",
                      progress: Progress | None = None) -> Path:
    """Write a synthetic Sentinel-2 tile under `out_dir` and return its path.

    The path is the ``.SAFE`` folder (layout "safe"), the ``.SAFE.zip`` file
    ("zip") or the flat band folder ("flat"). `size` is the 10 m width/height;
    20 m and 60 m grids are ceil(size/2) and ceil(size/6) wide with the same
    upper-left corner. Pixels depend only on (size, seed, level, position).
    An L2A tile also holds the scene classification ``SCL_20m`` (in ``IMG_DATA/R20m``) and the
    cloud / snow probabilities ``MSK_CLDPRB_20m`` / ``MSK_SNWPRB_20m`` (in ``QI_DATA``), agreeing
    with the clouds and shadows rendered (see :func:`cloud_truth_window`).
    `fmt` "gtiff" writes ZSTD-compressed tiled GeoTIFF (``.tif``), "jp2"
    lossless JPEG2000 (``.jp2``). `progress(fraction, message)` is called per block written.

    Raises ConfigError for a bad argument and OutputError when the tile exists
    or cannot be written. The tile is built in a hidden staging folder and
    renamed into place only when complete.
    """
    _check(size, level, layout, fmt)
    report = progress or (lambda fraction, message: None)
    ext = "tif" if fmt == "gtiff" else "jp2"
    names = _Names(level, layout, ext)
    out_dir = Path(out_dir)
    final = out_dir / names.top
    if final.exists():
        raise OutputError(f"sample tile already exists, not overwriting: {final}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{names.top}.", suffix=".tmp", dir=out_dir))
    except OSError as exc:
        raise OutputError(f"cannot write a sample tile in {out_dir}: {exc}") from exc
    try:
        root = staging / (names.top if layout == "flat" else names.safe)
        bands = [b for b in BANDS if not (level == "L2A" and b.id == "B10")]
        scene = _Scene.make(size, seed)
        total = sum(math.ceil(size / b.scale) ** 2 for b in bands)
        share = 0.7 if fmt == "jp2" else 0.98  # of the progress bar spent computing pixels
        done = 0

        def on_block(pixels: int, message: str) -> None:
            nonlocal done
            done += pixels
            report(share * done / total, message)

        for res in (10, 20, 60):
            group = [b for b in bands if b.resolution == res]
            paths = [root / f"{names.band(b)}.{ext}" for b in group]
            raw = [p.with_suffix(".raw.tif") if fmt == "jp2" else p for p in paths]
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            _write_group(scene, group, raw, level, nodata_corner, fmt == "gtiff", on_block)
            if fmt == "jp2":  # JPEG2000 is encoded from a whole image: losslessly from the raw GeoTIFF
                for tmp, p in zip(raw, paths):
                    report(share + (0.98 - share) * done / total, f"encoding {p.name}")
                    rasterio.shutil.copy(tmp, p, driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY="100",
                                         BLOCKXSIZE=1024, BLOCKYSIZE=1024)
                    tmp.unlink()
        if level == "L2A":
            report(share, "scene classification")
            paths = [root / f"{p}.{ext}" for p in names.layers()]
            raw = [p.with_suffix(".raw.tif") if fmt == "jp2" else p for p in paths]
            for p in paths:
                p.parent.mkdir(parents=True, exist_ok=True)
            _write_scl(scene, raw, nodata_corner, fmt == "gtiff")
            if fmt == "jp2":
                for tmp, p in zip(raw, paths):
                    rasterio.shutil.copy(tmp, p, driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY="100")
                    tmp.unlink()
        (root / names.mtd).write_text(_product_xml(names, bands, scene.cloud_pct()), encoding="utf-8")
        if layout != "flat":
            (root / "GRANULE" / names.granule / "MTD_TL.xml").write_text(_tile_xml(names, size), encoding="utf-8")
        built = root
        if layout == "zip":
            report(0.98, f"zipping {names.top}")
            built = staging / names.top
            _zip_safe(root, built)
        if final.exists():
            raise OutputError(f"sample tile appeared while writing, not overwriting: {final}")
        os.replace(built, final)
    except OSError as exc:
        raise OutputError(f"cannot write sample tile {final}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(1.0, f"wrote {final}")
    return final
