"""``nmsr`` arguments are checked before any work; every failure is one line with status 2 (Ctrl-C: 130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_nmsr import cli
from napari_nmsr.cli import main

FAST = ["--steps", "1", "--scales", "1", "--quiet"]


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "frames.npy", rng.random((3, 32, 32)).astype(np.float32))
    mask = np.zeros((3, 32, 32), np.float32)
    mask[:, 8:24, 8:24] = 1
    np.save(tmp_path / "mask01.npy", mask)
    return tmp_path


@pytest.fixture
def no_engine(monkeypatch):
    """Fail the test if registration or analysis starts: the checks must come first."""
    import napari_nmsr.core.analysis.report as report
    import napari_nmsr.core.io as io
    import napari_nmsr.core.register as register

    def boom(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(register, "register", boom)
    monkeypatch.setattr(report, "analyze_result", boom)
    monkeypatch.setattr(io, "load_sequence", boom)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("option, value", [("--steps", "0"), ("--steps", "-1"), ("--threads", "0"),
                                           ("--threads", "-1"), ("--steps", "two")])
def test_counts_below_one_are_refused_in_one_line(files, option, value, capsys, no_engine):
    with pytest.raises(SystemExit) as exc:
        main(["register", str(files / "frames.npy"), "--out", str(files / "r.npz"), option, value])
    assert exc.value.code == 2
    line = _one_line(capsys)
    assert option in line and ("at least 1" in line or "whole number" in line)


@pytest.mark.parametrize("value, expected", [("150,100,100,20", (150, 100, 100, 20)), ("40", 40),
                                             ("150, 100, 100, 0", (150, 100, 100, 0))])
def test_steps_take_one_count_or_one_per_scale(value, expected):
    from napari_nmsr.cli import build_parser

    args = build_parser().parse_args(["register", "in.npy", "--out", "r.npz", "--steps", value])
    assert args.steps == expected


@pytest.mark.parametrize("value", ["0,0,0,0", "150,-1,100,0", "150,x"])
def test_per_scale_steps_that_train_nothing_or_are_not_counts_are_refused(files, value, capsys, no_engine):
    with pytest.raises(SystemExit) as exc:
        main(["register", str(files / "frames.npy"), "--out", str(files / "r.npz"), "--steps", value])
    assert exc.value.code == 2
    line = _one_line(capsys)
    assert "--steps" in line and ("0 or more" in line or "whole numbers" in line)


@pytest.mark.parametrize("out", ["outdir", "outdir/", "file.txt/r.npz"])
def test_register_output_that_cannot_be_a_file_is_refused_before_loading(files, out, capsys, no_engine):
    (files / "outdir").mkdir()
    (files / "file.txt").write_text("x")
    assert main(["register", str(files / "frames.npy"), "--out", str(files / out), *FAST]) == 2
    assert "folder" in _one_line(capsys)


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_is_refused(files, capsys, no_engine):
    locked = files / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["register", str(files / "frames.npy"), "--out", str(locked / "r.npz"), *FAST]) == 2
        assert "no permission" in _one_line(capsys)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("which", ["--json", "--csv"])
def test_analyze_refuses_a_folder_output_before_writing_anything(files, which, capsys, no_engine):
    (files / "outdir").mkdir()
    outputs = {"--json": str(files / "a.json"), "--csv": str(files / "a.csv")}
    outputs[which] = str(files / "outdir")
    assert main(["analyze", str(files / "missing.npz"), "--json", outputs["--json"], "--csv", outputs["--csv"]]) == 2
    assert "is a folder" in _one_line(capsys)
    assert not (files / "a.json").exists() and not (files / "a.csv").exists()


def test_analyze_refuses_json_and_csv_naming_the_same_file(files, capsys, no_engine):
    same = str(files / "a.out")
    assert main(["analyze", str(files / "r.npz"), "--json", same, "--csv", same]) == 2
    assert "same file" in _one_line(capsys)


def test_zero_one_float_mask_is_accepted_and_nan_mask_refused_by_register_and_analyze(files, capsys):
    out = files / "r.npz"
    assert main(["register", str(files / "frames.npy"), "--out", str(out), "--mask", str(files / "mask01.npy"), *FAST]) == 0
    capsys.readouterr()
    nan = np.load(files / "mask01.npy")
    nan[0, 0, 0] = np.nan
    np.save(files / "nan.npy", nan)
    messages = []
    for argv in (["register", str(files / "frames.npy"), "--out", str(files / "r2.npz"), *FAST],
                 ["analyze", str(out), "--json", str(files / "a.json")]):
        assert main([*argv, "--mask", str(files / "nan.npy")]) == 2
        messages.append(_one_line(capsys).split(": error: ")[1])
    assert messages[0] == messages[1] and "NaN" in messages[0]  # the same refusal, word for word
    assert not (files / "r2.npz").exists() and not (files / "a.json").exists()


@pytest.mark.parametrize("content, suffix", [(b"\x89PNG\r\n\x1a\n" + bytes(40), ".png"), (b"0 1\n1 0\n", ".txt"),
                                             (b"0 1\n1 0\n", ".npy")])
def test_text_or_png_as_mask_gets_a_clear_message(files, content, suffix, capsys):
    path = files / f"mask{suffix}"
    path.write_bytes(content)
    assert main(["register", str(files / "frames.npy"), "--out", str(files / "r.npz"), "--mask", str(path), *FAST]) == 2
    line = _one_line(capsys)
    assert "allow_pickle" not in line and ("masks are .npy" in line or "not a NumPy .npy file" in line)


def test_ctrl_c_at_any_moment_of_start_up_is_one_line(files, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_add_engine_options", interrupted)  # while the parser imports the engine
    assert main(["register", str(files / "frames.npy"), "--out", str(files / "r.npz")]) == 130
    assert "interrupted" in _one_line(capsys)
    monkeypatch.undo()
    import napari_nmsr.core.io as io

    monkeypatch.setattr(io, "load_sequence", interrupted)  # while the sequence loads
    assert main(["register", str(files / "frames.npy"), "--out", str(files / "r.npz"), *FAST]) == 130
    assert "interrupted" in _one_line(capsys)
    assert list(files.glob("*r.npz*")) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.4, 0.6, 0.8, 1.0])
def test_sigint_during_the_real_start_up_prints_no_traceback(files, delay):
    """SIGINT while the process imports torch (its first second), as a user pressing Ctrl-C at once.

    Before the interrupt was deferred over the imports, about one run in seven
    died by SIGINT (status -2) or by abort (pybind11 "terminate called").
    """
    proc = subprocess.Popen([sys.executable, "-m", "napari_nmsr.cli", "register", str(files / "frames.npy"),
                             "--out", str(files / "r.npz"), *FAST], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert "Traceback" not in err and proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_ctrl_c_inside_deferred_imports_is_raised_after_them():
    from napari_nmsr.cli_checks import deferred_interrupt

    before = signal.getsignal(signal.SIGINT)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here and must not raise
            finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is before
    with deferred_interrupt():  # no signal: nothing raised
        finished.append(True)
    assert finished == [True, True]
