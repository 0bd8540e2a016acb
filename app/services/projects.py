"""Projects: create (with attributes, a dataset import and a queued pretrain), read, update, summarise."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Attribute, Item, Label, Project
from app.schemas import ProjectIn
from app.services import jobs, models
from app.services.errors import Conflict, Invalid, NotFound
from app.services.imports import Loaded, load_spec, store
from ml.attributes import Attribute as MlAttribute
from ml.attributes import coerce_attributes
from ml.steps import check_representation, lens_params

SETTING_DEFAULTS = (
    "retrain_every",
    "lease_seconds",
    "eval_fraction",
    "skip_hours",
    "activation_margin",
    "overlap",
    "consensus",
)


def get(*, session: Session, project_id: int) -> Project | None:
    """The project with this id, or None."""
    return session.get(Project, project_id)


def get_or_raise(*, session: Session, project_id: int) -> Project:
    """The project with this id; NotFound otherwise."""
    project = get(session=session, project_id=project_id)
    if project is None:
        raise NotFound(f"no project {project_id}")
    return project


def list_all(*, session: Session) -> list[Project]:
    """Every project, oldest first."""
    return list(session.scalars(sa.select(Project).order_by(Project.id)))


def schema(project: Project) -> list[MlAttribute]:
    """The project's attributes as ``ml.attributes.Attribute`` objects, in position order."""
    return [
        MlAttribute(
            name=a.name,
            kind=a.kind,
            levels=tuple(a.levels or ()),
            low=a.low,  # type: ignore[arg-type]
            high=a.high,
        )
        for a in project.attributes
    ]


def effective_settings(project: Project, settings: Settings) -> dict[str, Any]:
    """The project's settings over the global defaults (retrain_every, lease_seconds, eval_fraction, skip_hours,
    activation_margin)."""
    out = {k: getattr(settings, k) for k in SETTING_DEFAULTS}
    out.update({k: v for k, v in (project.settings or {}).items() if v is not None})
    return out


def check_dataset(representation: dict[str, Any], source: str) -> None:
    """Invalid (422) unless an embeddings dataset goes with an embeddings representation, and only with it."""
    if (source == "embeddings") != (representation.get("source") == "embeddings"):
        raise Invalid(
            "dataset.source: an embeddings dataset goes with representation source 'embeddings' (and only it)"
        )


def validate_representation(representation: dict[str, Any]) -> dict[str, Any]:
    """The representation config checked by ``ml.steps``; Invalid (422) naming the key and value."""
    try:
        check_representation(representation)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return representation


def validate_attributes(attributes: list[dict[str, Any]]) -> list[MlAttribute]:
    """The attribute list checked by ``ml.attributes``; Invalid (422) naming the attribute otherwise."""
    try:
        return coerce_attributes(attributes)
    except ValueError as exc:
        raise Invalid(f"attributes: {exc}") from None


