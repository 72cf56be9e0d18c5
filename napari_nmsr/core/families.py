"""Randomised ground-truth families: a suite that cannot be tuned to.

The four fixed cases of :mod:`.simulate` (seed 0, 128 px, 12 frames) are the
ones the engine was tuned on. Here every *family* is a function
``family(seed, **overrides) -> SimulatedSequence`` that draws all its
parameters (frame size, frame count, speeds, geometry, speckle decorrelation
and noise) from the seed, renders with the same speckle simulator
(:func:`.simulate.simulate`) and returns exact pull fields in the project
convention. The drawn parameters are in ``seq.truth["params"]``.

Families (speeds in px per frame pair; sizes in px, square frames):

* ``vortex``: contrast LV cavity (elliptic, size-relative geometry), a
  Lamb-Oseen vortex, peak 0.5-10 px/frame (1/3 slow: log-uniform 0.5-1.5,
  2/3 uniform 1.5-10; capped at 0.64 x
  the core radius so the core never turns more than 1 rad/frame), core radius
  0.05-0.14 x size (at most half the cavity's short semi-axis), centre
  anywhere in the cavity, drifting, plus a 0-12 %
  contraction. Each step turns the material along exact circles, so the map
  is inverted in closed form. Truth: ``vortex_centres``, ``core_radius``.
* ``myocardium``: short-axis wall (random centre, radii, thickness) that
  contracts (area-preserving sink, 18-35 % of the endocardial radius per
  systole) and twists (3-15 deg at the endocardium), 6-50 frames per cycle
  starting at a random phase: per-step motion from ~0.1 to ~5 px.
* ``probe``: rigid motion of the whole image (translation 0.5-18 px/frame,
  uniform, in random directions, bounded path, plus rotation up to 0.08 rad about the
  heart or the transducer), at most 20 px/frame inside the mask (the heart).
* ``probe_tissue``: the myocardium's contraction and twist carried by a rigid
  probe motion of 0.5-12 px/frame. Mask: the wall.
* ``decorrelation``: smooth random tissue deformation (affine part plus 3-6
  Gaussian blobs, 0.3-4 px/frame) under strong speckle decorrelation
  (5-25 % of scatterers re-seeded per frame) and noise (0.03-0.3).
* ``disk``: a tissue-mimicking disk (radius 0.3-0.42 x size) rotating rigidly
  about a fixed centre in water or gel, rim displacement 1-20 px per pair
  (1/3 log-uniform 1-4, 2/3 uniform 4-20), as an in-vitro rotating phantom. Truth: ``omega``
  (rad/frame, + = counter-clockwise on screen) and ``centre`` (y, x); the
  mask is the disk less 2 px at the rim.
* ``real_echo``, ``real_piv``: real frames (the echo DICOM's channel 0, the
  PIV frame A, from ``shared/data``) cropped to 128-256 px where there is
  texture, warped by a known rigid, affine or vortex pull field per step
  (each frame is sampled once from the source through the composed map, so
  no interpolation blur accumulates), plus 0.5-3 % noise. Raise
  :class:`RealDataUnavailable` when the data folder is absent.

All simulated families also draw the re-seeded fraction (1-6 %) and the
electronic noise (0.01-0.08) unless they set their own. Sizes: 128 (most),
160, 192, 256, rarely 384 or 512 (see :func:`_draw_size`); 6-10 frames.

Seeds (:func:`suite_cases`): the ``tuning`` split uses seeds 0..99, the
``heldout`` split seeds >= 1000 derived from a SHA-256 of the family name and
index, so the two never overlap and the four fixed cases' seed 0 is never
held out. Tune only on ``tuning``; report on ``heldout``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from .simulate import (
    SimulatedSequence,
    _cycle,
    _ellipse_radius,
    _es_index,
    _lamb_oseen,
    _Scene,
    _smoothstep,
    _texture,
    invert_step,
    simulate,
)

__all__ = [
    "FAMILIES",
    "SUITE_VERSION",
    "RealDataUnavailable",
    "suite_cases",
    "family_seed",
    "data_dir",
    "rotate",
    "fit_rigid_rotation",
    "circulation",
]

#: Bump when a family's output changes (benchmark caches are keyed by it).
SUITE_VERSION = 1

#: Seed ranges of the two splits.
TUNING_SEEDS = range(0, 100)
HELDOUT_MIN_SEED = 1000


class RealDataUnavailable(RuntimeError):
    """The real frames (shared/data) the real-speckle families need are not there."""


class RealCropTooLarge(RealDataUnavailable, ValueError):
    """The real frame cannot give a crop of the size asked for (it is a bad argument, and the case
    is unavailable at that size, so the suite skips it like a missing source)."""


# --------------------------------------------------------------------------- geometry helpers


def rotate(d: np.ndarray, angle) -> np.ndarray:
    """Rotate offsets d (N, 2) (y, x) by ``angle`` rad, counter-clockwise on screen (y down).

    ``angle`` is a scalar or (N,). Small angles move (dy, dx) by (-a dx, +a dy),
    the sense of positive vorticity in :mod:`.analysis.vorticity`.
    """
    c, s = np.cos(angle), np.sin(angle)
    return np.stack((c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]), axis=1)


def _lamb_oseen_angle(r: np.ndarray, core: float, peak: float) -> np.ndarray:
    """Angle (rad) the material at radius r turns in one step: Lamb-Oseen speed / r."""
    speed = np.linalg.norm(_lamb_oseen(np.stack((r, np.zeros_like(r)), axis=1), core, peak), axis=1)
    return np.where(r > 1e-9, speed / np.maximum(r, 1e-9), peak / 0.6382 / core)


def _draw_size(rng, weights=None) -> int:
    """Frame size: mostly 128-256 px, rarely 384 or 512."""
    sizes = np.array([128, 160, 192, 256, 384, 512])
    w = np.array(weights if weights is not None else [0.45, 0.2, 0.15, 0.14, 0.04, 0.02], float)
    return int(rng.choice(sizes, p=w / w.sum()))


def _draw_speckle(rng) -> dict:
    return {"reseed_fraction": float(rng.uniform(0.01, 0.06)), "noise": float(rng.uniform(0.01, 0.08))}


def _loguniform(rng, lo, hi) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _slow_or_fast(rng, lo: float, mid: float, hi: float) -> float:
    """A speed: with probability 1/3 log-uniform in [lo, mid] (slow), else uniform in [mid, hi].

    A plain log-uniform draw over [lo, hi] rarely gives fast cases in a
    suite of a few seeds per family; this keeps both regimes in every few draws.
    """
    hi = max(hi, mid)
    if rng.random() < 1.0 / 3.0:
        return _loguniform(rng, lo, mid)
    return float(rng.uniform(mid, hi))


def _rng(seed: int, family: str) -> np.random.Generator:
    """A generator for ``family`` at ``seed``: the same seed gives other draws in other families."""
    return np.random.default_rng([int(seed), int(hashlib.sha256(family.encode()).hexdigest()[:8], 16)])


def _common(rng, overrides: dict, speckle: dict | None = None) -> tuple[int, int, dict]:
    """Size, frame count and speckle parameters: drawn, unless ``overrides`` fixes them.

    Overrides (for tests and studies, never in the suite): ``size``, ``n_frames``,
    ``reseed_fraction``, ``noise``. The draws happen either way, so the other
    parameters of a seed do not change with an override.
    """
    size = _draw_size(rng)
    n_frames = int(rng.integers(6, 11))
    spk = dict(speckle) if speckle is not None else _draw_speckle(rng)
    size = int(overrides.get("size") or size)
    n_frames = int(overrides.get("n_frames") or n_frames)
    spk.update({k: float(overrides[k]) for k in ("reseed_fraction", "noise") if k in overrides})
    return size, n_frames, spk


def _finish(scene: _Scene, seed: int, params: dict, **truth) -> SimulatedSequence:
    scene.truth = {"family": scene.name, "seed": int(seed), "params": params, **truth}
    return simulate(scene, seed)


# --------------------------------------------------------------------------- tissue motion pieces


def _myocardial_step(rng, size, n_frames, frames_per_cycle=None):
    """Draw a short-axis wall and return (geometry, step(points, t, centre) -> new points, params)."""
    r_in = float(rng.uniform(0.16, 0.24)) * size
    thick = float(rng.uniform(0.09, 0.14)) * size
    r_out = min(r_in + thick, 0.42 * size)
    n_cycle = frames_per_cycle or _loguniform(rng, 6.0, 50.0)
    start = float(rng.uniform(0.0, 1.0))
    tau = start + np.arange(n_frames) / n_cycle
    f = 0.5 * (1.0 - np.cos(2.0 * np.pi * tau))  # 0 at end-diastole, 1 at end-systole
    df = np.diff(f)  # (T-1,) per-step fraction of the systolic excursion (+ = contracting)
    inward = float(rng.uniform(0.18, 0.35)) * r_in  # px, endocardium over a full systole
    twist = np.deg2rad(float(rng.uniform(3.0, 15.0))) * rng.choice([-1.0, 1.0])
    r_core = 0.6 * r_in
    r_mid = 0.5 * (r_in + r_out)
    fade = 0.15 * size

    def step(p, t, centre):
        d = p - centre
        r = np.hypot(d[:, 0], d[:, 1])
        taper = 1.0 - _smoothstep((r - 1.05 * r_out) / fade)
        k = inward * r_in * df[t]
        rc = np.maximum(r, r_core)
        vr = -k * r / (rc * rc) * taper  # 2-D sink: the wall thickens as it contracts
        ang = twist * df[t] * (1.0 + 0.5 * np.tanh((r_mid - r) / (0.05 * size))) / 1.5 * taper
        scale = np.where(r > 1e-9, (r + vr) / np.maximum(r, 1e-9), 1.0)
        return centre + rotate(d * scale[:, None], ang)

    params = {"r_in": r_in, "r_out": r_out, "frames_per_cycle": float(n_cycle), "start_phase": start,
              "systolic_inward_px": inward, "twist_deg": float(np.rad2deg(twist))}
    return (r_in, r_out), step, params, df


def _wall_echo(rng, size, margin, centre, r_in, r_out):
    texture = _texture(rng, size, margin)
    wall_b, out_b = float(rng.uniform(0.7, 1.0)), float(rng.uniform(0.2, 0.5))

    def echogenicity(p0):
        r = np.hypot(p0[:, 0] - centre[0], p0[:, 1] - centre[1])
        return np.where(r < r_in, 0.04, np.where(r < r_out, wall_b, out_b)) * texture(p0)

    def region(p0):
        r = np.hypot(p0[:, 0] - centre[0], p0[:, 1] - centre[1])
        return (r >= r_in) & (r < r_out)

    return echogenicity, region


def _rigid_path(rng, n_steps, speed_lo, speed_hi, bound, max_angle):
    """Per-step translations (n, 2) within ``bound`` px of the start, and alternating rotations (n,)."""
    moves = np.zeros((n_steps, 2))
    offset = np.zeros(2)
    for t in range(n_steps):
        s = float(rng.uniform(speed_lo, speed_hi))
        for _ in range(200):
            a = rng.uniform(0, 2 * np.pi)
            m = s * np.array([np.sin(a), np.cos(a)])
            if np.hypot(*(offset + m)) <= bound:
                break
        else:
            m = -offset / (np.hypot(*offset) + 1e-9) * s  # straight back
        moves[t] = m
        offset = offset + m
    amp = float(rng.uniform(0.0, max_angle))
    angles = amp * rng.uniform(0.5, 1.0, n_steps) * np.where(np.arange(n_steps) % 2 == 0, 1.0, -1.0)
    angles *= rng.choice([-1.0, 1.0])
    return moves, angles


# --------------------------------------------------------------------------- families


def vortex(seed: int, **overrides) -> SimulatedSequence:
    """Contrast LV cavity with a Lamb-Oseen vortex of random speed, core and position."""
    rng = _rng(seed, "vortex")
    size, n_frames, spk = _common(rng, overrides)
    centre = np.array([0.5, 0.5]) * size + rng.uniform(-0.04, 0.04, 2) * size
    a0, b0 = float(rng.uniform(0.30, 0.38)) * size, float(rng.uniform(0.20, 0.27)) * size
    wall = 0.07 * size
    core = float(rng.uniform(0.05, min(0.14, 0.5 * b0 / size))) * size
    cap = 0.6382 * core  # peak speed at which the core turns 1 rad/frame
    peak = _slow_or_fast(rng, 0.5, 1.5, min(10.0, cap))
    sign = float(rng.choice([-1.0, 1.0]))
    shrink = float(rng.uniform(0.0, 0.12))
    phase = _cycle(n_frames)
    log_scale = np.log(1.0 - shrink) * phase / phase[phase > 0].sum()
    cum = np.concatenate(([0.0], np.cumsum(log_scale)))
    # Vortex centre: inside the (smallest) cavity, drifting a little along a random direction.
    kmin = float(np.exp(cum.min()))
    for _ in range(500):
        off = rng.uniform(-1, 1, 2) * np.array([0.45 * a0, 0.35 * b0])
        drift_dir = rng.uniform(0, 2 * np.pi)
        drift = float(rng.uniform(0.0, 0.08)) * size * np.array([np.sin(drift_dir), np.cos(drift_dir)])
        ends = centre + kmin * np.stack((off, off + drift))
        if np.all(_ellipse_radius(ends, centre, a0 * kmin, b0 * kmin) < 0.55):
            break
    steps = max(n_frames - 2, 1)
    tt = np.arange(n_frames - 1)[:, None] / steps
    centres = centre + np.exp(cum[1:])[:, None] * (off + drift * tt)  # (T-1, 2) in frame t+1 coordinates

    def extent(t):
        """Radius around the vortex centre beyond which it fades out (inside the cavity at t+1)."""
        k = np.exp(cum[t + 1])
        rho = _ellipse_radius(centres[t][None], centre, a0 * k, b0 * k)[0]
        return max((1.0 - rho) * b0 * k * 0.95, 1.5 * core)

    def angle(r, t):
        r2 = extent(t)
        return sign * _lamb_oseen_angle(r, core, peak) * (1.0 - _smoothstep((r - 0.6 * r2) / (0.4 * r2)))

    def contraction_v(p, t):
        k = np.exp(cum[t])
        rho = _ellipse_radius(p, centre, a0 * k, b0 * k)
        return (np.exp(log_scale[t]) - 1.0) * (p - centre) * (1.0 - _smoothstep((rho - 1.35) / 0.65))[:, None]

    def swirl(p, t, direction=1.0):
        d = p - centres[t]
        return centres[t] + rotate(d, direction * angle(np.hypot(d[:, 0], d[:, 1]), t))

    def velocity(p, t):
        q = p + contraction_v(p, t)
        return swirl(q, t) - p

    def inverse(p, t):
        return invert_step(contraction_v, swirl(p, t, -1.0), t)

    texture = _texture(rng, size, int(np.ceil(0.1 * size)) + 10)
    wall_b = float(rng.uniform(0.15, 0.35))

    def echogenicity(p0):
        rho = _ellipse_radius(p0, centre, a0, b0)
        rho_out = _ellipse_radius(p0, centre, a0 + wall, b0 + wall)
        return np.where(rho < 1.0, 1.0, np.where(rho_out < 1.0, wall_b, 0.05)) * texture(p0)

    def region(p0):
        return _ellipse_radius(p0, centre, a0, b0) < 1.0

    params = {"size": size, "n_frames": n_frames, "peak_px": peak, "core_px": core, "sign": sign,
              "cavity_shrink": shrink, "cavity_axes_px": [a0, b0], **spk}
    scene = _Scene("vortex", f"Contrast LV, Lamb-Oseen vortex peak {peak:.2f} px/frame, core {core:.1f} px",
                   size, n_frames, int(np.ceil(0.1 * size)) + 10, echogenicity, region, velocity,
                   vortex_centres=centres, ed_index=0, es_index=_es_index(phase), inverse=inverse, **spk)
    return _finish(scene, seed, params, core_radius=core)


def myocardium(seed: int, **overrides) -> SimulatedSequence:
    """Short-axis wall contracting and twisting, 6-50 frames per cycle."""
    rng = _rng(seed, "myocardium")
    size, n_frames, spk = _common(rng, overrides)
    centre = np.array([0.5, 0.5]) * size + rng.uniform(-0.05, 0.05, 2) * size
    (r_in, r_out), step, params, df = _myocardial_step(rng, size, n_frames)
    margin = int(np.ceil(0.06 * size)) + 10
    echogenicity, region = _wall_echo(rng, size, margin, centre, r_in, r_out)

    def velocity(p, t):
        return step(p, t, centre) - p

    scene = _Scene("myocardium", f"Short-axis wall, {params['frames_per_cycle']:.0f} frames/cycle",
                   size, n_frames, margin, echogenicity, region, velocity, None, 0,
                   int(np.argmax(np.concatenate(([0.0], np.cumsum(df))))), **spk)
    return _finish(scene, seed, {"size": size, "n_frames": n_frames, **params, **spk})


def _heart_echo(rng, size, margin, c0):
    a0, b0 = float(rng.uniform(0.18, 0.26)) * size, float(rng.uniform(0.14, 0.2)) * size
    wall = float(rng.uniform(0.06, 0.1)) * size
    texture = _texture(rng, size, margin)

    def echogenicity(p0):
        rho = _ellipse_radius(p0, c0, a0, b0)
        rho_out = _ellipse_radius(p0, c0, a0 + wall, b0 + wall)
        return np.where(rho < 1.0, 0.12, np.where(rho_out < 1.0, 1.0, 0.4)) * texture(p0)

    def region(p0):
        return _ellipse_radius(p0, c0, a0 + wall, b0 + wall) < 1.0

    return echogenicity, region, max(a0, b0) + wall


def _rigid_pieces(moves, angles, pivots):
    """Forward and exact inverse of the per-step rigid maps p -> pivot_t + R(a_t)(p - pivot_t) + m_t."""

    def forward(p, t):
        return pivots[t] + rotate(p - pivots[t], angles[t]) + moves[t]

    def backward(p, t):
        return pivots[t] + rotate(p - moves[t] - pivots[t], -angles[t])

    return forward, backward


def probe(seed: int, **overrides) -> SimulatedSequence:
    """Rigid probe motion: translation up to 18 px/frame plus rotation, <= 20 px/frame in the mask."""
    rng = _rng(seed, "probe")
    size, n_frames, spk = _common(rng, overrides)
    c0 = np.array([0.5, 0.5]) * size + rng.uniform(-0.04, 0.04, 2) * size
    speed = float(rng.uniform(0.5, 18.0))
    about_transducer = bool(rng.random() < 0.5)
    reach = 0.9 * size if about_transducer else 0.45 * size  # pivot to the farthest mask point
    max_angle = min(0.08, max(20.0 - 1.1 * speed, 0.5) / reach)
    bound = max(1.2 * speed * 1.1, 0.12 * size)
    moves, angles = _rigid_path(rng, n_frames - 1, 0.8 * speed, 1.1 * speed, bound, max_angle)
    pivot0 = np.array([0.0, 0.5 * size]) if about_transducer else c0
    # The pivot rides with the probe: after step t the whole content has moved by the path so far.
    pivots = pivot0 + np.concatenate(([[0.0, 0.0]], np.cumsum(moves, axis=0)[:-1]))
    margin = int(np.ceil(bound + 0.2 * reach + 12))
    forward, backward = _rigid_pieces(moves, angles, pivots)
    echogenicity, region, _ = _heart_echo(rng, size, margin, c0)
    params = {"size": size, "n_frames": n_frames, "speed_px": speed, "max_angle_rad": max_angle,
              "pivot": "transducer" if about_transducer else "heart", **spk}
    scene = _Scene("probe", f"Rigid probe motion ~{speed:.1f} px/frame", size, n_frames, margin, echogenicity,
                   region, lambda p, t: forward(p, t) - p, inverse=backward, **spk)
    return _finish(scene, seed, params, translations=moves.tolist(), angles=angles.tolist())


def probe_tissue(seed: int, **overrides) -> SimulatedSequence:
    """Myocardial contraction and twist carried by a rigid probe motion (0.5-12 px/frame)."""
    rng = _rng(seed, "probe_tissue")
    size, n_frames, spk = _common(rng, overrides)
    c0 = np.array([0.5, 0.5]) * size + rng.uniform(-0.04, 0.04, 2) * size
    (r_in, r_out), step, params, _ = _myocardial_step(rng, size, n_frames, _loguniform(rng, 8.0, 40.0))
    speed = float(rng.uniform(0.5, 12.0))
    max_angle = min(0.06, max(16.0 - speed, 0.5) / (0.45 * size))
    bound = max(1.3 * speed, 0.1 * size)
    moves, angles = _rigid_path(rng, n_frames - 1, 0.8 * speed, 1.1 * speed, bound, max_angle)
    # Heart centre before each step (it rides with the rigid motion; the tissue map is isotropic).
    # Each rigid step turns about the heart centre, so the centre just follows the translations.
    centres = c0 + np.concatenate(([[0.0, 0.0]], np.cumsum(moves, axis=0)))
    forward, backward = _rigid_pieces(moves, angles, centres[:-1])

    def tissue_v(p, t):
        return step(p, t, centres[t]) - p

    def velocity(p, t):
        return forward(step(p, t, centres[t]), t) - p

    def inverse(p, t):
        return invert_step(tissue_v, backward(p, t), t)

    margin = int(np.ceil(bound + 0.06 * 0.7 * size + 14))
    echogenicity, region = _wall_echo(rng, size, margin, c0, r_in, r_out)
    params = {"size": size, "n_frames": n_frames, **params, "probe_speed_px": speed,
              "max_angle_rad": max_angle, **spk}
    scene = _Scene("probe_tissue", f"Wall motion + probe motion ~{speed:.1f} px/frame", size, n_frames, margin,
                   echogenicity, region, velocity, inverse=inverse, **spk)
    return _finish(scene, seed, params)


def decorrelation(seed: int, **overrides) -> SimulatedSequence:
    """Smooth random tissue deformation under strong speckle decorrelation and noise."""
    rng = _rng(seed, "decorrelation")
    spk = {"reseed_fraction": float(rng.uniform(0.05, 0.25)), "noise": float(rng.uniform(0.03, 0.3))}
    size, n_frames, spk = _common(rng, overrides, spk)
    amp = _loguniform(rng, 0.3, 4.0)  # px/frame scale of the motion
    c0 = np.array([0.5, 0.5]) * size
    A = rng.uniform(-1, 1, (2, 2)) * amp / size  # affine part: ~amp/2 px at the mask edge
    b = rng.standard_normal(2) * 0.5 * amp
    n_blobs = int(rng.integers(3, 7))
    bc = rng.uniform(0.15, 0.85, (n_blobs, 2)) * size
    bw = rng.uniform(0.08, 0.2, n_blobs) * size
    bv = rng.standard_normal((n_blobs, 2)) * amp / np.sqrt(2)
    # |grad v| <= amp / width: keep the map invertible by fixed point.
    # A blob's largest gradient is 0.61 |v| / width; cap each at 0.1 so the sum stays well below 1.
    bv *= np.minimum(1.0, 0.1 * bw / (0.61 * np.hypot(bv[:, 0], bv[:, 1]) + 1e-9))[:, None]
    gain = rng.uniform(0.6, 1.2, n_frames - 1) * np.cos(np.pi * rng.uniform(0, 1) + np.arange(n_frames - 1) * 0.7)

    def velocity(p, t):
        v = (p - c0) @ A.T + b
        for c, w, vv in zip(bc, bw, bv):
            g = np.exp(-0.5 * np.sum((p - c) ** 2, axis=1) / w**2)
            v = v + g[:, None] * vv
        return gain[t] * v

    margin = int(np.ceil(2.5 * amp + 12))
    texture = _texture(rng, size, margin, amount=float(rng.uniform(0.2, 0.6)))
    ra = float(rng.uniform(0.3, 0.42)) * size

    def echogenicity(p0):
        return texture(p0)

    def region(p0):
        return np.hypot(p0[:, 0] - c0[0], p0[:, 1] - c0[1]) < ra

    params = {"size": size, "n_frames": n_frames, "amp_px": amp, "blobs": n_blobs, **spk}
    scene = _Scene("decorrelation", f"Smooth random deformation ~{amp:.1f} px/frame, reseed "
                   f"{spk['reseed_fraction']:.2f}, noise {spk['noise']:.2f}", size, n_frames, margin,
                   echogenicity, region, velocity, **spk)
    return _finish(scene, seed, params)


def disk(seed: int, **overrides) -> SimulatedSequence:
    """In-vitro rotating phantom: a tissue-mimicking disk turning rigidly, rim 1-20 px per pair."""
    rng = _rng(seed, "disk")
    size = _draw_size(rng, [0.0, 0.35, 0.3, 0.35, 0.0, 0.0])
    n_frames = int(rng.integers(6, 11))
    spk = _draw_speckle(rng)
    spk.update({k: float(overrides[k]) for k in ("reseed_fraction", "noise") if k in overrides})
    size = int(overrides.get("size") or size)
    n_frames = int(overrides.get("n_frames") or n_frames)
    radius = float(rng.uniform(0.3, 0.42)) * size
    centre = np.array([0.5, 0.5]) * size + rng.uniform(-0.04, 0.04, 2) * size
    rim = _slow_or_fast(rng, 1.0, 4.0, 20.0)  # chord length at the rim, px per pair
    omega = float(2.0 * np.arcsin(min(rim / (2.0 * radius), 1.0))) * float(rng.choice([-1.0, 1.0]))
    background = float(rng.uniform(0.02, 0.3))
    margin = 10
    texture = _texture(rng, size, margin, amount=0.2)

    def turn(p, a):
        d = p - centre
        inside = np.hypot(d[:, 0], d[:, 1]) < radius
        return np.where(inside[:, None], centre + rotate(d, a), p)

    def echogenicity(p0):
        r = np.hypot(p0[:, 0] - centre[0], p0[:, 1] - centre[1])
        return np.where(r < radius, 1.0, background) * texture(p0)

    def region(p0):
        return np.hypot(p0[:, 0] - centre[0], p0[:, 1] - centre[1]) < radius - 2.0

    params = {"size": size, "n_frames": n_frames, "radius_px": radius, "rim_px": rim, "omega": omega,
              "background": background, **spk}
    scene = _Scene("disk", f"Rotating disk phantom, rim {rim:.1f} px/pair", size, n_frames, margin,
                   echogenicity, region, lambda p, t: turn(p, omega) - p,
                   inverse=lambda p, t: turn(p, -omega), **spk)
    return _finish(scene, seed, params, omega=omega, centre=centre.tolist(), disk_radius=radius)


# --------------------------------------------------------------------------- real speckle, known warps


def data_dir() -> Path:
    """shared/data: $NMSR_SHARED_DATA, else ../shared/data beside the checkout, else /work/shared/data."""
    env = os.environ.get("NMSR_SHARED_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[3] / "shared" / "data"
    return here if here.is_dir() else Path("/work/shared/data")


_SOURCES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _source(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], textured-region mask) of a real source frame, cached."""
    if kind in _SOURCES:
        return _SOURCES[kind]
    root = data_dir()
    if kind == "echo":
        path = root / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"
        if not path.is_file():
            raise RealDataUnavailable(f"real echo frames not found ({path}); real_echo skipped")
        from .io import load_sequence

        frames = load_sequence(path).frames  # channel 0, [0, 1]
        image = np.asarray(frames[0], np.float64)
    else:
        path = root / "piv-karman" / "PIVlab_Karman_01.bmp"
        if not path.is_file():
            raise RealDataUnavailable(f"real PIV frames not found ({path}); real_piv skipped")
        import imageio.v3 as iio

        image = np.asarray(iio.imread(path), np.float64)
        image = image[..., 0] if image.ndim == 3 else image
        image = image / 255.0
    mean = ndimage.gaussian_filter(image, 4.0)
    std = np.sqrt(np.maximum(ndimage.gaussian_filter(image**2, 4.0) - mean**2, 0.0))
    textured = ndimage.binary_erosion((std > 0.05) & (mean > 0.05), iterations=3)
    _SOURCES[kind] = (image, textured)
    return _SOURCES[kind]


