"""Checks of ``nmsr`` arguments made before any work, shared by every subcommand.

Everything a subcommand would only find out after minutes of registration
(an output path that is a folder, a folder that cannot be written, a mask
with NaN values, a damaged weights file) is checked here first, and every
failure is one :class:`ArgumentError` line. Only the standard library is
imported at module level, so that Ctrl-C during start-up is caught by
:func:`run_quietly` rather than printed as a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .core.errors import NMSRError

__all__ = [
    "ArgumentError",
    "OneLineParser",
    "positive_int",
    "steps_per_scale",
    "output_file",
    "check_outputs_distinct",
    "read_mask_argument",
    "read_weights_argument",
    "run_quietly",
    "deferred_interrupt",
]


class ArgumentError(NMSRError, ValueError):
    """A command-line argument that cannot work (checked before any work starts)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's error style: one line on stderr, exit status 2 (``--help`` unchanged)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: RegistrationConfig fields the command line sets with their own options, not with --set.
OWN_OPTIONS = {"variant": "--variant", "device": "--device", "steps": "--steps", "scales": "--scales",
               "seed": "--seed", "weights": "--weights"}


def split_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value): VALUE is a Python literal (``0``, ``0.05``,
    ``(50,50,400,400)``, ``False`` or ``false``, ``'bending'``), anything else a string.
    ValueError when there is no ``=`` or no key."""
    import ast

    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):  # as a shell user writes it; literal_eval knows True/False only
        return key, value.lower() == "true"
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def config_setting(text: str) -> tuple[str, object]:
    """argparse ``type=`` for ``--set KEY=VALUE``: one RegistrationConfig field
    (:func:`split_setting`); the field's own checks run when the config is built."""
    import dataclasses

    from .core.register import RegistrationConfig

    try:
        key, value = split_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if key in OWN_OPTIONS:
        raise argparse.ArgumentTypeError(f"{key} has its own option: use {OWN_OPTIONS[key]}")
    names = [f.name for f in dataclasses.fields(RegistrationConfig) if f.name not in OWN_OPTIONS]
    if key not in names:
        raise argparse.ArgumentTypeError(f"unknown setting {key!r}; choose from {', '.join(names)}")
    return key, value


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts that must be >= 1 (steps, threads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def steps_per_scale(text: str) -> int | tuple[int, ...]:
    """argparse ``type=`` for ``--steps``: one count for every scale (>= 1), or one per scale, coarse
    to fine, comma-separated (each >= 0, 0 skipping that scale's U-Net; at least one scale trains)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        return positive_int(parts[0])
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not whole numbers separated by commas") from None
    if min(values) < 0 or max(values) < 1:
        raise argparse.ArgumentTypeError(f"each scale's steps must be 0 or more, and some scale must train; got {text!r}")
    return values


def output_file(path, what: str, suffix: str | None = None) -> Path:
    """The file ``path`` will be written as, refused now if it cannot be.

    ``suffix``: appended when missing (as ``RegistrationResult.save`` does
    for ``.npz``), so the check is made on the name really written. Refused:
    an existing folder, an existing file that cannot be replaced, a location
    under an existing file, or a folder (the nearest existing one, since
    missing folders are created) that this user cannot write to.
    """
    given = Path(path).expanduser()
    if given.is_dir() or str(path).endswith(("/", os.sep)):
        raise ArgumentError(f"the {what} '{path}' is a folder; give a file name")
    p = given.with_name(given.name + suffix) if suffix and given.suffix != suffix else given
    if p.is_dir():
        raise ArgumentError(f"the {what} '{p}' is a folder; give a file name")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ArgumentError(f"the {what} '{path}' cannot be created: '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArgumentError(f"the {what} '{path}' cannot be written: no permission to write in '{parent}'")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise ArgumentError(f"the {what} '{path}' exists and cannot be replaced (no permission)")
    return p


def check_outputs_distinct(**paths) -> None:
    """Refuse two outputs naming the same file (one would overwrite the other)."""
    seen: dict[Path, str] = {}
    for what, p in paths.items():
        if p is None:
            continue
        key = Path(p).expanduser().resolve()
        if key in seen:
            raise ArgumentError(f"--{seen[key]} and --{what} name the same file '{p}'")
        seen[key] = what


def read_mask_argument(path) -> "object | None":
    """A ``--mask`` file as bool (booleans or 0/1 only; NaN refused), or None."""
    if path is None:
        return None
    from .core.export import load_masks

    return load_masks(path)


def read_weights_argument(path) -> None:
    """Check a ``--weights`` file fully now, not when the first scale starts."""
    if path is None:
        return
    from .core.train import load_weights

    load_weights(path)


def _terminate(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise SystemExit(128 + signum)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C while third-party start-up code runs, then raise it.

    A KeyboardInterrupt raised inside torch's C++ start-up is not an ordinary
    exception: pybind11 may turn it into an abort (SIGABRT, "terminate
    called"), and CPython may kill the process with SIGINT at exit. So during
    the heavy imports SIGINT only records itself, and the interrupt is raised
    in our own code once they are done (a second or two later).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):  # signals unavailable here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def run_quietly(prog: str, command: str, handler: Callable[[], int]) -> int:
    """Run ``handler`` with every expected failure as one line on stderr.

    Project errors, bad values and file-system errors exit 2; Ctrl-C (also
    during start-up imports) exits 130 with one line. SIGTERM becomes
    SystemExit so that temporaries of an atomic write are removed.
    """
    try:
        if hasattr(signal, "SIGTERM"):
            try:
                signal.signal(signal.SIGTERM, _terminate)
            except ValueError:  # not the main thread (e.g. called from a test worker)
                pass
        return handler()
    except KeyboardInterrupt:
        print(f"{prog} {command}: interrupted; nothing written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which has quit: not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (NMSRError, ValueError, OSError, MemoryError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError) and not isinstance(exc, NMSRError):
            text = f"out of memory ({text})"
        elif isinstance(exc, OSError) and not isinstance(exc, NMSRError) and exc.filename is not None and exc.strerror:
            text = f"{exc.strerror}: {exc.filename}"
        print(f"{prog} {command}: error: {text}", file=sys.stderr)
        return 2
