"""How many CPU threads torch uses, following the machine's load.

A torch thread that has to share its core with another process slows every
step of the others (each parallel region waits for it). Measured on this
2-core machine, the shared DICOM cine (10x430x600, default preset, ``nmsr
register``):

====================================================  =========  ===========
situation                                             2 threads  load-aware
====================================================  =========  ===========
nothing else running, libgomp's default wait policy    36.0 s     38.8 s   
nothing else running, ``OMP_WAIT_POLICY=PASSIVE``      48.7 s
another process holds a core from the start (PASSIVE)  ~80 s      62.4 s (1 thread)
another process starts 6 s into the run, default       99.7 s
the same with PASSIVE                                  69.9 s
====================================================  =========  ===========

So the default is libgomp's own wait policy (PASSIVE costs a quarter of the
time on an idle machine), and when no thread count is given
(:func:`use_threads` with None) the run starts with the cores other
processes leave idle (:func:`idle_cores`, a 0.2 s look at ``/proc/stat``)
and the engine calls :func:`rebalance` between steps, which every
:data:`REBALANCE_S` seconds re-counts them and moves torch to that many
threads. A given count (``--threads``) is kept as is: results of a seeded
run depend on the thread count in their last digits (and through the
optimisation beyond), so give one for runs that must repeat exactly.
``passive_openmp()`` remains for users who prefer sleeping threads (it only
acts before torch starts). ``for_gui`` leaves one more core to the viewer.
"""

from __future__ import annotations

import os
import time

__all__ = ["passive_openmp", "available_cores", "idle_cores", "default_threads", "use_threads", "rebalance"]

#: Seconds between two looks at the load while torch runs with automatic threads.
REBALANCE_S = 2.0

#: How long :func:`idle_cores` watches the machine (``/proc/stat`` counts in 10 ms ticks).
IDLE_SAMPLE_S = 0.2


def passive_openmp() -> None:
    """Make idle OpenMP threads sleep rather than spin (unless OMP_WAIT_POLICY is already set)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on (CPU affinity / container limits), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(values) < 5:
        return None
    total = sum(values)
    return total - values[3] - values[4], total  # less idle and iowait


def idle_cores(sample_s: float = IDLE_SAMPLE_S) -> float | None:
    """Cores of the machine that no process used over the next ``sample_s`` seconds (None: unknown).

    The caller sleeps meanwhile, so what is busy is busy elsewhere.
    """
    first = _cpu_ticks()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_ticks()
    if second is None or second[1] <= first[1]:
        return None
    busy, total = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (1.0 - busy / total)


def default_threads(for_gui: bool = False, load_aware: bool = False) -> int:
    """torch threads for a run: every available core, less one for the viewer in the GUI.

    ``load_aware``: also no more than the cores other processes leave idle
    (:func:`idle_cores`, rounded), at least one: a thread that has to share
    its core slows every step of the others.
    """
    reserve = 1 if for_gui else 0
    n = max(1, available_cores() - reserve)
    if load_aware and n > 1:
        idle = idle_cores()
        if idle is not None:
            n = _threads_for(idle, reserve)
    return n


def _threads_for(idle: float, reserve: int) -> int:
    """Threads for ``idle`` idle cores: rounded, less ``reserve``, within [1, available cores - reserve]."""
    return max(1, min(available_cores() - reserve, int(idle + 0.5) - reserve))


def use_threads(n: int | None, for_gui: bool = False) -> int:
    """Set torch's CPU threads; returns the number set.

    None: :func:`default_threads` (load-aware), and :func:`rebalance` keeps
    following the load; a number: exactly that many, kept.
    """
    import torch

    if n is None:
        n = default_threads(for_gui=for_gui, load_aware=True)
        _auto.update(on=True, reserve=1 if for_gui else 0, last=None)
    else:
        n = int(n)
        if n < 1:
            raise ValueError(f"threads must be at least 1, got {n}")
        _auto["on"] = False
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_auto: dict = {"on": False, "reserve": 0, "last": None}


def rebalance() -> int | None:
    """Between two steps: with automatic threads, follow the cores other processes hold.

    Cheap when not due (a clock read). Every :data:`REBALANCE_S` seconds it
    counts the machine's busy time since the last look, less this process's
    own CPU time, and sets torch to the cores left (less one for the viewer
    in the GUI), at least one and at most the available cores. Returns the
    new thread count when it changed, else None. Call it from the thread
    that runs torch.
    """
    if not _auto["on"]:
        return None
    now = time.monotonic()
    last = _auto["last"]
    if last is not None and now - last[0] < REBALANCE_S:
        return None
    ticks, own = _cpu_ticks(), time.process_time()
    if ticks is None:
        _auto["on"] = False
        return None
    _auto["last"] = (now, ticks[0], own)
    if last is None:
        return None
    wall = now - last[0]
    busy_s = (ticks[0] - last[1]) / _ticks_per_second()
    elsewhere = max(0.0, busy_s - (own - last[2])) / wall
    want = _threads_for((os.cpu_count() or available_cores()) - elsewhere, _auto["reserve"])
    import torch

    if want == torch.get_num_threads():
        return None
    torch.set_num_threads(want)
    return want


def _ticks_per_second() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 100.0
