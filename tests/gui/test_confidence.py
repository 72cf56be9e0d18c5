"""Forward-backward consistency in the panel: backward run, inconsistency layer, grey arrows, stopping."""

from __future__ import annotations

import re

import numpy as np
import pytest
from napari.utils.colormaps import ensure_colormap
from scipy.ndimage import gaussian_filter

from gui_helpers import add_small_sequence, open_panel, set_run, wait_for_run
from napari_nmsr._widget import consistency
from napari_nmsr._widget.analysis_section import AnalysisSection
from napari_nmsr._widget.consistency import LAYER_NAME
from napari_nmsr._widget.display_section import COLORMAP, UNRELIABLE_RGBA, DisplaySection
from napari_nmsr._widget.layers import ROLE_KEY, ROLE_VECTORS, SOURCE_KEY, find_role
from napari_nmsr._widget.state import WorkflowState
from napari_nmsr.core.register import RegistrationConfig, ScaleDone
from napari_nmsr.core.result import RegistrationResult

pytestmark = pytest.mark.gui

SHAPE = (48, 56)


def _frames(n=4):
    """Smooth speckle-like blobs in [0, 1] (never blank)."""
    noise = np.random.default_rng(1).random((n, *SHAPE))
    blobs = np.stack([gaussian_filter(f, 2.0) for f in noise])
    return ((blobs - blobs.min()) / (blobs.max() - blobs.min())).astype(np.float32)


def _synthetic_result(n_pairs=3, **config):
    """A one-scale result whose motion grows from left to right (so arrow colours differ)."""
    f = np.zeros((n_pairs, 2, *SHAPE), np.float32)
    f[:, 1] = -np.linspace(0.2, 3.0, SHAPE[1], dtype=np.float32)  # material moves right, faster on the right
    zeros = np.zeros((1, n_pairs))
    cfg = RegistrationConfig(scales=(1.0,), **config).to_dict()
    return RegistrationResult(fields=f[None], scales=(1.0,), metrics={"mse": zeros, "mean_cc": zeros}, config=cfg)


def _done(result) -> ScaleDone:
    n = result.fields.shape[1]
    return ScaleDone(0, 1, 1.0, result.fields[0], np.zeros(n), np.zeros(n), 1, 0.0, 0.0)


