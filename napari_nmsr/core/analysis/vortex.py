"""Vortex detection with the Gamma-1 / Gamma-2 criteria (Graftieaux et al. 2001).

For a point P and the points M of a square window around it (radius
``radius`` px), with v the motion (px/frame) and ``x`` the on-screen
counter-clockwise cross product (positive = CCW as seen, rows pointing down)::

    Gamma1(P) = mean_M  (PM x v(M))          / (|PM| |v(M)|)
    Gamma2(P) = mean_M  (PM x (v(M) - v~P))  / (|PM| |v(M) - v~P|)

with ``v~P`` the mean motion in the window. Both are dimensionless in
[-1, 1] and use only directions, which makes them robust to speckle noise in
the magnitudes. Gamma2 is Galilean invariant (a vortex carried by the mitral
jet is still found); ``|Gamma2| > 2/pi`` marks where rotation dominates
strain: that connected region is the *vortex core*. Only points inside the
mask take part (a window is averaged over its in-mask points).

A detected :class:`Vortex` has its centre at the vorticity-weighted centroid
of its core, its area, its circulation (vorticity integrated over the core),
peak and mean vorticity, Gamma1 peak and kinetic energy of the core. Several
vortices per frame pair are returned, largest |circulation| first; the first
one is flagged ``main``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ._common import Calibration
from .vorticity import vorticity_of_motion

__all__ = ["GAMMA2_CORE_THRESHOLD", "Vortex", "gamma_criteria", "detect_vortices"]

#: Graftieaux et al.: |Gamma2| > 2/pi where rotation dominates strain.
GAMMA2_CORE_THRESHOLD = 2.0 / np.pi

_EPS = 1e-6


@dataclass
class Vortex:
    """One vortex core in one frame pair (pixel coordinates of the full frame)."""

    centre_yx: tuple[float, float]
    area: float  # length_unit^2
    area_px: int
    circulation: float  # length_unit^2 / time_unit, + = CCW on screen
    mean_vorticity: float  # 1 / time_unit
    peak_vorticity: float  # 1 / time_unit, signed
    gamma1_peak: float  # signed, |.| -> 1 at an ideal centre
    kinetic_energy: float  # see Calibration.units()
    main: bool = False
    region: np.ndarray | None = field(default=None, repr=False)  # (H, W) bool core

    @property
    def centre_xy(self) -> tuple[float, float]:
        return (self.centre_yx[1], self.centre_yx[0])

    @property
    def rotation(self) -> str:
        return "ccw" if self.circulation >= 0 else "cw"


def _shifted(a: np.ndarray, dy: int, dx: int, r: int) -> np.ndarray:
    """View of the zero-padded array ``a`` (..., H+2r, W+2r) shifted by (dy, dx)."""
    h, w = a.shape[-2] - 2 * r, a.shape[-1] - 2 * r
    return a[..., r + dy : r + dy + h, r + dx : r + dx + w]


def gamma_criteria(motion: np.ndarray, mask: np.ndarray | None = None, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Gamma1 and Gamma2 maps (H, W) float32 of one motion field (2, H, W) px/frame.

    Outside ``mask`` (H, W) both are 0. ``radius`` is the half-size of the
    square window (2 -> 5x5 points), in pixels of the field.
    """
    r = int(radius)
    if r < 1:
        raise ValueError("the Gamma window radius must be at least 1 px")
    v = np.asarray(motion, dtype=np.float32)
    h, w = v.shape[-2:]
    m = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    mp = np.pad(m, r).astype(np.float32)
    vp = np.pad(v, ((0, 0), (r, r), (r, r))) * mp
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]

    # mean motion in the window (Gamma2's convection velocity), over in-mask points
    vsum = np.zeros((2, h, w), np.float32)
    wsum = np.zeros((h, w), np.float32)
    for dy, dx in offsets:
        vsum += _shifted(vp, dy, dx, r)
        wsum += _shifted(mp, dy, dx, r)
    vmean = vsum / np.maximum(wsum, 1)

    g1 = np.zeros((h, w), np.float32)
    g2 = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for dy, dx in offsets:
        if dy == 0 and dx == 0:
            continue
        vm = _shifted(vp, dy, dx, r)
        wm = _shifted(mp, dy, dx, r)
        dist = np.float32(np.hypot(dy, dx))
        for acc, u in ((g1, vm), (g2, vm - vmean)):
            speed = np.hypot(u[0], u[1])
            cross = dy * u[1] - dx * u[0]  # on-screen CCW cross product (y down)
            ok = (speed > _EPS) & (wm > 0)
            acc += np.divide(cross, dist * speed, out=np.zeros_like(cross), where=ok)
        count += wm
    n = np.maximum(count, 1)
    g1 = np.where(m, g1 / n, 0.0).astype(np.float32)
    g2 = np.where(m, g2 / n, 0.0).astype(np.float32)
    return g1, g2


def detect_vortices(
    motion: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    calibration: Calibration | None = None,
    radius: int = 2,
    threshold: float = GAMMA2_CORE_THRESHOLD,
    min_area_px: int | None = None,
    omega: np.ndarray | None = None,
) -> list[Vortex]:
    """Vortex cores of one motion field (2, H, W) px/frame, largest |circulation| first.

    ``min_area_px`` (default: the window area, (2r+1)^2) drops specks of
    noise. ``omega`` may pass a precomputed vorticity map (1/time_unit) to
    avoid recomputing it. Returns an empty list when no core is found.
    """
    cal = calibration or Calibration()
    h, w = motion.shape[-2:]
    m = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
    g1, g2 = gamma_criteria(motion, m, radius)
    if omega is None:
        omega = vorticity_of_motion(motion, cal)
    min_area = (2 * radius + 1) ** 2 if min_area_px is None else int(min_area_px)
    vortices: list[Vortex] = []
    for sign in (1.0, -1.0):
        labels, n = ndimage.label((sign * g2 > threshold) & m)
        for lab in range(1, n + 1):
            region = labels == lab
            npx = int(region.sum())
            if npx < min_area:
                continue
            vortices.append(_measure(region, sign, omega, g1, motion, cal))
    vortices.sort(key=lambda v: abs(v.circulation), reverse=True)
    if vortices:
        vortices[0].main = True
    return vortices


def _measure(region, sign, omega, g1, motion, cal: Calibration) -> Vortex:
    ys, xs = np.nonzero(region)
    om = omega[ys, xs].astype(np.float64)
    wts = np.clip(sign * om, 0, None)
    if wts.sum() <= 0:
        wts = np.ones_like(om)
    cy = float((ys * wts).sum() / wts.sum())
    cx = float((xs * wts).sum() / wts.sum())
    g = g1[ys, xs]
    peak = om[np.argmax(sign * om)]
    return Vortex(
        centre_yx=(cy, cx),
        area=float(len(ys) * cal.pixel_area),
        area_px=int(len(ys)),
        circulation=float(om.sum() * cal.pixel_area),
        mean_vorticity=float(om.mean()),
        peak_vorticity=float(peak),
        gamma1_peak=float(g[np.argmax(sign * g)]),
        kinetic_energy=cal.kinetic_energy(motion, region),
        region=region,
    )
