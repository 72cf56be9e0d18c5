"""The analysis report: schema, pixel order of centres, JSON/CSV files, clear errors."""

import csv
import json

import numpy as np
import pytest

from napari_nmsr.core.analysis import SCHEMA_VERSION, analyze_result, write_csv, write_json
from napari_nmsr.core.analysis.analytic import lamb_oseen_field
from napari_nmsr.core.errors import MaskError, ResultFileError
from napari_nmsr.core.result import RegistrationResult

SHAPE = (72, 64)
CENTRE_YX = (30.0, 40.0)  # row 30, column 40


def _result(n_pairs=3, *, interval=0.02, spacing=(0.5, 0.5), nan=False) -> RegistrationResult:
    f = np.stack([lamb_oseen_field(SHAPE, (CENTRE_YX[0] + t, CENTRE_YX[1]), 150.0, 6.0) for t in range(n_pairs)])
    if nan:
        f[1, 0, 5, 5] = np.nan
    fields = np.stack([0.5 * f, f])  # two "scales"
    zeros = np.zeros((2, n_pairs))
    return RegistrationResult(fields=fields, scales=(0.5, 1.0), metrics={"mse": zeros, "mean_cc": zeros},
                              frame_interval_s=interval, pixel_spacing_mm=spacing)


def _cavity(n_frames=4):
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    m = ((yy - 36) / 30.0) ** 2 + ((xx - 38) / 20.0) ** 2 < 1
    return np.broadcast_to(m, (n_frames, *SHAPE)).copy()


def test_report_schema_and_centre_order(tmp_path):
    path = _result().save(tmp_path / "run.npz")
    rep = analyze_result(path, mask=_cavity())
    assert rep["schema_version"] == SCHEMA_VERSION and rep["source"] == str(path)
    assert rep["scale"] == 1.0 and rep["mask"] == "given"
    assert [p["t"] for p in rep["pairs"]] == [0, 1, 2]
    for t, p in enumerate(rep["pairs"]):
        x, y = p["vortex_centre_xy"]
        assert abs(x - CENTRE_YX[1]) < 0.5 and abs(y - CENTRE_YX[0] - t) < 0.5  # [x = column, y = row]
        assert p["vortex_centre_mm"] == pytest.approx([x * 0.5, y * 0.5])
        assert p["vortex_rotation"] == "ccw" and p["n_vortices"] == 1
        assert 0 <= p["vortex_depth"] <= 1 and 0 <= p["vortex_transverse_position"] <= 1
        assert p["time"] == pytest.approx((t + 1) * 0.02)
    assert rep["units"]["vortex_circulation"] == "mm^2/s" and rep["units"]["vorticity"] == "1/s"
    assert rep["summary"]["pairs_with_vortex"] == 3
    assert "counter-clockwise" in rep["definitions"]["sign"]


def test_coarser_scale_and_unknown_calibration():
    rep = analyze_result(_result(interval=None, spacing=None), mask=_cavity(), scale_index=0)
    assert rep["scale"] == 0.5
    assert rep["units"]["vortex_circulation"] == "px^2/frame"
    assert rep["pairs"][0]["vortex_centre_mm"] is None and rep["pairs"][0]["vortex_centre_xy"] is not None


def test_no_mask_analyses_whole_frame_with_a_note():
    rep = analyze_result(_result())
    assert rep["mask"] == "none" and any("whole frame" in n for n in rep["notes"])
    p = rep["pairs"][0]
    assert p["vortex_centre_xy"] is not None and p["vortex_depth"] is None and p["contour_strain"] is None


def test_json_and_csv_files(tmp_path):
    rep = analyze_result(_result(), mask=_cavity())
    jpath = write_json(rep, tmp_path / "out" / "a.json")
    cpath = write_csv(rep, tmp_path / "out" / "a.csv")
    text = jpath.read_text()
    assert "NaN" not in text
    assert json.loads(text)["pairs"][1]["vortex_centre_xy"] == pytest.approx(rep["pairs"][1]["vortex_centre_xy"])
    rows = list(csv.DictReader(cpath.open()))
    assert len(rows) == 3
    assert float(rows[2]["vortex_centre_y [px]"]) == pytest.approx(CENTRE_YX[0] + 2, abs=0.5)
    assert "vortex_circulation [mm^2/s]" in rows[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.csv", "a.json"]  # no temp files left


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ResultFileError, match="NaN"):
        analyze_result(_result(nan=True))
    with pytest.raises(ResultFileError, match="scale index 5"):
        analyze_result(_result(), scale_index=5)
    with pytest.raises(MaskError, match="pixels"):
        analyze_result(_result(), mask=np.ones((10, 10), bool))
    bad = tmp_path / "old.npz"
    np.savez(bad, format_version=np.array(99), fields=np.zeros((1, 1, 2, 4, 4), np.float32))
    with pytest.raises(ResultFileError, match="version"):
        analyze_result(bad)
    junk = tmp_path / "mask.npy"
    junk.write_text("not an array")
    with pytest.raises(MaskError, match="mask file"):
        analyze_result(_result(), mask=junk)


def test_backward_run_adds_consistency_numbers():
    from napari_nmsr.core.analysis.analytic import rigid_rotation_field

    def rot(angle):
        f = np.stack([rigid_rotation_field(SHAPE, angle)] * 3)
        z = np.zeros((1, 3))
        return RegistrationResult(fields=f[None], scales=(1.0,), metrics={"mse": z, "mean_cc": z})

    rep = analyze_result(rot(0.05), mask=_cavity(), backward=rot(-0.05))
    assert all(p["consistency_error_mean"] < 0.01 for p in rep["pairs"])
    bad = analyze_result(rot(0.05), mask=_cavity(), backward=rot(0.05))
    assert all(p["consistency_error_mean"] > 0.5 for p in bad["pairs"])
    assert rep["units"]["consistency_error_mean"] == "px"
