"""The Analysis section: layers (map under the quiver, vortex centres, path), table, CSV export."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_nmsr._widget.analysis_section import AnalysisSection
from napari_nmsr._widget.layers import ROLE_KEY, ROLE_VECTORS, SOURCE_KEY
from napari_nmsr._widget.state import WorkflowState
from napari_nmsr.core.analysis.analytic import lamb_oseen_field
from napari_nmsr.core.result import RegistrationResult

SHAPE = (48, 56)


def _result(n_pairs=3):
    f = np.stack([lamb_oseen_field(SHAPE, (20.0 + t, 30.0), 120.0, 5.0) for t in range(n_pairs)])
    zeros = np.zeros((2, n_pairs))
    return RegistrationResult(fields=np.stack([0.5 * f, f]), scales=(0.5, 1.0),
                              metrics={"mse": zeros, "mean_cc": zeros}, frame_interval_s=0.02,
                              pixel_spacing_mm=(0.4, 0.4))


def test_analysis_section_adds_layers_table_and_csv(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(0).random((4, *SHAPE)).astype(np.float32) * 0.5 + 0.25)
    viewer.add_vectors(np.zeros((1, 2, 4)), ndim=4, metadata={ROLE_KEY: ROLE_VECTORS, SOURCE_KEY: str(image.unique_id)})
    state = WorkflowState(image_layer=image, result=_result())
    section = AnalysisSection(viewer, state)
    qtbot.addWidget(section)
    assert section.scale.count() == 2 and section.scale.currentText() == "1"

    section.compute()
    qtbot.waitUntil(lambda: section.report is not None, timeout=60_000)
    qtbot.waitUntil(lambda: not section.running, timeout=10_000)

    names = [layer.name for layer in viewer.layers]
    vort = next(layer for layer in viewer.layers if layer.name.startswith("NMSR vorticity"))
    vec = next(layer for layer in viewer.layers if layer.metadata.get(ROLE_KEY) == ROLE_VECTORS)
    assert viewer.layers.index(vort) < viewer.layers.index(vec), names  # drawn under the quiver
    assert vort.data.shape == (4, *SHAPE) and float(vort.data[0].max()) == 0.0  # frame 0 has no pair
    assert vort.data[1][20, 30] > 0  # counter-clockwise vortex -> positive (red)
    points = next(layer for layer in viewer.layers if layer.name == "vortex centres")
    np.testing.assert_allclose(points.data[:, 0], [1, 2, 3])  # pair t drawn on frame t+1
    np.testing.assert_allclose(points.data[:, 1:], [[20, 30], [21, 30], [22, 30]], atol=0.5)
    assert any(layer.name == "main vortex path" for layer in viewer.layers)

    rows = section.table_rows()
    spacing = _result().pixel_spacing_mm[0]  # the centre is shown in mm when the pixel size is known
    assert len(rows) == 3 and float(rows[0][2]) == pytest.approx(30.0 * spacing, abs=0.06)
    assert float(rows[2][3]) == pytest.approx(22.0 * spacing, abs=0.06)
    assert section.table.horizontalHeaderItem(2).text() == "x\nmm"
    assert [r[0] for r in rows] == ["1", "2", "3"]  # the frame the slider shows (pair t on frame t+1)
    assert section.table.horizontalHeaderItem(1).text() == "t\nms"
    assert float(rows[0][1]) == pytest.approx(1000 * section.report["pairs"][0]["time"], abs=0.5)
    main = points.features["main"].to_numpy()
    assert main.all() and points.symbol[0].value == "star"  # the main vortex is marked

    section.map_kind.setCurrentText("circumferential strain")
    assert any(layer.name.startswith("NMSR circumferential strain") for layer in viewer.layers)

    out = section.export_csv(tmp_path / "analysis.csv")
    with open(out) as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_analysis_section_without_result_says_so(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    section = AnalysisSection(viewer, WorkflowState())
    qtbot.addWidget(section)
    section.compute()
    assert "No result" in section.status.text()
