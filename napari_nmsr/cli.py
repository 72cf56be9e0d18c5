"""The ``nmsr`` command line: register, train, analyze, info.

Thin like the GUI: it parses arguments, calls the engine in
``napari_nmsr.core`` and prints. Errors from the engine are printed as one
line (exit status 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .core.errors import NMSRError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmsr", description="Neural multi-scale self-supervised registration for echo sequences.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="register a sequence; write a result NPZ")
    r.add_argument("input", help="DICOM, AVI/MP4, TIFF, image folder, or .npy/.npz of shape (T, H, W) in [0, 1]")
    r.add_argument("--out", required=True, help="result file (.npz)")
    r.add_argument("--mask", help=".npy of booleans, (T, H, W) or (H, W): restrict loss and metrics (e.g. LV blood pool)")
    _add_engine_options(r)
    r.add_argument("--weights", help="weights file from `nmsr train` (for --variant nmsr_v)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")

    t = sub.add_parser("train", help="optimise NMSR_V starting weights over several sequences")
    t.add_argument("inputs", nargs="+", help="sequence files, or folders of sequence files")
    t.add_argument("--out", required=True, help="weights file (.pt)")
    _add_engine_options(t)
    t.add_argument("--quiet", action="store_true")

    a = sub.add_parser("analyze", help="vortex, vorticity and energy from a result file")
    a.add_argument("result", help="result .npz from `nmsr register`")
    a.add_argument("--json", required=True, help="output JSON (schema in the docs)")
    a.add_argument("--csv", help="also write one CSV row per frame pair")
    a.add_argument("--mask", help=".npy mask (T, H, W) or (H, W); default: whole frame")
    a.add_argument("--scale", type=int, default=-1, help="scale index to analyse (default: finest)")
    a.add_argument("--backward", help="result of the REVERSED sequence (same scales): adds forward-backward consistency")

    from .cli_batch import add_batch_parser

    add_batch_parser(sub, _add_engine_options)

    i = sub.add_parser("info", help="describe a sequence or result file, and the compute devices")
    i.add_argument("path", nargs="?", help="a sequence or a result .npz")
    return p


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    from .core.register import VARIANTS

    p.add_argument("--variant", default="nmsr_vi", choices=VARIANTS)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--steps", type=int, help="optimisation steps per scale (default: the preset)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "paper"], help="step budget (paper = 3500 per scale)")
    p.add_argument("--scales", default="0.125,0.25,0.5,1", help="comma-separated scales, coarse to fine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for torch")


def _config(args, **extra):
    from .core.register import PRESETS, RegistrationConfig

    preset = dict(PRESETS[args.preset])
    if args.steps is not None:
        preset["steps"] = args.steps
    scales = tuple(float(s) for s in args.scales.split(",") if s.strip())
    return RegistrationConfig(variant=args.variant, device=args.device, scales=scales, seed=args.seed, **preset, **extra)


class _Bar:
    """One-line progress on stderr: scale k/n, step, loss."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.last = 0.0

    def __call__(self, ev) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and ev.step != ev.n_steps:
            return
        self.last = now
        width = 30
        filled = int(round(width * ev.fraction))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] scale {ev.scale_index + 1}/{ev.n_scales} "
            f"(1/{1 / ev.scale:g}) step {ev.step}/{ev.n_steps} loss {ev.loss:+.4f}  "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


def _load_mask(path):
    from .core.errors import MaskError

    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False).astype(bool)
    except Exception as exc:
        raise MaskError(f"cannot read mask {path}: {exc}") from exc


