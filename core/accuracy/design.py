"""Stratified random sample of a segmented tile, ready to label (issue 22, part 1).

Strata are the map classes, optionally split into "confident" and "uncertain" pixels
by a threshold on the gap (top-1 minus top-2 probability) or the entropy, so errors,
which gather where the model hesitates, are found with fewer points. The total size
follows Olofsson et al. (2014) eq. 13 from a target standard error of overall accuracy
(or is given), and is allocated as their section 5.1.1 advises: a minimum per stratum,
the rest in proportion to area. Nodata pixels (class 255) are never drawn.

The rasters are read in strips of whole rows, twice (count, then pick), so a 10980²
tile needs a few tens of MB whatever the sample size; the draw is uniform without
replacement within each stratum and reproducible from the seed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError, OutputError, OutputsExist
from ..styles import store_default_style
from ..vectorize import create_geopackage
from ..uncertainty import CLASS_NODATA
from ..writer import product_paths
from .config import (DESIGN_LAYER, REFERENCE_FIELD, SAMPLE_FIELDS, SAMPLE_LAYER, STRATA_LAYER, DesignConfig,
                     Progress)
from .estimate import allocate, sample_size_overall, sample_size_users
from .style import STYLE_NAME, labelling_qml


@dataclass(frozen=True)
class Products:
    """The products of one segmented tile, as read from its folder."""

    tile: str
    paths: dict[str, Path]
    class_names: list[str]
    class_colours: list[str]
    width: int
    height: int
    crs_wkt: str
    transform: tuple[float, ...]  # GDAL geotransform
    pixel_area: float  # m² (map units²)


@dataclass
class Stratum:
    """One stratum of a design."""

    code: int
    name: str
    map_class: int
    confidence: str  # "all", "confident" or "uncertain"
    pixels: int
    sample: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Design:
    """A drawn sample: strata, units and the settings that produced them."""

    products: Products
    config: DesignConfig
    strata: list[Stratum]
    rows: np.ndarray
    cols: np.ndarray
    stratum: np.ndarray
    map_class: np.ndarray
    maxprob: np.ndarray
    gap: np.ndarray
    entropy: np.ndarray
    messages: list[str] = field(default_factory=list)

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Map coordinates of the pixel centres of the units."""
        t = self.products.transform
        c, r = self.cols + 0.5, self.rows + 0.5
        return t[0] + c * t[1] + r * t[2], t[3] + c * t[4] + r * t[5]

    def summary(self) -> dict[str, Any]:
        return {"tile": self.products.tile, "class_raster": str(self.products.paths["class"]),
                "pixel_area": self.products.pixel_area, "config": asdict(self.config),
                "strata": [s.to_dict() for s in self.strata], "units": int(len(self.rows)),
                "messages": self.messages}


# ------------------------------------------------------------------------------------- products

def class_suffix() -> str:
    """``_class.tif``: what follows the tile name in the class raster's file name (from the writer)."""
    return product_paths(Path("."), "", False)["class"].name


def find_products(products_dir: Path, tile: str | None = None) -> Products:
    """The class, maxprob, gap and entropy rasters of ``tile`` (or of the only tile) in ``products_dir``."""
    from osgeo import gdal

    products_dir = Path(products_dir)
    if not products_dir.is_dir():
        raise InputError(f"products folder {products_dir} does not exist or is not a folder")
    suffix = class_suffix()
    tiles = sorted(p.name[: -len(suffix)] for p in products_dir.glob("*" + suffix))
    if tile is None:
        if not tiles:
            raise InputError(f"no class raster (*{suffix}) in {products_dir}: is it the output folder of a segment run?")
        if len(tiles) > 1:
            raise InputError(f"{products_dir} holds the products of several tiles ({', '.join(tiles)}): name one")
        tile = tiles[0]
    paths = product_paths(products_dir, tile, False)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"product(s) missing for tile {tile}: {', '.join(missing)}")
    try:
        info = gdal.Info(str(paths["class"]), format="json")
    except RuntimeError as exc:
        raise InputError(f"cannot read class raster {paths['class']}: {exc}") from None
    if info is None:
        raise InputError(f"cannot read class raster {paths['class']}: {gdal.GetLastErrorMsg()}")
    band = info["bands"][0]
    if band.get("type") != "Byte":
        raise InputError(f"class raster {paths['class']} is {band.get('type')}, not 8-bit class ids")
    categories = band.get("categories") or []
    names = [n for n in categories[:CLASS_NODATA]]
    while names and not names[-1]:
        names.pop()
    colours = []
    for entry in (band.get("colorTable") or {}).get("entries", [])[: len(names)]:
        colours.append("#%02X%02X%02X" % tuple(entry[:3]))
    colours += ["#808080"] * (len(names) - len(colours))
    gt = tuple(float(v) for v in info["geoTransform"])
    width, height = info["size"]
    return Products(tile=tile, paths=paths, class_names=names, class_colours=colours, width=width, height=height,
                    crs_wkt=info.get("coordinateSystem", {}).get("wkt", ""), transform=gt,
                    pixel_area=abs(gt[1] * gt[5] - gt[2] * gt[4]))


