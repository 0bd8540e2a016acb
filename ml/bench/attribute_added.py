"""An attribute added to a live project: the old attribute's score before and after, no relabelling.

MNIST, PCA-10 z of the 60,000 training images as the pool. Phase 1: the project has one attribute,
digit, and 1,000 images labelled with it; the lens is fitted (product defaults). Phase 2: thickness is
added and 1,000 *other* images are labelled with thickness only; the digit labels stay as they were;
the lens is fitted again (a new attribute changes the heads, so the product's retrain fits cold).
Each item's missing attribute is what eq. (8) integrates out, so the old labels keep training the
digit head and the new ones the thickness head. Scores: the one-dimension metric on 2,000 test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.bench.common import machine, table, write_results

N_EACH = 1000
N_TEST = 2000


def _data(data_dir: str | Path, seed: int) -> dict[str, Any]:
    from ml.bench.lens_train import mnist_pca
    from ml.data import stroke_thickness, thickness_levels

    train, test, pca, flat_tr, flat_te = mnist_pca(data_dir, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(flat_tr))
    a, b = np.sort(order[:N_EACH]), np.sort(order[N_EACH : 2 * N_EACH])
    te = np.sort(rng.choice(len(flat_te), N_TEST, replace=False))
    thick_b, edges = thickness_levels(stroke_thickness(train.images[b]), n_levels=5)
    thick_te, _ = thickness_levels(stroke_thickness(test.images[te]), edges=edges)
    return {
        "Z": pca.transform(flat_tr).astype(np.float32),
        "Z_test": pca.transform(flat_te[te]).astype(np.float32),
        "a": a,
        "b": b,
        "digit": train.factors["label"],
        "thick_b": thick_b,
        "test": {"digit": test.factors["label"][te], "thickness": thick_te},
    }


def _score(lens: Any, Z_lab: np.ndarray, probe: dict[str, np.ndarray], d: dict[str, Any], attrs: list[Any]) -> Any:
    from ml.metrics import interpretability_score

    test = {a.name: d["test"][a.name] for a in attrs}
    return interpretability_score(lens.transform(Z_lab), probe, lens.transform(d["Z_test"]), test, attrs)


def run(data_dir: str | Path, seeds: int = 3, out_dir: str | Path = "benchmarks/results") -> dict[str, Any]:
    from ml.attributes import Attribute
    from ml.lens import InterpretableLens

    digit = Attribute("digit", "categorical", tuple(str(i) for i in range(10)))
    thickness = Attribute("thickness", "ordinal", tuple(str(i) for i in range(1, 6)))
    runs = []
    for seed in range(seeds):
        d = _data(data_dir, seed)
        n = len(d["Z"])
        y_digit = np.full(n, -1)
        y_digit[d["a"]] = d["digit"][d["a"]]
        before = InterpretableLens([digit], seed=seed, device="cpu").fit(d["Z"], {"digit": y_digit})
        s1 = _score(before, d["Z"][d["a"]], {"digit": d["digit"][d["a"]]}, d, [digit])
        y_thick = np.full(n, -1)
        y_thick[d["b"]] = d["thick_b"]
        after = InterpretableLens([digit, thickness], seed=seed, device="cpu").fit(
            d["Z"], {"digit": y_digit, "thickness": y_thick}
        )
        # The probe of each attribute reads the items labelled with it (digit: phase 1's, thickness: phase 2's).
        both = np.concatenate([d["a"], d["b"]])
        probe = {
            "digit": np.concatenate([d["digit"][d["a"]], np.full(N_EACH, -1)]),
            "thickness": np.concatenate([np.full(N_EACH, -1), d["thick_b"]]),
        }
        s2 = _score(after, d["Z"][both], probe, d, [digit, thickness])
        row = {
            "seed": seed,
            "digit_before": round(s1["attributes"]["digit"]["score"], 2),
            "digit_after": round(s2["attributes"]["digit"]["score"], 2),
            "thickness_after": round(s2["attributes"]["thickness"]["score"], 2),
            "digit_dim_before": s1["attributes"]["digit"]["dim"],
            "digit_dim_after": s2["attributes"]["digit"]["dim"],
            "thickness_dim": s2["attributes"]["thickness"]["dim"],
            "designated_after": {k: list(map(int, v)) for k, v in after.attribute_dims_.items()},
        }
        row["digit_change"] = round(row["digit_after"] - row["digit_before"], 2)
        runs.append(row)
        print(row, flush=True)
    changes = [r["digit_change"] for r in runs]
    payload = {
        "machine": machine(),
        "labels_per_phase": N_EACH,
        "runs": runs,
        "digit_change_mean": round(float(np.mean(changes)), 2),
        "digit_change_max_abs": round(float(np.max(np.abs(changes))), 2),
        "within_2_points": bool(np.max(np.abs(changes)) <= 2.0),
    }
    path = write_results("attribute_added", payload, out_dir)
    print(table(runs, ["seed", "digit_before", "digit_after", "digit_change", "thickness_after", "thickness_dim"]))
    print(f"digit change: mean {payload['digit_change_mean']}, max |·| {payload['digit_change_max_abs']}")
    print(f"wrote {path}")
    return payload
