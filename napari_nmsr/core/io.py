"""Load an echo cine from disk as one float32 ``(T, H, W)`` array in ``[0, 1]``.

One public entry point, :func:`load_sequence`, reads DICOM ultrasound
multi-frame files (uncompressed, RLE, JPEG via pylibjpeg), AVI/MP4/MOV/MKV
video, multi-page TIFF, a folder of PNG/JPEG/BMP frames and NPY/NPZ arrays.

Grayscale is the FIRST channel, as in the paper ("we only use the first channel
... normalized to [0, 1]"): channel 0 of RGB data (red), channel 0 of a palette
image *after* its colour look-up table (the red LUT), the only channel of
monochrome data. Normalisation:

* integer data: divided by the range of its type (uint8 / 255, uint16 / 65535;
  signed types are shifted to start at 0). DICOM uses ``BitsStored`` instead
  (a 12-bit image is divided by 4095) and a palette its LUT entry size (16-bit
  LUT entries: / 65535); MONOCHROME1 is inverted so that bright means echo.
* float data: min-max over the whole sequence (one scale for all frames).

Memory: the float32 output is allocated once (frame count from the container)
and filled frame by frame; no list of frames is ever stacked.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SequenceError
from .limits import check_npy_file, check_npz_file

__all__ = ["EchoSequence", "load_sequence", "can_read", "SUPPORTED_SUFFIXES", "FRAME_IMAGE_SUFFIXES"]

DICOM_SUFFIXES = (".dcm", ".dicom")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v")
TIFF_SUFFIXES = (".tif", ".tiff")
#: Single-file formats :func:`load_sequence` reads (DICOM files without a suffix too).
SUPPORTED_SUFFIXES = DICOM_SUFFIXES + VIDEO_SUFFIXES + TIFF_SUFFIXES + (".npy", ".npz")
#: Frame files read from a folder, one image per frame, in natural order (frame2 before frame10).
FRAME_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_TIFF_IN_MEMORY_LIMIT = 256 * 2**20  # bytes; larger TIFFs are decoded into a temporary memmap


@dataclass
class EchoSequence:
    """An echo cine ready for registration.

    frames: ``(T, H, W)`` float32 in ``[0, 1]``, T >= 2.
    frame_interval_s: seconds between frames, or None when the file does not say.
    pixel_spacing_mm: ``(dy, dx)`` millimetres per pixel (rows, columns), or None.
    source: the path it was read from.
    metadata: technical facts about the file (format, codec, encoding...); never patient data.
    """

    frames: np.ndarray
    frame_interval_s: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------- helpers


def _natural_key(name: str) -> list:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name.lower()))]


def _positive(value: Any, absolute: bool = False) -> float | None:
    """A header number if it is finite and > 0 (after abs() if asked), else None."""
    try:
        v = abs(float(value)) if absolute else float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


class _FrameBuffer:
    """The float32 ``(T, H, W)`` output, filled one frame at a time.

    ``expected`` frames are allocated up front; if a file holds more than its
    header said, the buffer grows by a quarter (the only moment two copies exist).
    """

    def __init__(self, name: str, expected: int | None, max_frames: int | None):
        self.name, self.max_frames = name, max_frames
        capacity = expected if expected and expected > 0 else 64
        self.capacity = min(capacity, max_frames) if max_frames else capacity
        self.out: np.ndarray | None = None
        self.n = 0
        self.raw_float = False

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.n >= self.max_frames

    def add(self, frame: np.ndarray, value_range: tuple[float, float] | None = None, invert: bool = False) -> None:
        """Convert one 2-D frame into slot ``n``: integer data scaled by ``value_range``
        (default: its dtype range), float data copied raw (min-max in :meth:`finish`).
        ``invert`` makes low values bright (DICOM MONOCHROME1)."""
        if frame.ndim != 2 or frame.size == 0:
            shape = "x".join(map(str, frame.shape))
            raise SequenceError(f"'{self.name}' has empty images ({shape} pixels); there is nothing to register.")
        if self.out is None:
            self.out = np.empty((self.capacity, *frame.shape), np.float32)
        elif frame.shape != self.out.shape[1:]:
            raise SequenceError(
                f"Frame {self.n + 1} of '{self.name}' is {frame.shape[0]}x{frame.shape[1]} pixels but the first "
                f"frame is {self.out.shape[1]}x{self.out.shape[2]}; all frames of a cine must have the same size.")
        if self.n == self.out.shape[0]:
            grown = np.empty((self.n + max(16, self.n // 4), *self.out.shape[1:]), np.float32)
            grown[: self.n] = self.out
            self.out = grown
        dst = self.out[self.n]
        if np.issubdtype(frame.dtype, np.floating):
            dst[...] = frame
            if not np.isfinite(dst).all():
                raise SequenceError(f"Frame {self.n + 1} of '{self.name}' contains invalid values (NaN or "
                                    "infinity); re-export the sequence without missing pixels.")
            if invert:
                np.negative(dst, out=dst)
            self.raw_float = True
        elif np.issubdtype(frame.dtype, np.integer) or frame.dtype == np.bool_:
            if value_range is None and frame.dtype != np.bool_:
                value_range = (float(np.iinfo(frame.dtype).min), float(np.iinfo(frame.dtype).max))
            lo, hi = value_range or (0.0, 1.0)
            dst[...] = frame
            if lo:
                dst -= lo
            dst *= 1.0 / (hi - lo)
            np.clip(dst, 0.0, 1.0, out=dst)
            if invert:
                np.subtract(1.0, dst, out=dst)
        else:
            raise SequenceError(f"'{self.name}' holds {frame.dtype} pixels, which are not image intensities.")
        self.n += 1

    def finish(self) -> np.ndarray:
        if self.out is None or self.n == 0:
            raise SequenceError(f"'{self.name}' contains no image frames.")
        out = self.out[: self.n]
        if self.n < 0.75 * self.out.shape[0]:
            out = out.copy()  # do not keep a mostly unused allocation alive
        self.out = None
        if self.raw_float:
            lo, hi = float(out.min()), float(out.max())
            if hi > lo:
                out -= lo
                out *= 1.0 / (hi - lo)
                np.clip(out, 0.0, 1.0, out=out)
        return out


def _check_sequence(frames: np.ndarray, name: str) -> None:
    """The degenerate cases registration cannot work with (one constant frame among others is fine)."""
    if frames.shape[0] < 2:
        raise SequenceError(f"'{name}' holds a single frame; registration needs at least two frames "
                            "(export the whole cine loop, not a still image).")
    if float(frames.min()) == float(frames.max()):
        raise SequenceError(f"Every frame of '{name}' is one flat grey value, so there is no image content "
                            "to track; check that the export is not blank.")


# ----------------------------------------------------------------------------- DICOM


def _dicom_frame_interval(ds) -> tuple[float | None, str | None]:
    """Seconds per frame from FrameTime (ms), FrameTimeVector (ms), CineRate or
    RecommendedDisplayFrameRate (frames/s), in that order; also the tag used."""
    ms = _positive(ds.get("FrameTime"))
    if ms:
        return ms / 1000.0, "FrameTime"
    vector = ds.get("FrameTimeVector")
    if isinstance(vector, Sequence) and not isinstance(vector, (str, bytes)):
        steps = [_positive(v) for v in list(vector)[1:]]  # the first entry is 0
        if steps and all(steps):
            return float(np.median(steps)) / 1000.0, "FrameTimeVector"
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds.get(key))
        if rate:
            return 1.0 / rate, key
    return None, None


def _dicom_pixel_spacing(ds) -> tuple[float, float] | None:
    """(dy, dx) mm from the first 2-D ultrasound region calibrated in cm
    (PhysicalUnits == 3), else from PixelSpacing (mm, row then column)."""
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        if region.get("RegionSpatialFormat", 1) != 1:
            continue  # M-mode, spectral Doppler, waveform: not a 2-D image
        if region.get("PhysicalUnitsXDirection") != 3 or region.get("PhysicalUnitsYDirection") != 3:
            continue
        dx, dy = _positive(region.get("PhysicalDeltaX"), True), _positive(region.get("PhysicalDeltaY"), True)
        if dx and dy:
            return dy * 10.0, dx * 10.0
    spacing = ds.get("PixelSpacing")
    if isinstance(spacing, Sequence) and len(spacing) == 2:
        dy, dx = _positive(spacing[0]), _positive(spacing[1])
        if dy and dx:
            return dy, dx
    return None


def _load_dicom(path: Path, max_frames: int | None):
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, iter_pixels

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as e:
        raise SequenceError(f"'{path.name}' is not a DICOM file (no DICOM header found).") from e
    if "Rows" not in ds or "Columns" not in ds:
        raise SequenceError(f"'{path.name}' holds no image: it is a DICOM report or DICOMDIR, or the file is "
                            "cut short.")
    n = int(ds.get("NumberOfFrames") or 1)
    syntax = getattr(getattr(ds.file_meta, "TransferSyntaxUID", None), "name", "unknown encoding")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    value_range = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    lut = None
    if photometric == "PALETTE COLOR":  # first channel = red LUT applied to the indices
        lut = apply_color_lut(np.arange(2**bits, dtype=np.uint16 if bits > 8 else np.uint8), ds)[..., 0].copy()
        value_range = (0.0, 2.0 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
    count = min(n, max_frames) if max_frames else n
    buf = _FrameBuffer(path.name, count, max_frames)
    try:
        for frame in iter_pixels(path, indices=range(count)):  # one decoded frame at a time
            if lut is not None:
                frame = lut[frame]
            elif frame.ndim == 3:
                frame = frame[..., 0]  # RGB; pydicom converts YBR to RGB
            buf.add(frame, value_range, invert=photometric == "MONOCHROME1")
    except SequenceError:
        raise
    except Exception as e:
        raise SequenceError(f"The images in '{path.name}' ({syntax}) could not be decoded: the file is damaged "
                            "or incomplete (an interrupted copy?), or uses a compression this computer cannot "
                            f"decode; re-export it uncompressed. Details: {e}") from e
    interval, interval_tag = _dicom_frame_interval(ds)
    meta = {"format": "dicom", "transfer_syntax": syntax, "photometric_interpretation": photometric,
            "bits_stored": bits, "frames_in_file": n, "frame_interval_tag": interval_tag}
    for key in ("Modality", "Manufacturer", "ManufacturerModelName", "SOPClassUID"):  # no patient data
        if key in ds:
            meta[key] = str(getattr(ds[key].value, "name", ds[key].value))
    return buf.finish(), interval, _dicom_pixel_spacing(ds), meta


# ----------------------------------------------------------------------------- video


def _load_video(path: Path, max_frames: int | None):
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SequenceError(f"'{path.name}' contains no video stream (audio only?).")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        counted = expected = stream.frames or None
        if not expected and rate and container.duration:  # e.g. MKV stores no frame count
            expected = round(container.duration * 1e-6 * float(rate))
        buf = _FrameBuffer(path.name, expected, max_frames)
        for frame in container.decode(stream):
            buf.add(frame.to_ndarray(format="rgb24")[..., 0])
            if buf.full:
                break
        codec = stream.codec_context.name
    if counted and not buf.full and 2 <= buf.n < counted:
        warnings.warn(f"Only {buf.n} of the {counted} frames of '{path.name}' could be decoded; the file "
                      "seems truncated (an interrupted copy?).", UserWarning, stacklevel=3)
    interval = 1.0 / float(rate) if rate and float(rate) > 0 else None
    meta = {"format": "video", "codec": codec, "expected_frames": expected, "decoded_frames": buf.n}
    return buf.finish(), interval, None, meta


# ----------------------------------------------------------------------------- TIFF


def _load_tiff(path: Path, max_frames: int | None):
    """Time = the first non-channel axis longer than 1 (T, Z, I, Q...); channel
    axes (C, S) and any further axes are taken at index 0."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        size = int(np.prod(shape)) * series.dtype.itemsize
        data = series.asarray(out="memmap" if size > _TIFF_IN_MEMORY_LIMIT else None)
        interval = _positive((tif.imagej_metadata or {}).get("finterval")) if tif.is_imagej else None
    y, x = axes.rfind("Y"), axes.rfind("X")
    if y < 0 or x < 0:
        raise SequenceError(f"'{path.name}' does not hold 2-D images (its axes are {axes}).")
    others = [i for i, a in enumerate(axes) if i not in (y, x) and a not in "CS"]
    time = next((i for i in others if shape[i] > 1), others[0] if others else None)
    kept = [i for i in range(len(axes)) if i in (y, x, time)]
    view = data[tuple(slice(None) if i in kept else 0 for i in range(len(axes)))]
    view = np.moveaxis(view, [kept.index(y), kept.index(x)], [-2, -1])
    if time is None:
        view = view[np.newaxis]
    count = min(view.shape[0], max_frames or view.shape[0])
    buf = _FrameBuffer(path.name, count, max_frames)
    for t in range(count):
        buf.add(view[t])
    meta = {"format": "tiff", "axes": axes, "shape": list(shape), "dtype": str(series.dtype)}
    return buf.finish(), interval, None, meta


