"""Which layers belong to the panel, and how it replaces them.

Every layer the panel makes carries ``metadata["nmsr_role"]`` (e.g.
``"vectors"``, ``"masks"``) and ``metadata["nmsr_source"]``, the id of the
image layer (sequence) it belongs to. Re-running replaces the layer with that
role OF THAT SEQUENCE and nothing else, so the user's own layers and other
sequences' results are never touched: a layer without the tag is never
modified or removed here.
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
    "ROLE_TRACED",
    "ROLE_CALIBRATION",
    "ROLE_COLOUR",
    "SOURCE_KEY",
    "ANY",
    "find_role",
    "bound_layers",
    "adopt_unbound",
    "show_sequence",
    "rescale_bound_layers",
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
ROLE_TRACED = "traced"  # ED/ES outlines traced as polygons / paths (Shapes)
ROLE_CALIBRATION = "calibration"  # the line drawn over a known depth mark (Shapes)
ROLE_COLOUR = "colour"  # the original RGB frames, beside the grayscale

SOURCE_KEY = "nmsr_source"  # metadata: id of the image layer the layer belongs to
ANY = object()  # find_role(..., source=ANY): whatever sequence


def _sid(source) -> str | None:
    if source is None or isinstance(source, str):
        return source
    return str(source.unique_id)


def find_role(viewer: "napari.Viewer", role: str, source: Any = ANY) -> "Layer | None":
    """The panel's layer with this role (the most recent one) for ``source``, or None.

    ``source`` is the image layer (or its id) the layer must belong to;
    ``ANY`` (the default) takes any sequence's.
    """
    sid = None if source is ANY else _sid(source)
    for layer in reversed(list(viewer.layers)):
        if layer.metadata.get(ROLE_KEY) == role and (source is ANY or layer.metadata.get(SOURCE_KEY) == sid):
            return layer
    return None


def put_layer(viewer: "napari.Viewer", role: str, layer_type: str, data: Any, *, source: Any = None,
              **kwargs) -> "Layer":
    """Update ``source``'s ``role`` layer in place, or add it (bound to ``source``) when missing.

    In place keeps the user's display settings (opacity, colormap, position in
    the layer list) across re-runs. ``kwargs`` are used only when adding.
    ``source`` is the image layer the result belongs to.
    """
    layer = find_role(viewer, role, source)
    if layer is not None and kind(layer) == layer_type and _same_ndim(layer, data):
        layer.data = data
        layer.visible = True
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[ROLE_KEY] = role
    metadata[SOURCE_KEY] = _sid(source)
    adder = getattr(viewer, f"add_{layer_type}")
    return adder(data, metadata=metadata, **kwargs)


def bound_layers(viewer: "napari.Viewer", source: Any) -> list["Layer"]:
    """The panel's layers that belong to ``source`` (an image layer or its id)."""
    sid = _sid(source)
    return [lyr for lyr in viewer.layers if ROLE_KEY in lyr.metadata and lyr.metadata.get(SOURCE_KEY) == sid]


def adopt_unbound(viewer: "napari.Viewer", image: "Layer") -> None:
    """Bind panel-role layers made without a sequence (e.g. a sample's drawn masks) to ``image``
    when their (t, y, x) shape is the image's."""
    if image is None:
        return
    shape = tuple(image.data.shape[:3])
    for lyr in viewer.layers:
        if ROLE_KEY in lyr.metadata and lyr.metadata.get(SOURCE_KEY) is None and hasattr(lyr.data, "shape") \
                and tuple(lyr.data.shape[:3]) == shape and lyr.ndim == 3:
            lyr.metadata[SOURCE_KEY] = _sid(image)


def show_sequence(viewer: "napari.Viewer", source: Any) -> None:
    """Show the panel's layers of ``source`` and hide every other sequence's (the user's layers stay)."""
    sid = _sid(source)
    for lyr in viewer.layers:
        owner = lyr.metadata.get(SOURCE_KEY)
        if ROLE_KEY in lyr.metadata and owner is not None:
            lyr.visible = owner == sid


def rescale_bound_layers(viewer: "napari.Viewer", image: "Layer") -> None:
    """After the image's scale changed (calibration): put its panel layers back on it."""
    place = placed_like(image)
    for lyr in bound_layers(viewer, image):
        extra = lyr.ndim - 3
        lyr.scale = (*([1.0] * extra), *place["scale"])
        translate = list(place["translate"])
        if lyr.metadata.get(ROLE_KEY) == ROLE_COLOUR:  # stays beside the image, not on it
            translate[2] += 1.04 * image.data.shape[2] * place["scale"][2]
        lyr.translate = (*([0.0] * extra), *translate)
        lyr.units = (*(["pixel"] * extra), *place["units"])


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


def remove_role(viewer: "napari.Viewer", role: str, source: Any = ANY) -> None:
    """Remove the panel's layers with this role (of ``source``; never a user's layer)."""
    sid = None if source is ANY else _sid(source)
    for layer in [lyr for lyr in viewer.layers if lyr.metadata.get(ROLE_KEY) == role
                  and (source is ANY or lyr.metadata.get(SOURCE_KEY) == sid)]:
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
