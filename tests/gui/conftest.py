"""Fixtures of the GUI tests (napari's own ``make_napari_viewer`` fixture is used as is).

Runs under Xvfb (pytest-xvfb). Torch uses one thread: the test machine is shared.
Screenshots go to ``artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gui_helpers import SCREENSHOTS

torch.set_num_threads(1)


@pytest.fixture
def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(autouse=True)
def _fresh_session_settings():
    """Each test starts from the panel's defaults (settings persist only within a test)."""
    from napari_nmsr._widget.state import SESSION_SETTINGS

    SESSION_SETTINGS.clear()
    yield
    SESSION_SETTINGS.clear()
