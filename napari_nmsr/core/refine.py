"""Per-pair refinement of the composed field ("instance optimisation"), the run's last stage.

The U-Net is one network for every pair of the sequence: at large frames it
converges slowly, and the guard then rejects its fine scales (at 384 px the
1/2 and full scales were rejected for nearly every pair of the tuning cases,
so the result was the affine + 1/8 field). This stage optimises, for each
pair on its own, a smooth residual added to the composed field: a dense
displacement on a coarse grid (``grid`` of the frame, bilinearly upsampled),
fitted with Adam to a local NCC (a smaller window than the U-Net's, frame t
resampled bicubically by default) plus a strong bending penalty on the grid.
Few parameters and a strong penalty keep it from fitting speckle where the
field is already right (probe motion, rigid warps), while it corrects the
smooth errors the network left (vortex cores, walls). Vortex cores that turn
fast are the part left: the grid cannot hold them (benchmarks/README.md,
twelfth session). A second, finer residual follows (:func:`_kept_where_it_helps`),
kept only where it clearly raises the local match (fifteenth session).
Pairs whose motion is more than affine (``deforming``: the guard kept a U-Net
scale's field for them) get a weaker bending weight for the coarse residual
(seventeenth session): the strong one is for pairs the affine stage explains.
Their fine residual is weaker still, more easily kept, and fitted to their
neighbouring pairs' data as well as their own (twenty-fourth session): one pair's
speckle does not hold a slow vortex's turn, three consecutive pairs' do better.
Where the noise between the frames is white (:mod:`.noise`), both frames are
blurred a little first (``denoise``), so that resampling frame t does not turn
that noise into a pull towards some sub-pixel shifts (thirty-fourth session).

Frames larger than ``max_px`` on the short side are refined at that size
(the residual is smooth on the scale of the grid, far coarser than a pixel),
which bounds the cost on 768x1024 cines. Pairs are independent, so they are
refined in chunks that fit a pixel budget, one chunk after another; a chunk's
loss is the sum of its pairs' losses, so a pair's result does not depend on
the chunk it shares (nor on the device's budget); a chunk of deforming pairs
reads one pair more on either side.

Convention: :mod:`napari_nmsr.core.convention` (pull fields, pixels, (dy, dx));
``moving`` is frame t, ``fixed`` frame t+1, the field lives on the fixed grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .convention import resize_field, resize_image, warp
from .losses import bending_loss, fixed_window_means, gaussian_smooth, local_cc_map, mean_local_cc_map, pair_masked_mean
from .noise import WHITE_FLATNESS, incoherent_flatness

__all__ = ["RefineSettings", "denoising_sigma", "fixed_means", "grid_size", "match_map", "refine_fields", "work_size"]

#: Pixels (pairs x h x w at the working size) refined at once. On a CPU 2^19 (about six pairs of a
#: 256 x 308 work grid) took 8-9 s for the shared DICOM's stage where 2^17 (one pair at a time) took
#: 10-11 s and 2^20 9-10 s (nineteenth session, two threads), for about 150 MB more.
PIXELS_AT_ONCE = {"cpu": 2**19, "mps": 2**22, "cuda": 2**24}


@dataclass(frozen=True)
class RefineSettings:
    """The stage's knobs, read from a RegistrationConfig (its ``refine_*`` fields)."""

    steps: int
    grid: float
    smoothness: float
    lr: float
    max_px: int
    radius: int | tuple[int, ...]  # the local NCC's window radius; several: the mean of their maps
    mode: str  # grid_sample's mode for resampling frame t (the config's refine_interpolation)
    #: the gated fine pass (:func:`_kept_where_it_helps`): steps (0: none), grid share, bending weight, gain
    fine_steps: int = 0
    fine_grid: float = 0.25
    fine_smoothness: float = 100.0
    fine_gain: float = 0.1
    #: the coarse residual's bending weight for pairs the affine stage did not explain (``deforming``)
    smoothness_deforming: float | None = None
    #: for those pairs, the fine residual's bending weight and gain, and the weight of pairs t-1 and
    #: t+1's data in pair t's fine residual (0: its own data alone); None: the rigid pairs' values
    fine_smoothness_deforming: float | None = None
    fine_gain_deforming: float | None = None
    fine_neighbours: float = 0.0
    #: Gaussian sigma (work px) both frames are blurred by before the stage when the noise between
    #: them is white (:mod:`.noise`); 0: never
    denoise: float = 0.0

    def __post_init__(self):
        for name, default in (("smoothness_deforming", self.smoothness),
                              ("fine_smoothness_deforming", self.fine_smoothness),
                              ("fine_gain_deforming", self.fine_gain)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)

    @classmethod
    def from_config(cls, config) -> "RefineSettings":
        return cls(config.refine_steps, config.refine_grid, config.refine_smoothness, config.refine_lr,
                   config.refine_max_px, config.refine_radius, config.refine_interpolation,
                   config.refine_fine_steps, config.refine_fine_grid, config.refine_fine_smoothness,
                   config.refine_fine_gain, config.refine_smoothness_deforming,
                   config.refine_fine_smoothness_deforming, config.refine_fine_gain_deforming,
                   config.refine_fine_neighbours, config.refine_denoise)


