"""Per-pair refinement of the composed field ("instance optimisation"), the run's last stage.

The U-Net is one network for every pair of the sequence: at large frames it
converges slowly, and the guard then rejects its fine scales (at 384 px the
1/2 and full scales were rejected for nearly every pair of the tuning cases,
so the result was the affine + 1/8 field). This stage optimises, for each
pair on its own, a smooth residual added to the composed field: a dense
displacement on a coarse grid (``grid`` of the frame, bilinearly upsampled),
fitted with Adam to a local NCC (a smaller window than the U-Net's, frame t
resampled bicubically by default) plus a strong bending penalty on the grid.
Few parameters and a strong penalty keep it from fitting speckle where the
field is already right (probe motion, rigid warps), while it corrects the
smooth errors the network left (vortex cores, walls). Vortex cores that turn
fast are the part left: the grid cannot hold them (benchmarks/README.md,
twelfth session). A second, finer residual follows (:func:`_kept_where_it_helps`),
kept only where it clearly raises the local match (fifteenth session).
Pairs whose motion is more than affine (``deforming``: the guard kept a U-Net
scale's field for them) get a weaker bending weight for the coarse residual
(seventeenth session): the strong one is for pairs the affine stage explains.

Frames larger than ``max_px`` on the short side are refined at that size
(the residual is smooth on the scale of the grid, far coarser than a pixel),
which bounds the cost on 768x1024 cines. Pairs are independent, so they are
refined in chunks that fit a pixel budget, one chunk after another; a chunk's
loss is the sum of its pairs' losses, so a pair's result does not depend on
the chunk it shares (nor on the device's budget).

Convention: :mod:`napari_nmsr.core.convention` (pull fields, pixels, (dy, dx));
``moving`` is frame t, ``fixed`` frame t+1, the field lives on the fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .convention import resize_field, resize_image, warp
from .losses import bending_loss, fixed_window_means, gaussian_smooth, local_cc_map, mean_local_cc_map, pair_masked_mean

__all__ = ["RefineSettings", "fixed_means", "grid_size", "match_map", "refine_fields", "work_size"]

#: Pixels (pairs x h x w at the working size) refined at once. On a CPU 2^19 (about six pairs of a
#: 256 x 308 work grid) took 8-9 s for the shared DICOM's stage where 2^17 (one pair at a time) took
#: 10-11 s and 2^20 9-10 s (nineteenth session, two threads), for about 150 MB more.
PIXELS_AT_ONCE = {"cpu": 2**19, "mps": 2**22, "cuda": 2**24}


@dataclass(frozen=True)
class RefineSettings:
    """The stage's knobs, read from a RegistrationConfig (its ``refine_*`` fields)."""

    steps: int
    grid: float
    smoothness: float
    lr: float
    max_px: int
    radius: int | tuple[int, ...]  # the local NCC's window radius; several: the mean of their maps
    mode: str  # grid_sample's mode for resampling frame t (the config's refine_interpolation)
    #: the gated fine pass (:func:`_kept_where_it_helps`): steps (0: none), grid share, bending weight, gain
    fine_steps: int = 0
    fine_grid: float = 0.25
    fine_smoothness: float = 100.0
    fine_gain: float = 0.1
    #: the coarse residual's bending weight for pairs the affine stage did not explain (``deforming``)
    smoothness_deforming: float | None = None

    def __post_init__(self):
        if self.smoothness_deforming is None:
            object.__setattr__(self, "smoothness_deforming", self.smoothness)

    @classmethod
    def from_config(cls, config) -> "RefineSettings":
        return cls(config.refine_steps, config.refine_grid, config.refine_smoothness, config.refine_lr,
                   config.refine_max_px, config.refine_radius, config.refine_interpolation,
                   config.refine_fine_steps, config.refine_fine_grid, config.refine_fine_smoothness,
                   config.refine_fine_gain, config.refine_smoothness_deforming)


def work_size(size: tuple[int, int], max_px: int) -> tuple[int, int]:
    """The size the refinement runs at: ``size``, shrunk (aspect kept) so its short side is at most ``max_px``."""
    h, w = size
    f = min(1.0, max_px / max(1, min(h, w)))
    return max(8, round(h * f)), max(8, round(w * f))


def grid_size(size: tuple[int, int], grid: float) -> tuple[int, int]:
    """The residual's grid for a frame of ``size``: ``grid`` of it, at least 4 nodes a side."""
    return max(4, round(size[0] * grid)), max(4, round(size[1] * grid))


