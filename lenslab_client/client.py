"""``Lenslab``: projects, imports, the queue, labels, jobs, scores, representations and transforms."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from app.schemas import MAX_TRANSFORM_ITEMS, JobIn, LabelImportIn, LabelIn, ProjectIn, ProjectPatch, TransformIn
from lenslab_client.errors import LenslabError, describe, error_for

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
# Safe to send twice: reads, and writes the server deduplicates (a label carries an idempotency key).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class JobFailed(LenslabError):
    """A job that ended failed or cancelled; ``job`` is its last state."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(0, f"job {job['id']} ({job['kind']}) {job['status']}: {job.get('message')}")


@dataclass
class Scores:
    """The active model's acquisition scores: ``item_ids`` and ``scores`` row for row, highest first."""

    item_ids: np.ndarray
    scores: np.ndarray
    strategy: str
    model_version: int


@dataclass
class Representations:
    """The pool's export as arrays, row for row by ``item_ids`` (NaN where an item has no value):
    ``z``, ``z_star``, per attribute ``probs`` [N, C] with its ``levels`` or ``mean``/``var`` [N]."""

    item_ids: np.ndarray
    source_index: np.ndarray
    split: np.ndarray
    labelled: np.ndarray
    z: np.ndarray | None
    z_star: np.ndarray | None
    score: np.ndarray | None
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_version: int | None = None


@dataclass
class Transformed:
    """New data through a model version: ``z``, ``z_star`` and ``predictions`` (as ``Representations``)."""

    z: np.ndarray
    z_star: np.ndarray
    predictions: dict[str, dict[str, Any]]
    model_version: int
    attribute_dims: dict[str, list[int]]


def _progress_bar(out: IO[str]) -> Any:
    last = [""]

    def show(job: dict[str, Any]) -> None:
        frac = float(job.get("progress") or 0.0)
        bar = "#" * int(frac * 30)
        line = f"\rjob {job['id']} {job['kind']:<9} [{bar:<30}] {frac:4.0%} {job.get('stage') or job['status']}"
        if line != last[0]:
            out.write(line.ljust(len(last[0])))
            out.flush()
            last[0] = line

    return show


