"""Exports carry what other tools need: time (s), units, spacing, frame interval, masks (issue 12)."""

import csv
import json

import numpy as np
import pytest

from napari_nmsr.core.export import load_contours_csv, load_contours_json, save_contours_csv, save_contours_json
from napari_nmsr.core.result import RegistrationResult


@pytest.fixture
def contours():
    return np.random.default_rng(1).uniform(0, 60, size=(4, 3, 2))


def test_contours_csv_has_time_and_units_columns(tmp_path, contours):
    path = save_contours_csv(tmp_path / "c.csv", contours, pixel_spacing_mm=(0.25, 0.25), first_frame=2,
                             frame_interval_s=0.04, with_units=True)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["frame", "time_s", "point", "y", "x", "y_mm", "x_mm", "outside", "units"]
    last = rows[-1]
    assert last["frame"] == "5" and float(last["time_s"]) == pytest.approx(5 * 0.04)
    assert "time_s: s" in last["units"] and "y,x: px" in last["units"] and "y_mm,x_mm: mm" in last["units"]
    back, _, first = load_contours_csv(path)  # the extra columns do not disturb the reader
    assert first == 2 and np.allclose(back, contours, atol=1e-4)


def test_contours_json_has_frame_interval_units_and_times(tmp_path, contours):
    path = save_contours_json(tmp_path / "c.json", contours, pixel_spacing_mm=(0.3, 0.3), frame_interval_s=0.02)
    doc = json.loads(path.read_text())
    assert doc["frame_interval_s"] == 0.02 and doc["pixel_spacing_mm"] == [0.3, 0.3]
    assert doc["units"] == {"points": "px", "points_mm": "mm", "time_s": "s"}
    assert [f["time_s"] for f in doc["frames"]] == pytest.approx([0.0, 0.02, 0.04, 0.06])
    assert np.allclose(load_contours_json(path)["contours"], contours, atol=1e-4)


def test_result_npz_keeps_masks_and_spacing(tmp_path):
    fields = np.random.default_rng(2).normal(0, 1, (1, 3, 2, 12, 16)).astype(np.float32)
    masks = np.zeros((4, 12, 16), bool)
    masks[:, 3:9, 4:12] = True
    result = RegistrationResult(fields=fields, scales=(1.0,), metrics={"mse": np.ones((1, 3)), "mean_cc": np.ones((1, 3))},
                                frame_interval_s=0.05, pixel_spacing_mm=(0.4, 0.4), masks=masks)
    back = RegistrationResult.load(result.save(tmp_path / "r.npz"))
    assert np.array_equal(back.masks, masks) and back.pixel_spacing_mm == (0.4, 0.4)
    with np.load(tmp_path / "r.npz") as z:
        assert z["masks"].dtype == bool and not np.isnan(z["pixel_spacing_mm"]).any()


def test_napari_writer_of_a_tracked_layer_writes_time_and_units(tmp_path):
    from napari_nmsr._writer import write_contours_csv, write_contours_json

    data = np.array([[t, 10.0 + t, 20.0 + k] for t in range(3) for k in range(4)])
    attributes = {"features": {"point": np.tile(np.arange(4), 3)},
                  "metadata": {"pixel_spacing_mm": (0.5, 0.5), "frame_interval_s": 0.1}}
    (out,) = write_contours_csv(str(tmp_path / "t.csv"), data, attributes)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["time_s"]) == pytest.approx(0.2) and "time_s: s" in rows[-1]["units"]
    (out,) = write_contours_json(str(tmp_path / "t.json"), data, attributes)
    assert json.loads(open(out).read())["frame_interval_s"] == 0.1
