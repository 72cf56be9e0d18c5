"""Accuracy and cost of NMSR and baselines on simulated echo with known motion.

    python benchmarks/bench_registration.py                      # all cases, baselines + NMSR (cpu preset)
    python benchmarks/bench_registration.py --variants none      # baselines only
    python benchmarks/bench_registration.py --variants nmsr_vi --steps 40 --cases vortex
    python benchmarks/bench_registration.py --selfcheck          # convention checks of the baselines

For each simulated case (:mod:`napari_nmsr.core.simulate`) and method it
measures, over all frame pairs and inside the case's mask on the fixed frame:
endpoint error (mean and 95th percentile, px) of the estimated field against
the true one, both in the project convention; the vortex-centre error (px,
vortex cases); the paper's MSE and mean local CC (radius 10) between the
warped frame t and frame t+1; seconds per frame pair (wall and CPU); peak
memory. It prints tables and writes JSON (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from baselines import BASELINES, BaselineUnavailable  # noqa: E402

from napari_nmsr.core.convention import warp_frames  # noqa: E402
from napari_nmsr.core.metrics import sequence_metrics  # noqa: E402
from napari_nmsr.core.simulate import CASES, vortex_centre  # noqa: E402

DEFAULT_JSON = HERE / "results" / "latest.json"
ALL_BASELINES = ("zero", "farneback", "dis", "openpiv", "ants", "truth")


# --------------------------------------------------------------------------- metrics


def pair_quality(frames, fields, masks) -> tuple[float, float]:
    """Paper metrics (mean over pairs): MSE and mean local CC (radius 10) inside masks[t+1]."""
    mse, cc = sequence_metrics(frames, fields, masks)
    return float(np.mean(mse)), float(np.mean(cc))


def endpoint_errors(estimated, truth, masks) -> np.ndarray:
    """|estimated - truth| (px) at every masked pixel of every pair; masks[t+1] for pair t."""
    err = np.hypot(estimated[:, 0] - truth[:, 0], estimated[:, 1] - truth[:, 1])
    return err[masks[1:]]


def centre_errors(estimated, seq, sigma) -> np.ndarray | None:
    """Distance (px) between the vortex centre of the estimated motion and the true one, per pair."""
    if seq.vortex_centres is None:
        return None
    return np.array([
        np.hypot(*(vortex_centre(estimated[t], seq.masks[t + 1], sigma) - seq.vortex_centres[t]))
        for t in range(len(estimated))
    ])


# --------------------------------------------------------------------------- cost


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Cost:
    """Wall time, CPU time and peak memory of one block.

    tracemalloc_peak_mb: peak of allocations made through Python's allocators
    (numpy arrays; NOT OpenCV's C++ buffers nor torch tensors).
    rss_peak_delta_mb: peak resident memory during the block minus the resident
    memory before it (VmHWM after resetting it through /proc/self/clear_refs;
    falls back to the ru_maxrss delta, which is 0 when the process had
    already been bigger). This is what covers torch and OpenCV.

    ``trace_python=False`` leaves tracemalloc off (tracemalloc_peak_mb is then
    NaN): it hooks every Python allocation, and a torch training loop makes
    many, so with it on NMSR's wall time is inflated (a quarter on the DICOM
    row); the speed benchmark times without it.
    """

    def __init__(self, trace_python: bool = True):
        self.trace_python = trace_python

    def __enter__(self):
        self.exact_rss = _reset_peak_rss()
        self.rss0 = _status_kb("VmRSS")
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self.trace_python:
            tracemalloc.start()
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        self.tracemalloc_peak_mb = float("nan")
        if self.trace_python:
            self.tracemalloc_peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        hwm = _status_kb("VmHWM")
        if self.exact_rss and hwm is not None and self.rss0 is not None:
            self.rss_peak_delta_mb = max(hwm - self.rss0, 0) / 1024
        else:
            self.rss_peak_delta_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.maxrss0) / 1024
        return False


# --------------------------------------------------------------------------- methods


def make_methods(args) -> list[tuple[str, object]]:
    """(name, estimate(seq) -> fields (S, T-1, 2, H, W) with scale names) in run order."""
    methods = []
    for name in args.baselines:
        if name == "truth":
            methods.append(("truth", lambda seq: ([seq.fields], [None])))
        else:
            fn = BASELINES[name]
            methods.append((name, lambda seq, fn=fn: ([fn(seq.frames)], [None])))
    for variant in args.variants:
        methods.append((variant, lambda seq, v=variant: _run_nmsr(seq, v, args)))
    return methods


def _run_nmsr(seq, variant, args):
    from napari_nmsr.core.register import RegistrationConfig, register

    kwargs = dict(variant=variant, device=args.device, seed=args.seed)
    if args.steps is not None:
        kwargs["steps"] = args.steps
    res = register(seq.frames, mask=seq.masks if args.mask_loss else None, config=RegistrationConfig(**kwargs))
    return list(res.fields), list(res.scales)


def evaluate(seq, fields, sigma) -> dict:
    epe = endpoint_errors(fields, seq.fields, seq.masks)
    mse, cc = pair_quality(seq.frames, fields, seq.masks)
    centres = centre_errors(fields, seq, sigma)
    return {
        "epe_mean": float(epe.mean()),
        "epe_p95": float(np.percentile(epe, 95)),
        "centre_err": None if centres is None else float(centres.mean()),
        "mse": mse,
        "mean_cc": cc,
    }


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    rows = []
    for case in args.cases:
        seq = CASES[case](size=args.size, n_frames=args.frames, seed=args.seed)
        n_pairs = len(seq.frames) - 1
        sigma = 2.0 * args.size / 128.0
        truth_speed = np.hypot(seq.fields[:, 0], seq.fields[:, 1])[seq.masks[1:]]
        print(f"[{case}] {seq.description} true |u| in mask: mean {truth_speed.mean():.2f}, "
              f"max {truth_speed.max():.2f} px", flush=True)
        for name, estimate in make_methods(args):
            row = {"case": case, "method": name, "status": "ok"}
            try:
                with Cost() as cost:
                    fields, scales = estimate(seq)
            except BaselineUnavailable as exc:
                row["status"] = f"skipped: {exc}"
                rows.append(row)
                print(f"  {name:<14} {row['status']}", flush=True)
                continue
            cost_info = {
                "s_per_pair": cost.wall / n_pairs,
                "cpu_s_per_pair": cost.cpu / n_pairs,
                "tracemalloc_peak_mb": cost.tracemalloc_peak_mb,
                "rss_peak_delta_mb": cost.rss_peak_delta_mb,
            }
            row.update(evaluate(seq, np.asarray(fields[-1], np.float32), sigma), **cost_info)
            rows.append(row)
            print(f"  {name:<14} EPE {row['epe_mean']:.3f} / {row['epe_p95']:.3f} px   "
                  f"{row['s_per_pair']:.3f} s/pair", flush=True)
            if args.per_scale and len(fields) > 1:
                for f, s in zip(fields[:-1], scales[:-1]):
                    sub = {"case": case, "method": f"{name}@{s:g}", "status": "ok",
                           "note": "intermediate scale of the run above (cost is the whole run)"}
                    sub.update(evaluate(seq, np.asarray(f, np.float32), sigma), **cost_info)
                    rows.append(sub)
    return {
        "meta": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "size": args.size, "frames": args.frames, "seed": args.seed, "threads": args.threads,
            "device": args.device, "steps": args.steps, "mask_loss": args.mask_loss,
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "versions": _versions(),
            "memory_note": Cost.__doc__.split("\n\n", 1)[1].strip(),
            "metrics_note": "EPE and metrics inside masks[t+1] (the fixed frame); MSE and mean local CC "
                            "(squared, radius 10) from napari_nmsr.core.metrics.pair_metrics.",
        },
        "results": rows,
    }


def _versions() -> dict:
    out = {"numpy": np.__version__}
    for mod in ("torch", "cv2", "scipy", "ants"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken optional library
            out[mod] = None
    return out


# --------------------------------------------------------------------------- report


def _table(rows, cases, cell, header, extra=None):
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["case"], r["method"]): r for r in rows}
    w = max(14, max(len(m) for m in methods) + 2)
    head = f"{'method':<{w}}" + "".join(f"{c:>18}" for c in cases) + (f"{extra[0]:>12}" if extra else "")
    lines = [header, head, "-" * len(head)]
    for m in methods:
        line = f"{m:<{w}}"
        for c in cases:
            r = by.get((c, m))
            line += f"{cell(r) if r and r['status'] == 'ok' else ('skipped' if r else '-'):>18}"
        if extra:
            line += f"{extra[1](m, [by.get((c, m)) for c in cases]):>12}"
        lines.append(line)
    return "\n".join(lines)


def _mean_of(key):
    def f(_, rs):
        vals = [r[key] for r in rs if r and r["status"] == "ok"]
        return f"{np.mean(vals):.3f}" if vals else "-"
    return f


def report(result: dict) -> str:
    rows = result["results"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    out = [
        _table(rows, cases, lambda r: f"{r['epe_mean']:.2f} / {r['epe_p95']:.2f}",
               "Endpoint error inside the mask, px (mean / 95th percentile)", ("s/pair", _mean_of("s_per_pair"))),
        "",
        _table(rows, cases, lambda r: f"{1e3 * r['mse']:.2f} / {r['mean_cc']:.3f}",
               "Paper metrics inside the mask: MSE (1e-3) / mean local CC (r=10)",
               ("cpu s/pair", _mean_of("cpu_s_per_pair"))),
    ]
    vortex_cases = [c for c in cases if any(r["case"] == c and r.get("centre_err") is not None for r in rows)]
    if vortex_cases:
        out += ["", _table([r for r in rows if r["case"] in vortex_cases], vortex_cases,
                           lambda r: f"{r['centre_err']:.2f}", "Vortex-centre error, px (mean over pairs)")]
    ref = {r["case"]: r for r in rows if r["method"] == "farneback" and r["status"] == "ok"}
    if ref:
        out += ["", _table([r for r in rows if r["case"] in ref], [c for c in cases if c in ref],
                           lambda r: f"{r['epe_mean'] / ref[r['case']]['epe_mean']:.2f} / "
                                     f"{r['mse'] / ref[r['case']]['mse']:.2f}",
                           "Ratio vs farneback (< 1 is better): EPE mean / MSE")]
    out += ["", _table(rows, cases, lambda r: f"{r['tracemalloc_peak_mb']:.0f} / {r['rss_peak_delta_mb']:.0f}",
                       "Peak memory, MB: tracemalloc (numpy) / RSS delta (all, incl. torch)")]
    return "\n".join(out)


def write_json(result: dict, path: Path) -> None:
    """Atomic write: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- self-check


