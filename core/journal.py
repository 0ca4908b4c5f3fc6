"""The journal of finished chunks that lets an interrupted run resume (DESIGN §7).

It lives beside the ``.part`` products as ``<tile>.s2seg-journal``: JSON lines,
the first a header, then one line per chunk written *and flushed to disk*::

    {"s2seg_journal": 1, "key": "<sha256>", "n_chunks": 25, "fields": {...}}
    {"chunk": 0, "stats": [[count…], [Σ maxprob…], [low-gap count…]]}
    …

* The key is a SHA-256 of everything that decides the output pixels (see
  :func:`run_fields`): the tile (band files with size and modification time,
  offsets, grid), the model card and the size/mtime of its weights, the s2seg
  version and the pixel-changing settings (chunk size, write_probs, compress, the products written).
  A journal with another key is never used; :func:`differences` says why.
* Lines are appended and ``fsync``\\ ed; a line torn by a crash is ignored when
  the journal is read (that chunk is simply computed again).
* The per-chunk class statistics are stored so that the final statistics of a
  resumed run are exactly those of an uninterrupted one (summed in chunk order).
* An advisory lock (POSIX ``flock``) keeps a second process from writing the
  same partial products concurrently; it goes away with the process, even on
  ``kill -9``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import __version__
from .atomic import write_atomic
from .errors import OutputError
from .urls import redact

FORMAT = 1
SUFFIX = ".s2seg-journal"


def journal_path(output_dir: Path, tile_name: str) -> Path:
    return Path(output_dir) / f"{tile_name}{SUFFIX}"


# ------------------------------------------------------------------ what the key is made of
def file_signature(path: str | Path, container: Path | None = None) -> list[Any]:
    """``[resolved path, size, mtime_ns]`` of a file; a ``/vsizip/`` member is represented by its archive.

    The path is resolved (absolute, links followed) so that the same tile typed as a relative path,
    an absolute one or through a link gives the same key."""
    text = str(path)
    if text.startswith("/vsi") and container is not None:
        target = Path(container)
        text = text.replace(str(container), os.path.realpath(container), 1)
    else:
        target = Path(text)
        text = os.path.realpath(text)
    try:
        st = target.stat()
    except OSError:
        return [text, None, None]
    return [text, st.st_size, st.st_mtime_ns]


def weights_signature(path: str) -> list[Any]:
    """Signature of a model's weights: the file, or every file directly inside the folder."""
    if not path:
        return []
    p = Path(path)
    if p.is_dir():
        return [file_signature(f) for f in sorted(p.iterdir()) if f.is_file()]
    return [file_signature(p)]


def _public(signature: list[Any]) -> list[Any]:
    """A signature without the secrets of a signed URL (its query string): the journal is a file on
    disk, and a re-signed item is the same tile."""
    return [redact(signature[0]), *signature[1:]]


def run_fields(bandset, card, *, chunk_size: int, write_probs: bool, compress: str, block: int,
               products: Sequence[str] | None = None, aoi: dict[str, Any] | None = None,
               mask: str = "none", keep_masked: bool = False, mask_card=None,
               snow_test: dict[str, float] | None = None) -> dict[str, Any]:
    """Everything that changes the output pixels or the chunk numbering, as plain JSON values.

    Not included, on purpose: batch size, device, read threads, queue size and the
    preview size (they change speed, or nothing that is stored). A run interrupted on
    the GPU may therefore be resumed on the CPU; its chunks then differ from an
    uninterrupted GPU run by float rounding only.
    """
    t = bandset.transform
    fields = {
        "s2seg": __version__,
        "tile": {
            "name": bandset.name, "width": bandset.width, "height": bandset.height,
            "crs": bandset.crs.to_string(), "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "bands": {b: _public(file_signature(bandset.files[b].path, bandset.source)) for b in card.bands},
            "offsets": {b: bandset.offset(b) for b in card.bands},
        },
        "model": {"card": _resolved_card(card), "weights": weights_signature(card.path)},
        "settings": {"chunk_size": chunk_size, "write_probs": write_probs, "compress": compress, "block": block,
                     "products": list(products) if products is not None else None},
    }
    stored = {b: [f.index, f.scale, f.nodata, f.dtype] for b in card.bands
              if not (f := bandset.files[b]).stored_as_dn or f.index != 1}
    if stored:  # a stack's band order and scale change the pixels (absent for products, whose key stays as it was)
        fields["tile"]["stored"] = stored
    if aoi is not None:  # only then: a whole-tile run's key is the same as before areas of interest existed
        fields["aoi"] = aoi
    if mask != "none":  # likewise: an unmasked run's key is the same as before masks existed
        inputs = ([bandset.layers["SCL"].path] if mask == "scl" else [])
        fields["mask"] = {"source": mask, "keep_masked": keep_masked,
                          "inputs": [_public(file_signature(p, bandset.source)) for p in inputs]}
        if mask_card is not None:  # the cloud model and its weights, like the land-cover model's
            fields["mask"]["model"] = {"card": _resolved_card(mask_card), "weights": weights_signature(mask_card.path)}
            fields["mask"]["bands"] = {b: _public(file_signature(bandset.files[b].path, bandset.source))
                                       for b in mask_card.bands}
        if snow_test is not None:  # the spectral snow test beside the cloud model (its thresholds)
            fields["mask"]["snow_test"] = dict(snow_test)
    return fields


