"""npe2 sample data: the simulated contrast-echo vortex and myocardium sequences.

Each sample opens as the image (with frame time and pixel size) plus the
"NMSR drawn masks" labels layer holding the ED and ES masks, so the workflow
panel can go straight to Refine / Interpolate / Run. The arrays come from
``sample_data/*.npz`` in a source checkout, or are simulated on the spot
(``core.simulate``, deterministic) in an installed package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_nmsr._widget.layers import ROLE_DRAWN, ROLE_KEY

__all__ = ["vortex_sample", "myocardium_sample", "load_case", "SAMPLE_DIR"]

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
_MODES = {"vortex": "blood", "myocardium": "myocardium"}


def load_case(name: str) -> dict:
    """Arrays of a sample case: frames, masks, fields, ed/es index and masks, timing, spacing."""
    path = SAMPLE_DIR / f"{name}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from napari_nmsr.core.simulate import CASES

    seq = CASES[name](size=128, n_frames=12, seed=0)
    return {
        "frames": seq.frames, "masks": seq.masks, "fields": seq.fields,
        "ed_index": seq.ed_index, "es_index": seq.es_index,
        "ed_mask": seq.masks[seq.ed_index], "es_mask": seq.masks[seq.es_index],
        "frame_interval_s": seq.frame_interval_s, "pixel_spacing_mm": np.asarray(seq.pixel_spacing_mm),
        "description": seq.description,
    }


def _drawn_labels(case: dict, mode: str) -> np.ndarray:
    """ED/ES masks as the panel's paint layer: 1 = cavity; in myocardium mode 2 = wall."""
    frames = case["frames"]
    labels = np.zeros(frames.shape, np.uint8)
    for key in ("ed", "es"):
        t, m = int(case[f"{key}_index"]), np.asarray(case[f"{key}_mask"], bool)
        if mode == "myocardium":  # the sample's mask is the wall ring: its hole is the cavity
            labels[t][ndi.binary_fill_holes(m) & ~m] = 1
            labels[t][m] = 2
        else:
            labels[t][m] = 1
    return labels


def _sample(name: str, title: str):
    case = load_case(name)
    mode = _MODES[name]
    dt = float(case["frame_interval_s"])
    spacing = tuple(float(v) for v in np.asarray(case["pixel_spacing_mm"]))
    scale = (dt, *spacing)
    meta = {
        "nmsr": {
            "frame_interval_s": dt,
            "pixel_spacing_mm": spacing,
            "ed_index": int(case["ed_index"]),
            "es_index": int(case["es_index"]),
            "mode": mode,
            "source": f"napari-nmsr sample '{name}' (simulated)",
            "description": str(case.get("description", "")),
        }
    }
    image = (
        case["frames"],
        {"name": title, "scale": scale, "units": ("s", "mm", "mm"), "axis_labels": ("t", "y", "x"),
         "colormap": "gray", "contrast_limits": (0.0, 1.0), "metadata": meta},
        "image",
    )
    drawn = (
        _drawn_labels(case, mode),
        {"name": "NMSR drawn masks", "scale": scale, "units": ("s", "mm", "mm"), "opacity": 0.4,
         "metadata": {ROLE_KEY: ROLE_DRAWN}},
        "labels",
    )
    return [image, drawn]


def vortex_sample():
    """Contrast echo: a vortex in the LV cavity; ED/ES cavity masks."""
    return _sample("vortex", "vortex (simulated contrast echo)")


def myocardium_sample():
    """Short-axis myocardium contracting and twisting; ED/ES cavity and wall masks."""
    return _sample("myocardium", "myocardium (simulated)")
