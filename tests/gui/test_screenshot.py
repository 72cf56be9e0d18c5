"""The README screenshot: the real window, the vortex sample, the default run (the engine's default preset).

Slow (a full default run, about a minute on one CPU thread), so it is marked
``slow``; run it with ``python -m pytest tests/gui/test_screenshot.py -m slow``.
It also records how long a first-time user waits for the field with the defaults.
"""

import json
import time

import pytest

from gui_helpers import ROOT, SCREENSHOTS, open_panel, save_screenshot, wait_for_run

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_readme_screenshot_of_the_default_run(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 940)
    viewer.open_sample("napari-nmsr", "vortex")
    widget = open_panel(viewer)
    widget.masks.refine()
    masks = widget.masks.interpolate()
    from napari_nmsr.core.register import PRESETS

    # the default: the engine's default preset
    assert widget.registration.steps.text() == ", ".join(str(n) for n in PRESETS["default"]["steps"])
    started = time.perf_counter()
    widget.registration.run()
    wait_for_run(qtbot, widget, timeout_ms=600_000)
    seconds = time.perf_counter() - started
    result = widget.state.result
    assert result is not None and result.scales == (0.125, 0.25, 0.5, 1.0)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS.parent / "default_run.json").write_text(json.dumps({
        "seconds_to_last_scale": seconds, "scales": result.scales,
        "mean_cc": [row["mean_cc"] for row in result.metrics_table()],
        "device": result.device,
    }, indent=1))

    masks.opacity = 0.15
    for name in ("NMSR drawn masks", "NMSR contour points"):
        viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers["NMSR motion"]
    viewer.dims.set_current_step(0, 3)  # finest scale
    viewer.dims.set_current_step(1, 4)  # frame 4: the vortex turns inside the cavity
    viewer.reset_view()
    # zoom on the cavity so single arrows can be told apart
    ys, xs = (masks.data[4] > 0).nonzero()
    viewer.scene.camera.center = tuple(masks.data_to_world([4, ys.mean(), xs.mean()])[1:])
    viewer.scene.camera.zoom *= 1.6
    from qtpy.QtWidgets import QApplication, QDialog

    for toast in QApplication.topLevelWidgets() + QApplication.allWidgets():  # notification toasts
        if isinstance(toast, QDialog) and type(toast).__name__ == "NapariQtNotification":
            toast.close()
    qtbot.wait(300)
    save_screenshot(viewer.screenshot(canvas_only=True, flash=False), SCREENSHOTS / "default_run_canvas.png")
    window = viewer.screenshot(canvas_only=False, flash=False)
    save_screenshot(window, SCREENSHOTS / "workflow_window.png")
    (ROOT / "docs" / "images").mkdir(parents=True, exist_ok=True)
    save_screenshot(window, ROOT / "docs" / "images" / "workflow.png")
