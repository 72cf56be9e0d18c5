"""Lagrangian strain: zero for rigid motion, the known value for a uniform contraction."""

import numpy as np
import pytest

from napari_nmsr.core.analysis import composed_fields, contour_strain, mask_contour, strain_maps
from napari_nmsr.core.analysis.analytic import rigid_rotation_field, translation_field

SHAPE = (64, 72)
CENTRE = ((SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2)


def _disc(r=14):
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    return (yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2 < r * r


def _scaling_field(k):
    """Pull field of a uniform scaling by k per frame about the image centre."""
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float32)
    return np.stack(((yy - CENTRE[0]) * (1 / k - 1), (xx - CENTRE[1]) * (1 / k - 1))).astype(np.float32)


def test_composed_translations_add_up():
    f = np.stack([translation_field(SHAPE, (1.0, 0.5)), translation_field(SHAPE, (0.5, -2.0))])
    c = composed_fields(f)
    np.testing.assert_allclose(c[1, :, 5:-5, 5:-5].mean(axis=(1, 2)), [-1.5, 1.5], atol=1e-5)


@pytest.mark.parametrize("field", [translation_field(SHAPE, (1.7, -0.6)), rigid_rotation_field(SHAPE, 0.04)])
def test_rigid_motion_has_zero_strain(field):
    fields = np.stack([field] * 3)
    maps = strain_maps(fields, _disc())
    for v in maps.values():
        assert np.abs(v).max() < 0.05  # percent
    s = contour_strain(fields, mask_contour(_disc()))["strain"]
    assert np.abs(s).max() < 0.1


def test_uniform_contraction_gives_known_strain():
    k = 0.95
    fields = np.stack([_scaling_field(k)] * 2)
    maps = strain_maps(fields, _disc(), centre_yx=CENTRE)
    inner = _disc(10)
    for t, expect in enumerate((50 * (k**2 - 1), 50 * (k**4 - 1))):  # Green-Lagrange, %
        for key in ("err", "ecc", "e1", "e2"):
            np.testing.assert_allclose(maps[key][t][inner], expect, atol=0.05)
    s = contour_strain(fields, mask_contour(_disc()))["strain"]
    np.testing.assert_allclose(s, [0, 100 * (k - 1), 100 * (k * k - 1)], atol=0.1)


def test_radial_and_circumferential_are_separated():
    # stretch along rows only: about a centre, radial strain is large on the
    # vertical axis (above the centre), circumferential strain large beside it
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float32)
    f = np.stack(((yy - CENTRE[0]) * (1 / 1.1 - 1), np.zeros_like(xx)))[None]
    maps = strain_maps(f, centre_yx=CENTRE)
    above = (int(CENTRE[0]) - 12, int(CENTRE[1]))
    beside = (int(CENTRE[0]), int(CENTRE[1]) + 12)
    expect = 50 * (1.1**2 - 1)
    assert maps["err"][0][above] == pytest.approx(expect, abs=0.3) and abs(maps["ecc"][0][above]) < 0.3
    assert maps["ecc"][0][beside] == pytest.approx(expect, abs=0.3) and abs(maps["err"][0][beside]) < 0.3


def test_wall_mask_contour_is_the_inner_border():
    wall = _disc(20) & ~_disc(12)
    c = mask_contour(wall)
    r = np.hypot(c[:, 0] - CENTRE[0], c[:, 1] - CENTRE[1])
    assert r.mean() == pytest.approx(12, abs=1)
