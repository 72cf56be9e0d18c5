"""Per-scale quality table (MSE and mean CC, as the paper's Table 1), filled as scales finish."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_nmsr.core.register import ScaleDone

__all__ = ["MetricsTable", "COLUMNS"]

COLUMNS = ("scale", "MSE", "mean CC", "steps", "s", "refined")


class MetricsTable(QTableWidget):
    """One row per finished scale: mean +- sd over the frame pairs (inside the mask when used)."""

    def __init__(self, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)  # fits the dock: no side scrolling
        self.setStyleSheet("font-size: 11px;")
        self.setMinimumHeight(90)
        self.setToolTip("MSE and mean local correlation between each warped frame and the next (higher CC is better), "
                        "mean over the frame pairs (hover a cell for ± sd); s = seconds for the scale; refined = frame pairs "
                        "whose field the scale changed (the guard keeps the previous field where a refinement did "
                        "not clearly improve the match)")

    def clear_rows(self, *_) -> None:
        self.setRowCount(0)

    def add_scale(self, done: ScaleDone) -> None:
        mse, cc = np.asarray(done.mse, float), np.asarray(done.mean_cc, float)
        cells = (
            (f"{done.scale:g}", ""),
            (f"{mse.mean():.2e}", f"MSE {mse.mean():.3e} ± {mse.std():.1e} over {mse.size} pairs"),
            (f"{cc.mean():.3f}", f"mean CC {cc.mean():.4f} ± {cc.std():.4f} over {cc.size} pairs"),
            (str(done.steps_run), ""),
            (f"{done.seconds:.1f}", "seconds"),
            _refined_cell(done),
        )
        row = self.rowCount()
        self.insertRow(row)
        for col, (text, tip) in enumerate(cells):
            item = QTableWidgetItem(text)
            if tip:
                item.setToolTip(tip)
            self.setItem(row, col, item)

    def rows(self) -> list[list[str]]:
        """The table as text (for tests and copying)."""
        return [[self.item(r, c).text() for c in range(self.columnCount())] for r in range(self.rowCount())]


def _refined_cell(done: ScaleDone) -> tuple[str, str]:
    """"k/n" pairs the scale refined; "all" when no guard ran."""
    if done.kept_previous is None:
        return "all", "no guard: every pair takes this scale's field"
    kept = np.asarray(done.kept_previous, bool)
    tip = (f"{int((~kept).sum())} of {kept.size} frame pairs took this scale's field; "
           f"{int(kept.sum())} kept the previous scale's (their refinement did not clearly improve the match)")
    return f"{int((~kept).sum())}/{kept.size}", tip
