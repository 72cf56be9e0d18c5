"""Drawing in the panel: traced polygons to masks, draggable points, named warnings, undo, ED/ES navigation (issue 12)."""

import numpy as np
import pytest
from skimage.draw import disk

from gui_helpers import add_small_sequence, open_panel
from napari_nmsr._widget.layers import ROLE_TRACED, SOURCE_KEY, find_role
from napari_nmsr.core.masks import dice

pytestmark = pytest.mark.gui


def _press(viewer, key):
    """Run the action bound to ``key`` on the viewer, as napari does on the key press."""
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str(key)](viewer)


def _circle(t, centre, radius, n=24):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([np.full(n, t), centre[0] + radius * np.sin(a), centre[1] + radius * np.cos(a)])


def test_traced_polygons_become_masks(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    image, truth = add_small_sequence(viewer)
    shapes = widget.masks.trace_layer()
    assert shapes.mode == "add_polygon" and shapes.metadata[SOURCE_KEY] == str(image.unique_id)
    assert find_role(viewer, ROLE_TRACED, image) == shapes
    # the user traces the cavity on ED (frame 0) and ES (frame 4) as polygons
    for t in (0, 4):
        ys, xs = np.nonzero(truth[t])
        radius = np.sqrt(truth[t].sum() / np.pi)
        shapes.add_polygons([_circle(t, (ys.mean(), xs.mean()), radius)])
    drawn = widget.masks.outlines_to_drawn()
    assert set(np.unique(drawn.data[0])) == {0, 1} and not drawn.data[2].any()
    assert dice(drawn.data[0] > 0, truth[0]) > 0.8 and dice(drawn.data[4] > 0, truth[4]) > 0.8
    points = widget.masks.refine()  # Refine uses the traced outlines
    assert set(np.unique(points.data[:, 0])) == {0, 4}
    masks = widget.masks.interpolate()
    assert masks.data.shape == image.data.shape
    assert min(dice(m > 0, t) for m, t in zip(masks.data, truth)) > 0.7


def test_myocardium_outlines_fill_cavity_and_wall():
    from napari_nmsr._widget.mask_section import CAVITY, WALL, outlines_to_labels

    outer, inner = _circle(1, (30, 30), 20), _circle(1, (30, 30), 12)
    labels = outlines_to_labels([inner, outer], (3, 64, 64), myocardium=True)
    assert labels[1, 30, 30] == CAVITY and labels[1, 30, 30 + 16] == WALL and labels[1, 30, 55] == 0
    assert not labels[0].any() and not labels[2].any()
    ref = np.zeros((64, 64), bool)
    ref[disk((30, 30), 12)] = True
    assert dice(labels[1] == CAVITY, ref) > 0.9


def test_points_can_be_told_apart_undo_and_marks(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nmsr", "vortex")
    widget = open_panel(viewer)
    image = widget.state.image_layer
    points = widget.masks.refine()
    ed = points.data[points.data[:, 0] == 0, 1:]
    gaps = np.linalg.norm(np.diff(np.vstack([ed, ed[:1]]), axis=0), axis=1)
    size = float(np.asarray(points.size).ravel()[0])
    assert size < np.median(gaps) and size >= 1.5  # one point at a time can be picked up

    masks = widget.masks.interpolate()
    before = masks.data.copy()
    data = points.data.copy()
    data[points.data[:, 0] == 0, 1] += 3.0  # drag the ED outline down
    points.data = data
    widget.masks.interpolate()
    assert not np.array_equal(masks.data, before)
    assert widget.masks.undo() == "Interpolate"
    np.testing.assert_array_equal(masks.data, before)
    assert widget.masks.undo() == "Interpolate"  # the first interpolation: the masks layer goes away
    assert all(lyr.name != "NMSR masks" for lyr in viewer.layers)
    assert widget.masks.undo() == "Refine"  # and the points of the first Refine go too
    assert all(lyr.name != "NMSR contour points" for lyr in viewer.layers)
    assert widget.masks.undo() is None and not widget.masks.undo_button.isEnabled()

    # ED/ES go-to buttons and the keyboard shortcuts
    assert widget.state.ed_frames == [0] and widget.state.es_frames == [6]
    widget.masks.go_es_button.click()
    assert round(image.world_to_data(viewer.dims.point)[0]) == 6
    widget.masks.go_ed_button.click()
    assert round(image.world_to_data(viewer.dims.point)[0]) == 0
    viewer.dims.set_point(0, image.data_to_world([9, 0, 0])[0])
    _press(viewer, "Shift-E")  # mark ED by key
    assert widget.state.ed_frames == [0, 9]
    _press(viewer, "Shift-Left")
    assert round(image.world_to_data(viewer.dims.point)[0]) == 6
    _press(viewer, "Shift-S")
    assert widget.state.es_frames == [6]


def test_refine_warning_names_the_frame(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    image, truth = add_small_sequence(viewer)
    drawn = widget.masks.paint_layer()
    bad = np.zeros_like(drawn.data)
    bad[0] = truth[0]
    bad[4] = 0
    bad[4, 5:60, 5:60] = 1  # a sloppy square far larger than the cavity on ES
    drawn.data = bad
    widget.masks.refine()
    text = widget.masks.message.text()
    assert "ES mask on frame 4" in text and "limited to" in text

