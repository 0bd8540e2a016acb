"""The labelling queue: hand out items by acquisition score under a lease, race-free on SQLite and PostgreSQL.

Claiming is a conditional UPDATE (free and unlabelled → leased to me); its row count says who won, so
two requests can never lease one item however their transactions interleave. On PostgreSQL the
candidate scan also takes ``FOR UPDATE SKIP LOCKED`` so concurrent callers look at different rows.
"""

from __future__ import annotations

import functools
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import start_of_utc_day, utcnow
from app.db.models import Item, Label, Lease, Project, Score, Skip, User
from app.services import models
from app.services.errors import Conflict, Forbidden, NotFound
from app.services.projects import effective_settings
from app.services.users import has_role
from ml.strategies import batch_rule, scored_strategy

MAX_BATCH = 100
# Candidates fetched beyond the number needed, in case concurrent callers win some of them first
# (SQLite). PostgreSQL locks the candidates it reads (FOR UPDATE SKIP LOCKED), so every one it sees is
# its own to claim, and extra ones would only hide items from concurrent callers: there, no slack.
SLACK = 8


# The queue's statements are built once per shape and cached, with every value bound per call:
# building a statement (coercing each comparison, computing its cache key) cost more than SQLite
# took to run it, and the queue runs under the write lock. They are Core statements on the tables,
# so no ORM bookkeeping runs for rows that are only ids.
_ITEMS = Item.__table__
_LEASES = Lease.__table__
_SCORES = Score.__table__
_SKIPS = Skip.__table__
_LABELS = Label.__table__


def _free_where() -> sa.ColumnElement[bool]:
    """Free items of project ``:pid`` at ``:now``: unlabelled, and not under a live lease."""
    c = _ITEMS.c
    return sa.and_(
        c.project_id == sa.bindparam("pid"),
        c.labelled.is_(False),
        sa.or_(c.lease_expires_at.is_(None), c.lease_expires_at < sa.bindparam("now")),
    )


def _not_skipped_where() -> sa.ColumnElement[bool]:
    # Items this user skipped stay away from them until the skip lapses; other experts see them as usual.
    return _ITEMS.c.id.not_in(
        sa.select(_SKIPS.c.item_id).where(
            _SKIPS.c.project_id == sa.bindparam("pid"),
            _SKIPS.c.user_id == sa.bindparam("uid"),
            _SKIPS.c.until > sa.bindparam("now"),
        )
    )


def _not_labelled_where() -> sa.ColumnElement[bool]:
    # With overlap, an item goes to several experts, never twice to one: not to anyone who labelled it.
    return _ITEMS.c.id.not_in(
        sa.select(_LABELS.c.item_id).where(
            _LABELS.c.project_id == sa.bindparam("pid"),
            _LABELS.c.user_id == sa.bindparam("uid"),
            _LABELS.c.kind == "label",
        )
    )


@dataclass(frozen=True)
class _Pool:
    """Which free items a candidate scan looks at: the shape of its WHERE clause (values are bound)."""

    split: str
    fresh: bool = False  # nobody labelled them yet
    not_mine: bool = False  # overlap > 1: not labelled by the caller

    def where(self) -> sa.ColumnElement[bool]:
        conds = [_free_where(), _not_skipped_where(), _ITEMS.c.split == self.split]
        if self.not_mine:
            conds.append(_not_labelled_where())
        if self.fresh:
            conds.append(_ITEMS.c.labellers == 0)
        return sa.and_(*conds)


@functools.cache
def _candidates_sql(kind: str, pool: _Pool, postgres: bool) -> sa.Select:
    """The candidate scan ``kind`` over ``pool``; binds pid, uid, now, m (how many), and per kind
    u (random start), mv and strategy (scores)."""
    where = pool.where()
    m = sa.bindparam("m")
    if kind == "partial":
        # Items other experts began come first, those nearest their overlap first: finished items are
        # what agreement and consensus are measured on.
        q = sa.select(_ITEMS.c.id, sa.null()).where(where, _ITEMS.c.labellers > 0)
        q = q.order_by(_ITEMS.c.labellers.desc(), _ITEMS.c.id)
    elif kind in ("random_from", "random_before"):
        # Items carry a uniform random key fixed at import; starting at a fresh random point gives each
        # call a uniformly random free item first, using the index instead of ORDER BY random().
        u = sa.bindparam("u")
        part = _ITEMS.c.random_key >= u if kind == "random_from" else _ITEMS.c.random_key < u
        q = sa.select(_ITEMS.c.id, sa.null()).where(where, part).order_by(_ITEMS.c.random_key)
    elif kind == "scored":
        q = (
            sa.select(_ITEMS.c.id, _SCORES.c.score)
            .join(_SCORES, _SCORES.c.item_id == _ITEMS.c.id)
            .where(_SCORES.c.model_version_id == sa.bindparam("mv"), _SCORES.c.strategy == sa.bindparam("strategy"))
            .where(where)
            .order_by(_SCORES.c.score.desc(), _ITEMS.c.id)
        )
    elif kind == "cold":
        q = sa.select(_ITEMS.c.id, sa.null()).where(where, _ITEMS.c.cold_rank.is_not(None))
        q = q.order_by(_ITEMS.c.cold_rank)
    else:
        raise ValueError(f"unknown candidate scan {kind!r}")
    q = q.limit(m)
    if postgres:
        q = q.with_for_update(skip_locked=True, of=_ITEMS)
    return q


