"""Writing contours and masks to disk, atomically.

Every writer goes through :func:`atomic_write`: the data are written to a
temporary file in the target's folder, then moved over the target with
``os.replace`` (atomic on one file system). A crash or an error half-way
leaves the previous file (or no file) and never a truncated one.

Contour CSV columns (one row per point per frame)::

    frame[, time_s], point, y, x[, y_mm, x_mm], outside[, units]

``y``/``x`` are pixels (row, column; pixel centres at integers), the ``_mm``
columns appear when the pixel spacing is known (``y_mm = y * dy``), and
``outside`` is 1 for a tracked point that has left the image (0 otherwise).
``time_s`` (= frame * frame interval) appears when the frame interval is
given; ``units`` (``with_units=True``) names the unit of every column, e.g.
``frame: index; time_s: s; y,x: px; y_mm,x_mm: mm``.

Contour JSON schema (``format`` "napari-nmsr-contours", ``version`` 1)::

    {"format": "napari-nmsr-contours", "version": 1,
     "coordinates": "...", "pixel_spacing_mm": [dy, dx] | null,
     "frame_interval_s": dt | null, "units": {"points": "px", "points_mm": "mm", "time_s": "s"},
     "n_frames": T, "n_points": N, "metadata": {...},
     "frames": [{"frame": t, "time_s": t * dt (only with dt),
                 "points": [[y, x], ...],
                 "points_mm": [[y_mm, x_mm], ...]   (only with spacing),
                 "outside": [false, ...]}, ...]}

Masks: ``.npy`` holds the (T, H, W) bool array; ``.tif``/``.tiff`` holds
uint8 0/255 (the ImageJ convention for binary masks; read back as > 0).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MaskError, ResultFileError

__all__ = [
    "atomic_path",
    "atomic_write",
    "save_contours_csv",
    "load_contours_csv",
    "save_contours_json",
    "load_contours_json",
    "save_masks",
    "load_masks",
]

JSON_FORMAT = "napari-nmsr-contours"
JSON_VERSION = 1


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, not thread-safe


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary name keeps the target's extension (libraries such as numpy
    and tifffile pick the format from it). On any exception the temporary is
    removed and the target is left untouched.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder {folder} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(temp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _check_contours(contours, outside):
    c = np.asarray(contours, dtype=np.float64)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3 or c.shape[-1] != 2:
        raise MaskError(f"Expected contours as (T, N, 2) (y, x), got shape {c.shape}.")
    o = np.zeros(c.shape[:2], dtype=bool) if outside is None else np.asarray(outside, dtype=bool).reshape(c.shape[:2])
    return c, o


def save_contours_csv(path, contours, *, outside=None, pixel_spacing_mm=None, first_frame: int = 0,
                      frame_interval_s: float | None = None, with_units: bool = False) -> Path:
    """Write contours (T, N, 2) (y, x) pixels to CSV (columns in the module docstring)."""
    c, o = _check_contours(contours, outside)
    timed = frame_interval_s is not None
    header = (["frame"] + (["time_s"] if timed else []) + ["point", "y", "x"]
              + (["y_mm", "x_mm"] if pixel_spacing_mm is not None else []) + ["outside"]
              + (["units"] if with_units else []))
    units = "; ".join(["frame: index"] + (["time_s: s"] if timed else []) + ["y,x: px"]
                      + (["y_mm,x_mm: mm"] if pixel_spacing_mm is not None else []) + ["outside: 0/1"])

    def write(tmp: Path):
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(header)
            for t in range(c.shape[0]):
                for k in range(c.shape[1]):
                    y, x = c[t, k]
                    row = [t + first_frame] + ([f"{(t + first_frame) * frame_interval_s:.6f}"] if timed else [])
                    row += [k, f"{y:.4f}", f"{x:.4f}"]
                    if pixel_spacing_mm is not None:
                        row += [f"{y * pixel_spacing_mm[0]:.5f}", f"{x * pixel_spacing_mm[1]:.5f}"]
                    out.writerow(row + [int(o[t, k])] + ([units] if with_units else []))

    return atomic_write(path, write)


def load_contours_csv(path):
    """Read a contour CSV back: (contours (T, N, 2) pixels, outside (T, N) bool, first_frame)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"frame", "point", "y", "x"} <= set(rows[0]):
        raise ResultFileError(f"{path} is not a napari-nmsr contour CSV (needs frame, point, y, x columns).")
    frames = np.array([int(r["frame"]) for r in rows])
    points = np.array([int(r["point"]) for r in rows])
    first, T, N = frames.min(), frames.max() - frames.min() + 1, points.max() + 1
    c = np.full((T, N, 2), np.nan)
    o = np.zeros((T, N), dtype=bool)
    c[frames - first, points] = [[float(r["y"]), float(r["x"])] for r in rows]
    o[frames - first, points] = [r.get("outside", "0") == "1" for r in rows]
    return c, o, int(first)


