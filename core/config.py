"""Engine configuration: one dataclass with the defaults, overridable from the CLI and the API.

The seed script's constants keep their names as class attributes
(``PATCH_SIZE``, ``PREFERRED_CHUNK_SIZE``, ``GPU_BATCH_SIZE``); band lists and
normalisation constants (the seed's ``BANDS``, ``NORM_M``, ``NORM_S``) belong to
the model card (:mod:`s2seg.core.models.card`), never to this file.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Iterable, TypeVar

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
#: ``auto``: continue an interrupted run when a journal for the same tile, model and
#: settings exists, else start over (saying why in the log); ``require``: the same, but an
#: error when there is nothing to resume (CLI ``--resume``); ``never``: discard any partial
#: state and start over (CLI ``--no-resume``). ``True``/``False`` mean ``auto``/``never``.
RESUME_MODES = ("auto", "require", "never")
#: Cloud/shadow/snow mask sources (:mod:`.mask`): ``auto`` = the scene classification when the tile
#: has one, else the cloud model of its level when installed, else the spectral test; ``none`` = no mask.
MASK_MODES = ("auto", "scl", "model", "spectral", "none")
#: The mask of the command line and QGIS when the user names none: every map a user asks for is
#: masked. :attr:`EngineConfig.mask` (the Python API) stays ``none``: a library call does what it is
#: told, and ``auto`` would run a second model (the cloud U-Net) beside any model on an L1C tile.
FRONT_END_MASK = "auto"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container's or ``taskset``'s share), else
    ``os.cpu_count()``. Read at each call, never cached at import, so that thread counts follow the
    machine the code runs on (and tests can fake it by patching ``os.sched_getaffinity``/``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_T = TypeVar("_T")
_R = TypeVar("_R")


def map_on_cores(function: Callable[[_T], _R], items: Iterable[_T], name: str, limit: int | None = None) -> list[_R]:
    """``[function(item) for item in items]``, the items side by side on up to :func:`usable_cores` threads (and
    at most ``limit``), for work that releases the GIL (hashing, GDAL, zlib). Results keep the items' order; the
    first item's error is re-raised after every thread has ended. Threads are named ``name-i``."""
    items = list(items)
    threads = max(1, min(len(items), usable_cores(), limit or len(items) or 1))
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        return list(pool.map(function, items))


@dataclass(frozen=True)
class ThreadBudget:
    """Threads each stage may use, so that the stages running at once do not fight over the cores.

    The model (torch's intra-op pool, onnxruntime's intra-op pool) gets every usable core: it is the
    stage that bounds the run whenever a forward pass costs more than decoding its pixels. The reader
    decodes local bands in parallel with at most one thread per core: decoding is CPU work, and more
    threads than cores only queue behind each other and behind the model. Remote bands (``/vsicurl/``)
    wait on the network, not the CPU, and keep the threads asked for (``remote=True``).
    """

    model: int
    read: int

    @classmethod
    def for_machine(cls, read_threads: int, cores: int | None = None, remote: bool = False) -> "ThreadBudget":
        """The budget on ``cores`` (default: :func:`usable_cores`, read now) for a reader asked for ``read_threads``."""
        cores = cores or usable_cores()
        return cls(model=cores, read=max(1, read_threads if remote else min(read_threads, cores)))


