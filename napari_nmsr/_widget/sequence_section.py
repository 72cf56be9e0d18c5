"""Section 1, Sequence: which image layer, and what is tracked in it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel

from .layers import ROLE_KEY, adopt_unbound, kind
from .state import MODES, SESSION_SETTINGS, WorkflowState, sequence_info

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

__all__ = ["SequenceSection"]


class SequenceSection(QGroupBox):
    """Pick the image layer (a time series) and the mode (blood flow or myocardium)."""

    layer_changed = Signal(object)  # the new Image layer or None
    mode_changed = Signal(str)

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
        form = QFormLayout(self)
        form.addRow("Image layer", self.layer_combo)
        form.addRow("Mode", self.mode_combo)
        form.addRow(self.info)

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

    def _describe(self, layer: "Image | None") -> None:
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
        self.info.setText(", ".join(parts))

    def _on_mode(self, index: int) -> None:
        self._state.mode = self.mode_combo.currentData()
        SESSION_SETTINGS["mode"] = self._state.mode
        self.mode_changed.emit(self._state.mode)
