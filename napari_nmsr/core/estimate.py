"""How long a registration will take on this machine, before it starts.

A sonographer should see "about 25 s" before pressing Run, not discover it.
The estimate times the real work on the real frames for a moment: two
optimisation steps at every scale (the second is kept: the first pays for
allocation), one forward pass per scale for the final fields, a few
steps of the affine stage, and the full-resolution work that closes every
scale (composing and warping every pair, the guard, the metrics, the
copy into the result), then multiplies by the planned step counts and
frame pairs. Early stopping can only make the run shorter, so the estimate
leans to the long side. It costs about a second on a CPU.
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
    """Seconds expected for a run: total and per stage (affine, one entry per scale, then the refinement when on)."""

    total_s: float
    stages_s: list[float]
    calibration_s: float

    def __str__(self) -> str:
        return f"about {_round(self.total_s)} s on this machine"


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
    box, moving, fixed, mask_full, score_mask = engine.prepare_inputs(frames[:sample], None if mask is None else mask[:sample], config, device)
    stages = []
    # One-time costs (kernels, thread pools) would otherwise be charged to the first timed step.
    warm = moving[:1]
    affine_fields(warm, fixed[:1], None, config.ncc_radius, steps=(1,))
    if config.affine:
        # A tenth of every level's steps, so each level weighs as in the run.
        calib = tuple(max(1, round(n / 10)) for n in config.affine_steps)
        factor = sum(config.affine_steps) / sum(calib)
        t0 = time.perf_counter()
        affine_fields(moving, fixed, mask_full, config.ncc_radius, steps=calib)
        _sync(device)
        stages.append((time.perf_counter() - t0) * factor * n_pairs / moving.shape[0])
    else:
        stages.append(0.0)
    finish_s = _finish_seconds(box, moving, fixed, mask_full, score_mask, frames.shape, config, device) * n_pairs / moving.shape[0]
    state = {"divisor": 1}
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
            engine._step(net, opt, data.moving, data.fixed, data.mask, idx, config, use_amp, device, window)
            _sync(device)
            step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad(), engine._autocast(device, use_amp):
            net(data.moving[:1], data.fixed[:1])
        _sync(device)
        infer_s = (time.perf_counter() - t0) * n_pairs
        stages.append(step_s * config.steps_for(k) + infer_s + finish_s)
    if config.refine_steps > 0:
        stages.append(_refine_seconds(moving, fixed, mask_full, config, device) * n_pairs / moving.shape[0])
    return Estimate(float(sum(stages)), [float(x) for x in stages], time.perf_counter() - started)


def _refine_seconds(moving, fixed, mask_full, config, device) -> float:
    """Seconds of the refinement stage for the calibration pairs: a few timed steps, scaled."""
    import dataclasses

    from .refine import RefineSettings, refine_fields

    # timed without the fine pass: its steps cost what the first pass's do (the same warp and NCC)
    settings = dataclasses.replace(RefineSettings.from_config(config), steps=min(config.refine_steps, 4) + 1, fine_steps=0)
    field = torch.zeros((moving.shape[0], 2) + tuple(moving.shape[-2:]), device=device)
    steps = refine_fields(field, moving, fixed, mask_full, settings)
    _, total, _ = next(steps)  # the first step pays one-time costs; total = chunks x calibration steps
    _sync(device)
    t0 = time.perf_counter()
    timed = sum(1 for _ in steps)
    _sync(device)
    per_step = (time.perf_counter() - t0) / max(timed, 1)
    return per_step * (total // settings.steps) * config.refinement_steps  # chunks x steps


@torch.no_grad()
def _finish_seconds(box, moving, fixed, mask_full, score_mask, shape, config, device) -> float:
    """Seconds of the full-resolution work after one scale's steps, for the calibration pairs.

    The engine's own calls (:func:`register.compose_resized`, :func:`register._settle_scale`,
    :func:`register._report_scale`). On a 768x1024 cine without a mask this is
    several seconds per scale, which an estimate of the steps alone missed.
    """
    from . import register as engine

    field = torch.zeros((moving.shape[0], 2) + tuple(moving.shape[-2:]), device=device)
    match = engine._match(moving, fixed, mask_full, config.ncc_radius) if config.guard else None  # once per run
    t0 = time.perf_counter()
    out = np.empty((moving.shape[0], 2) + tuple(shape[-2:]), np.float32)
    new_field = engine.compose_resized(field, lambda pairs: field[pairs, :, ::2, ::2], out=engine._box_view(out, box, device))
    warped, _, _ = engine._settle_scale(new_field, field, moving.clone(), match, moving, fixed, mask_full, config)
    engine._report_scale(new_field, warped, fixed, score_mask, box, out)
    _sync(device)
    return time.perf_counter() - t0


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
