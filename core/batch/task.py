"""The task that runs one tile on a Dask worker (or in the caller's process), and what it needs there."""
from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from ..config import EngineConfig, usable_cores
from ..errors import Cancelled, S2SegError
from .results import CANCELLED, FAILED, OK, SKIPPED, ProgressCallback, TileJob, TileOutcome

#: Seconds between two in-tile progress events sent by a worker (per tile).
PROGRESS_INTERVAL_S = 0.5

_MODEL_CACHE: dict[tuple, Any] = {}
_MODEL_LOCK = threading.Lock()
_MODEL_CACHE_SIZE = 2


def _cached_model(model: Any, device_name: str) -> Any:
    """The model loaded once per worker process and device (keyed by name or path + mtime)."""
    from ..models import load_model, pick_device, resolve_card

    if not isinstance(model, (str, Path)):
        return model
    device = pick_device(device_name)
    path = Path(str(model)).expanduser()
    stamp = path.stat().st_mtime_ns if path.exists() else None
    key = (str(model), stamp, str(device))
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:  # a long-lived worker of a shared cluster
                _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
            _MODEL_CACHE[key] = load_model(resolve_card(model), device)
        return _MODEL_CACHE[key]


#: Settings that change what a tile's products hold: a finished tile made with other values is not complete.
PRODUCT_SETTINGS = ("mask", "keep_masked", "mask_model", "aoi")


def completed_report(output_dir: Path, model_name: str | None = None, write_probs: bool | None = None,
                     config: EngineConfig | None = None) -> dict | None:
    """The engine report of a finished tile in ``output_dir``, or None when the tile is not complete.

    Complete means: the report exists (written last, atomically), every product it lists
    exists, and it was made with the same model and probability setting as asked now, and with the
    same :data:`PRODUCT_SETTINGS` as ``config`` when given.
    """
    if not output_dir.is_dir():
        return None
    for report_path in sorted(output_dir.glob("*_report.json")):
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        products = report.get("products") or {}
        if not products or not all(Path(p).exists() for p in products.values()):
            continue
        if model_name is not None and (report.get("model") or {}).get("name") != model_name:
            continue
        made = report.get("config") or {}
        if write_probs is not None and bool(made.get("write_probs")) != write_probs:
            continue
        if config is not None and any(not _same_setting(name, made.get(name), getattr(config, name))
                                      for name in PRODUCT_SETTINGS):
            continue
        return report
    return None


def _same_setting(name: str, made: Any, asked: Any) -> bool:
    """Was a setting of a finished run (from its report) the one asked now? The report holds the mask
    source ``auto`` resolved to, which is the one ``auto`` resolves to again on the same tile."""
    return made == asked or (name == "mask" and asked == "auto")


def _leftovers(output_dir: Path) -> bool:
    """Temporary products or a journal of an interrupted run?"""
    if not output_dir.is_dir():
        return False
    return any(".part" in p.name or "journal" in p.name.lower() for p in output_dir.iterdir())


