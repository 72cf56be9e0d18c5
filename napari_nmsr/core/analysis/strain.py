"""Lagrangian myocardial strain from the composed fields (relative to frame 0).

* **Composed field** ``C_t`` (on frame t+1's grid) pulls from frame 0:
  the material at ``p`` in frame t+1 was at ``X = p + C_t(p)`` in frame 0;
  ``C_0 = u_0`` and ``C_t = compose(C_{t-1}, u_t)`` (``convention.compose``).
* **Strain map**: with ``G = dX/dp = I + grad C`` the deformation gradient is
  ``F = G^-1`` and the Green-Lagrange strain ``E = (F^T F - I) / 2`` (computed
  in mm when the pixel spacing is known, so anisotropic pixels are right).
  It is shown at the material's *current* place (frame t+1's grid). Radial
  and circumferential components use directions from a centre in frame 0
  (the mask's filled centroid: the LV centre for a wall or cavity mask)
  evaluated at the material's frame-0 position; E1 >= E2 are the principal
  strains. Positive = lengthening.
* **Global strain along a contour** (GLS in a long-axis view, GCS in a
  short-axis view): the contour drawn/derived on frame 0 is tracked with
  :func:`napari_nmsr.core.tracking.track_points` and its length compared with
  frame 0: ``100 * (L_t - L_0) / L_0`` %.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage import measure

from ..convention import compose
from ..errors import MaskError
from ..tracking import track_points
from ._common import check_fields, check_mask

__all__ = ["composed_fields", "green_lagrange", "strain_maps", "mask_contour", "contour_strain"]


def composed_fields(fields) -> np.ndarray:
    """(T-1, 2, H, W) pull fields -> (T-1, 2, H, W) fields pulling from frame 0."""
    f = torch.as_tensor(check_fields(fields))
    out = torch.empty_like(f)
    with torch.no_grad():
        acc = f[:1]
        out[0] = acc[0]
        for t in range(1, f.shape[0]):
            acc = compose(acc, f[t : t + 1])
            out[t] = acc[0]
    return out.numpy()


def green_lagrange(composed: np.ndarray, pixel_spacing_mm=None) -> np.ndarray:
    """Green-Lagrange tensor (..., 2, 2, H, W) (index order y, x) of composed fields (..., 2, H, W)."""
    c = np.asarray(composed, dtype=np.float64)
    sy, sx = (1.0, 1.0) if pixel_spacing_mm is None else (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    # G = dX/dp in mm: G_mm[i, j] = s_i / s_j * G_px[i, j]
    s = (sy, sx)
    g = np.empty(c.shape[:-3] + (2, 2) + c.shape[-2:])
    for i in range(2):
        for j in range(2):
            d = np.gradient(c[..., i, :, :], axis=-2 + j)
            g[..., i, j, :, :] = (float(i == j) + d) * (s[i] / s[j])
    a, b, cc, d = g[..., 0, 0, :, :], g[..., 0, 1, :, :], g[..., 1, 0, :, :], g[..., 1, 1, :, :]
    det = a * d - b * cc
    det = np.where(np.abs(det) < 1e-9, 1e-9, det)  # folded fields: keep finite
    f = np.stack((np.stack((d, -b), -3), np.stack((-cc, a), -3)), -4) / det[..., None, None, :, :]
    ftf = np.einsum("...kihw,...kjhw->...ijhw", f, f)
    eye = np.eye(2).reshape(2, 2, 1, 1)
    return (0.5 * (ftf - eye)).astype(np.float32)


def strain_maps(fields, mask=None, *, centre_yx=None, pixel_spacing_mm=None, fill: float = 0.0) -> dict[str, np.ndarray]:
    """Per-pair strain maps (T-1, H, W) float32, in %, relative to frame 0.

    Returns ``{"err", "ecc", "e1", "e2"}``: radial, circumferential, and the
    two principal strains. Pair t is frame t+1's strain on frame t+1's grid;
    outside ``mask[t+1]`` (wall mask, (H, W) or (T, H, W)) the maps hold
    ``fill``. ``centre_yx`` (frame 0, px) defaults to the filled centroid of
    ``mask[0]``, or the image centre without a mask.
    """
    f = check_fields(fields)
    n, _, h, w = f.shape
    m = check_mask(mask, n + 1, h, w, what="wall mask")
    comp = composed_fields(f)
    e = green_lagrange(comp, pixel_spacing_mm)
    if centre_yx is None:
        centre_yx = ndimage.center_of_mass(ndimage.binary_fill_holes(m[0])) if m is not None else ((h - 1) / 2, (w - 1) / 2)
    sy, sx = (1.0, 1.0) if pixel_spacing_mm is None else pixel_spacing_mm
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ry = (yy[None] + comp[:, 0] - centre_yx[0]) * sy  # frame-0 position, mm
    rx = (xx[None] + comp[:, 1] - centre_yx[1]) * sx
    norm = np.maximum(np.hypot(ry, rx), 1e-9)
    ry, rx = ry / norm, rx / norm
    eyy, eyx, exx = e[:, 0, 0], e[:, 0, 1], e[:, 1, 1]
    err = eyy * ry * ry + 2 * eyx * ry * rx + exx * rx * rx
    ecc = eyy * rx * rx - 2 * eyx * ry * rx + exx * ry * ry
    mean, half = (eyy + exx) / 2, np.sqrt(((eyy - exx) / 2) ** 2 + eyx**2)
    out = {"err": err, "ecc": ecc, "e1": mean + half, "e2": mean - half}
    for k, v in out.items():
        v = 100.0 * v
        out[k] = (np.where(m[1:], v, fill) if m is not None else v).astype(np.float32)
    return out


def mask_contour(mask2d, n_points: int = 64) -> np.ndarray:
    """Closed endocardial contour (n_points, 2) (y, x) of a cavity or wall mask.

    A mask with a hole (a myocardial wall) gives the hole's outline (the
    endocardium); a filled mask (LV cavity) its own outline. Points are
    equally spaced in arc length.
    """
    m = np.asarray(mask2d, dtype=bool)
    filled = ndimage.binary_fill_holes(m)
    hole = filled & ~m
    target = hole if hole.sum() > 0.02 * filled.sum() else filled
    if target.sum() < 10:
        raise MaskError("the mask is too small to outline (fewer than 10 pixels)")
    outline = max(measure.find_contours(np.pad(target.astype(np.float32), 1), 0.5), key=len) - 1.0
    seg = np.linalg.norm(np.diff(outline, axis=0), axis=1)
    cum = np.concatenate(([0.0], np.cumsum(seg)))
    u = np.linspace(0.0, cum[-1], n_points, endpoint=False)
    return np.stack((np.interp(u, cum, outline[:, 0]), np.interp(u, cum, outline[:, 1])), axis=1)


def contour_strain(fields, contour_yx, *, closed: bool = True, pixel_spacing_mm=None) -> dict[str, np.ndarray]:
    """Global strain (T,) % of a contour (N, 2) (y, x) drawn on frame 0.

    ``closed`` joins the last point to the first (short-axis endocardium or a
    cavity outline); an open contour (apical long-axis endocardium, annulus to
    annulus) is measured as drawn. Returns ``{"strain": (T,) %, "length": (T,)
    in mm or px, "positions": (T, N, 2)}``; frame 0 has strain 0.
    """
    f = check_fields(fields)
    pts = np.asarray(contour_yx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise MaskError(f"a contour needs at least 3 (y, x) points; got shape {pts.shape}")
    pos = track_points(f, pts, 0).positions  # (T, N, 2)
    s = np.array([1.0, 1.0] if pixel_spacing_mm is None else pixel_spacing_mm, dtype=np.float64)
    p = pos * s
    if closed:
        p = np.concatenate((p, p[:, :1]), axis=1)
    length = np.linalg.norm(np.diff(p, axis=1), axis=-1).sum(axis=1)
    if length[0] <= 1e-9:
        raise MaskError("the contour has zero length")
    return {"strain": 100.0 * (length - length[0]) / length[0], "length": length, "positions": pos}
