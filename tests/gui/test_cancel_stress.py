"""Cancel pressed 50 times at random moments, then one full run: nothing leaks, nothing is lost, same result.

The moments (seeded, so a failure can be replayed): at once, after a random
delay, after a random number of optimisation steps, exactly at the hand-over
between scales, twice in a row, and in the forward-backward consistency run
(random delay, random step, its hand-over between scales). After every
cancel: no worker thread left, the user's layers are the same objects, no
layer name twice, at most one quiver and one inconsistency layer, and the
panel is ready again. At the end one uninterrupted run must equal the
engine's own run with the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool, QTimer

from gui_helpers import add_small_sequence, open_panel, set_run
from napari_nmsr._widget.consistency import LAYER_NAME
from napari_nmsr._widget.layers import ROLE_KEY, ROLE_VECTORS
from napari_nmsr.core.register import register

pytestmark = pytest.mark.gui

N_REGISTRATION, N_PRESSES = 25, 50  # presses in forward runs, presses in all (the rest in consistency runs)
PRESSES = []
SCALES, STEPS = "0.5, 1", "4, 4"


def _no_thread_left(qtbot):
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=30_000)


def _check_layers(viewer, user_layers):
    names = [lyr.name for lyr in viewer.layers]
    assert len(names) == len(set(names)), names
    assert all(any(lyr is u for lyr in viewer.layers) for u in user_layers), "a user layer was lost"
    assert sum(lyr.metadata.get(ROLE_KEY) == ROLE_VECTORS for lyr in viewer.layers) <= 1
    assert names.count(LAYER_NAME) <= 1


def _press(button):
    if button.isEnabled():
        PRESSES.append(button)
        button.click()


def _cancel_registration_at(moment, widget, worker, rng):
    """Arrange for Cancel to be pressed at ``moment`` of the run ``worker`` is doing."""
    reg = widget.registration
    if moment == "at once":
        _press(reg.cancel_button)
    elif moment == "twice":
        _press(reg.cancel_button)
        _press(reg.cancel_button)
    elif moment == "delay":
        QTimer.singleShot(int(rng.integers(0, 120)), lambda: _press(reg.cancel_button))
    elif moment == "step":
        target, seen = int(rng.integers(1, 9)), [0]

        def on_event(_):
            seen[0] += 1
            if seen[0] == target:
                _press(reg.cancel_button)

        worker.yielded.connect(on_event)
    elif moment == "hand-over":  # the first scale's field has just arrived; the next scale is starting
        def on_scale(_):
            reg.scale_done.disconnect(on_scale)
            _press(reg.cancel_button)

        reg.scale_done.connect(on_scale)


def _cancel_check_at(moment, check, worker, rng):
    if moment == "delay":
        QTimer.singleShot(int(rng.integers(0, 150)), lambda: _press(check.cancel_button))
    elif moment == "step":
        target, seen = int(rng.integers(1, 9)), [0]

        def on_event(event):
            seen[0] += 1
            if seen[0] == target:
                _press(check.cancel_button)

        worker.yielded.connect(on_event)
    elif moment == "hand-over":  # the backward run yields None between its scales
        def on_event(event):
            if event is None:
                _press(check.cancel_button)

        worker.yielded.connect(on_event)


def test_cancel_50_times_at_random_moments_then_a_full_run_equals_the_engine(make_napari_viewer, qtbot):
    rng = np.random.default_rng(11)
    PRESSES.clear()
    viewer = make_napari_viewer()
    image, masks = add_small_sequence(viewer, n_frames=4)
    labels = viewer.add_labels(masks.astype(np.uint8), scale=image.scale, units=image.units, name="NMSR masks",
                               metadata={ROLE_KEY: "masks"})
    widget = open_panel(viewer)
    widget.sequence.select_layer(image)
    set_run(widget, SCALES, STEPS)
    user_layers = [image, labels]
    reg = widget.registration

    moments = ["at once", "twice", "delay", "step", "hand-over", "step", "hand-over"]
    kept_scales = []
    i = 0
    while len(PRESSES) < N_REGISTRATION:  # a delay may fire after its run has finished: keep going until pressed
        moment = moments[i % len(moments)] if i < len(moments) else str(rng.choice(moments))
        worker = reg.run()
        assert worker is not None, f"press {i}: the panel did not accept Run"
        _cancel_registration_at(moment, widget, worker, rng)
        qtbot.waitUntil(lambda: not reg.running, timeout=30_000)
        _no_thread_left(qtbot)
        _check_layers(viewer, user_layers)
        result = widget.state.result
        assert reg.run_button.text() == "Run" and not reg.cancel_button.isEnabled()
        assert result is not None and result.n_scales == len(widget.state.done)
        if result.n_scales < 2:
            assert result.cancelled, f"press {i} ({moment}): a partial result not marked cancelled"
        vectors = [lyr for lyr in viewer.layers if lyr.metadata.get(ROLE_KEY) == ROLE_VECTORS]
        if result.n_scales:
            (layer,) = vectors
            assert layer.metadata["nmsr_result"] is result
            assert set(np.unique(layer.data[:, 0, 0])) == set(range(result.n_scales))  # exactly the kept scales
        kept_scales.append(result.n_scales)
        i += 1
        assert i < 4 * N_REGISTRATION
    assert 0 in kept_scales and 1 in kept_scales, kept_scales  # cancels landed both before and after a hand-over

    reg.run()  # a full forward run, for the consistency checks
    qtbot.waitUntil(lambda: not reg.running, timeout=60_000)
    assert widget.state.result.n_scales == 2 and not widget.state.result.cancelled
    check = widget.analysis.consistency
    i = 0
    while len(PRESSES) < N_PRESSES:
        moment = ["delay", "step", "hand-over"][i % 3]
        i += 1
        assert i < 4 * N_PRESSES
        worker = check.check()
        assert worker is not None, f"consistency press {i}: not started"
        _cancel_check_at(moment, check, worker, rng)
        qtbot.waitUntil(lambda: not check.running, timeout=30_000)
        _no_thread_left(qtbot)
        _check_layers(viewer, user_layers)
        assert check.check_button.isEnabled() and not check.cancel_button.isEnabled()
        if widget.state.inconsistency is None:  # cancelled in time: nothing kept, no layer
            assert LAYER_NAME not in [lyr.name for lyr in viewer.layers]

    reg.run()  # one full run after all of that
    qtbot.waitUntil(lambda: not reg.running, timeout=60_000)
    _no_thread_left(qtbot)
    _check_layers(viewer, user_layers)
    result = widget.state.result
    assert not result.cancelled and result.scales == (0.5, 1.0)
    assert widget.state.inconsistency is None and LAYER_NAME not in [lyr.name for lyr in viewer.layers]

    frames = np.asarray(image.data, np.float32)
    reference = register(frames, masks.astype(bool), reg.config())  # same settings and seed, never interrupted
    np.testing.assert_allclose(result.fields, reference.fields, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.metrics["mse"], reference.metrics["mse"], rtol=1e-6)