def test_backward_run_shows_inconsistency_under_the_quiver_and_a_new_run_clears_it(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image, masks = add_small_sequence(viewer)
    viewer.add_labels(masks.astype(np.uint8), scale=image.scale, units=image.units, name="NMSR masks",
                      metadata={ROLE_KEY: "masks", SOURCE_KEY: str(image.unique_id)})
    widget = open_panel(viewer)
    widget.sequence.select_layer(image)
    set_run(widget, "0.5, 1", "2, 3")
    widget.registration.run()
    wait_for_run(qtbot, widget)
    result = widget.state.result
    assert result is not None and result.scales == (0.5, 1.0)

    check = widget.analysis.consistency
    worker = check.check()
    assert worker is not None
    assert check.check() is None  # a second click while running is refused
    qtbot.waitUntil(lambda: not check.running, timeout=120_000)

    inc = widget.state.inconsistency
    assert inc is not None and inc.shape == (2, 5, 64, 64) and inc.dtype == np.float32
    assert np.isfinite(inc).all() and inc.max() > 0
    layer = viewer.layers[LAYER_NAME]
    vec = find_role(viewer, ROLE_VECTORS)
    assert layer.data.shape == (6, 64, 64) and float(np.abs(layer.data[0]).max()) == 0.0  # frame 0: no pair
    run_mask = widget.state.run_mask[1:]
    np.testing.assert_allclose(layer.data[1:], inc[1] * run_mask)  # finest scale (chosen in Analysis), in the mask
    assert inc[1][~run_mask].max() > 0  # the mask did cut something
    np.testing.assert_allclose(layer.scale, image.scale)
    assert layer.colormap.name == "magma"
    assert viewer.layers.index(layer) < viewer.layers.index(vec)  # under the quiver
    assert "mean forward-backward inconsistency" in check.status.text()

    median = round(float(np.median(inc[1][run_mask])), 2)
    check.threshold.setValue(median)  # about half of this short run's arrows are greyed; the status counts them
    assert widget.state.consistency_threshold == median
    vec = find_role(viewer, ROLE_VECTORS)
    grey = ~vec.features["reliable"].to_numpy()[vec.features["scale_index"].to_numpy() == 1]
    assert 0.1 < grey.mean() < 0.9 and vec.edge_color_mode == "direct"
    assert f"{grey.mean():.0%} of arrows above {median:g} px" in check.status.text()

    widget.analysis.scale.setCurrentIndex(0)  # the coarse scale's map
    np.testing.assert_allclose(viewer.layers[LAYER_NAME].data[1:], inc[0] * run_mask)

    widget.registration.run()  # a new run: the old consistency data is stale
    assert widget.state.inconsistency is None
    assert LAYER_NAME not in [lyr.name for lyr in viewer.layers]
    wait_for_run(qtbot, widget)
    assert find_role(viewer, ROLE_VECTORS).features["reliable"].all()


def test_unreliable_arrows_are_grey_and_the_others_keep_the_speed_colour(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image = viewer.add_image(_frames())
    result = _synthetic_result()
    state = WorkflowState(image_layer=image, result=result, done=[_done(result)])
    display = DisplaySection(viewer, state)
    qtbot.addWidget(display)
    display.inside_mask.setChecked(False)
    display.refresh()
    vec = find_role(viewer, ROLE_VECTORS)
    assert vec.edge_color_mode == "colormap"  # no confidence data: the plain speed colormap

    inc = np.zeros((1, 3, *SHAPE), np.float32)
    inc[0, :, 10:30, 5:25] = 4.0  # the two runs disagree in this block, on every pair
    state.inconsistency = inc
    display.refresh()

    def check_colours():
        vec = find_role(viewer, ROLE_VECTORS)
        ys, xs = vec.data[:, 0, 2], vec.data[:, 0, 3]
        bad = (ys >= 10) & (ys < 30) & (xs >= 5) & (xs < 25)
        assert bad.any() and (~bad).any()
        colours = np.asarray(vec.edge_color)
        np.testing.assert_allclose(colours[bad], np.broadcast_to(UNRELIABLE_RGBA, colours[bad].shape), atol=1e-6)
        speed = vec.features["speed"].to_numpy()
        lo, hi = vec.edge_contrast_limits
        expected = ensure_colormap(COLORMAP).map(np.clip((speed[~bad] - lo) / (hi - lo), 0, 1))
        np.testing.assert_allclose(colours[~bad], expected, atol=1e-5)
        assert len(np.unique(colours[~bad].round(3), axis=0)) > 3  # still a colormap, not one colour
        np.testing.assert_array_equal(vec.features["reliable"].to_numpy(), ~bad)

    check_colours()
    display.arrows.setValue(display.arrows.value() // 2)  # a density change rebuilds: greying stays
    check_colours()
    display.length.setValue(5.0)  # a restyle keeps the colours
    check_colours()
    assert "Grey" in display.legend_text.text()

    state.consistency_threshold = 5.0  # above the injected error: all arrows back to the colormap
    display.refresh()
    assert find_role(viewer, ROLE_VECTORS).edge_color_mode == "colormap"


def test_consistency_worker_stops_on_shutdown(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    image = viewer.add_image(_frames())
    state = WorkflowState(image_layer=image, result=_synthetic_result(steps=5000))
    section = AnalysisSection(viewer, state)
    qtbot.addWidget(section)
    worker = section.consistency.check()
    assert worker is not None
    # the one (finest) scale's 5000 steps and the refinement that ends it (both its passes)
    total = 5000 + RegistrationConfig().refine_steps + RegistrationConfig().refine_fine_steps

    def past_first_step():
        # several steps can land between two polls, so any step >= 2 of the right total counts
        found = re.search(r"step (\d+) of (\d+)", section.consistency.status.text())
        return found is not None and int(found[1]) >= 2 and int(found[2]) == total

    qtbot.waitUntil(past_first_step, timeout=60_000)
    section.shutdown()
    assert not worker.is_running  # the thread has returned, not just been asked to
    assert not section.consistency.running and state.inconsistency is None


def test_engine_errors_become_notifications(make_napari_viewer, qtbot, monkeypatch):
    errors = []
    monkeypatch.setattr(consistency, "show_error", errors.append)
    viewer = make_napari_viewer()
    image = viewer.add_image(_frames())
    result = _synthetic_result(variant="nmsr_v", weights="/nonexistent/weights.pt", steps=2)
    state = WorkflowState(image_layer=image, result=result)
    section = AnalysisSection(viewer, state)
    qtbot.addWidget(section)
    section.consistency.check()
    qtbot.waitUntil(lambda: not section.consistency.running, timeout=30_000)
    assert len(errors) == 1 and "weights file not found" in errors[0]
    assert state.inconsistency is None and "failed" in section.consistency.status.text()

    state.image_layer = viewer.add_image(_frames(6))  # another sequence: it has no result of its own
    assert state.result is None and section.consistency.check() is None and len(errors) == 1
    state.result = result  # a result of another shape handed to it: refused before any run
    assert section.consistency.check() is None
    assert len(errors) == 2 and "not the one of the result" in errors[1]
