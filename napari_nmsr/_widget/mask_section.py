"""Section 2, Masks: mark ED/ES, paint, snap (active contour), interpolate over the cycle.

Labels painted in the "NMSR drawn masks" layer: 1 = LV blood pool (cavity).
In myocardium mode also 2 = the wall around it; the wall mask of every frame
is then (cavity + wall) minus cavity. All computing is ``core.masks``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QPushButton

from napari_nmsr.core.errors import NMSRError
from napari_nmsr.core.masks import contour_to_mask, interpolate_contours, snap_contour, wall_masks

from .layers import (
    ROLE_DRAWN, ROLE_KEY, ROLE_MASKS, ROLE_POINTS, SOURCE_KEY, find_role, placed_like, put_layer, time_index,
)
from .state import SESSION_SETTINGS, WorkflowState, frames_from_layer, sequence_info, source_id

if TYPE_CHECKING:
    import napari

__all__ = ["MaskSection", "CAVITY", "WALL"]

CAVITY = 1  # label of the LV blood pool in the drawn layer
WALL = 2  # label of the myocardial wall (myocardium mode)
_CONTOURS = {"inner": "endocardial (cavity) outline", "outer": "epicardial outline"}


class MaskSection(QGroupBox):
    """Buttons that turn two painted masks into a mask on every frame."""

    def __init__(self, viewer: "napari.Viewer", state: WorkflowState, parent=None):
        super().__init__("2. Masks", parent)
        self._viewer = viewer
        self._state = state
        self.marks_label = QLabel()
        self.ed_button = QPushButton("This frame is ED")
        self.es_button = QPushButton("This frame is ES")
        self.clear_button = QPushButton("Clear marks")
        self.draw_button = QPushButton("Paint masks")
        self.refine_button = QPushButton("Refine (active contour)")
        self.interpolate_button = QPushButton("Interpolate over the cycle")
        self.smoothing = QDoubleSpinBox()
        self.smoothing.setRange(0.0, 100.0)
        self.smoothing.setSingleStep(0.1)
        self.smoothing.setValue(SESSION_SETTINGS.get("rbf_smoothing", 0.1))
        self.smoothing.setToolTip("RBF smoothing of each frame's outline (0 = through every point)")
        self.ed_button.setToolTip("Mark the frame under the time slider as end-diastole (largest cavity)")
        self.es_button.setToolTip("Mark the frame under the time slider as end-systole (smallest cavity)")
        self.draw_button.setToolTip("Create (or select) the labels layer to paint the ED and ES masks in")
        self.refine_button.setToolTip("Snap the painted outlines to the border: 100 draggable points per frame")
        self.interpolate_button.setToolTip("Move the points linearly between ED and ES: a mask on every frame")

        grid = QGridLayout(self)
        grid.addWidget(self.ed_button, 0, 0)
        grid.addWidget(self.es_button, 0, 1)
        grid.addWidget(self.marks_label, 1, 0)
        grid.addWidget(self.clear_button, 1, 1)
        grid.addWidget(self.draw_button, 2, 0, 1, 2)
        grid.addWidget(self.refine_button, 3, 0, 1, 2)
        grid.addWidget(QLabel("Smoothing"), 4, 0)
        grid.addWidget(self.smoothing, 4, 1)
        grid.addWidget(self.interpolate_button, 5, 0, 1, 2)

        self.ed_button.clicked.connect(lambda: self.mark("ED"))
        self.es_button.clicked.connect(lambda: self.mark("ES"))
        self.clear_button.clicked.connect(self.clear_marks)
        self.draw_button.clicked.connect(self.paint_layer)
        self.refine_button.clicked.connect(self.refine)
        self.interpolate_button.clicked.connect(self.interpolate)
        self.smoothing.valueChanged.connect(lambda v: SESSION_SETTINGS.__setitem__("rbf_smoothing", v))
        self._show_marks()

    # ------------------------------------------------------------------ marks
    def on_layer_changed(self, layer) -> None:
        """Another sequence: show its own marks; the first time, take the ED/ES frames its file gives."""
        seq = self._state.for_layer(layer)
        if layer is not None and not seq.marks_from_file:
            seq.marks_from_file = True
            info = sequence_info(layer)
            if info["ed_index"] is not None and not seq.ed_frames:
                seq.ed_frames = [int(info["ed_index"])]
            if info["es_index"] is not None and not seq.es_frames:
                seq.es_frames = [int(info["es_index"])]
        self._show_marks()

    def mark(self, phase: str) -> int | None:
        """Mark the frame under the time slider as ED or ES (several for several beats)."""
        image = self._image()
        if image is None:
            return None
        t = time_index(self._viewer, image)
        mine, other = (
            (self._state.ed_frames, self._state.es_frames) if phase == "ED" else (self._state.es_frames, self._state.ed_frames)
        )
        if t in other:
            other.remove(t)
        if t not in mine:
            mine.append(t)
            mine.sort()
        self._show_marks()
        return t

    def clear_marks(self) -> None:
        self._state.ed_frames, self._state.es_frames = [], []
        self._show_marks()

    def _show_marks(self) -> None:
        def fmt(frames):
            return ", ".join(str(f) for f in frames) or "-"

        self.marks_label.setText(f"ED: {fmt(self._state.ed_frames)}   ES: {fmt(self._state.es_frames)}")

    # ------------------------------------------------------------------ layers
    def _image(self):
        if self._state.image_layer is None:
            show_warning("Choose an image layer in 1. Sequence first.")
        return self._state.image_layer

    def _drawn_layer(self):
        image = self._state.image_layer
        layer = find_role(self._viewer, ROLE_DRAWN, image)
        if layer is not None and image is not None and tuple(layer.data.shape) != tuple(image.data.shape[:3]):
            return None
        return layer

    def paint_layer(self):
        """Select (or create) the labels layer for painting, in paint mode, on the first marked frame."""
        image = self._image()
        if image is None:
            return None
        layer = self._drawn_layer()
        if layer is None:
            layer = self._viewer.add_labels(
                np.zeros(image.data.shape[:3], np.uint8),
                name="NMSR drawn masks",
                **placed_like(image),
                metadata={ROLE_KEY: ROLE_DRAWN, SOURCE_KEY: source_id(image)},
            )
        self._viewer.layers.selection.active = layer
        layer.selected_label = CAVITY
        layer.brush_size = max(3, image.data.shape[-1] // 40)
        layer.mode = "paint"
        marks = self._state.ed_frames + self._state.es_frames
        if marks:
            self._go_to_frame(image, min(marks))
        hint = "label 1 = cavity" + (", label 2 = wall" if self._state.mode == "myocardium" else "")
        show_info(f"Paint the ED and ES frames in '{layer.name}' ({hint}).")
        return layer

    def _go_to_frame(self, image, t: int) -> None:
        axis = self._viewer.dims.ndim - image.ndim
        world = image.data_to_world([t, 0, 0])[0]
        self._viewer.dims.set_point(axis, world)

    # ------------------------------------------------------------------ refine
    def _regions(self, drawn_frame: np.ndarray) -> dict[str, np.ndarray]:
        if self._state.mode == "myocardium":
            return {"inner": drawn_frame == CAVITY, "outer": drawn_frame > 0}
        return {"inner": drawn_frame > 0}

    def _check_marks(self) -> bool:
        if not self._state.ed_frames or not self._state.es_frames:
            show_warning("Mark at least one ED and one ES frame (time slider + 'This frame is ED/ES').")
            return False
        return True

    def refine(self):
        """Snap each marked frame's painted outline(s): a Points layer of 100 points per outline."""
        image = self._image()
        if image is None or not self._check_marks():
            return None
        drawn = self._drawn_layer()
        if drawn is None:
            show_warning("Paint the ED and ES masks first ('Paint masks').")
            return None
        frames = frames_from_layer(image)
        labels = np.asarray(drawn.data)
        rows, phase, contour, index = [], [], [], []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for ph, marks in (("ED", self._state.ed_frames), ("ES", self._state.es_frames)):
                    for t in marks:
                        for name, region in self._regions(labels[t]).items():
                            pts = snap_contour(frames[t], region, name=f"{ph} mask on frame {t} ({_CONTOURS[name]})")
                            rows.append(np.column_stack([np.full(len(pts), t), pts]))
                            phase += [ph] * len(pts)
                            contour += [name] * len(pts)
                            index += list(range(len(pts)))
        except NMSRError as exc:
            show_error(str(exc))
            return None
        _show_warnings(caught)
        data = np.concatenate(rows).astype(np.float32)
        features = {"phase": np.array(phase), "contour": np.array(contour), "point": np.array(index)}
        layer = put_layer(
            self._viewer, ROLE_POINTS, "points", data, source=image,
            name="NMSR contour points", **placed_like(image),
            size=max(1.5, image.data.shape[-1] / 90), face_color="yellow", border_width=0,
        )
        layer.features = features
        layer.mode = "select"
        return layer

    # ------------------------------------------------------------------ interpolate
    def _keyframe_contours(self, layer) -> dict[str, dict[str, dict[int, np.ndarray]]]:
        """{contour: {"ED"/"ES": {frame: (N, 2)}}} from the (possibly dragged) points."""
        data = np.asarray(layer.data)
        feats = layer.features
        out: dict = {}
        for name in np.unique(feats["contour"]):
            for ph in ("ED", "ES"):
                sel = (feats["contour"] == name) & (feats["phase"] == ph)
                for t in np.unique(np.round(data[sel, 0]).astype(int)):
                    rows = sel & (np.round(data[:, 0]).astype(int) == t)
                    order = np.argsort(np.asarray(feats["point"])[rows], kind="stable")
                    out.setdefault(str(name), {"ED": {}, "ES": {}})[ph][int(t)] = data[rows][order][:, 1:]
        return out

    def interpolate(self):
        """Fill the "NMSR masks" labels layer: one mask per frame over the whole cycle."""
        image = self._image()
        if image is None or not self._check_marks():
            return None
        points = find_role(self._viewer, ROLE_POINTS, image)
        if points is None or len(points.data) == 0:
            points = self.refine()
            if points is None:
                return None
        n_frames, h, w = image.data.shape[:3]
        smoothing = float(self.smoothing.value())
        cycle_frames = sequence_info(image)["cycle_frames"]  # 1. Sequence > Cycle length (None: from the marks)
        masks, cycles = {}, {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for name, phases in self._keyframe_contours(points).items():
                    counts = {len(c) for g in phases.values() for c in g.values()}
                    if len(counts) != 1:
                        raise _PointCountError(name, counts)
                    cycle = interpolate_contours(phases["ED"], phases["ES"], n_frames, cycle_length=cycle_frames)
                    cycles[name] = cycle
                    masks[name] = np.stack([contour_to_mask(p, (h, w), smoothing) for p in cycle])
                if "outer" in masks:
                    result = wall_masks(masks["inner"], masks["outer"])
                else:
                    result = masks["inner"]
        except (NMSRError, _PointCountError) as exc:
            show_error(str(exc))
            return None
        _show_warnings(caught)
        layer = put_layer(
            self._viewer, ROLE_MASKS, "labels", result.astype(np.uint8), source=image,
            name="NMSR masks", **placed_like(image), opacity=0.35,
        )
        layer.metadata["inner_contours"] = cycles["inner"]  # (T, N, 2): the reference for tracking
        return layer


class _PointCountError(ValueError):
    def __init__(self, name, counts):
        super().__init__(
            f"The {_CONTOURS.get(name, name)} has a different number of points on different frames "
            f"({sorted(counts)}): delete added points or press 'Refine' again."
        )


def _show_warnings(caught) -> None:
    seen = set()
    for w in caught:
        text = str(w.message)
        if text not in seen:
            seen.add(text)
            show_warning(text)
