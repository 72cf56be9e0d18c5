"""Section 6, Export: track the contour, and save contours, fields, masks, PNG/MP4 of the quiver.

Every ``save_*`` method takes the target path (the buttons ask for it with a
file dialog) and writes atomically through ``core.export`` /
``RegistrationResult.save``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QGridLayout, QGroupBox, QLabel, QPushButton

from napari_nmsr._writer import contours_from_points
from napari_nmsr.core.errors import NMSRError
from napari_nmsr.core.export import atomic_write, save_contours_csv, save_contours_json, save_masks
from napari_nmsr.core.tracking import track_points, tracking_report

from .annotate import annotate_frame, time_text
from .layers import ROLE_MASKS, ROLE_POINTS, ROLE_TRACKED, ROLE_VECTORS, find_role, placed_like, put_layer, time_index
from .state import WorkflowState, check_field_matches, sequence_info

if TYPE_CHECKING:
    import napari

__all__ = ["ExportSection"]


class ExportSection(QGroupBox):
    """Buttons for the tracked contour and every file the workflow produces."""

    def __init__(self, viewer: "napari.Viewer", state: WorkflowState, parent=None):
        super().__init__("6. Track and export", parent)
        self._viewer = viewer
        self._state = state
        self.track_button = QPushButton("Track the ED contour through the field")
        self.track_button.setToolTip("Follow the refined ED outline through the shown scale's field (Lagrangian)")
        self.contours_button = QPushButton("Contours (CSV/JSON)...")
        self.fields_button = QPushButton("Fields (NPZ)...")
        self.masks_button = QPushButton("Masks (TIFF)...")
        self.png_button = QPushButton("Quiver (PNG)...")
        self.movie_button = QPushButton("Quiver (MP4)...")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        grid = QGridLayout(self)
        grid.addWidget(self.track_button, 0, 0, 1, 2)
        grid.addWidget(self.contours_button, 1, 0)
        grid.addWidget(self.fields_button, 1, 1)
        grid.addWidget(self.masks_button, 2, 0)
        grid.addWidget(self.png_button, 2, 1)
        grid.addWidget(self.movie_button, 3, 0)
        grid.addWidget(self.status, 4, 0, 1, 2)
        self.track_button.clicked.connect(self.track_contour)
        self.contours_button.clicked.connect(lambda: self._ask("contours", "Contours (*.csv *.json)", self.save_contours))
        self.fields_button.clicked.connect(lambda: self._ask("fields", "NMSR result (*.npz)", self.save_fields))
        self.masks_button.clicked.connect(lambda: self._ask("masks", "TIFF (*.tif *.tiff);;NumPy (*.npy)", self.save_masks))
        self.png_button.clicked.connect(lambda: self._ask("quiver", "PNG image (*.png)", self.save_png))
        self.movie_button.clicked.connect(lambda: self._ask("quiver", "MP4 movie (*.mp4)", self.save_movie))

    def _ask(self, stem: str, filters: str, action) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save", stem, filters)
        if path:
            self._guarded(action, path)

    def _guarded(self, action, path):
        try:
            out = action(path)
        except (NMSRError, ValueError, OSError) as exc:
            show_error(str(exc))
            return None
        if out is not None:
            self.status.setText(f"Saved {Path(out).name}")
            show_info(f"Saved {out}")
        return out

    # ------------------------------------------------------------------ tracking
    def shown_scale_index(self) -> int:
        """The scale on the scale slider (the last finished one when unsure)."""
        n = len(self._state.done)
        if n == 0:
            raise ValueError("Run a registration first (3. Registration).")
        if find_role(self._viewer, ROLE_VECTORS, self._state.image_layer) is None or self._viewer.dims.ndim < 4:
            return n - 1
        return int(np.clip(self._viewer.dims.current_step[0], 0, n - 1))

    def _ed_contour(self) -> tuple[int, np.ndarray]:
        points = find_role(self._viewer, ROLE_POINTS, self._state.image_layer)
        if points is None or not self._state.ed_frames:
            raise ValueError("Mark ED and press 'Refine (active contour)' in 2. Masks to get the contour to track.")
        feats = points.features
        data = np.asarray(points.data)
        t = self._state.ed_frames[0]
        rows = (feats["phase"] == "ED") & (feats["contour"] == "inner") & (np.round(data[:, 0]) == t)
        rows = np.flatnonzero(rows)
        rows = rows[np.argsort(np.asarray(feats["point"])[rows], kind="stable")]
        if not len(rows):
            raise ValueError(f"No refined ED contour on frame {t}: press 'Refine (active contour)' again.")
        return t, data[rows, 1:]

    def track_contour(self):
        """Track the ED contour (Lagrangian) through the shown scale: a Points layer (t, y, x)."""
        image = self._state.image_layer
        try:
            if image is None:
                raise ValueError("Choose an image layer in 1. Sequence first.")
            k = self.shown_scale_index()
            field = self._state.done[k].field
            check_field_matches(field, image, "The registration field")
            start, contour = self._ed_contour()
            tracked = track_points(field, contour, start)
        except (NMSRError, ValueError) as exc:
            show_error(str(exc))
            return None
        n_frames, n = tracked.positions.shape[:2]
        data = np.concatenate([np.column_stack([np.full(n, t), tracked.positions[t]]) for t in range(n_frames)])
        info = sequence_info(image)
        layer = put_layer(
            self._viewer, ROLE_TRACKED, "points", data.astype(np.float32), source=image,
            name="NMSR tracked contour", **placed_like(image),
            size=max(1.5, image.data.shape[-1] / 90), face_color="cyan", border_width=0,
        )
        layer.features = {"point": np.tile(np.arange(n), n_frames), "outside": tracked.outside.ravel()}
        layer.metadata.update({"pixel_spacing_mm": info["pixel_spacing_mm"], "frame_interval_s": info["frame_interval_s"],
                               "scale": self._state.done[k].scale})
        self._report(tracked)
        return layer

    def _report(self, tracked) -> None:
        masks = find_role(self._viewer, ROLE_MASKS, self._state.image_layer)
        reference = None if masks is None else masks.metadata.get("inner_contours")
        text = f"Tracked {tracked.positions.shape[1]} points over {tracked.positions.shape[0]} frames"
        if reference is not None and np.shape(reference) == tracked.positions.shape:
            report = tracking_report(tracked, reference)
            text += f"; distance to the interpolated outline: mean {np.mean(report['mean']):.2f} px"
        if tracked.outside.any():
            show_warning("Some tracked points left the image; they are flagged 'outside' in the export.")
        self.status.setText(text)

    # ------------------------------------------------------------------ files
    def save_contours(self, path: str) -> Path:
        layer = find_role(self._viewer, ROLE_TRACKED, self._state.image_layer)
        if layer is None:
            raise ValueError("Track the ED contour first (button above).")
        state = {"features": layer.features, "metadata": layer.metadata}
        contours, outside, first = contours_from_points(layer.data, state)
        info = sequence_info(self._state.image_layer)  # 1. Sequence now: a calibration after tracking counts
        spacing = info["pixel_spacing_mm"] or layer.metadata.get("pixel_spacing_mm")
        dt = info["frame_interval_s"]
        if Path(path).suffix.lower() == ".json":
            meta = {"scale": layer.metadata.get("scale"), "software": "napari-nmsr"}
            return save_contours_json(path, contours, outside=outside, pixel_spacing_mm=spacing, first_frame=first,
                                      metadata=meta, frame_interval_s=dt)
        if Path(path).suffix.lower() != ".csv":
            path = str(Path(path).with_suffix(".csv"))
        return save_contours_csv(path, contours, outside=outside, pixel_spacing_mm=spacing, first_frame=first,
                                 frame_interval_s=dt, with_units=True)

    def save_fields(self, path: str) -> Path:
        """The result NPZ with the run's masks and the sequence's spacing and frame interval as set now."""
        result = self._state.result
        if result is None:
            raise ValueError("No finished registration to save yet.")
        info = sequence_info(self._state.image_layer)
        result = dataclasses.replace(
            result,
            frame_interval_s=info["frame_interval_s"] or result.frame_interval_s,
            pixel_spacing_mm=info["pixel_spacing_mm"] or result.pixel_spacing_mm,
            masks=result.masks if result.masks is not None else self._state.run_mask,
        )
        out = result.save(path)
        self._state.current.result_path = str(out)
        return out

    def save_masks(self, path: str) -> Path:
        layer = find_role(self._viewer, ROLE_MASKS, self._state.image_layer)
        if layer is None:
            raise ValueError("No masks yet: press 'Interpolate over the cycle' in 2. Masks.")
        if Path(path).suffix.lower() not in (".tif", ".tiff", ".npy"):
            path = str(Path(path).with_suffix(".tif"))
        return save_masks(path, np.asarray(layer.data))

    def _annotated_shot(self, t: int) -> np.ndarray:
        """The canvas with a band: time stamp of frame ``t``, and the quiver's speed colour bar when shown."""
        shot = self._viewer.screenshot(canvas_only=True, flash=False)
        info = sequence_info(self._state.image_layer)
        vec = find_role(self._viewer, ROLE_VECTORS, self._state.image_layer)
        bar = {}
        if vec is not None and vec.visible and len(vec.data):
            cmap = vec.edge_colormap
            bar = {"colours": cmap.map(np.linspace(0, 1, 64)), "vmax": float(vec.edge_contrast_limits[1]),
                   "units": vec.metadata.get("speed_units", "")}
        return annotate_frame(shot, stamp=time_text(t, info["frame_interval_s"]), **bar)

    def save_png(self, path: str) -> Path:
        """The canvas as shown (image, masks, quiver) as a PNG, with time stamp and colour bar."""
        import imageio.v3 as iio

        image = self._state.image_layer
        t = time_index(self._viewer, image) if image is not None else 0
        shot = self._annotated_shot(t)
        return atomic_write(path, lambda tmp: iio.imwrite(tmp, shot, extension=".png"))

    def movie_fps(self) -> float:
        """The acquisition frame rate (1 / frame interval), or 8 fps when the sequence does not say."""
        image = self._state.image_layer
        dt = sequence_info(image)["frame_interval_s"] if image is not None else None
        return float(1.0 / dt) if dt else 8.0

    def save_movie(self, path: str, fps: float | None = None) -> Path:
        """Step the time slider through every frame and write the annotated canvas as an MP4 played at
        the acquisition frame rate (``fps`` overrides it)."""
        import imageio.v3 as iio

        image = self._state.image_layer
        if image is None:
            raise ValueError("Choose an image layer in 1. Sequence first.")
        fps = self.movie_fps() if fps is None else float(fps)
        dims = self._viewer.dims
        axis = dims.ndim - image.ndim
        before = dims.point[axis]
        shots = []
        try:
            for t in range(image.data.shape[0]):
                dims.set_point(axis, image.data_to_world([t, 0, 0])[0])
                shots.append(self._annotated_shot(t))
        finally:
            dims.set_point(axis, before)
        h, w = (shots[0].shape[0] // 2) * 2, (shots[0].shape[1] // 2) * 2  # H.264 needs even sizes
        movie = np.stack([s[:h, :w] for s in shots])
        return atomic_write(path, lambda tmp: iio.imwrite(tmp, movie, extension=".mp4", fps=fps, codec="libx264"))
