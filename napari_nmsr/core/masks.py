"""Left-ventricle blood-pool masks on every frame from an ED and an ES drawing.

The paper (section 3) removes the myocardium before tracking blood: masks of
the LV blood pool drawn at end-diastole (ED) and end-systole (ES) are snapped
to the endocardial border with an active contour of 100 points, the points are
interpolated linearly over the cardiac cycle, and a radial-basis-function
curve through each frame's points is rasterised to that frame's mask.

Conventions used here:

* Images and masks are ``(H, W)``; sequences ``(T, H, W)``. Contours are
  ``(N, 2)`` float arrays of (y, x) = (row, column) pixel coordinates.
* **Point correspondence.** Every contour leaving this module is
  *normalised*: its points run in the direction of positive shoelace area in
  (x = column, y = row) coordinates -- counter-clockwise in the image's own
  (x, y) frame, which *looks clockwise on screen* because rows grow
  downwards -- and point 0 is where the ray from the contour's area centroid
  towards +x (straight to the right on screen) leaves the contour. Points are
  equally spaced in arc length, so point k means the same place on an ED and
  an ES outline whichever way the user drew them.
* **Snake start.** The active contour starts from the drawn mask's own
  outline rather than a circle: a circle cannot reach into an elongated or
  dented LV, while the outline is already within a few pixels of the border.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage as ndi
from scipy.interpolate import RBFInterpolator
from skimage import measure
from skimage.draw import polygon
from skimage.filters import gaussian, sobel
from skimage.segmentation import active_contour

from .errors import MaskError, SequenceError

__all__ = [
    "MaskWarning",
    "CycleMasks",
    "N_POINTS",
    "SYSTOLE_FRACTION",
    "clean_mask",
    "mask_outline",
    "signed_area",
    "normalise_contour",
    "correspond",
    "snap_contour",
    "interpolate_contours",
    "smooth_boundary",
    "contour_to_mask",
    "masks_over_cycle",
    "wall_masks",
    "dice",
]

#: Points per contour (the paper's 100 spline points).
N_POINTS = 100
#: Systole as a fraction of the cycle, used only when the cycle length can be
#: neither measured (two ED or two ES marks) nor was given (about 0.4 at rest).
SYSTOLE_FRACTION = 0.4
_MIN_AREA_PX = 20


class MaskWarning(UserWarning):
    """A mask was usable only after a documented fallback (see the message)."""


@dataclass
class CycleMasks:
    """Blood-pool masks over a sequence.

    masks: (T, H, W) bool. contours: (T, N, 2) float (y, x) pixels, the
    interpolated points behind each mask. keyframes: {frame: (phase, (N, 2))}
    the snapped ED/ES contours.
    """

    masks: np.ndarray
    contours: np.ndarray
    keyframes: dict


# --------------------------------------------------------------- masks -----
def clean_mask(mask, shape, *, name: str = "mask") -> np.ndarray:
    """Validate a drawn mask and return one filled blob (H, W) bool.

    Non-zero (or > 0.5 for float masks) is inside. Holes are filled. Several
    disjoint blobs fall back to the largest one, with a :class:`MaskWarning`;
    a mask touching the image edge is kept (its outline runs along the edge)
    with a warning. Empty, tiny, non-finite or wrongly shaped masks raise
    :class:`MaskError`.
    """
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise MaskError(
            f"The {name} has shape {m.shape} but the frames are {tuple(shape)} (rows, columns): "
            "draw it on the frames it belongs to."
        )
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)):
            raise MaskError(f"The {name} contains NaN or infinite values.")
        m = m > 0.5
    else:
        m = m != 0
    labels, n = ndi.label(m)
    if n == 0:
        raise MaskError(f"The {name} is empty: paint the left-ventricle blood pool on that frame.")
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        warnings.warn(
            f"The {name} has {n} separate blobs; using the largest ({sizes.max()} px) "
            f"and ignoring {sizes.sum() - sizes.max()} px elsewhere.",
            MaskWarning,
            stacklevel=2,
        )
        m = labels == keep
    m = ndi.binary_fill_holes(m)
    if m.sum() < _MIN_AREA_PX:
        raise MaskError(f"The {name} covers only {int(m.sum())} pixels: too small to outline a ventricle.")
    if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
        warnings.warn(
            f"The {name} touches the image edge; its outline follows the edge there.",
            MaskWarning,
            stacklevel=2,
        )
    return m


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Outline (M, 2) (y, x) of a clean mask, on the pixel-edge level (0.5)."""
    padded = np.pad(mask.astype(np.float32), 1)  # so a mask on the edge still gives a closed outline
    outline = max(measure.find_contours(padded, 0.5), key=len) - 1.0
    h, w = mask.shape
    return np.clip(outline, [0, 0], [h - 1, w - 1])


