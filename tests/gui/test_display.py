"""Field -> Vectors layer data (pure numpy, no Qt)."""

import numpy as np
import pytest

from napari_nmsr._widget.display import arrows_for_scale, concat_arrows, grid_step, speed_units


def _field(n_pairs=3, h=40, w=50):
    f = np.zeros((n_pairs, 2, h, w), np.float32)
    f[:, 0] = 1.5  # pull dy = +1.5: the material moved UP by 1.5 px
    f[:, 1] = -2.0  # pull dx = -2: the material moved RIGHT by 2 px
    return f


def test_arrows_are_motion_on_the_fixed_frame_with_scale_axis():
    arrows = arrows_for_scale(_field(), 2, arrows_per_frame=100)
    assert arrows.data.shape[1:] == (2, 4)
    assert np.all(arrows.data[:, 0, 0] == 2)  # scale index axis
    assert set(np.unique(arrows.data[:, 0, 1])) == {1, 2, 3}  # pair t is drawn on frame t + 1
    np.testing.assert_allclose(arrows.data[:, 1, 2], -1.5)  # motion = -field
    np.testing.assert_allclose(arrows.data[:, 1, 3], 2.0)
    assert np.all(arrows.data[:, 1, :2] == 0)  # no component along scale or time
    np.testing.assert_allclose(arrows.speed, 2.5, rtol=1e-6)


def test_about_the_requested_number_of_arrows_per_frame():
    f = _field(1, 128, 128)
    for n in (200, 1000, 3000):
        count = len(arrows_for_scale(f, 0, arrows_per_frame=n))
        assert 0.7 * n < count < 1.4 * n, (n, count)


def test_mask_keeps_arrows_inside_and_keeps_density():
    f = _field(2, 64, 64)
    mask = np.zeros((3, 64, 64), bool)
    mask[:, 16:48, 16:48] = True
    arrows = arrows_for_scale(f, 0, arrows_per_frame=300, mask=mask)
    ys, xs = arrows.data[:, 0, 2].astype(int), arrows.data[:, 0, 3].astype(int)
    assert mask[arrows.frame, ys, xs].all()
    per_frame = len(arrows) / 2
    assert 0.6 * 300 < per_frame < 1.5 * 300
    with pytest.raises(ValueError):
        arrows_for_scale(f, 0, mask=mask[:2])


def test_speed_in_cm_per_s_when_spacing_and_time_are_known():
    arrows = arrows_for_scale(_field(), 0, arrows_per_frame=50, frame_interval_s=0.02, pixel_spacing_mm=(0.5, 0.5))
    # 2.5 px/frame * 0.5 mm/px / 0.02 s = 62.5 mm/s = 6.25 cm/s
    np.testing.assert_allclose(arrows.speed, 6.25, rtol=1e-5)
    assert speed_units(0.02, (0.5, 0.5)) == "cm/s"
    assert speed_units(None, None) == "px/frame"


def test_concat_and_grid_step():
    a = arrows_for_scale(_field(), 0, arrows_per_frame=50)
    b = arrows_for_scale(_field(), 1, arrows_per_frame=50)
    both = concat_arrows([a, b])
    assert len(both) == len(a) + len(b)
    assert set(np.unique(both.scale_index)) == {0, 1}
    assert len(concat_arrows([])) == 0
    assert grid_step((100, 100), 100) == 10


def test_reliable_marks_arrows_over_the_inconsistency_threshold():
    f = _field(2, 40, 50)
    assert arrows_for_scale(f, 0, arrows_per_frame=200).reliable.all()  # no confidence data: all reliable
    inc = np.zeros((2, 40, 50), np.float32)
    inc[1, 10:20, 20:30] = 3.0  # pair 1 (drawn on frame 2) disagrees in one block
    inc[0, :, :25] = np.nan  # pair 0: no answer on the left half
    arrows = arrows_for_scale(f, 0, arrows_per_frame=200, inconsistency=inc, threshold=1.0)
    ys, xs = arrows.data[:, 0, 2].astype(int), arrows.data[:, 0, 3].astype(int)
    in_block = (arrows.frame == 2) & (ys >= 10) & (ys < 20) & (xs >= 20) & (xs < 30)
    assert in_block.any() and (~in_block).any()
    nan_half = (arrows.frame == 1) & (xs < 25)
    assert nan_half.any()
    expected = ~in_block & ~nan_half  # NaN counts as unreliable
    np.testing.assert_array_equal(arrows.reliable, expected)
    assert "reliable" in arrows.features
    assert not arrows_for_scale(f, 0, arrows_per_frame=200, inconsistency=inc, threshold=0.5).reliable[in_block].any()
    assert arrows_for_scale(f, 0, arrows_per_frame=200, inconsistency=inc, threshold=5.0).reliable[in_block].all()
    assert len(concat_arrows([arrows, arrows]).reliable) == 2 * len(arrows)
    with pytest.raises(ValueError):
        arrows_for_scale(f, 0, inconsistency=inc[:1])
