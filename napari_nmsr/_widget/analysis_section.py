"""Section "Analysis" (issue 5): vorticity / strain maps, vortex centres, per-pair table and plot.

Computes ``napari_nmsr.core.analysis`` on the chosen scale of the last run
(or of a result file opened as a layer) in a worker thread, then shows:

* a map Image layer (vorticity, or radial / circumferential / principal
  strain) placed UNDER the quiver, diverging colormap (red = counter-
  clockwise as seen / lengthening, blue = clockwise / shortening, zero
  transparent so the echo shows through);
* every vortex centre as a Points layer and the main vortex's path as a
  Tracks layer (axes t, y, x; pair t is drawn on frame t+1 like the arrows);
* one table row per frame pair, a small plot over time, and CSV export;
* the forward-backward consistency check (:mod:`.consistency`): its map on
  the chosen scale, and the greyed arrows (through ``consistency_changed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHeaderView, QLabel,
    QPushButton, QTableWidget, QTableWidgetItem,
)

from napari_nmsr.core.analysis import analyze_fields, build_report, write_csv
from napari_nmsr.core.errors import NMSRError

from .consistency import ConsistencyControls
from .layers import ROLE_KEY, ROLE_MASKS, ROLE_VECTORS, find_role, placed_like, put_layer
from .qt_util import row
from .state import WorkflowState, check_field_matches, sequence_info
from .worker import stop_worker

if TYPE_CHECKING:
    import napari

__all__ = ["AnalysisSection", "MAPS", "map_stack", "vortex_points", "main_track", "TABLE_COLUMNS"]

ROLE_MAP, ROLE_VORTICES, ROLE_TRACK = "analysis_map", "vortex_centres", "vortex_track"
#: Map choices: label -> (key, unit template)
MAPS = {
    "vorticity": ("vorticity", "1/{time}"),
    "radial strain": ("err", "%"),
    "circumferential strain": ("ecc", "%"),
    "principal strain E1": ("e1", "%"),
}
#: Blue (negative) - transparent (0) - red (positive): zero and outside the mask let the echo show through.
DIVERGING = Colormap(
    colors=[[0.1, 0.3, 1.0, 1.0], [0.6, 0.7, 1.0, 0.6], [1.0, 1.0, 1.0, 0.0], [1.0, 0.6, 0.5, 0.6], [1.0, 0.15, 0.1, 1.0]],
    controls=[0.0, 0.3, 0.5, 0.7, 1.0], name="nmsr_diverging",
)
#: (header, report key, format, unit key in the report's units or None, tooltip). "frame" is the frame
#: the pair's arrows are drawn on (pair t -> frame t+1, as the time slider shows); the centre is in mm
#: when the pixel size is known, else px.
TABLE_COLUMNS = (
    ("frame", "t", "{:d}", None, "Frame on the time slider (the pair ending there)"),
    ("t", "time", "{:.4g}", "time", "Time of that frame"),
    ("x", "vortex_centre", "{:.1f}", "centre", "Main vortex centre, column"),
    ("y", "vortex_centre", "{:.1f}", "centre", "Main vortex centre, row"),
    ("Γ", "vortex_circulation", "{:.4g}", "vortex_circulation", "Circulation of the main vortex"),
    ("depth", "vortex_depth", "{:.2f}", None, "Depth of the main vortex (0 = base, 1 = apex)"),
    ("KE", "kinetic_energy", "{:.3g}", "kinetic_energy", "Kinetic energy in the mask"),
    ("strain", "contour_strain", "{:.1f}", "percent", "Contour strain (%)"),
)
MAIN_VORTEX_COLOUR, OTHER_VORTEX_COLOUR = "#ff3cff", "#ffe000"


def map_stack(analysis, key: str) -> np.ndarray:
    """(T, H, W) float32 aligned with the frames: frame 0 (no pair ends there) is 0."""
    pairs = analysis.vorticity if key == "vorticity" else analysis.strain[key]
    return np.concatenate((np.zeros_like(pairs[:1]), pairs)).astype(np.float32)


def vortex_points(analysis) -> tuple[np.ndarray, dict]:
    """All vortex centres as (N, 3) (frame, y, x) and their features."""
    rows, main, circ = [], [], []
    for t, found in enumerate(analysis.vortices):
        for v in found:
            rows.append((t + 1, *v.centre_yx))
            main.append(v.main)
            circ.append(v.circulation)
    data = np.asarray(rows, dtype=float).reshape(-1, 3)
    return data, {"main": np.asarray(main, bool), "circulation": np.asarray(circ, float)}


def main_track(analysis) -> np.ndarray:
    """The main vortex's path as napari Tracks data (N, 4): (track id, frame, y, x)."""
    c = analysis.vortex_centres_yx()
    keep = ~np.isnan(c[:, 0])
    frames = np.flatnonzero(keep) + 1
    return np.column_stack((np.zeros(len(frames)), frames, c[keep])).astype(float)


