"""Size budget checked from headers before decompressing, and the result-file validation it feeds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from damaged_files import _bomb_member, _zip, good_frames, good_result_arrays, good_weights
from napari_nmsr.core.errors import NMSRError, ResultFileError, SequenceError, WeightsFileError
from napari_nmsr.core.limits import BUDGET_ENV, memory_budget_bytes
from napari_nmsr.core.result import RegistrationResult


def test_a_zip_bomb_result_is_refused_before_decompressing(tmp_path):
    good = good_result_arrays()
    path = tmp_path / "bomb.npz"
    from damaged_files import _npz_members

    _zip(path, _npz_members({k: v for k, v in good.items() if k != "fields"}), [_bomb_member("fields.npy")])
    assert path.stat().st_size < 300_000  # 100 MiB of fields in ~100 KB
    tracemalloc.start()
    try:
        with pytest.raises(ResultFileError, match="expands .* times") as info:
            RegistrationResult.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, f"refusing the bomb allocated {peak / 2**20:.1f} MiB"
    assert "100.0 MB" in str(info.value) and "numpy.savez" in str(info.value)


def test_the_budget_names_the_size_and_the_way_around_it(tmp_path, monkeypatch):
    res = RegistrationResult.load(_good_result(tmp_path))  # loads under the default budget
    assert res.fields.shape == (2, 3, 2, 32, 32)
    monkeypatch.setenv(BUDGET_ENV, "0.00001")  # ~10 KB
    with pytest.raises(ResultFileError) as info:
        RegistrationResult.load(tmp_path / "good.npz")
    text = str(info.value)
    assert BUDGET_ENV in text and "would need" in text and "KB" in text
    np.save(tmp_path / "frames.npy", good_frames())
    with pytest.raises(SequenceError, match=BUDGET_ENV):
        from napari_nmsr.core.io import load_sequence

        load_sequence(tmp_path / "frames.npy")
    import torch

    torch.save(good_weights(), tmp_path / "w.pt")
    with pytest.raises(WeightsFileError, match=BUDGET_ENV):
        from napari_nmsr.core.train import load_weights

        load_weights(tmp_path / "w.pt")
    monkeypatch.setenv(BUDGET_ENV, "1")
    assert RegistrationResult.load(tmp_path / "good.npz").n_scales == 2


def test_a_budget_that_is_not_a_number_is_an_error(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(NMSRError, match=BUDGET_ENV):
        memory_budget_bytes()
    monkeypatch.delenv(BUDGET_ENV)
    assert 0 < memory_budget_bytes() <= 8 * 2**30


def _good_result(folder):
    np.savez(folder / "good.npz", **good_result_arrays())
    return folder / "good.npz"


def test_a_result_cancelled_before_its_first_scale_still_loads(tmp_path):
    empty = RegistrationResult.from_scales([], config={"variant": "nmsr_vi"}, cancelled=True)
    back = RegistrationResult.load(empty.save(tmp_path / "cancelled.npz"))
    assert back.n_scales == 0 and back.cancelled


def test_loaded_values_are_the_saved_ones(tmp_path):
    good = good_result_arrays()
    res = RegistrationResult.load(_good_result(tmp_path))
    np.testing.assert_array_equal(res.fields, good["fields"])
    assert res.scales == (0.5, 1.0) and res.frame_interval_s == pytest.approx(0.02)
    assert res.pixel_spacing_mm == pytest.approx((0.3, 0.3)) and list(res.steps_run) == [3, 3]


def test_analysis_too_big_for_the_budget_is_refused_before_it_starts(tmp_path, monkeypatch):
    from napari_nmsr.core.analysis.report import analyze_result

    path = _good_result(tmp_path)
    monkeypatch.setenv(BUDGET_ENV, str(200 * 2**10 / 2**30))  # 200 KB: the file loads (~80 KB), its analysis would not
    with pytest.raises(ResultFileError, match="Analysing good.npz .* would need about"):
        analyze_result(path)
    monkeypatch.delenv(BUDGET_ENV)
    assert len(analyze_result(path)["pairs"]) == 3


def test_save_refuses_what_load_would_refuse_and_writes_nothing(tmp_path):
    good = good_result_arrays()
    fields = good["fields"].copy()
    fields[0, 0, 0, 0, 0] = np.nan
    res = RegistrationResult(fields=fields, scales=(0.5, 1.0), metrics={"mse": good["mse"], "mean_cc": good["mean_cc"]})
    with pytest.raises(ResultFileError, match="NaN"):
        res.save(tmp_path / "diverged.npz")
    res.scales = (0.5,)  # scales no longer match the fields
    res.fields = good["fields"]
    with pytest.raises(ResultFileError, match="'scales' has shape"):
        res.save(tmp_path / "diverged.npz")
    assert list(tmp_path.iterdir()) == []
