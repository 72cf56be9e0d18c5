"""Vorticity: sign convention (CCW on screen = positive), 2 x angular velocity, units, bad input."""

import numpy as np
import pytest
import torch

from napari_nmsr.core.analysis import vorticity
from napari_nmsr.core.analysis.analytic import rigid_rotation_field, translation_field
from napari_nmsr.core.convention import warp
from napari_nmsr.core.errors import MaskError, ResultFileError

SHAPE = (48, 64)


def test_rotation_field_turns_content_counter_clockwise_on_screen():
    # A blob right of the centre must end up ABOVE it (smaller row) after a
    # quarter turn counter-clockwise as seen with rows pointing down.
    img = np.zeros(SHAPE, np.float32)
    cy, cx = (SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    img += np.exp(-((yy - cy) ** 2 + (xx - cx - 15) ** 2) / 8.0)
    field = rigid_rotation_field(SHAPE, np.pi / 2)
    out = warp(torch.from_numpy(img)[None, None], torch.from_numpy(field)[None])[0, 0].numpy()
    peak = np.unravel_index(np.argmax(out), out.shape)
    assert abs(peak[0] - (cy - 15)) <= 1 and abs(peak[1] - cx) <= 1


@pytest.mark.parametrize("angle", [0.03, -0.08])
def test_rigid_rotation_vorticity_is_uniform_twice_the_angular_velocity(angle):
    fields = np.stack([rigid_rotation_field(SHAPE, angle)] * 2)
    w = vorticity(fields)
    assert w.shape == (2, *SHAPE)
    assert np.sign(w.mean()) == np.sign(angle)
    np.testing.assert_allclose(w, 2 * angle, rtol=0.01)


def test_units_per_second_and_anisotropic_spacing():
    fields = rigid_rotation_field(SHAPE, 0.05)[None]
    per_frame = vorticity(fields)
    per_s = vorticity(fields, frame_interval_s=0.02)
    np.testing.assert_allclose(per_s, per_frame / 0.02, rtol=1e-5)
    # isotropic spacing does not change a rate of rotation
    np.testing.assert_allclose(vorticity(fields, pixel_spacing_mm=(0.3, 0.3)), per_frame, rtol=1e-5)


def test_translation_has_no_vorticity():
    w = vorticity(translation_field(SHAPE, (2.5, -1.0))[None])
    assert np.abs(w).max() < 1e-5


def test_mask_limits_map_and_fill():
    mask = np.zeros(SHAPE, bool)
    mask[10:30, 20:40] = True
    w = vorticity(rigid_rotation_field(SHAPE, 0.05)[None], mask, fill=np.nan)
    assert np.isnan(w[0][~mask]).all() and np.isfinite(w[0][mask]).all()


def test_bad_input_gives_clear_errors():
    f = rigid_rotation_field(SHAPE, 0.05)[None].copy()
    f[0, 0, 3, 3] = np.nan
    with pytest.raises(ResultFileError, match="NaN"):
        vorticity(f)
    with pytest.raises(MaskError, match="pixels"):
        vorticity(rigid_rotation_field(SHAPE, 0.05)[None], np.ones((10, 10), bool))
    with pytest.raises(MaskError, match="empty"):
        vorticity(rigid_rotation_field(SHAPE, 0.05)[None], np.zeros(SHAPE, bool))
