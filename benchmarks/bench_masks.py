"""Quality bar of the blood-pool masks and contour tracking (issue 3), printed as tables.

    python benchmarks/bench_masks.py [--seeds 3] [--size 128]

1. Snap: mean distance (px) from the snapped ED/ES contour to the true border,
   for drawings that are too big, too small or shifted (bar: < 1.5 px).
2. Masks over the cycle: Dice of each frame's interpolated mask with the true
   cavity (bar: >= 0.9 on every frame).
3. Tracking with the TRUE fields: distance of tracked contour points from
   their true positions over the whole cycle (bar: < 1 px mean).

Two sources: a speckled ellipse that contracts ED -> ES -> ED linearly (made
here, exact boundary and exact fields), and the project simulator's
``vortex`` case (``napari_nmsr.core.simulate``: scatterer speckle, contrast
polarity, sinusoidal contraction, true fields and cavity masks).

Measured (3 seeds, 128 px): ellipse snap 0.23 px mean (worst 0.41), Dice >=
0.983, tracking error 0.000 px; simulator snap 0.98 px mean (worst 2.10, 1 of
18 cases over 1.5), Dice >= 0.962, tracked contour 0.17 px from the true
outline. At --size 96 the ellipse still passes (0.22 px, Dice >= 0.979) but
the simulator's 6-px wall is blurred by its fixed-size PSF into a ramp with
no distinct inner border (snap 1.70 px mean, Dice >= 0.88). On the simulator
the snapped border also sits ~0.5-1 px outside the true one even from an
exact drawing: the PSF spreads the bright contrast blood outwards.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_nmsr.core.masks import MaskWarning, dice, mask_outline, masks_over_cycle, normalise_contour, snap_contour
from napari_nmsr.core.tracking import contour_distances, track_points

DRAWINGS = {  # name: (grow px, shift (dy, dx) px)
    "exact": (0.0, (0, 0)),
    "3 px too big": (3.0, (0, 0)),
    "3 px too small": (-3.0, (0, 0)),
    "shifted (3, 2)": (0.0, (3, 2)),
    "4 px big + shift": (4.0, (2, -2)),
}


class Ellipse:
    """Speckled LV-like ellipse (dark blood, bright wall) scaled by ``scales[t]`` about its centre."""

    def __init__(self, size=128, n_frames=12, es_frame=4, es_scale=0.75, seed=0):
        self.shape, self.n_frames, self.es_frame = (size, size), n_frames, es_frame
        self.centre = np.array([0.5 * size, 0.5 * size])
        self.axes = np.array([0.3 * size, 0.2 * size])
        t = np.arange(n_frames, dtype=float)
        self.scales = np.where(t <= es_frame, 1 + (es_scale - 1) * t / es_frame,
                               es_scale + (1 - es_scale) * (t - es_frame) / (n_frames - es_frame))
        rng = np.random.default_rng(seed)
        speck = ndi.gaussian_filter(rng.rayleigh(1.0, size=(2 * size, 2 * size)), 0.7)
        speck /= speck.mean()
        yy, xx = np.mgrid[:size, :size].astype(float)
        frames = []
        for s in self.scales:
            my, mx = self.centre[0] + (yy - self.centre[0]) / s, self.centre[1] + (xx - self.centre[1]) / s
            r = np.hypot((my - self.centre[0]) / self.axes[0], (mx - self.centre[1]) / self.axes[1])
            refl = np.where(r < 1, 0.12, np.where(r < 1 + 0.07 * size / self.axes.min(), 0.75, 0.35))
            tex = ndi.map_coordinates(speck, [my + size / 2, mx + size / 2], order=1, mode="reflect")
            frames.append(np.clip(0.8 * refl * tex, 0, 1))
        self.frames = np.asarray(frames, np.float32)
        rel = np.stack([yy - self.centre[0], xx - self.centre[1]])
        self.fields = np.stack([(self.scales[t] / self.scales[t + 1] - 1) * rel
                                for t in range(n_frames - 1)]).astype(np.float32)

    def mask(self, t, grow=0.0, shift=(0, 0)):
        yy, xx = np.mgrid[: self.shape[0], : self.shape[1]].astype(float)
        ry, rx = self.scales[t] * self.axes + grow
        return ((yy - self.centre[0] - shift[0]) / ry) ** 2 + ((xx - self.centre[1] - shift[1]) / rx) ** 2 <= 1

    def border(self, t, n=4000):
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return self.centre + self.scales[t] * self.axes * np.stack([np.sin(a), np.cos(a)], 1)


def _to_curve(points, curve):
    return np.sqrt(((points[:, None] - curve[None]) ** 2).sum(-1)).min(1)


def _grow(mask, px):
    if px == 0:
        return mask
    op = ndi.binary_dilation if px > 0 else ndi.binary_erosion
    return op(mask, ndi.generate_binary_structure(2, 1), iterations=abs(int(px)))


def bench_ellipse(seeds, size):
    snap_rows, dice_rows, track_rows = [], [], []
    for seed in range(seeds):
        e = Ellipse(size=size, seed=seed)
        for name, (grow, shift) in DRAWINGS.items():
            for t in (0, e.es_frame):
                m = e.mask(t, grow, shift)
                drawn = _to_curve(normalise_contour(mask_outline(m)), e.border(t)).mean()
                snapped = _to_curve(snap_contour(e.frames[t], m), e.border(t))
                snap_rows.append((f"ellipse s{seed} {'ED' if t == 0 else 'ES'} {name}", drawn,
                                  snapped.mean(), snapped.max()))
        res = masks_over_cycle(e.frames, {0: e.mask(0, 3.0)}, {e.es_frame: e.mask(e.es_frame, -2.0, (2, 0))},
                               cycle_length=e.n_frames)
        d = [dice(res.masks[t], e.mask(t)) for t in range(e.n_frames)]
        dice_rows.append((f"ellipse s{seed} (ED +3 px, ES -2 px shifted)", min(d), float(np.mean(d))))
        start = normalise_contour(e.border(0)[::40])
        tracked = track_points(e.fields, start, 0)
        truth = np.stack([e.centre + e.scales[t] * (start - e.centre) for t in range(e.n_frames)])
        err = np.linalg.norm(tracked.positions - truth, axis=-1)
        track_rows.append((f"ellipse s{seed} true fields, from ED", err.mean(), err.max()))
    return snap_rows, dice_rows, track_rows


def bench_registered(size):
    """Contour tracked through NMSR's own fields vs the same points through the true fields."""
    from napari_nmsr.core.register import RegistrationConfig, register
    from napari_nmsr.core.simulate import vortex

    sim = vortex(size=size, n_frames=12, seed=0)
    start = normalise_contour(mask_outline(sim.masks[sim.ed_index]))
    truth = track_points(sim.fields, start, sim.ed_index).positions
    res = register(sim.frames, sim.masks, RegistrationConfig())
    est = track_points(res.final_field, start, sim.ed_index).positions
    err = np.linalg.norm(est - truth, axis=-1)  # (T, N) px
    return [(f"vortex s0 NMSR fields vs true, frame {t}", float(err[t].mean()), float(err[t].max()))
            for t in range(len(err))]


