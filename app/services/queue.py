"""The labelling queue: hand out items by acquisition score under a lease, race-free on SQLite and PostgreSQL.

Claiming is a conditional UPDATE (free and unlabelled → leased to me); its row count says who won, so
two requests can never lease one item however their transactions interleave. On PostgreSQL the
candidate scan also takes ``FOR UPDATE SKIP LOCKED`` so concurrent callers look at different rows.
"""

from __future__ import annotations

import random
import uuid
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


def _free(project_id: int, now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        Item.project_id == project_id,
        Item.labelled.is_(False),
        sa.or_(Item.lease_expires_at.is_(None), Item.lease_expires_at < now),
    )


def _not_skipped_by(project_id: int, user_id: int, now: datetime) -> sa.ColumnElement[bool]:
    # Items this user skipped stay away from them until the skip lapses; other experts see them as usual.
    return Item.id.not_in(
        sa.select(Skip.item_id).where(Skip.project_id == project_id, Skip.user_id == user_id, Skip.until > now)
    )


def _not_labelled_by(project_id: int, user_id: int) -> sa.ColumnElement[bool]:
    # With overlap, an item goes to several experts, never twice to one: not to anyone who labelled it.
    return Item.id.not_in(
        sa.select(Label.item_id).where(Label.project_id == project_id, Label.user_id == user_id, Label.kind == "label")
    )


def _partial_candidates(session: Session, cond: sa.ColumnElement[bool], m: int) -> list[tuple[int, None]]:
    # Items other experts began come first, those nearest their overlap first: finished items are
    # what agreement and consensus are measured on.
    q = sa.select(Item.id).where(cond, Item.labellers > 0).order_by(Item.labellers.desc(), Item.id).limit(m)
    return [(int(i), None) for i in session.scalars(_lock(q, session))]


def skip_until(now: datetime, skip_hours: float | None) -> datetime:
    """When a skip made at ``now`` lapses: after ``skip_hours``, or at the next midnight UTC when unset."""
    if skip_hours is None:
        return start_of_utc_day(now) + timedelta(days=1)
    return now + timedelta(hours=float(skip_hours))


def _lock(q: sa.Select, session: Session) -> sa.Select:
    if session.get_bind().dialect.name == "postgresql":
        return q.with_for_update(skip_locked=True, of=Item)
    return q


def _random_candidates(session: Session, cond: sa.ColumnElement[bool], m: int) -> list[tuple[int, None]]:
    # Items carry a uniform random key fixed at import; starting at a fresh random point gives each
    # call a uniformly random free item first, using the index instead of ORDER BY random().
    u = random.random()
    out: list[tuple[int, None]] = []
    for part in (Item.random_key >= u, Item.random_key < u):
        if len(out) >= m:
            break
        q = sa.select(Item.id).where(cond, part).order_by(Item.random_key).limit(m - len(out))
        out.extend((i, None) for i in session.scalars(_lock(q, session)))
    return out


def _scored_candidates(
    session: Session, cond: sa.ColumnElement[bool], model_version_id: int, strategy: str, m: int
) -> list[tuple[int, float]]:
    q = (
        sa.select(Item.id, Score.score)
        .join(Score, Score.item_id == Item.id)
        .where(Score.model_version_id == model_version_id, Score.strategy == strategy, cond)
        .order_by(Score.score.desc(), Item.id)
        .limit(m)
    )
    return [(int(i), float(s)) for i, s in session.execute(_lock(q, session))]


def _cold_candidates(session: Session, cond: sa.ColumnElement[bool], m: int) -> list[tuple[int, None]]:
    q = sa.select(Item.id).where(cond, Item.cold_rank.is_not(None)).order_by(Item.cold_rank).limit(m)
    return [(int(i), None) for i in session.scalars(_lock(q, session))]


def _has_cold_ranks(session: Session, project_id: int) -> bool:
    q = sa.select(Item.id).where(Item.project_id == project_id, Item.cold_rank.is_not(None)).limit(1)
    return session.scalar(q) is not None


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


