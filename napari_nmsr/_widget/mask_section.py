"""Section 2, Masks: mark ED/ES, paint or trace, snap (active contour), interpolate over the cycle.

Labels painted in the "NMSR drawn masks" layer: 1 = LV blood pool (cavity).
In myocardium mode also 2 = the wall around it; the wall mask of every frame
is then (cavity + wall) minus cavity. Outlines traced as polygons or paths in
the "NMSR traced outlines" Shapes layer are filled into the same labels
(the largest outline of a frame is the epicardium in myocardium mode).
Refine and Interpolate can be undone (one step each, per sequence).
Shortcuts (viewer): Shift-E / Shift-S mark ED / ES, Shift-Right / Shift-Left
go to the next / previous marked frame. All computing is ``core.masks``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QPushButton
from skimage.draw import polygon as fill_polygon

from napari_nmsr.core.errors import NMSRError
from napari_nmsr.core.masks import contour_to_mask, interpolate_contours, snap_contour, wall_masks

from .layers import (
    ROLE_DRAWN, ROLE_KEY, ROLE_MASKS, ROLE_POINTS, ROLE_TRACED, SOURCE_KEY, find_role, placed_like, put_layer,
    remove_role, time_index,
)
from .state import SESSION_SETTINGS, WorkflowState, frames_from_layer, sequence_info, source_id

if TYPE_CHECKING:
    import napari

__all__ = ["MaskSection", "CAVITY", "WALL", "SHORTCUTS", "point_size", "outlines_to_labels"]

CAVITY = 1  # label of the LV blood pool in the drawn layer
WALL = 2  # label of the myocardial wall (myocardium mode)
_CONTOURS = {"inner": "endocardial (cavity) outline", "outer": "epicardial outline"}
#: Viewer key bindings of the section (napari key names).
SHORTCUTS = {"Shift-E": "mark ED", "Shift-S": "mark ES", "Shift-Right": "next mark", "Shift-Left": "previous mark"}


def point_size(contours: list[np.ndarray]) -> float:
    """Point size (px) that keeps neighbouring contour points apart: 70 % of their median spacing, >= 1.5 px,
    so each point can be picked and dragged on its own."""
    gaps = [np.linalg.norm(np.diff(np.vstack([c, c[:1]]), axis=0), axis=1) for c in contours if len(c) > 2]
    if not gaps:
        return 3.0
    return float(max(1.5, 0.7 * np.median(np.concatenate(gaps))))


def outlines_to_labels(shapes: list[np.ndarray], shape_thw: tuple[int, int, int], myocardium: bool) -> np.ndarray:
    """Fill traced outlines (each (N, 3) vertices (t, y, x), closed or not) into (T, H, W) uint8 labels.

    Per frame: blood mode fills every outline with CAVITY; myocardium mode fills the
    largest with WALL and the others (the cavity inside it) with CAVITY.
    """
    T, H, W = shape_thw
    labels = np.zeros(shape_thw, np.uint8)
    per_frame: dict[int, list[np.ndarray]] = {}
    for verts in shapes:
        verts = np.asarray(verts, float)
        if len(verts) < 3:
            continue
        t = int(round(float(np.median(verts[:, 0]))))
        if 0 <= t < T:
            per_frame.setdefault(t, []).append(verts[:, -2:])
    for t, outlines in per_frame.items():
        filled = []
        for yx in outlines:
            rr, cc = fill_polygon(yx[:, 0], yx[:, 1], (H, W))
            filled.append((len(rr), rr, cc))
        filled.sort(key=lambda f: -f[0])
        for i, (_, rr, cc) in enumerate(filled):
            labels[t, rr, cc] = WALL if (myocardium and i == 0 and len(filled) > 1) else CAVITY
    return labels


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
        self.trace_button = QPushButton("Trace outlines")
        self.trace_button.setToolTip(
            "Trace the endocardial border on the ED and ES frames as a polygon (click the points, double-click to "
            "close) or a path; myocardium mode: also the epicardial border. Refine uses them."
        )
        self.go_ed_button = QPushButton("Go to ED")
        self.go_es_button = QPushButton("Go to ES")
        self.go_ed_button.setToolTip("Move the time slider to the next marked ED frame")
        self.go_es_button.setToolTip("Move the time slider to the next marked ES frame")
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last Refine or Interpolate on this sequence")
        self.undo_button.setEnabled(False)
        self.outline_only = QCheckBox("Masks as outlines")
        self.outline_only.setToolTip("Draw the per-frame masks as their outline, so the echo under them stays visible")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #e8b04a;")
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

        self.ed_button.setText("Mark ED (Shift-E)")
        self.es_button.setText("Mark ES (Shift-S)")
        grid = QGridLayout(self)
        grid.addWidget(self.ed_button, 0, 0)
        grid.addWidget(self.es_button, 0, 1)
        grid.addWidget(self.go_ed_button, 1, 0)
        grid.addWidget(self.go_es_button, 1, 1)
        grid.addWidget(self.marks_label, 2, 0)
        grid.addWidget(self.clear_button, 2, 1)
        grid.addWidget(self.draw_button, 3, 0)
        grid.addWidget(self.trace_button, 3, 1)
        grid.addWidget(self.refine_button, 4, 0, 1, 2)
        grid.addWidget(QLabel("Smoothing"), 5, 0)
        grid.addWidget(self.smoothing, 5, 1)
        grid.addWidget(self.interpolate_button, 6, 0, 1, 2)
        grid.addWidget(self.outline_only, 7, 0)
        grid.addWidget(self.undo_button, 7, 1)
        grid.addWidget(self.message, 8, 0, 1, 2)

        self.ed_button.clicked.connect(lambda: self.mark("ED"))
        self.es_button.clicked.connect(lambda: self.mark("ES"))
        self.clear_button.clicked.connect(self.clear_marks)
        self.draw_button.clicked.connect(self.paint_layer)
        self.trace_button.clicked.connect(self.trace_layer)
        self.go_ed_button.clicked.connect(lambda: self.go_to_mark("ED"))
        self.go_es_button.clicked.connect(lambda: self.go_to_mark("ES"))
        self.undo_button.clicked.connect(self.undo)
        self.outline_only.toggled.connect(self._outline_style)
        self.refine_button.clicked.connect(self.refine)
        self.interpolate_button.clicked.connect(self.interpolate)
        self._bind_keys()
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
        self.message.setText("")
        self.undo_button.setEnabled(bool(seq.undo))

    # ------------------------------------------------------------------ shortcuts and stepping
    def _bind_keys(self) -> None:
        actions = {"Shift-E": lambda v: self.mark("ED"), "Shift-S": lambda v: self.mark("ES"),
                   "Shift-Right": lambda v: self.step_mark(+1), "Shift-Left": lambda v: self.step_mark(-1)}
        for key, action in actions.items():
            self._viewer.bind_key(key, action, overwrite=True)

    def unbind_keys(self) -> None:
        """The panel closes: give the keys back to napari."""
        for key in SHORTCUTS:
            try:
                self._viewer.bind_key(key, None)
            except (KeyError, ValueError, TypeError):
                pass

    def _frame(self) -> int | None:
        image = self._state.image_layer
        return None if image is None else time_index(self._viewer, image)

    def go_to_mark(self, phase: str) -> int | None:
        """Move the time slider to the next marked ``phase`` frame after the current one (wrapping)."""
        image = self._image()
        marks = self._state.ed_frames if phase == "ED" else self._state.es_frames
        if image is None or not marks:
            if image is not None:
                show_warning(f"No {phase} frame marked yet.")
            return None
        t = self._frame()
        later = [m for m in marks if m > t]
        target = later[0] if later else marks[0]
        self._go_to_frame(image, target)
        return target

    def step_mark(self, direction: int) -> int | None:
        """Move the time slider to the next (+1) or previous (-1) marked frame, ED or ES."""
        image = self._state.image_layer
        marks = sorted(self._state.ed_frames + self._state.es_frames)
        if image is None or not marks:
            return None
        t = self._frame()
        options = [m for m in marks if (m > t if direction > 0 else m < t)]
        if not options:
            return None
        target = options[0] if direction > 0 else options[-1]
        self._go_to_frame(image, target)
        return target

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

    def trace_layer(self):
        """Select (or create) the Shapes layer to trace outlines in, in polygon mode, on the first marked frame."""
        image = self._image()
        if image is None:
            return None
        layer = find_role(self._viewer, ROLE_TRACED, image)
        if layer is None:
            place = placed_like(image)
            layer = self._viewer.add_shapes(
                ndim=3, name="NMSR traced outlines", edge_color="#ffd23f", face_color=[0, 0, 0, 0],
                edge_width=max(0.5, image.data.shape[-1] / 250), scale=place["scale"], translate=place["translate"],
                units=place["units"], metadata={ROLE_KEY: ROLE_TRACED, SOURCE_KEY: source_id(image)},
            )
        self._viewer.layers.selection.active = layer
        layer.mode = "add_polygon"
        marks = self._state.ed_frames + self._state.es_frames
        if marks:
            self._go_to_frame(image, min(marks))
        wall = " Myocardium: trace the epicardial border too." if self._state.mode == "myocardium" else ""
        show_info(f"Trace the endocardial border on each ED and ES frame in '{layer.name}'.{wall}")
        return layer

    def outlines_to_drawn(self):
        """Fill the traced outlines into the drawn labels layer (frames with outlines are replaced)."""
        image = self._image()
        traced = find_role(self._viewer, ROLE_TRACED, image) if image is not None else None
        if traced is None or len(traced.data) == 0:
            return None
        shape = tuple(image.data.shape[:3])
        filled = outlines_to_labels(list(traced.data), shape, self._state.mode == "myocardium")
        drawn = self._drawn_layer()
        labels = np.zeros(shape, np.uint8) if drawn is None else np.asarray(drawn.data).copy()
        frames = [t for t in range(shape[0]) if filled[t].any()]
        labels[frames] = filled[frames]
        if drawn is None:
            drawn = self._viewer.add_labels(labels, name="NMSR drawn masks", **placed_like(image),
                                            metadata={ROLE_KEY: ROLE_DRAWN, SOURCE_KEY: source_id(image)})
        else:
            drawn.data = labels
        return drawn

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
        self.outlines_to_drawn()
        drawn = self._drawn_layer()
        if drawn is None:
            show_warning("Paint or trace the ED and ES masks first ('Paint masks' or 'Trace outlines').")
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
            self.message.setText(str(exc))
            show_error(str(exc))
            return None
        self._report(caught)
        data = np.concatenate(rows).astype(np.float32)
        features = {"phase": np.array(phase), "contour": np.array(contour), "point": np.array(index)}
        self._snapshot("Refine", ROLE_POINTS)
        size = point_size([r[:, 1:] for r in rows])
        layer = put_layer(
            self._viewer, ROLE_POINTS, "points", data, source=image,
            name="NMSR contour points", **placed_like(image),
            size=size, face_color="yellow", border_width=0.15, border_color="black",
        )
        layer.size = size
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
            self.message.setText(str(exc))
            show_error(str(exc))
            return None
        self._report(caught)
        self._snapshot("Interpolate", ROLE_MASKS)
        layer = put_layer(
            self._viewer, ROLE_MASKS, "labels", result.astype(np.uint8), source=image,
            name="NMSR masks", **placed_like(image), opacity=0.35,
        )
        layer.metadata["inner_contours"] = cycles["inner"]  # (T, N, 2): the reference for tracking
        self._outline_style()
        return layer

    # ------------------------------------------------------------------ messages, outlines, undo
    def _report(self, caught) -> None:
        """Warnings in full in the section (the notification may be cut off), and as notifications."""
        texts = list(dict.fromkeys(str(w.message) for w in caught))
        self.message.setText("\n".join(texts))
        for text in texts:
            show_warning(text)

    def _outline_style(self, *_) -> None:
        layer = find_role(self._viewer, ROLE_MASKS, self._state.image_layer)
        if layer is not None:
            layer.contour = max(1, int(layer.data.shape[-1] // 200)) if self.outline_only.isChecked() else 0

    def _snapshot(self, what: str, role: str) -> None:
        """Keep the ``role`` layer's content (or its absence) before ``what`` changes it: Undo puts it back."""
        layer = find_role(self._viewer, role, self._state.image_layer)
        snap = None
        if layer is not None:
            snap = {"data": np.array(layer.data, copy=True), "metadata": {
                k: v for k, v in layer.metadata.items() if k == "inner_contours"}}
            if role == ROLE_POINTS:
                snap["features"] = layer.features.copy()
        undo = self._state.current.undo
        undo.append((what, role, snap))
        del undo[:-10]
        self.undo_button.setEnabled(True)

    def undo(self) -> str | None:
        """Put back the layer as it was before the last Refine / Interpolate; returns what was undone."""
        image = self._state.image_layer
        undo = self._state.current.undo
        if image is None or not undo:
            return None
        what, role, snap = undo.pop()
        if snap is None:
            remove_role(self._viewer, role, image)
        else:
            layer = find_role(self._viewer, role, image)
            if layer is None:
                return None
            layer.data = snap["data"]
            if "features" in snap:
                layer.features = snap["features"]
            layer.metadata.update(snap["metadata"])
        self.undo_button.setEnabled(bool(undo))
        self.message.setText(f"Undid {what}.")
        return what


class _PointCountError(ValueError):
    def __init__(self, name, counts):
        super().__init__(
            f"The {_CONTOURS.get(name, name)} has a different number of points on different frames "
            f"({sorted(counts)}): delete added points or press 'Refine' again."
        )


