"""A generated corpus of damaged files of every kind napari-nmsr reads back (imported by tests).

``CASES`` lists (kind, name) pairs; :func:`build_corpus` writes every case
into a folder and returns {name: path}. Kinds: "sequence" (what
``load_sequence`` reads), "mask" (``--mask`` files), "result" (result NPZ
files) and "weights" (``nmsr train`` files). Each kind has at least 40
cases: byte-level damage of a good file (empty, truncated, overwritten
header, another format renamed, a zip bomb, a huge declared shape) and
damage of the content (missing keys, wrong dtypes and shapes, NaN, values
that are not 0/1, inconsistent scales, foreign conventions...). Every case
must be refused by the project's own error type; none of them is valid.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

KINDS = ("sequence", "mask", "result", "weights")
SUFFIX = {"sequence": ".npy", "mask": ".npy", "result": ".npz", "weights": ".pt"}
SEQ_SHAPE = (4, 32, 32)

# 1x1 PNG (a real image file, given where a mask or array is expected)
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
    "0000000a49444154789c63600000000200015e2bb0a30000000049454e44ae426082")


# ----------------------------------------------------------------------------- good files


def good_frames() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random(SEQ_SHAPE).astype(np.float32)


def good_mask() -> np.ndarray:
    m = np.zeros(SEQ_SHAPE, bool)
    m[:, 8:24, 10:22] = True
    return m


def good_result_arrays() -> dict[str, np.ndarray]:
    """The arrays of a valid result file (written through RegistrationResult.save)."""
    from napari_nmsr.core.result import RegistrationResult

    rng = np.random.default_rng(1)
    res = RegistrationResult(
        fields=(rng.standard_normal((2, 3, 2, 32, 32)) * 0.5).astype(np.float32),
        scales=(0.5, 1.0),
        metrics={"mse": rng.random((2, 3)) * 1e-3, "mean_cc": rng.random((2, 3))},
        config={"variant": "nmsr_vi", "scales": [0.5, 1.0], "steps": 3},
        frame_interval_s=0.02, pixel_spacing_mm=(0.3, 0.3),
        steps_run=np.array([3, 3]), seconds=np.array([0.1, 0.2]), final_loss=np.array([-0.5, -0.6]),
        device="cpu",
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = res.save(Path(d) / "good.npz")
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


def good_weights() -> dict:
    import torch

    from napari_nmsr.core.train import WEIGHTS_FORMAT
    from napari_nmsr.core.unet import UNet

    torch.manual_seed(0)
    enc, dec = [4, 4], [4, 4]
    states = [UNet(enc, dec).state_dict() for _ in range(2)]
    return {"format": WEIGHTS_FORMAT, "scales": [0.5, 1.0], "state_dicts": states,
            "architecture": {"encoder": enc, "decoder": dec}, "config": {}, "n_sequences": 2}


# ----------------------------------------------------------------------------- writers


def _save_npy(path: Path, arr, allow_pickle=False) -> None:
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=allow_pickle)


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _save_torch(path: Path, payload) -> None:
    import torch

    torch.save(payload, path)


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _huge_header_npy(shape=(100_000, 4096, 4096), dtype="<f4") -> bytes:
    """An NPY whose header declares terabytes but holds 1 KB: refused from the header alone."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 1024


