"""The acquisition vocabulary, once (no torch here, so the web app, its schema and the database use it too).

Two named things:

- ``STRATEGIES``: per-item scores (paper section 3): ``bald`` (eq. 10), ``max_entropy`` (eq. 14),
  ``random`` (section 6.2.2's baseline). A project's queue strategy is one of them.
- ``BATCH_METHODS``: rules that turn scores into a batch for several experts (``ml.acquisition.select_batch``):
  ``topk``, ``batchbald``, ``power``, ``diverse``, ``cover``.

The experiments name their arms ``<model>-<strategy>[-<batch method>]`` (e.g. ``ilvm-bald-diverse``),
built from these (``ml.experiment.al_curve``).
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = ("bald", "max_entropy", "random")
BATCH_METHODS: tuple[str, ...] = ("topk", "batchbald", "power", "diverse", "cover")


def scored_strategy(strategy: str) -> str:
    """The per-item scores kept for a queue strategy: its own, or BALD's for "random" (a random queue
    needs no scores, but the REST API still serves the lens's informativeness)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return "bald" if strategy == "random" else strategy
