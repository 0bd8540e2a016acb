"""A contrastive base representation: a SimCLR encoder (Chen et al., 2020) and a decoder fitted to its codes.

Why it exists. On MNIST with 1,000 labels the paper's 10-d VAE z holds digit to 92% (an MLP on all
of z) and thickness weakly; the lens cannot read out of z what z does not hold (EXPERIMENTS.md, "The
ceiling"). An encoder trained to tell every image from every other, whatever small rotation, shear,
shift or occlusion it undergoes, makes images of one class neighbours in z: on the same 5,000
images and in about the same CPU time as the VAE, z holds digit to 95–96% and thickness better
(EXPERIMENTS.md, "A stronger base").

- **Encoder.** Table 1's conv encoder (``ml.vae.conv_encoder``) to a ``latent_dim``-d code z; a small
  projection MLP g on top carries the contrastive loss (NT-Xent at ``temperature``), and z, not g(z),
  is the representation, as SimCLR found (the head's output discards what the augmentations vary).
- **Augmentations** define what z ignores: a random affine map (rotation up to ``rotation`` degrees,
  scaling by up to ``scale``, shear up to ``shear``, translation up to ``shift`` of the half-width)
  and, with probability ``erase``, a blanked square of a quarter of the side. Do not augment what
  the experts label: an encoder trained on shifted sprites forgets where a sprite is (``shift=0``).
- **Decoder.** Table 1's decoder (``ml.vae.conv_decoder``) fitted afterwards to the frozen codes with
  a Bernoulli likelihood, so traversals of z* render as images. The encoder never sees its loss.

Training length is counted in optimiser steps, not epochs, for the encoder and the decoder alike: a
fixed number of steps costs the same on any pool. On 2 CPU cores at 28×28, the encoder's 1,500
steps of 256 image pairs take 139 s and the decoder's 500 steps of 128 images about 20 s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.control import ProgressFn, StopFn, Throttle, check_stop
from ml.device import resolve_device, seeded
from ml.persistence import Checkpointed
from ml.vae import check_images, check_latents, check_positive_int, conv_decoder, conv_encoder, make_adam

__all__ = ["ContrastiveBase", "ContrastiveConfig", "augment", "nt_xent"]

CHECKPOINT_KIND = "lenslab.contrastive"
PROGRESS_INTERVAL_S = 1.0
# Share of the progress bar the encoder's steps take; the decoder's steps take the rest.
ENCODER_SHARE = 0.85
ERASE_FRACTION = 0.25
DECODER_BATCH = 128  # side of the blanked square, as a fraction of the image side


@dataclass
class ContrastiveConfig:
    """Hyper-parameters of the contrastive base (defaults: measured on MNIST, EXPERIMENTS.md)."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 16
    hidden: int = 256
    channels: tuple[int, ...] = (32, 64)
    projection: int = 64
    temperature: float = 0.2
    rotation: float = 15.0
    scale: float = 0.1
    shear: float = 0.15
    shift: float = 0.15
    erase: float = 0.5
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    decoder_hidden: int = 1024
    decoder_steps: int = 500
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        shape = tuple(self.image_shape) if isinstance(self.image_shape, list | tuple) else ()
        if len(shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape!r}")
        self.image_shape = tuple(check_positive_int("image_shape", v) for v in shape)  # type: ignore[assignment]
        if not isinstance(self.channels, list | tuple) or not self.channels:
            raise ValueError(f"channels must be a non-empty list of conv widths, got {self.channels!r}")
        self.channels = tuple(check_positive_int("channels", c) for c in self.channels)
        factor = 2 ** len(self.channels)
        if self.image_shape[1] % factor or self.image_shape[2] % factor:
            raise ValueError(
                f"image_shape {self.image_shape}: H and W must be divisible by {factor} "
                f"(each of the {len(self.channels)} stride-2 convs halves them); use fewer channels"
            )
        for name in ("latent_dim", "hidden", "projection", "steps", "batch_size", "decoder_hidden"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        self.decoder_steps = check_positive_int("decoder_steps", self.decoder_steps, minimum=0)
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (a batch contrasts its images), got {self.batch_size}")
        bounds = {"temperature": (0.0, None), "lr": (0.0, None), "rotation": (None, 180.0), "scale": (None, 0.9)}
        for name in ("temperature", "lr", "rotation", "scale", "shear", "shift", "erase"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
            lo, hi = bounds.get(name, (None, None))
            if (lo is not None and v <= lo) or (hi is not None and v > hi):
                raise ValueError(f"{name} must lie in ({lo or 0}, {hi or '∞'}], got {v!r}")
            setattr(self, name, float(v))
        if self.erase > 1:
            raise ValueError(f"erase is a probability in [0, 1], got {self.erase!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        resolve_device(self.device)


def augment(x: torch.Tensor, cfg: ContrastiveConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image of x (B, C, H, W): an affine map, then maybe a blanked square."""
    B, _, H, W = x.shape
    dev = x.device

    def uniform(*shape: int) -> torch.Tensor:  # in [−1, 1)
        return torch.rand(*shape, generator=generator, device=dev) * 2 - 1

    angle = uniform(B) * math.radians(cfg.rotation)
    zoom = 1 + uniform(B) * cfg.scale
    shear = uniform(B) * cfg.shear
    shift = uniform(B, 2) * cfg.shift
    # affine_grid maps output to input coordinates: the inverse zoom enlarges the content by ``zoom``.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    if cfg.erase > 0:
        half_h, half_w = max(1, round(ERASE_FRACTION * H / 2)), max(1, round(ERASE_FRACTION * W / 2))
        cy = torch.randint(0, H, (B, 1, 1), generator=generator, device=dev)
        cx = torch.randint(0, W, (B, 1, 1), generator=generator, device=dev)
        rows = torch.arange(H, device=dev).view(1, H, 1)
        cols = torch.arange(W, device=dev).view(1, 1, W)
        square = ((rows - cy).abs() < half_h) & ((cols - cx).abs() < half_w)  # (B, H, W)
        hit = torch.rand(B, 1, 1, generator=generator, device=dev) < cfg.erase
        out = out * (~(square & hit)).unsqueeze(1).to(out.dtype)
    return out


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss: row i of ``a`` must pick row i of ``b`` (and vice versa) among the 2B − 1 others."""
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)  # (2B, k)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


class _Networks(nn.Module):
    def __init__(self, cfg: ContrastiveConfig) -> None:
        super().__init__()
        self.encoder = conv_encoder(cfg.image_shape, cfg.channels, cfg.hidden, cfg.latent_dim)
        self.head = nn.Sequential(
            nn.Linear(cfg.latent_dim, 2 * cfg.projection), nn.ReLU(), nn.Linear(2 * cfg.projection, cfg.projection)
        )
        self.decoder = conv_decoder(cfg.image_shape, cfg.channels, cfg.decoder_hidden, cfg.latent_dim)


class ContrastiveBase(Checkpointed):
    """A fitted contrastive encoder and its decoder as a base representation (scikit-learn style).

    ``encode`` (= ``transform``) gives z, ``decode`` images in [0, 1], like ``ml.vae.VAE``, so the
    lens, traversals and transforms use either alike. ``image_shape=None`` takes the shape from ``fit``.
    """

    def __init__(self, image_shape: tuple[int, int, int] | None = (1, 28, 28), **params: Any) -> None:
        names = [f.name for f in fields(ContrastiveConfig)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(f"unknown contrastive setting(s) {unknown}; allowed: {sorted(names)}")
        defaults = ContrastiveConfig()
        self.image_shape = image_shape
        for name in names[1:]:
            setattr(self, name, params.get(name, getattr(defaults, name)))

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__``."""
        return {f.name: getattr(self, f.name) for f in fields(ContrastiveConfig)}

    def _config(self, image_shape: tuple[int, ...] | None = None) -> ContrastiveConfig:
        params = self.get_params()
        if params["image_shape"] is None:
            if image_shape is None:
                raise ValueError("image_shape is None and no images were given to infer it from")
            params["image_shape"] = image_shape
        return ContrastiveConfig(**params)

    def __repr__(self) -> str:
        return f"ContrastiveBase({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check_fitted(self) -> _Networks:
        nets = getattr(self, "nets_", None)
        if nets is None:
            raise ValueError("this contrastive base is not fitted yet: call fit(X) or ContrastiveBase.load(path) first")
        return nets

    # -- training --------------------------------------------------------------------------

    def fit(self, X: Any, progress: ProgressFn | None = None, should_stop: StopFn | None = None) -> ContrastiveBase:
        """Train the encoder (``steps`` NT-Xent steps), then the decoder on its frozen codes; seeded.

        ``progress(fraction, {"stage", "step", "loss"})`` at most every PROGRESS_INTERVAL_S
        seconds and once at the end; ``should_stop()`` is polled before every step, and ``Stopped``
        leaves this estimator as it was before ``fit``.
        """
        X = check_images(X) if self.image_shape is None else check_images(X, tuple(self.image_shape))
        cfg = self._config(X.shape[1:])
        if len(X) < 2:
            raise ValueError(f"X holds {len(X)} image(s); a contrastive base needs at least 2")
        dev = resolve_device(cfg.device)
        with seeded(cfg.seed):
            nets = _Networks(cfg)
        nets.to(dev)
        g_cpu = torch.Generator().manual_seed(cfg.seed)
        g_dev = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        data = torch.from_numpy(X)
        throttle = Throttle(progress, PROGRESS_INTERVAL_S)
        batch = min(cfg.batch_size, len(X))

        opt = make_adam(nn.ModuleList([nets.encoder, nets.head]), cfg.lr, dev)
        losses = torch.zeros(cfg.steps, device=dev)  # kept on the device: no host sync per step
        nets.train()
        for step in range(cfg.steps):
            check_stop(should_stop)
            idx = torch.randperm(len(data), generator=g_cpu)[:batch]
            xb = data[idx].to(dev, non_blocking=True)
            a = nets.head(nets.encoder(augment(xb, cfg, g_dev)))
            b = nets.head(nets.encoder(augment(xb, cfg, g_dev)))
            loss = nt_xent(a, b, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.detach()
            if throttle.due():
                throttle(
                    ENCODER_SHARE * (step + 1) / cfg.steps, {"stage": "encoder", "step": step + 1, "loss": loss.item()}
                )
        nets.eval()
        with torch.no_grad():
            Z = torch.cat([nets.encoder(data[i : i + 1024].to(dev)) for i in range(0, len(data), 1024)])

        # The decoder learns p(x | z) on the frozen codes (Bernoulli, as the VAE's), for traversals.
        dec_opt = make_adam(nets.decoder, cfg.lr, dev)
        dec_losses = torch.zeros(cfg.decoder_steps, device=dev)
        dec_batch = min(DECODER_BATCH, len(X))
        nets.decoder.train()
        for step in range(cfg.decoder_steps):
            check_stop(should_stop)
            rows = torch.randperm(len(data), generator=g_cpu)[:dec_batch]
            xb = data[rows].to(dev, non_blocking=True)
            logits = nets.decoder(Z[rows.to(dev)])
            loss = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").flatten(1).sum(1).mean()
            dec_opt.zero_grad(set_to_none=True)
            loss.backward()
            dec_opt.step()
            dec_losses[step] = loss.detach()
            if throttle.due():
                frac = ENCODER_SHARE + (1 - ENCODER_SHARE) * (step + 1) / cfg.decoder_steps
                throttle(frac, {"stage": "decoder", "step": step + 1, "loss": loss.item()})
        dec_history = dec_losses.cpu().tolist()
        nets.eval()
        history = losses.cpu().tolist()
        throttle(1.0, {"stage": "done", "loss": history[-1] if history else None}, final=True)
        self.config_, self.device_, self.nets_ = cfg, dev, nets
        self.loss_history_ = [float(v) for v in history]
        self.decoder_history_ = [float(v) for v in dec_history]
        self.image_shape_ = cfg.image_shape
        return self

    # -- inference -------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """The representation z of images X, float32 [N, latent_dim] (deterministic: no augmentation)."""
        nets = self._check_fitted()
        X = check_images(X, self.config_.image_shape)
        bs = check_positive_int("batch_size", batch_size)
        parts = [
            nets.encoder(torch.from_numpy(X[i : i + bs]).to(self.device_)).float().cpu().numpy()
            for i in range(0, len(X), bs)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.config_.latent_dim), np.float32)

    transform = encode  # scikit-learn name

    @torch.no_grad()
    def decode(self, Z: Any, batch_size: int = 1024) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1] for codes Z [N, latent_dim]: the decoder's Bernoulli means."""
        nets = self._check_fitted()
        Z = check_latents(Z, self.config_.latent_dim)
        bs = check_positive_int("batch_size", batch_size)
        parts = [
            torch.sigmoid(nets.decoder(torch.from_numpy(Z[i : i + bs]).to(self.device_))).float().cpu().numpy()
            for i in range(0, len(Z), bs)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, *self.config_.image_shape), np.float32)

    # -- persistence -----------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        nets = self._check_fitted()
        cfg = asdict(self.config_)
        cfg["image_shape"], cfg["channels"] = list(cfg["image_shape"]), list(cfg["channels"])
        return {
            "kind": CHECKPOINT_KIND,
            "version": 1,
            "config": cfg,
            "state": {k: v.detach().cpu() for k, v in nets.state_dict().items()},
            "fitted": {"loss_history": self.loss_history_, "decoder_history": self.decoder_history_},
        }

    @classmethod
    def _restore(cls, ckpt: dict[str, Any], device: str) -> ContrastiveBase:
        if ckpt.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a contrastive base checkpoint (kind={ckpt.get('kind')!r})")
        params = dict(ckpt["config"])
        params["image_shape"] = tuple(params["image_shape"])
        params["channels"] = tuple(params["channels"])
        params["device"] = device
        self = cls(**params)
        cfg = self._config()
        nets = _Networks(cfg)
        nets.load_state_dict(ckpt["state"])
        dev = resolve_device(device)
        nets.to(dev).eval()
        fitted = ckpt.get("fitted", {})
        self.config_, self.device_, self.nets_ = cfg, dev, nets
        self.loss_history_ = [float(v) for v in fitted.get("loss_history", [])]
        self.decoder_history_ = [float(v) for v in fitted.get("decoder_history", [])]
        self.image_shape_ = cfg.image_shape
        return self
