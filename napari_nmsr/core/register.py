"""NMSR: per-sequence, coarse-to-fine self-supervised registration.

At each scale s (coarse to fine) every frame t is warped by the composed field
of the previous scales, both it and frame t+1 are resized to scale s, and a
U-Net N(moving, fixed) is optimised with Adam on ALL frame pairs of this one
sequence to minimise ``-localNCC(warp(moving, N), fixed) + lambda * |grad N|^2``
(paper eqs. 1-3). Its field, brought to full resolution, is composed with the
previous one (``convention.compose``; paper eq. 4 in the order the procedure
implies). A pair whose full-resolution match (the loss's data term) a
sub-pixel refinement does not clearly improve keeps its previous field
(``guard``, on by default: a scale fitted to decorrelated speckle raises the
match a little while moving away from the true motion; ``guard_gain``); so
does a pair a larger change leaves matching worse on frames shrunk until the
change is sub-pixel (:data:`GUARD_MAX_SHIFT`). Every
scale's composed full-resolution field is kept, the coarse scales' in float16
(:mod:`.scale_fields`), and the next scale starts from it as kept. The finest
scale's row ends with a per-pair refinement (:mod:`.refine`) and the temporal
consensus (:mod:`.consensus`: each pair's field toward its neighbours' mean where
the frames allow).

Variants (``RegistrationConfig.variant``):

``nmsr``      one scale (the finest in ``scales``), one network;
``nmsr_ms``   multi-scale, a fresh network per scale;
``nmsr_vi``   multi-scale, each scale starts from the previous scale's weights;
``nmsr_v``    multi-scale, each scale starts from weights trained on other
              sequences (``napari_nmsr.core.train``; ``config.weights``).

The generator :func:`register_iter` yields :class:`Progress` at every
optimisation step (a point where a GUI worker may stop it) and
:class:`ScaleDone` when a scale is finished; :func:`register` drives it with
a progress callback and a cancel request and returns a
:class:`~napari_nmsr.core.result.RegistrationResult`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .consensus import ConsensusSettings, temporal_consensus
from .convention import compose, pixel_grid, resize_field, resize_image, warp
from .device import amp_dtype, describe_device, is_out_of_memory, pick_device, release_host_memory
from .errors import DeviceMemoryError, MaskError, SequenceError
from .global_motion import affine_fields
from .roi import Box, paste_field, region_of_interest
from .losses import (bending_loss, box_mean, divcurl_loss, gaussian_smooth, local_cc_map, ncc_loss, pair_masked_mean,
                     smoothness_loss, temporal_loss)
from .metrics import pair_metrics
from .result import RegistrationResult
from .scale_fields import ScaleFields, kept_dtype
from .refine import RefineSettings, denoising_sigma, refine_fields, work_size
from .threads import rebalance as rebalance_threads
from .unet import UNet

__all__ = [
    "VARIANTS",
    "PRESETS",
    "RegistrationConfig",
    "Progress",
    "ScaleDone",
    "register",
    "register_iter",
    "validate_frames",
    "validate_mask",
]

VARIANTS = ("nmsr", "nmsr_ms", "nmsr_vi", "nmsr_v")

#: Smallest side a scale's grid may have at all (``RegistrationConfig.min_scale_px`` may only raise it).
MIN_SCALE_SIZE = 12

#: Field regularisers: ``diffusion`` is the paper's lambda * mean|grad u|^2;
#: ``bending`` is lambda * mean|second derivatives of u|^2 (zero for affine motion); at a scale whose
#: ``RegistrationConfig.curl_weight`` is below 1 it is the div-curl energy (:func:`.losses.divcurl_loss`).
REGULARISERS = {"diffusion": smoothness_loss, "bending": bending_loss}
#: How the refinement resamples frame t through a field (grid_sample's modes; the U-Net's loss is bilinear, as the paper's).
INTERPOLATIONS = ("bicubic", "bilinear")

#: Named engine settings (RegistrationConfig overrides). ``default`` is what
#: ``RegistrationConfig()`` gives; ``paper`` is the paper's loss (diffusion
#: regulariser, lambda 10, no affine stage) and its 3500 steps per scale (a
#: GPU job); ``cpu`` is the earlier name of ``default``.
PRESETS = {
    "default": {"steps": (150, 100, 100, 0), "smoothness": (50.0, 50.0, 100.0, 200.0),
                "curl_weight": (1.0, 1.0, 0.0, 1.0), "temporal_weight": 0.0, "loss_radius": (6, 6, 4, 6)},
    "paper": {"steps": (3500, 3500, 3500, 3500), "patience": 0, "regulariser": "diffusion", "smoothness": 10.0,
              "loss_radius": 6,
              "affine": False, "guard": False, "min_scale_px": MIN_SCALE_SIZE, "refine_steps": 0,
              "consensus_tolerance": 0.0},
}
PRESETS["cpu"] = PRESETS["default"]
DEFAULT_PRESET = "default"

# Pixels (pairs x h x w at the scale being optimised) per step by default.
# Coarse scales then see every pair each step; fine scales take random
# minibatches, which on a CPU are both faster per step (Cancel answers
# quickly) and better per second (benchmark vortex EPE 0.40 -> 0.32 px at the
# same time per pair). A GPU takes far more. Out-of-memory halves the batch.
PIXELS_PER_STEP = {"cpu": 2**16, "mps": 2**21, "cuda": 2**23}
#: Large scales train on random crops (see training_crop): at least this many
#: per step, each at least MIN_CROP px on a side.
MIN_PAIRS_PER_STEP = 4
MIN_CROP = 64
#: The guard judges refinements that move a pair by less than this (mean px over the mask) at full
#: resolution: noise fits are sub-pixel. A larger change is usually motion the earlier stages missed,
#: which full-resolution speckle cannot judge (it decorrelates within a pixel or two of a coarse
#: estimate), so one that does not raise the full-resolution match is judged on frames shrunk until
#: the change is this long (never below ``min_scale_px``), where both fields are within a pixel or so
#: of each other and of the truth: it is kept unless it matches worse there than the previous field.
#: (Before, a 1/8 scale took a phantom disk's pair that the affine stage had within 0.10 px to 0.99 px,
#: tuning disk 6. The scale's own grid cannot judge: the scale has fitted exactly that match.)
GUARD_MAX_SHIFT = 1.0
#: Full-resolution pairs a CPU warps or infers at once: larger chunks leave the cache (45x768x1024:
#: warping all pairs took 0.37 s 2 at a time, 0.73 s 32 at a time).
CPU_CHUNK = 2
#: Bytes of U-Net activations a CPU holds at once when it infers a scale's field (about 96 float32
#: channels per pixel at the finest level, measured: each more pair of a 526x475 grid added ~100 MB):
#: at 45x768x1024 two pairs of the 1/1 scale at once were the run's memory peak (+430 MB over the
#: rest without a mask, +100 MB with one), so large grids go one pair at a time.
CPU_INFER_BYTES = 2**27
_INFER_BYTES_PER_PX = 96 * 4
#: On a GPU the loss is read back (a host synchronisation) every this many steps.
SYNC_EVERY = 10


def _one_or_several(value, kind):
    """A config field that is one value or one per scale (or window): ``kind`` or a tuple of ``kind``."""
    return tuple(kind(v) for v in value) if isinstance(value, (list, tuple)) else kind(value)


def _weights_per_scale(name: str, value):
    """A weight that is one value or one per scale, each finite and >= 0 (else ValueError naming it)."""
    value = _one_or_several(value, float)
    weights = value if isinstance(value, tuple) else (value,)
    if not weights or min(weights) < 0 or not all(np.isfinite(weights)):
        raise ValueError(f"{name} must be one value or one per scale, each >= 0, got {value}")
    return value


@dataclass
class RegistrationConfig:
    """Every knob of a run; stored in the result file.

    ``steps`` and ``smoothness`` are one number for all scales or one per
    scale. A scale of 0 steps is skipped (no training, no inference: every
    pair keeps the field so far). The default skips the full scale's U-Net:
    the guard rejected its 20 steps' field for every pair of the 48 tuning
    cases, and the geo-mean is 0.520 with or without them (benchmarks/README.md,
    nineteenth session); the refinement ends the run in that row. When it runs,
    its weight is 4x the coarse scales' (200 vs 50): its
    20 steps, fitted to strongly decorrelated speckle, raised the match while
    moving away from the true motion, and the guard let them pass
    (benchmarks/README.md, thirteenth session: decorrelation tuning cases
    0.220 -> 0.123 and 0.243 -> 0.184 px, 54 others unchanged).
    ``curl_weight`` (one value or one per scale) is the share of the bending
    weight that the rotational part of the field's curvature gets: at 1 the
    regulariser is the bending energy; below 1 it is the div-curl energy of
    fluid-flow estimation (:func:`~.losses.divcurl_loss`), so a vortex core can
    turn while contraction and speckle noise stay as constrained. The eighteenth
    session gave the 1/2 scale divergence weight 100 and rotation weight 10: a fast
    vortex in a 7-20 px core is captured at that scale or not at all (the
    coarser grids cannot hold it, the refinement's grid neither), and bending
    50 held it back (benchmarks/README.md, eighteenth session: 40 tuning cases'
    geo-mean 0.509 -> 0.488, their vortices 0.869 -> 0.678; a plain bending
    weight of 10 there gained as much on the vortices and cost the walls and
    decorrelated speckle). Since the twenty-eighth session the 1/2 scale's rotation
    weight is 0 (divergence 100 alone): at 10 it still shrank slow vortices in
    small cores and held a fast one (0.66 rad/frame in a 12 px core) back entirely
    (48 tuning cases: vortex family -20 %, circulation error 14.9 -> 7.9 %;
    benchmarks/README.md, twenty-eighth session). ``loss_radius`` (one value or one per scale, px of the
    scale's grid) is the half-size of the local-NCC window in the U-Net's loss; ``ncc_radius`` stays the
    affine stage's and the guard's (at full resolution). The paper uses 6 at every scale. Since the
    forty-third session the 1/2 scale's is 4: a 13 px window there spans a small vortex core (26 px of the
    frame), whose speckle turns by 0.5-1 rad between frames, so no shift of the window matches; a 9 px
    window follows it (nine fast tuning vortices: EPE over the best anchor's, geo-mean 0.59 -> 0.45 at
    seed 0 and 0.79 -> 0.59 at seed 1; 48 tuning cases: geo-mean +0.4 %, their vortices -5.8 %,
    circulation error 11.3 -> 8.4 %, real echo +4.5 % from a border fit the guard kept, which
    ``guard_in_view`` ends; both: geo-mean -2.8 %; benchmarks/README.md). ``temporal_weight`` (one value or one per scale)
    couples consecutive pairs in the U-Net's loss (:func:`~.losses.temporal_loss`, a robust penalty on
    how unevenly the field changes from pair to pair; each step then trains on consecutive pairs). It
    is off by default (0). It is meant for the 1/2 scale, where a slow vortex's shape is decided and one
    pair's speckle and noise hold too little of it (with the simulator's noise and decorrelation
    switched off, seven slow vortices lost 14 % of their turn instead of 26 %). ``(0, 0, 100, 0)`` makes
    that scale's residual close to linear in time over a run of pairs, and leaves what differs from
    pair to pair to the guard and the per-pair refinement. The thirty-second session measured it
    (benchmarks/README.md): the 48 tuning cases' EPE geo-mean -4.3 %, no family worse, and their
    vortices' circulation error 17.3 -> 9.1 %. But on the held-out split it gave -3.2 % at seed 0 and
    +1.5 % at seed 1; fast motion that changes between pairs lost 11-28 % at both seeds, and held-out
    circulation was level (13.8 / 13.9 -> 12.1 / 13.7 %). So it is a setting, not the default.
    ``patience`` > 0
    enables early stopping: a scale stops when its smoothed loss has not
    improved by ``min_delta`` (relative) for ``patience`` steps. It only
    fires on short sequences whose pairs all fit in one step (cines never);
    turning it off was tried (benchmarks/README.md, tenth session): level on
    the held-out split at two seeds and at 384 px, 23-26 % slower where it fires.
    ``batch_size`` None = all pairs at once when they fit (halved
    automatically on out-of-memory). ``mask_margin`` grows the mask by that
    many pixels for the LOSS only (metrics use the mask as drawn): without it
    the field just outside the region has no data term, and the smoothness
    term drags the region's border towards it (benchmark: large-motion EPE
    0.36 px with margin 0, 0.19 px with 6, the NCC window radius).
    ``amp`` None: mixed precision at the coarse scales on a GPU only
    (:func:`amp_for`); True: everywhere; False: float32 throughout.
    ``guard_gain``: with ``guard``, a sub-pixel refinement of a pair is kept
    only when it removes at least this share of the pair's full-resolution
    dissimilarity (1 - match); 0 keeps any improvement. Fitting noise raises
    the match by a share of what is left (as added regressors raise R^2 by a
    share of 1 - R^2), so the test is relative (benchmarks/README.md, eighth
    session: tuning geo-mean 0.921 -> 0.787 at 0.05). A change of a pixel or
    more that does not clear that bar is judged on frames shrunk until it is
    sub-pixel, and kept unless it matches worse there (:data:`GUARD_MAX_SHIFT`).
    ``guard_in_view``: the guard judges a scale without the pixels whose NCC window reaches a point
    that the scale's start field pulls from outside frame t (:func:`_judged_region`): material entering
    the view matches under no field, and a scale that bends the border to fit it is not motion
    (forty-third session: 48 tuning cases' real echo -19 %, real PIV +2 %, masked cases whose mask stays
    clear of the frame's edge unchanged; benchmarks/README.md).
    ``early_checkpoint``: with ``guard``, the finest U-Net scale that trains keeps a copy of its
    network at this share of its steps, and a pair takes the copy's field unless the later steps
    earn their change: by the guard's test against the copy's field, or by changing the pair as
    they change its neighbours (``refine_coherence``). Its later steps fit each pair's speckle
    (a tuning case of decorrelated speckle: final EPE +44 % from 30 steps to 100, twenty-seventh
    session) while a fast vortex needs them all (:func:`_prefer_checkpoint`); 0: off.
    ``extend_steps``: with ``guard``, when the last U-Net scale's steps (or its early stop on a flat
    loss) raised the match over all pairs by less than ``extend_gain`` of the dissimilarity left, the
    same network trains this many steps more (with a fresh Adam, and where the frames refuse that field, once
    more from the same weights with the scale's own Adam; no early stop; each try stops at the first check
    of every :data:`EXTEND_CHECK_EVERY` steps whose change does not turn the pairs alike). Its field
    replaces the first only where it raises the match by at least ``extend_margin`` of what the first
    left and changes the pairs alike: the median pair's change correlates with its neighbours' by at
    least ``extend_coherence`` (:func:`_train_scale`). A fast vortex is caught at the 1/2 scale within
    100 steps from one start and not from another, whose loss is still falling there or has stopped
    early (thirty-fifth session: tuning vortex 5, 0.678 px at seed 0 and 0.194 at seed 1; extended
    0.169), and turns alike in every pair; on decorrelated speckle the longer training raises the
    match as much with a fit of each pair's own speckle (benchmarks/README.md). A single pair has no
    neighbours to show that, and is never extended. 0: never. ``extend_coherence`` was 0.7 until the
    fortieth session: every kept try on the tuning and held-out cases looked at (ten) turned its pairs
    alike by 0.946 or more at every check, while the shared DICOM's two tries at the 1/2 scale, kept in
    neither, read 0.72 and 0.75 at their first check and ran all their steps; at 0.8 they stop there.
    ``extend_after_rejects``: an earlier trained U-Net scale may train on too (one try, with a fresh Adam,
    judged the same way) when the scale trained before it had some pair's field rejected by the guard; a
    refused try leaves the next scale the network its own steps left. A fast 512 px vortex whose 1/8 scale
    was rejected in three of five pairs is caught at the 1/4 scale within 100 steps from one start and not
    from another (held-out 528972487, lost at engine seed 1 in the thirty-eighth session: 0.764 px without,
    0.138 with, DIS 0.217; thirty-ninth session); the 1/2 scale cannot catch it later. On the 48 tuning
    cases it trains on in 38 and is kept in none (bit-identical fields); it costs 3-7 % on the benchmark
    cines (benchmarks/README.md).
    ``refine_*``: the last stage (:mod:`napari_nmsr.core.refine`): each pair's
    composed field gets a smooth residual on a grid of ``refine_grid`` of the
    frame, fitted for ``refine_steps`` Adam steps (0: no refinement) to the
    local NCC (window radius ``refine_radius``; several: the mean of their
    maps, seventeenth session) with ``refine_smoothness`` x
    bending energy, at frames shrunk to ``refine_max_px`` on the short side
    (benchmarks/README.md, eleventh session: 384 px tuning geo-mean 1.52 ->
    0.77). Frame t is resampled ``refine_interpolation`` (bicubic: bilinear
    averages a pixel's noise with its neighbour's by an amount set by the
    fractional displacement, which biases NCC on noisy frames towards
    half-pixel motion; twelfth session: tuning geo-mean 0.658 -> 0.614 with
    radius 4). Bicubic resampling still keeps only 73 % of white noise's variance
    at half a pixel, so where the noise between the frames is white
    (:mod:`napari_nmsr.core.noise`) both frames are first blurred by a Gaussian of
    ``refine_denoise`` px (0: never; thirty-fourth session: the tuning split's real
    texture warps -20 %, its simulated speckle, whose noise is not white,
    untouched). ``refine_smoothness_deforming``: the bending weight instead for
    pairs whose motion is more than affine, those for which the guard kept some
    U-Net scale's field (with ``guard``): the strong weight keeps the residual
    from fitting speckle where the affine stage already has the motion (probe,
    rigid warps, the disk), and there it stays; a contracting, twisting wall or
    a vortex needs a more flexible residual (seventeenth session: 45 tuning
    cases' geo-mean 0.583 -> 0.555; fast myocardium 0.83 -> 0.76; rigid cases
    unchanged, the guard rejects every scale there). ``refine_fine_*``: then
    a second residual on a finer grid (``refine_fine_grid`` of the frame,
    ``refine_fine_smoothness`` x bending, ``refine_fine_steps`` steps, 0:
    none), kept pixel by pixel only where it
    raises the local match by at least ``refine_fine_gain`` of the
    dissimilarity left (a local guard; fifteenth session: held-out geo-mean
    0.602 / 0.588 at seeds 0 / 1 against 0.615 / 0.632 without it; real PIV
    vortex warps 0.307 -> 0.243 and 0.130 -> 0.084 px). For the deforming pairs
    the fine residual has ``refine_fine_smoothness_deforming`` and
    ``refine_fine_gain_deforming`` instead, and is fitted to the mean of its own
    pair's data and, weighted ``refine_fine_neighbours`` each (0: its own alone),
    pairs t-1 and t+1's (each through its own field plus pair t's residual):
    one pair's speckle and noise hold too little of a slow vortex's turn for a
    flexible residual, and the correction changes little from pair to pair
    (twenty-fourth session: tuning geo-mean 0.0803 -> 0.0785 px; held-out
    0.455 / 0.441 -> 0.441 / 0.434, vortex circulation error 42 / 39 -> 36 / 32 %).
    ``refine_coherence``: a pair counts as deforming too when a U-Net scale the
    guard rejected changed its field the way it changed pairs t-1 and t+1's
    (correlation of the cell-averaged changes at least this; 0: off) and raised
    its match by at least ``refine_coherence_gain`` of the dissimilarity left: a
    slow vortex that covers a small share of the mask is rejected so, and turns
    alike from pair to pair, where a fit to one pair's speckle does not
    (:func:`_coherent_changes`; twenty-fifth session, benchmarks/README.md).
    ``guard_coherent``: such a pair then also keeps the part of that rejected
    change it shares with pairs t-1 and t+1 (their mean, on those cells), where
    it matches no worse than the guard's field (:func:`_keep_coherent_part`;
    twenty-sixth session: held-out vortex circulation error 26 / 26 -> 22 / 21 %).
    ``consensus_*``: then the temporal consensus (:mod:`napari_nmsr.core.consensus`): each pair's
    field takes, pixel by pixel, the mean of its own and its two neighbours' fields where that
    lowers the local match by less than ``consensus_tolerance`` of the dissimilarity left (0: off)
    and the three fields agree within ``consensus_max_px`` px: pair-to-pair noise averages out of
    motion that changes slowly (a wall, a slow vortex, the disk), while motion that changes (probe
    motion turning back, a jittering hand) keeps its own fields (twenty-second session: tuning
    geo-mean 0.520 -> 0.497, decorrelated speckle 0.555 -> 0.483, myocardium 0.696 -> 0.675, the
    disk 0.112 -> 0.085, probe motion unchanged; held-out 0.474 / 0.460 -> 0.451 / 0.437). Since the
    thirtieth session the tolerance is 0.1 (was 0.03): behind the later refinement's fields the
    frames refuse less of the mean where it is right (48 tuning cases: geo-mean 0.0755 -> 0.0741 px,
    decorrelated speckle -4 %, the disk -5 %, myocardium -5 %, real echo +1 %; benchmarks/README.md).
    ``consensus_denoise``: where the refinement blurred its frames (``refine_denoise``, white noise), the
    consensus judges the same blurred frames: it would otherwise refuse, on noise the refinement did not
    fit, a mean the refinement's frames accept (thirty-seventh session: 48 tuning cases' real echo -1.6 %,
    real PIV -0.3 %, simulated speckle bit-identical; held-out real textures -0.5 %; benchmarks/README.md).
    ``min_scale_px``: a coarse scale's grid is never shorter than this on
    the short side of the registered box (the scale is raised, aspect kept;
    never above full size). At 1/8 a 128-160 px box is a 16-20 px grid, in
    which a vortex core or a twisting wall is one or two pixels and the
    U-Net's four poolings leave nothing (benchmarks/README.md, ninth
    session: tuning geo-mean 0.808 -> 0.734 at 32; the held-out split
    level). Frames whose box is 256 px or more are unaffected at the
    default scales.
    """

    variant: str = "nmsr_vi"
    scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    steps: int | tuple[int, ...] = PRESETS["default"]["steps"]
    lr: float = 1e-3
    smoothness: float | tuple[float, ...] = PRESETS["default"]["smoothness"]
    ncc_radius: int = 6
    loss_radius: int | tuple[int, ...] = PRESETS["default"]["loss_radius"]
    batch_size: int | None = None
    device: str = "auto"
    amp: bool | None = None
    seed: int | None = 0
    patience: int = 30
    min_delta: float = 1e-3
    weights: str | None = None
    mask_margin: int = 6
    regulariser: str = "bending"
    curl_weight: float | tuple[float, ...] = PRESETS["default"]["curl_weight"]
    temporal_weight: float | tuple[float, ...] = PRESETS["default"]["temporal_weight"]
    affine: bool = True
    crop: bool = True
    crop_training: bool = True
    pixels_per_step: int | None = None
    field_sigma: float = 0.0
    affine_steps: tuple[int, ...] = (100, 60, 30)
    encoder: tuple[int, ...] = (16, 32, 32, 32)
    decoder: tuple[int, ...] = (32, 32, 32, 16)
    guard: bool = True
    guard_gain: float = 0.05
    guard_in_view: bool = True
    min_scale_px: int = 32
    refine_steps: int = 100
    refine_grid: float = 0.125
    refine_smoothness: float = 500.0
    refine_smoothness_deforming: float = 100.0
    refine_lr: float = 0.05
    refine_max_px: int = 256
    refine_radius: int | tuple[int, ...] = (2, 4)
    refine_interpolation: str = "bicubic"
    refine_denoise: float = 0.8
    refine_fine_steps: int = 50
    refine_fine_grid: float = 0.25
    refine_fine_smoothness: float = 100.0
    refine_fine_gain: float = 0.1
    refine_fine_smoothness_deforming: float = 20.0
    refine_fine_gain_deforming: float = 0.03
    refine_fine_neighbours: float = 1.0
    refine_coherence: float = 0.7
    refine_coherence_gain: float = 0.02
    guard_coherent: bool = True
    early_checkpoint: float = 0.3
    consensus_tolerance: float = 0.1
    consensus_max_px: float = 1.0
    consensus_denoise: bool = True
    extend_steps: int = 100
    extend_gain: float = 0.05
    extend_margin: float = 0.05
    extend_coherence: float = 0.8
    extend_after_rejects: bool = True

    def __post_init__(self):
        self.variant = self.variant.lower()
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        scales = tuple(float(s) for s in self.scales)
        if not scales or any(not (0 < s <= 1) for s in scales) or list(scales) != sorted(scales):
            raise ValueError(f"scales must be increasing values in (0, 1], got {self.scales}")
        self.scales = scales
        if self.variant == "nmsr_v" and not self.weights:
            raise ValueError("variant nmsr_v needs a weights file (see `nmsr train`)")
        self.smoothness = _one_or_several(self.smoothness, float)
        self.curl_weight = _weights_per_scale("curl_weight", self.curl_weight)
        self.temporal_weight = _weights_per_scale("temporal_weight", self.temporal_weight)
        self.steps = _one_or_several(self.steps, int)
        self.loss_radius = _one_or_several(self.loss_radius, int)
        if min(self.loss_radius if isinstance(self.loss_radius, tuple) else (self.loss_radius,), default=0) < 1:
            raise ValueError(f"loss_radius must be one value or one per scale, each >= 1 px, got {self.loss_radius}")
        if min(self.steps if isinstance(self.steps, tuple) else (self.steps,), default=-1) < 0:
            raise ValueError(f"steps must be one value or one per scale, each >= 0 (0 skips a scale's U-Net), "
                             f"got {self.steps}")
        self.encoder = tuple(self.encoder)
        self.decoder = tuple(self.decoder)
        if int(self.min_scale_px) < MIN_SCALE_SIZE:
            raise ValueError(f"min_scale_px must be at least {MIN_SCALE_SIZE}, got {self.min_scale_px}")
        self.min_scale_px = int(self.min_scale_px)
        for name in ("affine", "crop", "crop_training", "guard", "guard_coherent", "guard_in_view"):  # "false" would be truthy
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            setattr(self, name, bool(value))
        if self.amp is not None and not isinstance(self.amp, (bool, np.bool_)):
            raise ValueError(f"amp must be None (automatic), True or False, got {self.amp!r}")
        if self.amp is not None:
            self.amp = bool(self.amp)
        self.refine_radius = _one_or_several(self.refine_radius, int)
        radii = self.refine_radius if isinstance(self.refine_radius, tuple) else (self.refine_radius,)
        if int(self.refine_steps) < 0 or not 0.0 < float(self.refine_grid) <= 1.0 or float(self.refine_smoothness) < 0 \
                or float(self.refine_lr) <= 0 or int(self.refine_max_px) < 16 or not radii or min(radii) < 1:
            raise ValueError("refine_steps must be >= 0, refine_grid in (0, 1], refine_smoothness >= 0, "
                             "refine_lr > 0, refine_max_px >= 16 and refine_radius >= 1 (each, if several)")
        if float(self.refine_smoothness_deforming) < 0:
            raise ValueError("refine_smoothness_deforming must be >= 0")
        if not 0.0 <= float(self.refine_denoise) <= 8.0:
            raise ValueError("refine_denoise must be in [0, 8] px (0: never blur the refinement's frames)")
        if int(self.refine_fine_steps) < 0 or not 0.0 < float(self.refine_fine_grid) <= 1.0 \
                or float(self.refine_fine_smoothness) < 0 or not 0.0 < float(self.refine_fine_gain) < 1.0:
            raise ValueError("refine_fine_steps must be >= 0, refine_fine_grid in (0, 1], refine_fine_smoothness >= 0 "
                             "and refine_fine_gain in (0, 1)")
        if float(self.refine_fine_smoothness_deforming) < 0 or not 0.0 < float(self.refine_fine_gain_deforming) < 1.0 \
                or not 0.0 <= float(self.refine_fine_neighbours) <= 1.0:
            raise ValueError("refine_fine_smoothness_deforming must be >= 0, refine_fine_gain_deforming in (0, 1) "
                             "and refine_fine_neighbours in [0, 1]")
        if not 0.0 <= float(self.refine_coherence) < 1.0 or not 0.0 <= float(self.refine_coherence_gain) < 1.0:
            raise ValueError("refine_coherence must be in [0, 1) (0: off) and refine_coherence_gain in [0, 1)")
        if not 0.0 <= float(self.consensus_tolerance) < 1.0 or not float(self.consensus_max_px) > 0.0:
            raise ValueError("consensus_tolerance must be in [0, 1) (0: no temporal consensus) and consensus_max_px > 0")
        if self.refine_interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown refine_interpolation {self.refine_interpolation!r}; "
                             f"choose one of {', '.join(INTERPOLATIONS)}")
        if not 0.0 <= float(self.guard_gain) < 1.0:
            raise ValueError(f"guard_gain must be in [0, 1), got {self.guard_gain}")
        if int(self.extend_steps) < 0 or not 0.0 <= float(self.extend_gain) < 1.0 \
                or not 0.0 <= float(self.extend_margin) < 1.0 or not -1.0 <= float(self.extend_coherence) <= 1.0:
            raise ValueError("extend_steps must be >= 0 (0: never), extend_gain and extend_margin in [0, 1), "
                             "extend_coherence in [-1, 1]")
        if not 0.0 <= float(self.early_checkpoint) < 1.0:
            raise ValueError(f"early_checkpoint must be in [0, 1) (0: off), got {self.early_checkpoint}")
        if self.regulariser not in REGULARISERS:
            raise ValueError(f"unknown regulariser {self.regulariser!r}; choose one of {', '.join(REGULARISERS)}")

    @property
    def effective_scales(self) -> tuple[float, ...]:
        return self.scales[-1:] if self.variant == "nmsr" else self.scales

    def steps_for(self, index: int) -> int:
        """Optimisation steps for scale ``index`` of ``effective_scales``.

        With per-scale steps, single-scale ``nmsr`` gets the same pixel work
        as the multi-scale schedule (sum of steps x scale^2), so the ablation
        compares methods at equal compute rather than at equal final steps.
        """
        if isinstance(self.steps, int):
            return self.steps
        if self.variant == "nmsr":
            steps = self.steps + (self.steps[-1],) * max(0, len(self.scales) - len(self.steps))
            work = sum(n * s * s for n, s in zip(steps, self.scales))
            return max(1, round(work / self.scales[-1] ** 2))
        return self.steps[min(index, len(self.steps) - 1)]

    def _per_scale(self, values: float | tuple[float, ...], index: int) -> float:
        """Scale ``index``'s entry of a one-or-per-scale field (single-scale ``nmsr``: the last)."""
        if not isinstance(values, tuple):
            return values
        return values[-1] if self.variant == "nmsr" else values[min(index, len(values) - 1)]

    def smoothness_for(self, index: int) -> float:
        """Regulariser weight for scale ``index`` of ``effective_scales`` (one value, or one per scale)."""
        return self._per_scale(self.smoothness, index)

    def loss_radius_for(self, index: int) -> int:
        """Half-size (px of the scale's grid) of the local-NCC window in the U-Net's loss at scale ``index``
        (one value, or one per scale)."""
        return int(self._per_scale(self.loss_radius, index))

    def curl_weight_for(self, index: int) -> float:
        """Share of the bending weight the rotational part of the field's curvature gets at scale
        ``index`` (one value, or one per scale; 1: the bending energy itself)."""
        return self._per_scale(self.curl_weight, index)

    def temporal_weight_for(self, index: int) -> float:
        """Weight of the coupling of consecutive pairs' fields (:func:`~.losses.temporal_loss`) in the
        U-Net's loss at scale ``index`` (one value, or one per scale; 0: each pair on its own)."""
        return self._per_scale(self.temporal_weight, index)

    @property
    def refinement_steps(self) -> int:
        """Steps of the last stage (both passes), counted in the finest scale's row; 0 without it."""
        return self.refine_steps + self.refine_fine_steps if self.refine_steps > 0 else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, saved: dict) -> "RegistrationConfig":
        """The config a result file was made with (``to_dict()``'s output). A field added since
        takes the value that reproduces the older engine: a file without ``curl_weight`` was
        made with the bending energy at every scale (before the eighteenth session), one without
        ``consensus_tolerance`` without the temporal consensus (before the twenty-second), one
        without ``refine_fine_neighbours`` with every pair's fine pass alike (before the
        twenty-fourth), one without ``refine_coherence`` without that flag (before the twenty-fifth), one
        without ``guard_coherent`` without keeping a flagged pair's shared change (before the twenty-sixth),
        one without ``early_checkpoint`` with every pair's field from the finished network (before the
        twenty-seventh), one without ``temporal_weight`` with no coupling of pairs in the U-Net's loss (before
        the thirty-second), one without ``refine_denoise`` with the refinement's frames never blurred
        (before the thirty-fourth), one without ``extend_steps`` with no scale ever trained past its steps
        (before the thirty-fifth), one without ``consensus_denoise`` with the consensus judging unblurred
        frames (before the thirty-seventh), one without ``extend_after_rejects`` with only the last U-Net
        scale ever trained on (before the thirty-ninth), one without ``loss_radius`` with the U-Net's loss
        window ``ncc_radius`` at every scale, and one without ``guard_in_view`` with the guard judging every pixel
        of the mask (both before the forty-third)."""
        values = dict(saved)
        values.setdefault("curl_weight", 1.0)
        values.setdefault("consensus_tolerance", 0.0)
        if "refine_fine_neighbours" not in values:
            values["refine_fine_neighbours"] = 0.0
            values.setdefault("refine_fine_smoothness_deforming", values.get("refine_fine_smoothness", 100.0))
            values.setdefault("refine_fine_gain_deforming", values.get("refine_fine_gain", 0.1))
        values.setdefault("refine_coherence", 0.0)
        values.setdefault("guard_coherent", False)
        values.setdefault("early_checkpoint", 0.0)
        values.setdefault("temporal_weight", 0.0)
        values.setdefault("refine_denoise", 0.0)
        values.setdefault("extend_steps", 0)
        values.setdefault("consensus_denoise", False)
        values.setdefault("extend_after_rejects", False)
        values.setdefault("loss_radius", values.get("ncc_radius", 6))
        values.setdefault("guard_in_view", False)
        return cls(**values)


