"""The jointly learnt latent variable model (JLVM, paper section 5 and appendix 11), and a β-VAE baseline.

JLVM is the conv VAE of ``ml.vae`` whose latent z* is trained for fidelity and interpretability
together. Per image (eq. 13 of the paper, appendix eq. 13):

    L(x, s) = E_q log p(x|z*) − KL(q(z*|x) ‖ N(0, I)) − β·KL(q(z*|x) ‖ r(z*)) + λ·E_q log q(s|z*)

with q(z*|x) the VAE encoder, r(z*) a learnt diagonal Gaussian (the variational marginal of the
information-bottleneck bound, appendix eqs. 7–9) and q(s|z*) the linear heads of ``ml.heads`` on
each attribute's designated z* dimensions (eq. 5 of the appendix bounds I(z*, s) with them). The
supervised term only counts items whose label is observed; λ defaults to ``ml.heads.default_alpha``
(the same supervision weight as the lens, for the same reason: rare labels need a large weight).

The β-VAE baseline (Higgins et al. 2017) is the same network with loss
−E_q log p(x|z) + β·KL(q(z|x) ‖ N(0, I)) and no side information: ``BetaVAE``.

The generative model is the VAE's, p(z*) = N(0, I) and p(x|z*): ``test_log_likelihood`` is the
same IWAE bound as ``VAE.test_log_likelihood`` (appendix 12.1) and reuses it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.attributes import Attribute, coerce_attributes, labelled_items, validate_labels
from ml.control import ProgressFn, StopFn, Throttle, check_stop
from ml.device import resolve_device, seeded
from ml.heads import AttributeHead, ContinuousHead, default_alpha, make_head
from ml.persistence import Checkpointed
from ml.vae import VAE, ConvVAE, VAEConfig, check_images, make_adam

__all__ = ["JLVM", "BetaVAE", "JointModule"]

CHECKPOINT_KIND = "lenslab.jlvm"


def kl_diag_gaussians(mu: torch.Tensor, logvar: torch.Tensor, m: torch.Tensor, logv: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, e^logvar) ‖ N(m, e^logv)) summed over the last axis: (B, d), (d,) → (B,)."""
    return 0.5 * (logv - logvar + (logvar.exp() + (mu - m) ** 2) / logv.exp() - 1.0).sum(-1)


def head_log_lik(
    head: AttributeHead, a: Attribute, zs: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q(s|z*) per item, observed mask), for the attribute's label vector v (−1 / NaN = missing)."""
    if a.is_discrete:
        known = v >= 0
        lp = head.log_probs(zs).gather(1, v.clamp_min(0)[:, None]).squeeze(1)  # type: ignore[attr-defined]
    else:
        assert isinstance(head, ContinuousHead)
        known = ~torch.isnan(v)
        lp = head.log_prob(zs, head.scale(torch.where(known, v, torch.zeros_like(v))))
    return torch.where(known, lp, torch.zeros_like(lp)), known


