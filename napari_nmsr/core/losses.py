"""The paper's registration loss: negative local NCC plus lambda * gradient L2.

Local statistics use separable box means (computed in float32 or better; edge windows shrink to the
valid part of the image). Variances are floored at ``eps`` so flat regions (the
black outside of an echo sector) give 0 correlation, never NaN (MONAI #1868).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["box_mean", "box_means", "local_cc_map", "mean_local_cc_map", "ncc_loss", "smoothness_loss", "bending_loss", "divcurl_loss",
           "temporal_loss", "gaussian_smooth", "masked_mean", "pair_masked_mean"]

VARIANCE_FLOOR = 1e-5
#: Where :func:`temporal_loss` turns from quadratic to linear: a change of the field's rate of change
#: between consecutive pairs, in px of the grid it is computed on.
TEMPORAL_EPS = 0.1


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)^2 window around each pixel of (N, C, H, W), separably.

    Edge windows shrink to the valid part of the image. On a CPU as running sums
    (float64, so long rows lose no precision), 4-7x faster than ``avg_pool2d``,
    whose CPU kernel dominated the guard and metrics at full resolution; other
    devices keep ``avg_pool2d`` (fast there, and MPS has no float64).
    """
    if x.device.type == "cpu":
        return _running_mean(_running_mean(x, radius, 3), radius, 2).to(x.dtype)
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


