"""Units in the Sequence section: calibration line, pixel size, frame rate; exports in s, mm, cm/s (issue 12)."""

import csv
import json

import numpy as np
import pytest

from gui_helpers import add_small_sequence, open_panel, set_run, wait_for_run
from napari_nmsr._widget.state import sequence_info
from napari_nmsr.core.result import RegistrationResult

pytestmark = pytest.mark.gui


def _uncalibrated(viewer):
    """A 5-frame 60 x 90 px cine whose file said nothing about pixel size or timing."""
    frames = np.random.default_rng(4).random((5, 60, 90)).astype(np.float32) * 0.5 + 0.25
    return viewer.add_image(frames, name="no tags")


def test_calibration_line_and_typed_cm_give_mm_per_px(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    image = _uncalibrated(viewer)
    assert "pixel size unknown" in widget.sequence.info.text() and widget.sequence.pixel_size.value() == 0
    shapes = widget.sequence.calibration_layer()
    assert shapes.mode == "add_line"
    # the user draws a 50 px line down the depth scale (3-4-5 triangle: 30 px down, 40 px across) ...
    shapes.add_lines(np.array([[2, 5.0, 10.0], [2, 35.0, 50.0]]))
    # ... and types its true length: 2 cm
    widget.sequence.line_cm.setValue(2.0)
    widget.sequence.apply_line_button.click()
    assert widget.sequence.pixel_size.value() == pytest.approx(0.4)  # 20 mm / 50 px
    assert sequence_info(image)["pixel_spacing_mm"] == pytest.approx((0.4, 0.4))
    assert tuple(image.scale[1:]) == pytest.approx((0.4, 0.4)) and str(image.units[1]) == "millimeter"
    assert "0.4 x 0.4 mm/px" in widget.sequence.info.text()
    assert tuple(shapes.scale[1:]) == pytest.approx((0.4, 0.4))  # the panel's layers stay on the image

    widget.sequence.frame_rate.setValue(25.0)
    widget.sequence.frame_rate.editingFinished.emit()
    assert sequence_info(image)["frame_interval_s"] == pytest.approx(0.04)
    assert image.scale[0] == pytest.approx(0.04) and "40.0 ms/frame" in widget.sequence.info.text()
    widget.sequence.cycle.setValue(12)
    widget.sequence.cycle.editingFinished.emit()
    assert sequence_info(image)["cycle_frames"] == 12

    # another sequence shows its own units; coming back shows these again
    add_small_sequence(viewer)
    assert widget.sequence.pixel_size.value() == pytest.approx(1.8) and widget.sequence.cycle.value() == 0
    widget.sequence.select_layer(image)
    assert widget.sequence.pixel_size.value() == pytest.approx(0.4) and widget.sequence.frame_rate.value() == 25


def test_exports_carry_time_units_masks_and_frame_rate(make_napari_viewer, qtbot, tmp_path):
    import imageio.v3 as iio

    viewer = make_napari_viewer(show=True)
    widget = open_panel(viewer)
    image, masks = add_small_sequence(viewer)
    drawn = widget.masks.paint_layer()
    drawn.data = np.where(np.isin(np.arange(6), [0, 4])[:, None, None], masks, 0).astype(np.uint8)
    widget.masks.interpolate()
    set_run(widget, "0.5", "3")
    widget.registration.run()
    wait_for_run(qtbot, widget)
    assert "cm/s" in widget.display.legend_text.text()
    widget.export.track_contour()
    dt = sequence_info(image)["frame_interval_s"]

    with open(widget.export.save_contours(str(tmp_path / "c.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"time_s", "units", "y_mm", "x_mm"} <= set(rows[0])
    assert float(rows[-1]["time_s"]) == pytest.approx(5 * dt, abs=1e-5) and "mm" in rows[-1]["units"]
    doc = json.loads(widget.export.save_contours(str(tmp_path / "c.json")).read_text())
    assert doc["frame_interval_s"] == pytest.approx(dt) and doc["pixel_spacing_mm"] == pytest.approx([1.8, 1.8])

    back = RegistrationResult.load(widget.export.save_fields(str(tmp_path / "f.npz")))
    assert back.masks is not None and np.array_equal(back.masks, widget.state.run_mask)
    assert back.pixel_spacing_mm == pytest.approx((1.8, 1.8))
    (reopened,) = viewer.open(str(tmp_path / "f.npz"), plugin="napari-nmsr")  # arrows only in the masks again
    pos = reopened.data[:, 0].astype(int)
    assert back.masks[pos[:, 1], pos[:, 2], pos[:, 3]].all()
    viewer.layers.remove(reopened)

    png = iio.imread(widget.export.save_png(str(tmp_path / "q.png")))
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert png.shape[0] > shot.shape[0] - 2  # a band with the time stamp and colour bar under the canvas
    band = png[shot.shape[0] - 1:, :, :3].astype(float)
    assert band.std() > 5  # text and colour bar, not an empty strip
    movie = widget.export.save_movie(str(tmp_path / "q.mp4"))
    meta = iio.immeta(movie, plugin="pyav")
    assert meta["fps"] == pytest.approx(1 / dt, rel=0.01)  # the acquisition rate, not a fixed 8 fps
