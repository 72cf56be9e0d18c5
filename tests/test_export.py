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


# ----------------------------------------------------------------------------- temporaries of atomic writes

_SLOW_WRITER = """
import sys, time
from pathlib import Path
from napari_nmsr.cli_checks import run_quietly
from napari_nmsr.core.export import atomic_write

def slow(tmp):
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(60)

sys.exit(run_quietly("nmsr", "test", lambda: atomic_write(Path(sys.argv[1]), slow) and 0))
"""


def _start_slow_writer(target):
    import os
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.is_file()
    return proc, tmp


def test_temporaries_have_a_recognisable_name(tmp_path):
    import os

    from napari_nmsr.core.export import TEMP_MARKER

    seen = []
    atomic_write(tmp_path / "res.npz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].startswith(f".res.npz{TEMP_MARKER}{os.getpid()}-") and seen[0].endswith(".npz")


def test_keyboard_interrupt_in_the_writer_removes_the_temporary(tmp_path):
    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.csv", interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("os").name == "nt", reason="POSIX signals")
def test_sigterm_during_a_cli_write_removes_the_temporary(tmp_path):
    import signal

    proc, tmp = _start_slow_writer(tmp_path / "res.npz")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0 and not tmp.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("os").name == "nt", reason="POSIX signals")
def test_a_killed_writers_temporary_is_removed_by_the_next_write_to_the_same_target(tmp_path):
    import os
    import signal

    from napari_nmsr.core.export import temporary_files

    proc, stale = _start_slow_writer(tmp_path / "res.npz")
    proc.send_signal(signal.SIGKILL)  # nothing can be caught: the temporary stays
    proc.wait(timeout=30)
    assert stale.exists()
    other = tmp_path / ".other.npz.nmsr-tmp-1-abc.npz"  # another target's temporary is not touched
    other.write_text("x")
    legacy = tmp_path / ".res.npz.k2j3h4.tmp.npz"  # an older version's name, an hour old
    legacy.write_text("x")
    os.utime(legacy, (legacy.stat().st_mtime - 3600,) * 2)
    alive = []

    def check_live(tmp):  # our own live temporary survives the cleaning
        alive.append(temporary_files(tmp_path / "res.npz"))
        tmp.write_text("new")

    atomic_write(tmp_path / "res.npz", check_live)
    assert not stale.exists() and not legacy.exists() and other.exists()
    assert len(alive[0]) == 1 and alive[0][0].name.startswith(f".res.npz.nmsr-tmp-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.nmsr-tmp-1-abc.npz", "res.npz"]
    assert (tmp_path / "res.npz").read_text() == "new"


def test_a_running_writers_temporary_is_kept(tmp_path):
    import signal

    proc, running = _start_slow_writer(tmp_path / "res.npz")
    try:
        atomic_write(tmp_path / "res.npz", lambda tmp: tmp.write_text("mine"))
        assert running.exists()  # another live process is still writing it
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_atomic_write_refuses_a_folder_target(tmp_path):
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "out.npz", lambda tmp: tmp.write_text("x"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


@pytest.mark.parametrize("values, ok", [([0, 1], True), ([0.0, 1.0], True), ([False, True], True),
                                        ([0, 2], False), ([0.0, np.nan], False), ([0, 255], False)])
def test_npy_masks_must_be_booleans_or_0_1(tmp_path, values, ok):
    arr = np.array(values * 8).reshape(4, 4)
    np.save(tmp_path / "m.npy", arr)
    if ok:
        assert load_masks(tmp_path / "m.npy").dtype == bool
    else:
        with pytest.raises(MaskError, match="0/1"):
            load_masks(tmp_path / "m.npy")
