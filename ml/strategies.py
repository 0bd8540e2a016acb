"""The acquisition vocabulary, once (no torch here, so the web app, its schema and the database use it too).

Three named things:

- ``STRATEGIES``: per-item scores (paper section 3): ``bald`` (eq. 10), ``max_entropy`` (eq. 14),
  ``random`` (section 6.2.2's baseline).
- ``BATCH_METHODS``: rules that turn scores into a batch for several experts (``ml.acquisition.select_batch``):
  ``topk``, ``batchbald``, ``power``, ``diverse``, ``cover``.
- ``QUEUE_STRATEGIES``: what a project's queue may follow: the per-item orders (``bald`` and
  ``max_entropy`` top-k, ``random``), the batch rules on BALD scores (``cover``, ``power``,
  ``diverse``), ``typiclust`` (cover on z alone, scores ignored), and ``auto``, the rule measured best
  (``AUTO_STRATEGY``). A batch rule picks the next round's items (as many as the labels expected
  before the next retrain) as one batch that every expert shares; per-item BALD order follows it.

The experiments name their arms ``<model>-<strategy>[-<batch method>]`` (e.g. ``ilvm-bald-diverse``),
built from these (``ml.experiment.al_curve``).
"""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = ("bald", "max_entropy", "random")
BATCH_METHODS: tuple[str, ...] = ("topk", "batchbald", "power", "diverse", "cover")
# Batch rules a queue can follow, each on BALD scores (typiclust: on z alone).
QUEUE_BATCH_RULES: tuple[str, ...] = ("cover", "typiclust", "power", "diverse")
QUEUE_STRATEGIES: tuple[str, ...] = ("auto", "bald", "max_entropy", "random", *QUEUE_BATCH_RULES)
# What "auto" follows: the TypiClust batch, the rule that measured best through the product's REST API
# (``lenslab bench al``, EXPERIMENTS.md "The served queue": MNIST, 5 seeds, overall AUC 28.4 against
# random's 26.6, paired p = 0.003, random's final score reached with 200 of its 300 labels; cover 27.3,
# p = 0.06; BALD top-k below random). In the library run (Fig. 8) cover and TypiClust tie (28.5, 28.4).
AUTO_STRATEGY = "typiclust"


def _check_queue(strategy: str) -> str:
    if strategy not in QUEUE_STRATEGIES:
        raise ValueError(f"strategy must be one of {QUEUE_STRATEGIES}, got {strategy!r}")
    return strategy


def strategy_in_effect(strategy: str) -> str:
    """The rule a queue strategy follows: "auto" resolved to ``AUTO_STRATEGY``, any other as it is."""
    return AUTO_STRATEGY if _check_queue(strategy) == "auto" else strategy


def scored_strategy(strategy: str) -> str:
    """The per-item scores kept for a queue strategy: max-entropy's own, BALD's for every other (a
    random queue needs no scores, but the REST API still serves the lens's informativeness)."""
    return "max_entropy" if _check_queue(strategy) == "max_entropy" else "bald"


def batch_rule(strategy: str) -> str | None:
    """The batch rule a queue strategy follows (``QUEUE_BATCH_RULES``), or None for a per-item order."""
    rule = strategy_in_effect(strategy)
    return rule if rule in QUEUE_BATCH_RULES else None
