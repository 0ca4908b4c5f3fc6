"""The model zoo: the official BigEarthNet v2 (reBEN) Sentinel-2 models by name, downloaded
from the Hugging Face Hub on first use, verified and cached.

Everything about the network and the cache is huggingface_hub's (``hf_hub_download``: its
cache layout, revisions, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``, proxies from the
environment, resumed transfers). This module only adds the catalogue of names, the check of
each file against the hash the Hub published for it, and folders copied by hand onto machines
without internet (:func:`import_folder`). A model found here then runs as an ordinary
BigEarthNet v2 folder (:mod:`.ben_v2`): downloading adds nothing to how it is run.

A model in the cache is used without asking the Hub anything (the zoo's repositories are
versioned releases; ``s2seg models --download`` checks the Hub again). ``NAME@REVISION`` pins a
branch, tag or commit.

Light to import (no torch, no huggingface_hub): the model lists of the CLI and QGIS use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import Cancelled, ModelError
from ..nomenclature import BIGEARTHNET19_NAMES
from . import ben_v2
from .card import ModelCard

#: Hugging Face organisation of the BigEarthNet v2.0 (reBEN) models (BIFOLD, TU Berlin).
ORGANISATION = "BIFOLD-BigEarthNetv2-0"
#: What a checkpoint folder holds, in download order (the small config first: it fixes the commit).
FILES = (ben_v2.CONFIG_FILE, ben_v2.WEIGHTS_FILE)
#: Name prefix of the zoo's models: ``ben-resnet50-s2`` is the current version, ``ben-resnet50-s2-v0.1.1`` a legacy one.
NAME_PREFIX = "ben-"
#: Where ``import_folder`` keeps folders copied by hand (default ``~/.cache/s2seg/models``).
MODEL_DIR_ENV = "S2SEG_MODEL_DIR"
#: Written beside an imported folder's files: where it came from and each file's sha256.
IMPORT_RECORD = "s2seg-import.json"
#: The branch a name without ``@REVISION`` follows.
DEFAULT_REVISION = "main"

#: timm architecture → display name and approximate download size in MB. The sizes are estimates,
#: not measured on the Hub: the architecture's parameter and buffer count with 10 input channels and
#: 19 classes (timm 1.0) × 4 bytes (float32 safetensors), rounded; see docs/models.md.
ARCHITECTURES: dict[str, tuple[str, int | None]] = {
    "resnet50": ("ResNet-50", 95),
    "resnet101": ("ResNet-101", 171),
    "convnextv2_base": ("ConvNeXt V2 Base", 351),
    "vit_base_patch8_224": ("ViT-B/8", 343),
    "mobilevit_s": ("MobileViT-S", 20),
    "mixer_b16_224": ("MLP-Mixer B/16", 237),
    "convmixer_768_32": ("ConvMixer-768/32", 83),
}
#: Versions published per architecture: v0.2.0 (current) and the legacy v0.1.1 (other band order).
VERSIONS = tuple(ben_v2.S2_BAND_ORDER)


@dataclass(frozen=True)
class ZooEntry:
    """One downloadable model: a Hub repository ``{architecture}-s2-{version}``."""

    name: str
    architecture: str
    version: str
    title: str
    #: approximate download size in MB (None: unknown until first download)
    approx_mb: int | None = None
    organisation: str = ORGANISATION

    @property
    def repo_id(self) -> str:
        return f"{self.organisation}/{self.architecture}-s2-{self.version}"

    @property
    def size_text(self) -> str:
        return f"{self.approx_mb} MB" if self.approx_mb else "size unknown until first download"

    @property
    def choice(self) -> str:
        """How the QGIS model list shows it: "BigEarthNet v2 ResNet-50 — download 95 MB"."""
        size = f"download {self.approx_mb} MB" if self.approx_mb else "download, size unknown"
        return f"{self.title} — {size}"

    def expected_config(self) -> dict[str, Any]:
        """What its ``config.json`` must say (:class:`.ben_v2.BenV2Config` fields)."""
        return {"architecture": self.architecture, "channels": ben_v2.S2_CHANNELS, "classes": len(BIGEARTHNET19_NAMES),
                "image_size": ben_v2.DEFAULT_IMAGE_SIZE, "version": self.version}


def _entries() -> dict[str, ZooEntry]:
    entries = {}
    for arch, (label, mb) in ARCHITECTURES.items():
        for version in VERSIONS:
            legacy = version != ben_v2.DEFAULT_VERSION
            name = f"{NAME_PREFIX}{arch}-s2" + (f"-{version}" if legacy else "")
            title = f"BigEarthNet v2 {label}" + (f" ({version})" if legacy else "")
            entries[name] = ZooEntry(name, arch, version, title, mb)
    return entries


#: The zoo's models by name.
CATALOGUE: dict[str, ZooEntry] = _entries()

_SENTINEL1 = re.compile(rf"^(?:{NAME_PREFIX}|{re.escape(ORGANISATION)}/)[\w.]+-(?P<modality>s1|all)(?:-v[\d.]+)?$",
                        re.IGNORECASE)
_MODALITY = {"s1": "Sentinel-1 (VV/VH backscatter)", "all": "Sentinel-1 and Sentinel-2 (VV/VH plus 10 bands)"}


# --- names ---------------------------------------------------------------------------------------
def lookup(spec: str) -> tuple[ZooEntry, str | None] | None:
    """``(entry, revision)`` for ``NAME``, ``NAME@REVISION`` or a catalogue repository id
    (``BIFOLD-BigEarthNetv2-0/resnet50-s2-v0.2.0``); None when ``spec`` is not a zoo model."""
    name, at, revision = str(spec).partition("@")
    entry = CATALOGUE.get(name) or next((e for e in CATALOGUE.values() if e.repo_id == name), None)
    if entry is None:
        return None
    if at and not revision.strip():
        raise ModelError(f"model {spec!r}: no revision after '@' (a branch, tag or commit of {entry.repo_id})")
    return entry, revision.strip() or None


def refuse_sentinel1(spec: str) -> None:
    """ModelError with the reason when ``spec`` names a BigEarthNet v2 Sentinel-1 (-s1-) or S1+S2 (-all-) model."""
    match = _SENTINEL1.match(str(spec).partition("@")[0])
    if match:
        modality = match.group("modality").lower()
        raise ModelError(
            f"model {spec!r} is a BigEarthNet v2 {modality} model: it takes {_MODALITY[modality]} input, and a "
            f"Sentinel-2 tile has no Sentinel-1 bands; use a Sentinel-2 model such as "
            f"{NAME_PREFIX}resnet50-s2 (see the model list)"
        )


def name_for_choice(text: str) -> str:
    """The model name of a QGIS list entry (:attr:`ZooEntry.choice`); other text unchanged."""
    return next((e.name for e in CATALOGUE.values() if e.choice == text), text)


# --- where things are ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSettings:
    """The Hub settings of this call, read from the environment now: huggingface_hub reads its own
    once, when first imported, and QGIS (proxy) or a test may set them later. None = its default."""

    endpoint: str | None
    cache_dir: Path | None
    offline: bool
    model_dir: Path

    @classmethod
    def from_env(cls) -> "HubSettings":
        env = os.environ
        cache = env.get("HF_HUB_CACHE") or (str(Path(env["HF_HOME"]) / "hub") if env.get("HF_HOME") else None)
        model_dir = env.get(MODEL_DIR_ENV) or str(Path.home() / ".cache" / "s2seg" / "models")
        return cls(endpoint=env.get("HF_ENDPOINT") or None, cache_dir=Path(cache) if cache else None,
                   offline=env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"),
                   model_dir=Path(model_dir).expanduser())

    @property
    def endpoint_text(self) -> str:
        return self.endpoint or "https://huggingface.co"


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"the BigEarthNet v2 models by name need the huggingface_hub package ({exc}); it is "
                         "installed with timm, which these models need too") from None


def cached_folder(entry: ZooEntry, revision: str | None = None, settings: HubSettings | None = None) -> Path | None:
    """The Hugging Face cache's snapshot folder holding both files of ``revision``, or None."""
    _require_hub()
    from huggingface_hub import try_to_load_from_cache

    settings = settings or HubSettings.from_env()
    found = [try_to_load_from_cache(entry.repo_id, name, cache_dir=settings.cache_dir,
                                    revision=revision or DEFAULT_REVISION) for name in FILES]
    if not all(isinstance(path, str) for path in found):
        return None
    folders = {Path(path).parent for path in found}
    return folders.pop() if len(folders) == 1 else None


