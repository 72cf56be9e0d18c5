"""Fixtures every test gets.

Torch's CPU thread count (and :mod:`napari_nmsr.core.threads`' automatic mode) is
process-wide: a test that sets it would otherwise decide the count of every test
after it, and a seeded run's result depends on the count beyond its last digits
(core/threads.py). Each test starts from the count the session had and leaves it so.
"""

from __future__ import annotations

import pytest
import torch

from napari_nmsr.core import threads


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    count, auto = torch.get_num_threads(), dict(threads._auto)
    yield
    threads._auto.clear()
    threads._auto.update(auto)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
