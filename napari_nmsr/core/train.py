"""NMSR_V: optimise one network per scale over many sequences, save the weights.

The paper's NMSR_V starts each sequence's self-supervised optimisation from
weights trained on other sequences. ``train`` runs the same coarse-to-fine
procedure as :func:`~napari_nmsr.core.register.register_iter`, but every step
draws its pairs from the next sequence in turn, and the weights (one state
dict per scale) are written to a ``.pt`` file that
``RegistrationConfig(variant="nmsr_v", weights=...)`` starts from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from .convention import warp
from .device import pick_device
from .errors import NMSRError
from .export import atomic_write
from .global_motion import affine_fields
from .register import Progress, RegistrationConfig, ScaleData, amp_for, batch_for, compose_resized, optimise_scale, validate_frames
from .unet import UNet

__all__ = ["train", "load_weights", "WEIGHTS_FORMAT"]

WEIGHTS_FORMAT = "napari-nmsr-weights-v1"


def train(
    sequences: Iterable[np.ndarray],
    out_path: str | os.PathLike,
    config: RegistrationConfig | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Path:
    """Optimise per-scale weights over ``sequences`` ((T, H, W) arrays in [0, 1]).

    Each scale starts from the previous scale's weights (as NMSR_VI), and
    with ``config.affine`` each pair is first aligned by the affine stage,
    so the weights learn the residual motion that ``register`` asks of them.
    ``config.steps`` counts steps over ALL sequences (the paper uses
    3500 x the number of sequences). Returns the written path.
    """
    config = config or RegistrationConfig(variant="nmsr_vi")
    seqs = [validate_frames(s) for s in sequences]
    if not seqs:
        raise NMSRError("no training sequences were given")
    device = pick_device(config.device)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    tensors = [torch.from_numpy(s).to(device)[:, None] for s in seqs]
    if config.affine:  # as register does: the U-Net learns the motion left after the affine stage
        fields = [affine_fields(t[:-1], t[1:], None, config.ncc_radius, steps=config.affine_steps) for t in tensors]
    else:
        fields = [torch.zeros((t.shape[0] - 1, 2, *t.shape[-2:]), device=device) for t in tensors]
    scales = config.effective_scales
    net = UNet(config.encoder, config.decoder).to(device)
    states, state = [], {"divisor": 1}
    for k, s in enumerate(scales):
        n_steps = config.steps_for(k)
        if n_steps == 0:  # a skipped scale (as register_iter skips it): the weights so far stand for it
            states.append(_weights_of(net))
            continue
        with torch.no_grad():
            datas = [ScaleData.prepare(warp(t[:-1], f), t[1:], None, s, config.min_scale_px) for t, f in zip(tensors, fields)]
        amp = amp_for(config, device, finest=k == len(scales) - 1)
        for step, loss in optimise_scale(net, datas, n_steps, config, device, state, cancel, amp=amp,
                                          radius=config.loss_radius_for(k)):
            if progress is not None:
                progress(Progress(k, len(scales), s, step, n_steps, loss))
        states.append(_weights_of(net))
        fields = [compose_resized(f, lambda pairs, d=d: d.residual(net, batch_for(d, config, device, state), config.field_sigma, amp, pairs))
                  for f, d in zip(fields, datas)]
    payload = {
        "format": WEIGHTS_FORMAT,
        "scales": list(scales),
        "state_dicts": states,
        "architecture": {"encoder": list(config.encoder), "decoder": list(config.decoder)},
        "config": config.to_dict(),
        "n_sequences": len(seqs),
    }
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda tmp: torch.save(payload, tmp))


def _weights_of(net) -> dict:
    """A copy of the network's weights on the host, as a weights file keeps them per scale."""
    return {name: v.detach().cpu().clone() for name, v in net.state_dict().items()}


def load_weights(path: str | os.PathLike) -> dict:
    """Read and check a weights file written by :func:`train`; WeightsFileError otherwise.

    Checked: the declared size against the memory budget before anything is
    unpacked (:mod:`.limits`), torch's safe loader (tensors and plain
    containers only), the format tag, increasing scales in (0, 1] with one
    state dict each, an architecture of at most 8 levels of 1..512 channels,
    and every state dict holding exactly that U-Net's tensors with their
    shapes and finite values, so a bad file fails here, not mid-run.
    """
    from .errors import WeightsFileError
    from .limits import check_zip_file

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file not found: {path}" if not path.is_dir()
                               else f"{path} is a folder, not a weights file")
    name = path.name
    check_zip_file(path, WeightsFileError, "a napari-nmsr weights file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(f"{name} is not a readable napari-nmsr weights file: it is damaged or not from "
                               f"`nmsr train` ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise WeightsFileError(f"{name} is not a napari-nmsr weights file (expected format {WEIGHTS_FORMAT})")
    scales, states, arch = payload.get("scales"), payload.get("state_dicts"), payload.get("architecture")
    if (not isinstance(scales, list) or not scales or not all(isinstance(v, (int, float)) for v in scales)
            or any(not 0 < v <= 1 for v in scales) or list(scales) != sorted(set(scales))):
        raise WeightsFileError(f"{name}: 'scales' must be a list of increasing values in (0, 1], got {scales!r}")
    if not isinstance(states, list) or len(states) != len(scales) or not all(isinstance(d, dict) for d in states):
        raise WeightsFileError(f"{name}: expected one state dict per scale ({len(scales)}), the file is damaged")
    levels = []
    for part in ("encoder", "decoder"):
        value = arch.get(part) if isinstance(arch, dict) else None
        if (not isinstance(value, list) or not 1 <= len(value) <= 8
                or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 512 for c in value)):
            raise WeightsFileError(f"{name}: 'architecture' has no valid {part} (a list of 1..8 channel counts "
                                   f"of 1..512), got {value!r}")
        levels.append(value)
    if len(levels[0]) != len(levels[1]):
        raise WeightsFileError(f"{name}: the encoder and decoder have different depths; the file is damaged")
    expected = {k: tuple(v.shape) for k, v in UNet(*levels).state_dict().items()}
    for i, sd in enumerate(states):
        got = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
        if got != expected or len(got) != len(sd):
            raise WeightsFileError(f"{name}: the weights of scale {scales[i]:g} do not fit the U-Net the file "
                                   "describes (missing, extra or mis-shaped tensors); the file is damaged")
        bad = next((k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise WeightsFileError(f"{name}: the weights '{bad}' of scale {scales[i]:g} contain NaN or infinite "
                                   "values; train again")
    return payload