def _bomb_member(name: str, shape=(25, 1024, 1024)) -> tuple[str, Callable[[zipfile.ZipFile], None]]:
    """A deflated NPY member of 100 MiB of zeros (about 100 KB compressed), written in chunks."""
    def write(z: zipfile.ZipFile) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            chunk = bytes(4 * 2**20)
            for _ in range(int(np.prod(shape)) * 4 // len(chunk)):
                fh.write(chunk)
    return name, write


def _zip(path: Path, members: dict[str, bytes], bombs=()) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for _, write in bombs:
            write(z)


def _npz_members(arrays: dict) -> dict[str, bytes]:
    return {f"{k}.npy": _npy_bytes(v) for k, v in arrays.items()}


# ----------------------------------------------------------------------------- byte-level damage (every kind)


def _good_bytes(kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "sequence":
        np.save(buf, good_frames())
    elif kind == "mask":
        np.save(buf, good_mask())
    elif kind == "result":
        np.savez(buf, **good_result_arrays())
    else:
        import torch

        torch.save(good_weights(), buf)
    return buf.getvalue()


def _byte_cases(kind: str) -> dict[str, Callable[[Path], None]]:
    def good() -> bytes:
        return _good_bytes(kind)

    def overwrite(offset_fraction: float, n: int):
        def make(p: Path):
            data = bytearray(good())
            start = int(len(data) * offset_fraction)
            data[start:start + n] = np.random.default_rng(3).integers(0, 256, n, dtype=np.uint8).tobytes()
            p.write_bytes(bytes(data))
        return make

    cases = {
        "empty": lambda p: p.write_bytes(b""),
        "one_byte": lambda p: p.write_bytes(b"\x93"),
        "magic_only": lambda p: p.write_bytes(good()[:6]),
        "truncated_header": lambda p: p.write_bytes(good()[:40]),
        "truncated_half": lambda p: p.write_bytes(good()[: len(good()) // 2]),
        "truncated_end": lambda p: p.write_bytes(good()[:-30]),
        "header_garbage": overwrite(0.0, 64),
        "text_renamed": lambda p: p.write_text("frame,value\n1,2\n"),
        "png_renamed": lambda p: p.write_bytes(PNG),
        "random_bytes": lambda p: p.write_bytes(np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "zeros": lambda p: p.write_bytes(bytes(4096)),
        "html_error_page": lambda p: p.write_text("<html><body>404 Not Found</body></html>"),
    }
    if kind in ("result", "weights"):  # zip containers: damage inside the directory and the data
        cases["central_directory_garbage"] = overwrite(0.999, 16)
        cases["empty_zip"] = lambda p: _zip(p, {})
        cases["zip_of_text"] = lambda p: _zip(p, {"readme.txt": b"hello"})
    return cases


# ----------------------------------------------------------------------------- content damage per kind


def _sequence_cases() -> dict[str, Callable[[Path], None]]:
    f = good_frames()
    nan = f.copy()
    nan[2, 5, 5] = np.nan
    inf = f.copy()
    inf[1, 0, 0] = np.inf
    return {
        "object_array": lambda p: _save_npy(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "nan_frame": lambda p: _save_npy(p, nan),
        "inf_frame": lambda p: _save_npy(p, inf),
        "one_frame": lambda p: _save_npy(p, f[:1]),
        "single_image_2d": lambda p: _save_npy(p, f[0]),
        "constant": lambda p: _save_npy(p, np.full(SEQ_SHAPE, 0.5, np.float32)),
        "constant_uint8": lambda p: _save_npy(p, np.full(SEQ_SHAPE, 7, np.uint8)),
        "all_false_bool": lambda p: _save_npy(p, np.zeros(SEQ_SHAPE, bool)),
        "one_dimensional": lambda p: _save_npy(p, f.ravel()),
        "five_dimensional": lambda p: _save_npy(p, f[None, None]),
        "many_channels": lambda p: _save_npy(p, np.repeat(f[..., None], 6, axis=-1)),
        "complex": lambda p: _save_npy(p, f.astype(np.complex64)),
        "strings": lambda p: _save_npy(p, np.full(SEQ_SHAPE, "ab")),
        "empty_frames": lambda p: _save_npy(p, np.zeros((4, 0, 32), np.float32)),
        "no_frames": lambda p: _save_npy(p, np.zeros((0, 32, 32), np.float32)),
        "huge_declared_shape": lambda p: p.write_bytes(_huge_header_npy()),
        "truncated_data": lambda p: p.write_bytes(_npy_bytes(f)[:-100]),
        "npz_empty_archive": lambda p: _zip(p.with_suffix(".npz"), {}),
        "npz_object_frames": lambda p: _zip(p.with_suffix(".npz"), _npz_members({"frames": np.array([None], object)})),
        "npz_nan_frames": lambda p: _save_npz(p.with_suffix(".npz"), {"frames": nan}),
        "npz_one_frame": lambda p: _save_npz(p.with_suffix(".npz"), {"frames": f[:1]}),
        "npz_zip_bomb": lambda p: _zip(p.with_suffix(".npz"), {}, [_bomb_member("frames.npy")]),
        "npz_huge_declared": lambda p: _zip(p.with_suffix(".npz"), {"frames.npy": _huge_header_npy()}),
        "npz_bad_crc": lambda p: _bad_crc(p.with_suffix(".npz"), {"frames": f}),
        "npz_text": lambda p: p.with_suffix(".npz").write_text("not a zip"),
        "tif_text": lambda p: p.with_suffix(".tif").write_text("not a tiff"),
        "tif_png": lambda p: p.with_suffix(".tif").write_bytes(PNG),
        "dcm_text": lambda p: p.with_suffix(".dcm").write_text("not dicom"),
        "avi_garbage": lambda p: p.with_suffix(".avi").write_bytes(bytes(2048)),
        "mp4_png": lambda p: p.with_suffix(".mp4").write_bytes(PNG),
        "unknown_suffix": lambda p: p.with_suffix(".xyz").write_bytes(_npy_bytes(f)),
        "folder_without_frames": lambda p: (p.with_suffix("")).mkdir(),
        "missing": lambda p: None,
    }


def _bad_crc(path: Path, arrays: dict) -> None:
    """An uncompressed NPZ with one data byte changed: only the CRC tells."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = bytearray(buf.getvalue())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _mask_cases() -> dict[str, Callable[[Path], None]]:
    m = good_mask()
    f32 = m.astype(np.float32)
    nan = f32.copy()
    nan[0, 0, 0] = np.nan
    half = f32.copy()
    half[1, 9, 11] = 0.5
    two = m.astype(np.uint8)
    two[0, 10, 12] = 2
    neg = m.astype(np.int16)
    neg[0, 0, 0] = -1
    empty_frame = m.copy()
    empty_frame[2] = False

    def tif(arr):
        def make(p: Path):
            import tifffile

            tifffile.imwrite(p.with_suffix(".tif"), arr, photometric="minisblack")
        return make

    return {
        "nan_values": lambda p: _save_npy(p, nan),
        "all_nan": lambda p: _save_npy(p, np.full(SEQ_SHAPE, np.nan, np.float32)),
        "inf_values": lambda p: _save_npy(p, np.where(m, np.inf, 0).astype(np.float32)),
        "half_values": lambda p: _save_npy(p, half),
        "value_two": lambda p: _save_npy(p, two),
        "value_minus_one": lambda p: _save_npy(p, neg),
        "labels_0_255": lambda p: _save_npy(p, m.astype(np.uint8) * 255),
        "complex": lambda p: _save_npy(p, m.astype(np.complex64)),
        "strings": lambda p: _save_npy(p, np.where(m, "y", "n")),
        "object_array": lambda p: _save_npy(p, np.array([m, None], dtype=object), allow_pickle=True),
        "one_dimensional": lambda p: _save_npy(p, m.ravel()),
        "four_dimensional": lambda p: _save_npy(p, m[None]),
        "zero_size": lambda p: _save_npy(p, np.zeros((0, 32, 32), bool)),
        "huge_declared_shape": lambda p: p.write_bytes(_huge_header_npy(dtype="|b1")),
        "truncated_data": lambda p: p.write_bytes(_npy_bytes(m)[:-50]),
        "all_false": lambda p: _save_npy(p, np.zeros(SEQ_SHAPE, bool)),
        "empty_frame": lambda p: _save_npy(p, empty_frame),
        "wrong_size": lambda p: _save_npy(p, np.ones((4, 16, 16), bool)),
        "wrong_frame_count": lambda p: _save_npy(p, np.ones((3, 32, 32), bool)),
        "transposed": lambda p: _save_npy(p, np.ones((32, 32, 4), bool)),
        "png_file": lambda p: p.with_suffix(".png").write_bytes(PNG),
        "text_file": lambda p: p.with_suffix(".txt").write_text("0 1 0\n1 1 0\n"),
        "npz_file": lambda p: _save_npz(p.with_suffix(".npz"), {"mask": m}),
        "tif_value_7": tif(np.where(m, 7, 0).astype(np.uint8)),
        "tif_float_half": tif(np.where(m, 0.5, 0).astype(np.float32)),
        "tif_text": lambda p: p.with_suffix(".tif").write_text("not a tiff"),
        "tif_truncated": lambda p: _truncated_tif(p.with_suffix(".tif"), m),
        "folder": lambda p: p.mkdir(),
        "missing": lambda p: None,
    }


def _truncated_tif(path: Path, m) -> None:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, m.astype(np.uint8) * 255, photometric="minisblack")
    path.write_bytes(buf.getvalue()[:200])


def _result_cases() -> dict[str, Callable[[Path], None]]:
    good = good_result_arrays()

    def edit(**changes):
        def make(p: Path):
            arrays = dict(good)
            for k, v in changes.items():
                if v is None:
                    arrays.pop(k)
                else:
                    arrays[k] = v
            if any(isinstance(v, np.ndarray) and v.dtype.hasobject for v in arrays.values()):
                _zip(p, _npz_members(arrays))
            else:
                _save_npz(p, arrays)
        return make

    fields = good["fields"]
    nan_f, inf_f = fields.copy(), fields.copy()
    nan_f[1, 0, 0, 3, 3] = np.nan
    inf_f[0, 2, 1, 0, 0] = -np.inf
    other_convention = json.loads(str(good["convention_json"]))
    other_convention["name"] = "push-v2"
    cases = {f"missing_{k}": edit(**{k: None}) for k in (
        "fields", "format_version", "scales", "mse", "mean_cc", "config_json", "convention_json",
        "pixel_spacing_mm", "frame_interval_s", "cancelled", "steps_run")}
    cases.update({
        "config_is_list": edit(config_json=np.array("[1, 2]")),
        "config_invalid_json": edit(config_json=np.array("{variant: nmsr")),
        "config_variant_number": edit(config_json=np.array('{"variant": 3}')),
        "config_scales_text": edit(config_json=np.array('{"variant": "nmsr_vi", "scales": "all"}')),
        "config_as_number": edit(config_json=np.array(3.0)),
        "convention_invalid_json": edit(convention_json=np.array("{nope")),
        "convention_other": edit(convention_json=np.array(json.dumps(other_convention))),
        "convention_list": edit(convention_json=np.array("[]")),
        "spacing_scalar": edit(pixel_spacing_mm=np.array(0.3)),
        "spacing_negative": edit(pixel_spacing_mm=np.array([-0.3, 0.3])),
        "spacing_text": edit(pixel_spacing_mm=np.array(["a", "b"])),
        "interval_vector": edit(frame_interval_s=np.array([0.02, 0.02])),
        "interval_zero": edit(frame_interval_s=np.array(0.0)),
        "interval_inf": edit(frame_interval_s=np.array(np.inf)),
        "mse_wrong_shape": edit(mse=np.zeros((2, 5))),
        "mean_cc_transposed": edit(mean_cc=np.zeros((3, 2))),
        "mse_inf": edit(mse=np.full((2, 3), np.inf)),
        "scales_longer_than_fields": edit(scales=np.array([0.25, 0.5, 1.0])),
        "scales_shorter_than_fields": edit(scales=np.array([1.0])),
        "scales_decreasing": edit(scales=np.array([1.0, 0.5])),
        "scales_above_one": edit(scales=np.array([0.5, 2.0])),
        "scales_text": edit(scales=np.array(["0.5", "1"])),
        "steps_run_negative": edit(steps_run=np.array([-3, 3])),
        "steps_run_wrong_length": edit(steps_run=np.array([3, 3, 3])),
        "nan_in_fields": edit(fields=nan_f),
        "inf_in_fields": edit(fields=inf_f),
        "fields_integer": edit(fields=fields.astype(np.int32)),
        "fields_4d": edit(fields=fields[0]),
        "fields_three_channels": edit(fields=np.concatenate([fields, fields[:, :, :1]], axis=2)),
        "fields_object": edit(fields=np.array([None, 1], dtype=object)),
        "no_scale_not_cancelled": edit(fields=np.zeros((0, 3, 2, 32, 32), np.float32), scales=np.zeros(0),
                                       mse=np.zeros((0, 3)), mean_cc=np.zeros((0, 3)), steps_run=np.zeros(0, np.int64),
                                       seconds=np.zeros(0), final_loss=np.zeros(0), velocity_cm_s=None),
        "velocity_wrong_shape": edit(velocity_cm_s=np.zeros((3, 2, 16, 16), np.float32)),
        "refined_wrong_shape": edit(refined=np.ones((1, 2), bool)),
        "refined_as_float": edit(refined=np.ones(good["mse"].shape, np.float32)),
        "notes_not_a_list": edit(notes_json=np.array('{"note": "extended"}')),
        "notes_invalid_json": edit(notes_json=np.array('["extended"')),
        "notes_as_number": edit(notes_json=np.array(3.0)),
        "cancelled_as_float": edit(cancelled=np.array(0.0)),
        "device_as_number": edit(device=np.array(1)),
        "format_version_2": edit(format_version=np.array(2)),
        "format_version_text": edit(format_version=np.array("1")),
        "format_version_vector": edit(format_version=np.array([1, 1])),
        "zip_bomb_fields": lambda p: _zip(p, _npz_members({k: v for k, v in good.items() if k != "fields"}),
                                         [_bomb_member("fields.npy", (1, 12, 2, 1024, 1024))]),
        "huge_declared_fields": lambda p: _zip(p, {**_npz_members({k: v for k, v in good.items() if k != "fields"}),
                                                   "fields.npy": _huge_header_npy((4, 1000, 2, 4096, 4096))}),
        "bad_crc": lambda p: _bad_crc(p, good),
        "sequence_npz_not_result": lambda p: _save_npz(p, {"frames": np.zeros(SEQ_SHAPE, np.float32)}),
        "missing": lambda p: None,
    })
    return cases


def _weights_cases() -> dict[str, Callable[[Path], None]]:
    def edit(mutate):
        def make(p: Path):
            payload = good_weights()
            mutate(payload)
            _save_torch(p, payload)
        return make

    def set_(key, value):
        return edit(lambda w: w.__setitem__(key, value))

    def arch(encoder, decoder):
        return set_("architecture", {"encoder": encoder, "decoder": decoder})

    def first_state(fn):
        return edit(lambda w: fn(w["state_dicts"][0]))

    def nan_weights(sd):
        k = next(iter(sd))
        sd[k] = sd[k].clone().fill_(float("nan"))

    def reshape_weights(sd):
        k = next(iter(sd))
        sd[k] = sd[k].reshape(-1)[:-1].clone()

    import argparse

    return {
        "a_list": lambda p: _save_torch(p, [1, 2, 3]),
        "a_tensor": lambda p: _save_torch(p, __import__("torch").zeros(3)),
        "other_format": set_("format", "someone-elses-weights"),
        "no_format": edit(lambda w: w.pop("format")),
        "no_scales": edit(lambda w: w.pop("scales")),
        "scales_empty": set_("scales", []),
        "scales_decreasing": set_("scales", [1.0, 0.5]),
        "scales_above_one": set_("scales", [0.5, 4.0]),
        "scales_text": set_("scales", ["a", "b"]),
        "no_state_dicts": edit(lambda w: w.pop("state_dicts")),
        "too_few_state_dicts": edit(lambda w: w["state_dicts"].pop()),
        "state_dict_is_list": edit(lambda w: w["state_dicts"].__setitem__(0, [1, 2])),
        "missing_tensor": first_state(lambda sd: sd.pop(next(iter(sd)))),
        "extra_tensor": first_state(lambda sd: sd.__setitem__("extra.weight", __import__("torch").zeros(2))),
        "misshaped_tensor": first_state(reshape_weights),
        "nan_weights": first_state(nan_weights),
        "no_architecture": edit(lambda w: w.pop("architecture")),
        "encoder_huge": arch([4, 100_000], [4, 4]),
        "encoder_text": arch(["a"], ["b"]),
        "depth_mismatch": arch([4, 4, 4], [4, 4]),
        "architecture_mismatch": arch([8, 8], [8, 8]),
        "custom_class_pickle": set_("config", argparse.Namespace(x=1)),
        "legacy_format": lambda p: __import__("torch").save(good_weights(), p, _use_new_zipfile_serialization=False),
        "zip_bomb": lambda p: _zip(p, {}, [_bomb_member("archive/data/0")]),
        "npz_renamed": lambda p: p.write_bytes(_good_bytes("result")),
        "folder": lambda p: p.mkdir(),
        "missing": lambda p: None,
    }


_CONTENT = {"sequence": _sequence_cases, "mask": _mask_cases, "result": _result_cases, "weights": _weights_cases}


def _case_names() -> list[tuple[str, str]]:
    names = []
    for kind in KINDS:
        for name in (*_byte_cases(kind), *_CONTENT[kind]()):
            names.append((kind, f"{kind}-{name}"))
    return names


CASES = _case_names()


def build_corpus(folder: Path) -> dict[str, Path]:
    """Write every case into ``folder``; {case name: the path to hand to the reader}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in KINDS:
        makers = {**_byte_cases(kind), **_CONTENT[kind]()}
        for name, make in makers.items():
            case = f"{kind}-{name}"
            base = folder / f"{case}{SUFFIX[kind]}"
            before = set(folder.iterdir())
            make(base)
            created = sorted(set(folder.iterdir()) - before)
            paths[case] = created[0] if created else base  # a maker may change the suffix; "missing" makes none
    return paths
