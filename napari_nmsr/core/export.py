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

Temporaries are named ``.<target>.nmsr-tmp-<pid>-<random><suffix>``; they are
removed on every exit path Python sees, and one left by a killed process is
removed by the next write to the same target.

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

import atexit
import csv
import glob
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MaskError, ResultFileError

__all__ = [
    "TEMP_MARKER",
    "temporary_files",
    "remove_stale_temporaries",
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


#: Marker in the name of every temporary file: ``.<target name>.nmsr-tmp-<pid>-<random><suffix>``.
TEMP_MARKER = ".nmsr-tmp-"
#: A temporary whose writer cannot be asked (another computer on a shared drive) is stale after this long.
STALE_AFTER_S = 24 * 3600
_LIVE: set[Path] = set()  # temporaries this process is writing now (removed at exit if still there)


def temporary_files(path) -> list[Path]:
    """The temporaries of writes to ``path`` in its folder (ours and older versions' ``.<name>.*.tmp<suffix>``)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    name = glob.escape(target.name)
    found = set(folder.glob(f".{name}{TEMP_MARKER}*")) | set(folder.glob(f".{name}.*.tmp{glob.escape(target.suffix)}"))
    return sorted(found)


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that named ``tmp`` may still be writing it."""
    try:
        age = time.time() - tmp.stat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return False
    rest = tmp.name.rpartition(TEMP_MARKER)[2]
    pid_text = rest.split("-", 1)[0]
    if TEMP_MARKER not in tmp.name or not pid_text.isdigit():
        return age < 60  # an older version's name (no pid): stale once it is a minute old
    pid = int(pid_text)
    if pid == os.getpid():
        return tmp in _LIVE
    if os.name == "nt":  # no signal-0 probe on Windows: trust the age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_temporaries(path) -> list[Path]:
    """Delete the temporaries a killed write to ``path`` left behind; returns what was removed."""
    removed = []
    for tmp in temporary_files(path):
        if not _writer_alive(tmp):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


@atexit.register
def _remove_live_temporaries() -> None:
    for tmp in list(_LIVE):
        tmp.unlink(missing_ok=True)
    _LIVE.clear()


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary is ``.<name>.nmsr-tmp-<pid>-<random><suffix>``: hidden, it
    keeps the target's extension (libraries such as numpy and tifffile pick
    the format from it), and the pid lets the next write to the same target
    remove it if this process is killed before it could (see
    :func:`remove_stale_temporaries`). On any exception, KeyboardInterrupt
    and SystemExit included, and at interpreter exit, it is removed and the
    target left untouched.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"The folder {folder} does not exist.")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give a file name to write.")
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARKER}{os.getpid()}-", suffix=target.suffix, dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    _LIVE.add(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _LIVE.discard(tmp)


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
        raise MaskError(f"Cannot write masks to '{suffix}' files; use .npy, .tif or .tiff.")
    return atomic_write(path, write)


def load_masks(path) -> np.ndarray:
    """Read a mask file (``.npy``, ``.tif``/``.tiff``) as bool ``(H, W)`` or ``(T, H, W)``; MaskError otherwise.

    The values must be booleans or 0/1 (a TIFF may also hold 0/255, as
    :func:`save_masks` and ImageJ write them): anything else (NaN, 0.5, 7)
    is ambiguous and refused, never silently turned into True. The size is
    checked from the header before the data are read (:mod:`.limits`).
    """
    from .limits import check_npy_file, human_bytes, memory_budget_bytes

    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file not found: {path}" if not path.is_dir() else f"{path} is a folder, not a mask file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        _, dtype = check_npy_file(path, MaskError, "a mask file")
        if dtype.hasobject:
            raise MaskError(f"'{path.name}' holds Python objects, not mask values; save a bool array with numpy.save.")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise MaskError(f"'{path.name}' is a damaged .npy mask file ({type(exc).__name__}: {exc})") from exc
        allowed = (0, 1)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                nbytes = int(np.prod(series.shape, dtype=object)) * series.dtype.itemsize
                if nbytes > memory_budget_bytes():
                    raise MaskError(f"'{path.name}' would need {human_bytes(nbytes)} of memory, more than the limit "
                                    f"of {human_bytes(memory_budget_bytes())}; raise NMSR_MEMORY_BUDGET_GB if it is genuine.")
                arr = series.asarray()
        except MaskError:
            raise
        except Exception as exc:
            raise MaskError(f"'{path.name}' is not a readable TIFF mask: it is damaged, or another format renamed "
                            f"({type(exc).__name__}: {exc})") from exc
        allowed = (0, 1, 255)
    else:
        raise MaskError(f"cannot read masks from '{path.name}': masks are .npy (numpy.save of a bool array), "
                        ".tif or .tiff files.")
    return _binary_mask(arr, path.name, allowed)


def _binary_mask(arr: np.ndarray, name: str, allowed: tuple[int, ...]) -> np.ndarray:
    """Bool copy of a 2-D/3-D mask whose values are all in ``allowed`` (booleans always pass)."""
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise MaskError(f"'{name}' holds an array of shape {arr.shape}; a mask is (H, W) or (T, H, W).")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "iuf":
        raise MaskError(f"'{name}' holds {arr.dtype} values; a mask holds True/False or 0/1.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MaskError(f"'{name}' contains NaN or infinite values; a mask holds True/False or 0/1 only.")
    ok = np.isin(arr, allowed)
    if not ok.all():
        bad = arr[~ok].flat[0]
        raise MaskError(f"'{name}' holds the value {bad:g}; a mask holds True/False or {'/'.join(map(str, allowed))} "
                        "only (save the mask as booleans).")
    return arr != 0
