"""Why a metric is missing, in words an expert can act on: read from what the evaluation stored.

The evaluation (``ml.steps.evaluate``) lists every attribute it could not score under
``skipped`` with its reason; the jobs page, the model table, the insights page and the project list
all explain an empty figure with the sentence built here, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def attribute_reasons(metrics: Mapping[str, Any] | None) -> dict[str, str]:
    """Attribute name → why the metric skipped it (empty when every attribute was scored)."""
    skipped = (metrics or {}).get("skipped") or {}
    return {str(k): str(v) for k, v in skipped.items()} if isinstance(skipped, Mapping) else {}


def held_out_every(eval_fraction: float) -> int | None:
    """N of "1 in N items handed out is held out" (None when nothing is held out)."""
    return max(1, round(1 / eval_fraction)) if eval_fraction > 0 else None


def eval_hint(eval_fraction: float | None) -> str:
    """What makes eval labels appear: the share of hand-outs held out, or the setting to change."""
    if eval_fraction is None:
        return "Keep labelling: some items the queue hands out join the held-out eval set."
    if eval_fraction <= 0:
        return (
            "This project holds out no eval items (eval fraction 0), so nothing can be measured: "
            "set an eval fraction above 0 in its settings."
        )
    every = held_out_every(eval_fraction)
    return (
        f"Keep labelling: about 1 in {every} items the queue hands out joins the held-out eval set "
        "(it wears the “eval set” badge), and only those measure the lens."
    )


def why_unscored(metrics: Mapping[str, Any] | None, *, eval_fraction: float | None) -> str | None:
    """A sentence for a missing or partial score (None when every attribute was scored), naming each
    skipped attribute with its reason and what will fix it."""
    reasons = attribute_reasons(metrics)
    scored = metrics is not None and metrics.get("overall") is not None
    if not reasons:
        if metrics is None or scored:
            return None
        if metrics.get("n_eval") == 0:
            return "No score: there are no labelled eval items yet. " + eval_hint(eval_fraction)
        return "No score was computed for this model."
    parts = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    if scored:
        return f"Partly scored: the overall score leaves out {', '.join(reasons)}. {parts}. {eval_hint(eval_fraction)}"
    return f"No score yet. {parts}. {eval_hint(eval_fraction)}"


def short_reason(metrics: Mapping[str, Any] | None) -> str | None:
    """One line for a table cell or a job message: each skipped attribute's reason (None when all scored)."""
    reasons = attribute_reasons(metrics)
    if not reasons:
        scored = metrics is not None and metrics.get("overall") is not None
        return "no labelled eval items" if not scored and (metrics or {}).get("n_eval") == 0 else None
    return "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
