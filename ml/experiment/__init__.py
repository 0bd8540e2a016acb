"""Reproductions of the paper's experiments (Figure 8, Tables 1 and 2, the lens on a classifier), the label curve
and the lens's alignment measured.

``run_experiment(name, profile=..., out=..., seeds=..., data_dir=...)`` runs one by name and writes
its JSON, CSV and PNG under ``out``; ``report.write_report(out)`` turns the JSON into EXPERIMENTS.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml.experiment.common import DATASETS, get_profile

# name → (module, the data sets it runs on by default)
EXPERIMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "al-curve": ("ml.experiment.al_curve", ("mnist",)),
    "table1": ("ml.experiment.table1", ("digits", "mnist", "shapes")),
    "table2": ("ml.experiment.table2", ("digits", "mnist", "shapes")),
    "lens-on-classifier": ("ml.experiment.lens_on_classifier", ("mnist",)),
    "label-curve": ("ml.experiment.label_curve", ("mnist",)),
    "alignment": ("ml.experiment.alignment", ("mnist", "shapes")),
    "bases": ("ml.experiment.bases", ("mnist",)),
}


def run_experiment(
    name: str,
    profile: str = "quick",
    out: str | Path = "benchmarks/experiments",
    seeds: int = 3,
    data_dir: str = "../shared/data",
    datasets: tuple[str, ...] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """Run experiment ``name`` and return its result payload (also written under ``out``)."""
    import torch

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)} (or 'report')")
    prof = get_profile(profile)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    module, default = EXPERIMENTS[name]
    chosen = tuple(datasets) if datasets else default
    bad = [d for d in chosen if d not in DATASETS]
    if bad:
        raise ValueError(f"unknown dataset(s) {bad}; choose from {DATASETS}")
    torch.set_num_threads(1)  # a shared CPU: one thread per run (see EXPERIMENTS.md)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run: Callable[..., dict[str, Any]] = importlib.import_module(module).run
    return run(prof, out, seeds=seeds, datasets=chosen, data_dir=str(data_dir), **kw)


__all__ = ["EXPERIMENTS", "run_experiment"]
