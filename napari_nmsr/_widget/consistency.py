"""Forward-backward consistency check, the "Confidence" part of the Analysis section (issue 5).

One registration cannot say where it is lost (blood leaving the plane,
speckle decorrelation, occlusion). Registering the REVERSED sequence with the
same settings and composing the two fields gives, per pixel of frame t+1,
``|u_f + u_b(x + u_f)|`` (px, ``core.analysis.consistency_error``): about 0
where both runs agree. It costs a second run, so it is a button, not a default.

The backward run is the engine's generator in a napari ``thread_worker``
(``quit()`` is honoured at the next optimisation step, as in the registration
section); the error of every finished scale is computed in the same thread.
The result goes to ``state.inconsistency`` (S, T-1, H, W) float32 px; the
chosen scale is shown as an Image layer under the quiver (frame t+1 holds pair
t, like the arrows), and :attr:`ConsistencyControls.changed` tells the display
to grey out the arrows above the threshold.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QLabel, QPushButton, QWidget

from napari_nmsr.core.analysis import consistency_error
from napari_nmsr.core.errors import DeviceMemoryError, NMSRError
from napari_nmsr.core.register import Progress, RegistrationConfig, register_iter

from .layers import ROLE_VECTORS, find_role, placed_like, put_layer, remove_role
from .qt_util import row
from .state import WorkflowState, frames_from_layer
from .worker import stop_worker, surface_runtime_errors

if TYPE_CHECKING:
    import napari

__all__ = [
    "ROLE_INCONSISTENCY", "LAYER_NAME", "ConsistencyControls", "backward_config", "consistency_events",
    "inconsistency_frames", "summarise",
]

ROLE_INCONSISTENCY = "inconsistency"
LAYER_NAME = "NMSR inconsistency (px)"


def backward_config(result) -> RegistrationConfig:
    """The forward run's settings, cut to its finished scales (a cancelled run kept fewer)."""
    config = RegistrationConfig.from_saved(result.config)
    n = result.n_scales
    if config.variant != "nmsr" and n < len(config.scales):
        steps = config.steps[:n] if isinstance(config.steps, tuple) else config.steps
        config = dataclasses.replace(config, scales=tuple(result.scales), steps=steps)
    return config


@surface_runtime_errors("the backward run")
def consistency_events(frames: np.ndarray, mask: np.ndarray | None, config: RegistrationConfig, forward: np.ndarray):
    """Worker generator: yields the backward run's ``Progress``; returns (S, T-1, H, W) float32 px.

    ``frames`` (T, H, W) and ``mask`` (T, H, W) are in FORWARD order (reversed
    here); ``forward`` (S, T-1, 2, H, W) are the forward fields per scale.
    """
    backward = []
    rev_mask = None if mask is None else np.ascontiguousarray(mask[::-1])
    for event in register_iter(np.ascontiguousarray(frames[::-1]), rev_mask, config):
        if isinstance(event, Progress):
            yield event
        else:
            backward.append(event.field)
            yield None  # a quit() point between scales too
    errors = []
    for s, field in enumerate(backward[: len(forward)]):
        errors.append(consistency_error(forward[s], field))  # reversed_order: the default
        yield None
    return np.stack(errors).astype(np.float32)


def inconsistency_frames(pairs: np.ndarray) -> np.ndarray:
    """(T-1, H, W) per pair -> (T, H, W) aligned with the frames: frame t+1 holds pair t, frame 0 is 0."""
    return np.concatenate((np.zeros_like(pairs[:1]), pairs)).astype(np.float32)


def summarise(pairs: np.ndarray, mask: np.ndarray | None, threshold: float) -> tuple[float, float]:
    """Mean inconsistency (px) and the fraction of pixels above ``threshold``, inside the mask if any.

    ``mask`` is (T, H, W) in frame order: pair t is judged with frame t+1's mask.
    """
    inside = pairs[np.asarray(mask[1:], bool)] if mask is not None else pairs.ravel()
    if inside.size == 0:
        inside = pairs.ravel()
    return float(np.nanmean(inside)), float(np.mean(~(inside <= threshold)))


