"""Register many sequences on Dask distributed, from one laptop to a cluster.

:func:`register_many` submits one task per sequence; each task runs the same
engine as ``nmsr register`` (:func:`napari_nmsr.core.batch.register_file`)
with its own torch thread count and writes its result next to the others.
Without a client it starts a ``distributed.LocalCluster`` of processes on
127.0.0.1 sized to the machine (N workers x K torch threads <= cores, or one
worker per GPU); with ``scheduler=``/``scheduler_file=`` or ``client=`` it uses
an existing cluster (``dask scheduler`` + ``dask worker``, dask-jobqueue,
Kubernetes) and starts nothing. Scheduling, dead-worker detection and the
dashboard are Dask's; this module adds the retry-once-elsewhere policy and
the summary.

Needs the ``batch`` extra (``pip install "napari-nmsr[batch]"``). Workers must
see the input, mask and output folders (a shared filesystem on a cluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Callable

from .core.batch import BatchItem, find_inputs, plan_items, register_file, resumable_row, write_summary
from .core.errors import NMSRError

__all__ = ["register_many", "local_cluster_size", "SUMMARY_NAME"]

SUMMARY_NAME = "summary.csv"


def _require_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise NMSRError("batch registration needs Dask distributed: pip install \"napari-nmsr[batch]\"") from exc


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_cluster_size(cores: int, n_workers: int | None = None, threads: int | None = None,
                       gpus: int = 0) -> tuple[int, int]:
    """(workers, torch threads per task) for a local cluster.

    With GPUs: one worker per GPU, the cores shared among them. Without: by
    default one single-threaded worker per core (independent sequences scale
    better across processes than one registration across threads); given
    one of N and K, the other fills the cores.
    """
    if gpus:
        n = min(n_workers or gpus, gpus)
        return n, threads or max(1, cores // n)
    if n_workers is None and threads is None:
        return cores, 1
    if n_workers is None:
        return max(1, cores // threads), threads
    return n_workers, threads or max(1, cores // n_workers)


def _local_gpus(device: str) -> list[str]:
    """CUDA device ids the local workers may use (empty: CPU workers)."""
    if device not in ("auto", "cuda"):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[: torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]


def _start_local_cluster(n_workers, threads, gpus, dashboard_address):
    """A cluster of worker processes on 127.0.0.1; each worker runs one task at a time."""
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    # A worker that dies under a task makes it fail at once (Dask's default is
    # to re-run it up to 3 times); register_many then retries it once elsewhere.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        if not gpus:
            return LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                scheduler_port=0, dashboard_address=dashboard_address, silence_logs=logging.ERROR,
            )
        # One worker per GPU, each seeing only its own device.
        scheduler = {"cls": Scheduler, "options": {
            "host": "127.0.0.1", "port": 0, "dashboard": dashboard_address is not None,
            "dashboard_address": dashboard_address}}
        workers = {f"gpu{gid}": {"cls": Nanny, "options": {
            "host": "127.0.0.1", "nthreads": 1, "resources": {"GPU": 1},
            "env": {"CUDA_VISIBLE_DEVICES": gid}, "dashboard": False}} for gid in gpus[:n_workers]}
        return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.ERROR)


@contextlib.contextmanager
def _client(client, scheduler, scheduler_file, n_workers, threads, device, dashboard_address, log):
    """Yield (client, torch threads per task or None = let each worker decide)."""
    if client is not None:
        yield client, threads
        return
    from distributed import Client

    if scheduler or scheduler_file:
        try:
            c = Client(scheduler, scheduler_file=scheduler_file, timeout="20s")
        except OSError as exc:  # includes TimeoutError
            raise ValueError(f"cannot connect to the Dask scheduler {scheduler or scheduler_file}: {exc}") from exc
        try:
            yield c, threads
        finally:
            c.close()
        return
    gpus = _local_gpus(device)
    if device == "cuda" and not gpus:
        raise ValueError("--device cuda, but this computer has no CUDA GPU (use auto or cpu, or --scheduler)")
    n, k = local_cluster_size(_cores(), n_workers, threads, gpus=len(gpus))
    cluster = _start_local_cluster(n, k, gpus, dashboard_address)
    kind = f"{n} GPU workers" if gpus else f"{n} workers"
    log(f"local Dask cluster: {kind} x {k} torch threads")
    try:
        with Client(cluster) as c:
            yield c, k
    finally:
        cluster.close()


def _dashboard(client) -> str:
    """The dashboard URL ('' when the scheduler serves none)."""
    import importlib.util

    try:
        link = client.dashboard_link or ""
    except (KeyError, AttributeError):
        return ""
    if link and importlib.util.find_spec("bokeh") is None:
        link += " (its pages need bokeh where the scheduler runs: pip install bokeh)"
    return link


def _gpu_resources(client, device: str, log) -> dict | None:
    """The task annotation: ``{"GPU": 1}`` when tasks should run on GPU workers.

    ``--device cuda`` always asks for one (workers started with
    ``--resources GPU=1`` take them); ``auto`` asks when some worker offers a GPU.
    """
    if device not in ("cuda", "auto"):
        return None
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    has_gpu = any((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers.values())
    if device == "cuda" and not has_gpu:
        log("no worker offers the GPU resource yet: the tasks wait for workers started with --resources GPU=1")
    return {"GPU": 1} if device == "cuda" or has_gpu else None


def _run_task(item: BatchItem, config, threads: int | None) -> dict:
    """The task: one sequence on this worker (threads None: the cores this worker may use)."""
    from distributed import get_worker

    worker = get_worker()
    if not threads:
        threads = max(1, _cores() // max(1, int(getattr(worker.state, "nthreads", 1))))
    row = register_file(item, config, threads=threads)
    row["worker"] = worker.address
    return row


def _lost_row(item: BatchItem, exc: BaseException) -> dict:
    """A row for a task that never returned (its worker died or the task was lost)."""
    last = getattr(exc, "last_worker", None)
    worker = getattr(last, "address", "") or ""
    reason = "its worker died" if type(exc).__name__ == "KilledWorker" else f"{type(exc).__name__}: {exc}"
    return {"input": str(item.input), "status": "failed", "error": " ".join(f"task lost: {reason}".split()),
            "worker": worker}


def register_many(
    paths,
    client=None,
    *,
    out_dir,
    masks=None,
    config=None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    resume: bool = False,
    analyze: bool = False,
    retries: int = 1,
    dashboard_address: str | None = "127.0.0.1:8787",
    progress: Callable[[dict, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Register every sequence in ``paths`` (files, folders, globs); return the summary rows.

    Writes ``out_dir/<stem>.nmsr.npz`` per input (and ``<stem>.analysis.json``
    with ``analyze``) and ``out_dir/summary.csv``, rewritten after every
    finished input. A failed input (corrupt file, out of memory, dead worker)
    is run again up to ``retries`` times, on another worker when there is
    one; the others are not affected. With ``resume``, inputs whose outputs exist and
    load are ``skipped`` and left untouched.

    ``client``: an existing ``distributed.Client`` (kept open). Otherwise
    ``scheduler`` (address) / ``scheduler_file`` connect to a running cluster,
    or a local one of ``n_workers`` is started and closed at the end.
    ``threads_per_worker``: torch threads per task. ``progress(row, done,
    total)`` is called per finished input; ``log(text)`` for messages such as
    the dashboard link. Raises ``ValueError``/``FileNotFoundError`` for bad
    arguments before anything runs.
    """
    from .core.register import RegistrationConfig

    _require_distributed()
    config = config or RegistrationConfig()
    log = log or (lambda text: None)
    if scheduler and scheduler_file:
        raise ValueError("give either a scheduler address or a scheduler file, not both")
    if scheduler_file and not Path(scheduler_file).is_file():  # Client would wait for it forever
        raise FileNotFoundError(f"scheduler file '{scheduler_file}' does not exist (is the scheduler running?)")
    if (client is not None or scheduler or scheduler_file) and n_workers:
        raise ValueError("the number of workers is set by the existing cluster; drop --workers")
    out_dir = Path(out_dir)
    exclude = [out_dir] + ([masks] if masks else [])
    inputs = find_inputs(paths, exclude=exclude)
    if not inputs:
        raise FileNotFoundError("no readable sequence among the inputs: " + ", ".join(str(p) for p in paths))
    if masks is not None and not Path(masks).is_dir():
        raise FileNotFoundError(f"mask folder '{masks}' does not exist")
    items = plan_items(inputs, out_dir, masks_dir=masks, analyze=analyze)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / SUMMARY_NAME

    rows: dict[int, dict] = {}
    todo: list[int] = []
    for i, item in enumerate(items):
        row = resumable_row(item) if resume else None
        if row is None and item.mask_error:
            row = {"input": str(item.input), "status": "failed", "error": item.mask_error, "attempts": 0}
        if row is None:
            todo.append(i)
        else:
            rows[i] = row

    def record(i: int, row: dict) -> None:
        rows[i] = row
        write_summary(summary, [rows[j] for j in sorted(rows)])
        if progress is not None:
            progress(row, len(rows), len(items))

    write_summary(summary, [rows[j] for j in sorted(rows)])
    if progress is not None:
        for done, i in enumerate(sorted(rows), start=1):
            progress(rows[i], done, len(items))
    if todo:
        with _client(client, scheduler, scheduler_file, n_workers, threads_per_worker, config.device,
                     dashboard_address, log) as (c, threads):
            link = _dashboard(c)
            local = client is None and not (scheduler or scheduler_file)
            if link and not (local and dashboard_address is None):
                log(f"Dask dashboard: {link}")
            _run(c, items, todo, config, threads, _gpu_resources(c, config.device, log), retries, record)
    return [rows[i] for i in range(len(items))]


