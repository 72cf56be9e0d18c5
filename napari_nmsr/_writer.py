"""npe2 writers: tracked contours (CSV, JSON), fields (NPZ), masks (TIFF).

Each is a thin wrapper over :mod:`napari_nmsr.core.export` /
:meth:`RegistrationResult.save`, which write atomically (temporary file,
then rename). napari calls ``writer(path, data, attributes)`` for one layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_nmsr.core.errors import MaskError, ResultFileError
from napari_nmsr.core.export import save_contours_csv, save_contours_json, save_masks

__all__ = [
    "write_contours_csv",
    "write_contours_json",
    "write_fields_npz",
    "write_masks_tiff",
    "contours_from_points",
]


def contours_from_points(data: Any, attributes: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """Points layer (t, y, x) rows -> contours (T, N, 2), outside (T, N), first frame.

    Points are grouped by frame and ordered by the ``point`` feature when the
    layer has it (the panel's tracked contour does); every frame must hold
    the same number of points.
    """
    pts = np.asarray(data, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(pts) == 0:
        raise MaskError(f"Expected a points layer with (t, y, x) or (y, x) rows, got shape {pts.shape}.")
    if pts.shape[1] == 2:
        pts = np.column_stack([np.zeros(len(pts)), pts])
    features = attributes.get("features")
    features = {} if features is None else features
    order_key = np.asarray(features["point"]) if "point" in features else np.arange(len(pts))
    outside_all = np.asarray(features["outside"], bool) if "outside" in features else np.zeros(len(pts), bool)
    frames = np.round(pts[:, 0]).astype(int)
    uniq = np.unique(frames)
    counts = {int((frames == t).sum()) for t in uniq}
    if len(counts) != 1:
        raise MaskError(f"Each frame must hold the same number of contour points (found {sorted(counts)}).")
    first, last = int(uniq.min()), int(uniq.max())
    if len(uniq) != last - first + 1:
        raise MaskError("The contour skips frames; export a contour with points on consecutive frames.")
    n = counts.pop()
    contours = np.empty((len(uniq), n, 2))
    outside = np.zeros((len(uniq), n), bool)
    for i, t in enumerate(uniq):
        rows = np.flatnonzero(frames == t)
        rows = rows[np.argsort(order_key[rows], kind="stable")]
        contours[i] = pts[rows, 1:]
        outside[i] = outside_all[rows]
    return contours, outside, first


def _spacing(attributes: dict):
    meta = attributes.get("metadata") or {}
    spacing = meta.get("pixel_spacing_mm") or (meta.get("nmsr") or {}).get("pixel_spacing_mm")
    return None if spacing is None else (float(spacing[0]), float(spacing[1]))


def _interval(attributes: dict):
    meta = attributes.get("metadata") or {}
    dt = meta.get("frame_interval_s") or (meta.get("nmsr") or {}).get("frame_interval_s")
    return None if dt is None else float(dt)


def write_contours_csv(path: str, data: Any, attributes: dict) -> list[str]:
    contours, outside, first = contours_from_points(data, attributes)
    out = save_contours_csv(path, contours, outside=outside, pixel_spacing_mm=_spacing(attributes), first_frame=first,
                            frame_interval_s=_interval(attributes), with_units=True)
    return [str(out)]


def write_contours_json(path: str, data: Any, attributes: dict) -> list[str]:
    contours, outside, first = contours_from_points(data, attributes)
    meta = {"layer": attributes.get("name", ""), "software": "napari-nmsr"}
    out = save_contours_json(
        path, contours, outside=outside, pixel_spacing_mm=_spacing(attributes), first_frame=first, metadata=meta,
        frame_interval_s=_interval(attributes),
    )
    return [str(out)]


def write_fields_npz(path: str, data: Any, attributes: dict) -> list[str]:
    """The full-resolution fields of every scale behind a panel's (or reader's) Vectors layer."""
    result = (attributes.get("metadata") or {}).get("nmsr_result")
    if result is None:
        raise ResultFileError(
            "This vectors layer holds arrows only, not NMSR fields: save the 'NMSR motion' layer of a run "
            "(or use Export > Fields in the NMSR panel)."
        )
    return [str(result.save(path))]


def write_masks_tiff(path: str, data: Any, attributes: dict) -> list[str]:
    """Masks (T, H, W) (any non-zero label is inside) as uint8 0/255 TIFF."""
    return [str(save_masks(path, np.asarray(data)))]