def _resolved_card(card) -> dict[str, Any]:
    """The card as plain values, its model path resolved (see :func:`file_signature`)."""
    values = card.to_dict()
    if values.get("path"):
        values["path"] = os.path.realpath(values["path"])
    return values


def digest(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "", limit: int = 4) -> list[str]:
    """Human-readable ``where: old → new`` lines for the first few differing leaves, each value in full
    (two paths often differ only at their end)."""
    out: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        elif _plain(a) != _plain(b):
            out.append(f"{where}: {_text(a)} → {_text(b)}")

    walk(old, new, prefix)
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _text(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


# ------------------------------------------------------------------ the journal file
@dataclass
class JournalState:
    """What an existing journal holds: its fields and the statistics of each finished chunk."""

    fields: dict[str, Any]
    key: str
    n_chunks: int
    done: dict[int, np.ndarray]


class JournalMismatch(Exception):
    """An existing journal that cannot be used; the message says why."""


def read_journal(path: Path) -> JournalState:
    """Parse a journal; JournalMismatch when it is unreadable. A torn last line is ignored."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise JournalMismatch(f"cannot read {path.name}: {exc.strerror or exc}") from None
    try:
        header = json.loads(lines[0])
        if header.get("s2seg_journal") != FORMAT:
            raise JournalMismatch(f"{path.name} has journal format {header.get('s2seg_journal')!r}, expected {FORMAT}")
        key, n_chunks, fields = header["key"], int(header["n_chunks"]), header["fields"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise JournalMismatch(f"{path.name} has no valid header") from None
    done: dict[int, np.ndarray] = {}
    body = lines[1:]
    for number, line in enumerate(body):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            index = int(entry["chunk"])
            stats = np.asarray(entry["stats"], dtype=np.float64)
        except (ValueError, KeyError, TypeError):
            if all(not rest.strip() for rest in body[number + 1:]):
                break  # torn by a crash while appending: that chunk is done again
            raise JournalMismatch(f"{path.name}: line {number + 2} is damaged") from None
        if not 0 <= index < n_chunks:
            raise JournalMismatch(f"{path.name}: chunk {index} out of range (0…{n_chunks - 1})")
        done[index] = stats
    return JournalState(fields, key, n_chunks, done)


class Journal:
    """An open journal: appends one fsync'ed line per finished chunk. The lock beside it is not
    the journal's: :class:`.resume.Resume` takes and releases it."""

    def __init__(self, path: Path, file):
        self.path = path
        self._file = file

    @classmethod
    def start(cls, path: Path, key: str, n_chunks: int, fields: dict[str, Any],
              keep: Iterable[tuple[int, np.ndarray]] = ()) -> "Journal":
        """Write a fresh journal (atomically: a new temporary file, then a rename), carrying ``keep`` chunks over."""
        lines = [json.dumps({"s2seg_journal": FORMAT, "key": key, "n_chunks": n_chunks, "fields": fields}, default=str)]
        lines += [_entry(i, stats) for i, stats in sorted(keep, key=lambda kv: kv[0])]
        try:
            write_atomic(path, "\n".join(lines) + "\n", durable=True)
            file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise _journal_error(path, exc) from None
        return cls(path, file)

    def record(self, chunks: Iterable[tuple[int, np.ndarray]]) -> None:
        """Append ``(index, statistics)`` of chunks whose products are already flushed, durably."""
        try:
            self._file.write("".join(_entry(index, stats) + "\n" for index, stats in chunks))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise _journal_error(self.path, exc) from None

    def close(self) -> None:
        """Close and keep the journal (a resumable stop)."""
        try:
            self._file.close()
        except OSError:
            pass

    def delete(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _journal_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}: free some space or choose another output folder")
    return OutputError(f"cannot write the resume journal {path}: {exc.strerror or exc}")


def _entry(index: int, stats: np.ndarray) -> str:
    # repr of a float64 round-trips exactly through JSON, so resumed statistics are bit-identical.
    return json.dumps({"chunk": int(index), "stats": np.asarray(stats, dtype=np.float64).tolist()})


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def lock(path: Path) -> int | None:
    """Take the advisory lock of a journal; OutputError when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent runs on one folder are not guarded
        return None
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create {lock_path(path)}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"another s2seg run is writing {path.name[: -len(SUFFIX)]} into {path.parent} "
                          f"(its journal is locked); wait for it to finish or choose another output folder") from None
    return fd


def release(path: Path, fd: int | None) -> None:
    """Remove the lock file (while still holding it), then release the lock."""
    try:
        lock_path(path).unlink(missing_ok=True)
    except OSError:
        pass
    unlock(fd)


def unlock(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.close(fd)  # closing the descriptor releases the flock
    except OSError:
        pass
