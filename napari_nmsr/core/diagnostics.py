"""Signs that a registration has not converged (pure numpy).

A run with too few steps can stop on a field that is one rigid shift of the
whole mask (the network's first easy answer), or with the mean local
correlation barely changed from scale to scale. Neither proves failure, but
both deserve a visible warning before anyone reads velocities off the field.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UNIFORM_RATIO", "CC_GAIN", "field_uniformity", "convergence_warnings"]

#: A field whose spatial spread is below this fraction of its size is "nearly uniform".
UNIFORM_RATIO = 0.1
#: Mean-CC changes below this between consecutive scales count as "barely moved".
CC_GAIN = 1e-3
_MIN_MOTION_PX = 0.05  # below this mean |u| the field is ~zero, not a shift


def field_uniformity(field: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(spread ratio, mean |u| px) of one scale's field (T-1, 2, H, W), inside ``mask`` (T, H, W) if given.

    Spread ratio = spatial standard deviation of the vectors (both components,
    per pair, median over pairs) over their RMS length: 0 for one shift everywhere.
    """
    field = np.asarray(field, dtype=np.float64)
    ratios, sizes = [], []
    for t in range(field.shape[0]):
        u = field[t].reshape(2, -1)
        if mask is not None:
            keep = np.asarray(mask[t + 1], bool).ravel()
            if keep.sum() >= 4:
                u = u[:, keep]
        rms = float(np.sqrt(np.mean(np.sum(u**2, axis=0))))
        spread = float(np.sqrt(np.sum(np.var(u, axis=1))))
        ratios.append(spread / max(rms, 1e-9))
        sizes.append(float(np.mean(np.hypot(u[0], u[1]))))
    return float(np.median(ratios)), float(np.mean(sizes))


def convergence_warnings(fields: np.ndarray, mean_cc: np.ndarray, scales, mask: np.ndarray | None = None) -> list[str]:
    """Readable warnings for a result: ``fields`` (S, T-1, 2, H, W), ``mean_cc`` (S, T-1), ``scales`` (S,)."""
    out = []
    if len(fields) == 0:
        return out
    ratio, size = field_uniformity(fields[-1], mask)
    if size > _MIN_MOTION_PX and ratio < UNIFORM_RATIO:
        out.append(
            f"The field of scale {float(scales[-1]):g} is nearly uniform (one shift of {size:.2f} px everywhere, "
            f"spread {ratio:.0%} of it): the run probably has not converged. Give it more steps."
        )
    cc = np.asarray(mean_cc, dtype=np.float64).reshape(len(fields), -1).mean(axis=1)
    if len(cc) >= 2 and np.all(np.abs(np.diff(cc)) < CC_GAIN):
        out.append(
            f"Mean CC barely moved between scales ({', '.join(f'{c:.4f}' for c in cc)}): the finer scales "
            "added nothing; the run may be unconverged (more steps) or the frames too different."
        )
    return out
