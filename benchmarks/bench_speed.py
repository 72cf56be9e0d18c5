"""Speed, memory and accuracy of NMSR against the classical methods, side by side.

    python benchmarks/bench_speed.py                        # every row below (~15 min on 2 cores)
    python benchmarks/bench_speed.py --rows sim128,sim256   # the NMSR / ANTs time ratio only
    python benchmarks/bench_speed.py --rows dicom,apical --methods nmsr

Rows (each a sequence with a known field where one exists):

* ``sim128``, ``sim256``: the simulated contrast-echo vortex (:mod:`napari_nmsr.core.simulate`),
  128 px x 12 frames and 256 px x 6 frames; every method with ONE thread (the
  issue's "1/3 of ANTs SyN's time per pair" is measured here).
* ``dicom``: the real 10-frame 430x600 parasternal cine of ``shared/data``
  (no mask; no ground truth, so the accuracy column is the final mean local
  CC, as the paper's Table 1); default threads, i.e. what ``nmsr register`` uses.
* ``apical``: a 45-frame 768x1024 cine made from the real echo frame resized
  to 768x1024 and moved by a known contraction + drift (each frame sampled
  once from the source through the composed map, 1 % noise), with an LV-sized
  elliptic mask, default threads; accuracy = endpoint error inside the mask.
* ``apical_nomask``: the same without a mask (the whole sector is registered).
* ``apical49``, ``apical49_nomask``: the same at 49 frames, the issue's GPU
  size (49 x 768 x 1024); run them with ``--device cuda``. The "dev MB" column
  is then torch's peak allocation on the device.

``--device`` (auto, cpu, cuda, mps) and ``--nmsr-set KEY=VALUE`` pass to the
engine's config; ``--data`` points at a copy of ``shared/data`` (a GPU machine
that only receives the repository).

``nmsr_before`` is the engine's default before this work (paper regulariser,
no affine stage, no cropping, 400/300/100/120 steps), for the time ratio.

For each (row, method): seconds per frame pair, total seconds, peak memory
(peak resident set above the level before the method, torch included; see
``bench_registration.Cost``) and accuracy. NMSR runs the default preset
through the same ``register()`` the CLI and GUI call, after the same time
estimate they print ("est s" column; "up to": with the most the U-Net scales' extensions add,
which the estimate states apart; "ext": whether some U-Net scale of this run did train on).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from baselines import BASELINES, BaselineUnavailable  # noqa: E402
from bench_registration import Cost  # noqa: E402
from napari_nmsr.core.device import release_host_memory  # noqa: E402

ROWS = ("sim128", "sim256", "dicom", "apical", "apical_nomask")
#: Rows run only when named (the GPU target's size; minutes on a CPU).
EXTRA_ROWS = ("apical49", "apical49_nomask")
METHODS = ("nmsr", "nmsr_before", "farneback", "dis", "openpiv", "ants")
#: The engine's default before the affine stage, bending term and cropping (for the time-per-pair ratio).
BEFORE = dict(regulariser="diffusion", smoothness=10.0, affine=False, steps=(400, 300, 100, 120), crop=False,
              crop_training=False, amp=False)
DATA = HERE.parent.parent / "shared" / "data"


def make_row(name: str):
    """(frames, mask or None, true fields or None, threads or None=default) for a row."""
    from napari_nmsr.core import simulate

    if name == "sim128":
        s = simulate.vortex(size=128, n_frames=12, seed=7)
        return s.frames, s.masks, s.fields, 1
    if name == "sim256":
        s = simulate.vortex(size=256, n_frames=6, seed=7)
        return s.frames, s.masks, s.fields, 1
    if name == "dicom":
        from napari_nmsr.core.io import load_sequence

        path = DATA / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        return load_sequence(path).frames, None, None, None
    if name in ("apical", "apical_nomask", "apical49", "apical49_nomask"):
        frames, mask, fields = apical_cine(49 if name.startswith("apical49") else 45)
        return frames, (None if name.endswith("nomask") else mask), fields, None
    raise ValueError(name)


def apical_cine(n_frames: int = 45, size=(768, 1024), seed: int = 0):
    """Real echo texture under a known contraction + drift: (frames, masks, fields) at ``size``."""
    import torch

    from napari_nmsr.core.convention import resize_image, warp
    from napari_nmsr.core.io import load_sequence

    src = load_sequence(DATA / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm").frames[0]
    h, w = size
    image = resize_image(torch.from_numpy(src)[None, None], size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c = np.array([0.55 * h, 0.45 * w], np.float32)
    rng = np.random.default_rng(seed)
    phase = np.sin(2 * np.pi * (np.arange(n_frames) / (n_frames - 1)))  # cumulative contraction
    drift = np.cumsum(rng.normal(0, 0.6, size=(n_frames, 2)), axis=0).astype(np.float32)

    def pull_to_source(t):
        """Map from frame-t pixels to source pixels (material at p in frame t came from q)."""
        k = 1.0 + 0.10 * phase[t]  # <1: contracted
        qy = c[0] + (yy - c[0] - drift[t, 0]) / k
        qx = c[1] + (xx - c[1] - drift[t, 1]) / k
        return np.stack((qy - yy, qx - xx))

    maps = [pull_to_source(t) for t in range(n_frames)]
    frames = np.empty((n_frames, h, w), np.float32)
    with torch.no_grad():
        for t in range(n_frames):
            frames[t] = warp(image, torch.from_numpy(maps[t])[None])[0, 0].numpy()
    frames = np.clip(frames + rng.normal(0, 0.01, frames.shape).astype(np.float32), 0, 1)
    # u_t(p) = where the material at p in frame t+1 was in frame t:
    # frame t+1 pulls from source at q = p + m_{t+1}(p); in frame t that source point is at p' with p' + m_t(p') = q.
    fields = np.empty((n_frames - 1, 2, h, w), np.float32)
    for t in range(n_frames - 1):
        k0, k1 = 1.0 + 0.10 * phase[t], 1.0 + 0.10 * phase[t + 1]
        # source point q of pixel p in frame t+1, then its position in frame t (closed form for this map)
        qy = c[0] + (yy - c[0] - drift[t + 1, 0]) / k1
        qx = c[1] + (xx - c[1] - drift[t + 1, 1]) / k1
        py = c[0] + drift[t, 0] + (qy - c[0]) * k0
        px = c[1] + drift[t, 1] + (qx - c[1]) * k0
        fields[t, 0], fields[t, 1] = py - yy, px - xx
    ry, rx = 0.22 * h, 0.14 * w
    masks = np.broadcast_to(((yy - c[0]) / ry) ** 2 + ((xx - c[1]) / rx) ** 2 < 1.0, (n_frames, h, w))
    return frames, np.ascontiguousarray(masks), fields


def run_method(method, frames, mask, threads, overrides=None, scale_seconds=None):
    """(fields (T-1, 2, H, W), mean CC or None, :class:`Estimate` or None, whether some U-Net scale
    trained on past its steps (the extension the estimate states apart) or None).

    ``overrides``: RegistrationConfig keywords for the NMSR methods;
    ``scale_seconds``: a list that receives each finished scale's seconds."""
    import torch

    from napari_nmsr.core.threads import use_threads

    n = use_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass
    if not method.startswith("nmsr"):
        return BASELINES[method](frames), None, None, None
    from napari_nmsr.core.estimate import estimate_seconds
    from napari_nmsr.core.register import TRAINED_ON, RegistrationConfig, register

    config = RegistrationConfig(**{**(BEFORE if method == "nmsr_before" else {}), **(overrides or {})})
    est = estimate_seconds(frames, mask, config)
    on_scale = None if scale_seconds is None else (lambda done: scale_seconds.append(done.seconds))
    res = register(frames, mask=mask, config=config, on_scale=on_scale)
    torch.set_num_threads(n)
    # the run's notes say when a U-Net scale trained on (its step count alone cannot: it may have
    # stopped early before it did)
    extended = any(TRAINED_ON in note for note in res.notes)
    return res.fields[-1], float(np.nanmean(res.metrics["mean_cc"][-1])), est, extended


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS + EXTRA_ROWS)}")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", default=str(HERE / "results" / "speed.json"))
    ap.add_argument("--device", default=None, help="engine device: auto (the default), cpu, cuda or mps")
    ap.add_argument("--nmsr-set", nargs="*", default=[], metavar="KEY=VALUE", help="RegistrationConfig overrides")
    ap.add_argument("--data", default=None, help="a copy of shared/data (default: ../shared/data)")
    args = ap.parse_args(argv)
    import torch

    from bench_suite import _overrides
    from napari_nmsr.core.device import describe_device, pick_device
    from napari_nmsr.core.threads import default_threads

    global DATA
    if args.data:
        DATA = Path(args.data)
    overrides = _overrides(args.nmsr_set)
    if args.device:
        overrides["device"] = args.device
    device = pick_device(overrides.get("device", "auto"))
    on_gpu = device.type == "cuda"
    print(f"engine device: {describe_device(device)}; torch {torch.__version__}; overrides {overrides or 'none'}", flush=True)

    rows = []
    header = f"{'row':<14} {'T x H x W':>14} {'method':<10} {'thr':>3} {'s/pair':>8} {'total s':>8} {'est s':>6} {'up to':>6} {'ext':>3} {'peak MB':>8} {'EPE px':>7} {'mean CC':>8}" + ("  dev MB  s per scale" if on_gpu else "")
    print(header, flush=True)
    for row in args.rows.split(","):
        frames, mask, truth, threads = make_row(row)
        t, h, w = frames.shape
        for method in args.methods.split(","):
            if method == "ants" and h * w > 300 * 300:
                continue  # minutes per pair: not a comparison anyone would wait for
            if method == "openpiv" and t * h * w > 20e6:
                continue
            scale_s: list[float] = []
            if on_gpu:
                torch.cuda.reset_peak_memory_stats(device)
            # Freed memory the process still holds (building the sequence, the previous method) would be
            # reused unseen by the method and hide part of its peak: give it back to the system first.
            gc.collect()
            release_host_memory()
            try:
                with Cost(trace_python=False) as cost:  # timed as users run it (no tracemalloc)
                    fields, cc, est, extended = run_method(method, frames, mask, threads, overrides, scale_s)
            except BaselineUnavailable as exc:
                print(f"{row:<14} {method:<10} skipped: {exc}", flush=True)
                continue
            epe = None
            if truth is not None:
                m = np.ones((t - 1, h, w), bool) if mask is None else mask[1:]
                epe = float(np.hypot(fields[:, 0] - truth[:, 0], fields[:, 1] - truth[:, 1])[m].mean())
            r = {"row": row, "shape": [t, h, w], "method": method, "threads": threads or default_threads(),
                 "s_per_pair": cost.wall / (t - 1), "total_s": cost.wall, "cpu_s": cost.cpu,
                 "estimate_s": None if est is None else est.total_s,
                 "estimate_max_s": None if est is None else est.total_s + est.extend_s, "extended": extended,
                 "peak_mb": cost.rss_peak_delta_mb, "epe": epe, "mean_cc": cc,
                 "sequence_mb": frames.nbytes / 2**20, "device": describe_device(device),
                 "overrides": {k: str(v) for k, v in overrides.items()}, "scale_s": scale_s,
                 "device_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None}
            rows.append(r)
            print(f"{row:<14} {f'{t}x{h}x{w}':>14} {method:<10} {r['threads']:>3} {r['s_per_pair']:>8.3f} "
                  f"{r['total_s']:>8.1f} {'' if est is None else format(r['estimate_s'], '.0f'):>6} "
                  f"{'' if est is None else format(r['estimate_max_s'], '.0f'):>6} "
                  f"{'' if extended is None else 'yes' if extended else 'no':>3} {r['peak_mb']:>8.0f} "
                  f"{'' if epe is None else format(epe, '.3f'):>7} {'' if cc is None else format(cc, '.4f'):>8}"
                  + (f" {r['device_peak_mb']:>7.0f}  {'/'.join(format(x, '.1f') for x in scale_s)}" if on_gpu else ""), flush=True)
    print("\nratios (same run):")
    for row in ("sim128", "sim256"):
        by = {r["method"]: r for r in rows if r["row"] == row}
        if "nmsr" in by and "ants" in by:
            print(f"  {row}: NMSR / ANTs SyN time per pair = {by['nmsr']['s_per_pair'] / by['ants']['s_per_pair']:.2f} "
                  f"(EPE {by['nmsr']['epe']:.3f} vs {by['ants']['epe']:.3f} px)")
        if "nmsr" in by and "nmsr_before" in by:
            print(f"  {row}: NMSR now / before = {by['nmsr']['s_per_pair'] / by['nmsr_before']['s_per_pair']:.2f} "
                  f"(EPE {by['nmsr']['epe']:.3f} vs {by['nmsr_before']['epe']:.3f} px)")
    for r in rows:
        if r["method"] == "nmsr" and r["row"].startswith("apical"):
            print(f"  {r['row']}: peak {r['peak_mb']:.0f} MB vs 3 x sequence + 1 GB = {3 * r['sequence_mb'] + 1024:.0f} MB")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
