"""The whole workflow in a real viewer, on the sample data: open, mark, refine, interpolate, run, look, export."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_nmsr.core.export import load_contours_csv, load_contours_json, load_masks
from napari_nmsr.core.masks import dice
from napari_nmsr.core.result import RegistrationResult

from gui_helpers import open_panel, save_screenshot, set_run, wait_for_run

pytestmark = pytest.mark.gui


def _go_to_frame(viewer, image, t):
    viewer.dims.set_point(viewer.dims.ndim - 3, image.data_to_world([t, 0, 0])[0])


def test_workflow_end_to_end_on_the_vortex_sample(make_napari_viewer, qtbot, tmp_path, screenshot_dir):
    from napari_nmsr._sample_data import load_case

    viewer = make_napari_viewer(show=True)  # a hidden canvas renders blank screenshots
    viewer.open_sample("napari-nmsr", "vortex")
    image = viewer.layers[0]
    assert image.scale[0] == pytest.approx(1 / 30) and tuple(image.scale[1:]) == pytest.approx((0.9, 0.9))
    widget = open_panel(viewer)
    assert widget.state.image_layer is image
    truth = load_case("vortex")

    # 1-2. mark ED/ES from the time slider (the sample pre-fills them; do it by hand here)
    widget.masks.clear_marks()
    _go_to_frame(viewer, image, 0)
    assert widget.masks.mark("ED") == 0
    _go_to_frame(viewer, image, 6)
    assert widget.masks.mark("ES") == 6
    assert widget.masks.marks_label.text() == "ED: 0   ES: 6"

    points = widget.masks.refine()
    assert points.data.shape == (200, 3)
    assert set(np.unique(points.data[:, 0])) == {0, 6}
    # snapped ED points lie on the true cavity border (within a few pixels)
    border = truth["ed_mask"] ^ ndi.binary_erosion(truth["ed_mask"])
    ed_points = np.round(points.data[points.data[:, 0] == 0, 1:]).astype(int)
    assert ndi.distance_transform_edt(~border)[tuple(ed_points.T)].mean() < 2.5

    masks = widget.masks.interpolate()
    assert masks.data.shape == image.data.shape
    assert min(dice(m, t) for m, t in zip(masks.data > 0, truth["masks"])) > 0.85

    # 3. a tiny registration (two coarse scales, 3 steps each)
    set_run(widget, "0.25, 0.5", "3")
    widget.registration.run()
    wait_for_run(qtbot, widget)
    result = widget.state.result
    assert result is not None and not result.cancelled and result.scales == (0.25, 0.5)
    assert widget.metrics.rowCount() == 2 and widget.metrics.rows()[1][0] == "0.5"
    # the last column says how many of the 11 pairs each scale refined (the guard may keep some)
    refined = [row[-1] for row in widget.metrics.rows()]
    assert refined == [f"{int(r.sum())}/11" for r in result.refined]
    # the status says what the engine decided beyond its plan (an extended scale, the refinement's blur)
    assert widget.registration.status.text().splitlines()[1:] == result.notes
    assert widget.registration.status.text().startswith("Done: 2 scales in ")

    # 4. ONE vectors layer on (scale, t, y, x), only inside the mask
    vectors = [lyr for lyr in viewer.layers if lyr._type_string == "vectors"]
    assert len(vectors) == 1
    layer = vectors[0]
    assert layer.data.ndim == 3 and layer.data.shape[1:] == (2, 4)
    assert layer.axis_labels == ("scale", "t", "y", "x")
    assert viewer.dims.axis_labels[0] == "scale"
    assert set(np.unique(layer.data[:, 0, 0])) == {0, 1}
    assert set(np.unique(layer.data[:, 0, 1])) == set(range(1, 12))
    pos = layer.data[:, 0].astype(int)
    assert (masks.data > 0)[pos[:, 1], pos[:, 2], pos[:, 3]].all()
    per_frame = np.sum((pos[:, 0] == 1) & (pos[:, 1] == 3))
    assert 75 < per_frame < 300  # ~150 arrows per frame by default
    # the arrows are the motion (-field) of the finest scale
    k = np.flatnonzero((pos[:, 0] == 1) & (pos[:, 1] == 3))[0]
    np.testing.assert_allclose(layer.data[k, 1, 2:], -result.fields[1, 2][:, pos[k, 2], pos[k, 3]], atol=1e-5)

    # step the scale slider and the time slider: only that scale's and frame's arrows are shown
    for scale_index, t in ((0, 5), (1, 5), (1, 9)):
        viewer.dims.set_current_step(0, scale_index)
        _go_to_frame(viewer, image, t)
        shown = np.asarray(layer._view_indices)
        assert len(shown) > 100
        assert np.all(layer.features["scale_index"].to_numpy()[shown] == scale_index)
        assert np.all(layer.features["frame"].to_numpy()[shown] == t)
    save_screenshot(viewer.screenshot(canvas_only=True, flash=False), screenshot_dir / "workflow_vortex_canvas.png")

    # density and length controls
    widget.display.arrows.setValue(200)
    pos = layer.data[:, 0].astype(int)
    assert 100 < np.sum((pos[:, 0] == 1) & (pos[:, 1] == 3)) < 300
    widget.display.length.setValue(5.0)
    assert layer.length == 5.0

    # 6. track and export, then read every file back
    tracked = widget.export.track_contour()
    assert tracked.data.shape == (12 * 100, 3)
    csv_path = widget.export.save_contours(str(tmp_path / "contour.csv"))
    contours, outside, first = load_contours_csv(csv_path)
    assert contours.shape == (12, 100, 2) and first == 0
    json_doc = load_contours_json(widget.export.save_contours(str(tmp_path / "contour.json")))
    np.testing.assert_allclose(json_doc["contours"], contours, atol=1e-3)
    assert json_doc["pixel_spacing_mm"] == pytest.approx([0.9, 0.9])
    fields_path = widget.export.save_fields(str(tmp_path / "fields.npz"))
    again = RegistrationResult.load(fields_path)
    np.testing.assert_array_equal(again.fields, result.fields)
    assert again.frame_interval_s == pytest.approx(1 / 30)
    masks_path = widget.export.save_masks(str(tmp_path / "masks.tif"))
    np.testing.assert_array_equal(load_masks(masks_path), masks.data > 0)
    png = widget.export.save_png(str(tmp_path / "quiver.png"))
    import imageio.v3 as iio

    assert iio.imread(png).std() > 5
    _go_to_frame(viewer, image, 5)
    movie = iio.imread(widget.export.save_movie(str(tmp_path / "quiver.mp4")), plugin="pyav")
    assert movie.shape[0] == 12 and movie.std() > 5  # one video frame per echo frame
    assert image.world_to_data(viewer.dims.point)[0] == pytest.approx(5)  # the slider is put back
    # the manifest's NPZ writer saves the same result from the layer
    from napari_nmsr._writer import write_fields_npz

    out = write_fields_npz(str(tmp_path / "layer.npz"), layer.data, {"metadata": layer.metadata})
    np.testing.assert_array_equal(RegistrationResult.load(out[0]).fields, result.fields)


def test_myocardium_sample_gives_wall_masks(make_napari_viewer, screenshot_dir):
    from napari_nmsr._sample_data import load_case

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-nmsr", "myocardium")
    widget = open_panel(viewer)
    assert widget.state.mode == "myocardium"
    assert widget.state.ed_frames == [0] and widget.state.es_frames == [6]
    points = widget.masks.refine()
    assert set(points.features["contour"]) == {"inner", "outer"}
    masks = widget.masks.interpolate()
    truth = load_case("myocardium")["masks"]
    assert min(dice(m, t) for m, t in zip(masks.data > 0, truth)) > 0.75
    save_screenshot(viewer.screenshot(canvas_only=True, flash=False), screenshot_dir / "myocardium_masks.png")


def test_dragged_point_changes_the_mask(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nmsr", "vortex")
    widget = open_panel(viewer)
    points = widget.masks.refine()
    before = widget.masks.interpolate().data.copy()
    data = points.data.copy()
    ed = np.flatnonzero(data[:, 0] == 0)
    centre = data[ed, 1:].mean(0)
    data[ed, 1:] = centre + 0.7 * (data[ed, 1:] - centre)  # the user shrinks the ED outline
    points.data = data
    after = widget.masks.interpolate().data
    assert after[0].sum() < 0.7 * before[0].sum()
    assert len([lyr for lyr in viewer.layers if lyr.name.startswith("NMSR masks")]) == 1


DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"


@pytest.mark.skipif(not DICOM.is_file(), reason="shared real data not available")
def test_file_open_real_dicom_and_the_panel_describes_it(make_napari_viewer):
    from napari.errors import MultipleReaderError

    viewer = make_napari_viewer()
    # File > Open / drag-and-drop (plugin=None) offer napari-nmsr among the readers of .dcm ...
    with pytest.raises(MultipleReaderError) as choice:
        viewer.open(str(DICOM), plugin=None)
    assert "napari-nmsr" in choice.value.available_plugins
    # ... and the user's pick reads this RLE-compressed palette cine (napari's own reader cannot)
    (layer,) = viewer.open(str(DICOM), plugin="napari-nmsr")
    assert layer.data.shape == (10, 430, 600)
    assert layer.scale[0] == pytest.approx(0.076)
    assert str(layer.units[0]) == "second"
    widget = open_panel(viewer)
    assert widget.state.image_layer == layer
    assert "76.0 ms/frame" in widget.sequence.info.text()
    assert "pixel size unknown" in widget.sequence.info.text()


def test_file_open_result_npz_shows_its_quiver(make_napari_viewer, tmp_path):
    fields = np.random.default_rng(0).normal(0, 1, (2, 3, 2, 32, 32)).astype(np.float32)
    path = RegistrationResult(
        fields=fields, scales=(0.5, 1.0), metrics={"mse": np.ones((2, 3)), "mean_cc": np.ones((2, 3))},
    ).save(tmp_path / "result.npz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-nmsr")
    assert layer.data.shape[1:] == (2, 4)
    assert viewer.dims.axis_labels[0] == "scale"
    assert isinstance(layer.metadata["nmsr_result"], RegistrationResult)