def match_map(warped: torch.Tensor, fixed: torch.Tensor, radius: int | tuple[int, ...],
              fixed_means: tuple | None = None) -> torch.Tensor:
    """The stage's local match: the local NCC map, or with several window radii the mean of their maps.

    A small window follows a deforming wall or a vortex closely but sees few speckles; a larger one
    is steadier where texture is sparse (real PIV particles) or coarse (real echo grain 2 x 4 px).
    Both at once kept most of either's gain (seventeenth session, benchmarks/README.md).
    ``fixed_means``: :func:`fixed_means` of ``fixed`` (computed once per fit: it does not change).
    """
    radius = _radius(radius)
    if isinstance(radius, tuple):
        return mean_local_cc_map(warped, fixed, radius, b_means=fixed_means)
    return local_cc_map(warped, fixed, radius, b_means=fixed_means)


def fixed_means(fixed: torch.Tensor, radius: int | tuple[int, ...]) -> tuple:
    """The fixed frame's window means that :func:`match_map` needs, for a loop that fits against it."""
    return fixed_window_means(fixed, _radius(radius))


def _radius(radius: int | tuple[int, ...]) -> int | tuple[int, ...]:
    """One window radius as an int, several as a tuple."""
    if isinstance(radius, (tuple, list)):
        return tuple(radius) if len(radius) > 1 else int(radius[0])
    return int(radius)


def _chunks(n: int, size: tuple[int, int], device: torch.device) -> list[slice]:
    per = max(1, PIXELS_AT_ONCE.get(device.type, PIXELS_AT_ONCE["cpu"]) // max(1, size[0] * size[1]))
    return [slice(i, min(n, i + per)) for i in range(0, n, per)]


def refine_fields(field: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None,
                  settings: RefineSettings, check: Callable[[], None] | None = None,
                  deforming: torch.Tensor | None = None) -> Iterator[tuple[int, int, float]]:
    """Refine ``field`` (N, 2, H, W) IN PLACE, pair chunk by chunk; yields (step done, steps in all, loss).

    ``moving``/``fixed``: (N, 1, H, W) frames t and t+1; ``mask`` (N, 1, H, W) float weights of the
    loss (or None); ``check()`` raises to cancel (the field then holds the chunks finished so far,
    each either refined or untouched). The loss is read back only at the end of each chunk.
    ``deforming`` (N,) bool: pairs whose motion the affine stage did not explain (the guard kept a
    U-Net scale's field for them); their coarse residual is fitted with ``smoothness_deforming``.
    """
    n, _, h, w = field.shape
    work = work_size((h, w), settings.max_px)
    coarse, fine_grid = grid_size((h, w), settings.grid), grid_size((h, w), settings.fine_grid)
    to_work = _to_size((h, w), work, field.device)
    chunks = _chunks(n, work, field.device)
    total = len(chunks) * (settings.steps + settings.fine_steps)
    done = 0
    for part in chunks:
        with torch.no_grad():
            mov = resize_image(moving[part].float(), work)
            fix = resize_image(fixed[part].float(), work)
            wts = None if mask is None else (resize_image(mask[part].float(), work) > 0.5).float()
            base = resize_field(field[part].float(), work)
        end = done + settings.steps + settings.fine_steps  # the chunk's last step, reported with its loss
        weight = _pair_weights(settings, None if deforming is None else deforming[part], base.device)
        fit = _fit_residual(base, mov, fix, wts, (h, w), work, coarse, weight, settings.steps, settings, check)
        delta, loss, done = yield from _report_steps(fit, done, total, end)
        fine = None
        if settings.fine_steps:
            with torch.no_grad():
                start = base + F.interpolate(delta, size=work, mode="bilinear", align_corners=True) * to_work
            fit = _fit_residual(start, mov, fix, wts, (h, w), work, fine_grid, settings.fine_smoothness,
                                settings.fine_steps, settings, check)
            fine_delta, _, done = yield from _report_steps(fit, done, total, end)
            fine = _kept_where_it_helps(fine_delta, start, mov, fix, (h, w), work, settings)
        with torch.no_grad():  # the chunk is finished: its residual joins the field (a host read, once per chunk)
            field[part] += F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=True).to(field.dtype)
            if fine is not None:  # full px on the work grid
                field[part] += F.interpolate(fine, size=(h, w), mode="bilinear", align_corners=True).to(field.dtype)
        yield done, total, float(loss.detach())


