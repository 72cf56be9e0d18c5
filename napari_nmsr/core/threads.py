"""How many CPU threads torch uses, and how they wait.

Measured on a 2-core machine with other processes busy: a 2-thread torch run
whose OpenMP threads spin while waiting (the default ACTIVE policy) ran ~10x
slower than with ``OMP_WAIT_POLICY=PASSIVE`` (the time estimate of the
vortex sample: 4740 s against 460 s), because each spinning thread holds a
core another process needs. ``passive_openmp()`` sets PASSIVE unless the user
chose a policy; it only takes effect if it runs before torch starts its
OpenMP runtime, so :mod:`napari_nmsr` calls it on import.

``default_threads(for_gui=True)`` leaves one core to the napari viewer.
"""

from __future__ import annotations

import os

__all__ = ["passive_openmp", "available_cores", "default_threads", "use_threads"]


def passive_openmp() -> None:
    """Make idle OpenMP threads sleep rather than spin (unless OMP_WAIT_POLICY is already set)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (CPU affinity / container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def default_threads(for_gui: bool = False) -> int:
    """torch threads for a run: every available core, less one for the viewer in the GUI."""
    cores = available_cores()
    return max(1, cores - 1) if for_gui else cores


def use_threads(n: int | None) -> int:
    """Set torch's CPU threads (None: :func:`default_threads`); returns the number set."""
    import torch

    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
