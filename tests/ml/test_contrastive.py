"""The contrastive base (ml.contrastive): what its z holds, its decoder, augmentations, loss, persistence, stop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from ml.contrastive import ContrastiveBase, ContrastiveConfig, augment, nt_xent
from ml.control import Stopped
from ml.steps import encoder_of, fit_representation, load_base_model
from tests.quality import SEED, THREADS, at_least, at_most

# 300 steps of 128 pairs and 150 decoder steps (10 passes) on the 1,797 digits: 6–7 s on one thread.
FAST = {"latent_dim": 8, "steps": 300, "batch_size": 128, "decoder_steps": 150}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images / 16.0).astype(np.float32)[:, None], d.target


@pytest.fixture(scope="module")
def fitted(digits) -> ContrastiveBase:
    return ContrastiveBase(image_shape=(1, 8, 8), seed=SEED, device="cpu", **FAST).fit(digits[0])


def _probe(Z: np.ndarray, y: np.ndarray) -> float:
    Z = (Z - Z.mean(0)) / (Z.std(0) + 1e-8)
    return float(cross_val_score(LogisticRegression(max_iter=2000), Z, y, cv=3).mean())


@pytest.mark.quality
def test_z_holds_the_digit_far_better_than_an_untrained_encoder(digits, fitted) -> None:
    X, y = digits
    # 3-fold logistic regression on z: 0.905 / 0.910 / 0.912 (min / median / max over seeds 0-2 × threads
    # 1, 2); an encoder after 1 step (its random initialisation): 0.65 / 0.73 / 0.76. Chance 0.1.
    at_least("contrastive z: digit probe accuracy", _probe(fitted.encode(X), y), 0.86)
    losses = fitted.loss_history_
    assert len(losses) == FAST["steps"] and np.mean(losses[-30:]) < np.mean(losses[:30]) - 0.5


@pytest.mark.quality
def test_the_decoder_renders_an_image_from_its_code(digits, fitted) -> None:
    X, _ = digits
    R = fitted.decode(fitted.encode(X))
    assert R.shape == X.shape and R.min() >= 0 and R.max() <= 1
    # Squared error of decode(encode(x)) against the mean image's: 0.41 / 0.41 / 0.43 (seeds 0-2 × threads
    # 1, 2); a decoder that learnt only the mean image gives 1.0.
    ratio = float(((R - X) ** 2).mean() / ((X.mean(0) - X) ** 2).mean())
    at_most("contrastive decoder: error / mean image's", ratio, 0.6)
    assert fitted.decoder_history_[-1] < fitted.decoder_history_[0]


def test_augment_without_any_change_is_the_identity_and_otherwise_moves_pixels() -> None:
    x = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    still = ContrastiveConfig(image_shape=(1, 12, 12), rotation=0, scale=0, shear=0, shift=0, erase=0)
    torch.testing.assert_close(augment(x, still, g), x, atol=1e-5, rtol=0)
    moved = augment(x, ContrastiveConfig(image_shape=(1, 12, 12)), g)
    assert moved.shape == x.shape and (moved - x).abs().mean() > 0.05


def test_nt_xent_is_near_zero_for_matched_views_and_log_2b_minus_1_for_unrelated_ones() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 8, generator=g) * 10
    assert float(nt_xent(a, a, 0.05)) < 0.05
    same = torch.ones(32, 8)  # every row alike: each pick is a uniform guess among 2B − 1
    assert float(nt_xent(same, same, 0.2)) == pytest.approx(math.log(63), abs=1e-4)


def test_a_checkpoint_round_trip_encodes_and_decodes_alike(digits, fitted) -> None:
    X, _ = digits
    back = ContrastiveBase.from_bytes(fitted.to_bytes(), device="cpu")
    np.testing.assert_allclose(back.encode(X[:50]), fitted.encode(X[:50]), atol=1e-5)
    Z = fitted.encode(X[:5])
    np.testing.assert_allclose(back.decode(Z), fitted.decode(Z), atol=1e-5)
    assert back.get_params() == {**fitted.get_params(), "image_shape": (1, 8, 8)}
    with pytest.raises(ValueError, match="not a contrastive base checkpoint"):
        from ml.vae import VAE

        ContrastiveBase.from_bytes(VAE(image_shape=(1, 8, 8), hidden=8, channels=(4,), epochs=0).fit(X[:4]).to_bytes())


def test_stop_raises_and_leaves_the_estimator_unfitted(digits) -> None:
    base = ContrastiveBase(image_shape=(1, 8, 8), device="cpu", steps=50, batch_size=16)
    calls = iter(range(100))
    with pytest.raises(Stopped):
        base.fit(digits[0][:64], should_stop=lambda: next(calls) >= 3)
    with pytest.raises(ValueError, match="not fitted"):
        base.encode(digits[0][:2])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": 0}, "temperature must lie in"),
        ({"erase": 1.5}, "erase is a probability"),
        ({"rotation": -1}, "rotation must be a finite number ≥ 0"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"channels": (8, 8, 8, 8)}, "divisible by 16"),
        ({"colour": 1}, "unknown contrastive setting(s) ['colour']"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(digits, params, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ContrastiveBase(image_shape=None, device="cpu", steps=1, **params).fit(digits[0][:8])


def test_the_product_step_fits_it_and_loads_it_back_as_an_image_encoder(digits) -> None:
    X = digits[0][:64]
    res = fit_representation("contrastive", X, {"steps": 3, "batch_size": 16, "decoder_steps": 2}, device="cpu")
    assert res.Z.shape == (64, 16) and res.test_ll is None and res.info["dim"] == 16
    model = load_base_model("contrastive", res.model_bytes, device="cpu")
    encode, shape = encoder_of("contrastive", model)
    assert shape == (1, 8, 8)
    np.testing.assert_allclose(encode(X), res.Z, atol=1e-5)
    with pytest.raises(ValueError, match=r"representation \(contrastive\): unknown setting\(s\) \['epochs'\]"):
        fit_representation("contrastive", X, {"epochs": 3}, device="cpu")
    with pytest.raises(ValueError, match="representation \\(contrastive\\): steps must be"):
        fit_representation("contrastive", X, {"steps": 0}, device="cpu")
