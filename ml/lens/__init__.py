"""The interpretable lens (ILVM, paper section 2): planar flows from z to z*, z* linear in s.

One concept per module, dependencies one way (estimator → selection → train → checkpoint → model → config):

- ``config``: ``LensConfig``, every hyper-parameter once with its kind and check (no torch);
- ``model``: ``LensModule``, the networks, the per-item ELBO (7)/(8) and the predictive samples;
- ``regularisers``: the semi-supervised terms over the unlabelled pool;
- ``train``: ``train()``, the one training loop;
- ``selection``: k-fold cross-validated choice of the "auto" settings, a function over configs;
- ``checkpoint``: the checkpoint format (what ``save``/``to_bytes`` write);
- ``estimator``: ``InterpretableLens``, the scikit-learn-style estimator.

Training maximises ELBO (7) for labelled attributes and ELBO (8) for unlabelled ones — s latent,
with q(s | z) the head evaluated at f(z) — plus α·log p_ψ(s|z*) on labelled items, the supervision
weight of Kingma et al. (2014, M2) that DESIGN.md measured to be needed (α = 1 leaves z* no more
interpretable than z). The names below load lazily, so ``ml.lens.config`` can be used without torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AUTO": "ml.lens.config",
    "LensConfig": "ml.lens.config",
    "LensModule": "ml.lens.model",
    "InterpretableLens": "ml.lens.estimator",
    "train": "ml.lens.train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ml.lens' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
