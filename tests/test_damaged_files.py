"""Every damaged file of the generated corpus is refused the same way by the API, the CLI and the reader.

The corpus (``damaged_files.py``) holds at least 40 cases of each kind read
back (sequences, masks, results, weights). Python API: the project's own
error type. CLI: exit status 2, exactly one line on stderr, no traceback,
no output file and no temporary left. napari reader: no reader, or our
error (the viewer-level check is in ``tests/gui/test_damaged_files_gui.py``).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import numpy as np
import pytest

from damaged_files import CASES, KINDS, build_corpus, good_frames, good_mask, good_result_arrays
from napari_nmsr.cli import main
from napari_nmsr.core.errors import MaskError, NMSRError, ResultFileError, SequenceError, WeightsFileError

ERROR = {"sequence": SequenceError, "mask": MaskError, "result": ResultFileError, "weights": WeightsFileError}
CASE_IDS = [name for _, name in CASES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    paths = build_corpus(folder / "damaged")
    good = folder / "good"
    good.mkdir()
    np.save(good / "frames.npy", good_frames())
    np.save(good / "mask.npy", good_mask())
    np.savez(good / "result.npz", **good_result_arrays())
    return paths, good


def test_the_corpus_has_40_cases_of_every_kind():
    counts = collections.Counter(kind for kind, _ in CASES)
    assert set(counts) == set(KINDS)
    assert min(counts.values()) >= 40, counts


def _api(kind, path, good):
    if kind == "sequence":
        from napari_nmsr.core.io import load_sequence

        load_sequence(path)
    elif kind == "mask":  # what `--mask` does: read the file, then match it to the sequence
        from napari_nmsr.cli_checks import read_mask_argument
        from napari_nmsr.core.register import validate_mask

        validate_mask(read_mask_argument(path), good_frames().shape)
    elif kind == "result":
        from napari_nmsr.core.result import RegistrationResult

        RegistrationResult.load(path)
    else:
        from napari_nmsr.core.train import load_weights

        load_weights(path)


@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_python_api_raises_the_project_error(corpus, kind, case):
    paths, good = corpus
    with pytest.raises(ERROR[kind]) as info:
        _api(kind, paths[case], good)
    assert str(info.value).strip() and "allow_pickle" not in str(info.value)


def _cli_runs(kind, path, good, out):
    fast = ["--steps", "1", "--scales", "1", "--quiet"]
    res = str(good / "result.npz")
    if kind == "sequence":
        return [["info", path], ["register", path, "--out", out / "r.npz", *fast]]
    if kind == "mask":
        return [["register", good / "frames.npy", "--mask", path, "--out", out / "r.npz", *fast],
                ["analyze", res, "--mask", path, "--json", out / "a.json", "--csv", out / "a.csv"]]
    if kind == "result":
        return [["info", path], ["analyze", path, "--json", out / "a.json", "--csv", out / "a.csv"]]
    return [["register", good / "frames.npy", "--variant", "nmsr_v", "--weights", path, "--out", out / "r.npz", *fast]]


@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_cli_exits_2_with_one_line(corpus, kind, case, tmp_path, capsys):
    paths, good = corpus
    for argv in _cli_runs(kind, paths[case], good, tmp_path):
        status = main([str(a) for a in argv])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert status == 2, (argv[0], err)
        assert len(lines) == 1 and lines[0].startswith(f"nmsr {argv[0]}: error: "), err
        assert "Traceback" not in err and "allow_pickle" not in err
        assert list(tmp_path.iterdir()) == [], "nothing may be written, not even a temporary"


@pytest.mark.parametrize("kind, case", CASES, ids=CASE_IDS)
def test_napari_reader_declines_or_raises_the_project_error(corpus, kind, case):
    from napari_nmsr._reader import napari_get_reader

    paths, _ = corpus
    reader = napari_get_reader(str(paths[case]))
    if kind == "weights":
        assert reader is None  # napari never hands a weights file to this plugin
        return
    if kind == "mask" or reader is None:  # masks are not a reader format; unknown suffixes are declined
        return
    with pytest.raises(NMSRError):
        reader(str(paths[case]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_real_process_prints_one_line_and_exits_2(corpus, kind, tmp_path):
    """One case per kind through the installed entry point in a fresh interpreter (no test harness)."""
    paths, good = corpus
    case = {"sequence": "sequence-npz_zip_bomb", "mask": "mask-nan_values", "result": "result-scales_longer_than_fields",
            "weights": "weights-misshaped_tensor"}[kind]
    argv = _cli_runs(kind, paths[case], good, tmp_path)[-1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "napari_nmsr.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
