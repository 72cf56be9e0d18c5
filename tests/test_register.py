"""The NMSR engine: recovery of known motion, variants, cancellation, OOM, results."""

import numpy as np
import torch
import pytest
from scipy import ndimage

from napari_nmsr.core import register as engine
from napari_nmsr.core.errors import DeviceMemoryError, MaskError, ResultFileError, SequenceError
from napari_nmsr.core.register import Progress, RegistrationConfig, ScaleDone, register, register_iter
from napari_nmsr.core.result import RegistrationResult

SCALES = (0.25, 0.5, 1.0)


def speckle(size, seed=0, sigma=1.2):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((size, size)), sigma)
    return (img - img.min()) / (img.max() - img.min())


def moving_sequence(kind, n=4, size=64):
    """Speckle moved by a constant translation or rotation per frame; returns frames and true pull field."""
    big = speckle(size + 32)
    c = (size + 32 - 1) / 2
    yy, xx = np.mgrid[0 : size + 32, 0 : size + 32].astype(np.float64)
    frames = []
    for t in range(n):
        if kind == "translation":
            src_y, src_x = yy - 1.5 * t, xx + 2.0 * t
        else:
            a = np.deg2rad(3.0 * t)
            src_y = c + np.cos(a) * (yy - c) + np.sin(a) * (xx - c)
            src_x = c - np.sin(a) * (yy - c) + np.cos(a) * (xx - c)
        frames.append(ndimage.map_coordinates(big, [src_y, src_x], order=3, mode="reflect")[16:-16, 16:-16])
    frames = np.clip(np.array(frames, np.float32), 0, 1)
    yy, xx = yy[16:-16, 16:-16], xx[16:-16, 16:-16]
    if kind == "translation":
        true = np.stack([np.full_like(yy, -1.5), np.full_like(xx, 2.0)])
    else:
        a = np.deg2rad(3.0)  # frame t+1 at p shows frame t at c + R(3 deg)(p - c)
        src_y = c + np.cos(a) * (yy - c) + np.sin(a) * (xx - c)
        src_x = c - np.sin(a) * (yy - c) + np.cos(a) * (xx - c)
        true = np.stack([src_y - yy, src_x - xx])
    return frames, true.astype(np.float32)


def small_config(**kw):
    """A quick engine: small network, no refinement, no early stop, no extended last scale (their own tests set them)."""
    base = dict(scales=SCALES, steps=40, encoder=(8, 16, 16), decoder=(16, 16, 8), patience=0, refine_steps=0,
                extend_steps=0)
    base.update(kw)
    return RegistrationConfig(**base)


@pytest.mark.parametrize("kind", ["translation", "rotation"])
def test_known_motion_is_recovered(kind):
    frames, true = moving_sequence(kind)
    res = register(frames, config=small_config())
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    err = np.linalg.norm(res.final_field - true[None], axis=1)[inner[:1] + inner[2:]].mean()
    zero_err = np.linalg.norm(true, axis=0)[8:-8, 8:-8].mean()
    assert err < 0.35 * zero_err, (err, zero_err)
    assert res.fields.shape == (3, 3, 2, 64, 64) and res.fields.dtype == np.float32


def test_end_to_end_on_simulated_vortex_beats_zero_field():
    from napari_nmsr.core.simulate import vortex

    sim = vortex(size=64, n_frames=5, seed=3)
    res = register(sim.frames, sim.masks, small_config(steps=100))
    m = sim.masks[1:]
    epe = np.linalg.norm(res.final_field - sim.fields, axis=1)[m].mean()
    zero = np.linalg.norm(sim.fields, axis=1)[m].mean()
    assert epe < 0.6 * zero, (epe, zero)
    # metrics improve from "no registration" to the final scale
    assert res.metrics["mse"].shape == (3, 4)
    assert res.metrics["mean_cc"][-1].mean() > 0.1


def test_variants_and_scale_counts(tmp_path):
    frames, _ = moving_sequence("translation", n=3, size=48)
    single = register(frames, config=small_config(variant="nmsr", steps=3))
    assert single.scales == (1.0,)
    ms = register(frames, config=small_config(variant="nmsr_ms", steps=3))
    assert ms.scales == SCALES
    from napari_nmsr.core.train import train

    w = train([frames, frames[::-1].copy()], tmp_path / "w.pt", small_config(steps=3))
    v = register(frames, config=small_config(variant="nmsr_v", weights=str(w), steps=3))
    assert v.scales == SCALES and np.isfinite(v.fields).all()
    with pytest.raises(ValueError, match="weights"):
        RegistrationConfig(variant="nmsr_v")


