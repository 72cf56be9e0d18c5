"""Shared checks and units of the analysis modules (private).

Every public analysis function checks its fields and mask here, once, so that
a NaN field or a mask of the wrong size gives the same sonographer-readable
message everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MaskError, ResultFileError

#: Blood density used for kinetic energy in physical units (kg/m^3).
BLOOD_DENSITY_KG_M3 = 1060.0


def check_fields(fields, *, name: str = "displacement field") -> np.ndarray:
    """(T-1, 2, H, W) or (2, H, W) finite floats -> float32 (T-1, 2, H, W)."""
    arr = np.asarray(fields)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1] != 2:
        raise ResultFileError(
            f"the {name} has shape {arr.shape}; expected (pairs, 2, H, W) with channel 0 = dy, 1 = dx"
        )
    if arr.shape[0] == 0 or arr.shape[2] < 3 or arr.shape[3] < 3:
        raise ResultFileError(f"the {name} is empty or smaller than 3x3 pixels (shape {arr.shape})")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if bad.any():
        pairs = ", ".join(str(int(i)) for i in np.flatnonzero(bad)[:8])
        raise ResultFileError(
            f"the {name} contains NaN or infinite values (frame pairs {pairs}); the registration "
            "diverged or the file is damaged. Re-run the registration."
        )
    return arr


def check_mask(mask, n_frames: int | None, height: int, width: int, *, what: str = "mask") -> np.ndarray | None:
    """(H, W) or (T, H, W) -> bool (T, H, W) (a single mask repeated), or None.

    ``n_frames`` is the number of frames (pairs + 1); None accepts any T.
    Every frame of the mask must contain at least one pixel.
    """
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype.kind not in "biuf":
        raise MaskError(f"the {what} must be an array of 0/1 or True/False values, not {m.dtype}")
    if m.dtype.kind == "f" and not np.isfinite(m).all():
        raise MaskError(f"the {what} contains NaN values")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1:] != (height, width):
        raise MaskError(
            f"the {what} has shape {np.asarray(mask).shape} but the frames are {height}x{width} pixels; "
            "draw it on this sequence (expected (H, W) or (frames, H, W))"
        )
    if n_frames is not None and m.shape[0] not in (1, n_frames):
        raise MaskError(f"the {what} has {m.shape[0]} frames but the sequence has {n_frames}; give one per frame or one for all")
    m = m.astype(bool)
    empty = ~m.reshape(m.shape[0], -1).any(axis=1)
    if empty.any():
        raise MaskError(f"the {what} is empty in frame {int(np.argmax(empty))}; draw the region in every frame (or give one mask for all)")
    if n_frames is not None and m.shape[0] == 1:
        m = np.broadcast_to(m, (n_frames, height, width))
    return m


@dataclass(frozen=True)
class Calibration:
    """Physical size of a pixel and a frame, when known.

    ``pixel_spacing_mm`` is (dy, dx) mm per pixel; ``frame_interval_s`` the
    seconds between frames. Quantities are reported in mm and s when these
    are known, else in pixels and frames (the ``units`` strings say which).
    """

    frame_interval_s: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None

    @property
    def length_unit(self) -> str:
        return "mm" if self.pixel_spacing_mm is not None else "px"

    @property
    def time_unit(self) -> str:
        return "s" if self.frame_interval_s is not None else "frame"

    @property
    def spacing(self) -> tuple[float, float]:
        """(sy, sx) length units per pixel (1, 1 when unknown)."""
        return tuple(float(v) for v in self.pixel_spacing_mm) if self.pixel_spacing_mm is not None else (1.0, 1.0)

    @property
    def dt(self) -> float:
        """Time units per frame (1 when unknown)."""
        return float(self.frame_interval_s) if self.frame_interval_s is not None else 1.0

    @property
    def pixel_area(self) -> float:
        sy, sx = self.spacing
        return sy * sx

    @property
    def physical(self) -> bool:
        return self.pixel_spacing_mm is not None and self.frame_interval_s is not None

    def units(self) -> dict[str, str]:
        """Unit of every scalar the analysis reports ("1" = dimensionless)."""
        L, T = self.length_unit, self.time_unit
        ke = "mJ/m" if self.physical else f"{L}^4/{T}^2"
        return {
            "time": T,
            "vortex_centre_xy": "px",
            "vortex_centre_mm": "mm",
            "vorticity": f"1/{T}",
            "vortex_area": f"{L}^2",
            "vortex_circulation": f"{L}^2/{T}",
            "vortex_relative_strength": "1",
            "vortex_mean_vorticity": f"1/{T}",
            "vortex_peak_vorticity": f"1/{T}",
            "vortex_gamma1_peak": "1",
            "vortex_kinetic_energy": ke,
            "vortex_depth": "1",
            "vortex_transverse_position": "1",
            "vortex_length": "1",
            "vortex_width": "1",
            "vortex_sphericity": "1",
            "kinetic_energy": ke,
            "mean_abs_vorticity": f"1/{T}",
            "contour_strain": "%",
            "radial_strain": "%",
            "circumferential_strain": "%",
            "consistency_error_mean": "px",
            "consistency_error_p95": "px",
        }

    def kinetic_energy(self, motion: np.ndarray, mask: np.ndarray | None) -> float:
        """0.5 * rho * sum |v|^2 dA over the mask for one motion field (2, H, W) in px/frame."""
        sy, sx = self.spacing
        vy = motion[0] * (sy / self.dt)
        vx = motion[1] * (sx / self.dt)
        e = vy * vy + vx * vx
        total = float(e[mask].sum() if mask is not None else e.sum()) * self.pixel_area * 0.5
        if self.physical:
            # (mm/s)^2 * mm^2 -> (m/s)^2 * m^2 = 1e-12 ; * rho (kg/m^3) -> J/m ; * 1e3 -> mJ/m
            return total * 1e-12 * BLOOD_DENSITY_KG_M3 * 1e3
        return total