def work_size(size: tuple[int, int], max_px: int) -> tuple[int, int]:
    """The size the refinement runs at: ``size``, shrunk (aspect kept) so its short side is at most ``max_px``."""
    h, w = size
    f = min(1.0, max_px / max(1, min(h, w)))
    return max(8, round(h * f)), max(8, round(w * f))


def grid_size(size: tuple[int, int], grid: float) -> tuple[int, int]:
    """The residual's grid for a frame of ``size``: ``grid`` of it, at least 4 nodes a side."""
    return max(4, round(size[0] * grid)), max(4, round(size[1] * grid))


def match_map(warped: torch.Tensor, fixed: torch.Tensor, radius: int | tuple[int, ...],
              fixed_means: tuple | None = None) -> torch.Tensor:
    """The stage's local match: the local NCC map, or with several window radii the mean of their maps.

    A small window follows a deforming wall or a vortex closely but sees few speckles; a larger one
    is steadier where texture is sparse (real PIV particles) or coarse (real echo grain 2 x 4 px).
    Both at once kept most of either's gain (seventeenth session, benchmarks/README.md).
    ``fixed_means``: :func:`fixed_means` of ``fixed`` (computed once per fit: it does not change).
    """
    radius = _radius(radius)
    if isinstance(radius, tuple):
        return mean_local_cc_map(warped, fixed, radius, b_means=fixed_means)
    return local_cc_map(warped, fixed, radius, b_means=fixed_means)


def fixed_means(fixed: torch.Tensor, radius: int | tuple[int, ...]) -> tuple:
    """The fixed frame's window means that :func:`match_map` needs, for a loop that fits against it."""
    return fixed_window_means(fixed, _radius(radius))


def _radius(radius: int | tuple[int, ...]) -> int | tuple[int, ...]:
    """One window radius as an int, several as a tuple."""
    if isinstance(radius, (tuple, list)):
        return tuple(radius) if len(radius) > 1 else int(radius[0])
    return int(radius)


