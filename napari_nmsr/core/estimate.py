"""How long a registration will take on this machine, before it starts.

A sonographer should see "about 25 s" before pressing Run, not discover it.
The estimate times the real work on the real frames for a moment: two
optimisation steps at every scale (the second is kept: the first pays for
allocation), one forward pass per scale for the final fields, a few
steps of the affine stage timed one by one, the preparation of the frames,
and the full-resolution work that closes every
scale (composing and warping every pair, the guard, the metrics, the
copy into the result), then multiplies by the planned step counts and
frame pairs. Early stopping can only make the run shorter; the U-Net scales'
extensions (``extend_steps``, which run only where a scale found nothing)
can make it longer, and are stated apart as the most they add. The
refinement's fine pass is timed as a pair's whose motion is more than affine
(the most it costs). On the benchmark rows (benchmarks/bench_speed.py, "est s"
and "up to" against "total s"; thirty-seventh session, two threads) the total is
within 13 % of a run that did not train on, and a run that did lies between the
total and the most (the apical cine's 107 s: 120, up to 148; before this session
it was 68). It costs one to two seconds on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .device import pick_device

__all__ = ["Estimate", "estimate_seconds"]


@dataclass
class Estimate:
    """Seconds expected for a run: total and per stage (preparing the frames and the affine stage, one
    entry per scale, then the refinement when on; the temporal consensus counts in the last entry).
    ``extend_s``: the most the U-Net scales' extensions add when all run all their steps (they start
    only where a scale's own steps found nothing, an earlier scale's only after the guard rejected some pair
    at the scale before it, the last scale's second only where the frames refuse its first, and each stops
    early where its change is no motion); not in ``total_s``."""

    total_s: float
    stages_s: list[float]
    calibration_s: float
    extend_s: float = 0.0

    def __str__(self) -> str:
        about, most = _round(self.total_s), _round(self.total_s + self.extend_s)
        if most > about:
            return f"about {about} s on this machine (up to {most} s if a scale trains on)"
        return f"about {about} s on this machine"


def _round(seconds: float) -> int:
    if seconds < 10:
        return max(1, round(seconds))
    if seconds < 100:
        return int(round(seconds / 5.0) * 5)
    return int(round(seconds / 10.0) * 10)


def estimate_seconds(frames, mask=None, config=None) -> Estimate:
    """Calibrate on ``frames`` (T, H, W) in [0, 1] and ``mask`` as :func:`register` would run them."""
    from . import register as engine
    from .global_motion import affine_fields

    started = time.perf_counter()
    config = config or engine.RegistrationConfig()
    frames = engine.validate_frames(frames)
    mask = engine.validate_mask(mask, frames.shape)
    device = pick_device(config.device)
    n_pairs = frames.shape[0] - 1
    # Calibrate on at most a few pairs; per-pair costs scale linearly.
    sample = min(n_pairs, 4) + 1
    torch.zeros(1, device=device)  # the device's start (a CUDA context) is not per-frame work
    _sync(device)
    t0 = time.perf_counter()
    box, moving, fixed, mask_full, score_mask = engine.prepare_inputs(frames[:sample], None if mask is None else mask[:sample], config, device)
    # the run prepares every frame (the box, the grown mask, the copy to the device): per frame as here
    prepare_s = (time.perf_counter() - t0) * frames.shape[0] / sample
    stages = []
    # One-time costs (kernels, thread pools) would otherwise be charged to the first timed step.
    warm = moving[:1]
    affine_fields(warm, fixed[:1], None, config.ncc_radius, steps=(1,))
    if config.affine:
        stages.append(prepare_s + _affine_seconds(moving, fixed, mask_full, config, device, n_pairs))
    else:
        stages.append(prepare_s)
    finish_s, start_s = (x * n_pairs / moving.shape[0] for x in
                         _finish_seconds(box, moving, fixed, mask_full, score_mask, frames.shape, config, device))
    stages[0] += start_s
    state = {"divisor": 1}
    extend_s = 0.0
    gen = torch.Generator().manual_seed(0)
    net = None
    for k, s in enumerate(config.effective_scales):
        if config.steps_for(k) == 0:  # a skipped scale costs next to nothing (register_iter)
            stages.append(0.0)
            continue
        data = engine.ScaleData.prepare(moving, fixed, mask_full, s, config.min_scale_px)
        data = _replicate(data, n_pairs)
        net = engine.UNet(config.encoder, config.decoder).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        batch = engine.batch_for(data, config, device, state)
        crop = engine.training_crop(tuple(data.moving.shape[-2:]), device, config)
        use_amp = engine.amp_for(config, device, finest=k == len(config.effective_scales) - 1)
        step_s = 0.0
        for i in range(2):
            idx = torch.randperm(n_pairs, generator=gen)[:batch] if batch < n_pairs else slice(None)
            window = engine._crop_window(tuple(data.moving.shape[-2:]), crop, i + 1)
            t0 = time.perf_counter()
            engine._step(net, opt, data.moving, data.fixed, data.mask, idx, config, use_amp, device, window,
                         radius=config.loss_radius_for(k))
            _sync(device)
            step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad(), engine._autocast(device, use_amp):
            net(data.moving[:1], data.fixed[:1])
        _sync(device)
        infer_s = (time.perf_counter() - t0) * n_pairs
        stages.append(step_s * config.steps_for(k) + infer_s + finish_s)
        if engine.extends(config, k, n_pairs):
            # every step, a look at the field at each check, and the longer field settled again (with a warp);
            # for each of the scale's tries (register.extension_tries)
            checks = -(-config.extend_steps // engine.EXTEND_CHECK_EVERY)
            per_try = step_s * config.extend_steps + infer_s * (checks + 1) + finish_s + start_s
            extend_s += engine.extension_tries(config, k) * per_try
        if engine.checkpoint_step(config, k):
            stages[-1] += _checkpoint_seconds(data, net, batch, use_amp, moving, fixed, mask_full, config, device) \
                * n_pairs / moving.shape[0]
    if config.refine_steps > 0:
        stages.append(_refine_seconds(moving, fixed, mask_full, config, device) * n_pairs / moving.shape[0])
    if config.consensus_tolerance > 0 and moving.shape[0] > 1:  # the last stage's row, as the run reports it
        stages[-1] += _consensus_seconds(moving, fixed, config, device) * n_pairs / moving.shape[0]
    return Estimate(float(sum(stages)), [float(x) for x in stages], time.perf_counter() - started, float(extend_s))


def _affine_seconds(moving, fixed, mask_full, config, device, n_pairs: int) -> float:
    """Seconds of the affine stage for ``n_pairs`` pairs, from two short runs (one pair, then the
    calibration pairs) of a tenth of each level's steps.

    Its steps work on images of at most 128 px, so a step costs little and barely more with more
    pairs, while its fixed work (pyramids, the full-resolution fields) grows with them: scaling a
    whole short run by steps and pairs counted that fixed work ten times and more (5-8x high on
    the benchmark rows). Each run is timed step by step (``cancel`` is polled every step): the
    median step of each level, and the rest as fixed work; both are extrapolated linearly in the
    number of pairs.
    """
    from .global_motion import affine_fields

    calib = tuple(min(n, max(3, round(n / 10))) for n in config.affine_steps)  # >= 2 timed steps a level
    runs = []
    for count in sorted({1, moving.shape[0]}):
        stamps: list[float] = []
        t0 = time.perf_counter()
        affine_fields(moving[:count], fixed[:count], None if mask_full is None else mask_full[:count],
                      config.ncc_radius, steps=calib, cancel=lambda: stamps.append(time.perf_counter()))
        _sync(device)
        total = time.perf_counter() - t0
        per_step, start = [], 0
        # Between two polls of a level lies one of its steps; its set-up (before the first poll) and
        # its last step fall into the fixed part. Only the levels these frames have were polled.
        for n in calib:
            if start >= len(stamps):
                break
            gaps = np.diff(stamps[start : start + n])
            per_step.append(float(np.median(gaps)) if len(gaps) else 0.0)
            start += n
        stepped = sum(c * t for c, t in zip(calib, per_step))
        runs.append((count, max(total - stepped, 0.0), per_step))

    def at(n_pairs_, values):  # linear in pairs through the two runs (or proportional with one)
        (n0, v0), (n1, v1) = values[0], values[-1]
        if n1 == n0:
            return v0 * n_pairs_ / n0
        return max(v0 + (v1 - v0) * (n_pairs_ - n0) / (n1 - n0), 0.0)

    fixed_s = at(n_pairs, [(n, f) for n, f, _ in runs])
    steps = config.affine_steps
    step_s = sum(steps[min(i, len(steps) - 1)] * at(n_pairs, [(n, ps[i]) for n, _, ps in runs])
                 for i in range(len(runs[0][2])))
    return fixed_s + step_s


#: Fine-pass steps of the two timed runs that separate its cost per step from its cost per chunk.
FINE_CALIBRATION = (2, 6)


def _refine_seconds(moving, fixed, mask_full, config, device) -> float:
    """Seconds of the refinement stage for the calibration pairs: a few timed steps of each pass, scaled.

    The fine pass is timed as a deforming pair's (every pair, here): such a pair's fine residual also
    reads the frames of the pairs before and after it (``refine_fine_neighbours``), up to three data terms
    a step where the coarse pass has one. Before the thirty-seventh session the fine steps were counted
    at the coarse steps' cost: the shared DICOM's refinement took 17.8 s against 9.6 s estimated, as the
    guard had kept a U-Net scale for its pairs (`benchmarks/bench_speed.py --rows dicom`)."""
    import dataclasses

    from .refine import RefineSettings, denoising_sigma, refine_fields, work_size

    base = RefineSettings.from_config(config)
    calib = min(config.refine_steps, 4) + 1
    zero = torch.zeros((moving.shape[0], 2) + tuple(moving.shape[-2:]), device=device)
    blur = denoising_sigma(zero, moving, fixed, base, work_size(tuple(moving.shape[-2:]), base.max_px))  # once

    def timed(settings, deforming=None) -> tuple[float, int]:
        steps = refine_fields(zero.clone(), moving, fixed, mask_full, settings, deforming=deforming, blur=blur)
        _, total, _ = next(steps)  # the first step pays one-time costs; total = chunks x steps of both passes
        _sync(device)
        t0 = time.perf_counter()
        for _ in steps:
            pass
        _sync(device)
        return time.perf_counter() - t0, total // (settings.steps + settings.fine_steps)

    coarse_s, chunks = timed(dataclasses.replace(base, steps=calib, fine_steps=0))
    seconds = coarse_s / max(chunks * calib - 1, 1) * chunks * config.refine_steps
    if config.refine_fine_steps > 0:
        # Two short fine passes (after one coarse step, which the timing skips): their difference is the cost
        # of a step; the rest, the gate's matches and the setup, is paid once per chunk (about 2.5 steps'
        # worth on the shared DICOM: five steps alone would count it as 50 % more per step).
        deforming = torch.ones(moving.shape[0], dtype=torch.bool, device=device)
        short, _ = timed(dataclasses.replace(base, steps=1, fine_steps=FINE_CALIBRATION[0]), deforming)
        long, _ = timed(dataclasses.replace(base, steps=1, fine_steps=FINE_CALIBRATION[1]), deforming)
        per_step = max(long - short, 0.0) / (chunks * (FINE_CALIBRATION[1] - FINE_CALIBRATION[0]))
        once = max(short - per_step * chunks * FINE_CALIBRATION[0], 0.0)
        seconds += once + per_step * chunks * config.refine_fine_steps
    return seconds


def _consensus_seconds(moving, fixed, config, device) -> float:
    """Seconds of the temporal consensus for the calibration pairs (the engine's call, timed once)."""
    from .consensus import ConsensusSettings, temporal_consensus

    field = torch.zeros((moving.shape[0], 2) + tuple(moving.shape[-2:]), device=device)
    t0 = time.perf_counter()
    temporal_consensus(field, moving, fixed, ConsensusSettings.from_config(config))
    _sync(device)
    return time.perf_counter() - t0


def _checkpoint_seconds(data, net, batch, amp, moving, fixed, mask_full, config, device) -> float:
    """Seconds of :func:`register._prefer_checkpoint` for the calibration pairs, every pair judged
    (the fields are equal, so none clears the gain): the copy's inference, warps and matches."""
    from . import register as engine

    field = torch.zeros((moving.shape[0], 2) + tuple(moving.shape[-2:]), device=device)
    t0 = time.perf_counter()
    engine._prefer_checkpoint(field.clone(), field, net, data, batch, amp, moving, fixed, mask_full, config)
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def _finish_seconds(box, moving, fixed, mask_full, score_mask, shape, config, device) -> tuple[float, float]:
    """Seconds of the full-resolution work after one scale's steps, and of the run's first warp and
    match (after the affine stage), for the calibration pairs.

    The engine's own calls (:func:`register.compose_resized`, :func:`register._settle_scale`,
    :func:`register._report_scale`; :func:`register.warp`, :func:`register._match`). On a 768x1024
    cine without a mask this is several seconds per scale, which an estimate of the steps alone missed.
    """
    from . import register as engine

    field = torch.zeros((moving.shape[0], 2) + tuple(moving.shape[-2:]), device=device)
    t0 = time.perf_counter()
    engine._chunked(engine.warp, moving, field)
    match = engine._match(moving, fixed, mask_full, config.ncc_radius) if config.guard else None
    _sync(device)
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = np.empty((moving.shape[0], 2) + tuple(shape[-2:]), np.float32)
    new_field = engine.compose_resized(field, lambda pairs: field[pairs, :, ::2, ::2], out=engine._box_view(out, box, device))
    warped, _, _ = engine._settle_scale(new_field, field, moving.clone(), match, moving, fixed, mask_full, config)
    engine._report_scale(new_field, warped, fixed, score_mask, box, out)
    _sync(device)
    return time.perf_counter() - t0, start_s


def _replicate(data, n_pairs: int):
    """ScaleData with ``n_pairs`` pairs built from the calibration sample (same sizes as the real run)."""
    reps = -(-n_pairs // data.moving.shape[0])

    def rep(x):
        return None if x is None else x.repeat(reps, 1, 1, 1)[:n_pairs]

    return type(data)(rep(data.moving), rep(data.fixed), rep(data.mask), data.full_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - Apple only
        torch.mps.synchronize()


if __name__ == "__main__":  # pragma: no cover - manual check
    rng = np.random.default_rng(0)
    print(estimate_seconds(rng.random((12, 128, 128), dtype=np.float32)))
