"""Labels: the append-only history, validation against the attribute schema, idempotent submits, undo.

The current value of an attribute on an item is the latest non-retracted label row that gives it;
an item is "labelled" while at least one of its label rows is not retracted (``items.label_count``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, aliased

from app.db.base import utcnow
from app.db.models import Item, Label, Lease, Project, User
from app.services import jobs
from app.services.errors import Conflict, Forbidden, Invalid, NotFound
from app.services.users import has_role
from ml.attributes import Attribute as MlAttribute


@dataclass
class Submitted:
    """A submit's outcome: the label row, and whether it replays an earlier identical request."""

    label: Label
    replayed: bool = False


def validate_values(attrs: list[MlAttribute], values: Any, *, where: str = "values") -> dict[str, Any]:
    """Values checked against the schema: level names for discrete attributes, numbers for continuous.

    A missing (or null) attribute means "don't know"; at least one value is required.
    """
    if not isinstance(values, dict):
        raise Invalid(f"{where}: expected an object mapping attribute names to values")
    by_name = {a.name: a for a in attrs}
    out: dict[str, Any] = {}
    for name, value in values.items():
        attr = by_name.get(name)
        if attr is None:
            raise Invalid(f"{where}: unknown attribute {name!r} (known: {sorted(by_name)})")
        if value is None:
            continue
        try:
            if attr.is_discrete:
                if not isinstance(value, str):
                    raise ValueError(
                        f"attribute {name!r}: expected a level name (string), got {value!r} "
                        f"(levels: {list(attr.levels)})"
                    )
                attr.level_index(value)
                out[name] = value
            else:
                out[name] = attr.validate_value(value)
        except ValueError as exc:
            raise Invalid(f"{where}: {exc}") from None
    if not out:
        raise Invalid(f"{where}: give a value for at least one attribute")
    return out


