"""npe2 reader: echo sequences (DICOM, video, TIFF, frame folders, NPY/NPZ) and NMSR result files.

A sequence becomes one Image layer whose ``scale`` is (frame interval s,
dy mm, dx mm) when the file says so, with ``units`` and the facts the loader
found in ``metadata["nmsr"]``. A result ``.npz`` written by the engine
becomes the same Vectors layer the workflow panel shows.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable

from napari_nmsr.core.io import EchoSequence, can_read, load_sequence

__all__ = ["napari_get_reader", "read_sequence", "read_result", "sequence_layer", "is_result_file"]

LayerData = tuple[Any, dict, str]


def napari_get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for ``path``, or None when napari-nmsr does not read it."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.suffix.lower() == ".npz" and is_result_file(p):
        return read_result
    return read_sequence if can_read(p) else None


def is_result_file(path: str | Path) -> bool:
    """An NPZ the engine wrote (it holds 'fields' and 'format_version'); never raises."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except Exception:  # any damage (bad directory, unsupported zip version...) means "not a result"
        return False
    return {"fields.npy", "format_version.npy"} <= names


def sequence_layer(seq: EchoSequence, name: str | None = None) -> LayerData:
    """Image layer data tuple of a loaded sequence (scale/units only where known)."""
    dt = seq.frame_interval_s
    spacing = seq.pixel_spacing_mm
    scale = (dt or 1.0, *(spacing or (1.0, 1.0)))
    units = ("s" if dt else "pixel", *(("mm", "mm") if spacing else ("pixel", "pixel")))
    meta = {
        "nmsr": {
            "frame_interval_s": dt,
            "pixel_spacing_mm": None if spacing is None else tuple(float(v) for v in spacing),
            "source": seq.source,
            "file": dict(seq.metadata),
        }
    }
    kwargs = {
        "name": name or Path(seq.source).stem or "sequence",
        "scale": scale,
        "units": units,
        "axis_labels": ("t", "y", "x"),
        "colormap": "gray",
        "contrast_limits": (0.0, 1.0),
        "metadata": meta,
    }
    return seq.frames, kwargs, "image"


def read_sequence(path: str | list[str]) -> list[LayerData]:
    """Load one sequence; bad files raise SequenceError with a readable message."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [sequence_layer(load_sequence(path))]


def read_result(path: str | list[str]) -> list[LayerData]:
    """An NMSR result file as the Vectors layer (axes scale, t, y, x) of all its scales."""
    from napari_nmsr._widget.display import arrows_for_scale, concat_arrows, speed_units
    from napari_nmsr.core.result import RegistrationResult

    if isinstance(path, (list, tuple)):
        path = path[0]
    result = RegistrationResult.load(path)
    dt, spacing = result.frame_interval_s, result.pixel_spacing_mm
    masks = result.masks if result.masks is not None and result.n_scales \
        and result.masks.shape == (result.fields.shape[1] + 1, *result.fields.shape[-2:]) else None
    arrows = concat_arrows(
        arrows_for_scale(result.fields[k], k, frame_interval_s=dt, pixel_spacing_mm=spacing,
                         mask=masks)  # arrows only inside the run's masks, as the panel showed them
        for k in range(result.n_scales)
    )
    units = speed_units(dt, spacing)
    kwargs = {
        "name": f"{Path(path).stem} motion",
        "features": arrows.features,
        "edge_color": "speed",
        "edge_colormap": "turbo",
        "length": 3.0,
        "edge_width": 0.6,
        "vector_style": "arrow",
        "scale": (1.0, dt or 1.0, *(spacing or (1.0, 1.0))),
        "axis_labels": ("scale", "t", "y", "x"),
        "metadata": {"nmsr_result": result, "speed_units": units, "source": str(path)},
    }
    return [(arrows.data, kwargs, "vectors")]
