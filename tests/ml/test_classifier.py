"""The hidden-layer classifier (paper 2.1): accuracy, its z, unlabelled items, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import ml.classifier
from ml.classifier import HiddenLayerClassifier
from ml.control import Stopped
from tests.quality import SEED, THREADS, at_least

# 5 epochs of ~20 batches: held-out accuracy 0.928 / 0.952 / 0.956 (min / median / max over seeds 0-4 ×
# threads 1, 2); asserted ≥ 0.85, chance 0.1.
FAST = {"epochs": 5, "batch_size": 64, "lr": 3e-3}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models on a shared CI box: one thread avoids OpenMP oversubscription (4× slower when loaded)."""
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    return tuple(train_test_split(X, d.target, test_size=0.3, random_state=SEED, stratify=d.target))


@pytest.fixture(scope="module")
def fitted(split) -> HiddenLayerClassifier:
    Xtr, _, ytr, _ = split
    return HiddenLayerClassifier(10, (1, 8, 8), seed=SEED, **FAST).fit(Xtr, ytr)


@pytest.mark.quality
def test_held_out_accuracy_above_nine_tenths(split, fitted: HiddenLayerClassifier) -> None:
    _, Xte, _, yte = split
    at_least("classifier held-out accuracy", fitted.score(Xte, yte), 0.85)  # chance 0.1
    assert fitted.loss_history_[-1] < 0.5 * fitted.loss_history_[0]
    assert fitted.predict(Xte).dtype == np.int64
    np.testing.assert_array_equal(fitted.classes_, np.arange(10))


def test_transform_is_the_layer_the_output_reads(split, fitted: HiddenLayerClassifier) -> None:
    _, Xte, _, _ = split
    Z = fitted.transform(Xte)
    assert Z.shape == (len(Xte), 32) and Z.dtype == np.float32
    assert (Z < 0).mean() > 0.1  # a pre-activation, not a ReLU output: negative values survive
    out = fitted.model_.out
    with torch.no_grad():
        logits = out(torch.nn.functional.elu(torch.from_numpy(Z)))
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), fitted.predict_proba(Xte), atol=1e-5)
    np.testing.assert_array_equal(Z, fitted.encode(Xte))  # the same call on the same input
    np.testing.assert_allclose(fitted.predict_proba(Xte).sum(1), 1.0, atol=1e-5)


def test_unlabelled_items_are_ignored(split) -> None:
    Xtr, _, ytr, _ = split
    Xs, ys = Xtr[:400], ytr[:400].copy()
    ys[::2] = -1
    partial = HiddenLayerClassifier(10, (1, 8, 8), epochs=1).fit(Xs, ys)
    labelled_only = HiddenLayerClassifier(10, (1, 8, 8), epochs=1).fit(Xs[1::2], ys[1::2])
    assert partial.n_labelled_ == 200
    np.testing.assert_array_equal(partial.transform(Xs), labelled_only.transform(Xs))


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (np.full(10, -1), "no labelled"),
        (np.full(10, 10), r"\[0, 9\] or -1"),
        (np.full(10, 0.5), "integer"),
        (np.zeros(9, np.int64), r"shape \[10\]"),
    ],
)
def test_bad_labels_are_refused(y: np.ndarray, match: str) -> None:
    X = np.zeros((10, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=match):
        HiddenLayerClassifier(10, (1, 8, 8), epochs=0).fit(X, y)


def test_bad_parameters_and_images_are_refused() -> None:
    with pytest.raises(ValueError, match="n_classes"):
        HiddenLayerClassifier(1, (1, 8, 8))
    with pytest.raises(ValueError, match="divisible"):
        HiddenLayerClassifier(2, (1, 10, 10))
    with pytest.raises(ValueError, match="image shape"):
        HiddenLayerClassifier(2, (1, 8, 8)).fit(np.zeros((3, 1, 28, 28), np.float32), np.zeros(3, int))
    with pytest.raises(ValueError, match="not fitted"):
        HiddenLayerClassifier(2, (1, 8, 8)).transform(np.zeros((3, 1, 8, 8), np.float32))


def test_save_load_and_bytes_round_trips(tmp_path, split, fitted: HiddenLayerClassifier) -> None:
    _, Xte, _, _ = split
    fitted.save(tmp_path / "clf.pt")
    for loaded in (
        HiddenLayerClassifier.load(tmp_path / "clf.pt", device="cpu"),
        HiddenLayerClassifier.from_bytes(fitted.to_bytes(), device="cpu"),
    ):
        # Same computation, same shapes; freshly allocated weights may take another SIMD path, so a
        # float32 tolerance: a lost or mis-loaded weight moves outputs by far more than 1e-5.
        np.testing.assert_allclose(loaded.transform(Xte), fitted.transform(Xte), rtol=0, atol=1e-5)
        np.testing.assert_allclose(loaded.predict_proba(Xte), fitted.predict_proba(Xte), rtol=0, atol=1e-6)
        assert loaded.get_params() | {"device": "auto"} == fitted.get_params()
    with pytest.raises(ValueError, match="classifier checkpoint"):
        from ml.vae import VAE

        vae = VAE(image_shape=(1, 8, 8), hidden=8, channels=(4, 4), epochs=0).fit(np.zeros((2, 1, 8, 8), np.float32))
        HiddenLayerClassifier.from_bytes(vae.to_bytes())


def test_stop_and_progress(monkeypatch, split) -> None:
    Xtr, _, ytr, _ = split
    polls: list[int] = []
    with pytest.raises(Stopped):
        HiddenLayerClassifier(10, (1, 8, 8), epochs=3).fit(
            Xtr, ytr, should_stop=lambda: polls.append(1) or len(polls) == 2
        )
    assert len(polls) == 2
    monkeypatch.setattr(ml.classifier, "PROGRESS_INTERVAL_S", 0.0)
    seen: list[float] = []
    HiddenLayerClassifier(10, (1, 8, 8), epochs=2, batch_size=512).fit(
        Xtr[:1000], ytr[:1000], progress=lambda f, i: seen.append(f)
    )
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0]  # 2 batches per epoch, then the final report


def test_colour_32x32_images_build() -> None:
    X = np.random.default_rng(0).random((6, 3, 32, 32), dtype=np.float32)
    clf = HiddenLayerClassifier(3, (3, 32, 32), hidden_dim=5, epochs=1).fit(X, np.array([0, 1, 2, 0, 1, -1]))
    assert clf.transform(X).shape == (6, 5) and clf.predict(X).shape == (6,)
