"""The command-line options shared by ``s2seg segment`` and ``s2seg batch``, each defined once.

Like ``rasterio.rio.options``: every option is declared here with its flags, type, default and
help, and applied to each subcommand that takes it, so the two cannot drift apart. An option
that sets an engine setting names its :class:`~s2seg.core.config.EngineConfig` field; the
defaults are that dataclass's own, and :func:`engine_config` turns parsed arguments into an
``EngineConfig`` in one place.

Light on purpose (argparse and the config only): the CLI builds its parser without torch or dask.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import DEVICES, FRONT_END_MASK, MASK_MODES, EngineConfig
from .errors import DeviceUnavailable, OutputsExist, ResumeImpossible, S2SegError
from .models import DEFAULT_MODEL
from .models.zoo import ModelNotAvailable
from .products import DEFAULT_PRODUCTS, all_products, parse_products

_DEFAULTS = EngineConfig()


@dataclass(frozen=True)
class Option:
    """One command-line option: its flags and ``add_argument`` keywords; ``config_field`` is the
    ``EngineConfig`` field it sets (None for front-end options such as ``--quiet``)."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    config_field: str | None = None

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_")

    def add_to(self, parser: Any) -> None:
        parser.add_argument(*self.flags, **self.kwargs)


@dataclass(frozen=True)
class Exclusive:
    """Options of which at most one may be given (e.g. ``--resume`` / ``--no-resume``); they share one dest."""

    options: tuple[Option, ...]

    def add_to(self, parser: Any) -> None:
        group = parser.add_mutually_exclusive_group()
        for option in self.options:
            option.add_to(group)


class ModelSpecAction(argparse.Action):
    """``--model`` and ``--revision`` together write ``model`` as ``NAME[@REVISION]``, the engine's model
    spec, in whichever order they come: ``segment`` and ``batch`` pass it on as it is."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, "model_name" if self.dest == "model" else self.dest, values)
        name, revision = getattr(namespace, "model_name", DEFAULT_MODEL), getattr(namespace, "revision", None)
        if revision and "@" in name:
            parser.error(f"--model {name} already names a revision: give it once (NAME@REVISION or --revision)")
        namespace.model = f"{name}@{revision}" if revision else name


MODEL = Option(("--model",), dict(default=DEFAULT_MODEL, metavar="NAME|PATH", action=ModelSpecAction,
                                  help="model name (see `s2seg models`; NAME@REVISION pins a downloadable one), "
                                       "card .json, BigEarthNet v2 folder, .onnx or TorchScript .pt"))
CHUNK_SIZE = Option(("--chunk-size",), dict(type=int, default=_DEFAULTS.chunk_size, metavar="N",
                                            help="chunk edge in 10 m pixels (0 = automatic)"), "chunk_size")
BATCH_SIZE = Option(("--batch-size",), dict(type=int, default=_DEFAULTS.batch_size, metavar="N",
                                            help="patches per forward pass (0 = automatic)"), "batch_size")
DEVICE = Option(("--device",), dict(choices=DEVICES, default=_DEFAULTS.device,
                                    help="auto: CUDA, else Apple MPS, else CPU"), "device")
HALF = Option(("--half",), dict(action="store_true", default=_DEFAULTS.half,
                                help="half-precision (float16 autocast) inference on CUDA; ignored elsewhere"), "half")
PROBS = Option(("--probs",), dict(action="store_true", default=_DEFAULTS.write_probs,
                                  help="also write per-class probabilities"), "write_probs")
OVERWRITE = Option(("--overwrite",), dict(action="store_true", default=_DEFAULTS.overwrite,
                                          help="replace the products of an earlier, finished run "
                                               "(batch: run tiles that are already complete again)"), "overwrite")
RESUME = Exclusive((
    Option(("--resume",), dict(dest="resume", action="store_const", const="require", default=_DEFAULTS.resume,
                               help="continue an interrupted run (an error when there is none to continue). Without "
                                    "this flag a run resumes automatically when the output folder holds the journal "
                                    "of an interrupted run of the same tile, model and settings, and starts over "
                                    "otherwise"), "resume"),
    Option(("--no-resume",), dict(dest="resume", action="store_const", const="never",
                                  help="discard the partial results of an interrupted run and start over"), "resume"),
))
AOI = Option(("--aoi",), dict(default=_DEFAULTS.aoi, metavar="BBOX|FILE",
                              help="area of interest: minx,miny,maxx,maxy in the tile's CRS (append ,EPSG:4326 for "
                                   "another CRS) or a polygon file (GeoPackage, GeoJSON, Shapefile; "
                                   "FILE|layername=NAME|subset=WHERE); only its chunks are computed and the products "
                                   "cover its bounding box (pixels outside the polygons are nodata)"), "aoi")
BANDS = Option(("--bands",), dict(default=_DEFAULTS.bands, metavar="IDS",
                                  help="a stacked raster's band ids in file order, e.g. B02,B03,B04,B08 ('-' skips "
                                       "a band); default: read from the band descriptions (B2/B02/blue …)"), "bands")
SCALE = Option(("--scale",), dict(type=float, default=_DEFAULTS.scale, metavar="S",
                                  help="reflectance = value × S + OFFSET (default: the file's metadata, else "
                                       "detected: integers 0.0001, float reflectance 1)"), "scale")
OFFSET = Option(("--offset",), dict(type=float, default=_DEFAULTS.offset, metavar="OFFSET",
                                    help="reflectance offset (e.g. -0.1 for baseline 04.00+ DN without metadata)"),
                "offset")
PRODUCTS = Option(("--products",), dict(type=lambda text: parse_products(text), default=_DEFAULTS.products,
                                        metavar="LIST",
                                        help=f"comma-separated products to write, among {','.join(all_products())} "
                                             f"(default: {','.join(DEFAULT_PRODUCTS)}; class is always needed)"),
                   "products")
VECTOR = Option(("--vector",), dict(action="store_true", default=_DEFAULTS.vector,
                                    help="also write the class map as polygons (<tile>_landcover.gpkg)"), "vector")
MMU = Option(("--mmu",), dict(type=float, default=_DEFAULTS.mmu, metavar="HA",
                              help=f"minimum mapping unit of the polygons in hectares: smaller patches join their "
                                   f"largest neighbour (default {_DEFAULTS.mmu}; 0 = none)"), "mmu")
COG = Option(("--cog",), dict(action="store_true", default=_DEFAULTS.cog,
                              help="write every raster as a cloud-optimised GeoTIFF"), "cog")
MASK = Option(("--mask",), dict(choices=MASK_MODES, default=FRONT_END_MASK,
                                help="mask clouds, shadows and snow (<tile>_mask.tif; the land cover is nodata "
                                     "under them): scl = the L2A scene classification, model = a cloud/shadow "
                                     "model in the same pass, with snow from the spectral snow test where it "
                                     "says clear, spectral = a reflectance test (clouds and snow only), auto = "
                                     "scl when the tile has it, else the cloud model of its level when "
                                     f"installed, else spectral; none = no mask (default {FRONT_END_MASK})"),
              "mask")
MASK_MODEL = Option(("--mask-model",), dict(default=_DEFAULTS.mask_model, metavar="NAME|PATH",
                                            help="the cloud model of --mask model (clear, cloud, cloud shadow), run "
                                                 "in the same pass (default: s2-cloud-l1c/s2-cloud-l2a after the "
                                                 "tile's level)"), "mask_model")
KEEP_MASKED = Option(("--keep-masked",), dict(action="store_true", default=_DEFAULTS.keep_masked,
                                              help="keep the land cover under clouds, shadows and snow "
                                                   "(the mask is still written)"), "keep_masked")
QUIET = Option(("--quiet",), dict(action="store_true", help="no progress bar"))
#: Pins a downloadable model (``s2seg models``) to a branch, tag or commit of its Hub repository;
#: the same as ``--model NAME@REVISION``.
REVISION = Option(("--revision",), dict(metavar="REV", action=ModelSpecAction,
                                        help="branch, tag or commit of a downloadable model's Hugging Face repository "
                                             "(default: main)"))

#: The engine options of ``segment`` and ``batch``, in ``--help`` order.
ENGINE_OPTIONS: tuple[Option | Exclusive, ...] = (MODEL, REVISION, CHUNK_SIZE, BATCH_SIZE, DEVICE, HALF, PROBS, PRODUCTS,
                                                  VECTOR, MMU, COG, OVERWRITE, RESUME, AOI, BANDS, SCALE, OFFSET,
                                                  MASK, MASK_MODEL, KEEP_MASKED)
#: Front-end options of both subcommands.
FRONT_END_OPTIONS: tuple[Option | Exclusive, ...] = (QUIET,)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Add every shared option (engine and front end) to a subcommand's parser."""
    for option in ENGINE_OPTIONS + FRONT_END_OPTIONS:
        option.add_to(parser)


