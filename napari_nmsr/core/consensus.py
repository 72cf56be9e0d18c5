"""Temporal consensus: each pair's field pulled toward the mean of it and its neighbours', where the frames allow.

Every pair (t, t+1) is registered on its own, so each field carries its own noise (speckle
decorrelation, noise in frame t+1); the motion of a beating wall, a slow vortex or a rotating
phantom changes little from one pair to the next at echo frame rates, while the noise does not
carry over. So, after the refinement, each pair's field ``f_t`` gets a candidate ``g_t``, the mean
of ``f_{t-1}``, ``f_t`` and ``f_{t+1}`` (the ends: the missing neighbour counts as ``f_t``), and
takes it pixel by pixel only where

* the frames do not say otherwise: the weight is 1 where frame t resampled through ``g_t``
  matches frame t+1 (the refinement's local NCC, both maps smoothed over 1/32 of the frame) at
  least as well as through ``f_t``, and falls linearly to 0 where it matches worse by
  ``tolerance`` of the dissimilarity left (1 - match) (the fine gate's test of :mod:`.refine`,
  turned round: there a change must clearly raise the match, here a smoother field may not
  clearly lower it), and
* the three fields agree to within a pixel: the weight falls linearly to 0 as the change
  (``g_t - f_t``) and, separately, the neighbours' difference (``f_{t+1} - f_{t-1}``) reach
  ``max_px`` (full-resolution pixels). Pair-to-pair noise is a fraction of a pixel; a larger
  difference is motion that changes (probe motion that turns back, a hand's jitter, warps that
  differ from pair to pair), and the frames cannot always refuse it: not where they have no
  texture (the black outside of a sector), nor where their grain is coarse enough that a third of
  a pixel costs little match (echo texture at 768x1024: the change alone cost 0.080 -> 0.092 px on
  `bench_speed.py`'s apical row, whose probe jitters 0.6 px a frame at random; 0.080 -> 0.081 with
  the neighbours' test).

Twenty-second session (benchmarks/README.md): the 48 tuning cases' geo-mean 0.520 -> 0.497
(myocardium, decorrelated speckle, the disk gain; probe motion and the real warps unchanged).
Thirtieth session: the default tolerance 0.03 -> 0.1 (``RegistrationConfig.consensus_tolerance``).

Convention: :mod:`napari_nmsr.core.convention` (pull fields, pixels, (dy, dx)); fields of pair t
live on frame t+1's grid, and a neighbour's field is read on the same pixel (its motion is
sub-pixel wherever it is taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .convention import resize_field, resize_image, warp
from .losses import gaussian_smooth
from .refine import fixed_means, match_map, work_size

__all__ = ["ConsensusSettings", "temporal_consensus"]

#: The match maps are smoothed over this share of the frame's long side (4 px at 128 px).
SMOOTH_SHARE = 1 / 32
#: Full-resolution pixels (pairs x h x w) judged at once. The stage holds about ten full-resolution
#: maps per pair; at 2^19 (one pair of a 768x1024 cine on a CPU) it adds about 60 MB to a run's
#: peak, where six pairs at a time (the refinement's budget at its working size) added 340 MB
#: (`bench_speed.py --rows apical_nomask`: 1085 -> 1421 MB), for no time saved.
PIXELS_AT_ONCE = {"cpu": 2**19, "mps": 2**22, "cuda": 2**24}


@dataclass(frozen=True)
class ConsensusSettings:
    """The stage's knobs (RegistrationConfig's ``consensus_*`` and the refinement's match)."""

    tolerance: float  # share of the dissimilarity left that the mean field may cost; 0: the stage is off
    max_px: float  # a change this long (full-resolution px) or longer is never taken
    radius: int | tuple[int, ...]  # the match's NCC window radius (the refinement's)
    mode: str  # how frame t is resampled (the refinement's)
    work_px: int  # frames larger than this on the short side are judged at that size (the refinement's)
    #: Gaussian sigma (work px) both frames are blurred by before they are matched: the refinement's own
    #: (:func:`.refine.denoising_sigma`, passed by the engine), so that the stage judges the frames the
    #: refinement fitted (thirty-seventh session); 0: as they are
    blur: float = 0.0

    @classmethod
    def from_config(cls, config, blur: float = 0.0) -> "ConsensusSettings":
        """The config's settings; ``blur``: the refinement's, taken only with ``config.consensus_denoise``."""
        return cls(config.consensus_tolerance, config.consensus_max_px, config.refine_radius,
                   config.refine_interpolation, config.refine_max_px,
                   float(blur) if config.consensus_denoise else 0.0)


