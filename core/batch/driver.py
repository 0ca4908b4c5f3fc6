"""Run a batch: start or reach a Dask cluster, submit one task per tile, follow progress and cancel,
collect the outcomes and write the summaries."""
from __future__ import annotations

import importlib.util
import queue
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from ..config import EngineConfig
from ..errors import OutputError, S2SegError
from .cluster import _SpawnSettings, _start_local_cluster, _workers_ignore_sigint, local_cluster_plan
from .jobs import expand_inputs, plan_jobs
from .results import CANCELLED, FAILED, BatchResult, LogCallback, ProgressCallback, TileJob, TileOutcome
from .summary import write_summary
from .task import _host_of, _prepare_worker, run_tile

#: After a cancel, how long to wait for running tiles to stop before reporting them cancelled anyway.
CANCEL_GRACE_S = 60
#: How long to try reaching a scheduler given by address.
CONNECT_TIMEOUT_S = 20


def run_batch(inputs: Iterable[str | Path], output_root: str | Path, model: Any = "builtin",
              config: EngineConfig | None = None, scheduler: str | None = None, workers: int = 0,
              threads_per_worker: int = 0, force: bool = False, processes: bool = True,
              progress: ProgressCallback | None = None, log: LogCallback | None = None,
              cancel: threading.Event | None = None, on_tile: Callable[[TileOutcome, int, int], None] | None = None,
              worker_python: str | None = None) -> BatchResult:
    """Segment every tile of ``inputs`` into ``output_root/<tile name>/``, one Dask task per tile.

    ``scheduler``: address of a running Dask scheduler (``tcp://host:8786``); None starts a
    ``LocalCluster`` sized by :func:`local_cluster_plan` (``processes=False`` runs its workers as
    threads of this process, sharing one torch thread pool). ``force`` re-runs complete tiles.
    ``progress(fraction, message)`` and ``log(message)`` are called on the calling thread;
    ``on_tile(outcome, done, total)`` as each tile finishes. Setting ``cancel`` cancels queued
    tiles and stops running ones within one engine batch. Raises :class:`S2SegError` only for
    problems of the whole batch (no tiles, bad output folder, bad model, unreachable scheduler,
    workers without s2seg).
    """
    started = time.perf_counter()
    config = config or EngineConfig()
    log = log or (lambda message: None)
    progress = progress or (lambda fraction, message: None)
    cancel = cancel or threading.Event()
    output_root = Path(output_root).expanduser()
    jobs = plan_jobs(expand_inputs(inputs), output_root)
    try:
        output_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {output_root}: {exc.strerror or exc}") from None
    model_arg = str(model) if isinstance(model, Path) else model

    import distributed

    run_id = uuid.uuid4().hex[:12]
    topic, event_name = f"s2seg-batch-{run_id}", f"s2seg-batch-cancel-{run_id}"
    cluster = client = None
    torch_threads = threads_per_worker
    # Spawn settings hold for the cluster's whole life: a nanny restarts a dead worker the same way.
    with _SpawnSettings(scheduler is None and processes, worker_python):
        try:
            if scheduler:
                description = f"scheduler {scheduler}"
                try:
                    client = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
                except (OSError, TimeoutError) as exc:
                    raise S2SegError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
                workers_info = client.scheduler_info().get("workers", {})
                log(f"connected to {scheduler}: {len(workers_info)} worker(s), "
                    f"{sum(w.get('nthreads', 0) for w in workers_info.values())} task slot(s)")
                _check_workers(client, model_arg, torch_threads, every=False)
            else:
                plan = local_cluster_plan(len(jobs), config.device, workers, threads_per_worker)
                description = plan.describe()
                torch_threads = plan.threads_per_worker
                log(f"starting a {description} for {len(jobs)} tile(s)")
                t0 = time.perf_counter()
                with _workers_ignore_sigint():
                    cluster = _start_local_cluster(plan, processes)
                    client = distributed.Client(cluster)
                    client.wait_for_workers(plan.workers, timeout=120)
                _check_workers(client, model_arg, torch_threads, every=True)
                log(f"local cluster ready in {time.perf_counter() - t0:.1f} s")
                if importlib.util.find_spec("bokeh") is not None:
                    log(f"Dask dashboard: {client.dashboard_link}")
            outcomes = _drive(client, jobs, model_arg, config, torch_threads, force, topic, event_name,
                              progress, log, cancel, on_tile)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
    result = BatchResult(outcomes=outcomes, seconds=time.perf_counter() - started, cluster=description)
    try:
        result.summary_json, result.summary_html = write_summary(result, output_root)
    except OSError as exc:
        log(f"warning: cannot write the batch summary in {output_root}: {exc.strerror or exc}")
    return result


