"""Pick the compute device at run time: CUDA, then Apple MPS, then CPU.

Nothing in napari-nmsr hard-codes a device; every entry point takes
``device="auto"`` (or an explicit name) and resolves it here.
"""

from __future__ import annotations

import torch

__all__ = ["available_devices", "pick_device", "describe_device", "is_out_of_memory"]


def available_devices() -> list[str]:
    """Devices usable in this process, best first (always ends with ``"cpu"``)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Resolve ``"auto"``/``None`` to the best device; check an explicit choice exists."""
    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device(available_devices()[0])
    kind = pref.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {preference!r}: use auto, cpu, cuda or mps")
    if kind not in available_devices():
        raise ValueError(
            f"device {preference!r} is not available on this computer "
            f"(found: {', '.join(available_devices())})"
        )
    return torch.device(pref)


def describe_device(device: torch.device | str) -> str:
    """Human-readable name, e.g. ``"CUDA (NVIDIA H100)"`` or ``"CPU (2 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error from any torch backend."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )
