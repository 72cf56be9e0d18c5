"""The per-pair refinement stage (core/refine.py) and how the engine runs it."""

import numpy as np
import pytest
import torch

from napari_nmsr.core.convention import warp
from napari_nmsr.core.losses import gaussian_smooth
from napari_nmsr.core.refine import RefineSettings, grid_size, refine_fields, work_size
from napari_nmsr.core.register import PRESETS, Progress, RegistrationConfig, ScaleDone, register, register_iter


def speckle(size, seed=0, sigma=1.2):
    rng = np.random.default_rng(seed)
    img = gaussian_smooth(torch.from_numpy(rng.random((1, 1, size, size), dtype=np.float32)), sigma)[0, 0].numpy()
    return (img - img.min()) / (img.max() - img.min())


def smooth_pair(size=96, seed=3):
    """Frame t, frame t+1 = frame t pulled through a smooth swirl (~1 px), and that pull field."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    r2 = ((yy - c) ** 2 + (xx - c) ** 2) / (0.25 * size) ** 2
    amp = 1.2 * np.exp(-r2)
    field = np.stack((amp * (xx - c) / size * 4, -amp * (yy - c) / size * 4)).astype(np.float32)[None]
    moving = torch.from_numpy(speckle(size, seed))[None, None]
    fixed = warp(moving, torch.from_numpy(field))
    return moving, fixed, field


def settings(**kw):
    base = dict(steps=100, grid=0.125, smoothness=500.0, lr=0.05, max_px=256, radius=6, mode="bilinear")
    base.update(kw)
    return RefineSettings(**base)


def epe(a, b, m=8):
    return float(np.hypot(*(a - b)[0, :, m:-m, m:-m]).mean())


def test_refinement_recovers_a_smooth_swirl_and_leaves_an_exact_field_alone():
    moving, fixed, truth = smooth_pair()
    field = torch.zeros(1, 2, 96, 96)
    list(refine_fields(field, moving, fixed, None, settings()))
    assert epe(field.numpy(), truth) < 0.6 * epe(np.zeros_like(truth), truth)
    exact = torch.from_numpy(truth.copy())
    list(refine_fields(exact, moving, fixed, None, settings()))
    assert epe(exact.numpy(), truth) < 0.1  # no speckle fit where the field is already right


def test_refinement_runs_pair_chunks_yields_every_step_and_reads_the_loss_once_per_chunk(monkeypatch):
    from napari_nmsr.core import refine

    monkeypatch.setitem(refine.PIXELS_AT_ONCE, "cpu", 96 * 96)  # one pair per chunk
    moving, fixed, _ = smooth_pair()
    moving, fixed = moving.repeat(3, 1, 1, 1), fixed.repeat(3, 1, 1, 1)
    field = torch.zeros(3, 2, 96, 96)
    events = list(refine_fields(field, moving, fixed, None, settings(steps=5)))
    assert [e[0] for e in events] == list(range(1, 16)) and all(e[1] == 15 for e in events)
    assert [np.isfinite(e[2]) for e in events] == [s % 5 == 0 for s in range(1, 16)]
    assert np.allclose(field[0], field[1], atol=1e-5) and field.abs().sum() > 0  # same pair, same refinement


def test_a_pair_is_refined_the_same_whatever_chunk_it_shares(monkeypatch):
    # A CPU refines a few pairs at a time, a GPU all of them: each pair's loss is summed over the
    # chunk, not averaged, so its gradient and Adam steps (whose epsilon is not negligible against
    # these gradients) do not depend on the pixel budget. Averaged, the same pair moved by 0.13 px
    # on a tuning case between one pair per chunk and three.
    from napari_nmsr.core import refine

    moving, fixed, _ = smooth_pair()
    moving = torch.cat([moving, torch.flip(moving, (-1,)), moving.transpose(-1, -2)])
    fixed = torch.cat([fixed, torch.flip(fixed, (-1,)), fixed.transpose(-1, -2)])
    weights = RefineSettings(steps=20, grid=0.125, smoothness=500.0, lr=0.05, max_px=256, radius=(2, 4),
                             mode="bicubic", fine_steps=10, smoothness_deforming=100.0)
    deforming = torch.tensor([True, False, True])
    fields = []
    for pairs in (1, 3):
        monkeypatch.setitem(refine.PIXELS_AT_ONCE, "cpu", pairs * 96 * 96)
        field = torch.zeros(3, 2, 96, 96)
        list(refine_fields(field, moving, fixed, None, weights, deforming=deforming))
        fields.append(field)
    assert fields[0].abs().max() > 0.1
    torch.testing.assert_close(fields[0], fields[1], rtol=0, atol=1e-4)


def test_refinement_works_at_its_capped_size_and_its_grid():
    assert work_size((768, 1024), 256) == (256, 341) and work_size((120, 90), 256) == (120, 90)
    assert grid_size((384, 384), 0.125) == (48, 48) and grid_size((16, 16), 0.125) == (4, 4)
    moving, fixed, truth = smooth_pair()
    field = torch.zeros(1, 2, 96, 96)
    list(refine_fields(field, moving, fixed, None, settings(max_px=48)))  # refined at 48 px, applied at 96
    assert epe(field.numpy(), truth) < 0.7 * epe(np.zeros_like(truth), truth)


def test_the_engine_ends_with_the_refinement_reports_it_and_the_paper_preset_has_none():
    moving, fixed, _ = smooth_pair(64)
    frames = torch.cat([moving[0], fixed[0]]).numpy()
    cfg = dict(scales=(0.5, 1.0), steps=(3, 2), encoder=(8, 8), decoder=(8, 8), affine=False, min_scale_px=16,
               extend_steps=0)
    for fine, n in ((0, 9), (5, 14)):  # the scale's 2 steps, the refinement's 7, the fine pass's
        events = list(register_iter(frames, config=RegistrationConfig(refine_steps=7, refine_fine_steps=fine, **cfg)))
        last = [e for e in events if isinstance(e, Progress) and e.scale_index == 1]
        assert [e.step for e in last] == list(range(1, n + 1)) and {e.n_steps for e in last} == {n}
        assert last[-1].overall == pytest.approx(1.0)
        done = [e for e in events if isinstance(e, ScaleDone)]
        assert done[-1].steps_run == n
    plain = register(frames, config=RegistrationConfig(refine_steps=0, **cfg))
    assert not np.allclose(done[-1].field, plain.fields[-1])  # the stage changed the final field
    # Pairs refined in several chunks run the stage's steps once per chunk; the scale's count stays n.
    import napari_nmsr.core.refine as refine_module

    three = np.concatenate([frames, frames[::-1], frames])  # 5 pairs
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(refine_module.PIXELS_AT_ONCE, "cpu", 2 * 64 * 64)  # two pairs per chunk: three chunks
        patch.setitem(refine_module.PIXELS_AT_ONCE, "cuda", 2 * 64 * 64)
        patch.setitem(refine_module.PIXELS_AT_ONCE, "mps", 2 * 64 * 64)
        events = list(register_iter(three, config=RegistrationConfig(refine_steps=7, refine_fine_steps=5, **cfg)))
    last = [e for e in events if isinstance(e, Progress) and e.scale_index == 1]
    steps = [e.step for e in last]
    assert {e.n_steps for e in last} == {14} and steps == sorted(steps) and steps[-1] == 14
    assert len(steps) > 3 * 12  # every step of every chunk was reported
    assert PRESETS["paper"]["refine_steps"] == 0
    with pytest.raises(ValueError, match="refine_steps"):
        RegistrationConfig(refine_steps=-1)
    with pytest.raises(ValueError, match="refine_radius"):
        RegistrationConfig(refine_radius=0)
    with pytest.raises(ValueError, match="unknown refine_interpolation 'nearest'"):
        RegistrationConfig(refine_interpolation="nearest")


def test_the_stage_reads_its_window_and_resampling_from_the_config():
    cfg = RegistrationConfig()
    s = RefineSettings.from_config(cfg)
    assert (s.radius, s.mode) == (cfg.refine_radius, cfg.refine_interpolation) == ((2, 4), "bicubic")
    assert s.denoise == cfg.refine_denoise == 0.8
    assert RefineSettings.from_config(RegistrationConfig(refine_denoise=0)).denoise == 0.0
    assert RefineSettings.from_config(RegistrationConfig(refine_interpolation="bilinear", refine_radius=7)).radius == 7
    assert RegistrationConfig(refine_radius=[3, 5]).refine_radius == (3, 5)  # a list (from JSON) is a tuple
    with pytest.raises(ValueError, match="refine_radius"):
        RegistrationConfig(refine_radius=(2, 0))


def test_the_match_of_several_windows_is_the_mean_of_their_local_ncc_maps():
    from napari_nmsr.core.losses import local_cc_map
    from napari_nmsr.core.refine import match_map

    a = torch.from_numpy(speckle(48, 1))[None, None]
    b = torch.from_numpy(speckle(48, 2))[None, None] * 0.3 + a
    two, four = local_cc_map(a, b, 2), local_cc_map(a, b, 4)
    assert not torch.allclose(two, four)  # the windows see different things
    assert torch.allclose(match_map(a, b, (2, 4)), 0.5 * (two + four), atol=1e-5)
    assert torch.equal(match_map(a, b, 4), four)
    from napari_nmsr.core.losses import box_mean, box_means

    x = torch.from_numpy(speckle(37, 4))[None, None].repeat(2, 1, 1, 1)[:, :, :, :29]  # not square
    for got, r in zip(box_means(x, (1, 3, 6)), (1, 3, 6)):  # one summed-area table, every window
        assert torch.allclose(got, box_mean(x, r), atol=1e-6)
    small = torch.rand(2, 1, 11, 14, dtype=torch.float64, requires_grad=True)  # its hand-written backward
    assert torch.autograd.gradcheck(lambda t: tuple(box_means(t, (1, 3))), (small,))


def stretched_noisy_pair(seed, size=96, noise=0.1):
    """Band-limited speckle and the same speckle under a known stretch (quintic-spline resampled, so
    neither bilinear nor bicubic is exact), each with its own noise; and the pull field."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2
    truth = np.stack([0.03 * (yy - c) + 0.2, -0.025 * (xx - c) + 0.1]).astype(np.float32)[None]
    img = speckle(size, seed)
    fixed = ndimage.map_coordinates(img, [yy + truth[0, 0], xx + truth[0, 1]], order=5, mode="nearest")
    rng = np.random.default_rng(seed + 10)
    noisy = [torch.from_numpy((a + noise * rng.standard_normal(a.shape)).astype(np.float32))[None, None]
             for a in (img, fixed)]
    return noisy[0], noisy[1], truth