def _warp_step(rng, kind: str, size: int, n_steps: int, textured: np.ndarray):
    """Per-step analytic PULL maps ``u_t(points) -> displacement`` (N, 2) and their parameters.

    ``textured`` (size, size) bool: a vortex is centred where its core has texture.
    """
    c = np.array([0.5, 0.5]) * size + rng.uniform(-0.1, 0.1, 2) * size
    gains = rng.uniform(0.7, 1.3, n_steps)
    if kind == "rigid":
        speed = _loguniform(rng, 0.5, 12.0)
        a = rng.uniform(0, 2 * np.pi)
        shift = speed * np.array([np.sin(a), np.cos(a)])
        ang = float(rng.uniform(-0.06, 0.06))
        flips = np.where(np.arange(n_steps) % 2 == 0, 1.0, -1.0)  # back and forth: stays in the source

        def u(p, t):
            g = gains[t] * flips[t]
            return c + rotate(p - shift * g - c, -ang * g) - p

        params = {"speed_px": speed, "angle_rad": ang}
    elif kind == "affine":
        A = rng.uniform(-0.06, 0.06, (2, 2))
        b = rng.uniform(-4.0, 4.0, 2)
        flips = np.where(np.arange(n_steps) % 2 == 0, 1.0, -1.0)  # back and forth: no runaway stretch

        def u(p, t):
            return gains[t] * flips[t] * ((p - c) @ A.T + b)

        params = {"A": A.tolist(), "b": b.tolist()}
    else:
        core = float(rng.uniform(0.08, 0.15)) * size
        peak = _loguniform(rng, 0.5, min(8.0, 0.8 * 0.6382 * core))
        sign = float(rng.choice([-1.0, 1.0]))
        yy, xx = np.mgrid[0:size, 0:size]
        best = -1.0
        for _ in range(200):  # the centre and its core on texture, or the centre cannot be seen
            cand = np.array([0.5, 0.5]) * size + rng.uniform(-0.2, 0.2, 2) * size
            frac = textured[np.hypot(yy - cand[0], xx - cand[1]) < core].mean()
            if frac > best:
                best, c = frac, cand
            if frac > 0.95:
                break

        def u(p, t):
            d = p - c
            r = np.hypot(d[:, 0], d[:, 1])
            a = sign * gains[t] * _lamb_oseen_angle(r, core, peak)
            return c + rotate(d, -a) - p  # the material at p came from p turned back by a

        params = {"peak_px": peak, "core_px": core, "sign": sign, "centre": c.tolist()}
        return u, params, c, core
    return u, params, None, None


