"""Helpers shared by the GUI tests (imported as a plain module: tests/ is not a package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


def save_screenshot(image: np.ndarray, path: Path) -> Path:
    """Write an RGBA screenshot and check it shows something (not one flat colour)."""
    import imageio.v3 as iio

    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    rgb = image[..., :3].astype(float)
    assert rgb.std() > 5, f"screenshot {path.name} is blank"
    assert len(np.unique(rgb.reshape(-1, 3)[::7], axis=0)) > 20, f"screenshot {path.name} has almost no content"
    iio.imwrite(path, image)
    return path


def open_panel(viewer):
    """Dock the workflow panel through the plugin manifest (as the Plugins menu does)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-nmsr", "NMSR workflow")
    return widget


def add_small_sequence(viewer, n_frames: int = 6):
    """The vortex sample cut to 6 frames at 64 x 64 px (a fast run), with its timing and spacing."""
    from napari_nmsr._sample_data import load_case

    case = load_case("vortex")
    frames = np.ascontiguousarray(case["frames"][:n_frames, ::2, ::2])
    masks = np.ascontiguousarray(case["masks"][:n_frames, ::2, ::2])
    dt = float(case["frame_interval_s"])
    spacing = tuple(2 * float(v) for v in case["pixel_spacing_mm"])
    layer = viewer.add_image(
        frames, name="small vortex", scale=(dt, *spacing), units=("s", "mm", "mm"),
        metadata={"nmsr": {"frame_interval_s": dt, "pixel_spacing_mm": spacing, "ed_index": 0, "es_index": 4}},
    )
    return layer, masks


def wait_for_run(qtbot, widget, timeout_ms: int = 120_000) -> None:
    qtbot.waitUntil(lambda: not widget.registration.running, timeout=timeout_ms)


def set_run(widget, scales: str, steps: str) -> None:
    widget.registration.scales.setText(scales)
    widget.registration.steps.setText(steps)
