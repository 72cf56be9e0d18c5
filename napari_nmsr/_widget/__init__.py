"""The workflow dock widget (Qt). Submodules: one section each, plus pure helpers.

``display`` and ``layers`` are importable without Qt; the widget classes are
loaded on first use so that readers and sample data do not pull in Qt.
"""

from __future__ import annotations

__all__ = ["WorkflowWidget"]


def __getattr__(name: str):
    if name == "WorkflowWidget":
        from .workflow import WorkflowWidget

        return WorkflowWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
