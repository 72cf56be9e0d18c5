"""Section 4, Display: the ONE Vectors layer of the run (axes scale, t, y, x).

Arrows (``display.arrows_for_scale``) are the material's motion, coloured by
speed; napari's dims sliders step through scales (axis 0) and frames.
Density and the inside-the-mask choice rebuild the arrows; length and width
only restyle the layer. After the consistency check (Analysis section) the
arrows where the forward and backward runs disagree are drawn grey: the
speed colour stays a colormap over the ``speed`` feature when every arrow is
reliable, and becomes a per-arrow RGBA array (same colours, grey where
unreliable) otherwise, since napari colours a layer one way or the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.utils.colormaps import Colormap, ensure_colormap
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QSpinBox

from napari_nmsr.core.register import ScaleDone

from . import display
from .layers import ROLE_MASKS, ROLE_VECTORS, find_role, put_layer
from .state import SESSION_SETTINGS, WorkflowState, sequence_info

if TYPE_CHECKING:
    import napari

__all__ = ["DisplaySection", "COLORMAP", "COLORMAPS", "UNRELIABLE_RGBA", "arrow_colours"]

COLORMAP = "turbo"
#: Speed colormaps of the arrows. "greens" (dark to light green) stays distinct from the red/blue
#: vorticity or strain map drawn under the arrows, and from the grey echo.
COLORMAPS = {
    "turbo": "turbo",
    "greens": Colormap(colors=[[0.05, 0.35, 0.1, 1.0], [0.2, 0.75, 0.2, 1.0], [0.85, 1.0, 0.45, 1.0]],
                       name="nmsr_greens"),
}
#: Colour of arrows over the inconsistency threshold: grey, a little transparent, so they recede.
UNRELIABLE_RGBA = (0.5, 0.5, 0.5, 0.6)
_DEFAULTS = {"arrows": display.DEFAULT_ARROWS_PER_FRAME, "length": 3.0, "width": 0.6, "inside_mask": True,
             "colours": "turbo"}


def arrow_colours(speed: np.ndarray, reliable: np.ndarray, vmax: float, colormap=COLORMAP) -> np.ndarray:
    """(N, 4) RGBA: the speed colormap over (0, vmax) as napari draws it, grey where not reliable."""
    colours = ensure_colormap(colormap).map(np.clip(np.asarray(speed, float) / vmax, 0.0, 1.0)).astype(np.float32)
    colours[~np.asarray(reliable, bool)] = UNRELIABLE_RGBA
    return colours


class DisplaySection(QGroupBox):
    """Controls of the quiver, and the code that turns scales into its arrows."""

    def __init__(self, viewer: "napari.Viewer", state: WorkflowState, parent=None):
        super().__init__("4. Display", parent)
        self._viewer = viewer
        self._state = state
        self._arrows: list[display.ArrowSet] = []  # one per finished scale
        s = {**_DEFAULTS, **SESSION_SETTINGS.get("display", {})}
        self.arrows = QSpinBox()
        self.arrows.setRange(20, 20000)
        self.arrows.setSingleStep(100)
        self.arrows.setValue(int(s["arrows"]))
        self.arrows.setToolTip("About this many arrows per frame, on a regular grid")
        self.length = QDoubleSpinBox()
        self.length.setRange(0.1, 50.0)
        self.length.setSingleStep(0.5)
        self.length.setValue(float(s["length"]))
        self.length.setToolTip("Arrow length = motion in one frame x this factor")
        self.width = QDoubleSpinBox()
        self.width.setRange(0.05, 10.0)
        self.width.setSingleStep(0.1)
        self.width.setValue(float(s["width"]))
        self.colours = QComboBox()
        for key in COLORMAPS:
            self.colours.addItem(key, key)
        self.colours.setCurrentIndex(max(0, self.colours.findData(s["colours"])))
        self.colours.setToolTip("Speed colours of the arrows; 'greens' stays distinct from a red/blue map under them "
                                "(chosen automatically when the Analysis section shows one)")
        self.inside_mask = QCheckBox("Only inside the mask")
        self.inside_mask.setChecked(bool(s["inside_mask"]))
        self.legend = QLabel()
        self.legend.setMinimumHeight(18)
        self.legend_text = QLabel("Run a registration to see the motion field")
        self.legend_text.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Arrows per frame", self.arrows)
        form.addRow("Length x", self.length)
        form.addRow("Width", self.width)
        form.addRow("Colours", self.colours)
        form.addRow(self.inside_mask)
        form.addRow(self.legend)
        form.addRow(self.legend_text)
        self.arrows.valueChanged.connect(self.rebuild)
        self.inside_mask.toggled.connect(self.rebuild)
        self.length.valueChanged.connect(self._restyle)
        self.colours.currentIndexChanged.connect(self._on_colours)
        self.width.valueChanged.connect(self._restyle)
        self._paint_legend()

    # ------------------------------------------------------------------ settings
    def _remember(self) -> None:
        SESSION_SETTINGS["display"] = {
            "arrows": self.arrows.value(),
            "length": self.length.value(),
            "width": self.width.value(),
            "inside_mask": self.inside_mask.isChecked(),
            "colours": self.colours.currentData(),
        }

    def restore_settings(self) -> None:
        """Take the controls' values from SESSION_SETTINGS (a session file was opened)."""
        s = {**_DEFAULTS, **SESSION_SETTINGS.get("display", {})}
        for box, value in ((self.arrows, int(s["arrows"])), (self.length, float(s["length"])),
                           (self.width, float(s["width"])), (self.inside_mask, bool(s["inside_mask"])),
                           (self.colours, max(0, self.colours.findData(s["colours"])))):
            box.blockSignals(True)
            if box is self.inside_mask:
                box.setChecked(value)
            elif box is self.colours:
                box.setCurrentIndex(value)
            else:
                box.setValue(value)
            box.blockSignals(False)
        self._paint_legend()

    @property
    def colormap(self):
        return COLORMAPS[self.colours.currentData()]

    def _on_colours(self, *_) -> None:
        self._remember()
        self._paint_legend()
        self.refresh()

    def avoid_map_colours(self, *_) -> None:
        """A red/blue map is now under the arrows: switch turbo (red = fast) to greens."""
        if self.colours.currentData() == "turbo":
            self.colours.setCurrentIndex(self.colours.findData("greens"))

    def _mask(self) -> np.ndarray | None:
        if not self.inside_mask.isChecked():
            return None
        if self._state.run_mask is not None:
            return self._state.run_mask
        layer = find_role(self._viewer, ROLE_MASKS, self._state.image_layer)
        if layer is None or not self._state.done:
            return None
        mask = np.asarray(layer.data) > 0
        t = self._state.done[0].field.shape[0] + 1
        return mask if mask.shape[0] == t else None

    def _inconsistency(self, scale_index: int) -> np.ndarray | None:
        """The consistency check's (T-1, H, W) px for this scale, if it was run."""
        inc = self._state.inconsistency
        return inc[scale_index] if inc is not None and scale_index < len(inc) else None

    def _arrows_for(self, done: ScaleDone) -> display.ArrowSet:
        info = sequence_info(self._state.image_layer) if self._state.image_layer is not None else {}
        return display.arrows_for_scale(
            done.field, done.scale_index,
            arrows_per_frame=self.arrows.value(), mask=self._mask(),
            frame_interval_s=info.get("frame_interval_s"), pixel_spacing_mm=info.get("pixel_spacing_mm"),
            inconsistency=self._inconsistency(done.scale_index), threshold=self._state.consistency_threshold,
        )

    # ------------------------------------------------------------------ run events
    def clear(self, *_) -> None:
        """A new run starts: empty the run's Vectors layer (made now if missing).

        Making the layer when Run is pressed, not when the first scale
        arrives, keeps napari's one-off costs of a new layer (vispy visual,
        the features table) out of the running phase, where they would
        freeze the viewer for a moment.
        """
        self._arrows = []
        self._update_layer()

    def finish(self, result, image=None) -> None:
        """A run on ``image`` ended: drop the layer made at Run when no scale finished (error, early cancel)."""
        image = self._state.image_layer if image is None else image
        if result is None or not result.n_scales:
            layer = find_role(self._viewer, ROLE_VECTORS, image)
            if layer is not None:
                self._viewer.layers.remove(layer)

    def show_current(self, *_) -> None:
        """Another sequence was chosen: its own arrows (rebuilt from its scales), or none."""
        self._arrows = []
        if self._state.done:
            self.refresh()
        else:
            self.legend_text.setText("Run a registration to see the motion field")

    def add_scale(self, done: ScaleDone) -> None:
        """Show a finished scale at once and move the scale slider to it (when its sequence is shown)."""
        if not any(d is done for d in self._state.done):
            return  # the run's sequence is not the chosen one: it is shown when chosen again
        self._arrows.append(self._arrows_for(done))
        self._update_layer()
        self._viewer.dims.set_current_step(0, done.scale_index)

    def rebuild(self, *_) -> None:
        self._remember()
        self.refresh()

    def refresh(self, *_) -> None:
        """Arrows again from the finished scales (e.g. the consistency data or threshold changed)."""
        if not self._state.done:
            return
        self._arrows = [self._arrows_for(d) for d in self._state.done]
        self._update_layer()

    def _restyle(self, *_) -> None:
        self._remember()
        layer = self.vectors_layer()
        if layer is not None:
            layer.length = self.length.value()
            layer.edge_width = self.width.value()

    # ------------------------------------------------------------------ layer
    def vectors_layer(self):
        """The chosen sequence's quiver layer, or None."""
        return find_role(self._viewer, ROLE_VECTORS, self._state.image_layer)

    def _update_layer(self) -> None:
        arrows = display.concat_arrows(self._arrows)
        image = self._state.image_layer
        if not len(arrows) and image is not None:
            # one zero-length arrow on scale 0, frame 0: an EMPTY layer has napari's default extent (0..512 on
            # every axis), which made the scale slider run to 512 during the first scale
            h, w = image.data.shape[1:3]
            placeholder = np.zeros((1, 2, 4), np.float32)
            placeholder[0, 0, 2:] = (h // 2, w // 2)
            arrows = display.ArrowSet(placeholder, np.zeros(1, np.float32), np.zeros(1, int), np.zeros(1, int))
        info = sequence_info(image) if image is not None else {}
        units = display.speed_units(info.get("frame_interval_s"), info.get("pixel_spacing_mm"))
        vmax = float(np.percentile(arrows.speed, 99)) if len(arrows) else 1.0
        vmax = vmax if vmax > 0 else 1.0
        extra = {}
        if image is not None:
            extra = {
                "scale": (1.0, *image.scale[-3:]),
                "translate": (0.0, *image.translate[-3:]),
                "units": ("pixel", *[str(u) for u in image.units[-3:]]),
            }
        layer = put_layer(
            self._viewer, ROLE_VECTORS, "vectors", arrows.data, source=image,
            name="NMSR motion", features=arrows.features, edge_color="speed", edge_colormap=self.colormap,
            edge_contrast_limits=(0.0, vmax), length=self.length.value(), edge_width=self.width.value(),
            vector_style="arrow", opacity=1.0, axis_labels=("scale", "t", "y", "x"),
            metadata={"speed_units": units}, **extra,
        )
        layer.features = arrows.features
        layer.edge_colormap = self.colormap
        layer.edge_color = "speed"
        layer.edge_contrast_limits = (0.0, vmax)
        if not arrows.reliable.all():
            layer.edge_color = arrow_colours(arrows.speed, arrows.reliable, vmax, self.colormap)
        layer.metadata["speed_units"] = units
        layer.metadata["scales"] = tuple(d.scale for d in self._state.done)
        labels = list(self._viewer.dims.axis_labels)
        if len(labels) == 4:
            labels[0] = "scale"
            self._viewer.dims.axis_labels = labels
        self._describe(vmax, units)

    def _describe(self, vmax: float, units: str) -> None:
        scales = ", ".join(f"{k}: {d.scale:g}" for k, d in enumerate(self._state.done))
        grey = ""
        if self._state.inconsistency is not None:
            grey = f" Grey = the forward and backward runs disagree by more than {self._state.consistency_threshold:g} px."
        if not self._state.done:
            self.legend_text.setText("Running: the first scale's arrows appear when it is done.")
            return
        self.legend_text.setText(
            f"Colour = speed, 0 to {vmax:.3g} {units} ({self.colours.currentData()}).{grey} "
            f"Scale slider (first axis): {scales}."
        )

    def _paint_legend(self) -> None:
        colours = ensure_colormap(self.colormap).map(np.linspace(0, 1, 9))
        stops = ", ".join(
            f"stop:{i / 8:.3f} rgb({int(255 * c[0])}, {int(255 * c[1])}, {int(255 * c[2])})" for i, c in enumerate(colours)
        )
        self.legend.setStyleSheet(f"background: qlineargradient(x1:0, y1:0, x2:1, y2:0, {stops}); border-radius: 2px;")
