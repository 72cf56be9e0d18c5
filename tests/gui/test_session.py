"""Session save and reload: stop and come back to the same marks, masks, points, units, settings and result (issue 12)."""

import numpy as np
import pytest

from gui_helpers import add_small_sequence, open_panel, set_run, wait_for_run
from napari_nmsr._widget.layers import ROLE_MASKS, ROLE_POINTS, ROLE_VECTORS, find_role
from napari_nmsr._widget.state import sequence_info

pytestmark = pytest.mark.gui


def test_session_round_trip(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    image, masks = add_small_sequence(viewer)
    drawn = widget.masks.paint_layer()
    drawn.data = np.where(np.isin(np.arange(6), [0, 4])[:, None, None], masks, 0).astype(np.uint8)
    points = widget.masks.refine()
    moved = points.data.copy()
    moved[3, 1] += 2.0  # a dragged point
    points.data = moved
    widget.masks.interpolate()
    widget.sequence.set_pixel_size(0.5)
    widget.sequence.cycle.setValue(10)
    widget.sequence.cycle.editingFinished.emit()
    widget.display.arrows.setValue(300)
    set_run(widget, "0.5", "2")
    widget.registration.run()
    wait_for_run(qtbot, widget)
    fields = widget.state.result.fields.copy()
    path = widget.save_session(tmp_path / "cine.npz")
    assert (tmp_path / "cine_result.npz").is_file()  # the unsaved result is written beside the session

    # a fresh window (and a fresh Python session's settings), the same cine opened again
    from napari_nmsr._widget.state import SESSION_SETTINGS

    SESSION_SETTINGS.clear()
    viewer2 = make_napari_viewer()
    widget2 = open_panel(viewer2)
    image2, _ = add_small_sequence(viewer2)
    assert widget2.display.arrows.value() == 150
    widget2.load_session(path)
    assert widget2.state.image_layer == image2
    assert widget2.state.ed_frames == [0] and widget2.state.es_frames == [4]
    assert sequence_info(image2)["pixel_spacing_mm"] == pytest.approx((0.5, 0.5))
    assert sequence_info(image2)["cycle_frames"] == 10 and widget2.sequence.cycle.value() == 10
    np.testing.assert_allclose(find_role(viewer2, ROLE_POINTS, image2).data, moved)
    np.testing.assert_array_equal(find_role(viewer2, ROLE_MASKS, image2).data,
                                  find_role(viewer, ROLE_MASKS, image).data)
    assert widget2.display.arrows.value() == 300
    np.testing.assert_array_equal(widget2.state.result.fields, fields)
    assert find_role(viewer2, ROLE_VECTORS, image2) is not None and widget2.metrics.rowCount() == 1
    widget2.export.track_contour()  # the restored points and field work together
    assert "Tracked 100 points over 6 frames" in widget2.export.status.text()
