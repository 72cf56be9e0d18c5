"""The part of the frame worth registering: the mask's box, or the echo sector.

An echo frame is mostly black outside the scan sector, and a drawn LV mask
covers a fraction of it. Every pixel the U-Net sees costs time at every step,
so the engine registers only this box (grown by a margin so the local NCC
window and the motion stay inside it) and extends the field beyond it with
its edge values (the convention's ``border`` rule).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["Box", "region_of_interest", "sector_region", "paste_field"]

#: A pixel belongs to the sector when its brightest value over the cine exceeds this.
SECTOR_LEVEL = 0.02
#: A bright blob is burnt-in annotation (text, colour bar, ECG trace) when fewer than this share
#: of its pixels change over the cine by more than ANNOTATION_STILL (std over frames).
ANNOTATION_SHARE = 0.05
ANNOTATION_STILL = 0.01


class Box(tuple):
    """(y0, y1, x0, x1), half-open, in pixels of the full frame."""

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self[0], self[1]), slice(self[2], self[3])

    @property
    def shape(self) -> tuple[int, int]:
        return self[1] - self[0], self[3] - self[2]


def region_of_interest(frames: np.ndarray, mask: np.ndarray | None, margin: int, min_size: int = 32) -> Box:
    """Box around the mask (any frame) or, without a mask, around the sector, grown by ``margin``.

    frames (T, H, W) in [0, 1]; mask (T, H, W) bool or None. Never smaller
    than ``min_size`` (nor the frame) on either side.
    """
    _, h, w = frames.shape
    if mask is not None:
        region = mask.any(axis=0)
    else:
        region = sector_region(frames)
    if not region.any():
        return Box((0, h, 0, w))
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    y0, y1 = _grow(rows[0], rows[-1] + 1, margin, h, min_size)
    x0, x1 = _grow(cols[0], cols[-1] + 1, margin, w, min_size)
    return Box((y0, y1, x0, x1))


def sector_region(frames: np.ndarray) -> np.ndarray:
    """(H, W) bool: the scan sector, without the burnt-in text, colour bar and ECG trace.

    Pixels brighter than SECTOR_LEVEL at some frame, closed over 2 px so the
    speckle forms blobs. A blob is kept when its pixels change over the cine
    (speckle does, burnt-in annotations do not); the largest blob always is.
    On the shared parasternal DICOM (430x600) the box shrinks from the whole
    frame to the sector.
    """
    bright = frames.max(axis=0) > SECTOR_LEVEL
    if not bright.any() or len(frames) < 2:
        return bright
    closed = ndimage.binary_closing(bright, structure=np.ones((5, 5), bool), border_value=0)
    labels, n = ndimage.label(closed, structure=np.ones((3, 3), bool))
    if n <= 1:
        return bright
    index = np.arange(1, n + 1)
    moving = ndimage.mean(frames.std(axis=0) > ANNOTATION_STILL, labels, index)
    areas = ndimage.sum(closed, labels, index)
    keep = index[(np.asarray(moving) >= ANNOTATION_SHARE) | (areas == areas.max())]
    return bright & np.isin(labels, keep)


def _grow(lo: int, hi: int, margin: int, size: int, min_size: int) -> tuple[int, int]:
    lo, hi = max(0, int(lo) - margin), min(size, int(hi) + margin)
    short = min(min_size, size) - (hi - lo)
    if short > 0:
        lo = max(0, lo - (short + 1) // 2)
        hi = min(size, lo + min(min_size, size))
        lo = hi - min(min_size, size)
    return lo, hi


def paste_field(field: np.ndarray, box: Box, out: np.ndarray) -> np.ndarray:
    """A field (N, 2, h, w) on the box written into ``out`` (N, 2, H, W), edge values outside.

    Written straight into ``out`` (the result's own array in :func:`~.register.register`):
    at 45x768x1024 a padded copy of one scale's field would be 277 MB.
    """
    y0, y1, x0, x1 = box
    target = out[:, :, y0:y1, x0:x1]
    if not (field.ctypes.data == target.ctypes.data and field.strides == target.strides):
        target[...] = field  # else the engine already wrote the box in place (register._box_view)
    out[:, :, :y0, x0:x1] = out[:, :, y0:y0 + 1, x0:x1]
    out[:, :, y1:, x0:x1] = out[:, :, y1 - 1:y1, x0:x1]
    out[:, :, :, :x0] = out[:, :, :, x0:x0 + 1]
    out[:, :, :, x1:] = out[:, :, :, x1 - 1:x1]
    return out
