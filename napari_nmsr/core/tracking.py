"""Lagrangian tracking of points and contours through registration fields.

Fields follow :mod:`napari_nmsr.core.convention`: ``fields`` is
(T-1, 2, H, W) float32 pixels, ``u_t`` lives on frame t+1's grid and pulls,
so material at ``p`` in frame t+1 was at ``p + u_t(p)`` in frame t.

* Backward (t+1 -> t) is direct: ``p_t = p_{t+1} + u_t(p_{t+1})``.
* Forward (t -> t+1) needs the inverse: the ``q`` on frame t+1 with
  ``q + u_t(q) = p_t``, found by the fixed-point iteration
  ``q <- p_t - u_t(q)`` (it converges while the field's gradient is below 1,
  i.e. for any field that does not fold).

Fields are sampled bilinearly at sub-pixel positions
(:func:`~napari_nmsr.core.convention.sample_field`). A point that leaves the
image ``[0, H-1] x [0, W-1]`` is kept (its position still follows the edge
values of the field) but flagged ``outside`` from then on, away from the start
frame, since nothing it does there is measured.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .convention import sample_field
from .errors import MaskError, NMSRError

__all__ = ["TrackedPoints", "track_points", "contour_distances", "tracking_report"]


@dataclass
class TrackedPoints:
    """positions: (T, N, 2) float (y, x) pixels; outside: (T, N) bool."""

    positions: np.ndarray
    outside: np.ndarray
    start_frame: int


def _check_fields(fields) -> np.ndarray:
    f = np.asarray(fields)
    if f.ndim == 5:
        raise NMSRError(
            f"Got fields of shape {f.shape} (several scales); pick one scale, "
            "e.g. result.fields[-1] for the finest."
        )
    if f.ndim != 4 or f.shape[1] != 2 or f.shape[0] < 1:
        raise NMSRError(f"Expected fields as (T-1, 2, H, W), got shape {f.shape}.")
    if not np.all(np.isfinite(f)):
        raise NMSRError("The fields contain NaN or infinite values; rerun the registration.")
    return np.ascontiguousarray(f, dtype=np.float32)


def _inside(p: np.ndarray, h: int, w: int) -> np.ndarray:
    eps = 1e-6
    return (p[:, 0] >= -eps) & (p[:, 0] <= h - 1 + eps) & (p[:, 1] >= -eps) & (p[:, 1] <= w - 1 + eps)


def _invert_step(field: np.ndarray, p: np.ndarray, n_iter: int, tol: float, t: int) -> np.ndarray:
    """Solve q + u(q) = p for q by fixed-point iteration (warns where it does not converge)."""
    q = p - sample_field(field, p.astype(np.float32))
    for _ in range(n_iter):
        q_new = p - sample_field(field, q.astype(np.float32))
        done = np.max(np.abs(q_new - q)) < tol
        q = q_new
        if done:
            break
    residual = np.linalg.norm(q + sample_field(field, q.astype(np.float32)) - p, axis=1)
    if np.any(residual > 0.1):
        warnings.warn(
            f"Tracking from frame {t} to {t + 1}: {int((residual > 0.1).sum())} point(s) could not be "
            f"followed exactly (up to {residual.max():.1f} px off); the field folds there.",
            RuntimeWarning,
            stacklevel=3,
        )
    return q


def track_points(fields, points, start_frame: int, *, n_iter: int = 50, tol: float = 1e-4) -> TrackedPoints:
    """Follow points from ``start_frame`` forward and backward through the sequence.

    fields: (T-1, 2, H, W) pull fields in pixels (for a result: one scale,
    ``result.fields[-1]``). points: (N, 2) (y, x) on ``start_frame``. Returns
    :class:`TrackedPoints` with a position on every one of the T frames.
    """
    f = _check_fields(fields)
    T, (h, w) = f.shape[0] + 1, f.shape[-2:]
    p0 = np.asarray(points, dtype=np.float64)
    if p0.ndim != 2 or p0.shape[1] != 2 or len(p0) == 0:
        raise MaskError(f"Expected points as (N, 2) (y, x), got shape {p0.shape}.")
    if not np.all(np.isfinite(p0)):
        raise MaskError("Some points to track are NaN or infinite.")
    start_frame = int(start_frame)
    if not 0 <= start_frame < T:
        raise MaskError(f"Start frame {start_frame} is outside the sequence (frames 0 to {T - 1}).")
    pos = np.empty((T, len(p0), 2))
    out = np.zeros((T, len(p0)), dtype=bool)
    pos[start_frame] = p0
    out[start_frame] = ~_inside(p0, h, w)
    for t in range(start_frame, T - 1):  # forward: invert u_t
        pos[t + 1] = _invert_step(f[t], pos[t], n_iter, tol, t)
        out[t + 1] = out[t] | ~_inside(pos[t + 1], h, w)
    for t in range(start_frame - 1, -1, -1):  # backward: follow u_t directly
        pos[t] = pos[t + 1] + sample_field(f[t], pos[t + 1].astype(np.float32))
        out[t] = out[t + 1] | ~_inside(pos[t], h, w)
    return TrackedPoints(positions=pos, outside=out, start_frame=start_frame)


def _point_to_polyline(p: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to the closed polyline ``curve`` (M, 2)."""
    a = curve
    b = np.roll(curve, -1, axis=0)
    ab = b - a
    denom = np.maximum((ab ** 2).sum(1), 1e-12)
    t = np.clip(((p[:, None, :] - a[None]) * ab[None]).sum(-1) / denom[None], 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((p[:, None, :] - nearest) ** 2).sum(-1)).min(1)


def contour_distances(a, b):
    """Symmetric mean and Hausdorff distance (pixels) between closed contours.

    a: (N, 2) or (T, N, 2); b: (M, 2) or (T, M, 2). Each point is measured
    to the other contour's polyline (not just its points), both ways. Returns
    (mean, hausdorff) as floats, or as (T,) arrays for sequences.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != b.ndim or a.ndim not in (2, 3) or a.shape[-1] != 2 or b.shape[-1] != 2:
        raise MaskError(f"Contours must both be (N, 2) or (T, N, 2); got {a.shape} and {b.shape}.")
    if a.ndim == 3:
        if len(a) != len(b):
            raise MaskError(f"The contour sequences have {len(a)} and {len(b)} frames.")
        pairs = [contour_distances(x, y) for x, y in zip(a, b)]
        return np.array([m for m, _ in pairs]), np.array([hd for _, hd in pairs])
    dab, dba = _point_to_polyline(a, b), _point_to_polyline(b, a)
    return 0.5 * (dab.mean() + dba.mean()), max(dab.max(), dba.max())


def tracking_report(tracked: TrackedPoints, reference) -> dict:
    """Per-frame distances between a tracked contour and a reference (T, N, 2).

    Returns {"mean": (T,), "hausdorff": (T,), "point": (T,)} in pixels;
    "point" is the mean distance between corresponding points (same index),
    meaningful when tracking started from the reference contour.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != tracked.positions.shape:
        raise MaskError(f"The reference contours {ref.shape} do not match the tracked ones "
                        f"{tracked.positions.shape}.")
    mean, hd = contour_distances(tracked.positions, ref)
    point = np.linalg.norm(tracked.positions - ref, axis=-1).mean(-1)
    return {"mean": mean, "hausdorff": hd, "point": point}