@dataclass
class Progress:
    """One optimisation step: scale ``scale_index`` (0-based) of ``n_scales``.

    ``overall`` is the share of the run's planned work done so far (scales
    weighted by their pixel work, see :func:`work_plan`) and ``elapsed_s`` the
    seconds since the run started; together they give :attr:`eta_s`.
    """

    scale_index: int
    n_scales: int
    scale: float
    step: int
    n_steps: int
    loss: float
    elapsed_s: float = 0.0
    overall: float | None = None

    @property
    def fraction(self) -> float:
        """Overall progress in [0, 1] (by planned work when known, else scales weighted equally)."""
        if self.overall is not None:
            return self.overall
        return (self.scale_index + self.step / max(self.n_steps, 1)) / self.n_scales

    @property
    def eta_s(self) -> float | None:
        """Seconds left, extrapolated from the time so far (None until 2 % is done)."""
        f = self.fraction
        if f < 0.02 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (1.0 - f) / f


@dataclass
class ScaleDone:
    """A finished scale: its composed full-resolution field and metrics."""

    scale_index: int
    n_scales: int
    scale: float
    #: (T-1, 2, H, W), pixels, project convention; float32 for the finest scale, float16 for a
    #: coarser one (:func:`~.scale_fields.kept_dtype`: the field as the run kept it)
    field: np.ndarray
    mse: np.ndarray  # (T-1,)
    mean_cc: np.ndarray  # (T-1,)
    steps_run: int
    seconds: float
    final_loss: float
    #: (T-1,) bool: pairs that kept the previous scale's field (``RegistrationConfig.guard``), or None.
    kept_previous: np.ndarray | None = None
    #: What the engine decided at this scale beyond its plan, in words (an extension of its steps, the
    #: refinement's blur); kept in the result (``RegistrationResult.notes``).
    notes: tuple[str, ...] = ()