def validate_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The project settings with ``lens`` checked by ``ml.steps``; Invalid (422) naming the key and value.

    A bad lens setting would otherwise surface only when a retrain fails, minutes later.
    """
    if settings.get("lens") is not None:
        try:
            lens_params(settings["lens"])
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    return settings


def _attribute_rows(attrs: list[MlAttribute]) -> list[Attribute]:
    return [
        Attribute(
            position=i,
            name=a.name,
            kind=a.kind,
            levels=list(a.levels) if a.is_discrete else None,
            low=a.low,
            high=a.high,
        )
        for i, a in enumerate(attrs)
    ]


def create(
    *,
    session: Session,
    name: str,
    attributes: list[dict[str, Any]],
    representation: dict[str, Any],
    strategy: str,
    settings: dict[str, Any],
    loaded: Loaded | None,
    created_by_id: int | None,
) -> Project:
    """A project with its attributes and (optionally) imported items, plus a queued pretrain; one commit."""
    attrs = validate_attributes(attributes)
    validate_settings(settings)
    if session.scalar(sa.select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"a project named {name!r} already exists")
    project = Project(name=name, representation=representation, strategy=strategy, settings=settings)
    project.attributes = _attribute_rows(attrs)
    session.add(project)
    session.flush()
    if loaded is not None:
        store(session=session, project=project, loaded=loaded, commit=False)
        jobs.enqueue(
            session=session, project_id=project.id, kind="pretrain", params={}, created_by=created_by_id, commit=False
        )
    session.commit()
    return project


def create_with_dataset(
    *, session: Session, settings: Settings, body: ProjectIn, created_by_id: int | None
) -> tuple[Project, Loaded | None]:
    """Check everything, load the dataset (if any), then create the project with its items and pretrain job.

    What the REST API's create and the admin page's form share (both hold a validated ``ProjectIn``).
    Settings and attributes are checked before the load, which can take seconds; the read transaction
    ends first so SQLite's write lock is not held meanwhile.
    """
    attributes = [a.model_dump(exclude_none=True) for a in body.attributes]
    representation = body.representation.model_dump()
    project_settings = body.settings.model_dump(exclude_none=True)
    validate_attributes(attributes)
    validate_settings(project_settings)
    validate_representation(representation)
    loaded: Loaded | None = None
    if body.dataset is not None:
        check_dataset(representation, body.dataset.source)
        session.rollback()
        loaded = load_spec(body.dataset.model_dump(), settings)
    project = create(
        session=session,
        name=body.name,
        attributes=attributes,
        representation=representation,
        strategy=body.strategy,
        settings=project_settings,
        loaded=loaded,
        created_by_id=created_by_id,
    )
    return project, loaded


def update(*, session: Session, project: Project, changes: dict[str, Any], default_overlap: int = 1) -> Project:
    """Apply a PATCH: name, strategy, settings (merged), representation, attributes (rules below); committed.

    Attributes that already have labels keep their name, kind and levels; new attributes may be added;
    unlabelled ones may change or go.
    """
    if "name" in changes and changes["name"] != project.name:
        if session.scalar(sa.select(Project.id).where(Project.name == changes["name"])) is not None:
            raise Conflict(f"a project named {changes['name']!r} already exists")
        project.name = changes["name"]
    rescore = "strategy" in changes and changes["strategy"] != project.strategy
    if "strategy" in changes:
        project.strategy = changes["strategy"]
    if "settings" in changes:
        before = (project.settings or {}).get("overlap") or default_overlap
        project.settings = validate_settings({**(project.settings or {}), **changes["settings"]})
        overlap = project.settings.get("overlap") or default_overlap
        if overlap != before:
            # An item counts as labelled once `overlap` different experts labelled it: recount them all.
            session.execute(
                sa.update(Item)
                .where(Item.project_id == project.id)
                .values(labelled=Item.labellers >= overlap)
                .execution_options(synchronize_session=False)
            )
    if "representation" in changes:
        if session.scalar(
            sa.select(sa.func.count()).select_from(Item).where(Item.project_id == project.id)
        ) and changes["representation"].get("source") != project.representation.get("source"):
            raise Conflict("representation.source cannot change once items are imported")
        project.representation = validate_representation(changes["representation"])
    if "attributes" in changes:
        new = validate_attributes(changes["attributes"])
        used = _labelled_attribute_names(session, project)
        old = {a.name: a for a in schema(project)}
        new_by_name = {a.name: a for a in new}
        for name in used:
            if name not in new_by_name:
                raise Conflict(f"attributes: {name!r} has labels and cannot be removed")
            if new_by_name[name] != old[name]:
                raise Conflict(f"attributes: {name!r} has labels; its kind, levels and range cannot change")
        project.attributes.clear()
        session.flush()
        project.attributes.extend(_attribute_rows(new))
    if rescore:
        # The queue orders by the active model's scores for the project's strategy: a new strategy
        # needs them computed, or the queue would fall back to random order until the next retrain.
        mv = models.active(session=session, project_id=project.id)
        if mv is not None:
            models.ensure_scores(
                session=session, project=project, model=mv, reason=f"strategy changed to {project.strategy}"
            )
    session.commit()
    return project


def _labelled_attribute_names(session: Session, project: Project) -> set[str]:
    names: set[str] = set()
    for values in session.scalars(sa.select(Label.values).where(Label.project_id == project.id, Label.kind == "label")):
        names.update(values)
    return names


def summary(*, session: Session, project: Project) -> dict[str, Any]:
    """Counts for a project page: items, labelled items, eval items, labels, the active model version."""
    row = session.execute(
        sa.select(
            sa.func.count(Item.id),
            sa.func.coalesce(sa.func.sum(sa.case((Item.labelled, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((Item.split == "eval", 1), else_=0)), 0),
        ).where(Item.project_id == project.id)
    ).one()
    n_labels = (
        session.scalar(
            sa.select(sa.func.count()).select_from(Label).where(Label.project_id == project.id, Label.kind == "label")
        )
        or 0
    )
    active = models.active(session=session, project_id=project.id)
    return {
        "n_items": int(row[0]),
        "n_labelled": int(row[1]),
        "n_eval": int(row[2]),
        "n_labels": int(n_labels),
        "active_model": {"id": active.id, "version": active.version} if active else None,
    }