def test_seeded_runs_are_reproducible_on_cpu():
    frames, _ = moving_sequence("translation", n=3, size=48)
    a = register(frames, config=small_config(steps=5, device="cpu"))
    b = register(frames, config=small_config(steps=5, device="cpu"))
    assert np.array_equal(a.fields, b.fields)


def test_progress_reports_every_step_in_order():
    frames, _ = moving_sequence("translation", n=3, size=48)
    events = list(register_iter(frames, config=small_config(steps=4)))
    steps = [(e.scale_index, e.step) for e in events if isinstance(e, Progress)]
    assert steps == [(k, s) for k in range(3) for s in range(1, 5)]
    assert sum(isinstance(e, ScaleDone) for e in events) == 3
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, Progress))


def test_cancel_keeps_finished_scales():
    frames, _ = moving_sequence("translation", n=3, size=48)
    state = {"done": 0, "polls_after": 0}

    def on_scale(ev):
        state["done"] += 1

    def cancel():
        if state["done"] >= 1:
            state["polls_after"] += 1
            return True
        return False

    res = register(frames, config=small_config(steps=6), on_scale=on_scale, cancel=cancel)
    assert res.cancelled
    assert res.scales == (0.25,)
    assert res.fields.shape[0] == 1
    assert state["polls_after"] == 1  # stopped at the first check after the request


def test_cancel_before_any_scale_returns_empty_result():
    frames, _ = moving_sequence("translation", n=3, size=48)
    res = register(frames, config=small_config(steps=6), cancel=lambda: True)
    assert res.cancelled and res.n_scales == 0
    with pytest.raises(ResultFileError):
        res.final_field


def test_out_of_memory_halves_batch_then_gives_clear_error(monkeypatch):
    frames, _ = moving_sequence("translation", n=5, size=48)
    real_step = engine._step
    seen = []

    def flaky(net, opt, moving, fixed, mask, idx, *a, **kw):
        n = moving[idx].shape[0]
        seen.append(n)
        if n > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(net, opt, moving, fixed, mask, idx, *a, **kw)

    monkeypatch.setattr(engine, "_step", flaky)
    res = register(frames, config=small_config(steps=2))
    assert res.n_scales == 3
    assert seen[:3] == [4, 2, 1]

    def always(*a, **k):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(engine, "_step", always)
    with pytest.raises(DeviceMemoryError, match="ran out of memory"):
        register(frames, config=small_config(steps=2))


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.random.default_rng(0).random((1, 32, 32)), "at least two frames"),
        (np.full((3, 32, 32), 0.5), "blank"),
        (np.zeros((3, 0, 32)), "too small"),
        (np.random.default_rng(0).random((3, 8, 32)), "too small"),
        (np.where(np.eye(32)[None] > 0, np.nan, 0.3).repeat(3, 0), "NaN"),
        (np.random.default_rng(0).random((3, 32, 32)) * 255, r"\[0, 1\]"),
        (np.random.default_rng(0).random((32, 32)), r"\(T, H, W\)"),
    ],
)
def test_bad_sequences_raise_sequence_error(frames, match):
    with pytest.raises(SequenceError, match=match):
        register(frames, config=small_config(steps=1))


def test_bad_masks_raise_mask_error():
    frames, _ = moving_sequence("translation", n=3, size=48)
    with pytest.raises(MaskError, match="empty"):
        register(frames, np.zeros((48, 48), bool), small_config(steps=1))
    with pytest.raises(MaskError, match="shape"):
        register(frames, np.ones((2, 48, 48), bool), small_config(steps=1))


