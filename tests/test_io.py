"""Tests of the sequence loader: every format, the metadata, the errors, the memory."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import av
import imageio.v3 as iio
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from scipy.ndimage import gaussian_filter

from napari_nmsr.core.errors import SequenceError
from napari_nmsr.core.io import EchoSequence, can_read, load_sequence

REAL_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "echo-dicom-gdcm" / "US-PAL-8-10x-echo.dcm"
needs_real_dicom = pytest.mark.skipif(not REAL_DICOM.is_file(), reason="shared echo DICOM not available")


# ----------------------------------------------------------------------------- data makers


def speckle(t: int = 8, h: int = 48, w: int = 64, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth speckle pattern sliding 1 px down and 2 px right per frame, range ~[30, 225]/255."""
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.random((h + t, w + 2 * t)), 1.5)
    base = (base - base.min()) / (base.max() - base.min())
    frames = np.stack([base[i : i + h, 2 * i : 2 * i + w] for i in range(t)])
    if dtype == np.uint8:
        return (30 + 195 * frames).astype(np.uint8)
    if dtype == np.uint16:
        return (3000 + 60000 * frames).astype(np.uint16)
    return frames.astype(dtype)


def write_video(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264") -> Path:
    options = {"crf": "10"} if codec == "libx264" else {"qscale": "2"}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for f in frames:
            image = av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, -1), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_dicom(path: Path, frames: np.ndarray, photometric: str = "MONOCHROME2", rle: bool = False, **tags) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.set_pixel_data(frames, photometric, 8 * frames.dtype.itemsize)
    for key, value in tags.items():
        setattr(ds, key, value)
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def us_region(spatial_format: int, dx_cm: float, dy_cm: float) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = spatial_format
    region.RegionDataType = 1
    region.PhysicalUnitsXDirection = 3
    region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = dx_cm
    region.PhysicalDeltaY = dy_cm
    return region


def assert_valid(seq: EchoSequence, shape: tuple[int, int, int]) -> None:
    assert isinstance(seq, EchoSequence)
    assert seq.frames.shape == shape
    assert seq.frames.dtype == np.float32
    assert 0.0 <= seq.frames.min() and seq.frames.max() <= 1.0


# ----------------------------------------------------------------------------- DICOM


@needs_real_dicom
def test_real_palette_rle_dicom_is_channel0_of_the_palette_with_its_frame_time():
    seq = load_sequence(REAL_DICOM)
    assert_valid(seq, (10, 430, 600))
    assert seq.frame_interval_s == pytest.approx(0.076)
    assert seq.pixel_spacing_mm is None  # the file has neither regions nor PixelSpacing
    assert seq.metadata["transfer_syntax"] == "RLE Lossless"
    ds = pydicom.dcmread(REAL_DICOM)
    red = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)[..., 0] / 65535.0  # 16-bit LUT entries
    np.testing.assert_allclose(seq.frames, red, atol=1e-6)
    assert np.abs(np.diff(seq.frames, axis=0)).mean() > 1e-3  # the heart moves between frames


@needs_real_dicom
def test_dicom_without_suffix_and_max_frames(tmp_path):
    copy = tmp_path / "IM0001"
    shutil.copy(REAL_DICOM, copy)
    assert can_read(copy)
    seq = load_sequence(copy, max_frames=3)
    assert_valid(seq, (3, 430, 600))
    np.testing.assert_array_equal(seq.frames, load_sequence(REAL_DICOM).frames[:3])


@needs_real_dicom
def test_truncated_dicom_raises_sequence_error_chained(tmp_path):
    data = REAL_DICOM.read_bytes()
    broken = tmp_path / "cut.dcm"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(SequenceError, match="damaged or incomplete") as info:
        load_sequence(broken)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("rle", [False, True])
def test_monochrome_dicom_regions_give_mm_spacing_and_cine_rate(tmp_path, rle):
    frames = speckle(6, 40, 56)
    regions = [us_region(3, 0.5, 0.5), us_region(1, 0.02, 0.03)]  # spectral region first: skipped
    path = write_dicom(tmp_path / "m.dcm", frames, rle=rle, CineRate=50, SequenceOfUltrasoundRegions=regions)
    seq = load_sequence(path)
    assert_valid(seq, (6, 40, 56))
    np.testing.assert_allclose(seq.frames, frames / 255.0, atol=1e-6)
    assert seq.frame_interval_s == pytest.approx(0.02)
    assert seq.pixel_spacing_mm == pytest.approx((0.3, 0.2))  # (dy, dx) mm from cm


