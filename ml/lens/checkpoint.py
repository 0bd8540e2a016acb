"""The lens's checkpoint format: a JSON config (attributes, dim, the LensConfig settings), a JSON record of
the fit (designated dims, α, history, the selection and the settings as asked, "auto" included), the state
dict and the standardisation (with the alignment's rotation, when the lens has one), all loadable with
``weights_only=True``. Format 1 since the first release; checkpoints written before ``LensConfig`` had
selection settings, or before the alignment (``align``: false, no rotation), load unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from ml.attributes import coerce_attributes
from ml.device import resolve_device
from ml.lens.config import SELECTION, LensConfig
from ml.lens.model import LensModule

FORMAT_VERSION = 1


def dump(lens: Any) -> dict[str, Any]:
    """A fitted ``InterpretableLens`` as a checkpoint dict (typed loosely: the estimator imports this module)."""
    requested = {
        k: getattr(lens, k)
        for k in ("flow", "n_flows", "epochs", "alpha", "weight_decay", *LensConfig.names(SELECTION))
    }
    extra = {
        "format": FORMAT_VERSION,
        "attribute_dims": lens.attribute_dims_,
        "alpha": lens.alpha_,
        "n_labelled": lens.n_labelled_,
        "history": lens.history_,
        "device": lens.device,
        "selection": getattr(lens, "selection_", None),
        # What was asked for ("auto" included), so a cold refit of a loaded lens selects again.
        "requested": requested,
    }
    config = {
        "attributes": [a.to_dict() for a in lens.attributes_],
        "dim": lens.dim_,
        **asdict(lens.config_),
        "extra": {},
    }
    return {
        "config": json.dumps(config),
        "extra": json.dumps(extra),
        "state": {k: v.detach().cpu() for k, v in lens.module_.state_dict().items()},
        "z_mean": torch.as_tensor(lens.z_mean_),
        "z_scale": torch.as_tensor(lens.z_scale_),
        "zstar_quantiles": torch.as_tensor(lens.zstar_quantiles_),
        **({"z_rotation": torch.as_tensor(lens.z_rotation_)} if lens.z_rotation_ is not None else {}),
    }


def restore(cls: Any, ckpt: Mapping[str, Any], device: str) -> Any:
    """A fitted ``cls`` (``InterpretableLens``) from a checkpoint dict; ValueError for a checkpoint of another kind."""
    try:
        config = json.loads(ckpt["config"])
        extra = json.loads(ckpt["extra"])
        attributes, dim = config.pop("attributes"), int(config.pop("dim"))
        config.pop("extra", None)
        config.setdefault("align", False)  # checkpoints from before the alignment have none
        cfg = LensConfig(**config)
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an InterpretableLens checkpoint: {exc}") from exc
    if extra.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported lens checkpoint format {extra.get('format')!r} (expected {FORMAT_VERSION})")
    lens = cls(attributes, device=device, **{**cfg.to_dict(), **(extra.get("requested") or {})})
    attrs = coerce_attributes(attributes)
    dims = {k: list(v) for k, v in extra["attribute_dims"].items()}
    lens.device_ = resolve_device(device)
    module = LensModule(cfg, dim, attrs, dims).to(lens.device_)
    module.load_state_dict(ckpt["state"])
    module.eval()
    lens.module_, lens.config_, lens.attributes_, lens.dim_ = module, cfg, attrs, dim
    lens.selection_ = extra.get("selection")
    lens.attribute_dims_, lens.alpha_ = dims, float(extra["alpha"])
    lens.n_labelled_, lens.history_ = int(extra["n_labelled"]), list(extra["history"])
    lens.z_mean_ = ckpt["z_mean"].cpu().numpy()
    lens.z_scale_ = ckpt["z_scale"].cpu().numpy()
    lens.zstar_quantiles_ = ckpt["zstar_quantiles"].cpu().numpy()
    lens.z_rotation_ = ckpt["z_rotation"].cpu().numpy() if "z_rotation" in ckpt else None
    return lens
