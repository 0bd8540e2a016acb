"""``InterpretableLens``: the lens as a scikit-learn-style estimator (fit, transform, predictive samples).

The deterministic lens map is the flow stack applied to z itself (eq. 5): ``transform(Z) = f(z)``
and ``inverse_transform`` is its exact inverse, so z is always recoverable. Since the map never
reads s, an item's z* cannot carry its own labels into the metric. The settings are the fields of
``LensConfig`` (one table: defaults, kinds, checks); training is ``ml.lens.train.train``, model
selection ``ml.lens.selection``; acquisition scores are ``ml.acquisition.lens_scores``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ml.attributes import Attribute, coerce_attributes, validate_labels
from ml.control import ProgressFn, StopFn, sub_progress
from ml.device import resolve_device
from ml.flows import FlowStack
from ml.heads import AttributeHead, ContinuousHead
from ml.lens import checkpoint
from ml.lens.config import STRUCTURAL, LensConfig
from ml.lens.selection import select_settings
from ml.lens.train import Fit, assign_dims, check_label_support, standardise, train, unstandardise
from ml.persistence import Checkpointed


class InterpretableLens(Checkpointed):
    """scikit-learn-style ILVM: ``fit(Z, S)``, ``transform``, ``inverse_transform``, predictive samples.

    ``attributes``: the attributes (``ml.attributes.Attribute`` or dicts); ``device``: where to
    train; every other parameter is a ``LensConfig`` setting, with its default there. ``Z`` is
    [N, d] (the base model's representation); ``S`` maps attribute name → array of length N: level
    indices (−1 = missing) for categorical/ordinal attributes, values (NaN = missing) for continuous
    ones. A categorical/ordinal attribute may instead be given soft targets [N, C] (per item a
    distribution over the levels, e.g. what several experts said; zeros = unlabelled), on which every
    term trains in expectation. Learnt state ends with ``_``. ``flow``, ``alpha`` and ``weight_decay``
    may be ``"auto"``: they are then chosen, with the number of epochs, by ``selection_folds``-fold cross-validation on
    the labelled items alone; the outcome is kept in ``selection_``.

    The constructor stores its arguments unchanged (so ``sklearn.base.clone`` works) and checks the
    settings at once, so a bad value is refused where it was typed; ``fit`` checks them again after
    any ``set_params``.
    """

    def __init__(
        self, attributes: Sequence[Attribute | Mapping[str, Any]], device: str = "auto", **settings: Any
    ) -> None:
        unknown = sorted(set(settings) - set(LensConfig.names()))
        if unknown:
            raise TypeError(f"InterpretableLens got unknown setting(s) {unknown}; known: {list(LensConfig.names())}")
        self.attributes = attributes
        self.device = device
        for key, value in {**LensConfig.defaults(), **settings}.items():
            setattr(self, key, value)
        self.settings()

    # -- parameters (scikit-learn conventions) -----------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments, as given."""
        return {
            "attributes": self.attributes,
            "device": self.device,
            **{k: getattr(self, k) for k in LensConfig.names()},
        }

    def set_params(self, **params: Any) -> InterpretableLens:
        """Change constructor arguments (checked); the fitted state is kept until the next ``fit``."""
        known = {"attributes", "device", *LensConfig.names()}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"invalid parameter(s) {unknown} for InterpretableLens; known: {sorted(known)}")
        for key, value in params.items():
            setattr(self, key, value)
        self.settings()
        return self

    def settings(self) -> LensConfig:
        """The current settings as a checked ``LensConfig`` (ValueError naming a bad one)."""
        return LensConfig(**{k: getattr(self, k) for k in LensConfig.names()}).check("InterpretableLens")

    @property
    def needs_selection(self) -> bool:
        """Whether ``fit`` chooses some setting by cross-validation (a setting is ``"auto"``)."""
        return self.settings().needs_selection

    # -- checks --------------------------------------------------------------------------------------
    def _check_Z(self, Z: Any, *, fitted: bool) -> np.ndarray:
        Z = np.asarray(Z)
        if Z.ndim != 2:
            raise ValueError(f"Z must be a 2-d array [N, d], got shape {Z.shape}")
        if Z.dtype.kind not in "fiu":
            raise ValueError(f"Z must be numeric, got dtype {Z.dtype}")
        if not np.isfinite(Z).all():
            bad = np.argwhere(~np.isfinite(Z))[0]
            raise ValueError(f"Z contains NaN or infinite values (first at row {bad[0]}, column {bad[1]})")
        if fitted and Z.shape[1] != self.dim_:
            raise ValueError(f"Z has {Z.shape[1]} columns but the lens was fitted on d={self.dim_}")
        return Z

    def _require_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise ValueError("this InterpretableLens is not fitted yet: call fit(Z, S) first")

    # -- fitting --------------------------------------------------------------------------------------
    def fit(
        self,
        Z: Any,
        S: Mapping[str, Any] | None = None,
        warm_start: bool = False,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> InterpretableLens:
        """Fit the lens by stochastic maximisation of the ELBO (7)/(8) + α·supervision (Adam).

        Settings given as ``"auto"`` are first chosen by k-fold cross-validation on the labelled
        items (``ml.lens.selection``). A warm start continues from the current weights with the
        current training settings; it refuses a change of a structural setting (flow, n_flows,
        hidden, dims_per_attribute), which needs a cold fit. Settings left "auto" keep the value
        the last selection chose.
        """
        attrs = coerce_attributes(self.attributes)
        Z = self._check_Z(Z, fitted=False)
        n, d = Z.shape
        if n < 2:
            raise ValueError(f"need at least 2 items to fit, got {n}")
        device = resolve_device(self.device)
        # Unset batch size and step are the device's (ml.device.sizes_for), stored concrete in config_.
        requested = self.settings().for_device(device, n)
        labels = validate_labels(S, attrs, n, soft=True)
        check_label_support(attrs, labels)
        assign_dims(attrs, requested.dims_per_attribute, d)
        if warm_start and hasattr(self, "module_") and self.dim_ == d:
            if [a.to_dict() for a in attrs] != [a.to_dict() for a in self.attributes_]:
                raise ValueError("warm_start: the attributes changed since the last fit; fit without warm_start")
            concrete = {k: v for k, v in requested.to_dict().items() if v != "auto"}
            # Structural settings asked for "auto" keep the family the selection chose.
            cfg = self.config_.with_changes(
                **{
                    k: v
                    for k, v in concrete.items()
                    if k not in LensConfig.names(STRUCTURAL) or requested.flow != "auto"
                }
            )
            changed = cfg.structural_changes(self.config_)
            if changed:
                raise ValueError(
                    f"warm_start cannot change the networks' shape: {', '.join(changed)}; fit without warm_start"
                )
            start = Fit(
                module=self.module_,
                z_mean=self.z_mean_,
                z_scale=self.z_scale_,
                attribute_dims=self.attribute_dims_,
                z_rotation=self.z_rotation_,
            )
            self._set_fit(
                train(Z, labels, attrs, cfg, device=device, start=start, progress=progress, should_stop=should_stop),
                cfg,
                attrs,
                device,
                Z,
            )
            return self
        selection = None
        fit_progress = progress
        if requested.needs_selection:
            selection = select_settings(
                requested,
                attrs,
                Z,
                labels,
                device=device,
                progress=sub_progress(progress, 0.0, 0.75, stage="selection"),
                should_stop=should_stop,
            )
            fit_progress = sub_progress(progress, 0.75, 1.0)
        cfg = requested.with_changes(**(selection["chosen"] if selection else {}))
        self._set_fit(
            train(Z, labels, attrs, cfg, device=device, progress=fit_progress, should_stop=should_stop),
            cfg,
            attrs,
            device,
            Z,
        )
        self.selection_ = selection
        return self

    def _set_fit(self, fit: Fit, cfg: LensConfig, attrs: list[Attribute], device: torch.device, Z: np.ndarray) -> None:
        self.module_, self.z_mean_, self.z_scale_ = fit.module, fit.z_mean, fit.z_scale
        self.z_rotation_ = fit.z_rotation
        self.attribute_dims_, self.alpha_, self.n_labelled_ = fit.attribute_dims, fit.alpha, fit.n_labelled
        self.history_, self.config_, self.attributes_ = fit.history, cfg, attrs
        self.step_mode_ = fit.step_mode
        self.device_, self.dim_ = device, int(Z.shape[1])
        # Training z* quantiles anchor the traversals (DESIGN.md: "over its training quantiles").
        self.zstar_quantiles_ = np.quantile(self.transform(Z), [0.01, 0.05, 0.5, 0.95, 0.99], axis=0)

    # -- the deterministic map (eq. 5) --------------------------------------------------------------
    def _standardise(self, Z: np.ndarray) -> np.ndarray:
        return standardise(Z, self.z_mean_, self.z_scale_, self.z_rotation_)

    def transform(self, Z: Any, batch_size: int = 65536) -> np.ndarray:
        """z* = f_T ∘ … ∘ f_1(z) (eq. 5), float64 [N, d].

        Computed in float64: the round trip to z is exact to ~1e-10 even for strongly curved flows,
        where float32 rounding of z* would be amplified by the inverse's conditioning.
        """
        self._require_fitted()
        Z = self._check_Z(Z, fitted=True)
        out = np.empty(Z.shape, dtype=np.float64)
        with torch.no_grad():
            flows64 = _as_double(self.module_.flows)
            for i in range(0, len(Z), batch_size):
                zt = torch.as_tensor(self._standardise(Z[i : i + batch_size]), dtype=torch.float64)
                out[i : i + batch_size] = flows64(zt)[0].numpy()
        return out

    def inverse_transform(self, Zs: Any, batch_size: int = 65536) -> np.ndarray:
        """z = f⁻¹(z*) with the flows' exact inverse (Rezende & Mohamed, App. A.1), float64 [N, d]."""
        self._require_fitted()
        Zs = self._check_Z(Zs, fitted=True)
        flows64 = _as_double(self.module_.flows)
        out = np.empty(Zs.shape, dtype=np.float64)
        with torch.no_grad():
            for i in range(0, len(Zs), batch_size):
                y = torch.as_tensor(np.asarray(Zs[i : i + batch_size], dtype=np.float64))
                out[i : i + batch_size] = flows64.inverse(y)[0].numpy()
        return unstandardise(out, self.z_mean_, self.z_scale_, self.z_rotation_)

    # -- predictions ----------------------------------------------------------------------------------
    def predict_proba(self, Z: Any) -> dict[str, Any]:
        """p_ψ(s | z* = f(z)): {attr: [N, C] probabilities} or {attr: (mean [N], variance [N])}."""
        return self.transform_and_predict(Z)[1]

    def transform_and_predict(self, Z: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """z* (``transform``) and the heads' predictions at it (``predict_proba``) from one pass of the flows."""
        Zs = self.transform(Z)
        return Zs, self._heads_at(Zs)

    def _heads_at(self, Zs: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with torch.no_grad():
            zs = torch.as_tensor(Zs, dtype=torch.float32, device=self.device_)
            for a in self.attributes_:
                head: AttributeHead = self.module_.heads[a.name]  # type: ignore[assignment]
                if a.is_discrete:
                    out[a.name] = head.probs(zs)  # type: ignore[attr-defined]
                else:
                    assert isinstance(head, ContinuousHead)
                    m, v = head.mean_var(zs)
                    out[a.name] = (head.unscale_mean(m), head.unscale_var(v))
        return {k: _np(v) for k, v in out.items()}

    def predict(self, Z: Any) -> dict[str, np.ndarray]:
        """Most probable level index (discrete) or predicted mean (continuous) per attribute."""
        return {
            a.name: (p.argmax(1) if a.is_discrete else p[0])
            for a, p in zip(self.attributes_, self.predict_proba(Z).values(), strict=True)
        }

    def predictive_samples(self, Z: Any, n_samples: int = 32, draws: str = "qmc") -> dict[str, Any]:
        """Heads at z*_t ~ q(z*|z) as torch tensors on the lens's device: {attr: probs [N, S, C]} or
        {attr: (means, variances) [N, S]} — what acquisition (``ml.acquisition.lens_scores``) reads.

        Computed by ``LensModule.predictive_columns`` (``draws``: "qmc" or "antithetic"; designated dims only).
        """
        self._require_fitted()
        Z = self._check_Z(Z, fitted=True)
        z_std = torch.as_tensor(self._standardise(Z), dtype=torch.float32, device=self.device_)
        with torch.no_grad():
            return self.module_.predictive_columns(z_std, n_samples, draws)

    def sample_probs(self, Z: Any, n_samples: int = 32, seed: int | None = None) -> dict[str, Any]:
        """``predictive_samples`` as NumPy arrays: {attr: [N, S, C]} or {attr: (means [N, S], variances [N, S])}."""
        if seed is not None:
            torch.manual_seed(seed)
        return {k: _np(v) for k, v in self.predictive_samples(Z, n_samples).items()}

    # -- persistence (ml.persistence's interface; the format is ml.lens.checkpoint's) ----------------
    def _checkpoint(self) -> dict[str, Any]:
        self._require_fitted()
        return checkpoint.dump(self)

    @classmethod
    def _restore(cls, ckpt: Mapping[str, Any], device: str) -> InterpretableLens:
        return checkpoint.restore(cls, ckpt, device)


# The constructor's signature as tools see it (help(), IDEs, scikit-learn's get_params introspection):
# every LensConfig setting with its default, keyword-only, taken from the one table.
InterpretableLens.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("attributes", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("device", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="auto"),
        *[inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in LensConfig.defaults().items()],
    ]
)


def _as_double(flows: FlowStack) -> FlowStack:
    """A float64 CPU copy of the flow stack (the exact map runs in double precision)."""
    return copy.deepcopy(flows).to(device="cpu", dtype=torch.float64)


def _np(v: Any) -> Any:
    if isinstance(v, tuple):
        return tuple(_np(x) for x in v)
    return v.detach().cpu().numpy()