def test_bicubic_resampling_removes_most_of_the_noise_bias_of_bilinear():
    # Bilinear resampling averages a pixel's noise with its neighbour's by an amount set by the
    # fractional displacement, so NCC on noisy frames is biased towards half-pixel motion (the
    # error grows where the fractional part sweeps, as in any deforming field); bicubic much less.
    errors = {"bilinear": [], "bicubic": []}
    for seed in range(3):
        moving, fixed, truth = stretched_noisy_pair(seed)
        for mode in errors:
            field = torch.zeros(1, 2, 96, 96)
            list(refine_fields(field, moving, fixed, None, settings(mode=mode)))
            errors[mode].append(epe(field.numpy(), truth))
    assert np.mean(errors["bicubic"]) < 0.8 * np.mean(errors["bilinear"])
    assert np.mean(errors["bicubic"]) < 0.4  # and the stretch itself is found (up to ~1.6 px at the edges)


def test_blurring_frames_with_white_noise_removes_most_of_what_is_left_of_the_bias():
    # Bicubic still keeps only 73 % of white noise's variance at half a pixel; blurring both frames
    # first (only when the noise is white, core/noise.py) leaves the resampling little noise to modulate.
    errors = {0.0: [], 0.8: []}
    for seed in range(3):
        moving, fixed, truth = stretched_noisy_pair(seed)
        for sigma in errors:
            field = torch.zeros(1, 2, 96, 96)
            list(refine_fields(field, moving, fixed, None, settings(mode="bicubic", denoise=sigma)))
            errors[sigma].append(epe(field.numpy(), truth))
    assert np.mean(errors[0.8]) < 0.7 * np.mean(errors[0.0])  # measured 0.131 against 0.255 px


