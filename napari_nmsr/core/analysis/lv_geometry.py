"""The LV long axis from a cavity mask, and positions relative to it.

Hong et al. (JACC Cardiovasc Imaging 2008) report where the LV vortex sits as
*depth* (along the long axis, relative to the LV length) and *transverse
position* (across it, relative to the LV width). Here:

* **Long axis** = the principal axis (largest eigenvector of the covariance)
  of the mask's largest connected region.
* **Apex** = the *narrower* end: the mask is cut into slabs of 20 % of its
  length at each end, and the end whose slab has the smaller mean width is
  the apex (the LV tapers towards the apex; the base is the wide mitral
  plane). If both are equally wide (within 2 %), the end nearer the top of
  the image is taken (the apex is at the top in standard apical views).
* **Depth** = distance from the base end along the axis / LV length:
  0 = base (mitral plane), 1 = apex.
* **Transverse position** = across the axis, 0 = the mask border on the
  screen-left side of the axis, 1 = screen-right, measured on the chord of
  the mask through the point (in a standard apical 4-chamber view the septum
  is on the screen-left). The transverse direction is the axis normal with a
  positive x (column) component (positive y if the axis is horizontal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import MaskError

__all__ = ["LVAxis", "lv_axis_from_mask", "relative_position", "region_extent"]


@dataclass(frozen=True)
class LVAxis:
    """Long axis of an LV mask, pixel coordinates (y, x)."""

    base_yx: tuple[float, float]
    apex_yx: tuple[float, float]
    direction_yx: tuple[float, float]  # unit vector base -> apex
    normal_yx: tuple[float, float]  # unit transverse vector, points screen-right
    length_px: float
    width_px: float  # widest transverse extent of the mask

    def to_dict(self) -> dict:
        """JSON-ready: points as [x, y] (x = column), vectors as [dy, dx]."""
        return {
            "base_xy": [self.base_yx[1], self.base_yx[0]],
            "apex_xy": [self.apex_yx[1], self.apex_yx[0]],
            "direction_yx": list(self.direction_yx),
            "normal_yx": list(self.normal_yx),
            "length_px": self.length_px,
            "width_px": self.width_px,
        }


def _largest_region(mask2d: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask2d)
    if n <= 1:
        return mask2d.astype(bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def lv_axis_from_mask(mask2d) -> LVAxis:
    """Long axis of the LV cavity mask (H, W) bool; see the module docstring."""
    m = _largest_region(np.asarray(mask2d, dtype=bool))
    pts = np.argwhere(m).astype(np.float64)
    if len(pts) < 10:
        raise MaskError("the LV mask is too small (fewer than 10 pixels) to find its long axis")
    centroid = pts.mean(axis=0)
    d = pts - centroid
    evals, evecs = np.linalg.eigh(np.cov(d.T))
    axis = evecs[:, int(np.argmax(evals))]
    normal = np.array([-axis[1], axis[0]])
    s = d @ axis
    n = d @ normal
    s_min, s_max = float(s.min()), float(s.max())
    length = s_max - s_min
    if length < 3:
        raise MaskError("the LV mask is too small to define a long axis")
    cut = 0.2 * length
    lo, hi = s <= s_min + cut, s >= s_max - cut
    width_lo = _mean_width(s[lo], n[lo])
    width_hi = _mean_width(s[hi], n[hi])
    if abs(width_lo - width_hi) <= 0.02 * max(width_lo, width_hi):
        # tie: apex = end nearer the top of the image (smaller row)
        apex_is_hi = (centroid + s_max * axis)[0] < (centroid + s_min * axis)[0]
    else:
        apex_is_hi = width_hi < width_lo
    if not apex_is_hi:
        axis, s = -axis, -s
        s_min, s_max = -s_max, -s_min
    normal = np.array([-axis[1], axis[0]])
    if normal[1] < -1e-9 or (abs(normal[1]) <= 1e-9 and normal[0] < 0):
        normal = -normal
    n = d @ normal
    base = centroid + s_min * axis
    apex = centroid + s_max * axis
    return LVAxis(
        base_yx=(float(base[0]), float(base[1])),
        apex_yx=(float(apex[0]), float(apex[1])),
        direction_yx=(float(axis[0]), float(axis[1])),
        normal_yx=(float(normal[0]), float(normal[1])),
        length_px=float(length),
        width_px=float(n.max() - n.min()),
    )


def _mean_width(s: np.ndarray, n: np.ndarray) -> float:
    """Mean transverse extent over 1-px slabs of the along-axis coordinate."""
    if len(s) == 0:
        return 0.0
    bins = np.floor(s - s.min()).astype(int)
    widths = [np.ptp(n[bins == b]) + 1 for b in np.unique(bins)]
    return float(np.mean(widths))


def _coords(axis: LVAxis, yx) -> tuple[np.ndarray, np.ndarray]:
    p = np.atleast_2d(np.asarray(yx, dtype=np.float64)) - np.asarray(axis.base_yx)
    return p @ np.asarray(axis.direction_yx), p @ np.asarray(axis.normal_yx)


def relative_position(axis: LVAxis, mask2d, point_yx) -> tuple[float, float]:
    """(depth, transverse position) of ``point_yx`` in [0, 1] (see module docstring).

    The transverse position uses the mask's chord (pixels within 1 px along
    the axis) through the point; if the point is beyond the mask, the
    mask's overall transverse extent.
    """
    s_p, n_p = _coords(axis, point_yx)
    depth = float(np.clip(s_p[0] / axis.length_px, 0.0, 1.0))
    pts = np.argwhere(np.asarray(mask2d, dtype=bool))
    s, n = _coords(axis, pts)
    chord = np.abs(s - s_p[0]) <= 1.0
    nn = n[chord] if chord.sum() >= 2 else n
    lo, hi = float(nn.min()) - 0.5, float(nn.max()) + 0.5
    transverse = float(np.clip((n_p[0] - lo) / max(hi - lo, 1e-9), 0.0, 1.0))
    return depth, transverse


def region_extent(axis: LVAxis, region2d) -> tuple[float, float]:
    """(length, width) in px of a region along and across the LV axis."""
    pts = np.argwhere(np.asarray(region2d, dtype=bool))
    if len(pts) == 0:
        return 0.0, 0.0
    s, n = _coords(axis, pts)
    return float(np.ptp(s) + 1), float(np.ptp(n) + 1)