def _running_mean(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Window mean along one dimension (2 or 3) from a cumulative sum, in float64."""
    n = x.shape[dim]
    pad = (radius + 1, radius, 0, 0) if dim == 3 else (0, 0, radius + 1, radius)
    total = torch.cumsum(F.pad(x.double(), pad), dim)
    sums = total.narrow(dim, 2 * radius + 1, n) - total.narrow(dim, 0, n)
    return sums / _counts(n, radius, x.device).view([n if d == dim else 1 for d in range(4)])


def local_cc_map(a: torch.Tensor, b: torch.Tensor, radius: int, eps: float = VARIANCE_FLOOR,
                 b_means: tuple | None = None) -> torch.Tensor:
    """Squared local correlation coefficient (paper eq. 3), (N, 1, H, W) in [0, 1].

    Computed in float32 whatever the input dtype (never under autocast).
    ``b_means``: :func:`fixed_window_means` of ``b`` (the same values, computed once
    while a field is fitted against a fixed ``b``).
    """
    a = a.float()
    b = b.float()
    with torch.autocast(device_type=a.device.type, enabled=False):
        if b_means is None:  # (this order of operations is the one every tuned result was made with)
            return _cc_from_means(*(box_mean(q, radius) for q in (a, b, a * b, a * a, b * b)), eps)
        (mb, mbb), = b_means
        return _cc_from_means(box_mean(a, radius), mb, box_mean(a * b, radius), box_mean(a * a, radius), mbb, eps)


def fixed_window_means(b: torch.Tensor, radius: int | tuple[int, ...]) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The window means of ``b`` and ``b^2`` that :func:`local_cc_map` (one radius) or
    :func:`mean_local_cc_map` (several) need, one (mean b, mean b^2) per radius: constant while a
    field is fitted against a fixed frame, so an optimisation loop computes them once."""
    b = b.float()
    with torch.autocast(device_type=b.device.type, enabled=False):
        if isinstance(radius, (tuple, list)):
            return tuple(zip(box_means(b, tuple(radius)), box_means(b * b, tuple(radius))))
        return ((box_mean(b, radius), box_mean(b * b, radius)),)


def _cc_from_means(ma, mb, mab, maa, mbb, eps: float) -> torch.Tensor:
    """Squared correlation coefficient from window means of a, b, ab, a^2, b^2 (variances floored)."""
    cross = mab - ma * mb
    va = (maa - ma * ma).clamp_min(eps)
    vb = (mbb - mb * mb).clamp_min(eps)
    return (cross * cross / (va * vb)).clamp(0.0, 1.0)


def box_means(x: torch.Tensor, radii: tuple[int, ...]) -> list[torch.Tensor]:
    """:func:`box_mean` of ``x`` at each radius. On a CPU from one summed-area table (float64), so
    a second window costs a few lookups instead of two more running sums, with a hand-written
    backward (the box mean is its own adjoint up to the window counts), so autograd keeps no table;
    elsewhere one by one."""
    if x.device.type != "cpu":
        return [box_mean(x, r) for r in radii]
    return list(_BoxMeans.apply(x, tuple(radii)))


class _BoxMeans(torch.autograd.Function):
    """Window means at several radii from one summed-area table; backward: dL/dx = sum over the
    windows of box_sum(g / count), the same table trick (a pixel is in a window iff the window's
    centre is in the pixel's window of the same radius, edge windows included)."""

    @staticmethod
    def forward(ctx, x, radii):
        ctx.radii = radii
        return tuple(_table_means(x, radii))

    @staticmethod
    def backward(ctx, *grads):
        h, w = grads[0].shape[-2:]
        total = None
        for g, r in zip(grads, ctx.radii):
            if g is None:
                continue
            part = _table_means(g.double() / _window_counts(h, w, r, g.device), (r,), scale=False)[0]
            total = part if total is None else total + part
        return (None if total is None else total.to(grads[0].dtype)), None


def _table_means(x: torch.Tensor, radii: tuple[int, ...], scale: bool = True) -> list[torch.Tensor]:
    """Window sums (``scale``: means) of ``x`` at each radius, from one float64 summed-area table."""
    big = max(radii)
    h, w = x.shape[-2:]
    table = F.pad(x.double(), (big + 1, big, big + 1, big)).cumsum(3).cumsum(2)
    out = []
    for r in radii:
        lo, hi = big - r, big + 1 + r  # the table's rows/columns just before and at the window's ends
        sums = (table[..., hi : hi + h, hi : hi + w] - table[..., lo : lo + h, hi : hi + w]
                - table[..., hi : hi + h, lo : lo + w] + table[..., lo : lo + h, lo : lo + w])
        out.append((sums / _window_counts(h, w, r, x.device)).to(x.dtype) if scale else sums)
    return out


def _counts(n: int, radius: int, device) -> torch.Tensor:
    """Pixels of each window along a side of ``n`` (edge windows shrink to the valid part)."""
    i = torch.arange(n, device=device)
    return (i.clamp(max=radius) + i.flip(0).clamp(max=radius) + 1).double()


def _window_counts(h: int, w: int, radius: int, device) -> torch.Tensor:
    """(h, w) pixels of each 2-D window (edge windows shrink to the valid part)."""
    return _counts(h, radius, device)[:, None] * _counts(w, radius, device)


def mean_local_cc_map(a: torch.Tensor, b: torch.Tensor, radii: tuple[int, ...],
                      eps: float = VARIANCE_FLOOR, b_means: tuple | None = None) -> torch.Tensor:
    """The mean of :func:`local_cc_map` over several window radii, the window sums shared (:func:`box_means`).

    ``b_means``: :func:`fixed_window_means` of ``b`` at ``radii``, when computed once beforehand.
    """
    a = a.float()
    b = b.float()
    with torch.autocast(device_type=a.device.type, enabled=False):
        fixed = b_means or fixed_window_means(b, tuple(radii))
        ma, mab, maa = (box_means(q, radii) for q in (a, a * b, a * a))  # [quantity][radius]
        return sum(_cc_from_means(ma[i], fixed[i][0], mab[i], maa[i], fixed[i][1], eps)
                   for i in range(len(radii))) / len(radii)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of x over mask (float weights broadcastable to x), or plain mean."""
    if mask is None:
        return x.mean()
    w = mask.to(x.dtype).expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1.0)


def pair_masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(N,) mean of each item of x (N, C, H, W) over its mask (N, 1, H, W) float weights, or over everything."""
    w = torch.ones_like(x[:, :1]) if mask is None else mask.to(x.dtype)
    return (x * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * x.shape[1]).clamp_min(1.0)


def ncc_loss(warped: torch.Tensor, fixed: torch.Tensor, radius: int = 6, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative mean local squared NCC between warped moving and fixed images."""
    return -masked_mean(local_cc_map(warped, fixed, radius), mask)


def smoothness_loss(field: torch.Tensor) -> torch.Tensor:
    """``mean |d/dx F|^2 + mean |d/dy F|^2`` of a field (N, 2, H, W), forward differences."""
    dy = field[:, :, 1:, :] - field[:, :, :-1, :]
    dx = field[:, :, :, 1:] - field[:, :, :, :-1]
    return (dy * dy).mean() + (dx * dx).mean()


def bending_loss(field: torch.Tensor, per_pair: bool = False) -> torch.Tensor:
    """Bending energy ``mean(u_yy^2 + 2 u_xy^2 + u_xx^2)`` of a field (N, 2, H, W); (N,) with ``per_pair``.

    Second differences are zero for every affine field (translation, rotation,
    shear, scaling), so unlike :func:`smoothness_loss` this term never shrinks
    rigid rotation, vortex cores, twist or probe motion; it only penalises
    curvature of the field, which is where speckle noise shows up.
    """
    uyy = field[:, :, 2:, :] - 2 * field[:, :, 1:-1, :] + field[:, :, :-2, :]
    uxx = field[:, :, :, 2:] - 2 * field[:, :, :, 1:-1] + field[:, :, :, :-2]
    d = field[:, :, 1:, :] - field[:, :, :-1, :]
    uxy = d[:, :, :, 1:] - d[:, :, :, :-1]
    if per_pair:
        return (uyy * uyy).mean((1, 2, 3)) + (uxx * uxx).mean((1, 2, 3)) + 2 * (uxy * uxy).mean((1, 2, 3))
    return (uyy * uyy).mean() + (uxx * uxx).mean() + 2 * (uxy * uxy).mean()


def divcurl_loss(field: torch.Tensor, curl_weight: float = 1.0) -> torch.Tensor:
    """Second-order div-curl energy ``(mean |grad div u|^2 + curl_weight mean |grad curl u|^2) / 2`` of (N, 2, H, W).

    The regulariser of fluid-flow estimation (Suter 1994; Corpetti, Memin & Perez 2002): like the
    bending energy it is zero for every affine field (divergence and curl are then constant), and
    at ``curl_weight`` 1 it is about the bending energy (equal for smooth fields up to boundary
    terms). Below 1 the rotational part of the field's curvature costs less than the divergent
    part: a vortex core (curl only) can follow the blood's turning while contraction and speckle
    noise (divergence as much as curl) stay as constrained (benchmarks/README.md, eighteenth session).
    Derivatives are taken at cell centres (each first difference averaged across the other axis).
    """
    u0, u1 = field[:, 0], field[:, 1]  # (dy, dx)

    def across_x(d):
        return 0.5 * (d[:, :, 1:] + d[:, :, :-1])

    def across_y(d):
        return 0.5 * (d[:, 1:, :] + d[:, :-1, :])

    div = across_x(u0[:, 1:, :] - u0[:, :-1, :]) + across_y(u1[:, :, 1:] - u1[:, :, :-1])  # (N, H-1, W-1)
    energy = smoothness_loss(div[:, None])  # mean |grad q|^2 is smoothness_loss of q
    if curl_weight != 0:  # at 0 (the default's 1/2 scale) the curl's differences are not built at every step
        curl = across_x(u1[:, 1:, :] - u1[:, :-1, :]) - across_y(u0[:, :, 1:] - u0[:, :, :-1])
        energy = energy + curl_weight * smoothness_loss(curl[:, None])
    return 0.5 * energy


def temporal_loss(field: torch.Tensor, mask: torch.Tensor | None = None, eps: float = TEMPORAL_EPS) -> torch.Tensor:
    """How unevenly consecutive pairs' fields change: robust second temporal difference of (N, 2, H, W).

    ``field`` holds N >= 3 consecutive pairs in time order; ``d = u_t - (u_t-1 + u_t+1) / 2`` for the
    middle ones, charged ``eps^2 (sqrt(1 + (d / eps)^2) - 1)`` per component (Charbonnier: quadratic
    below ``eps`` px, linear above), averaged over ``mask`` (N, 1, H, W) of the middle pairs (or
    everywhere). Zero for motion that is steady or changes at a steady rate (a slow vortex, a wall
    mid-contraction); pair-to-pair noise pays quadratically, while a real turn of the motion (a probe
    that turns back, a wall at end-systole) pays only linearly. Fewer than three pairs: 0.
    """
    if field.shape[0] < 3:
        return field.new_zeros(())
    d = field[1:-1] - 0.5 * (field[:-2] + field[2:])
    cost = eps * eps * (torch.sqrt(1.0 + (d / eps) ** 2) - 1.0)
    if mask is None:
        return cost.mean()
    weight = mask[1:-1].to(cost.dtype)
    return (cost * weight).sum() / (weight.sum() * cost.shape[1]).clamp_min(1e-6)


def gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a field (N, C, H, W), sigma in its pixels (0: unchanged).

    Replicate padding. A blurred field cannot hold speckle-scale noise, while
    any motion that is smooth on the scale of sigma (translation, rotation,
    a vortex core several sigma wide) passes unchanged: a band limit on the
    field rather than a penalty that shrinks it.
    """
    if sigma <= 0:
        return field
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = field.shape[1]
    f = F.pad(field, (radius, radius, 0, 0), mode="replicate")
    f = F.conv2d(f, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    f = F.pad(f, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(f, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