def temporal_consensus(field: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor,
                       settings: ConsensusSettings, check: Callable[[], None] | None = None) -> torch.Tensor:
    """Pull ``field`` (N, 2, H, W) IN PLACE toward its neighbours' mean where the frames allow; returns it.

    ``moving``/``fixed``: (N, 1, H, W) frames t and t+1. ``check()`` raises to cancel (the field
    then holds the pairs finished so far, each either updated or untouched; every candidate is
    made from the fields as they were before the stage). Fewer than two pairs: unchanged.
    """
    n, _, h, w = field.shape
    if n < 2 or settings.tolerance <= 0 or settings.max_px <= 0:
        return field
    work = work_size((h, w), settings.work_px)
    sigma = max(work) * SMOOTH_SHARE
    per = max(1, PIXELS_AT_ONCE.get(field.device.type, PIXELS_AT_ONCE["cpu"]) // (h * w))
    before = field[0].clone()  # the unchanged field of the pair before the chunk (pair 0: its own)
    for start in range(0, n, per):
        if check is not None:
            check()
        stop = min(n, start + per)
        with torch.no_grad():
            own = field[start:stop].float()
            after = field[stop].float()[None] if stop < n else own[-1:]
            earlier = torch.cat([before.float()[None], own[:-1]])
            later = torch.cat([own[1:], after])
            mean = (earlier + own + later) / 3.0
            spread = _length(later - earlier)  # how far the neighbours disagree
            before = field[stop - 1].clone()
            keep = _allowed(own, mean, spread, moving[start:stop], fixed[start:stop], work, sigma, settings)
            field[start:stop] = (own + keep * (mean - own)).to(field.dtype)
    return field


def _allowed(own, mean, spread, moving, fixed, work, sigma: float, settings: ConsensusSettings) -> torch.Tensor:
    """(N, 1, H, W) weight in [0, 1] of the mean field: where it does not clearly lower the match,
    and the change and the neighbours' difference ``spread`` are sub-pixel."""
    h, w = own.shape[-2:]
    mov = gaussian_smooth(resize_image(moving.float(), work), settings.blur)
    fix = gaussian_smooth(resize_image(fixed.float(), work), settings.blur)
    means = fixed_means(fix, settings.radius)
    match_own = gaussian_smooth(match_map(warp(mov, resize_field(own, work), settings.mode), fix, settings.radius, means), sigma)
    match_mean = gaussian_smooth(match_map(warp(mov, resize_field(mean, work), settings.mode), fix, settings.radius, means), sigma)
    allowance = settings.tolerance * (1.0 - match_own).clamp_min(1e-3)
    keep = gaussian_smooth(((match_mean - match_own + allowance) / allowance).clamp(0.0, 1.0), sigma)
    if keep.shape[-2:] != (h, w):
        keep = F.interpolate(keep, size=(h, w), mode="bilinear", align_corners=True)
    short = (1.0 - _length(mean - own) / settings.max_px).clamp(0.0, 1.0)
    agree = (1.0 - spread / settings.max_px).clamp(0.0, 1.0)
    return keep * short * agree


def _length(field: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) length of each displacement of (N, 2, H, W) (``norm(dim=1)`` is 20x slower on a CPU)."""
    return torch.hypot(field[:, :1], field[:, 1:])
