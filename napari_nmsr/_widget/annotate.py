"""Annotations burnt into exported snapshots and movies (numpy + Pillow, no Qt).

A screenshot of the canvas says nothing about what its colours and time
mean once it leaves napari. :func:`annotate_frame` adds a band under the
image with the time stamp (s and frame index) and, when arrows are shown,
a colour bar of the speed with its range and unit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["annotate_frame", "time_text"]


def time_text(frame: int, frame_interval_s: float | None) -> str:
    """"t = 0.233 s (frame 7)", or "frame 7" when the frame interval is unknown."""
    if frame_interval_s:
        return f"t = {frame * float(frame_interval_s):.3f} s (frame {frame})"
    return f"frame {frame}"


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed size
        return ImageFont.load_default()


def annotate_frame(
    image: np.ndarray,
    *,
    stamp: str,
    colours: np.ndarray | None = None,
    vmax: float | None = None,
    units: str = "",
    label: str = "speed",
) -> np.ndarray:
    """The RGB(A) ``image`` (H, W, 3|4) uint8 with a band below it: ``stamp`` on the left and, when
    ``colours`` (K, 3|4) floats in [0, 1] are given, a colour bar from 0 to ``vmax`` ``units`` on the right.
    Returns (H + band, W, 3) uint8; the band height is even (H.264 needs even sizes)."""
    from PIL import Image, ImageDraw

    rgb = np.asarray(image)[..., :3].astype(np.uint8)
    h, w = rgb.shape[:2]
    band = max(28, int(round(h * 0.07)) // 2 * 2)
    font = _font(max(10, band // 2 - 2))
    canvas = Image.new("RGB", (w, h + band), (24, 24, 28))
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    pad = max(4, band // 6)
    draw.text((pad, h + band // 2), stamp, fill=(240, 240, 240), font=font, anchor="lm")
    if colours is not None and vmax is not None and w > 200:
        bar_w, bar_h = max(80, w // 4), max(6, band // 3)
        right = f"{vmax:.3g} {units}".strip()
        right_w = draw.textlength(right, font=font)
        x1 = int(w - pad - right_w - pad)
        x0 = x1 - bar_w
        y0 = h + (band - bar_h) // 2
        ramp = np.asarray(colours, dtype=float)[:, :3]
        idx = np.linspace(0, len(ramp) - 1, bar_w).round().astype(int)
        strip = (np.clip(ramp[idx], 0, 1) * 255).astype(np.uint8)[None].repeat(bar_h, axis=0)
        canvas.paste(Image.fromarray(strip), (x0, y0))
        draw.text((x0 - pad, h + band // 2), f"{label} 0", fill=(240, 240, 240), font=font, anchor="rm")
        draw.text((x1 + pad, h + band // 2), right, fill=(240, 240, 240), font=font, anchor="lm")
    out = np.asarray(canvas)
    return out[: (out.shape[0] // 2) * 2, : (out.shape[1] // 2) * 2]