def test_cancel_during_the_refinement_keeps_the_scales_finished_before_it():
    moving, fixed, _ = smooth_pair(64)
    frames = torch.cat([moving[0], fixed[0]]).numpy()
    cfg = RegistrationConfig(scales=(0.5, 1.0), steps=(3, 2), encoder=(8, 8), decoder=(8, 8), affine=False,
                             min_scale_px=16, refine_steps=50)
    seen = []

    def progress(p):
        seen.append(p)

    res = register(frames, config=cfg, progress=progress,
                   cancel=lambda: bool(seen) and seen[-1].scale_index == 1 and seen[-1].step > 4)
    assert res.cancelled and res.scales == (0.5,)


def swirl_core_pair(size=96, seed=3, width=0.09, amp=7.0):
    """A small, fast swirl (peak 3 px, core radius ~9 px): finer than the 1/8 residual grid holds."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    a = amp * np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (width * size) ** 2) / (width * size)
    field = np.stack((a * (xx - c), -a * (yy - c))).astype(np.float32)[None]
    moving = torch.from_numpy(speckle(size, seed))[None, None]
    core = np.hypot(yy - c, xx - c) < 2 * width * size
    return moving, warp(moving, torch.from_numpy(field)), field, core


def test_the_gated_fine_pass_corrects_a_core_the_coarse_grid_cannot_hold_and_leaves_a_right_field():
    moving, fixed, truth, core = swirl_core_pair()

    def core_error(f):
        return float(np.hypot(*(f - truth)[0])[core].mean())

    errors = {}
    for fine_steps in (0, 100):
        field = torch.zeros(1, 2, 96, 96)
        events = list(refine_fields(field, moving, fixed, None, settings(radius=4, mode="bicubic", fine_steps=fine_steps)))
        assert [e[0] for e in events] == list(range(1, 101 + fine_steps))  # every step, the fine pass's too, once
        assert {e[1] for e in events} == {100 + fine_steps} and np.isfinite(events[-1][2])
        errors[fine_steps] = core_error(field.numpy())
    assert errors[100] < 0.92 * errors[0], errors  # measured 1.26 vs 1.43 px
    exact = torch.from_numpy(truth.copy())
    list(refine_fields(exact, moving, fixed, None, settings(radius=4, mode="bicubic", fine_steps=100)))
    assert epe(exact.numpy(), truth) < 0.01  # where the field is right, the gate keeps nothing of the fine fit
    s = RefineSettings.from_config(RegistrationConfig(refine_fine_steps=30, refine_fine_gain=0.1))
    assert (s.fine_steps, s.fine_gain) == (30, 0.1)
    with pytest.raises(ValueError, match="refine_fine_gain"):
        RegistrationConfig(refine_fine_gain=0.0)


def test_pairs_the_affine_stage_did_not_explain_get_the_softer_bending_weight():
    """A weight per pair: the pair flagged ``deforming`` is fitted with ``smoothness_deforming``."""
    moving, fixed, truth = smooth_pair()
    moving, fixed = moving.repeat(2, 1, 1, 1), fixed.repeat(2, 1, 1, 1)
    truth2 = np.concatenate([truth, truth])
    stiff = settings(smoothness=20000.0, smoothness_deforming=50.0)

    def errors(deforming):
        field = torch.zeros(2, 2, 96, 96)
        list(refine_fields(field, moving, fixed, None, stiff, deforming=deforming))
        return [epe(field.numpy()[i : i + 1], truth2[i : i + 1]) for i in range(2)]

    soft, hard = errors(torch.tensor([True, False]))
    assert soft < 0.8 * hard, (soft, hard)
    assert errors(None) == pytest.approx([hard, hard], abs=1e-6)  # no flags: the one weight for all
    assert errors(torch.tensor([True, True])) == pytest.approx([soft, soft], abs=1e-6)
    assert settings().smoothness_deforming == settings().smoothness  # unset: the same weight
    cfg = RegistrationConfig(refine_smoothness=400.0, refine_smoothness_deforming=30.0)
    assert RefineSettings.from_config(cfg).smoothness_deforming == 30.0
    with pytest.raises(ValueError, match="refine_smoothness_deforming"):
        RegistrationConfig(refine_smoothness_deforming=-1.0)


def test_the_engine_flags_as_deforming_the_pairs_for_which_the_guard_kept_a_u_net_scale(monkeypatch):
    import napari_nmsr.core.register as register_module

    seen, script = [], iter([[True, False, True], [True, True, False]])  # per scale: pairs the guard kept back
    real_refine, real_settle = register_module.refine_fields, register_module._settle_scale

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("deforming"))
        return real_refine(*args, **kwargs)

    def scripted(*args):
        warped, match, worse = real_settle(*args)
        return warped, match, None if worse is None else torch.tensor(next(script))

    monkeypatch.setattr(register_module, "refine_fields", spy)
    monkeypatch.setattr(register_module, "_settle_scale", scripted)
    moving, fixed, _ = smooth_pair(64)
    frames = torch.cat([moving[0], fixed[0], moving[0], fixed[0]]).numpy()
    cfg = dict(scales=(0.5, 1.0), steps=(3, 2), encoder=(8, 8), decoder=(8, 8), min_scale_px=16, refine_steps=3,
               refine_fine_steps=0, refine_coherence=0.0, extend_steps=0)  # (one scripted guard per scale)
    list(register_iter(frames, config=RegistrationConfig(**cfg)))
    assert seen[-1].cpu().numpy().tolist() == [False, True, True]  # kept by the 1/1 scale, by the 1/2 scale
    list(register_iter(frames, config=RegistrationConfig(guard=False, **cfg)))
    assert seen[-1] is None  # no guard: every pair gets the one weight
    # a pair a rejected scale moved as it moved its neighbours (register._coherent_changes) counts too
    coherent, judged = iter([[False, False, False], [True, False, False]]), []

    def scripted_coherence(changes, config):
        judged.append(len(torch.cat([c for c, _ in changes])))
        return torch.tensor(next(coherent))

    monkeypatch.setattr(register_module, "_coherent_changes", scripted_coherence)
    script = iter([[True, False, True], [True, True, False]])
    list(register_iter(frames, config=RegistrationConfig(**{**cfg, "refine_coherence": 0.7})))
    assert judged == [3, 3]  # every pair's change, at each scale
    assert seen[-1].cpu().numpy().tolist() == [True, True, True]
    # and, with guard_coherent, the flagged pairs the guard rejected try the change they share with
    # their neighbours (register._keep_coherent_part); a pair that takes it no longer counts as kept back
    tried = []

    def take_all(field, warped, match, moving, fixed, mask, changes, pairs, config):
        tried.append(pairs.cpu().numpy().tolist())
        return pairs.clone()

    monkeypatch.setattr(register_module, "_keep_coherent_part", take_all)
    for guard_coherent in (True, False):
        script = iter([[True, False, True], [True, True, False]])
        coherent = iter([[True, True, False], [False, False, True]])
        events = list(register_iter(frames, config=RegistrationConfig(**{**cfg, "refine_coherence": 0.7,
                                                                         "guard_coherent": guard_coherent})))
        kept = [e.kept_previous.tolist() for e in events if isinstance(e, ScaleDone)]
        if guard_coherent:
            assert tried == [[True, False, False]]  # flagged and rejected; at the 1/1 scale none is both
            assert kept[0] == [False, False, True]
        else:
            assert tried == [[True, False, False]] and kept[0] == [True, False, True]  # not tried again


def test_a_flagged_pair_keeps_the_part_of_a_rejected_change_that_its_neighbours_share():
    # A slow vortex's rejected scale: each pair's change is the turn plus its own fit to speckle. The
    # three pairs' cell means keep the turn and average the noise out; a change that matches worse is not kept.
    import napari_nmsr.core.register as engine

    n, size = 4, 64
    moving, fixed, truth, _ = noisy_swirl_pairs(n=n, size=size)
    turn = torch.from_numpy(truth).repeat(n, 1, 1, 1)
    mask = torch.ones(n, 1, size, size)
    mask[..., :8] = 0
    rng = np.random.default_rng(1)
    rejected = turn + 0.8 * torch.from_numpy(rng.standard_normal(turn.shape).astype(np.float32))
    inside = mask[:, 0] > 0

    def epe(field, t):
        return float(torch.hypot(*(field[t] - turn[t]))[inside[t]].mean())

    for change, wanted in ((rejected, [True, True, False, True]), (-rejected, [False] * n)):
        field = torch.zeros(n, 2, size, size)
        warped = warp(moving, field)
        match = engine._match(warped, fixed, mask, 6)
        before = (field.clone(), warped.clone(), match.clone())
        changes = [(engine._cell_change(change[:2], field[:2], mask[:2]), torch.full((2,), 0.03)),
                   (engine._cell_change(change[2:], field[2:], mask[2:]), torch.full((2,), 0.03))]
        pairs = torch.tensor([True, True, False, True])  # pair 2: not flagged, or not rejected
        taken = engine._keep_coherent_part(field, warped, match, moving, fixed, mask, changes, pairs,
                                           RegistrationConfig())
        assert taken.tolist() == wanted
        for t in range(n):
            if not wanted[t]:  # left exactly as the guard left it
                assert all(torch.equal(now[t], then[t]) for now, then in zip((field, warped, match), before))
                continue
            assert epe(field, t) < 0.4 * epe(before[0], t)  # the turn is kept
            assert epe(field, t) < 0.5 * epe(rejected, t)  # without the pair's noise
            assert float(match[t]) > float(before[2][t])
            assert torch.equal(warped[t], warp(moving[t : t + 1], field[t : t + 1])[0])
            assert float(field[t, :, :, : 8 - 2].abs().max()) == 0.0  # nothing beyond a cell (2 px) off the mask


def test_a_scale_keeps_its_early_copys_field_unless_the_later_steps_earn_their_change():
    # register._prefer_checkpoint: the later steps' change to a pair must raise the match by the
    # guard's share, or be the change they make to its neighbours too (a slow vortex turning further).
    import napari_nmsr.core.register as engine

    n, size = 4, 64
    moving, fixed, truth, _ = noisy_swirl_pairs(n=n, size=size)
    turn = torch.from_numpy(truth).repeat(n, 1, 1, 1)
    rng = np.random.default_rng(2)
    noise = gaussian_smooth(torch.from_numpy(rng.standard_normal(turn.shape).astype(np.float32)), 2.0)
    noise = noise / noise.abs().mean() * 0.3  # each pair's own, sub-pixel

    class Copy:  # the scale's data, whose residual for the early network is the early field (previous: zero)
        def __init__(self, early):
            self.early, self.moving = early, moving

        def residual(self, net, batch, sigma=0.0, amp=None, pairs=slice(None)):
            return self.early[pairs].clone()

    def settle(early, late, coherence=0.7):
        field = late.clone()
        taken = engine._prefer_checkpoint(field, torch.zeros_like(turn), None, Copy(early), n, None, moving, fixed,
                                          None, RegistrationConfig(refine_coherence=coherence))
        return taken.tolist(), field

    taken, field = settle(turn, turn + noise)  # the later steps fitted noise: the copy's field, exactly
    assert taken == [True] * n and torch.allclose(field, turn, atol=1e-6)
    # the later steps turned every pair 25 % further, alike: the match gains 1.6-2.7 % (under the
    # guard's 5 %), kept because the neighbours moved so too; without that test the copy's field
    taken, field = settle(0.8 * turn, turn)
    assert taken == [False] * n and torch.equal(field, turn)
    taken, field = settle(0.8 * turn, turn, coherence=0.0)
    assert taken == [True] * n and torch.allclose(field, 0.8 * turn, atol=1e-6)
    taken, field = settle(0 * turn, turn, coherence=0.0)  # a gain of 18-26 %: earned by the match alone
    assert taken == [False] * n and torch.equal(field, turn)


def test_the_finest_trained_scale_copies_its_network_and_its_field_is_settled_against_the_copy(monkeypatch):
    import napari_nmsr.core.register as engine

    cfg = dict(scales=(0.5, 1.0), steps=(10, 10), encoder=(8, 8), decoder=(8, 8), min_scale_px=16, refine_steps=0,
               consensus_tolerance=0.0)
    assert [engine.checkpoint_step(RegistrationConfig(**cfg), k) for k in (0, 1)] == [0, 3]
    assert engine.checkpoint_step(RegistrationConfig(**{**cfg, "steps": (10, 0)}), 0) == 3  # the 1/1 scale skipped
    assert engine.checkpoint_step(RegistrationConfig(**{**cfg, "guard": False}), 1) == 0
    assert engine.checkpoint_step(RegistrationConfig(**{**cfg, "early_checkpoint": 0.0}), 1) == 0
    with pytest.raises(ValueError, match="early_checkpoint"):
        RegistrationConfig(early_checkpoint=1.0)
    calls = []

    def spy(field, previous, early_net, data, batch, amp, moving, fixed, mask, config):
        calls.append((early_net, tuple(data.moving.shape[-2:])))
        field[0] = 0.123  # what it leaves is the field the guard then judges against the scale before
        return torch.zeros(field.shape[0], dtype=torch.bool)

    monkeypatch.setattr(engine, "_prefer_checkpoint", spy)
    moving, fixed, _ = smooth_pair(64)
    frames = torch.cat([moving[0], fixed[0], moving[0]]).numpy()
    trained = []
    real_optimise = engine.optimise_scale

    def record(net, *args, **kwargs):
        trained.append(net)
        yield from real_optimise(net, *args, **kwargs)

    monkeypatch.setattr(engine, "optimise_scale", record)
    judged = []
    real_settle = engine._settle_scale

    def settle(new_field, *args, **kwargs):
        judged.append(bool(torch.all(new_field[0] == 0.123)) and not bool(torch.all(new_field[1] == 0.123)))
        return real_settle(new_field, *args, **kwargs)

    monkeypatch.setattr(engine, "_settle_scale", settle)
    list(register_iter(frames, config=RegistrationConfig(**cfg)))
    assert len(calls) == 1 and calls[0][1] == (64, 64)  # once, at the 1/1 scale
    early, final = calls[0][0], trained[-1]
    assert early is not final and any(not torch.equal(a, b) for a, b in zip(early.parameters(), final.parameters()))
    assert judged == [False, True]
    for off in ({"early_checkpoint": 0.0}, {"guard": False}):
        calls.clear()
        list(register_iter(frames, config=RegistrationConfig(**{**cfg, **off})))
        assert calls == []


def noisy_swirl_pairs(n=5, size=96, noise=0.1, width=0.25, amp=4.0):
    """``n`` pairs of one slow swirl (peak 1.7 px, core radius ~24 px), each with its own speckle and
    noise in both frames: the pairs' data disagree only by their noise. Returns moving, fixed, truth, core."""
    _, _, truth, core = swirl_core_pair(size, width=width, amp=amp)
    rng = np.random.default_rng(0)
    moving = torch.cat([torch.from_numpy(speckle(size, seed))[None, None] for seed in range(n)])
    fixed = warp(moving, torch.from_numpy(truth).repeat(n, 1, 1, 1), "bicubic")
    moving = moving + noise * torch.from_numpy(rng.standard_normal(moving.shape).astype(np.float32))
    fixed = fixed + noise * torch.from_numpy(rng.standard_normal(fixed.shape).astype(np.float32))
    return moving, fixed, truth, core


