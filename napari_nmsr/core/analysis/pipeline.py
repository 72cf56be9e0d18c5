"""Run every analysis on one set of fields and keep the maps (for the GUI) and numbers.

:func:`analyze_fields` is the one place that decides which mask frame goes
with which pair (pair t lives on frame t+1's grid, so it uses ``mask[t+1]``),
which motion is analysed (``motion_from_field(field)``, Gaussian-smoothed by
``smooth_sigma`` px against speckle noise) and what happens without a mask
(the whole frame is analysed; LV-relative positions and contour strain are
left out, and ``notes`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..convention import motion_from_field
from ..errors import MaskError
from ._common import Calibration, check_fields, check_mask
from .confidence import consistency_error
from .lv_geometry import LVAxis, lv_axis_from_mask
from .strain import contour_strain, mask_contour, strain_maps
from .vortex import Vortex, detect_vortices
from .vorticity import smooth_motion, vorticity_of_motion

__all__ = ["Analysis", "analyze_fields"]


@dataclass
class Analysis:
    """Maps and per-pair findings of one analysis (all on the full-resolution grid).

    vorticity: (T-1, H, W) float32, 1/time unit, 0 outside the mask.
    vortices: per pair, the detected vortex cores (main one first).
    kinetic_energy: (T-1,) in the mask (see ``calibration.units()``).
    total_abs_circulation: (T-1,) sum |vorticity| dA in the mask.
    lv_axes: per pair the LV long axis (None without a mask).
    strain: {"err", "ecc", "e1", "e2"}: (T-1, H, W) % maps, or None.
    contour: {"strain": (T,) %, "length": (T,), "positions": (T, N, 2)}, or None.
    consistency: (T-1, H, W) px forward-backward error, or None.
    """

    calibration: Calibration
    mask: np.ndarray | None  # (T, H, W) bool
    vorticity: np.ndarray
    vortices: list[list[Vortex]]
    kinetic_energy: np.ndarray
    total_abs_circulation: np.ndarray
    lv_axes: list[LVAxis | None]
    strain: dict[str, np.ndarray] | None = None
    contour: dict[str, np.ndarray] | None = None
    consistency: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return int(self.vorticity.shape[0])

    def main_vortex(self, t: int) -> Vortex | None:
        return self.vortices[t][0] if self.vortices[t] else None

    def vortex_centres_yx(self) -> np.ndarray:
        """(T-1, 2) (y, x) px of the main vortex per pair, NaN where none."""
        out = np.full((self.n_pairs, 2), np.nan)
        for t in range(self.n_pairs):
            v = self.main_vortex(t)
            if v is not None:
                out[t] = v.centre_yx
        return out


def analyze_fields(
    fields,
    mask=None,
    *,
    frame_interval_s: float | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
    backward=None,
    smooth_sigma: float = 1.0,
    gamma_radius: int = 2,
    min_relative_circulation: float = 0.05,
    with_strain: bool = True,
) -> Analysis:
    """Vorticity, vortices, kinetic energy, strain and confidence of PULL fields (T-1, 2, H, W).

    ``mask`` (H, W) or (T, H, W) bool: the LV cavity (contrast) or the wall
    (non-contrast); None analyses the whole frame. ``backward``: fields of the
    reversed sequence (same shape, reversed order) for the confidence map.
    Vortices weaker than ``min_relative_circulation`` x the main one's
    |circulation| are dropped as noise.
    """
    f = check_fields(fields)
    n, _, h, w = f.shape
    m = check_mask(mask, n + 1, h, w)
    cal = Calibration(frame_interval_s, pixel_spacing_mm)
    notes: list[str] = []
    if m is None:
        notes.append("no mask given: the whole frame was analysed; LV-relative vortex position and contour strain are unavailable")
    motion = smooth_motion(motion_from_field(f), smooth_sigma)
    omega = vorticity_of_motion(motion, cal)
    if m is not None:
        omega = np.where(m[1:], omega, np.float32(0)).astype(np.float32)

    vortices, axes = [], []
    ke = np.zeros(n)
    total = np.zeros(n)
    axis_cache: dict[int, LVAxis | None] = {}
    for t in range(n):
        mt = m[t + 1] if m is not None else None
        found = detect_vortices(motion[t], mt, calibration=cal, radius=gamma_radius, omega=omega[t])
        if found:
            keep = abs(found[0].circulation) * min_relative_circulation
            found = [v for v in found if abs(v.circulation) >= keep]
        vortices.append(found)
        ke[t] = cal.kinetic_energy(motion[t], mt)
        total[t] = float(np.abs(omega[t]).sum() * cal.pixel_area)
        axes.append(_axis(mt, axis_cache, notes) if mt is not None else None)

    out = Analysis(cal, m, omega, vortices, ke, total, axes, notes=notes)
    if with_strain:
        out.strain = strain_maps(f, m, pixel_spacing_mm=pixel_spacing_mm)
        if m is not None:
            try:
                out.contour = contour_strain(f, mask_contour(m[0]), closed=True, pixel_spacing_mm=pixel_spacing_mm)
            except MaskError as exc:
                notes.append(f"contour strain unavailable: {exc}")
    if backward is not None:
        out.consistency = consistency_error(f, backward)
    return out


def _axis(mask2d: np.ndarray, cache: dict, notes: list[str]) -> LVAxis | None:
    """LV axis of a mask frame (cached by content: a static mask is measured once)."""
    key = hash(np.packbits(mask2d).tobytes())
    if key not in cache:
        filled = ndimage.binary_fill_holes(mask2d)
        try:
            cache[key] = lv_axis_from_mask(filled)
        except MaskError as exc:
            cache[key] = None
            notes.append(f"LV axis unavailable: {exc}")
    return cache[key]
