"""A registration result and its NPZ file (documented keys, versioned).

NPZ keys (format_version 1):

==================  =====================  ===========================================
key                 shape / dtype          meaning
==================  =====================  ===========================================
format_version      () int                 1
fields              (S, T-1, 2, H, W) f4   composed full-resolution field of each
                                           finished scale, coarse to fine, pixels,
                                           convention in ``convention_json``; the
                                           coarse scales' values are float16's
                                           (the run keeps them so: scale_fields)
scales              (S,) f8                the scales (1/8 ... 1)
mse, mean_cc        (S, T-1) f8            paper metrics per scale and frame pair
steps_run           (S,) i8                optimisation steps actually run
seconds             (S,) f8                wall time per scale
final_loss          (S,) f8                last loss value per scale
frame_interval_s    () f8                  seconds between frames (NaN if unknown)
pixel_spacing_mm    (2,) f8                (dy, dx) mm per pixel (NaN if unknown)
velocity_cm_s       (T-1, 2, H, W) f4      motion of the finest scale in cm/s
                                           (only when spacing and interval known)
masks               (T, H, W) bool         the masks the run was restricted to
                                           (only when it had masks)
refined             (S, T-1) bool          pairs whose field the scale changed;
                                           False where the guard kept the previous
                                           scale's field (only when the guard ran)
notes_json          () str                 a JSON list of what the engine decided
                                           beyond its plan, in words (an extended
                                           scale, the refinement's blur; only when
                                           it decided anything)
cancelled           () bool                the run was stopped before the last scale
config_json         () str                 the RegistrationConfig
convention_json     () str                 ``convention.CONVENTION``
device, software    () str                 where and with what it ran
==================  =====================  ===========================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .convention import CONVENTION, motion_from_field
from .errors import ResultFileError
from .export import atomic_write
from .scale_fields import ScaleFields, write_npy

__all__ = ["FORMAT_VERSION", "RESULT_KEYS", "RegistrationResult", "read_result_arrays", "check_result_arrays"]

FORMAT_VERSION = 1


@dataclass
class RegistrationResult:
    """Per-scale fields and metrics of one registered sequence."""

    #: (S, T-1, 2, H, W) float32: an array (a loaded file), or from :func:`~.register.register` a
    #: :class:`~.scale_fields.ScaleFields` (coarse scales kept in float16, read as float32)
    fields: np.ndarray | ScaleFields
    scales: tuple[float, ...]
    metrics: dict[str, np.ndarray]  # "mse", "mean_cc": (S, T-1)
    config: dict = field(default_factory=dict)
    cancelled: bool = False
    frame_interval_s: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    steps_run: np.ndarray | None = None
    seconds: np.ndarray | None = None
    final_loss: np.ndarray | None = None
    device: str = ""
    masks: np.ndarray | None = None  # (T, H, W) bool the run was restricted to, if any
    #: (S, T-1) bool: the pairs each scale refined; False where the guard kept the previous
    #: scale's field (``RegistrationConfig.guard``). None when no guard ran (every pair refined).
    refined: np.ndarray | None = None
    #: What the engine decided beyond its plan, in words (``ScaleDone.notes``: an extended scale,
    #: the refinement's blur), so a user and a benchmark can see which runs took which path.
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_scales(cls, done: Sequence, *, config: dict, cancelled: bool = False, frame_interval_s=None, pixel_spacing_mm=None, device: str = "",
                    fields: np.ndarray | None = None) -> "RegistrationResult":
        """Assemble from the engine's ``ScaleDone`` events (possibly none, if cancelled early).

        ``fields``: the events' fields already stacked (S, T-1, 2, H, W) float32, or the engine's
        :class:`~.scale_fields.ScaleFields`, used as is.
        """
        if isinstance(fields, ScaleFields):
            pass  # the engine's own store (coarse scales in float16; see .scale_fields)
        elif fields is not None:
            fields = np.asarray(fields, np.float32)
        elif done:  # as the engine kept them (the coarse scales in float16): no float32 copy of them
            fields = ScaleFields([d.field for d in done])
        else:
            fields = np.zeros((0, 0, 2, 0, 0), np.float32)
        return cls(
            fields=fields,
            scales=tuple(float(d.scale) for d in done),
            metrics={
                "mse": np.array([d.mse for d in done]) if done else np.zeros((0, 0)),
                "mean_cc": np.array([d.mean_cc for d in done]) if done else np.zeros((0, 0)),
            },
            config=config,
            cancelled=cancelled,
            frame_interval_s=frame_interval_s,
            pixel_spacing_mm=None if pixel_spacing_mm is None else tuple(float(v) for v in pixel_spacing_mm),
            steps_run=np.array([d.steps_run for d in done], dtype=np.int64),
            seconds=np.array([d.seconds for d in done], dtype=np.float64),
            final_loss=np.array([d.final_loss for d in done], dtype=np.float64),
            device=device,
            refined=_refined(done),
            notes=[text for d in done for text in getattr(d, "notes", ())],
        )

    # ------------------------------------------------------------------ views
    @property
    def n_scales(self) -> int:
        return len(self.scales)

    @property
    def final_field(self) -> np.ndarray:
        """The finest finished scale's field (T-1, 2, H, W)."""
        if not self.n_scales:
            raise ResultFileError("this result holds no finished scale (the run was cancelled before the first one)")
        return self.fields[-1]

    def velocity_cm_s(self, scale_index: int = -1) -> np.ndarray | None:
        """Motion in cm/s (T-1, 2, H, W) when spacing and frame interval are known, else None."""
        if self.frame_interval_s is None or self.pixel_spacing_mm is None or not self.n_scales:
            return None
        mm = np.asarray(self.pixel_spacing_mm, dtype=np.float32).reshape(1, 2, 1, 1)
        return motion_from_field(self.fields[scale_index]) * mm / 10.0 / np.float32(self.frame_interval_s)

    def metrics_table(self) -> list[dict]:
        """One row per scale: scale, mean and std of MSE and mean CC (as Table 1)."""
        rows = []
        for i, s in enumerate(self.scales):
            mse, cc = self.metrics["mse"][i], self.metrics["mean_cc"][i]
            rows.append({
                "scale": s,
                "mse": float(np.mean(mse)), "mse_std": float(np.std(mse)),
                "mean_cc": float(np.mean(cc)), "mean_cc_std": float(np.std(cc)),
                "steps": int(self.steps_run[i]) if self.steps_run is not None else None,
                "seconds": float(self.seconds[i]) if self.seconds is not None else None,
                # pairs this scale changed (None: no guard ran, so all of them)
                "refined": int(self.refined[i].sum()) if self.refined is not None else None,
                "pairs": int(np.asarray(mse).size),
            })
        return rows

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the NPZ atomically (a temporary file renamed into place)."""
        from .. import __version__

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        nan2 = np.array([np.nan, np.nan])
        payload = {
            "format_version": np.array(FORMAT_VERSION),
            "fields": self.fields if isinstance(self.fields, ScaleFields) else self.fields.astype(np.float32, copy=False),
            "scales": np.asarray(self.scales, dtype=np.float64),
            "mse": np.asarray(self.metrics["mse"], dtype=np.float64),
            "mean_cc": np.asarray(self.metrics["mean_cc"], dtype=np.float64),
            "steps_run": _or_empty(self.steps_run, np.int64),
            "seconds": _or_empty(self.seconds, np.float64),
            "final_loss": _or_empty(self.final_loss, np.float64),
            "frame_interval_s": np.array(np.nan if self.frame_interval_s is None else self.frame_interval_s),
            "pixel_spacing_mm": nan2 if self.pixel_spacing_mm is None else np.asarray(self.pixel_spacing_mm, dtype=np.float64),
            "cancelled": np.array(bool(self.cancelled)),
            "config_json": np.array(json.dumps(self.config, default=_jsonable)),
            "convention_json": np.array(json.dumps(CONVENTION)),
            "device": np.array(self.device),
            "software": np.array(f"napari-nmsr {__version__}"),
        }
        velocity = self.velocity_cm_s()
        if velocity is not None:
            payload["velocity_cm_s"] = velocity.astype(np.float32)
        if self.masks is not None:
            payload["masks"] = np.asarray(self.masks, dtype=bool)
        if self.refined is not None:
            payload["refined"] = np.asarray(self.refined, dtype=bool)
        if self.notes:
            payload["notes_json"] = np.array(json.dumps([str(t) for t in self.notes]))
        path.parent.mkdir(parents=True, exist_ok=True)
        check_result_arrays(path.name, payload)  # the checks load() makes: never write what cannot be read back
        return atomic_write(path, lambda tmp: _write_npz(tmp, payload))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RegistrationResult":
        """Read and validate a result file (:func:`read_result_arrays`); ResultFileError otherwise."""
        path = Path(path)
        data = read_result_arrays(path)
        fi = float(data["frame_interval_s"])
        px = data["pixel_spacing_mm"]
        return cls(
            fields=data["fields"].astype(np.float32, copy=False),
            scales=tuple(float(s) for s in data["scales"]),
            metrics={"mse": data["mse"], "mean_cc": data["mean_cc"]},
            config=json.loads(str(data["config_json"])),
            cancelled=bool(data["cancelled"]),
            frame_interval_s=None if np.isnan(fi) else fi,
            pixel_spacing_mm=None if np.isnan(px).any() else (float(px[0]), float(px[1])),
            steps_run=data["steps_run"] if len(data["steps_run"]) else None,
            seconds=data["seconds"] if len(data["seconds"]) else None,
            final_loss=data["final_loss"] if len(data["final_loss"]) else None,
            device=str(data["device"]),
            masks=None if data.get("masks") is None else np.asarray(data["masks"], dtype=bool),
            refined=None if data.get("refined") is None else np.asarray(data["refined"], dtype=bool),
            notes=json.loads(str(data["notes_json"])) if "notes_json" in data else [],
        )


def _write_npz(path, payload: dict) -> None:
    """What ``np.savez(path, **payload)`` writes, with ``fields`` streamed a pair at a time
    (:func:`~.scale_fields.write_npy`): no float32 copy of every scale is made to save them."""
    import zipfile

    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in payload.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as fid:
                if isinstance(value, ScaleFields):
                    write_npy(fid, value)
                else:
                    np.lib.format.write_array(fid, np.asanyarray(value), allow_pickle=False)


def _refined(done: Sequence) -> np.ndarray | None:
    """(S, T-1) bool from the events' ``kept_previous`` (None when no scale was guarded)."""
    kept = [d.kept_previous for d in done]
    if not done or all(k is None for k in kept):
        return None
    n = len(np.asarray(done[0].mse))
    return np.array([np.ones(n, bool) if k is None else ~np.asarray(k, bool) for k in kept])