def test_dicom_pixel_spacing_frame_time_vector_and_monochrome1(tmp_path):
    frames = speckle(5, 32, 40)
    path = write_dicom(
        tmp_path / "m1.dcm", frames, photometric="MONOCHROME1",
        PixelSpacing=[0.25, 0.5], FrameTimeVector=[0, 40, 40, 40, 40],
    )
    seq = load_sequence(path)
    np.testing.assert_allclose(seq.frames, 1.0 - frames / 255.0, atol=1e-6)  # bright = echo
    assert seq.pixel_spacing_mm == pytest.approx((0.25, 0.5))
    assert seq.frame_interval_s == pytest.approx(0.04)


def test_rgb_dicom_uses_red_channel(tmp_path):
    frames = speckle(4, 32, 40)
    rgb = np.stack([frames, 255 - frames, np.full_like(frames, 7)], axis=-1)
    seq = load_sequence(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_allclose(seq.frames, frames / 255.0, atol=1e-6)


def test_jpeg_baseline_dicom_decodes_through_pylibjpeg(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    frames = speckle(4, 32, 48)
    path = write_dicom(tmp_path / "j.dcm", frames, FrameTime=33.3)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([iio.imwrite("<bytes>", f, extension=".jpg", quality=95) for f in frames])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path)
    seq = load_sequence(path)
    assert seq.metadata["transfer_syntax"].startswith("JPEG Baseline")
    assert np.abs(seq.frames - frames / 255.0).mean() < 0.01
    assert seq.frame_interval_s == pytest.approx(0.0333)


# ----------------------------------------------------------------------------- video


@pytest.mark.parametrize(("name", "codec"), [("clip.mp4", "libx264"), ("clip.avi", "mpeg4"), ("clip.mkv", "libx264")])
def test_video_round_trip_values_count_and_interval(tmp_path, name, codec):
    frames = speckle(12, 64, 96)
    seq = load_sequence(write_video(tmp_path / name, frames, fps=20, codec=codec))
    assert_valid(seq, (12, 64, 96))
    assert seq.frame_interval_s == pytest.approx(0.05)
    error = np.abs(seq.frames - frames / 255.0)
    assert error.mean() < 0.02  # codec loss only
    assert seq.metadata["codec"] in ("h264", "mpeg4")


def test_video_max_frames(tmp_path):
    seq = load_sequence(write_video(tmp_path / "c.mp4", speckle(10, 32, 32)), max_frames=4)
    assert seq.n_frames == 4


# ----------------------------------------------------------------------------- TIFF / folder / numpy


def test_multipage_tiff_uint8_and_uint16_by_dtype_range(tmp_path):
    frames8 = speckle(6, 40, 50)
    tifffile.imwrite(tmp_path / "a.tif", frames8)
    np.testing.assert_allclose(load_sequence(tmp_path / "a.tif").frames, frames8 / 255.0, atol=1e-6)
    frames16 = speckle(6, 40, 50, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "b.tiff", frames16, compression="zlib")
    np.testing.assert_allclose(load_sequence(tmp_path / "b.tiff").frames, frames16 / 65535.0, atol=1e-6)


def test_large_tiff_goes_through_a_memmap_not_memory(tmp_path, monkeypatch):
    import napari_nmsr.core.io as io_module

    frames = speckle(20, 64, 64, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", frames)
    monkeypatch.setattr(io_module, "_TIFF_IN_MEMORY_LIMIT", 0)
    peak, seq = _peak_bytes_while_loading(tmp_path / "big.tif")
    np.testing.assert_allclose(seq.frames, frames / 65535.0, atol=1e-6)
    assert peak < 1.2 * seq.frames.nbytes  # the uint16 copy (0.5x) lives on disk


def test_rgb_tiff_and_imagej_interval(tmp_path):
    frames = speckle(5, 32, 40)
    rgb = np.stack([frames, 255 - frames, frames // 2], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_allclose(load_sequence(tmp_path / "rgb.tif").frames, frames / 255.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "ij.tif", frames, imagej=True, metadata={"axes": "TYX", "finterval": 0.03})
    seq = load_sequence(tmp_path / "ij.tif")
    assert seq.n_frames == 5 and seq.frame_interval_s == pytest.approx(0.03)


def test_folder_frames_in_natural_order_channel0(tmp_path):
    frames = speckle(11, 32, 40)
    for i, f in enumerate(frames):
        image = np.stack([f, np.zeros_like(f), 255 - f], axis=-1) if i % 2 else f
        iio.imwrite(tmp_path / f"frame{i + 1}.png", image)
    (tmp_path / "notes.txt").write_text("not a frame")
    seq = load_sequence(tmp_path)
    assert_valid(seq, (11, 32, 40))
    np.testing.assert_allclose(seq.frames, frames / 255.0, atol=1e-6)  # frame2 before frame10
    assert seq.metadata["files"][:3] == ["frame1.png", "frame2.png", "frame3.png"]


def test_npy_float_min_max_and_npz_key_choice(tmp_path):
    frames = speckle(4, 16, 20, dtype=np.float64) * 7.0 - 3.0
    np.save(tmp_path / "f.npy", frames)
    seq = load_sequence(tmp_path / "f.npy")
    expected = (frames - frames.min()) / (frames.max() - frames.min())
    np.testing.assert_allclose(seq.frames, expected, atol=1e-6)
    assert seq.frames.min() == 0.0 and seq.frames.max() == pytest.approx(1.0)
    other = speckle(3, 16, 20, seed=5)
    np.savez(tmp_path / "k.npz", aaa=other, frames=speckle(4, 16, 20))
    assert load_sequence(tmp_path / "k.npz").n_frames == 4  # 'frames' wins over the first key
    np.savez(tmp_path / "first.npz", whatever=other)
    np.testing.assert_allclose(load_sequence(tmp_path / "first.npz").frames, other / 255.0, atol=1e-6)


def test_one_constant_frame_inside_a_moving_sequence_is_allowed(tmp_path):
    frames = speckle(5, 16, 20)
    frames[2] = 100
    np.save(tmp_path / "c.npy", frames)
    seq = load_sequence(tmp_path / "c.npy")
    np.testing.assert_allclose(seq.frames[2], 100 / 255.0, atol=1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("suffix", [".dcm", ".avi", ".mp4", ".tif", ".npy", ".npz"])
def test_garbage_bytes_raise_sequence_error(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(SequenceError) as info:
        load_sequence(path)
    assert path.name in str(info.value)
    assert "damaged" in str(info.value) or "not a" in str(info.value)


def test_truncated_video_and_tiff_raise_sequence_error(tmp_path):
    data = write_video(tmp_path / "v.avi", speckle(10, 32, 32), codec="mpeg4").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:300])  # header only
    with pytest.raises(SequenceError):
        load_sequence(cut)
    (tmp_path / "tail.avi").write_bytes(data[: int(0.95 * len(data))])  # the first frames survive
    with pytest.warns(UserWarning, match="truncated"):
        seq = load_sequence(tmp_path / "tail.avi")
    assert 2 <= seq.n_frames == seq.metadata["decoded_frames"] < seq.metadata["expected_frames"] == 10
    tifffile.imwrite(tmp_path / "t.tif", speckle(6, 32, 32))
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(SequenceError):
        load_sequence(tmp_path / "cut.tif")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 16, 16), np.uint8) + np.arange(16, dtype=np.uint8), "at least two frames"),
        (np.arange(256, dtype=np.uint8).reshape(16, 16), "at least two frames"),
        (np.full((4, 16, 16), 77, np.uint8), "flat grey"),
        (np.full((4, 16, 16), 0.5), "flat grey"),
        (np.zeros((5, 0, 10), np.uint8), "empty images"),
        (np.zeros((5, 4, 3, 2, 2), np.uint8), "expected frames"),
    ],
)
def test_degenerate_arrays_raise_sequence_error(tmp_path, array, message):
    np.save(tmp_path / "d.npy", array)
    with pytest.raises(SequenceError, match=message):
        load_sequence(tmp_path / "d.npy")