class Lenslab:
    """A lenslab server, reached with an API token.

    ``url`` and ``token`` default to the environment's ``LENSLAB_URL`` (else http://127.0.0.1:8000) and
    ``LENSLAB_TOKEN``. Answers 429 and 503 are retried ``retries`` times with exponential backoff from
    ``backoff`` seconds (or the server's Retry-After); refusals raise ``LenslabError`` subclasses that
    carry the server's message.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = token if token is not None else os.environ.get("LENSLAB_TOKEN")
        if not token:
            raise ValueError("token: pass token=… or set LENSLAB_TOKEN (create one with `lenslab tokens create NAME`)")
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries and backoff must be ≥ 0, got {retries} and {backoff}")
        self.url = (url or os.environ.get("LENSLAB_URL") or DEFAULT_URL).rstrip("/")
        self.retries, self.backoff = retries, backoff
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "lenslab-client"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Lenslab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- transport --------------------------------------------------------------------------------
    def _wait_before_retry(self, attempt: int, response: httpx.Response | None) -> None:
        delay = self.backoff * 2**attempt
        if response is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(response.headers.get("retry-after", 0)))
        time.sleep(min(delay, 30.0))

    def _send(self, method: str, path: str, *, stream: bool = False, retry: bool = True, **kw: Any) -> httpx.Response:
        """One request, retried on 429/503 (and on a lost connection when ``retry``: the request is idempotent)."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, **kw)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError:
                if not retry or attempt >= self.retries:
                    raise
                self._wait_before_retry(attempt, None)
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                response.close()
                self._wait_before_retry(attempt, response)
                attempt += 1
                continue
            if response.status_code >= 400:
                if stream:
                    response.read()
                raise error_for(response.status_code, _detail(response), method, path)
            return response

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, retry=method in _IDEMPOTENT, **kw).json()

    # -- who and what -----------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        """The token's user."""
        return self._json("GET", "/api/v1/auth/me")["user"]

    def projects(self) -> list[dict[str, Any]]:
        """Every project the token's user can see."""
        out = self._json("GET", "/api/v1/projects")
        return out["projects"] if isinstance(out, dict) else out

    def project(self, project_id: int) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/projects/{project_id}")

    def find_project(self, name: str) -> dict[str, Any]:
        """The project called ``name``; NotFound-like ``LenslabError`` when there is none."""
        for p in self.projects():
            if p["name"] == name:
                return p
        raise error_for(404, f"no project named {name!r}", "GET", "/api/v1/projects")

    def create_project(
        self,
        name: str,
        attributes: Sequence[Mapping[str, Any]],
        *,
        dataset: Mapping[str, Any] | None = None,
        representation: Mapping[str, Any] | None = None,
        strategy: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new project (admins). Checked with the server's ``ProjectIn`` before it is sent."""
        body: dict[str, Any] = {"name": name, "attributes": list(attributes)}
        for key, value in (
            ("dataset", dataset),
            ("representation", representation),
            ("strategy", strategy),
            ("settings", settings),
        ):
            if value is not None:
                body[key] = value
        ProjectIn.model_validate(body)
        return self._json("POST", "/api/v1/projects", json=body)

    def update_project(self, project_id: int, **changes: Any) -> dict[str, Any]:
        """Change a project's name, attributes, representation, strategy or settings (admins)."""
        ProjectPatch.model_validate(changes)
        return self._json("PATCH", f"/api/v1/projects/{project_id}", json=changes)

    def item(self, item_id: int) -> dict[str, Any]:
        """An item with its current label values (``source_index`` is its row in the imported data)."""
        return self._json("GET", f"/api/v1/items/{item_id}")

    # -- imports ----------------------------------------------------------------------------------
    def import_embeddings(
        self, project_id: int, embeddings: Any, images_zip: str | Path | None = None
    ) -> dict[str, Any]:
        """Upload embeddings [N, d] (an array, or a .npy path) as the project's items (admins)."""
        if isinstance(embeddings, str | Path):
            payload = Path(embeddings).read_bytes()
        else:
            Z = np.asarray(embeddings, dtype=np.float32)
            if Z.ndim != 2:
                raise ValueError(f"embeddings: a 2-d array [N, d], got shape {Z.shape}")
            buf = io.BytesIO()
            np.save(buf, Z, allow_pickle=False)
            payload = buf.getvalue()
        files: dict[str, Any] = {"file": ("embeddings.npy", payload, "application/octet-stream")}
        if images_zip is not None:
            files["images"] = ("images.zip", Path(images_zip).read_bytes(), "application/zip")
        return self._json("POST", f"/api/v1/projects/{project_id}/items:import", files=files)

    def import_images(self, project_id: int, zip_path: str | Path) -> dict[str, Any]:
        """Upload a zip of images as the project's items (admins)."""
        files = {"file": ("images.zip", Path(zip_path).read_bytes(), "application/zip")}
        return self._json("POST", f"/api/v1/projects/{project_id}/items:import", files=files)

    def import_dataset(self, project_id: int, dataset: Mapping[str, Any]) -> dict[str, Any]:
        """Add items from a dataset the server can read (e.g. ``{"source": "mnist", "path": …}``; admins)."""
        return self._json("POST", f"/api/v1/projects/{project_id}/items:import", json={"dataset": dict(dataset)})

    # -- the queue and labels ---------------------------------------------------------------------
    def next_items(self, project_id: int, n: int = 1) -> list[dict[str, Any]]:
        """Up to ``n`` items leased to you, best first (each with ``item_id`` and ``lease_id``)."""
        # Safe to resend: a pull returns your live leases first, so a lost answer loses no item.
        path = f"/api/v1/projects/{project_id}/queue/next"
        return self._send("POST", path, params={"n": n}, retry=True).json()["items"]

    def queue(self, project_id: int, *, batch: int = 10, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Leased items one by one until the queue is empty (or ``limit`` items): label or ``skip`` each;
        one you neither label nor skip comes back first on the next pull, and expires with its lease."""
        given = 0
        while limit is None or given < limit:
            items = self.next_items(project_id, n=min(batch, limit - given) if limit is not None else batch)
            if not items:
                return
            for item in items:
                yield item
                given += 1
                if limit is not None and given >= limit:
                    return

    def label(
        self,
        item_id: int,
        values: Mapping[str, Any],
        *,
        lease_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Label an item. Sent with an idempotency key (one is made), so a retried request is one label."""
        body = LabelIn(
            values=dict(values), lease_id=lease_id, idempotency_key=idempotency_key or uuid.uuid4().hex
        ).model_dump(exclude_none=True)
        return self._send("POST", f"/api/v1/items/{item_id}/labels", json=body, retry=True).json()

    def skip(self, lease_id: str) -> dict[str, Any]:
        """Give a leased item back (it goes to other experts)."""
        return self._json("POST", f"/api/v1/leases/{lease_id}/release")

    def import_labels(self, project_id: int, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Many labels at once, all or nothing (admins): rows of ``item_id`` or ``source_index``, ``values``
        and ``eval``."""
        body = LabelImportIn.model_validate({"labels": list(rows)}).model_dump(exclude_none=True)
        return self._json("POST", f"/api/v1/projects/{project_id}/labels:import", json=body)

    def labels(self, project_id: int, *, history: bool = False) -> list[dict[str, Any]]:
        """Current label values per labelled item (or, with ``history``, every label and retraction)."""
        return self._json("GET", f"/api/v1/projects/{project_id}/labels", params={"history": history})["labels"]

    def export_labels(self, project_id: int, path: str | Path, *, format: str = "csv", history: bool = False) -> Path:
        """Write the labels to ``path`` (csv, jsonl or json), streamed."""
        path = Path(path)
        r = self._send(
            "GET", f"/api/v1/projects/{project_id}/labels", params={"format": format, "history": history}, stream=True
        )
        try:
            with path.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
        finally:
            r.close()
        return path

    # -- jobs -------------------------------------------------------------------------------------
    def jobs(self, project_id: int) -> list[dict[str, Any]]:
        out = self._json("GET", f"/api/v1/projects/{project_id}/jobs")
        return out["jobs"] if isinstance(out, dict) else out

    def job(self, job_id: int) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/jobs/{job_id}")

    def start_job(self, project_id: int, kind: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Queue a pretrain, retrain, score, evaluate or experiment job (admins); an already queued job of
        that kind is returned instead of a second one."""
        body = JobIn.model_validate({"kind": kind, "params": dict(params or {})}).model_dump()
        return self._json("POST", f"/api/v1/projects/{project_id}/jobs", json=body)

    def wait(
        self,
        job_id: int,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        progress: bool | IO[str] = True,
    ) -> dict[str, Any]:
        """Poll a job until it ends; shows a progress bar (on stderr, or the stream given). Returns the
        job when it succeeded; raises ``JobFailed`` when it failed or was cancelled, TimeoutError after
        ``timeout`` seconds."""
        show = _progress_bar(sys.stderr if progress is True else progress) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if show is not None:
                show(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                if show is not None:
                    (sys.stderr if progress is True else progress).write("\n")  # type: ignore[union-attr]
                if job["status"] != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll)

    # -- models -----------------------------------------------------------------------------------
    def models(self, project_id: int) -> list[dict[str, Any]]:
        out = self._json("GET", f"/api/v1/projects/{project_id}/models")
        return out["models"] if isinstance(out, dict) else out

    def metrics(self, project_id: int) -> list[dict[str, Any]]:
        """The interpretability curve: one point per evaluation."""
        return self._json("GET", f"/api/v1/projects/{project_id}/metrics")["points"]

    def scores(
        self, project_id: int, *, strategy: str | None = None, limit: int = 100_000, unlabelled: bool = False
    ) -> Scores:
        """The active model's acquisition scores, highest first."""
        params: dict[str, Any] = {"limit": limit, "unlabelled": unlabelled}
        if strategy is not None:
            params["strategy"] = strategy
        out = self._json("GET", f"/api/v1/projects/{project_id}/scores", params=params)
        return Scores(
            item_ids=np.asarray([r["item_id"] for r in out["items"]], dtype=np.int64),
            scores=np.asarray([r["score"] for r in out["items"]], dtype=np.float64),
            strategy=out["strategy"],
            model_version=out["model_version"],
        )

    def export(self, project_id: int, *, include: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of the pool with z, z*, predictions and score (or the ``include`` fields), streamed."""
        yield from self._export(project_id, include)[1]

    def _export(self, project_id: int, include: Sequence[str] | None) -> tuple[httpx.Headers, Iterator[dict[str, Any]]]:
        params = {"format": "jsonl"}
        if include is not None:
            params["include"] = ",".join(include)
        r = self._send("GET", f"/api/v1/projects/{project_id}/export", params=params, stream=True)

        def rows() -> Iterator[dict[str, Any]]:
            try:
                for line in r.iter_lines():
                    if line:
                        yield json.loads(line)
            finally:
                r.close()

        return r.headers, rows()

    def representations(self, project_id: int, *, include: Sequence[str] | None = None) -> Representations:
        """The pool's export as NumPy arrays (see ``Representations``)."""
        levels = {a["name"]: a.get("levels") for a in self.project(project_id)["attributes"]}
        headers, rows = self._export(project_id, include)
        version = headers.get("x-lenslab-model-version")
        return _arrays(list(rows), int(version) if version else None, levels)

    def frame(self, project_id: int, *, include: Sequence[str] | None = None) -> Any:
        """The pool's export as a pandas DataFrame, one row per item (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("frame() needs pandas: pip install pandas") from None
        reps = self.representations(project_id, include=include)
        cols: dict[str, Any] = {
            "item_id": reps.item_ids,
            "source_index": reps.source_index,
            "split": reps.split,
            "labelled": reps.labelled,
        }
        if reps.score is not None:
            cols["score"] = reps.score
        for name, arr in (("z", reps.z), ("z_star", reps.z_star)):
            if arr is not None:
                cols.update({f"{name}_{k}": arr[:, k] for k in range(arr.shape[1])})
        for attr, pred in reps.predictions.items():
            if "probs" in pred:
                cols[attr] = pred["level"]
                cols.update({f"{attr}_p_{lv}": pred["probs"][:, k] for k, lv in enumerate(pred["levels"])})
            else:
                cols[f"{attr}_mean"], cols[f"{attr}_var"] = pred["mean"], pred["var"]
        return pd.DataFrame(cols).set_index("item_id")

    def transform(
        self,
        project_id: int,
        *,
        embeddings: Any = None,
        images: Any = None,
        model_version: int | None = None,
        batch_size: int = MAX_TRANSFORM_ITEMS,
    ) -> Transformed:
        """A model version (default: the active one) applied to new ``embeddings`` [N, d] or ``images``
        [N, C, H, W] (floats in [0, 1] or uint8), in requests of ``batch_size``; nothing is imported."""
        if (embeddings is None) == (images is None):
            raise ValueError("transform: pass exactly one of embeddings or images")
        if not 1 <= batch_size <= MAX_TRANSFORM_ITEMS:
            raise ValueError(f"batch_size: between 1 and {MAX_TRANSFORM_ITEMS}, got {batch_size}")
        data = np.asarray(embeddings if embeddings is not None else images)
        parts = []
        for i in range(0, len(data), batch_size):
            rows = data[i : i + batch_size]
            if embeddings is not None:
                body = {"embeddings": np.asarray(rows, dtype=np.float64).tolist()}
            else:
                body = {"images": [_png_b64(img) for img in rows]}
            if model_version is not None:
                body["model_version"] = model_version
            TransformIn.model_validate(body)
            parts.append(self._json("POST", f"/api/v1/projects/{project_id}/transform", json=body))
        if not parts:
            raise ValueError("transform: no rows to send")
        preds: dict[str, dict[str, Any]] = {}
        for name, first in parts[0]["predictions"].items():
            if "probs" in first:
                probs = np.concatenate([np.asarray(p["predictions"][name]["probs"]) for p in parts])
                preds[name] = {
                    "levels": first["levels"],
                    "probs": probs,
                    "level": np.asarray(first["levels"])[probs.argmax(1)],
                }
            else:
                preds[name] = {
                    key: np.concatenate([np.asarray(p["predictions"][name][key]) for p in parts])
                    for key in ("mean", "var")
                }
        return Transformed(
            z=np.concatenate([np.asarray(p["z"]) for p in parts]),
            z_star=np.concatenate([np.asarray(p["z_star"]) for p in parts]),
            predictions=preds,
            model_version=parts[0]["model_version"],
            attribute_dims=parts[0]["attribute_dims"],
        )


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def _png_b64(image: Any) -> str:
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"images: each image (C, H, W) with C = 1 or 3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr[0], mode="L") if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _arrays(
    rows: list[dict[str, Any]], model_version: int | None, levels: Mapping[str, list[str] | None]
) -> Representations:
    def stack(key: str) -> np.ndarray | None:
        present = [r[key] for r in rows if key in r]
        if not present:
            return None
        width = next((len(v) for v in present if v is not None), 0)
        return np.asarray([v if v is not None else [np.nan] * width for v in present], dtype=np.float64)

    preds: dict[str, dict[str, Any]] = {}
    first = next((r["predictions"] for r in rows if r.get("predictions")), None)
    for name, value in (first or {}).items():
        if "probs" in value:
            width = len(value["probs"])
            probs = np.asarray(
                [r["predictions"][name]["probs"] if r.get("predictions") else [np.nan] * width for r in rows]
            )
            level = [r["predictions"][name]["level"] if r.get("predictions") else None for r in rows]
            names = levels.get(name) or [str(k) for k in range(width)]
            preds[name] = {"levels": list(names), "probs": probs, "level": np.asarray(level, dtype=object)}
        else:
            preds[name] = {
                key: np.asarray([r["predictions"][name][key] if r.get("predictions") else np.nan for r in rows])
                for key in ("mean", "var")
            }
    return Representations(
        item_ids=np.asarray([r["item_id"] for r in rows], dtype=np.int64),
        source_index=np.asarray([r["source_index"] for r in rows], dtype=np.int64),
        split=np.asarray([r["split"] for r in rows]),
        labelled=np.asarray([r["labelled"] for r in rows], dtype=bool),
        z=stack("z"),
        z_star=stack("z_star"),
        score=(
            np.asarray([np.nan if r["score"] is None else r["score"] for r in rows])
            if rows and "score" in rows[0]
            else None
        ),
        predictions=preds,
        model_version=model_version,
    )


__all__ = ["JobFailed", "Lenslab", "Representations", "Scores", "Transformed", "describe"]
