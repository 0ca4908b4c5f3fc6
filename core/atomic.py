"""Write a file so that readers see either the old content or the new, never a half-written one.

One helper for every small file the engine, the batch runner and the plugin finish
(reports, journals, previews, summaries). The temporary file is created with
:func:`tempfile.mkstemp` in the target's folder: ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW``
where the platform has it) under a random name, so a symlink planted in the output
folder is never written through; :func:`os.replace` then swaps the name itself (a link at
the final name is replaced, its target is untouched).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

#: Suffix of the temporary files made here; a folder listing shows them as unfinished.
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh, empty temporary file beside ``path`` for a writer that needs a file name
    (GDAL, Pillow); on success it replaces ``path``, on any exception it is removed.

    ``durable``: fsync the file before the rename and the folder after it, so the new
    content survives a power cut (journals); plain reports do not need it.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def write_atomic(path: str | Path, data: str | bytes, *, durable: bool = False, encoding: str = "utf-8") -> None:
    """Replace ``path`` by ``data`` (text is encoded with ``encoding``) in one step."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    with atomic_path(path, durable=durable) as tmp:
        # The temporary file exists and is ours: open it without following links or truncating another file.
        fd = os.open(tmp, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as f:
            f.write(payload)


@contextlib.contextmanager
def exclusive_file(folder: str | Path, prefix: str) -> Iterator[Path]:
    """A new empty file in ``folder`` that did not exist before (never a link), removed on exit:
    a probe that the folder is writable which cannot clobber anything."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=folder)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def fsync_folder(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