class _Cancelled(Exception):
    pass


def _cancel_hook(cancel):
    """A callable that raises _Cancelled when ``cancel()`` says so (for inner loops)."""
    if cancel is None:
        return None

    def check():
        if cancel():
            raise _Cancelled()

    return check


def validate_frames(frames) -> np.ndarray:
    """Check a sequence at the public boundary; returns float32 (T, H, W)."""
    arr = np.asarray(frames)
    if arr.ndim != 3:
        raise SequenceError(f"expected a sequence of 2-D frames (T, H, W); got an array of shape {arr.shape}")
    t, h, w = arr.shape
    if t < 2:
        raise SequenceError("registration needs at least two frames; this sequence has " f"{t}")
    if h < 16 or w < 16:
        raise SequenceError(f"frames of {h}x{w} pixels are too small to register (need at least 16x16)")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).reshape(t, -1).all(axis=1)
    if bad.any():
        raise SequenceError(f"frame {int(np.argmax(bad))} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise SequenceError(f"pixel values must be in [0, 1] (got {lo:.3g}..{hi:.3g}); load files with load_sequence")
    if hi - lo < 1e-6:
        raise SequenceError("every frame is blank (constant); there is nothing to track")
    return arr


def validate_mask(mask, shape: tuple[int, int, int]) -> np.ndarray | None:
    """(T, H, W) or (H, W) booleans -> (T, H, W) bool, or None."""
    if mask is None:
        return None
    m = np.asarray(mask)
    t, h, w = shape
    if m.shape == (h, w):
        m = np.broadcast_to(m, shape)
    if m.shape != shape:
        raise MaskError(f"mask shape {m.shape} does not match the sequence {shape} (expected (T, H, W) or (H, W))")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number):
            raise MaskError(f"a mask must hold booleans or 0/1, got values of type {m.dtype}")
        if not np.isin(m, (0, 1)).all():
            raise MaskError("a mask must hold only 0 and 1 (or booleans); this one has other values (NaN, 0.5, 255, ...)")
    m = m.astype(bool)
    empty = ~m.reshape(t, -1).any(axis=1)
    if empty.all():
        raise MaskError("the mask is empty: draw the region to track (e.g. the LV blood pool) first")
    if empty[1:].any():
        raise MaskError(f"the mask is empty on frame {int(np.argmax(empty[1:])) + 1}: every frame needs a region")
    return m


