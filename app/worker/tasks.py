"""One function per job kind: read what the job needs, call ``ml.steps``, write the outcome in one transaction.

Every task reads in short sessions, computes without holding a transaction, and ends with a single
write transaction that stores its rows *and* marks the job succeeded, fenced to this run
(``JobContext.fenced``). So a cancelled, failed, lost or killed run writes nothing: the active model,
its scores and the metric curve change only when a run commits, and at most once per job.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import Item, Job, JobRun, Label, MetricPoint, ModelVersion, Project, Representation, Score
from app.services import jobs as job_service
from app.services import labels as label_service
from app.services import metric_reasons
from app.services import models as model_service
from app.services.errors import ServiceError
from app.services.projects import effective_settings, schema
from app.worker.progress import JobContext
from ml import annotators, steps
from ml.attributes import MISSING_LEVEL, Attribute
from ml.control import Stopped
from ml.strategies import QUEUE_BATCH_RULES, batch_rule, scored_strategy

log = logging.getLogger("lenslab.worker")

SCORE_INSERT_CHUNK = 5000
# Monte-Carlo samples per item for the pool's scores: with scrambled-Sobol draws, 64 rank a pool alike
# from one seed to the next (Spearman 0.99 on MNIST z; 0.97 at 32, and 0.90 with the independent draws
# used before), so the queue does not pick by sampling noise (``lenslab bench scoring --data-dir``).
N_SAMPLES = 64


class TaskError(Exception):
    """A job cannot run as asked (missing representation, too few labels, ...): failed with this message."""


# --------------------------------------------------------------------------- reading


def _to_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _project(s: Session, project_id: int) -> Project:
    project = s.get(Project, project_id)
    if project is None:
        raise TaskError(f"project {project_id} no longer exists")
    return project


def _items(s: Session, project_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, splits) of the project in id order."""
    rows = s.execute(sa.select(Item.id, Item.split).where(Item.project_id == project_id).order_by(Item.id)).all()
    return np.asarray([r.id for r in rows], np.int64), np.asarray([r.split for r in rows])


def _images(db: Any, item_ids: np.ndarray, ctx: JobContext, chunk: int = 2000) -> np.ndarray:
    """The items' PNGs decoded to (N, C, H, W) float32 in [0, 1], in ``item_ids`` order."""
    from PIL import Image

    out: list[np.ndarray] = []
    shape = None
    for i in range(0, len(item_ids), chunk):
        if ctx.should_stop():
            raise Stopped("stopped on request")
        ids = [int(x) for x in item_ids[i : i + chunk]]
        with db.session(write=False) as s:
            blobs = {r.id: r.image_png for r in s.execute(sa.select(Item.id, Item.image_png).where(Item.id.in_(ids)))}
        for iid in ids:
            png = blobs.get(iid)
            if png is None:
                raise TaskError(f"item {iid} has no image; an image representation needs every item's image")
            arr = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255.0
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise TaskError(
                    f"items differ in image size ({shape} vs {arr.shape} for item {iid}); "
                    "import images of one size (e.g. with dataset.size)"
                )
            out.append(arr)
    return np.stack(out)


def _label_arrays(
    values: dict[int, dict[str, Any]], item_ids: np.ndarray, attrs: list[Attribute]
) -> dict[str, np.ndarray]:
    """Label arrays for ``ml`` (level index / −1, value / NaN) in ``item_ids`` order."""
    S: dict[str, np.ndarray] = {}
    for a in attrs:
        arr = np.full(len(item_ids), MISSING_LEVEL, np.int64) if a.is_discrete else np.full(len(item_ids), np.nan)
        for k, iid in enumerate(item_ids):
            v = values.get(int(iid), {}).get(a.name)
            if v is None:
                continue
            arr[k] = a.level_index(v) if a.is_discrete else float(v)
        S[a.name] = arr
    return S


def _n_labelled(S: dict[str, np.ndarray], attrs: list[Attribute]) -> int:
    from ml.attributes import observed_mask

    mask = np.zeros(len(next(iter(S.values()))), bool)
    for a in attrs:
        mask |= observed_mask(S[a.name], a)
    return int(mask.sum())


def _active_rep(s: Session, project_id: int) -> Representation | None:
    return s.scalar(sa.select(Representation).where(Representation.project_id == project_id, Representation.active))


