"""Model versions and what is read from them: activation, scores, metric points, z / z* / predictions, traversals.

Fitted objects are loaded from the database (checkpoint bytes) and cached per row id, so every web
process follows the active version without a restart.
"""

from __future__ import annotations

import io
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.db.models import Item, MetricPoint, ModelVersion, Project, Representation, Score
from app.services.errors import Conflict, Invalid, NotFound
from ml.strategies import batch_rule, scored_strategy


class LRU:
    """A small thread-safe LRU of loaded objects (models, z tables, agreement results) by key; what it holds
    never changes under its key (rows are immutable once written; keys carry what would change them)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._d: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        value = load()
        with self._lock:
            self._d[key] = value
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value


# One cache per connection pool (one per app/database), so two apps in one process (tests, or a
# PostgreSQL and a SQLite app) never see each other's rows under equal ids.
_caches: weakref.WeakKeyDictionary[Any, LRU] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache_for(session: Session) -> LRU:
    pool = session.get_bind().pool
    with _caches_lock:
        cache = _caches.get(pool)
        if cache is None:
            cache = _caches[pool] = LRU()
        return cache


def cache_get(session: Session, key: tuple[str, int], load: Callable[[], Any]) -> Any:
    """A loaded object (model, z table, encoder) for the session's database, loaded once per process."""
    return _cache_for(session).get(key, load)


def list_versions(*, session: Session, project_id: int) -> list[ModelVersion]:
    """The project's model versions, newest first."""
    return list(
        session.scalars(
            sa.select(ModelVersion).where(ModelVersion.project_id == project_id).order_by(ModelVersion.version.desc())
        )
    )


def get_or_raise(*, session: Session, model_id: int) -> ModelVersion:
    """The model version with this id; NotFound otherwise."""
    mv = session.get(ModelVersion, model_id)
    if mv is None:
        raise NotFound(f"no model version {model_id}")
    return mv


def active(*, session: Session, project_id: int) -> ModelVersion | None:
    """The project's active model version, or None."""
    return session.scalar(sa.select(ModelVersion).where(ModelVersion.project_id == project_id, ModelVersion.active))


_ACTIVE_REF = sa.select(ModelVersion.id, ModelVersion.version).where(
    ModelVersion.project_id == sa.bindparam("pid"), ModelVersion.active
)


def active_ref(*, session: Session, project_id: int) -> sa.Row[tuple[int, int]] | None:
    """The id and version of the project's active model version, or None (no JSON columns loaded)."""
    return session.execute(_ACTIVE_REF, {"pid": project_id}).first()


def active_or_raise(*, session: Session, project_id: int) -> ModelVersion:
    """The active model version; Conflict (409) when the project has none yet."""
    mv = active(session=session, project_id=project_id)
    if mv is None:
        raise Conflict(f"project {project_id} has no active model yet: label items and wait for a retrain")
    return mv


def scoring_strategy(project: Project) -> str:
    """The strategy whose scores order the queue (BALD for "random" projects, for the REST scores)."""
    return scored_strategy(project.strategy)


def ensure_scores(*, session: Session, project: Project, model: ModelVersion, reason: str) -> bool:
    """Queue a ``score`` job (uncommitted) when ``model`` has no scores for the project's strategy, or
    no batch for the batch rule it follows (``ml.strategies.batch_rule``): the job ranks one.

    Until it finishes the queue hands out in the order it has (random without scores); returns whether
    a job was queued.
    """
    needed = [scoring_strategy(project)]
    rule = batch_rule(project.strategy)
    if rule is not None:
        needed.append(rule)
    missing = [
        name
        for name in needed
        if session.scalar(
            sa.select(Score.item_id).where(Score.model_version_id == model.id, Score.strategy == name).limit(1)
        )
        is None
    ]
    if not missing:
        return False
    from app.services import jobs

    jobs.enqueue(
        session=session,
        project_id=project.id,
        kind="score",
        params={"model_id": model.id, "reason": reason},
        commit=False,
    )
    return True


