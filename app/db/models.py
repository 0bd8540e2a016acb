"""The tables: accounts, projects and their items, the append-only label history, leases, jobs and models.

Every schema change goes through an Alembic migration in ``migrations/``; these classes are its mirror.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, deferred, mapped_column, relationship

from app.db.base import Base, utcnow
from ml.steps import REPRESENTATION_SOURCES  # the CHECK constraint's values (migration b7e1f3a9c254)
from ml.strategies import QUEUE_STRATEGIES as STRATEGIES  # the CHECK constraint's values (migration f4a2c8e1d093)

ROLES = ("viewer", "expert", "admin")
SPLITS = ("pool", "eval")
LABEL_KINDS = ("label", "retraction")
LEASE_END_REASONS = ("labelled", "released", "expired")
JOB_KINDS = ("pretrain", "retrain", "score", "evaluate", "experiment")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
# How one claimed run of a job ended: finished (succeeded/failed/cancelled), its worker's heartbeat stopped
# (lost), its worker shut down and handed it back (interrupted), or a newer queued twin took over (superseded).
RUN_OUTCOMES = ("succeeded", "failed", "cancelled", "lost", "interrupted", "superseded")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _fk(target: str, ondelete: str | None = "CASCADE") -> sa.ForeignKey:
    return sa.ForeignKey(target, ondelete=ondelete)


class User(Base):
    """A person (or a REST client's owner) with one role: viewer < expert < admin."""

    __tablename__ = "users"
    __table_args__ = (sa.CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored, so a database leak reveals no usable token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(_fk("users.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class WebSession(Base):
    """A browser login: the cookie carries a random id, the table its SHA-256 and the CSRF token."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(_fk("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]

    user: Mapped[User] = relationship(lazy="joined")


class Project(Base):
    """A labelling project: items, attributes, a representation source and an acquisition strategy."""

    __tablename__ = "projects"
    __table_args__ = (sa.CheckConstraint(_in("strategy", STRATEGIES), name="strategy"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    representation: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    strategy: Mapped[str] = mapped_column(sa.String(16), default="auto")
    settings: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    attributes: Mapped[list[Attribute]] = relationship(
        order_by="Attribute.position", cascade="all, delete-orphan", lazy="selectin"
    )


class Attribute(Base):
    """One attribute experts label (paper section 2's side information s_j)."""

    __tablename__ = "attributes"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "name"),
        sa.CheckConstraint(_in("kind", ("categorical", "ordinal", "continuous")), name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(sa.String(64))
    kind: Mapped[str] = mapped_column(sa.String(16))
    levels: Mapped[list[str] | None] = mapped_column(sa.JSON)
    low: Mapped[float | None]
    high: Mapped[float | None]


class Item(Base):
    """One image (or embedding row) of a project; carries its current lease for atomic claiming."""

    __tablename__ = "items"
    __table_args__ = (
        sa.CheckConstraint(_in("split", SPLITS), name="split"),
        sa.Index("ix_items_project_source_index", "project_id", "source_index"),
        sa.Index("ix_items_queue", "project_id", "labelled", "split", "random_key"),
        sa.Index("ix_items_project_cold_rank", "project_id", "cold_rank"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    source_index: Mapped[int] = mapped_column(sa.BigInteger)
    external_id: Mapped[str | None] = mapped_column(sa.String(255))
    split: Mapped[str] = mapped_column(sa.String(8), default="pool", server_default="pool")
    # Deferred: queue and list queries must never drag image bytes along.
    image_png: Mapped[bytes | None] = deferred(mapped_column(sa.LargeBinary))
    width: Mapped[int | None]
    height: Mapped[int | None]
    channels: Mapped[int | None]
    content_hash: Mapped[str | None] = mapped_column(sa.String(64))
    # A uniform random number fixed at import: "random order" without ORDER BY random() scans.
    random_key: Mapped[float] = mapped_column(sa.Float)
    lease_id: Mapped[str | None] = mapped_column(sa.String(32))
    lease_expires_at: Mapped[datetime | None]
    label_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # Distinct experts with a live label on the item: the queue hands it out until the project's overlap.
    labellers: Mapped[int] = mapped_column(default=0, server_default="0")
    # How often experts skipped it: an item many skip may be unjudgeable (the admin's list shows them).
    skip_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # Place in the diversity order of the base representation (TypiClust on z) that the queue follows
    # before the first lens is live; None for items outside the first rounds' picks.
    cold_rank: Mapped[int | None]
    labelled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Label(Base):
    """One row of the append-only label history: a label, or the retraction of one."""

    __tablename__ = "labels"
    __table_args__ = (
        sa.CheckConstraint(_in("kind", LABEL_KINDS), name="kind"),
        sa.UniqueConstraint("user_id", "idempotency_key"),
        # A label is retracted at most once, even under concurrent undo clicks.
        sa.UniqueConstraint("retracts_id"),
        sa.Index("ix_labels_project_eval_id", "project_id", "eval", "id"),
        sa.Index("ix_labels_item_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    item_id: Mapped[int] = mapped_column(_fk("items.id"))
    user_id: Mapped[int | None] = mapped_column(_fk("users.id", "SET NULL"))
    kind: Mapped[str] = mapped_column(sa.String(16), default="label")
    values: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    retracts_id: Mapped[int | None] = mapped_column(_fk("labels.id"))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128))
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    eval: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # An admin's resolution of experts' disagreement: the item's target from then on, not an expert's vote.
    adjudicated: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """An item handed to one user until ``expires_at``; ended by a label, a release or expiry."""

    __tablename__ = "leases"
    __table_args__ = (
        sa.CheckConstraint(_in("end_reason", LEASE_END_REASONS), name="end_reason"),
        sa.Index("ix_leases_item_id", "item_id"),
        sa.Index("ix_leases_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    item_id: Mapped[int] = mapped_column(_fk("items.id"))
    user_id: Mapped[int] = mapped_column(_fk("users.id"))
    eval: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    score: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(sa.String(16))


class Skip(Base):
    """An expert skipped an item: the queue does not hand it to them again before ``until``."""

    __tablename__ = "skips"
    __table_args__ = (
        sa.Index("ix_skips_project_user_until", "project_id", "user_id", "until"),
        sa.Index("ix_skips_item_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    item_id: Mapped[int] = mapped_column(_fk("items.id"))
    user_id: Mapped[int] = mapped_column(_fk("users.id"))
    lease_id: Mapped[str | None] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    until: Mapped[datetime]


class Job(Base):
    """A unit of background work (pretrain, retrain, ...) claimed and run by a worker."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint(_in("kind", JOB_KINDS), name="kind"),
        sa.CheckConstraint(_in("status", JOB_STATUSES), name="status"),
        sa.Index("ix_jobs_status_created_at", "status", "created_at"),
        sa.Index("ix_jobs_project_id", "project_id"),
        # Never two queued jobs of one kind for a project, even when two requests race.
        sa.Index(
            "uq_jobs_one_queued_per_kind",
            "project_id",
            "kind",
            unique=True,
            sqlite_where=sa.text("status = 'queued'"),
            postgresql_where=sa.text("status = 'queued'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    kind: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    progress: Mapped[float] = mapped_column(default=0.0, server_default="0")
    stage: Mapped[str | None] = mapped_column(sa.String(64))
    message: Mapped[str | None] = mapped_column(sa.Text)
    eta_seconds: Mapped[float | None]
    loss: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(default=3, server_default="3")
    worker_id: Mapped[str | None] = mapped_column(sa.String(128))
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_by: Mapped[int | None] = mapped_column(_fk("users.id", "SET NULL"))


class JobRun(Base):
    """One claim of a job by a worker: written at claim time, so "ran exactly once" is a count of rows."""

    __tablename__ = "job_runs"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "attempt"),
        sa.CheckConstraint(_in("outcome", RUN_OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(_fk("jobs.id"))
    attempt: Mapped[int]
    worker_id: Mapped[str] = mapped_column(sa.String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    message: Mapped[str | None] = mapped_column(sa.Text)


class Representation(Base):
    """A base representation z of every item (``z``: npy bytes [N, d] float32 in ``item_ids`` order)."""

    __tablename__ = "representations"
    __table_args__ = (
        sa.CheckConstraint(_in("source", REPRESENTATION_SOURCES), name="source"),
        sa.Index("ix_representations_project_id", "project_id"),
        # One representation per pretrain job, however often the job's final commit is retried.
        sa.Index("uq_representations_job_id", "job_id", unique=True),
        sa.Index(
            "uq_representations_one_active",
            "project_id",
            unique=True,
            sqlite_where=sa.text("active"),
            postgresql_where=sa.text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    source: Mapped[str] = mapped_column(sa.String(16))
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    checkpoint: Mapped[bytes | None] = deferred(mapped_column(sa.LargeBinary))
    z: Mapped[bytes | None] = deferred(mapped_column(sa.LargeBinary))
    item_ids: Mapped[bytes | None] = deferred(mapped_column(sa.LargeBinary))
    active: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    job_id: Mapped[int | None] = mapped_column(_fk("jobs.id", "SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """A fitted lens (checkpoint bytes) with its metrics; one per project is active."""

    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint("project_id", "version"),
        # Idempotent activation: a retrain job stores at most one version, whichever attempt commits.
        sa.Index("uq_model_versions_job_id", "job_id", unique=True),
        sa.Index(
            "uq_model_versions_one_active",
            "project_id",
            unique=True,
            sqlite_where=sa.text("active"),
            postgresql_where=sa.text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    version: Mapped[int]
    representation_id: Mapped[int | None] = mapped_column(_fk("representations.id", "SET NULL"))
    checkpoint: Mapped[bytes | None] = deferred(mapped_column(sa.LargeBinary))
    content_hash: Mapped[str | None] = mapped_column(sa.String(64))
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    n_labels: Mapped[int] = mapped_column(default=0, server_default="0")
    active: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    job_id: Mapped[int | None] = mapped_column(_fk("jobs.id", "SET NULL"))


class Score(Base):
    """An acquisition score of one item under one model version and strategy."""

    __tablename__ = "scores"
    __table_args__ = (sa.Index("ix_scores_model_version_strategy_score", "model_version_id", "strategy", "score"),)

    model_version_id: Mapped[int] = mapped_column(_fk("model_versions.id"), primary_key=True)
    strategy: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    item_id: Mapped[int] = mapped_column(_fk("items.id"), primary_key=True)
    score: Mapped[float]


class MetricPoint(Base):
    """One point of a project's interpretability curve (metric vs number of labels)."""

    __tablename__ = "metric_points"
    __table_args__ = (sa.Index("ix_metric_points_project_id", "project_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(_fk("projects.id"))
    model_version_id: Mapped[int | None] = mapped_column(_fk("model_versions.id", "SET NULL"))
    n_labels: Mapped[int]
    overall: Mapped[float | None]
    attributes: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    test_ll: Mapped[float | None]
    extra: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
