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
def test_lens_beats_raw_vae_z_by_15_points_per_attribute_from_5_percent_labels() -> None:
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
        # Gains over raw z, seeds 0-4 × threads 1, 2: GAIN_SHAPES. An untrained lens gains about 0.
        for name in truth:
            gain = lensed["attributes"][name]["score"] - raw["attributes"][name]["score"]
            at_least(f"shapes lens {name} score gain over raw z", gain, 15, report)
        # Shape accuracy from the one designated dimension, measured ACC_SHAPES; chance is 1/3 and
        # raw z's best single dimension RAW_SHAPES.
        record("raw z shape accuracy (one best dimension)", raw["attributes"]["shape"]["accuracy"], 0.0, "info")
        at_least("shapes lens shape accuracy", lensed["attributes"]["shape"]["accuracy"], 0.9,
                 lensed["attributes"]["shape"])
        assert np.abs(lens.inverse_transform(z_star) - z).max() < 1e-4
    finally:
        torch.set_num_threads(threads)
