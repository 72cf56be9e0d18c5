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

__all__ = ["MODES", "SESSION_SETTINGS", "SequenceState", "WorkflowState", "frames_from_layer", "check_field_matches", "sequence_info", "set_user_info", "source_id"]

#: Sequence modes: what is tracked, and which mask restricts it.
MODES = {
    "blood": "blood flow (contrast)",
    "myocardium": "myocardium",
}

#: Panel settings kept for the Python session (a closed panel reopens with them).
SESSION_SETTINGS: dict[str, Any] = {}


@dataclass
class SequenceState:
    """What the panel knows about ONE sequence: marks, finished scales, result, masks used.

    Kept per image layer (``WorkflowState.sequences``), so choosing another
    sequence shows that sequence's own state and never applies one
    sequence's field, marks or masks to another.
    """

    ed_frames: list[int] = field(default_factory=list)
    es_frames: list[int] = field(default_factory=list)
    done: list["ScaleDone"] = field(default_factory=list)
    result: "RegistrationResult | None" = None
    run_mask: np.ndarray | None = None  # (T, H, W) bool used by the last run
    #: Forward-backward inconsistency of the last run, (S, T-1, H, W) float32 px on frame t+1's grid
    #: (Analysis -> "Check consistency"); None until checked, cleared by a new run (it would be stale).
    inconsistency: np.ndarray | None = None
    analysis: Any = None  # the Analysis section's last computation (core.analysis) and its report
    report: dict | None = None
    result_path: str | None = None  # where the result was last saved (Export > Fields, or a session)
    undo: list = field(default_factory=list)  # Masks section: layer snapshots before each Refine / Interpolate
    marks_from_file: bool = False  # the ED/ES marks were taken from the file (done once per sequence)

    def clear_run(self) -> None:
        self.done = []
        self.result = None
        self.run_mask = None
        self.inconsistency = None


def source_id(layer) -> str | None:
    """The id binding panel layers and results to their image layer (napari's ``unique_id``)."""
    return None if layer is None else str(layer.unique_id)


class WorkflowState:
    """Shared state of one workflow panel: the chosen image layer and one SequenceState per sequence.

    ``ed_frames``, ``done``, ``result`` ... read and write the CHOSEN
    sequence's state, so the sections need not know there are several.
    """

    _PER_SEQUENCE = ("ed_frames", "es_frames", "done", "result", "run_mask", "inconsistency", "analysis", "report")

    def __init__(self, image_layer=None, mode: str = "blood", consistency_threshold: float = 1.0,
                 **per_sequence) -> None:
        self.sequences: dict[str, SequenceState] = {}
        self._image_layer = image_layer
        self._empty = SequenceState()  # no sequence chosen
        self.mode = mode
        self.consistency_threshold = consistency_threshold  # px: arrows above it are greyed out
        for name, value in per_sequence.items():  # e.g. result=... for the chosen sequence
            if name not in self._PER_SEQUENCE:
                raise TypeError(f"WorkflowState has no field {name!r}")
            setattr(self.current, name, value)

    @property
    def image_layer(self):
        return self._image_layer

    @image_layer.setter
    def image_layer(self, layer) -> None:
        self._image_layer = layer

    @property
    def source(self) -> str | None:
        """The chosen sequence's id (layer metadata ``nmsr_source`` of its panel layers)."""
        return source_id(self._image_layer)

    def for_layer(self, layer) -> SequenceState:
        """The state of ``layer``'s sequence (made empty the first time)."""
        if layer is None:
            return self._empty
        return self.sequences.setdefault(source_id(layer), SequenceState())

    @property
    def current(self) -> SequenceState:
        return self.for_layer(self._image_layer)

    def clear_run(self) -> None:
        self.current.clear_run()

    def forget(self, layer) -> None:
        """A sequence's image layer was removed: drop its state."""
        self.sequences.pop(source_id(layer), None)


def _forward(name: str):
    return property(lambda self: getattr(self.current, name), lambda self, v: setattr(self.current, name, v))


for _name in WorkflowState._PER_SEQUENCE:
    setattr(WorkflowState, _name, _forward(_name))


def sequence_info(layer: "Image") -> dict:
    """Frame interval (s), pixel spacing (dy, dx mm) and cycle length (frames) of a sequence, if known.

    What the reader stored in ``metadata["nmsr"]``, overridden by what the
    user typed or calibrated in 1. Sequence (``metadata["nmsr"]["user"]``).
    """
    meta = dict(layer.metadata.get("nmsr", {}) or {})
    meta.update({k: v for k, v in dict(meta.get("user", {}) or {}).items() if v is not None})
    return {
        "frame_interval_s": meta.get("frame_interval_s"),
        "pixel_spacing_mm": None if meta.get("pixel_spacing_mm") is None else tuple(meta["pixel_spacing_mm"]),
        "cycle_frames": meta.get("cycle_frames"),
        "ed_index": meta.get("ed_index"),
        "es_index": meta.get("es_index"),
    }


def check_field_matches(fields: np.ndarray, layer: "Image", what: str = "The field") -> None:
    """ValueError unless ``fields`` (..., T-1, 2, H, W) belongs to a sequence shaped like ``layer`` (T, H, W)."""
    shape = tuple(np.shape(layer.data)[:3])
    pairs, (h, w) = np.shape(fields)[-4], np.shape(fields)[-2:]
    if (pairs + 1, h, w) != shape:
        raise ValueError(
            f"{what} is for {pairs + 1} frames of {h} x {w} px but '{layer.name}' has {shape[0]} frames of "
            f"{shape[1]} x {shape[2]} px: choose the sequence it was computed on in 1. Sequence."
        )


def set_user_info(layer: "Image", **values) -> None:
    """Record what the user typed for this sequence (None clears it: back to the file's value)."""
    nmsr = layer.metadata.get("nmsr")
    if nmsr is None:
        layer.metadata["nmsr"] = nmsr = {}
    user = nmsr.get("user")
    if user is None:
        nmsr["user"] = user = {}
    for key, value in values.items():
        if value is None:
            user.pop(key, None)
        else:
            user[key] = value


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
