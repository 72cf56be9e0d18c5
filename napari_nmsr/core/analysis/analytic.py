"""Analytic PULL fields with known answers, for tests and the benchmark.

Each function returns the field ``u`` (2, H, W) float32 of one frame pair in
the project convention (``warp(frame_t, u) == frame_{t+1}``), built from a
known *motion* ``m`` (pixels per frame) so that ``motion_from_field(u) == m``
up to the small-step approximation stated in each docstring. Angles are
counter-clockwise **as seen on screen** (rows pointing down).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "rigid_rotation_field",
    "translation_field",
    "lamb_oseen_motion",
    "lamb_oseen_field",
    "lamb_oseen_core_circulation",
    "LAMB_OSEEN_CORE_RATIO",
]

#: Radius (in units of the core radius r_c) where rotation and strain rates of
#: a Lamb-Oseen vortex are equal (Q = 0): the boundary Gamma-2 = 2/pi detects.
LAMB_OSEEN_CORE_RATIO = 1.1209


def _grid(shape):
    h, w = shape
    return np.mgrid[0:h, 0:w].astype(np.float64)


def rigid_rotation_field(shape, angle_rad: float, centre_yx=None) -> np.ndarray:
    """Exact pull field of a rigid rotation by ``angle_rad`` per frame about ``centre_yx``.

    Counter-clockwise on screen for positive angles; the motion's vorticity is
    ``2 sin(angle)`` per frame (= 2 x angular velocity for small angles).
    """
    y, x = _grid(shape)
    cy, cx = centre_yx if centre_yx is not None else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    dy, dx = y - cy, x - cx
    # On screen (y down) a CCW rotation by a maps (dx, dy) to
    # (dx cos a + dy sin a, -dx sin a + dy cos a). The pull field points from
    # the new position p back to where the material was: rotate p by -a.
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    src_x = dx * c - dy * s
    src_y = dx * s + dy * c
    return np.stack((src_y - dy, src_x - dx)).astype(np.float32)


def translation_field(shape, shift_yx) -> np.ndarray:
    """Pull field of a rigid translation of the content by ``shift_yx`` px per frame."""
    out = np.empty((2, *shape), np.float32)
    out[0] = -float(shift_yx[0])
    out[1] = -float(shift_yx[1])
    return out


def lamb_oseen_motion(shape, centre_yx, circulation: float, core_radius: float, background_yx=(0.0, 0.0)) -> np.ndarray:
    """Motion (2, H, W) px/frame of a Lamb-Oseen vortex plus a uniform drift.

    ``circulation`` in px^2/frame, positive = counter-clockwise on screen;
    tangential speed ``G / (2 pi r) * (1 - exp(-r^2 / r_c^2))``.
    """
    y, x = _grid(shape)
    dy, dx = y - centre_yx[0], x - centre_yx[1]
    r2 = dy * dy + dx * dx
    with np.errstate(invalid="ignore", divide="ignore"):
        k = circulation / (2 * np.pi * r2) * (1 - np.exp(-r2 / core_radius**2))
    k = np.where(r2 > 1e-12, k, circulation / (2 * np.pi * core_radius**2))
    # CCW on screen: vx = +W*dy, vy = -W*dx (see vorticity.py)
    vx = k * dy + background_yx[1]
    vy = -k * dx + background_yx[0]
    return np.stack((vy, vx)).astype(np.float32)


def lamb_oseen_field(shape, centre_yx, circulation: float, core_radius: float, background_yx=(0.0, 0.0)) -> np.ndarray:
    """PULL field (2, H, W) whose motion is :func:`lamb_oseen_motion` (first order in the step)."""
    return -lamb_oseen_motion(shape, centre_yx, circulation, core_radius, background_yx)


def lamb_oseen_core_circulation(circulation: float, core_radius: float, ratio: float = LAMB_OSEEN_CORE_RATIO) -> float:
    """Circulation inside the radius ``ratio * r_c`` (the vortex core Gamma-2 outlines)."""
    return float(circulation * (1 - np.exp(-(ratio**2))))
