"""Is the noise between two frames white? A test the refinement uses before it resamples frame t.

Resampling frame t at a fractional displacement averages its pixel noise with the neighbours' (by
how much depends on the fraction: bicubic at half a pixel keeps 73 % of the noise variance, at
whole pixels all of it), and averaged noise correlates better with frame t+1. So on frames with
white pixel noise the local NCC prefers some fractions over others, and the fitted field is pulled
by a smooth, position-dependent bias (thirty-fourth session, benchmarks/README.md: a slow warp of
real echo texture plus 2.7 % noise ended 0.13 px off along x, the same sign in every pair).
Blurring both frames a little first removes the fine-scale noise the resampling modulates, but it
also removes fine speckle where speckle is the signal (simulated log-compressed speckle: +7 to
+22 % EPE per family), so the refinement blurs only when the noise is white.

The test: frame t warped by the current field is compared with frame t+1 in Fourier space (both
mirror-extended, so the frame edges add no false high frequencies). What the two share is signal;
the rest (power minus cross-power) is what changed between them: noise, decorrelation and what the
field still gets wrong. That part's power near the Nyquist frequency against its power at a
fifth of it is its *flatness*: about 1 for white noise, under 0.12 when the change is shaped like
the speckle itself (electronic noise through the receive filter, scatterers leaving the plane,
misalignment), on every tuning case of the suite.

Convention: :mod:`napari_nmsr.core.convention` (frame t pulled through the pair's field).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .convention import warp

__all__ = ["WHITE_FLATNESS", "incoherent_flatness", "mirror_extend"]

#: Flatness at or above which the noise counts as white. The tuning split's simulated families
#: measured 0.02-0.11 and its real-texture warps with added pixel noise 0.32-1.74 (the true
#: fields; benchmarks/README.md, thirty-fourth session).
WHITE_FLATNESS = 0.2

#: The two frequency bands compared, in cycles per pixel (Nyquist is 0.5).
HIGH_BAND = (0.4, 0.5)
MID_BAND = (0.1, 0.2)


def mirror_extend(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H-2, 2W-2): each frame and its mirror images, a periodic, edge-free tile
    (reflect padding by all but the edge rows and columns)."""
    h, w = images.shape[-2:]
    return F.pad(images, (0, w - 2, 0, h - 2), mode="reflect")


@torch.no_grad()
def incoherent_flatness(moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor,
                        mode: str = "bicubic") -> float:
    """Flatness of the power frame t (``moving``, warped by ``field``) and t+1 (``fixed``) do not share.

    ``moving``/``fixed``: (N, 1, H, W) frames; ``field``: (N, 2, H, W) pull fields in px. Returns the
    mean power of (|F_t|^2 + |F_t+1|^2) / 2 - Re(F_t conj F_t+1) in :data:`HIGH_BAND`, over that in
    :data:`MID_BAND`, all pairs pooled; 0.0 for frames too small to hold both bands or with no change.
    """
    h, w = fixed.shape[-2:]
    if h < 4 or w < 4:
        return 0.0
    warped, fixed = warp(moving.float(), field.float(), mode), fixed.float()
    a = torch.fft.rfft2(mirror_extend(warped - warped.mean((-2, -1), keepdim=True)))
    b = torch.fft.rfft2(mirror_extend(fixed - fixed.mean((-2, -1), keepdim=True)))
    change = (0.5 * (a.abs() ** 2 + b.abs() ** 2) - (a * b.conj()).real).sum((0, 1))
    ky = torch.fft.fftfreq(2 * h - 2, device=change.device).abs()[:, None]
    kx = torch.fft.rfftfreq(2 * w - 2, device=change.device)[None, :]
    radius = torch.sqrt(ky ** 2 + kx ** 2)

    def band(lo: float, hi: float) -> float:
        inside = (radius >= lo) & (radius < hi)
        return float(change[inside].mean()) if bool(inside.any()) else math.nan

    high, mid = band(*HIGH_BAND), band(*MID_BAND)
    if not (math.isfinite(high) and math.isfinite(mid)) or mid <= 0:
        return 0.0
    return max(0.0, high / mid)
