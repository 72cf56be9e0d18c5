"""Section 3, Registration: settings, Run / Cancel, progress.

The run is the engine's generator in a napari ``thread_worker``
(:mod:`.worker`): the viewer stays live, Cancel (``worker.quit()``) takes
effect at the next optimisation step, and every finished scale is handed on
(:attr:`RegistrationSection.scale_done`) as soon as it exists.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
)

from napari_nmsr.core.diagnostics import convergence_warnings
from napari_nmsr.core.device import available_devices, describe_device, pick_device
from napari_nmsr.core.errors import DeviceMemoryError, NMSRError
from napari_nmsr.core.register import PRESETS, Progress, RegistrationConfig, ScaleDone
from napari_nmsr.core.result import RegistrationResult

from .layers import ROLE_MASKS, find_role
from .config_form import ConfigForm
from .qt_util import row
from .state import SESSION_SETTINGS, WorkflowState, frames_from_layer, sequence_info
from .worker import start_registration_worker, stop_worker

if TYPE_CHECKING:
    import napari

__all__ = ["RegistrationSection", "VARIANT_LABELS", "STEP_PRESETS"]

VARIANT_LABELS = {
    "nmsr_vi": "NMSR-VI (multi-scale, weights carried on)",
    "nmsr_ms": "multi-scale (new network per scale)",
    "nmsr": "NMSR (one scale)",
    "nmsr_v": "NMSR-V (pre-trained weights file)",
}

#: Steps per scale, coarse to fine. "default" is the engine's benchmark-tuned
#: preset (core.register.PRESETS); "quick" is a rough look in about a third
#: of its time; "paper" also switches the loss to the paper's (see
#: PRESET_SETTINGS).
STEP_PRESETS = {
    "quick": (60, 40, 30, 0),
    "default": tuple(PRESETS["default"]["steps"]),
    "paper": tuple(PRESETS["paper"]["steps"]),
}
#: Advanced settings a preset sets besides its steps (the others return to the engine's defaults).
PRESET_SETTINGS = {
    key: {k: v for k, v in PRESETS.get(key, {}).items() if k != "steps"} for key in STEP_PRESETS
}

_DEFAULTS = {"variant": "nmsr_vi", "scales": "0.125, 0.25, 0.5, 1", "preset": "default", "device": "auto", "use_mask": True}


def _numbers(text: str, kind=float) -> tuple:
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    return tuple(kind(p) for p in parts)


class RegistrationSection(QGroupBox):
    """Settings, Run and Cancel, a progress bar and a status line."""

    run_started = Signal(object)  # the RegistrationConfig
    scale_done = Signal(object)  # ScaleDone
    run_finished = Signal(object)  # RegistrationResult (possibly partial) or None on error

    def __init__(self, viewer: "napari.Viewer", state: WorkflowState, parent=None):
        super().__init__("3. Registration", parent)
        self._viewer = viewer
        self._state = state
        self.worker = None
        self._pbar = None
        self._pbar_scale = None  # the scale the progress description names
        self._cancelled = False
        self._failed = False
        self._config: RegistrationConfig | None = None
        self._cancel_requested_at: float | None = None
        self._closed = False  # the panel is going away: ignore late worker events
        self.last_stop_seconds: float | None = None  # Cancel -> thread returned
        self.run_image = None  # the image layer of the current / last run
        self._run_seq = state.current
        self.last_estimate = None  # the latest time Estimate (core.estimate)

        self.variant = QComboBox()
        for key, label in VARIANT_LABELS.items():
            self.variant.addItem(label, key)
        self.scales = QLineEdit()
        self.scales.setToolTip("Image scales, coarse to fine (fractions of the full size)")
        self.preset = QComboBox()
        for key in (*STEP_PRESETS, "custom"):
            self.preset.addItem(key, key)
        self.steps = QLineEdit()
        self.steps.setToolTip("Optimisation steps per scale: one number, or one per scale (coarse to fine). "
                              "0 skips that scale's U-Net: the default skips the full scale's, whose field the "
                              "quality check rejected on every tuning case; the refinement makes that row")
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("weights file from `nmsr train` (NMSR-V only)")
        self.weights_button = QPushButton("...")
        self.device = QComboBox()
        detected = describe_device(pick_device("auto"))
        self.device.addItem(f"auto: {detected}", "auto")
        for dev in available_devices():
            self.device.addItem(dev.upper() if dev != "mps" else "Apple MPS", dev)
        self.advanced = ConfigForm()
        self.advanced.native.setVisible(False)
        self.advanced_toggle = QCheckBox("Advanced settings")
        self.advanced_toggle.setToolTip("Every other knob of the engine's RegistrationConfig (a magicgui form)")
        self.advanced_toggle.toggled.connect(self.advanced.native.setVisible)
        self.use_mask = QCheckBox("Only inside the masks (2. Masks)")
        self.use_mask.setToolTip("Restrict the loss and the metrics to the per-frame masks, as in the paper")
        self.run_button = QPushButton("Run")
        self.estimate_button = QPushButton("Estimate time")
        self.estimate_button.setToolTip("Time a few steps on this sequence (about a second) and say how long Run will take")
        self.estimate_label = QLabel("")
        self.estimate_label.setWordWrap(True)  # "(up to N s if a scale trains on)" runs past the panel's width
        self._estimate_worker = None
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.status = QLabel(f"Detected device: {detected}")
        self.status.setWordWrap(True)
        self.warning = QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #f0a030; font-weight: bold;")
        self.warning.setVisible(False)

        weights_row = row(self.weights, self.weights_button)
        buttons = row(self.run_button, self.cancel_button, self.estimate_button)
        form = QFormLayout(self)
        form.addRow("Variant", self.variant)
        form.addRow("Weights", weights_row)
        form.addRow("Scales", self.scales)
        form.addRow("Steps preset", self.preset)
        form.addRow("Steps per scale", self.steps)
        form.addRow("Device", self.device)
        form.addRow(self.use_mask)
        form.addRow(self.advanced_toggle)
        form.addRow(self.advanced.native)
        form.addRow(buttons)
        form.addRow(self.estimate_label)
        form.addRow(self.bar)
        form.addRow(self.status)
        form.addRow(self.warning)

        self._restore()
        self.variant.currentIndexChanged.connect(self._on_variant)
        self.preset.currentIndexChanged.connect(self._on_preset)
        self.steps.textEdited.connect(lambda _: self.preset.setCurrentIndex(self.preset.findData("custom")))
        self.weights_button.clicked.connect(self._pick_weights)
        self.run_button.clicked.connect(self.run)
        self.estimate_button.clicked.connect(self.estimate)
        self.cancel_button.clicked.connect(self.cancel)
        self._on_variant()

    # ------------------------------------------------------------------ settings
    def _restore(self) -> None:
        s = {**_DEFAULTS, **SESSION_SETTINGS.get("registration", {})}
        if s["preset"] == "cpu":  # the earlier name of "default"
            s["preset"] = "default"
        self.variant.setCurrentIndex(max(0, self.variant.findData(s["variant"])))
        self.scales.setText(s["scales"])
        self.preset.setCurrentIndex(max(0, self.preset.findData(s["preset"])))
        self.steps.setText(s.get("steps") or ", ".join(str(n) for n in STEP_PRESETS[s["preset"]]))
        self.device.setCurrentIndex(max(0, self.device.findData(s["device"])))
        self.weights.setText(s.get("weights", ""))
        self.use_mask.setChecked(bool(s["use_mask"]))
        self.advanced.set_values(s.get("advanced", {}))

    def _remember(self) -> None:
        SESSION_SETTINGS["registration"] = {
            "variant": self.variant.currentData(),
            "scales": self.scales.text(),
            "preset": self.preset.currentData(),
            "steps": self.steps.text(),
            "device": self.device.currentData(),
            "weights": self.weights.text(),
            "use_mask": self.use_mask.isChecked(),
            "advanced": self.advanced.values(),
        }

    def _on_variant(self, *_):
        is_v = self.variant.currentData() == "nmsr_v"
        self.weights.setEnabled(is_v)
        self.weights_button.setEnabled(is_v)

    def _on_preset(self, *_):
        key = self.preset.currentData()
        if key in STEP_PRESETS:
            self.steps.setText(", ".join(str(n) for n in STEP_PRESETS[key]))
            # The preset's other settings (the paper's loss, its patience 0), or the engine's defaults.
            preset_keys = {k for settings in PRESET_SETTINGS.values() for k in settings}  # any preset sets them
            engine_defaults = {k: getattr(RegistrationConfig, k) for k in preset_keys}
            self.advanced.set_values({**engine_defaults, **PRESET_SETTINGS[key]})

    def _pick_weights(self):
        path, _ = QFileDialog.getOpenFileName(self, "NMSR-V weights", "", "Weights (*.pt *.pth *.npz);;All files (*)")
        if path:
            self.weights.setText(path)

    def config(self) -> RegistrationConfig:
        """The settings as an engine config; ValueError with a readable message when invalid."""
        try:
            scales = _numbers(self.scales.text(), float)
        except ValueError:
            raise ValueError(f"Scales must be numbers separated by commas, e.g. 0.25, 0.5, 1 (got '{self.scales.text()}')")
        try:
            steps = _numbers(self.steps.text(), int)
        except ValueError:
            raise ValueError(f"Steps must be whole numbers separated by commas (got '{self.steps.text()}')")
        if not steps or min(steps) < 0:
            raise ValueError("Steps per scale must be 0 or more (0 skips that scale's U-Net)")
        kwargs = self.advanced.values()
        return RegistrationConfig(
            variant=self.variant.currentData(),
            scales=scales,
            steps=steps[0] if len(steps) == 1 else steps,
            device=self.device.currentData(),
            weights=self.weights.text().strip() or None,
            **kwargs,
        )

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start a run; refused (with a message) while one is going. Returns the worker or None."""
        if self.running:
            show_warning("A registration is already running: press Cancel first, then Run again.")
            return None
        image = self._state.image_layer
        if image is None:
            show_warning("Choose an image layer in 1. Sequence first.")
            return None
        try:
            config = self.config()
            if config.variant == "nmsr_v":  # a damaged weights file fails here, not in the worker
                from napari_nmsr.core.train import load_weights

                load_weights(config.weights)
            frames = frames_from_layer(image)
            mask = self._mask(frames.shape)
        except (ValueError, NMSRError) as exc:
            show_error(str(exc))
            return None
        self._remember()
        self._config = config
        self._cancelled = self._failed = False
        self._cancel_requested_at = None
        self._state.clear_run()
        self._state.run_mask = mask
        self.run_image = image  # the run belongs to this sequence, whatever is chosen later
        self._run_seq = self._state.current
        self._info = sequence_info(image)
        # The finest scale's steps are counted with the refinement's that end it (as Progress counts them).
        self._total_steps = int(sum(config.steps_for(k) for k in range(len(config.effective_scales)))) + config.refinement_steps
        self._pbar_scale = None
        self._pbar = progress(total=self._total_steps, desc="NMSR registration")
        self.bar.setValue(0)
        self.bar.setFormat("%p%")
        self.status.setText("Timing a few steps ...")
        self.run_button.setText("Running ...")
        self.cancel_button.setEnabled(True)
        self.warning.setVisible(False)
        self.run_started.emit(config)
        self.worker = start_registration_worker(
            frames, mask, config,
            on_progress=self._on_progress, on_scale=self._on_scale,
            on_error=self._on_error, on_finished=self._on_finished, on_estimate=self._on_estimate,
        )
        return self.worker

    def estimate(self):
        """Calibrate on the chosen sequence in a worker and show "about N s on this machine"; returns the worker."""
        image = self._state.image_layer
        if image is None:
            show_warning("Choose an image layer in 1. Sequence first.")
            return None
        if self.running or self._estimate_worker is not None:
            return None
        try:
            config = self.config()
            frames = frames_from_layer(image)
            mask = self._mask(frames.shape)
        except (ValueError, NMSRError) as exc:
            show_error(str(exc))
            return None
        from .worker import estimate_events

        worker = create_worker(estimate_events, frames, mask, config, _start_thread=False, _ignore_errors=True)
        self._estimate_worker = worker
        self.estimate_label.setText("Timing a few steps ...")

        def done():
            self._estimate_worker = None

        worker.yielded.connect(self._on_estimate)
        worker.errored.connect(lambda exc: self.estimate_label.setText(f"No estimate: {exc}"))
        worker.finished.connect(done)
        worker.start()
        return worker

    def _on_estimate(self, est) -> None:
        if self._closed:
            return
        self.last_estimate = est
        self.estimate_label.setText(f"Run: {est}")
        if self.running:
            self.status.setText(f"Starting: {est} ...")

    def _mask(self, shape) -> np.ndarray | None:
        if not self.use_mask.isChecked():
            return None
        layer = find_role(self._viewer, ROLE_MASKS, self._state.image_layer)
        if layer is None:
            return None
        mask = np.asarray(layer.data) > 0
        if mask.shape != tuple(shape):
            raise ValueError(
                f"The masks layer '{layer.name}' is {mask.shape} but the sequence is {tuple(shape)}: "
                "interpolate the masks again for this sequence, or untick 'Only inside the masks'."
            )
        return mask

    def cancel(self) -> None:
        """Ask the run to stop at the current step (no waiting here); finished scales stay."""
        if not self.running:
            return
        self._cancelled = True
        self._cancel_requested_at = time.perf_counter()
        self.status.setText("Cancelling ...")
        self.worker.quit()

    def shutdown(self) -> None:
        """Viewer closing: stop the worker and wait for its thread, quietly."""
        self._closed = True
        worker = self.worker
        if worker is None:
            return
        self._cancelled = True
        for signal in (worker.yielded, worker.errored, worker.finished):
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):
                pass
        stop_worker(worker)
        self.worker = None
        self._close_pbar()
        if self._estimate_worker is not None:
            stop_worker(self._estimate_worker)
            self._estimate_worker = None

    # ------------------------------------------------------------------ worker events (main thread)
    def _on_progress(self, p: Progress) -> None:
        if self._closed:
            return
        self.bar.setValue(int(1000 * p.fraction))
        eta = p.eta_s
        self.bar.setFormat("%p%" if eta is None else f"%p%  ·  about {eta:.0f} s left")
        loss = f" - loss {p.loss:.4f}" if math.isfinite(p.loss) else ""  # none read yet in this scale
        self.status.setText(f"Scale {p.scale_index + 1} of {p.n_scales} ({p.scale:g}) - step {p.step} of {p.n_steps}{loss}")
        pbar = self._pbar  # napari's progress may run the event loop (and end the run) inside refresh
        if pbar is not None:
            done = sum(self._config.steps_for(k) for k in range(p.scale_index)) + p.step
            pbar.n = min(done, self._total_steps)
            if p.scale_index != self._pbar_scale:  # a scale of 0 steps starts at its refinement's steps
                self._pbar_scale = p.scale_index
                pbar.set_description(f"NMSR scale {p.scale_index + 1}/{p.n_scales}")
            pbar.refresh()

    def _on_scale(self, done: ScaleDone) -> None:
        if self._closed:
            return
        self._run_seq.done.append(done)
        self.scale_done.emit(done)

    def _on_error(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._failed = True
        if isinstance(exc, DeviceMemoryError):
            show_error(f"Out of memory: {exc}")
        elif isinstance(exc, (NMSRError, ValueError)):
            show_error(str(exc))
        else:
            show_error(f"Registration failed ({type(exc).__name__}): {exc}")

    def _on_finished(self) -> None:
        if self._closed:
            return
        if self._cancel_requested_at is not None:
            self.last_stop_seconds = time.perf_counter() - self._cancel_requested_at
        self.worker = None
        self._close_pbar()
        self.run_button.setText("Run")
        self.cancel_button.setEnabled(False)
        done = self._run_seq.done
        if self._failed and not done:
            self.status.setText("Failed: see the notification")
            self.run_finished.emit(None)
            return
        info = self._info
        result = RegistrationResult.from_scales(
            done,
            config=self._config.to_dict(),
            cancelled=self._cancelled or self._failed or len(done) < len(self._config.effective_scales),
            frame_interval_s=info["frame_interval_s"],
            pixel_spacing_mm=info["pixel_spacing_mm"],
            device=describe_device(pick_device(self._config.device)),
        )
        result.masks = self._run_seq.run_mask  # saved with the fields: a reopened result shows only these arrows
        self._run_seq.result = result
        if result.cancelled:
            self.status.setText(f"Stopped: {len(done)} of {len(self._config.effective_scales)} scales finished and kept")
            show_info(self.status.text())
        else:
            self.bar.setValue(1000)
            seconds = float(np.sum(result.seconds)) if result.seconds is not None else 0.0
            # what the engine decided beyond its plan (an extended scale, the refinement's blur), in words
            self.status.setText("\n".join([f"Done: {len(done)} scales in {seconds:.0f} s on {result.device}",
                                            *result.notes]))
        self.show_convergence(result)
        self.run_finished.emit(result)

    def show_convergence(self, result, notify: bool = True) -> list[str]:
        """Warn, visibly, when the result looks unconverged (nearly uniform field, mean CC flat across scales)."""
        texts = convergence_warnings(result.fields, result.metrics["mean_cc"], result.scales, result.masks) \
            if result is not None and result.n_scales else []
        self.warning.setText("\n".join(f"Warning: {t}" for t in texts))
        self.warning.setVisible(bool(texts))
        for text in texts if notify else ():
            show_warning(text)
        return texts

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
