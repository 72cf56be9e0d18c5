"""The exceptions the engine raises, so callers (GUI, CLI) catch one family.

Every message is written for the person at the scanner, not for a programmer:
it says what is wrong with *their* file or drawing and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "NMSRError",
    "SequenceError",
    "MaskError",
    "ResultFileError",
    "WeightsFileError",
    "DeviceMemoryError",
]


class NMSRError(Exception):
    """Base class of every error napari-nmsr raises on purpose."""


class SequenceError(NMSRError, ValueError):
    """An input sequence cannot be used: missing, corrupt, unsupported or degenerate.

    Raised by :func:`napari_nmsr.load_sequence` and by the engine when frames are
    unusable (one frame, constant or NaN frames, zero-size images).
    """


class MaskError(NMSRError, ValueError):
    """A mask or contour cannot be used (empty, wrong shape, ambiguous)."""


class ResultFileError(NMSRError, ValueError):
    """A result file is not a napari-nmsr result or is from an incompatible version."""


class WeightsFileError(NMSRError, ValueError):
    """A weights file (``nmsr train``) is missing, damaged, too large or not napari-nmsr's."""


class DeviceMemoryError(NMSRError, MemoryError):
    """The compute device ran out of memory even at the smallest batch size."""
