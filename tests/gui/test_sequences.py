"""Results belong to their sequence: two cines in one viewer never mix (issue 12)."""

import numpy as np
import pytest

from gui_helpers import add_small_sequence, open_panel, set_run, wait_for_run
from napari_nmsr._widget.layers import ROLE_KEY, SOURCE_KEY

pytestmark = pytest.mark.gui


def _second_sequence(viewer):
    """A different cine: 9 frames of 48 x 80 px of smooth noise (not all zero)."""
    rng = np.random.default_rng(3)
    frames = rng.random((9, 48, 80)).astype(np.float32) * 0.6 + 0.2
    return viewer.add_image(frames, name="other cine")


def test_two_sequences_keep_their_own_results(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    first, masks = add_small_sequence(viewer)
    assert widget.state.image_layer == first  # opening a sequence selects it in the panel
    drawn = widget.masks.paint_layer()
    painted = np.zeros_like(drawn.data)
    painted[[0, 4]] = masks[[0, 4]]
    drawn.data = painted
    widget.masks.refine()
    widget.masks.interpolate()
    set_run(widget, "0.5", "3")
    widget.registration.run()
    wait_for_run(qtbot, widget)
    assert widget.state.result is not None and widget.metrics.rowCount() == 1
    widget.export.track_contour()
    mine = [lyr for lyr in viewer.layers if ROLE_KEY in lyr.metadata]
    assert {lyr.metadata[ROLE_KEY] for lyr in mine} >= {"drawn", "points", "masks", "vectors", "tracked"}
    assert all(lyr.metadata[SOURCE_KEY] == str(first.unique_id) for lyr in mine)

    # open another cine: it is chosen, and it starts empty
    second = _second_sequence(viewer)
    assert widget.state.image_layer == second
    assert widget.sequence.layer_combo.currentText() == "other cine"
    assert not any(lyr.visible for lyr in mine)  # none of the first cine's layers is drawn
    assert widget.state.result is None and widget.state.done == [] and widget.metrics.rowCount() == 0
    assert widget.state.ed_frames == [] and widget.masks.marks_label.text() == "ED: -   ES: -"
    assert widget.display.vectors_layer() is None
    assert "Run a registration" in widget.display.legend_text.text()
    # no action reaches across: tracking, exports and the mask for a run see nothing of the first cine
    assert widget.export.track_contour() is None
    with pytest.raises(ValueError, match="Run a registration"):
        widget.export.shown_scale_index()
    with pytest.raises(ValueError, match="No finished registration"):
        widget.export.save_fields("unused.npz")
    with pytest.raises(ValueError, match="No masks yet"):
        widget.export.save_masks("unused.tif")
    assert widget.registration._mask((9, 48, 80)) is None
    widget.analysis.compute()
    assert widget.analysis.report is None and "No result" in widget.analysis.status.text()
    # the second cine's own drawing goes into its own layer
    drawn_second = widget.masks.paint_layer()
    assert drawn_second.data.shape == (9, 48, 80) and drawn_second.metadata[SOURCE_KEY] == str(second.unique_id)
    assert drawn_second != drawn and drawn.data.shape == (6, 64, 64)

    # back to the first: its own state and layers again, the second's hidden
    widget.sequence.select_layer(first)
    assert widget.state.image_layer == first
    assert widget.state.result is not None and widget.metrics.rowCount() == 1
    assert all(lyr.visible for lyr in mine) and not drawn_second.visible
    assert widget.state.ed_frames == [0] and widget.state.es_frames == [4]


def test_a_field_of_another_shape_is_refused_with_a_clear_message(make_napari_viewer, qtbot, monkeypatch):
    from napari_nmsr._widget import export_section

    errors = []
    monkeypatch.setattr(export_section, "show_error", errors.append)
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    first, masks = add_small_sequence(viewer)
    drawn = widget.masks.paint_layer()
    drawn.data = np.where(np.isin(np.arange(6), [0, 4])[:, None, None], masks, 0).astype(np.uint8)
    widget.masks.refine()
    set_run(widget, "0.5", "2")
    widget.registration.run()
    wait_for_run(qtbot, widget)
    # the sequence's data are replaced by a cine with another frame count (same layer)
    first.data = np.random.default_rng(1).random((4, 64, 64)).astype(np.float32) * 0.5 + 0.25
    assert widget.export.track_contour() is None
    assert errors and "6 frames of 64 x 64 px" in errors[-1] and "4 frames" in errors[-1]
