"""Damaged sequences and results opened in a real viewer: refused with our error, the viewer keeps its layers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the corpus generator lives in tests/
from damaged_files import CASES, build_corpus  # noqa: E402

from napari_nmsr._reader import napari_get_reader  # noqa: E402
from napari_nmsr.core.errors import NMSRError  # noqa: E402

pytestmark = pytest.mark.gui


def _our_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, NMSRError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def test_every_damaged_file_is_refused_and_the_layers_stay(make_napari_viewer, tmp_path):
    paths = build_corpus(tmp_path / "corpus")
    viewer = make_napari_viewer()
    frames = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    image = viewer.add_image(frames, name="my echo")
    points = viewer.add_points(np.array([[0, 5.0, 5.0]]), name="my points")
    opened = 0
    for kind, case in CASES:
        if kind not in ("sequence", "result"):  # masks and weights are not files napari opens
            continue
        path = str(paths[case])
        if napari_get_reader(path) is None:
            continue  # declined: napari says no reader, nothing is opened
        with pytest.raises(Exception) as info:
            viewer.open(path, plugin="napari-nmsr")
        assert _our_error(info.value), f"{case}: {type(info.value).__name__}: {info.value}"
        assert list(viewer.layers) == [image, points], case
        np.testing.assert_array_equal(image.data, frames)
        opened += 1
    assert opened >= 80


def test_a_damaged_weights_file_is_refused_when_run_is_pressed(make_napari_viewer, tmp_path, monkeypatch):
    from gui_helpers import add_small_sequence, open_panel, set_run
    from napari_nmsr._widget import registration_section

    errors = []
    monkeypatch.setattr(registration_section, "show_error", errors.append)
    paths = build_corpus(tmp_path / "corpus")
    viewer = make_napari_viewer()
    image, _ = add_small_sequence(viewer, n_frames=3)
    widget = open_panel(viewer)
    widget.sequence.select_layer(image)
    set_run(widget, "1", "2")
    reg = widget.registration
    reg.variant.setCurrentIndex(reg.variant.findData("nmsr_v"))
    for case in ("weights-misshaped_tensor", "weights-zip_bomb", "weights-text_renamed"):
        reg.weights.setText(str(paths[case]))
        assert reg.run() is None and not reg.running
        assert paths[case].name in errors[-1]
    assert [lyr.name for lyr in viewer.layers] == [image.name]