def cmd_register(args) -> int:
    from .core.io import load_sequence
    from .core.register import register

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    seq = load_sequence(args.input)
    config = _config(args, weights=args.weights)
    bar = _Bar(args.quiet)
    started = time.perf_counter()
    try:
        result = register(
            seq.frames, _load_mask(args.mask), config, progress=bar,
            frame_interval_s=seq.frame_interval_s, pixel_spacing_mm=seq.pixel_spacing_mm,
        )
    except KeyboardInterrupt:
        bar.done()
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    bar.done()
    path = result.save(args.out)
    elapsed = time.perf_counter() - started
    t, h, w = seq.frames.shape
    print(f"{seq.source}: {t} frames {h}x{w}, {args.variant} on {result.device}, {elapsed:.1f} s "
          f"({elapsed / (t - 1):.2f} s per frame pair)")
    print(format_metrics_table(result.metrics_table()))
    print(f"wrote {path}")
    return 0


def format_metrics_table(rows: list[dict]) -> str:
    """Per-scale metrics as the paper's Table 1 (MSE x1e-3, mean CC x1e-1)."""
    lines = [f"{'scale':>6} {'MSE (1e-3)':>18} {'mean CC (1e-1)':>18} {'steps':>6} {'seconds':>8}"]
    for r in rows:
        lines.append(
            f"{'1/' + format(1 / r['scale'], 'g') if r['scale'] < 1 else '1':>6} "
            f"{r['mse'] * 1e3:>8.4f} ± {r['mse_std'] * 1e3:<7.4f} "
            f"{r['mean_cc'] * 10:>8.4f} ± {r['mean_cc_std'] * 10:<7.4f} "
            f"{r['steps'] if r['steps'] is not None else '':>6} {r['seconds'] or 0:>8.1f}"
        )
    return "\n".join(lines)


def cmd_train(args) -> int:
    from .core.io import load_sequence
    from .core.train import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    paths = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir() and not _is_frame_folder(p):
            paths.extend(sorted(q for q in p.iterdir() if not q.name.startswith(".")))
        else:
            paths.append(p)
    seqs = [load_sequence(p).frames for p in paths]
    bar = _Bar(args.quiet)
    out = train(seqs, args.out, _config(args), progress=bar)
    bar.done()
    print(f"trained on {len(seqs)} sequences; wrote {out}")
    return 0


def _is_frame_folder(p: Path) -> bool:
    return any(q.suffix.lower() in (".png", ".jpg", ".jpeg") for q in p.iterdir())


def cmd_analyze(args) -> int:
    from .core.analysis.report import analyze_result, read_mask, write_csv, write_json

    mask = read_mask(args.mask) if args.mask else None
    report = analyze_result(args.result, mask=mask, scale_index=args.scale, backward=args.backward)
    write_json(report, args.json)
    print(f"wrote {args.json}")
    if args.csv:
        write_csv(report, args.csv)
        print(f"wrote {args.csv}")
    return 0


def cmd_info(args) -> int:
    from .core.device import available_devices, describe_device

    print("devices: " + ", ".join(describe_device(d) for d in available_devices()))
    if not args.path:
        return 0
    path = Path(args.path)
    if path.suffix == ".npz":
        from .core.result import RegistrationResult

        try:
            res = RegistrationResult.load(path)
        except NMSRError:
            res = None
        if res is not None:
            s, n, _, h, w = res.fields.shape
            print(f"result: {s} scales {list(res.scales)}, {n} frame pairs, {h}x{w} px, "
                  f"variant {res.config.get('variant')}, cancelled={res.cancelled}")
            print(format_metrics_table(res.metrics_table()))
            return 0
    from .core.io import load_sequence

    seq = load_sequence(path)
    t, h, w = seq.frames.shape
    print(json.dumps({
        "source": seq.source, "frames": t, "height": h, "width": w,
        "frame_interval_s": seq.frame_interval_s, "pixel_spacing_mm": seq.pixel_spacing_mm,
    }, indent=2))
    return 0


def cmd_batch(args) -> int:
    from .cli_batch import cmd_batch as run_batch

    return run_batch(args, _config(args, weights=args.weights))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"register": cmd_register, "train": cmd_train, "analyze": cmd_analyze, "info": cmd_info,
               "batch": cmd_batch}[args.command]
    try:
        return handler(args)
    except (NMSRError, ValueError, FileNotFoundError) as exc:
        print(f"nmsr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