def selfcheck(threads: int = 1) -> bool:
    """Every baseline recovers a known translation with the sign and axis order of the convention."""
    from scipy import ndimage

    import torch

    torch.set_num_threads(threads)
    img = CASES["large_motion"](size=96, n_frames=2, seed=0).frames[0]
    inner = (slice(16, -16), slice(16, -16))
    ok = True
    for d in [(2.6, -1.3), (-0.7, 4.2)]:
        # Content moves by +d, so frame 1 (p) = frame 0 (p - d): the pull field is -d.
        moved = np.clip(ndimage.shift(img, d, order=3, mode="nearest"), 0, 1).astype(np.float32)
        frames = np.stack([img, moved])
        for name, fn in BASELINES.items():
            if name == "zero":
                continue
            try:
                u = fn(frames)
            except BaselineUnavailable as exc:
                print(f"selfcheck {name}: skipped ({exc})")
                continue
            got = np.array([np.median(u[0, 0][inner]), np.median(u[0, 1][inner])])
            err = float(np.hypot(*(got + np.asarray(d))))
            warped = warp_frames(frames, u)[0]
            better = np.mean((warped - moved)[inner] ** 2) < 0.2 * np.mean((img - moved)[inner] ** 2)
            good = err < 0.2 and better
            ok &= good
            print(f"selfcheck {name}: content moved by {d}, field median (dy, dx) = "
                  f"({got[0]:+.2f}, {got[1]:+.2f}), expected ({-d[0]:+.2f}, {-d[1]:+.2f}) -> "
                  f"{'OK' if good else 'FAIL'}")
    # The metric code itself: the truth has zero EPE and beats no warp.
    seq = CASES["vortex"](size=64, n_frames=3, seed=0)
    e = evaluate(seq, seq.fields, 1.0)
    z = evaluate(seq, np.zeros_like(seq.fields), 1.0)
    good = e["epe_mean"] == 0.0 and e["mse"] < z["mse"] and e["centre_err"] < 1.5
    ok &= good
    print(f"selfcheck metrics: truth EPE {e['epe_mean']:.3f}, MSE truth {e['mse']:.4f} < zero "
          f"{z['mse']:.4f}, centre err {e['centre_err']:.2f} px -> {'OK' if good else 'FAIL'}")
    return bool(ok)