def _strips(products: Products, keys: tuple[str, ...], block_rows: int):
    """Yield (row0, {key: rows array}) for strips of whole rows of the given products."""
    import rasterio
    from rasterio.windows import Window

    handles = {}
    try:
        for key in keys:
            try:
                handles[key] = rasterio.open(products.paths[key])
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(f"cannot open {products.paths[key]}: {exc}") from None
            if (handles[key].width, handles[key].height) != (products.width, products.height):
                raise InputError(f"{products.paths[key]} is {handles[key].width} × {handles[key].height} px, "
                                 f"the class raster {products.width} × {products.height}")
        for row0 in range(0, products.height, block_rows):
            window = Window(0, row0, products.width, min(block_rows, products.height - row0))
            yield row0, {key: ds.read(1, window=window) for key, ds in handles.items()}
    finally:
        for ds in handles.values():
            ds.close()


def _strata_codes(classes: np.ndarray, confidence: np.ndarray | None, config: DesignConfig) -> np.ndarray:
    """Stratum code of each pixel: the class, or class × 2 + uncertain when classes are split."""
    if confidence is None:
        return classes.astype(np.int32)
    if config.confidence == "gap":
        uncertain = ~(confidence >= config.threshold)  # NaN counts as uncertain
    else:
        uncertain = ~(confidence <= config.threshold)
    return classes.astype(np.int32) * 2 + uncertain


# ------------------------------------------------------------------------------------- drawing

