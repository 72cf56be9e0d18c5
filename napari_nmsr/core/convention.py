"""The one displacement-field convention of napari-nmsr, written down once.

Every module (engine, metrics, tracking, analysis, GUI, files) goes through
the functions here; nothing else calls ``grid_sample`` on a field.

The convention
--------------
* **Shape and axis order.** A field is ``(..., 2, H, W)`` float32. Channel 0
  is the displacement along rows (``dy``, image axis 0, downwards), channel 1
  along columns (``dx``, image axis 1, rightwards): the same (y, x) order as
  numpy and napari. Points are ``(..., 2)`` arrays in the same (y, x) order.
* **Units.** Pixels of the grid the field lives on (for a result file: the
  full-resolution frame). Pixel ``(i, j)`` sits at coordinate ``(i, j)``; the
  image spans ``[0, H-1] x [0, W-1]`` (``align_corners=True``), so resizing a
  field by ``resize_field`` scales its values by ``(H'-1)/(H-1)``.
* **Which frame is fixed.** For the frame pair ``(t, t+1)`` the *moving* image
  is frame ``t`` and the *fixed* image is frame ``t+1`` (the paper's set-up).
  The field ``u_t`` lives on the grid of frame ``t+1`` and *pulls*:
  ``warp(frame_t, u_t)(p) = frame_t(p + u_t(p)) ~= frame_{t+1}(p)``.
  So the material seen at ``p`` in frame ``t+1`` was at ``p + u_t(p)`` in
  frame ``t``: its motion (velocity, pixels per frame) is ``-u_t(p)``; see
  :func:`motion_from_field`.
* **Sampling.** Bilinear, ``align_corners=True``, ``border`` padding for both
  images and fields (outside values repeat the edge rather than pulling in
  zeros, which would look like a black band moving in).
* **Composition.** Warping by ``a`` and then by ``b`` equals warping once by
  ``compose(a, b)(p) = b(p) + a(p + b(p))``. This is the order the paper's
  *procedure* implies (warp the frame by the previous scale's field, then
  register the rest); the paper's printed eq. (4),
  ``a(p) + b(p + a(p))``, is the other order and fails the
  composition test in ``tests/test_convention.py`` (see that test).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CONVENTION",
    "pixel_grid",
    "warp",
    "compose",
    "resize_field",
    "resize_image",
    "sample_field",
    "motion_from_field",
    "warp_frames",
]

#: Machine-readable copy of the convention, stored in every result file.
CONVENTION = {
    "name": "napari-nmsr-pull-v1",
    "shape": "(..., 2, H, W)",
    "channels": ["dy (rows, axis 0)", "dx (columns, axis 1)"],
    "units": "pixels of the full-resolution frame",
    "moving": "frame t",
    "fixed": "frame t+1",
    "direction": "pull: warped_t(p) = frame_t(p + u_t(p)) ~ frame_{t+1}(p)",
    "motion": "material at p in frame t+1 moved by -u_t(p) (pixels/frame)",
    "align_corners": True,
    "padding": "border",
    "interpolation": "bilinear",
    "composition": "warp(warp(I, a), b) == warp(I, compose(a, b)); "
    "compose(a, b)(p) = b(p) + a(p + b(p))",
}


def pixel_grid(height: int, width: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates ``(2, H, W)``: channel 0 the row, channel 1 the column."""
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gy, gx))


def _normalised_sampling_grid(coords: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2, h, w) pixel coords (y, x) -> grid_sample's (N, h, w, 2) in (x, y), [-1, 1]."""
    sy = 2.0 / max(height - 1, 1)
    sx = 2.0 / max(width - 1, 1)
    gy = coords[:, 0] * sy - 1.0
    gx = coords[:, 1] * sx - 1.0
    return torch.stack((gx, gy), dim=-1)


def _sample(values: torch.Tensor, coords: torch.Tensor, mode: str) -> torch.Tensor:
    h, w = values.shape[-2:]
    grid = _normalised_sampling_grid(coords, h, w)
    return F.grid_sample(values, grid, mode=mode, padding_mode="border", align_corners=True)


def warp(image: torch.Tensor, field: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Pull ``image`` (N, C, H, W) through ``field`` (N, 2, H, W): ``image(p + field(p))``."""
    if field.shape[-3] != 2 or field.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"field {tuple(field.shape)} does not match image {tuple(image.shape)}: "
            "expected (N, 2, H, W) on the image grid"
        )
    h, w = image.shape[-2:]
    grid = pixel_grid(h, w, device=field.device, dtype=field.dtype)
    return _sample(image.to(field.dtype), grid + field, mode)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Field equal to warping by ``first`` and then by ``second``.

    ``compose(a, b)(p) = b(p) + a(p + b(p))``: to find where pixel p of the
    twice-warped image comes from, first follow ``b`` (the last warp applied),
    then ``a`` at the point ``b`` lands on.
    """
    return second + warp(first, second)


def resize_field(field: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a field (N, 2, h, w) to ``size`` = (H, W) and rescale its pixel values."""
    h, w = field.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return field
    out = F.interpolate(field, size=(H, W), mode="bilinear", align_corners=True)
    fy = (H - 1) / max(h - 1, 1)
    fx = (W - 1) / max(w - 1, 1)
    factor = torch.tensor([fy, fx], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out * factor


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample images (N, C, h, w) to ``size`` on the same align-corners grid.

    Downsampling is anti-aliased (speckle would otherwise alias into false
    texture at the coarse scales).
    """
    h, w = image.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return image
    antialias = H < h or W < w
    return F.interpolate(image, size=(H, W), mode="bilinear", align_corners=True, antialias=antialias)


def sample_field(field: torch.Tensor | np.ndarray, points: torch.Tensor | np.ndarray) -> np.ndarray | torch.Tensor:
    """Bilinear value of ``field`` (2, H, W) at sub-pixel ``points`` (N, 2) (y, x).

    Returns (N, 2) in the type of ``field`` (numpy in, numpy out). Points outside
    the image get the value at the nearest edge (border padding).
    """
    as_numpy = isinstance(field, np.ndarray)
    f = torch.as_tensor(np.asarray(field, dtype=np.float32) if as_numpy else field)
    p = torch.as_tensor(np.asarray(points, dtype=np.float32) if isinstance(points, np.ndarray) else points)
    p = p.to(device=f.device, dtype=f.dtype)
    coords = p.T.reshape(1, 2, 1, -1)  # (1, 2, 1, N)
    out = _sample(f[None], coords, "bilinear")[0, :, 0, :].T  # (N, 2)
    return out.cpu().numpy() if as_numpy else out


def motion_from_field(field):
    """Motion of the material (pixels per frame) shown at each fixed-frame pixel.

    Under the pull convention the material at ``p`` in frame t+1 came from
    ``p + u(p)``, so it moved by ``-u(p)``. Quivers, vorticity and velocities
    in cm/s all use this, never the raw field.
    """
    return -field


def warp_frames(frames: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Numpy convenience: warp frames[:-1] by fields (T-1, 2, H, W) -> (T-1, H, W) float32."""
    img = torch.as_tensor(np.ascontiguousarray(frames[:-1], dtype=np.float32))[:, None]
    fld = torch.as_tensor(np.ascontiguousarray(fields, dtype=np.float32))
    with torch.no_grad():
        return warp(img, fld)[:, 0].numpy()
