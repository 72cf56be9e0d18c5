"""The nmsr command line: register, info, train, analyze, and errors as one line."""

import json

import numpy as np
import pytest

from napari_nmsr.cli import main
from napari_nmsr.core.result import RegistrationResult

FAST = ["--steps", "3", "--scales", "0.5,1", "--quiet"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from napari_nmsr.core.simulate import vortex

    sim = vortex(size=48, n_frames=4, seed=1)
    d = tmp_path_factory.mktemp("cli")
    np.save(d / "frames.npy", sim.frames)
    np.save(d / "mask.npy", sim.masks)
    return d


def test_register_writes_result_and_prints_table(sample, capsys):
    out = sample / "res.npz"
    assert main(["register", str(sample / "frames.npy"), "--out", str(out), "--mask", str(sample / "mask.npy"), *FAST]) == 0
    text = capsys.readouterr().out
    assert "MSE (1e-3)" in text and "mean CC" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("1/2", "1 "))]) == 2
    res = RegistrationResult.load(out)
    assert res.fields.shape == (2, 3, 2, 48, 48) and res.scales == (0.5, 1.0)
    with np.load(out) as z:
        assert "convention_json" in z.files and json.loads(str(z["convention_json"]))["fixed"] == "frame t+1"


def test_info_describes_sequence_and_result(sample, capsys):
    assert main(["info", str(sample / "frames.npy")]) == 0
    assert '"frames": 4' in capsys.readouterr().out
    out = sample / "res_info.npz"
    main(["register", str(sample / "frames.npy"), "--out", str(out), *FAST])
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 scales" in text
    # What the engine decided beyond its plan (RegistrationResult.notes) survives the file and is shown.
    res = RegistrationResult.load(out)
    assert [line[len("note: "):] for line in text.splitlines() if line.startswith("note: ")] == res.notes
    res.notes = ["The 1/2 scale's 100 steps left the match where it was, so it trained on for 100 more steps."]
    noted = res.save(sample / "res_notes.npz")
    assert RegistrationResult.load(noted).notes == res.notes
    assert main(["info", str(noted)]) == 0
    assert f"note: {res.notes[0]}" in capsys.readouterr().out.splitlines()


def test_train_then_register_with_nmsr_v(sample, capsys):
    w = sample / "w.pt"
    assert main(["train", str(sample / "frames.npy"), str(sample / "frames.npy"), "--out", str(w), *FAST]) == 0
    assert w.is_file()
    out = sample / "res_v.npz"
    assert main(["register", str(sample / "frames.npy"), "--out", str(out), "--variant", "nmsr_v", "--weights", str(w), *FAST]) == 0
    assert RegistrationResult.load(out).config["variant"] == "nmsr_v"


def test_analyze_writes_pairs_json(sample, capsys):
    out = sample / "res_an.npz"
    main(["register", str(sample / "frames.npy"), "--out", str(out), *FAST])
    js, csv = sample / "an.json", sample / "an.csv"
    assert main(["analyze", str(out), "--json", str(js), "--csv", str(csv), "--mask", str(sample / "mask.npy")]) == 0
    report = json.loads(js.read_text())
    assert [p["t"] for p in report["pairs"]] == [0, 1, 2]
    assert all("vortex_centre_xy" in p for p in report["pairs"])
    assert csv.read_text().count("\n") >= 4


@pytest.mark.parametrize("args, needle", [
    (["register", "missing.dcm", "--out", "x.npz"], "does not exist"),
    (["analyze", "missing.npz", "--json", "x.json"], "not found"),
])
def test_errors_are_one_line_with_status_2(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err.lower() and "Traceback" not in err
    assert not (tmp_path / "x.npz").exists()


def test_one_frame_input_is_refused(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.random.default_rng(0).random((1, 32, 32)).astype(np.float32))
    assert main(["register", str(tmp_path / "one.npy"), "--out", str(tmp_path / "r.npz"), *FAST]) == 2
    assert "two frames" in capsys.readouterr().err


def test_set_reaches_the_engine_config_after_the_preset(sample, capsys):
    out = sample / "res_set.npz"
    args = ["register", str(sample / "frames.npy"), "--out", str(out), *FAST,
            "--set", "guard_gain=0", "--set", "smoothness=(50, 50)", "--set", "regulariser=diffusion",
            "--set", "guard_coherent=false"]  # as a shell user writes it: not the string "false" (truthy)
    assert main(args) == 0
    config = RegistrationResult.load(out).config
    assert config["guard_gain"] == 0 and tuple(config["smoothness"]) == (50.0, 50.0)
    assert config["guard_coherent"] is False
    assert config["regulariser"] == "diffusion" and config["affine"] is True  # untouched fields keep the preset's


@pytest.mark.parametrize("setting, needle", [
    ("guard_gian=0", "unknown setting 'guard_gian'"),
    ("steps=5", "use --steps"),
    ("guard_gain", "expected KEY=VALUE"),
    ("guard_gain=1.5", "guard_gain must be in [0, 1)"),
    ("guard=yes", "guard must be True or False"),
])
def test_bad_set_is_one_line_and_writes_nothing(setting, needle, sample, capsys):
    # A bad KEY=VALUE is refused by the parser (SystemExit 2), a bad value by the config (status 2).
    out = sample / "res_bad_set.npz"
    try:
        code = main(["register", str(sample / "frames.npy"), "--out", str(out), *FAST, "--set", setting])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_progress_line_says_no_nan_before_a_scale_has_read_its_loss(capsys):
    # A skipped U-Net scale (the default's full scale) reports its refinement's steps, whose loss is
    # read once per chunk: until then the line shows no number rather than "nan".
    from napari_nmsr.cli import _Bar
    from napari_nmsr.core.register import Progress

    bar = _Bar(quiet=False)
    bar(Progress(3, 4, 1.0, 5, 150, float("nan"), 2.0, 0.9))
    bar.last = 0.0
    bar(Progress(3, 4, 1.0, 100, 150, -0.4321, 3.0, 0.95))
    err = capsys.readouterr().err
    assert "nan" not in err and "step 5/150 loss ..." in err and "loss -0.4321" in err
