"""The npe2 manifest, its readers, writers and sample data (no viewer needed)."""

from pathlib import Path

import numpy as np
import pytest

from napari_nmsr import _reader, _sample_data, _writer
from napari_nmsr.core.errors import ResultFileError, SequenceError
from napari_nmsr.core.export import load_contours_csv, load_contours_json, load_masks
from napari_nmsr.core.result import RegistrationResult

ROOT = Path(__file__).resolve().parents[2]
DICOM = ROOT.parent / "shared" / "data" / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"


def test_manifest_validates_and_every_command_resolves():
    import npe2
    from npe2.manifest.utils import import_python_name

    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-nmsr"
    # the installed package ships the same manifest (napari_nmsr/napari.yaml -> ../napari.yaml)
    packaged = npe2.PluginManifest.from_file(ROOT / "napari_nmsr" / "napari.yaml")
    assert packaged.contributions.commands == manifest.contributions.commands
    ids = {c.id for c in manifest.contributions.commands}
    for command in manifest.contributions.commands:
        assert callable(import_python_name(command.python_name)), command.id
    used = (
        [r.command for r in manifest.contributions.readers]
        + [w.command for w in manifest.contributions.writers]
        + [s.command for s in manifest.contributions.sample_data]
        + [w.command for w in manifest.contributions.widgets]
    )
    assert set(used) == ids  # every command is used, every use is declared
    # npe2's own validation of the installed plugin (what `npe2 validate napari-nmsr` runs)
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("napari-nmsr").name == "napari-nmsr"


def test_reader_declares_every_format_the_loader_reads():
    import npe2

    from napari_nmsr.core.io import SUPPORTED_SUFFIXES

    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    patterns = {p.lower() for r in manifest.contributions.readers for p in r.filename_patterns}
    assert {f"*{s}" for s in SUPPORTED_SUFFIXES} <= patterns
    assert all(r.accepts_directories for r in manifest.contributions.readers)


def test_reader_npy_sequence_and_unknown_files(tmp_path):
    frames = (np.random.default_rng(0).random((4, 32, 40)) * 255).astype(np.uint8)
    np.save(tmp_path / "cine.npy", frames)
    reader = _reader.napari_get_reader(str(tmp_path / "cine.npy"))
    data, kwargs, kind = reader(str(tmp_path / "cine.npy"))[0]
    assert kind == "image" and data.shape == (4, 32, 40) and data.dtype == np.float32
    np.testing.assert_allclose(data, frames / 255.0, atol=1e-6)
    assert kwargs["metadata"]["nmsr"]["frame_interval_s"] is None
    assert _reader.napari_get_reader(str(tmp_path / "notes.txt")) is None
    (tmp_path / "broken.dcm").write_bytes(b"not a dicom")
    with pytest.raises(SequenceError):
        _reader.read_sequence(str(tmp_path / "broken.dcm"))


def test_reader_opens_a_folder_of_frames(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(4)
    for i in range(3):
        iio.imwrite(tmp_path / f"frame_{i}.png", (rng.random((20, 24)) * 255).astype(np.uint8))
    reader = _reader.napari_get_reader(str(tmp_path))
    assert reader is _reader.read_sequence
    data, kwargs, kind = reader(str(tmp_path))[0]
    assert kind == "image" and data.shape == (3, 20, 24)


@pytest.mark.skipif(not DICOM.is_file(), reason="shared real data not available")
def test_reader_dicom_carries_frame_interval():
    reader = _reader.napari_get_reader(str(DICOM))
    data, kwargs, kind = reader(str(DICOM))[0]
    assert data.shape == (10, 430, 600)
    assert kwargs["scale"][0] == pytest.approx(0.076)
    assert str(kwargs["units"][0]) == "s"
    assert kwargs["metadata"]["nmsr"]["frame_interval_s"] == pytest.approx(0.076)


def _small_result(tmp_path):
    rng = np.random.default_rng(1)
    fields = rng.normal(0, 1, (2, 3, 2, 24, 24)).astype(np.float32)
    res = RegistrationResult(
        fields=fields, scales=(0.5, 1.0), metrics={"mse": np.ones((2, 3)), "mean_cc": np.ones((2, 3))},
        frame_interval_s=0.02, pixel_spacing_mm=(0.3, 0.3),
    )
    return res, res.save(tmp_path / "run.npz")


def test_result_npz_opens_as_vectors_and_writer_saves_it_back(tmp_path):
    res, path = _small_result(tmp_path)
    reader = _reader.napari_get_reader(str(path))
    assert reader is _reader.read_result
    data, kwargs, kind = reader(str(path))[0]
    assert kind == "vectors" and data.shape[1:] == (2, 4)
    assert set(np.unique(data[:, 0, 0])) == {0, 1}  # both scales on the first axis
    assert kwargs["scale"] == (1.0, 0.02, 0.3, 0.3)
    out = _writer.write_fields_npz(str(tmp_path / "again.npz"), data, {"metadata": kwargs["metadata"]})
    np.testing.assert_array_equal(RegistrationResult.load(out[0]).fields, res.fields)
    with pytest.raises(ResultFileError):
        _writer.write_fields_npz(str(tmp_path / "x.npz"), data, {"metadata": {}})


def test_contour_and_mask_writers_round_trip(tmp_path):
    n_frames, n = 4, 5
    pos = np.random.default_rng(2).random((n_frames, n, 2)) * 30
    rows = np.concatenate([np.column_stack([np.full(n, t), pos[t]]) for t in range(n_frames)])
    shuffled = np.random.default_rng(3).permutation(len(rows))  # the writer must re-order by frame and point
    attrs = {
        "features": {"point": np.tile(np.arange(n), n_frames)[shuffled], "outside": np.zeros(len(rows), bool)},
        "metadata": {"pixel_spacing_mm": (0.5, 0.25)},
    }
    csv_path = _writer.write_contours_csv(str(tmp_path / "c.csv"), rows[shuffled], attrs)[0]
    contours, outside, first = load_contours_csv(csv_path)
    np.testing.assert_allclose(contours, pos, atol=1e-3)
    assert first == 0 and not outside.any()
    assert "y_mm" in Path(csv_path).read_text().splitlines()[0]
    doc = load_contours_json(_writer.write_contours_json(str(tmp_path / "c.json"), rows[shuffled], attrs)[0])
    np.testing.assert_allclose(doc["contours"], pos, atol=1e-3)
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[1, 4:9, 3:12] = 1
    tif = _writer.write_masks_tiff(str(tmp_path / "m.tif"), masks, {})[0]
    np.testing.assert_array_equal(load_masks(tif), masks > 0)


@pytest.mark.parametrize("make, mode", [(_sample_data.vortex_sample, "blood"), (_sample_data.myocardium_sample, "myocardium")])
def test_sample_data_has_image_and_ed_es_masks(make, mode):
    (frames, ikw, ikind), (labels, lkw, lkind) = make()
    assert ikind == "image" and lkind == "labels"
    assert frames.ndim == 3 and frames.dtype == np.float32 and 0 <= frames.min() and frames.max() <= 1
    meta = ikw["metadata"]["nmsr"]
    assert meta["mode"] == mode and ikw["scale"][0] == pytest.approx(meta["frame_interval_s"])
    painted = [t for t in range(len(labels)) if labels[t].any()]
    assert painted == sorted({meta["ed_index"], meta["es_index"]})
    if mode == "myocardium":
        assert set(np.unique(labels)) == {0, 1, 2}  # cavity and wall
    assert lkw["metadata"]["nmsr_role"] == "drawn"
