"""Forward-backward consistency: where the two registrations disagree.

Forward fields ``u_f[t]`` (pair t -> t+1, the normal run) live on frame t+1
and pull from frame t. Registering the *reversed* sequence gives backward
fields; the reversed run's pair k has moving frame ``T-1-k`` and fixed
frame ``T-2-k``, so the backward field that matches forward pair t is
``b[t] = backward[T-2-t]``: it lives on frame t and pulls from frame t+1.

Round trip of a pixel p of frame t+1: it came from ``q = p + u_f(p)`` in
frame t, and q came from ``q + b(q)`` in frame t+1, which should be p again:

    e(p) = u_f(p) + b(p + u_f(p)) = compose(b, u_f)(p)

(``convention.compose(a, b)(p) = b(p) + a(p + b(p))``: warp by ``b`` i.e.
frame t+1 -> t, then by ``u_f`` i.e. t -> t+1, which is the identity for a
consistent pair). ``|e|`` (px, on frame t+1's grid) is the confidence map:
0 where both runs agree, large where one of them is lost (occlusion, blood
leaving the plane, speckle decorrelation).
"""

from __future__ import annotations

import numpy as np
import torch

from ..convention import compose, warp
from ..errors import ResultFileError
from ._common import check_fields

__all__ = ["align_backward", "consistency_error", "inconsistent"]


def align_backward(backward, *, reversed_order: bool = True) -> np.ndarray:
    """Reorder the reversed sequence's fields (T-1, 2, H, W) to match forward pair t.

    With ``reversed_order=False`` the fields are taken as already aligned
    (``b[t]`` on frame t pulling from frame t+1).
    """
    b = check_fields(backward, name="backward field")
    return b[::-1].copy() if reversed_order else b


def _pair(forward, backward, reversed_order):
    f = check_fields(forward, name="forward field")
    b = align_backward(backward, reversed_order=reversed_order)
    if f.shape != b.shape:
        raise ResultFileError(
            f"the forward {f.shape} and backward {b.shape} fields differ in size; register the same "
            "sequence reversed (same frames, same size) for the backward run"
        )
    return torch.as_tensor(f), torch.as_tensor(b)


def consistency_error(forward, backward, *, reversed_order: bool = True) -> np.ndarray:
    """|u_f(p) + b(p + u_f(p))| (T-1, H, W) float32, pixels, on frame t+1's grid."""
    f, b = _pair(forward, backward, reversed_order)
    with torch.no_grad():
        e = compose(b, f)
    return torch.linalg.vector_norm(e, dim=1).numpy().astype(np.float32)


def inconsistent(forward, backward, *, reversed_order: bool = True, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Bool (T-1, H, W): the round trip misses by more than its motion allows.

    The occlusion test of Sundaram et al. (ECCV 2010):
    ``|u_f + b~|^2 > alpha (|u_f|^2 + |b~|^2) + beta`` with
    ``b~(p) = b(p + u_f(p))``; ``beta`` in px^2. Use it to grey out arrows.
    """
    f, b = _pair(forward, backward, reversed_order)
    with torch.no_grad():
        bw = warp(b, f)
    err2 = ((f + bw) ** 2).sum(1)
    bound = alpha * ((f**2).sum(1) + (bw**2).sum(1)) + beta
    return (err2 > bound).numpy()