@dataclass(frozen=True)
class EngineConfig:
    """How a tile is processed. ``0`` means "choose automatically" for sizes."""

    PATCH_SIZE: ClassVar[int] = 120  # default patch size of BigEarthNet-style models
    #: 10 m pixels, an upper bound: grid.choose_chunk_size rounds it down to a multiple of
    #: lcm(6, stride, 16) (2400 for 120 px patches) so that output blocks never straddle chunks.
    PREFERRED_CHUNK_SIZE: ClassVar[int] = 2520
    #: Models coarser than 10 m take chunks this many times larger (see pipeline.auto_chunk_size).
    COARSE_CHUNK_SCALE: ClassVar[int] = 2
    #: Patches of PATCH_SIZE per forward pass on an accelerator; other patch sizes get as many pixels.
    #: Measured on an H100 (docs/benchmarks.md, GPU): a ResNet-50 on 120² patches runs 8,000 patches/s
    #: at 64, 23,000 at 256 (float32, channels-last): small batches leave the GPU waiting on launches.
    #: An out-of-memory error halves the batch and retries (pipeline), so a small GPU still works.
    GPU_BATCH_SIZE: ClassVar[int] = 256
    CPU_BATCH_SIZE: ClassVar[int] = 16
    #: Upper bound of the per-chunk model output held for blending (dense models).
    DENSE_OUTPUT_BUDGET_BYTES: ClassVar[int] = 768 * 2**20

    chunk_size: int = 0
    batch_size: int = 0
    device: str = "auto"
    write_probs: bool = False
    overwrite: bool = False
    read_threads: int = 4
    queue_size: int = 2
    compress: str = "ZSTD"
    preview_size: int = 1024
    resume: str = "auto"
    #: float16 autocast around torch models on CUDA (outputs blended in float32); ignored elsewhere
    half: bool = False
    #: area of interest (:mod:`.aoi`): ``minx,miny,maxx,maxy[,CRS]`` or a polygon file
    #: (``path[|layername=…][|subset=…]``); None: the whole tile
    aoi: str | None = None
    #: a stacked raster's band ids in file order, comma-separated (``-`` skips one); None: from its descriptions
    bands: str | None = None
    #: reflectance = stored value × scale + offset; None: from the file or product metadata, or detected
    scale: float | None = None
    offset: float | None = None
    #: products to write (:mod:`.products`: raster keys of writer.RASTER_PRODUCTS, and ``vector``);
    #: empty: the default rasters (class, maxprob, entropy, gap), plus probs with ``write_probs``
    products: tuple[str, ...] = ()
    #: also write the class map as polygons (``<tile>_landcover.gpkg``, :mod:`.vectorize`)
    vector: bool = False
    #: minimum mapping unit of the polygons in hectares: smaller patches join a neighbour (GDAL sieve); 0 = none
    mmu: float = 0.5
    #: write every raster product as a cloud-optimised GeoTIFF (:mod:`.cog`)
    cog: bool = False
    #: cloud/shadow/snow mask (:data:`MASK_MODES`, :mod:`.mask`): writes ``<tile>_mask.tif`` and sets the
    #: land cover to nodata under clouds, shadows and snow. ``none`` here; the CLI and QGIS default to
    #: :data:`FRONT_END_MASK`
    mask: str = "none"
    #: keep the land cover under the mask (the mask is still written)
    keep_masked: bool = False
    #: the cloud model of mask ``model`` (a model name or path); None: s2-cloud-l1c/l2a after the tile's level
    mask_model: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.resume, bool):
            object.__setattr__(self, "resume", "auto" if self.resume else "never")
        if isinstance(self.products, (list, set, frozenset)):
            object.__setattr__(self, "products", tuple(self.products))  # hashable, and a stable order
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad parameter."""
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 0:
            raise ConfigError(f"chunk size must be 0 (automatic) or a positive number of pixels, got {self.chunk_size!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ConfigError(f"batch size must be 0 (automatic) or a positive number of patches, got {self.batch_size!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.read_threads < 1:
            raise ConfigError(f"read threads must be at least 1, got {self.read_threads!r}")
        if self.queue_size < 1:
            raise ConfigError(f"queue size must be at least 1, got {self.queue_size!r}")
        if self.compress not in ("ZSTD", "DEFLATE", "LZW", "NONE"):
            raise ConfigError(f"compress must be ZSTD, DEFLATE, LZW or NONE, got {self.compress!r}")
        if self.preview_size < 16:
            raise ConfigError(f"preview size must be at least 16 pixels, got {self.preview_size!r}")
        if not isinstance(self.half, bool):
            raise ConfigError(f"half must be True or False, got {self.half!r}")
        if self.aoi is not None and (not isinstance(self.aoi, str) or not self.aoi.strip()):
            raise ConfigError(f"area of interest must be a bounding box or a vector file path, got {self.aoi!r}")
        if self.bands is not None and (not isinstance(self.bands, str) or not self.bands.strip()):
            raise ConfigError(f"bands must be band ids in file order such as 'B02,B03,B04,B08', got {self.bands!r}")
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if isinstance(self.products, str) or not all(isinstance(p, str) for p in self.products):
            raise ConfigError(f"products must be a sequence of product names, got {self.products!r}")
        if isinstance(self.mmu, bool) or not isinstance(self.mmu, (int, float)) or not self.mmu >= 0:
            raise ConfigError(f"minimum mapping unit must be 0 or more hectares, got {self.mmu!r}")
        if self.mask not in MASK_MODES:
            raise ConfigError(f"mask must be one of {', '.join(MASK_MODES)}, got {self.mask!r}")
        if not isinstance(self.keep_masked, bool):
            raise ConfigError(f"keep_masked must be True or False, got {self.keep_masked!r}")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)} (or True/False), got {self.resume!r}")

    @classmethod
    def default_batch_size(cls, device_type: str, patch_size: int) -> int:
        """Patches per forward pass when ``batch_size`` is 0: GPU_BATCH_SIZE (at least 8) patches' worth of
        pixels of PATCH_SIZE on an accelerator; on the CPU as many pixels as CPU_BATCH_SIZE patches of
        PATCH_SIZE, between 2 and CPU_BATCH_SIZE patches.

        In pixels on the CPU too: a CPU gains nothing from large batches, and a dense network's
        activations grow with them (the 256² cloud U-Net at 16 patches peaked at 1.9 GB, 2.2 × its
        import baseline; at 4, 1.4 GB)."""
        if device_type == "cpu":
            return min(cls.CPU_BATCH_SIZE, max(2, cls.CPU_BATCH_SIZE * cls.PATCH_SIZE**2 // patch_size**2))
        return max(8, cls.GPU_BATCH_SIZE * cls.PATCH_SIZE**2 // patch_size**2)

    def with_(self, **changes: object) -> "EngineConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
