"""``nmsr batch``: the command-line face of :func:`napari_nmsr.batch.register_many`.

Kept apart from ``cli.py`` (which only registers the subcommand) so that the
register/train/analyze commands and this one change independently. Exit
status: 0 when every input is ok or skipped, 1 when any failed, 2 for bad
arguments (raised as ``ValueError``/``FileNotFoundError``/``NMSRError`` and
printed as one line by ``cli.main``), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

__all__ = ["add_batch_parser", "cmd_batch"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_batch_parser(sub, add_engine_options: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The ``batch`` subcommand, with the same engine options as ``register``.

    The engine options' ``--threads`` and ``--threads-per-worker`` set the
    same thing: torch threads per sequence.
    """
    b = sub.add_parser("batch", help="register many sequences on Dask (local cluster or an existing one)")
    b.add_argument("inputs", nargs="+", help="sequence files, folders (every readable sequence inside) or glob patterns")
    b.add_argument("--out-dir", required=True, help="folder for <stem>.nmsr.npz, <stem>.analysis.json and summary.csv")
    b.add_argument("--masks", help="folder of masks: <stem>.npy, <stem>_mask.npy or <stem>_masks.npy per input")
    b.add_argument("--workers", type=_positive_int, help="local cluster: worker processes (default: one per core, or per GPU)")
    b.add_argument("--threads-per-worker", dest="threads", type=_positive_int,
                   help="torch threads per sequence (default: the cores / workers)")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:8786); starts nothing")
    where.add_argument("--scheduler-file", help="scheduler file of a running Dask cluster; starts nothing")
    b.add_argument("--dashboard-address", default="127.0.0.1:8787",
                   help="local cluster's dashboard (default 127.0.0.1:8787; 'none' to turn it off)")
    b.add_argument("--resume", action="store_true", help="skip inputs whose result exists and loads")
    b.add_argument("--analyze", action="store_true", help="also write <stem>.analysis.json (as `nmsr analyze`)")
    add_engine_options(b)
    b.add_argument("--weights", help="weights file from `nmsr train` (for --variant nmsr_v)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return b


class _BatchBar:
    """One-line progress over sequences on stderr; failures get a line of their own."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}

    def __call__(self, row: dict, done: int, total: int) -> None:
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        if self.quiet:
            return
        if row["status"] == "failed":
            sys.stderr.write(f"\rfailed: {row['input']}: {row['error']}\033[K\n")
        width = 30
        filled = int(round(width * done / max(total, 1)))
        c = self.counts
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} sequences: "
                         f"{c['ok']} ok, {c['skipped']} skipped, {c['failed']} failed  ")
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


def cmd_batch(args, config) -> int:
    """Run the batch; ``config`` is the RegistrationConfig built from the engine options."""
    from .batch import SUMMARY_NAME, register_many

    bar = _BatchBar(args.quiet)
    dashboard = None if args.dashboard_address.lower() == "none" else args.dashboard_address
    try:
        rows = register_many(
            args.inputs, out_dir=args.out_dir, masks=args.masks, config=config,
            n_workers=args.workers, threads_per_worker=args.threads, scheduler=args.scheduler,
            scheduler_file=args.scheduler_file, resume=args.resume, analyze=args.analyze,
            dashboard_address=dashboard, progress=bar, log=lambda text: print(text, file=sys.stderr),
        )
    except KeyboardInterrupt:
        bar.done()
        print(f"interrupted; {Path(args.out_dir) / SUMMARY_NAME} lists the inputs that finished", file=sys.stderr)
        return 130
    bar.done()
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"{len(rows)} inputs: {sum(r['status'] == 'ok' for r in rows)} ok, "
          f"{sum(r['status'] == 'skipped' for r in rows)} skipped, {failed} failed; "
          f"summary in {Path(args.out_dir) / SUMMARY_NAME}")
    return 1 if failed else 0