def _chunks(n: int, size: tuple[int, int], device: torch.device) -> list[slice]:
    per = max(1, PIXELS_AT_ONCE.get(device.type, PIXELS_AT_ONCE["cpu"]) // max(1, size[0] * size[1]))
    return [slice(i, min(n, i + per)) for i in range(0, n, per)]


def refine_fields(field: torch.Tensor, moving: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor | None,
                  settings: RefineSettings, check: Callable[[], None] | None = None,
                  deforming: torch.Tensor | None = None, notes: list | None = None,
                  blur: float | None = None) -> Iterator[tuple[int, int, float]]:
    """Refine ``field`` (N, 2, H, W) IN PLACE, pair chunk by chunk; yields (step done, steps in all, loss).

    ``moving``/``fixed``: (N, 1, H, W) frames t and t+1; ``mask`` (N, 1, H, W) float weights of the
    loss (or None); ``check()`` raises to cancel (the field then holds the chunks finished so far,
    each either refined or untouched). The loss is read back only at the end of each chunk.
    ``deforming`` (N,) bool: pairs whose motion the affine stage did not explain (the guard kept a
    U-Net scale's field for them); their coarse residual is fitted with ``smoothness_deforming``, their
    fine one with the ``fine_*_deforming`` settings and their neighbours' data (``fine_neighbours``).
    ``notes``: a list the stage appends what it decided to, in words (the blur, :func:`denoising_sigma`).
    ``blur``: the Gaussian sigma (work px) both frames are blurred by; None: :func:`denoising_sigma` decides
    (the engine decides first, and passes it, so that the temporal consensus judges the same frames).
    """
    n, _, h, w = field.shape
    work = work_size((h, w), settings.max_px)
    coarse = grid_size((h, w), settings.grid)
    to_work = _to_size((h, w), work, field.device)
    chunks = _chunks(n, work, field.device)
    total = len(chunks) * (settings.steps + settings.fine_steps)
    deforming = None if deforming is None else deforming.to(field.device)
    if blur is None:
        blur = denoising_sigma(field, moving, fixed, settings, work)
    if blur and notes is not None:
        notes.append(f"The refinement blurred both frames by {blur:g} px first: the noise between them is white, "
                     "and resampling it would pull the fit.")
    # A deforming pair's fine residual reads pairs t-1 and t+1 through their coarse residuals: every
    # pair's coarse residual comes first, then the fine passes (:func:`_fine_pass_with_neighbours`).
    joint = settings.fine_steps > 0 and settings.fine_neighbours > 0 and n > 1 and deforming is not None \
        and bool(deforming.any())
    deltas = torch.zeros(n, 2, *coarse, device=field.device) if joint else None  # the coarse residuals, kept
    done = 0
    for part in chunks:
        mov, fix, wts, base = _work_inputs(field, moving, fixed, mask, part, work, blur)
        end = done + settings.steps + (0 if joint else settings.fine_steps)  # reported with its loss
        weight = _pair_weights(settings.smoothness, settings.smoothness_deforming, deforming, part)
        fit = _fit_residual(base, mov, fix, wts, (h, w), work, coarse, weight, settings.steps, settings, check)
        delta, loss, done = yield from _report_steps(fit, done, total, end)
        if joint:
            deltas[part] = delta
        else:
            fine = None
            if settings.fine_steps:
                with torch.no_grad():
                    start = base + F.interpolate(delta, size=work, mode="bilinear", align_corners=True) * to_work
                fine, _, done = yield from _fine_pass(start, mov, fix, wts, (h, w), work, settings, check, deforming,
                                                      part, slice(0, part.stop - part.start), done, total, end)
            _add_residuals(field, part, delta, fine)
        yield done, total, float(loss.detach())
    if joint:
        yield from _fine_pass_with_neighbours(field, moving, fixed, mask, settings, check, deforming, deltas, chunks,
                                              done, total, blur)


def _fine_pass_with_neighbours(field, moving, fixed, mask, settings: RefineSettings, check, deforming, deltas,
                               chunks: list[slice], done: int, total: int, blur: float = 0.0):
    """The fine passes, once every pair's coarse residual is in ``deltas``: each chunk reads one pair
    more on either side, and its result joins the field only after the next chunk has read the
    (unchanged) pair beside it, so a pair's result does not depend on the chunks."""
    n, _, h, w = field.shape
    work = work_size((h, w), settings.max_px)
    to_work = _to_size((h, w), work, field.device)
    pending = None
    for part in chunks:
        ext = slice(max(0, part.start - 1), min(n, part.stop + 1))
        mov, fix, wts, base = _work_inputs(field, moving, fixed, mask, ext, work, blur)
        with torch.no_grad():
            start = base + F.interpolate(deltas[ext], size=work, mode="bilinear", align_corners=True) * to_work
        own = slice(part.start - ext.start, part.stop - ext.start)
        end = done + settings.fine_steps
        fine, loss, done = yield from _fine_pass(start, mov, fix, wts, (h, w), work, settings, check, deforming, part,
                                                 own, done, total, end)
        if pending is not None:
            _add_residuals(field, *pending)
        pending = (part, deltas[part], fine)
        yield done, total, float(loss.detach())
    _add_residuals(field, *pending)


def _fine_pass(start, mov, fix, wts, full, work, settings: RefineSettings, check, deforming, part: slice, own: slice,
               done: int, total: int, end: int):
    """The gated fine residual (work grid, full px) of pairs ``part`` (``own`` of those given, the others their
    neighbours), driven through :func:`_report_steps`. Returns (residual, last loss, steps done)."""
    smoothness = _pair_weights(settings.fine_smoothness, settings.fine_smoothness_deforming, deforming, part)
    gain = _pair_weights(settings.fine_gain, settings.fine_gain_deforming, deforming, part)
    neighbours = 0.0
    if deforming is not None and settings.fine_neighbours > 0 and bool(deforming[part].any()):
        neighbours = deforming[part].float() * settings.fine_neighbours
    fit = _fit_residual(start, mov, fix, wts, full, work, grid_size(full, settings.fine_grid), smoothness,
                        settings.fine_steps, settings, check, own=own, neighbours=neighbours)
    delta, loss, done = yield from _report_steps(fit, done, total, end)
    gain = gain.view(-1, 1, 1, 1) if isinstance(gain, torch.Tensor) else gain
    return _kept_where_it_helps(delta, start[own], mov[own], fix[own], full, work, settings, gain), loss, done


@torch.no_grad()
def _work_inputs(field, moving, fixed, mask, pairs: slice | list[int], work: tuple[int, int], blur: float = 0.0):
    """Frames t and t+1 (blurred by ``blur`` work px, 0: not), the loss weights (or None) and the
    field of ``pairs``, at the working size."""
    mov = gaussian_smooth(resize_image(moving[pairs].float(), work), blur)
    fix = gaussian_smooth(resize_image(fixed[pairs].float(), work), blur)
    wts = None if mask is None else (resize_image(mask[pairs].float(), work) > 0.5).float()
    return mov, fix, wts, resize_field(field[pairs].float(), work)


#: Pairs (evenly spread over the sequence) the white-noise test reads: enough for a steady spectrum.
NOISE_TEST_PAIRS = 8


@torch.no_grad()
def denoising_sigma(field, moving, fixed, settings: RefineSettings, work: tuple[int, int]) -> float:
    """``settings.denoise`` if the noise between the frames (at the working size, through the field
    the stage starts from) is white (:func:`.noise.incoherent_flatness` >= :data:`.noise.WHITE_FLATNESS`),
    else 0.0: the blur that keeps resampled noise from pulling the fit, where it does not cost speckle."""
    if settings.denoise <= 0:
        return 0.0
    n = field.shape[0]
    pairs = torch.linspace(0, n - 1, min(n, NOISE_TEST_PAIRS)).round().long().unique().tolist()
    mov, fix, _, base = _work_inputs(field, moving, fixed, None, pairs, work)
    white = incoherent_flatness(mov, fix, base, settings.mode) >= WHITE_FLATNESS
    return float(settings.denoise) if white else 0.0


@torch.no_grad()
def _add_residuals(field, part: slice, delta, fine) -> None:
    """A chunk is finished: its coarse residual (grid, full px) and gated fine one (work grid, full px)
    join the field (a host read, once per chunk)."""
    h, w = field.shape[-2:]
    field[part] += F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=True).to(field.dtype)
    if fine is not None:
        field[part] += F.interpolate(fine, size=(h, w), mode="bilinear", align_corners=True).to(field.dtype)