def _run(client, items, todo, config, threads, resources, retries, record) -> None:
    from distributed import as_completed

    def submit(i: int, attempt: int, avoid: str = ""):
        # A retry is restricted to the other workers (strictly: Dask's work
        # stealing ignores loose restrictions); with no other worker, anywhere.
        others = [w for w in client.scheduler_info(n_workers=-1).get("workers", {}) if w != avoid] if avoid else []
        fut = client.submit(
            _run_task, items[i], config, threads, key=f"nmsr-{items[i].stem}-{attempt}-{uuid.uuid4().hex[:8]}",
            resources=resources, workers=others or None, pure=False,
        )
        pending[fut.key] = (i, attempt, avoid, fut)
        return fut

    pending: dict[str, tuple[int, int, str, object]] = {}
    queue = as_completed([submit(i, 1) for i in todo])
    try:
        for fut in queue:
            i, attempt, previous, _ = pending.pop(fut.key)
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - the worker died, or the task was lost
                row = _lost_row(items[i], exc)
            finally:
                fut.release()
            row["attempts"] = attempt
            row["retried_from"] = previous
            if row["status"] == "failed" and attempt <= retries:
                queue.add(submit(i, attempt + 1, avoid=row.get("worker", "")))
                continue
            record(i, row)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel([entry[-1] for entry in pending.values()], force=True)
        raise