def _request_hash(item_id: int, values: dict[str, Any], lease_id: str | None) -> str:
    payload = json.dumps({"item_id": item_id, "values": values, "lease_id": lease_id}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


_BY_KEY = sa.select(Label).where(Label.user_id == sa.bindparam("uid"), Label.idempotency_key == sa.bindparam("key"))


def _by_key(session: Session, user: User, key: str) -> Label | None:
    return session.scalar(_BY_KEY, {"uid": user.id, "key": key})


def _replay_or_conflict(existing: Label, request_hash: str, key: str) -> Submitted:
    if existing.request_hash != request_hash:
        raise Conflict(f"idempotency_key {key!r} was already used with a different request")
    return Submitted(existing, replayed=True)


# Statements of the label submit built once, values bound per call (building them cost more than
# running them); Core statements on the items table, which the session has no objects of to update.
_ITEMS = Item.__table__
_FREE_ITEM = (
    sa.update(_ITEMS)
    .where(_ITEMS.c.id == sa.bindparam("item"), _ITEMS.c.lease_id == sa.bindparam("lease"))
    .values(lease_id=None, lease_expires_at=None)
)
_COUNT_LABEL = sa.update(_ITEMS).where(_ITEMS.c.id == sa.bindparam("item")).values(label_count=_ITEMS.c.label_count + 1)


def _end_lease(session: Session, lease: Lease, reason: str, now: datetime) -> None:
    lease.ended_at = now
    lease.end_reason = reason
    session.execute(_FREE_ITEM, {"item": lease.item_id, "lease": lease.id})


def _lock_items(session: Session, item_ids: list[int]) -> None:
    """Row locks on the items (PostgreSQL; SQLite's write transaction holds the whole database), taken
    before their labels change so that the recount below sees every committed label of the item."""
    if session.get_bind().dialect.name == "postgresql" and item_ids:
        session.execute(sa.select(Item.id).where(Item.id.in_(sorted(item_ids))).order_by(Item.id).with_for_update())


def _recount_statement() -> sa.Update:
    # Built once: the statement is the same for every call (items and overlap are bound per call), and
    # building it (an alias, a correlated subquery) cost a third of a label submit's time.
    undo = aliased(Label)
    live = (
        sa.select(sa.func.count(sa.distinct(sa.func.coalesce(Label.user_id, -Label.id))))
        .where(
            Label.item_id == Item.id,
            Label.kind == "label",
            Label.adjudicated.is_(False),
            ~sa.exists().where(undo.retracts_id == Label.id),
        )
        .scalar_subquery()
    )
    return (
        sa.update(Item)
        .where(Item.id.in_(sa.bindparam("item_ids", expanding=True)))
        .values(labellers=live, labelled=live >= sa.bindparam("overlap"))
        .execution_options(synchronize_session=False)
    )


_RECOUNT = _recount_statement()


def recount_labellers(session: Session, item_ids: list[int], overlap: int) -> None:
    """Set ``labellers`` (distinct experts with a live label; a label whose author was deleted counts as
    its own expert) and ``labelled`` (at least ``overlap`` of them) of the items from their labels."""
    for chunk in _chunks(sorted(set(item_ids))):
        session.execute(_RECOUNT, {"item_ids": chunk, "overlap": overlap})


def submit(
    *,
    session: Session,
    item: Item,
    project: Project,
    attrs: list[MlAttribute],
    user: User,
    values: Any,
    idempotency_key: str | None,
    lease_id: str | None,
    retrain_every: int,
    project_id: int | None = None,
    overlap: int = 1,
) -> Submitted:
    """Store one label for ``item`` (ending the caller's lease on it) and maybe queue a retrain; committed.

    The item counts as labelled once ``overlap`` different experts have a live label on it."""
    if project_id is not None and project_id != item.project_id:
        raise Invalid(f"project_id: item {item.id} belongs to project {item.project_id}, not {project_id}")
    clean = validate_values(attrs, values)
    rhash = _request_hash(item.id, clean, lease_id)
    if idempotency_key:
        existing = _by_key(session, user, idempotency_key)
        if existing is not None:
            return _replay_or_conflict(existing, rhash, idempotency_key)
    now = utcnow()
    lease = None
    if lease_id is not None:
        lease = session.get(Lease, lease_id)
        if lease is None:
            raise Invalid(f"lease_id: no lease {lease_id!r}")
        if lease.user_id != user.id:
            raise Forbidden(f"lease_id: lease {lease_id!r} belongs to another user")
        if lease.item_id != item.id:
            raise Invalid(f"lease_id: lease {lease_id!r} is for item {lease.item_id}, not {item.id}")
        if lease.ended_at is not None:
            raise Conflict(f"lease {lease_id!r} already ended ({lease.end_reason})")
        if lease.expires_at <= now:
            raise Conflict(
                f"lease {lease_id!r} expired at {lease.expires_at.isoformat()}; "
                "submit without lease_id or pull the queue again"
            )
    label = Label(
        project_id=item.project_id,
        item_id=item.id,
        user_id=user.id,
        kind="label",
        values=clean,
        idempotency_key=idempotency_key or None,
        request_hash=rhash,
        eval=item.split == "eval",
        created_at=now,
    )
    _lock_items(session, [item.id])
    session.add(label)
    session.execute(_COUNT_LABEL, {"item": item.id})
    session.flush()
    recount_labellers(session, [item.id], overlap)
    own_live = (
        [lease]
        if lease is not None
        else list(
            session.scalars(
                sa.select(Lease).where(Lease.item_id == item.id, Lease.user_id == user.id, Lease.ended_at.is_(None))
            )
        )
    )
    for live in own_live:
        _end_lease(session, live, "labelled", now)
    try:
        session.flush()
        if not label.eval:
            jobs.maybe_enqueue_retrain(
                session=session, project_id=project.id, retrain_every=retrain_every, created_by=user.id
            )
        session.commit()
    except sa_exc.IntegrityError:
        # Two retries of one request raced: the unique (user, key) constraint let one through.
        session.rollback()
        if idempotency_key:
            existing = _by_key(session, user, idempotency_key)
            if existing is not None:
                return _replay_or_conflict(existing, rhash, idempotency_key)
        raise
    return Submitted(label)


def get_or_raise(*, session: Session, label_id: int) -> Label:
    """The label row with this id; NotFound otherwise."""
    label = session.get(Label, label_id)
    if label is None:
        raise NotFound(f"no label {label_id}")
    return label


def retract(*, session: Session, label: Label, user: User, overlap: int = 1) -> Label:
    """Undo a label by appending a retraction row (its author or an admin); committed."""
    if label.kind != "label":
        raise Invalid(f"label {label.id} is a retraction; retract the label it undoes instead")
    if label.user_id != user.id and not has_role(user, "admin"):
        raise Forbidden("only the label's author or an admin may retract it")
    if session.scalar(sa.select(Label.id).where(Label.retracts_id == label.id)) is not None:
        raise Conflict(f"label {label.id} is already retracted")
    row = Label(
        project_id=label.project_id,
        item_id=label.item_id,
        user_id=user.id,
        kind="retraction",
        values={},
        retracts_id=label.id,
        eval=label.eval,
    )
    _lock_items(session, [label.item_id])
    session.add(row)
    session.execute(
        sa.update(Item)
        .where(Item.id == label.item_id)
        .values(label_count=Item.label_count - 1)
        .execution_options(synchronize_session=False)
    )
    try:
        session.flush()
        recount_labellers(session, [label.item_id], overlap)
        session.commit()
    except sa_exc.IntegrityError:
        session.rollback()
        raise Conflict(f"label {label.id} is already retracted") from None
    return row


def live_labels_query(
    project_id: int | None = None, item_ids: Iterable[int] | None = None, eval: bool | None = None
) -> sa.Select:
    """Label rows that are not retracted (optionally of a project, some items, one side of the divide)."""
    undo = aliased(Label)
    q = sa.select(Label).outerjoin(undo, undo.retracts_id == Label.id).where(Label.kind == "label", undo.id.is_(None))
    if project_id is not None:
        q = q.where(Label.project_id == project_id)
    if item_ids is not None:
        q = q.where(Label.item_id.in_(list(item_ids)))
    if eval is not None:
        q = q.where(Label.eval.is_(eval))
    return q.order_by(Label.id)


def current_values(
    *, session: Session, item_ids: Iterable[int] | None = None, project_id: int | None = None, eval: bool | None = None
) -> dict[int, dict[str, Any]]:
    """item id → {attribute: current value}, from the latest non-retracted rows (``eval``: only that side)."""
    out: dict[int, dict[str, Any]] = {}
    for label in session.scalars(live_labels_query(project_id, item_ids, eval)):
        out.setdefault(label.item_id, {}).update(label.values)
    return out


def expert_labels(
    *, session: Session, project_id: int, eval: bool | None = None
) -> list[tuple[int, int, dict[str, Any], bool]]:
    """(item id, expert, values, adjudicated) of every live label in the order given; a label whose author
    was deleted counts as its own expert (``-label id``). What ``ml.annotators`` weighs when experts disagree."""
    q = live_labels_query(project_id, None, eval).with_only_columns(
        Label.id, Label.item_id, Label.user_id, Label.values, Label.adjudicated
    )
    return [
        (int(r.item_id), int(r.user_id) if r.user_id is not None else -int(r.id), dict(r.values), bool(r.adjudicated))
        for r in session.execute(q)
    ]


def history(*, session: Session, project_id: int) -> list[Label]:
    """Every label and retraction row of a project, in order."""
    return list(session.scalars(sa.select(Label).where(Label.project_id == project_id).order_by(Label.id)))


def label_out(label: Label) -> dict[str, Any]:
    """The public fields of a label row."""
    return {
        "id": label.id,
        "item_id": label.item_id,
        "project_id": label.project_id,
        "user_id": label.user_id,
        "kind": label.kind,
        "values": label.values,
        "retracts_id": label.retracts_id,
        "eval": label.eval,
        "adjudicated": label.adjudicated,
        "idempotency_key": label.idempotency_key,
        "created_at": label.created_at,
    }


def import_bulk(
    *,
    session: Session,
    project: Project,
    attrs: list[MlAttribute],
    rows: list[dict[str, Any]],
    user: User,
    retrain_every: int,
    overlap: int = 1,
) -> dict[str, int]:
    """Append many labels at once (all or nothing), e.g. known labels for the eval split; committed."""
    if not rows:
        raise Invalid("labels: give at least one row")
    ids = {int(r["item_id"]) for r in rows if r.get("item_id") is not None}
    sidx = {int(r["source_index"]) for r in rows if r.get("item_id") is None and r.get("source_index") is not None}
    items: dict[int, Item] = {}
    if ids:
        for chunk in _chunks(sorted(ids)):
            items.update({i.id: i for i in session.scalars(sa.select(Item).where(Item.id.in_(chunk)))})
    by_source: dict[int, list[Item]] = {}
    if sidx:
        for chunk in _chunks(sorted(sidx)):
            for i in session.scalars(
                sa.select(Item).where(Item.project_id == project.id, Item.source_index.in_(chunk))
            ):
                by_source.setdefault(i.source_index, []).append(i)
    errors: list[str] = []
    plan: list[tuple[Item, dict[str, Any], bool]] = []
    for k, r in enumerate(rows):
        where = f"labels[{k}]"
        if r.get("item_id") is not None:
            item = items.get(int(r["item_id"]))
            if item is None:
                errors.append(f"{where}.item_id: no item {r['item_id']}")
                continue
            if item.project_id != project.id:
                errors.append(f"{where}.item_id: item {item.id} belongs to project {item.project_id}, not {project.id}")
                continue
        elif r.get("source_index") is not None:
            found = by_source.get(int(r["source_index"]), [])
            if len(found) != 1:
                errors.append(f"{where}.source_index: {len(found)} items have source_index {r['source_index']}")
                continue
            item = found[0]
        else:
            errors.append(f"{where}: give item_id or source_index")
            continue
        try:
            clean = validate_values(attrs, r.get("values"), where=f"{where}.values")
        except Invalid as exc:
            errors.append(str(exc.detail))
            continue
        plan.append((item, clean, bool(r.get("eval", False))))
    if not errors:
        errors = _split_conflicts(session, plan)
    if errors:
        raise Invalid(errors if len(errors) > 1 else errors[0])
    now = utcnow()
    _lock_items(session, [item.id for item, _, _ in plan])
    counts: dict[int, int] = {}
    to_eval: set[int] = set()
    for item, _clean, is_eval in plan:
        counts[item.id] = counts.get(item.id, 0) + 1
        if is_eval and item.split != "eval":
            to_eval.add(item.id)
    if to_eval:
        for chunk in _chunks(sorted(to_eval)):
            session.execute(
                sa.update(Item)
                .where(Item.id.in_(chunk))
                .values(split="eval")
                .execution_options(synchronize_session=False)
            )
    session.execute(
        sa.insert(Label),
        [
            {
                "project_id": project.id,
                "item_id": item.id,
                "user_id": user.id,
                "kind": "label",
                "values": clean,
                "eval": is_eval,
                "created_at": now,
            }
            for item, clean, is_eval in plan
        ],
    )
    items_t = Item.__table__
    session.connection().execute(
        sa.update(items_t)
        .where(items_t.c.id == sa.bindparam("iid"))
        .values(label_count=items_t.c.label_count + sa.bindparam("n")),
        [{"iid": i, "n": n} for i, n in counts.items()],
    )
    session.flush()
    recount_labellers(session, list(counts), overlap)
    jobs.maybe_enqueue_retrain(session=session, project_id=project.id, retrain_every=retrain_every, created_by=user.id)
    session.commit()
    n_eval = sum(1 for _, _, e in plan if e)
    return {"imported": len(plan), "eval": n_eval, "train": len(plan) - n_eval, "items": len(counts)}


def _split_conflicts(session: Session, plan: list[tuple[Item, dict[str, Any], bool]]) -> list[str]:
    """Rows that would put an item's labels on both sides of the train/eval divide."""
    errors = []
    flags: dict[int, set[bool]] = {}
    for item, _, is_eval in plan:
        flags.setdefault(item.id, set()).add(is_eval)
    items = {item.id: item for item, _, _ in plan}
    for iid, fl in flags.items():
        item = items[iid]
        if len(fl) > 1:
            errors.append(f"item {iid}: rows disagree on eval")
        elif item.split == "eval" and False in fl:
            errors.append(f"item {iid} is in the eval split: its labels must have eval=true")
        elif True in fl and item.split == "pool" and item.label_count > 0:
            errors.append(f"item {iid} already has training labels: it cannot join the eval split")
    return errors


def _chunks(values: list[int], size: int = 500) -> Iterable[list[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]