def _to_size(full: tuple[int, int], size: tuple[int, int], device) -> torch.Tensor:
    """(1, 2, 1, 1) factors taking full-resolution pixels to pixels of a grid of ``size`` (align-corners)."""
    return torch.tensor([(size[0] - 1) / max(full[0] - 1, 1), (size[1] - 1) / max(full[1] - 1, 1)],
                        device=device).view(1, 2, 1, 1)


def _pair_weights(value: float, deforming_value: float, deforming: torch.Tensor | None, part: slice):
    """A setting for the pairs ``part``: ``value``, or (M,) with ``deforming_value`` for the deforming pairs."""
    if deforming is None or deforming_value == value:
        return value
    return torch.where(deforming[part], deforming_value, value).float()


def _fit_residual(base, mov, fix, wts, full, work, grid, smoothness, steps: int, settings: RefineSettings, check,
                  own: slice | None = None, neighbours: float | torch.Tensor = 0.0):
    """Adam on a residual on ``grid`` added to ``base`` (a field in work-grid px): the masked local
    NCC of frame t resampled through it, plus ``smoothness`` x the grid's bending energy. Yields
    each step's loss (a tensor, the chunk's mean per pair); returns the residual (N, 2, *grid) in full-resolution px.

    ``own``: the pairs (of those given) that get a residual, the others being their neighbours; with
    ``neighbours`` > 0 (one, or (M,) for the ``own`` pairs) pair t's residual is fitted to the mean
    of its own data term and, weighted ``neighbours`` each, those of pairs t-1 and t+1 (each resampled
    through its own ``base`` plus pair t's residual): the correction a slowly changing motion needs is
    much the same in consecutive pairs, while their noise is not (twenty-fourth session).
    """
    own = slice(0, base.shape[0]) if own is None else own
    m = own.stop - own.start
    to_work, to_grid = _to_size(full, work, base.device), _to_size(full, grid, base.device)
    delta = torch.zeros(m, 2, *grid, device=base.device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=settings.lr)
    with torch.no_grad():
        fix_means = fixed_means(fix, settings.radius)  # frame t+1 does not move: its window means, once
    whose, norm = [(own, 1.0)], 1.0  # (whose data, its weight) for each own pair: its own alone
    if isinstance(neighbours, torch.Tensor) or neighbours > 0:
        index = torch.arange(own.start, own.stop, device=base.device)
        valid = [((k >= 0) & (k < base.shape[0])).float() * neighbours for k in (index - 1, index + 1)]
        whose += [(k.clamp(0, base.shape[0] - 1), v) for k, v in zip((index - 1, index + 1), valid)]
        norm = 1.0 + sum(valid)
    # each term's frames, field, weights and window means, gathered once (not at every step)
    terms = [(mov[k], base[k], fix[k], None if wts is None else wts[k],
              tuple((mb[k], mbb[k]) for mb, mbb in fix_means), v) for k, v in whose]
    for _ in range(steps):
        if check is not None:
            check()
        up = F.interpolate(delta, size=work, mode="bilinear", align_corners=True) * to_work
        data = 0.0
        for mov_k, base_k, fix_k, wts_k, means_k, v in terms:
            cc = match_map(warp(mov_k, base_k + up, settings.mode), fix_k, settings.radius, means_k)
            data = data + v * pair_masked_mean(cc, wts_k)
        # Each pair's own loss, summed (not averaged) over the chunk: a pair's gradient, and so its
        # Adam steps (whose epsilon is not negligible against these small gradients), do not depend
        # on how many pairs share its chunk, i.e. on the device's pixel budget.
        bend = smoothness * bending_loss(delta * to_grid, per_pair=True)  # smoothness: one, or (N,)
        loss = (-data / norm + bend).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        yield loss.detach() / m  # reported per pair
    return delta.detach()


