"""Fixtures shared by the ml tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test (``LENSLAB_TEST_THREADS`` when measuring spreads): on small matrices
    thread hand-offs cost more than they save, and CI may share its cores."""
    from tests.quality import THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # 1 unless a spread measurement asks for more
    yield
    torch.set_num_threads(before)
