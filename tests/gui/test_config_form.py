"""The advanced registration settings are a magicgui form generated from RegistrationConfig (issue 12)."""

import dataclasses

import pytest

from gui_helpers import open_panel
from napari_nmsr._widget.config_form import MAIN_FORM_FIELDS, ConfigForm
from napari_nmsr.core.register import RegistrationConfig

pytestmark = pytest.mark.gui


def _check_per_scale_text(widget, name, default, per_scale, index, value):
    """A one-or-per-scale field is a text box: it shows its default, feeds scale ``index`` its value
    from a per-scale text, refuses a negative weight, and is reset to its default."""
    form = widget.registration.advanced
    assert form[name].value.replace(" ", "") == default
    form[name].value = per_scale
    assert getattr(widget.registration.config(), f"{name}_for")(index) == value
    form[name].value = "-1"
    with pytest.raises(ValueError, match=name):
        widget.registration.config()
    form[name].value = default
    assert form[name].value.replace(" ", "") == default


def test_form_has_every_other_config_field_and_feeds_the_config(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    form = widget.registration.advanced
    assert isinstance(form, ConfigForm)
    expected = {f.name for f in dataclasses.fields(RegistrationConfig)} - set(MAIN_FORM_FIELDS)
    assert {w.name for w in form} == expected  # nothing of the engine's config is missing
    defaults = RegistrationConfig()
    assert widget.registration.config().smoothness == defaults.smoothness
    form["smoothness"].value = "3.5"
    form["ncc_radius"].value = 4
    form["batch_size"].value = "2"
    form["seed"].value = ""
    form["encoder"].value = "8, 16, 16, 16"
    config = widget.registration.config()
    assert (config.smoothness, config.ncc_radius, config.batch_size, config.seed) == (3.5, 4, 2, None)
    assert config.encoder == (8, 16, 16, 16) and config.lr == defaults.lr
    form["smoothness"].value = "50, 50, 200, 400"  # one weight per scale
    assert widget.registration.config().smoothness_for(2) == 200.0
    form["smoothness"].value = "fifty"
    with pytest.raises(ValueError, match="smoothness"):
        widget.registration.config()
    form["smoothness"].value = "3.5"
    # the rotation's share of the bending weight, one per scale (the 1/2 scale lets vortex cores turn)
    _check_per_scale_text(widget, "curl_weight", "1,1,0,1", "1, 0.5, 0.2, 1", 1, 0.5)
    # the coupling of consecutive pairs in the U-Net's loss: off by default, one value or one per scale
    assert "consecutive" in form["temporal_weight"].tooltip
    _check_per_scale_text(widget, "temporal_weight", "0", "0, 0, 100, 0", 2, 100.0)
    # the U-Net loss's NCC window, one per scale (the 1/2 scale's narrower); the guard's stays ncc_radius
    assert "vortex" in form["loss_radius"].tooltip and "guard" in form["ncc_radius"].tooltip
    _check_per_scale_text(widget, "loss_radius", "6,6,4,6", "6, 5, 3, 6", 2, 3)
    form["batch_size"].value = "two"
    with pytest.raises(ValueError, match="batch size"):
        widget.registration.config()
    form["batch_size"].value = ""
    assert widget.registration.config().guard_gain == defaults.guard_gain == 0.05
    form["guard_gain"].value = 0.0  # weak vortices: any improvement is kept
    assert widget.registration.config().guard_gain == 0.0
    assert form["guard_gain"].max == 0.99  # the spin box stops below 1, where the config would refuse it
    with pytest.raises(ValueError):
        form["guard_gain"].value = 5.0
    assert widget.registration.config().guard_gain == 0.0
    form["guard_gain"].value = defaults.guard_gain
    # the refinement's two NCC windows are a comma-separated text; one number is one window
    assert form["refine_radius"].value.replace(" ", "") == "2,4"
    form["refine_radius"].value = "3"
    assert widget.registration.config().refine_radius == 3
    form["refine_radius"].value = "2, 5"
    assert widget.registration.config().refine_radius == (2, 5)
    form["refine_radius"].value = "2, 4"
    assert form["refine_smoothness_deforming"].value == defaults.refine_smoothness_deforming == 100.0
    form["refine_smoothness_deforming"].value = 40.0
    assert widget.registration.config().refine_smoothness_deforming == 40.0
    form["refine_smoothness_deforming"].value = defaults.refine_smoothness_deforming
    # the temporal consensus: on by default, off at 0, its spin box stops below 1 as the config does
    assert form["consensus_tolerance"].value == defaults.consensus_tolerance == 0.1
    assert form["consensus_tolerance"].max == 0.99 and "consensus" in form["consensus_tolerance"].tooltip.lower()
    form["consensus_tolerance"].value = 0.0
    assert widget.registration.config().consensus_tolerance == 0.0
    form["consensus_tolerance"].value = defaults.consensus_tolerance
    assert form["consensus_max_px"].value == defaults.consensus_max_px == 1.0
    assert form["consensus_denoise"].value is True and defaults.consensus_denoise is True  # a check box
    assert "refine_denoise" in form["consensus_denoise"].tooltip
    form["consensus_denoise"].value = False
    assert widget.registration.config().consensus_denoise is False
    form["consensus_denoise"].value = True
    # a flagged pair keeps the change it shares with its neighbours: a check box, on by default
    assert form["guard_coherent"].value is True and defaults.guard_coherent is True
    assert "neighbours" in form["guard_coherent"].tooltip
    form["guard_coherent"].value = False
    assert widget.registration.config().guard_coherent is False
    form["guard_coherent"].value = True
    # the early copy of the finest trained scale's network: a share of its steps, stopping below 1
    assert form["early_checkpoint"].value == defaults.early_checkpoint == 0.3
    assert form["early_checkpoint"].max < 1.0 and "copy" in form["early_checkpoint"].tooltip
    form["early_checkpoint"].value = 0.0
    assert widget.registration.config().early_checkpoint == 0.0
    form["early_checkpoint"].value = defaults.early_checkpoint
    # the refinement's blur for white noise: px, on by default, off at 0, capped as the config is
    assert form["refine_denoise"].value == defaults.refine_denoise == 0.8
    assert form["refine_denoise"].max == 8.0 and "white" in form["refine_denoise"].tooltip
    form["refine_denoise"].value = 0.0
    assert widget.registration.config().refine_denoise == 0.0
    form["refine_denoise"].value = defaults.refine_denoise
    # the last U-Net scale's extension: steps, on by default, off at 0, kept only for motion the pairs share
    assert form["extend_steps"].value == defaults.extend_steps == 100
    assert "neighbours" in form["extend_coherence"].tooltip and form["extend_margin"].max == 0.99
    form["extend_steps"].value = 0
    assert widget.registration.config().extend_steps == 0
    form["extend_steps"].value = defaults.extend_steps
    # an earlier scale trains on too after the guard rejected pairs before it: a check box, on by default
    assert form["extend_after_rejects"].value is True and "rejected" in form["extend_after_rejects"].tooltip
    form["extend_after_rejects"].value = False
    assert widget.registration.config().extend_after_rejects is False
    form["extend_after_rejects"].value = True
    # the guard leaves out what enters the view: a check box, on by default
    assert form["guard_in_view"].value is True and "entering" in form["guard_in_view"].tooltip
    form["guard_in_view"].value = False
    assert widget.registration.config().guard_in_view is False
    form["guard_in_view"].value = True
    # the paper preset runs every step (no early stopping) with the paper's loss; the default preset
    # returns to the engine's patience, regulariser and affine stage
    widget.registration.preset.setCurrentIndex(widget.registration.preset.findData("paper"))
    paper = widget.registration.config()
    assert paper.patience == 0 and paper.regulariser == "diffusion" and paper.smoothness == 10.0 and not paper.affine
    assert paper.min_scale_px == 12 and form["min_scale_px"].value == 12  # the paper's plain pyramid
    assert paper.consensus_tolerance == 0.0 and form["consensus_tolerance"].value == 0.0
    assert paper.loss_radius == 6 and form["loss_radius"].value.strip() == "6"  # the paper's window at every scale
    widget.registration.preset.setCurrentIndex(widget.registration.preset.findData("default"))
    back = widget.registration.config()
    assert back.patience == defaults.patience and back.regulariser == defaults.regulariser
    assert back.affine == defaults.affine and back.curl_weight == defaults.curl_weight
    assert back.min_scale_px == defaults.min_scale_px == 32
    assert back.consensus_tolerance == defaults.consensus_tolerance  # the default preset runs it again
    assert back.loss_radius == defaults.loss_radius == (6, 6, 4, 6)
    form["min_scale_px"].value = 48
    assert widget.registration.config().min_scale_px == 48
    assert form["min_scale_px"].min == 12  # the config refuses less
    assert not form.native.isVisibleTo(widget)
    widget.registration.advanced_toggle.setChecked(True)
    assert form.native.isVisibleTo(widget)


def test_steps_text_takes_zero_to_skip_a_scale_and_refuses_negative_steps(make_napari_viewer):
    # The default skips the full scale's U-Net (0 steps); the field shows it and a user can run it.
    viewer = make_napari_viewer()
    reg = open_panel(viewer).registration
    assert reg.steps.text().replace(" ", "") == ",".join(str(n) for n in RegistrationConfig().steps)
    assert reg.config().steps_for(3) == 0
    reg.steps.setText("150, 100, 100, 20")
    assert reg.config().steps_for(3) == 20
    reg.steps.setText("150, -1, 100, 0")
    with pytest.raises(ValueError, match="0 or more"):
        reg.config()


def test_the_open_advanced_form_fits_the_dock_without_cutting_off_its_boxes(make_napari_viewer, qtbot):
    # Its long labels ("refine fine smoothness deforming") widen the form: opening it widens the dock,
    # so every box's right edge (a spin box's "+") stays inside the scroll area's viewport.
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    widget = open_panel(viewer)
    qtbot.wait(50)
    closed_width = widget.minimumWidth()
    widget.registration.advanced_toggle.setChecked(True)
    qtbot.wait(50)
    assert widget.minimumWidth() > closed_width
    viewport = widget.findChild(QScrollArea).viewport()
    form = widget.registration.advanced
    for name in ("refine_fine_smoothness_deforming", "refine_smoothness", "consensus_tolerance"):
        box = form[name].native
        right = box.mapTo(viewport, QPoint(box.width(), 0)).x()
        assert right <= viewport.width(), f"{name}: right edge {right} beyond the viewport's {viewport.width()}"
    widget.registration.advanced_toggle.setChecked(False)
    qtbot.wait(50)
    assert widget.minimumWidth() == closed_width
