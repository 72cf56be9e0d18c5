"""ScaleFields: the result's per-scale fields, the coarse ones kept in float16, read as float32."""

import numpy as np
import pytest

from napari_nmsr.core.result import RegistrationResult
from napari_nmsr.core.scale_fields import ScaleFields, kept_dtype


def _fields(n_scales=3, pairs=2, h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    full = (rng.normal(size=(n_scales, pairs, 2, h, w)) * 20).astype(np.float32)
    kept = [full[k].astype(kept_dtype(k, n_scales)) for k in range(n_scales)]
    return full, kept


def test_reads_like_the_float32_array_of_every_scale():
    full, kept = _fields()
    f = ScaleFields(kept)
    as_kept = np.stack([k.astype(np.float32) for k in kept])
    assert f.shape == full.shape and len(f) == 3 and f.ndim == 5 and f.dtype == np.float32
    assert [f.stored(k).dtype for k in range(3)] == [np.float16, np.float16, np.float32]
    np.testing.assert_array_equal(f[-1], full[-1])  # the finest exactly
    assert np.shares_memory(f[-1], kept[-1])  # and without a copy
    np.testing.assert_allclose(f[0], full[0], rtol=2.0**-11)  # coarse ones to float16's precision
    assert f[0].dtype == np.float32 and not np.array_equal(f[0], full[0])
    np.testing.assert_array_equal(f[1, 1], as_kept[1, 1])
    np.testing.assert_array_equal(f[0, :, 1, 3:5], as_kept[0, :, 1, 3:5])
    np.testing.assert_array_equal(np.asarray(f), as_kept)
    np.testing.assert_array_equal(f[:, 0], as_kept[:, 0])
    sub = f[1:]
    assert isinstance(sub, ScaleFields) and sub.shape == (2,) + full.shape[1:]
    np.testing.assert_array_equal(np.asarray(sub), as_kept[1:])
    assert [x.dtype for x in f] == [np.float32] * 3 and len(list(f)) == 3
    c = f.copy()
    c.stored(0)[...] = 0
    assert np.abs(f[0]).max() > 1  # a copy, not a view
    assert ScaleFields([]).shape == (0, 0, 2, 0, 0)


def test_rejects_fields_of_different_shapes_or_not_fields():
    with pytest.raises(ValueError, match="one shape"):
        ScaleFields([np.zeros((1, 2, 4, 4), np.float16), np.zeros((1, 2, 5, 4), np.float32)])
    with pytest.raises(ValueError, match="float"):
        ScaleFields([np.zeros((1, 2, 4), np.float32)])


def test_a_saved_result_holds_exactly_the_float32_fields_as_np_savez_writes_them(tmp_path):
    full, kept = _fields(pairs=3, h=33, w=17)
    n = full.shape[1]
    res = RegistrationResult(fields=ScaleFields(kept), scales=(0.25, 0.5, 1.0),
                             metrics={"mse": np.ones((3, n)), "mean_cc": np.full((3, n), 0.5)},
                             frame_interval_s=0.02, pixel_spacing_mm=(0.3, 0.3))
    path = res.save(tmp_path / "r.npz")
    back = RegistrationResult.load(path)
    assert isinstance(back.fields, np.ndarray) and back.fields.dtype == np.float32
    np.testing.assert_array_equal(back.fields, np.asarray(res.fields))
    np.testing.assert_allclose(back.velocity_cm_s(), res.velocity_cm_s(), rtol=1e-6)
    with np.load(path) as z:  # any NPZ reader sees the plain float32 array
        assert z["fields"].dtype == np.float32 and z["fields"].shape == full.shape
    plain = RegistrationResult(fields=np.asarray(res.fields), scales=res.scales, metrics=res.metrics,
                               frame_interval_s=0.02, pixel_spacing_mm=(0.3, 0.3))
    again = RegistrationResult.load(plain.save(tmp_path / "plain.npz"))
    np.testing.assert_array_equal(again.fields, back.fields)


def test_saving_fields_with_a_nan_is_refused_and_leaves_no_file(tmp_path):
    _, kept = _fields()
    kept[0][1, 0, 2, 2] = np.nan
    n = kept[0].shape[0]
    res = RegistrationResult(fields=ScaleFields(kept), scales=(0.25, 0.5, 1.0),
                             metrics={"mse": np.ones((3, n)), "mean_cc": np.full((3, n), 0.5)})
    from napari_nmsr.core.errors import ResultFileError

    with pytest.raises(ResultFileError, match="scale index 0"):
        res.save(tmp_path / "bad.npz")
    assert list(tmp_path.iterdir()) == []
