"""What the workflow's sections share (plain Python, no Qt).

The sequence section says which image layer is worked on; the mask section
records ED/ES marks; the registration section collects finished scales; the
display and export sections read them; the consistency check (Analysis)
adds a per-pixel inconsistency the display uses to grey out arrows. Session
settings live in a module dict, so a panel closed and opened again in the
same session keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari.layers import Image

    from napari_nmsr.core.register import ScaleDone
    from napari_nmsr.core.result import RegistrationResult

__all__ = ["MODES", "SESSION_SETTINGS", "WorkflowState", "frames_from_layer", "sequence_info"]

#: Sequence modes: what is tracked, and which mask restricts it.
MODES = {
    "blood": "blood flow (contrast)",
    "myocardium": "myocardium",
}

#: Panel settings kept for the Python session (a closed panel reopens with them).
SESSION_SETTINGS: dict[str, Any] = {}


@dataclass
class WorkflowState:
    """Shared state of one workflow panel."""

    image_layer: "Image | None" = None
    mode: str = "blood"
    ed_frames: list[int] = field(default_factory=list)
    es_frames: list[int] = field(default_factory=list)
    done: list["ScaleDone"] = field(default_factory=list)
    result: "RegistrationResult | None" = None
    run_mask: np.ndarray | None = None  # (T, H, W) bool used by the last run
    #: Forward-backward inconsistency of the last run, (S, T-1, H, W) float32 px on frame t+1's grid
    #: (Analysis -> "Check consistency"); None until checked, cleared by a new run (it would be stale).
    inconsistency: np.ndarray | None = None
    consistency_threshold: float = 1.0  # px: arrows above it are greyed out

    def clear_run(self) -> None:
        self.done = []
        self.result = None
        self.run_mask = None
        self.inconsistency = None


def sequence_info(layer: "Image") -> dict:
    """Frame interval (s) and pixel spacing (dy, dx mm) the reader stored, if any."""
    meta = dict(layer.metadata.get("nmsr", {}) or {})
    return {
        "frame_interval_s": meta.get("frame_interval_s"),
        "pixel_spacing_mm": None if meta.get("pixel_spacing_mm") is None else tuple(meta["pixel_spacing_mm"]),
        "ed_index": meta.get("ed_index"),
        "es_index": meta.get("es_index"),
    }


def frames_from_layer(layer: "Image") -> np.ndarray:
    """The layer's frames as float32 (T, H, W) in [0, 1] for the engine.

    Layers opened by this plugin already are; anything else (another reader,
    a user array) is brought there like the loader does: the first channel of
    RGB, integers divided by their type's range, floats min-max scaled.
    """
    data = np.asarray(layer.data)
    if getattr(layer, "rgb", False):
        data = data[..., 0]
    if data.ndim == 2:
        data = data[None]
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        data = (data.astype(np.float32) - info.min) / float(info.max - info.min)
    else:
        data = data.astype(np.float32)
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        if lo < 0 or hi > 1:
            data = (data - lo) / max(hi - lo, 1e-12)
    return np.ascontiguousarray(data, dtype=np.float32)