def _real(seed: int, source: str, overrides: dict) -> SimulatedSequence:
    family = f"real_{source}"
    rng = _rng(seed, family)
    image, textured = _source(source)
    size = int(rng.choice([128, 160, 192] if source == "echo" else [128, 160, 192, 256]))
    n_frames = int(rng.integers(6, 11))
    kind = str(rng.choice(["rigid", "affine", "vortex"]))
    noise = float(rng.uniform(0.005, 0.03))
    size = int(overrides.get("size") or size)
    n_frames = int(overrides.get("n_frames") or n_frames)
    noise = float(overrides.get("noise", noise))
    pad = 40
    H, W = image.shape
    if size + 2 * pad >= min(H, W):
        raise RealCropTooLarge(f"the real {source} frame is {H}x{W} px: a {size} px crop (with a {pad} px margin) "
                         f"does not fit; use at most {min(H, W) - 2 * pad - 1} px")
    best, origin = -1.0, None
    for _ in range(300):  # a crop with texture (the echo has a black background and a sector)
        o = np.array([rng.integers(pad, H - size - pad), rng.integers(pad, W - size - pad)])
        frac = textured[o[0]: o[0] + size, o[1]: o[1] + size].mean()
        if frac > best:
            best, origin = frac, o
        if frac > 0.6:
            break
    tex_crop = textured[origin[0]: origin[0] + size, origin[1]: origin[1] + size]
    u, params, vcentre, core = _warp_step(rng, kind, size, n_frames - 1, tex_crop)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    grid = np.stack((yy.ravel(), xx.ravel()), axis=1)
    frames = np.empty((n_frames, size, size), np.float32)
    fields = np.empty((n_frames - 1, 2, size, size), np.float32)
    masks = np.empty((n_frames, size, size), bool)
    for t in range(n_frames):
        # Where the material at each pixel of frame t was in frame 0: p -> p + u_{t-1}(p) -> ... -> source.
        q = grid.copy()
        for s in range(t - 1, -1, -1):
            q = q + u(q, s)
        src = (q + origin).T
        vals = ndimage.map_coordinates(image, src, order=3, mode="nearest")
        inside = (src[0] >= 0) & (src[0] <= H - 1) & (src[1] >= 0) & (src[1] <= W - 1)
        tex = ndimage.map_coordinates(textured.astype(np.float32), src, order=0, mode="constant") > 0.5
        frames[t] = np.clip(vals.reshape(size, size) + noise * rng.standard_normal((size, size)), 0, 1)
        masks[t] = (inside & tex).reshape(size, size)
        if t < n_frames - 1:
            fields[t] = u(grid, t).T.reshape(2, size, size)
    centres = None
    truth = {"family": family, "seed": int(seed),
             "params": {"size": size, "n_frames": n_frames, "warp": kind, "noise": noise,
                        "crop_origin": origin.tolist(), "textured_fraction": float(best), **params}}
    if kind == "vortex":
        centres = np.repeat(np.asarray(vcentre, np.float32)[None], n_frames - 1, axis=0)
        truth["core_radius"] = core
    return SimulatedSequence(
        name=family,
        description=f"Real {source} frame, crop {size} px, known {kind} warp",
        frames=frames, fields=fields, masks=masks, vortex_centres=centres,
        frame_interval_s=1.0 / 30.0, pixel_spacing_mm=(1.0, 1.0), truth=truth,
    )


