"""Where one default NMSR run spends its time: seconds per engine phase, and per scale.

    python benchmarks/profile_engine.py dicom            # the shared DICOM (10x430x600, no mask)
    python benchmarks/profile_engine.py apical_nomask    # 45x768x1024 without a mask (also: apical, sim128, sim256)

Rows are ``bench_speed.py``'s. Every engine function named below is wrapped with a timer
(nested calls count in both: ``_chunked`` runs inside ``residual``), then ``register`` runs the
default config with the default threads, as ``nmsr register`` does. Printed: total seconds,
seconds per phase, and per scale (index, steps run, seconds, pairs whose previous field the
guard kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import make_row  # noqa: E402

import napari_nmsr.core.register as engine  # noqa: E402

PHASES = ("affine_fields", "_step", "_match", "_mean_shift", "pair_metrics", "paste_field", "compose_resized", "_chunked")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("row", nargs="?", default="dicom")
    args = parser.parse_args(argv)
    frames, mask, _, _ = make_row(args.row)
    seconds: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for name in PHASES:
        setattr(engine, name, timed(name, getattr(engine, name)))
    engine.ScaleData.residual = timed("residual", engine.ScaleData.residual)
    scales = []
    t0 = time.perf_counter()
    engine.register(frames, mask, engine.RegistrationConfig(), on_scale=lambda e: scales.append(
        (e.scale_index, e.steps_run, round(e.seconds, 1), None if e.kept_previous is None else int(e.kept_previous.sum()))))
    total = time.perf_counter() - t0
    print(f"{args.row} {frames.shape}: {total:.1f} s, {torch.get_num_threads()} threads")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {name:16s} {s:7.1f} s")
    print("  scales (index, steps, s, pairs kept previous):", scales)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
