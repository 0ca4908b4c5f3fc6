"""One resume object per run: the lock, the journal, and the keep-or-delete decision (DESIGN §7).

:class:`Resume` is a context manager. On entry it takes the journal's lock (one run per
tile and folder) and reads an earlier journal: :attr:`Resume.done` are the chunks an
interrupted run of the same tile, model and settings finished. :meth:`Resume.open_writer`
reopens their ``.part`` products (or creates fresh ones), :meth:`Resume.start` writes
the new journal, :meth:`Resume.record` appends finished chunks, and :meth:`Resume.finish`
deletes journal and lock once the run's last file (the report) is written.

On any exception the exit decides, in one place: when at least one chunk is journaled the
``.part`` products and the journal stay (a re-run resumes; after the last chunk it only
finishes: overviews, renames, preview, report), else everything the run wrote is removed.
The exception says which, once: an :class:`.errors.S2SegError` gets it appended to its
message; any other exception (a bug) is re-raised as itself with it as a note (``add_note``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import OutputError, OutputsExist, ResumeImpossible, S2SegError
from .grid import GridPlan, block_size, journal_points
from .journal import Journal, JournalMismatch, differences, digest, journal_path, lock, read_journal, release, unlock
from .models.card import ModelCard
from .writer import PARTIAL_SUFFIX, ProductWriter, partial_path, product_paths, release_frames

LogCallback = Callable[[str], None]


class Resume:
    """The resumable state of one run of a tile into a folder; see the module docstring."""

    def __init__(self, output_dir: Path, tile_name: str, fields: dict[str, Any], grid: GridPlan, card: ModelCard,
                 mode: str, log: LogCallback):
        self.output_dir, self.fields, self.grid, self.card, self.mode, self.log = output_dir, fields, grid, card, mode, log
        self.path = journal_path(output_dir, tile_name)
        self.key = digest(fields)
        self.done: dict[int, np.ndarray] = {}
        self.writer: ProductWriter | None = None
        self.journal: Journal | None = None
        #: chunks listed in the journal on disk (carried over or recorded by this run)
        self.journaled = 0
        self._lock_fd: int | None = None
        self._locked = False

    # --- entry: lock and read ----------------------------------------------------------
    def __enter__(self) -> "Resume":
        self._lock_fd = lock(self.path)  # held until the journal is deleted or the run stops
        self._locked = True
        try:
            self.done = self._resumable()
        except BaseException:
            self._unlock(remove=not self.path.exists())
            raise
        return self

    @property
    def complete(self) -> bool:
        """Did the interrupted run finish every chunk (only its finishing steps are left)?"""
        return len(self.done) == len(self.grid.chunks)

    def _resumable(self) -> dict[int, np.ndarray]:
        """Chunks (index → statistics) an earlier run of the same tile, model and settings journaled.

        Never returns the chunks of a journal that does not match: ``auto`` logs why and
        starts over, ``require`` raises, ``never`` ignores any journal.
        """
        path, grid = self.path, self.grid

        def nothing(reason: str) -> dict[int, np.ndarray]:
            if self.mode == "require":
                raise ResumeImpossible(f"cannot resume in {path.parent}: {reason}")
            return {}

        if self.mode == "never":
            if path.exists():
                self.log(f"discarding the partial results of an earlier run ({path.name}): resume is off")
            return {}
        if not path.exists():
            return nothing(f"there is no journal {path.name} of an interrupted run")
        try:
            state = read_journal(path)
            if state.key != self.key:
                changed = differences(state.fields, self.fields)
                raise JournalMismatch(f"{path.name} was written for another tile, model or settings"
                                      + (f" ({'; '.join(changed)})" if changed else ""))
            if state.n_chunks != len(grid.chunks):
                raise JournalMismatch(f"{path.name} counts {state.n_chunks} chunks, this run {len(grid.chunks)}")
            bad = [i for i, stats in state.done.items() if stats.shape != (3, self.card.num_classes)]
            if bad:
                raise JournalMismatch(f"{path.name}: statistics of chunk {bad[0]} do not fit {self.card.num_classes} classes")
            if state.done and (sorted(state.done) != list(range(len(state.done)))
                               or len(state.done) - 1 not in journal_points(grid, block_size(grid.chunk_size))):
                raise JournalMismatch(f"{path.name} lists chunks that this run could not have journaled")
        except JournalMismatch as exc:
            if self.mode == "require":
                raise ResumeImpossible(f"cannot resume in {path.parent}: {exc}") from None
            self.log(f"not resuming: {exc}; starting over")
            return {}
        if not state.done:
            return nothing(f"the journal {path.name} holds no finished chunk")
        return state.done

    def check_outputs(self, paths: Iterable[Path], overwrite: bool) -> None:
        """Refuse finished products of another run. The products of the run being resumed are not in
        the way: a run that finished every chunk may have renamed some before it stopped."""
        existing = [p for p in paths if p.exists()]
        if existing and not overwrite and not (self.done and self.complete):
            raise OutputsExist(f"outputs already exist ({', '.join(p.name for p in existing)}) in {self.output_dir}")

    # --- the products and the journal ----------------------------------------------------
    def open_writer(self, make: Callable[[bool], ProductWriter], restore: Callable[[ProductWriter, dict], None],
                    reset: Callable[[], None]) -> ProductWriter:
        """Reopen the partial products of :attr:`done` (``make(True)``) and hand them to ``restore``,
        else delete stale partial files and create fresh products (``make(False)``)."""
        if self.done:
            writer = None
            try:
                if self.complete:
                    self._unfinish()
                writer = make(True)
                restore(writer, self.done)
                self.log(f"resuming: {len(self.done)} of {len(self.grid.chunks)} chunk(s) already written by an interrupted run")
                self.writer = writer
                return writer
            except OutputError as exc:
                if writer is not None:
                    writer.close()
                if self.mode == "require":
                    raise ResumeImpossible(f"cannot resume in {self.output_dir}: {exc}") from None
                self.log(f"not resuming: {exc}; starting over")
                self.done = {}
                reset()
        writer = make(False)  # deletes any stale partial file first (ProductWriter)
        self.writer = writer
        return writer

    def _unfinish(self) -> None:
        """A run that finished every chunk and then stopped while renaming: give the products it
        renamed their partial names back, so that the finishing steps run over all of them again."""
        for path in self._product_paths():
            for suffix in ("", ".aux.xml"):
                final, partial = Path(str(path) + suffix), Path(str(partial_path(path)) + suffix)
                if final.is_file() and not final.is_symlink() and not partial.exists():
                    os.replace(final, partial)

    def _product_paths(self) -> list[Path]:
        settings = self.fields["settings"]
        return list(product_paths(self.output_dir, self.fields["tile"]["name"], settings["write_probs"],
                                  settings.get("products")).values())

    def start(self) -> None:
        """Write the journal of this run (atomically), carrying the resumed chunks over."""
        self.journal = Journal.start(self.path, self.key, len(self.grid.chunks), self.fields, keep=self.done.items())
        self.journaled = len(self.done)

    def record(self, chunks: list[tuple[int, np.ndarray]]) -> None:
        """Journal chunks whose products are durable on disk."""
        self.journal.record(chunks)
        self.journaled += len(chunks)

    def finish(self) -> None:
        """The run is complete (its report written): delete the journal, then the lock."""
        self.journal.delete()
        self.journal = None
        self._unlock(remove=True)

    # --- exit: keep or delete --------------------------------------------------------------
    def __exit__(self, kind, error, tb) -> bool:
        if error is None:
            if self._locked:  # finish() not called: an early return, nothing is running
                self._unlock(remove=not self.path.exists())
            return False
        release_frames(error)  # a stage's frames may still reference an open dataset
        note = self._stop()
        if isinstance(error, S2SegError):
            noted = _with_note(error, note)
            if noted is not error:
                raise noted from error.__cause__ or error
            return False
        if note:
            error.add_note(note[2:])
        return False

    def _stop(self) -> str:
        """Keep the partial products and the journal when at least one chunk is journaled (it is on
        disk and never written again), else delete what this run wrote. Returns what was done."""
        if self.journal is None:  # stopped before this run's journal was written
            if self.writer is not None:
                if self.done:
                    self.writer.close()  # the old journal is intact: its chunks are still resumable
                else:
                    self.writer.abort()
            self._unlock(remove=not self.path.exists())
            return ""
        if self.journaled:
            if self.writer is not None:
                self.writer.close()  # errors here concern chunks that are not journaled
            self.journal.close()
            self._unlock(remove=False)
            if not self.path.exists():  # say only what is true now
                return "; partial outputs were removed"
            return (f"; {self.journaled} of {len(self.grid.chunks)} chunk(s) are saved in {self.output_dir} "
                    f"(*{PARTIAL_SUFFIX}, {self.path.name}): run again with the same settings to resume")
        if self.writer is not None:
            self.writer.abort()
        self.journal.delete()
        self.journal = None
        self._unlock(remove=True)
        return "; partial outputs were removed"

    def _unlock(self, remove: bool) -> None:
        """Release the lock once; ``remove``: delete the lock file too (no journal stays beside it)."""
        if not self._locked:
            return
        self._locked = False
        fd, self._lock_fd = self._lock_fd, None
        if remove:
            release(self.path, fd)
        else:
            unlock(fd)


def _with_note(error: S2SegError, note: str) -> S2SegError:
    """The same error with what happened to the partial outputs appended to its message."""
    if not note:
        return error
    try:
        noted = type(error)(f"{error}{note}")
    except Exception:  # noqa: BLE001 - an exception type with another constructor: keep it as is
        error.add_note(note[2:])
        return error
    return noted
