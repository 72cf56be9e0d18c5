"""A registration result and its NPZ file (documented keys, versioned).

NPZ keys (format_version 1):

==================  =====================  ===========================================
key                 shape / dtype          meaning
==================  =====================  ===========================================
format_version      () int                 1
fields              (S, T-1, 2, H, W) f4   composed full-resolution field of each
                                           finished scale, coarse to fine, pixels,
                                           convention in ``convention_json``
scales              (S,) f8                the scales (1/8 ... 1)
mse, mean_cc        (S, T-1) f8            paper metrics per scale and frame pair
steps_run           (S,) i8                optimisation steps actually run
seconds             (S,) f8                wall time per scale
final_loss          (S,) f8                last loss value per scale
frame_interval_s    () f8                  seconds between frames (NaN if unknown)
pixel_spacing_mm    (2,) f8                (dy, dx) mm per pixel (NaN if unknown)
velocity_cm_s       (T-1, 2, H, W) f4      motion of the finest scale in cm/s
                                           (only when spacing and interval known)
masks               (T, H, W) bool         the masks the run was restricted to
                                           (only when it had masks)
cancelled           () bool                the run was stopped before the last scale
config_json         () str                 the RegistrationConfig
convention_json     () str                 ``convention.CONVENTION``
device, software    () str                 where and with what it ran
==================  =====================  ===========================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .convention import CONVENTION, motion_from_field
from .errors import ResultFileError
from .export import atomic_write

__all__ = ["FORMAT_VERSION", "RegistrationResult"]

FORMAT_VERSION = 1


@dataclass
class RegistrationResult:
    """Per-scale fields and metrics of one registered sequence."""

    fields: np.ndarray  # (S, T-1, 2, H, W) float32
    scales: tuple[float, ...]
    metrics: dict[str, np.ndarray]  # "mse", "mean_cc": (S, T-1)
    config: dict = field(default_factory=dict)
    cancelled: bool = False
    frame_interval_s: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    steps_run: np.ndarray | None = None
    seconds: np.ndarray | None = None
    final_loss: np.ndarray | None = None
    device: str = ""
    masks: np.ndarray | None = None  # (T, H, W) bool the run was restricted to, if any

    @classmethod
    def from_scales(cls, done: Sequence, *, config: dict, cancelled: bool = False, frame_interval_s=None, pixel_spacing_mm=None, device: str = "") -> "RegistrationResult":
        """Assemble from the engine's ``ScaleDone`` events (possibly none, if cancelled early)."""
        if done:
            fields = np.stack([d.field for d in done]).astype(np.float32, copy=False)
        else:
            fields = np.zeros((0, 0, 2, 0, 0), np.float32)
        return cls(
            fields=fields,
            scales=tuple(float(d.scale) for d in done),
            metrics={
                "mse": np.array([d.mse for d in done]) if done else np.zeros((0, 0)),
                "mean_cc": np.array([d.mean_cc for d in done]) if done else np.zeros((0, 0)),
            },
            config=config,
            cancelled=cancelled,
            frame_interval_s=frame_interval_s,
            pixel_spacing_mm=None if pixel_spacing_mm is None else tuple(float(v) for v in pixel_spacing_mm),
            steps_run=np.array([d.steps_run for d in done], dtype=np.int64),
            seconds=np.array([d.seconds for d in done], dtype=np.float64),
            final_loss=np.array([d.final_loss for d in done], dtype=np.float64),
            device=device,
        )

    # ------------------------------------------------------------------ views
    @property
    def n_scales(self) -> int:
        return len(self.scales)

    @property
    def final_field(self) -> np.ndarray:
        """The finest finished scale's field (T-1, 2, H, W)."""
        if not self.n_scales:
            raise ResultFileError("this result holds no finished scale (the run was cancelled before the first one)")
        return self.fields[-1]

    def velocity_cm_s(self, scale_index: int = -1) -> np.ndarray | None:
        """Motion in cm/s (T-1, 2, H, W) when spacing and frame interval are known, else None."""
        if self.frame_interval_s is None or self.pixel_spacing_mm is None or not self.n_scales:
            return None
        mm = np.asarray(self.pixel_spacing_mm, dtype=np.float32).reshape(1, 2, 1, 1)
        return motion_from_field(self.fields[scale_index]) * mm / 10.0 / np.float32(self.frame_interval_s)

    def metrics_table(self) -> list[dict]:
        """One row per scale: scale, mean and std of MSE and mean CC (as Table 1)."""
        rows = []
        for i, s in enumerate(self.scales):
            mse, cc = self.metrics["mse"][i], self.metrics["mean_cc"][i]
            rows.append({
                "scale": s,
                "mse": float(np.mean(mse)), "mse_std": float(np.std(mse)),
                "mean_cc": float(np.mean(cc)), "mean_cc_std": float(np.std(cc)),
                "steps": int(self.steps_run[i]) if self.steps_run is not None else None,
                "seconds": float(self.seconds[i]) if self.seconds is not None else None,
            })
        return rows

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the NPZ atomically (a temporary file renamed into place)."""
        from .. import __version__

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        nan2 = np.array([np.nan, np.nan])
        payload = {
            "format_version": np.array(FORMAT_VERSION),
            "fields": self.fields.astype(np.float32, copy=False),
            "scales": np.asarray(self.scales, dtype=np.float64),
            "mse": np.asarray(self.metrics["mse"], dtype=np.float64),
            "mean_cc": np.asarray(self.metrics["mean_cc"], dtype=np.float64),
            "steps_run": _or_empty(self.steps_run, np.int64),
            "seconds": _or_empty(self.seconds, np.float64),
            "final_loss": _or_empty(self.final_loss, np.float64),
            "frame_interval_s": np.array(np.nan if self.frame_interval_s is None else self.frame_interval_s),
            "pixel_spacing_mm": nan2 if self.pixel_spacing_mm is None else np.asarray(self.pixel_spacing_mm, dtype=np.float64),
            "cancelled": np.array(bool(self.cancelled)),
            "config_json": np.array(json.dumps(self.config, default=_jsonable)),
            "convention_json": np.array(json.dumps(CONVENTION)),
            "device": np.array(self.device),
            "software": np.array(f"napari-nmsr {__version__}"),
        }
        velocity = self.velocity_cm_s()
        if velocity is not None:
            payload["velocity_cm_s"] = velocity.astype(np.float32)
        if self.masks is not None:
            payload["masks"] = np.asarray(self.masks, dtype=bool)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda tmp: np.savez(tmp, **payload))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RegistrationResult":
        """Read a result file; a clear ResultFileError for anything else."""
        path = Path(path)
        if not path.is_file():
            raise ResultFileError(f"result file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:
            raise ResultFileError(f"{path.name} is not a readable NPZ result file ({exc})") from exc
        if "format_version" not in data or "fields" not in data:
            raise ResultFileError(f"{path.name} is not a napari-nmsr result (no 'fields'/'format_version' keys)")
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise ResultFileError(
                f"{path.name} was written by result format version {version}; this napari-nmsr reads version "
                f"{FORMAT_VERSION}. Re-run the registration with this version."
            )
        fields = data["fields"]
        if fields.ndim != 5 or fields.shape[2] != 2:
            raise ResultFileError(f"{path.name}: 'fields' has shape {fields.shape}, expected (S, T-1, 2, H, W)")
        fi = float(data["frame_interval_s"])
        px = data["pixel_spacing_mm"]
        return cls(
            fields=fields.astype(np.float32, copy=False),
            scales=tuple(float(s) for s in data["scales"]),
            metrics={"mse": data["mse"], "mean_cc": data["mean_cc"]},
            config=json.loads(str(data["config_json"])),
            cancelled=bool(data["cancelled"]),
            frame_interval_s=None if np.isnan(fi) else fi,
            pixel_spacing_mm=None if np.isnan(px).any() else (float(px[0]), float(px[1])),
            steps_run=data.get("steps_run"),
            seconds=data.get("seconds"),
            final_loss=data.get("final_loss"),
            device=str(data.get("device", "")),
            masks=None if data.get("masks") is None else np.asarray(data["masks"], dtype=bool),
        )


def _or_empty(x, dtype):
    return np.zeros(0, dtype) if x is None else np.asarray(x, dtype=dtype)


def _jsonable(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)
