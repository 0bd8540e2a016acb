"""The base representation z from a discriminative model (paper section 2.1 and 6.1.3).

A small CNN is trained on one categorical attribute; the hidden layer just before its output
layer is z. The lens only needs z to be a smooth, informative function of the image, so the
network's hidden layer is

    h  →  a = W h + b   (the pre-activation, ``hidden_dim`` wide)  →  ELU(a)  →  logits = V ELU(a) + c

and ``transform`` returns **a, the pre-activation**. ELU is strictly increasing, so a ↔ ELU(a) is
one-to-one: a carries exactly what the output layer sees, without ReLU's dead zeros or tanh's
saturation, and is unbounded like the Gaussian p(z|z*) the lens fits to it.

Architecture (Table 1's conv stem at half width, since a classifier needs less than a decoder):
Conv(32, 4×4, s2) ReLU → Conv(64, 4×4, s2) ReLU → FC 256 ReLU → FC ``hidden_dim`` (= z) → ELU → FC n_classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.control import ProgressFn, StopFn, Throttle, check_stop
from ml.device import resolve_device, seeded
from ml.persistence import Checkpointed
from ml.vae import check_images, check_positive_int, make_adam

__all__ = ["HiddenLayerClassifier", "HiddenLayerNet"]

CONV_CHANNELS = (32, 64)
FC_WIDTH = 256
PROGRESS_INTERVAL_S = 1.0  # progress callbacks at most this often (tests set it to 0)
CHECKPOINT_KIND = "lenslab.classifier"
UNLABELLED = -1


class HiddenLayerNet(nn.Module):
    """The CNN: ``hidden(x)`` is z (the pre-activation a), ``forward(x)`` the class logits."""

    def __init__(self, n_classes: int, image_shape: tuple[int, int, int], hidden_dim: int) -> None:
        super().__init__()
        C, H, W = image_shape
        n = len(CONV_CHANNELS)
        feat = CONV_CHANNELS[-1] * (H >> n) * (W >> n)
        self.features = nn.Sequential(
            nn.Conv2d(C, CONV_CHANNELS[0], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(CONV_CHANNELS[0], CONV_CHANNELS[1], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(feat, FC_WIDTH),
            nn.ReLU(),
            nn.Linear(FC_WIDTH, hidden_dim),
        )
        self.out = nn.Linear(hidden_dim, n_classes)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """z = the pre-activation of the ELU hidden layer, (B, hidden_dim)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.elu(self.hidden(x)))  # (B, n_classes)


