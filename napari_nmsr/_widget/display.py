"""Registration fields -> napari Vectors layer data (pure numpy, no Qt).

One Vectors layer holds every finished scale: its data has shape
``(N, 2, 4)`` on the axes ``(scale index, t, y, x)``, so napari's own dims
sliders step through scales and frames. ``data[:, 0]`` is the arrow's start,
``data[:, 1]`` its projection (0 along the scale and time axes).

What an arrow shows: the MOTION of the material (``motion_from_field``, the
negated pull field) for the frame pair (t, t+1), drawn on the fixed frame
t + 1 where the field lives. Frame 0 therefore has no arrows.

Confidence: given the forward-backward inconsistency of the pair (px, on
frame t+1's grid, ``core.analysis.consistency_error``) an arrow whose start
lies where the two runs disagree by more than a threshold is marked
``reliable = False``, so the display can grey it out instead of hiding it
(a missing arrow reads as "no motion").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_nmsr.core.convention import motion_from_field

__all__ = [
    "DEFAULT_ARROWS_PER_FRAME",
    "ArrowSet",
    "grid_step",
    "grid_positions",
    "arrows_for_scale",
    "empty_arrows",
    "concat_arrows",
    "speed_units",
]

#: About this many arrows per frame by default: single arrows stay readable (1000 make a carpet).
DEFAULT_ARROWS_PER_FRAME = 150


@dataclass
class ArrowSet:
    """Vectors layer content: ``data`` (N, 2, 4) float32 and per-arrow features."""

    data: np.ndarray
    speed: np.ndarray  # (N,) in ``units``
    scale_index: np.ndarray  # (N,) int
    frame: np.ndarray  # (N,) int, the fixed frame t + 1
    reliable: np.ndarray | None = None  # (N,) bool; None = no confidence data, all reliable

    def __post_init__(self):
        if self.reliable is None:
            self.reliable = np.ones(len(self.speed), bool)

    @property
    def features(self) -> dict[str, np.ndarray]:
        return {"speed": self.speed, "scale_index": self.scale_index, "frame": self.frame, "reliable": self.reliable}

    def __len__(self) -> int:
        return int(self.data.shape[0])


def empty_arrows() -> ArrowSet:
    return ArrowSet(np.zeros((0, 2, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), np.zeros(0, int))


def grid_step(shape_hw: tuple[int, int], arrows_per_frame: int, area: float | None = None) -> int:
    """Grid spacing (pixels) giving about ``arrows_per_frame`` arrows over ``area`` pixels.

    ``area`` defaults to the whole frame; pass the mean mask area to get about
    that many arrows inside the mask.
    """
    h, w = shape_hw
    area = float(h * w) if area is None else float(area)
    n = max(int(arrows_per_frame), 1)
    return max(1, int(round(math.sqrt(max(area, 1.0) / n))))


def grid_positions(shape_hw: tuple[int, int], step: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a regular grid, centred in the frame."""
    h, w = shape_hw
    y0 = (h - 1 - ((h - 1) // step) * step) // 2
    x0 = (w - 1 - ((w - 1) // step) * step) // 2
    return np.arange(y0, h, step), np.arange(x0, w, step)


def _speed_factors(frame_interval_s, pixel_spacing_mm) -> tuple[np.ndarray, str]:
    """Per-axis factor turning pixels/frame into the display unit, and its name."""
    if frame_interval_s and pixel_spacing_mm is not None:
        mm = np.asarray(pixel_spacing_mm, dtype=np.float64)
        return mm / 10.0 / float(frame_interval_s), "cm/s"
    if pixel_spacing_mm is not None:
        return np.asarray(pixel_spacing_mm, dtype=np.float64), "mm/frame"
    if frame_interval_s:
        return np.full(2, 1.0 / float(frame_interval_s)), "px/s"
    return np.ones(2), "px/frame"


def speed_units(frame_interval_s=None, pixel_spacing_mm=None) -> str:
    """Unit of the ``speed`` feature for this sequence: cm/s when spacing and time are known."""
    return _speed_factors(frame_interval_s, pixel_spacing_mm)[1]


def arrows_for_scale(
    field: np.ndarray,
    scale_index: int,
    *,
    arrows_per_frame: int = DEFAULT_ARROWS_PER_FRAME,
    mask: np.ndarray | None = None,
    frame_interval_s: float | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    inconsistency: np.ndarray | None = None,
    threshold: float = 1.0,
) -> ArrowSet:
    """Arrows of one scale's field ``(T-1, 2, H, W)`` (pixels, pull convention).

    ``mask`` (T, H, W) bool keeps only arrows inside the mask of the fixed
    frame, and the grid is made denser so about ``arrows_per_frame`` fall
    inside it. Arrow components are in pixels per frame (data units), so the
    layer's ``scale`` turns them into mm like the image; ``speed`` is in
    :func:`speed_units`. ``inconsistency`` (T-1, H, W) px marks arrows whose
    start has more than ``threshold`` px (or NaN) as ``reliable = False``.
    """
    field = np.asarray(field)
    if field.ndim != 4 or field.shape[1] != 2:
        raise ValueError(f"expected a field (T-1, 2, H, W), got {field.shape}")
    n_pairs, _, h, w = field.shape
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n_pairs + 1, h, w):
            raise ValueError(f"mask {mask.shape} does not match the field's sequence {(n_pairs + 1, h, w)}")
        area = float(mask[1:].sum()) / max(n_pairs, 1)
    else:
        area = None
    if inconsistency is not None:
        inconsistency = np.asarray(inconsistency)
        if inconsistency.shape != (n_pairs, h, w):
            raise ValueError(f"inconsistency {inconsistency.shape} does not match the field's pairs {(n_pairs, h, w)}")
    step = grid_step((h, w), arrows_per_frame, area)
    ys, xs = grid_positions((h, w), step)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    factors, _ = _speed_factors(frame_interval_s, pixel_spacing_mm)

    pieces = []
    for t in range(n_pairs):
        keep = slice(None) if mask is None else mask[t + 1, gy, gx]
        py, px = gy[keep], gx[keep]
        motion = motion_from_field(field[t][:, py, px])  # (2, n) pixels/frame
        n = py.size
        arrows = np.zeros((n, 2, 4), np.float32)
        arrows[:, 0, 0] = scale_index
        arrows[:, 0, 1] = t + 1
        arrows[:, 0, 2] = py
        arrows[:, 0, 3] = px
        arrows[:, 1, 2] = motion[0]
        arrows[:, 1, 3] = motion[1]
        speed = np.hypot(motion[0] * factors[0], motion[1] * factors[1]).astype(np.float32)
        reliable = None if inconsistency is None else inconsistency[t, py, px] <= threshold  # NaN -> False
        pieces.append(ArrowSet(arrows, speed, np.full(n, scale_index), np.full(n, t + 1), reliable))
    return concat_arrows(pieces)


def concat_arrows(sets) -> ArrowSet:
    """One ArrowSet from several (e.g. the scales finished so far)."""
    sets = [s for s in sets if len(s)]
    if not sets:
        return empty_arrows()
    return ArrowSet(
        np.concatenate([s.data for s in sets]),
        np.concatenate([s.speed for s in sets]),
        np.concatenate([s.scale_index for s in sets]),
        np.concatenate([s.frame for s in sets]),
        np.concatenate([s.reliable for s in sets]),
    )