class AnalysisSection(QGroupBox):
    """Analysis of a finished run: maps, vortices, numbers per frame pair, confidence."""

    consistency_changed = Signal()  # the forward-backward inconsistency or its threshold changed
    map_shown = Signal()  # a red/blue map is now under the quiver

    def __init__(self, viewer: "napari.Viewer", state: WorkflowState, parent=None):
        super().__init__("Analysis", parent)
        self._viewer, self._state = viewer, state
        self._worker = None
        self.analysis = None
        self.report: dict | None = None
        self.scale = QComboBox()
        self.map_kind = QComboBox()
        self.map_kind.addItems(list(MAPS))
        self.compute_button = QPushButton("Compute")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.status = QLabel("Run a registration (or open a result file) first")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in TABLE_COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)  # fits the dock
        self.table.horizontalHeader().setMinimumSectionSize(20)
        self.table.setMinimumHeight(150)
        self.table.setStyleSheet("font-size: 10px;")
        self.canvas = self._make_canvas()
        self.consistency = ConsistencyControls(viewer, state, self._result, self.scale.currentIndex)
        buttons = row(self.compute_button, self.export_button)
        form = QFormLayout(self)
        form.addRow("Scale", self.scale)
        form.addRow("Map", self.map_kind)
        form.addRow(buttons)
        form.addRow(self.status)
        form.addRow(self.table)
        if self.canvas is not None:
            form.addRow(self.canvas)
        form.addRow(self.consistency)
        self.consistency.changed.connect(self.consistency_changed)
        self.scale.currentIndexChanged.connect(self.consistency.show_scale)
        self.compute_button.clicked.connect(self.compute)
        self.export_button.clicked.connect(lambda: self.export_csv())
        self.map_kind.currentIndexChanged.connect(self._show_map)
        self.on_result(state.result)

    # ------------------------------------------------------------------ inputs
    def _result(self):
        """The chosen sequence's result: its last run, else a result file opened as a layer that fits it."""
        if self._state.result is not None and self._state.result.n_scales:
            return self._state.result
        image = self._state.image_layer
        layer = find_role(self._viewer, ROLE_VECTORS, image)
        layers = [layer] if layer is not None else [
            lyr for lyr in reversed(self._viewer.layers) if ROLE_KEY not in lyr.metadata  # opened result files
        ]
        for lyr in layers:
            res = lyr.metadata.get("nmsr_result") if lyr is not None else None
            if res is not None and res.n_scales:
                if image is not None and res.fields.shape[1] + 1 != image.data.shape[0]:
                    continue  # another sequence's result
                return res
        return None

    def _mask(self, n_frames: int):
        if self._state.run_mask is not None:
            return self._state.run_mask
        layer = find_role(self._viewer, ROLE_MASKS, self._state.image_layer)
        if layer is None:
            return None
        mask = np.asarray(layer.data) > 0
        return mask if mask.shape[0] == n_frames else None

    def show_current(self, *_) -> None:
        """Another sequence was chosen: its own analysis (table, plot), or an empty section."""
        self.analysis, self.report = self._state.analysis, self._state.report
        self.table.setRowCount(0)
        if self.canvas is not None:
            self._figure.clear()
            self.canvas.draw_idle()
        self.export_button.setEnabled(self.report is not None)
        self.status.setText("Run a registration (or open a result file) first")
        self.on_result()
        if self.report is not None:
            self._fill_table()
            self._plot()
            self._describe_done()
        self.consistency.show_current()

    def on_result(self, result=None) -> None:
        """A run finished: offer its scales (finest selected)."""
        if result is not None and result is not self._state.result:
            return  # a run of another sequence than the chosen one
        result = result if result is not None else self._result()
        self.scale.clear()
        if result is not None and result.n_scales:
            self.scale.addItems([f"{s:g}" for s in result.scales])
            self.scale.setCurrentIndex(result.n_scales - 1)
            self.status.setText("Choose a scale and press Compute")

    # ------------------------------------------------------------------ compute
    def compute(self) -> None:
        result = self._result()
        if result is None:
            self.status.setText("No result yet: run a registration or open an NMSR result file")
            return
        if self.scale.count() != result.n_scales:
            self.on_result(result)
        k = max(self.scale.currentIndex(), 0)
        fields = result.fields[k]
        image = self._state.image_layer
        if image is not None:
            try:
                check_field_matches(fields, image, "The result")
            except ValueError as exc:
                self.status.setText(str(exc))
                show_error(str(exc))
                return
        mask = self._mask(fields.shape[0] + 1)
        kwargs = {"frame_interval_s": result.frame_interval_s, "pixel_spacing_mm": result.pixel_spacing_mm}
        if image is not None:  # what 1. Sequence says now (a calibration after the run counts)
            info = sequence_info(image)
            kwargs = {k: info[k] if info[k] is not None else v for k, v in kwargs.items()}
        self._compute_seq = self._state.current
        self.compute_button.setEnabled(False)
        self.status.setText(f"Analysing scale {result.scales[k]:g}…")

        def job():
            a = analyze_fields(fields, mask, **kwargs)
            return a, build_report(a, scale=result.scales[k], scale_index=k)

        self._worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        self._worker.returned.connect(self._on_done)
        self._worker.errored.connect(self._on_error)
        self._worker.finished.connect(lambda: self.compute_button.setEnabled(True))
        self._worker.start()

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_running

    def on_run_started(self, *_) -> None:
        """A new registration: the consistency data of the old run is stale."""
        self.consistency.clear()

    def shutdown(self) -> None:
        """Panel closing: stop the consistency check and the analysis worker, waiting for their threads."""
        self.consistency.shutdown()
        worker, self._worker = self._worker, None
        if worker is not None:
            for signal in (worker.returned, worker.errored, worker.finished):
                try:
                    signal.disconnect()
                except (TypeError, RuntimeError):
                    pass
            stop_worker(worker)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(str(exc) if isinstance(exc, NMSRError) else f"Analysis failed: {exc!r}")

    def _on_done(self, out) -> None:
        seq = self._compute_seq
        seq.analysis, seq.report = out
        if seq is not self._state.current:
            return  # another sequence was chosen meanwhile: shown when it is chosen again
        self.analysis, self.report = out
        self._show_map()
        self._show_vortices()
        self._fill_table()
        self._plot()
        self.export_button.setEnabled(True)
        self._describe_done()

    def _describe_done(self) -> None:
        n = self.report["summary"]["pairs_with_vortex"]
        notes = " ".join(self.report["notes"])
        self.status.setText(f"{n} of {self.analysis.n_pairs} frame pairs have a vortex. {notes}".strip())

    # ------------------------------------------------------------------ layers
    def _placement(self) -> dict:
        image = self._state.image_layer
        if image is not None:
            return placed_like(image)
        cal = self.analysis.calibration
        return {"scale": (cal.dt, *cal.spacing)}

    def _show_map(self, *_) -> None:
        if self.analysis is None:
            return
        label = self.map_kind.currentText()
        key, unit = MAPS[label]
        data = map_stack(self.analysis, key)
        vmax = float(np.percentile(np.abs(data), 99.5)) or 1.0
        unit = unit.format(time=self.analysis.calibration.time_unit)
        layer = put_layer(self._viewer, ROLE_MAP, "image", data, source=self._state.image_layer,
                          name=f"NMSR {label}", colormap=DIVERGING,
                          contrast_limits=(-vmax, vmax), opacity=0.8, blending="translucent", **self._placement())
        layer.name, layer.contrast_limits = f"NMSR {label} ({unit})", (-vmax, vmax)
        vec = find_role(self._viewer, ROLE_VECTORS, self._state.image_layer)
        if vec is not None:
            i, j = self._viewer.layers.index(layer), self._viewer.layers.index(vec)
            if i > j:
                self._viewer.layers.move(i, j)
        self.map_shown.emit()

    def _show_vortices(self) -> None:
        """Every vortex centre; the main one of each pair larger, magenta and a star (the others yellow dots)."""
        data, features = vortex_points(self.analysis)
        main = features["main"]
        colours = np.array([MAIN_VORTEX_COLOUR if m else OTHER_VORTEX_COLOUR for m in main]).reshape(-1)
        image = self._state.image_layer
        base = max(3.0, (image.data.shape[-1] if image is not None else 128) / 60)
        layer = put_layer(self._viewer, ROLE_VORTICES, "points", data, source=image, name="vortex centres",
                          features=features, **self._placement())
        layer.features = features
        if len(data):
            layer.face_color = colours
            layer.size = np.where(main, 2.0 * base, base)
            layer.symbol = np.where(main, "star", "disc")
            layer.border_color = "black"
        track = main_track(self.analysis)
        if len(track) >= 2:
            put_layer(self._viewer, ROLE_TRACK, "tracks", track, source=self._state.image_layer,
                      name="main vortex path", tail_length=50,
                      **self._placement())

    # ------------------------------------------------------------------ numbers
    def _fill_table(self) -> None:
        pairs, units = self.report["pairs"], self.report["units"]
        physical = self.report.get("pixel_spacing_mm") is not None
        headers = []
        for header, key, fmt, unit_key, tip in TABLE_COLUMNS:
            unit = {"centre": "mm" if physical else "px", "percent": "%"}.get(unit_key) or units.get(unit_key, "")
            if key == "time" and unit == "s":
                unit = "ms"  # 33 rather than 0.0333: the column stays narrow
            headers.append(f"{header}\n{unit.replace('^2', '²').replace('^4', '⁴')}" if unit_key else header)
        self.table.setHorizontalHeaderLabels(headers)
        for c, (*_, tip) in enumerate(TABLE_COLUMNS):
            self.table.horizontalHeaderItem(c).setToolTip(tip)
        self.table.setRowCount(len(pairs))
        for r, p in enumerate(pairs):
            for c, (header, key, fmt, unit_key, _) in enumerate(TABLE_COLUMNS):
                if key == "t":
                    v = p["t"] + 1  # the pair (t, t+1) is drawn on frame t+1
                elif key == "vortex_centre":
                    v = p.get("vortex_centre_mm" if physical else "vortex_centre_xy")
                    v = None if v is None else (v[0] if header == "x" else v[1])
                elif key == "time" and units.get("time") == "s":
                    v = 1000.0 * p["time"]
                else:
                    v = p.get(key)
                text = "" if v is None else (f"{v:.0f}" if abs(v) >= 100 and fmt.endswith("g}") else fmt.format(v))
                self.table.setItem(r, c, QTableWidgetItem(text))

    def table_rows(self) -> list[list[str]]:
        return [[self.table.item(r, c).text() for c in range(self.table.columnCount())] for r in range(self.table.rowCount())]

    def _make_canvas(self):
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # matplotlib missing: table only
            return None
        self._figure = Figure(figsize=(3.2, 2.0), tight_layout=True)
        canvas = FigureCanvasQTAgg(self._figure)
        canvas.setMinimumHeight(160)
        return canvas

    def _theme_colours(self) -> tuple[str, str]:
        """(background, text) of napari's current theme, so the plot is not a white box on the dark theme."""
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self._viewer.theme)
            return theme.background.as_hex(), theme.text.as_hex()
        except Exception:  # an unknown theme name: matplotlib's defaults
            return "#ffffff", "#000000"

    def _plot(self) -> None:
        if self.canvas is None:
            return
        bg, fg = self._theme_colours()
        self._figure.clear()
        self._figure.set_facecolor(bg)
        ax = self._figure.add_subplot(111)
        pairs, units = self.report["pairs"], self.report["units"]
        t = [p["time"] for p in pairs]
        circ = [np.nan if p["vortex_circulation"] is None else p["vortex_circulation"] for p in pairs]
        lines = ax.plot(t, circ, "o-", color="#ff5a4a", label=f"circulation ({units['vortex_circulation']})")
        ax.set_xlabel(f"time ({units['time']})", fontsize=7)
        ax2 = ax.twinx()
        lines += ax2.plot(t, [p["kinetic_energy"] for p in pairs], "s--", color="#4aa8ff",
                          label=f"KE ({units['kinetic_energy']})")
        for a in (ax, ax2):
            a.set_facecolor(bg)
            a.tick_params(labelsize=7, colors=fg)
            for spine in a.spines.values():
                spine.set_color(fg)
        ax.xaxis.label.set_color(fg)
        # one legend above the axes: two legends inside overlapped the curves and each other
        legend = ax.legend(lines, [ln.get_label() for ln in lines], fontsize=6, loc="lower left",
                           bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
        for text in legend.get_texts():
            text.set_color(fg)
        self.canvas.draw_idle()

    def export_csv(self, path=None):
        """Write the per-pair table (all report columns) to CSV; asks for a file when no path."""
        if self.report is None:
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export analysis", "nmsr_analysis.csv", "CSV (*.csv)")
            if not path:
                return None
        out = write_csv(self.report, path)
        self.status.setText(f"Saved {out}")
        return out