def register(
    frames,
    mask=None,
    config: RegistrationConfig | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    on_scale: Callable[[ScaleDone], None] | None = None,
    frame_interval_s: float | None = None,
    pixel_spacing_mm: tuple[float, float] | None = None,
) -> RegistrationResult:
    """Register a whole sequence; returns every finished scale's field.

    ``cancel()`` is polled at every optimisation step; when it returns True
    the run stops and the result holds the scales finished so far
    (``result.cancelled`` is True).
    """
    config = config or RegistrationConfig()
    done: list[ScaleDone] = []
    stored: list[np.ndarray] = []
    cancelled = False
    device = pick_device(config.device)

    def buffer(k: int, n_scales: int, shape: tuple[int, ...]) -> np.ndarray:
        # Every scale's field is written straight into the array the result keeps: no
        # second copy of all scales when the result is made, nor a full-frame copy of each
        # (277 MB at 45x768x1024). The coarse scales are kept in float16 (.scale_fields).
        stored.append(np.empty(shape, kept_dtype(k, n_scales)))
        return stored[-1]

    try:
        for event in register_iter(frames, mask, config, cancel=cancel, field_buffer=buffer):
            if isinstance(event, Progress):
                if progress is not None:
                    progress(event)
            else:
                done.append(event)
                if on_scale is not None:
                    on_scale(event)
    except _Cancelled:
        cancelled = True
    return RegistrationResult.from_scales(
        done,
        fields=ScaleFields(stored[: len(done)]) if done else None,
        config=config.to_dict(),
        cancelled=cancelled,
        frame_interval_s=frame_interval_s,
        pixel_spacing_mm=pixel_spacing_mm,
        device=describe_device(device),
    )


def register_iter(
    frames,
    mask=None,
    config: RegistrationConfig | None = None,
    cancel: Callable[[], bool] | None = None,
    field_buffer: Callable[[int, int, tuple[int, ...]], np.ndarray] | None = None,
) -> Iterator[Progress | ScaleDone]:
    """The engine as a generator; see the module docstring.

    Closing the generator (``.close()``, or a napari worker's ``quit()``)
    stops the run at the current step. If ``cancel`` is given and returns True
    an internal cancellation is raised, which :func:`register` turns into a
    partial result. ``field_buffer(scale_index, n_scales, shape)``, if given,
    returns the array each scale's full-frame field is written into (and that
    ``ScaleDone.field`` then is), so no full-frame copy is made. Each scale's
    field is kept as :func:`~.scale_fields.kept_dtype` says (the coarse scales
    in float16, the finest in float32), and the next scale starts from it as kept.
    """
    config = config or RegistrationConfig()
    frames = validate_frames(frames)
    mask = validate_mask(mask, frames.shape)
    device = pick_device(config.device)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    init_states = _load_weights(config) if config.variant == "nmsr_v" else None

    t, h, w = frames.shape
    n_pairs = t - 1
    box, moving_full, fixed_full, mask_full, score_mask = prepare_inputs(frames, mask, config, device)

    scales = config.effective_scales
    run_started = time.perf_counter()
    plan = work_plan(n_pairs, box.shape, config, device)
    field_full = torch.zeros((n_pairs, 2) + box.shape, device=device)
    net: UNet | None = None
    state = {"divisor": 1}
    if config.affine:
        field_full = affine_fields(moving_full, fixed_full, mask_full, config.ncc_radius, steps=config.affine_steps,
                                   cancel=_cancel_hook(cancel))
    with torch.no_grad():  # frame t warped by the composed field so far
        warped_full = _chunked(warp, moving_full, field_full)
        match = _match(warped_full, fixed_full, mask_full, config.ncc_radius) if config.guard else None
    worse = deforming = None
    judged_on_mask = True  # ``match`` is over the mask (else over a scale's judged region, :func:`_judged_region`)
    rejected = None  # the pairs whose field the last U-Net scale that ran did not improve (its guard)
    notes: list[str] = []  # what the engine decided beyond the plan, reported with the scale (ScaleDone.notes)
    for k, s in enumerate(scales):
        started = time.perf_counter()
        n_steps = config.steps_for(k)
        loss_value, step = float("nan"), 0
        # The finest scale's steps are counted with the refinement's that end it.
        extra = config.refinement_steps if k == len(scales) - 1 else 0

        def scale_out():
            """The array the scale's full-frame field is kept in, and its box as a tensor view (CPU) or None."""
            shape = (n_pairs, 2, h, w)
            out = np.empty(shape, kept_dtype(k, len(scales))) if field_buffer is None else field_buffer(k, len(scales), shape)
            return out, _box_view(out, box, device)

        if n_steps == 0:  # no U-Net at this scale: every pair keeps the field so far (the refinement may end it)
            out, stored = scale_out()
            if out.dtype == np.float32:  # the field so far may be kept in float16 (.scale_fields): this row is not
                if stored is not None:
                    stored.copy_(field_full)
                    field_full = stored
                else:
                    field_full = field_full.float()
            worse = torch.ones(n_pairs, dtype=torch.bool, device=device) if config.guard else None
        else:
            restart = rejected is not None and bool(rejected.any())
            net = _network_for_scale(k, s, net, config, init_states, restart=restart).to(device)
            out, stored = scale_out()  # on a CPU, stored is the scale's field as the result keeps it
            judge = mask_full
            if config.guard and config.guard_in_view:  # the pixels the guard judges this scale on, and the match so far on them
                judge = _judged_region(field_full, mask_full, config.ncc_radius)
                if judge is not mask_full or not judged_on_mask:
                    match = _match(warped_full, fixed_full, judge, config.ncc_radius)
                judged_on_mask = judge is mask_full

            def progress(step_done, value, n_steps=n_steps):
                # Steps past the scale's own (:func:`_train_scale` extends the last U-Net scale) count on from
                # them, out of the extended total; the plan had not foreseen them, so its share stays full.
                done = sum(plan[: k + 1]) + plan[k + 1] * min(1.0, step_done / max(n_steps, 1))
                # (two extensions at most, :func:`_train_scale`: the total grows by one when the second starts)
                tries = 0 if step_done <= n_steps else 1 if step_done <= n_steps + config.extend_steps else 2
                total = n_steps + tries * config.extend_steps + extra
                return Progress(k, len(scales), s, step_done, total, value, time.perf_counter() - run_started,
                                min(1.0, done))

            first = yield from _train_scale(k, net, restart, field_full, warped_full, match, moving_full, fixed_full,
                                            mask_full, config, device, state, cancel, progress,
                                            out=stored if stored is not None and stored.dtype == torch.float32 else None,
                                            notes=notes, judge=judge)
            new_field, warped_full, match, worse, changes = first.field, first.warped, first.match, first.worse, \
                first.changes
            step, loss_value = first.step, first.loss
            del first
            if worse is not None:  # pairs for which the guard kept some U-Net scale's field, or which it moved coherently
                coherent = _coherent_changes(changes, config) if changes else None
                if coherent is not None and config.guard_coherent and bool((coherent & worse).any()):
                    worse = worse & ~_keep_coherent_part(new_field, warped_full, match, moving_full, fixed_full,
                                                         judge, changes, coherent & worse, config)
                moved = ~worse if coherent is None else ~worse | coherent
                deforming = moved if deforming is None else deforming | moved
            rejected = worse
            field_full = new_field
            del new_field, judge
            release_host_memory()
        blur = 0.0  # the refinement's blur of its frames, which the consensus judges with (consensus_denoise)
        if k == len(scales) - 1 and config.refine_steps > 0:  # the last stage, reported as the finest scale's
            settings = RefineSettings.from_config(config)
            blur = denoising_sigma(field_full, moving_full, fixed_full, settings,
                                   work_size(tuple(field_full.shape[-2:]), settings.max_px))
            ran = max(n_steps, step)  # the scale's steps, or more when it was extended (:func:`_train_scale`)
            for done_steps, total, value in refine_fields(field_full, moving_full, fixed_full, mask_full, settings,
                                                          _cancel_hook(cancel), deforming, notes, blur):
                if not math.isnan(value):
                    loss_value = value
                done = sum(plan[: k + 1]) + plan[k + 1] + plan[k + 2] * done_steps / max(total, 1)
                # The stage runs its steps once per chunk of pairs; shown as the scale's own count
                # (a run of 170 steps did not become one of 320 halfway through it).
                yield Progress(k, len(scales), s, ran + round(extra * done_steps / max(total, 1)), ran + extra,
                               loss_value, time.perf_counter() - run_started, min(1.0, done))
            step += settings.steps + settings.fine_steps  # the scale's steps run (it may stop early) and the refinement's
        consensus = k == len(scales) - 1 and n_pairs > 1 and config.consensus_tolerance > 0
        if k == len(scales) - 1 and (config.refine_steps > 0 or consensus):
            del warped_full  # every field changes: warp again, without the old warp beside the new one
            release_host_memory()  # the refinement's many small buffers, before the last stages' full-frame work
            if consensus:  # each pair's field toward its neighbours' mean where the frames allow (.consensus)
                temporal_consensus(field_full, moving_full, fixed_full, ConsensusSettings.from_config(config, blur),
                                   _cancel_hook(cancel))
            with torch.no_grad():
                warped_full = _chunked(warp, moving_full, field_full)
            if worse is not None:  # every pair's field changed in this scale's row (the last stages take all)
                worse = torch.zeros_like(worse)
        mse, cc, field_out = _report_scale(field_full, warped_full, fixed_full, score_mask, box, out)
        if out.dtype != np.float32:
            # Kept in lower precision (a coarse scale; .scale_fields): the next scale starts from the
            # field as kept. On a CPU it reads it from there, so no float32 copy of the box stays
            # beside the kept fields (264 MB at 768x1024); elsewhere the same rounding is applied.
            field_full = stored if stored is not None else field_full.to(torch.from_numpy(out[:0]).dtype).float()
        release_host_memory()
        yield ScaleDone(k, len(scales), s, field_out, mse, cc, step, time.perf_counter() - started, loss_value,
                        None if worse is None else worse.cpu().numpy(), tuple(notes))
        notes.clear()


