"""Global (affine) motion of every frame pair, found before the U-Net scales.

Probe motion moves and turns the whole image by up to ~20 px per frame, and a
rotating structure (a phantom disk, a twisting ventricle) is a rotation
everywhere. A smoothness-regularised U-Net at 1/8 scale both loses such
motion (capture range) and shrinks it (any first-order penalty charges a
rotation ``2 omega^2`` per pixel). Six parameters per pair, optimised without
any regulariser on the same masked local NCC over a small pyramid, capture
it cheaply (images of at most ``max(sizes)`` px); the U-Net scales then
register what is left (:mod:`napari_nmsr.core.register`).

The field is ``u(p) = b + A (p - c)`` in the project convention
(:mod:`napari_nmsr.core.convention`: pull, (dy, dx), px of the full frame),
with ``c`` the centre of the region (mask centroid of the fixed frame, else
the image centre) so that translation and rotation are well separated. The
fit starts from phase correlation's translation and from the best of a set of
turns where they match clearly better (moves and turns beyond the pyramid's
capture from no motion). A pair whose fitted affine matches worse than no
motion keeps no motion, and one whose fit matches clearly worse than a
neighbouring pair's affine field takes that field (its start was missed).
"""

from __future__ import annotations

import numpy as np
import torch

from .convention import pixel_grid, resize_field, resize_image, warp
from .losses import local_cc_map, masked_mean, pair_masked_mean

__all__ = ["affine_fields", "AFFINE_SIZES", "AFFINE_STEPS"]

#: Long side (px) of the pyramid levels, and Adam steps per level.
AFFINE_SIZES = (32, 64, 128)
AFFINE_STEPS = (100, 60, 30)
#: Adam step sizes per level: translation in units of half the long side, the
#: affine matrix dimensionless (a rotation of 0.001 rad per step).
_LR = ((0.02, 0.01), (0.006, 0.004), (0.002, 0.0015))
#: A pair whose phase correlation (on the <= PHASE_SIZE px level) finds a translation of at least
#: PHASE_MIN_SHIFT of the long side starts the fit there instead of at no motion: about a pixel of
#: the coarsest level, beyond which the local NCC there stops pointing the way. Fine textures (PIV
#: particles, fine speckle) vanish at 32 px, so large probe moves were out of reach (tuning real PIV
#: 6, 10.7 px/frame: one pair 8.6 px off after this stage, 0.02 px with the phase start).
#: A start is kept only if the level's masked local NCC there beats no motion's (unrelated frames
#: have a correlation peak somewhere too) and it moves at most PHASE_MAX_SHIFT of the long side
#: (beyond, little of the frame overlaps). Asking for a clear gain (a tenth of the dissimilarity
#: left) lost tuning real PIV 6 again: its 0.054 rad turn leaves a translation alone a poor match.
PHASE_SIZE = 128
PHASE_MIN_SHIFT = 1.0 / 32
PHASE_MAX_SHIFT = 1.0 / 4
#: Turns (rad, both senses) tried as a start on the same level. From no motion the pyramid captures
#: turns up to about 0.1 rad (the rim of a region a third of the frame wide moves a pixel of the
#: 32 px level), so a pair starts its fit from a turn about the region's centre (on top of its
#: translation start) only when the masked local NCC there is highest at a turn of at least
#: ROTATION_MIN and clearly above the translation start's: by ROTATION_GAIN of the dissimilarity
#: left (a real turn of speckle is a sharp peak, 3-4x no motion's match on the tuning disks; probe
#: motion turning 0.02-0.05 rad gave flat curves whose maximum was 0.06 above). Steps of 0.025 rad
#: leave the start within about a pixel of the 128 px level at the rim. Without it a phantom disk
#: turning 0.2-0.26 rad per frame lost single pairs or the whole rotation (tuning disk 5: one pair
#: 7.9 px off after this stage; a held-out disk decided by rounding alone).
ROTATION_STARTS = tuple(s * k * 0.025 for k in range(1, 21) for s in (1.0, -1.0))
ROTATION_MIN = 0.1
ROTATION_GAIN = 0.2
#: A pair whose own fit matches its frames worse than a neighbouring pair's affine field does (on the
#: same level, by at least this share of the dissimilarity its own fit leaves) takes that field: the
#: pair's start was missed (see :func:`_neighbours_where_better`).
NEIGHBOUR_GAIN = 0.05


