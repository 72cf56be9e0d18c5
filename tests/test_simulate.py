"""The simulator's ground truth must be right, or every benchmark number is wrong."""

import numpy as np
import pytest

from napari_nmsr.core.convention import warp_frames
from napari_nmsr.core.simulate import CASES, SimulatedSequence, invert_step, vortex_centre

SIZE, T = 64, 5


@pytest.fixture(scope="module")
def sequences():
    return {name: make(size=SIZE, n_frames=T, seed=3) for name, make in CASES.items()}


def _masked_mse(images, seq):
    """MSE of images (T-1, H, W) against frames 1.. inside the fixed frames' masks."""
    return np.array([
        np.mean((images[t] - seq.frames[t + 1])[seq.masks[t + 1]] ** 2) for t in range(len(images))
    ])


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_ranges_and_texture(sequences, name):
    seq = sequences[name]
    assert isinstance(seq, SimulatedSequence) and seq.name == name
    assert seq.frames.shape == (T, SIZE, SIZE) and seq.frames.dtype == np.float32
    assert seq.fields.shape == (T - 1, 2, SIZE, SIZE) and seq.fields.dtype == np.float32
    assert seq.masks.shape == (T, SIZE, SIZE) and seq.masks.dtype == bool
    assert 0.0 <= seq.frames.min() and seq.frames.max() <= 1.0
    assert np.all(np.isfinite(seq.fields))
    for frame in seq.frames:
        assert frame.std() > 0.1  # speckle, not a flat image
    # Masks are non-empty and cover a real region, but not the whole image.
    area = seq.masks.sum(axis=(1, 2))
    assert np.all(area > 0.1 * SIZE * SIZE) and np.all(area < 0.6 * SIZE * SIZE)
    assert 0 <= seq.ed_index < T and 0 <= seq.es_index < T


@pytest.mark.parametrize("name", list(CASES))
def test_deterministic_per_seed(sequences, name):
    again = CASES[name](size=SIZE, n_frames=T, seed=3)
    np.testing.assert_array_equal(again.frames, sequences[name].frames)
    np.testing.assert_array_equal(again.fields, sequences[name].fields)
    other = CASES[name](size=SIZE, n_frames=T, seed=4)
    assert np.abs(other.frames - again.frames).mean() > 0.05


@pytest.mark.parametrize("name", list(CASES))
def test_true_field_explains_the_next_frame(sequences, name):
    """Warping frame t by the truth matches frame t+1 far better than no warp or the reversed field."""
    seq = sequences[name]
    unwarped = _masked_mse(seq.frames[:-1], seq)
    warped = _masked_mse(warp_frames(seq.frames, seq.fields), seq)
    reversed_ = _masked_mse(warp_frames(seq.frames, -seq.fields), seq)
    assert np.all(warped < 0.85 * unwarped), (warped, unwarped)
    assert np.mean(warped / unwarped) < 0.8
    assert np.all(reversed_ > unwarped)  # a sign error in the truth would swap these


def test_motion_sizes_match_the_case_descriptions():
    """Speeds are given at 128 px: peak ~2.5 (vortex), ~0.8 (slow), 0.5-1.5 (wall), 7-13 (large)."""
    def speeds(name):
        seq = CASES[name](size=128, n_frames=6, seed=0)
        mag = np.hypot(seq.fields[:, 0], seq.fields[:, 1])
        return mag[seq.masks[1:]]

    fast, slow = speeds("vortex"), speeds("slow_vortex")
    assert 2.0 < fast.max() < 3.5 and 0.6 < slow.max() < 1.2
    wall = speeds("myocardium")
    assert 1.0 < wall.max() < 2.0 and 0.3 < wall.mean() < 1.2
    large = speeds("large_motion")
    assert large.min() > 6.0 and large.max() < 14.0


@pytest.mark.parametrize("name", ["vortex", "slow_vortex"])
def test_vortex_centre_is_the_max_vorticity_of_the_truth(sequences, name):
    seq = sequences[name]
    assert seq.vortex_centres.shape == (T - 1, 2)
    for t in range(T - 1):
        found = vortex_centre(seq.fields[t], seq.masks[t + 1])
        assert np.hypot(*(found - seq.vortex_centres[t])) < 1.5
        assert seq.masks[t + 1][tuple(np.round(seq.vortex_centres[t]).astype(int))]


def test_vortex_centre_drifts(sequences):
    centres = sequences["vortex"].vortex_centres
    assert np.hypot(*(centres[-1] - centres[0])) > 2.0


def test_myocardium_wall_moves_inward_keeping_its_area():
    seq = CASES["myocardium"](size=96, n_frames=12, seed=1)
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 48, xx - 48)
    ed, es = seq.masks[seq.ed_index], seq.masks[seq.es_index]
    assert radius[es].mean() < radius[ed].mean() - 1.0
    assert abs(int(es.sum()) - int(ed.sum())) < 0.05 * ed.sum()  # incompressible: the wall thickens
    assert seq.vortex_centres is None


def test_vortex_cavity_is_smallest_at_end_systole():
    seq = CASES["vortex"](size=64, n_frames=8, seed=0)
    area = seq.masks.sum(axis=(1, 2))
    assert seq.es_index == int(np.argmin(area)) and seq.ed_index == int(np.argmax(area))


def test_invert_step_inverts_a_smooth_motion():
    def velocity(p, t):
        return np.stack((1.5 * np.sin(p[:, 1] / 9.0), 2.0 + 0.1 * p[:, 0]), axis=1)

    p = np.random.default_rng(0).uniform(0, 60, size=(200, 2))
    q = invert_step(velocity, p, 0)
    np.testing.assert_allclose(q + velocity(q, 0), p, atol=1e-3)