def _z_table(db: Any, rep_id: int) -> tuple[np.ndarray, np.ndarray]:
    with db.session(write=False) as s:
        try:
            return model_service.read_z(session=s, rep_id=rep_id)
        except ServiceError as exc:
            raise TaskError(str(exc.detail)) from None


def _rows_of(table_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the z table, the wanted ids that have one); items imported after the pretrain have none."""
    order = np.argsort(table_ids)
    pos = np.clip(np.searchsorted(table_ids, wanted, sorter=order), 0, max(0, len(table_ids) - 1))
    rows = order[pos] if len(table_ids) else np.zeros(0, np.int64)
    ok = table_ids[rows] == wanted if len(table_ids) else np.zeros(len(wanted), bool)
    return rows[ok], wanted[ok]


def _scoring_strategy(project: Project, params: dict[str, Any]) -> str:
    return scored_strategy(params.get("strategy") or project.strategy)


def _batch_plan(project: Project, params: dict[str, Any], settings: Settings) -> tuple[str, int] | None:
    """(batch rule, batch size) when the queue follows a batch rule: one labelling round, the labels
    expected before the next retrain (``retrain_every``); None for a per-item order."""
    rule = batch_rule(params.get("strategy") or project.strategy)
    if rule is None:
        return None
    return rule, int(effective_settings(project, settings)["retrain_every"])


def _queue_batch(
    ctx: JobContext, plan: tuple[str, int] | None, pool_ids: np.ndarray, Z_pool: np.ndarray, scores: np.ndarray
) -> tuple[str, np.ndarray] | None:
    """The pool rows of the next round's batch under ``plan`` (``ml.acquisition.queue_batch``): items
    labelled or leased right now are covered, never picked."""
    if plan is None:
        return None
    rule, k = plan
    now = utcnow()
    with ctx.db.session(write=False) as s:
        taken = s.scalars(
            sa.select(Item.id).where(
                Item.project_id == ctx.project_id,
                sa.or_(Item.labelled.is_(True), sa.and_(Item.lease_id.is_not(None), Item.lease_expires_at > now)),
            )
        ).all()
    covered = np.isin(pool_ids, np.asarray(taken, np.int64))
    return rule, steps.queue_batch(rule, scores, Z_pool, k, covered=covered, seed=ctx.job_id)


def _insert_batch(
    s: Session, mv_id: int, batch: tuple[str, np.ndarray] | None, pool_ids: np.ndarray, scores: np.ndarray
) -> None:
    """The batch's items as score rows under the rule's name (the queue hands them out first, by score)."""
    s.execute(sa.delete(Score).where(Score.model_version_id == mv_id, Score.strategy.in_(QUEUE_BATCH_RULES)))
    if batch is not None:
        rule, rows = batch
        _insert_scores(s, mv_id, rule, pool_ids[rows], scores[rows])


# --------------------------------------------------------------------------- writing


def _succeed(
    s: Session, ctx: JobContext, result: dict[str, Any], message: str, params: dict[str, Any] | None = None
) -> None:
    """Mark the job succeeded inside the caller's transaction; Stopped (and nothing written) if it is not ours."""
    values: dict[str, Any] = {
        "status": "succeeded",
        "progress": 1.0,
        "stage": "done",
        "eta_seconds": 0.0,
        "message": message,
        "result": result,
        "finished_at": utcnow(),
        "heartbeat_at": None,
    }
    if params is not None:
        values["params"] = params
    res = s.execute(
        sa.update(Job)
        .where(ctx.fenced(), Job.cancel_requested.is_(False))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        s.rollback()
        cancelled = s.scalar(sa.select(Job.cancel_requested).where(Job.id == ctx.job_id))
        ctx.stop_reason = ctx.stop_reason or ("cancel" if cancelled else "lost")
        raise Stopped("the job was cancelled or taken over before its results were stored")
    s.execute(
        sa.update(JobRun)
        .where(JobRun.job_id == ctx.job_id, JobRun.attempt == ctx.attempt)
        .values(outcome="succeeded", finished_at=utcnow(), message=message)
        .execution_options(synchronize_session=False)
    )


def _insert_scores(s: Session, mv_id: int, strategy: str, item_ids: np.ndarray, scores: np.ndarray) -> None:
    rows = [
        {"model_version_id": mv_id, "strategy": strategy, "item_id": int(i), "score": float(v)}
        for i, v in zip(item_ids, scores, strict=True)
    ]
    for i in range(0, len(rows), SCORE_INSERT_CHUNK):
        s.execute(sa.insert(Score), rows[i : i + SCORE_INSERT_CHUNK])


def _check(ctx: JobContext) -> None:
    if ctx.should_stop():
        raise Stopped("stopped on request")


# --------------------------------------------------------------------------- pretrain


def _fit_representation(
    ctx: JobContext, settings: Settings, lo: float, hi: float
) -> tuple[steps.RepresentationResult, np.ndarray, Representation | None]:
    """Fit (or import) z for every item; returns (result, item ids in Z's row order, the row to reuse)."""
    db = ctx.db
    with db.session(write=False) as s:
        project = _project(s, ctx.project_id)
        rep_cfg = dict(project.representation or {})
        source = rep_cfg.get("source", "vae")
        attrs = schema(project)
        item_ids, _ = _items(s, project.id)
        active = _active_rep(s, project.id)
        active_id = active.id if active is not None else None
        uploaded = None
        if source == "torchscript":
            uploaded = s.scalar(
                sa.select(Representation)
                .where(
                    Representation.project_id == project.id,
                    Representation.source == "torchscript",
                    Representation.checkpoint.is_not(None),
                )
                .order_by(Representation.id.desc())
                .limit(1)
            )
    if len(item_ids) == 0:
        raise TaskError("the project has no items: import a dataset first")
    ctx.stage(f"pretrain ({source})", lo, hi)
    if source == "embeddings":
        if active_id is None:
            raise TaskError("an embeddings project needs its imported embeddings (none are stored)")
        table_ids, Z = _z_table(db, active_id)
        missing = np.setdiff1d(item_ids, table_ids)
        if missing.size:
            raise TaskError(f"{missing.size} item(s) have no embedding row (e.g. item {int(missing[0])})")
        res = steps.fit_representation("embeddings", None, {}, embeddings=Z)
        return res, table_ids, None
    images = _images(db, item_ids, ctx)
    labels = n_classes = None
    if source == "classifier":
        name = rep_cfg.get("attribute")
        cats = [a for a in attrs if a.kind == "categorical" and (name is None or a.name == name)]
        if not cats:
            raise TaskError(
                "representation 'classifier' needs a categorical attribute" + (f" named {name!r}" if name else "")
            )
        target = cats[0]
        with db.session(write=False) as s:
            values = label_service.current_values(session=s, project_id=ctx.project_id, eval=False)
        labels = _label_arrays(values, item_ids, [target])[target.name]
        n_classes = target.n_levels
        rep_cfg["attribute"] = target.name
    encoder = None
    if source == "torchscript":
        if uploaded is None:
            raise TaskError(
                "representation 'torchscript' needs an uploaded encoder: "
                "POST it to /api/v1/projects/{pid}/representation/encoder, then run pretrain"
            )
        with db.session(write=False) as s:
            encoder = s.scalar(sa.select(Representation.checkpoint).where(Representation.id == uploaded.id))
    cfg = {k: v for k, v in rep_cfg.items() if k != "source"}
    try:
        res = steps.fit_representation(
            source,
            images,
            cfg,
            labels=labels,
            n_classes=n_classes,
            encoder_bytes=encoder,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            device=ctx.device,
        )
    except ValueError as exc:
        raise TaskError(f"pretrain ({source}): {exc}") from None
    return res, item_ids, uploaded


def _store_representation(
    s: Session,
    ctx: JobContext,
    project: Project,
    res: steps.RepresentationResult,
    item_ids: np.ndarray,
    reuse: Representation | None,
) -> Representation:
    """Insert (or, for an uploaded encoder, fill) the representation row and make it the active one."""
    config = {**(project.representation or {}), "info": res.info, "test_ll": res.test_ll}
    s.execute(
        sa.update(Representation)
        .where(Representation.project_id == project.id, Representation.active)
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    # A lens fitted on the old z means nothing on the new one: no model is active until the next retrain.
    s.execute(
        sa.update(ModelVersion)
        .where(ModelVersion.project_id == project.id, ModelVersion.active)
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    s.flush()
    if reuse is not None and reuse.job_id is None:
        rep = s.get(Representation, reuse.id)
        assert rep is not None
        rep.z, rep.item_ids, rep.config, rep.job_id = _to_npy(res.Z), _to_npy(item_ids), config, ctx.job_id
    else:
        rep = Representation(
            project_id=project.id,
            source=project.representation.get("source", "vae"),
            config=config,
            checkpoint=res.model_bytes,
            z=_to_npy(res.Z),
            item_ids=_to_npy(item_ids),
            job_id=ctx.job_id,
        )
        s.add(rep)
    s.flush()
    rep.active = True
    s.flush()
    return rep


def _cold_order(ctx: JobContext, settings: Settings, item_ids: np.ndarray, Z: np.ndarray) -> list[int]:
    """The pool's items for the rounds before the first lens, in a diversity order on z (``ml.acquisition``).

    Two rounds' worth (2 × retrain_every) of pool items: the queue hands them out first, in that order,
    while no lens is live (a first version held back leaves the second round covered too). Computed
    before the job takes the write lock (the order took 2 s on 7,400 items, during which every expert's
    label waited); an item that leaves the pool meanwhile is skipped by the queue, which serves pool items.
    """
    with ctx.db.session(write=False) as s:
        project = _project(s, ctx.project_id)
        k = 2 * int(effective_settings(project, settings)["retrain_every"])
        splits = dict(s.execute(sa.select(Item.id, Item.split).where(Item.project_id == project.id)).tuples().all())
        seed = project.id
    pool = np.array([splits.get(int(i)) == "pool" for i in item_ids], dtype=bool)
    if not pool.any():
        return []
    rows = np.flatnonzero(pool)
    return [int(item_ids[rows[j]]) for j in steps.cold_start_order(Z[rows], k, seed=seed)]


def _store_cold_ranks(s: Session, project_id: int, ordered: list[int]) -> int:
    """Replace the project's ``cold_rank`` column with ``ordered`` (rank = position); returns how many."""
    # Only the rows ranked before are cleared: a few hundred, not every item of the pool (on PostgreSQL
    # a new version of each row, and row locks held until the job commits).
    s.execute(sa.update(Item).where(Item.project_id == project_id, Item.cold_rank.is_not(None)).values(cold_rank=None))
    if ordered:
        items = Item.__table__  # Core executemany: one statement, one row of parameters per ranked item
        s.execute(
            sa.update(items).where(items.c.id == sa.bindparam("iid")).values(cold_rank=sa.bindparam("rank")),
            [{"iid": iid, "rank": r} for r, iid in enumerate(ordered)],
        )
    return len(ordered)


def run_pretrain(ctx: JobContext, settings: Settings) -> None:
    """Fit or import the base representation z of every item and make it the project's active one."""
    res, item_ids, reuse = _fit_representation(ctx, settings, 0.0, 0.95)
    _check(ctx)
    cold = _cold_order(ctx, settings, item_ids, res.Z)
    _check(ctx)
    ctx.stage("store", 0.95, 1.0)
    with ctx.db.session() as s:
        project = _project(s, ctx.project_id)
        ranked = _store_cold_ranks(s, project.id, cold)
        if project.representation.get("source") == "embeddings":
            result = {"dim": int(res.Z.shape[1]), "n_items": len(item_ids), "imported": True, "cold_ranked": ranked}
            _succeed(s, ctx, result, f"embeddings checked: {len(item_ids)} items, d={res.Z.shape[1]}")
            s.commit()
            return
        had_model = model_service.active(session=s, project_id=project.id) is not None
        rep = _store_representation(s, ctx, project, res, item_ids, reuse)
        if had_model:
            job_service.enqueue(
                session=s,
                project_id=project.id,
                kind="retrain",
                params={"reason": f"new representation {rep.id}"},
                commit=False,
            )
        result = {
            "representation_id": rep.id,
            "dim": int(res.Z.shape[1]),
            "n_items": len(item_ids),
            "test_ll": res.test_ll,
            "seconds": res.info.get("seconds"),
            "cold_ranked": ranked,
        }
        ll = f", test LL {res.test_ll:.2f} nats" if res.test_ll is not None else ""
        _succeed(s, ctx, result, f"representation {rep.id}: z of {len(item_ids)} items, d={res.Z.shape[1]}{ll}")
        s.commit()


# --------------------------------------------------------------------------- retrain


def _training_data(
    ctx: JobContext, attrs: list[Attribute], rep_id: int, consensus: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
    """Z and labels of the pool (training) and eval items, and the newest label id read."""
    db = ctx.db
    table_ids, Z_all = _z_table(db, rep_id)
    with db.session(write=False) as s:
        top = s.scalar(sa.select(sa.func.max(Label.id)).where(Label.project_id == ctx.project_id)) or 0
        item_ids, splits = _items(s, ctx.project_id)
        train_rows = label_service.expert_labels(session=s, project_id=ctx.project_id, eval=False)
        eval_rows_ = label_service.expert_labels(session=s, project_id=ctx.project_id, eval=True)
    pool_rows, pool_ids = _rows_of(table_ids, item_ids[splits == "pool"])
    eval_rows, eval_ids = _rows_of(table_ids, item_ids[splits == "eval"])
    # Eval items never enter the fit (not even unlabelled): the metric must not see what trained the lens.
    # Where several experts labelled an item, the lens trains on their consensus (soft targets) and
    # the metric scores against its most likely level.
    S_pool = annotators.targets(pool_ids, train_rows, attrs, consensus)
    S_eval = annotators.targets(eval_ids, eval_rows_, attrs, consensus, hard=True)
    return pool_ids, Z_all[pool_rows], S_pool, eval_ids, Z_all[eval_rows], S_eval, int(top)


def _next_version(s: Session, project_id: int) -> int:
    return (
        int(s.scalar(sa.select(sa.func.max(ModelVersion.version)).where(ModelVersion.project_id == project_id)) or 0)
        + 1
    )


POINT_EXTRA_KEYS = (
    "baseline_overall",
    "overall_se",
    "baseline_overall_se",
    "overall_accuracy",
    "k_dims",
    "overall_k",
    "overall_accuracy_k",
    "dims_per_attribute",
    "mig",
    "sap",
    "mig_z",
    "sap_z",
    "skipped",
    "n_eval",
)


def _point_extra(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a metric point keeps beside its overall score and per-attribute rows (REST /metrics serves it)."""
    return {k: metrics.get(k) for k in POINT_EXTRA_KEYS}


def _served_point(
    project_id: int,
    n_lab: int,
    new_id: int,
    prev_id: int | None,
    metrics: dict[str, Any],
    active_metrics: dict[str, Any] | None,
    held_back: str | None,
) -> MetricPoint:
    """The curve's point for this retrain: the score of what is served after it.

    The new version's when it went live; else the live version's, re-measured on the same eval items;
    else (nothing live yet) raw z's, the same metric with no lens. A held-back version's own score is
    kept under ``candidate``.
    """
    candidate = {"model_id": new_id, "overall": metrics["overall"], "held_back": held_back}
    if held_back is None:
        return MetricPoint(
            project_id=project_id,
            model_version_id=new_id,
            n_labels=n_lab,
            overall=metrics["overall"],
            attributes=metrics["attributes"],
            test_ll=metrics.get("test_ll"),
            extra={**_point_extra(metrics), "candidate": candidate},
        )
    if active_metrics is not None:
        return MetricPoint(
            project_id=project_id,
            model_version_id=prev_id,
            n_labels=n_lab,
            overall=active_metrics["overall"],
            attributes=active_metrics["attributes"],
            test_ll=active_metrics.get("test_ll"),
            extra={**_point_extra(active_metrics), "candidate": candidate},
        )
    raw = {
        name: {
            "score": a.get("z_score"),
            "dim": a.get("z_dim"),
            "chance_score": a.get("chance_score"),
            "n_test": a.get("n_test"),
            "z_score": a.get("z_score"),
            "z_dim": a.get("z_dim"),
        }
        for name, a in metrics["attributes"].items()
    }
    extra = {k: metrics.get(k) for k in ("baseline_overall", "baseline_overall_se", "skipped", "n_eval")}
    extra["overall_se"] = metrics.get("baseline_overall_se")  # what is served is raw z: its spread is the point's
    return MetricPoint(
        project_id=project_id,
        model_version_id=None,
        n_labels=n_lab,
        overall=metrics["baseline_overall"],
        attributes=raw,
        test_ll=metrics.get("test_ll"),
        extra={**extra, "raw_z": True, "candidate": candidate},
    )


def run_retrain(ctx: JobContext, settings: Settings) -> None:
    """Fit the lens (warm-started) on the training labels, score the pool, evaluate, store and activate."""
    db = ctx.db
    ctx.stage("load", 0.0, 0.02)
    with db.session(write=False) as s:
        project = _project(s, ctx.project_id)
        attrs = schema(project)
        # Per-job overrides (params.lens) on top of the project's settings.lens.
        lens_cfg = {**dict((project.settings or {}).get("lens") or {}), **dict(ctx.params.get("lens") or {})}
        strategy = _scoring_strategy(project, ctx.params)
        plan = _batch_plan(project, ctx.params, settings)
        eff = effective_settings(project, settings)
        margin, consensus = float(eff["activation_margin"]), str(eff["consensus"])
        rep = _active_rep(s, project.id)
        rep_id = rep.id if rep is not None else None
        test_ll = (rep.config or {}).get("test_ll") if rep is not None else None
        prev = model_service.active(session=s, project_id=project.id)
        prev_id = prev.id if prev is not None and prev.representation_id == rep_id else None
        prev_version = prev.version if prev_id is not None and prev is not None else None
        # The warm start is the newest fit on this representation, live or held back: a version held
        # back by the eval comparison still carries every training step so far.
        latest_id = s.scalar(
            sa.select(ModelVersion.id)
            .where(ModelVersion.project_id == project.id, ModelVersion.representation_id == rep_id)
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
    if rep_id is None:
        # No representation yet (its pretrain failed or never ran): fit it first, as part of this job.
        res, item_ids, reuse = _fit_representation(ctx, settings, 0.0, 0.4)
        _check(ctx)
        with db.session() as s:
            project = _project(s, ctx.project_id)
            stored = _store_representation(s, ctx, project, res, item_ids, reuse)
            # Stored under this run's fence: a lost or cancelled run must not leave it behind.
            if s.execute(sa.select(Job.id).where(ctx.fenced(), Job.cancel_requested.is_(False))).first() is None:
                s.rollback()
                raise Stopped("the job was cancelled or taken over")
            rep_id, test_ll = stored.id, res.test_ll
            s.commit()
        fit_lo = 0.4
    else:
        fit_lo = 0.02
    pool_ids, Z_pool, S_pool, _eval_ids, Z_eval, S_eval, top = _training_data(ctx, attrs, rep_id, consensus)
    n_lab = _n_labelled(S_pool, attrs)
    if n_lab == 0:
        raise TaskError("no training labels yet: label some items (eval labels never train the lens)")
    warm = None
    if latest_id is not None:
        with db.session(write=False) as s:
            warm = s.scalar(sa.select(ModelVersion.checkpoint).where(ModelVersion.id == latest_id))
    fit_hi = fit_lo + (0.85 - fit_lo) * 0.9
    ctx.stage("fit", fit_lo, fit_hi)
    try:
        blob, stats = steps.fit_lens(
            Z_pool,
            S_pool,
            attrs,
            warm_start_bytes=warm,
            params=lens_cfg,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            device=ctx.device,
        )
    except ValueError as exc:
        raise TaskError(f"retrain: {exc}") from None
    ctx.stage("score", fit_hi, 0.9)
    lens = steps.load_lens(blob, device=ctx.device)
    scores = steps.score_pool(
        lens,
        Z_pool,
        strategy,
        N_SAMPLES,
        progress=ctx.progress,
        should_stop=ctx.should_stop,
        device=ctx.device,
    )
    batch = _queue_batch(ctx, plan, pool_ids, Z_pool, scores)
    ctx.stage("evaluate", 0.9, 0.97)
    metrics = steps.evaluate(lens, Z_eval, S_eval, attrs, should_stop=ctx.should_stop, device=ctx.device)
    metrics["test_ll"] = test_ll
    # Never worse than doing nothing: the live version, re-measured on today's eval items, is the bar too.
    active_metrics = None
    if prev_id is not None and metrics["overall"] is not None:
        with db.session(write=False) as s:
            prev_blob = s.scalar(sa.select(ModelVersion.checkpoint).where(ModelVersion.id == prev_id))
        active_metrics = steps.evaluate(
            steps.load_lens(prev_blob, device=ctx.device),
            Z_eval,
            S_eval,
            attrs,
            should_stop=ctx.should_stop,
            device=ctx.device,
        )
        active_metrics["test_ll"] = test_ll
    held_back = steps.hold_back_reason(metrics, active_metrics, margin)
    stats = {**stats, "held_back": held_back}
    _check(ctx)
    ctx.stage("activate", 0.97, 1.0)
    config = {
        "lens": lens_cfg,
        "strategy": strategy,
        "attributes": [a.to_dict() for a in attrs],
        "representation_id": rep_id,
        "warm_start_from": latest_id,
        "device": stats.get("device"),
        "device_name": stats.get("device_name"),
    }
    digest = steps.content_hash(blob)
    for _ in range(3):
        with db.session() as s:
            version = _next_version(s, ctx.project_id)
            mv = ModelVersion(
                project_id=ctx.project_id,
                version=version,
                representation_id=rep_id,
                checkpoint=blob,
                content_hash=digest,
                config=config,
                stats=stats,
                metrics=metrics,
                n_labels=n_lab,
                active=False,
                job_id=ctx.job_id,
            )
            try:
                s.add(mv)
                s.flush()
            except sa_exc.IntegrityError:
                s.rollback()  # a concurrent retrain took this version number: take the next one
                continue
            _insert_scores(s, mv.id, strategy, pool_ids, scores)
            _insert_batch(s, mv.id, batch, pool_ids, scores)
            s.add(_served_point(ctx.project_id, n_lab, mv.id, prev_id, metrics, active_metrics, held_back))
            if held_back is None:
                model_service.switch_active(session=s, model=mv, with_representation=False)
            result = {
                "model_id": mv.id,
                "version": version,
                "content_hash": digest,
                "n_labels": n_lab,
                "overall": metrics["overall"],
                "overall_k": metrics.get("overall_k"),
                "baseline_overall": metrics.get("baseline_overall"),
                "activated": held_back is None,
                "held_back": held_back,
                "active_overall": active_metrics.get("overall") if active_metrics is not None else None,
                "flow": stats.get("flow"),
                "warm_start": stats["warm_start"],
                "fit_seconds": stats["seconds"],
                "device": stats.get("device_name"),
                "batch_size": stats.get("batch_size"),
                "lr": stats.get("lr"),
                "n_scored": len(pool_ids),
            }
            params = {**ctx.params, "since_label_id": max(int(ctx.params.get("since_label_id", 0)), top)}
            why = metric_reasons.short_reason(metrics)
            if metrics["overall"] is not None:
                measured = f"metric {metrics['overall']:.1f}" + (f" (not scored: {why})" if why else "")
            else:
                measured = f"no metric yet ({why or 'not computed'})"
            if held_back is None:
                message = f"version {version} active: {n_lab} labelled items, {measured}"
                if stats.get("device_name"):
                    message += f"; fitted in {stats['seconds']:.0f} s on {stats['device_name']}"
            else:
                staying = f"version {prev_version} stays active" if prev_id is not None else "raw z is served"
                message = f"version {version} kept but not activated: {held_back}; {staying}"
            _succeed(s, ctx, result, message, params=params)
            s.commit()
            return
    raise TaskError("could not take a new version number after 3 tries (concurrent retrains)")


# --------------------------------------------------------------------------- score, evaluate


def _model_for(s: Session, ctx: JobContext) -> ModelVersion:
    mid = ctx.params.get("model_id")
    if mid is not None:
        mv = s.get(ModelVersion, int(mid))
        if mv is None or mv.project_id != ctx.project_id:
            raise TaskError(f"params.model_id: no model version {mid} in project {ctx.project_id}")
        return mv
    mv = model_service.active(session=s, project_id=ctx.project_id)
    if mv is None:
        raise TaskError("the project has no active model yet: run a retrain first")
    return mv


def run_score(ctx: JobContext, settings: Settings) -> None:
    """(Re)compute the acquisition scores of the pool under a model version (default: the active one)."""
    ctx.stage("load", 0.0, 0.05)
    with ctx.db.session(write=False) as s:
        project = _project(s, ctx.project_id)
        strategy = _scoring_strategy(project, ctx.params)
        plan = _batch_plan(project, ctx.params, settings)
        mv = _model_for(s, ctx)
        mv_id, rep_id = mv.id, mv.representation_id
        blob = s.scalar(sa.select(ModelVersion.checkpoint).where(ModelVersion.id == mv.id))
        item_ids, splits = _items(s, project.id)
    if rep_id is None or not blob:
        raise TaskError(f"model version {mv_id} has no checkpoint or representation to score with")
    table_ids, Z_all = _z_table(ctx.db, rep_id)
    rows, pool_ids = _rows_of(table_ids, item_ids[splits == "pool"])
    ctx.stage("score", 0.05, 0.95)
    lens = steps.load_lens(blob, device=ctx.device)
    Z_pool = Z_all[rows]
    scores = steps.score_pool(
        lens,
        Z_pool,
        strategy,
        N_SAMPLES,
        progress=ctx.progress,
        should_stop=ctx.should_stop,
        device=ctx.device,
    )
    _check(ctx)
    batch = _queue_batch(ctx, plan, pool_ids, Z_pool, scores)
    _check(ctx)
    ctx.stage("store", 0.95, 1.0)
    with ctx.db.session() as s:
        # Replaced in one transaction: the queue sees the old scores or the new ones, never a mix.
        s.execute(sa.delete(Score).where(Score.model_version_id == mv_id, Score.strategy == strategy))
        _insert_scores(s, mv_id, strategy, pool_ids, scores)
        _insert_batch(s, mv_id, batch, pool_ids, scores)
        ranked = f"; a {batch[0]} batch of {len(batch[1])} for the next round" if batch else ""
        _succeed(
            s,
            ctx,
            {
                "model_id": mv_id,
                "strategy": strategy,
                "n_scored": len(pool_ids),
                "batch_rule": batch[0] if batch else None,
                "batch_size": len(batch[1]) if batch else 0,
            },
            f"{len(pool_ids)} pool items scored ({strategy}) under model {mv_id}{ranked}",
        )
        s.commit()


def run_evaluate(ctx: JobContext, settings: Settings) -> None:
    """Measure a model version (default: the active one) on the current eval labels: a new metric point."""
    ctx.stage("load", 0.0, 0.1)
    with ctx.db.session(write=False) as s:
        project = _project(s, ctx.project_id)
        attrs = schema(project)
        mv = _model_for(s, ctx)
        mv_id, rep_id, n_lab = mv.id, mv.representation_id, mv.n_labels
        blob = s.scalar(sa.select(ModelVersion.checkpoint).where(ModelVersion.id == mv.id))
        rep = s.get(Representation, rep_id) if rep_id is not None else None
        test_ll = (rep.config or {}).get("test_ll") if rep is not None else None
        consensus = str(effective_settings(project, settings)["consensus"])
    if rep_id is None or not blob:
        raise TaskError(f"model version {mv_id} has no checkpoint or representation to evaluate")
    _, _, _, _, Z_eval, S_eval, _ = _training_data(ctx, attrs, rep_id, consensus)
    ctx.stage("evaluate", 0.1, 0.95)
    metrics = steps.evaluate(
        steps.load_lens(blob, device=ctx.device), Z_eval, S_eval, attrs, should_stop=ctx.should_stop, device=ctx.device
    )
    _check(ctx)
    with ctx.db.session() as s:
        point = MetricPoint(
            project_id=ctx.project_id,
            model_version_id=mv_id,
            n_labels=n_lab,
            overall=metrics["overall"],
            attributes=metrics["attributes"],
            test_ll=test_ll,
            extra=_point_extra(metrics),
        )
        s.add(point)
        s.flush()
        _succeed(
            s,
            ctx,
            {"model_id": mv_id, "metric_point_id": point.id, "overall": metrics["overall"]},
            f"evaluated model {mv_id} on {metrics['n_eval']} eval items",
        )
        s.commit()


def run_experiment(ctx: JobContext, settings: Settings) -> None:
    """Experiments are not available yet: fail with a message saying so."""
    raise TaskError("experiment jobs are not available yet")


TASKS = {
    "pretrain": run_pretrain,
    "retrain": run_retrain,
    "score": run_score,
    "evaluate": run_evaluate,
    "experiment": run_experiment,
}


def run(ctx: JobContext, settings: Settings) -> None:
    """Run the task of ``ctx.kind``."""
    task = TASKS.get(ctx.kind)
    if task is None:
        raise TaskError(f"unknown job kind {ctx.kind!r}")
    task(ctx, settings)
