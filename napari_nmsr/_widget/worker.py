"""The registration in a napari ``thread_worker`` (a generator worker).

The engine's :func:`~napari_nmsr.core.register.register_iter` yields at every
optimisation step; the worker forwards each event to the main thread, and
``worker.quit()`` is honoured at the next yield, i.e. within one step.
Nothing here touches layers: the panel connects ``yielded`` to its handlers.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Callable

from napari.qt.threading import create_worker

from napari_nmsr.core.errors import NMSRError
from napari_nmsr.core.register import Progress, RegistrationConfig, ScaleDone, register_iter

if TYPE_CHECKING:
    import numpy as np
    from napari.qt.threading import GeneratorWorker

__all__ = ["registration_events", "start_registration_worker", "stop_worker", "surface_runtime_errors"]


def surface_runtime_errors(what: str):
    """Decorator for worker generators: a bare ``RuntimeError`` becomes ``NMSRError``.

    napari's worker takes a RuntimeError for a deleted Qt object, only warns,
    and never emits ``finished``: the panel would stay on "Running ..." for
    ever. Torch raises plain RuntimeErrors, so every worker generator here
    goes through this.
    """

    def decorate(generator_function):
        @functools.wraps(generator_function)
        def wrapper(*args, **kwargs):
            try:
                return (yield from generator_function(*args, **kwargs))
            except RuntimeError as exc:
                raise NMSRError(f"{what} stopped: {exc}") from exc

        return wrapper

    return decorate


@surface_runtime_errors("the registration")
def registration_events(frames: "np.ndarray", mask: "np.ndarray | None", config: RegistrationConfig):
    """Generator run in the worker thread: the time estimate, then the engine's events, unchanged.

    torch gets every core but one (and none that another process holds), so the viewer stays responsive.
    """
    from napari_nmsr.core.estimate import estimate_seconds
    from napari_nmsr.core.threads import use_threads

    use_threads(None, for_gui=True)
    yield estimate_seconds(frames, mask, config)
    yield from register_iter(frames, mask, config)


@surface_runtime_errors("the time estimate")
def estimate_events(frames: "np.ndarray", mask: "np.ndarray | None", config: RegistrationConfig):
    """Generator run in a worker thread: one Estimate (about a second of calibration)."""
    from napari_nmsr.core.estimate import estimate_seconds
    from napari_nmsr.core.threads import use_threads

    use_threads(None, for_gui=True)
    yield estimate_seconds(frames, mask, config)


def start_registration_worker(
    frames: "np.ndarray",
    mask: "np.ndarray | None",
    config: RegistrationConfig,
    *,
    on_progress: Callable[[Progress], None],
    on_scale: Callable[[ScaleDone], None],
    on_error: Callable[[BaseException], None],
    on_finished: Callable[[], None],
    on_estimate: Callable[[object], None] | None = None,
) -> "GeneratorWorker":
    """Create, connect and start the worker; returns it (keep it to cancel).

    Errors are delivered to ``on_error`` (never re-raised in the event loop);
    ``on_finished`` runs after success, cancellation and errors alike.
    """
    worker = create_worker(registration_events, frames, mask, config, _start_thread=False, _ignore_errors=True)

    def dispatch(event):
        if isinstance(event, ScaleDone):
            on_scale(event)
        elif isinstance(event, Progress):
            on_progress(event)
        elif on_estimate is not None:
            on_estimate(event)

    worker.yielded.connect(dispatch)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finished)
    worker.start()
    return worker


def stop_worker(worker: "GeneratorWorker | None", timeout_s: float = 5.0) -> bool:
    """Ask ``worker`` to stop and wait (without the event loop) until its thread returns.

    Returns True when the thread is no longer running. Used by Cancel and when
    the viewer closes, so that no thread outlives the window.
    """
    if worker is None:
        return True
    try:
        worker.quit()
    except RuntimeError:  # the underlying QObject is already gone
        return True
    deadline = time.perf_counter() + timeout_s
    while worker.is_running and time.perf_counter() < deadline:
        time.sleep(0.005)
    return not worker.is_running
