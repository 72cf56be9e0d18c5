"""Throughput of `nmsr batch` on this machine: 1 vs 2 (or more) local workers, printed as a table.

    python benchmarks/bench_batch.py [--copies 4] [--steps 20] [--workers 1,2] [--threads 1]

Copies ``sample_data/vortex.npz`` (12 frames, 128 x 128) ``--copies`` times into
a temporary folder and registers them with :func:`napari_nmsr.batch.register_many`
on a fresh LocalCluster of each size (one sequence per worker at a time,
``--threads`` torch threads per sequence). ``wall s`` includes starting the
cluster; ``task s`` is the mean wall time of one sequence on its worker (load +
register + write), the per-sequence cost the README's throughput model uses;
``overhead s`` = wall - ceil(copies / workers) x task s (cluster start,
scheduling, the first task's imports).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

from napari_nmsr.batch import register_many
from napari_nmsr.core.register import RegistrationConfig

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "vortex.npz"


def run(folder: Path, workers: int, threads: int, config) -> dict:
    out = folder / f"out_{workers}"
    started = time.perf_counter()
    rows = register_many([folder / "in"], out_dir=out, config=config, n_workers=workers,
                         threads_per_worker=threads, dashboard_address=None)
    wall = time.perf_counter() - started
    if any(r["status"] != "ok" for r in rows):
        raise SystemExit(f"a sequence failed: {[r['error'] for r in rows if r['status'] != 'ok']}")
    task = sum(r["seconds"] for r in rows) / len(rows)
    return {"workers": workers, "threads": threads, "n": len(rows), "wall": wall, "task": task,
            "overhead": wall - math.ceil(len(rows) / workers) * task}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="optimisation steps per scale")
    p.add_argument("--workers", default="1,2", help="comma-separated cluster sizes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per sequence")
    args = p.parse_args()
    config = RegistrationConfig(steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        for i in range(args.copies):
            shutil.copy(SAMPLE, folder / "in" / f"vortex{i}.npz")
        results = [run(folder, int(w), args.threads, config) for w in args.workers.split(",")]
    base = results[0]["wall"]
    print(f"{args.copies} x vortex.npz (12 frames, 128 px), nmsr_vi, {args.steps} steps per scale, "
          f"{args.threads} torch thread(s) per sequence")
    print(f"{'workers':>7} {'wall s':>8} {'seq/hour':>9} {'task s':>8} {'overhead s':>10} {'speed-up':>8}")
    for r in results:
        print(f"{r['workers']:>7} {r['wall']:>8.1f} {3600 * r['n'] / r['wall']:>9.0f} {r['task']:>8.1f} "
              f"{r['overhead']:>10.1f} {base / r['wall']:>8.2f}")


if __name__ == "__main__":  # guard: the local cluster's worker processes re-import this file
    main()
