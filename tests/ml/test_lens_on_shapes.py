"""The lens on a VAE's z of dSprites-like sprites: each attribute readable from one dimension.

Sprites are centred (``position_range=0``): with free positions a 10-d VAE trained for seconds on
a CPU spends its code on x and y and keeps too little of the shape for any lens to find (k-NN on
its z reaches about 65% shape accuracy; centred, about 95%). An invertible lens adds no information.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.attributes import Attribute
from ml.data import make_shapes
from ml.lens import InterpretableLens
from ml.metrics import interpretability_score
from ml.vae import VAE
from tests.quality import SEED, THREADS, at_least, record

SHAPE = Attribute("shape", "categorical", ("square", "ellipse", "heart"))
SCALE = Attribute("scale", "ordinal", tuple(str(i) for i in range(6)))


@pytest.mark.slow
@pytest.mark.quality
def test_lens_puts_each_attribute_on_its_own_dimension_and_beats_raw_vae_z_on_shape_from_5_percent_labels() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        ds = make_shapes(2000, seed=SEED, size=32, position_range=0.0)
        vae = VAE(
            image_shape=(1, 32, 32),
            latent_dim=10,
            channels=(32, 64),
            hidden=256,
            batch_size=64,
            lr=2e-3,
            epochs=20,
            seed=SEED,
            device="cpu",
        ).fit(ds.images)
        z = vae.encode(ds.images)
        n = len(z)
        perm = np.random.default_rng(SEED).permutation(n)
        lab, rest = perm[: n // 20], perm[n // 20 :]  # 5% labelled
        m_train, m_test = rest[: len(rest) // 2], rest[len(rest) // 2 :]  # the metric never sees `lab`
        truth = {"shape": ds.factors["shape"], "scale": ds.factors["scale"]}
        labels = {k: np.where(np.isin(np.arange(n), lab), v, -1) for k, v in truth.items()}
        lens = InterpretableLens(
            [SHAPE, SCALE], n_flows=32, hidden=128, pseudo_label_threshold=0.9, device="cpu", seed=SEED
        ).fit(z, labels)
        z_star = lens.transform(z)

        def metric(r: np.ndarray) -> dict:
            return interpretability_score(
                r[m_train],
                {k: v[m_train] for k, v in truth.items()},
                r[m_test],
                {k: v[m_test] for k, v in truth.items()},
                [SHAPE, SCALE],
            )

        raw, lensed = metric(z), metric(z_star)
        report = {k: (raw["attributes"][k]["score"], lensed["attributes"][k]["score"]) for k in truth}
        # Each attribute is read best from the lens's own dimension for it (every seed 0-4, threads
        # 1 and 2); an untrained lens leaves the metric's choice to chance (1 in 10 per attribute).
        for name in truth:
            assert lensed["attributes"][name]["dim"] == lens.attribute_dims_[name][0], (name, lensed["attributes"])
        # Shape: gain over raw z measured 21.6 / 34.8 / 50.0 (seeds 0-4 × threads 1, 2); an untrained lens gains about
        # 0.
        gain = lensed["attributes"]["shape"]["score"] - raw["attributes"]["shape"]["score"]
        at_least("shapes lens shape score gain over raw z", gain, 10, report)
        # Shape accuracy from the one designated dimension, measured 0.72 / 0.89 / 0.95; chance is 1/3,
        # raw z's best single dimension 0.23 / 0.42 / 0.50.
        record("raw z shape accuracy (one best dimension)", raw["attributes"]["shape"]["accuracy"], 0.0, "info")
        at_least(
            "shapes lens shape accuracy", lensed["attributes"]["shape"]["accuracy"], 0.6, lensed["attributes"]["shape"]
        )
        # Scale is not asserted against raw z: measured over seeds 0-4 (threads 1) the gain was
        # +52, +34, +15, +57 and −8.6 (threads 2: as low as −18.9) — on seed 4 the lens reads scale worse than raw z
        # does, so a
        # bound here would only hold for lucky seeds. Recorded for the spread table.
        record(
            "shapes lens scale score gain over raw z",
            lensed["attributes"]["scale"]["score"] - raw["attributes"]["scale"]["score"],
            0.0,
            "info",
        )
        assert np.abs(lens.inverse_transform(z_star) - z).max() < 1e-4
    finally:
        torch.set_num_threads(threads)