def imported_folder(entry: ZooEntry, settings: HubSettings | None = None) -> Path | None:
    """The folder :func:`import_folder` made for ``entry``, or None."""
    folder = (settings or HubSettings.from_env()).model_dir / entry.name
    return folder if all((folder / name).is_file() for name in FILES + (IMPORT_RECORD,)) else None


def state(entry: ZooEntry, settings: HubSettings | None = None) -> tuple[str, int | None]:
    """``("cached" | "imported" | "not downloaded", bytes on disk or None)`` for the model list."""
    settings = settings or HubSettings.from_env()
    for label, folder in (("cached", cached_folder(entry, None, settings)), ("imported", imported_folder(entry, settings))):
        if folder is not None:
            return label, sum((folder / name).stat().st_size for name in FILES)
    return "not downloaded", None


class ModelNotAvailable(ModelError):
    """A zoo model that is not on this machine and cannot be downloaded now (offline, Hub unreachable).
    The front ends add how to download or import it in their own words (keyed on this type)."""


def how_to_get(entry: ZooEntry) -> str:
    """The sentence that says how to get a model that is not on this machine (front-end neutral)."""
    return (f"download {entry.name} once where the Hub can be reached (it is cached), or copy a downloaded "
            f"{entry.repo_id} folder ({' + '.join(FILES)}) to this machine and register it as {entry.name}")


