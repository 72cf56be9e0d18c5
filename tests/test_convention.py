"""The one field convention: warping, composition, resizing, point sampling."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_nmsr.core.convention import (
    compose, motion_from_field, resize_field, resize_image, sample_field, warp, warp_frames,
)


def speckle(size=64, seed=0, sigma=1.5):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((size, size)), sigma)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def smooth_field(size=64, amp=3.0, seed=1):
    rng = np.random.default_rng(seed)
    f = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), 8) for _ in range(2)])
    return (amp * f / np.abs(f).max()).astype(np.float32)


def t4(a):
    return torch.from_numpy(np.ascontiguousarray(a))[None] if a.ndim == 3 else torch.from_numpy(a)[None, None]


def test_constant_field_pulls_from_displaced_position():
    img = speckle()
    u = np.zeros((2, 64, 64), np.float32)
    u[0], u[1] = 2.0, -3.0  # dy, dx
    out = warp(t4(img), t4(u))[0, 0].numpy()
    # pull: out(p) = img(p + u)  <=>  out = img shifted by -u
    ref = ndimage.shift(img, (-2.0, 3.0), order=1, mode="nearest")
    assert np.abs(out - ref)[8:-8, 8:-8].max() < 1e-5


def test_rotation_field_matches_scipy_rotation():
    img = speckle(96)
    c = (96 - 1) / 2
    theta = np.deg2rad(5.0)
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float64)
    # pull field of a counter-clockwise-on-screen rotation by theta
    ys, xs = yy - c, xx - c
    src_y = c + np.cos(theta) * ys + np.sin(theta) * xs
    src_x = c - np.sin(theta) * ys + np.cos(theta) * xs
    u = np.stack([src_y - yy, src_x - xx]).astype(np.float32)
    out = warp(t4(img), t4(u))[0, 0].numpy()
    ref = ndimage.map_coordinates(img, [src_y, src_x], order=1, mode="nearest")
    assert np.abs(out - ref)[10:-10, 10:-10].max() < 1e-4


def test_composition_equals_warping_twice():
    # A smooth image keeps the blur of resampling twice small next to the
    # difference between the two composition orders.
    img = t4(speckle(64, sigma=4))
    a, b = t4(smooth_field(amp=6, seed=1)), t4(smooth_field(amp=6, seed=2))
    twice = warp(warp(img, a), b)
    once = warp(img, compose(a, b))
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    err = (twice - once)[inner].abs().mean().item()
    # The paper's printed eq. (4), a(p) + b(p + a(p)), is the other order:
    paper_eq4 = a + warp(b, a)
    err_paper = (twice - warp(img, paper_eq4))[inner].abs().mean().item()
    assert err < 0.002
    assert err_paper > 5 * err  # the printed order is measurably wrong for the procedure


def test_resize_field_scales_values_on_align_corners_grid():
    u = torch.zeros(1, 2, 17, 33)
    u[:, 0], u[:, 1] = 1.0, 2.0
    big = resize_field(u, (65, 129))
    assert torch.allclose(big[:, 0], torch.full_like(big[:, 0], 4.0))
    assert torch.allclose(big[:, 1], torch.full_like(big[:, 1], 8.0))


def test_coarse_translation_survives_resizing():
    # A translation measured at 1/4 scale and brought back equals the full-scale one.
    img = speckle(129)
    shifted = ndimage.shift(img, (4.0, -8.0), order=3, mode="nearest").astype(np.float32)
    small = resize_image(t4(img), (33, 33))
    u_small = torch.zeros(1, 2, 33, 33)
    u_small[:, 0], u_small[:, 1] = -1.0, 2.0
    u_full = resize_field(u_small, (129, 129))
    out = warp(t4(img), u_full)[0, 0].numpy()
    assert np.abs(out - shifted)[16:-16, 16:-16].mean() < 0.01
    assert small.shape[-2:] == (33, 33)


def test_sample_field_bilinear_and_border():
    u = np.zeros((2, 4, 4), np.float32)
    u[1] = np.arange(4, dtype=np.float32)[None, :]  # dx = column index
    pts = np.array([[1.0, 1.5], [2.0, 10.0]], np.float32)
    vals = sample_field(u, pts)
    assert isinstance(vals, np.ndarray)
    assert vals[0, 1] == pytest.approx(1.5)
    assert vals[1, 1] == pytest.approx(3.0)  # outside: border value


def test_motion_is_minus_pull_field_and_warp_frames_shape():
    f = smooth_field()
    assert np.array_equal(motion_from_field(f), -f)
    frames = np.stack([speckle(seed=s) for s in range(3)])
    fields = np.zeros((2, 2, 64, 64), np.float32)
    out = warp_frames(frames, fields)
    assert out.shape == (2, 64, 64)
    assert np.allclose(out, frames[:2], atol=1e-6)


def test_warp_rejects_mismatched_field():
    with pytest.raises(ValueError, match="does not match"):
        warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 9, 8))