def draw_design(products: Products, config: DesignConfig, progress: Progress | None = None) -> Design:
    """Count the strata, size and allocate the sample, and draw it (two passes over the rasters)."""
    report = progress or (lambda f, m: None)
    split = config.confidence != "none"
    keys = ("class", config.confidence) if split else ("class",)
    n_codes = 2 * 256 if split else 256
    counts = np.zeros(n_codes, np.int64)
    for row0, strip in _strips(products, keys, config.block_rows):
        classes = strip["class"]
        valid = classes != CLASS_NODATA
        codes = _strata_codes(classes, strip.get(config.confidence), config)
        counts += np.bincount(codes[valid], minlength=n_codes)
        report(0.5 * (row0 + classes.shape[0]) / products.height, "counting strata")
    present = np.flatnonzero(counts)
    if present.size == 0:
        raise InputError(f"class raster {products.paths['class']} has no valid pixel to sample")
    strata = []
    for code in present.tolist():
        cls = code // 2 if split else code
        part = ("uncertain" if code % 2 else "confident") if split else "all"
        name = products.class_names[cls] if cls < len(products.class_names) else f"class {cls}"
        strata.append(Stratum(code=code, name=name if not split else f"{name} | {part}", map_class=cls,
                              confidence=part, pixels=int(counts[code])))
    sizes = np.array([s.pixels for s in strata], float)
    messages = []
    expected = [config.expected_uncertain if s.confidence == "uncertain" else config.expected_user for s in strata]
    if config.total:
        total = config.total
    else:
        total = sample_size_overall(sizes / sizes.sum(), expected, config.target_se)
        messages.append(f"sample size {total} from a target standard error of overall accuracy of "
                        f"{config.target_se} (Olofsson et al. 2014 eq. 13)")
    floor = min(int(sizes.sum()), config.minimum * len(strata))
    if total < floor:  # the minimum per stratum wins over a smaller total
        messages.append(f"sample size raised from {total} to {floor}: {config.minimum} per stratum × {len(strata)} "
                        "strata")
        total = floor
    for stratum, n in zip(strata, allocate(total, sizes, config.minimum)):
        stratum.sample = int(n)
    if config.target_se_users:
        # Per stratum, SE(U)² = U(1 − U)/(n − 1); a class split in two strata then meets it a fortiori.
        raised = 0
        for stratum, u in zip(strata, expected):
            need = min(stratum.pixels, sample_size_users(u, config.target_se_users))
            if need > stratum.sample:
                stratum.sample, raised = need, raised + 1
        if raised:
            messages.append(f"{raised} stratum/strata raised to reach a standard error of user's accuracy of "
                            f"{config.target_se_users}")
    small = [s.name for s in strata if s.sample < min(config.minimum, 2)]
    if small:
        messages.append(f"stratum {', '.join(small)} holds fewer than 2 pixels: its variance cannot be estimated")

    rng = np.random.default_rng(config.seed)
    # Per stratum: the ranks (in raster order among its pixels) of the chosen pixels, sorted.
    picks = {s.code: np.sort(rng.choice(s.pixels, size=s.sample, replace=False)) for s in strata}
    seen = dict.fromkeys(picks, 0)
    found: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "cols", "stratum", "map_class", "maxprob", "gap",
                                                          "entropy")}
    float_keys = ("maxprob", "gap", "entropy")
    for row0, strip in _strips(products, ("class", *float_keys), config.block_rows):
        classes = strip["class"]
        codes = _strata_codes(classes, strip.get(config.confidence), config).ravel()
        codes[classes.ravel() == CLASS_NODATA] = -1
        here = np.bincount(codes[codes >= 0], minlength=n_codes)
        for code, ranks in picks.items():
            lo, hi = seen[code], seen[code] + int(here[code])
            seen[code] = hi
            first, last = np.searchsorted(ranks, [lo, hi])
            if first == last:
                continue
            flat = np.flatnonzero(codes == code)[ranks[first:last] - lo]
            r, c = np.divmod(flat, products.width)
            found["rows"].append(r + row0)
            found["cols"].append(c)
            found["stratum"].append(np.full(len(flat), code, np.int32))
            found["map_class"].append(classes.ravel()[flat].astype(np.int32))
            for key in float_keys:
                found[key].append(strip[key].ravel()[flat].astype(np.float64))
        report(0.5 + 0.5 * (row0 + classes.shape[0]) / products.height, "drawing the sample")
    arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in found.items()}
    # A random order of the points, so a person labelling them in order sees no stratum pattern; from a
    # canonical order (raster order), so the strip height does not change the result.
    canonical = np.lexsort((arrays["cols"], arrays["rows"]))
    order = canonical[rng.permutation(len(canonical))]
    arrays = {k: v[order] for k, v in arrays.items()}
    return Design(products=products, config=config, strata=strata, messages=messages,
                  rows=arrays["rows"].astype(np.int64), cols=arrays["cols"].astype(np.int64),
                  stratum=arrays["stratum"].astype(np.int32), map_class=arrays["map_class"].astype(np.int32),
                  maxprob=arrays["maxprob"], gap=arrays["gap"], entropy=arrays["entropy"])


# ------------------------------------------------------------------------------------- GeoPackage

