"""The product's steps on plain arrays and bytes, the narrow surface the worker calls: fit a base representation,
fit the lens, score, evaluate, load a stored model.

Everything here is plain arrays and bytes in, plain arrays, bytes and JSON-able dicts out, so the
caller (``app.worker``) never touches a model's internals and a notebook can run the same steps.
Long calls take ``progress(fraction, info)`` and ``should_stop()`` (see ``ml.control``) and raise
``ml.control.Stopped`` when asked to stop, having produced nothing.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.attributes import Attribute, coerce_attributes, observed_mask, validate_labels
from ml.control import ProgressFn, StopFn, check_stop, sub_progress
from ml.lens.config import STRUCTURAL, TRAINING, LensConfig

REPRESENTATION_SOURCES = ("vae", "contrastive", "classifier", "torchscript", "embeddings")
# Sources whose base model decodes z to images (so z*, through the lens's inverse, can be traversed).
DECODING_SOURCES = ("vae", "contrastive")

# VAE settings a project's representation config may give (anything else is refused, naming the key).
VAE_KEYS = (
    "latent_dim",
    "hidden",
    "channels",
    "epochs",
    "lr",
    "batch_size",
    "likelihood",
    "seed",
    "heldout_fraction",
    "test_ll_k",
    "test_ll_max_items",
    "early_stop_gain",
)
CLASSIFIER_KEYS = ("hidden_dim", "epochs", "lr", "batch_size", "seed", "attribute")
# What a project's settings.lens may hold: every LensConfig setting, and warm_epochs (the length of a
# warm-started retrain, a worker matter).
LENS_KEYS = (*LensConfig.names(), "warm_epochs")
# Images of at most this many pixels (8×8 digits, 16×16 sprites) get a smaller VAE by default: Table 1's
# 1024-wide layers and (64, 128) channels cost ~15× more per step there for the same ELBO (measured on digits:
# 27.6 vs 27.7 nats after 3 epochs), and the pretrain must finish in well under a minute on two cores.
SMALL_IMAGE_PIXELS = 16 * 16
SMALL_VAE = {"hidden": 256, "channels": (32, 64)}
# The pretrain stops once an epoch lowers the held-out negative ELBO by less than 1%, after at least
# EARLY_STOP_MIN_STEPS optimiser steps. Small pools never get there (the 1,797 digits: 390 steps in 30
# epochs, and z still improving: stopped after 5 epochs, a logistic regression on z falls from 76% to
# 45%); on 9,000 MNIST images (71 steps an epoch, ~13 s on 2 cores) the rule stops at epoch 15 of 30.
EARLY_STOP_GAIN = 0.01
EARLY_STOP_MIN_STEPS = 1000
# A VAE can collapse: on 6,000 MNIST images, seed 3 of Table 1's conv VAE ends at the mean image's loss
# (207 nats) with z identical for every image (std 0 in all 10 dimensions), and every lens on it sits at
# chance. Such a z is detected (every dimension's std < COLLAPSE_STD, against the prior's 1) and the
# VAE refitted with the next seed, at most COLLAPSE_RETRIES times.
COLLAPSE_STD = 1e-3
COLLAPSE_RETRIES = 2
MIN_EVAL_LABELS = 10


@dataclass
class RepresentationResult:
    """What fitting (or importing) a base representation yields."""

    model_bytes: bytes | None  # the base model's checkpoint (VAE / classifier / the TorchScript encoder)
    Z: np.ndarray  # (N, d) float32, z of every given item in input order
    test_ll: float | None  # IWAE test log-likelihood on held-out images (VAE only), nats per image
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able: config actually used, losses, timings


def content_hash(blob: bytes) -> str:
    """SHA-256 of a checkpoint: the content address a stored model version is known by."""
    return hashlib.sha256(blob).hexdigest()


def _unknown_keys(config: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; allowed: {sorted(allowed)}")


# --------------------------------------------------------------------------- base representation


def contrastive_keys() -> tuple[str, ...]:
    """The settings a project's contrastive representation config may give: every field of
    ``ml.contrastive.ContrastiveConfig`` but the image shape (the images') and the device (the worker's)."""
    from dataclasses import fields

    from ml.contrastive import ContrastiveConfig

    return tuple(f.name for f in fields(ContrastiveConfig) if f.name not in ("image_shape", "device"))


def check_representation(config: Mapping[str, Any]) -> None:
    """Refuse (ValueError naming the key and value) a representation config that pretrain would refuse:
    an unknown source, a setting its source does not take, or a contrastive setting out of range.

    Checked when a project is saved, so a typo surfaces at once rather than when the pretrain job fails.
    Settings whose validity depends on the images (e.g. ``channels`` against the image size) are
    checked by the pretrain itself.
    """
    cfg = dict(config)
    source = cfg.pop("source", "vae")
    if source not in REPRESENTATION_SOURCES:
        raise ValueError(f"representation.source must be one of {REPRESENTATION_SOURCES}, got {source!r}")
    keys = {"vae": VAE_KEYS, "classifier": CLASSIFIER_KEYS}.get(source, ())
    _unknown_keys(cfg, contrastive_keys() if source == "contrastive" else keys, f"representation ({source})")
    if source == "contrastive":
        from ml.contrastive import ContrastiveConfig

        channels = cfg.get("channels", ContrastiveConfig.channels)
        side = 2 ** len(channels) if isinstance(channels, list | tuple) else 1
        try:
            ContrastiveConfig(**{**cfg, "image_shape": (1, side, side), "device": "cpu"})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"representation.{exc}") from None


def fit_representation(
    source: str,
    images: np.ndarray | None,
    config: Mapping[str, Any] | None = None,
    *,
    labels: np.ndarray | None = None,
    n_classes: int | None = None,
    encoder_bytes: bytes | None = None,
    embeddings: np.ndarray | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    device: str = "auto",
) -> RepresentationResult:
    """Fit or import the base representation z of every item (paper 2.1), in the order of ``images``.

    - ``vae``: the conv VAE (``ml.vae.VAE``) trained on the images less a held-out fraction
      (``heldout_fraction``, default 0.1, seeded) on which the IWAE test log-likelihood is measured;
      z = posterior means of every image.
    - ``contrastive``: ``ml.contrastive.ContrastiveBase`` (a SimCLR encoder and a decoder fitted to its
      codes) trained on all the images; z = its codes. No likelihood: ``test_ll`` is None.
    - ``classifier``: ``ml.classifier.HiddenLayerClassifier`` trained on ``labels`` (class indices,
      −1 = unlabelled; ``n_classes`` levels); z = its hidden layer.
    - ``torchscript``: an uploaded TorchScript encoder (``encoder_bytes``), loaded on the CPU and run on
      the images in batches; its output, flattened per image, is z.
    - ``embeddings``: ``embeddings`` given as they are (checked to be finite [N, d]).
    """
    cfg = dict(config or {})
    cfg.pop("source", None)
    if source not in REPRESENTATION_SOURCES:
        raise ValueError(f"representation.source must be one of {REPRESENTATION_SOURCES}, got {source!r}")
    t0 = time.perf_counter()
    if source == "embeddings":
        if embeddings is None:
            raise ValueError("representation 'embeddings' needs the imported embeddings")
        Z = np.asarray(embeddings, dtype=np.float32)
        if Z.ndim != 2 or not np.isfinite(Z).all():
            raise ValueError(f"embeddings must be a finite 2-d array [N, d], got shape {Z.shape}")
        return RepresentationResult(None, Z, None, {"dim": int(Z.shape[1]), "seconds": 0.0})
    if images is None or len(images) == 0:
        raise ValueError(f"representation {source!r} needs the items' images, and this project has none")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if source == "vae":
        result = _fit_vae(images, cfg, progress, should_stop, device)
    elif source == "contrastive":
        result = _fit_contrastive(images, cfg, progress, should_stop, device)
    elif source == "classifier":
        result = _fit_classifier(images, cfg, labels, n_classes, progress, should_stop, device)
    else:
        result = _run_torchscript(images, encoder_bytes, progress, should_stop)
    result.info["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _fit_vae(
    images: np.ndarray, cfg: dict[str, Any], progress: ProgressFn | None, should_stop: StopFn | None, device: str
) -> RepresentationResult:
    from ml.vae import VAE

    _unknown_keys(cfg, VAE_KEYS, "representation (vae)")
    n, _c, h, w = images.shape
    heldout = float(cfg.pop("heldout_fraction", 0.1))
    if not 0.0 <= heldout < 0.5:
        raise ValueError(f"representation.heldout_fraction must lie in [0, 0.5), got {heldout}")
    k = int(cfg.pop("test_ll_k", 100))
    max_ll_items = int(cfg.pop("test_ll_max_items", 1000))
    gain = cfg.pop("early_stop_gain", EARLY_STOP_GAIN)
    if isinstance(gain, bool) or not isinstance(gain, int | float) or not 0.0 <= gain < 1.0:
        raise ValueError(
            f"representation.early_stop_gain must be a number in [0, 1) (0: never stop early), got {gain!r}"
        )
    params: dict[str, Any] = dict(SMALL_VAE) if h * w <= SMALL_IMAGE_PIXELS else {}
    params.update(cfg)
    if "channels" in params:
        params["channels"] = tuple(params["channels"])
    seed = int(params.get("seed", 0))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = round(heldout * n) if n >= 20 else 0
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    heldout_images = images[np.sort(test_idx)[:max_ll_items]]
    collapsed_seeds: list[int] = []
    for attempt in range(COLLAPSE_RETRIES + 1):
        vae = VAE(image_shape=None, device=device, **{**params, "seed": seed + attempt})
        vae.fit(
            images[np.sort(train_idx)],
            progress=sub_progress(progress, attempt / (COLLAPSE_RETRIES + 1) * 0.9, 0.9),
            should_stop=should_stop,
            validation=heldout_images if n_test else None,
            min_gain=float(gain),
            min_steps=EARLY_STOP_MIN_STEPS,
        )
        check_stop(should_stop)
        Z = vae.encode(images)
        if not z_collapsed(Z):
            break
        collapsed_seeds.append(seed + attempt)
    else:
        raise ValueError(
            f"representation (vae): z came out constant (posterior collapse: the decoder learnt the mean "
            f"image and the encoder carries nothing) with seeds {collapsed_seeds}; the images may not vary "
            "enough, or try another representation.seed or a smaller latent_dim"
        )
    test_ll = None
    if n_test:
        check_stop(should_stop)
        test_ll = float(vae.test_log_likelihood(heldout_images, k=k))
    if progress is not None:
        progress(1.0, {"loss": vae.loss_history_[-1] if vae.loss_history_ else None})
    cfg_used = {key: (list(v) if isinstance(v, tuple) else v) for key, v in vae.get_params().items()}
    info = {
        "config": cfg_used,
        "dim": int(Z.shape[1]),
        "n_train": len(train_idx),
        "n_heldout": int(n_test),
        "test_ll_k": k,
        "loss_history": [float(x) for x in vae.loss_history_],
        "heldout_history": [float(x) for x in vae.val_history_],
        "epochs_run": vae.n_epochs_,
        "early_stop_gain": float(gain),
        "collapsed_seeds": collapsed_seeds,
    }
    return RepresentationResult(vae.to_bytes(), Z.astype(np.float32), test_ll, info)


def _fit_contrastive(
    images: np.ndarray, cfg: dict[str, Any], progress: ProgressFn | None, should_stop: StopFn | None, device: str
) -> RepresentationResult:
    from ml.contrastive import ContrastiveBase

    _unknown_keys(cfg, contrastive_keys(), "representation (contrastive)")
    try:  # ContrastiveConfig checks every value (channels as a list or a tuple) and names it
        base = ContrastiveBase(image_shape=None, device=device, **cfg)
        base.fit(images, progress=progress, should_stop=should_stop)
    except ValueError as exc:
        raise ValueError(f"representation (contrastive): {exc}") from None
    check_stop(should_stop)
    Z = base.encode(images)
    info = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in base.get_params().items()},
        "dim": int(Z.shape[1]),
        "n_train": len(images),
        # Per-step losses, thinned to about 100 points each for the job's record.
        "loss_history": base.loss_history_[:: max(1, len(base.loss_history_) // 100)],
        "decoder_history": base.decoder_history_[:: max(1, len(base.decoder_history_) // 100)],
    }
    return RepresentationResult(base.to_bytes(), Z.astype(np.float32), None, info)


def z_collapsed(Z: np.ndarray, tol: float = COLLAPSE_STD) -> bool:
    """Whether every dimension of a VAE's z (posterior means, prior N(0, I)) is constant across items
    up to ``tol``: the posterior collapse in which z says nothing about the images."""
    Z = np.asarray(Z, dtype=np.float64)
    return bool(len(Z) > 1 and np.all(Z.std(0) < tol))


def _fit_classifier(
    images: np.ndarray,
    cfg: dict[str, Any],
    labels: np.ndarray | None,
    n_classes: int | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    device: str,
) -> RepresentationResult:
    from ml.classifier import HiddenLayerClassifier

    _unknown_keys(cfg, CLASSIFIER_KEYS, "representation (classifier)")
    cfg.pop("attribute", None)
    if labels is None or n_classes is None:
        raise ValueError("representation 'classifier' needs labels of a categorical attribute")
    y = np.asarray(labels, dtype=np.int64)
    n_labelled = int((y >= 0).sum())
    if n_labelled < 2 or len(np.unique(y[y >= 0])) < 2:
        raise ValueError(
            f"representation 'classifier' needs training labels of at least 2 classes; "
            f"{n_labelled} item(s) are labelled: label more items, then run pretrain again"
        )
    clf = HiddenLayerClassifier(n_classes=n_classes, image_shape=tuple(images.shape[1:]), device=device, **cfg)
    clf.fit(images, y, progress=sub_progress(progress, 0.0, 0.95), should_stop=should_stop)
    check_stop(should_stop)
    Z = clf.transform(images)
    info = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in clf.get_params().items()},
        "dim": int(Z.shape[1]),
        "n_labelled": n_labelled,
        "loss_history": [float(x) for x in clf.loss_history_],
    }
    return RepresentationResult(clf.to_bytes(), Z.astype(np.float32), None, info)


def _load_torchscript(encoder_bytes: bytes | None) -> Any:
    import torch

    if not encoder_bytes:
        raise ValueError("representation 'torchscript' needs an uploaded encoder: upload one, then run pretrain")
    try:
        # CPU on purpose: an uploaded module may hard-code devices.
        encoder = torch.jit.load(io.BytesIO(encoder_bytes), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and friends on a malformed archive
        raise ValueError(f"the uploaded encoder is not a loadable TorchScript module: {exc}") from None
    return encoder.eval()


def _torchscript_z(
    encoder: Any,
    images: np.ndarray,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """z of ``images`` under a loaded TorchScript encoder (its output flattened per image), float32 [N, d]."""
    import torch

    images = np.ascontiguousarray(images, dtype=np.float32)
    parts = []
    n = len(images)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            check_stop(should_stop)
            try:
                out = encoder(torch.from_numpy(images[i : i + batch_size]))
            except Exception as exc:
                raise ValueError(f"the uploaded encoder failed on images of shape {images.shape[1:]}: {exc}") from None
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"the uploaded encoder must return one tensor, got {type(out).__name__}")
            parts.append(out.reshape(out.shape[0], -1).float().cpu().numpy())
            if progress is not None:
                progress(min(1.0, (i + batch_size) / n), {})
    Z = np.concatenate(parts).astype(np.float32)
    if Z.shape[0] != n or not np.isfinite(Z).all():
        raise ValueError(f"the uploaded encoder gave {Z.shape[0]} rows (want {n}) or non-finite values")
    return Z


def _run_torchscript(
    images: np.ndarray,
    encoder_bytes: bytes | None,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> RepresentationResult:
    Z = _torchscript_z(_load_torchscript(encoder_bytes), images, progress, should_stop)
    return RepresentationResult(bytes(encoder_bytes or b""), Z, None, {"dim": int(Z.shape[1])})


# --------------------------------------------------------------------------- the lens


def lens_params(params: Mapping[str, Any] | None, where: str = "settings.lens") -> dict[str, Any]:
    """Lens hyper-parameters from a project's ``settings.lens``, checked (ValueError names the key and value).

    Checked here rather than only by the lens's constructor so that a project's settings can be
    refused when they are saved, before any job runs with them. ``where`` names the settings in
    messages (e.g. ``params.lens`` for a job's overrides). The rules are ``LensConfig``'s.
    """
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"{where} must be an object of lens settings, got {params!r}")
    p = dict(params or {})
    _unknown_keys(p, LENS_KEYS, where)
    for key, value in p.items():
        if key == "warm_epochs":
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{where}.warm_epochs must be an integer ≥ 1 or null, got {value!r}")
        else:
            LensConfig.check_value(key, value, where)
    return p


def warm_epochs(n_items: int, batch_size: int, requested: int | None = None) -> int:
    """Epochs of a warm-started retrain: a quarter of a cold fit's (at least 10) unless given.

    A warm start begins from a lens already fitted to the same z; measured on digits (200 labels),
    50 more epochs cost ~4 s where a cold fit's 200 cost ~25 s.
    """
    if requested is not None:
        return int(requested)
    steps = max(1, math.ceil(n_items / batch_size))
    cold = int(min(200, max(10, math.ceil(1500 / steps))))
    return max(10, cold // 4)


def fit_lens(
    Z: np.ndarray,
    S: Mapping[str, Any],
    attributes: Sequence[Attribute | Mapping[str, Any]],
    *,
    warm_start_bytes: bytes | None = None,
    params: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    device: str = "auto",
) -> tuple[bytes, dict[str, Any]]:
    """Fit the interpretable lens on z with the labels S; returns (checkpoint bytes, training statistics).

    ``warm_start_bytes``: a previous checkpoint of a lens on the same z and attributes; training
    continues from it for ``warm_epochs`` (default: a quarter of a cold fit). A checkpoint whose
    attributes or dimension differ, or whose networks differ from the requested ones (flow family,
    ``n_flows``, ``hidden``, ``dims_per_attribute``), is ignored: a cold fit, said so in ``note``.
    ``flow: "auto"`` warm-starts within the previous version's family.

    The statistics include ``flow`` (the family fitted), ``dims_per_attribute`` and, when the lens
    chose flow, alpha or epochs by k-fold model selection, ``selection`` (the lens's account of it).
    """
    from ml.device import device_name, resolve_device, sizes_for
    from ml.lens import InterpretableLens

    attrs = coerce_attributes(attributes)
    p = lens_params(params)
    warm_req = p.pop("warm_epochs", None)
    Z = np.asarray(Z, dtype=np.float32)
    t0 = time.perf_counter()
    lens = None
    warm_note = None
    if warm_start_bytes:
        prev = InterpretableLens.from_bytes(warm_start_bytes, device=device)
        changed = _architecture_change(prev, p)
        if [a.to_dict() for a in prev.attributes_] != [a.to_dict() for a in attrs]:
            warm_note = "attributes changed since the previous version: cold fit"
        elif prev.dim_ != Z.shape[1]:
            warm_note = "z dimension changed since the previous version: cold fit"
        elif changed:
            warm_note = f"{changed} changed since the previous version: cold fit"
        else:
            lens = prev
            # Every training setting asked for now applies ("auto" was settled by the cold fit's model
            # selection: a warm start keeps its choice); the length is a warm start's own.
            training = {k: p[k] for k in LensConfig.names(TRAINING) if k in p and p[k] != "auto" and k != "epochs"}
            # Batch size and step not asked for are this device's, not those of the device it was trained on.
            training.setdefault("batch_size", None)
            training.setdefault("lr", None)
            training.setdefault("threads", None)
            training.setdefault("compile_step", None)
            batch = training["batch_size"] or sizes_for(resolve_device(device), len(Z)).lens_batch_size
            lens.set_params(**training, epochs=warm_epochs(len(Z), batch, warm_req))
    warm = lens is not None
    if lens is None:
        lens = InterpretableLens(attrs, device=device, **p)
    lens.fit(Z, S, warm_start=warm, progress=progress, should_stop=should_stop)
    blob = lens.to_bytes()
    config = getattr(lens, "config_", None)
    stats = {
        "warm_start": warm,
        "epochs": len(lens.history_),
        "final_loss": float(lens.history_[-1]),
        "loss_history": [float(x) for x in lens.history_],
        "alpha": lens.alpha_,
        "n_items": len(Z),
        "n_labelled": int(lens.n_labelled_),
        "dim": int(Z.shape[1]),
        "attribute_dims": lens.attribute_dims_,
        "seconds": round(time.perf_counter() - t0, 3),
        "device": str(lens.device_),
        "device_name": device_name(lens.device_, getattr(config, "threads", None)),
        "batch_size": getattr(config, "batch_size", None),
        "lr": getattr(config, "lr", None),
        "threads": getattr(config, "threads", None),
        "step": getattr(lens, "step_mode_", "eager"),
        "flow": getattr(config, "flow", "planar"),
        "dims_per_attribute": int(getattr(config, "dims_per_attribute", 1)),
    }
    selection = getattr(lens, "selection_", None)
    if selection is not None:
        stats["selection"] = _jsonable(selection)
    if warm_note:
        stats["note"] = warm_note
    return blob, stats


def _architecture_change(prev: Any, p: Mapping[str, Any]) -> str | None:
    """The first requested structural setting that would change the previous lens's networks, or None.

    A key left out asks for the default, so removing a setting takes effect too. The request is
    compared with what the previous version was *asked* for (a loaded lens keeps its requested
    settings): ``flow: "auto"`` asked again keeps the family its selection chose, while switching
    to or from "auto" refits from scratch.
    """
    defaults = LensConfig.defaults()
    config = getattr(prev, "config_", None)
    for key in LensConfig.names(STRUCTURAL):
        want = p.get(key, defaults[key])
        # A lens loaded from a checkpoint carries what it was asked for; checkpoints older than flow
        # families were planar.
        before = getattr(prev, key, getattr(config, key, defaults[key] if key == "flow" else None))
        if before is not None and want != before:
            return f"lens {key} ({before!r} → {want!r})"
    return None


def load_lens(blob: bytes, device: str = "auto") -> Any:
    """A fitted ``ml.lens.InterpretableLens`` from its checkpoint bytes (``fit_lens``'s output)."""
    from ml.lens import InterpretableLens

    return InterpretableLens.from_bytes(bytes(blob), device=device)


def load_vae(blob: bytes, device: str = "auto") -> Any:
    """A fitted ``ml.vae.VAE`` (the base model that decodes z) from its checkpoint bytes."""
    from ml.vae import VAE

    return VAE.from_bytes(bytes(blob), device=device)


def load_contrastive(blob: bytes, device: str = "auto") -> Any:
    """A fitted ``ml.contrastive.ContrastiveBase`` (encoder and decoder) from its checkpoint bytes."""
    from ml.contrastive import ContrastiveBase

    return ContrastiveBase.from_bytes(bytes(blob), device=device)


Encoder = Callable[[np.ndarray], np.ndarray]


def load_base_model(source: str, blob: bytes | None, device: str = "auto") -> Any:
    """A representation's fitted base model from its checkpoint: the ``ml.vae.VAE``, the
    ``ml.contrastive.ContrastiveBase``, the ``ml.classifier.HiddenLayerClassifier`` or the uploaded
    TorchScript encoder (on the CPU).

    An ``embeddings`` base has none (ValueError): its users send embeddings.
    """
    if source == "embeddings":
        raise ValueError("an embeddings representation has no image encoder: send embeddings of the same base")
    if not blob:
        raise ValueError(f"the {source} representation has no stored model to encode images with")
    if source == "vae":
        return load_vae(blob, device=device)
    if source == "contrastive":
        return load_contrastive(blob, device=device)
    if source == "classifier":
        from ml.classifier import HiddenLayerClassifier

        return HiddenLayerClassifier.from_bytes(bytes(blob), device=device)
    if source == "torchscript":
        return _load_torchscript(blob)
    raise ValueError(f"representation.source must be one of {REPRESENTATION_SOURCES}, got {source!r}")


def encoder_of(source: str, model: Any) -> tuple[Encoder, Any]:
    """The base model's map from images (N, C, H, W) in [0, 1] to z (what ``fit_representation`` computed
    for the imported items), and the image shape (C, H, W) it takes (None when the model does not say:
    an uploaded TorchScript encoder). ``model`` is ``load_base_model``'s."""
    if source in DECODING_SOURCES:
        return model.encode, tuple(model.config_.image_shape)
    if source == "classifier":
        return model.transform, tuple(model.image_shape)
    if source == "torchscript":
        return (lambda images: _torchscript_z(model, images)), None
    raise ValueError(f"a {source!r} representation has no image encoder")


def _lens(lens: Any, device: str) -> Any:
    if isinstance(lens, bytes | bytearray | memoryview):
        return load_lens(bytes(lens), device=device)
    return lens


def score_pool(
    lens: Any,
    Z: np.ndarray,
    strategy: str = "bald",
    n_samples: int = 64,
    *,
    chunk: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    device: str = "auto",
) -> np.ndarray:
    """Acquisition score (section 3; ``bald`` is eq. 10) of every row of Z, float64 [N], in chunks.

    ``lens``: a fitted ``InterpretableLens`` or its checkpoint bytes. Every chunk uses the Monte-Carlo
    draws of ``seed`` (common random numbers: the scores do not depend on the chunk size). ``chunk``:
    items per chunk (None: the device's, ``ml.device.sizes_for``).
    """
    from ml.acquisition import lens_scores
    from ml.device import resolve_device, sizes_for

    model = _lens(lens, device)
    if chunk is None:
        chunk = sizes_for(resolve_device(device)).score_chunk
    Z = np.asarray(Z, dtype=np.float32)
    out = np.empty(len(Z), dtype=np.float64)
    for i in range(0, len(Z), chunk):
        check_stop(should_stop)
        # The random strategy's uniform scores must differ from chunk to chunk; the draws must not.
        chunk_seed = seed + i // chunk if strategy == "random" else seed
        out[i : i + chunk] = lens_scores(
            model, Z[i : i + chunk], strategy=strategy, n_samples=n_samples, seed=chunk_seed, chunk=chunk
        )
        if progress is not None:
            progress(min(1.0, (i + chunk) / max(1, len(Z))), {})
    return out


def queue_batch(
    rule: str, scores: np.ndarray, Z: np.ndarray, k: int, *, covered: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Row indices of the next labelling round under a queue batch rule (``ml.acquisition.queue_batch``)."""
    from ml.acquisition import queue_batch as batch

    return batch(rule, scores, Z, k, covered=covered, seed=seed)


def cold_start_order(Z: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Rows of Z to hand out first while no lens exists: TypiClust on z (``ml.acquisition.cold_start_order``)."""
    from ml.acquisition import cold_start_order as typiclust_order

    return typiclust_order(Z, k, seed=seed)


# --------------------------------------------------------------------------- evaluation


def unscorable_reason(
    y: np.ndarray, attribute: Attribute, *, min_labels: int = MIN_EVAL_LABELS, folds: int = 2
) -> str | None:
    """Why the metric cannot score ``attribute`` from these eval labels (None when it can), in words that
    say what would fix it.

    The cross-validated metric fits on ``folds - 1`` of ``folds`` parts, and its Platt scaling needs two
    or more train items per class, so a discrete attribute needs two levels with ``2 * folds`` labels
    each; every attribute needs ``min_labels`` labels in all.
    """
    observed = np.asarray(y)[observed_mask(np.asarray(y), attribute)]
    n = int(observed.size)
    per_level = 2 * folds
    if attribute.is_discrete:
        _, counts = np.unique(observed, return_counts=True)
        ready = int(np.sum(counts >= per_level))
        if n < min_labels or ready < 2:
            return (
                f"{n} eval label{'s' if n != 1 else ''}, {ready} level{'s' if ready != 1 else ''} with "
                f"{per_level} or more; needs {min_labels} eval labels covering two or more levels with "
                f"{per_level} or more each"
            )
        return None
    if n < min_labels:
        return f"{n} eval label{'s' if n != 1 else ''}; needs at least {min_labels}"
    if np.unique(observed).size < 2:
        return f"{n} eval labels, all with the same value; needs two or more distinct values"
    return None


def evaluate(
    lens: Any,
    Z_eval: np.ndarray,
    S_eval: Mapping[str, Any],
    attributes: Sequence[Attribute | Mapping[str, Any]],
    *,
    min_labels: int = MIN_EVAL_LABELS,
    folds: int = 2,
    seed: int = 0,
    should_stop: StopFn | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """The interpretability metric (section 4) of the lens on held-out labelled items, plus comparisons.

    ``Z_eval``/``S_eval`` must be items whose labels did not train the lens (the app's eval split).
    Returns a JSON-able dict: ``attributes`` (per attribute on z*, one dimension: score, accuracy,
    dim, chance_score, n_test, ``score_se``, and ``z_score`` / ``z_score_se`` — the same metric on
    raw z), ``overall``, ``baseline_overall`` (raw z), ``overall_se`` and ``baseline_overall_se``
    (standard errors over the eval items, the spread ``hold_back_reason`` allows for), ``k_dims``
    ({"2": overall, "all": overall} on z*), ``mig`` and ``sap`` on z* and z, ``skipped`` (attribute →
    reason: fewer than ``min_labels`` eval labels, a single class, ...) and ``n_eval``. Never raises
    for too few labels: it skips.

    A lens with k = ``dims_per_attribute`` > 1 designated dimensions per attribute also gets the
    metric with ``dims=k``: per attribute ``score_k``, ``accuracy_k`` and ``dims_k`` (the chosen
    dims), and ``overall_k``, ``overall_accuracy_k`` at the top (None when k = 1);
    ``dims_per_attribute`` says k. The one-dimension ``score`` stays the headline: it is the paper's
    metric.
    """
    from ml.metrics import interpretability_score_cv, mig, sap

    attrs = coerce_attributes(attributes)
    Z = np.asarray(Z_eval, dtype=np.float64)
    labels = validate_labels(S_eval, attrs, len(Z))
    skipped: dict[str, str] = {}
    scorable: list[Attribute] = []
    for a in attrs:
        reason = unscorable_reason(labels[a.name], a, min_labels=min_labels, folds=folds)
        if reason is None:
            scorable.append(a)
        else:
            skipped[a.name] = reason
    out: dict[str, Any] = {
        "attributes": {},
        "overall": None,
        "overall_accuracy": None,
        "baseline_overall": None,
        "k_dims": {},
        "overall_k": None,
        "overall_accuracy_k": None,
        "dims_per_attribute": None,
        "mig": None,
        "sap": None,
        "mig_z": None,
        "sap_z": None,
        "skipped": skipped,
        "n_eval": len(Z),
    }
    if not scorable or len(Z) == 0:
        return out
    model = _lens(lens, device)
    Zs = np.asarray(model.transform(Z))
    S_use = {a.name: labels[a.name] for a in scorable}

    def cv(X: np.ndarray, **kw: Any) -> dict[str, Any]:
        check_stop(should_stop)
        return interpretability_score_cv(X, S_use, scorable, folds=folds, seed=seed, skip_unscorable=True, **kw)

    main = cv(Zs)
    raw = cv(Z)
    for name, r in main["attributes"].items():
        entry = {k: r[k] for k in ("score", "score_se", "accuracy", "dim", "chance_score", "n_test", "mi") if k in r}
        if name in raw["attributes"]:
            entry["z_score"] = raw["attributes"][name]["score"]
            entry["z_score_se"] = raw["attributes"][name].get("score_se")
            entry["z_dim"] = raw["attributes"][name]["dim"]
        out["attributes"][name] = _jsonable(entry)
    skipped.update(main.get("skipped", {}))
    out["overall"] = _float(main.get("overall"))
    out["overall_accuracy"] = _float(main.get("overall_accuracy"))
    out["baseline_overall"] = _float(raw.get("overall"))
    out["overall_se"] = _overall_se(main)
    out["baseline_overall_se"] = _overall_se(raw)
    k_results: dict[Any, dict[str, Any]] = {}
    for k in (2, "all"):
        if k == 2 and Z.shape[1] < 2:
            continue
        k_results[k] = cv(Zs, dims=k)
        out["k_dims"][str(k)] = _float(k_results[k].get("overall"))
    k_own = min(_dims_per_attribute(model), Z.shape[1])
    out["dims_per_attribute"] = k_own
    if k_own > 1:
        # A lens with k designated dims per attribute is also judged on k dims: the 1-dim score stays
        # the paper's headline, and this one says how much of the attribute the lens spread over its k.
        k_res = k_results.get(k_own) or cv(Zs, dims=k_own)
        for name, entry in out["attributes"].items():
            r = k_res["attributes"].get(name)
            if r is not None:
                entry.update(
                    _jsonable({"score_k": r.get("score"), "accuracy_k": r.get("accuracy"), "dims_k": r.get("dim")})
                )
        out["overall_k"] = _float(k_res.get("overall"))
        out["overall_accuracy_k"] = _float(k_res.get("overall_accuracy"))
    check_stop(should_stop)
    out["mig"], out["mig_z"] = _float(mig(Zs, S_use, scorable)), _float(mig(Z, S_use, scorable))
    check_stop(should_stop)
    out["sap"], out["sap_z"] = _float(sap(Zs, S_use, scorable, seed=seed)), _float(sap(Z, S_use, scorable, seed=seed))
    return out


def hold_back_reason(candidate: Mapping[str, Any], active: Mapping[str, Any] | None, margin: float = 0.0) -> str | None:
    """Why a newly fitted lens must not go live, or None when it may: never worse than doing nothing.

    ``candidate`` and ``active`` are ``evaluate`` results on the same eval items (``active``: the
    version serving now, re-measured, or None). The candidate is held back when its one-dimension
    overall score is measurably below raw z's (``baseline_overall``, the same metric with no lens at
    all) or the active version's, each plus ``margin`` points: below by more than the measured spread,
    the standard error of the difference (``overall_se`` of both; unpaired, so on the generous side).
    Within the spread the newer version goes live: it has seen more labels, and the eval items cannot
    tell the two apart. A candidate that cannot be measured yet (too few eval labels) goes live: there
    is nothing to compare it with, and without a first version nothing would ever be served.
    """
    new = candidate.get("overall")
    if new is None:
        return None
    new_se = candidate.get("overall_se") or 0.0
    plus = f" + margin {margin:g}" if margin else ""
    bars = [("raw z's", candidate.get("baseline_overall"), candidate.get("baseline_overall_se"))]
    if active is not None:
        bars.append(("the active version's", active.get("overall"), active.get("overall_se")))
    for who, bar, bar_se in bars:
        if bar is None:
            continue
        spread = math.sqrt(new_se**2 + (bar_se or 0.0) ** 2)
        if new + spread < bar + margin:
            return (
                f"its score {new:.1f} is below {who} {bar:.1f}{plus} by more than the measured spread "
                f"({spread:.1f}) on the same eval items"
            )
    return None


def _overall_se(result: Mapping[str, Any]) -> float | None:
    """Standard error of "overall" (the mean over attributes) from the attributes' own."""
    ses = [r.get("score_se") for r in result.get("attributes", {}).values()]
    if not ses or any(v is None or not math.isfinite(v) for v in ses):
        return None
    return float(math.sqrt(sum(v * v for v in ses)) / len(ses))


def _dims_per_attribute(model: Any) -> int:
    """The lens's designated z* dimensions per attribute (1 for a lens that predates the setting)."""
    dims = getattr(model, "attribute_dims_", None) or {}
    counts = [len(np.asarray(v).ravel()) for v in dict(dims).values()]
    if counts:
        return max(1, min(counts))
    return int(getattr(getattr(model, "config_", None), "dims_per_attribute", 1) or 1)


def _float(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        return _float(v)
    return v