def test_result_round_trip_and_versions(tmp_path):
    frames, _ = moving_sequence("translation", n=3, size=48)
    res = register(frames, config=small_config(steps=2), frame_interval_s=0.02, pixel_spacing_mm=(0.3, 0.3))
    path = res.save(tmp_path / "r.npz")
    back = RegistrationResult.load(path)
    assert np.array_equal(back.fields, res.fields)
    assert back.scales == res.scales and back.config["variant"] == "nmsr_vi"
    assert back.pixel_spacing_mm == (0.3, 0.3) and back.frame_interval_s == 0.02
    with np.load(path) as z:
        v = z["velocity_cm_s"]
        assert "convention_json" in z.files
    # 1 px/frame at 0.3 mm and 20 ms is 1.5 cm/s; velocity is the motion (-field)
    assert np.allclose(v, -res.fields[-1] * 0.03 / 0.02, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp"))
    bad = dict(np.load(path))
    bad["format_version"] = np.array(99)
    np.savez(tmp_path / "old.npz", **bad)
    with pytest.raises(ResultFileError, match="version 99"):
        RegistrationResult.load(tmp_path / "old.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ResultFileError):
        RegistrationResult.load(tmp_path / "junk.npz")


@pytest.mark.parametrize("affine", [True, False])
def test_training_aligns_pairs_with_the_affine_stage_as_register_does(tmp_path, monkeypatch, affine):
    """NMSR_V weights must learn the residual that register asks of them (after the affine stage)."""
    import napari_nmsr.core.train as train_module

    calls = []
    real = train_module.affine_fields

    def spy(moving, fixed, *a, **k):
        calls.append(tuple(moving.shape))
        return real(moving, fixed, *a, **k)

    monkeypatch.setattr(train_module, "affine_fields", spy)
    frames, _ = moving_sequence("translation", n=3, size=48)
    train_module.train([frames, frames[::-1].copy()], tmp_path / "w.pt", small_config(steps=2, affine=affine))
    assert calls == ([(2, 1, 48, 48), (2, 1, 48, 48)] if affine else [])


def test_training_records_the_weights_so_far_for_a_scale_of_zero_steps(tmp_path):
    """A weights file holds one state per scale; a skipped scale (0 steps, as the default's full
    scale) gets the weights trained so far, so NMSR_V starts it where the previous scale ended."""
    import torch

    from napari_nmsr.core.train import load_weights, train

    frames, _ = moving_sequence("translation", n=3, size=48)
    path = train([frames], tmp_path / "w.pt", small_config(steps=(3, 2, 0)))
    states = load_weights(path)["state_dicts"]
    assert len(states) == 3
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])  # scale 1 trained
    assert all(torch.equal(states[1][k], states[2][k]) for k in states[1])  # scale 2 skipped


def test_register_writes_fields_in_place_exactly_as_the_generator_yields_them():
    """register() pastes each scale into the array its result keeps; the values must equal
    register_iter's own, kept the same way (the coarse scales in float16, the finest in float32)."""
    import torch

    from napari_nmsr.core.register import prepare_inputs
    from napari_nmsr.core.scale_fields import ScaleFields

    frames, _ = moving_sequence("translation", n=3, size=96)
    mask = np.zeros(frames.shape, bool)
    mask[:, 10:30, 12:34] = True  # a box smaller than the frame, so the field is pasted and extended
    cfg = small_config(steps=3, device="cpu")
    box = prepare_inputs(frames, mask, cfg, torch.device("cpu"))[0]
    assert tuple(box) != (0, 96, 0, 96)
    res = register(frames, mask, cfg)
    yielded = [e.field for e in register_iter(frames, mask, cfg) if isinstance(e, ScaleDone)]
    assert isinstance(res.fields, ScaleFields) and len(yielded) == 3
    assert res.fields.shape == (len(yielded),) + yielded[0].shape
    assert [f.dtype for f in yielded] == [res.fields.stored(k).dtype for k in range(3)] == [np.float16, np.float16, np.float32]
    for k, field in enumerate(yielded):
        assert res.fields[k].dtype == np.float32 and np.abs(field).max() > 1.0  # a real move (2 px/frame)
        np.testing.assert_array_equal(res.fields[k], field)
    assert np.shares_memory(res.final_field, res.fields.stored(-1))  # the finest is kept as written, no copy
    assert not np.shares_memory(res.fields.stored(-1), yielded[-1])