# --------------------------------------------------------------------------- command line


def _names(text: str, allowed, what: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SystemExit(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated simulated cases")
    p.add_argument("--baselines", default="zero,farneback,ants,truth",
                   help=f"comma-separated from {', '.join(ALL_BASELINES)} ('truth' = oracle: the floor of "
                        "MSE/CC given noise and out-of-plane motion); 'none' for none")
    p.add_argument("--variants", default="nmsr,nmsr_ms,nmsr_vi",
                   help="NMSR variants run through napari_nmsr.core.register; 'none' for none")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per scale (default: cpu preset)")
    p.add_argument("--device", default="cpu", help="engine device: cpu, cuda, mps or auto")
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    p.add_argument("--no-mask-loss", dest="mask_loss", action="store_false",
                   help="register the whole frame (default: the case's mask restricts NMSR's loss, as in the workflow)")
    p.add_argument("--per-scale", action="store_true", help="also report every intermediate scale of NMSR")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--selfcheck", action="store_true", help="only run the convention checks of the baselines")
    args = p.parse_args(argv)
    args.cases = _names(args.cases, list(CASES), "case")
    args.baselines = _names(args.baselines, ALL_BASELINES, "baseline")
    args.variants = _names(args.variants, ("nmsr", "nmsr_ms", "nmsr_vi", "nmsr_v"), "variant")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.selfcheck:
        return 0 if selfcheck(args.threads) else 1
    result = run(args)
    print()
    print(report(result))
    write_json(result, args.json)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