# ----------------------------------------------------------------------------- folder of frames


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.suffix.lower() in FRAME_IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _load_folder(path: Path, max_frames: int | None):
    import imageio.v3 as iio

    files = _frame_files(path)
    if not files:
        raise SequenceError(f"The folder '{path.name}' contains no frame images "
                            f"({', '.join(FRAME_IMAGE_SUFFIXES)}); put one image per frame in it.")
    files = files[:max_frames] if max_frames else files
    buf = _FrameBuffer(path.name, len(files), max_frames)
    for f in files:
        try:
            image = iio.imread(f)
        except Exception as e:
            raise SequenceError(f"The frame image '{f.name}' in '{path.name}' cannot be read ({e}).") from e
        buf.add(image[..., 0] if image.ndim == 3 else image)
    return buf.finish(), None, None, {"format": "folder", "files": [f.name for f in files]}


# ----------------------------------------------------------------------------- NumPy


def _load_numpy(path: Path, max_frames: int | None):
    """NPY ``(T, H, W)`` or ``(T, H, W, C)`` with C <= 4 (channel 0 kept);
    NPZ: the array named 'frames', else 'image', else the first one, plus the
    optional scalars ``frame_interval_s`` and ``pixel_spacing_mm`` (dy, dx)
    (as napari-nmsr's sample files carry them)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] != b"PK" and magic != b"\x93NUMPY":
        raise SequenceError(f"'{path.name}' is not a NumPy file (it is damaged, or another format renamed).")
    key = None
    interval, spacing = None, None
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise SequenceError(f"'{path.name}' is an empty NPZ archive.")
                key = next((k for k in ("frames", "image") if k in archive.files), archive.files[0])
                check_npz_file(path, SequenceError, "a sequence", keys=[key, "frame_interval_s", "pixel_spacing_mm"])
                array = archive[key]
                interval, spacing = _npz_geometry(archive)
        else:
            if check_npy_file(path, SequenceError, "a sequence")[1].hasobject:
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "pickle" not in str(e):
            raise
        raise SequenceError(f"'{path.name}' holds Python objects, not pixel values; save the frames as a "
                            "numeric (T, H, W) array.") from e
    if array.ndim == 4 and array.shape[-1] <= 4:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise SequenceError(f"'{path.name}' holds an array of shape {array.shape}; expected frames as (T, H, W).")
    count = min(array.shape[0], max_frames or array.shape[0])
    buf = _FrameBuffer(path.name, count, max_frames)
    for t in range(count):
        buf.add(array[t])
    return buf.finish(), interval, spacing, {"format": path.suffix.lower()[1:], "dtype": str(array.dtype), "key": key}


def _npz_geometry(archive) -> tuple[float | None, tuple[float, float] | None]:
    """Optional ``frame_interval_s`` and ``pixel_spacing_mm`` of an NPZ, when positive and finite."""
    interval = spacing = None
    if "frame_interval_s" in archive.files:
        v = np.asarray(archive["frame_interval_s"], dtype=np.float64).ravel()
        if v.size == 1 and np.isfinite(v[0]) and v[0] > 0:
            interval = float(v[0])
    if "pixel_spacing_mm" in archive.files:
        v = np.asarray(archive["pixel_spacing_mm"], dtype=np.float64).ravel()
        if v.size == 2 and np.isfinite(v).all() and (v > 0).all():
            spacing = (float(v[0]), float(v[1]))
    return interval, spacing


# ----------------------------------------------------------------------------- dispatch


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _kind(path: Path) -> str | None:
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    for kind, suffixes in (("dicom", DICOM_SUFFIXES), ("video", VIDEO_SUFFIXES), ("tiff", TIFF_SUFFIXES),
                           ("numpy", (".npy", ".npz"))):
        if suffix in suffixes:
            return kind
    return "dicom" if _has_dicom_magic(path) else None


_READERS = {
    "dicom": (_load_dicom, "a DICOM image"),
    "video": (_load_video, "a video"),
    "tiff": (_load_tiff, "a TIFF image"),
    "folder": (_load_folder, "a folder of frames"),
    "numpy": (_load_numpy, "a NumPy array file"),
}


def can_read(path: str | os.PathLike) -> bool:
    """Whether :func:`load_sequence` would try this path: a supported file, a
    DICOM file without suffix, or a folder holding frame images. Never raises."""
    try:
        p = Path(path)
        if p.is_dir():
            return bool(_frame_files(p))
        return p.is_file() and _kind(p) is not None
    except (OSError, TypeError, ValueError):
        return False


def load_sequence(path: str | os.PathLike, *, max_frames: int | None = None) -> EchoSequence:
    """Read an echo cine: ``frames`` ``(T, H, W)`` float32 in ``[0, 1]`` plus timing and spacing.

    ``max_frames`` keeps only the first frames (a quick preview). Raises
    :class:`SequenceError` for anything wrong with the file, worded for the
    person who exported it; the decoder's own exception is chained as the cause.
    """
    if max_frames is not None and max_frames < 2:
        raise ValueError("max_frames must be at least 2 (registration needs two frames)")
    path = Path(path).expanduser()
    if not path.exists():
        raise SequenceError(f"'{path}' does not exist; check the name and that the drive or share is connected.")
    kind = _kind(path)
    if kind is None:
        raise SequenceError(f"'{path.name}' is not a format napari-nmsr reads. Use DICOM, video "
                            f"({', '.join(VIDEO_SUFFIXES)}), multi-page TIFF, NPY/NPZ or a folder of PNG/JPEG frames.")
    reader, label = _READERS[kind]
    try:
        frames, interval, spacing, meta = reader(path, max_frames)
    except SequenceError:
        raise
    except PermissionError as e:
        raise SequenceError(f"'{path.name}' cannot be opened: permission denied.") from e
    except MemoryError as e:
        raise SequenceError(f"'{path.name}' is too large to load into memory; load fewer frames.") from e
    except Exception as e:
        raise SequenceError(f"'{path.name}' could not be read as {label}: the file is damaged, incomplete or not "
                            f"really {label} ({type(e).__name__}: {e}).") from e
    _check_sequence(frames, path.name)
    return EchoSequence(frames, interval, spacing, str(path), meta)