def test_keeping_the_coarse_scales_in_float16_moves_the_final_field_by_a_rounding_only(monkeypatch):
    """The next scale starts from the coarse field as kept: the final field may differ from an
    all-float32 run by float16's rounding of the coarse field (1/2048 of it) and what the finer
    scales' training makes of that, far below the engine's accuracy (hundredths of a pixel)."""
    from napari_nmsr.core import scale_fields
    from napari_nmsr.core import threads

    monkeypatch.setitem(threads._auto, "on", False)  # the same torch thread count for both runs
    frames, _ = moving_sequence("translation", n=3, size=96)
    cfg = small_config(steps=3, device="cpu", seed=0)
    kept = register(frames, None, cfg)
    monkeypatch.setattr(scale_fields, "COARSE_DTYPE", np.float32)
    plain = register(frames, None, cfg)
    assert [plain.fields.stored(k).dtype for k in range(3)] == [np.float32] * 3
    assert plain.fields.stored_nbytes == 3 * plain.fields.stored(0).nbytes
    assert 3 * kept.fields.stored_nbytes == 2 * plain.fields.stored_nbytes  # two halves and one whole
    assert not np.array_equal(kept.fields[0], plain.fields[0])
    np.testing.assert_allclose(kept.fields[0], plain.fields[0], rtol=2.0**-11, atol=0)
    diff = np.abs(kept.final_field - plain.final_field)
    assert diff.max() < 0.02 and diff.mean() < 0.005, (diff.max(), diff.mean())


def _translation_epe(field, true):
    return float(np.linalg.norm(field - true[None], axis=1)[:, 8:-8, 8:-8].mean())


def test_a_last_scale_that_left_the_match_flat_trains_on_and_keeps_the_longer_field():
    """Ten steps at a low learning rate find nothing (the guard keeps the zero field); the same
    network trained ``extend_steps`` more finds the translation, and the progress counts them."""
    frames, true = moving_sequence("translation")
    cfg = dict(steps=(0, 0, 10), affine=False, lr=3e-4)
    short = register(frames, config=small_config(extend_steps=0, **cfg))
    events = list(register_iter(frames, config=small_config(extend_steps=100, **cfg)))
    final = [e for e in events if isinstance(e, ScaleDone)][-1]
    err_short, err_long = _translation_epe(short.final_field, true), _translation_epe(final.field, true)
    assert err_short > 2.0 and err_long < 0.2 * err_short, (err_short, err_long)
    last = [e for e in events if isinstance(e, Progress) and e.scale_index == 2]
    assert [e.step for e in last] == list(range(1, 111))
    assert {e.n_steps for e in last[:10]} == {10} and {e.n_steps for e in last[10:]} == {110}
    assert final.steps_run == 110
    # the result says so, in words (ScaleDone.notes -> RegistrationResult.notes); the short run says nothing
    assert len(final.notes) == 1 and final.notes[0].startswith("The full-size scale's 10 steps left the match where it was")
    assert "for 100 more steps, kept: they removed" in final.notes[0]
    assert short.notes == []


def test_an_extended_finest_scale_counts_its_refinement_after_the_extended_steps():
    frames, _ = moving_sequence("translation")
    config = small_config(scales=(0.5, 1.0), steps=(0, 10), affine=False, lr=3e-4, extend_steps=30, refine_steps=5,
                          refine_fine_steps=0, consensus_tolerance=0)
    events = list(register_iter(frames, config=config))
    last = [e for e in events if isinstance(e, Progress) and e.scale_index == 1]
    steps = [e.step for e in last]
    assert steps == sorted(steps) and steps[-1] == last[-1].n_steps == 10 + 30 + 5
    assert last[-1].overall == pytest.approx(1.0)


def test_a_last_scale_that_raised_the_match_is_not_trained_on():
    frames, _ = moving_sequence("translation")
    cfg = dict(steps=(0, 0, 40), affine=False, lr=1e-3)
    a = register(frames, config=small_config(extend_steps=0, **cfg))
    events = list(register_iter(frames, config=small_config(extend_steps=100, **cfg)))
    assert max(e.step for e in events if isinstance(e, Progress)) == 40
    assert np.array_equal(a.final_field, [e for e in events if isinstance(e, ScaleDone)][-1].field)


