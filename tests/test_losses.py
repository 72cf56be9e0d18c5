"""Loss and metric values against float64 references, and NaN-freedom on flat images."""

import numpy as np
import torch

from napari_nmsr.core.losses import local_cc_map, ncc_loss, pair_masked_mean, smoothness_loss, VARIANCE_FLOOR
from napari_nmsr.core.metrics import pair_metrics


def reference_cc(a, b, r, eps=VARIANCE_FLOOR):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    h, w = a.shape
    out = np.zeros_like(a)
    for i in range(h):
        for j in range(w):
            wa = a[max(0, i - r): i + r + 1, max(0, j - r): j + r + 1]
            wb = b[max(0, i - r): i + r + 1, max(0, j - r): j + r + 1]
            cross = (wa * wb).mean() - wa.mean() * wb.mean()
            va = max(wa.var(), eps)
            vb = max(wb.var(), eps)
            out[i, j] = min(cross * cross / (va * vb), 1.0)
    return out


def test_local_cc_matches_float64_reference():
    rng = np.random.default_rng(0)
    a = rng.random((24, 30)).astype(np.float32)
    b = (0.6 * a + 0.4 * rng.random((24, 30))).astype(np.float32)
    got = local_cc_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], 6)[0, 0].numpy()
    ref = reference_cc(a, b, 6)
    assert np.abs(got - ref).max() < 1e-4
    assert 0.2 < ref.mean() < 0.95  # a meaningful correlation, not a degenerate case


def test_ncc_is_minus_one_for_identical_and_masked_mean_uses_mask():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.random((1, 1, 32, 32)).astype(np.float32))
    assert ncc_loss(a, a, 6).item() < -0.999
    noise = torch.from_numpy(rng.random((1, 1, 32, 32)).astype(np.float32))
    mixed = a.clone()
    mixed[..., 16:] = noise[..., 16:]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :10] = 1
    assert ncc_loss(mixed, a, 6, mask).item() < -0.99
    assert ncc_loss(mixed, a, 6).item() > -0.8


def test_flat_images_give_finite_loss_and_gradients():
    flat = torch.full((1, 1, 32, 32), 0.5, requires_grad=True)
    other = torch.full((1, 1, 32, 32), 0.2)
    loss = ncc_loss(flat, other, 6)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(flat.grad).all()
    zero = torch.zeros(1, 1, 32, 32)
    assert torch.isfinite(ncc_loss(zero, zero, 6))


def test_smoothness_of_linear_field():
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    f = torch.stack([0.1 * xx, 0.2 * yy])[None]
    # d/dx of channel 0 = 0.1 ; d/dy of channel 1 = 0.2 ; others 0 -> mean over both channels
    expected = (0.2 ** 2) / 2 + (0.1 ** 2) / 2
    assert abs(smoothness_loss(f).item() - expected) < 1e-6
    assert smoothness_loss(torch.ones(1, 2, 8, 8)).item() == 0.0


def test_pair_metrics_mse_and_cc():
    rng = np.random.default_rng(2)
    a = rng.random((2, 40, 40)).astype(np.float32)
    b = a.copy()
    b[1] += 0.1
    mse, cc = pair_metrics(a, b)
    assert mse[0] == 0.0 and abs(mse[1] - 0.01) < 1e-6
    assert cc[0] > 0.999 and cc[1] > 0.999  # CC is offset-invariant


def test_pair_masked_mean_is_each_items_mean_inside_its_mask():
    x = torch.rand(3, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    m = (torch.rand(3, 1, 5, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    expected = torch.stack([x[i][m[i].expand(2, -1, -1) > 0].mean() for i in range(3)])
    assert torch.allclose(pair_masked_mean(x, m), expected, atol=1e-6)
    assert torch.allclose(pair_masked_mean(x, None), x.mean(dim=(1, 2, 3)))


def test_box_mean_matches_window_means_at_edges_and_in_its_gradient():
    # The CPU running-sum box mean must equal avg_pool2d's shrinking edge windows (the loss's
    # definition), also when the window is wider than a 12 px coarse scale, and in its gradient.
    import torch.nn.functional as F

    from napari_nmsr.core.losses import box_mean

    def pooled(x, r):
        k = 2 * r + 1
        x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, r), count_include_pad=False)
        return F.avg_pool2d(x, (k, 1), stride=1, padding=(r, 0), count_include_pad=False)

    g = torch.Generator().manual_seed(0)
    for shape, r in [((2, 1, 12, 15), 6), ((3, 2, 40, 33), 10), ((1, 1, 300, 700), 6)]:
        x = torch.rand(shape, generator=g, requires_grad=True)
        got, want = box_mean(x, r), pooled(x, r)
        assert got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-6)
        (g1,) = torch.autograd.grad(got.square().sum(), x)
        (g2,) = torch.autograd.grad(want.square().sum(), x)
        assert torch.allclose(g1, g2, atol=1e-5)


def test_the_fixed_frames_window_means_computed_once_give_the_same_match():
    # The refinement fits a field against a fixed frame t+1: its window means are computed once
    # (fixed_window_means) instead of at every step; the match and its gradient must not change.
    from napari_nmsr.core.losses import fixed_window_means, local_cc_map, mean_local_cc_map

    g = torch.Generator().manual_seed(3)
    a0, b = torch.rand(2, 1, 40, 52, generator=g), torch.rand(2, 1, 40, 52, generator=g)
    for radius, fn in ((3, local_cc_map), ((2, 4), mean_local_cc_map)):
        means = fixed_window_means(b, radius)
        assert len(means) == (1 if isinstance(radius, int) else 2)
        a = a0.clone().requires_grad_()
        plain = fn(a, b, radius)
        plain.sum().backward()
        grad = a.grad.clone()
        a.grad = None
        cached = fn(a, b, radius, b_means=means)
        cached.sum().backward()
        torch.testing.assert_close(cached, plain, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.grad, grad, rtol=0, atol=1e-5)
        assert plain.std() > 0.01  # a real map, not a constant
