"""What sonographers read off the fields: vorticity, vortices, strain, confidence.

GUI-free (numpy/scipy/scikit-image/torch). Every function takes the PULL
fields of a result, ``(T-1, 2, H, W)`` pixels (one scale, e.g.
``result.fields[-1]``), and analyses the motion ``motion_from_field(field)``
on frame t+1's grid. Sign convention: positive vorticity = counter-clockwise
as seen on screen (rows pointing down).

* :mod:`.vorticity`   vorticity maps (1/s or 1/frame)
* :mod:`.vortex`      Gamma-1/Gamma-2 vortex cores (centre, area, circulation)
* :mod:`.lv_geometry` LV long axis from a mask; depth / transverse position
* :mod:`.strain`      Lagrangian strain maps and contour (global) strain
* :mod:`.confidence`  forward-backward consistency
* :mod:`.pipeline`    all of it on one result (maps for display)
* :mod:`.report`      the per-pair report dict, JSON and CSV (``nmsr analyze``)
* :mod:`.analytic`    fields with known answers (tests, benchmark)
"""

from .confidence import consistency_error, inconsistent
from .lv_geometry import LVAxis, lv_axis_from_mask, relative_position
from .pipeline import Analysis, analyze_fields
from .report import SCHEMA_VERSION, analyze_result, build_report, read_mask, write_csv, write_json
from .strain import composed_fields, contour_strain, mask_contour, strain_maps
from .vortex import Vortex, detect_vortices, gamma_criteria
from .vorticity import vorticity, vorticity_of_motion

__all__ = [
    "Analysis", "analyze_fields", "analyze_result", "build_report", "write_json", "write_csv", "read_mask",
    "SCHEMA_VERSION", "vorticity", "vorticity_of_motion", "Vortex", "detect_vortices", "gamma_criteria",
    "LVAxis", "lv_axis_from_mask", "relative_position", "composed_fields", "strain_maps", "contour_strain",
    "mask_contour", "consistency_error", "inconsistent",
]
