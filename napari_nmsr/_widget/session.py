"""Session files: stop and come back. One NPZ holds a sequence's marks, masks, points and settings.

Keys (``format`` "napari-nmsr-session", version 1):

==================  =======================  ===========================================
key                 shape / dtype            meaning
==================  =======================  ===========================================
session_json        () str                   {"format", "version", "sequence": {"source",
                                             "name", "shape"}, "mode", "ed_frames",
                                             "es_frames", "units" (the user's pixel size /
                                             frame interval / cycle length), "settings"
                                             (panel settings), "result_path" (or null),
                                             "traced_counts"}
drawn               (T, H, W) u1             painted / traced ED-ES labels (if any)
masks               (T, H, W) u1             per-frame masks (if interpolated)
inner_contours      (T, N, 2) f8             the interpolated outline (tracking reference)
points              (P, 3) f4                refined contour points (t, y, x) (if any)
points_phase, points_contour  (P,) str       their ED/ES and inner/outer features
points_index        (P,) i8                  their point number
traced              (V, 3) f8                traced outline vertices, shapes concatenated
==================  =======================  ===========================================

The registration result is not copied in: ``result_path`` names its NPZ (the
one saved with Export > Fields, or one written next to the session file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_nmsr.core.errors import ResultFileError
from napari_nmsr.core.export import atomic_write
from napari_nmsr.core.register import ScaleDone
from napari_nmsr.core.result import RegistrationResult

from .layers import (
    ROLE_DRAWN, ROLE_KEY, ROLE_MASKS, ROLE_POINTS, ROLE_TRACED, SOURCE_KEY, find_role, placed_like, put_layer,
)
from .mask_section import point_size
from .state import SESSION_SETTINGS, sequence_info, set_user_info, source_id

if TYPE_CHECKING:
    from .workflow import WorkflowWidget

__all__ = ["SESSION_FORMAT", "save_session", "load_session", "scales_of"]

SESSION_FORMAT = "napari-nmsr-session"
SESSION_VERSION = 1


def scales_of(result: RegistrationResult) -> list[ScaleDone]:
    """A result file's scales as the engine's ScaleDone events (what the panel displays)."""
    n = result.n_scales
    steps = result.steps_run if result.steps_run is not None and len(result.steps_run) == n else np.zeros(n, int)
    secs = result.seconds if result.seconds is not None and len(result.seconds) == n else np.zeros(n)
    loss = result.final_loss if result.final_loss is not None and len(result.final_loss) == n else np.zeros(n)
    refined = result.refined if result.refined is not None and len(result.refined) == n else None
    return [ScaleDone(k, n, float(result.scales[k]), result.fields[k], np.asarray(result.metrics["mse"][k]),
                      np.asarray(result.metrics["mean_cc"][k]), int(steps[k]), float(secs[k]), float(loss[k]),
                      None if refined is None else ~np.asarray(refined[k], bool))
            for k in range(n)]


def save_session(widget: "WorkflowWidget", path) -> Path:
    """Write the chosen sequence's session to ``path`` (.npz) atomically; the result beside it when unsaved."""
    state, viewer = widget.state, widget.viewer
    image = state.image_layer
    if image is None:
        raise ValueError("Choose a sequence in 1. Sequence first: a session belongs to one sequence.")
    path = Path(path)
    if path.suffix.lower() != ".npz":
        path = path.with_suffix(".npz")
    seq = state.current
    result_path = seq.result_path
    if seq.result is not None and seq.result.n_scales and (result_path is None or not Path(result_path).is_file()):
        result_path = str(widget.export.save_fields(str(path.with_name(path.stem + "_result.npz"))))
        seq.result_path = result_path
    meta = image.metadata.get("nmsr", {}) or {}
    arrays: dict[str, np.ndarray] = {}
    for role, key in ((ROLE_DRAWN, "drawn"), (ROLE_MASKS, "masks")):
        layer = find_role(viewer, role, image)
        if layer is not None:
            arrays[key] = np.asarray(layer.data, dtype=np.uint8)
            if role == ROLE_MASKS and layer.metadata.get("inner_contours") is not None:
                arrays["inner_contours"] = np.asarray(layer.metadata["inner_contours"], dtype=np.float64)
    points = find_role(viewer, ROLE_POINTS, image)
    if points is not None and len(points.data):
        arrays["points"] = np.asarray(points.data, dtype=np.float32)
        arrays["points_phase"] = np.asarray(points.features["phase"], dtype=str)
        arrays["points_contour"] = np.asarray(points.features["contour"], dtype=str)
        arrays["points_index"] = np.asarray(points.features["point"], dtype=np.int64)
    traced = find_role(viewer, ROLE_TRACED, image)
    counts = []
    if traced is not None and len(traced.data):
        arrays["traced"] = np.concatenate([np.asarray(s, dtype=np.float64) for s in traced.data])
        counts = [len(s) for s in traced.data]
    doc = {
        "format": SESSION_FORMAT, "version": SESSION_VERSION,
        "sequence": {"source": meta.get("source"), "name": image.name, "shape": list(image.data.shape[:3])},
        "mode": state.mode, "ed_frames": list(state.ed_frames), "es_frames": list(state.es_frames),
        "units": dict(meta.get("user", {}) or {}), "settings": SESSION_SETTINGS,
        "result_path": result_path, "traced_counts": counts,
    }
    arrays["session_json"] = np.array(json.dumps(doc, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    return atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


def _sequence_for(widget: "WorkflowWidget", doc: dict):
    """The image layer the session belongs to: the chosen one when it fits, else one open, else its file."""
    shape = tuple(doc["sequence"]["shape"])
    candidates = [widget.state.image_layer] + widget.sequence.image_layers()
    for layer in candidates:
        if layer is not None and tuple(layer.data.shape[:3]) == shape and (
                layer.name == doc["sequence"]["name"] or layer == widget.state.image_layer):
            return layer
    source = doc["sequence"].get("source")
    if source and Path(source).exists():
        layers = widget.viewer.open(source, plugin="napari-nmsr")
        if layers and tuple(layers[0].data.shape[:3]) == shape:
            return layers[0]
    raise ResultFileError(
        f"The session is for '{doc['sequence']['name']}' ({' x '.join(map(str, shape))}); open that sequence first.")


def load_session(widget: "WorkflowWidget", path):
    """Restore a session: chooses (or opens) its sequence, then its marks, units, layers, settings and result."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(str(arrays["session_json"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ResultFileError(f"{path.name} is not a napari-nmsr session file ({exc})") from exc
    if doc.get("format") != SESSION_FORMAT:
        raise ResultFileError(f"{path.name} is not a napari-nmsr session file.")
    if doc.get("version", 0) > SESSION_VERSION:
        raise ResultFileError(f"{path.name} was written by a newer napari-nmsr (version {doc['version']}).")
    viewer, state = widget.viewer, widget.state
    image = _sequence_for(widget, doc)
    widget.sequence.select_layer(image)
    SESSION_SETTINGS.update(doc.get("settings") or {})
    widget.registration._restore()
    widget.display.restore_settings()
    widget.masks.smoothing.setValue(float(SESSION_SETTINGS.get("rbf_smoothing", widget.masks.smoothing.value())))
    mode_index = widget.sequence.mode_combo.findData(doc.get("mode"))
    if mode_index >= 0:
        widget.sequence.mode_combo.setCurrentIndex(mode_index)
    units = doc.get("units") or {}
    if units:
        set_user_info(image, **units)
        info = sequence_info(image)
        widget.sequence.set_frame_rate(1.0 / info["frame_interval_s"] if info["frame_interval_s"] else None)
        widget.sequence.set_pixel_size(float(np.mean(info["pixel_spacing_mm"])) if info["pixel_spacing_mm"] else None)
    seq = state.current
    seq.marks_from_file = True
    seq.ed_frames, seq.es_frames = [int(t) for t in doc["ed_frames"]], [int(t) for t in doc["es_frames"]]
    place = placed_like(image)
    if "drawn" in arrays:
        put_layer(viewer, ROLE_DRAWN, "labels", arrays["drawn"], source=image, name="NMSR drawn masks", **place)
    if "masks" in arrays:
        layer = put_layer(viewer, ROLE_MASKS, "labels", arrays["masks"], source=image, name="NMSR masks",
                          opacity=0.35, **place)
        if "inner_contours" in arrays:
            layer.metadata["inner_contours"] = arrays["inner_contours"]
    if "points" in arrays:
        pts = arrays["points"]
        size = point_size([pts[pts[:, 0] == t, 1:] for t in np.unique(pts[:, 0])])
        layer = put_layer(viewer, ROLE_POINTS, "points", pts, source=image, name="NMSR contour points",
                          face_color="yellow", border_width=0.15, border_color="black", size=size, **place)
        layer.features = {"phase": arrays["points_phase"], "contour": arrays["points_contour"],
                          "point": arrays["points_index"]}
    if "traced" in arrays and doc.get("traced_counts"):
        shapes = np.split(arrays["traced"], np.cumsum(doc["traced_counts"])[:-1])
        traced = find_role(viewer, ROLE_TRACED, image) or widget.masks.trace_layer()
        traced.data = []
        traced.add_polygons(shapes)
        traced.metadata[SOURCE_KEY] = source_id(image)
        traced.metadata[ROLE_KEY] = ROLE_TRACED
    result_path = doc.get("result_path")
    if result_path and Path(result_path).is_file():
        result = RegistrationResult.load(result_path)
        if result.n_scales and result.fields.shape[1] + 1 == image.data.shape[0]:
            seq.clear_run()
            seq.done = scales_of(result)
            seq.result, seq.result_path = result, result_path
            seq.run_mask = result.masks
            widget.display.clear()
            widget.display.refresh()
            from .layers import ROLE_VECTORS

            vec = find_role(viewer, ROLE_VECTORS, image)
            if vec is not None:
                vec.metadata["nmsr_result"] = result
    widget._on_sequence_changed(image)
    return image