@dataclass
class _Attempt:
    """One training of a U-Net scale, settled: the composed field, its warp, each pair's match and
    the pairs the guard kept at the previous field (None without the guard), the changes the
    coherence test reads, and the steps run and last loss."""

    field: torch.Tensor
    warped: torch.Tensor
    match: torch.Tensor | None
    worse: torch.Tensor | None
    changes: list | None
    step: int
    loss: float


def _train_scale(k, net, restart, field, warped, match, moving, fixed, mask, config, device, state, cancel, progress,
                 out=None, notes: list | None = None, judge=None):
    """Train ``net`` at scale ``k`` on frame t warped by ``field`` (``warped``, overwritten with the
    new warp), compose its residual on ``field`` (into ``out`` when given), and settle it
    (:func:`_settle_scale`). Yields ``progress(step, loss)`` per step; returns an :class:`_Attempt`.

    At the last U-Net scale (and, with ``extend_after_rejects``, at an earlier one after a scale whose guard
    rejected some pair: ``restart``), when the scale's steps (or its early stop) leave the match where it was
    (:func:`_wants_more_steps`), the same network trains ``extend_steps`` more, and its field
    replaces the first only on a clear gain in the match (``extend_margin``) by a change that turns
    the pairs alike (:func:`_turns_alike`): a fast vortex is caught at the 1/2 scale in 100 steps
    from one start and only later from another. What the extension did is appended to ``notes``. The
    network trains on ``mask``; the guard and the extension judge on ``judge`` (None: ``mask``;
    :func:`_judged_region`), over which ``match`` is.
    """
    scales = config.effective_scales
    n_steps = config.steps_for(k)
    judge = mask if judge is None else judge
    # (Longer training must show the sequence's motion, which one pair cannot: :func:`_turns_alike`.)
    more = config.extend_steps if extends(config, k, field.shape[0], restart) else 0  # (with the guard: ``match`` is known)
    data = ScaleData.prepare(warped, fixed, mask, scales[k], config.min_scale_px)
    amp = amp_for(config, device, finest=k == len(scales) - 1)
    # A restarted output improves the loss slowly at first: no early stop before half the steps.
    warmup = n_steps // 2 if restart else n_steps // 4  # (of the scale's own steps, extended or not)
    checkpoint_at, early_net = checkpoint_step(config, k), None
    changes = [] if config.guard and config.refine_coherence > 0 and field.shape[0] > 1 else None

    def settle(into, warp_into, step, loss_value):
        batch = batch_for(data, config, device, state)
        release_host_memory()  # the training's freed buffers, before the full-frame work
        new_field = compose_resized(field, lambda pairs: data.residual(net, batch, config.field_sigma, amp, pairs),
                                    out=into, chunk=_inference_pairs(tuple(data.moving.shape[-2:]), device))
        if early_net is not None and step > checkpoint_at:
            _prefer_checkpoint(new_field, field, early_net, data, batch, amp, moving, fixed, judge, config)
        found = None if changes is None else []
        new_warped, new_match, worse = _settle_scale(new_field, field, warp_into, match, moving, fixed, judge, config,
                                                     found)
        return _Attempt(new_field, new_warped, new_match, worse, found, step, loss_value)

    step, loss_value = 0, float("nan")
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)  # kept for an extension (below)
    for step, loss_value in optimise_scale(net, [data], n_steps, config, device, state, cancel, amp=amp,
                                           warmup=warmup, smoothness=config.smoothness_for(k),
                                           curl_weight=config.curl_weight_for(k),
                                           temporal_weight=config.temporal_weight_for(k), optimiser=optimiser,
                                           radius=config.loss_radius_for(k)):
        if step == checkpoint_at:
            early_net = copy.deepcopy(net)
        yield progress(step, loss_value)
    first = settle(out, warped, step, loss_value)
    if not more or not _wants_more_steps(match, first.match, config):
        return first
    # The same network trains on, from where its steps (or its early stop, a flat loss) left it, with no early
    # stop, stopped at the first check that it fits each pair its own way. First with a fresh Adam, whose first
    # steps move every weight by the learning rate at once; where the frames refuse that, again from the same
    # weights with the scale's own Adam. Each start catches fast vortices the other loses (thirty-sixth
    # session: tuning vortex 31 0.739 -> 0.145 px only with the scale's Adam, held-out 634169988 0.36 px
    # only with a fresh one).
    name = "full-size" if scales[k] >= 1 else f"1/{1 / scales[k]:g}"
    said = f"The {name} scale's {step} steps left the match where it was, {TRAINED_ON}"
    weights = copy.deepcopy(net.state_dict())
    chosen = first
    for attempt, own in enumerate((None, optimiser)[: extension_tries(config, k)]):
        if attempt:
            net.load_state_dict(weights)  # in place: the scale's Adam still holds these parameters
            said += "; again from there with the optimiser of its own steps"
        longer, text, ran = yield from _extend(net, data, first, field, moving, judge, more, own, step, config,
                                               device, state, cancel, amp, k, progress, settle)
        said, step = f"{said} {text}", step + ran
        if longer is not None:
            if out is not None:  # the result's own buffer keeps the field
                longer.field = out.copy_(longer.field)
            chosen = longer
            break
    if chosen is first and not _last_trained(k, config):  # an earlier scale's try, refused: the next
        net.load_state_dict(weights)  # scale starts from the network this scale's own steps left
    if notes is not None:
        notes.append(said + ".")
    return chosen


def _extend(net, data, first, field, moving, mask, more, optimiser, step, config, device, state, cancel, amp, k,
            progress, settle):
    """One extension of :func:`_train_scale`: ``more`` steps of ``net`` with ``optimiser`` (None: a fresh Adam),
    counted on from ``step``; returns (the settled longer :class:`_Attempt` when the frames take it, else None,
    what happened in words, the steps run)."""
    start = data.residual(net, batch_for(data, config, device, state), config.field_sigma, amp)
    extra_step = 0
    for extra_step, loss_value in optimise_scale(net, [data], more, config, device, state, cancel, amp=amp,
                                                 warmup=more, smoothness=config.smoothness_for(k),
                                                 curl_weight=config.curl_weight_for(k),
                                                 temporal_weight=config.temporal_weight_for(k), optimiser=optimiser,
                                                 radius=config.loss_radius_for(k)):
        yield progress(step + extra_step, loss_value)
        if extra_step % EXTEND_CHECK_EVERY == 0 and extra_step < more:
            now = data.residual(net, batch_for(data, config, device, state), config.field_sigma, amp)
            if not _turns_alike(now, start, data.mask, config.extend_coherence):
                # the longer steps fit each pair its own way: they are not the sequence's motion
                return None, f"and stopped after {extra_step} more steps, not kept: {_OWN_WAY}", extra_step
    # The extended network's field, settled on frame t warped by the previous field again.
    longer = settle(None, _chunked(_warp_float, moving, field), step + extra_step, loss_value)
    gained = _share_removed(longer.match, first.match)
    if not _clearly_better(longer.match, first.match, config.extend_margin):
        return None, (f"for {more} more steps, not kept: they removed {gained:.0%} of the dissimilarity left "
                      f"({config.extend_margin:.0%} needed)"), extra_step
    if not _turns_alike(longer.field, first.field, mask, config.extend_coherence):
        return None, f"for {more} more steps, not kept: {_OWN_WAY}", extra_step
    return longer, f"for {more} more steps, kept: they removed {gained:.0%} of the dissimilarity left", extra_step


#: How the run's note says that the last U-Net scale trained past its steps (read by benchmarks/bench_speed.py).
TRAINED_ON = "so it trained on"
#: Why an extension's field is not the sequence's motion (:func:`_turns_alike`), in the run's notes.
_OWN_WAY = "their change differed from pair to pair (each pair's speckle, not the sequence's motion)"

#: The extended steps (``extend_steps``) stop at the first of every this many whose change to the network's
#: field since its own steps does not turn the pairs alike (:func:`_turns_alike`, on the scale's grid). On
#: tuning cases whose extension the frames refuse in the end, that correlation fell from 0.5-0.8 after 10
#: steps to 0.15-0.69 after 20 and 0.23-0.46 after 30; where it caught a vortex it was 0.99-1.0 throughout.
EXTEND_CHECK_EVERY = 25


def _last_trained(k: int, config) -> bool:
    """Whether scale ``k`` is the last one whose U-Net trains."""
    trained = [i for i in range(len(config.effective_scales)) if config.steps_for(i) > 0]
    return bool(trained) and k == trained[-1]


def extends(config, k: int, n_pairs: int, after_rejects: bool | None = None) -> bool:
    """Whether scale ``k`` may train ``extend_steps`` more (:func:`_train_scale`): the last trained U-Net
    scale, with the guard, of a sequence of two pairs or more; with ``extend_after_rejects`` also an earlier
    trained scale whose previous trained scale's guard rejected some pair's field (``after_rejects``; None:
    not known yet, so it may)."""
    if not (config.extend_steps > 0 and config.guard and n_pairs > 1):
        return False
    if _last_trained(k, config):
        return True
    trained_before = any(config.steps_for(i) > 0 for i in range(k))
    return bool(config.extend_after_rejects and config.steps_for(k) > 0 and trained_before
                and (after_rejects is None or after_rejects))


def extension_tries(config, k: int) -> int:
    """How many times scale ``k`` trains on when :func:`extends` lets it (:func:`_train_scale`): the last trained
    U-Net scale twice (a fresh Adam, then its own where the frames refuse the first); an earlier one, which
    the later scales still refine, once (a fresh Adam)."""
    return 2 if _last_trained(k, config) else 1


def _warp_float(moving, field):
    """Frame t warped by a field that may be kept in float16 (:mod:`.scale_fields`)."""
    return warp(moving, field.float())


def _wants_more_steps(before, after, config) -> bool:
    """Whether the last U-Net scale trains ``extend_steps`` more: its steps raised the guard's match over
    all pairs by less than ``extend_gain`` of the dissimilarity left (``extend_steps`` 0: never). A fast
    vortex at the 1/2 scale is caught in 100 steps from one start and missed from another, whose loss is
    still falling there (thirty-fifth session: tuning vortex 5, 0.678 px at seed 0 and 0.194 at seed 1;
    with 200 steps 0.178 and 0.176); the missed run's scale leaves every pair's match where it was."""
    if config.extend_steps <= 0 or before is None or after is None:
        return False
    return not _clearly_better(after, before, config.extend_gain)


@torch.no_grad()
def _turns_alike(new_field, old_field, mask, coherence: float) -> bool:
    """Whether the change from ``old_field`` to ``new_field`` is the sequence's motion: the median pair's change
    correlates with its neighbours' by at least ``coherence`` (:func:`_neighbour_correlation`; one pair: never).

    A network trained on past its steps raises the match on decorrelated speckle as much as where it
    catches a vortex (thirty-fifth session, tuning cases: by 5-7 % of the dissimilarity left, while the
    error grew from 0.08-0.24 px to 0.6-1.2 px), but each pair's fit is its own (correlation -0.23-0.15),
    while a caught vortex turns alike in every pair (0.97-1.0)."""
    if new_field.shape[0] < 2:
        return False
    cells = _cell_change(new_field, old_field.to(new_field.dtype), mask)
    return float(_neighbour_correlation(cells).median()) >= coherence


def _clearly_better(candidate, current, margin: float) -> bool:
    """Whether ``candidate``'s mean match over the pairs beats ``current``'s by ``margin`` of the
    dissimilarity ``current`` leaves: more steps must earn their field, as a scale must (:func:`_guard`)."""
    return _share_removed(candidate, current) > margin


def _share_removed(candidate, current) -> float:
    """The share of the dissimilarity ``current`` leaves (1 - its mean match) that ``candidate`` removes."""
    return float(candidate.mean() - current.mean()) / max(float((1.0 - current).mean()), 1e-6)