def _check_workers(client: Any, model: Any, torch_threads: int, every: bool) -> None:
    """:func:`_prepare_worker` on every worker (``every``) or on one; its errors become the batch's."""
    try:
        if every:
            # In parallel on all workers, in their event loops (nothing else runs there yet).
            client.run(_prepare_worker, model, torch_threads)
        else:
            client.submit(_prepare_worker, model, pure=False).result()
    except S2SegError:
        raise
    except ImportError as exc:
        raise S2SegError(f"the Dask workers cannot import the s2seg engine ({type(exc).__name__}: {exc}); "
                         "install s2seg and its requirements in the workers' environment") from None


def _drive(client: Any, jobs: list[TileJob], model: Any, config: EngineConfig, torch_threads: int, force: bool,
           topic: str, event_name: str, progress: ProgressCallback, log: LogCallback, cancel: threading.Event,
           on_tile: Callable[[TileOutcome, int, int], None] | None) -> list[TileOutcome]:
    """Submit one task per tile and follow them to the end (on the calling thread)."""
    from distributed import Event, as_completed

    host_slots: dict[str, int] = {}
    for address, info in client.scheduler_info().get("workers", {}).items():
        host = _host_of(address)
        host_slots[host] = host_slots.get(host, 0) + int(info.get("nthreads", 1) or 1)
    events: "queue.SimpleQueue[dict]" = queue.SimpleQueue()
    client.subscribe_topic(topic, lambda event: events.put(event[1]))
    stop_event = Event(event_name, client=client)
    futures = {}
    for job in jobs:
        future = client.submit(run_tile, job, model, config, torch_threads, force, topic, event_name, host_slots,
                               key=f"s2seg-tile-{job.name}-{uuid.uuid4().hex[:8]}", pure=False)
        futures[future] = job
    by_name = {job.name: job for job in jobs}
    outcomes: dict[str, TileOutcome] = {}
    running: dict[str, float] = {}
    total = len(jobs)
    cancelling = False
    cancelled_at = 0.0
    last_message = ""

    def report() -> None:
        nonlocal last_message
        fraction = (len(outcomes) + sum(running.values())) / total
        message = f"{len(outcomes)}/{total} tile(s) done, {len(running)} running"
        progress(min(fraction, 1.0), message if message != last_message else "")
        last_message = message

    def drain() -> None:
        changed = False
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                break
            name = event.get("tile")
            if name not in by_name or name in outcomes:
                continue
            kind = event.get("event")
            if kind == "start":
                running[name] = 0.0
                log(f"{name}: started" + (" (found an interrupted run: resuming it if tile, model and settings match)"
                                          if event.get("leftovers") else ""))
            elif kind == "progress":
                running[name] = float(event.get("fraction", 0.0))
            elif kind == "log":
                log(f"{name}: {event.get('message', '')}")
            changed = True
        if changed:
            report()

    try:
        report()
        pending = as_completed(list(futures))
        while not pending.is_empty():
            if cancel.is_set() and not cancelling:
                cancelling = True
                log("cancelling: queued tiles are dropped, running tiles stop within one batch")
                cancelled_at = time.monotonic()
                stop_event.set()
                client.cancel([f for f in futures if futures[f].name not in running and f.status == "pending"])
            if cancelling and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                log(f"{total - len(outcomes)} tile(s) did not stop within {CANCEL_GRACE_S} s of the cancel; giving up on them")
                client.cancel([f for f, job in futures.items() if job.name not in outcomes])
                break
            done = pending.next_batch(block=False)
            if not done:
                drain()
                time.sleep(0.1)
                continue
            drain()
            for future in done:
                job = futures[future]
                outcome = _outcome_of(future, job)
                outcomes[job.name] = outcome
                running.pop(job.name, None)
                if on_tile is not None:
                    on_tile(outcome, len(outcomes), total)
                report()
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:  # noqa: BLE001 - the client may be closing
            pass
    return [outcomes.get(job.name) or TileOutcome(job.name, str(job.source), str(job.output_dir), CANCELLED)
            for job in jobs]


def _outcome_of(future: Any, job: TileJob) -> TileOutcome:
    base = dict(name=job.name, source=str(job.source), output_dir=str(job.output_dir))
    if future.status == "cancelled":
        return TileOutcome(**base, status=CANCELLED, message="cancelled before it started")
    if future.status == "error":
        exc = future.exception()
        # KilledWorker: the worker process died (out of memory, a crash in a native library) several times.
        tb = future.traceback()
        return TileOutcome(**base, status=FAILED, message=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                           traceback="".join(traceback.format_exception(type(exc), exc, tb)) if tb is not None else "")
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - e.g. the result could not be sent back
        return TileOutcome(**base, status=FAILED, message=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                           traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


