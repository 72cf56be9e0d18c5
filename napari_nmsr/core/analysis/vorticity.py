"""Vorticity of the tissue/blood motion, with the on-screen sign convention.

The field of a result PULLS (``convention``); what moves is
``motion_from_field(field)`` (pixels per frame, on frame t+1's grid), and that
is what is differentiated here.

Sign convention: positive vorticity = counter-clockwise rotation **as seen on
screen**, where rows (y) point down. With ``vy`` the motion along rows and
``vx`` along columns::

    omega = d vx / d y  -  d vy / d x

(the usual ``dv/dx - du/dy`` of a y-up frame, rewritten for y down). A rigid
counter-clockwise rotation at angular velocity W gives omega = +2 W.
Units: 1/s when the frame interval is known, else 1/frame. Anisotropic pixel
spacing is honoured (derivatives are taken in mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..convention import motion_from_field
from ._common import Calibration, check_fields, check_mask

__all__ = ["vorticity_of_motion", "vorticity", "smooth_motion"]


def smooth_motion(motion: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smooth a motion field (..., 2, H, W) over the image axes (sigma in px)."""
    if not sigma or sigma <= 0:
        return motion
    sig = (0,) * (motion.ndim - 2) + (float(sigma), float(sigma))
    return ndimage.gaussian_filter(motion.astype(np.float32, copy=False), sig, mode="nearest")


def vorticity_of_motion(motion: np.ndarray, calibration: Calibration | None = None) -> np.ndarray:
    """Vorticity (..., H, W) of a motion field (..., 2, H, W) in px/frame.

    Central differences inside, one-sided at the image border.
    """
    cal = calibration or Calibration()
    sy, sx = cal.spacing
    m = np.asarray(motion, dtype=np.float32)
    dvx_dy = np.gradient(m[..., 1, :, :], axis=-2)
    dvy_dx = np.gradient(m[..., 0, :, :], axis=-1)
    # motion in length units: vy*sy, vx*sx; derivatives per length unit: /sy, /sx
    omega = dvx_dy * (sx / sy) - dvy_dx * (sy / sx)
    return (omega / np.float32(cal.dt)).astype(np.float32)


def vorticity(
    fields,
    mask=None,
    *,
    frame_interval_s: float | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    smooth_sigma: float = 0.0,
    fill: float = 0.0,
) -> np.ndarray:
    """Vorticity maps (T-1, H, W) float32 of the PULL fields (T-1, 2, H, W) of a result.

    ``mask`` (H, W) or (T, H, W) bool (T = pairs + 1 frames): pair t is on
    frame t+1's grid, so pair t uses ``mask[t+1]``; outside it the map holds
    ``fill`` (0 shows as neutral in a diverging colormap; pass ``np.nan`` to
    exclude). ``smooth_sigma`` (px) smooths the motion before differentiating,
    which tames speckle noise at the cost of peak values.
    """
    f = check_fields(fields)
    n, _, h, w = f.shape
    m = check_mask(mask, n + 1, h, w)
    cal = Calibration(frame_interval_s, pixel_spacing_mm)
    omega = vorticity_of_motion(smooth_motion(motion_from_field(f), smooth_sigma), cal)
    if m is not None:
        omega = np.where(m[1:], omega, np.float32(fill)).astype(np.float32)
    return omega
