"""HTML form posts turned into the REST API's request models, with errors named per form field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData

from app.schemas import ImportIn, ProjectIn

DATASET_SOURCES = ("digits", "shapes", "mnist", "images", "embeddings")


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def _number(raw: str, field: str, errors: dict[str, str], *, integer: bool = False) -> float | int | None:
    if raw == "":
        return None
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        errors[field] = f"{field}: expected {'a whole number' if integer else 'a number'}, got {raw!r}"
        return None


def dataset_spec(form: FormData, errors: dict[str, str]) -> dict[str, Any] | None:
    """The dataset spec named by the form's source fields, or None for "no data yet"."""
    source = _text(form, "source")
    if source in ("", "none"):
        return None
    if source not in DATASET_SOURCES:
        errors["source"] = f"source: one of {', '.join(DATASET_SOURCES)}"
        return None
    spec: dict[str, Any] = {"source": source}
    if source == "shapes":
        for key in ("n", "size", "seed"):
            v = _number(_text(form, f"source_{key}"), f"source_{key}", errors, integer=True)
            if v is not None:
                spec[key] = v
    if source in ("mnist", "images", "embeddings"):
        path = _text(form, "source_path")
        if not path:
            errors["source_path"] = f"source_path: a server-side path is required for {source}"
        spec["path"] = path
    if source == "mnist":
        spec["split"] = _text(form, "source_split") or "train"
        v = _number(_text(form, "source_limit"), "source_limit", errors, integer=True)
        if v is not None:
            spec["limit"] = v
    if source in ("images", "embeddings"):
        v = _number(_text(form, "source_size"), "source_size", errors, integer=True)
        if v is not None:
            spec["size"] = v
        spec["mode"] = _text(form, "source_mode") or "L"
    if source == "embeddings" and _text(form, "source_images"):
        spec["images"] = _text(form, "source_images")
    return spec


def attribute_rows(form: FormData) -> list[dict[str, str]]:
    """The attribute editor's rows as typed (for re-display), blank rows dropped."""
    names, kinds = form.getlist("attr_name"), form.getlist("attr_kind")
    levels, lows, highs = form.getlist("attr_levels"), form.getlist("attr_low"), form.getlist("attr_high")
    rows = []
    for i, name in enumerate(names):
        row = {
            "name": str(name).strip(),
            "kind": str(kinds[i]) if i < len(kinds) else "categorical",
            "levels": str(levels[i]).strip() if i < len(levels) else "",
            "low": str(lows[i]).strip() if i < len(lows) else "",
            "high": str(highs[i]).strip() if i < len(highs) else "",
        }
        if row["name"] or row["levels"]:
            rows.append(row)
    return rows


def _attributes(rows: list[dict[str, str]], errors: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        attr: dict[str, Any] = {"name": row["name"], "kind": row["kind"]}
        if row["kind"] == "continuous":
            for key in ("low", "high"):
                v = _number(row[key], f"attributes[{i}].{key}", errors)
                if v is not None:
                    attr[key] = v
        else:
            attr["levels"] = [v.strip() for v in row["levels"].split(",") if v.strip()]
        out.append(attr)
    if not out:
        errors["attributes"] = "attributes: define at least one attribute"
    return out


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts[:1] == ["attributes"] and len(parts) > 1:
        return f"attributes[{parts[1]}]" + ("." + ".".join(parts[2:]) if len(parts) > 2 else "")
    return ".".join(parts)


def project_in(form: FormData) -> tuple[ProjectIn | None, dict[str, str], dict[str, Any]]:
    """(the validated ProjectIn or None, errors by field, the values to show again in the form)."""
    errors: dict[str, str] = {}
    rows = attribute_rows(form)
    attrs = _attributes(rows, errors)
    representation: dict[str, Any] = {"source": _text(form, "representation") or "vae"}
    latent = _number(_text(form, "latent_dim"), "latent_dim", errors, integer=True)
    if latent is not None:
        representation["latent_dim"] = latent
    settings: dict[str, Any] = {}
    for key, integer in (
        ("retrain_every", True),
        ("lease_seconds", True),
        ("eval_fraction", False),
        ("skip_hours", False),
        ("overlap", True),
    ):
        v = _number(_text(form, key), key, errors, integer=integer)
        if v is not None:
            settings[key] = v
    body: dict[str, Any] = {
        "name": _text(form, "name"),
        "attributes": attrs,
        "representation": representation,
        "strategy": _text(form, "strategy") or "bald",
        "settings": settings,
    }
    spec = dataset_spec(form, errors)
    if spec is not None:
        body["dataset"] = spec
    shown = {
        k: _text(form, k)
        for k in (
            "name",
            "source",
            "source_path",
            "source_n",
            "source_size",
            "source_seed",
            "source_split",
            "source_limit",
            "source_mode",
            "source_images",
            "representation",
            "latent_dim",
            "strategy",
            "retrain_every",
            "lease_seconds",
            "eval_fraction",
            "skip_hours",
            "overlap",
        )
    }
    shown["attributes"] = rows
    if errors:
        return None, errors, shown
    try:
        return ProjectIn.model_validate(body), {}, shown
    except ValidationError as exc:
        for e in exc.errors():
            loc = tuple(p for p in e["loc"] if not isinstance(p, str) or p not in DATASET_SOURCES)
            field = _field_of(loc)
            errors.setdefault(field or "form", f"{field}: {e['msg']}")
        return None, errors, shown


def import_spec(form: FormData) -> tuple[ImportIn | None, dict[str, str]]:
    """A server-side import (same source fields as the project form) as ImportIn."""
    errors: dict[str, str] = {}
    spec = dataset_spec(form, errors)
    if spec is None and not errors:
        errors["source"] = "source: choose a data source or upload a file"
    if errors:
        return None, errors
    try:
        return ImportIn.model_validate({"dataset": spec}), {}
    except ValidationError as exc:
        return None, {
            _field_of(tuple(e["loc"])) or "form": f"{_field_of(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()
        }
