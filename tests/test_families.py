"""The randomised ground-truth suite: exact truth, seed split, varied parameters; the anchors' convention."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_nmsr.core.convention import warp_frames
from napari_nmsr.core.families import (
    FAMILIES,
    HELDOUT_MIN_SEED,
    RealCropTooLarge,
    RealDataUnavailable,
    _draw_size,
    circulation,
    fit_rigid_rotation,
    rotate,
    suite_cases,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

SIMULATED = ["vortex", "myocardium", "probe", "probe_tissue", "decorrelation", "disk"]


def _case(family, seed=3, **kw):
    try:
        return FAMILIES[family](seed, **kw)
    except RealDataUnavailable as exc:
        pytest.skip(str(exc))


def _masked_mse(seq, fields):
    warped = warp_frames(seq.frames, fields)
    m = seq.masks[1:]
    return float(np.mean(((warped - seq.frames[1:]) ** 2)[m]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_truth_field_is_exact(family):
    """Without noise or re-seeding, frame t warped by the true field matches frame t+1 better than
    no warp and than the truth off by 0.5 px, and far better than one of them. (Speckle is not a
    pure warp: the PSF does not turn with rotating tissue, so fast rotation decorrelates it.)"""
    seq = _case(family, size=96, n_frames=3, noise=0.0, reseed_fraction=0.0)
    assert seq.frames.shape == (3, 96, 96) and seq.fields.shape == (2, 2, 96, 96)
    assert seq.frames.std() > 0.05 and seq.masks[1:].mean() > 0.05
    truth = _masked_mse(seq, seq.fields)
    off = seq.fields + np.array([0.35, -0.35], np.float32)[None, :, None, None]
    zero, offset = _masked_mse(seq, np.zeros_like(seq.fields)), _masked_mse(seq, off)
    assert truth < 0.9 * zero and truth < 0.95 * offset
    assert min(truth / zero, truth / offset) < 0.6


def test_seed_splits_are_disjoint_and_deterministic():
    tune = suite_cases("tuning", 100)
    held = suite_cases("heldout", 100)
    assert suite_cases("heldout", 100) == held
    assert {s for _, s in tune} == set(range(100))
    held_seeds = {s for _, s in held}
    assert min(held_seeds) >= HELDOUT_MIN_SEED and not held_seeds & set(range(100))
    assert len(held_seeds) == len(held)  # no seed shared between families or indices
    assert [f for f, _ in suite_cases("heldout", 1)] == list(FAMILIES)
    # cases beyond the reported ones: the same seeds, further along each family's list
    later = suite_cases("heldout", 3, first=2)
    assert later == [c for f in FAMILIES for c in suite_cases("heldout", 5, [f])[2:5]]
    assert not set(later) & set(suite_cases("heldout", 2))
    with pytest.raises(ValueError, match="first"):
        suite_cases("heldout", 1, first=-1)
    with pytest.raises(ValueError):
        suite_cases("validation", 1)


def test_same_seed_same_case_other_seed_other_parameters():
    a, b = _case("vortex", 5, size=64), _case("vortex", 5, size=64)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.fields, b.fields)
    for family in SIMULATED:
        p = [FAMILIES[family](s, size=64, n_frames=2).truth["params"] for s in (1, 2)]
        assert p[0] != p[1], family
        assert p[0]["size"] == 64 and p[0]["n_frames"] == 2


def test_sizes_and_frame_counts_in_range():
    rng = np.random.default_rng(0)
    sizes = np.array([_draw_size(rng) for _ in range(2000)])
    assert sizes.min() >= 128 and sizes.max() <= 512
    assert np.mean(sizes <= 256) > 0.9 and (sizes > 256).any()
    counts = {FAMILIES[f](s, size=48).frames.shape[0] for f in ("disk", "myocardium") for s in range(6)}
    assert counts <= set(range(6, 11)) and len(counts) > 1


def test_disk_truth_and_rigid_fit():
    seq = _case("disk", 7, size=96, n_frames=2)
    omega, centre, rms = fit_rigid_rotation(seq.fields[0], seq.masks[1])
    assert omega == pytest.approx(seq.truth["omega"], rel=1e-6)
    np.testing.assert_allclose(centre, seq.truth["centre"], atol=1e-3)
    assert rms < 1e-3
    rim = np.max(np.hypot(*seq.fields[0])[seq.masks[1]])  # just inside the rim (mask = disk less 2 px)
    assert 0.5 < rim <= 20.0


def test_circulation_sign_and_size():
    """A rigid counter-clockwise turn by a: circulation 2 pi r^2 sin(a) (chord motion), + sign."""
    h = w = 65
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.stack((yy.ravel() - 32, xx.ravel() - 32), axis=1)
    a = 0.1
    field = (rotate(d, -a) - d).T.reshape(2, h, w)  # pull: the material came from p turned back
    g = circulation(field, (32.0, 32.0), 10.0)
    assert g == pytest.approx(2 * np.pi * 100 * np.sin(a), rel=0.01)
    assert circulation(-field, (32.0, 32.0), 10.0) == pytest.approx(-g)


@pytest.mark.parametrize("name", ["dis", "openpiv"])
@pytest.mark.parametrize("kind,size", [("translation", 3.0), ("rotation", 0.05)])
def test_anchor_recovers_known_motion(name, kind, size):
    baselines = pytest.importorskip("baselines")
    pytest.importorskip("cv2" if name == "dis" else "openpiv")
    image = FAMILIES["decorrelation"](11, size=128, n_frames=2).frames[0]
    err, ok = baselines.check_convention(baselines.BASELINES[name], image, kind, size)
    assert ok, f"{name} {kind}: median EPE {err:.3f} px"


def test_a_real_crop_larger_than_its_source_says_which_size_fits():
    """``bench_suite.py --size`` asks every family for one frame size; the echo frame (430x600 px)
    cannot give a 384 px crop with its margin, and says so instead of failing inside numpy."""
    try:
        FAMILIES["real_echo"](0, size=128, n_frames=2)
    except RealDataUnavailable as exc:
        pytest.skip(str(exc))
    with pytest.raises(RealCropTooLarge, match=r"430x600 px: a 384 px crop .* at most 349 px") as caught:
        FAMILIES["real_echo"](0, size=384, n_frames=2)
    assert isinstance(caught.value, ValueError)  # a bad size, and (for the suite) a case to skip
    assert FAMILIES["real_echo"](0, size=349, n_frames=2).frames.shape == (2, 349, 349)


def test_bench_suite_size_option_generates_and_caches_each_case_at_that_size(tmp_path, monkeypatch):
    import bench_suite

    monkeypatch.setattr(bench_suite, "CACHE", tmp_path)
    seq = bench_suite.load_case("probe", 3, 96)
    assert seq.frames.shape[1:] == (96, 96)
    assert bench_suite._case_path("probe", 3, 96).is_file() and not bench_suite._case_path("probe", 3).exists()
    again = bench_suite.load_case("probe", 3, 96)
    np.testing.assert_array_equal(again.fields, seq.fields)
    assert FAMILIES["probe"](3).truth["params"]["speed_px"] == seq.truth["params"]["speed_px"]


def test_bench_suite_reads_the_vortex_centre_the_analysis_shows(tmp_path, monkeypatch):
    """The Gamma-2 core centre of ``nmsr analyze`` lands on the true centre for the true field, is not
    reported where no core is found (a motionless estimate), and old cached rows without it are redone."""
    import json

    import bench_suite

    seq = FAMILIES["vortex"](5, size=128, n_frames=4)
    exact = bench_suite.evaluate(seq, seq.fields)
    assert exact["core_found_pct"] == 100.0 and exact["core_centre_err_px"] < 0.2
    shifted = np.roll(seq.fields, 6, axis=-1)  # the same vortex 6 px to the right
    assert 5.0 < bench_suite.evaluate(seq, shifted)["core_centre_err_px"] < 7.0
    still = bench_suite.evaluate(seq, np.zeros_like(seq.fields))
    assert still["core_found_pct"] == 0.0 and "core_centre_err_px" not in still

    monkeypatch.setattr(bench_suite, "CACHE", tmp_path)
    monkeypatch.setattr(bench_suite, "load_case", lambda *a, **k: seq)
    path = tmp_path / "anchors" / f"{bench_suite._case_key('vortex', 5)}_zero_{bench_suite._anchor_key('zero')}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "ok", "centre_err_px": 1.0, "epe_mean": 9.0}))  # before the core centre
    row = bench_suite._run_anchor("vortex", 5, "zero", 1)
    assert row["core_found_pct"] == 0.0 and row["epe_mean"] != 9.0
    assert json.loads(path.read_text())["core_found_pct"] == 0.0


@pytest.mark.parametrize("planted", [0.8, 1.0, 1.25])
def test_amplitude_oracle_recovers_a_planted_vortex_amplitude(planted):
    """Frame t+1 made from frame t through the true field with its vortex scaled by ``planted``: the
    oracle's fit (given the unscaled true field) finds that factor, and the field it returns has the
    planted circulation."""
    import torch

    from amplitude_oracle import fit_amplitude, vortex_weight

    from napari_nmsr.core.convention import warp

    seq = FAMILIES["vortex"](5, size=128, n_frames=2)
    core, centre = float(seq.truth["core_radius"]), seq.vortex_centres[0]
    scaled = seq.fields[0] * (1.0 + (planted - 1.0) * vortex_weight((128, 128), centre, core))
    fixed = warp(torch.from_numpy(seq.frames[:1, None]), torch.from_numpy(scaled[None].astype(np.float32)),
                 "bicubic")[0, 0].numpy()
    alpha = fit_amplitude(seq.frames[0], fixed, seq.fields[0], centre, core, seq.masks[1])
    assert abs(alpha - planted) < 0.02
    g = circulation(scaled, centre, core) / circulation(seq.fields[0], centre, core)
    assert abs(g - planted) < 1e-3  # the circle of one core radius is scaled whole


def test_bench_suite_oracle_row_reads_the_vortex_amplitude_and_skips_cases_without_one(tmp_path, monkeypatch):
    import bench_suite

    monkeypatch.setattr(bench_suite, "CACHE", tmp_path)
    seq = FAMILIES["vortex"](5, size=128, n_frames=4)
    monkeypatch.setattr(bench_suite, "load_case", lambda *a, **k: seq)
    row = bench_suite._run_anchor("vortex", 5, "oracle", 1)
    assert row["status"] == "ok" and 0.0 <= row["circulation_err_pct"] < 30.0
    assert row["epe_mean"] < 0.2 * row["true_mean"]  # the true field, rescaled near the core only
    monkeypatch.setattr(bench_suite, "load_case", lambda *a, **k: FAMILIES["probe"](3, size=96, n_frames=3))
    assert bench_suite._run_anchor("probe", 3, "oracle", 1)["status"].startswith("skipped")


def test_bench_suite_says_whether_an_estimate_matches_the_frames_better_than_the_truth():
    """The truth ties with itself, a motionless estimate matches every pair worse, and where frame t+1
    follows another motion (the vortex turned 1.4x as far) that motion beats the suite's "truth"."""
    import torch

    import bench_suite
    from amplitude_oracle import vortex_weight

    from napari_nmsr.core.convention import warp

    seq = FAMILIES["vortex"](5, size=128, n_frames=3)
    same = bench_suite.evaluate(seq, seq.fields)
    assert same["beats_truth_pct"] == 100.0 and same["match_minus_truth"] == 0.0
    assert same["vortex_beats_truth_pct"] == 100.0
    still = bench_suite.evaluate(seq, np.zeros_like(seq.fields))
    assert still["beats_truth_pct"] == 0.0 and still["vortex_beats_truth_pct"] == 0.0
    assert still["match_minus_truth"] < -0.01

    core = float(seq.truth["core_radius"])
    turned = np.stack([f * (1.0 + 0.4 * vortex_weight((128, 128), c, core))
                       for f, c in zip(seq.fields, seq.vortex_centres)]).astype(np.float32)
    frames = seq.frames.copy()
    for t in range(len(turned)):  # frame t+1 made from frame t through the faster turn
        frames[t + 1] = warp(torch.from_numpy(frames[t][None, None]), torch.from_numpy(turned[t][None]),
                             "bicubic")[0, 0].numpy()
    planted = dataclasses.replace(seq, frames=frames)
    assert bench_suite.evaluate(planted, turned)["vortex_beats_truth_pct"] == 100.0
    assert bench_suite._match_against_truth(planted, turned)["match_minus_truth"] > 0.0


def test_bench_suite_refuses_a_bad_engine_setting_before_running_any_case():
    import bench_suite

    args = bench_suite.parse_args(["--nmsr-set", "temporal_weight=0,0,100,0", "seed=1"])
    assert args.nmsr_set == {"temporal_weight": (0, 0, 100, 0), "seed": 1} and args.first_case == 0
    for bad in (["temporal_weight=0,0,100,0,seed=1"], ["no_such_setting=3"], ["steps"]):
        with pytest.raises(SystemExit, match="--nmsr-set"):
            bench_suite.parse_args(["--nmsr-set", *bad])