# --- downloading ---------------------------------------------------------------------------------
#: ``progress(file name, bytes done, bytes in all or None)``
Progress = Callable[[str, int, "int | None"], None]


def _bar_class(entry: ZooEntry, name: str, progress: Progress | None, cancel: Callable[[], bool] | None) -> type:
    """A tqdm stand-in for huggingface_hub that reports to ``progress`` and stops when ``cancel()`` says so."""

    class Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, desc: str = "", **kwargs: Any):
            self.total, self.n, self.desc = total, initial, desc

        def update(self, n: int = 1) -> None:
            # Raised inside huggingface_hub's transfer loop: it removes its temporary file on the way out.
            if cancel is not None and cancel():
                raise Cancelled(f"download of {entry.name} cancelled; nothing of it was kept in the cache")
            self.n += n
            if progress is not None:
                progress(name, self.n, self.total)

        def close(self) -> None:
            pass

        def __enter__(self) -> "Bar":
            return self

        def __exit__(self, *exc: Any) -> bool:
            return False

    return Bar


def download(entry: ZooEntry, revision: str | None = None, *, progress: Progress | None = None,
             cancel: Callable[[], bool] | None = None, settings: HubSettings | None = None) -> Path:
    """Fetch (or refresh) both files of ``revision`` into the Hugging Face cache through
    huggingface_hub, verify them and return their snapshot folder."""
    _require_hub()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    settings = settings or HubSettings.from_env()
    wanted = revision or DEFAULT_REVISION
    if settings.offline:
        raise ModelNotAvailable(f"model {entry.name} ({entry.repo_id}, revision {wanted}) is not on this machine and "
                         f"HF_HUB_OFFLINE is set, so it cannot be downloaded: {how_to_get(entry)}")
    if cancel is not None and cancel():
        raise Cancelled(f"download of {entry.name} cancelled before it started")

    def fetch(name: str, revision: str) -> Path:
        bar = _bar_class(entry, name, progress, cancel) if progress is not None or cancel is not None else None
        return Path(hf_hub_download(entry.repo_id, name, revision=revision, repo_type="model", tqdm_class=bar,
                                    cache_dir=settings.cache_dir, endpoint=settings.endpoint))

    try:
        config = fetch(FILES[0], wanted)
        # The weights of the very commit the config came from, even if the branch moves meanwhile.
        for name in FILES[1:]:
            fetch(name, config.parent.name)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        # The Hub answered: no such repository or revision (or a private one without HF_TOKEN).
        raise ModelError(f"cannot download model {entry.name} ({entry.repo_id}, revision {wanted}) from "
                         f"{settings.endpoint_text}: {_first_line(exc)}") from None
    except EntryNotFoundError as exc:
        if not isinstance(exc, LocalEntryNotFoundError):
            raise ModelError(f"{entry.repo_id} (revision {wanted}) on {settings.endpoint_text} has no "
                             f"{' or '.join(FILES)}: it is not a BigEarthNet v2 checkpoint") from None
        # huggingface_hub could not reach the Hub and has no copy: say why it could not.
        raise ModelNotAvailable(f"cannot download model {entry.name} ({entry.repo_id}, revision {wanted}) from "
                                f"{settings.endpoint_text}: {_first_line(exc.__cause__ or exc)}; "
                                f"{how_to_get(entry)}") from None
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError) as exc:
        raise ModelNotAvailable(f"cannot download model {entry.name} ({entry.repo_id}, revision {wanted}) from "
                                f"{settings.endpoint_text}: {_first_line(exc)}; {how_to_get(entry)}") from None
    except Exception as exc:
        # httpx2 transport errors (proxy, TLS) that huggingface_hub lets through
        if type(exc).__module__.split(".")[0] not in ("httpx2", "httpx", "httpcore"):
            raise
        raise ModelNotAvailable(f"cannot reach {settings.endpoint_text} to download model {entry.name}: "
                                f"{type(exc).__name__}: {exc}; {how_to_get(entry)}") from None
    folder = config.parent
    verify_snapshot(folder)
    return folder


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- verification ----------------------------------------------------------------------------------
def file_digests(path: Path) -> tuple[str, str]:
    """``(sha256, git blob sha1)`` of a file, read once: the Hub names an LFS file by the first and a
    plain git file by the second."""
    sha256, git = hashlib.sha256(), hashlib.sha1()
    git.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            sha256.update(block)
            git.update(block)
    return sha256.hexdigest(), git.hexdigest()


