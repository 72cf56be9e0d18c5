"""How well the frames alone fix a vortex's turn: the true field, its vortex's amplitude fitted per pair.

Issue 8 asks for the circulation of held-out vortices within 10 %. Whether that is reachable from the
frames depends on the case: a slow vortex in noisy speckle moves the match so little that a turn 10 %
too weak matches about as well as the true one (twenty-eighth session, benchmarks/README.md). This
oracle measures that floor. For each pair it takes the TRUE field, scales it near the true vortex
centre by a factor alpha (1 inside 1.5 core radii, falling smoothly to 0 at 2.5), and picks the alpha
whose field matches the frames best: the engine's own final match (the refinement's local NCC, its
window radii, frame t resampled bicubically), averaged over the mask within 2 core radii of the centre.
Its circulation error is then exactly ``|alpha - 1|`` (the suite reads circulation on the circle of one
core radius, where the field is scaled whole), so the suite's circulation error of this "method" is
the error a one-parameter fit makes when the vortex's shape and centre are known exactly. It serves as
a floor for methods that read one pair's frames: not a proof (an estimator whose prior happens to
hold, e.g. one that always returns the true amplitude, can do better), but what the frames themselves
determine; and not for methods that pool pairs over time.

Convention: :mod:`napari_nmsr.core.convention` (pull fields, pixels, (dy, dx)).
"""

from __future__ import annotations

import numpy as np
import torch

from napari_nmsr.core.convention import warp
from napari_nmsr.core.refine import fixed_means, match_map
from napari_nmsr.core.register import RegistrationConfig

#: The amplitudes tried (a parabola through the best three refines the maximum).
ALPHAS = np.round(np.arange(0.5, 1.6001, 0.02), 4)
#: Core radii: the field is scaled whole inside ``INNER``, not at all beyond ``OUTER``; matched within ``MATCHED``.
INNER, OUTER, MATCHED = 1.5, 2.5, 2.0


def final_match() -> tuple:
    """(window radii, resampling) of the engine's final match: its refinement's, by default."""
    config = RegistrationConfig()
    return config.refine_radius, config.refine_interpolation


def near_core(yy: np.ndarray, xx: np.ndarray, centre, core: float) -> np.ndarray:
    """Where the match is read: within ``MATCHED`` core radii of ``centre`` (y, x), on grids ``yy``/``xx``."""
    return np.hypot(yy - centre[0], xx - centre[1]) < MATCHED * core


def vortex_weight(shape: tuple[int, int], centre, core: float) -> np.ndarray:
    """(H, W) weight of the scaled part: 1 within ``INNER`` core radii of ``centre`` (y, x), 0 beyond ``OUTER``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    s = np.clip((OUTER * core - np.hypot(yy - centre[0], xx - centre[1])) / ((OUTER - INNER) * core), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


@torch.no_grad()
def fit_amplitude(moving: np.ndarray, fixed: np.ndarray, field: np.ndarray, centre, core: float,
                  mask: np.ndarray | None = None, radius=None, mode: str | None = None) -> float:
    """The alpha that makes ``field`` (the true pull field of the pair, (2, H, W)), scaled by alpha near
    ``centre`` (:func:`vortex_weight`), match frame ``fixed`` best from frame ``moving``.

    The match is read on a crop about the vortex (the scaled part, the match's windows and the motion),
    which gives what the whole frame gives there at a fraction of the cost. ``radius``/``mode``: the
    match's window radii and resampling; the engine's refinement's by default.
    """
    engine_radius, engine_mode = final_match()
    radius = engine_radius if radius is None else radius
    mode = engine_mode if mode is None else mode
    h, w = moving.shape
    reach = max(radius if isinstance(radius, tuple) else (radius,))
    margin = OUTER * core + reach + float(np.abs(field).max()) + 4.0
    y0, y1 = max(0, int(centre[0] - margin)), min(h, int(np.ceil(centre[0] + margin)) + 1)
    x0, x1 = max(0, int(centre[1] - margin)), min(w, int(np.ceil(centre[1] + margin)) + 1)
    box = (slice(y0, y1), slice(x0, x1))
    c = (centre[0] - y0, centre[1] - x0)
    weight = torch.from_numpy(vortex_weight((y1 - y0, x1 - x0), c, core))[None, None]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    region = near_core(yy, xx, centre, core)
    if mask is not None:
        region &= mask[box]
    if not region.any():
        raise ValueError("the vortex's core lies outside the mask: no match to fit its amplitude to")
    region = torch.from_numpy(region)
    mov = torch.from_numpy(np.ascontiguousarray(moving[box], np.float32))[None, None]
    fix = torch.from_numpy(np.ascontiguousarray(fixed[box], np.float32))[None, None]
    u = torch.from_numpy(np.ascontiguousarray(field[(slice(None), *box)], np.float32))[None]
    means = fixed_means(fix, radius)  # frame t+1 is the same for every alpha: its window means, once
    scores = np.array([float(match_map(warp(mov, u * (1.0 + (a - 1.0) * weight), mode), fix, radius, means)[0, 0]
                             [region].mean()) for a in ALPHAS])
    k = int(np.argmax(scores))
    if 0 < k < len(ALPHAS) - 1:
        curve = scores[k - 1] - 2.0 * scores[k] + scores[k + 1]
        if curve < 0:
            step = ALPHAS[1] - ALPHAS[0]
            return float(ALPHAS[k] + step * 0.5 * (scores[k - 1] - scores[k + 1]) / curve)
    return float(ALPHAS[k])


def amplitude_oracle(seq) -> np.ndarray:
    """(T-1, 2, H, W) the case's true fields, each pair's vortex scaled by its :func:`fit_amplitude`.

    ``seq``: a suite case with a vortex (``vortex_centres`` and ``truth["core_radius"]``)."""
    if seq.vortex_centres is None or "core_radius" not in (seq.truth or {}):
        raise ValueError("the amplitude oracle needs a case with a vortex (its centres and core radius)")
    core = float(seq.truth["core_radius"])
    out = np.empty_like(seq.fields, dtype=np.float32)
    for t in range(len(seq.fields)):
        centre = seq.vortex_centres[t]
        alpha = fit_amplitude(seq.frames[t], seq.frames[t + 1], seq.fields[t], centre, core, seq.masks[t + 1])
        out[t] = seq.fields[t] * (1.0 + (alpha - 1.0) * vortex_weight(seq.fields.shape[-2:], centre, core))
    return out
