"""Learned-quality bounds that record what they measured.

A test of a learned model asserts a measured quantity (a score, an accuracy, a likelihood) against a
bound. Each bound was chosen from the quantity's spread over seeds and torch thread counts, written
beside it as ``measured min / median / max`` with what a broken implementation gives. To re-measure
that spread, run the quality tests with other seeds and thread counts::

    python -m tests.quality_spread            # seeds 0-4 × threads 1, 2: a min/median/max table

``LENSLAB_TEST_SEED`` moves every seed of those tests (model initialisation, data split);
``LENSLAB_TEST_THREADS`` sets their torch threads; ``LENSLAB_QUALITY_LOG`` names a JSON Lines file
that receives every measured value. In a normal run the defaults (seed 0, one thread) apply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SEED = int(os.environ.get("LENSLAB_TEST_SEED", "0"))
THREADS = int(os.environ.get("LENSLAB_TEST_THREADS", "1"))


def record(name: str, value: float, bound: float, kind: str) -> None:
    """Append one measurement to ``LENSLAB_QUALITY_LOG`` (when set)."""
    path = os.environ.get("LENSLAB_QUALITY_LOG")
    if path:
        row = {
            "check": name,
            "value": float(value),
            "bound": float(bound),
            "kind": kind,
            "seed": SEED,
            "threads": THREADS,
        }
        with Path(path).open("a") as f:
            f.write(json.dumps(row) + "\n")


def at_least(name: str, value: float, bound: float, context: object = None) -> None:
    """Record ``value`` and assert ``value >= bound``."""
    record(name, value, bound, ">=")
    assert value >= bound, f"{name}: {value:.4g} < {bound:.4g}" + (f" ({context})" if context is not None else "")


def at_most(name: str, value: float, bound: float, context: object = None) -> None:
    """Record ``value`` and assert ``value <= bound``."""
    record(name, value, bound, "<=")
    assert value <= bound, f"{name}: {value:.4g} > {bound:.4g}" + (f" ({context})" if context is not None else "")
