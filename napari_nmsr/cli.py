"""The ``nmsr`` command line: register, train, analyze, info.

Thin like the GUI: it parses arguments, checks them before any work
(:mod:`napari_nmsr.cli_checks`), calls the engine in ``napari_nmsr.core``
and prints. Errors are printed as one line (exit status 2, Ctrl-C 130),
never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .cli_checks import (
    OneLineParser,
    check_outputs_distinct,
    config_setting,
    deferred_interrupt,
    output_file,
    positive_int,
    read_mask_argument,
    read_weights_argument,
    run_quietly,
    steps_per_scale,
)

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="nmsr", description="Neural multi-scale self-supervised registration for echo sequences.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="register a sequence; write a result NPZ")
    r.add_argument("input", help="DICOM, AVI/MP4, TIFF, image folder, or .npy/.npz of shape (T, H, W) in [0, 1]")
    r.add_argument("--out", required=True, help="result file (.npz)")
    r.add_argument("--mask", help=".npy (or .tif) of booleans or 0/1, (T, H, W) or (H, W): restrict loss and metrics "
                   "(e.g. LV blood pool)")
    _add_engine_options(r)
    r.add_argument("--weights", help="weights file from `nmsr train` (for --variant nmsr_v)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no time estimate")
    r.add_argument("--no-estimate", action="store_true", help="skip the ~1 s calibration that prints the expected time")

    t = sub.add_parser("train", help="optimise NMSR_V starting weights over several sequences")
    t.add_argument("inputs", nargs="+", help="sequence files, or folders of sequence files")
    t.add_argument("--out", required=True, help="weights file (.pt)")
    _add_engine_options(t)
    t.add_argument("--quiet", action="store_true")

    a = sub.add_parser("analyze", help="vortex, vorticity and energy from a result file")
    a.add_argument("result", help="result .npz from `nmsr register`")
    a.add_argument("--json", required=True, help="output JSON (schema in the docs)")
    a.add_argument("--csv", help="also write one CSV row per frame pair")
    a.add_argument("--mask", help=".npy (or .tif) mask of booleans or 0/1, (T, H, W) or (H, W); default: whole frame")
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
    p.add_argument("--steps", type=steps_per_scale,
                   help="optimisation steps per scale: one number (>= 1), or one per scale, coarse to fine "
                        "(e.g. 150,100,100,20; 0 skips a scale's U-Net) (default: the preset)")
    from .core.register import DEFAULT_PRESET, PRESETS

    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS),
                   help=f"engine settings (default {DEFAULT_PRESET}; paper = the paper's loss and 3500 steps per scale)")
    p.add_argument("--scales", default="0.125,0.25,0.5,1", help="comma-separated scales, coarse to fine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch, >= 1 (default: every available core)")
    p.add_argument("--set", dest="settings", type=config_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="any other engine setting (a RegistrationConfig field), after the preset; repeatable, "
                        "e.g. --set guard_gain=0 --set 'smoothness=(50,50,400,400)'")


def _config(args, **extra):
    from .core.register import PRESETS, RegistrationConfig

    preset = dict(PRESETS[args.preset])
    if args.steps is not None:
        preset["steps"] = args.steps
    preset.update(dict(args.settings))
    scales = tuple(float(s) for s in args.scales.split(",") if s.strip())
    return RegistrationConfig(variant=args.variant, device=args.device, scales=scales, seed=args.seed, **preset, **extra)


def _eta(ev) -> str:
    eta = getattr(ev, "eta_s", None)
    return "" if eta is None else f"ETA {eta:4.0f} s"


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
        # No loss read yet in this scale (a skipped U-Net scale's refinement reads it once per chunk).
        loss = f"loss {ev.loss:+.4f}" if math.isfinite(ev.loss) else "loss ...    "
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] scale {ev.scale_index + 1}/{ev.n_scales} "
            f"(1/{1 / ev.scale:g}) step {ev.step}/{ev.n_steps} {loss}  {_eta(ev)}  "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")


def cmd_register(args) -> int:
    out = output_file(args.out, "result file", ".npz")
    mask = read_mask_argument(args.mask)
    read_weights_argument(args.weights)
    config = _config(args, weights=args.weights)
    from .core.io import load_sequence
    from .core.register import register, validate_mask

    seq = load_sequence(args.input)
    validate_mask(mask, seq.frames.shape)
    _set_threads(args.threads)
    if not args.quiet and not args.no_estimate:
        from .core.estimate import estimate_seconds

        t, h, w = seq.frames.shape
        print(f"{t} frames {h}x{w}: {estimate_seconds(seq.frames, mask, config)}", file=sys.stderr, flush=True)
    bar = _Bar(args.quiet)
    started = time.perf_counter()
    try:
        result = register(
            seq.frames, mask, config, progress=bar,
            frame_interval_s=seq.frame_interval_s, pixel_spacing_mm=seq.pixel_spacing_mm,
        )
    except KeyboardInterrupt:
        bar.done()
        print("interrupted; nothing written", file=sys.stderr)
        return 130
    bar.done()
    path = result.save(out)
    elapsed = time.perf_counter() - started
    t, h, w = seq.frames.shape
    print(f"{seq.source}: {t} frames {h}x{w}, {args.variant} on {result.device}, {elapsed:.1f} s "
          f"({elapsed / (t - 1):.2f} s per frame pair)")
    print(format_metrics_table(result.metrics_table()))
    for text in result.notes:  # what the engine decided beyond its plan (an extended scale, the refinement's blur)
        print(f"note: {text}")
    print(f"wrote {path}")
    return 0


def format_metrics_table(rows: list[dict]) -> str:
    """Per-scale metrics as the paper's Table 1 (MSE x1e-3, mean CC x1e-1), with the pairs
    each scale refined (the guard keeps the previous scale's field where a refinement did not
    clearly improve the match: a scale that refined 0 pairs leaves the metrics unchanged)."""
    lines = [f"{'scale':>6} {'MSE (1e-3)':>18} {'mean CC (1e-1)':>18} {'steps':>6} {'seconds':>8} {'refined':>8}"]
    for r in rows:
        refined = "" if r.get("refined") is None else f"{r['refined']}/{r['pairs']}"
        lines.append(
            f"{'1/' + format(1 / r['scale'], 'g') if r['scale'] < 1 else '1':>6} "
            f"{r['mse'] * 1e3:>8.4f} ± {r['mse_std'] * 1e3:<7.4f} "
            f"{r['mean_cc'] * 10:>8.4f} ± {r['mean_cc_std'] * 10:<7.4f} "
            f"{r['steps'] if r['steps'] is not None else '':>6} {r['seconds'] or 0:>8.1f} {refined:>8}"
        )
    if any(r.get("refined") == 0 for r in rows):
        lines.append("refined = frame pairs whose field the scale changed; 0/N: every refinement was rejected "
                     "(it did not improve the match clearly), so the scale kept the previous field")
    return "\n".join(lines)


def _set_threads(threads: int | None) -> None:
    """torch threads: the given number, else every available core (core/threads.py)."""
    from .core.threads import use_threads

    use_threads(threads)


def cmd_train(args) -> int:
    out = output_file(args.out, "weights file")
    config = _config(args)
    from .core.io import load_sequence
    from .core.train import train

    paths = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir() and not _is_frame_folder(p):
            paths.extend(sorted(q for q in p.iterdir() if not q.name.startswith(".")))
        else:
            paths.append(p)
    seqs = [load_sequence(p).frames for p in paths]
    _set_threads(args.threads)
    bar = _Bar(args.quiet)
    out = train(seqs, out, config, progress=bar)
    bar.done()
    print(f"trained on {len(seqs)} sequences; wrote {out}")
    return 0


def _is_frame_folder(p: Path) -> bool:
    return any(q.suffix.lower() in (".png", ".jpg", ".jpeg") for q in p.iterdir())


def cmd_analyze(args) -> int:
    json_out = output_file(args.json, "JSON report")
    csv_out = output_file(args.csv, "CSV report") if args.csv else None
    check_outputs_distinct(json=json_out, csv=csv_out, result=args.result, backward=args.backward)
    mask = read_mask_argument(args.mask)
    from .core.analysis.report import analyze_result, write_csv, write_json

    report = analyze_result(args.result, mask=mask, scale_index=args.scale, backward=args.backward)
    write_json(report, json_out)
    print(f"wrote {json_out}")
    if csv_out is not None:
        write_csv(report, csv_out)
        print(f"wrote {csv_out}")
    return 0


def cmd_info(args) -> int:
    from .core.device import available_devices, describe_device

    print("devices: " + ", ".join(describe_device(d) for d in available_devices()))
    if not args.path:
        return 0
    path = Path(args.path)
    from ._reader import is_result_file

    if path.suffix.lower() == ".npz" and is_result_file(path):  # a damaged result is an error, not a sequence
        from .core.result import RegistrationResult

        res = RegistrationResult.load(path)
        if res is not None:
            s, n, _, h, w = res.fields.shape
            print(f"result: {s} scales {list(res.scales)}, {n} frame pairs, {h}x{w} px, "
                  f"variant {res.config.get('variant')}, cancelled={res.cancelled}")
            print(format_metrics_table(res.metrics_table()))
            for text in res.notes:
                print(f"note: {text}")
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
    try:
        with deferred_interrupt():  # the parser imports the engine, and so torch
            args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("nmsr: interrupted", file=sys.stderr)
        return 130
    handler = {"register": cmd_register, "train": cmd_train, "analyze": cmd_analyze, "info": cmd_info,
               "batch": cmd_batch}[args.command]
    return run_quietly("nmsr", args.command, lambda: handler(args))


def entry() -> None:
    """The ``nmsr`` console script: :func:`main`, then exit with its status.

    A Ctrl-C that lands while torch runs its own start-up code (embedded
    ``PyRun_String``) leaves CPython's "unhandled KeyboardInterrupt" flag set
    even though :func:`main` caught it, and the interpreter would then kill
    itself with SIGINT at exit instead of returning 130. After an interrupt
    everything is already cleaned up, so the process leaves at once.
    """
    code = main()
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
