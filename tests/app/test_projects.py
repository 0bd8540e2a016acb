"""Projects, dataset imports (built-in, IDX, zip, embeddings), items and images."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DIGITS_ATTRIBUTES, SHARED_DATA, count, create_project


def _png(value: int = 128, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _empty_project(client, admin, name="uploads", representation=None):
    body = {"name": name, "attributes": DIGITS_ATTRIBUTES}
    if representation:
        body["representation"] = representation
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()


def test_creating_a_digits_project_imports_every_item_and_queues_a_pretrain(client, project, db):
    assert project["n_items"] == 1797 and project["import"]["errors"] == []
    assert project["job"]["kind"] == "pretrain" and project["job"]["status"] == "queued"
    assert count(db, "items", f"project_id = {project['id']} AND split = 'pool'") == 1797
    assert [a["name"] for a in project["attributes"]] == ["digit", "thickness"]


def test_project_names_are_unique(client, admin, project):
    r = client.post("/api/v1/projects", json={"name": "digits", "attributes": DIGITS_ATTRIBUTES}, headers=admin)
    assert r.status_code == 409


@pytest.mark.parametrize(
    "attributes, fragment",
    [
        ([], "attributes"),
        ([{"name": "a", "kind": "categorical", "levels": ["x"]}], "at least 2 levels"),
        ([{"name": "a", "kind": "continuous", "low": 5, "high": 1}], "low < high"),
        ([{"name": "a", "levels": ["x", "y"]}, {"name": "a", "levels": ["x", "y"]}], "unique"),
        ([{"name": "a", "kind": "colour", "levels": ["x", "y"]}], "kind"),
    ],
)
def test_bad_attribute_schemas_are_422_and_write_nothing(client, admin, db, attributes, fragment):
    r = client.post("/api/v1/projects", json={"name": "p", "attributes": attributes}, headers=admin)
    assert r.status_code == 422 and fragment in str(r.json()["detail"])
    assert count(db, "projects") == 0


def test_server_paths_outside_the_import_roots_are_refused_naming_the_field(client, admin, db):
    body = {"name": "p", "attributes": DIGITS_ATTRIBUTES, "dataset": {"source": "mnist", "path": "/etc"}}
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 422 and "dataset.path" in r.json()["detail"]
    assert count(db, "projects") == 0


def test_mnist_idx_files_import_with_a_limit(client, admin):
    body = {
        "name": "mnist",
        "attributes": DIGITS_ATTRIBUTES,
        "dataset": {"source": "mnist", "path": str(SHARED_DATA / "mnist"), "split": "test", "limit": 50},
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json()["n_items"] == 50
    item = client.get(f"/api/v1/projects/{r.json()['id']}/items?limit=1", headers=admin).json()["items"][0]
    assert (item["width"], item["height"], item["source_index"]) == (28, 28, 0)


def test_shapes_import_through_the_items_endpoint_adds_items(client, admin):
    p = _empty_project(client, admin)
    r = client.post(
        f"/api/v1/projects/{p['id']}/items:import", json={"dataset": {"source": "shapes", "n": 40}}, headers=admin
    )
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == 40 and r.json()["job"]["kind"] == "pretrain"


def test_a_corrupt_image_inside_a_zip_is_reported_and_the_rest_imported(client, admin, db):
    p = _empty_project(client, admin)
    data = _zip({"a.png": _png(10), "b.png": b"\x89PNG this is not an image", "c.png": _png(200)})
    r = client.post(
        f"/api/v1/projects/{p['id']}/items:import", files={"file": ("x.zip", data, "application/zip")}, headers=admin
    )
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == 2
    assert len(r.json()["errors"]) == 1 and "b.png" in r.json()["errors"][0]
    ids = sorted(
        i["external_id"] for i in client.get(f"/api/v1/projects/{p['id']}/items", headers=admin).json()["items"]
    )
    assert ids == ["a.png", "c.png"]


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "ok/../../evil.png"])
def test_a_zip_slip_name_is_refused_and_nothing_is_imported(client, admin, db, name):
    p = _empty_project(client, admin)
    data = _zip({"good.png": _png(), name: _png()})
    r = client.post(
        f"/api/v1/projects/{p['id']}/items:import", files={"file": ("x.zip", data, "application/zip")}, headers=admin
    )
    assert r.status_code == 422 and "file" in r.json()["detail"]
    assert count(db, "items") == 0 and count(db, "jobs") == 0


def test_an_oversize_upload_is_413_by_content_length(client, admin, db, settings):
    p = _empty_project(client, admin)
    big = b"\0" * (settings.max_upload_bytes + 1)
    r = client.post(f"/api/v1/projects/{p['id']}/items:import", files={"file": ("x.zip", big)}, headers=admin)
    assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["detail"]
    assert count(db, "items") == 0


def test_an_oversize_streamed_upload_without_content_length_is_413(client, admin, db, settings):
    p = _empty_project(client, admin)
    boundary = "lenslabboundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        for _ in range(settings.max_upload_bytes // 65536 + 2):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        f"/api/v1/projects/{p['id']}/items:import",
        content=body(),
        headers={**admin, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413
    assert count(db, "items") == 0


def test_embeddings_upload_with_images_creates_items_and_the_active_representation(client, admin, db):
    p = _empty_project(client, admin, representation={"source": "embeddings"})
    z = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, z)
    images = _zip({"0.png": _png(1), "1.png": _png(2), "2.png": _png(3)})
    r = client.post(
        f"/api/v1/projects/{p['id']}/items:import",
        headers=admin,
        files={"file": ("z.npy", buf.getvalue()), "images": ("i.zip", images)},
    )
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == 3
    assert count(db, "representations", "active AND source = 'embeddings'") == 1
    items = client.get(f"/api/v1/projects/{p['id']}/items", headers=admin).json()["items"]
    rep = client.get(f"/api/v1/items/{items[2]['id']}/representation", headers=admin).json()
    assert np.allclose(rep["z"], z[2]) and rep["z_star"] is None


def test_a_pickled_npy_upload_is_refused(client, admin, db):
    p = _empty_project(client, admin, representation={"source": "embeddings"})
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = client.post(
        f"/api/v1/projects/{p['id']}/items:import", headers=admin, files={"file": ("z.npy", buf.getvalue())}
    )
    assert r.status_code == 422
    assert count(db, "items") == 0


def test_import_with_malformed_json_or_unknown_source_is_422(client, admin):
    p = _empty_project(client, admin)
    url = f"/api/v1/projects/{p['id']}/items:import"
    r = client.post(url, content=b"{not json", headers={**admin, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post(url, json={"dataset": {"source": "cifar"}}, headers=admin)
    assert r.status_code == 422 and "dataset" in str(r.json()["detail"])


def test_items_page_by_cursor_and_filter_by_split_and_labelled(client, admin, project):
    url = f"/api/v1/projects/{project['id']}/items"
    first = client.get(url, params={"limit": 500}, headers=admin).json()
    second = client.get(url, params={"limit": 500, "cursor": first["next_cursor"]}, headers=admin).json()
    ids = [i["id"] for i in first["items"] + second["items"]]
    assert len(ids) == 1000 and len(set(ids)) == 1000 and ids == sorted(ids)
    assert client.get(url, params={"labelled": True}, headers=admin).json()["items"] == []
    assert client.get(url, params={"split": "eval"}, headers=admin).json()["items"] == []
    assert client.get(url, params={"cursor": "!!"}, headers=admin).status_code == 422


def test_image_is_png_upscaled_crisply_with_an_etag(client, viewer, project):
    iid = client.get(f"/api/v1/projects/{project['id']}/items?limit=1", headers=viewer).json()["items"][0]["id"]
    r = client.get(f"/api/v1/items/{iid}/image.png", params={"scale": 4}, headers=viewer)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    assert img.shape == (32, 32)
    assert (img[::4, ::4] == img[1::4, 1::4]).all()  # every 4×4 block is one source pixel
    again = client.get(
        f"/api/v1/items/{iid}/image.png", params={"scale": 4}, headers={**viewer, "If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304
    assert client.get(f"/api/v1/items/{iid}/image.png", params={"scale": 99}, headers=viewer).status_code == 422


def test_patch_changes_settings_and_refuses_changing_a_labelled_attribute(client, admin, expert, project):
    pid = project["id"]
    r = client.patch(
        f"/api/v1/projects/{pid}", json={"settings": {"retrain_every": 7}, "strategy": "max_entropy"}, headers=admin
    )
    assert r.status_code == 200 and r.json()["settings"]["retrain_every"] == 7
    assert client.get(f"/api/v1/projects/{pid}", headers=admin).json()["effective_settings"]["retrain_every"] == 7
    iid = client.get(f"/api/v1/projects/{pid}/items?limit=1", headers=admin).json()["items"][0]["id"]
    assert (
        client.post(f"/api/v1/items/{iid}/labels", json={"values": {"digit": "3"}}, headers=expert).status_code == 201
    )
    changed = [{"name": "digit", "kind": "categorical", "levels": ["a", "b"]}, DIGITS_ATTRIBUTES[1]]
    assert client.patch(f"/api/v1/projects/{pid}", json={"attributes": changed}, headers=admin).status_code == 409
    added = [*DIGITS_ATTRIBUTES, {"name": "slant", "kind": "continuous", "low": -1, "high": 1}]
    r = client.patch(f"/api/v1/projects/{pid}", json={"attributes": added}, headers=admin)
    assert r.status_code == 200 and [a["name"] for a in r.json()["attributes"]] == ["digit", "thickness", "slant"]


def test_second_project_is_listed_with_counts(client, admin, viewer, project):
    create_project(client, admin, name="digits-2")
    listed = client.get("/api/v1/projects", headers=viewer).json()["projects"]
    assert [p["name"] for p in listed] == ["digits", "digits-2"] and all(p["n_items"] == 1797 for p in listed)


def test_strategy_defaults_to_auto_says_what_it_follows_and_refuses_unknown_names(client, admin):
    p = _empty_project(client, admin, name="strategies")
    assert p["strategy"] == "auto" and p["strategy_in_effect"] == "typiclust"
    for name in ("cover", "typiclust", "power", "diverse", "bald", "max_entropy", "random"):
        r = client.patch(f"/api/v1/projects/{p['id']}", json={"strategy": name}, headers=admin)
        assert r.status_code == 200 and r.json()["strategy_in_effect"] == name, r.text
    r = client.patch(f"/api/v1/projects/{p['id']}", json={"strategy": "smart"}, headers=admin)
    assert r.status_code == 422
    detail = str(r.json()["detail"])
    assert "strategy" in detail and "typiclust" in detail and "auto" in detail  # the field, the allowed values
    r = client.post(
        "/api/v1/projects", json={"name": "x", "attributes": DIGITS_ATTRIBUTES, "strategy": "topk"}, headers=admin
    )
    assert r.status_code == 422 and "strategy" in str(r.json()["detail"])
