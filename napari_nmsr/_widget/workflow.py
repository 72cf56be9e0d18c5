"""The workflow dock widget: the sections in order, wired together.

Sequence -> Masks -> Registration -> Display (+ per-scale quality table)
-> [Analysis, when ``analysis_section`` is installed] -> Track and export.
The Analysis section's consistency check greys out the Display's arrows
(``consistency_changed`` -> ``DisplaySection.refresh``); a new run clears it.
The panel only wires signals; each section gathers its parameters and calls
``napari_nmsr.core``. It stops its worker and unbinds its viewer events when
the panel or the viewer window closes, so no thread outlives the window.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QApplication, QComboBox, QGroupBox, QPushButton, QScrollArea, QVBoxLayout, QWidget

from napari_nmsr.core.errors import NMSRError

from .display_section import DisplaySection
from .export_section import ExportSection
from .layers import ROLE_VECTORS, adopt_unbound, find_role, show_sequence
from .mask_section import MaskSection
from .metrics_table import MetricsTable
from .registration_section import RegistrationSection
from .sequence_section import SequenceSection
from .state import WorkflowState

if TYPE_CHECKING:
    import napari

__all__ = ["WorkflowWidget"]


class WorkflowWidget(QWidget):
    """NMSR dense tracking, from an opened sequence to exported contours and fields."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = WorkflowState()
        self._watched: QObject | None = None
        self._closed = False

        self.sequence = SequenceSection(napari_viewer, self.state)
        self.masks = MaskSection(napari_viewer, self.state)
        self.registration = RegistrationSection(napari_viewer, self.state)
        self.display = DisplaySection(napari_viewer, self.state)
        self.metrics = MetricsTable()
        quality = QGroupBox("Quality per scale (paper Table 1)")
        QVBoxLayout(quality).addWidget(self.metrics)
        self.analysis = _optional_analysis_section(napari_viewer, self.state)
        self.export = ExportSection(napari_viewer, self.state)

        body = QWidget()
        column = QVBoxLayout(body)
        for section in (self.sequence, self.masks, self.registration, self.display, quality, self.analysis, self.export):
            if section is not None:
                column.addWidget(section)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for combo in body.findChildren(QComboBox):  # long layer names must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self._body, self._scroll = body, scroll
        self._fit_width()
        # a section shown or hidden (the advanced form's long labels) changes the width needed: refit then
        body.installEventFilter(self)

        self.session_save_button = QPushButton("Save session...")
        self.session_open_button = QPushButton("Open session...")
        self.session_save_button.setToolTip("Marks, masks, points, outlines, units, settings and the result path in one file")
        grid = self.export.layout()
        grid.addWidget(self.session_save_button, grid.rowCount(), 0)
        grid.addWidget(self.session_open_button, grid.rowCount() - 1, 1)
        self.session_save_button.clicked.connect(lambda: self._session_dialog(save=True))
        self.session_open_button.clicked.connect(lambda: self._session_dialog(save=False))
        self.sequence.layer_changed.connect(self._on_sequence_changed)
        self.sequence.units_changed.connect(self.display.refresh)
        self.registration.run_started.connect(self._watch_window)
        self.registration.run_started.connect(self.display.clear)
        self.registration.run_started.connect(self.metrics.clear_rows)
        self.registration.scale_done.connect(self.display.add_scale)
        self.registration.scale_done.connect(self._on_scale_done)
        self.registration.run_finished.connect(self._on_run_finished)
        if self.analysis is not None and hasattr(self.analysis, "consistency_changed"):
            self.registration.run_started.connect(self.analysis.on_run_started)
            self.analysis.consistency_changed.connect(self.display.refresh)
            self.analysis.map_shown.connect(self.display.avoid_map_colours)
        self._on_sequence_changed(self.state.image_layer)
        QApplication.instance().aboutToQuit.connect(self.shutdown)

    def _fit_width(self) -> None:
        """No horizontal scrolling: the dock is at least as wide as the widest shown section needs."""
        needed = max(360, self._body.minimumSizeHint().width() + self._scroll.verticalScrollBar().sizeHint().width() + 4)
        if needed != self.minimumWidth():
            self.setMinimumWidth(needed)

    # ------------------------------------------------------------------ wiring
    def _on_sequence_changed(self, layer) -> None:
        """Another sequence chosen (or opened): every section shows ITS state; other sequences' layers hide."""
        adopt_unbound(self.viewer, layer)
        show_sequence(self.viewer, layer)
        self.masks.on_layer_changed(layer)
        self.display.show_current()
        self.metrics.clear_rows()
        for done in self.state.done:
            self.metrics.add_scale(done)
        if self.analysis is not None and hasattr(self.analysis, "show_current"):
            self.analysis.show_current()
        self.export.status.setText("")
        if not self.registration.running:
            self.registration.show_convergence(self.state.result, notify=False)

    def save_session(self, path):
        """Write the chosen sequence's session (see :mod:`.session`); returns the path."""
        from .session import save_session

        return save_session(self, path)

    def load_session(self, path):
        """Restore a session file; returns the sequence's image layer."""
        from .session import load_session

        return load_session(self, path)

    def _session_dialog(self, save: bool) -> None:
        from napari.utils.notifications import show_error, show_info
        from qtpy.QtWidgets import QFileDialog

        ask = QFileDialog.getSaveFileName if save else QFileDialog.getOpenFileName
        path, _ = ask(self, "NMSR session", "session.npz", "NMSR session (*.npz)")
        if not path:
            return
        try:
            out = self.save_session(path) if save else self.load_session(path)
        except (NMSRError, ValueError, OSError) as exc:
            show_error(str(exc))
            return
        show_info(f"Session saved to {out}" if save else f"Session restored for '{out.name}'")

    def _on_scale_done(self, done) -> None:
        if any(d is done for d in self.state.done):  # the run's sequence is the chosen one
            self.metrics.add_scale(done)

    def _on_run_finished(self, result) -> None:
        """Attach the (possibly partial) result to the run's quiver layer, for the NPZ writer."""
        image = self.registration.run_image
        self.display.finish(result, image)
        layer = find_role(self.viewer, ROLE_VECTORS, image)
        if layer is not None and result is not None:
            layer.metadata["nmsr_result"] = result
        if self.analysis is not None and hasattr(self.analysis, "on_result"):
            self.analysis.on_result(result)

    # ------------------------------------------------------------------ lifetime
    def showEvent(self, event) -> None:
        self._watch_window()
        super().showEvent(event)

    def _watch_window(self, *_) -> None:
        """Watch the window we are docked in (checked when shown and when a run starts),
        to stop the run when it closes, shown or not."""
        window = self.window()
        if window is not self and window is not self._watched:
            if self._watched is not None:
                self._watched.removeEventFilter(self)
            window.installEventFilter(self)
            self._watched = window

    def eventFilter(self, obj, event) -> bool:
        if obj is self._watched and event.type() == QEvent.Type.Close:
            self.shutdown()
        elif obj is self._body and event.type() == QEvent.Type.LayoutRequest:
            self._fit_width()
        return False

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop a running registration (waits for its thread) and unbind viewer events."""
        if self._closed:
            return
        self._closed = True
        self.registration.shutdown()
        if self.analysis is not None and hasattr(self.analysis, "shutdown"):
            self.analysis.shutdown()
        self.sequence.disconnect_viewer()
        self.masks.unbind_keys()
        try:
            QApplication.instance().aboutToQuit.disconnect(self.shutdown)
        except (TypeError, RuntimeError):
            pass
        if self._watched is not None:
            self._watched.removeEventFilter(self)
            self._watched = None


def _optional_analysis_section(viewer, state):
    """The Analysis section (issue 5) when its module exists; None until then."""
    if importlib.util.find_spec(f"{__package__}.analysis_section") is None:
        return None
    from .analysis_section import AnalysisSection

    return AnalysisSection(viewer, state)