def _claim(
    session: Session, item_id: int, lease_id: str, expires: datetime, now: datetime, *, project_id: int, to_eval: bool
) -> bool:
    values: dict[str, Any] = {"lease_id": lease_id, "lease_expires_at": expires}
    if to_eval:
        values["split"] = "eval"
    res = session.execute(
        sa.update(Item)
        .where(Item.id == item_id, _free(project_id, now))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def lease_out(lease: Lease, *, resumed: bool = False) -> dict[str, Any]:
    """A queue entry as the API returns it."""
    return {
        "item_id": lease.item_id,
        "lease_id": lease.id,
        "expires_at": lease.expires_at,
        "eval": lease.eval,
        "score": lease.score,
        "image_url": f"/api/v1/items/{lease.item_id}/image.png",
        "resumed": resumed,
    }


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
    mine = list(
        session.scalars(
            sa.select(Lease)
            .where(
                Lease.project_id == project.id,
                Lease.user_id == user.id,
                Lease.ended_at.is_(None),
                Lease.expires_at > now,
            )
            .order_by(Lease.created_at)
            .limit(n)
        )
    )
    out = [lease_out(lease, resumed=True) for lease in mine]
    model = models.active(session=session, project_id=project.id) if project.strategy != "random" else None
    has_cold = model is None and project.strategy != "random" and _has_cold_ranks(session, project.id)
    order = _order(project, model, has_cold)
    need = n - len(out)
    if need <= 0:
        session.commit()
        return out, order
    n_eval = sum(rng.random() < eval_fraction for _ in range(need))
    slack = 0 if session.get_bind().dialect.name == "postgresql" else SLACK
    new_leases: list[Lease] = []

    def take(candidates: list[tuple[int, float | None]], k: int, to_eval: bool) -> int:
        won = 0
        for item_id, score in candidates:
            if won >= k:
                break
            lid = uuid.uuid4().hex
            if _claim(session, item_id, lid, expires, now, project_id=project.id, to_eval=to_eval):
                # Stamped after the claim won, so a lease never appears to start before the previous
                # holder's release committed (the claim could only succeed after it).
                new_leases.append(
                    Lease(
                        id=lid,
                        project_id=project.id,
                        item_id=item_id,
                        user_id=user.id,
                        eval=to_eval,
                        score=score,
                        created_at=utcnow(),
                        expires_at=expires,
                    )
                )
                won += 1
        return won

    free = sa.and_(_free(project.id, now), _not_skipped_by(project.id, user.id, now))
    if overlap > 1:
        free = sa.and_(free, _not_labelled_by(project.id, user.id))
        for split in ("eval", "pool"):
            if need > 0:
                cond = sa.and_(free, Item.split == split)
                need -= take(_partial_candidates(session, cond, need + slack), need, split == "eval")
        n_eval = min(n_eval, need)
    # A new eval item is one nobody labelled yet: labels given for training never move to the held-out side.
    fresh = Item.labellers == 0
    got_eval = 0
    if n_eval:
        # Unfinished eval items (released, expired or retracted) first, so the held-out set fills up.
        got_eval = take(_random_candidates(session, sa.and_(free, Item.split == "eval"), n_eval + slack), n_eval, True)
        if got_eval < n_eval:
            got_eval += take(
                _random_candidates(session, sa.and_(free, fresh, Item.split == "pool"), n_eval - got_eval + slack),
                n_eval - got_eval,
                True,
            )
    k = need - got_eval
    if k > 0 and overlap > 1:
        free = sa.and_(free, fresh)  # the partly labelled ones were offered above
    if k > 0:
        pool = sa.and_(free, Item.split == "pool")
        won = 0
        if model is not None:
            rule = batch_rule(project.strategy)
            if rule is not None:
                # The round's batch first: every expert draws from the one diverse batch the worker ranked.
                won = take(_scored_candidates(session, pool, model.id, rule, k + slack), k, False)
            if won < k:
                scores = scored_strategy(project.strategy)
                won += take(_scored_candidates(session, pool, model.id, scores, k - won + slack), k - won, False)
        elif has_cold:
            # Cold start: before the first lens, the diversity order the pretrain stored (cold_rank).
            won = take(_cold_candidates(session, pool, k + slack), k, False)
        if won < k:
            # Items without a score (imported after the model) or no model yet: random order.
            take(_random_candidates(session, pool, k - won + slack), k - won, False)
    if new_leases:
        session.add_all(new_leases)
        # Leases that lapsed on the items just claimed are closed as expired, for an honest history.
        session.execute(
            sa.update(Lease)
            .where(
                Lease.item_id.in_([lease.item_id for lease in new_leases]),
                Lease.ended_at.is_(None),
                Lease.id.not_in([lease.id for lease in new_leases]),
            )
            .values(ended_at=Lease.expires_at, end_reason="expired")
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return out + [lease_out(lease) for lease in new_leases], order


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
