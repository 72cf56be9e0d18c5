"""Forward-backward consistency |u_f + u_b(x + u_f)| in the project's pull convention."""

import numpy as np
import pytest

from napari_nmsr.core.analysis import consistency_error, inconsistent
from napari_nmsr.core.analysis.analytic import rigid_rotation_field, translation_field
from napari_nmsr.core.errors import ResultFileError

SHAPE = (48, 56)
INNER = (slice(8, -8), slice(8, -8))


def test_consistent_rotation_pair_gives_zero():
    fwd = rigid_rotation_field(SHAPE, 0.06)[None]
    bwd = rigid_rotation_field(SHAPE, -0.06)[None]  # the reversed run undoes the rotation
    err = consistency_error(fwd, bwd)
    assert err[0][INNER].max() < 1e-3
    assert not inconsistent(fwd, bwd)[0][INNER].any()


def test_reversed_run_is_matched_pair_by_pair():
    shifts = [(1.0, 0.0), (0.0, 2.0), (-1.5, 0.5)]
    fwd = np.stack([translation_field(SHAPE, s) for s in shifts])
    # the reversed sequence's pair k undoes forward pair T-2-k
    bwd = np.stack([translation_field(SHAPE, (-s[0], -s[1])) for s in shifts[::-1]])
    assert consistency_error(fwd, bwd)[:, 4:-4, 4:-4].max() < 1e-4
    # taken as already aligned, the same fields disagree
    assert consistency_error(fwd, bwd, reversed_order=False).max() > 1.0


def test_inconsistent_pair_shows_the_round_trip_error():
    fwd = translation_field(SHAPE, (1.0, 2.0))[None]
    err = consistency_error(fwd, fwd)  # backward wrongly moves the same way
    np.testing.assert_allclose(err[0][INNER], 2 * np.hypot(1.0, 2.0), rtol=1e-4)
    assert inconsistent(fwd, fwd)[0][INNER].all()


def test_mismatched_runs_are_refused():
    with pytest.raises(ResultFileError, match="differ in size"):
        consistency_error(translation_field(SHAPE, (1, 1))[None], translation_field((40, 40), (1, 1))[None])
