"""The base representation z: the paper's convolutional VAE (appendix 12, Table 1), sklearn-style.

Architecture (Table 1, MNIST row), adapted to any H×W divisible by 2**len(channels):

    encoder  Conv(64, 4×4, stride 2) ReLU → Conv(128, 4×4, stride 2) ReLU → FC 1024 ReLU → FC (μ, log σ²)
    decoder  FC 1024 ReLU → FC ReLU → Deconv(64, 4×4, stride 2) ReLU → Deconv(C, 4×4, stride 2)

Every conv uses padding 1, so each one halves the image exactly: 8×8 → 4 → 2, 28 → 14 → 7,
32 → 16 → 8, 64 → 32 → 16 (``channels=(64, 128, 256)`` adds the third conv of the SVHN row, 64 → 8).

Likelihoods p(x|z):

- ``"bernoulli"``: the decoder outputs logits; log p(x|z) = Σ x·l − softplus(l). On grey values
  x ∈ [0, 1] this is the negative binary cross-entropy against the grey values (the usual
  convention; it is *not* a normalised density on [0, 1] — no continuous-Bernoulli correction).
  The paper's MNIST numbers are on binarised data: see ``test_log_likelihood(binarize=True)``.
- ``"gaussian"``: the decoder outputs the mean; σ is per pixel, either learnt
  (``gaussian_log_sigma=None``, a free parameter per (c, h, w), clamped to
  [log 0.01, log 1] so pixels that never change cannot drive the density to infinity) or fixed
  (``gaussian_log_sigma=s`` → σ = exp(s) for every pixel). Log-likelihoods are then densities on
  ℝ^{C×H×W} and not comparable with Bernoulli numbers.

Loss = negative ELBO, summed over pixels and latent dimensions, averaged over the batch (nats/image).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.control import ProgressFn, StopFn, Stopped, Throttle, check_stop
from ml.device import resolve_device, seeded
from ml.persistence import Checkpointed

__all__ = ["LIKELIHOODS", "VAE", "ConvVAE", "Stopped", "VAEConfig", "check_images", "check_latents"]

LIKELIHOODS = ("bernoulli", "gaussian")
# Bounds on a learnt per-pixel log σ (see module docstring).
GAUSSIAN_LOG_SIGMA_RANGE = (math.log(0.01), 0.0)
GAUSSIAN_LOG_SIGMA_INIT = math.log(0.1)
PROGRESS_INTERVAL_S = 1.0  # progress callbacks at most this often (tests set it to 0)
CHECKPOINT_KIND = "lenslab.vae"
IWAE_CHUNK_PIXELS = 2**21  # default IWAE chunk: (image, sample) pairs × pixels decoded at once
LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- validation


def check_images(X: Any, image_shape: tuple[int, ...] | None = None, name: str = "X") -> np.ndarray:
    """Validate images [N, C, H, W] with float values in [0, 1]; return them as contiguous float32."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{name} must hold floats in [0, 1], got dtype {X.dtype} (divide 8-bit images by 255)")
    if X.ndim != 4:
        raise ValueError(f"{name} must have shape [N, C, H, W], got shape {X.shape}")
    if image_shape is not None and tuple(X.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{name} has image shape {tuple(X.shape[1:])}, expected {tuple(image_shape)}")
    if X.size:
        finite = np.isfinite(X)
        if not finite.all():
            bad = int(np.argwhere(~finite.reshape(len(X), -1).all(axis=1))[0, 0])
            raise ValueError(f"{name} contains NaN or infinite values (first in item {bad})")
        lo, hi = float(X.min()), float(X.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} values must lie in [0, 1], got min {lo:g} and max {hi:g}")
    return np.ascontiguousarray(X, dtype=np.float32)


def check_latents(Z: Any, latent_dim: int, name: str = "Z") -> np.ndarray:
    """Validate latent codes [N, d] (finite floats); return them as contiguous float32."""
    if isinstance(Z, torch.Tensor):
        Z = Z.detach().cpu().numpy()
    Z = np.asarray(Z)
    if not (np.issubdtype(Z.dtype, np.floating) or np.issubdtype(Z.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers, got dtype {Z.dtype}")
    if Z.ndim != 2 or Z.shape[1] != latent_dim:
        raise ValueError(f"{name} must have shape [N, {latent_dim}], got shape {Z.shape}")
    if Z.size and not np.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return np.ascontiguousarray(Z, dtype=np.float32)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_adam(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam (appendix 12: the paper's optimiser), fused where PyTorch has a fused kernel (≈25% faster steps)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)


# ----------------------------------------------------------------------------- config and module


@dataclass
class VAEConfig:
    """Hyper-parameters of the conv VAE (defaults: Table 1's MNIST row, 10-d z as in the paper's runs)."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 10
    likelihood: str = "bernoulli"
    hidden: int = 1024
    channels: tuple[int, ...] = (64, 128)
    gaussian_log_sigma: float | None = None  # None: learnt per-pixel log σ; a number: fixed log σ
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 30
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape) if isinstance(self.image_shape, list | tuple) else ()
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
        self.image_shape = tuple(check_positive_int("image_shape", v) for v in shape)  # type: ignore[assignment]
        if not isinstance(self.channels, list | tuple) or not self.channels:
            raise ValueError(f"channels must be a non-empty tuple of conv widths, got {self.channels!r}")
        self.channels = tuple(check_positive_int("channels", c) for c in self.channels)
        _, H, W = self.image_shape
        factor = 2 ** len(self.channels)
        if H % factor or W % factor:
            raise ValueError(
                f"image_shape {self.image_shape}: H and W must be divisible by {factor} "
                f"(each of the {len(self.channels)} stride-2 convs halves them); "
                f"use fewer channels or resize the images"
            )
        self.latent_dim = check_positive_int("latent_dim", self.latent_dim)
        self.hidden = check_positive_int("hidden", self.hidden)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.epochs = check_positive_int("epochs", self.epochs, minimum=0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.gaussian_log_sigma is not None:
            if not (isinstance(self.gaussian_log_sigma, int | float) and math.isfinite(self.gaussian_log_sigma)):
                raise ValueError(
                    f"gaussian_log_sigma must be None (learnt) or a finite number, got {self.gaussian_log_sigma!r}"
                )
            self.gaussian_log_sigma = float(self.gaussian_log_sigma)
        resolve_device(self.device)  # fail at construction, naming the setting


def conv_feature_shape(image_shape: tuple[int, int, int], channels: tuple[int, ...]) -> tuple[int, int, int]:
    """(C', H/2^n, W/2^n): what the n stride-2 convs of ``conv_encoder`` leave of an image."""
    _, H, W = image_shape
    n = len(channels)
    return (channels[-1], H >> n, W >> n)


def conv_encoder(image_shape: tuple[int, int, int], channels: tuple[int, ...], hidden: int, out: int) -> nn.Sequential:
    """Table 1's encoder: stride-2 4×4 convs (each halves H and W) with ReLU → FC ``hidden`` ReLU → FC ``out``."""
    n_feat = math.prod(conv_feature_shape(image_shape, channels))
    convs: list[nn.Module] = []
    c_in = image_shape[0]
    for c_out in channels:
        convs += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        c_in = c_out
    return nn.Sequential(*convs, nn.Flatten(), nn.Linear(n_feat, hidden), nn.ReLU(), nn.Linear(hidden, out))


def conv_decoder(
    image_shape: tuple[int, int, int], channels: tuple[int, ...], hidden: int, latent_dim: int
) -> nn.Sequential:
    """Table 1's decoder, the mirror of ``conv_encoder``: FC ``hidden`` ReLU → FC ReLU → stride-2 deconvs.

    The output has no activation: Bernoulli logits or Gaussian means, (B, C, H, W).
    """
    C = image_shape[0]
    feat_shape = conv_feature_shape(image_shape, channels)
    deconvs: list[nn.Module] = []
    for c_in, c_out in zip(channels[::-1], [*channels[::-1][1:], C], strict=True):
        deconvs += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
    deconvs.pop()  # no activation on the output
    return nn.Sequential(
        nn.Linear(latent_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, math.prod(feat_shape)),
        nn.ReLU(),
        nn.Unflatten(1, feat_shape),
        *deconvs,
    )


class ConvVAE(nn.Module):
    """The conv VAE of Table 1: ``forward(x) -> (recon_logits, mu, logvar)``, ``loss`` = negative ELBO."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.feat_shape = conv_feature_shape(config.image_shape, config.channels)  # (C', H/2^n, W/2^n)
        self.encoder = conv_encoder(config.image_shape, config.channels, config.hidden, 2 * config.latent_dim)
        self.decoder = conv_decoder(config.image_shape, config.channels, config.hidden, config.latent_dim)

        if config.likelihood == "gaussian":
            if config.gaussian_log_sigma is None:
                self.log_sigma_raw = nn.Parameter(torch.full(config.image_shape, GAUSSIAN_LOG_SIGMA_INIT))
            else:
                self.register_buffer("log_sigma_raw", torch.full(config.image_shape, config.gaussian_log_sigma))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x) = N(mu, exp(logvar)) for images x (B, C, H, W)."""
        h = self.encoder(x)  # (B, 2d)
        mu, logvar = h.chunk(2, dim=1)  # (B, d), (B, d)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output for z (B, d): Bernoulli logits, or Gaussian means (unclipped), (B, C, H, W)."""
        return self.decoder(z)

    def log_sigma(self) -> torch.Tensor:
        """Per-pixel log σ of the Gaussian likelihood (C, H, W)."""
        if self.config.gaussian_log_sigma is not None:
            return self.log_sigma_raw
        return self.log_sigma_raw.clamp(*GAUSSIAN_LOG_SIGMA_RANGE)

    def log_px(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels; ``out`` (..., C, H, W) broadcasts against x → shape (...)."""
        if self.config.likelihood == "bernoulli":
            lp = x * out - F.softplus(out)  # = −BCE(logits=out, target=x), stable form
        else:
            ls = self.log_sigma()
            lp = -0.5 * ((x - out) * torch.exp(-ls)) ** 2 - ls - 0.5 * LOG_2PI
        return lp.flatten(-3).sum(-1)

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised z = mu + σ·ε (Kingma & Welling 2014)."""
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)  # (B, d)
        z = self.sample(mu, logvar, generator)  # (B, d)
        return self.decode_logits(z), mu, logvar  # (B, C, H, W), (B, d), (B, d)

    def neg_elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-image negative ELBO (B,): −log p(x|z) with one z sample + analytic KL(q(z|x) ‖ N(0, I))."""
        out, mu, logvar = self(x, generator)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
        return -self.log_px(x, out) + kl

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss: negative ELBO, summed over pixels, mean over the batch (nats per image)."""
        return self.neg_elbo(x, generator).mean()


# ----------------------------------------------------------------------------- estimator


@torch.no_grad()
def _mean_neg_elbo(model: ConvVAE, X: np.ndarray, device: torch.device, seed: int, batch_size: int = 1024) -> float:
    """Mean negative ELBO of images X under ``model`` (one seeded z sample per image: repeatable)."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(seed)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(X), batch_size):
        total += model.neg_elbo(torch.from_numpy(X[i : i + batch_size]).to(device), g).sum().double()
    return float(total) / len(X)


class VAE(Checkpointed):
    """A fitted conv VAE as a base representation z (scikit-learn style: ``fit``, learnt state ``*_``).

    ``encode`` gives posterior means z, ``decode`` images in [0, 1]; ``test_log_likelihood`` is the
    IWAE bound the paper reports (appendix 12.1). ``image_shape=None`` takes the shape from ``fit``'s X.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        latent_dim: int = 10,
        likelihood: str = "bernoulli",
        hidden: int = 1024,
        channels: tuple[int, ...] = (64, 128),
        gaussian_log_sigma: float | None = None,
        lr: float = 1e-3,
        batch_size: int = 128,
        epochs: int = 30,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.hidden = hidden
        self.channels = channels
        self.gaussian_log_sigma = gaussian_log_sigma
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.device = device

    # -- parameters ------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__``."""
        return {f.name: getattr(self, f.name) for f in fields(VAEConfig)}

    def _config(self, image_shape: tuple[int, ...] | None = None) -> VAEConfig:
        params = self.get_params()
        if params["image_shape"] is None:
            if image_shape is None:
                raise ValueError("image_shape is None and no images were given to infer it from")
            params["image_shape"] = image_shape
        return VAEConfig(**params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"VAE({args})"

    def _check_fitted(self) -> ConvVAE:
        model = getattr(self, "model_", None)
        if model is None:
            raise ValueError("this VAE is not fitted yet: call fit(X) or VAE.load(path) first")
        return model

    # -- training --------------------------------------------------------------------------

    def fit(
        self,
        X: Any,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        epochs: int | None = None,
        *,
        validation: Any = None,
        min_gain: float = 0.0,
        min_steps: int = 0,
    ) -> VAE:
        """Train from scratch (seeded) on images X [N, C, H, W] in [0, 1]; ``epochs`` overrides ``self.epochs``.

        ``validation``: held-out images whose mean negative ELBO is measured after every epoch
        (``val_history_``). Training stops early, after at least ``min_steps`` optimiser steps, once an
        epoch lowers it by less than the fraction ``min_gain`` (0: never stop early).

        ``progress(fraction, {"epoch", "loss"})`` is called at most every PROGRESS_INTERVAL_S seconds and
        once at the end with fraction 1.0 ("loss" = mean negative ELBO of the epoch so far, nats/image).
        ``should_stop()`` is polled before every batch; when it returns True, ``Stopped`` is raised and
        this estimator keeps the state it had before ``fit``.
        """
        if self.image_shape is None:  # infer the shape, after checking X is a batch of images at all
            X = check_images(X)
            cfg = self._config(X.shape[1:])
        else:
            cfg = self._config()
            X = check_images(X, cfg.image_shape)
        if len(X) == 0:
            raise ValueError("X holds no images")
        n_epochs = cfg.epochs if epochs is None else check_positive_int("epochs", epochs, minimum=0)
        if not (isinstance(min_gain, int | float) and math.isfinite(min_gain) and 0.0 <= min_gain < 1.0):
            raise ValueError(f"min_gain must be a number in [0, 1), got {min_gain!r}")
        min_steps = check_positive_int("min_steps", min_steps, minimum=0)
        val = None
        if validation is not None:
            val = check_images(validation, cfg.image_shape)
            if len(val) == 0:
                raise ValueError("validation holds no images")
        dev = resolve_device(cfg.device)

        # Seed the init without touching the caller's global RNG; noise and shuffles use own generators.
        with seeded(cfg.seed):
            model = ConvVAE(cfg)
        model.to(dev)
        g_shuffle = torch.Generator().manual_seed(cfg.seed)
        g_noise = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        opt = make_adam(model, cfg.lr, dev)

        data = torch.from_numpy(X)
        N, bs = len(data), cfg.batch_size
        n_batches = math.ceil(N / bs)
        total = max(n_epochs * n_batches, 1)
        throttle = Throttle(progress, PROGRESS_INTERVAL_S)
        history: list[float] = []
        val_history: list[float] = []
        step = 0
        model.train()
        for epoch in range(n_epochs):
            perm = torch.randperm(N, generator=g_shuffle)
            loss_sum = torch.zeros((), device=dev)
            seen = 0
            for b in range(n_batches):
                check_stop(should_stop)
                xb = data[perm[b * bs : (b + 1) * bs]].to(dev, non_blocking=True)  # (B, C, H, W)
                loss = model.loss(xb, g_noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(xb)
                seen += len(xb)
                step += 1
                if throttle.due():  # .item() syncs a GPU: only when a report goes out
                    throttle(step / total, {"epoch": epoch + 1, "loss": loss_sum.item() / seen})
            history.append(loss_sum.item() / seen)
            if val is not None:
                val_history.append(_mean_neg_elbo(model, val, dev, cfg.seed))
                model.train()
                if min_gain > 0 and len(val_history) >= 2 and step >= min_steps:
                    prev, cur = val_history[-2], val_history[-1]
                    if prev - cur < min_gain * abs(prev):
                        break
        throttle(1.0, {"epoch": len(history), "loss": history[-1] if history else None}, final=True)

        model.eval()
        self.config_ = cfg
        self.device_ = dev
        self.model_ = model
        self.loss_history_ = history
        self.val_history_ = val_history
        self.n_epochs_ = len(history)
        self.image_shape_ = cfg.image_shape
        return self

    # -- inference -------------------------------------------------------------------------

    def _batches(self, A: np.ndarray, batch_size: int):
        bs = check_positive_int("batch_size", batch_size)
        for i in range(0, len(A), bs):
            yield torch.from_numpy(A[i : i + bs]).to(self.device_)

    @torch.no_grad()
    def encode_stats(self, X: Any, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Posterior parameters (mu, logvar), each float32 [N, d], of q(z|x) for images X."""
        model = self._check_fitted()
        X = check_images(X, self.config_.image_shape)
        model.eval()
        mus, logvars = [], []
        for xb in self._batches(X, batch_size):
            mu, logvar = model.encode(xb)
            mus.append(mu.float().cpu().numpy())
            logvars.append(logvar.float().cpu().numpy())
        d = self.config_.latent_dim
        empty = np.zeros((0, d), np.float32)
        return (np.concatenate(mus) if mus else empty, np.concatenate(logvars) if logvars else empty)

    def encode(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """The representation z of images X: posterior means, float32 [N, d] (deterministic)."""
        return self.encode_stats(X, batch_size)[0]

    transform = encode  # scikit-learn name, so a VAE slots in wherever a transformer does

    @torch.no_grad()
    def decode(self, Z: Any, batch_size: int = 1024) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1] for codes Z [N, d]: Bernoulli probabilities, or clipped Gaussian means."""
        model = self._check_fitted()
        Z = check_latents(Z, self.config_.latent_dim)
        model.eval()
        outs = []
        for zb in self._batches(Z, batch_size):
            out = model.decode_logits(zb)
            out = torch.sigmoid(out) if self.config_.likelihood == "bernoulli" else out.clamp(0.0, 1.0)
            outs.append(out.float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, *self.config_.image_shape), np.float32)

    @torch.no_grad()
    def elbo(self, X: Any, batch_size: int = 1024, seed: int | None = None) -> float:
        """Mean ELBO of images X (nats per image; one z sample per image, seeded: repeatable)."""
        model = self._check_fitted()
        X = check_images(X, self.config_.image_shape)
        if len(X) == 0:
            raise ValueError("X holds no images")
        bs = check_positive_int("batch_size", batch_size)
        return -_mean_neg_elbo(model, X, self.device_, self.config_.seed if seed is None else seed, bs)

    def score(self, X: Any) -> float:
        """Mean ELBO per image (higher is better), the scikit-learn density-estimator convention."""
        return self.elbo(X)

    @torch.no_grad()
    def test_log_likelihood(
        self,
        X: Any,
        k: int = 100,
        batch_size: int | None = None,
        binarize: bool = False,
        seed: int | None = None,
    ) -> float:
        """Test log-likelihood (appendix 12.1): the mean importance-weighted bound, nats per image.

        log p(x) ≥ E log (1/k) Σ_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (IWAE, Burda et al. 2016);
        k = 1 is the ELBO, the bound tightens as k grows. ``batch_size`` counts decoded
        (image, sample) pairs per chunk (None: about 2M output pixels' worth, bounding memory).
        ``binarize=True`` thresholds x at 0.5 first (the paper's MNIST numbers are on binarised data);
        otherwise Bernoulli log-likelihoods are taken against the grey values (see the module docstring).
        """
        model = self._check_fitted()
        X = check_images(X, self.config_.image_shape)
        if len(X) == 0:
            raise ValueError("X holds no images")
        k = check_positive_int("k", k)
        if binarize:
            X = (X >= 0.5).astype(np.float32)
        model.eval()
        g = torch.Generator(device=self.device_).manual_seed(self.config_.seed if seed is None else seed)
        if batch_size is None:
            batch_size = max(1, IWAE_CHUNK_PIXELS // math.prod(self.config_.image_shape))
        per_chunk = max(1, check_positive_int("batch_size", batch_size) // k)  # images per chunk
        d = self.config_.latent_dim
        total = 0.0
        for xb in self._batches(X, per_chunk):  # (m, C, H, W)
            m = len(xb)
            mu, logvar = model.encode(xb)  # (m, d)
            eps = torch.randn((k, m, d), generator=g, device=xb.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps  # (k, m, d)
            out = model.decode_logits(z.reshape(k * m, d)).view(k, m, *xb.shape[1:])  # (k, m, C, H, W)
            log_px = model.log_px(xb, out)  # (k, m)
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)  # (k, m)
            log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)  # (k, m)
            log_w = log_px + log_pz - log_qz
            total += float((torch.logsumexp(log_w, dim=0) - math.log(k)).sum())
        return total / len(X)

    # -- persistence -----------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        model = self._check_fitted()
        cfg = asdict(self.config_)
        cfg["image_shape"], cfg["channels"] = list(cfg["image_shape"]), list(cfg["channels"])
        return {
            "kind": CHECKPOINT_KIND,
            "version": 1,
            "config": cfg,
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "fitted": {
                "loss_history": [float(v) for v in self.loss_history_],
                "val_history": [float(v) for v in getattr(self, "val_history_", [])],
                "n_epochs": self.n_epochs_,
            },
        }

    @classmethod
    def _restore(cls, ckpt: dict[str, Any], device: str) -> VAE:
        dev = resolve_device(device)
        if ckpt.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a VAE checkpoint (kind={ckpt.get('kind')!r})")
        params = dict(ckpt["config"])
        params["image_shape"] = tuple(params["image_shape"])
        params["channels"] = tuple(params["channels"])
        params["device"] = device
        self = cls(**params)
        cfg = self._config()
        model = ConvVAE(cfg)
        model.load_state_dict(ckpt["state"])
        model.to(dev).eval()
        fitted = ckpt.get("fitted", {})
        self.config_, self.device_, self.model_ = cfg, dev, model
        self.loss_history_ = list(fitted.get("loss_history", []))
        self.val_history_ = list(fitted.get("val_history", []))
        self.n_epochs_ = int(fitted.get("n_epochs", len(self.loss_history_)))
        self.image_shape_ = cfg.image_shape
        return self
