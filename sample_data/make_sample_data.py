"""Regenerate the simulated sample sequences shipped in sample_data/ (deterministic).

    python sample_data/make_sample_data.py

Writes, next to this script:
* vortex.npz, myocardium.npz: frames (T, H, W) float32 [0, 1]; masks (T, H, W)
  bool; fields (T-1, 2, H, W) float32 true fields (project convention, px);
  ed_index, es_index; ed_mask, es_mask (H, W) bool; vortex_centres (T-1, 2)
  (y, x) px (NaN when the case has no vortex); frame_interval_s;
  pixel_spacing_mm (dy, dx); name; description.
* vortex_frames.npy, vortex_masks.npy: the vortex frames (T, H, W) float32 and
  LV-cavity masks (T, H, W) bool alone, for the CLI.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_nmsr.core.simulate import CASES  # noqa: E402

SIZE, N_FRAMES, SEED = 128, 12, 0


def _atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_case(name: str) -> np.ndarray:
    seq = CASES[name](size=SIZE, n_frames=N_FRAMES, seed=SEED)
    centres = seq.vortex_centres
    if centres is None:
        centres = np.full((N_FRAMES - 1, 2), np.nan, np.float32)
    arrays = dict(
        frames=seq.frames,
        masks=seq.masks,
        fields=seq.fields,
        ed_index=np.int64(seq.ed_index),
        es_index=np.int64(seq.es_index),
        ed_mask=seq.masks[seq.ed_index],
        es_mask=seq.masks[seq.es_index],
        vortex_centres=centres,
        frame_interval_s=np.float64(seq.frame_interval_s),
        pixel_spacing_mm=np.asarray(seq.pixel_spacing_mm, np.float64),
        name=np.str_(seq.name),
        description=np.str_(seq.description),
    )
    _atomic(HERE / f"{name}.npz", lambda fh: np.savez_compressed(fh, **arrays))
    return seq


def main() -> None:
    vortex = save_case("vortex")
    save_case("myocardium")
    _atomic(HERE / "vortex_frames.npy", lambda fh: np.save(fh, vortex.frames))
    _atomic(HERE / "vortex_masks.npy", lambda fh: np.save(fh, vortex.masks))
    for p in sorted(HERE.glob("*.np[yz]")):
        print(f"{p.name}: {p.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
