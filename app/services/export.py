"""The full-pool export: every item with its z, z*, predictions and acquisition score, streamed.

Items are read in chunks by id (keyset), each in its own short read transaction, and written out
as they are computed, so memory stays flat however large the pool: the added memory is one chunk's
rows plus the representation's z table, which every read of z shares anyway.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from app.db.models import Item, ModelVersion, Project, Score
from app.db.session import Database
from app.services import models
from app.services.errors import Conflict, Invalid

CHUNK = 5000
FIELDS = ("z", "z_star", "predictions", "score")
MODEL_FIELDS = frozenset({"z_star", "predictions", "score"})
LENS_FIELDS = frozenset({"z_star", "predictions"})
DIGITS = 6  # decimals written: float32 z carries about 7 significant digits, probabilities need no more


@dataclass
class ExportPlan:
    """What one export writes: fixed when the request starts, whatever retrains happen meanwhile."""

    project_id: int
    fields: tuple[str, ...]
    table: models.ZTable
    attrs: list[tuple[str, list[str] | None]]  # (name, levels or None for continuous), in project order
    model: ModelVersion | None
    lens: Any
    strategy: str | None
    dim: int

    def header(self) -> list[str]:
        """The CSV columns."""
        cols = ["item_id", "source_index", "external_id", "split", "labelled"]
        if "score" in self.fields:
            cols.append("score")
        if "z" in self.fields:
            cols += [f"z_{k}" for k in range(self.dim)]
        if "z_star" in self.fields:
            cols += [f"z_star_{k}" for k in range(self.dim)]
        if "predictions" in self.fields:
            for name, levels in self.attrs:
                cols += [name, *(f"{name}_p_{lv}" for lv in levels)] if levels else [f"{name}_mean", f"{name}_var"]
        return cols


def plan(*, session: Session, project: Project, include: str | None) -> ExportPlan:
    """Check ``include`` (comma-separated fields; default every field there is) and fix the model to export."""
    rep = models.active_representation(session=session, project_id=project.id)
    mv = models.active(session=session, project_id=project.id)
    if include is None:
        fields = FIELDS if mv is not None else ("z",)
    else:
        fields = tuple(f.strip() for f in include.split(",") if f.strip())
        unknown = [f for f in fields if f not in FIELDS]
        if unknown or not fields:
            raise Invalid(f"include: {include!r}; allowed fields: {', '.join(FIELDS)} (comma-separated)")
        if mv is None and MODEL_FIELDS.intersection(fields):
            raise Conflict(
                f"include: {', '.join(sorted(MODEL_FIELDS.intersection(fields)))} need an active model, and "
                f"project {project.id} has none yet"
            )
    table = models.z_table(session=session, rep=rep)
    return ExportPlan(
        project_id=project.id,
        fields=fields,
        table=table,
        attrs=[(a.name, list(a.levels) if a.levels else None) for a in project.attributes],
        model=mv,
        # Only z* and the predictions read the lens: an export of z and scores never loads it.
        lens=models.load_lens(session=session, mv=mv) if mv is not None and LENS_FIELDS & set(fields) else None,
        strategy=models.scoring_strategy(project) if mv is not None else None,
        dim=int(table.Z.shape[1]) if table.Z.ndim == 2 else 0,
    )


def _rounded(a: np.ndarray) -> list[Any]:
    return np.round(np.asarray(a, dtype=np.float64), DIGITS).tolist()


def chunks(db: Database, p: ExportPlan, chunk: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    """The export's rows, ``chunk`` items at a time in id order; a value the item has not (no z, no score)
    is None."""
    last = 0
    while True:
        with db.session(write=False) as s:
            items = s.execute(
                sa.select(Item.id, Item.source_index, Item.external_id, Item.split, Item.labelled)
                .where(Item.project_id == p.project_id, Item.id > last)
                .order_by(Item.id)
                .limit(chunk)
            ).all()
            if not items:
                return
            ids = np.asarray([r.id for r in items], dtype=np.int64)
            scores: dict[int, float] = {}
            if "score" in p.fields and p.model is not None:
                scores = dict(
                    s.execute(
                        sa.select(Score.item_id, Score.score).where(
                            Score.model_version_id == p.model.id,
                            Score.strategy == p.strategy,
                            Score.item_id.between(int(ids[0]), int(ids[-1])),
                        )
                    ).all()
                )
        last = int(ids[-1])
        rows = p.table.rows(ids)
        have = rows >= 0
        Z = p.table.Z[rows[have]]
        per_item: dict[str, list[Any]] = {}
        if "z" in p.fields:
            per_item["z"] = _rounded(Z)
        if p.lens is not None and len(Z):
            Zs, pred = p.lens.transform_and_predict(Z)
            if "z_star" in p.fields:
                per_item["z_star"] = _rounded(Zs)
            if "predictions" in p.fields:
                per_item["predictions"] = _prediction_rows(pred, p.attrs, len(Z))
        out: list[dict[str, Any]] = []
        k = 0
        for r, ok in zip(items, have.tolist(), strict=True):
            row: dict[str, Any] = {
                "item_id": r.id,
                "source_index": r.source_index,
                "external_id": r.external_id,
                "split": r.split,
                "labelled": bool(r.labelled),
            }
            if "score" in p.fields:
                sc = scores.get(r.id)
                row["score"] = None if sc is None else round(float(sc), DIGITS)
            for name, values in per_item.items():
                row[name] = values[k] if ok else None
            for name in ("z", "z_star", "predictions"):
                if name in p.fields and name not in per_item:
                    row[name] = None
            k += ok
            out.append(row)
        yield out


def _prediction_rows(pred: dict[str, Any], attrs: list[tuple[str, list[str] | None]], n: int) -> list[dict[str, Any]]:
    cols: dict[str, list[dict[str, Any]]] = {}
    for name, levels in attrs:
        value = pred[name]
        if isinstance(value, tuple):
            cols[name] = [{"mean": m, "var": v} for m, v in zip(_rounded(value[0]), _rounded(value[1]), strict=True)]
        else:
            probs = np.asarray(value)
            best = probs.argmax(1)
            names = levels or [str(i) for i in range(probs.shape[1])]
            cols[name] = [{"level": names[b], "probs": p} for b, p in zip(best.tolist(), _rounded(probs), strict=True)]
    return [{name: cols[name][i] for name, _ in attrs} for i in range(n)]


def jsonl(db: Database, p: ExportPlan) -> Iterator[bytes]:
    """One JSON object per item and line."""
    for rows in chunks(db, p):
        yield "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()


def _csv_cells(row: dict[str, Any], p: ExportPlan) -> list[Any]:
    cells: list[Any] = [row["item_id"], row["source_index"], row["external_id"] or "", row["split"], row["labelled"]]
    if "score" in p.fields:
        cells.append("" if row["score"] is None else row["score"])
    for name in ("z", "z_star"):
        if name in p.fields:
            cells += row[name] if row[name] is not None else [""] * p.dim
    if "predictions" in p.fields:
        pred = row["predictions"]
        for name, levels in p.attrs:
            width = 1 + len(levels) if levels else 2
            if pred is None:
                cells += [""] * width
            elif levels:
                cells += [pred[name]["level"], *pred[name]["probs"]]
            else:
                cells += [pred[name]["mean"], pred[name]["var"]]
    return cells


def csv_lines(db: Database, p: ExportPlan) -> Iterator[bytes]:
    """A header line, then one line per item."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(p.header())
    for rows in chunks(db, p):
        for r in rows:
            writer.writerow(_csv_cells(r, p))
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()
