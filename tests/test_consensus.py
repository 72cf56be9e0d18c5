"""The temporal consensus stage (core/consensus.py) and how the engine runs it."""

import numpy as np
import pytest
import torch

from napari_nmsr.core.consensus import ConsensusSettings, temporal_consensus
from napari_nmsr.core.convention import warp
from napari_nmsr.core.losses import gaussian_smooth
from napari_nmsr.core.register import PRESETS, RegistrationConfig, register


def speckle(size, seed=0, sigma=1.2):
    rng = np.random.default_rng(seed)
    img = gaussian_smooth(torch.from_numpy(rng.random((1, 1, size, size), dtype=np.float32)), sigma)[0, 0].numpy()
    return (img - img.min()) / (img.max() - img.min())


def settings(**kw):
    base = dict(tolerance=0.03, max_px=1.0, radius=(2, 4), mode="bicubic", work_px=256)
    base.update(kw)
    return ConsensusSettings(**base)


def sequence(shifts, size=96, seed=1, noise=0.0):
    """Frames of one speckle texture, frame t+1 = frame t pulled through a known field (a shift of
    ``shifts[t]`` px along y and a small swirl of the same size every pair), and those fields."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    swirl = 0.3 * np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (0.3 * size) ** 2)
    rng = np.random.default_rng(seed)
    frames, fields = [torch.from_numpy(speckle(size, seed))[None, None]], []
    for s in shifts:
        f = np.stack((np.full_like(yy, -s) - swirl, swirl * (xx - c) / size)).astype(np.float32)
        fields.append(f)
        frames.append(warp(frames[-1], torch.from_numpy(f[None]), "bicubic")
                      + torch.from_numpy(rng.normal(0, noise, (1, 1, size, size)).astype(np.float32)))
    frames = torch.cat(frames)
    return frames[:-1], frames[1:], np.stack(fields)


def smooth_noise(n, size, amp, seed=5):
    rng = np.random.default_rng(seed)
    noise = gaussian_smooth(torch.from_numpy(rng.normal(0, 1, (n, 2, size, size)).astype(np.float32)), 4.0)
    return amp * noise / noise.std()


def epe(a, b, m=10):
    return float(np.hypot(*np.moveaxis((a - b)[:, :, m:-m, m:-m], 1, 0)).mean())


def test_noise_that_does_not_carry_over_from_pair_to_pair_is_averaged_out_of_a_steady_motion():
    moving, fixed, truth = sequence([0.5] * 6)
    noisy = torch.from_numpy(truth) + smooth_noise(6, 96, 0.15)
    field = noisy.clone()
    assert temporal_consensus(field, moving, fixed, settings()) is field  # in place
    before, after = epe(noisy.numpy(), truth), epe(field.numpy(), truth)
    assert after < 0.75 * before  # the mean of three independent errors: 1/sqrt(3) where every pixel takes it


def test_motion_that_turns_back_or_jumps_keeps_its_own_fields():
    # probe motion that reverses every pair (2 px): its neighbours' mean is pixels away, never taken
    moving, fixed, truth = sequence([2.0, -2.0, 2.0, -2.0])
    field = torch.from_numpy(truth.copy())
    temporal_consensus(field, moving, fixed, settings())
    assert np.abs(field.numpy() - truth).max() < 1e-6
    # where the frames have no texture they cannot refuse anything: the cap alone keeps the fields
    flat = torch.cat([moving, fixed[-1:]]).clone()
    flat[..., :, 40:] = 0.5
    field = torch.from_numpy(truth.copy())
    temporal_consensus(field, flat[:-1], flat[1:], settings())
    assert np.abs(field.numpy() - truth).max() < 1e-6
    # a sub-pixel jump (0 / 0.8 / 0 px): the mean is within the cap but the frames refuse it
    moving, fixed, truth = sequence([0.0, 0.8, 0.0, 0.8, 0.0])
    field = torch.from_numpy(truth.copy())
    temporal_consensus(field, moving, fixed, settings())
    assert epe(field.numpy(), truth) < 0.05
    padded = np.concatenate([truth[:1], truth, truth[-1:]])
    mean = (padded[:-2] + padded[1:-1] + padded[2:]) / 3  # the candidate: within the cap, 0.3-0.5 px off
    assert np.abs(mean - truth).max() < 1.0 and epe(mean, truth) > 0.25


def test_a_jittering_probe_over_coarse_grain_keeps_its_own_fields():
    # Each pair's motion a random sub-pixel jump (a hand's jitter) over texture whose grain is coarse
    # enough that a third of a pixel costs little match: the frames cannot refuse the neighbours'
    # mean there, the neighbours' disagreement (about a pixel) does.
    yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
    rng = np.random.default_rng(3)
    jumps = rng.normal(0, 0.6, size=(6, 2)).astype(np.float32)
    frames = [torch.from_numpy(speckle(96, 4, sigma=8.0))[None, None]]
    truth = []
    for j in jumps:
        f = np.stack((np.full_like(yy, j[0]), np.full_like(xx, j[1])))
        truth.append(f)
        noise = torch.from_numpy(rng.normal(0, 0.05, (1, 1, 96, 96)).astype(np.float32))
        frames.append(warp(frames[-1], torch.from_numpy(f[None]), "bicubic") + noise)
    frames, truth = torch.cat(frames), np.stack(truth)
    field = torch.from_numpy(truth.copy())
    temporal_consensus(field, frames[:-1], frames[1:], settings())
    assert epe(field.numpy(), truth) < 0.01  # the frames' test alone let 0.04 px through


def test_the_stage_judges_frames_blurred_as_the_refinement_blurred_them():
    # White pixel noise: the refinement blurred both frames before fitting them (refine.denoising_sigma),
    # and the engine hands the consensus that blur, so that both judge the same frames.
    moving, fixed, truth = sequence([0.5] * 5, noise=0.08)
    noisy = torch.from_numpy(truth) + smooth_noise(5, 96, 0.15)
    blurred = temporal_consensus(noisy.clone(), moving, fixed, settings(blur=0.8))
    by_hand = temporal_consensus(noisy.clone(), gaussian_smooth(moving, 0.8), gaussian_smooth(fixed, 0.8), settings())
    assert torch.allclose(blurred, by_hand, atol=1e-6)  # 96 px: judged at full size, so the same frames
    plain = temporal_consensus(noisy.clone(), moving, fixed, settings())
    assert (blurred - plain).abs().max() > 0.01  # the blur changes what the frames allow


def test_one_pair_a_zero_tolerance_or_a_cancel_leave_the_fields_alone():
    moving, fixed, truth = sequence([0.5] * 3)
    noisy = torch.from_numpy(truth) + smooth_noise(3, 96, 0.15)
    one = noisy[:1].clone()
    temporal_consensus(one, moving[:1], fixed[:1], settings())
    assert torch.equal(one, noisy[:1])
    off = noisy.clone()
    temporal_consensus(off, moving, fixed, settings(tolerance=0.0))
    assert torch.equal(off, noisy)

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    cancelled = noisy.clone()
    with pytest.raises(Stop):
        temporal_consensus(cancelled, moving, fixed, settings(), check=stop)
    assert torch.equal(cancelled, noisy)


def test_pairs_judged_in_chunks_get_the_same_fields(monkeypatch):
    from napari_nmsr.core import consensus

    moving, fixed, truth = sequence([0.5] * 5)
    noisy = torch.from_numpy(truth) + smooth_noise(5, 96, 0.15)
    whole = temporal_consensus(noisy.clone(), moving, fixed, settings())
    monkeypatch.setitem(consensus.PIXELS_AT_ONCE, "cpu", 2 * 96 * 96)  # two pairs at a time: three chunks
    chunked = temporal_consensus(noisy.clone(), moving, fixed, settings())
    assert torch.allclose(whole, chunked, atol=1e-5)  # every candidate is made from the fields before the stage


def test_large_frames_are_judged_at_the_refinements_size():
    moving, fixed, truth = sequence([0.5] * 4, size=96)
    noisy = torch.from_numpy(truth) + smooth_noise(4, 96, 0.15)
    small = temporal_consensus(noisy.clone(), moving, fixed, settings(work_px=48))
    assert epe(small.numpy(), truth) < 0.8 * epe(noisy.numpy(), truth)


def test_the_engine_ends_with_the_consensus_and_the_paper_preset_has_none(monkeypatch):
    from napari_nmsr.core import register as engine

    moving, fixed, _ = sequence([0.5] * 4, size=64)
    frames = torch.cat([moving[:, 0], fixed[-1:, 0]]).clamp(0, 1).numpy()  # bicubic overshoots a little
    cfg = dict(scales=(0.5, 1.0), steps=(3, 0), encoder=(8, 8), decoder=(8, 8), affine=False, min_scale_px=16,
               refine_steps=5, refine_fine_steps=0, crop=False)
    calls = []

    def spy(field, moving, fixed, settings, check=None):  # a known change the result must carry
        calls.append((field.clone(), settings))
        field += 0.25
        return field

    monkeypatch.setattr(engine, "temporal_consensus", spy)
    result = register(frames, config=RegistrationConfig(**cfg))
    assert len(calls) == 1 and calls[0][1] == ConsensusSettings(0.1, 1.0, (2, 4), "bicubic", 256)
    before = calls[0][0].numpy()
    assert before.shape == (4, 2, 64, 64)
    np.testing.assert_allclose(result.fields[-1], before + 0.25, atol=1e-6)  # after the refinement, last
    register(frames, config=RegistrationConfig(consensus_tolerance=0.0, **cfg))
    assert len(calls) == 1
    assert PRESETS["paper"]["consensus_tolerance"] == 0.0
    assert RegistrationConfig().consensus_tolerance > 0  # the default runs it
    # a result file saved before the stage existed was made without it (the consistency check re-runs it)
    saved = RegistrationConfig().to_dict()
    assert RegistrationConfig.from_saved(saved) == RegistrationConfig()
    del saved["consensus_tolerance"]
    assert RegistrationConfig.from_saved(saved).consensus_tolerance == 0.0
    assert RegistrationConfig().consensus_denoise  # a file made before the thirty-seventh session judged unblurred
    del saved["consensus_denoise"]
    assert not RegistrationConfig.from_saved(saved).consensus_denoise
    with pytest.raises(ValueError, match="consensus_tolerance"):
        RegistrationConfig(consensus_tolerance=1.0)
    for bad in (-1.0, 0.0):  # the stage is turned off by its tolerance; a zero cap would only hide that
        with pytest.raises(ValueError, match="consensus_max_px"):
            RegistrationConfig(consensus_max_px=bad)



@pytest.mark.parametrize("denoise", [True, False])
def test_the_engine_hands_the_consensus_the_refinements_blur(monkeypatch, denoise):
    from napari_nmsr.core import register as engine

    moving, fixed, _ = sequence([0.5] * 4, size=64, noise=0.08)  # white pixel noise: the refinement blurs
    frames = torch.cat([moving[:, 0], fixed[-1:, 0]]).clamp(0, 1).numpy()
    cfg = dict(scales=(0.5, 1.0), steps=(3, 0), encoder=(8, 8), decoder=(8, 8), affine=False, min_scale_px=16,
               refine_steps=3, refine_fine_steps=0, crop=False, consensus_denoise=denoise)
    seen = {}
    refine = engine.refine_fields

    def refine_spy(*args, **kw):
        seen["refine"] = args[8] if len(args) > 8 else kw.get("blur")
        return refine(*args, **kw)

    def consensus_spy(field, moving, fixed, settings, check=None):
        seen["consensus"] = settings.blur
        return field

    monkeypatch.setattr(engine, "refine_fields", refine_spy)
    monkeypatch.setattr(engine, "temporal_consensus", consensus_spy)
    result = register(frames, config=RegistrationConfig(**cfg))
    assert seen["refine"] == 0.8 == RegistrationConfig().refine_denoise  # the engine decided, the stage blurred
    assert any("blurred both frames by 0.8 px" in note for note in result.notes)
    assert seen["consensus"] == (0.8 if denoise else 0.0)
    # no refinement: nothing was blurred, so the consensus judges the frames as they are
    register(frames, config=RegistrationConfig(**{**cfg, "refine_steps": 0}))
    assert seen["consensus"] == 0.0
