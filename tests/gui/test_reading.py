"""Reading the field: default density, colours that stay distinct over a map, unconverged-run warning (issue 12)."""

import numpy as np
import pytest

from gui_helpers import add_small_sequence, open_panel
from napari_nmsr._widget.display import DEFAULT_ARROWS_PER_FRAME
from napari_nmsr.core.register import ScaleDone
from napari_nmsr.core.result import RegistrationResult

pytestmark = pytest.mark.gui


def test_uniform_field_warns_and_a_map_turns_the_arrows_green(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    image, masks = add_small_sequence(viewer)
    assert DEFAULT_ARROWS_PER_FRAME == 150 and widget.display.arrows.value() == 150
    # an unconverged run: one shift of (1, -0.5) px everywhere, at two scales with the same mean CC
    field = np.zeros((5, 2, 64, 64), np.float32)
    field[:, 0], field[:, 1] = 1.0, -0.5
    cc = np.full(5, 0.42)
    done = [ScaleDone(k, 2, s, field, np.full(5, 1e-3), cc, 3, 0.1, 0.0) for k, s in enumerate((0.5, 1.0))]
    widget.state.done = done
    widget.state.result = RegistrationResult.from_scales(done, config={})
    texts = widget.registration.show_convergence(widget.state.result, notify=False)
    assert len(texts) == 2 and not widget.registration.warning.isHidden()
    assert "nearly uniform" in widget.registration.warning.text() and "barely moved" in widget.registration.warning.text()
    widget.display.refresh()
    layer = widget.display.vectors_layer()
    assert layer.edge_colormap.name == "turbo"
    widget.analysis.on_result()
    widget.analysis.compute()
    qtbot.waitUntil(lambda: widget.analysis.report is not None, timeout=60_000)
    assert widget.display.colours.currentData() == "greens"  # red/blue map under the arrows: no red arrows
    assert layer.edge_colormap.name == "nmsr_greens"
    assert "greens" in widget.display.legend_text.text()
    # the plot follows the (dark) theme
    bg = widget.analysis._figure.get_facecolor()
    assert sum(bg[:3]) < 1.5


def test_scale_slider_has_one_step_while_the_first_scale_runs(make_napari_viewer, qtbot):
    from gui_helpers import set_run, wait_for_run

    viewer = make_napari_viewer()
    widget = open_panel(viewer)
    add_small_sequence(viewer)
    set_run(widget, "0.5, 1", "500")
    widget.registration.run()
    try:
        assert viewer.dims.ndim == 4 and viewer.dims.nsteps[0] == 1  # not 0..512 (an empty layer's extent)
        assert widget.display.legend_text.text().startswith("Running")
    finally:
        widget.registration.cancel()
        wait_for_run(qtbot, widget)