def prepare_inputs(frames: np.ndarray, mask: np.ndarray | None, config: "RegistrationConfig", device):
    """Validated frames and mask -> (box, moving, fixed, loss mask, score mask) on the device.

    Only the box that matters is registered (mask or sector, plus room for the
    NCC window and the motion; :mod:`napari_nmsr.core.roi`); the field is
    extended beyond it at the end. moving/fixed (T-1, 1, h, w); the loss mask
    is the mask grown by ``mask_margin`` (float), the score mask the mask as
    drawn (bool), both on frame t+1, or None.
    """
    t, h, w = frames.shape
    loss_mask = mask if not config.mask_margin or mask is None else _dilate(mask, config.mask_margin)
    box = region_of_interest(frames, loss_mask, roi_margin(config, (h, w))) if config.crop else Box((0, h, 0, w))
    sy, sx = box.slices
    frames_t = torch.from_numpy(np.ascontiguousarray(frames[:, sy, sx])).to(device)[:, None]
    mask_full = None if mask is None else torch.from_numpy(np.ascontiguousarray(loss_mask[1:, sy, sx])).to(device)[:, None].float()
    score_mask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask[1:, sy, sx])).to(device)
    return box, frames_t[:-1], frames_t[1:], mask_full, score_mask


def work_plan(n_pairs: int, size: tuple[int, int], config: "RegistrationConfig", device) -> list[float]:
    """Shares of the run's work: [affine stage, scale 0, scale 1, ...], summing to 1.

    Pixel counts: a training step costs ~3 passes over its batch's pixels
    (forward, backward), the final field one forward over every pair, the
    affine stage its steps over images of at most 128 px. Used for progress
    and ETA; :mod:`napari_nmsr.core.estimate` measures real seconds.
    """
    from .global_motion import AFFINE_SIZES, AFFINE_STEPS

    work = [0.0]
    if config.affine:
        f = min(1.0, AFFINE_SIZES[-1] / max(size))
        work[0] = 0.3 * n_pairs * size[0] * size[1] * f * f * sum(config.affine_steps) / len(config.affine_steps)
    for k, s in enumerate(config.effective_scales):
        h, w = scale_size(size, s, config.min_scale_px)
        crop = training_crop((h, w), device, config)
        px = crop[0] * crop[1] if crop else h * w
        batch = min(n_pairs, config.batch_size) if config.batch_size else default_batch(n_pairs, (crop or (h, w)), device, config)
        n_steps = config.steps_for(k)  # 0: the scale is skipped (no training, no inference)
        work.append(3.0 * n_steps * batch * px + n_pairs * h * w + 2e4 * n_steps if n_steps else 0.0)
    if config.refine_steps > 0:  # warp + NCC + their gradients: about a third of a U-Net step per pixel (measured)
        wh, ww = work_size(size, config.refine_max_px)
        work.append(1.0 * config.refinement_steps * n_pairs * wh * ww)
    total = sum(work) or 1.0
    return [x / total for x in work]


def roi_margin(config: "RegistrationConfig", size: tuple[int, int]) -> int:
    """Pixels added around the mask/sector box: the NCC window plus the motion it may pull from."""
    return config.ncc_radius + max(16, round(0.08 * max(size)))


def pixel_budget(device: torch.device, config: "RegistrationConfig | None" = None) -> int:
    """Pixels per optimisation step: the config's, else the device's default."""
    if config is not None and config.pixels_per_step:
        return int(config.pixels_per_step)
    return PIXELS_PER_STEP.get(device.type, PIXELS_PER_STEP["cpu"])


