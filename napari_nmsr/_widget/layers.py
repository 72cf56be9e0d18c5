"""Which layers belong to the panel, and how it replaces them.

Every layer the panel makes carries ``metadata["nmsr_role"]`` (e.g.
``"vectors"``, ``"masks"``). Re-running replaces the layer with that role
and nothing else, so the user's own layers are never touched: a layer without
the tag is never modified or removed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

__all__ = [
    "ROLE_KEY",
    "ROLE_DRAWN",
    "ROLE_POINTS",
    "ROLE_MASKS",
    "ROLE_VECTORS",
    "ROLE_TRACKED",
    "find_role",
    "put_layer",
    "remove_role",
    "time_index",
    "placed_like",
    "kind",
]

ROLE_KEY = "nmsr_role"
ROLE_DRAWN = "drawn"  # ED/ES masks the user paints (created empty by the panel)
ROLE_POINTS = "points"  # snapped ED/ES contour points, draggable
ROLE_MASKS = "masks"  # per-frame masks over the cycle
ROLE_VECTORS = "vectors"  # the quiver of every finished scale
ROLE_TRACKED = "tracked"  # contour tracked through the field


def find_role(viewer: "napari.Viewer", role: str) -> "Layer | None":
    """The panel's layer with this role (the most recent one), or None."""
    for layer in reversed(list(viewer.layers)):
        if layer.metadata.get(ROLE_KEY) == role:
            return layer
    return None


def put_layer(viewer: "napari.Viewer", role: str, layer_type: str, data: Any, **kwargs) -> "Layer":
    """Update the panel's ``role`` layer in place, or add it when missing.

    In place keeps the user's display settings (opacity, colormap, position in
    the layer list) across re-runs. ``kwargs`` are used only when adding.
    """
    layer = find_role(viewer, role)
    if layer is not None and kind(layer) == layer_type and _same_ndim(layer, data):
        layer.data = data
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[ROLE_KEY] = role
    adder = getattr(viewer, f"add_{layer_type}")
    return adder(data, metadata=metadata, **kwargs)


def kind(layer: "Layer") -> str:
    """"image", "labels", "points", "vectors" ... (napari's layer class, lower case).

    Works on the read-only proxies napari hands to plugin widgets, where
    identity (``is``) and private attributes are not available.
    """
    return layer.__class__.__name__.lower()


def _same_ndim(layer: "Layer", data: Any) -> bool:
    if kind(layer) in ("vectors", "points"):
        return np.asarray(data).shape[-1] == layer.ndim
    return np.ndim(data) == layer.ndim


def remove_role(viewer: "napari.Viewer", role: str) -> None:
    """Remove the panel's layers with this role (never a user's layer)."""
    for layer in [lyr for lyr in viewer.layers if lyr.metadata.get(ROLE_KEY) == role]:
        viewer.layers.remove(layer)


def time_index(viewer: "napari.Viewer", layer: "Layer") -> int:
    """Frame of ``layer`` shown by the time slider (its first data axis), clipped to range."""
    data_point = layer.world_to_data(viewer.dims.point)
    n = layer.data.shape[0] if hasattr(layer.data, "shape") else len(layer.data)
    return int(np.clip(round(float(data_point[0])), 0, n - 1))


def placed_like(image: "Layer") -> dict:
    """scale/translate/units of ``image``, so a new (t, y, x) layer lies exactly on it."""
    return {
        "scale": tuple(image.scale[-3:]),
        "translate": tuple(image.translate[-3:]),
        "units": tuple(str(u) for u in image.units[-3:]),
    }
