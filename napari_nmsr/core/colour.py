"""The original colours of a cine (colour Doppler, coloured overlays), for display beside the grayscale.

Registration uses channel 0 only (as the paper); a sonographer still wants to
see the colour Doppler as acquired. :func:`load_colour_frames` reads the
same file again as RGB uint8 ``(T, H, W, 3)``; it returns None when the file
has no colour (every pixel grey), so callers can say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SequenceError
from .io import DICOM_SUFFIXES, VIDEO_SUFFIXES

__all__ = ["load_colour_frames", "has_colour"]


def has_colour(rgb: np.ndarray) -> bool:
    """True when some pixel's channels differ (not a grey image stored as RGB)."""
    rgb = np.asarray(rgb)
    step = max(1, rgb.shape[0] // 8)
    sample = rgb[::step].astype(np.int16)
    return bool(np.any(np.abs(sample[..., 0] - sample[..., 1]) > 2) or np.any(np.abs(sample[..., 0] - sample[..., 2]) > 2))


def _to_uint8(frame: np.ndarray, bits: int) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    return np.clip(frame.astype(np.float64) / (2.0**bits - 1) * 255.0, 0, 255).astype(np.uint8)


def _dicom(path: Path, max_frames: int | None) -> np.ndarray | None:
    import pydicom
    from pydicom.pixels import apply_color_lut, iter_pixels

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        return None
    n = int(ds.get("NumberOfFrames") or 1)
    count = min(n, max_frames) if max_frames else n
    frames = []
    for frame in iter_pixels(path, indices=range(count)):
        if photometric == "PALETTE COLOR":
            frame = apply_color_lut(frame, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        else:
            bits = int(ds.get("BitsStored") or 8)
        frames.append(_to_uint8(np.asarray(frame)[..., :3], bits))
    return np.stack(frames)


def _video(path: Path, max_frames: int | None) -> np.ndarray:
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    return np.stack(frames)


def load_colour_frames(path, *, max_frames: int | None = None) -> np.ndarray | None:
    """RGB uint8 (T, H, W, 3) of a DICOM or video cine, or None when it has no colour.

    Other formats (TIFF, NPY, image folders) are not read here: None.
    """
    path = Path(path)
    if not path.is_file():
        raise SequenceError(f"'{path}' does not exist (moved or renamed?): cannot read its colours.")
    suffix = path.suffix.lower()
    try:
        if suffix in VIDEO_SUFFIXES:
            rgb = _video(path, max_frames)
        elif suffix in DICOM_SUFFIXES or not suffix:
            rgb = _dicom(path, max_frames)
        else:
            return None
    except SequenceError:
        raise
    except Exception as exc:
        raise SequenceError(f"The colours of '{path.name}' could not be read ({type(exc).__name__}: {exc}).") from exc
    if rgb is None or not has_colour(rgb):
        return None
    return rgb
