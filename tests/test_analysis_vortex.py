"""Vortex detection (Gamma-1/Gamma-2) and LV-relative position on analytic Lamb-Oseen fields."""

import numpy as np
import pytest

from napari_nmsr.core.analysis import detect_vortices, lv_axis_from_mask, relative_position
from napari_nmsr.core.analysis.analytic import lamb_oseen_core_circulation, lamb_oseen_motion, translation_field
from napari_nmsr.core.analysis.vorticity import smooth_motion
from napari_nmsr.core.convention import motion_from_field

SHAPE = (80, 96)


@pytest.mark.parametrize("circulation", [150.0, -300.0])
def test_lamb_oseen_centre_and_circulation(circulation):
    centre, core = (35.3, 52.6), 7.0
    motion = lamb_oseen_motion(SHAPE, centre, circulation, core, background_yx=(0.4, -0.8))
    found = detect_vortices(motion)
    assert len(found) == 1 and found[0].main
    v = found[0]
    assert np.hypot(v.centre_yx[0] - centre[0], v.centre_yx[1] - centre[1]) < 0.5
    assert v.rotation == ("ccw" if circulation > 0 else "cw")
    assert v.circulation == pytest.approx(lamb_oseen_core_circulation(circulation, core), rel=0.1)
    assert abs(v.gamma1_peak) > 0.8


def test_noisy_vortex_found_after_smoothing():
    rng = np.random.default_rng(1)
    centre = (40.0, 44.0)
    motion = lamb_oseen_motion(SHAPE, centre, 200.0, 9.0) + 0.4 * rng.standard_normal((2, *SHAPE)).astype(np.float32)
    v = detect_vortices(smooth_motion(motion, 1.0))[0]
    assert np.hypot(v.centre_yx[0] - centre[0], v.centre_yx[1] - centre[1]) < 2.0
    assert v.circulation == pytest.approx(lamb_oseen_core_circulation(200.0, 9.0), rel=0.2)


def test_two_vortices_main_is_the_stronger():
    m = lamb_oseen_motion(SHAPE, (40, 25), 120.0, 5.0) + lamb_oseen_motion(SHAPE, (40, 70), -300.0, 6.0)
    found = detect_vortices(m)
    assert len(found) == 2
    assert found[0].main and not found[1].main
    assert found[0].rotation == "cw" and abs(found[0].centre_yx[1] - 70) < 1
    assert found[1].rotation == "ccw" and abs(found[1].centre_yx[1] - 25) < 1


def test_translation_and_outside_mask_give_no_vortex():
    assert detect_vortices(motion_from_field(translation_field(SHAPE, (1.0, 2.0)))) == []
    m = lamb_oseen_motion(SHAPE, (40, 25), 150.0, 5.0)
    mask = np.zeros(SHAPE, bool)
    mask[:, 50:] = True
    assert detect_vortices(m, mask) == []


def _teardrop(shape=(90, 70), apex_up=True):
    """LV-like mask: wide base at the bottom, narrow apex at the top (or flipped)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    s = (yy - 10) / 70.0  # 0 at the apex row 10, 1 at the base row 80
    half = 5 + 20 * np.clip(s, 0, 1) ** 0.5
    m = (s >= 0) & (s <= 1) & (np.abs(xx - 35) <= half)
    return m if apex_up else m[::-1]


@pytest.mark.parametrize("apex_up", [True, False])
def test_lv_axis_apex_is_the_narrow_end(apex_up):
    axis = lv_axis_from_mask(_teardrop(apex_up=apex_up))
    apex_row = 10 if apex_up else 79
    assert abs(axis.apex_yx[0] - apex_row) <= 2 and abs(axis.apex_yx[1] - 35) <= 2
    assert axis.length_px == pytest.approx(70, abs=2)
    assert axis.normal_yx[1] > 0.99  # transverse direction points screen-right


def test_relative_position_depth_and_transverse():
    mask = _teardrop()
    axis = lv_axis_from_mask(mask)
    depth, trans = relative_position(axis, mask, (45.0, 35.0))  # halfway, on the axis
    assert depth == pytest.approx(0.5, abs=0.05) and trans == pytest.approx(0.5, abs=0.05)
    d_base, _ = relative_position(axis, mask, (78.0, 35.0))
    assert d_base < 0.05
    _, left = relative_position(axis, mask, (70.0, 20.0))
    assert left < 0.25
