"""Data for the insights page: the z-versus-z* scatter (paper Figure 4) and the active model's metric table.

The maths stays in scikit-learn and ``ml``: PCA of z by ``sklearn.decomposition.PCA``, z* and
predictions by the active lens (loaded through ``app.services.models``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.db.models import Item, ModelVersion, Project
from app.services import labels, metric_reasons, models
from app.services.errors import NotFound, ServiceError

MAX_POINTS = 2000


def _pair_of_dims(attribute_dims: dict[str, Any], names: list[str], d: int) -> list[int]:
    """The z* dimensions to plot: the first two designated dims in attribute order, padded with free ones."""
    out: list[int] = []
    for name in names:
        for dim in np.asarray(attribute_dims.get(name, [])).astype(int).ravel().tolist():
            if dim not in out:
                out.append(dim)
    for dim in range(d):
        if len(out) >= 2:
            break
        if dim not in out:
            out.append(dim)
    return out[:2]


def scatter(*, session: Session, project: Project, attribute: str | None, limit: int = MAX_POINTS) -> dict[str, Any]:
    """Up to ``limit`` items: the first two principal components of z and two attribute dims of z*, coloured."""
    from sklearn.decomposition import PCA

    names = [a.name for a in project.attributes]
    attribute = attribute or (names[0] if names else None)
    attr = next((a for a in project.attributes if a.name == attribute), None)
    if attr is None:
        raise NotFound(f"project {project.id} has no attribute {attribute!r}")
    mv = models.active_or_raise(session=session, project_id=project.id)
    rep = models.active_representation(session=session, project_id=project.id)
    ids = np.asarray(
        session.scalars(sa.select(Item.id).where(Item.project_id == project.id).order_by(Item.id)).all(), dtype=np.int64
    )
    # An even spread over the project (deterministic, so two reloads draw the same points).
    if len(ids) > limit:
        ids = ids[np.linspace(0, len(ids) - 1, limit).round().astype(int)]
    Z = models.z_of(session=session, rep=rep, item_ids=ids.tolist())
    lens = models.load_lens(session=session, mv=mv)
    Zs = np.asarray(lens.transform(Z))
    n_comp = min(2, Z.shape[1], len(ids))
    pca = PCA(n_components=n_comp, random_state=0).fit(Z)
    P = pca.transform(Z)
    if n_comp < 2:
        P = np.hstack([P, np.zeros((len(P), 2 - n_comp))])
    attribute_dims = {
        k: np.asarray(v).astype(int).ravel().tolist() for k, v in dict(getattr(lens, "attribute_dims_", {})).items()
    }
    dims = _pair_of_dims(attribute_dims, [attribute, *[n for n in names if n != attribute]], Zs.shape[1])
    owner = {dim: name for name, ds in attribute_dims.items() for dim in ds}
    current = labels.current_values(session=session, item_ids=ids.tolist())
    proba = lens.predict_proba(Z)[attribute]
    if attr.kind == "continuous":
        predicted: list[Any] = [float(v) for v in np.asarray(proba[0]).ravel()]
    else:
        levels = list(attr.levels or [])
        predicted = [levels[int(i)] for i in np.asarray(proba).argmax(1)]
    values = [current.get(int(i), {}).get(attribute) for i in ids]

    def pairs(A: np.ndarray, cols: list[int]) -> list[list[float]]:
        return np.round(A[:, cols].astype(float), 4).tolist()

    return {
        "project_id": project.id,
        "model_version": mv.version,
        "model_id": mv.id,
        "attribute": attribute,
        "kind": attr.kind,
        "levels": list(attr.levels) if attr.levels else None,
        "low": attr.low,
        "high": attr.high,
        "z": {"axes": ["PC1", "PC2"], "explained_variance_ratio": np.round(pca.explained_variance_ratio_, 4).tolist()},
        "z_star": {"axes": [f"z*{d} ({owner.get(d, 'free')})" for d in dims], "dims": dims},
        "attribute_dims": attribute_dims,
        "points": {
            "item_id": ids.tolist(),
            "z": pairs(P, [0, 1]),
            "z_star": pairs(Zs, dims),
            "value": values,
            "predicted": predicted,
        },
    }


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def metric_table(
    mv: ModelVersion | None,
    project: Project,
    last_point: dict[str, Any] | None,
    designated: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Rows (one per attribute) of score, accuracy, chance, raw-z score and chosen dims, from the model's metrics.

    MIG and SAP are single numbers over all attributes (``ml.metrics.mig`` / ``sap``): the footer shows them.

    With k > 1 designated dims per attribute, ``k`` and each row's ``score_k`` / ``accuracy_k`` (and
    ``overall_k``) carry the metric on k dims beside the paper's one-dimension score.

    Reads the latest metric point of that model first (a retrain whose new version was held back
    re-measures the active one on the eval labels of the day), then what its own evaluation stored.
    """
    point = last_point or {}
    metrics = {**dict(mv.metrics or {}), **point} if mv is not None else {}
    reasons = metric_reasons.attribute_reasons(metrics or point)
    rows = []
    for a in project.attributes:
        m = _get(metrics, "attributes", a.name) or _get(point, "attributes", a.name) or {}
        dim = m.get("dim", m.get("dims"))
        chosen = [int(x) for x in (dim if isinstance(dim, list) else [dim])] if dim is not None else []
        own = (designated or {}).get(a.name) or []
        rows.append(
            {
                "name": a.name,
                "kind": a.kind,
                "score": m.get("score"),
                "accuracy": m.get("accuracy"),
                "score_k": m.get("score_k"),
                "accuracy_k": m.get("accuracy_k"),
                "chance": m.get("chance_score"),
                "z_score": m.get("z_score"),
                "dim": ", ".join(str(x) for x in dim) if isinstance(dim, list) else dim,
                "designated": ", ".join(str(x) for x in own) or None,
                # The attribute landed in its own dimension when the metric's choice is one the lens reserved
                # for it; None when either is unknown (not scored, or no loadable lens).
                "in_own_dim": (set(chosen) <= set(own)) if chosen and own else None,
                "why_unscored": reasons.get(a.name) if m.get("score") is None else None,
            }
        )
    overall = metrics.get("overall", point.get("overall"))
    mig = metrics.get("mig") if not isinstance(metrics.get("mig"), dict) else _get(metrics, "mig", "mean")
    sap = metrics.get("sap") if not isinstance(metrics.get("sap"), dict) else _get(metrics, "sap", "mean")
    k = metrics.get("dims_per_attribute", point.get("dims_per_attribute"))
    k = k if isinstance(k, int) and k > 1 else None
    chances = [r["chance"] for r in rows if r["chance"] is not None and r["score"] is not None]
    has_z = any(r["z_score"] is not None for r in rows)
    return {
        "rows": rows,
        # Chance and raw z averaged like "overall": over the attributes that were scored.
        "chance": sum(chances) / len(chances) if chances else None,
        "has_z": has_z,
        "baseline_overall": metrics.get("baseline_overall", point.get("baseline_overall")),
        "columns": 5 + (2 if k else 0) + (1 if has_z else 0),
        "overall": overall,
        "overall_accuracy": metrics.get("overall_accuracy"),
        # k > 1 designated dims per attribute: the table also shows the metric on k dims.
        "k": k,
        "overall_k": metrics.get("overall_k", point.get("overall_k")),
        "overall_accuracy_k": metrics.get("overall_accuracy_k", point.get("overall_accuracy_k")),
        "mig": mig,
        "sap": sap,
        "test_ll": metrics.get("test_ll", point.get("test_ll")),
        "n_labels": mv.n_labels if mv is not None else None,
        "mismatches": [r["name"] for r in rows if r["in_own_dim"] is False],
    }


def designated_dims(*, session: Session, mv: ModelVersion | None) -> dict[str, list[int]]:
    """The z* dimensions the active lens designates per attribute ({} without a loadable model)."""
    if mv is None:
        return {}
    try:
        lens = models.load_lens(session=session, mv=mv)
    except (ServiceError, ValueError, RuntimeError, KeyError):  # no usable checkpoint: a table without dims
        return {}
    return {
        k: np.asarray(v).astype(int).ravel().tolist() for k, v in dict(getattr(lens, "attribute_dims_", {})).items()
    }