# ------------------------------------------------------------ contours -----
def _closed(points: np.ndarray) -> np.ndarray:
    return np.vstack([points, points[:1]])


def signed_area(points: np.ndarray) -> float:
    """Shoelace area with x = column, y = row; positive is this module's direction."""
    y, x = points[:, 0], points[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _centroid(points: np.ndarray) -> np.ndarray:
    y, x = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-9:
        return points.mean(axis=0)
    return np.array(
        [((y + np.roll(y, -1)) * cross).sum(), ((x + np.roll(x, -1)) * cross).sum()]
    ) / (6.0 * area)


def normalise_contour(points, n_points: int = N_POINTS) -> np.ndarray:
    """Resample a closed contour to ``n_points`` in this module's correspondence.

    Direction: positive :func:`signed_area`. Start: the farthest crossing of
    the ray from the area centroid towards +x (or, if the ray misses, the
    point closest to that direction). Spacing: equal arc length.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3 or not np.all(np.isfinite(p)):
        raise MaskError(f"A contour must be at least 3 finite (y, x) points, got shape {p.shape}.")
    if signed_area(p) < 0:
        p = p[::-1]
    if abs(signed_area(p)) < 1e-6:
        raise MaskError("The contour encloses no area (all points on a line).")
    c = _centroid(p)
    seg = np.diff(_closed(p), axis=0)
    seglen = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seglen)])
    # Crossings of the horizontal line y = c_y to the right of the centroid.
    y0, y1 = p[:, 0], p[:, 0] + seg[:, 0]
    crosses = ((y0 - c[0]) * (y1 - c[0]) <= 0) & (y0 != y1)
    t = np.where(crosses, (c[0] - y0) / np.where(y0 != y1, y1 - y0, 1.0), 0.0)
    xs = p[:, 1] + t * seg[:, 1]
    ok = crosses & (xs >= c[1])
    if ok.any():
        i = int(np.argmax(np.where(ok, xs, -np.inf)))
        start = cum[i] + t[i] * seglen[i]
    else:
        ang = np.abs(np.arctan2(p[:, 0] - c[0], p[:, 1] - c[1]))
        start = cum[int(np.argmin(ang))]
    u = (start + np.arange(n_points) * cum[-1] / n_points) % cum[-1]
    q = _closed(p)
    return np.stack([np.interp(u, cum, q[:, 0]), np.interp(u, cum, q[:, 1])], axis=1)


def correspond(contour_a, contour_b, n_points: int = N_POINTS):
    """Put two contours (e.g. ED and ES) in point correspondence; returns both normalised."""
    return normalise_contour(contour_a, n_points), normalise_contour(contour_b, n_points)


# --------------------------------------------------------------- snake -----
def _edge_energy(image: np.ndarray, sigma: float) -> np.ndarray:
    """Edge strength of the smoothed image scaled to ~[0, 1] (polarity-free)."""
    e = sobel(gaussian(image, sigma, preserve_range=True))
    top = np.percentile(e, 99)
    return np.clip(e / top, 0.0, 1.0) if top > 0 else np.zeros_like(e)


def _free_runs(held: np.ndarray):
    """Index arrays of the cyclic runs of points not ``held``, each with one held point at both ends."""
    n = len(held)
    start = int(np.argmax(held))  # a held point, so no run wraps past the loop's end
    runs, run = [], []
    for k in range(start + 1, start + n + 1):
        if held[k % n]:
            if run:
                runs.append(np.arange(run[0] - 1, k + 1) % n)
            run = []
        else:
            run.append(k)
    return runs


def _snake(energy, points, held, **options):
    """One active-contour pass; points on the image edge (``held``) stay where they are."""
    if not held.any():
        return active_contour(energy, points, boundary_condition="periodic", **options)
    out = points.copy()
    for idx in _free_runs(held):
        if len(idx) >= 5:  # fewer free points than that: nothing worth snapping
            out[idx] = active_contour(energy, points[idx], boundary_condition="fixed", **options)
    return out


def snap_contour(image, mask, n_points: int = N_POINTS, *, sigmas=(3.0, 2.0), median_size: int = 5,
                 drawing_weight: float = 0.1, edge_weight: float = 0.1, alpha: float = 0.01, beta: float = 3.0,
                 max_shift: float = 8.0, name: str = "mask") -> np.ndarray:
    """Snap a drawn mask's outline to the nearest strong border of ``image``.

    image (H, W) float; mask (H, W) bool. The frame is median-filtered
    (``median_size`` px: removes the dark holes of log-compressed speckle that
    would trap the snake) and the snake, starting on the mask's outline, runs
    once per Gaussian scale in ``sigmas`` (px, coarse first: the coarse pass
    reaches a border a few px away, the fine pass settles on it; the coarse
    sigma must stay below half the wall thickness or the two wall borders
    merge). Edge strength, not brightness, attracts it, so dark (B-mode) and
    bright (contrast) blood pools both work; ``drawing_weight`` of the
    attraction comes from the drawn mask's own edge, so where the image shows
    no clear border the outline stays near the drawing. Points on the image edge stay
    there; no point moves more than ``max_shift`` px from the drawing
    (warned). The defaults were tuned on speckle at 96-128 px
    (benchmarks/bench_masks.py). Returns (n_points, 2) (y, x), normalised
    (see :func:`normalise_contour`).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise SequenceError(f"Expected one 2-D frame to snap the contour on, got shape {img.shape}.")
    if not np.all(np.isfinite(img)):
        raise SequenceError("The frame contains NaN or infinite values.")
    m = clean_mask(mask, img.shape, name=name)
    drawn = normalise_contour(mask_outline(m), n_points)
    if np.ptp(img) <= 1e-8:
        warnings.warn("The frame is blank; keeping the drawn outline unsnapped.", MaskWarning, stacklevel=2)
        return drawn
    h, w = img.shape
    held = np.minimum(np.minimum(drawn[:, 0], h - 1 - drawn[:, 0]), np.minimum(drawn[:, 1], w - 1 - drawn[:, 1])) < 0.5
    snake = drawn.copy()
    despeckled = ndi.median_filter(img, size=int(median_size)) if median_size and median_size > 1 else img
    for sigma in sigmas:
        energy = (1.0 - drawing_weight) * _edge_energy(despeckled, float(sigma))
        if drawing_weight:
            drawn_edge = sobel(gaussian(m.astype(np.float64), float(sigma)))
            energy += drawing_weight * drawn_edge / drawn_edge.max()
        energy *= edge_weight
        snake = _snake(energy, snake, held, alpha=alpha, beta=beta, w_line=1.0, w_edge=0.0,
                       gamma=0.01, max_num_iter=2500)
    shift = snake - drawn
    dist = np.linalg.norm(shift, axis=1)
    if np.any(dist > max_shift):
        warnings.warn(
            f"The snapped outline of the {name} wanted to move up to {dist.max():.1f} px from the drawing; "
            f"limited to {max_shift:g} px. Check the {name}.",
            MaskWarning,
            stacklevel=2,
        )
        snake = drawn + shift * np.minimum(1.0, max_shift / np.maximum(dist, 1e-12))[:, None]
    return normalise_contour(np.clip(snake, [0, 0], [h - 1, w - 1]), n_points)


# ------------------------------------------------------- interpolation -----
def _phase_lengths(marks, cycle_length):
    """Mean systole (ED->ES) and diastole (ES->ED) lengths in frames."""
    sys_ = [b[0] - a[0] for a, b in zip(marks, marks[1:]) if a[1] == "ED"]
    dia = [b[0] - a[0] for a, b in zip(marks, marks[1:]) if a[1] == "ES"]
    s = float(np.mean(sys_)) if sys_ else None
    d = float(np.mean(dia)) if dia else None
    if s is not None and d is not None:
        return s, d
    known = s if s is not None else d
    if cycle_length is None:
        frac = SYSTOLE_FRACTION if s is not None else 1.0 - SYSTOLE_FRACTION
        cycle_length = known / frac
        warnings.warn(
            f"Cycle length unknown: assuming {cycle_length:.1f} frames (systole = "
            f"{SYSTOLE_FRACTION:.0%} of the cycle). Mark the next ED or ES, or give the cycle length "
            f"(cycle_length=, or 'Cycle length' in the panel's Sequence section).",
            MaskWarning,
            stacklevel=3,
        )
    other = float(cycle_length) - known
    if other <= 0:
        raise MaskError(
            f"The cycle length ({cycle_length} frames) is not longer than the marked "
            f"{'systole' if s is not None else 'diastole'} ({known:g} frames)."
        )
    return (known, other) if s is not None else (other, known)


def interpolate_contours(ed: Mapping[int, np.ndarray], es: Mapping[int, np.ndarray], n_frames: int,
                         *, cycle_length: float | None = None) -> np.ndarray:
    """Contour points on every frame, linear in time between ED and ES marks.

    ed, es: {frame index: (N, 2) contour}; several of each for several beats,
    alternating ED/ES in time. Between marks the points move linearly (ED to
    ES in systole, ES to the next ED in diastole); before the first and after
    the last mark the same periodic rule repeats with the measured systole and
    diastole lengths (``cycle_length`` in frames fills in a phase that was
    never marked). Returns (n_frames, N, 2) float (y, x).
    """
    n_frames = int(n_frames)
    if n_frames < 1:
        raise MaskError("The sequence has no frames.")
    if not ed or not es:
        raise MaskError("Mark at least one end-diastole (ED) and one end-systole (ES) frame.")
    marks, seen = [], {}
    for phase, group in (("ED", ed), ("ES", es)):
        for f, c in group.items():
            f = int(f)
            if not 0 <= f < n_frames:
                raise MaskError(f"The {phase} frame {f} is outside the sequence (frames 0 to {n_frames - 1}).")
            if f in seen:
                raise MaskError(f"{seen[f]} and {phase} are both marked on frame {f}: mark them on different frames.")
            seen[f] = phase
            marks.append((float(f), phase, c))
    marks.sort(key=lambda m: m[0])
    for a, b in zip(marks, marks[1:]):
        if a[1] == b[1]:
            raise MaskError(f"Two {a[1]} frames ({int(a[0])} and {int(b[0])}) have no "
                            f"{'ES' if a[1] == 'ED' else 'ED'} between them.")
    n_points = len(np.asarray(marks[0][2]))
    marks = [(f, ph, normalise_contour(c, n_points)) for f, ph, c in marks]
    systole, diastole = _phase_lengths(marks, cycle_length)
    other = {"ED": "ES", "ES": "ED"}
    first = {ph: next(m[2] for m in marks if m[1] == ph) for ph in ("ED", "ES")}
    last = {ph: next(m[2] for m in reversed(marks) if m[1] == ph) for ph in ("ED", "ES")}
    while marks[0][0] > 0:  # periodic extension backwards
        f, ph, _ = marks[0]
        marks.insert(0, (f - (systole if ph == "ES" else diastole), other[ph], first[other[ph]]))
    while marks[-1][0] < n_frames - 1:  # and forwards
        f, ph, _ = marks[-1]
        marks.append((f + (systole if ph == "ED" else diastole), other[ph], last[other[ph]]))
    times = np.array([m[0] for m in marks])
    out = np.empty((n_frames, n_points, 2))
    for t in range(n_frames):
        i = min(int(np.searchsorted(times, t, side="right")) - 1, len(marks) - 2)
        a = (t - times[i]) / (times[i + 1] - times[i])
        out[t] = (1.0 - a) * marks[i][2] + a * marks[i + 1][2]
    return out


# ------------------------------------------------- smoothing and masks -----
def smooth_boundary(points, smoothing: float = 0.1, n_out: int | None = None) -> np.ndarray:
    """Smooth closed curve (n_out, 2) through a contour's points by RBF.

    The points are parametrised by arc-length angle s in [0, 2 pi) and fed to
    a thin-plate-spline RBF as (cos s, sin s), so the curve closes on itself
    without a seam. ``smoothing`` 0 interpolates exactly; ~0.1 removes
    sub-pixel jitter of 100-point contours; larger values round corners off.
    """
    p = np.asarray(points, dtype=np.float64)
    seglen = np.linalg.norm(np.diff(_closed(p), axis=0), axis=1)
    perimeter = seglen.sum()
    s = 2 * np.pi * np.concatenate([[0.0], np.cumsum(seglen)[:-1]]) / perimeter
    rbf = RBFInterpolator(np.stack([np.cos(s), np.sin(s)], 1), p, smoothing=smoothing,
                          kernel="thin_plate_spline")
    n_out = int(n_out or max(4 * len(p), int(2 * perimeter)))
    so = np.linspace(0.0, 2 * np.pi, n_out, endpoint=False)
    return rbf(np.stack([np.cos(so), np.sin(so)], 1))


def contour_to_mask(points, shape, smoothing: float = 0.1) -> np.ndarray:
    """Rasterise the RBF-smoothed contour to an (H, W) bool mask (pixel centres inside)."""
    curve = smooth_boundary(points, smoothing)
    mask = np.zeros(tuple(shape), dtype=bool)
    rr, cc = polygon(curve[:, 0], curve[:, 1], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def masks_over_cycle(frames, ed: Mapping[int, np.ndarray], es: Mapping[int, np.ndarray], *,
                     n_points: int = N_POINTS, smoothing: float = 0.1, cycle_length: float | None = None,
                     snap: bool = True, **snap_options) -> CycleMasks:
    """Blood-pool mask on every frame from drawn ED and ES masks (the paper's recipe).

    frames (T, H, W); ed / es: {frame index: (H, W) mask}. Each drawn mask is
    snapped on its own frame (``snap=False`` keeps the drawn outline), the
    points are interpolated over the cycle (:func:`interpolate_contours`) and
    each frame's RBF curve is rasterised (:func:`contour_to_mask`).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or min(frames.shape) < 1:
        raise SequenceError(f"Expected frames as (T, H, W), got shape {frames.shape}.")
    T, H, W = frames.shape
    contours = {}
    for phase, group in (("ED", ed), ("ES", es)):
        out = {}
        for f, m in group.items():
            if not 0 <= int(f) < T:
                raise MaskError(f"The {phase} frame {int(f)} is outside the sequence (frames 0 to {T - 1}).")
            if snap:
                out[int(f)] = snap_contour(frames[int(f)], m, n_points, name=f"{phase} mask on frame {int(f)}", **snap_options)
            else:
                out[int(f)] = normalise_contour(mask_outline(clean_mask(m, (H, W), name=f"{phase} mask")), n_points)
        contours[phase] = out
    points = interpolate_contours(contours["ED"], contours["ES"], T, cycle_length=cycle_length)
    masks = np.stack([contour_to_mask(p, (H, W), smoothing) for p in points])
    keyframes = {f: (ph, c) for ph in ("ED", "ES") for f, c in contours[ph].items()}
    return CycleMasks(masks=masks, contours=points, keyframes=keyframes)


def wall_masks(inner, outer) -> np.ndarray:
    """Myocardial wall = outer (epicardial) mask minus inner (endocardial) mask.

    inner, outer: (H, W) or (T, H, W) bool of equal shape. Raises
    :class:`MaskError` when the inner mask is not smaller than the outer one
    on some frame (swapped or mixed-up masks).
    """
    a, b = np.asarray(inner) != 0, np.asarray(outer) != 0
    if a.shape != b.shape:
        raise MaskError(f"The inner mask {a.shape} and the outer mask {b.shape} differ in shape.")
    wall = b & ~a
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    for t, (ai, bi) in enumerate(zip(a3, b3)):
        if ai.sum() >= bi.sum():
            raise MaskError(f"On frame {t} the inner (blood) mask is not smaller than the outer "
                            "(epicardial) mask: were they swapped?")
        spill = (ai & ~bi).sum() / max(ai.sum(), 1)
        if spill > 0.01:
            warnings.warn(f"On frame {t}, {spill:.0%} of the inner mask lies outside the outer mask.",
                          MaskWarning, stacklevel=2)
    return wall


def dice(a, b) -> float:
    """Dice overlap of two bool masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)