def _level_size(full: tuple[int, int], long_side: int) -> tuple[int, int]:
    h, w = full
    f = min(1.0, long_side / max(h, w))
    return max(8, round(h * f)), max(8, round(w * f))


def _at_size(moving, fixed, mask, size):
    """Frames t, t+1 and the mask's 0/1 weights (or None) resampled to ``size``."""
    weight = None if mask is None else (resize_image(mask, size) > 0.5).float()
    return resize_image(moving, size), resize_image(fixed, size), weight


def _top_level(moving, fixed, mask):
    """(size, frames t, t+1, weights) on the <= PHASE_SIZE px level, where the starts are chosen
    and the fit is checked against no motion: resampled once per run and shared by them."""
    size = _level_size(tuple(fixed.shape[-2:]), PHASE_SIZE)
    return (size, *_at_size(moving, fixed, mask, size))


def _to_full(full: tuple[int, int], size: tuple[int, int], device) -> torch.Tensor:
    """(2,) factors taking px of a level of ``size`` to px of the ``full`` frame (align-corners)."""
    return torch.tensor([(full[0] - 1) / max(size[0] - 1, 1), (full[1] - 1) / max(size[1] - 1, 1)],
                        device=device)


def _field_on(grid_full: torch.Tensor, b: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """u(p) = b + A (p - c) at full-resolution points grid_full (2, h, w) -> (N, 2, h, w) full px."""
    d = grid_full[None] - c[:, :, None, None]  # (N, 2, h, w)
    return b[:, :, None, None] + torch.einsum("nij,njhw->nihw", a, d)


@torch.no_grad()
def _field_on_full(grid: torch.Tensor, b: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """:func:`_field_on` written a pair at a time into one array: all pairs at once held the
    offsets, the product and the sum, three fields of the sequence (792 MB at 45x768x1024)."""
    out = torch.empty((b.shape[0], 2) + tuple(grid.shape[-2:]), device=grid.device)
    for i in range(b.shape[0]):
        out[i : i + 1] = _field_on(grid, b[i : i + 1], a[i : i + 1], c[i : i + 1])
    return out


def affine_fields(moving: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None = None,
                  radius: int = 6, sizes=AFFINE_SIZES, steps=AFFINE_STEPS,
                  cancel=None, phase_start: bool = True) -> torch.Tensor:
    """Affine pull field per pair. moving, fixed: (N, 1, H, W); mask (N, 1, H, W) float or None.

    Returns (N, 2, H, W) float32, px of the full frame, project convention.
    ``cancel()`` is polled every step (raise from it to stop). ``phase_start``: start
    pairs that moved far from phase correlation's translation (see PHASE_MIN_SHIFT), and
    pairs that turned far from the best of ROTATION_STARTS.
    """
    n, _, H, W = fixed.shape
    device = fixed.device
    half = max(H, W) / 2.0
    if mask is not None:
        weight = mask[:, 0]
        total = weight.sum(dim=(1, 2)).clamp_min(1.0)
        g = pixel_grid(H, W, device=device)
        c = torch.stack([(weight * g[i]).sum(dim=(1, 2)) / total for i in range(2)], dim=1)
    else:
        c = torch.tensor([(H - 1) / 2.0, (W - 1) / 2.0], device=device).expand(n, 2).clone()
    t = torch.zeros(n, 2, device=device, requires_grad=True)  # translation / half
    a = torch.zeros(n, 2, 2, device=device, requires_grad=True)
    top = _top_level(moving, fixed, mask)
    if phase_start:
        with torch.no_grad():
            t.copy_(_phase_start(moving, fixed, mask, radius, top) / half)
            a.copy_(_rotation_start(moving, fixed, mask, radius, t * half, c, top))
    levels = []
    for long_side in sizes:
        size = _level_size((H, W), long_side)
        if levels and size == levels[-1]:
            continue
        levels.append(size)
    for li, size in enumerate(levels):
        mv, fx, mk = top[1:] if size == top[0] else _at_size(moving, fixed, mask, size)
        factor = _to_full((H, W), size, device).view(1, 2, 1, 1)
        grid_full = pixel_grid(*size, device=device) * factor[0]
        lr_t, lr_a = _LR[min(li, len(_LR) - 1)]
        opt = torch.optim.Adam([{"params": [t], "lr": lr_t}, {"params": [a], "lr": lr_a}])
        n_steps = steps[min(li, len(steps) - 1)]
        for _ in range(n_steps):
            if cancel is not None:
                cancel()
            opt.zero_grad(set_to_none=True)
            u = _field_on(grid_full, t * half, a, c) / factor
            loss = -masked_mean(local_cc_map(warp(mv, u), fx, radius), mk)
            loss.backward()
            opt.step()
    with torch.no_grad():
        field = _field_on_full(pixel_grid(H, W, device=device), t * half, a, c)
        keep = _better_than_identity(moving, fixed, mask, field, radius, top)
        field[~keep] = 0.0
        if phase_start and n > 1:
            field = _neighbours_where_better(field, radius, top)
    return field.detach()


@torch.no_grad()
def _neighbours_where_better(field: torch.Tensor, radius: int, top) -> torch.Tensor:
    """``field`` (N, 2, H, W), where a pair takes pair t-1's or t+1's affine field if that matches the
    pair's own frames (masked local NCC on the :func:`_top_level`) better than its own fit by
    NEIGHBOUR_GAIN of the dissimilarity its own leaves (the better neighbour, where both do).

    A start is chosen per pair, and a pair whose turn is just below the start's bar keeps no turn
    while its neighbours turn with it: a held-out phantom disk turning 0.31 rad per frame lost one pair
    of nine whole (its best turn's match 0.318 where the bar was 0.324; the pair's field 12.4 px off,
    the disk's fitted omega 11 % low over the sequence; thirty-seventh session). The motion of the
    pairs before and after is a start the frames can judge directly: probe motion that turns back
    matches worse through a neighbour's field and keeps its own."""
    n = field.shape[0]
    size, mv, fx, weight = top

    def match(candidate):
        return pair_masked_mean(local_cc_map(warp(mv, resize_field(candidate, size)), fx, radius), weight)

    own = match(field)
    best, out = own.clone(), field.clone()
    pairs = torch.arange(n, device=field.device)
    for step in (-1, 1):
        index = (pairs + step).clamp(0, n - 1)
        candidate = field[index]
        score = match(candidate)
        better = (score >= own + NEIGHBOUR_GAIN * (1.0 - own)) & (score > best) & (index != pairs)
        out[better] = candidate[better]
        best = torch.where(better, score, best)
    return out


@torch.no_grad()
def _better_than_identity(moving, fixed, mask, field, radius, top=None) -> torch.Tensor:
    """(N,) bool: the affine field's local CC beats no motion (checked on the :func:`_top_level`)."""
    size, mv, fx, weight = top or _top_level(moving, fixed, mask)
    cc_affine = pair_masked_mean(local_cc_map(warp(mv, resize_field(field, size)), fx, radius), weight)
    cc_identity = pair_masked_mean(local_cc_map(mv, fx, radius), weight)
    return cc_affine >= cc_identity


@torch.no_grad()
def _phase_start(moving, fixed, mask, radius, top=None) -> torch.Tensor:
    """(N, 2) translation (full px, pull) to start each pair's fit from; zero where it should not.

    scikit-image's phase correlation of the whole frames on a <= PHASE_SIZE px level; kept for a
    pair only when it is at least PHASE_MIN_SHIFT of the long side (a start from no motion finds
    smaller moves itself), at most PHASE_MAX_SHIFT, and its masked local NCC beats no motion's.
    ``top``: :func:`_top_level`'s frames, if the caller has them.
    """
    from skimage.registration import phase_cross_correlation

    n, _, H, W = fixed.shape
    size, mv, fx, weight = top or _top_level(moving, fixed, mask)
    to_full = _to_full((H, W), size, fixed.device)
    shifts = np.zeros((n, 2), np.float32)
    a, b = mv[:, 0].float().cpu().numpy(), fx[:, 0].float().cpu().numpy()
    for i in range(n):
        # The shift that registers frame t onto frame t+1; a pull field is its opposite.
        shift, _, _ = phase_cross_correlation(b[i], a[i], upsample_factor=4, normalization=None)
        shifts[i] = -np.asarray(shift, np.float32)
    level = torch.from_numpy(shifts).to(fixed.device)  # px of the level
    far = (level.norm(dim=1) >= PHASE_MIN_SHIFT * max(size)) & (level.abs().amax(dim=1) <= PHASE_MAX_SHIFT * max(size))
    if bool(far.any()):
        idx = far.nonzero()[:, 0]
        cand = level[idx].view(-1, 2, 1, 1).expand(-1, 2, *size)
        w = None if weight is None else weight[idx]
        cc_shift = pair_masked_mean(local_cc_map(warp(mv[idx], cand), fx[idx], radius), w)
        cc_none = pair_masked_mean(local_cc_map(mv[idx], fx[idx], radius), w)
        far[idx] = cc_shift > cc_none
    return torch.where(far[:, None], level * to_full, torch.zeros_like(level))


def _rotation_matrix(theta: torch.Tensor) -> torch.Tensor:
    """(K,) turns (rad) -> (K, 2, 2) matrices A of ``u = b + A (p - c)`` that turn by theta."""
    cos, sin = torch.cos(theta) - 1.0, torch.sin(theta)
    return torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2)


@torch.no_grad()
def _rotation_start(moving, fixed, mask, radius, b, c, top=None) -> torch.Tensor:
    """(N, 2, 2) affine matrix to start each pair's fit from: the turn of ROTATION_STARTS about
    ``c`` (N, 2, full px) on top of the translation start ``b`` (N, 2, full px) whose masked local
    NCC on the <= PHASE_SIZE px level is highest, where that turn is at least ROTATION_MIN and beats
    ``b`` alone by ROTATION_GAIN of the dissimilarity left; zero elsewhere. ``top``: as
    :func:`_phase_start`'s."""
    n, _, H, W = fixed.shape
    size, mv, fx, weight = top or _top_level(moving, fixed, mask)
    factor = _to_full((H, W), size, fixed.device)
    grid = pixel_grid(*size, device=fixed.device) * factor.view(2, 1, 1)
    thetas = torch.tensor((0.0,) + ROTATION_STARTS, device=fixed.device)
    mats = _rotation_matrix(thetas)
    scores = torch.stack([
        pair_masked_mean(local_cc_map(warp(mv, _field_on(grid, b, m.expand(n, 2, 2), c) / factor.view(1, 2, 1, 1)), fx, radius), weight)
        for m in mats])  # (K, N); row 0: the translation start alone
    top, best = scores.max(dim=0)
    clear = (thetas[best].abs() >= ROTATION_MIN - 1e-6) & (top >= scores[0] + ROTATION_GAIN * (1.0 - scores[0]))
    return mats[torch.where(clear, best, torch.zeros_like(best))]
