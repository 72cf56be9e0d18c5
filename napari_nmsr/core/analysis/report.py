"""Per-pair analysis report of a result file, as a dict, JSON and CSV.

Schema (``schema_version`` 1) of the dict / JSON written by ``nmsr analyze``::

    schema_version   1
    software         "napari-nmsr X.Y.Z"
    source           result file path or null
    scale, scale_index   the field's scale (1 = finest) and its index
    frame_interval_s, pixel_spacing_mm   [dy, dx] mm, or null when unknown
    mask             "given" or "none"
    notes            list of strings (what could not be computed and why)
    definitions      {quantity: how it is computed} (sign conventions included)
    units            {quantity: unit string}; lengths are mm and times s when
                     the file knows them, else px and frames
    lv_axis          {base_xy, apex_xy, direction_yx, normal_yx, length_px,
                     width_px} of the first mask frame, or null
    summary          cycle-level numbers (kinetic-energy fluctuation, ...)
    pairs            one entry per frame pair, in order:
        t                        pair index (frames t -> t+1); the field lives on frame t+1
        time                     time of frame t+1 (units["time"])
        vortex_centre_xy         [x, y] px of the main vortex (x = column,
                                 y = row, full-resolution frame), null if none
        vortex_centre_mm         [x, y] mm, null if none or no spacing
        vortex_rotation          "ccw" / "cw" as seen on screen, null if none
        vortex_area, vortex_circulation, vortex_relative_strength,
        vortex_mean_vorticity, vortex_peak_vorticity, vortex_gamma1_peak,
        vortex_kinetic_energy, vortex_depth, vortex_transverse_position,
        vortex_length, vortex_width, vortex_sphericity    (main vortex; null if none)
        n_vortices, vortices     every vortex core found (same keys without
                                 the "vortex_" prefix, plus "main")
        kinetic_energy           in the mask (whole frame without a mask)
        mean_abs_vorticity       in the mask
        contour_strain           % length change of the mask outline vs frame 0
        radial_strain, circumferential_strain   mean % in the mask vs frame 0
        consistency_error_mean, consistency_error_p95   px (only with a backward run)

NaN never appears: anything unavailable is null.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import ResultFileError
from ..export import atomic_write
from ..limits import check_work_memory
from ..result import RegistrationResult
from .lv_geometry import region_extent, relative_position
from .pipeline import Analysis, analyze_fields

__all__ = ["SCHEMA_VERSION", "DEFINITIONS", "analyze_result", "build_report", "write_json", "write_csv", "read_mask", "CSV_COLUMNS"]

SCHEMA_VERSION = 1

#: Peak memory of the analysis per byte of the analysed field, measured (about 25x: 20 MB of
#: float32 field, 10 pairs of 512 x 512 px, peaked 500 MB above the baseline).
ANALYSIS_BYTES_PER_FIELD_BYTE = 26

_VORTEX_KEYS = ("area", "circulation", "relative_strength", "mean_vorticity", "peak_vorticity", "gamma1_peak",
                "kinetic_energy", "depth", "transverse_position", "length", "width", "sphericity")

#: What the quantities mean; copied into every report so a JSON file explains itself.
DEFINITIONS = {
    "field": "pull fields: the material at p in frame t+1 came from p + u_t(p) in frame t; "
             "everything is computed on the motion -u_t, on frame t+1's grid",
    "sign": "positive vorticity / circulation / 'ccw' = counter-clockwise as seen on screen (rows pointing down)",
    "vortex": "core = connected region with |Gamma2| > 2/pi (Graftieaux et al. 2001) inside the mask; "
              "centre = vorticity-weighted centroid of the core; main vortex = largest |circulation|",
    "vortex_circulation": "vorticity integrated over the vortex core",
    "vortex_relative_strength": "|vortex circulation| / integral of |vorticity| over the mask",
    "vortex_depth": "position along the LV long axis, 0 = base (wide end), 1 = apex (narrow end)",
    "vortex_transverse_position": "across the long axis on the mask chord, 0 = screen-left border, 1 = screen-right",
    "vortex_length, vortex_width": "core extent along / across the LV axis divided by LV length / width (Hong et al. 2008)",
    "kinetic_energy": "0.5 * rho * integral |v|^2 dA in the mask (rho = 1060 kg/m^3 when physical units are known, else 1)",
    "kinetic_energy_fluctuation": "std / mean of kinetic_energy over the pairs",
    "contour_strain": "100 * (L_t - L_0) / L_0 of the tracked mask outline (endocardium for a wall mask)",
    "radial_strain, circumferential_strain": "mean Green-Lagrange strain in the mask vs frame 0, radial/circumferential "
                                             "about the mask's filled centroid",
    "consistency_error": "|u_f(p) + u_b(p + u_f(p))| of the forward and backward (reversed-sequence) runs",
}

#: Scalar per-pair columns of the CSV (in order); units from the report's ``units``.
CSV_COLUMNS = ("t", "time", "vortex_centre_x", "vortex_centre_y", "vortex_centre_x_mm", "vortex_centre_y_mm",
               "vortex_rotation", *(f"vortex_{k}" for k in _VORTEX_KEYS), "n_vortices", "kinetic_energy",
               "mean_abs_vorticity", "contour_strain", "radial_strain", "circumferential_strain",
               "consistency_error_mean", "consistency_error_p95")


def read_mask(path) -> np.ndarray:
    """Load a mask file (.npy / .tif, (H, W) or (T, H, W), booleans or 0/1); MaskError otherwise."""
    from ..export import load_masks

    return load_masks(path)


def _load(result) -> tuple[RegistrationResult, str | None]:
    if isinstance(result, RegistrationResult):
        return result, None
    return RegistrationResult.load(result), str(result)


def analyze_result(result, mask=None, scale_index: int = -1, *, backward=None, **options) -> dict:
    """The report dict (schema above) of a result (object or .npz path) at one scale.

    ``mask`` (H, W) or (T, H, W) bool (or a .npy path); ``backward``: a result
    of the reversed sequence for the confidence numbers. ``options`` go to
    :func:`~napari_nmsr.core.analysis.pipeline.analyze_fields`.
    """
    res, source = _load(result)
    fields = _scale_fields(res, scale_index)
    check_work_memory(ANALYSIS_BYTES_PER_FIELD_BYTE * fields.nbytes * (2 if backward is not None else 1),
                      f"Analysing {Path(source).name if source else 'this result'} ({fields.shape[0]} frame pairs of "
                      f"{fields.shape[-2]}x{fields.shape[-1]} px)", ResultFileError)
    if isinstance(mask, (str, os.PathLike)):
        mask = read_mask(mask)
    back = None
    if backward is not None:
        bres, _ = _load(backward)
        back = _scale_fields(bres, scale_index)
    analysis = analyze_fields(fields, mask, frame_interval_s=res.frame_interval_s,
                              pixel_spacing_mm=res.pixel_spacing_mm, backward=back, **options)
    idx = scale_index % res.n_scales
    return build_report(analysis, source=source, scale=res.scales[idx], scale_index=idx)


def _scale_fields(res: RegistrationResult, scale_index: int) -> np.ndarray:
    if res.n_scales == 0:
        raise ResultFileError("this result holds no finished scale (the run was cancelled before the first one)")
    if not -res.n_scales <= scale_index < res.n_scales:
        raise ResultFileError(f"scale index {scale_index} does not exist: this result has {res.n_scales} scales "
                              f"({', '.join(f'{s:g}' for s in res.scales)}); use 0..{res.n_scales - 1} or -1 for the finest")
    return res.fields[scale_index]


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _vortex_dict(a: Analysis, t: int, v) -> dict:
    cal = a.calibration
    axis = a.lv_axes[t]
    d = {
        "centre_xy": [v.centre_yx[1], v.centre_yx[0]],
        "centre_mm": ([v.centre_yx[1] * cal.spacing[1], v.centre_yx[0] * cal.spacing[0]]
                      if cal.pixel_spacing_mm is not None else None),
        "rotation": v.rotation, "main": v.main, "area": v.area, "circulation": v.circulation,
        "relative_strength": abs(v.circulation) / a.total_abs_circulation[t] if a.total_abs_circulation[t] > 0 else None,
        "mean_vorticity": v.mean_vorticity, "peak_vorticity": v.peak_vorticity, "gamma1_peak": v.gamma1_peak,
        "kinetic_energy": v.kinetic_energy,
        "depth": None, "transverse_position": None, "length": None, "width": None, "sphericity": None,
    }
    if axis is not None:
        mask_t = a.mask[t + 1]
        d["depth"], d["transverse_position"] = relative_position(axis, mask_t, v.centre_yx)
        length, width = region_extent(axis, v.region)
        d["length"], d["width"] = length / axis.length_px, width / axis.width_px
        d["sphericity"] = length / width if width > 0 else None
    return {k: (_num(x) if isinstance(x, (float, int, np.floating)) and not isinstance(x, bool) else x) for k, x in d.items()}


def build_report(a: Analysis, *, source: str | None = None, scale: float | None = None, scale_index: int | None = None) -> dict:
    """The schema-1 report dict of an :class:`Analysis`."""
    from ... import __version__

    cal = a.calibration
    pairs = []
    for t in range(a.n_pairs):
        vs = [_vortex_dict(a, t, v) for v in a.vortices[t]]
        main = vs[0] if vs else None
        entry = {"t": t, "time": (t + 1) * cal.dt,
                 "vortex_centre_xy": main["centre_xy"] if main else None,
                 "vortex_centre_mm": main["centre_mm"] if main else None,
                 "vortex_rotation": main["rotation"] if main else None}
        for k in _VORTEX_KEYS:
            entry[f"vortex_{k}"] = main[k] if main else None
        m_t = a.mask[t + 1] if a.mask is not None else np.ones(a.vorticity.shape[1:], bool)
        entry.update({
            "n_vortices": len(vs), "vortices": vs,
            "kinetic_energy": _num(a.kinetic_energy[t]),
            "mean_abs_vorticity": _num(np.abs(a.vorticity[t][m_t]).mean()),
            "contour_strain": _num(a.contour["strain"][t + 1]) if a.contour is not None else None,
            "radial_strain": _num(a.strain["err"][t][m_t].mean()) if a.strain is not None and a.mask is not None else None,
            "circumferential_strain": _num(a.strain["ecc"][t][m_t].mean()) if a.strain is not None and a.mask is not None else None,
            "consistency_error_mean": _num(a.consistency[t][m_t].mean()) if a.consistency is not None else None,
            "consistency_error_p95": _num(np.percentile(a.consistency[t][m_t], 95)) if a.consistency is not None else None,
        })
        pairs.append(entry)
    return {
        "schema_version": SCHEMA_VERSION,
        "software": f"napari-nmsr {__version__}",
        "source": source,
        "scale": _num(scale), "scale_index": scale_index,
        "frame_interval_s": cal.frame_interval_s,
        "pixel_spacing_mm": list(cal.pixel_spacing_mm) if cal.pixel_spacing_mm is not None else None,
        "mask": "given" if a.mask is not None else "none",
        "notes": list(a.notes),
        "units": cal.units(),
        "definitions": dict(DEFINITIONS),
        "lv_axis": a.lv_axes[0].to_dict() if a.lv_axes and a.lv_axes[0] is not None else None,
        "summary": _summary(a, pairs),
        "pairs": pairs,
    }


def _summary(a: Analysis, pairs: list[dict]) -> dict:
    ke = np.asarray(a.kinetic_energy, dtype=np.float64)
    mean = ke.mean() if len(ke) else float("nan")
    with_vortex = [p for p in pairs if p["vortex_centre_xy"] is not None]
    strain = a.contour["strain"] if a.contour is not None else None

    def avg(key):
        vals = [p[key] for p in with_vortex if p[key] is not None]
        return _num(np.mean(vals)) if vals else None

    return {
        "n_pairs": len(pairs),
        "pairs_with_vortex": len(with_vortex),
        "kinetic_energy_mean": _num(mean),
        "kinetic_energy_fluctuation": _num(ke.std() / mean) if mean > 0 else None,  # std / mean over the cycle
        "kinetic_energy_range_ratio": _num(np.ptp(ke) / mean) if mean > 0 else None,  # (max - min) / mean
        "vortex_depth_mean": avg("vortex_depth"),
        "vortex_transverse_position_mean": avg("vortex_transverse_position"),
        "vortex_circulation_mean": avg("vortex_circulation"),
        "vortex_relative_strength_mean": avg("vortex_relative_strength"),
        "contour_strain_peak": _num(strain[np.argmax(np.abs(strain))]) if strain is not None else None,
        "consistency_error_mean": _num(np.mean([p["consistency_error_mean"] for p in pairs]))
        if a.consistency is not None else None,
    }


def _atomic_write(path, text: str) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def write_json(report: dict, path) -> Path:
    """Write the report as JSON (atomically; NaN becomes null)."""
    return _atomic_write(path, json.dumps(_clean(report), indent=2, allow_nan=False) + "\n")


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    return x


def csv_rows(report: dict) -> list[dict]:
    """One flat dict per pair with the :data:`CSV_COLUMNS` (None where unavailable)."""
    rows = []
    for p in report["pairs"]:
        c, mm = p["vortex_centre_xy"] or (None, None), p["vortex_centre_mm"] or (None, None)
        row = {k: p.get(k) for k in CSV_COLUMNS}
        row.update({"vortex_centre_x": c[0], "vortex_centre_y": c[1], "vortex_centre_x_mm": mm[0], "vortex_centre_y_mm": mm[1]})
        rows.append(row)
    return rows


def _unit(report: dict, column: str) -> str:
    units = report.get("units", {})
    if column.startswith("vortex_centre_"):
        return units.get("vortex_centre_mm" if column.endswith("_mm") else "vortex_centre_xy", "")
    return units.get(column, "")


def write_csv(report: dict, path) -> Path:
    """Write one row per frame pair; the header names carry units, e.g. ``vortex_area [mm^2]``."""
    buf = io.StringIO()
    header = [f"{c} [{u}]" if (u := _unit(report, c)) else c for c in CSV_COLUMNS]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in csv_rows(report):
        writer.writerow(["" if row[c] is None else (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c])
                         for c in CSV_COLUMNS])
    return _atomic_write(path, buf.getvalue())
