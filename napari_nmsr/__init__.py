"""napari-nmsr: neural multi-scale self-supervised registration for echo dense tracking.

Public Python API (importing it does not start Qt or napari)::

    from napari_nmsr import load_sequence, register, RegistrationConfig
    seq = load_sequence("cine.dcm")
    result = register(seq.frames, config=RegistrationConfig(variant="nmsr_vi"))
    result.save("cine_nmsr.npz")

Names are resolved lazily so that napari can read the plugin manifest without
importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_sequence": "napari_nmsr.core.io",
    "EchoSequence": "napari_nmsr.core.io",
    "register": "napari_nmsr.core.register",
    "register_iter": "napari_nmsr.core.register",
    "RegistrationConfig": "napari_nmsr.core.register",
    "Progress": "napari_nmsr.core.register",
    "ScaleDone": "napari_nmsr.core.register",
    "RegistrationResult": "napari_nmsr.core.result",
    "CONVENTION": "napari_nmsr.core.convention",
    "NMSRError": "napari_nmsr.core.errors",
    "SequenceError": "napari_nmsr.core.errors",
    "MaskError": "napari_nmsr.core.errors",
    "ResultFileError": "napari_nmsr.core.errors",
    "WeightsFileError": "napari_nmsr.core.errors",
    "DeviceMemoryError": "napari_nmsr.core.errors",
    "train": "napari_nmsr.core.train",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_nmsr' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
