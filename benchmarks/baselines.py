"""Baseline registration methods for the benchmark.

Every baseline is ``estimate(frames) -> fields``: frames (T, H, W) float32 in
[0, 1], fields (T-1, 2, H, W) float32 in the project convention
(:mod:`napari_nmsr.core.convention`: channel 0 = dy, channel 1 = dx, px, on
frame t+1's grid, pulling frame t: ``frame_t(p + u_t(p)) ~ frame_{t+1}(p)``).
A baseline whose library is missing raises :class:`BaselineUnavailable`.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

__all__ = ["BaselineUnavailable", "BASELINES", "ANCHORS", "zero", "farneback", "dis", "openpiv", "ants_syn",
           "check_convention"]


class BaselineUnavailable(RuntimeError):
    """The library a baseline needs is not installed."""


def _check(frames) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected frames (T>=2, H, W), got {frames.shape}")
    return frames


def zero(frames) -> np.ndarray:
    """No motion: the floor every method must beat."""
    frames = _check(frames)
    t, h, w = frames.shape
    return np.zeros((t - 1, 2, h, w), np.float32)


#: OpenCV Farneback settings: 5 pyramid levels (reach ~15 px), box window
#: (flags=0). On our simulated cases the box window is the stronger baseline
#: (EPE 0.48/0.24/0.18/0.26 px vs 0.59/0.37/0.30/0.45 with the Gaussian one),
#: so that is what NMSR is compared against.
FARNEBACK = dict(pyr_scale=0.5, levels=5, winsize=15, iterations=5, poly_n=7, poly_sigma=1.5,
                 flags=0)


def farneback(frames, **overrides) -> np.ndarray:
    """OpenCV dense optical flow (Farneback 2003), converted to the project convention.

    ``calcOpticalFlowFarneback(prev, next)`` returns flow (H, W, 2) in (x, y)
    order with ``prev(y, x) ~ next(y + flow[..., 1], x + flow[..., 0])``.
    Called with prev = frame t+1 and next = frame t it is therefore a pull
    field on frame t+1's grid that samples frame t: exactly ``u_t`` once the
    channels are swapped to (y, x). ``--selfcheck`` in the benchmark verifies
    this on a known translation.
    """
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv is a test dependency
        raise BaselineUnavailable("opencv-python-headless is not installed") from exc
    frames = _check(frames)
    params = {**FARNEBACK, **overrides}
    img = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)  # Farneback wants 8-bit
    out = np.empty((len(frames) - 1, 2) + frames.shape[1:], np.float32)
    for t in range(len(frames) - 1):
        flow = cv2.calcOpticalFlowFarneback(img[t + 1], img[t], None, **params)
        out[t, 0] = flow[..., 1]
        out[t, 1] = flow[..., 0]
    return out


#: OpenCV DIS (Kroeger et al. 2016): the MEDIUM preset (patch 8, stride 3,
#: 25 gradient-descent iterations, coarsest scale chosen for the image) with
#: its variational refinement (5 iterations), on the finest pyramid level.
DIS = dict(preset="medium", finest_scale=0, variational_iterations=5)


def dis(frames, **overrides) -> np.ndarray:
    """OpenCV DIS optical flow, converted to the project convention.

    ``DISOpticalFlow.calc(prev, next)`` returns flow (H, W, 2) in (x, y)
    order with ``prev(y, x) ~ next(y + flow[..., 1], x + flow[..., 0])``, as
    Farneback: called with prev = frame t+1 and next = frame t it is the pull
    field u_t once the channels are swapped. Checked by :func:`check_convention`.
    """
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - opencv is a test dependency
        raise BaselineUnavailable("opencv-python-headless is not installed") from exc
    frames = _check(frames)
    params = {**DIS, **overrides}
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    flow_obj = cv2.DISOpticalFlow_create(presets[params["preset"]])
    flow_obj.setFinestScale(int(params["finest_scale"]))
    flow_obj.setVariationalRefinementIterations(int(params["variational_iterations"]))
    img = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    out = np.empty((len(frames) - 1, 2) + frames.shape[1:], np.float32)
    for t in range(len(frames) - 1):
        flow = flow_obj.calc(img[t + 1], img[t], None)
        out[t, 0] = flow[..., 1]
        out[t, 1] = flow[..., 0]
    return out


#: OpenPIV window-deformation PIV: three passes (windows 64, 32, 16 px with
#: 75, 50, 50 % overlap, so 20 px motions are within the first window's reach
#: and a 128 px frame still has 5 x 5 first-pass vectors;
#: 32/16/8 px below 128 px frames), symmetric deformation, cubic image
#: interpolation, normalised correlation, median + s2n validation with
#: local-mean replacement (a pass whose vectors are all invalid keeps the
#: previous pass). The vectors (one per window, every 8 px) are interpolated
#: to every pixel with a cubic spline, constant beyond the outer window centres.
OPENPIV = dict(windowsizes=(64, 32, 16), overlap=(48, 16, 8), small_windowsizes=(32, 16, 8),
               small_overlap=(16, 8, 4), small_below=128)


def openpiv(frames, **overrides) -> np.ndarray:
    """OpenPIV multi-pass window deformation (openpiv.windef), to a dense pull field.

    With ``frame_a`` = frame t+1 and ``frame_b`` = frame t, PIV returns at each
    window centre m (image coordinates, rows down) the displacement
    d = (v, u) = (dy, dx) that carries the pattern of frame t+1 to frame t.
    With the symmetric deformation it belongs to the midpoint: frame t+1 has
    the material at m - d/2, frame t at m + d/2. So at a pixel p of frame
    t+1, u_t(p) = d(m) with m = p + d(m)/2 (a fixed point, 5 iterations on the
    dense interpolated field). ``check_convention`` verifies sign and axes.
    """
    try:
        from openpiv import filters, validation
        from openpiv.windef import PIVSettings, first_pass, multipass_img_deform
    except ImportError as exc:
        raise BaselineUnavailable("openpiv is not installed (pip install openpiv)") from exc
    from scipy import ndimage
    from scipy.interpolate import RectBivariateSpline

    frames = _check(frames)
    params = {**OPENPIV, **overrides}
    _, h, w = frames.shape
    small = min(h, w) < params["small_below"]
    settings = PIVSettings(
        windowsizes=tuple(params["small_windowsizes" if small else "windowsizes"]),
        overlap=tuple(params["small_overlap" if small else "overlap"]),
    )
    settings.num_iterations = len(settings.windowsizes)
    settings.normalized_correlation = True
    settings.min_max_u_disp = settings.min_max_v_disp = (-40, 40)
    rows = np.arange(h, dtype=np.float64)
    cols = np.arange(w, dtype=np.float64)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    out = np.empty((len(frames) - 1, 2, h, w), np.float32)
    for t in range(len(frames) - 1):
        a = frames[t + 1].astype(np.float64)
        b = frames[t].astype(np.float64)
        with contextlib.redirect_stdout(io.StringIO()):  # openpiv prints per-pass peak diagnostics
            x, y, u, v, s2n = first_pass(a, b, settings)
            u = np.ma.array(u, mask=np.zeros_like(u, dtype=bool))
            v = np.ma.array(v, mask=np.zeros_like(v, dtype=bool))
            flags = validation.typical_validation(u, v, s2n, settings)
            u, v = filters.replace_outliers(u, v, flags)
            for i in range(1, settings.num_iterations):
                try:
                    x, y, u, v, _, _ = multipass_img_deform(a, b, i, x, y, u, v, settings)
                except ValueError:  # every vector of this pass invalid: keep the previous pass
                    break
        u = np.ma.filled(np.ma.fix_invalid(u, fill_value=0.0), 0.0)
        v = np.ma.filled(np.ma.fix_invalid(v, fill_value=0.0), 0.0)
        yc, xc = y[:, 0].astype(np.float64), x[0, :].astype(np.float64)
        k = 3 if min(len(yc), len(xc)) > 3 else 1
        ry, rx = np.clip(rows, yc[0], yc[-1]), np.clip(cols, xc[0], xc[-1])
        dy = RectBivariateSpline(yc, xc, v, kx=k, ky=k)(ry, rx)
        dx = RectBivariateSpline(yc, xc, u, kx=k, ky=k)(ry, rx)
        fy, fx = dy.copy(), dx.copy()
        for _ in range(5):  # u(p) = d(p + u(p) / 2)
            coords = [gy + fy / 2, gx + fx / 2]
            fy = ndimage.map_coordinates(dy, coords, order=1, mode="nearest")
            fx = ndimage.map_coordinates(dx, coords, order=1, mode="nearest")
        out[t, 0], out[t, 1] = fy, fx
    return out


#: ANTs SyN with cross-correlation, as the paper's comparison (200 steps per level).
ANTS = dict(type_of_transform="SyN", syn_metric="CC", syn_sampling=6,
            reg_iterations=(200, 200, 200, 200))


_OUTSIDE = -1e6


def ants_syn(frames, **overrides) -> np.ndarray:
    """ANTs SyN (antspyx) per pair: fixed = frame t+1, moving = frame t.

    ANTs' forward transforms map fixed-space points to moving-space points,
    which is the pull convention. Rather than decode ITK's displacement
    files (axis order, physical space, the affine part), the transforms are
    applied to two coordinate images (row index, column index): the result
    at p is the (row, col) that p maps to in frame t, and u = that - p.
    """
    try:
        import ants
    except ImportError as exc:
        raise BaselineUnavailable("antspyx is not installed (pip install antspyx)") from exc
    frames = _check(frames)
    _, h, w = frames.shape
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    params = {**ANTS, **overrides}
    out = np.empty((len(frames) - 1, 2, h, w), np.float32)
    for t in range(len(frames) - 1):
        fixed = ants.from_numpy(frames[t + 1])
        moving = ants.from_numpy(frames[t])
        reg = ants.registration(fixed=fixed, moving=moving, **params)
        for c, coord in enumerate((rows, cols)):
            mapped = ants.apply_transforms(
                fixed=fixed, moving=ants.from_numpy(coord), transformlist=reg["fwdtransforms"],
                interpolator="linear", defaultvalue=_OUTSIDE,
            ).numpy()
            base = rows if c == 0 else cols
            # Points mapped outside frame t (ANTs takes no NaN default): zero motion there.
            mapped = np.where(mapped > _OUTSIDE / 2, mapped, base)
            out[t, c] = mapped - base
    return out


#: Baselines by name.
BASELINES = {"zero": zero, "farneback": farneback, "dis": dis, "openpiv": openpiv, "ants": ants_syn}
#: The anchors NMSR is compared against (the best of those present).
ANCHORS = ("farneback", "dis", "openpiv", "ants")


def check_convention(fn, image, kind: str, size: float) -> tuple[float, bool]:
    """Run baseline ``fn`` on a known motion of ``image`` and compare with the exact pull field.

    kind "translation": content moves by ``size`` px along (0.8, -0.6) (y, x);
    kind "rotation": content turns by ``size`` rad counter-clockwise on screen
    about the centre. Frame 1 is frame 0 warped by the exact pull field
    (``convention.warp_frames``). Returns (median endpoint error in the inner
    half of the image, px; whether it is below 0.25 px and the warp with the
    estimate matches frame 1 better than no warp).
    """
    from napari_nmsr.core.convention import warp_frames

    image = np.asarray(image, np.float32)
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "translation":
        d = size * np.array([0.8, -0.6])
        truth = np.stack((np.full((h, w), -d[0]), np.full((h, w), -d[1])))
    else:
        cy, cx = (h - 1) / 2, (w - 1) / 2
        c, s = np.cos(-size), np.sin(-size)
        dy, dx = yy - cy, xx - cx  # source = rotate(p - c, -angle), as families.rotate
        truth = np.stack((c * dy - s * dx - dy, s * dy + c * dx - dx))
    truth = truth.astype(np.float32)
    moved = warp_frames(np.stack([image, image]), truth[None])[0]
    frames = np.stack([image, moved])
    est = fn(frames)[0]
    inner = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    err = float(np.median(np.hypot(*(est - truth))[inner]))
    warped = warp_frames(frames, est[None])[0]
    better = np.mean((warped - moved)[inner] ** 2) < 0.5 * np.mean((image - moved)[inner] ** 2)
    return err, bool(err < 0.25 and better)
