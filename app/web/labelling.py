"""What the labelling page needs besides the REST API: keyboard shortcuts per level, image scale, counters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from app.db.base import start_of_utc_day, utcnow
from app.db.models import Item, Label, Project, User

# Keys with a fixed meaning on the labelling page; level shortcuts never use them.
RESERVED_KEYS = frozenset({"s", "z", "p"})
# Index-based shortcuts, in order: 1…9, 0, then letters.
INDEX_KEYS = [k for k in "1234567890abcdefghijklmnopqrstuvwxy" if k not in RESERVED_KEYS]
DISPLAY_SIDE = 448  # CSS pixels of the image box on a desktop screen
MAX_SCALE = 16


def level_shortcuts(kind: str, levels: list[str]) -> list[dict[str, str | None]]:
    """One key per level: the level's own name when every name is a distinct single key, else 1…9, 0, a….

    Ordinal attributes whose levels are not single keys get 1…n, so thickness 1–5 reads as typed.
    """
    names = [str(v) for v in levels]
    own = [n.lower() for n in names]
    if (
        kind == "categorical"
        and all(len(n) == 1 and n.isalnum() for n in own)
        and len(set(own)) == len(own)
        and not RESERVED_KEYS & set(own)
    ):
        keys: list[str | None] = list(own)
    elif kind == "ordinal" and own == [str(i) for i in range(1, len(own) + 1)] and len(own) <= 9:
        keys = list(own)
    else:
        keys = [INDEX_KEYS[i] if i < len(INDEX_KEYS) else None for i in range(len(names))]
    return [{"name": n, "key": k} for n, k in zip(names, keys, strict=True)]


def attribute_controls(project: Project) -> list[dict[str, Any]]:
    """The project's attributes as the page renders them (levels with shortcuts, ranges with a step)."""
    out = []
    for a in project.attributes:
        if a.kind == "continuous":
            low = float(a.low) if a.low is not None else 0.0
            high = float(a.high) if a.high is not None else max(1.0, low + 1.0)
            span = high - low
            out.append(
                {
                    "name": a.name,
                    "kind": a.kind,
                    "low": low,
                    "high": high,
                    "step": span / 100 if span > 0 else 0.01,
                    "levels": [],
                }
            )
        else:
            out.append({"name": a.name, "kind": a.kind, "levels": level_shortcuts(a.kind, list(a.levels or []))})
    return out


def image_geometry(session: Session, project: Project) -> dict[str, int]:
    """Server scale and display size for the project's images: crisp integer upscaling to about 448 px."""
    row = session.execute(
        sa.select(Item.width, Item.height).where(Item.project_id == project.id, Item.width.is_not(None)).limit(1)
    ).first()
    w, h = (int(row.width or 0), int(row.height or 0)) if row else (0, 0)
    side = max(w, h, 1)
    if not row or side <= 0:
        return {"scale": 1, "width": DISPLAY_SIDE, "height": DISPLAY_SIDE}
    factor = max(1, DISPLAY_SIDE // side)  # integer CSS upscaling keeps every source pixel square
    scale = max(1, min(MAX_SCALE, factor))
    return {"scale": scale, "width": max(w, 1) * factor, "height": max(h, 1) * factor}


def counters(*, session: Session, project: Project, user: User, now: datetime | None = None) -> dict[str, int]:
    """Counts for the labelling page: my labels today (UTC, undone ones excluded), project and eval progress."""
    now = now or utcnow()
    start = start_of_utc_day(now)
    undo = aliased(Label)
    mine_today = (
        session.scalar(
            sa.select(sa.func.count(Label.id))
            .outerjoin(undo, undo.retracts_id == Label.id)
            .where(
                Label.project_id == project.id,
                Label.user_id == user.id,
                Label.kind == "label",
                Label.created_at >= start,
                undo.id.is_(None),
            )
        )
        or 0
    )
    row = session.execute(
        sa.select(
            sa.func.count(Item.id),
            sa.func.coalesce(sa.func.sum(sa.case((Item.labelled, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((Item.split == "eval", 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((sa.and_(Item.split == "eval", Item.labelled), 1), else_=0)), 0),
        ).where(Item.project_id == project.id)
    ).one()
    return {
        "mine_today": int(mine_today),
        "items": int(row[0]),
        "labelled": int(row[1]),
        "eval_items": int(row[2]),
        "eval_labelled": int(row[3]),
    }