def _to_size(full: tuple[int, int], size: tuple[int, int], device) -> torch.Tensor:
    """(1, 2, 1, 1) factors taking full-resolution pixels to pixels of a grid of ``size`` (align-corners)."""
    return torch.tensor([(size[0] - 1) / max(full[0] - 1, 1), (size[1] - 1) / max(full[1] - 1, 1)],
                        device=device).view(1, 2, 1, 1)


def _pair_weights(settings: RefineSettings, deforming: torch.Tensor | None, device):
    """The coarse residual's bending weight: one number, or (N,) where some pairs deform."""
    if deforming is None or settings.smoothness_deforming == settings.smoothness:
        return settings.smoothness
    return torch.where(deforming.to(device), settings.smoothness_deforming, settings.smoothness).float()


def _fit_residual(base, mov, fix, wts, full, work, grid, smoothness, steps: int, settings: RefineSettings, check):
    """Adam on a residual on ``grid`` added to ``base`` (a field in work-grid px): the masked local
    NCC of frame t resampled through it, plus ``smoothness`` x the grid's bending energy. Yields
    each step's loss (a tensor, the chunk's mean per pair); returns the residual (N, 2, *grid) in full-resolution px."""
    to_work, to_grid = _to_size(full, work, base.device), _to_size(full, grid, base.device)
    delta = torch.zeros(base.shape[0], 2, *grid, device=base.device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=settings.lr)
    with torch.no_grad():
        fix_means = fixed_means(fix, settings.radius)  # frame t+1 does not move: its window means, once
    for _ in range(steps):
        if check is not None:
            check()
        up = F.interpolate(delta, size=work, mode="bilinear", align_corners=True) * to_work
        cc = match_map(warp(mov, base + up, settings.mode), fix, settings.radius, fix_means)
        # Each pair's own loss, summed (not averaged) over the chunk: a pair's gradient, and so its
        # Adam steps (whose epsilon is not negligible against these small gradients), do not depend
        # on how many pairs share its chunk, i.e. on the device's pixel budget.
        bend = smoothness * bending_loss(delta * to_grid, per_pair=True)  # smoothness: one, or (N,)
        loss = (-pair_masked_mean(cc, wts) + bend).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        yield loss.detach() / base.shape[0]  # reported per pair
    return delta.detach()


def _report_steps(fit, done: int, total: int, end: int):
    """Drive a :func:`_fit_residual`, yielding (step done, steps in all, NaN) for each step before
    ``end`` (that one is reported by the caller, with the loss: read back once per chunk).
    Returns (residual, last loss tensor, steps done)."""
    loss = None
    while True:
        try:
            loss = next(fit)
        except StopIteration as stop:
            return stop.value, loss, done
        done += 1
        if done < end:
            yield done, total, float("nan")


@torch.no_grad()
def _kept_where_it_helps(delta, start, mov, fix, full, work, settings: RefineSettings) -> torch.Tensor:
    """The fine pass's residual ``delta`` (on the ``fine_grid``), kept only where it clearly raises the local match.

    The 1/8 grid cannot hold a fast vortex core or a sharp wall (benchmarks/README.md, twelfth
    session: the truth projected on it is 0.7 px off in a PIV vortex core), and a finer grid
    everywhere fits speckle noise where the field is already right. So the finer residual is
    fitted everywhere, then weighted, pixel by pixel, by how much it raised the local NCC (the
    loss's data term, both maps smoothed over one fine grid spacing): 0 where it removed less
    than ``fine_gain`` of the dissimilarity left (1 - match), as fitting noise does, rising to 1
    at twice that; the weight is smoothed too, so the field stays smooth. The guard's test
    (:func:`~.register._guard`), made local. Returns (N, 2, work h, work w) in full-resolution px.
    """
    to_work = _to_size(full, work, start.device)
    residual = F.interpolate(delta, size=work, mode="bilinear", align_corners=True)  # full px
    sigma = max(work) / max(delta.shape[-2:])  # one fine grid spacing, in work px
    before = gaussian_smooth(match_map(warp(mov, start, settings.mode), fix, settings.radius), sigma)
    after = gaussian_smooth(match_map(warp(mov, start + residual * to_work, settings.mode), fix, settings.radius), sigma)
    need = settings.fine_gain * (1.0 - before).clamp_min(1e-3)
    keep = gaussian_smooth(((after - before - need) / need).clamp(0.0, 1.0), sigma)
    return residual * keep
