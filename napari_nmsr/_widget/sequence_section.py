"""Section 1, Sequence: which image layer, what is tracked in it, and its units.

Pixel size (mm/px), frame rate and cycle length can be typed (or the pixel
size calibrated on a line drawn over a known depth mark); they are kept in
the image layer's ``metadata["nmsr"]["user"]`` (:func:`.state.sequence_info`
reads them over the file's values), and the image and its panel layers are
rescaled so the viewer shows mm and s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QPushButton, QSpinBox

from .layers import (
    ROLE_CALIBRATION, ROLE_COLOUR, ROLE_KEY, SOURCE_KEY, adopt_unbound, find_role, kind, placed_like, rescale_bound_layers,
)
from .qt_util import row
from .state import MODES, SESSION_SETTINGS, WorkflowState, sequence_info, set_user_info, source_id

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

__all__ = ["SequenceSection", "line_length_px"]


def line_length_px(line: np.ndarray) -> float:
    """Length in pixels of a drawn line / path (rows: (..., y, x) vertices in the image's data coordinates)."""
    yx = np.asarray(line, dtype=float)[:, -2:]
    return float(np.sum(np.linalg.norm(np.diff(yx, axis=0), axis=1)))


class SequenceSection(QGroupBox):
    """Pick the image layer (a time series) and the mode (blood flow or myocardium)."""

    layer_changed = Signal(object)  # the new Image layer or None
    mode_changed = Signal(str)
    units_changed = Signal(object)  # the Image layer whose pixel size / frame time changed

    def __init__(self, viewer: "napari.Viewer", state: WorkflowState, parent=None):
        super().__init__("1. Sequence", parent)
        self._viewer = viewer
        self._state = state
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("The echo sequence (an image layer with a time axis) to track")
        self.mode_combo = QComboBox()
        for key, label in MODES.items():
            self.mode_combo.addItem(label, key)
        self.mode_combo.setToolTip(
            "Blood flow: track contrast speckle inside the LV blood pool.\n"
            "Myocardium: track the wall (paint label 1 = cavity, label 2 = wall)."
        )
        self.info = QLabel("Open a sequence (File > Open, or File > Open Sample > napari-nmsr)")
        self.info.setWordWrap(True)
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setRange(0.0, 20.0)
        self.pixel_size.setDecimals(4)
        self.pixel_size.setSingleStep(0.01)
        self.pixel_size.setSuffix(" mm/px")
        self.pixel_size.setSpecialValueText("unknown")
        self.pixel_size.setToolTip("Size of one pixel (square pixels). 0 = unknown: results stay in pixels")
        self.calibrate_button = QPushButton("Line...")
        self.calibrate_button.setToolTip(
            "Draw a line over a known depth mark (e.g. the 0 to 16 cm scale), type its length, press Apply"
        )
        self.line_cm = QDoubleSpinBox()
        self.line_cm.setRange(0.0, 100.0)
        self.line_cm.setDecimals(1)
        self.line_cm.setMinimumWidth(80)
        self.line_cm.setSuffix(" cm")
        self.line_cm.setToolTip("True length of the drawn line")
        self.apply_line_button = QPushButton("Apply")
        self.frame_rate = QDoubleSpinBox()
        self.frame_rate.setRange(0.0, 5000.0)
        self.frame_rate.setDecimals(2)
        self.frame_rate.setSuffix(" fps")
        self.frame_rate.setSpecialValueText("unknown")
        self.frame_rate.setToolTip("Frames per second (overrides the file's). 0 = unknown: times stay in frames")
        self.cycle = QSpinBox()
        self.cycle.setRange(0, 10000)
        self.cycle.setSuffix(" frames")
        self.cycle.setSpecialValueText("from the ED/ES marks")
        self.cycle.setToolTip("Frames from one ED to the next (used to interpolate the masks when only one "
                              "systole or diastole is marked)")
        form = QFormLayout(self)
        form.addRow("Image layer", self.layer_combo)
        form.addRow("Mode", self.mode_combo)
        form.addRow("Pixel size", self.pixel_size)
        form.addRow("Calibrate", row(self.calibrate_button, self.line_cm, self.apply_line_button))
        form.addRow("Frame rate", self.frame_rate)
        form.addRow("Cycle length", self.cycle)
        self.colour_button = QPushButton("Show the original colours beside it")
        self.colour_button.setToolTip("Colour Doppler / colour cines: the RGB frames as acquired, to the right of the "
                                      "grayscale (channel 0) that is registered; the time slider moves both")
        form.addRow(self.colour_button)
        form.addRow(self.info)
        self.colour_button.clicked.connect(lambda: self.show_colours())
        self.pixel_size.editingFinished.connect(self._on_pixel_size)
        self.frame_rate.editingFinished.connect(self._on_frame_rate)
        self.cycle.editingFinished.connect(self._on_cycle)
        self.calibrate_button.clicked.connect(self.calibration_layer)
        self.apply_line_button.clicked.connect(lambda: self.apply_calibration())

        self.mode_combo.setCurrentIndex(max(0, self.mode_combo.findData(SESSION_SETTINGS.get("mode", "blood"))))
        state.mode = self.mode_combo.currentData()
        self.layer_combo.currentIndexChanged.connect(self._on_layer_choice)
        self.mode_combo.currentIndexChanged.connect(self._on_mode)
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_removed)
        events.changed.connect(self.refresh)
        self.refresh()

    def disconnect_viewer(self) -> None:
        events = self._viewer.layers.events
        for emitter, slot in ((events.inserted, self._on_inserted), (events.removed, self._on_removed),
                              (events.changed, self.refresh)):
            emitter.disconnect(slot)

    # ------------------------------------------------------------------ layers
    def image_layers(self) -> list["Image"]:
        """Sequences: image layers with a time axis, not made by the panel (maps are images too)."""
        return [lyr for lyr in self._viewer.layers
                if kind(lyr) == "image" and lyr.ndim >= 3 and ROLE_KEY not in lyr.metadata]

    def _on_inserted(self, event=None) -> None:
        """A new sequence (File > Open, a sample) becomes the chosen one."""
        layer = getattr(event, "value", None)
        self.refresh(chosen=layer if layer is not None and layer in self.image_layers() else None)
        adopt_unbound(self._viewer, self._state.image_layer)

    def _on_removed(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and kind(layer) == "image" and ROLE_KEY not in layer.metadata:
            self._state.forget(layer)
        self.refresh()

    def refresh(self, event=None, chosen=None) -> None:
        """Rebuild the layer list; keep the current choice when it still exists (or take ``chosen``)."""
        current = self._state.image_layer
        layers = self.image_layers()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        for lyr in layers:
            self.layer_combo.addItem(lyr.name)
        if chosen is not None:
            keep = chosen
        else:
            keep = current if current in layers else (layers[-1] if layers else None)
        if keep is not None:
            self.layer_combo.setCurrentIndex(layers.index(keep))
        self.layer_combo.blockSignals(False)
        if keep != current:  # (napari hands plugins proxies: compare with ==, never `is`)
            self._set_layer(keep)
        else:
            self._describe(keep)

    def select_layer(self, layer: "Image") -> None:
        idx = self.layer_combo.findText(layer.name)
        if idx >= 0:
            self.layer_combo.setCurrentIndex(idx)

    def _on_layer_choice(self, index: int) -> None:
        layers = self.image_layers()
        self._set_layer(layers[index] if 0 <= index < len(layers) else None)

    def _set_layer(self, layer: "Image | None") -> None:
        self._state.image_layer = layer
        mode = (layer.metadata.get("nmsr") or {}).get("mode") if layer is not None else None
        if mode in MODES:  # a sample (or a file) says what it shows
            self.mode_combo.setCurrentIndex(self.mode_combo.findData(mode))
        self._describe(layer)
        self.layer_changed.emit(layer)

    # ------------------------------------------------------------------ units
    def _show_units(self, layer) -> None:
        info = sequence_info(layer) if layer is not None else {}
        spacing, dt = info.get("pixel_spacing_mm"), info.get("frame_interval_s")
        for box, value in ((self.pixel_size, float(np.mean(spacing)) if spacing else 0.0),
                           (self.frame_rate, 1.0 / dt if dt else 0.0),
                           (self.cycle, int(info.get("cycle_frames") or 0))):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        for w in (self.pixel_size, self.frame_rate, self.cycle, self.calibrate_button, self.apply_line_button):
            w.setEnabled(layer is not None)

    def set_pixel_size(self, mm_per_px: float | None) -> None:
        """Pixel size of the chosen sequence in mm (None or 0: back to the file's value)."""
        self._set_units(pixel_spacing_mm=(float(mm_per_px),) * 2 if mm_per_px else None)

    def set_frame_rate(self, fps: float | None) -> None:
        """Frame rate of the chosen sequence (None or 0: back to the file's value)."""
        self._set_units(frame_interval_s=1.0 / float(fps) if fps else None)

    def _on_pixel_size(self) -> None:
        self.set_pixel_size(self.pixel_size.value())

    def _on_frame_rate(self) -> None:
        self.set_frame_rate(self.frame_rate.value())

    def _on_cycle(self) -> None:
        layer = self._state.image_layer
        if layer is not None:
            set_user_info(layer, cycle_frames=int(self.cycle.value()) or None)
            self._describe(layer)

    def _set_units(self, **values) -> None:
        layer = self._state.image_layer
        if layer is None:
            return
        set_user_info(layer, **values)
        info = sequence_info(layer)
        dt, spacing = info["frame_interval_s"], info["pixel_spacing_mm"]
        scale = list(layer.scale[-3:])
        units = [str(u) for u in layer.units[-3:]]
        if "frame_interval_s" in values:
            scale[0], units[0] = (float(dt), "s") if dt else (1.0, "pixel")
        if "pixel_spacing_mm" in values:
            if spacing:
                scale[1:], units[1:] = [float(spacing[0]), float(spacing[1])], ["mm", "mm"]
            else:
                scale[1:], units[1:] = [1.0, 1.0], ["pixel", "pixel"]
        layer.scale = (*layer.scale[:-3], *scale)
        layer.units = (*[str(u) for u in layer.units[:-3]], *units)
        rescale_bound_layers(self._viewer, layer)
        self._describe(layer)
        self.units_changed.emit(layer)

    def calibration_layer(self):
        """A Shapes layer on the chosen sequence, in line mode: draw over a known depth mark."""
        layer = self._state.image_layer
        if layer is None:
            return None
        shapes = find_role(self._viewer, ROLE_CALIBRATION, layer)
        if shapes is None:
            place = placed_like(layer)
            shapes = self._viewer.add_shapes(
                ndim=3, name="NMSR calibration line", edge_color="yellow", edge_width=max(1.0, layer.data.shape[-1] / 300),
                scale=place["scale"], translate=place["translate"], units=place["units"],
                metadata={ROLE_KEY: ROLE_CALIBRATION, SOURCE_KEY: source_id(layer)},
            )
        self._viewer.layers.selection.active = shapes
        shapes.mode = "add_line"
        show_info("Draw a line over a known depth mark, type its length in cm, press Apply.")
        return shapes

    def apply_calibration(self, length_cm: float | None = None) -> float | None:
        """Pixel size (mm/px) from the last drawn line and its true length (cm); sets it, returns it."""
        layer = self._state.image_layer
        shapes = find_role(self._viewer, ROLE_CALIBRATION, layer) if layer is not None else None
        length_cm = float(self.line_cm.value() if length_cm is None else length_cm)
        if shapes is None or len(shapes.data) == 0:
            show_error("Press 'Draw line...' and draw a line over a known depth mark first.")
            return None
        if length_cm <= 0:
            show_error("Type the true length of the line in cm first.")
            return None
        pixels = line_length_px(shapes.data[-1])
        if pixels < 2:
            show_error(f"The drawn line is {pixels:.1f} px long: draw it along the whole depth mark.")
            return None
        mm_per_px = 10.0 * length_cm / pixels
        self.set_pixel_size(mm_per_px)
        show_info(f"Pixel size {mm_per_px:.4g} mm/px ({pixels:.1f} px = {length_cm:g} cm)")
        return mm_per_px

    def show_colours(self):
        """Add the chosen sequence's RGB frames as an image layer beside it; None (with a message) when grey."""
        from napari_nmsr.core.colour import load_colour_frames
        from napari_nmsr.core.errors import NMSRError

        layer = self._state.image_layer
        if layer is None:
            return None
        existing = find_role(self._viewer, ROLE_COLOUR, layer)
        if existing is not None:
            existing.visible = True
            return existing
        source = (layer.metadata.get("nmsr") or {}).get("source")
        try:
            rgb = load_colour_frames(source) if source else None
        except NMSRError as exc:
            show_error(str(exc))
            return None
        if rgb is None or rgb.shape[:3] != tuple(layer.data.shape[:3]):
            show_info(f"'{layer.name}' has no colours to show (a grey cine, or not read from a DICOM or video file).")
            return None
        place = placed_like(layer)
        gap = 0.04 * layer.data.shape[2]
        translate = list(place["translate"])
        translate[2] += (layer.data.shape[2] + gap) * place["scale"][2]
        return self._viewer.add_image(
            rgb, rgb=True, name=f"{layer.name} (colour)", scale=place["scale"], translate=translate,
            units=place["units"], metadata={ROLE_KEY: ROLE_COLOUR, SOURCE_KEY: source_id(layer)},
        )

    def _describe(self, layer: "Image | None") -> None:
        self._show_units(layer)
        if layer is None:
            self.info.setText("No image layer with a time axis: open a sequence first")
            return
        shape = layer.data.shape
        info = sequence_info(layer)
        parts = [f"{shape[0]} frames of {shape[1]} x {shape[2]} px"]
        if info["frame_interval_s"]:
            parts.append(f"{1000 * info['frame_interval_s']:.1f} ms/frame")
        else:
            parts.append("frame time unknown")
        if info["pixel_spacing_mm"]:
            dy, dx = info["pixel_spacing_mm"]
            parts.append(f"{dy:.3g} x {dx:.3g} mm/px")
        else:
            parts.append("pixel size unknown")
        if info["cycle_frames"]:
            parts.append(f"cycle {info['cycle_frames']} frames")
        self.info.setText(", ".join(parts))

    def _on_mode(self, index: int) -> None:
        self._state.mode = self.mode_combo.currentData()
        SESSION_SETTINGS["mode"] = self._state.mode
        self.mode_changed.emit(self._state.mode)