def real_echo(seed: int, **overrides) -> SimulatedSequence:
    """Real echo speckle (DICOM channel 0) under a known rigid, affine or vortex warp."""
    return _real(seed, "echo", overrides)


def real_piv(seed: int, **overrides) -> SimulatedSequence:
    """Real PIV particle images under a known rigid, affine or vortex warp."""
    return _real(seed, "piv", overrides)


#: Every family by name: ``FAMILIES["vortex"](seed)`` (overrides for tests: ``size``, ``n_frames``,
#: ``noise``, ``reseed_fraction``).
FAMILIES: dict[str, Callable[..., SimulatedSequence]] = {
    "vortex": vortex,
    "myocardium": myocardium,
    "probe": probe,
    "probe_tissue": probe_tissue,
    "decorrelation": decorrelation,
    "disk": disk,
    "real_echo": real_echo,
    "real_piv": real_piv,
}


# --------------------------------------------------------------------------- seeds


def family_seed(split: str, family: str, index: int) -> int:
    """Seed of case ``index`` of ``family`` in ``split``.

    tuning: ``index`` itself (0..99). heldout: 1000 + a SHA-256 of
    (family, index) modulo 10^9, never below 1000, so never a tuning seed nor
    the fixed cases' seed 0.
    """
    if split == "tuning":
        if not 0 <= index < len(TUNING_SEEDS):
            raise ValueError(f"the tuning split has {len(TUNING_SEEDS)} seeds per family")
        return TUNING_SEEDS[index]
    if split == "heldout":
        h = int(hashlib.sha256(f"nmsr-heldout/{family}/{index}".encode()).hexdigest()[:15], 16)
        return HELDOUT_MIN_SEED + h % 10**9
    raise ValueError(f"unknown split {split!r}; choose tuning or heldout")