def save_contours_json(path, contours, *, outside=None, pixel_spacing_mm=None, first_frame: int = 0,
                       metadata: dict | None = None, frame_interval_s: float | None = None) -> Path:
    """Write contours (T, N, 2) to JSON (schema in the module docstring)."""
    c, o = _check_contours(contours, outside)
    spacing = None if pixel_spacing_mm is None else [float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])]
    frames = []
    for t in range(c.shape[0]):
        entry = {"frame": t + first_frame}
        if frame_interval_s is not None:
            entry["time_s"] = round((t + first_frame) * float(frame_interval_s), 6)
        entry["points"] = np.round(c[t], 4).tolist()
        if spacing is not None:
            entry["points_mm"] = np.round(c[t] * spacing, 5).tolist()
        entry["outside"] = o[t].tolist()
        frames.append(entry)
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "coordinates": "pixels, (y, x) = (row, column), pixel centres at integers",
        "pixel_spacing_mm": spacing,
        "frame_interval_s": None if frame_interval_s is None else float(frame_interval_s),
        "units": {"points": "px", "points_mm": "mm", "time_s": "s"},
        "n_frames": int(c.shape[0]),
        "n_points": int(c.shape[1]),
        "metadata": metadata or {},
        "frames": frames,
    }

    def write(tmp: Path):
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=1)

    return atomic_write(path, write)


def load_contours_json(path) -> dict:
    """Read a contour JSON back; adds "contours" (T, N, 2) and "outside" (T, N) arrays."""
    with open(path) as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ResultFileError(f"{path} is not a napari-nmsr contour file.")
    if doc.get("version", 0) > JSON_VERSION:
        raise ResultFileError(f"{path} was written by a newer napari-nmsr (version {doc['version']}).")
    doc["contours"] = np.array([f["points"] for f in doc["frames"]], dtype=np.float64).reshape(-1, doc["n_points"], 2)
    doc["outside"] = np.array([f["outside"] for f in doc["frames"]], dtype=bool).reshape(-1, doc["n_points"])
    return doc


def save_masks(path, masks) -> Path:
    """Write masks (T, H, W) or (H, W) bool to ``.npy`` or ``.tif``/``.tiff`` atomically."""
    m = np.asarray(masks) != 0
    if m.ndim not in (2, 3) or m.size == 0:
        raise MaskError(f"Expected masks as (T, H, W) or (H, W), got shape {m.shape}.")
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        def write(tmp: Path):
            with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a name
                np.save(fh, m)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        def write(tmp: Path):
            tifffile.imwrite(tmp, m.astype(np.uint8) * 255, photometric="minisblack")
    else:
        raise ValueError(f"Cannot write masks to '{suffix}' files; use .npy, .tif or .tiff.")
    return atomic_write(path, write)


def load_masks(path) -> np.ndarray:
    """Read masks written by :func:`save_masks` as a bool array."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False) != 0
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path) > 0
    raise ValueError(f"Cannot read masks from '{suffix}' files; use .npy, .tif or .tiff.")