class JointModule(nn.Module):
    """The JLVM networks: the conv VAE (encoder q(z*|x), decoder p(x|z*)), r(z*) and the heads q(s|z*)."""

    def __init__(self, cfg: VAEConfig, attributes: Sequence[Attribute], dims: Mapping[str, list[int]]) -> None:
        super().__init__()
        self.vae = ConvVAE(cfg)  # the building blocks of ml.vae, unchanged
        d = cfg.latent_dim
        self.r_mean = nn.Parameter(torch.zeros(d))  # r(z*) = N(r_mean, diag e^r_logvar), learnt
        self.r_logvar = nn.Parameter(torch.zeros(d))
        self.attributes = list(attributes)
        self.heads = nn.ModuleDict({a.name: make_head(a, dims[a.name]) for a in self.attributes})

    def losses(
        self, x: torch.Tensor, kl_weight: float, beta: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image unsupervised loss (B,) and the sampled z* (B, d).

        −log p(x|z*) + kl_weight·KL(q‖N(0,I)) + β·KL(q‖r): the first two lines of eq. (13) with
        kl_weight = 1 (JLVM), or the β-VAE objective with kl_weight = β and β(r) = 0.
        """
        mu, logvar = self.vae.encode(x)  # (B, d)
        zs = self.vae.sample(mu, logvar, generator)  # (B, d), reparameterised
        rec = self.vae.log_px(x, self.vae.decode_logits(zs))  # (B,)
        kl_prior = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        loss = -rec + kl_weight * kl_prior
        if beta > 0:
            r_logvar = self.r_logvar.clamp(-9.0, 5.0)
            loss = loss + beta * kl_diag_gaussians(mu, logvar, self.r_mean, r_logvar)  # eq. (13), β term
        return loss, zs

    def supervised(
        self, x: torch.Tensor, s: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Σ_j log q(s_j|z*), z* ~ q(z*|x), over observed attributes: the last line of eq. (13). (B,)"""
        mu, logvar = self.vae.encode(x)
        zs = self.vae.sample(mu, logvar, generator)
        total = torch.zeros(len(x), device=x.device)
        for a in self.attributes:
            lp, _ = head_log_lik(self.heads[a.name], a, zs, s[a.name])  # type: ignore[arg-type]
            total = total + lp
        return total


class JLVM(Checkpointed):
    """scikit-learn-style JLVM: ``fit(X, S)``, ``transform(X)`` → z* means, ``decode``, IWAE test LL.

    ``attributes`` as for ``InterpretableLens`` (empty for the β-VAE baseline); S maps attribute
    name → array of length N with −1 / NaN where an item is unlabelled. ``beta`` weighs
    KL(q‖r); ``lam`` the supervised term (None: ``default_alpha`` from the labelled fraction);
    ``kl_weight`` the KL to N(0, I) (1 for JLVM). Network hyper-parameters are ``ml.vae.VAE``'s.
    """

    def __init__(
        self,
        attributes: Sequence[Attribute | Mapping[str, Any]] = (),
        beta: float = 1.0,
        lam: float | None = None,
        kl_weight: float = 1.0,
        dims_per_attribute: int = 1,
        image_shape: tuple[int, int, int] | None = None,
        latent_dim: int = 10,
        likelihood: str = "bernoulli",
        hidden: int = 1024,
        channels: tuple[int, ...] = (64, 128),
        lr: float = 1e-3,
        batch_size: int = 128,
        labelled_batch_size: int = 64,
        epochs: int = 30,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.attributes = coerce_attributes(attributes) if attributes else []
        for name, value in (("beta", beta), ("kl_weight", kl_weight)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if lam is not None and not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"lam must be a finite number ≥ 0 or None, got {lam!r}")
        if isinstance(dims_per_attribute, bool) or not isinstance(dims_per_attribute, int) or dims_per_attribute < 1:
            raise ValueError(f"dims_per_attribute must be an integer ≥ 1, got {dims_per_attribute!r}")
        if dims_per_attribute * len(self.attributes) > latent_dim:
            raise ValueError(
                f"{len(self.attributes)} attribute(s) × dims_per_attribute={dims_per_attribute} exceed "
                f"latent_dim={latent_dim}"
            )
        self.beta = float(beta)
        self.lam = lam
        self.kl_weight = float(kl_weight)
        self.dims_per_attribute = dims_per_attribute
        self.labelled_batch_size = labelled_batch_size
        self.vae_params = {
            "image_shape": image_shape,
            "latent_dim": latent_dim,
            "likelihood": likelihood,
            "hidden": hidden,
            "channels": tuple(channels),
            "lr": lr,
            "batch_size": batch_size,
            "epochs": epochs,
            "seed": seed,
            "device": device,
        }
        side = 2 ** len(tuple(channels))  # any valid shape, when the real one comes from fit's X
        VAE(**self.vae_params)._config((1, side, side))  # validate now, naming the bad setting

    # -- helpers ----------------------------------------------------------------------------------
    def _dims(self) -> dict[str, list[int]]:
        """Attribute j owns z* dimensions [j·k, (j+1)·k), as in the lens."""
        k = self.dims_per_attribute
        return {a.name: list(range(j * k, (j + 1) * k)) for j, a in enumerate(self.attributes)}

    def _require_fitted(self) -> VAE:
        vae = getattr(self, "vae_", None)
        if vae is None:
            raise ValueError(f"this {type(self).__name__} is not fitted yet: call fit(X, S) first")
        return vae

    def _params(self) -> dict[str, Any]:
        return {
            "attributes": [a.to_dict() for a in self.attributes],
            "beta": self.beta,
            "lam": self.lam,
            "kl_weight": self.kl_weight,
            "dims_per_attribute": self.dims_per_attribute,
            "labelled_batch_size": self.labelled_batch_size,
        }

    # -- fitting ----------------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        S: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> JLVM:
        """Train from scratch (seeded) by maximising eq. (13) with Adam; returns self."""
        X = check_images(X)
        if len(X) < 2:
            raise ValueError(f"need at least 2 images to fit, got {len(X)}")
        shape = self.vae_params["image_shape"] or tuple(X.shape[1:])
        cfg = VAE(**{**self.vae_params, "image_shape": shape})._config()
        X = check_images(X, cfg.image_shape)
        n = len(X)
        labels = validate_labels(S, self.attributes, n) if self.attributes else {}
        lab_idx = labelled_items(labels, self.attributes)
        if self.attributes and lab_idx.size == 0:
            raise ValueError("S labels no item: JLVM needs side information (use BetaVAE for none)")
        lam = self.lam if self.lam is not None else default_alpha(n, len(lab_idx))
        dev = resolve_device(cfg.device)

        with seeded(cfg.seed):
            mod = JointModule(cfg, self.attributes, self._dims())
        mod.to(dev)
        g_noise = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        rng = np.random.default_rng(cfg.seed)
        opt = make_adam(mod, cfg.lr, dev)
        data = torch.from_numpy(X)
        st = {
            a.name: torch.as_tensor(labels[a.name] if a.is_discrete else labels[a.name].astype(np.float32))
            for a in self.attributes
        }
        bs = cfg.batch_size
        n_batches = math.ceil(n / bs)
        total = max(cfg.epochs * n_batches, 1)
        throttle = Throttle(progress)
        history: list[float] = []
        step = 0
        mod.train()
        for epoch in range(cfg.epochs):
            perm = rng.permutation(n)
            # The loss adds up on the device and is read at progress ticks: a float() per step would
            # make the host wait for a GPU every step.
            running = torch.zeros((), device=dev)
            for b in range(n_batches):
                check_stop(should_stop)
                xb = data[perm[b * bs : (b + 1) * bs]].to(dev)  # (B, C, H, W)
                loss_vec, _ = mod.losses(xb, self.kl_weight, self.beta, g_noise)
                loss = loss_vec.mean()
                if lab_idx.size and lam > 0:
                    li = rng.choice(
                        lab_idx,
                        size=min(self.labelled_batch_size, lab_idx.size),
                        replace=lab_idx.size < self.labelled_batch_size,
                    )
                    sup = mod.supervised(data[li].to(dev), {k: v[li].to(dev) for k, v in st.items()}, g_noise)
                    loss = loss - lam * sup.mean()  # + λ·E log q(s|z*), eq. (13)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.detach()
                step += 1
                if throttle.due():
                    throttle(step / total, {"epoch": epoch + 1, "loss": float(running) / (b + 1)})
            history.append(float(running) / n_batches)
        throttle(1.0, {"epoch": cfg.epochs, "loss": history[-1] if history else None}, final=True)
        mod.eval()
        self._set_fitted(cfg, dev, mod, history, float(lam), int(lab_idx.size))
        return self

    def _set_fitted(
        self, cfg: VAEConfig, dev: torch.device, mod: JointModule, history: list[float], lam: float, n_labelled: int
    ) -> None:
        vae = VAE(**{**self.vae_params, "image_shape": cfg.image_shape})
        vae.config_, vae.device_, vae.model_ = cfg, dev, mod.vae  # the fitted networks, shared
        vae.loss_history_, vae.n_epochs_, vae.image_shape_ = history, cfg.epochs, cfg.image_shape
        self.vae_, self.module_, self.history_ = vae, mod, history
        self.lam_, self.n_labelled_, self.attribute_dims_ = lam, n_labelled, self._dims()

    # -- inference (the VAE's, on z*) --------------------------------------------------------------
    def transform(self, X: Any, batch_size: int = 1024) -> np.ndarray:
        """z* of images X: posterior means of q(z*|x), float32 [N, d]."""
        return self._require_fitted().encode(X, batch_size)

    def decode(self, Zs: Any, batch_size: int = 1024) -> np.ndarray:
        """Images [N, C, H, W] in [0, 1] decoded directly from z* (no flows: DESIGN.md, traversals)."""
        return self._require_fitted().decode(Zs, batch_size)

    def test_log_likelihood(self, X: Any, k: int = 100, **kw: Any) -> float:
        """IWAE bound on log p(x) under p(z*) p(x|z*), nats per image (appendix 12.1; see VAE)."""
        return self._require_fitted().test_log_likelihood(X, k=k, **kw)

    @torch.no_grad()
    def predict_proba(self, X: Any) -> dict[str, np.ndarray]:
        """q(s|z*) at the posterior mean: {attribute: [N, C]} (discrete) or predicted means [N]."""
        self._require_fitted()
        zs = torch.as_tensor(self.transform(X), device=self.vae_.device_)
        out: dict[str, np.ndarray] = {}
        for a in self.attributes:
            head = self.module_.heads[a.name]
            if a.is_discrete:
                out[a.name] = head.probs(zs).cpu().numpy()  # type: ignore[operator]
            else:
                assert isinstance(head, ContinuousHead)
                out[a.name] = head.unscale_mean(head.mean_var(zs)[0]).cpu().numpy()
        return out

    # -- persistence ------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        self._require_fitted()
        cfg = asdict(self.vae_.config_)
        cfg["image_shape"], cfg["channels"] = list(cfg["image_shape"]), list(cfg["channels"])
        return {
            "kind": CHECKPOINT_KIND,
            "class": type(self).__name__,
            "config": json.dumps(cfg),
            "params": json.dumps(self._params()),
            "fitted": json.dumps({"history": self.history_, "lam": self.lam_, "n_labelled": self.n_labelled_}),
            "state": {k: v.detach().cpu() for k, v in self.module_.state_dict().items()},
        }

    @classmethod
    def _restore(cls, ckpt: dict[str, Any], device: str) -> JLVM:
        dev = resolve_device(device)
        if ckpt.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"not a JLVM checkpoint (kind={ckpt.get('kind')!r})")
        cfg_d = json.loads(ckpt["config"])
        params = json.loads(ckpt["params"])
        fitted = json.loads(ckpt["fitted"])
        cfg_d["image_shape"], cfg_d["channels"] = tuple(cfg_d["image_shape"]), tuple(cfg_d["channels"])
        cfg_d["device"] = device
        vae_kw = {
            k: cfg_d[k]
            for k in (
                "image_shape",
                "latent_dim",
                "likelihood",
                "hidden",
                "channels",
                "lr",
                "batch_size",
                "epochs",
                "seed",
                "device",
            )
        }
        self = JLVM.__new__(BetaVAE if ckpt.get("class") == "BetaVAE" else JLVM)
        JLVM.__init__(
            self,
            params["attributes"],
            beta=params["beta"],
            lam=params["lam"],
            kl_weight=params["kl_weight"],
            dims_per_attribute=params["dims_per_attribute"],
            labelled_batch_size=params["labelled_batch_size"],
            **vae_kw,
        )
        cfg = VAEConfig(**{**vae_kw, "gaussian_log_sigma": cfg_d.get("gaussian_log_sigma")})
        mod = JointModule(cfg, self.attributes, self._dims())
        mod.load_state_dict(ckpt["state"])
        mod.to(dev).eval()
        self._set_fitted(cfg, dev, mod, list(fitted["history"]), float(fitted["lam"]), int(fitted["n_labelled"]))
        return self


class BetaVAE(JLVM):
    """The β-VAE baseline (Higgins et al. 2017): −E log p(x|z) + β·KL(q(z|x) ‖ N(0, I)), no side information."""

    def __init__(self, beta: float = 4.0, **vae_params: Any) -> None:
        super().__init__((), beta=0.0, lam=0.0, kl_weight=beta, **vae_params)

    def fit(
        self,
        X: Any,
        S: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> BetaVAE:
        """Train on images X alone (S is ignored: the baseline sees no side information)."""
        super().fit(X, None, progress, should_stop)
        return self