def write_design(design: Design, path: Path, overwrite: bool = False) -> Path:
    """Write the points, the strata table and the design settings as one GeoPackage (atomically)."""
    from osgeo import ogr, osr

    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        raise OutputError(f"sample file {path} must end in .gpkg (it is written as a GeoPackage)")
    if path.exists() and not overwrite:
        raise OutputsExist(f"sample file {path} exists; it may hold reference labels, so it is not replaced")
    if not path.parent.is_dir():
        raise OutputError(f"folder of the sample file {path.parent} does not exist")
    names = {s.code: s.name for s in design.strata}
    class_names = design.products.class_names
    xs, ys = design.xy()
    srs = osr.SpatialReference()
    if design.products.crs_wkt:
        srs.ImportFromWkt(design.products.crs_wkt)
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    try:
        with atomic_path(path) as tmp:
            tmp.unlink()  # the GeoPackage driver creates its file itself
            ds = create_geopackage(tmp, path)
            points = ds.CreateLayer(SAMPLE_LAYER, srs if design.products.crs_wkt else None, ogr.wkbPoint)
            for name, kind in zip(SAMPLE_FIELDS, (ogr.OFTInteger, ogr.OFTString, ogr.OFTInteger, ogr.OFTString,
                                                  ogr.OFTReal, ogr.OFTReal, ogr.OFTReal, ogr.OFTString)):
                points.CreateField(ogr.FieldDefn(name, kind))
            for name in ("row", "col"):
                points.CreateField(ogr.FieldDefn(name, ogr.OFTInteger))
            points.StartTransaction()
            defn = points.GetLayerDefn()
            for i in range(len(design.rows)):
                feature = ogr.Feature(defn)
                cls = int(design.map_class[i])
                feature.SetField("stratum", int(design.stratum[i]))
                feature.SetField("stratum_name", names[int(design.stratum[i])])
                feature.SetField("map_class", cls)
                feature.SetField("map_class_name", class_names[cls] if cls < len(class_names) else "")
                for key in ("maxprob", "gap", "entropy"):
                    value = float(getattr(design, key)[i])
                    if np.isfinite(value):
                        feature.SetField(key, value)
                feature.SetField("row", int(design.rows[i]))
                feature.SetField("col", int(design.cols[i]))
                point = ogr.Geometry(ogr.wkbPoint)
                point.AddPoint_2D(float(xs[i]), float(ys[i]))
                feature.SetGeometry(point)
                points.CreateFeature(feature)
            points.CommitTransaction()
            table = ds.CreateLayer(STRATA_LAYER, None, ogr.wkbNone)
            for name, kind in (("stratum", ogr.OFTInteger), ("name", ogr.OFTString), ("map_class", ogr.OFTInteger),
                               ("confidence", ogr.OFTString), ("pixels", ogr.OFTInteger64), ("area", ogr.OFTReal),
                               ("weight", ogr.OFTReal), ("sample", ogr.OFTInteger)):
                table.CreateField(ogr.FieldDefn(name, kind))
            total = sum(s.pixels for s in design.strata)
            for s in design.strata:
                feature = ogr.Feature(table.GetLayerDefn())
                for key, value in (("stratum", s.code), ("name", s.name), ("map_class", s.map_class),
                                   ("confidence", s.confidence), ("pixels", s.pixels),
                                   ("area", s.pixels * design.products.pixel_area), ("weight", s.pixels / total),
                                   ("sample", s.sample)):
                    feature.SetField(key, value)
                table.CreateFeature(feature)
            store_default_style(ds, points, labelling_qml(REFERENCE_FIELD), STYLE_NAME,
                                "points to label: hollow red; labelled: green")
            meta = ds.CreateLayer(DESIGN_LAYER, None, ogr.wkbNone)
            meta.CreateField(ogr.FieldDefn("json", ogr.OFTString))
            feature = ogr.Feature(meta.GetLayerDefn())
            feature.SetField("json", json.dumps(design.summary()))
            meta.CreateFeature(feature)
            ds = None  # closes and flushes the file
    except OSError as exc:
        raise OutputError(f"cannot write sample file {path}: {exc.strerror or exc}") from None
    except RuntimeError as exc:  # GDAL with exceptions enabled
        raise OutputError(f"cannot write sample file {path}: {exc}") from None
    return path


def sample_design(products_dir: Path, out: Path, config: DesignConfig = DesignConfig(), *, tile: str | None = None,
                  overwrite: bool = False, progress: Progress | None = None) -> Design:
    """Draw a design from the products in ``products_dir`` and write it to ``out`` (.gpkg)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputsExist(f"sample file {out} exists; it may hold reference labels, so it is not replaced")
    design = draw_design(find_products(products_dir, tile), config, progress)
    write_design(design, out, overwrite=overwrite)
    return design