def _report_steps(fit, done: int, total: int, end: int):
    """Drive a :func:`_fit_residual`, yielding (step done, steps in all, NaN) for each step before
    ``end`` (that one is reported by the caller, with the loss: read back once per chunk).
    Returns (residual, last loss tensor, steps done)."""
    loss = None
    while True:
        try:
            loss = next(fit)
        except StopIteration as stop:
            return stop.value, loss, done
        done += 1
        if done < end:
            yield done, total, float("nan")


@torch.no_grad()
def _kept_where_it_helps(delta, start, mov, fix, full, work, settings: RefineSettings, gain) -> torch.Tensor:
    """The fine pass's residual ``delta`` (on the ``fine_grid``), kept only where it clearly raises the local match.

    The 1/8 grid cannot hold a fast vortex core or a sharp wall (benchmarks/README.md, twelfth
    session: the truth projected on it is 0.7 px off in a PIV vortex core), and a finer grid
    everywhere fits speckle noise where the field is already right. So the finer residual is
    fitted everywhere, then weighted, pixel by pixel, by how much it raised the local NCC (the
    loss's data term, both maps smoothed over one fine grid spacing): 0 where it removed less
    than ``gain`` (``fine_gain``, or one per pair, (M, 1, 1, 1)) of the dissimilarity left
    (1 - match), as fitting noise does, rising to 1
    at twice that; the weight is smoothed too, so the field stays smooth. The guard's test
    (:func:`~.register._guard`), made local. Returns (N, 2, work h, work w) in full-resolution px.
    """
    to_work = _to_size(full, work, start.device)
    residual = F.interpolate(delta, size=work, mode="bilinear", align_corners=True)  # full px
    sigma = max(work) / max(delta.shape[-2:])  # one fine grid spacing, in work px
    before = gaussian_smooth(match_map(warp(mov, start, settings.mode), fix, settings.radius), sigma)
    after = gaussian_smooth(match_map(warp(mov, start + residual * to_work, settings.mode), fix, settings.radius), sigma)
    need = gain * (1.0 - before).clamp_min(1e-3)
    keep = gaussian_smooth(((after - before - need) / need).clamp(0.0, 1.0), sigma)
    return residual * keep