def switch_active(*, session: Session, model: ModelVersion, with_representation: bool = True) -> None:
    """Make ``model`` its project's only active version (not committed); with ``with_representation``, its
    representation becomes the active one too.

    The one place activation happens: an admin's activation (or rollback) and a retrain's new version.
    The partial unique indexes allow one active row per project, so the others go first. A retrain
    leaves the representation alone: a pretrain that finished meanwhile made a newer one active, and
    the retrain it queued will fit on that.
    """
    session.execute(
        sa.update(ModelVersion)
        .where(ModelVersion.project_id == model.project_id, ModelVersion.id != model.id, ModelVersion.active)
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    if with_representation and model.representation_id is not None:
        session.execute(
            sa.update(Representation)
            .where(
                Representation.project_id == model.project_id,
                Representation.id != model.representation_id,
                Representation.active,
            )
            .values(active=False)
            .execution_options(synchronize_session=False)
        )
        session.flush()
        session.execute(
            sa.update(Representation)
            .where(Representation.id == model.representation_id)
            .values(active=True)
            .execution_options(synchronize_session=False)
        )
    session.flush()
    model.active = True
    session.flush()


def activate(*, session: Session, model: ModelVersion) -> ModelVersion:
    """Make ``model`` the project's active version, and its representation the active one; one transaction.

    The queue reads the active version's scores, so activation (a rollback included) is what switches
    the queue's order. A version without scores for the project's strategy gets a ``score`` job queued
    (the queue hands out in random order until it finishes).
    """
    switch_active(session=session, model=model)
    project = session.get(Project, model.project_id)
    assert project is not None
    ensure_scores(session=session, project=project, model=model, reason=f"activated version {model.version}")
    session.commit()
    return model


def lens_summary(stats: dict[str, Any] | None) -> dict[str, Any]:
    """What a version's lens is, from its stored fit statistics: flow family, dims, alpha, epochs, selection.

    ``selected`` holds the values the lens's k-fold model selection chose (flow, alpha, epochs, ...)
    when any setting was "auto", else None; ``selection_folds`` its k. Versions fitted before flows
    had families are planar.
    """
    st = stats or {}
    selection = st.get("selection") if isinstance(st.get("selection"), dict) else None
    chosen = selection.get("chosen") if selection is not None else None
    return {
        "flow": st.get("flow") or ("planar" if st else None),
        "dims_per_attribute": st.get("dims_per_attribute"),
        "alpha": st.get("alpha"),
        "epochs": st.get("epochs"),
        "warm_start": st.get("warm_start"),
        "selected": dict(chosen) if isinstance(chosen, dict) else None,
        "selection_folds": selection.get("folds") if selection is not None else None,
        "note": st.get("note"),
    }


def version_out(mv: ModelVersion) -> dict[str, Any]:
    """The public fields of a model version (never its checkpoint); ``lens`` summarises how it was fitted."""
    return {
        "id": mv.id,
        "project_id": mv.project_id,
        "version": mv.version,
        "active": mv.active,
        "metrics": mv.metrics,
        "stats": mv.stats,
        "config": mv.config,
        "n_labels": mv.n_labels,
        "lens": lens_summary(mv.stats),
        "content_hash": mv.content_hash,
        "job_id": mv.job_id,
        "representation_id": mv.representation_id,
        "created_at": mv.created_at,
    }


def scores(
    *, session: Session, project: Project, strategy: str | None, order: str, limit: int, unlabelled_only: bool = False
) -> dict[str, Any]:
    """The active model's acquisition score per item, sorted."""
    mv = active_or_raise(session=session, project_id=project.id)
    # A batch rule's name (or "auto") reads the current batch; another strategy its per-item scores.
    strategy = scoring_strategy(project) if strategy is None else batch_rule(strategy) or scored_strategy(strategy)
    col = Score.score.desc() if order == "desc" else Score.score.asc()
    q = (
        sa.select(Score.item_id, Score.score)
        .where(Score.model_version_id == mv.id, Score.strategy == strategy)
        .order_by(col, Score.item_id)
        .limit(limit)
    )
    if unlabelled_only:
        q = q.join(Item, Item.id == Score.item_id).where(Item.labelled.is_(False))
    rows = session.execute(q).all()
    return {
        "model_version": mv.version,
        "model_id": mv.id,
        "strategy": strategy,
        "items": [{"item_id": int(i), "score": float(s)} for i, s in rows],
    }


def metric_points(*, session: Session, project_id: int) -> list[dict[str, Any]]:
    """The project's metric curve: one point per evaluation, in order of labels then time."""
    rows = session.execute(
        sa.select(MetricPoint, ModelVersion.version)
        .outerjoin(ModelVersion, ModelVersion.id == MetricPoint.model_version_id)
        .where(MetricPoint.project_id == project_id)
        .order_by(MetricPoint.n_labels, MetricPoint.id)
    ).all()
    return [
        {
            "id": p.id,
            "n_labels": p.n_labels,
            "model_version": version,
            "model_id": p.model_version_id,
            "overall": p.overall,
            "attributes": p.attributes,
            "test_ll": p.test_ll,
            **(p.extra or {}),
            "created_at": p.created_at,
        }
        for p, version in rows
    ]


def _npy(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def active_representation(*, session: Session, project_id: int) -> Representation:
    """The project's active base representation; Conflict (409) until the pretrain job has produced one."""
    rep = session.scalar(
        sa.select(Representation).where(Representation.project_id == project_id, Representation.active)
    )
    if rep is None:
        raise Conflict(f"project {project_id} has no representation yet: the pretrain job has not finished")
    return rep


def read_z(*, session: Session, rep_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A representation's stored table: item ids (int64) and their z (float32), row for row.

    Conflict when it holds none (an embeddings project before its pretrain checked the upload).
    """
    row = session.execute(sa.select(Representation.z, Representation.item_ids).where(Representation.id == rep_id)).one()
    if row.z is None or row.item_ids is None:
        raise Conflict(f"representation {rep_id} holds no z: run pretrain")
    return _npy(row.item_ids).astype(np.int64), _npy(row.z).astype(np.float32)


class ZTable:
    """A representation's z rows with their item ids, indexed once for look-ups by item id."""

    def __init__(self, ids: np.ndarray, Z: np.ndarray) -> None:
        self.ids, self.Z = ids, Z
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def rows(self, item_ids: Any) -> np.ndarray:
        """Row positions of ``item_ids`` in ``Z``; −1 for an item the representation does not cover."""
        wanted = np.asarray(item_ids, dtype=np.int64)
        if not len(self._sorted):
            return np.full(len(wanted), -1, dtype=np.int64)
        rows = self._order[np.clip(np.searchsorted(self._sorted, wanted), 0, len(self._sorted) - 1)]
        return np.where(self.ids[rows] == wanted, rows, -1)


def z_table(*, session: Session, rep: Representation) -> ZTable:
    """The representation's z table, loaded once per process (cached with the models)."""
    return _cache_for(session).get(("z", rep.id), lambda: ZTable(*read_z(session=session, rep_id=rep.id)))


def z_of(*, session: Session, rep: Representation, item_ids: list[int]) -> np.ndarray:
    """Rows of z (in ``item_ids`` order) from the representation; Conflict for an item it does not cover."""
    table = z_table(session=session, rep=rep)
    rows = table.rows(item_ids)
    missing = [i for i, r in zip(item_ids, rows, strict=True) if r < 0]
    if missing:
        raise Conflict(f"items {missing[:5]} have no z in representation {rep.id} (imported after the pretrain?)")
    return table.Z[rows]


def load_lens(*, session: Session, mv: ModelVersion) -> Any:
    """The fitted ``ml.lens.InterpretableLens`` of a model version (cached)."""

    def load() -> Any:
        from ml.steps import load_lens as load_checkpoint

        blob = session.scalar(sa.select(ModelVersion.checkpoint).where(ModelVersion.id == mv.id))
        if not blob:
            raise Conflict(f"model version {mv.version} has no checkpoint")
        return load_checkpoint(blob)

    return _cache_for(session).get(("lens", mv.id), load)


def load_base_model(*, session: Session, rep: Representation) -> Any:
    """The representation's base model (VAE, classifier or TorchScript encoder; cached): what decodes z
    for traversals and encodes new images for transforms. Conflict when it has none (embeddings)."""

    def load() -> Any:
        from ml.steps import load_base_model as load_checkpoint

        blob = session.scalar(sa.select(Representation.checkpoint).where(Representation.id == rep.id))
        try:
            return load_checkpoint(rep.source, blob)
        except ValueError as exc:
            raise Conflict(f"representation {rep.id}: {exc}") from None

    return _cache_for(session).get(("base", rep.id), load)


def load_decoder(*, session: Session, rep: Representation) -> Any:
    """The base model that decodes z to images (a VAE or a contrastive base); Conflict when the source has none."""
    from ml.steps import DECODING_SOURCES

    if rep.source not in DECODING_SOURCES:
        raise Conflict(
            f"the {rep.source} representation has no decoder: traversals need source "
            + " or ".join(repr(s) for s in DECODING_SOURCES)
        )
    return load_base_model(session=session, rep=rep)


def _jsonable_predictions(pred: dict[str, Any], row: int, attrs: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by_name = {a.name: a for a in attrs}
    for name, value in pred.items():
        a = by_name.get(name)
        if isinstance(value, tuple):
            mean, var = value
            out[name] = {"mean": float(np.asarray(mean)[row]), "var": float(np.asarray(var)[row])}
        else:
            probs = np.asarray(value)[row].astype(float).tolist()
            levels = list(a.levels) if a is not None and a.levels else [str(i) for i in range(len(probs))]
            out[name] = {"probs": dict(zip(levels, probs, strict=False)), "level": levels[int(np.argmax(probs))]}
    return out


def representation_of(*, session: Session, item: Item, project: Project) -> dict[str, Any]:
    """z of an item, and with an active model z* and per-attribute predictions."""
    rep = active_representation(session=session, project_id=project.id)
    z = z_of(session=session, rep=rep, item_ids=[item.id])
    out: dict[str, Any] = {
        "item_id": item.id,
        "representation_id": rep.id,
        "source": rep.source,
        "z": z[0].astype(float).tolist(),
        "z_star": None,
        "predictions": None,
        "model_version": None,
        "attribute_dims": None,
    }
    mv = active(session=session, project_id=project.id)
    if mv is not None:
        lens = load_lens(session=session, mv=mv)
        z_star = np.asarray(lens.transform(z))
        pred = lens.predict_proba(z)
        out.update(
            z_star=z_star[0].astype(float).tolist(),
            model_version=mv.version,
            predictions=_jsonable_predictions(pred, 0, project.attributes),
            attribute_dims={
                k: np.asarray(v).astype(int).ravel().tolist()
                for k, v in dict(getattr(lens, "attribute_dims_", {})).items()
            },
        )
    return out


MAX_TRAVERSAL_ITEMS = 16
MAX_TRAVERSAL_STEPS = 15
DEFAULT_TRAVERSAL_ITEMS = 4
# A 2-D grid is steps × steps tiles per item, so the default shows two items rather than four: the
# picture stays readable on one screen, and two blocks still show whether the effect is the same on
# different items.
DEFAULT_GRID_ITEMS = 2
GRID_GAP = 4  # grey pixels (before scaling) between items' grids, more than the 1-pixel tile padding


def traversal_png(
    *, session: Session, project: Project, attribute: str, item_ids: list[int] | None, steps: int, scale: int
) -> bytes:
    """A PNG traversal of the attribute's z* dimension(s) under the active model.

    One dimension: each row one item, each column the dimension moved over its range (``steps``).
    Two or more dimensions (a lens with ``dims_per_attribute`` ≥ 2): a 2-D grid per item over the
    attribute's first two dims, steps × steps tiles, rows moving along the first dim and columns
    along the second, the other dims fixed. Several items' grids are stacked top to bottom with a
    wider grey band between them, so each item reads as its own square block and blocks compare
    column by column; without ``item_ids`` the first two items are shown (four for one dimension).
    """
    from ml import traversal

    if attribute not in {a.name for a in project.attributes}:
        raise NotFound(f"project {project.id} has no attribute {attribute!r}")
    if not 2 <= steps <= MAX_TRAVERSAL_STEPS:
        raise Invalid(f"steps: between 2 and {MAX_TRAVERSAL_STEPS}, got {steps}")
    mv = active_or_raise(session=session, project_id=project.id)
    rep = active_representation(session=session, project_id=project.id)
    if item_ids:
        if len(item_ids) > MAX_TRAVERSAL_ITEMS:
            raise Invalid(f"items: at most {MAX_TRAVERSAL_ITEMS}, got {len(item_ids)}")
        found = set(session.scalars(sa.select(Item.id).where(Item.id.in_(item_ids), Item.project_id == project.id)))
        missing = [i for i in item_ids if i not in found]
        if missing:
            raise Invalid(f"items: {missing} are not items of project {project.id}")
    decoder = load_decoder(session=session, rep=rep)
    lens = load_lens(session=session, mv=mv)
    dims = [int(d) for d in np.asarray(lens.attribute_dims_[attribute]).ravel()]
    grid = len(dims) >= 2
    if not item_ids:
        item_ids = list(
            session.scalars(
                sa.select(Item.id)
                .where(Item.project_id == project.id)
                .order_by(Item.id)
                .limit(DEFAULT_GRID_ITEMS if grid else DEFAULT_TRAVERSAL_ITEMS)
            )
        )
    Z = z_of(session=session, rep=rep, item_ids=item_ids)
    Zs = np.asarray(lens.transform(Z))
    # The range to sweep comes from the z* of (up to 2,000 of) the project's items: its training quantiles.
    Z_all = z_table(session=session, rep=rep).Z
    ref = np.asarray(lens.transform(Z_all[:: max(1, len(Z_all) // 2000)]))
    if not grid:
        values = traversal.attribute_values(ref, dims[0], steps)
        images = traversal.attribute_traversal(decoder.decode, Zs, dims[0], values, inverse=lens.inverse_transform)
        return traversal.grid_png(images, scale=scale)
    pair = (traversal.attribute_values(ref, dims[0], steps), traversal.attribute_values(ref, dims[1], steps))
    cube = traversal.attribute_grid(decoder.decode, Zs, dims[:2], pair, inverse=lens.inverse_transform)
    n, a, b = cube.shape[:3]
    return traversal.grid_png(
        cube.reshape(n * a, b, *cube.shape[3:]), scale=scale, group_rows=a, group_gap=GRID_GAP * scale
    )
