"""Atomic writers for contours (CSV, JSON) and masks (NPY, TIFF)."""

import csv
import json

import numpy as np
import pytest

from napari_nmsr.core.errors import MaskError, ResultFileError
from napari_nmsr.core.export import (
    atomic_path,
    atomic_write,
    load_contours_csv,
    load_contours_json,
    load_masks,
    save_contours_csv,
    save_contours_json,
    save_masks,
)


@pytest.fixture
def contours():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 60, size=(3, 5, 2))


def test_atomic_write_leaves_no_partial_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "masks.npy"

    def half_then_crash(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "contours.csv"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise ValueError("bad data")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contours.csv"]


def test_atomic_write_replaces_and_uses_the_same_folder(tmp_path):
    target = tmp_path / "out.txt"
    seen = []
    atomic_write(target, lambda tmp: (seen.append(tmp), tmp.write_text("done")))
    assert target.read_text() == "done"
    assert seen[0].parent == tmp_path and seen[0].suffix == ".txt" and not seen[0].exists()


def test_contours_csv_round_trip_with_mm_and_outside(tmp_path, contours):
    outside = np.zeros((3, 5), bool)
    outside[2, 4] = True
    path = save_contours_csv(tmp_path / "c.csv", contours, outside=outside, pixel_spacing_mm=(0.2, 0.3),
                             first_frame=7)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["frame", "point", "y", "x", "y_mm", "x_mm", "outside"]
    assert len(rows) == 15 and rows[0]["frame"] == "7"
    assert float(rows[1]["x_mm"]) == pytest.approx(contours[0, 1, 1] * 0.3, abs=1e-4)
    back, out_back, first = load_contours_csv(path)
    assert first == 7 and np.allclose(back, contours, atol=1e-4)
    assert np.array_equal(out_back, outside)


def test_contours_csv_without_spacing_has_no_mm_columns(tmp_path, contours):
    path = save_contours_csv(tmp_path / "c.csv", contours)
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "frame,point,y,x,outside"
    assert np.allclose(load_contours_csv(path)[0], contours, atol=1e-4)


def test_contours_json_schema_and_round_trip(tmp_path, contours):
    path = save_contours_json(tmp_path / "c.json", contours, pixel_spacing_mm=(0.5, 0.5),
                              metadata={"source": "sim"})
    doc = json.loads(path.read_text())
    assert doc["format"] == "napari-nmsr-contours" and doc["version"] == 1
    assert doc["n_frames"] == 3 and doc["n_points"] == 5 and doc["pixel_spacing_mm"] == [0.5, 0.5]
    assert doc["frames"][1]["points_mm"][0][0] == pytest.approx(contours[1, 0, 0] * 0.5, abs=1e-4)
    back = load_contours_json(path)
    assert np.allclose(back["contours"], contours, atol=1e-4) and not back["outside"].any()
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ResultFileError):
        load_contours_json(tmp_path / "other.json")


@pytest.mark.parametrize("name", ["m.npy", "m.tif", "m.tiff"])
def test_masks_round_trip(tmp_path, name):
    masks = np.zeros((3, 16, 20), bool)
    masks[:, 4:10, 5:12] = True
    masks[1, 0, 0] = True
    path = save_masks(tmp_path / name, masks)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no stray ".npy.npy" or temporaries
    back = load_masks(path)
    assert back.dtype == bool and np.array_equal(back, masks)


def test_tiff_masks_are_0_255_for_imagej(tmp_path):
    import tifffile

    save_masks(tmp_path / "m.tif", np.eye(8, dtype=bool))
    data = tifffile.imread(tmp_path / "m.tif")
    assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 255}


def test_bad_export_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=".png"):
        save_masks(tmp_path / "m.png", np.ones((4, 4), bool))
    with pytest.raises(MaskError):
        save_contours_csv(tmp_path / "c.csv", np.zeros((3, 5, 3)))
    with pytest.raises(FileNotFoundError):
        save_masks(tmp_path / "missing" / "m.npy", np.ones((4, 4), bool))
    assert list(tmp_path.iterdir()) == []
