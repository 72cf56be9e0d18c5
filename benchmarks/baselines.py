"""Baseline registration methods for the benchmark.

Every baseline is ``estimate(frames) -> fields``: frames (T, H, W) float32 in
[0, 1], fields (T-1, 2, H, W) float32 in the project convention
(:mod:`napari_nmsr.core.convention`: channel 0 = dy, channel 1 = dx, px, on
frame t+1's grid, pulling frame t: ``frame_t(p + u_t(p)) ~ frame_{t+1}(p)``).
A baseline whose library is missing raises :class:`BaselineUnavailable`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BaselineUnavailable", "BASELINES", "zero", "farneback", "ants_syn"]


class BaselineUnavailable(RuntimeError):
    """The library a baseline needs is not installed."""


def _check(frames) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected frames (T>=2, H, W), got {frames.shape}")
    return frames


def zero(frames) -> np.ndarray:
    """No motion: the floor every method must beat."""
    frames = _check(frames)
    t, h, w = frames.shape
    return np.zeros((t - 1, 2, h, w), np.float32)


#: OpenCV Farneback settings: 5 pyramid levels (reach ~15 px), box window
#: (flags=0). On our simulated cases the box window is the stronger baseline
#: (EPE 0.48/0.24/0.18/0.26 px vs 0.59/0.37/0.30/0.45 with the Gaussian one),
#: so that is what NMSR is compared against.
FARNEBACK = dict(pyr_scale=0.5, levels=5, winsize=15, iterations=5, poly_n=7, poly_sigma=1.5,
                 flags=0)


def farneback(frames, **overrides) -> np.ndarray:
    """OpenCV dense optical flow (Farneback 2003), converted to the project convention.

    ``calcOpticalFlowFarneback(prev, next)`` returns flow (H, W, 2) in (x, y)
    order with ``prev(y, x) ~ next(y + flow[..., 1], x + flow[..., 0])``.
    Called with prev = frame t+1 and next = frame t it is therefore a pull
    field on frame t+1's grid that samples frame t: exactly ``u_t`` once the
    channels are swapped to (y, x). ``--selfcheck`` in the benchmark verifies
    this on a known translation.
    """
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv is a test dependency
        raise BaselineUnavailable("opencv-python-headless is not installed") from exc
    frames = _check(frames)
    params = {**FARNEBACK, **overrides}
    img = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)  # Farneback wants 8-bit
    out = np.empty((len(frames) - 1, 2) + frames.shape[1:], np.float32)
    for t in range(len(frames) - 1):
        flow = cv2.calcOpticalFlowFarneback(img[t + 1], img[t], None, **params)
        out[t, 0] = flow[..., 1]
        out[t, 1] = flow[..., 0]
    return out


#: ANTs SyN with cross-correlation, as the paper's comparison (200 steps per level).
ANTS = dict(type_of_transform="SyN", syn_metric="CC", syn_sampling=6,
            reg_iterations=(200, 200, 200, 200))


_OUTSIDE = -1e6


def ants_syn(frames, **overrides) -> np.ndarray:
    """ANTs SyN (antspyx) per pair: fixed = frame t+1, moving = frame t.

    ANTs' forward transforms map fixed-space points to moving-space points,
    which is the pull convention. Rather than decode ITK's displacement
    files (axis order, physical space, the affine part), the transforms are
    applied to two coordinate images (row index, column index): the result
    at p is the (row, col) that p maps to in frame t, and u = that - p.
    """
    try:
        import ants
    except ImportError as exc:
        raise BaselineUnavailable("antspyx is not installed (pip install antspyx)") from exc
    frames = _check(frames)
    _, h, w = frames.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    params = {**ANTS, **overrides}
    out = np.empty((len(frames) - 1, 2, h, w), np.float32)
    for t in range(len(frames) - 1):
        fixed = ants.from_numpy(frames[t + 1])
        moving = ants.from_numpy(frames[t])
        reg = ants.registration(fixed=fixed, moving=moving, **params)
        for c, coord in enumerate((rows, cols)):
            mapped = ants.apply_transforms(
                fixed=fixed, moving=ants.from_numpy(coord), transformlist=reg["fwdtransforms"],
                interpolator="linear", defaultvalue=_OUTSIDE,
            ).numpy()
            base = rows if c == 0 else cols
            # Points mapped outside frame t (ANTs takes no NaN default): zero motion there.
            mapped = np.where(mapped > _OUTSIDE / 2, mapped, base)
            out[t, c] = mapped - base
    return out


#: Baselines by name.
BASELINES = {"zero": zero, "farneback": farneback, "ants": ants_syn}