#: key -> (dtype kinds accepted, shape pattern): "S" scales, "P" frame pairs, "H"/"W" pixels, ints fixed.
RESULT_KEYS = {
    "format_version": ("iu", ()),
    "fields": ("f", ("S", "P", 2, "H", "W")),
    "scales": ("f", ("S",)),
    "mse": ("f", ("S", "P")),
    "mean_cc": ("f", ("S", "P")),
    "steps_run": ("iu", ("S?",)),
    "seconds": ("f", ("S?",)),
    "final_loss": ("f", ("S?",)),
    "frame_interval_s": ("f", ()),
    "pixel_spacing_mm": ("f", (2,)),
    "cancelled": ("b", ()),
    "config_json": ("U", ()),
    "convention_json": ("U", ()),
    "device": ("U", ()),
    "software": ("U", ()),
}
#: Keys a result may carry in addition (checked when present).
OPTIONAL_KEYS = {"velocity_cm_s": ("f", ("P", 2, "H", "W")), "masks": ("b", ("T", "H", "W")),
                 "refined": ("b", ("S", "P")), "notes_json": ("U", ())}


def read_result_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a result file, every key checked; raises ResultFileError naming the file and key.

    Checked before anything is decompressed (from the headers): the size
    budget (:mod:`.limits`), every key's presence, dtype and shape, and shapes
    consistent across scales, fields and metrics. Then: ``format_version``,
    finite fields and scales, no infinite metric (NaN is allowed there: a
    metric of a blank region), geometry either unknown (NaN) or positive,
    ``config_json`` an object (variant a name, scales a list of numbers, when given), and
    ``convention_json`` exactly this version's :data:`~.convention.CONVENTION`.
    ``velocity_cm_s`` is only checked from its header (it is not loaded).
    """
    from .limits import check_npz_file

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ResultFileError(f"result file not found: {path}")
    headers = check_npz_file(path, ResultFileError, "a result", keys=[*RESULT_KEYS, *OPTIONAL_KEYS])
    if "fields" not in headers or "format_version" not in headers:
        raise ResultFileError(f"{name} is not a napari-nmsr result (no 'fields'/'format_version' keys)")
    dims: dict[str, int] = {}
    _check_header(name, "format_version", *headers["format_version"], *RESULT_KEYS["format_version"], dims)
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version != FORMAT_VERSION:
                raise ResultFileError(
                    f"{name} was written by result format version {version}; this napari-nmsr reads version "
                    f"{FORMAT_VERSION}. Re-run the registration with this version.")
            missing = [k for k in RESULT_KEYS if k not in headers]
            if missing:
                raise ResultFileError(f"{name} is damaged or incomplete: the key(s) "
                                      f"{', '.join(map(repr, missing))} are missing")
            for key, (kinds, pattern) in {**RESULT_KEYS, **OPTIONAL_KEYS}.items():
                if key in headers:
                    _check_header(name, key, *headers[key], kinds, pattern, dims)
            data = {k: z[k] for k in RESULT_KEYS}
            for key in ("refined", "notes_json"):
                if key in headers:
                    data[key] = z[key]
            if "masks" in headers:
                data["masks"] = z["masks"]
                if data["masks"].shape[0] != data["fields"].shape[1] + 1:
                    raise ResultFileError(f"{name}: 'masks' has {data['masks'].shape[0]} frames but 'fields' has "
                                          f"{data['fields'].shape[1]} frame pairs; the file is inconsistent")
    except ResultFileError:
        raise
    except Exception as exc:  # zlib, CRC and truncation errors of a damaged archive
        raise ResultFileError(f"{name} is damaged: its arrays cannot be read ({type(exc).__name__}: {exc})") from exc
    _check_values(name, data)
    return data


def check_result_arrays(name: str, data: dict[str, np.ndarray]) -> None:
    """The checks of :func:`read_result_arrays` on arrays in memory (``save`` runs them before writing)."""
    missing = [k for k in RESULT_KEYS if k not in data]
    if missing:
        raise ResultFileError(f"{name}: the key(s) {', '.join(map(repr, missing))} are missing")
    dims: dict[str, int] = {}
    for key, (kinds, pattern) in {**RESULT_KEYS, **OPTIONAL_KEYS}.items():
        if key in data:
            arr = data[key] if isinstance(data[key], ScaleFields) else np.asarray(data[key])
            _check_header(name, key, arr.shape, arr.dtype, kinds, pattern, dims)
    if int(data["format_version"]) != FORMAT_VERSION:
        raise ResultFileError(f"{name}: format_version {int(data['format_version'])} is not {FORMAT_VERSION}")
    _check_values(name, {k: v if isinstance(v, ScaleFields) else np.asarray(v) for k, v in data.items()})


def _check_header(name, key, shape, dtype, kinds, pattern, dims) -> None:
    if dtype.kind not in kinds:
        raise ResultFileError(f"{name}: '{key}' holds {dtype} values, expected "
                              f"{ {'f': 'floats', 'iu': 'integers', 'b': 'a boolean', 'U': 'text'}[kinds] }")
    if len(shape) != len(pattern):
        raise ResultFileError(f"{name}: '{key}' has shape {shape}, expected {_pattern_text(pattern)}")
    for size, want in zip(shape, pattern):
        if isinstance(want, int):
            ok = size == want
        elif want.endswith("?"):  # (S,) or (0,) = not recorded
            ok = size in (0, dims.get(want[0], size))
        else:
            ok = dims.setdefault(want, size) == size
        if not ok:
            raise ResultFileError(
                f"{name}: '{key}' has shape {shape} but the other arrays give "
                f"{_pattern_text(pattern, dims)}; the file is inconsistent (damaged or edited)")


def _pattern_text(pattern, dims=None) -> str:
    dims = dims or {}
    parts = [str(dims.get(p.rstrip("?"), p.rstrip("?"))) if isinstance(p, str) else str(p) for p in pattern]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _check_values(name: str, d: dict) -> None:
    fields, scales = d["fields"], d["scales"]
    n_scales = fields.shape[0]
    if n_scales and (fields.shape[1] < 1 or fields.shape[3] < 1 or fields.shape[4] < 1):
        raise ResultFileError(f"{name}: 'fields' has shape {fields.shape}, expected (S, T-1, 2, H, W) with T >= 2")
    if n_scales == 0 and not bool(d["cancelled"]):
        raise ResultFileError(f"{name}: holds no scale but is not marked as a cancelled run; the file is damaged")
    if not np.isfinite(scales).all() or (scales <= 0).any() or (scales > 1).any() or (np.diff(scales) <= 0).any():
        raise ResultFileError(f"{name}: 'scales' must be increasing values in (0, 1], got {scales.tolist()}")
    stored = [fields.stored(k) for k in range(n_scales)] if isinstance(fields, ScaleFields) else fields[:n_scales]
    bad = np.array([not np.isfinite(f).all() for f in stored], bool)
    if bad.any():
        raise ResultFileError(f"{name}: 'fields' contains NaN or infinite values (scale index "
                              f"{int(np.argmax(bad))}); the registration diverged or the file is damaged")
    for key in ("mse", "mean_cc", "seconds", "final_loss"):
        if np.isinf(d[key]).any():
            raise ResultFileError(f"{name}: '{key}' contains infinite values; the file is damaged")
    if (d["steps_run"] < 0).any():
        raise ResultFileError(f"{name}: 'steps_run' holds negative step counts; the file is damaged")
    fi, px = float(d["frame_interval_s"]), d["pixel_spacing_mm"]
    if not (np.isnan(fi) or (np.isfinite(fi) and fi > 0)):
        raise ResultFileError(f"{name}: 'frame_interval_s' is {fi}; expected seconds > 0, or NaN when unknown")
    if not (np.isnan(px).all() or (np.isfinite(px).all() and (px > 0).all())):
        raise ResultFileError(f"{name}: 'pixel_spacing_mm' is {px.tolist()}; expected two mm > 0, or NaN when unknown")
    config = _parse_json(name, "config_json", d["config_json"])
    if not isinstance(config, dict):
        raise ResultFileError(f"{name}: 'config_json' holds a {type(config).__name__}, expected an object "
                              "(the RegistrationConfig)")
    if not isinstance(config.get("variant", ""), str):
        raise ResultFileError(f"{name}: 'config_json' has a variant that is not a name: {config['variant']!r}")
    conf_scales = config.get("scales", [])
    if not isinstance(conf_scales, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in conf_scales):
        raise ResultFileError(f"{name}: 'config_json' has scales that are not a list of numbers: {conf_scales!r}")
    if "notes_json" in d:
        notes = _parse_json(name, "notes_json", d["notes_json"])
        if not isinstance(notes, list) or not all(isinstance(t, str) for t in notes):
            raise ResultFileError(f"{name}: 'notes_json' is not a list of texts; the file is damaged or edited")
    convention = _parse_json(name, "convention_json", d["convention_json"])
    if convention != json.loads(json.dumps(CONVENTION)):
        label = convention.get("name") if isinstance(convention, dict) else None
        raise ResultFileError(
            f"{name}: 'convention_json' describes the field convention {label!r}, not "
            f"{CONVENTION['name']!r} which this napari-nmsr uses; its fields would be misread")


def _parse_json(name: str, key: str, value) -> object:
    try:
        return json.loads(str(value))
    except ValueError as exc:
        raise ResultFileError(f"{name}: '{key}' is not valid JSON ({exc})") from exc


def _or_empty(x, dtype):
    return np.zeros(0, dtype) if x is None else np.asarray(x, dtype=dtype)


def _jsonable(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)