@pytest.mark.parametrize("neighbours", [0.0, 1.0])
def test_a_pairs_fine_residual_is_the_same_whatever_chunk_it_shares(monkeypatch, neighbours):
    # A deforming pair's fine pass reads the pairs beside it: in chunks of one pair each, every pair
    # (deforming or not) must get what it gets among all five at once, every step reported once.
    from napari_nmsr.core import refine

    moving, fixed, _, _ = noisy_swirl_pairs(size=64)
    stage = settings(steps=10, radius=(2, 4), mode="bicubic", fine_steps=10, fine_smoothness_deforming=20.0,
                     fine_gain_deforming=0.03, fine_neighbours=neighbours)
    deforming = torch.tensor([True, True, False, True, True])
    fields = {}
    for per_chunk in (5, 1):
        monkeypatch.setitem(refine.PIXELS_AT_ONCE, "cpu", per_chunk * 64 * 64)
        field = torch.zeros(5, 2, 64, 64)
        events = list(refine_fields(field, moving, fixed, None, stage, deforming=deforming))
        total = (5 // per_chunk) * 20
        assert [e[0] for e in events] == list(range(1, total + 1)) and {e[1] for e in events} == {total}
        fields[per_chunk] = field
    assert float(fields[5].abs().max()) > 0.05  # the stage did move the fields
    assert torch.allclose(fields[5], fields[1], atol=1e-4)


def test_a_deforming_pairs_fine_residual_reads_its_neighbours_data_and_gets_closer_to_a_slow_swirl():
    # Five pairs of one slow swirl, each field at 60 % of the turn (as the U-Net leaves a slow vortex),
    # each pair with its own speckle and noise. Fitted to its own pair alone, the fine residual
    # follows that pair's noise; fitted to pairs t-1, t, t+1 together it is closer to the truth
    # (measured 0.277 -> 0.251 px in the core, from 0.339).
    moving, fixed, truth, core = noisy_swirl_pairs()
    errors = {}
    for neighbours in (0.0, 1.0):
        field = 0.6 * torch.from_numpy(truth).repeat(5, 1, 1, 1)
        stage = settings(steps=1, smoothness=1e5, radius=(2, 4), mode="bicubic", fine_steps=50,
                         fine_smoothness_deforming=20.0, fine_gain_deforming=0.03, fine_neighbours=neighbours)
        list(refine_fields(field, moving, fixed, None, stage, deforming=torch.ones(5, dtype=torch.bool)))
        errors[neighbours] = float(np.mean([np.hypot(*(field[t].numpy() - truth[0]))[core].mean() for t in range(5)]))
    start = float(np.hypot(*(0.4 * truth[0]))[core].mean())
    assert errors[0.0] < 0.9 * start and errors[1.0] < 0.95 * errors[0.0], (start, errors)


def test_the_fine_settings_for_deforming_pairs_apply_to_them_alone_and_come_from_the_config():
    # Without flags (no guard) every pair gets the rigid pairs' fine pass, neighbours unread; a flagged
    # pair gets the softer, more easily kept residual.
    moving, fixed, truth, _ = noisy_swirl_pairs(n=2)
    stage = settings(steps=1, smoothness=1e5, radius=(2, 4), mode="bicubic", fine_steps=30, fine_smoothness=1e4,
                     fine_gain=0.5, fine_smoothness_deforming=20.0, fine_gain_deforming=0.03, fine_neighbours=1.0)

    def moved(deforming):
        field = 0.6 * torch.from_numpy(truth).repeat(2, 1, 1, 1)
        list(refine_fields(field, moving, fixed, None, stage, deforming=deforming))
        return [float((field[t] - 0.6 * torch.from_numpy(truth[0])).abs().max()) for t in range(2)]

    flagged, rigid = moved(torch.tensor([True, False]))
    # one coarse Adam step moves a field by about lr (0.05 px); the gated fine pass adds nothing to the rigid pair
    assert flagged > 0.3 and rigid < 0.06 and moved(None) == pytest.approx([rigid, rigid], abs=1e-6)
    s = RefineSettings.from_config(RegistrationConfig(refine_fine_smoothness_deforming=7.0,
                                                      refine_fine_gain_deforming=0.2, refine_fine_neighbours=0.5))
    assert (s.fine_smoothness_deforming, s.fine_gain_deforming, s.fine_neighbours) == (7.0, 0.2, 0.5)
    assert settings(fine_smoothness=3.0, fine_gain=0.4).fine_smoothness_deforming == 3.0  # unset: as the rigid pairs
    assert settings(fine_smoothness=3.0, fine_gain=0.4).fine_gain_deforming == 0.4
    for bad in ({"refine_fine_neighbours": 1.5}, {"refine_fine_gain_deforming": 0.0},
                {"refine_fine_smoothness_deforming": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RegistrationConfig(**bad)