class ConsistencyControls(QWidget):
    """Button, threshold and status line of the consistency check; owns its worker."""

    changed = Signal()  # state.inconsistency or the threshold changed: restyle the arrows

    def __init__(
        self,
        viewer: "napari.Viewer",
        state: WorkflowState,
        result: Callable[[], object],
        scale_index: Callable[[], int],
        parent=None,
    ):
        super().__init__(parent)
        self._viewer, self._state = viewer, state
        self._result, self._scale_index = result, scale_index
        self._worker = None
        self._closed = False
        self.check_button = QPushButton("Check consistency (backward run)")
        self.check_button.setToolTip(
            "Register the sequence backwards with the same settings (a second run, as long as the first) and "
            "show where the two fields disagree; arrows there are greyed out"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 50.0)  # the default engine is consistent to a few hundredths of a px in places
        self.threshold.setSingleStep(0.25)
        self.threshold.setDecimals(2)
        self.threshold.setSuffix(" px")
        self.threshold.setValue(state.consistency_threshold)
        self.threshold.setToolTip("Arrows where the forward and backward fields disagree by more than this are grey")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(row(self.check_button, self.cancel_button))
        form.addRow("Grey arrows above", self.threshold)
        form.addRow(self.status)
        self.check_button.clicked.connect(self.check)
        self.cancel_button.clicked.connect(self.cancel)
        self.threshold.valueChanged.connect(self._on_threshold)

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self._worker is not None

    def check(self):
        """Start the backward run; refused (with a message) while one is going. Returns the worker or None."""
        if self.running:
            show_warning("The consistency check is already running: wait for it, or press Cancel.")
            return None
        result, image = self._result(), self._state.image_layer
        if result is None or not result.n_scales:
            show_warning("Run a registration first: the check registers the same sequence backwards.")
            return None
        if image is None:
            show_warning("Choose the registered sequence in 1. Sequence first.")
            return None
        try:
            frames = frames_from_layer(image)
            if frames.shape[0] - 1 != result.fields.shape[1] or frames.shape[1:] != result.fields.shape[-2:]:
                raise ValueError(
                    f"The sequence '{image.name}' ({frames.shape[0]} frames of {frames.shape[1]} x {frames.shape[2]}) "
                    "is not the one of the result: choose the registered sequence in 1. Sequence."
                )
            config = backward_config(result)
        except (ValueError, TypeError, NMSRError) as exc:
            show_error(f"Cannot check consistency: {exc}")
            return None
        mask = self._state.run_mask if result is self._state.result else None
        self._forward_result = result
        self._seq, self._image = self._state.current, image
        self.check_button.setText("Checking ...")
        self.cancel_button.setEnabled(True)
        self.status.setText("Backward run: starting ...")
        worker = create_worker(consistency_events, frames, mask, config, result.fields, _start_thread=False,
                               _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the backward run at the next step; nothing is kept."""
        if self.running:
            self.status.setText("Cancelling ...")
            self._worker.quit()

    def shutdown(self) -> None:
        """Panel closing: stop the worker and wait for its thread, quietly."""
        self._closed = True
        self._stop()

    def clear(self, *_) -> None:
        """A new registration starts: stop a check of the old run and drop its (now stale) layer."""
        self._stop()
        self._reset_buttons()
        remove_role(self._viewer, ROLE_INCONSISTENCY, self._state.image_layer)
        self.status.setText("")

    def show_current(self) -> None:
        """Another sequence was chosen: describe its own check, if it has one."""
        self.status.setText("")
        if self._state.inconsistency is not None:
            self._describe()

    def _stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        for signal in (worker.yielded, worker.returned, worker.errored, worker.finished):
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):
                pass
        stop_worker(worker)

    # ------------------------------------------------------------------ worker events (main thread)
    def _on_progress(self, p) -> None:
        if self._closed or not isinstance(p, Progress):
            return
        self.status.setText(f"Backward run: scale {p.scale_index + 1} of {p.n_scales} ({p.scale:g}) - "
                            f"step {p.step} of {p.n_steps}")

    def _on_returned(self, inconsistency) -> None:
        if self._closed or inconsistency is None:  # None: quit() before the end
            return
        if self._forward_result is not self._seq.result and self._forward_result is not self._result():
            self.status.setText("The result changed during the check: run it again")
            return
        self._seq.inconsistency = inconsistency
        if self._seq is not self._state.current:
            return  # shown when its sequence is chosen again
        self.show_scale()
        self.changed.emit()
        self._describe()

    def _on_error(self, exc: BaseException) -> None:
        if self._closed:
            return
        if isinstance(exc, DeviceMemoryError):
            show_error(f"Consistency check: out of memory: {exc}")
        elif isinstance(exc, (NMSRError, ValueError)):
            show_error(f"Consistency check failed: {exc}")
        else:
            show_error(f"Consistency check failed ({type(exc).__name__}): {exc}")
        self.status.setText("Consistency check failed: see the notification")

    def _on_finished(self) -> None:
        if self._closed:
            return
        cancelled = self._worker is not None and self._worker.abort_requested
        self._worker = None
        self._reset_buttons()
        if cancelled:
            self.status.setText("Consistency check cancelled")

    def _reset_buttons(self) -> None:
        self.check_button.setText("Check consistency (backward run)")
        self.cancel_button.setEnabled(False)

    # ------------------------------------------------------------------ display
    def _pairs(self) -> tuple[int, np.ndarray | None]:
        k = max(self._scale_index(), 0)
        inc = self._state.inconsistency
        return k, (inc[k] if inc is not None and k < len(inc) else None)

    def show_scale(self, *_) -> None:
        """Show the Analysis section's chosen scale as the inconsistency layer, under the quiver.

        Zero outside the run's mask: there the field is only the smooth
        continuation of the inside (no data term), so its disagreement says
        nothing and would wash the whole echo in colour (additive blending:
        zero leaves the echo as it is).
        """
        k, pairs = self._pairs()
        if pairs is None or self._closed:
            return
        data = inconsistency_frames(pairs)
        mask = self._state.run_mask
        if mask is not None and mask.shape == data.shape:
            data[~mask] = 0.0
        hi = max(float(np.nanpercentile(pairs, 99)), 2.0 * self._state.consistency_threshold)
        image = self._state.image_layer
        placement = placed_like(image) if image is not None else {}
        layer = put_layer(self._viewer, ROLE_INCONSISTENCY, "image", data, source=image, name=LAYER_NAME,
                          colormap="magma",
                          contrast_limits=(0.0, hi), blending="additive", opacity=0.8, **placement)
        layer.contrast_limits = (0.0, hi)
        layer.metadata["nmsr_scale_index"] = k
        vec = find_role(self._viewer, ROLE_VECTORS, self._state.image_layer)
        if vec is not None:
            i, j = self._viewer.layers.index(layer), self._viewer.layers.index(vec)
            if i > j:
                self._viewer.layers.move(i, j)
        self._describe()

    def _on_threshold(self, value: float) -> None:
        self._state.consistency_threshold = float(value)
        if self._state.inconsistency is not None:
            self.changed.emit()
            self._describe()

    def _describe(self) -> None:
        """Mean inconsistency in the mask and the share of the chosen scale's arrows greyed out."""
        k, pairs = self._pairs()
        if pairs is None:
            return
        threshold = self._state.consistency_threshold
        mean, above = summarise(pairs, self._state.run_mask, threshold)
        what = "of the mask" if self._state.run_mask is not None else "of the frame"
        vec = find_role(self._viewer, ROLE_VECTORS, self._state.image_layer)
        if vec is not None and "reliable" in vec.features and len(vec.features):
            on_scale = vec.features["scale_index"].to_numpy() == k
            if on_scale.any():
                above, what = float(np.mean(~vec.features["reliable"].to_numpy()[on_scale])), "of arrows"
        result = self._result()
        scale = f"Scale {result.scales[k]:g}: " if result is not None and k < result.n_scales else ""
        self.status.setText(f"{scale}mean forward-backward inconsistency {mean:.2g} px, {above:.0%} {what} above {threshold:g} px")
