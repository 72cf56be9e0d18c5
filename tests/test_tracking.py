"""Lagrangian tracking through pull fields: direction, inversion, outside flags, distances."""

import numpy as np
import pytest
import torch

from napari_nmsr.core.convention import sample_field, warp_frames
from napari_nmsr.core.errors import MaskError, NMSRError
from napari_nmsr.core.tracking import TrackedPoints, contour_distances, track_points, tracking_report

torch.set_num_threads(1)

H = W = 64
CENTRE = np.array([32.0, 30.0])


def scaling_fields(scales):
    """True pull fields of a cavity scaled by scales[t] about CENTRE: u_t(p) = (s_t/s_{t+1} - 1)(p - c)."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    rel = np.stack([yy - CENTRE[0], xx - CENTRE[1]])
    return np.stack([(scales[t] / scales[t + 1] - 1.0) * rel for t in range(len(scales) - 1)]).astype(np.float32)


def ring(radius, n=100):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return CENTRE + radius * np.stack([np.sin(a), np.cos(a)], 1)


def swirl_field(strength=1.5, sigma=12.0):
    """A smooth non-linear (Gaussian vortex) pull field (2, H, W)."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    dy, dx = yy - CENTRE[0], xx - CENTRE[1]
    g = strength * np.exp(-(dy**2 + dx**2) / (2 * sigma**2)) / sigma
    return np.stack([-dx * g, dy * g]).astype(np.float32)


def test_tracking_with_true_fields_follows_the_contracting_cavity_over_a_cycle():
    scales = np.array([1.0, 0.92, 0.84, 0.78, 0.83, 0.9, 0.95, 1.0])
    fields = scaling_fields(scales)
    for start in (0, 3):
        tracked = track_points(fields, ring(20 * scales[start]), start)
        truth = np.stack([ring(20 * s) for s in scales])
        error = np.linalg.norm(tracked.positions - truth, axis=-1)
        assert tracked.positions.shape == (8, 100, 2)
        assert error.mean() < 0.1 and error.max() < 0.2  # the bar is 1 px; bilinear is exact here
        assert not tracked.outside.any()


def test_direction_follows_the_pull_convention():
    # u = +2 rows everywhere: frame t+1 at p shows frame t at p + 2, so material moves UP by 2 px/frame.
    fields = np.zeros((3, 2, H, W), np.float32)
    fields[:, 0] = 2.0
    tracked = track_points(fields, np.array([[30.0, 20.0]]), 1)
    assert np.allclose(tracked.positions[:, 0, 0], [32.0, 30.0, 28.0, 26.0], atol=1e-4)
    assert np.allclose(tracked.positions[:, 0, 1], 20.0)


def test_forward_tracking_lands_on_the_warped_blob():
    # Frame 1 = warp(frame 0, u): a blob tracked forward from frame 0 must land on the blob in frame 1.
    u = swirl_field(strength=3.0)
    yy, xx = np.mgrid[:H, :W]
    p0 = np.array([26.0, 40.0])
    frame0 = np.exp(-((yy - p0[0]) ** 2 + (xx - p0[1]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    frame1 = warp_frames(np.stack([frame0, frame0]), u[None])[0]
    centroid = np.array([(frame1 * yy).sum(), (frame1 * xx).sum()]) / frame1.sum()
    moved = track_points(u[None], p0[None], 0).positions[1, 0]
    assert np.linalg.norm(p0 - centroid) > 1.5  # the blob did move
    assert np.linalg.norm(moved - centroid) < 0.25


def test_forward_then_backward_returns_to_the_start_on_a_nonlinear_field():
    fields = np.stack([swirl_field(1.5), swirl_field(-1.0), swirl_field(2.0)])
    start = ring(10)
    fwd = track_points(fields, start, 0)
    back = track_points(fields, fwd.positions[-1], 3)
    assert np.abs(back.positions[0] - start).max() < 1e-2
    # each forward step solves q + u(q) = p
    residual = fwd.positions[1] + sample_field(fields[0], fwd.positions[1].astype(np.float32)) - start
    assert np.abs(residual).max() < 1e-3


def test_points_leaving_the_image_are_flagged_not_dropped():
    fields = np.zeros((4, 2, H, W), np.float32)
    fields[:, 1] = -3.0  # material moves right by 3 px/frame
    pts = np.array([[10.0, 58.0], [10.0, 20.0]])
    tracked = track_points(fields, pts, 0)
    assert tracked.positions.shape == (5, 2, 2) and np.all(np.isfinite(tracked.positions))
    assert tracked.outside[:, 0].tolist() == [False, False, True, True, True]  # x = 58, 61, 64 > 63, ...
    assert not tracked.outside[:, 1].any()


def test_a_folding_field_warns_instead_of_tracking_silently_wrong():
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    # dy = -6 sin((y - c) / 2): slope -3 around the centre rows, so q + u(q) = p has no stable solution there
    fold = np.stack([-6.0 * np.sin((yy - CENTRE[0]) / 2.0), np.zeros_like(xx)])[None].astype(np.float32)
    with pytest.warns(RuntimeWarning, match="folds"):
        track_points(fold, ring(5), 0)


def test_bad_tracking_input_is_rejected_clearly():
    fields = np.zeros((3, 2, H, W), np.float32)
    with pytest.raises(NMSRError, match="scale"):
        track_points(fields[None], ring(5), 0)
    with pytest.raises(NMSRError, match=r"\(T-1, 2, H, W\)"):
        track_points(fields[:, :1], ring(5), 0)
    with pytest.raises(MaskError, match="outside the sequence"):
        track_points(fields, ring(5), 4)
    with pytest.raises(MaskError, match=r"\(N, 2\)"):
        track_points(fields, np.zeros((5, 3)), 0)


def test_contour_distances_measure_to_the_curve():
    mean, hd = contour_distances(ring(10), ring(12, n=37))
    assert mean == pytest.approx(2.0, abs=0.1) and hd == pytest.approx(2.0, abs=0.15)
    shifted = ring(10) + [0.0, 3.0]
    mean, hd = contour_distances(ring(10), shifted)
    assert hd == pytest.approx(3.0, abs=0.05) and 1.0 < mean < 3.0
    a = np.stack([ring(10), ring(10)])
    means, hds = contour_distances(a, np.stack([ring(10), ring(11)]))
    assert means.shape == (2,) and means[0] < 1e-9 and means[1] == pytest.approx(1.0, abs=0.05)


def test_tracking_report_per_frame():
    tracked = TrackedPoints(np.stack([ring(10), ring(10) + [0.0, 1.0]]), np.zeros((2, 100), bool), 0)
    rep = tracking_report(tracked, np.stack([ring(10), ring(10)]))
    assert rep["point"][0] == pytest.approx(0.0) and rep["point"][1] == pytest.approx(1.0)
    assert rep["hausdorff"][1] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(MaskError):
        tracking_report(tracked, ring(10))