def suite_cases(split: str, per_family: int = 4, families=None, first: int = 0) -> list[tuple[str, int]]:
    """(family, seed) pairs of a split: ``per_family`` seeds for each family from its ``first``-th, in a
    fixed order. ``first`` reaches cases nobody has looked at yet: the reported table is the first four
    of each family, so ``first=4`` checks that a change holds beyond the cases that suggested it."""
    names = list(FAMILIES) if families is None else list(families)
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"unknown families {bad}; choose from {', '.join(FAMILIES)}")
    first, per_family = int(first), int(per_family)
    if first < 0:
        raise ValueError(f"first must be >= 0, got {first}")
    return [(f, family_seed(split, f, i)) for f in names for i in range(first, first + per_family)]


# --------------------------------------------------------------------------- evaluation helpers


def fit_rigid_rotation(field: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray, float]:
    """Least-squares rigid motion of a pull field inside ``mask``: (omega rad/frame, centre (y, x), rms px).

    The material at p (frame t+1) came from q = p + u(p); the best rigid map
    p = R(omega) q + b (Procrustes, 2-D) gives omega (+ = counter-clockwise
    on screen, as :func:`rotate`), its fixed point (centre) and the rms
    residual of the field against it.
    """
    ys, xs = np.nonzero(mask)
    p = np.stack((ys, xs), axis=1).astype(np.float64)
    q = p + np.stack((field[0][mask], field[1][mask]), axis=1).astype(np.float64)
    pc, qc = p - p.mean(0), q - q.mean(0)
    # p ~ R q + b with R = rotate(., omega): maximise sum p.(R q).
    cross = np.sum(qc[:, 0] * pc[:, 1] - qc[:, 1] * pc[:, 0])
    dot = np.sum(qc * pc)
    omega = float(np.arctan2(cross, dot))
    b = p.mean(0) - rotate(q.mean(0)[None], omega)[0]
    resid = p - (rotate(q, omega) + b)
    rms = float(np.sqrt(np.mean(np.sum(resid**2, axis=1))))
    c, s = np.cos(omega), np.sin(omega)
    m = np.array([[1 - c, s], [-s, 1 - c]])  # (I - R) c = b
    try:
        centre = np.linalg.solve(m, b)
    except np.linalg.LinAlgError:
        centre = np.array([np.nan, np.nan])
    return omega, centre, rms


def circulation(field: np.ndarray, centre, radius: float, n: int = 180) -> float:
    """Line integral (px^2/frame, + = counter-clockwise on screen) of the motion ``-field`` around a circle.

    Sampled bilinearly at ``n`` points on the circle of ``radius`` px about
    ``centre`` (y, x). Applied the same way to the true and estimated fields.
    """
    th = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    # Counter-clockwise on screen (y down): y = cy - r sin th, x = cx + r cos th.
    py = centre[0] - radius * np.sin(th)
    px = centre[1] + radius * np.cos(th)
    vy = -ndimage.map_coordinates(np.asarray(field[0], np.float64), [py, px], order=1, mode="nearest")
    vx = -ndimage.map_coordinates(np.asarray(field[1], np.float64), [py, px], order=1, mode="nearest")
    ty, tx = -np.cos(th), -np.sin(th)  # d(py, px)/d th
    return float(np.sum(vy * ty + vx * tx) * radius * 2.0 * np.pi / n)
