"""Small Qt layout helpers shared by the panel's sections."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QWidget

__all__ = ["row"]


def row(*widgets: QWidget) -> QWidget:
    """Widgets side by side, without extra margins (a form row's right-hand side)."""
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return holder