def _published_hash(path: Path) -> str | None:
    """The hash the Hub gave for a snapshot file: the name of the blob its link points to
    (``snapshots/<commit>/f`` → ``../../blobs/<etag>``); None where the cache holds copies, not links."""
    if not path.is_symlink():
        return None
    name = Path(os.readlink(path)).name
    return name if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name) else None


def verify_snapshot(folder: Path) -> dict[str, str]:
    """Each file's sha256, after checking it against the hash the Hub published; a file that does not
    match is removed from the cache (the next run downloads it again) and refused."""
    digests = {}
    for name in FILES:
        path = folder / name
        expected = _published_hash(path)
        sha256, git = file_digests(path)
        if expected is not None and expected not in (sha256, git):
            kind = "sha256" if len(expected) == 64 else "git sha1"
            actual = sha256 if len(expected) == 64 else git
            _remove_cached(path)
            raise ModelError(f"{path}: {kind} is {actual} but the Hub published {expected}; the file is corrupt and "
                             "was removed from the cache: download it again")
        digests[name] = sha256
    return digests


def _remove_cached(link: Path) -> None:
    targets = [link.parent / os.readlink(link), Path(os.path.realpath(link))]
    for path in (link, *targets):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def verify_imported(folder: Path) -> dict[str, Any]:
    """An imported folder's record, after checking each file against the sha256 recorded at import."""
    from .jsonfile import read_json_object

    record = read_json_object(folder / IMPORT_RECORD, "s2seg import record")
    recorded = record.get("sha256") if isinstance(record.get("sha256"), dict) else {}
    for name in FILES:
        sha256, _ = file_digests(folder / name)
        if recorded.get(name) != sha256:
            raise ModelError(f"{folder / name}: sha256 is {sha256} but {folder / IMPORT_RECORD} recorded "
                             f"{recorded.get(name)!r} at import; the file changed since: import the folder again")
    return record


