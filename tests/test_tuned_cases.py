"""Regression: the four simulator cases the engine was first tuned on (slow: ~1 min each on one CPU thread).

The default engine must keep beating Farneback on each of them (the first
session's bar), with the case's mask, as `nmsr register --mask` runs it.
"""

import numpy as np
import pytest

pytest.importorskip("cv2")

from napari_nmsr.core.register import RegistrationConfig, register  # noqa: E402
from napari_nmsr.core.simulate import CASES  # noqa: E402


def _epe(fields, seq):
    return float(np.hypot(fields[:, 0] - seq.fields[:, 0], fields[:, 1] - seq.fields[:, 1])[seq.masks[1:]].mean())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_default_engine_beats_farneback_on_the_tuned_cases(case):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from baselines import farneback

    seq = CASES[case]()
    ours = _epe(register(seq.frames, seq.masks, RegistrationConfig()).fields[-1], seq)
    theirs = _epe(farneback(seq.frames), seq)
    assert ours < theirs, (case, ours, theirs)
