"""Every estimator saves and loads through the one interface of ``ml.persistence``."""

from __future__ import annotations

import numpy as np
import pytest

from ml.classifier import HiddenLayerClassifier
from ml.jlvm import JLVM, BetaVAE
from ml.lens import InterpretableLens
from ml.persistence import Checkpointed
from ml.vae import VAE

ESTIMATORS = (VAE, HiddenLayerClassifier, JLVM, BetaVAE, InterpretableLens)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_save_load_to_bytes_from_bytes_are_the_shared_ones(cls) -> None:
    assert issubclass(cls, Checkpointed)
    for name in ("save", "load", "to_bytes", "from_bytes"):
        assert getattr(cls, name).__qualname__.startswith("Checkpointed."), f"{cls.__name__}.{name} is its own"


def test_a_checkpoint_of_one_kind_is_refused_by_another(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((32, 1, 8, 8)).astype(np.float32)
    vae = VAE(image_shape=(1, 8, 8), latent_dim=2, hidden=16, channels=(4, 8), epochs=1, device="cpu").fit(X)
    vae.save(tmp_path / "vae.pt")
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        HiddenLayerClassifier.load(tmp_path / "vae.pt", device="cpu")
    with pytest.raises(ValueError, match="from_bytes needs bytes"):
        VAE.from_bytes(str(tmp_path / "vae.pt"))  # type: ignore[arg-type]
    assert VAE.load(vae.to_bytes(), device="cpu").latent_dim == 2
