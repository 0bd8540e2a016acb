"""POST /projects/{pid}/transform (new data through a model version) and GET /projects/{pid}/export (the
whole pool streamed as JSON Lines or CSV)."""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
import sqlalchemy as sa

from tests.app.worker_support import embeddings_project


def _png_b64(client, headers, iid: int) -> str:
    r = client.get(f"/api/v1/items/{iid}/image.png", headers=headers)
    assert r.status_code == 200
    return base64.b64encode(r.content).decode()


def _encode(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_transform_encodes_sent_images_with_the_base_model_and_applies_the_lens(client, viewer, fitted):
    pid = fitted["project"]["id"]
    ids = [int(i) for i in fitted["ids"][:6]]
    r = client.post(
        f"/api/v1/projects/{pid}/transform", json={"images": [_png_b64(client, viewer, i) for i in ids]}, headers=viewer
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 6 and body["model_version"] == 1 and body["source"] == "vae"
    z = np.asarray(body["z"])
    # The PNGs are the 8-bit images the items were imported as, so z differs from the stored z only by
    # that rounding; an encoder fed unscaled pixels or another model would land far away.
    assert np.abs(z - fitted["Z"][:6]).max() < 0.05
    lens = fitted["lens"]
    assert np.allclose(body["z_star"], lens.transform(z), atol=1e-5)
    want = lens.predict_proba(z)
    shape = body["predictions"]["shape"]
    assert shape["levels"] == ["square", "ellipse", "heart"]
    assert np.allclose(shape["probs"], want["shape"], atol=1e-5)
    assert shape["level"] == [shape["levels"][k] for k in np.argmax(want["shape"], 1)]
    assert np.allclose(body["predictions"]["x"]["mean"], want["x"][0], atol=1e-5)
    assert set(body["attribute_dims"]) == {"shape", "x"}


def test_transform_refuses_bad_input_naming_the_field_and_value(client, viewer, fitted):
    from PIL import Image

    url = f"/api/v1/projects/{fitted['project']['id']}/transform"
    good = _png_b64(client, viewer, int(fitted["ids"][0]))
    cases = [
        ({"images": [good, _encode(Image.new("L", (8, 8)))]}, "images[1]: 8×8 pixels"),
        ({"images": [_encode(Image.new("RGB", (16, 16)))]}, "images[0]: mode RGB"),
        ({"images": ["not base64!"]}, "images[0]: not base64"),
        ({"images": [base64.b64encode(b"plain text").decode()]}, "images[0]: not a readable image"),
        ({"images": [good], "embeddings": [[0.0] * 4]}, "exactly one of embeddings or images"),
        ({}, "exactly one of embeddings or images"),
        ({"images": []}, "images: empty"),
        ({"images": [good], "model_version": 7}, "model_version: project"),
        ({"embeddings": [[0.0] * 4]}, "embeddings: the project's base is 'vae'"),
    ]
    for body, message in cases:
        r = client.post(url, json=body, headers=viewer)
        assert r.status_code == 422, (body, r.text)
        assert message in r.text, (message, r.text)
    r = client.post(url, json={"images": [good] * 10_001}, headers=viewer)
    assert r.status_code == 422 and "images" in r.text


def _embeddings_model(client, admin, tmp_path, app, name: str = "emb"):
    """An embeddings project (300 digits, 8-d PCA) with a lens fitted on its z as the active model."""
    from app.db.models import ModelVersion, Representation
    from app.services.models import read_z
    from ml.lens import InterpretableLens

    project = embeddings_project(client, admin, tmp_path / "imports", name)
    with app.state.db.session() as s:
        rep = s.scalar(sa.select(Representation).where(Representation.project_id == project["id"]))
        ids, Z = read_z(session=s, rep_id=rep.id)
        attrs = [{"name": "digit", "kind": "categorical", "levels": [str(d) for d in range(10)]}]
        y = np.full(len(Z), -1)
        y[:100] = np.arange(100) % 10
        lens = InterpretableLens(attrs, n_flows=2, hidden=16, epochs=2, device="cpu").fit(Z, {"digit": y})
        mv = ModelVersion(
            project_id=project["id"], version=1, representation_id=rep.id, checkpoint=lens.to_bytes(), active=True
        )
        s.add(mv)
        s.commit()
        return project, ids, Z, lens, mv.id


def test_transform_takes_embeddings_of_the_base_and_checks_their_dimension(client, admin, viewer, tmp_path, app):
    project, _ids, Z, lens, _ = _embeddings_model(client, admin, tmp_path, app)
    url = f"/api/v1/projects/{project['id']}/transform"
    r = client.post(url, json={"embeddings": Z[:50].tolist(), "model_version": 1}, headers=viewer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert np.allclose(body["z_star"], lens.transform(Z[:50]), atol=1e-5)
    assert np.allclose(body["predictions"]["digit"]["probs"], lens.predict_proba(Z[:50])["digit"], atol=1e-5)
    r = client.post(url, json={"embeddings": [Z[0].tolist(), Z[1, :5].tolist()]}, headers=viewer)
    assert r.status_code == 422 and "embeddings[1]: 5 values" in r.text and "dimension 8" in r.text
    r = client.post(url, json={"images": ["AAAA"]}, headers=viewer)
    assert r.status_code == 422 and "images: the project's base is embeddings" in r.text


def _jsonl(r) -> list[dict]:
    return [json.loads(line) for line in r.text.splitlines()]


def test_export_streams_every_item_with_z_z_star_predictions_and_score(client, viewer, fitted, app):
    from app.db.models import Score

    pid = fitted["project"]["id"]
    ids = [int(i) for i in fitted["ids"]]
    with app.state.db.session() as s:
        mv_id = s.scalar(sa.text("SELECT id FROM model_versions WHERE project_id = :p"), {"p": pid})
        s.add_all([Score(model_version_id=mv_id, strategy="bald", item_id=ids[k], score=0.25 * k) for k in range(3)])
        s.commit()
    r = client.get(f"/api/v1/projects/{pid}/export", headers=viewer)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["x-lenslab-model-version"] == "1" and r.headers["x-lenslab-score-strategy"] == "bald"
    rows = _jsonl(r)
    assert [row["item_id"] for row in rows] == sorted(ids)
    by_id = {row["item_id"]: row for row in rows}
    Z = fitted["Z"]
    got = np.asarray([by_id[i]["z"] for i in ids])
    assert np.abs(got - Z).max() <= 1e-6
    lens = fitted["lens"]
    assert np.abs(np.asarray([by_id[i]["z_star"] for i in ids]) - lens.transform(Z)).max() <= 2e-6
    probs = np.asarray([by_id[i]["predictions"]["shape"]["probs"] for i in ids])
    assert np.abs(probs - lens.predict_proba(Z)["shape"]).max() <= 2e-6
    assert [by_id[ids[k]]["score"] for k in range(4)] == [0.0, 0.25, 0.5, None]

    r = client.get(f"/api/v1/projects/{pid}/export", params={"format": "csv"}, headers=viewer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(r.text)))
    header, body = table[0], table[1:]
    d = Z.shape[1]
    assert header[:6] == ["item_id", "source_index", "external_id", "split", "labelled", "score"]
    assert header[-6:] == ["shape", "shape_p_square", "shape_p_ellipse", "shape_p_heart", "x_mean", "x_var"]
    assert len(body) == len(ids) and all(len(row) == len(header) for row in body)
    first = dict(zip(header, body[0], strict=True))
    assert int(first["item_id"]) == min(ids)
    assert np.allclose([float(first[f"z_{k}"]) for k in range(d)], Z[ids.index(min(ids))], atol=1e-6)


def test_export_pages_by_id_without_gaps_or_repeats(client, viewer, fitted, app):
    from app.db.models import Project
    from app.services import export

    with app.state.db.session() as s:
        p = export.plan(session=s, project=s.get(Project, fitted["project"]["id"]), include="z,score")
        small = [row for rows in export.chunks(app.state.db, p, chunk=7) for row in rows]
        whole = [row for rows in export.chunks(app.state.db, p) for row in rows]
    assert small == whole and len(whole) == len(fitted["ids"])
    assert set(whole[0]) == {"item_id", "source_index", "external_id", "split", "labelled", "z", "score"}


@pytest.mark.parametrize(
    ("include", "status", "message"),
    [("z,colour", 422, "include: 'z,colour'"), (",", 422, "allowed fields"), ("z_star", 409, "need an active model")],
)
def test_export_refuses_unknown_fields_and_model_fields_without_a_model(
    client, admin, viewer, tmp_path, include, status, message
):
    project = embeddings_project(client, admin, tmp_path / "imports", "nomodel")
    url = f"/api/v1/projects/{project['id']}/export"
    r = client.get(url, params={"include": include}, headers=viewer)
    assert r.status_code == status and message in r.text, r.text
    r = client.get(url, headers=viewer)  # without a model the default is z alone
    assert r.status_code == 200, r.text
    rows = _jsonl(r)
    assert len(rows) == 300 and set(rows[0]) == {"item_id", "source_index", "external_id", "split", "labelled", "z"}
    assert r.headers["x-lenslab-fields"] == "z"
