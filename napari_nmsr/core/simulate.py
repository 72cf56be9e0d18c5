"""Simulated echo sequences with exact ground-truth fields.

Echo recordings carry no ground-truth motion, so accuracy (endpoint error,
vortex-centre error) can only be measured on simulations. Here point
scatterers move by a known map per frame (Lagrangian:
``x_{t+1} = x_t + v_t(x_t)``) and every frame is rendered from their
positions as ultrasound speckle: the scatterers' amplitudes are convolved
with an anisotropic point-spread function (a Gaussian-modulated cosine along
depth = rows, a Gaussian across), the envelope is taken with a Hilbert
transform along rows and log-compressed to [0, 1]. A few percent of the
scatterers are re-seeded at random every frame (out-of-plane motion), and
white noise is added to the RF (electronic noise), so consecutive frames
are never a pure warp of each other, as in real echo.

The true field of pair (t, t+1) is the inverse of the known map, in the
project convention (:mod:`napari_nmsr.core.convention`): ``u_t(p) = q - p``
where ``q + v_t(q) = p`` (solved by fixed-point iteration), i.e. the
material at ``p`` in frame t+1 was at ``p + u_t(p)`` in frame t.

Cases (``CASES[name](size=128, n_frames=12, seed=0)``):

* ``vortex``: contrast echo, bright swirling blood in an elliptic LV cavity,
  darker wall, noise outside; a Lamb-Oseen vortex (peak ~2.5 px/frame at
  128 px) whose centre drifts down the cavity, plus a mild contraction and
  relaxation of the cavity. Mask: the cavity.
* ``slow_vortex``: the same motion at 1/3 the speed.
* ``myocardium``: non-contrast short-axis view, a bright speckled wall that
  thickens and contracts radially (incompressible) and twists, then
  relaxes (~0.5-1.5 px/frame). Mask: the wall.
* ``large_motion``: the whole image moves rigidly by 7-13 px/frame
  (translation along a square path plus alternating rotation), to test
  coarse-to-fine registration. Mask: the heart (wall and cavity).

Motions scale with ``size`` (given in px/frame at 128 px); the speckle
(PSF) size is fixed in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.signal import hilbert

from .convention import motion_from_field

__all__ = [
    "SimulatedSequence",
    "CASES",
    "simulate",
    "vortex",
    "slow_vortex",
    "myocardium",
    "large_motion",
    "vortex_centre",
    "invert_step",
]

#: PSF: axial (rows) Gaussian envelope sigma and carrier wavelength, lateral sigma, px.
PSF_AXIAL_SIGMA = 1.5
PSF_WAVELENGTH = 4.0
PSF_LATERAL_SIGMA = 1.8
#: Scatterers per px^2 (about 10 per resolution cell: fully developed speckle).
SCATTERER_DENSITY = 0.6
#: Log-compression dynamic range, dB.
DYNAMIC_RANGE_DB = 40.0


@dataclass(frozen=True)
class SimulatedSequence:
    """A simulated echo sequence and its exact motion.

    frames: (T, H, W) float32 in [0, 1].
    fields: (T-1, 2, H, W) float32, px, project convention (pull, (dy, dx),
        on frame t+1's grid: ``frames[t](p + fields[t](p)) ~ frames[t+1](p)``).
    masks: (T, H, W) bool, the region the case is about (cavity or wall).
    vortex_centres: (T-1, 2) float (y, x) px of the vortex for each pair, or None.
    ed_index, es_index: frames of largest and smallest cavity.
    """

    name: str
    description: str
    frames: np.ndarray
    fields: np.ndarray
    masks: np.ndarray
    vortex_centres: np.ndarray | None
    frame_interval_s: float
    pixel_spacing_mm: tuple[float, float]
    ed_index: int = 0
    es_index: int = 0
    truth: dict | None = None


@dataclass
class _Scene:
    """What a case defines; :func:`simulate` does the rest.

    echogenicity(points) and region(points) take (N, 2) (y, x) positions in
    frame-0 coordinates (where the material was at frame 0); velocity(points, t)
    gives v_t (N, 2) px so that x_{t+1} = x_t + v_t(x_t). ``inverse(points, t)``,
    when given, solves ``q + v_t(q) = points`` exactly (rotations, rigid
    motion) instead of the fixed-point iteration of :func:`invert_step`.
    ``truth`` is copied into the sequence (extra ground truth: omega, core radius).
    """

    name: str
    description: str
    size: int
    n_frames: int
    margin: int
    echogenicity: Callable[[np.ndarray], np.ndarray]
    region: Callable[[np.ndarray], np.ndarray]
    velocity: Callable[[np.ndarray, int], np.ndarray]
    vortex_centres: np.ndarray | None = None
    ed_index: int = 0
    es_index: int = 0
    reseed_fraction: float = 0.03
    noise: float = 0.02
    inverse: Callable[[np.ndarray, int], np.ndarray] | None = None
    truth: dict | None = None


# --------------------------------------------------------------------------- small helpers


def _smoothstep(x):
    """0 below 0, 1 above 1, C1 in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _cycle(n_frames: int) -> np.ndarray:
    """Per-step phase (T-1,): positive lobe = systole, negative = diastole, sums to 0.

    Step t goes from frame t to t+1; frame 0 is end-diastole.
    """
    n = n_frames - 1
    if n <= 1:
        return np.ones(max(n, 0))
    return np.sin(2.0 * np.pi * (np.arange(n) + 0.5) / n)


def _es_index(phase: np.ndarray) -> int:
    """End-systole: the frame after the last step of the contraction."""
    return int(np.argmax(np.concatenate(([0.0], np.cumsum(phase)))))


def _texture(rng, size: int, margin: int, sigma: float = 4.0, amount: float = 0.35):
    """Smooth random echogenicity multiplier exp(amount * z) on frame-0 coordinates.

    Gives the speckle slowly varying brightness (contrast swirls, tissue
    inhomogeneity) that moves with the material.
    """
    n = size + 2 * margin
    z = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    z /= z.std() + 1e-12

    def sample(points):
        coords = (points + margin).T
        return np.exp(amount * ndimage.map_coordinates(z, coords, order=1, mode="nearest"))

    return sample


def invert_step(velocity: Callable[[np.ndarray, int], np.ndarray], points: np.ndarray, t: int,
                tol: float = 1e-4, max_iter: int = 200) -> np.ndarray:
    """Solve ``q + v_t(q) = p`` for q by fixed-point iteration ``q = p - v_t(q)``.

    points: (N, 2) px. Converges when v_t is a contraction in its gradient
    (|grad v| < 1), true for every case here. Raises RuntimeError otherwise.
    """
    q = points - velocity(points, t)
    for _ in range(max_iter):
        q_new = points - velocity(q, t)
        if np.max(np.abs(q_new - q), initial=0.0) < tol:
            return q_new
        q = q_new
    raise RuntimeError("fixed-point inversion of the simulated motion did not converge")


def _psf_axial(d):
    return np.exp(-0.5 * (d / PSF_AXIAL_SIGMA) ** 2) * np.cos(2.0 * np.pi * d / PSF_WAVELENGTH)


def _psf_lateral(d):
    return np.exp(-0.5 * (d / PSF_LATERAL_SIGMA) ** 2)


def _render_rf(pos: np.ndarray, amp: np.ndarray, height: int, width: int) -> np.ndarray:
    """RF image (height, width): every scatterer's PSF at its exact sub-pixel position.

    The PSF is separable, so RF = Gy^T @ Gx with Gy (N, height) and Gx (N, width)
    holding each scatterer's truncated axial and lateral profiles (one matmul).
    """
    ry = int(np.ceil(3.5 * PSF_AXIAL_SIGMA))
    rx = int(np.ceil(3.5 * PSF_LATERAL_SIGMA))
    keep = (
        (pos[:, 0] > -ry - 1) & (pos[:, 0] < height + ry)
        & (pos[:, 1] > -rx - 1) & (pos[:, 1] < width + rx)
    )
    p = pos[keep].astype(np.float32)
    a = amp[keep].astype(np.float32)
    fy = np.floor(p[:, 0]).astype(np.int64)
    fx = np.floor(p[:, 1]).astype(np.int64)
    ky = fy[:, None] + np.arange(-ry, ry + 2)[None, :]  # (N, Ky) rows each scatterer reaches
    kx = fx[:, None] + np.arange(-rx, rx + 2)[None, :]  # (N, Kx) columns
    gy = _psf_axial(ky - p[:, :1]) * a[:, None]
    gx = _psf_lateral(kx - p[:, 1:])
    # Padded so out-of-image taps land in columns that are cut off afterwards.
    sy, sx = 2 * ry + 2, 2 * rx + 2
    rows = np.arange(p.shape[0])[:, None]
    big_y = np.zeros((p.shape[0], height + 2 * sy), np.float32)
    big_x = np.zeros((p.shape[0], width + 2 * sx), np.float32)
    big_y[rows, ky + sy] = gy
    big_x[rows, kx + sx] = gx
    return (big_y[:, sy: sy + height].T @ big_x[:, sx: sx + width]).astype(np.float64)


def _envelope(rf: np.ndarray, pad: int) -> np.ndarray:
    """Hilbert envelope along depth (rows), then crop the rows padded against wrap-around."""
    env = np.abs(hilbert(rf, axis=0))
    return env[pad: env.shape[0] - pad]


# --------------------------------------------------------------------------- the engine


def simulate(scene: _Scene, seed: int = 0) -> SimulatedSequence:
    """Move scatterers through ``scene``, render frames, and record the exact fields."""
    rng = np.random.default_rng(seed)
    n, T, m = scene.size, scene.n_frames, scene.margin
    if n < 16 or T < 2:
        raise ValueError("a simulated sequence needs size >= 16 px and at least 2 frames")
    pad = int(np.ceil(4 * PSF_AXIAL_SIGMA)) + 2  # extra rows rendered so the Hilbert transform has no edge

    # Extended grid (image plus margin): the map from frame-t pixels back to frame 0.
    ext = np.arange(-m, n + m, dtype=np.float64)
    gy, gx = np.meshgrid(ext, ext, indexing="ij")
    grid = np.stack((gy.ravel(), gx.ravel()), axis=1)  # (Ne, 2)
    ne = ext.size
    origin = grid.copy()  # frame-0 coordinates of the material at each grid point
    inner = slice(m, m + n)

    def to_frame0(points):
        coords = (points + m).T
        return np.stack(
            [ndimage.map_coordinates(origin[:, c].reshape(ne, ne), coords, order=1, mode="nearest")
             for c in range(2)], axis=1)

    lo, hi = -m, n - 1 + m
    count = int(round(SCATTERER_DENSITY * (hi - lo) ** 2))
    pos = rng.uniform(lo, hi, size=(count, 2))
    amp = scene.echogenicity(pos) * rng.standard_normal(count)

    # Electronic noise, band-limited by the same PSF (the receive filter), as a
    # fraction ``scene.noise`` of the RF std of unit-echogenicity speckle.
    taps = np.arange(-8, 9, dtype=np.float64)
    noise_axial, noise_lateral = _psf_axial(taps), _psf_lateral(taps)
    noise_sigma = scene.noise * np.sqrt(SCATTERER_DENSITY)

    frames = np.empty((T, n, n), np.float32)
    fields = np.empty((T - 1, 2, n, n), np.float32)
    masks = np.empty((T, n, n), bool)
    ref = None
    for t in range(T):
        rf = _render_rf(pos + np.array([pad, 0.0]), amp, n + 2 * pad, n)
        noise = noise_sigma * rng.standard_normal(rf.shape)
        noise = ndimage.convolve1d(ndimage.convolve1d(noise, noise_axial, axis=0), noise_lateral, axis=1)
        rf += noise
        env = _envelope(rf, pad)
        if ref is None:
            ref = float(np.percentile(env, 99.5))  # fixed gain for the whole sequence
        db = 20.0 * np.log10(env / ref + 1e-12)
        frames[t] = np.clip(1.0 + db / DYNAMIC_RANGE_DB, 0.0, 1.0)
        masks[t] = scene.region(origin.reshape(ne, ne, 2)[inner, inner].reshape(-1, 2)).reshape(n, n)
        if t == T - 1:
            break
        pos = pos + scene.velocity(pos, t)
        # where the material at each pixel of t+1 was at t
        q = scene.inverse(grid, t) if scene.inverse is not None else invert_step(scene.velocity, grid, t)
        fields[t] = (q - grid).reshape(ne, ne, 2)[inner, inner].transpose(2, 0, 1)
        origin = to_frame0(q)
        # Out-of-plane motion: some scatterers leave the plane, new ones enter.
        new = rng.random(count) < scene.reseed_fraction
        k = int(new.sum())
        pos[new] = rng.uniform(lo, hi, size=(k, 2))
        amp[new] = scene.echogenicity(to_frame0(pos[new])) * rng.standard_normal(k)

    spacing = 0.9 * 128.0 / n
    return SimulatedSequence(
        name=scene.name,
        description=scene.description,
        frames=frames,
        fields=fields,
        masks=masks,
        vortex_centres=None if scene.vortex_centres is None else np.asarray(scene.vortex_centres, np.float32),
        frame_interval_s=1.0 / 30.0,
        pixel_spacing_mm=(spacing, spacing),
        ed_index=scene.ed_index,
        es_index=scene.es_index,
        truth=scene.truth,
    )


# --------------------------------------------------------------------------- the cases


def _lamb_oseen(d: np.ndarray, core: float, peak: float) -> np.ndarray:
    """Lamb-Oseen vortex velocity (N, 2) at offsets d (N, 2) from its centre.

    Tangential speed peaks at ``peak`` px/frame at r = 1.12 ``core``; rotation is
    counter-clockwise as displayed (y down), i.e. positive dvx/dy - dvy/dx.
    """
    r2 = np.sum(d * d, axis=1) / core**2
    g = np.where(r2 > 1e-12, -np.expm1(-r2) / np.maximum(r2, 1e-12), 1.0)  # (1 - e^-r2) / r2
    scale = peak / 0.6382 / core * g  # 0.6382 = max over r of (1 - e^-r^2) / r
    return np.stack((-d[:, 1], d[:, 0]), axis=1) * scale[:, None]


def _ellipse_radius(points, centre, a, b):
    """Elliptic radius: < 1 inside the ellipse with semi-axes a (rows), b (cols)."""
    dy = (points[:, 0] - centre[0]) / a
    dx = (points[:, 1] - centre[1]) / b
    return np.sqrt(dy * dy + dx * dx)


def _lv_scene(name, description, size, n_frames, seed, speed):
    """Contrast-echo LV cavity with a drifting vortex and a mild contraction (vortex cases)."""
    s = size / 128.0
    rng = np.random.default_rng([seed, 1])
    centre = np.array([0.52 * size, 0.5 * size])
    a0, b0, wall = 0.32 * size, 0.21 * size, 0.07 * size
    phase = _cycle(n_frames)
    # Per-step scale of the cavity: shrinks 12 % (linear, scaled by speed) in systole and recovers.
    log_scale = np.log(1.0 - 0.12 * speed) * phase / phase[phase > 0].sum()
    cum = np.concatenate(([0.0], np.cumsum(log_scale)))  # (T,) log size of the cavity at frame t
    steps = max(n_frames - 2, 1)
    tt = np.arange(n_frames - 1)
    centres = np.stack(
        (centre[0] - 0.08 * size + 0.10 * size * tt / steps,
         centre[1] + 0.02 * size * np.sin(np.pi * tt / steps)), axis=1)
    core, peak = 0.075 * size, 2.5 * s * speed
    texture = _texture(rng, size, int(np.ceil(10 * s)) + 10)

    def echogenicity(p0):
        rho = _ellipse_radius(p0, centre, a0, b0)
        rho_out = _ellipse_radius(p0, centre, a0 + wall, b0 + wall)
        base = np.where(rho < 1.0, 1.0, np.where(rho_out < 1.0, 0.25, 0.05))
        return base * texture(p0)

    def region(p0):
        return _ellipse_radius(p0, centre, a0, b0) < 1.0

    def velocity(p, t):
        k = np.exp(cum[t])
        rho = _ellipse_radius(p, centre, a0 * k, b0 * k)
        contract = (np.exp(log_scale[t]) - 1.0) * (p - centre) * (1.0 - _smoothstep((rho - 1.35) / 0.65))[:, None]
        swirl = _lamb_oseen(p - centres[t], core, peak) * (1.0 - _smoothstep((rho - 0.55) / 0.4))[:, None]
        return contract + swirl

    return _Scene(name, description, size, n_frames, int(np.ceil(10 * s)) + 10, echogenicity, region,
                  velocity, vortex_centres=centres, ed_index=0, es_index=_es_index(phase))


def vortex(size: int = 128, n_frames: int = 12, seed: int = 0) -> SimulatedSequence:
    """Contrast echo: a Lamb-Oseen vortex (peak 2.5 px/frame at 128 px) in the LV cavity."""
    return simulate(_lv_scene(
        "vortex",
        "Contrast echo LV cavity, Lamb-Oseen vortex (peak ~2.5 px/frame at 128 px) drifting "
        "towards the base, mild contraction; mask = cavity.",
        size, n_frames, seed, 1.0), seed)


def slow_vortex(size: int = 128, n_frames: int = 12, seed: int = 0) -> SimulatedSequence:
    """The vortex case with every motion at 1/3 the speed (peak ~0.8 px/frame)."""
    return simulate(_lv_scene(
        "slow_vortex",
        "Contrast echo LV cavity, Lamb-Oseen vortex at 1/3 speed (peak ~0.8 px/frame at 128 px), "
        "mild contraction; mask = cavity.",
        size, n_frames, seed, 1.0 / 3.0), seed)


def myocardium(size: int = 128, n_frames: int = 12, seed: int = 0) -> SimulatedSequence:
    """Non-contrast short axis: a bright wall contracting radially (incompressible) and twisting."""
    s = size / 128.0
    rng = np.random.default_rng([seed, 2])
    centre = np.array([0.5 * size, 0.5 * size])
    r_in, r_out = 0.2 * size, 0.33 * size
    phase = _cycle(n_frames)
    phase = phase / np.abs(phase).max()
    radial_peak = 1.2 * s  # endocardial inward speed, px/frame
    twist_peak = 0.7 * s / r_in  # rad/frame, ~0.7 px/frame at the endocardium
    r_core = 0.5 * r_in
    r_mid = 0.5 * (r_in + r_out)
    margin = int(np.ceil(6 * s)) + 10
    texture = _texture(rng, size, margin)

    def echogenicity(p0):
        r = np.hypot(p0[:, 0] - centre[0], p0[:, 1] - centre[1])
        base = np.where(r < r_in, 0.04, np.where(r < r_out, 1.0, 0.3))
        return base * texture(p0)

    def region(p0):
        r = np.hypot(p0[:, 0] - centre[0], p0[:, 1] - centre[1])
        return (r >= r_in) & (r < r_out)

    def velocity(p, t):
        d = p - centre
        r = np.hypot(d[:, 0], d[:, 1])
        theta = np.arctan2(d[:, 0], d[:, 1])
        # 2-D sink v_r = -k / r (area-preserving: the wall thickens as it contracts),
        # linear in the core so it stays smooth, fading out beyond the epicardium.
        k = radial_peak * r_in * phase[t]
        rc = np.maximum(r, r_core)
        vr = -k * r / (rc * rc) * (1.0 - _smoothstep((r - 1.05 * r_out) / (0.15 * size)))
        omega = twist_peak * phase[t] * (1.0 + 0.5 * np.tanh((r_mid - r) / (0.05 * size))) / 1.5
        omega = omega * (1.0 - _smoothstep((r - 1.05 * r_out) / (0.15 * size)))
        r_new = r + vr
        th_new = theta + omega
        new = np.stack((centre[0] + r_new * np.sin(th_new), centre[1] + r_new * np.cos(th_new)), axis=1)
        return new - p

    scene = _Scene(
        "myocardium",
        "Non-contrast short axis: bright wall contracting radially (incompressible, ~1.2 px/frame "
        "at the endocardium) and twisting (~0.7 px/frame), then relaxing; mask = wall.",
        size, n_frames, margin, echogenicity, region, velocity, None, 0, _es_index(phase))
    return simulate(scene, seed)


def large_motion(size: int = 128, n_frames: int = 12, seed: int = 0) -> SimulatedSequence:
    """Whole image moves rigidly 7-13 px/frame (square translation path, +-4 deg rotation)."""
    s = size / 128.0
    rng = np.random.default_rng([seed, 3])
    c0 = np.array([0.5 * size, 0.5 * size])
    a0, b0, wall = 0.22 * size, 0.17 * size, 0.08 * size
    shift = 10.0 * s
    angles = 0.07 * (-1.0) ** np.arange(n_frames - 1)  # rad per step, alternating
    phi = np.pi / 4 + np.pi / 2 * np.arange(n_frames - 1)
    moves = shift * np.stack((np.sin(phi), np.cos(phi)), axis=1)  # square path, back every 4 steps
    centres = c0 + np.concatenate(([[0.0, 0.0]], np.cumsum(moves, axis=0)))
    margin = int(np.ceil(40 * s)) + 8
    texture = _texture(rng, size, margin)

    def echogenicity(p0):
        rho = _ellipse_radius(p0, c0, a0, b0)
        rho_out = _ellipse_radius(p0, c0, a0 + wall, b0 + wall)
        base = np.where(rho < 1.0, 0.12, np.where(rho_out < 1.0, 1.0, 0.4))
        return base * texture(p0)

    def region(p0):
        return _ellipse_radius(p0, c0, a0 + wall, b0 + wall) < 1.0

    def velocity(p, t):
        ca, sa = np.cos(angles[t]), np.sin(angles[t])
        d = p - centres[t]
        rot = np.stack((ca * d[:, 0] + sa * d[:, 1], -sa * d[:, 0] + ca * d[:, 1]), axis=1)
        return centres[t] + moves[t] + rot - p

    scene = _Scene(
        "large_motion",
        "Rigid motion of the whole image, 7-13 px/frame at 128 px (10 px translation along a "
        "square path plus alternating 4 degree rotation); mask = heart (wall and cavity).",
        size, n_frames, margin, echogenicity, region, velocity, None, 0, 0)
    return simulate(scene, seed)


#: Every case by name: ``CASES["vortex"](size=128, n_frames=12, seed=0)``.
CASES: dict[str, Callable[..., SimulatedSequence]] = {
    "vortex": vortex,
    "slow_vortex": slow_vortex,
    "myocardium": myocardium,
    "large_motion": large_motion,
}


# --------------------------------------------------------------------------- evaluation helper


def vortex_centre(field: np.ndarray, mask: np.ndarray | None = None, sigma: float = 2.0) -> np.ndarray:
    """(y, x) px of the strongest rotation of the motion shown by ``field``.

    field: (2, H, W) in the project convention; the motion is
    :func:`motion_from_field` (``-field``), smoothed by a Gaussian of ``sigma``
    px, and its vorticity ``d vx/dy - d vy/dx`` (1/frame) is maximised in
    absolute value inside ``mask`` (H, W) bool.
    """
    motion = motion_from_field(np.asarray(field, dtype=np.float64))
    vy = ndimage.gaussian_filter(motion[0], sigma)
    vx = ndimage.gaussian_filter(motion[1], sigma)
    curl = np.abs(np.gradient(vx, axis=0) - np.gradient(vy, axis=1))
    if mask is not None:
        curl = np.where(mask, curl, -np.inf)
    return np.asarray(np.unravel_index(int(np.argmax(curl)), curl.shape), dtype=np.float64)
