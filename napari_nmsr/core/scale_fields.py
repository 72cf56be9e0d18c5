"""Every scale's full-frame field of a run, the coarse scales kept in float16.

Why: one scale's float32 field of a 45-frame 768x1024 cine is 264 MB, so a
four-scale result held 1056 MB, eight times the sequence and most of the
memory a run may take (3 x the sequence + 1 GB). The coarse scales are kept
to be shown and compared; float16 (an 11-bit significand) holds a
displacement to 1/2048 of itself: 0.0005 px at 1 px, 0.03 px at 64 px. The
finest scale, the one tracked, analysed and exported, stays float32.

:class:`ScaleFields` reads like the (S, T-1, 2, H, W) float32 array it
replaces: ``fields[k]``, ``fields[k, t]``, ``fields[-1]``, ``.shape``,
iteration and ``np.asarray(fields)`` give float32 (only the last makes a
copy of every scale at once). :func:`write_npy` streams it into a ``.npy``
(an NPZ member) one pair at a time, so saving needs no such copy either.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = ["COARSE_DTYPE", "ScaleFields", "kept_dtype", "write_npy"]

#: How the scales before the finest are kept.
COARSE_DTYPE = np.float16


def kept_dtype(k: int, n_scales: int) -> type:
    """The dtype scale ``k`` of ``n_scales`` is kept in: float32 for the finest, else :data:`COARSE_DTYPE`.
    The engine starts each scale from the previous one as kept, so a run gives the same fields
    wherever it keeps them (the CLI's result, the GUI's events, a CPU or a GPU)."""
    return np.float32 if k == n_scales - 1 else COARSE_DTYPE


class ScaleFields:
    """Per-scale fields (T-1, 2, H, W), each stored as given; read as float32."""

    def __init__(self, scales: Sequence[np.ndarray]):
        self._scales = [np.asarray(f) for f in scales]
        shapes = {f.shape for f in self._scales}
        if len(shapes) > 1:
            raise ValueError(f"every scale's field must have one shape, got {sorted(shapes)}")
        if any(f.ndim != 4 or f.dtype.kind != "f" for f in self._scales):
            raise ValueError("each scale's field must be a float (T-1, 2, H, W) array")

    # the array protocol the rest of the package and users rely on
    dtype = np.dtype(np.float32)
    ndim = 5

    @property
    def shape(self) -> tuple[int, ...]:
        if not self._scales:
            return (0, 0, 2, 0, 0)
        return (len(self._scales),) + self._scales[0].shape

    @property
    def stored_nbytes(self) -> int:
        """Bytes held (coarse scales at their stored precision)."""
        return sum(f.nbytes for f in self._scales)

    def stored(self, k: int) -> np.ndarray:
        """Scale ``k``'s field as stored (no conversion)."""
        return self._scales[k]

    def __len__(self) -> int:
        return len(self._scales)

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self._scales:
            yield f.astype(np.float32, copy=False)

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, (int, np.integer)):
            # the rest of the index is applied before the conversion: fields[k, t] converts one pair
            part = self._scales[first][rest] if rest else self._scales[first]
            return np.asarray(part).astype(np.float32, copy=False)
        if isinstance(first, slice) and not rest:
            return ScaleFields(self._scales[first])
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, np.float32)
        for k, f in enumerate(self._scales):
            out[k] = f
        return out if dtype is None else out.astype(dtype, copy=False)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    def copy(self) -> "ScaleFields":
        return ScaleFields([f.copy() for f in self._scales])

    def __repr__(self) -> str:
        kinds = "/".join(str(f.dtype) for f in self._scales)
        return f"ScaleFields(shape={self.shape}, stored as {kinds or 'nothing'})"


def write_npy(fid, fields: ScaleFields) -> None:
    """Write ``fields`` to an open binary file as the float32 ``.npy`` that ``np.save`` of
    ``np.asarray(fields)`` writes, one frame pair at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": fields.shape}
    np.lib.format.write_array_header_1_0(fid, header)  # five dimensions: far below the 1.0 header's 64 KiB
    for k in range(len(fields)):
        for pair in fields.stored(k):
            fid.write(np.ascontiguousarray(pair, dtype="<f4").tobytes())
