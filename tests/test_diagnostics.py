"""Unconverged-run warnings (issue 12)."""

import numpy as np

from napari_nmsr.core.analysis.analytic import lamb_oseen_field
from napari_nmsr.core.diagnostics import convergence_warnings, field_uniformity


def test_one_shift_everywhere_is_flagged_and_a_vortex_is_not():
    shift = np.zeros((3, 2, 32, 32), np.float32)
    shift[:, 0] = 1.5
    shift[:, 1] = -0.5
    shift += np.random.default_rng(0).normal(0, 0.01, shift.shape).astype(np.float32)
    ratio, size = field_uniformity(shift)
    assert ratio < 0.05 and abs(size - np.hypot(1.5, 0.5)) < 0.05
    cc = np.array([[0.5, 0.5, 0.5], [0.7, 0.7, 0.7]])
    (warning,) = convergence_warnings(shift[None], cc[-1:], (1.0,))
    assert "nearly uniform" in warning
    vortex = np.stack([lamb_oseen_field((32, 32), (16, 16), 2.0, 6.0)] * 3).astype(np.float32)
    assert field_uniformity(vortex)[0] > 0.5
    assert convergence_warnings(np.stack([vortex, vortex]), cc, (0.5, 1.0)) == []


def test_mean_cc_that_does_not_move_between_scales_is_flagged():
    rng = np.random.default_rng(1)
    fields = rng.normal(0, 1, (3, 2, 2, 16, 16)).astype(np.float32)
    flat = np.array([[0.61, 0.61], [0.6105, 0.6105], [0.6108, 0.6108]])
    (warning,) = convergence_warnings(fields, flat, (0.25, 0.5, 1.0))
    assert "barely moved" in warning
    rising = np.array([[0.5, 0.5], [0.6, 0.6], [0.7, 0.7]])
    assert convergence_warnings(fields, rising, (0.25, 0.5, 1.0)) == []