def test_max_frames_below_two_is_a_programming_error(tmp_path):
    np.save(tmp_path / "a.npy", speckle(3, 8, 8))
    with pytest.raises(ValueError, match="at least 2"):
        load_sequence(tmp_path / "a.npy", max_frames=1)


def test_nan_frame_is_named(tmp_path):
    frames = speckle(5, 16, 16, dtype=np.float32)
    frames[3, 2, 2] = np.nan
    np.save(tmp_path / "n.npy", frames)
    with pytest.raises(SequenceError, match="Frame 4 .*NaN"):
        load_sequence(tmp_path / "n.npy")


def test_missing_unsupported_empty_folder_and_mixed_sizes(tmp_path):
    with pytest.raises(SequenceError, match="does not exist"):
        load_sequence(tmp_path / "nope.dcm")
    (tmp_path / "report.txt").write_text("hello")
    with pytest.raises(SequenceError, match="not a format"):
        load_sequence(tmp_path / "report.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SequenceError, match="no frame images"):
        load_sequence(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    iio.imwrite(mixed / "1.png", speckle(1, 16, 16)[0])
    iio.imwrite(mixed / "2.png", speckle(1, 16, 20)[0])
    with pytest.raises(SequenceError, match="same size"):
        load_sequence(mixed)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}, None]), allow_pickle=True)
    with pytest.raises(SequenceError, match="Python objects"):
        load_sequence(pickled)