@pytest.mark.parametrize("refusal, checks_passed, steps_run, said", [
    ("_clearly_better", 0, 210, "for 100 more steps, not kept: they removed"),
    ("_turns_alike", 0, 10 + 2 * engine.EXTEND_CHECK_EVERY,
     f"stopped after {engine.EXTEND_CHECK_EVERY} more steps, not kept"),
    ("_turns_alike", 3, 110 + engine.EXTEND_CHECK_EVERY,
     "for 100 more steps, not kept: their change differed from pair to pair"),
])
def test_longer_training_the_frames_refuse_keeps_the_first_field(monkeypatch, refusal, checks_passed, steps_run, said):
    """Refused at the end (no clear match gain, or a change unlike from pair to pair after passing the
    three checks on the way: all 100 more steps run) or at the first check (the change does not move
    the pairs alike: the training stops there), and refused again when it trains from the same point
    with the scale's own optimiser, the field is the first one, and the notes say why."""
    frames, _ = moving_sequence("translation")
    cfg = dict(steps=(0, 0, 10), affine=False, lr=3e-4)
    short = register(frames, config=small_config(extend_steps=0, **cfg))
    calls = []

    def refuse(*args):
        calls.append(1)
        return len(calls) <= checks_passed

    monkeypatch.setattr(engine, refusal, refuse)
    events = list(register_iter(frames, config=small_config(extend_steps=100, **cfg)))
    assert max(e.step for e in events if isinstance(e, Progress)) == steps_run
    done = [e for e in events if isinstance(e, ScaleDone)]
    assert np.array_equal(short.final_field, done[-1].field)
    assert [len(e.notes) for e in done] == [0, 0, 1] and said in done[-1].notes[0]
    assert "; again from there with the optimiser of its own steps" in done[-1].notes[0]


def test_the_extension_asks_for_a_gain_relative_to_the_dissimilarity_left():
    import torch

    cfg = RegistrationConfig(extend_steps=100, extend_gain=0.05)
    before = torch.tensor([0.60, 0.70])  # dissimilarity left 0.35: more steps below a gain of 0.0175
    assert engine._wants_more_steps(before, before + 0.01, cfg)
    assert not engine._wants_more_steps(before, before + 0.02, cfg)
    assert not engine._wants_more_steps(before, before, RegistrationConfig(extend_steps=0))
    assert engine._clearly_better(torch.tensor([0.72]), torch.tensor([0.70]), 0.05)
    assert not engine._clearly_better(torch.tensor([0.71]), torch.tensor([0.70]), 0.05)
    for bad in ({"extend_steps": -1}, {"extend_gain": 1.0}, {"extend_margin": -0.1}):
        with pytest.raises(ValueError, match="extend"):
            RegistrationConfig(**bad)


def test_pairs_that_turn_alike_are_told_from_pairs_fitted_each_its_own_way():
    import torch

    g = torch.Generator().manual_seed(0)
    shared = torch.randn(1, 2, 64, 64, generator=g)
    alike = shared.repeat(5, 1, 1, 1) + 0.1 * torch.randn(5, 2, 64, 64, generator=g)
    own = torch.randn(5, 2, 64, 64, generator=g)
    zero = torch.zeros(5, 2, 64, 64)
    assert engine._turns_alike(alike, zero, None, 0.7)
    assert not engine._turns_alike(own, zero, None, 0.7)
    assert not engine._turns_alike(alike[:1], zero[:1], None, 0.7)  # one pair: no neighbours to show it


def test_by_default_a_try_half_shared_half_its_own_is_stopped():
    """The shared DICOM's tries at the 1/2 scale changed their pairs alike by 0.72-0.75 at the first check
    and ran all their steps for nothing at the old threshold (0.7); every kept try read 0.946 or more."""
    import torch

    g = torch.Generator().manual_seed(0)
    shared = torch.randn(1, 2, 64, 64, generator=g)
    mixed = shared.repeat(5, 1, 1, 1) + 0.65 * torch.randn(5, 2, 64, 64, generator=g)  # correlation ~0.75
    zero = torch.zeros(5, 2, 64, 64)
    assert engine._turns_alike(mixed, zero, None, 0.7)
    assert not engine._turns_alike(mixed, zero, None, RegistrationConfig().extend_coherence)
    assert engine._turns_alike(shared.repeat(5, 1, 1, 1) + 0.2 * torch.randn(5, 2, 64, 64, generator=g), zero,
                               None, RegistrationConfig().extend_coherence)  # ~0.96, the lowest kept try


def test_an_extension_goes_on_with_the_scales_own_optimiser():
    """Ten steps and ten more on the same Adam are twenty steps; a fresh Adam's first steps move every
    weight by the learning rate at once (a tuning vortex the scale had begun to find was lost so)."""
    import torch

    frames = torch.from_numpy(np.stack([speckle(32, seed=s) for s in range(3)]).astype(np.float32))[:, None]
    data = engine.ScaleData.prepare(frames[:-1], frames[1:], None, 1.0)
    config = RegistrationConfig(amp=False, patience=0)
    cpu = torch.device("cpu")

    def trained(splits, keep):
        torch.manual_seed(0)
        net = engine.UNet(config.encoder, config.decoder)
        optimiser = torch.optim.Adam(net.parameters(), lr=config.lr) if keep else None
        for n in splits:
            list(engine.optimise_scale(net, [data], n, config, cpu, {"divisor": 1}, optimiser=optimiser))
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    straight = trained([20], keep=True)
    assert torch.equal(trained([10, 10], keep=True), straight)
    assert not torch.allclose(trained([10, 10], keep=False), straight, atol=1e-6)


