"""The white-noise test (core/noise.py) the refinement runs before it resamples frame t."""

import dataclasses

import numpy as np
import torch

from napari_nmsr.core.losses import gaussian_smooth
from napari_nmsr.core.noise import WHITE_FLATNESS, incoherent_flatness, mirror_extend
from napari_nmsr.core.refine import RefineSettings, denoising_sigma, work_size
from test_refine import stretched_noisy_pair


def test_mirror_extension_tiles_each_frame_with_its_mirror_images():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    e = mirror_extend(x)
    assert e.shape == (1, 1, 4, 6)
    assert torch.equal(e[..., :3, :4], x)
    assert torch.equal(e[0, 0, 0], torch.tensor([0.0, 1, 2, 3, 2, 1]))  # a row, then back without repeating the ends
    assert torch.equal(e[0, 0, :, 0], torch.tensor([0.0, 4, 8, 4]))


def band_limited_noise_pair(seed, amount=0.3):
    """The stretched speckle pair without pixel noise, plus noise shaped like the speckle (the same blur)."""
    moving, fixed, truth = stretched_noisy_pair(seed, noise=0.0)
    rng = np.random.default_rng(seed)
    shaped = [gaussian_smooth(torch.from_numpy(rng.standard_normal((1, 1, 96, 96)).astype(np.float32)), 1.2) * amount
              for _ in range(2)]
    return moving + shaped[0], fixed + shaped[1], truth


def test_white_pixel_noise_is_flat_and_noise_shaped_like_the_speckle_is_not():
    for seed in range(2):
        moving, fixed, truth = stretched_noisy_pair(seed, noise=0.05)
        white = incoherent_flatness(moving, fixed, torch.from_numpy(truth))
        shaped = incoherent_flatness(*band_limited_noise_pair(seed)[:2], torch.from_numpy(truth))
        assert white > 3 * WHITE_FLATNESS  # measured 0.73-0.84
        assert shaped < 0.1 * WHITE_FLATNESS  # measured 0.001
    assert incoherent_flatness(moving[..., :3, :3], fixed[..., :3, :3], torch.zeros(1, 2, 3, 3)) == 0.0  # too small


def test_the_refinement_blurs_its_frames_only_where_the_noise_is_white():
    settings = RefineSettings(steps=10, grid=0.125, smoothness=500.0, lr=0.05, max_px=256, radius=6, mode="bicubic",
                              denoise=0.8)
    work = work_size((96, 96), 256)
    moving, fixed, truth = stretched_noisy_pair(0, noise=0.1)
    start = torch.from_numpy(truth)
    assert denoising_sigma(start, moving, fixed, settings, work) == 0.8
    moving, fixed, _ = band_limited_noise_pair(0)
    assert denoising_sigma(start, moving, fixed, settings, work) == 0.0
    off = dataclasses.replace(settings, denoise=0.0)
    moving, fixed, _ = stretched_noisy_pair(0, noise=0.1)
    assert denoising_sigma(start, moving, fixed, off, work) == 0.0  # 0: never


def test_the_refinement_says_when_it_blurred_its_frames():
    from napari_nmsr.core.refine import refine_fields

    settings = RefineSettings(steps=2, grid=0.125, smoothness=500.0, lr=0.05, max_px=256, radius=6, mode="bicubic",
                              denoise=0.8)
    for pair, blurred in ((stretched_noisy_pair(0, noise=0.1), True), (band_limited_noise_pair(0), False)):
        moving, fixed, truth = pair
        notes = []
        for _ in refine_fields(torch.from_numpy(truth).clone(), moving, fixed, None, settings, notes=notes):
            pass
        assert notes == (["The refinement blurred both frames by 0.8 px first: the noise between them is white, "
                          "and resampling it would pull the fit."] if blurred else [])