def _candidates(session: Session, kind: str, pool: _Pool, m: int, **params: Any) -> list[tuple[int, float | None]]:
    """Up to ``m`` candidate items (id, score or None) of the scan ``kind``; ``params``: pid, uid, now, ..."""
    if m <= 0:
        return []
    postgres = session.get_bind().dialect.name == "postgresql"
    if kind == "random":
        # From a fresh random point to the end of the keys, then from the start up to it.
        params["u"] = random.random()
        out = _candidates(session, "random_from", pool, m, **params)
        if len(out) < m:
            out += _candidates(session, "random_before", pool, m - len(out), **params)
        return out
    rows = session.execute(_candidates_sql(kind, pool, postgres), {**params, "m": m})
    return [(int(i), None if s is None else float(s)) for i, s in rows]


def skip_until(now: datetime, skip_hours: float | None) -> datetime:
    """When a skip made at ``now`` lapses: after ``skip_hours``, or at the next midnight UTC when unset."""
    if skip_hours is None:
        return start_of_utc_day(now) + timedelta(days=1)
    return now + timedelta(hours=float(skip_hours))


_HAS_COLD_RANKS = (
    sa.select(_ITEMS.c.id).where(_ITEMS.c.project_id == sa.bindparam("pid"), _ITEMS.c.cold_rank.is_not(None)).limit(1)
)


def _has_cold_ranks(session: Session, project_id: int) -> bool:
    return session.scalar(_HAS_COLD_RANKS, {"pid": project_id}) is not None


def _order(project: Project, model: Any, has_cold: bool) -> dict[str, str]:
    """How new pool items are ordered for this project now, and why (the queue's response says it)."""
    if project.strategy == "random":
        return {"order": "random", "order_reason": "the project's strategy is random"}
    if model is not None:
        scores = scored_strategy(project.strategy)
        rule = batch_rule(project.strategy)
        if rule is not None:
            auto = " (auto)" if project.strategy == "auto" else ""
            return {
                "order": "batch",
                "order_reason": f"the {rule}{auto} batch of model version {model.version} for this round, "
                f"then {scores} scores",
            }
        return {"order": "scores", "order_reason": f"{scores} scores of model version {model.version}"}
    if has_cold:
        return {
            "order": "cold_start",
            "order_reason": "no lens is live yet: items that cover the base representation z (TypiClust), then random",
        }
    return {
        "order": "random",
        "order_reason": "no lens and no cold-start order of z yet (the pretrain job has not finished): random",
    }


def _claim_sql(to_eval: bool) -> sa.Update:
    values: dict[str, Any] = {"lease_id": sa.bindparam("new_lease"), "lease_expires_at": sa.bindparam("expires")}
    if to_eval:
        values["split"] = "eval"
    return sa.update(_ITEMS).where(_ITEMS.c.id == sa.bindparam("item"), _free_where()).values(**values)


_CLAIM = {False: _claim_sql(False), True: _claim_sql(True)}

_MY_LIVE_LEASES = (
    sa.select(Lease)
    .where(
        Lease.project_id == sa.bindparam("pid"),
        Lease.user_id == sa.bindparam("uid"),
        Lease.ended_at.is_(None),
        Lease.expires_at > sa.bindparam("now"),
    )
    .order_by(Lease.created_at)
    .limit(sa.bindparam("m"))
)

# Leases that lapsed on the items just claimed are closed as expired, for an honest history.
_CLOSE_LAPSED = (
    sa.update(_LEASES)
    .where(
        _LEASES.c.item_id.in_(sa.bindparam("items", expanding=True)),
        _LEASES.c.ended_at.is_(None),
        _LEASES.c.id.not_in(sa.bindparam("new_leases", expanding=True)),
    )
    .values(ended_at=_LEASES.c.expires_at, end_reason="expired")
)


