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

from .convention import compose, warp
from .device import pick_device
from .errors import NMSRError
from .export import atomic_write
from .register import Progress, RegistrationConfig, ScaleData, batch_for, optimise_scale, validate_frames
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

    Each scale starts from the previous scale's weights (as NMSR_VI).
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
    fields = [torch.zeros((t.shape[0] - 1, 2, *t.shape[-2:]), device=device) for t in tensors]
    scales = config.effective_scales
    net = UNet(config.encoder, config.decoder).to(device)
    states, state = [], {"divisor": 1}
    for k, s in enumerate(scales):
        with torch.no_grad():
            datas = [ScaleData.prepare(warp(t[:-1], f), t[1:], None, s) for t, f in zip(tensors, fields)]
        n_steps = config.steps_for(k)
        for step, loss in optimise_scale(net, datas, n_steps, config, device, state, cancel):
            if progress is not None:
                progress(Progress(k, len(scales), s, step, n_steps, loss))
        states.append({name: v.detach().cpu().clone() for name, v in net.state_dict().items()})
        fields = [compose(f, d.residual_full(net, batch_for(d, config, device, state))) for f, d in zip(fields, datas)]
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


def load_weights(path: str | os.PathLike) -> dict:
    """Read a weights file written by :func:`train`, with a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise NMSRError(f"weights file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NMSRError(f"{path.name} is not a readable napari-nmsr weights file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise NMSRError(f"{path.name} is not a napari-nmsr weights file (expected format {WEIGHTS_FORMAT})")
    return payload