def _flat(options: tuple[Option | Exclusive, ...]) -> list[Option]:
    return [o for item in options for o in (item.options if isinstance(item, Exclusive) else (item,))]


def engine_config(args: argparse.Namespace, **overrides: Any) -> EngineConfig:
    """The ``EngineConfig`` the parsed shared options ask for (``overrides`` win)."""
    values = {o.config_field: getattr(args, o.dest) for o in _flat(ENGINE_OPTIONS) if o.config_field}
    return EngineConfig(**{**values, **overrides})


# --- option wording for errors a user fixes by changing one option ---------------------------------
#: The engine's messages are neutral; the command line adds which option to change, keyed on the type.
OPTION_HINTS: Mapping[type[S2SegError], str] = {
    OutputsExist: "use --overwrite to replace them",
    ResumeImpossible: "run without --resume to start over",
    DeviceUnavailable: "use --device auto or --device cpu",
    ModelNotAvailable: "with internet access run `s2seg models --download NAME`; without, copy the folder over "
                       "and run `s2seg models --import DIR --name NAME`",
}
_HINTS_BY_NAME = {kind.__name__: hint for kind, hint in OPTION_HINTS.items()}


def with_option_hint(message: str, error: BaseException | str) -> str:
    """``message`` plus the option wording for ``error`` (an exception, or its class name as a batch
    outcome records it); unchanged for other errors."""
    if isinstance(error, str):
        hint = _HINTS_BY_NAME.get(error)
    else:
        hint = next((h for kind, h in OPTION_HINTS.items() if isinstance(error, kind)), None)
    return f"{message}; {hint}" if hint else message
