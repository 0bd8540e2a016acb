"""Experts' agreement per attribute (Krippendorff's α with a bootstrap interval, per expert against the
rest), the items on which they disagree, and an admin's resolution of one (``ml.annotators`` does the maths)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Item, Label, Project, User
from app.services import labels, models
from app.services.errors import Invalid
from app.services.projects import schema
from ml import annotators

BOOTSTRAP = 300


def _usernames(session: Session, ids: list[int]) -> dict[int, str]:
    known = [i for i in ids if i >= 0]
    if not known:
        return {}
    return dict(session.execute(sa.select(User.id, User.username).where(User.id.in_(known))).all())


# The bootstrap costs seconds on tens of thousands of items (the package's coincidence matrices), and
# the answer changes only with the labels: kept per project, keyed by the newest label row and count.
_cache = models.LRU(size=32)


def project_agreement(*, session: Session, project: Project, overlap: int, n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """Per attribute: α at its level of measurement, its 95% bootstrap interval, the items and labels it
    rests on, and per expert their α and exact agreement with the others' consensus on shared items."""
    newest, n_rows = session.execute(
        sa.select(sa.func.max(Label.id), sa.func.count(Label.id)).where(Label.project_id == project.id)
    ).one()
    schema_key = tuple((a.name, a.kind, tuple(a.levels or ())) for a in project.attributes)
    key = (id(session.get_bind().pool), project.id, newest, n_rows, overlap, n_boot, schema_key)
    return _cache.get(key, lambda: _compute(session, project, overlap, n_boot))


def _compute(session: Session, project: Project, overlap: int, n_boot: int) -> dict[str, Any]:
    rows = labels.expert_labels(session=session, project_id=project.id)
    item_ids = sorted({r[0] for r in rows})
    pos = {iid: k for k, iid in enumerate(item_ids)}
    experts: dict[Any, int] = {}
    per_attr: dict[str, annotators.Labels] = {}
    for a in schema(project):
        per_attr[a.name] = annotators.collect(rows, a, pos, experts)[0]
    names = _usernames(session, list(experts))
    by_index = {k: who for who, k in experts.items()}
    out: dict[str, Any] = {}
    for a in schema(project):
        res = annotators.agreement(per_attr[a.name], a, len(item_ids), len(experts), n_boot=n_boot)
        expert_rows = [
            {
                "user_id": by_index[e] if by_index[e] >= 0 else None,
                "username": names.get(by_index[e], "(deleted user)"),
                **{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in stats.items()},
            }
            for e, stats in res["experts"].items()
        ]
        expert_rows.sort(key=lambda r: (r["alpha"] is None, r["alpha"] if r["alpha"] is not None else 0.0))
        out[a.name] = {
            "level": res["level"],
            "alpha": res["alpha"] if np.isfinite(res["alpha"]) else None,
            "low": res["low"],
            "high": res["high"],
            "n_items": res["n_items"],
            "n_labels": res["n_labels"],
            "experts": expert_rows,
        }
    return {"overlap": overlap, "bootstrap": n_boot, "attributes": out}


def disagreements(
    *, session: Session, project: Project, attribute: str | None, limit: int, include_resolved: bool = False
) -> dict[str, Any]:
    """Items whose experts gave different values (for one attribute or any), most split first: per item
    and attribute the labels (who, what, when), the value counts and any adjudication."""
    attrs = {a.name: a for a in schema(project)}
    if attribute is not None and attribute not in attrs:
        raise Invalid(f"attribute: project {project.id} has no attribute {attribute!r} (known: {sorted(attrs)})")
    q = (
        labels.live_labels_query(project.id)
        .with_only_columns(Label.id, Label.item_id, Label.user_id, Label.values, Label.adjudicated, Label.created_at)
        .order_by(Label.id)
    )
    by_item: dict[int, list[Any]] = defaultdict(list)
    for r in session.execute(q):
        by_item[int(r.item_id)].append(r)
    names = _usernames(session, sorted({int(r.user_id) for rs in by_item.values() for r in rs if r.user_id}))
    found = []
    for iid, rs in by_item.items():
        entry: dict[str, Any] = {}
        for name in [attribute] if attribute else list(attrs):
            # Each expert's own latest value counts once, as in the agreement.
            latest: dict[Any, Any] = {}
            settled = None
            for r in rs:
                if name in r.values:
                    if r.adjudicated:
                        settled = r
                    else:
                        latest[r.user_id if r.user_id is not None else -r.id] = r
            values = Counter(str(r.values[name]) for r in latest.values())
            if len(values) < 2 or (settled is not None and not include_resolved):
                continue
            entry[name] = {
                "counts": dict(values),
                "split": 1.0 - max(values.values()) / sum(values.values()),
                "labels": [
                    {
                        "label_id": r.id,
                        "user_id": r.user_id,
                        "username": names.get(r.user_id, "(deleted user)"),
                        "value": r.values[name],
                        "created_at": r.created_at,
                    }
                    for r in latest.values()
                ],
                "resolved": None
                if settled is None
                else {"label_id": settled.id, "value": settled.values[name], "user_id": settled.user_id},
            }
        if entry:
            found.append({"item_id": iid, "attributes": entry, "split": max(e["split"] for e in entry.values())})
    found.sort(key=lambda e: (-e["split"], e["item_id"]))
    return {"n": len(found), "items": found[:limit]}


def resolve(*, session: Session, project: Project, item: Item, user: User, values: Any) -> Label:
    """An admin's resolution: a new label marked adjudicated, which becomes the item's target (and its
    current value) while every expert's label stays in the history and in the agreement; committed."""
    if item.project_id != project.id:
        raise Invalid(f"item {item.id} belongs to project {item.project_id}, not {project.id}")
    clean = labels.validate_values(schema(project), values)
    label = Label(
        project_id=project.id,
        item_id=item.id,
        user_id=user.id,
        kind="label",
        values=clean,
        eval=item.split == "eval",
        adjudicated=True,
        created_at=utcnow(),
    )
    session.add(label)
    session.execute(
        sa.update(Item)
        .where(Item.id == item.id)
        .values(label_count=Item.label_count + 1)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return label