def bench_simulator(seeds, size):
    try:
        from napari_nmsr.core.simulate import vortex
    except ImportError:
        return [], [], []
    snap_rows, dice_rows, track_rows = [], [], []
    for seed in range(seeds):
        sim = vortex(size=size, n_frames=12, seed=seed)
        T, ed, es = len(sim.frames), sim.ed_index, sim.es_index
        for name, px in (("exact", 0), ("3 px too big", 3), ("3 px too small", -3)):
            for t in (ed, es):
                truth = mask_outline(sim.masks[t])
                snapped = _to_curve(snap_contour(sim.frames[t], _grow(sim.masks[t], px)), truth)
                drawn = _to_curve(normalise_contour(mask_outline(_grow(sim.masks[t], px))), truth).mean()
                snap_rows.append((f"vortex s{seed} {'ED' if t == ed else 'ES'} {name}", drawn,
                                  snapped.mean(), snapped.max()))
        # Frame T-1 closes the cycle (back at ED), so the cycle is T-1 frames long.
        res = masks_over_cycle(sim.frames, {ed: _grow(sim.masks[ed], 3)}, {es: _grow(sim.masks[es], -2)},
                               cycle_length=T - 1)
        d = [dice(res.masks[t], sim.masks[t]) for t in range(T)]
        dice_rows.append((f"vortex s{seed} (ED +3 px, ES -2 px)", min(d), float(np.mean(d))))
        start = normalise_contour(mask_outline(sim.masks[ed]))
        tracked = track_points(sim.fields, start, ed)
        mean, hd = contour_distances(tracked.positions, np.stack([normalise_contour(mask_outline(m), 400) for m in sim.masks]))
        track_rows.append((f"vortex s{seed} true fields, to true cavity outline", float(mean.mean()),
                           float(hd.max())))
    return snap_rows, dice_rows, track_rows


def _table(title, header, rows, fmt):
    print(f"\n{title}\n" + " | ".join(header))
    for r in rows:
        print(f"{r[0]:<48} | " + " | ".join(fmt.format(v) for v in r[1:]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--registered", action="store_true",
                        help="also track the ED contour through NMSR's own fields (one CPU-preset run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", MaskWarning)
    results = {"ellipse": bench_ellipse(args.seeds, args.size), "simulator": bench_simulator(args.seeds, args.size)}
    snap, dices, track = (sum((r[i] for r in results.values()), []) for i in range(3))
    _table("1. Snap (px to true border; bar mean < 1.5)",
           ["case".ljust(48), "drawn mean", "snapped mean", "snapped max"], snap, "{:10.2f}")
    _table("2. Masks over the cycle (Dice with true cavity; bar min >= 0.9)",
           ["case".ljust(48), "min Dice", "mean Dice"], dices, "{:8.3f}")
    _table("3. Tracking with true fields (px; bar mean < 1)",
           ["case".ljust(48), "mean", "max / Hausdorff"], track, "{:8.3f}")
    if args.registered:
        rows = bench_registered(args.size)
        _table("4. Tracking with NMSR fields, point by point vs true tracking (px; bar mean < 1)",
               ["case".ljust(48), "mean", "max"], rows, "{:8.3f}")
        print(f"registered: worst per-frame mean {max(r[1] for r in rows):.3f} px over the cycle")
    print()
    ok_all = True
    for source, (s_rows, d_rows, t_rows) in results.items():
        if not s_rows:
            print(f"{source}: not available")
            continue
        snaps = np.array([r[2] for r in s_rows])
        worst_dice, worst_track = min(r[1] for r in d_rows), max(r[1] for r in t_rows)
        ok = snaps.max() < 1.5 and worst_dice >= 0.9 and worst_track < 1.0
        ok_all &= ok
        print(f"{source}: snapped mean {snaps.mean():.2f} px (worst {snaps.max():.2f}, "
              f"{int((snaps >= 1.5).sum())}/{len(snaps)} cases >= 1.5), worst Dice {worst_dice:.3f}, "
              f"worst tracking mean {worst_track:.3f} px -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