def _claim(session: Session, item_id: int, lease_id: str, expires: datetime, to_eval: bool, **params: Any) -> bool:
    # A conditional UPDATE: its row count says whether this caller won the item.
    res = session.execute(_CLAIM[to_eval], {**params, "item": item_id, "new_lease": lease_id, "expires": expires})
    return res.rowcount == 1


def _entry(
    item_id: int, lease_id: str, expires_at: datetime, to_eval: bool, score: float | None, resumed: bool
) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "lease_id": lease_id,
        "expires_at": expires_at,
        "eval": to_eval,
        "score": score,
        "image_url": f"/api/v1/items/{item_id}/image.png",
        "resumed": resumed,
    }


def lease_out(lease: Lease, *, resumed: bool = False) -> dict[str, Any]:
    """A queue entry as the API returns it."""
    return _entry(lease.item_id, lease.id, lease.expires_at, lease.eval, lease.score, resumed)


def next_batch(
    *,
    session: Session,
    project: Project,
    user: User,
    n: int,
    lease_seconds: float,
    eval_fraction: float,
    now: datetime | None = None,
    rng: random.Random | None = None,
    overlap: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Up to ``n`` items leased to ``user``: their own live leases first, then new ones; committed.
    Also how new pool items were ordered (``order``, ``order_reason``).

    With ``overlap`` > 1 an item stays in the queue until that many different experts labelled it,
    is never handed to an expert who labelled it, and items others began come before new ones; an
    item is still leased to one expert at a time.

    New slots are eval hand-outs with probability ``eval_fraction`` (uniformly random items that join
    the held-out split), otherwise the highest acquisition scores of the active model; before a model
    exists, the cold-start diversity order of z (the returned ``order`` says which), then random order (always
    random when the strategy is "random").
    """
    n = max(1, min(int(n), MAX_BATCH))
    now = now or utcnow()
    rng = rng or random.Random()
    expires = now + timedelta(seconds=lease_seconds)
    bound = {"pid": project.id, "uid": user.id, "now": now}
    mine = list(session.scalars(_MY_LIVE_LEASES, {**bound, "m": n}))
    out = [lease_out(lease, resumed=True) for lease in mine]
    model = models.active_ref(session=session, project_id=project.id) if project.strategy != "random" else None
    has_cold = model is None and project.strategy != "random" and _has_cold_ranks(session, project.id)
    order = _order(project, model, has_cold)
    need = n - len(out)
    if need <= 0:
        session.commit()
        return out, order
    n_eval = sum(rng.random() < eval_fraction for _ in range(need))
    slack = 0 if session.get_bind().dialect.name == "postgresql" else SLACK
    new_leases: list[dict[str, Any]] = []

    def take(kind: str, pool: _Pool, k: int, to_eval: bool, **scan: Any) -> int:
        won = 0
        for item_id, score in _candidates(session, kind, pool, k + slack, **bound, **scan):
            if won >= k:
                break
            lid = uuid.uuid4().hex
            if _claim(session, item_id, lid, expires, to_eval, **bound):
                # Stamped after the claim won, so a lease never appears to start before the previous
                # holder's release committed (the claim could only succeed after it).
                new_leases.append(
                    {
                        "id": lid,
                        "project_id": project.id,
                        "item_id": item_id,
                        "user_id": user.id,
                        "eval": to_eval,
                        "score": score,
                        "created_at": utcnow(),
                        "expires_at": expires,
                    }
                )
                won += 1
        return won

    not_mine = overlap > 1
    if not_mine:
        for split in ("eval", "pool"):
            if need > 0:
                need -= take("partial", _Pool(split, not_mine=True), need, split == "eval")
        n_eval = min(n_eval, need)
    got_eval = 0
    if n_eval:
        # Unfinished eval items (released, expired or retracted) first, so the held-out set fills up.
        got_eval = take("random", _Pool("eval", not_mine=not_mine), n_eval, True)
        if got_eval < n_eval:
            # A new eval item is one nobody labelled yet: labels given for training never move to the held-out side.
            got_eval += take("random", _Pool("pool", fresh=True, not_mine=not_mine), n_eval - got_eval, True)
    k = need - got_eval
    if k > 0:
        # With overlap, the partly labelled ones were offered above.
        pool = _Pool("pool", fresh=not_mine, not_mine=not_mine)
        won = 0
        if model is not None:
            rule = batch_rule(project.strategy)
            if rule is not None:
                # The round's batch first: every expert draws from the one diverse batch the worker ranked.
                won = take("scored", pool, k, False, mv=model.id, strategy=rule)
            if won < k:
                scores = scored_strategy(project.strategy)
                won += take("scored", pool, k - won, False, mv=model.id, strategy=scores)
        elif has_cold:
            # Cold start: before the first lens, the diversity order the pretrain stored (cold_rank).
            won = take("cold", pool, k, False)
        if won < k:
            # Items without a score (imported after the model) or no model yet: random order.
            take("random", pool, k - won, False)
    if new_leases:
        session.execute(sa.insert(_LEASES), new_leases)
        session.execute(
            _CLOSE_LAPSED,
            {"items": [x["item_id"] for x in new_leases], "new_leases": [x["id"] for x in new_leases]},
        )
    session.commit()
    fresh = [_entry(x["item_id"], x["id"], expires, x["eval"], x["score"], False) for x in new_leases]
    return out + fresh, order


def release(*, session: Session, lease_id: str, user: User, settings: Settings) -> Lease:
    """Skip: give a leased item back to the pool; the holder or an admin may. Committed.

    When the holder skips, the item's skip count goes up and they are not handed it again until
    ``skip_until`` (the project's ``skip_hours``); other experts get it in the usual order meanwhile.
    An admin ending someone else's lease frees the item without counting a skip.
    """
    lease = session.get(Lease, lease_id)
    if lease is None:
        raise NotFound(f"no lease {lease_id!r}")
    if lease.user_id != user.id and not has_role(user, "admin"):
        raise Forbidden(f"lease {lease_id!r} belongs to another user")
    if lease.ended_at is not None:
        raise Conflict(f"lease {lease_id!r} already ended ({lease.end_reason})")
    now = utcnow()
    if lease.expires_at <= now:
        lease.ended_at, lease.end_reason = lease.expires_at, "expired"
        session.commit()
        raise Conflict(f"lease {lease_id!r} expired at {lease.expires_at.isoformat()}")
    lease.ended_at, lease.end_reason = now, "released"
    session.execute(
        sa.update(Item)
        .where(Item.id == lease.item_id, Item.lease_id == lease.id)
        .values(lease_id=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    if lease.user_id == user.id:
        project = session.get(Project, lease.project_id)
        skip_hours = effective_settings(project, settings)["skip_hours"] if project is not None else None
        session.execute(
            sa.update(Item)
            .where(Item.id == lease.item_id)
            .values(skip_count=Item.skip_count + 1)
            .execution_options(synchronize_session=False)
        )
        session.add(
            Skip(
                project_id=lease.project_id,
                item_id=lease.item_id,
                user_id=user.id,
                lease_id=lease.id,
                created_at=now,
                until=skip_until(now, skip_hours),
            )
        )
    session.commit()
    return lease


def my_skips(*, session: Session, project: Project, user: User, now: datetime | None = None) -> dict[str, Any]:
    """How many unlabelled items ``user`` skipped that are still kept from them, and when the first returns."""
    now = now or utcnow()
    row = session.execute(
        sa.select(sa.func.count(sa.distinct(Skip.item_id)), sa.func.min(Skip.until))
        .join(Item, Item.id == Skip.item_id)
        .where(Skip.project_id == project.id, Skip.user_id == user.id, Skip.until > now, Item.labelled.is_(False))
    ).one()
    return {"skipped": int(row[0] or 0), "next_return_at": row[1]}


def labellers(*, session: Session, project: Project) -> list[int]:
    """Ids of the project's active experts: active accounts allowed to label that have held one of its leases."""
    q = (
        sa.select(User.id)
        .where(
            User.active.is_(True),
            User.role.in_(("expert", "admin")),
            User.id.in_(sa.select(Lease.user_id).where(Lease.project_id == project.id)),
        )
        .order_by(User.id)
    )
    return [int(i) for i in session.scalars(q)]


def skipped_by_all(*, session: Session, project: Project, limit: int = 100) -> dict[str, Any]:
    """Unlabelled items that every active expert of the project has skipped (at any time), most skipped first.

    Such an item may be unjudgeable (blurred, off-topic, a missing level): the admin decides what to do.
    """
    experts = labellers(session=session, project=project)
    out: dict[str, Any] = {"experts": len(experts), "items": []}
    if not experts:
        return out
    skippers = sa.func.count(sa.distinct(Skip.user_id))
    q = (
        sa.select(Item.id, Item.skip_count, Item.split, sa.func.max(Skip.created_at))
        .join(Skip, Skip.item_id == Item.id)
        .where(Item.project_id == project.id, Item.labelled.is_(False), Skip.user_id.in_(experts))
        .group_by(Item.id, Item.skip_count, Item.split)
        .having(skippers >= len(experts))
        .order_by(Item.skip_count.desc(), Item.id)
        .limit(limit)
    )
    out["items"] = [
        {
            "item_id": int(i),
            "skip_count": int(c),
            "split": split,
            "last_skipped_at": last,
            "image_url": f"/api/v1/items/{int(i)}/image.png",
        }
        for i, c, split, last in session.execute(q)
    ]
    return out