# --- importing -------------------------------------------------------------------------------------
def import_folder(source: str | Path, name: str | None = None, settings: HubSettings | None = None) -> Path:
    """Copy a checkpoint folder (``config.json`` + ``model.safetensors``, e.g. downloaded on another
    machine) to the model folder as the zoo model ``name`` (derived from its config when there is one
    match), after checking it against the catalogue. Returns the new folder."""
    settings = settings or HubSettings.from_env()
    source = Path(source).expanduser().resolve()
    for file in FILES:
        if not (source / file).is_file():
            raise ModelError(f"cannot import {source}: it has no {file} (expected a BigEarthNet v2 folder with "
                             f"{' + '.join(FILES)})")
    config = ben_v2.read_config(source)
    entry = _entry_for(config, source, name)
    expected = entry.expected_config()
    if config.version_source == "default":  # neither config.json nor the folder name says: the entry decides
        del expected["version"]
    ben_v2.require_config(config, expected, f"the catalogue entry {entry.name!r} ({entry.repo_id})")
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    target = settings.model_dir / entry.name
    # Copy beside the target, then rename: a half-copied folder is never taken for a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=settings.model_dir))
    try:
        for file in FILES:
            shutil.copyfile(source / file, staging / file)
        record = {"name": entry.name, "repo": entry.repo_id, "source": str(source),
                  "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "sha256": {file: file_digests(staging / file)[0] for file in FILES}}
        (staging / IMPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _entry_for(config: ben_v2.BenV2Config, source: Path, name: str | None) -> ZooEntry:
    if name is not None:
        refuse_sentinel1(name)
        if name not in CATALOGUE:
            raise ModelError(f"unknown zoo model {name!r}; known: {', '.join(CATALOGUE)}")
        return CATALOGUE[name]
    matches = [e for e in CATALOGUE.values() if e.architecture == config.architecture]
    if config.version_source != "default":  # else config.json and the folder name are silent about it
        matches = [e for e in matches if e.version == config.version]
    if len(matches) != 1:
        found = ", ".join(e.name for e in matches) or "none"
        raise ModelError(f"cannot tell which zoo model {source} is (architecture {config.architecture!r}; "
                         f"candidates: {found}): give its name")
    return matches[0]


# --- the card --------------------------------------------------------------------------------------
def ensure(entry: ZooEntry, revision: str | None = None, *, progress: Progress | None = None,
           cancel: Callable[[], bool] | None = None, settings: HubSettings | None = None) -> tuple[Path, dict[str, Any]]:
    """The model's folder, downloading it when no copy is on this machine, and its provenance
    (repository, revision, commit, each file's sha256) for the report."""
    settings = settings or HubSettings.from_env()
    provenance: dict[str, Any] = {"repo": entry.repo_id, "revision": revision or DEFAULT_REVISION}
    folder = cached_folder(entry, revision, settings)
    if folder is None and revision is None:
        imported = imported_folder(entry, settings)
        if imported is not None:
            record = verify_imported(imported)
            return imported, {**provenance, "commit": None, "imported_from": record.get("source"),
                              "sha256": record["sha256"]}
    if folder is None:
        folder = download(entry, revision, progress=progress, cancel=cancel, settings=settings)
    return folder, {**provenance, "commit": folder.name, "sha256": verify_snapshot(folder)}


def card(entry: ZooEntry, revision: str | None = None, *, progress: Progress | None = None,
         cancel: Callable[[], bool] | None = None, settings: HubSettings | None = None) -> ModelCard:
    """The card of a zoo model (downloaded when needed): the folder's own card, named after the
    entry, with the provenance in ``extra["hub"]``; a config.json that disagrees with the entry is refused."""
    settings = settings or HubSettings.from_env()
    folder, provenance = ensure(entry, revision, progress=progress, cancel=cancel, settings=settings)
    config = ben_v2.read_config(folder)
    ben_v2.require_config(config, entry.expected_config(), f"the catalogue entry {entry.name!r} ({entry.repo_id})")
    base = ben_v2.card_from_folder(folder)
    return replace(base, name=entry.name, source=f"{settings.endpoint_text}/{entry.repo_id}",
                   description=f"{entry.title}: {base.description}", extra={**base.extra, "hub": provenance})


def resolve(spec: str) -> ModelCard | None:
    """The card of a zoo model spec (``NAME[@REVISION]``), or None when ``spec`` is not one."""
    found = lookup(spec)
    if found is None:
        return None
    return card(*found)