def _check_labels(y: Any, n_items: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_items:
        raise ValueError(f"y must have shape [{n_items}] (one label per image), got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all():
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y must hold integer class indices (-1 = unlabelled), got dtype {y.dtype}")
    bad = (y < UNLABELLED) | (y >= n_classes)
    if bad.any():
        raise ValueError(
            f"y values must be in [0, {n_classes - 1}] or -1 (unlabelled), got {int(y[bad][0])} at index "
            f"{int(np.argmax(bad))}"
        )
    return y.astype(np.int64)


class HiddenLayerClassifier(Checkpointed):
    """A CNN classifier whose hidden layer is a base representation z (scikit-learn style).

    ``fit(X, y)`` with y class indices (-1 = unlabelled, ignored); ``transform(X)`` returns z
    [N, hidden_dim] (the ELU layer's pre-activation, see the module docstring).
    """

    def __init__(
        self,
        n_classes: int,
        image_shape: tuple[int, int, int],
        hidden_dim: int = 32,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 128,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.n_classes = n_classes
        self.image_shape = image_shape
        self.hidden_dim = hidden_dim
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self._validate_params()

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__``."""
        names = ("n_classes", "image_shape", "hidden_dim", "epochs", "lr", "batch_size", "seed", "device")
        return {k: getattr(self, k) for k in names}

    def __repr__(self) -> str:
        return "HiddenLayerClassifier(" + ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()) + ")"

    def _validate_params(self) -> None:
        self.n_classes = check_positive_int("n_classes", self.n_classes, minimum=2)
        shape = tuple(self.image_shape) if isinstance(self.image_shape, list | tuple) else ()
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
        self.image_shape = tuple(check_positive_int("image_shape", v) for v in shape)  # type: ignore[assignment]
        factor = 2 ** len(CONV_CHANNELS)
        if self.image_shape[1] % factor or self.image_shape[2] % factor:
            raise ValueError(f"image_shape {self.image_shape}: H and W must be divisible by {factor}")
        self.hidden_dim = check_positive_int("hidden_dim", self.hidden_dim)
        self.epochs = check_positive_int("epochs", self.epochs, minimum=0)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        resolve_device(self.device)

    def _check_fitted(self) -> HiddenLayerNet:
        model = getattr(self, "model_", None)
        if model is None:
            raise ValueError("this classifier is not fitted yet: call fit(X, y) or load a checkpoint first")
        return model

    # -- training --------------------------------------------------------------------------

    def fit(
        self, X: Any, y: Any, progress: ProgressFn | None = None, should_stop: StopFn | None = None
    ) -> HiddenLayerClassifier:
        """Train from scratch (seeded) by cross-entropy on the labelled images (y >= 0).

        ``progress(fraction, {"epoch", "loss"})`` at most every PROGRESS_INTERVAL_S seconds and at the end;
        ``should_stop()`` polled before every batch raises ``Stopped`` (this estimator keeps its old state).
        """
        self._validate_params()
        X = check_images(X, self.image_shape)
        y = _check_labels(y, len(X), self.n_classes)
        keep = y != UNLABELLED
        if not keep.any():
            raise ValueError("y has no labelled items (all are -1)")
        X, y = X[keep], y[keep]
        dev = resolve_device(self.device)

        with seeded(int(self.seed)):
            model = HiddenLayerNet(self.n_classes, self.image_shape, self.hidden_dim)
        model.to(dev)
        g_shuffle = torch.Generator().manual_seed(int(self.seed))
        opt = make_adam(model, self.lr, dev)

        data, labels = torch.from_numpy(X), torch.from_numpy(y)
        N, bs = len(data), self.batch_size
        n_batches = math.ceil(N / bs)
        total = max(self.epochs * n_batches, 1)
        throttle = Throttle(progress, PROGRESS_INTERVAL_S)
        history: list[float] = []
        step = 0
        model.train()
        for epoch in range(self.epochs):
            perm = torch.randperm(N, generator=g_shuffle)
            loss_sum, seen = torch.zeros((), device=dev), 0
            for b in range(n_batches):
                check_stop(should_stop)
                idx = perm[b * bs : (b + 1) * bs]
                xb, yb = data[idx].to(dev), labels[idx].to(dev)  # (B, C, H, W), (B,)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(xb)
                seen += len(xb)
                step += 1
                if throttle.due():
                    throttle(step / total, {"epoch": epoch + 1, "loss": loss_sum.item() / seen})
            history.append(loss_sum.item() / seen)
        throttle(1.0, {"epoch": self.epochs, "loss": history[-1] if history else None}, final=True)

        model.eval()
        self.model_, self.device_ = model, dev
        self.classes_ = np.arange(self.n_classes)
        self.loss_history_ = history
        self.n_labelled_ = int(N)
        return self

    # -- inference -------------------------------------------------------------------------

    @torch.no_grad()
    def _apply(self, X: Any, fn: str, batch_size: int) -> np.ndarray:
        model = self._check_fitted()
        X = check_images(X, self.image_shape)
        bs = check_positive_int("batch_size", batch_size)
        model.eval()
        width = self.hidden_dim if fn == "hidden" else self.n_classes
        outs = []
        for i in range(0, len(X), bs):
            xb = torch.from_numpy(X[i : i + bs]).to(self.device_)
            out = model.hidden(xb) if fn == "hidden" else torch.softmax(model(xb), dim=1)
            outs.append(out.float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, width), np.float32)

    def transform(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """z for images X: the hidden layer's pre-activation, float32 [N, hidden_dim]."""
        return self._apply(X, "hidden", batch_size)

    encode = transform  # the same name as VAE.encode, so either base model plugs into the lens

    def predict_proba(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities, float32 [N, n_classes]."""
        return self._apply(X, "proba", batch_size)

    def predict(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """Most probable class per image, int64 [N]."""
        return self.predict_proba(X, batch_size).argmax(axis=1).astype(np.int64)

    def score(self, X: Any, y: Any) -> float:
        """Accuracy on the labelled items of (X, y) (y = -1 ignored)."""
        X = check_images(X, self.image_shape)
        y = _check_labels(y, len(X), self.n_classes)
        keep = y != UNLABELLED
        if not keep.any():
            raise ValueError("y has no labelled items (all are -1)")
        return float((self.predict(X[keep]) == y[keep]).mean())

    # -- persistence -----------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        model = self._check_fitted()
        config = self.get_params()
        config["image_shape"] = list(config["image_shape"])
        return {
            "kind": CHECKPOINT_KIND,
            "version": 1,
            "config": config,
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "fitted": {"loss_history": [float(v) for v in self.loss_history_], "n_labelled": self.n_labelled_},
        }

    @classmethod
    def _restore(cls, ckpt: dict[str, Any], device: str) -> HiddenLayerClassifier:
        dev = resolve_device(device)
        if ckpt.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a classifier checkpoint (kind={ckpt.get('kind')!r})")
        params = dict(ckpt["config"])
        params["image_shape"] = tuple(params["image_shape"])
        params["device"] = device
        self = cls(**params)
        model = HiddenLayerNet(self.n_classes, self.image_shape, self.hidden_dim)
        model.load_state_dict(ckpt["state"])
        self.model_, self.device_ = model.to(dev).eval(), dev
        self.classes_ = np.arange(self.n_classes)
        fitted = ckpt.get("fitted", {})
        self.loss_history_ = list(fitted.get("loss_history", []))
        self.n_labelled_ = int(fitted.get("n_labelled", 0))
        return self