def test_a_refused_extension_trains_again_with_the_optimiser_of_the_scales_own_steps(monkeypatch):
    import torch

    frames, _ = moving_sequence("translation")
    seen = []
    real = engine.optimise_scale

    starts = []

    def spy(net, *args, optimiser=None, **kwargs):
        seen.append(optimiser)
        starts.append([p.detach().clone() for p in net.parameters()])
        return real(net, *args, optimiser=optimiser, **kwargs)

    monkeypatch.setattr(engine, "optimise_scale", spy)
    monkeypatch.setattr(engine, "_clearly_better", lambda *a: False)  # the frames refuse the first extension
    register(frames, config=small_config(steps=(0, 0, 10), affine=False, lr=3e-4, extend_steps=30))
    # the scale's steps, an extension with a fresh Adam, and one from the same weights with the scale's Adam
    assert len(seen) == 3 and seen[0] is not None and seen[1] is None and seen[2] is seen[0]
    # both extensions start from the weights the scale's own steps left
    assert all(torch.equal(a, b) for a, b in zip(starts[1], starts[2]))
    assert not all(torch.equal(a, b) for a, b in zip(starts[0], starts[1]))


def _rejected_at_first_scale_run(monkeypatch, **kw):
    """A run of three trained scales whose guard rejects every pair's field at the first, and whose
    extensions the frames refuse; returns (each optimise_scale call's (steps, fresh Adam?), final field)."""
    import torch

    frames, _ = moving_sequence("translation")
    calls = []
    real_optimise, real_guard = engine.optimise_scale, engine._guard

    def spy(net, data, n_steps, *args, optimiser=None, **kwargs):
        calls.append((n_steps, optimiser is None))
        return real_optimise(net, data, n_steps, *args, optimiser=optimiser, **kwargs)

    def guard(*args, **kwargs):
        match, worse = real_guard(*args, **kwargs)
        return (match, torch.ones_like(worse)) if len(calls) == 1 else (match, worse)

    monkeypatch.setattr(engine, "optimise_scale", spy)
    monkeypatch.setattr(engine, "_guard", guard)
    monkeypatch.setattr(engine, "_wants_more_steps", lambda *a: True)  # every scale's steps left the match
    monkeypatch.setattr(engine, "_clearly_better", lambda *a: False)  # the frames refuse every extension
    result = register(frames, config=small_config(steps=(10, 10, 10), affine=False, lr=3e-4, extend_steps=30,
                                                  **kw))
    return calls, result.final_field


def test_a_scale_after_rejected_pairs_trains_on_once_and_a_refused_try_hands_on_its_own_network(monkeypatch):
    """With ``extend_after_rejects`` the scale after one whose guard rejected some pair trains on (one try,
    a fresh Adam); the frames refusing it, the next scale starts from the network that scale's own steps
    left, so the run ends where it would have ended without the try."""
    calls, field = _rejected_at_first_scale_run(monkeypatch)
    # first scale: its steps (never extended: nothing before it); second: its steps and one fresh try;
    # last: its steps and two tries (a fresh Adam, then the scale's own)
    assert calls == [(10, False), (10, False), (30, True), (10, False), (30, True), (30, False)]
    plain_calls, plain_field = _rejected_at_first_scale_run(monkeypatch, extend_after_rejects=False)
    assert plain_calls == [(10, False), (10, False), (10, False), (30, True), (30, False)]
    assert np.array_equal(field, plain_field)
    assert RegistrationConfig().extend_after_rejects  # the default
    assert not engine.extends(RegistrationConfig(), 1, 4, after_rejects=False)
    assert engine.extends(RegistrationConfig(), 1, 4, after_rejects=True)
    assert not engine.extends(RegistrationConfig(), 0, 4, after_rejects=True)  # the first trained scale
    assert not engine.extends(RegistrationConfig(), 1, 1, after_rejects=True)  # one pair: no neighbours


