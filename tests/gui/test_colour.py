"""Colour cines: the original RGB beside the grayscale that is registered (issue 12)."""

from pathlib import Path

import numpy as np
import pytest

from gui_helpers import open_panel
from napari_nmsr.core.colour import load_colour_frames

pytestmark = pytest.mark.gui

DICOM = Path(__file__).resolve().parents[3] / "shared" / "data" / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"


def _colour_video(path):
    """A 4-frame 64 x 96 colour MP4: grey speckle with a red blob (colour Doppler-like) moving right."""
    import imageio.v3 as iio

    rng = np.random.default_rng(5)
    frames = np.repeat((rng.random((4, 64, 96, 1)) * 120 + 40).astype(np.uint8), 3, axis=3)
    for t in range(4):
        frames[t, 20:40, 20 + 8 * t:44 + 8 * t] = (220, 30, 30)
    iio.imwrite(path, frames, extension=".mp4", fps=10, codec="libx264")
    return path


def test_colour_video_shown_beside_the_grayscale(make_napari_viewer, tmp_path):
    path = _colour_video(tmp_path / "doppler.mp4")
    rgb = load_colour_frames(path)
    assert rgb.shape == (4, 64, 96, 3) and rgb[0, 30, 30, 0] > 150 and rgb[0, 30, 30, 1] < 90
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    (image,) = viewer.open(str(path), plugin="napari-nmsr")
    assert widget.state.image_layer == image and image.data.ndim == 3  # grayscale (channel 0) is registered
    colour = widget.sequence.show_colours()
    assert colour.rgb and colour.data.shape == (4, 64, 96, 3)
    assert colour.translate[2] >= image.translate[2] + 96 * image.scale[2]  # beside, not on top
    assert [lyr.name for lyr in widget.sequence.image_layers()] == [image.name]  # not a sequence to register
    widget.sequence.set_pixel_size(0.3)  # calibration keeps it beside the rescaled image
    assert colour.scale[1] == pytest.approx(0.3) and colour.translate[2] >= 96 * 0.3


def test_grey_sequence_has_no_colours(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    viewer.add_image(np.random.default_rng(0).random((3, 32, 32)).astype(np.float32), name="grey")
    assert widget.sequence.show_colours() is None


@pytest.mark.skipif(not DICOM.is_file(), reason="shared real data not available")
def test_palette_colour_dicom_keeps_its_colours():
    rgb = load_colour_frames(DICOM)
    assert rgb.shape == (10, 430, 600, 3) and rgb.dtype == np.uint8
    differs = np.abs(rgb[..., 0].astype(int) - rgb[..., 2].astype(int)) > 30
    assert differs.sum() > 100  # the colour Doppler pixels are really coloured
