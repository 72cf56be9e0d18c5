"""Batch bookkeeping that needs no cluster: which files, where results go,
one sequence's job, and the summary CSV.

The Dask side (``napari_nmsr.batch``) only schedules :func:`register_file`
calls; everything a task does to the disk is here, so it is the same on a
laptop and on a cluster node (which must see the input and output folders:
results are written by the worker that computed them, never shipped back).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MaskError, NMSRError
from .export import atomic_write
from .io import can_read

__all__ = [
    "RESULT_SUFFIX",
    "ANALYSIS_SUFFIX",
    "SUMMARY_COLUMNS",
    "BatchItem",
    "find_inputs",
    "plan_items",
    "register_file",
    "resumable_row",
    "write_summary",
    "read_summary",
]

RESULT_SUFFIX = ".nmsr.npz"
ANALYSIS_SUFFIX = ".analysis.json"
MASK_NAMES = ("{stem}.npy", "{stem}_mask.npy", "{stem}_masks.npy")

#: Columns of ``summary.csv``, one row per input. ``seconds`` is the task's
#: wall time (load + register + write + analyse) on its worker;
#: ``final_mean_cc`` the finest scale's mean CC over frame pairs;
#: ``attempts`` how many times the input was run (2 = retried);
#: ``retried_from`` the worker of the failed first attempt;
#: ``notes`` what the engine decided beyond its plan (``RegistrationResult.notes``, joined by " | ").
SUMMARY_COLUMNS = (
    "input", "status", "error", "seconds", "worker", "result", "frames", "height", "width",
    "final_mean_cc", "attempts", "retried_from", "analysis", "device", "notes",
)


@dataclass(frozen=True)
class BatchItem:
    """One input sequence and the files the batch writes for it."""

    input: Path
    stem: str
    result: Path
    analysis: Path | None
    mask: Path | None
    mask_error: str | None = None


# ----------------------------------------------------------------------------- inputs


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _expand_folder(folder: Path, skip: set[Path]) -> list[Path]:
    """A folder of frame images is one sequence; otherwise every readable
    sequence inside it, recursively (hidden entries, batch outputs skipped)."""
    if can_read(folder):  # a folder that holds frame images
        return [folder]
    found: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or child.resolve() in skip or child.name.endswith(RESULT_SUFFIX):
            continue
        if child.is_dir():
            found.extend(_expand_folder(child, skip))
        elif can_read(child):
            found.append(child)
    return found


def find_inputs(items, *, exclude=()) -> list[Path]:
    """Files, folders and glob patterns -> the sequence paths, in order, once each.

    An explicitly named file is kept even when its format is unknown (it then
    fails as that input's row, not as the batch). A name that does not exist
    and a pattern that matches nothing raise :class:`FileNotFoundError`, so a
    typo stops the batch before it starts. ``exclude``: folders never entered
    (the output and mask folders).
    """
    skip = {Path(p).resolve() for p in exclude}
    out: list[Path] = []
    for item in items:
        text = str(item)
        if not Path(text).expanduser().exists() and _is_glob(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise FileNotFoundError(f"the pattern {text!r} matches no file")
            candidates = [Path(m) for m in matches]
        else:
            p = Path(text).expanduser()
            if not p.exists():
                raise FileNotFoundError(f"input '{p}' does not exist")
            candidates = [p]
        for p in candidates:
            if p.is_dir():
                out.extend(_expand_folder(p, skip))
            elif p.name.endswith(RESULT_SUFFIX) or p.resolve() in skip:
                continue
            elif p.is_file() and (can_read(p) or not _is_glob(text)):
                out.append(p)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _find_mask(masks_dir: Path, stem: str) -> Path | None:
    for pattern in MASK_NAMES:
        candidate = masks_dir / pattern.format(stem=stem)
        if candidate.is_file():
            return candidate
    return None


def plan_items(inputs, out_dir, *, masks_dir=None, analyze: bool = False) -> list[BatchItem]:
    """Name every output; refuse two inputs that would write the same result.

    With ``masks_dir``, the mask of ``<stem>`` is the first of ``<stem>.npy``,
    ``<stem>_mask.npy``, ``<stem>_masks.npy`` there; an input without one gets
    ``mask_error`` (it fails alone: running it unmasked would give numbers
    that are not comparable with the rest of the batch).
    """
    out_dir = Path(out_dir)
    items, owner = [], {}
    for p in inputs:
        p = Path(p)
        stem = _stem(p)
        if stem in owner:
            raise ValueError(f"'{owner[stem]}' and '{p}' would both write {stem}{RESULT_SUFFIX}; rename one of them")
        owner[stem] = p
        mask = mask_error = None
        if masks_dir is not None:
            mask = _find_mask(Path(masks_dir), stem)
            if mask is None:
                names = ", ".join(n.format(stem=stem) for n in MASK_NAMES)
                mask_error = f"no mask for '{stem}' in {masks_dir} (looked for {names})"
        items.append(BatchItem(
            input=p, stem=stem, result=out_dir / f"{stem}{RESULT_SUFFIX}",
            analysis=out_dir / f"{stem}{ANALYSIS_SUFFIX}" if analyze else None,
            mask=mask, mask_error=mask_error,
        ))
    return items


# ----------------------------------------------------------------------------- one sequence


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, NMSRError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _load_mask(path: Path):
    """The same checked reader as `nmsr register --mask` (booleans or 0/1 only, size budget)."""
    from .export import load_masks

    return load_masks(path)


def _result_row(item: BatchItem, result) -> dict:
    s, n, _, h, w = result.fields.shape
    cc = float(np.mean(result.metrics["mean_cc"][-1])) if s else None
    return {"result": str(item.result), "frames": n + 1, "height": h, "width": w,
            "final_mean_cc": cc, "device": result.device, "notes": " | ".join(result.notes)}


def register_file(item: BatchItem, config, *, threads: int | None = None) -> dict:
    """Load, register, write (and analyse) one input; never raises for its data.

    Returns a summary row (keys of :data:`SUMMARY_COLUMNS`, no ``worker`` or
    ``attempts``: the scheduler side adds them). Any failure of this input,
    including out-of-memory, becomes ``status="failed"`` with a one-line
    ``error``, so one bad file never takes a worker or the batch down.
    ``threads``: torch CPU threads for this task (process-wide in torch).
    """
    from .io import load_sequence
    from .register import register

    started = time.perf_counter()
    row = {"input": str(item.input), "status": "failed", "error": ""}
    try:
        if threads:
            from .threads import use_threads

            use_threads(int(threads))
        if item.mask_error:
            raise MaskError(item.mask_error)
        seq = load_sequence(item.input)
        mask = _load_mask(item.mask) if item.mask is not None else None
        result = register(seq.frames, mask, config, frame_interval_s=seq.frame_interval_s,
                          pixel_spacing_mm=seq.pixel_spacing_mm)
        item.result.parent.mkdir(parents=True, exist_ok=True)
        result.save(item.result)
        row.update(_result_row(item, result))
        if item.analysis is not None:
            from .analysis.report import analyze_result, write_json

            write_json(analyze_result(result, mask=mask), item.analysis)
            row["analysis"] = str(item.analysis)
        row["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - the row carries it; the batch goes on
        row["error"] = _one_line(exc)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def resumable_row(item: BatchItem) -> dict | None:
    """A ``skipped`` row when this input's outputs exist and load, else None.

    A result counts when it loads and holds every scale (not a cancelled
    run); with analysis requested, its JSON must exist too.
    """
    from .result import RegistrationResult

    if not item.result.is_file() or (item.analysis is not None and not item.analysis.is_file()):
        return None
    try:
        result = RegistrationResult.load(item.result)
    except NMSRError:
        return None
    if result.cancelled or result.n_scales == 0:
        return None
    row = {"input": str(item.input), "status": "skipped", "error": "", "seconds": 0.0, "attempts": 0}
    row.update(_result_row(item, result))
    if item.analysis is not None:
        row["analysis"] = str(item.analysis)
    return row


# ----------------------------------------------------------------------------- summary


def write_summary(path, rows) -> Path:
    """Rewrite the whole summary atomically: a reader (or a killed batch)
    never sees half a row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_summary(path) -> list[dict]:
    """The rows of a ``summary.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