def default_batch(n_pairs: int, size: tuple[int, int], device: torch.device, config=None) -> int:
    """Frame pairs per step: all of them when they fit the pixel budget."""
    budget = pixel_budget(device, config)
    return max(1, min(n_pairs, budget // (size[0] * size[1])))


def batch_for(data: "ScaleData", config, device, state) -> int:
    """This scale's batch: the configured or default size, halved after each OOM."""
    n = data.moving.shape[0]
    if config.batch_size:
        batch = min(n, config.batch_size)
    else:
        crop = training_crop(tuple(data.moving.shape[-2:]), device, config)
        size = crop or tuple(data.moving.shape[-2:])
        batch = default_batch(n, size, device, config)
    return max(1, batch // state["divisor"])


def training_crop(size: tuple[int, int], device: torch.device, config=None) -> tuple[int, int] | None:
    """Crop (h, w) for the optimisation steps of a large scale, or None for whole frames.

    None as well when the config fixes the batch size or turns crop training off.

    When fewer than MIN_PAIRS_PER_STEP whole frames fit the device's pixel
    budget, each step takes that many random crops instead (the U-Net is
    convolutional, so the trained weights then run on the whole frames):
    a step's cost no longer grows with the frame, only the final inference
    does.
    """
    if config is not None and (config.batch_size or not config.crop_training):
        return None
    budget = pixel_budget(device, config)
    h, w = size
    if h * w * MIN_PAIRS_PER_STEP <= budget:
        return None
    side = max(MIN_CROP, int(math.sqrt(budget / MIN_PAIRS_PER_STEP)))
    crop = (min(h, side), min(w, side))
    return None if crop == (h, w) else crop


def scale_size(shape: tuple[int, int], scale: float, min_px: int = MIN_SCALE_SIZE) -> tuple[int, int]:
    """Grid size of a scale: ``scale`` x shape, raised (aspect kept) until the short side is at
    least ``min_px`` (``RegistrationConfig.min_scale_px``), never above full size, never a side
    below MIN_SCALE_SIZE."""
    h, w = shape
    scale = min(1.0, max(scale, min_px / max(1, min(h, w))))
    return (min(h, max(MIN_SCALE_SIZE, round(h * scale))), min(w, max(MIN_SCALE_SIZE, round(w * scale))))


@dataclass
class ScaleData:
    """One sequence's pairs at one scale: moving (frame t already warped by the
    coarser scales' composed field, paper eq. 1), fixed and mask, each (T-1, 1, h, w)."""

    moving: torch.Tensor
    fixed: torch.Tensor
    mask: torch.Tensor | None
    full_size: tuple[int, int]

    @classmethod
    @torch.no_grad()
    def prepare(cls, warped_full, fixed_full, mask_full, scale: float, min_px: int = MIN_SCALE_SIZE) -> "ScaleData":
        size = scale_size(tuple(warped_full.shape[-2:]), scale, min_px)
        moving = resize_image(warped_full, size)
        fixed = resize_image(fixed_full, size)
        if mask_full is None:
            mask = None
        elif size == tuple(mask_full.shape[-2:]) and mask_full.dtype == torch.float32:
            mask = mask_full  # the 1/1 scale: already 0/1 weights (prepare_inputs); no 42 MB copy at 768x1024
        else:
            mask = (resize_image(mask_full, size) > 0.5).float()
        return cls(moving, fixed, mask, tuple(warped_full.shape[-2:]))

    @torch.no_grad()
    def residual(self, net, batch: int, sigma: float = 0.0, amp: torch.dtype | None = None,
                 pairs: slice = slice(None)) -> torch.Tensor:
        """The network's field for ``pairs``, on this scale's grid (in the training's precision);
        :func:`compose_resized` brings it to full resolution."""
        net.eval()
        device = self.moving.device

        def infer(a, b):
            with _autocast(device, amp):
                return gaussian_smooth(net(a, b).float(), sigma)

        try:
            return _chunked(infer, self.moving[pairs], self.fixed[pairs], chunk=max(1, batch))
        finally:
            net.train()


def _box_view(out: np.ndarray, box: Box, device: torch.device) -> torch.Tensor | None:
    """On a CPU, the box of a scale's full-frame result array as a tensor sharing its memory: the
    scale's composed field is written there directly and the next scale reads it from there, so no
    second box-sized field per scale is held (at 45x768x1024 without a mask each is ~230 MB).
    None elsewhere (the field lives on the device and is copied out when the scale is done)."""
    if device.type != "cpu" or not out.flags.writeable:
        return None
    sy, sx = box.slices
    return torch.from_numpy(out)[:, :, sy, sx]


@torch.no_grad()
def compose_resized(previous: torch.Tensor, residual_of: Callable[[slice], torch.Tensor],
                    out: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
    """``compose(previous, residual resized to previous's grid)``, a few pairs at a time.

    ``residual_of(pairs)`` gives the residual of those pairs on any grid (the
    network's inference for them). The same field as composing all pairs at
    once, without the full-frame temporaries (the residual, the sampling grid,
    the warped field, the network's activations: at 44 pairs of 768x1024 each
    field-sized one is 277 MB). ``previous`` may be kept in lower precision (a coarse scale's
    stored field, :mod:`.scale_fields`); the result is float32. ``out``: where to write it
    (shape of ``previous``; see :func:`_box_view`);
    ``chunk``: pairs at a time (default :func:`_pairs_at_once`; see :func:`_inference_pairs`).
    """
    out = torch.empty(previous.shape, dtype=torch.float32, device=previous.device) if out is None else out
    size = tuple(previous.shape[-2:])
    chunk = chunk or _pairs_at_once(previous.device)
    for i in range(0, previous.shape[0], chunk):
        pairs = slice(i, i + chunk)
        out[pairs] = compose(previous[pairs].float(), resize_field(residual_of(pairs), size))
    return out


def optimise_scale(net, datas, n_steps, config, device, state, cancel=None, amp: torch.dtype | None = None,
                   warmup: int | None = None, smoothness: float | None = None, curl_weight: float | None = None,
                   temporal_weight: float = 0.0, optimiser: torch.optim.Optimizer | None = None,
                   radius: int | None = None):
    """Adam on the pairs of ``datas`` (one or more sequences, visited in turn), the U-Net
    under autocast to ``amp`` (None: float32; see :func:`amp_for`). With ``temporal_weight``
    each step's pairs are consecutive (a run of them when not all fit), so the loss can couple them.

    Yields (step, loss). On out-of-memory the batch is halved (for this and
    later scales, through ``state["divisor"]``); DeviceMemoryError when even
    one pair does not fit. ``optimiser``: an Adam over ``net`` to go on with (its moments kept), else a new one.
    ``smoothness``, ``curl_weight``, ``radius`` (the loss's NCC window): the scale's (None: scale 0's).
    """
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr) if optimiser is None else optimiser
    warmup = n_steps // 4 if warmup is None else warmup
    monitor = _Convergence(config.patience if len(datas) == 1 else 0, config.min_delta, warmup=warmup)
    step = 0
    value = float("nan")
    read_at = 0  # the step whose loss ``value`` holds
    while step < n_steps:
        if cancel is not None and cancel():
            raise _Cancelled()
        data = datas[step % len(datas)]
        n = data.moving.shape[0]
        batch = batch_for(data, config, device, state)
        idx = _batch_indices(n, batch, step + 1, consecutive=temporal_weight > 0)
        crop = training_crop(tuple(data.moving.shape[-2:]), device, config)
        window = _crop_window(tuple(data.moving.shape[-2:]), crop, step + 1)
        try:
            loss = _step(net, optimiser, data.moving, data.fixed, data.mask, idx, config, amp, device, window,
                         smoothness=smoothness, curl_weight=curl_weight, temporal_weight=temporal_weight,
                         radius=radius)
        except Exception as exc:  # out-of-memory: halve the batch and go on
            if not is_out_of_memory(exc):
                raise
            _free(device)
            if batch == 1:
                size = tuple(data.moving.shape[-2:])
                raise DeviceMemoryError(
                    f"the {describe_device(device)} ran out of memory even with one frame pair at "
                    f"{size[0]}x{size[1]} px; use a smaller image, the CPU, or fewer scales"
                ) from exc
            state["divisor"] *= 2
            continue
        step += 1
        if device.type == "cpu":
            rebalance_threads()  # follows the machine's load when no thread count was given (core/threads.py)
        # Reading the loss waits for the device; on a GPU only at the first step
        # and every SYNC_EVERY steps (the queue of kernels stays full in between);
        # the steps in between report the last loss read, never NaN.
        fresh = reads_loss(device, step, n_steps)
        if fresh:
            value = float(loss)
            since, read_at = step - read_at, step
        yield step, value
        # Early stopping reads the loss of the whole sequence: with a
        # minibatch the loss jumps between easy and hard pairs, so run all steps.
        if fresh and batch >= n and monitor.update(value, steps=since):
            return


def reads_loss(device: torch.device, step: int, n_steps: int) -> bool:
    """Whether step ``step`` (1-based) of ``n_steps`` reads its loss back to the host: every
    step on a CPU; on a GPU the first, every SYNC_EVERY-th and the last (a read waits for the device)."""
    return device.type == "cpu" or step == 1 or step % SYNC_EVERY == 0 or step == n_steps


def _crop_window(size, crop, step: int) -> tuple[slice, slice]:
    """A random (seeded by the step) window of size ``crop`` in ``size``; everything when crop is None."""
    if crop is None:
        return slice(None), slice(None)
    g = torch.Generator().manual_seed(10_000 + step)
    y0 = int(torch.randint(0, size[0] - crop[0] + 1, (1,), generator=g))
    x0 = int(torch.randint(0, size[1] - crop[1] + 1, (1,), generator=g))
    return slice(y0, y0 + crop[0]), slice(x0, x0 + crop[1])


def amp_for(config: "RegistrationConfig", device: torch.device, finest: bool = False) -> torch.dtype | None:
    """The U-Net's autocast dtype for one scale, or None for float32.

    ``config.amp`` None (automatic): on a GPU, its reduced precision
    (:func:`napari_nmsr.core.device.amp_dtype`) at the coarse scales and float32
    at the finest, whose field is the result; on a CPU float32 everywhere.
    CPU bf16 was measured and rejected: on a CPU with native bf16 it made the
    coarse scales ~1.4x faster, but with bf16 at the coarse scales the held-out
    suite got worse on all four probe cases and all three decorrelation cases
    (part of it run-to-run spread; benchmarks/README.md). True: reduced precision
    at every scale wherever the device has one (bf16 on any CPU); False: float32.
    """
    if config.amp is False or (config.amp is None and (finest or device.type != "cuda")):
        return None
    dtype = amp_dtype(device)
    if config.amp and dtype is None:
        dtype = torch.float16 if device.type in ("cuda", "mps") else torch.bfloat16
    return dtype


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def regularisation(field: torch.Tensor, regulariser: str, curl_weight: float = 1.0) -> torch.Tensor:
    """The named regulariser of a field; ``bending`` with ``curl_weight`` below 1 is the div-curl energy."""
    if regulariser == "bending" and curl_weight != 1.0:
        return divcurl_loss(field, curl_weight)
    return REGULARISERS[regulariser](field)


def _step(net, optimiser, moving, fixed, mask, idx, config, use_amp, device, window=(slice(None), slice(None)),
          smoothness: float | None = None, curl_weight: float | None = None, temporal_weight: float = 0.0,
          radius: int | None = None) -> torch.Tensor:
    wy, wx = window
    mv, fx = moving[idx][..., wy, wx], fixed[idx][..., wy, wx]
    mk = None if mask is None else mask[idx][..., wy, wx]
    optimiser.zero_grad(set_to_none=True)
    with _autocast(device, use_amp):
        field = net(mv, fx)
    field = gaussian_smooth(field.float(), config.field_sigma)  # NCC sums and warping stay in float32
    smoothness = config.smoothness_for(0) if smoothness is None else smoothness
    curl_weight = config.curl_weight_for(0) if curl_weight is None else curl_weight
    radius = config.loss_radius_for(0) if radius is None else radius
    loss = ncc_loss(warp(mv, field), fx, radius, mk) + smoothness * regularisation(field, config.regulariser, curl_weight)
    if temporal_weight > 0:  # idx is a run of consecutive pairs (_batch_indices); fewer than 3 add nothing
        loss = loss + temporal_weight * temporal_loss(field, mk)
    if not torch.isfinite(loss):
        raise SequenceError("the optimisation diverged (loss is not finite); check the frames for corrupt values")
    loss.backward()
    optimiser.step()
    return loss.detach()


def _network_for_scale(k, scale, previous, config, init_states, restart: bool = False):
    """The U-Net for scale ``k``; ``restart``: the guard rejected the previous scale's field for
    some pair, so a carried-over network's output layer restarts at zero (its features are kept)."""
    if config.variant == "nmsr_vi" and previous is not None:
        if restart:
            previous.restart_output()  # start at the field the guard kept, not at the rejected one
        return previous  # keep optimising the same weights at the finer scale
    net = UNet(config.encoder, config.decoder)
    if init_states is not None:
        net.load_state_dict(_nearest_state(init_states, scale))
    return net


def _nearest_state(states: dict, scale: float):
    scales = list(states["scales"])
    i = int(np.argmin([abs(math.log(s / scale)) for s in scales]))
    return states["state_dicts"][i]


def _load_weights(config) -> dict:
    from .train import load_weights

    states = load_weights(config.weights)
    arch = states.get("architecture", {})
    if arch and (tuple(arch.get("encoder", config.encoder)) != config.encoder or tuple(arch.get("decoder", config.decoder)) != config.decoder):
        config.encoder = tuple(arch["encoder"])
        config.decoder = tuple(arch["decoder"])
    return states


def _batch_indices(n: int, batch: int, step: int, consecutive: bool = False) -> torch.Tensor | slice:
    """The pairs of a step: all when they fit, else ``batch`` drawn at random (seeded by the step), or
    with ``consecutive`` a run of ``batch`` consecutive pairs starting at random (the temporal coupling)."""
    if batch >= n:
        return slice(None)
    g = torch.Generator().manual_seed(step)
    if consecutive:
        start = int(torch.randint(0, n - batch + 1, (1,), generator=g))
        return slice(start, start + batch)
    return torch.randperm(n, generator=g)[:batch]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow each frame's mask by ``radius`` px (disk), for the loss only."""
    from scipy import ndimage

    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (yy * yy + xx * xx) <= radius * radius
    return np.stack([ndimage.binary_dilation(m, disk) for m in mask])


@torch.no_grad()
def _settle_scale(new_field, old_field, warped, match, moving, fixed, mask, config, changes: list | None = None):
    """Warp every pair by a scale's composed field (that warp serves the guard, the metrics and the
    next scale's input), written over the previous warp ``warped`` a few pairs at a time, and let
    the guard keep, in place, the previous field and warp of the pairs the scale made worse.
    Returns (warped, each pair's match or None, kept pairs or None). ``changes`` (with the guard):
    a list to which each chunk's (:func:`_cell_change`, relative match gain) is appended, taken
    before the guard keeps the previous field (for :func:`_coherent_changes`).

    Pairs are independent, so settling them in turn gives what settling all at once gave, without
    a second full warp of the sequence beside the first (141 MB at 45x768x1024).
    """
    matches, kept = [], []
    chunk = _pairs_at_once(warped.device)
    for i in range(0, warped.shape[0], chunk):
        p = slice(i, i + chunk)
        new_warped = warp(moving[p], new_field[p])
        if config.guard:
            weight = None if mask is None else mask[p]
            new_match = _match(new_warped, fixed[p], weight, config.ncc_radius)
            if changes is not None:
                changes.append((_cell_change(new_field[p], old_field[p], weight),
                                (new_match - match[p]) / (1.0 - match[p]).clamp_min(1e-6)))
            m, worse = _guard(new_field[p], new_warped, old_field[p], warped[p], match[p], fixed[p], weight,
                              config.ncc_radius, config.guard_gain, config.min_scale_px, new_match)
            matches.append(m)
            kept.append(worse)
        warped[p] = new_warped
    if not config.guard:
        return warped, match, None
    return warped, torch.cat(matches), torch.cat(kept)


#: A scale's change to a pair's field is compared with its neighbours' on cells of this share of the
#: frame's short side (4 px at 128 px): a slow vortex's turn spans several cells, a pixel's noise does not.
COHERENCE_CELL = 1 / 32


@torch.no_grad()
def _cell_change(new_field, old_field, mask) -> torch.Tensor:
    """(N, 2, h', w') the change ``new - old`` of each pair's field, weighted by the mask and
    averaged over cells of :data:`COHERENCE_CELL` of the frame (a few kB a pair)."""
    d = new_field - old_field.to(new_field.dtype)
    if mask is not None:
        d = d * mask
    return F.avg_pool2d(d, _cell_size(tuple(d.shape[-2:])), ceil_mode=True)


def _cell_size(size: tuple[int, int]) -> int:
    """Side (px) of the cells :func:`_cell_change` averages over: :data:`COHERENCE_CELL` of the short side."""
    return max(1, round(min(size) * COHERENCE_CELL))


def _coherent_changes(changes: list, config) -> torch.Tensor:
    """(N,) bool: pairs a U-Net scale moved the way it moved their neighbours, and whose match it raised.

    The guard rejects a scale whose whole-mask match gain is small; a slow vortex that covers a
    small share of the mask is such a scale (twenty-third session), and so is a fine scale fitted to
    decorrelated speckle. What tells them apart is time: the vortex turns much the same from one
    pair to the next, so the scale changes consecutive pairs' fields alike (correlation 0.6-0.96 on
    the slow tuning vortices at the 1/2 scale), while a fit to one pair's speckle is its own
    (-0.3-0.5 on decorrelated speckle, about 0 on the real echo warps; twenty-fifth session). A pair
    whose change correlates with the sum of pairs t-1 and t+1's changes by at least
    ``refine_coherence``, and whose match the scale raised by at least ``refine_coherence_gain`` of
    the dissimilarity left, counts as deforming for the refinement; its field stays the guard's.
    The gain matters too: a scale's change is partly the shared network's own pattern, alike in
    every pair (the coarse scales' correlate 0.97-1.0 while making the match worse), and at 1 % a
    rigid probe pair passed and lost 13 %; the slow vortices' pairs gain 2.2-4.8 %.
    """
    cells = torch.cat([c for c, _ in changes])
    gain = torch.cat([g for _, g in changes])
    return (_neighbour_correlation(cells) >= config.refine_coherence) & (gain >= config.refine_coherence_gain)


def _neighbour_correlation(cells: torch.Tensor) -> torch.Tensor:
    """(N,) correlation of each pair's cell change (:func:`_cell_change`) with the sum of pairs t-1
    and t+1's: near 1 where a change is the sequence's motion, near 0 where it is one pair's speckle."""
    around = torch.zeros_like(cells)
    around[1:] += cells[:-1]
    around[:-1] += cells[1:]
    dot = (cells * around).flatten(1).sum(1)
    norm = (cells.square().flatten(1).sum(1) * around.square().flatten(1).sum(1)).sqrt()
    return dot / norm.clamp_min(1e-12)


def checkpoint_step(config, k: int) -> int:
    """The step of scale ``k`` after which its network is copied for :func:`_prefer_checkpoint`; 0: none.

    Only the finest U-Net scale that trains (with the guard, whose test it uses): a coarse scale's
    later steps are its capture of large motion, and the finest one's field is what the run keeps."""
    if not config.guard or config.early_checkpoint <= 0 or not _last_trained(k, config):
        return 0
    return max(1, round(config.early_checkpoint * config.steps_for(k)))


@torch.no_grad()
def _prefer_checkpoint(field, previous, early_net, data, batch: int, amp, moving, fixed, mask, config) -> torch.Tensor:
    """(N,) bool: pairs whose ``field`` (the finished scale's, composed on ``previous``) now holds, in
    place, the field of ``early_net``, the scale's network at ``config.early_checkpoint`` of its steps.

    A scale's later steps must earn their change to a pair, as the scale must earn its change over
    the one before it (:func:`_guard`): raise the full-resolution match by ``guard_gain`` of the
    dissimilarity left over the copy's field, or change the pair as they change pairs t-1 and t+1
    (:func:`_neighbour_correlation` at least ``refine_coherence``, with some gain). On decorrelated
    speckle, a myocardium and real echo warps the later steps raise the match by 0-4 % of the
    dissimilarity left while moving away from the truth, each pair its own way (correlation
    -0.03-0.67); a slow vortex keeps turning alike in every pair (0.64-0.98) and a fast one gains
    7-14 % (twenty-seventh session, benchmarks/README.md).
    """
    size = tuple(field.shape[-2:])
    chunk = _inference_pairs(tuple(data.moving.shape[-2:]), field.device)

    def early_field(pairs: slice) -> torch.Tensor:
        return compose(previous[pairs].float(), resize_field(data.residual(early_net, batch, config.field_sigma, amp, pairs), size))

    cells, early_match, late_match = [], [], []
    for i in range(0, field.shape[0], chunk):
        p = slice(i, i + chunk)
        weight = None if mask is None else mask[p]
        early = early_field(p)
        cells.append(_cell_change(field[p], early, weight))
        early_match.append(_match(warp(moving[p], early), fixed[p], weight, config.ncc_radius))
        late_match.append(_match(warp(moving[p], field[p].float()), fixed[p], weight, config.ncc_radius))
    early_match, late_match = torch.cat(early_match), torch.cat(late_match)
    gain = (late_match - early_match) / (1.0 - early_match).clamp_min(1e-6)
    judged = gain < config.guard_gain
    if config.refine_coherence > 0:
        judged &= ~((_neighbour_correlation(torch.cat(cells)) >= config.refine_coherence) & (gain > 0))
    taken = torch.zeros_like(judged)
    for t in judged.nonzero()[:, 0].tolist():  # the guard's own test, pair by pair, against the copy's field
        p = slice(t, t + 1)
        weight = None if mask is None else mask[p]
        early = early_field(p)
        _, worse = _guard(field[p], warp(moving[p], field[p].float()), early, warp(moving[p], early), early_match[p],
                          fixed[p], weight, config.ncc_radius, config.guard_gain, config.min_scale_px, late_match[p])
        taken[t] = worse[0]
    return taken


@torch.no_grad()
def _keep_coherent_part(field, warped, match, moving, fixed, mask, changes: list, pairs: torch.Tensor,
                        config) -> torch.Tensor:
    """(N,) bool: of ``pairs`` (the guard put their previous field back; :func:`_coherent_changes`
    flags them), those whose field, warp and match now hold, in place, the part of the scale's
    change they share with pairs t-1 and t+1, where that matches no worse than the previous field.

    The shared part is the mean of the three pairs' recorded cell changes (:func:`_cell_change`,
    brought back to the mask's own mean and to full size by bilinear interpolation): a slow
    vortex's turn, alike from pair to pair and several cells wide, stays in it, while each pair's
    fit to its own speckle averages out of it, and so does a one-cell detail. Keeping the whole
    rejected change instead brought that noise along (twenty-fifth session: slow tuning vortices'
    EPE +5 %, a myocardium +10 %); this part keeps the turn (twenty-sixth session,
    benchmarks/README.md).
    """
    cells = torch.cat([c for c, _ in changes])
    size = tuple(field.shape[-2:])
    cell = _cell_size(size)
    taken = torch.zeros_like(pairs)
    for t in pairs.nonzero()[:, 0].tolist():
        p = slice(t, t + 1)
        shared = cells[max(0, t - 1) : t + 2].mean(0, keepdim=True)
        weight = None if mask is None else mask[p]
        if weight is not None:  # the cells hold mask-weighted sums over the cell's area: the mask's mean instead
            share = F.avg_pool2d(weight, cell, ceil_mode=True)
            shared = torch.where(share > 0, shared / share.clamp_min(1e-6), torch.zeros_like(shared))
        change = F.interpolate(shared, scale_factor=cell, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]
        if weight is not None:  # no further than a cell beyond the mask
            change = change * (F.max_pool2d(weight, 2 * cell + 1, 1, cell) > 0)
        candidate = field[p].float() + change
        candidate_warped = warp(moving[p], candidate)
        candidate_match = _match(candidate_warped, fixed[p], weight, config.ncc_radius)
        if bool(candidate_match[0] >= match[t]):
            field[t] = candidate[0].to(field.dtype)
            warped[t] = candidate_warped[0]
            match[t] = candidate_match[0]
            taken[t] = True
    return taken


@torch.no_grad()
def _report_scale(field, warped, fixed, score_mask, box: Box, out: np.ndarray):
    """A finished scale's per-pair (MSE, mean CC) and its field pasted into the full-frame ``out``."""
    mse, cc = pair_metrics(warped, fixed, score_mask)
    return mse, cc, paste_field(field.cpu().numpy(), box, out)


@torch.no_grad()
def _guard(new_field, new_warped, old_field, old_warped, old_match, fixed, mask, radius, gain: float = 0.0,
           min_px: int | None = None, new_match: torch.Tensor | None = None):
    """Keep, in place, the previous field of each pair whose full-resolution match the scale did not
    clearly improve: by less than ``gain`` x (1 - previous match); 0: made it worse.

    A coarse scale is fitted to downsampled frames; where those frames are
    mostly speckle noise (a pair already aligned by the affine stage, strong
    decorrelation) its field, brought to full resolution, can match the real
    frames worse than the field it refines. A fine scale fitted to
    decorrelated speckle raises the match, but only by a small share of the
    dissimilarity left, while moving away from the true motion (tuning probe
    cases: 0.06 -> 0.14 px at the 1/2 scale for a match gain of 0.006).
    Only sub-pixel changes are judged so (:data:`GUARD_MAX_SHIFT`); a larger change
    that did not raise the match is kept unless it matches worse than the previous
    field on frames shrunk until the change is sub-pixel, at least ``min_px`` on the
    short side (None: larger changes are all kept).
    The same kind of test as the affine stage's (:func:`global_motion._better_than_identity`),
    on the loss's own data term. ``new_match``: the pairs' match through the new field, when the
    caller has it already. Returns (each pair's match after the scale, (N,) bool kept).
    """
    match = _match(new_warped, fixed, mask, radius) if new_match is None else new_match
    worse = match < old_match + gain * (1.0 - old_match)
    if bool(worse.any()):  # of those, only sub-pixel changes are judged (a pair left alone is not rejected)
        idx = worse.nonzero()[:, 0]
        shift = _mean_shift(new_field, old_field, mask, idx)
        worse[idx] = (shift > 0) & (shift < GUARD_MAX_SHIFT)
        if min_px is not None:
            for i, moved in zip(idx.tolist(), shift.tolist()):
                if moved >= GUARD_MAX_SHIFT:
                    size = _shrunk(tuple(fixed.shape[-2:]), GUARD_MAX_SHIFT / moved, min_px)
                    pair = slice(i, i + 1)
                    weight = None if mask is None else mask[pair]
                    worse[i] = bool(_match_on(size, new_warped[pair], fixed[pair], weight, radius)
                                    < _match_on(size, old_warped[pair], fixed[pair], weight, radius))
    for i in worse.nonzero()[:, 0].tolist():  # pair by pair: no copy of all kept pairs at once
        new_field[i] = old_field[i]  # (old_field may be kept in float16: .scale_fields)
        new_warped[i] = old_warped[i]
    return torch.where(worse, old_match, match), worse


@torch.no_grad()
def _match_on(size, warped, fixed, mask, radius: int) -> torch.Tensor:
    """:func:`_match` with the warps, frames and mask resampled to ``size`` (h, w)."""
    weight = None if mask is None else (resize_image(mask.float(), size) > 0.5).float()
    return _match(resize_image(warped, size), resize_image(fixed, size), weight, radius)


def _shrunk(size: tuple[int, int], factor: float, min_px: int) -> tuple[int, int]:
    """``size`` times ``factor`` (<= 1), the short side at least ``min_px`` (and never above ``size``)."""
    f = min(1.0, max(factor, min_px / max(1, min(size))))
    return max(1, round(size[0] * f)), max(1, round(size[1] * f))


@torch.no_grad()
def _mean_shift(a, b, mask, pairs: torch.Tensor, chunk: int = 2) -> torch.Tensor:
    """(len(pairs),) mean distance (px) between two fields of those pairs, over the mask (a few pairs at a time)."""
    out = []
    for i in range(0, len(pairs), chunk):
        p = pairs[i : i + chunk]
        d = a[p] - b[p]  # hypot: Tensor.norm(dim=1) over the 2 components was 15x slower on a CPU
        out.append(pair_masked_mean(torch.hypot(d[:, :1], d[:, 1:]), None if mask is None else mask[p]))
    return torch.cat(out)


@torch.no_grad()
def _judged_region(field, mask, radius: int, chunk: int = 2):
    """The pixels the guard judges a scale on: ``mask``'s (None: every pixel), less those whose NCC window
    (``radius`` + :data:`JUDGE_PAD`) reaches a point that ``field`` pulls from outside frame t. Returned as
    ``mask`` itself (the same object) when no window does, else as a (N, 1, H, W) float weight.

    Material that enters the view has no match in frame t under any field; a scale that bends the
    border to fit it raises the match there while the motion inside is unchanged. On a rigid real-echo
    warp of 6.4 px a frame the 1/2 scale's change was 0.5 px in a 12 px border band and 0.008 px inside,
    its match gain all in the band, and the guard kept it (tuning case real echo 5: 0.026 -> 0.051 px;
    forty-third session, benchmarks/README.md).
    """
    n, _, h, w = field.shape
    grid = pixel_grid(h, w, device=field.device)
    parts, outside = [], False
    for i in range(0, n, chunk):
        source = field[i : i + chunk].float() + grid  # where each pixel pulls from in frame t
        sy, sx = source[:, :1], source[:, 1:]
        inside = ((sy >= 0) & (sy <= h - 1) & (sx >= 0) & (sx <= w - 1)).float()
        part = (box_mean(inside, radius + JUDGE_PAD) > 1.0 - 1e-4).float()
        outside = outside or not bool(part.all())
        parts.append(part if mask is None else part * mask[i : i + chunk])
    return torch.cat(parts) if outside else mask


#: Pixels beyond the NCC window's half-size that :func:`_judged_region` keeps clear of points pulled from
#: outside frame t (a scale's change moves them a little further).
JUDGE_PAD = 2


@torch.no_grad()
def _match(warped, fixed, mask, radius, chunk: int = 2) -> torch.Tensor:
    """(N,) masked mean local squared CC of each pair at full resolution (the loss's data term)."""
    out = []
    for i in range(0, warped.shape[0], chunk):
        cc = local_cc_map(warped[i : i + chunk], fixed[i : i + chunk], radius)
        out.append(pair_masked_mean(cc, None if mask is None else mask[i : i + chunk]))
    return torch.cat(out)


def _pairs_at_once(device: torch.device, chunk: int = 32) -> int:
    """Full-resolution pairs processed at once: ``chunk``, at most CPU_CHUNK on a CPU."""
    return min(chunk, CPU_CHUNK) if device.type == "cpu" else chunk


def _inference_pairs(size: tuple[int, int], device: torch.device) -> int:
    """Pairs whose field the U-Net infers at once on a grid of ``size``: :func:`_pairs_at_once`,
    and on a CPU no more than CPU_INFER_BYTES of activations (one pair of a large 1/1 scale)."""
    chunk = _pairs_at_once(device)
    if device.type == "cpu":
        chunk = max(1, min(chunk, CPU_INFER_BYTES // (size[0] * size[1] * _INFER_BYTES_PER_PX)))
    return chunk


def _chunked(fn, a, b, chunk: int = 32):
    """fn over the pairs of a and b, :func:`_pairs_at_once` at a time, written into one array
    (not concatenated: that held every chunk and the result at once, twice the array)."""
    chunk = _pairs_at_once(a.device, chunk)
    first = fn(a[:chunk], b[:chunk])
    if a.shape[0] <= chunk:
        return first
    out = first.new_empty((a.shape[0],) + tuple(first.shape[1:]))
    out[:chunk] = first
    del first
    for i in range(chunk, a.shape[0], chunk):
        out[i : i + chunk] = fn(a[i : i + chunk], b[i : i + chunk])
    return out


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Convergence:
    """Stops when the smoothed loss has not improved by ``min_delta`` for ``patience`` steps.

    Never within the first ``warmup`` steps: starting from the identity, the
    loss of a coarse scale can sit on a plateau before it starts to fall.
    """

    def __init__(self, patience: int, min_delta: float, smoothing: float = 0.9, warmup: int = 0):
        self.patience, self.min_delta, self.smoothing = patience, min_delta, smoothing
        self.warmup, self.seen = warmup, 0
        self.ema = None
        self.best = math.inf
        self.since = 0

    def update(self, value: float, steps: int = 1) -> bool:
        """Record the loss after ``steps`` more steps; True when the scale should stop."""
        self.seen += steps
        if self.patience <= 0:
            return False
        self.ema = value if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * value
        if self.ema < self.best - self.min_delta * abs(self.best if math.isfinite(self.best) else self.ema):
            self.best = self.ema
            self.since = 0
        else:
            self.since += steps
        return self.since >= self.patience and self.seen > self.warmup
