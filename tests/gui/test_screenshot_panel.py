"""Screenshots of the panel's state (issue 12) for docs/images: calibration and tracing, analysis, export.

Marked ``slow`` (a short run plus the analysis); run with
``python -m pytest tests/gui/test_screenshot_panel.py -m slow``.
"""

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QDialog, QScrollArea

from gui_helpers import ROOT, open_panel, save_screenshot, set_run, wait_for_run

pytestmark = [pytest.mark.gui, pytest.mark.slow]
DOCS = ROOT / "docs" / "images"


def _close_toasts():
    for toast in QApplication.topLevelWidgets() + QApplication.allWidgets():
        if isinstance(toast, QDialog) and type(toast).__name__ == "NapariQtNotification":
            toast.close()


def _scroll_to(widget, section):
    scroll = widget.findChild(QScrollArea)
    scroll.ensureWidgetVisible(section, 0, 0)
    scroll.verticalScrollBar().setValue(section.pos().y())


def test_panel_screenshots(make_napari_viewer, qtbot, tmp_path):
    DOCS.mkdir(parents=True, exist_ok=True)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 940)
    viewer.open_sample("napari-nmsr", "vortex")
    widget = open_panel(viewer)
    image = widget.state.image_layer

    # 1. units and drawing: a calibration line over 10 mm of the (0.9 mm/px) sample, an ED outline traced
    widget.sequence.set_pixel_size(None)
    line = widget.sequence.calibration_layer()
    line.add_lines(np.array([[0, 10.0, 8.0], [0, 10.0 + 100 / 0.9, 8.0]]))
    widget.sequence.line_cm.setValue(10.0)
    widget.sequence.apply_calibration()
    traced = widget.masks.trace_layer()
    ys, xs = np.nonzero(viewer.layers["vortex masks"].data[0] if "vortex masks" in viewer.layers else image.data[0] > 2)
    a = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    cy, cx, r = 64.0, 64.0, 30.0
    traced.add_polygons([np.column_stack([np.zeros(20), cy + r * np.sin(a), cx + 0.8 * r * np.cos(a)])])
    widget.masks.refine()
    widget.masks.interpolate()
    viewer.dims.set_point(0, image.data_to_world([0, 0, 0])[0])
    _scroll_to(widget, widget.sequence)
    _close_toasts()
    qtbot.wait(300)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), DOCS / "panel_units_and_drawing.png")

    # 2. a short run, the analysis under the arrows
    for name in ("NMSR traced outlines", "NMSR calibration line", "NMSR drawn masks"):
        viewer.layers[name].visible = False
    set_run(widget, "0.25, 0.5", "40, 30")
    widget.registration.run()
    wait_for_run(qtbot, widget, timeout_ms=300_000)
    widget.analysis.compute()
    qtbot.waitUntil(lambda: widget.analysis.report is not None, timeout=120_000)
    viewer.layers["NMSR contour points"].visible = False
    viewer.layers["NMSR masks"].opacity = 0.15
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_point(1, image.data_to_world([5, 0, 0])[0])
    _scroll_to(widget, widget.display)
    _close_toasts()
    qtbot.wait(300)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), DOCS / "panel_field_and_analysis.png")
    _scroll_to(widget, widget.analysis)
    qtbot.wait(300)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), DOCS / "panel_analysis_table.png")

    # 3. the exported quiver PNG (time stamp and colour bar)
    import imageio.v3 as iio

    png = widget.export.save_png(str(tmp_path / "quiver.png"))
    save_screenshot(iio.imread(png), DOCS / "export_quiver.png")


def test_colour_dicom_screenshot(make_napari_viewer, qtbot):
    from pathlib import Path

    dicom = ROOT.parent / "shared" / "data" / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"
    if not dicom.is_file():
        dicom = Path("/work/shared/data/echo-dicom-gdcm/US-PAL-8-10x-echo.dcm")
    if not dicom.is_file():
        pytest.skip("shared real data not available")
    DOCS.mkdir(parents=True, exist_ok=True)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 940)
    widget = open_panel(viewer)
    (image,) = viewer.open(str(dicom), plugin="napari-nmsr")
    colour = widget.sequence.show_colours()
    assert colour is not None and colour.rgb
    viewer.reset_view()
    _scroll_to(widget, widget.sequence)
    _close_toasts()
    qtbot.wait(300)
    save_screenshot(viewer.screenshot(canvas_only=False, flash=False), DOCS / "panel_colour_dicom.png")