def test_can_read(tmp_path):
    np.save(tmp_path / "a.npy", speckle(3, 8, 8))
    (tmp_path / "b.txt").write_text("x")
    frames = tmp_path / "frames"
    frames.mkdir()
    iio.imwrite(frames / "f1.png", speckle(1, 8, 8)[0])
    (tmp_path / "empty").mkdir()
    assert can_read(tmp_path / "a.npy") and can_read(str(frames))
    assert not can_read(tmp_path / "b.txt")
    assert not can_read(tmp_path / "empty")
    assert not can_read(tmp_path / "missing.avi")


# ----------------------------------------------------------------------------- memory


def _peak_bytes_while_loading(path: Path) -> tuple[int, EchoSequence]:
    tracemalloc.start()
    try:
        seq = load_sequence(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, seq


@pytest.mark.parametrize("kind", ["mp4", "tif", "mkv"])
def test_loading_holds_about_one_float32_copy(tmp_path, kind):
    """60x192x256: a list of uint8 frames plus a stacked float32 copy would be
    >= 1.25x the output; frame-by-frame filling stays near 1.0x (+ the uint8
    TIFF decoded in memory: 0.25x)."""
    frames = speckle(60, 192, 256)
    if kind == "tif":
        tifffile.imwrite(tmp_path / "m.tif", frames)
        path, limit = tmp_path / "m.tif", 1.35
    else:  # the MKV header has no frame count: the size comes from the duration
        path, limit = write_video(tmp_path / f"m.{kind}", frames), 1.15
    peak, seq = _peak_bytes_while_loading(path)
    assert seq.frames.shape == (60, 192, 256)
    assert peak < limit * seq.frames.nbytes, f"peak {peak / seq.frames.nbytes:.2f}x the output"


def test_npz_carries_frame_interval_and_spacing(tmp_path):
    rng = np.random.default_rng(5)
    frames = rng.random((3, 20, 24)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", frames=frames, frame_interval_s=np.float64(0.02),
             pixel_spacing_mm=np.array([0.3, 0.4]))
    seq = load_sequence(tmp_path / "seq.npz")
    assert seq.frame_interval_s == pytest.approx(0.02)
    assert seq.pixel_spacing_mm == pytest.approx((0.3, 0.4))
    np.savez(tmp_path / "bad.npz", frames=frames, frame_interval_s=np.float64(np.nan),
             pixel_spacing_mm=np.array([0.3, -1.0]))
    bad = load_sequence(tmp_path / "bad.npz")
    assert bad.frame_interval_s is None and bad.pixel_spacing_mm is None