def test_the_unet_loss_window_is_the_scales_own(monkeypatch):
    """``loss_radius`` reaches each scale's training (and only its loss: the guard keeps ``ncc_radius``);
    the default narrows the 1/2 scale's window (a fast-turning vortex core), the paper's keeps 6 px."""
    default = RegistrationConfig()
    assert [default.loss_radius_for(k) for k in range(4)] == [6, 6, 4, 6] and default.ncc_radius == 6
    assert RegistrationConfig(**engine.PRESETS["paper"]).loss_radius == 6
    assert RegistrationConfig(variant="nmsr", loss_radius=(6, 5, 3)).loss_radius_for(0) == 3  # one scale: the last
    for bad in (0, (6, 0, 4), ()):
        with pytest.raises(ValueError, match="loss_radius"):
            RegistrationConfig(loss_radius=bad)
    saved = default.to_dict()  # a result made before the setting: the window ncc_radius at every scale
    del saved["loss_radius"]
    saved["ncc_radius"] = 5
    assert RegistrationConfig.from_saved(saved).loss_radius == 5

    frames, _ = moving_sequence("translation", n=3, size=48)
    radii = []
    real_loss = engine.ncc_loss

    def spy(warped, fixed, radius, mask=None):
        radii.append((tuple(warped.shape[-2:]), radius))
        return real_loss(warped, fixed, radius, mask)

    monkeypatch.setattr(engine, "ncc_loss", spy)
    register(frames, config=small_config(steps=2, loss_radius=(2, 3, 5), min_scale_px=12))
    assert [r for _, r in radii] == [2, 2, 3, 3, 5, 5]
    assert [s for s, _ in radii[::2]] == [(12, 12), (24, 24), (48, 48)]


def test_the_guard_does_not_judge_where_material_enters_the_view(monkeypatch):
    """A scale is judged without the pixels whose NCC window reaches a point its start field pulls from
    outside frame t (no field matches what enters the view; bending the border to fit it is not motion)."""
    field = torch.zeros(2, 2, 40, 50)
    mask = torch.ones(2, 1, 40, 50)
    assert engine._judged_region(field, mask, 3) is mask and engine._judged_region(field, None, 3) is None
    field[:, 0] = -5.0  # pulls from 5 rows up: rows 0-4 see nothing of frame t, windows of 3 + pad px more
    field[1, 1] = 1.5  # pair 1 also pulls from 1.5 columns to the right: the last column(s) too
    part = engine._judged_region(field, mask * (torch.arange(50) < 45).float(), 3)
    edge = 5 + 3 + engine.JUDGE_PAD
    assert part.shape == (2, 1, 40, 50)
    assert bool((part[:, 0, :edge] == 0).all()) and bool((part[0, 0, edge:, :45] == 1).all())
    assert bool((part[:, 0, :, 45:] == 0).all())  # the mask still counts
    assert bool((part[1, 0, edge:, : 50 - 2 - 3 - engine.JUDGE_PAD] == 1).all())
    assert bool((engine._judged_region(field, None, 3)[1, 0, edge:, -2] == 0).all())

    # in a run: the affine stage finds the translation, and every U-Net scale is judged without the band
    frames, _ = moving_sequence("translation", n=3, size=48)
    judged = []
    real_settle = engine._settle_scale

    def spy(new_field, old_field, warped, match, moving, fixed, weight, config, changes=None):
        judged.append(weight)
        return real_settle(new_field, old_field, warped, match, moving, fixed, weight, config, changes)

    monkeypatch.setattr(engine, "_settle_scale", spy)
    register(frames, config=small_config(steps=2, affine=True, guard=True))
    assert len(judged) == 3 and all(w is not None for w in judged)
    for w in judged:  # frame t+1 shows frame t moved 1.5 px down and 2 px left: the top rows and right columns enter
        assert bool((w[:, 0, 0] == 0).all()) and bool((w[:, 0, :, -1] == 0).all())
        assert bool((w[:, 0, 24, 24] == 1).all()) and bool((w[:, 0, -1, 0] == 1).all())
    judged.clear()  # off (and in result files made before it): every pixel of the mask, here none given
    register(frames, config=small_config(steps=2, affine=True, guard=True, guard_in_view=False))
    assert judged == [None, None, None]
    saved = RegistrationConfig().to_dict()
    del saved["guard_in_view"]
    assert RegistrationConfig().guard_in_view and not RegistrationConfig.from_saved(saved).guard_in_view