def _worker_context() -> tuple[Any, int]:
    """The distributed worker running this task (None outside one) and its task slots."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return worker, max(1, int(getattr(worker.state, "nthreads", 1) or 1))
    except Exception:  # noqa: BLE001 - called outside a worker (tests, serial use)
        return None, 1


def run_tile(job: TileJob, model: Any = "builtin", config: EngineConfig | None = None, torch_threads: int = 0,
             force: bool = False, topic: str | None = None, cancel_event: str | None = None,
             host_slots: dict[str, int] | None = None, cancel: threading.Event | None = None,
             progress: ProgressCallback | None = None) -> TileOutcome:
    """Segment one tile into ``job.output_dir``; never raises for a tile's own error (returns ``failed``).

    On a Dask worker it sets torch's threads: ``torch_threads``, or else the host's cores divided
    by the task slots of all workers on this host (``host_slots``: host → slots, as the client
    saw them; this worker's own slots when its host is not listed), so that tiles running side
    by side on one machine share its cores instead of oversubscribing them. It sends throttled
    progress events under ``topic`` and watches the distributed Event ``cancel_event``. Outside
    a worker ``progress``/``cancel`` are used directly.
    """
    started = time.perf_counter()
    config = config or EngineConfig()
    cancel = cancel or threading.Event()
    worker, slots = _worker_context()
    base = dict(name=job.name, source=str(job.source), output_dir=str(job.output_dir),
                worker=str(getattr(worker, "address", "") or ""))

    def emit(payload: dict) -> None:
        if worker is not None and topic:
            try:
                worker.log_event(topic, {"tile": job.name, **payload})
            except Exception:  # noqa: BLE001 - progress is best effort
                pass

    stop_watch = threading.Event()
    try:
        import torch

        if worker is not None and _own_process():
            host = _host_of(str(getattr(worker, "address", "")))
            threads = torch_threads or max(1, usable_cores() // max(slots, (host_slots or {}).get(host, 0)))
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        if cancel_event and worker is not None:
            _watch_cancel(cancel_event, cancel, stop_watch)

        from ..models import resolve_card
        from ..pipeline import segment

        card = resolve_card(model)
        report = None if force else completed_report(job.output_dir, card.name, config.write_probs, config)
        if report is not None:
            return TileOutcome(**base, status=SKIPPED, seconds=time.perf_counter() - started,
                               device=str(report.get("device", "")), message="already complete")
        # The tile's folder belongs to the batch and the tile is not complete: replace what is there, except
        # an interrupted run's journaled chunks, which the engine's resume (mode "auto" unless the caller
        # chose otherwise) continues from when tile, model and settings match.
        tile_config = config.with_(overwrite=True)
        leftovers = _leftovers(job.output_dir)
        emit({"event": "start", "leftovers": leftovers})
        last = [0.0]

        def on_progress(fraction: float, message: str) -> None:
            if progress is not None:
                progress(fraction, message)
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last[0] = now
                emit({"event": "progress", "fraction": float(fraction), "message": str(message)})

        def on_log(message: str) -> None:
            emit({"event": "log", "message": str(message)})

        loaded = _cached_model(model, config.device)
        result = segment(job.source, job.output_dir, model=loaded, config=tile_config, progress=on_progress,
                         cancel=cancel, log=on_log)
        resumed = int(getattr(result, "resumed_chunks", 0) or 0)
        return TileOutcome(**base, status=OK, seconds=time.perf_counter() - started, device=result.device,
                           resumed=resumed > 0, message=f"resumed {resumed} of {result.n_chunks} chunk(s)" if resumed else "",
                           result=result)
    except Cancelled as exc:
        return TileOutcome(**base, status=CANCELLED, seconds=time.perf_counter() - started, message=str(exc))
    except S2SegError as exc:
        return TileOutcome(**base, status=FAILED, seconds=time.perf_counter() - started, message=str(exc),
                           error_type=type(exc).__name__)
    except Exception as exc:  # noqa: BLE001 - one tile's bug must not stop the batch; keep where it happened
        return TileOutcome(**base, status=FAILED, seconds=time.perf_counter() - started, **unexpected_error(exc))
    finally:
        stop_watch.set()


def _host_of(address: str) -> str:
    """``tcp://10.0.0.5:40123`` → ``10.0.0.5``."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def _prepare_worker(model: Any, torch_threads: int = 0) -> str:
    """Import the engine (torch …), set torch's threads and resolve the model: the card's name.

    Run on every local worker before the tiles (so tile times measure tiles, and a bad model
    is one error instead of one per tile), and on one worker of an existing cluster (which
    also proves its workers can import s2seg). The client itself never imports torch.
    """
    import torch

    from .. import pipeline  # noqa: F401 - importing is half the point
    from ..models import resolve_card

    if torch_threads and _own_process() and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return resolve_card(model).name


def _own_process() -> bool:
    """Does this worker run in a process of its own (a Dask nanny's child)? Only then may a tile set
    torch's thread count: it is process-wide (MKL's pool whatever thread sets it), so a worker thread
    of a ``processes=False`` cluster would change how the client process itself computes."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _watch_cancel(name: str, cancel: threading.Event, stop: threading.Event) -> None:
    """Set ``cancel`` when the client sets the distributed Event ``name`` (polled, so engine threads stay free)."""
    from distributed import Event, get_client

    client = get_client()
    event = Event(name, client=client)

    def watch() -> None:
        while not stop.is_set() and not cancel.is_set():
            try:
                if event.is_set():
                    cancel.set()
                    return
            except Exception:  # noqa: BLE001 - scheduler gone: the worker is being shut down anyway
                return
            stop.wait(0.25)

    threading.Thread(target=watch, name="s2seg-batch-cancel", daemon=True).start()


def unexpected_error(exc: BaseException) -> dict[str, str]:
    """A programming error as outcome fields: one line naming the innermost ``file:line``, and the full
    formatted traceback (for the summary and the command line)."""
    where = traceback.extract_tb(exc.__traceback__)[-1:]
    at = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return {"message": f"{type(exc).__name__}: {exc}{at}", "error_type": type(exc).__name__,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
