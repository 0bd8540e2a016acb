"""Hostile imports through the API: malformed IDX headers, truncated gzip, absurd dimensions, a zip bomb,
non-image files. Each is refused with a 4xx naming the problem, and nothing is written."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DIGITS_ATTRIBUTES, count


def _idx_images(n: int, rows: int, cols: int, *, magic: int = 2051, payload: bytes | None = None) -> bytes:
    head = struct.pack(">IIII", magic, n, rows, cols)
    return head + (payload if payload is not None else bytes(n * rows * cols))


def _mnist_dir(root: Path, name: str, data: bytes, *, gz: bool = False) -> Path:
    d = root / name
    d.mkdir(parents=True)
    fname = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (d / fname).write_bytes(gzip.compress(data) if gz else data)
    return d


def _create(client, admin, directory: Path):
    return client.post(
        "/api/v1/projects",
        headers=admin,
        json={
            "name": f"idx-{directory.name}",
            "attributes": DIGITS_ATTRIBUTES,
            "dataset": {"source": "mnist", "path": str(directory), "split": "train"},
        },
    )


CASES = {
    "bad-magic": (lambda: _idx_images(2, 4, 4, magic=0x12345678), False, "magic"),
    "absurd-count": (lambda: _idx_images(2**31 - 1, 28, 28, payload=b""), False, "absurd"),
    "absurd-side": (lambda: _idx_images(1, 100_000, 28, payload=b""), False, "absurd"),
    "truncated-payload": (lambda: _idx_images(10, 28, 28)[: 16 + 100], False, "truncated"),
    "short-header": (lambda: b"\x00\x00\x08\x03\x00", False, "idx"),
    "truncated-gzip": (lambda: _idx_images(10, 28, 28), True, "gzip"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_idx_files_are_refused_naming_the_problem_and_write_nothing(client, admin, db, settings, case):
    make, gz, fragment = CASES[case]
    root = settings.import_roots[-1]
    data = make()
    d = _mnist_dir(root, case, data, gz=gz)
    if case == "truncated-gzip":  # cut the compressed stream mid-way, as an interrupted download does
        f = d / "train-images-idx3-ubyte.gz"
        f.write_bytes(f.read_bytes()[:-20])
    r = _create(client, admin, d)
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert fragment in r.text.lower() and "dataset" in r.text, r.text
    assert count(db, "projects") == 0 and count(db, "items") == 0 and count(db, "jobs") == 0


def _empty_project(client, admin) -> int:
    r = client.post("/api/v1/projects", json={"name": "uploads", "attributes": DIGITS_ATTRIBUTES}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_zip_bomb_is_refused_with_expansion_bounded(client, admin, db, settings):
    pid = _empty_project(client, admin)
    # 1.5 GB of zeros (above the 4 × upload-limit expansion budget) compress to about 1.5 MB.
    budget = settings.max_upload_bytes * 4
    bomb = io.BytesIO()
    with (
        zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("huge.png", "w", force_zip64=True) as f,
    ):
        chunk = bytes(2**20)
        for _ in range(budget // 2**20 + 8):
            f.write(chunk)
    data = bomb.getvalue()
    assert len(data) < settings.max_upload_bytes
    r = client.post(
        f"/api/v1/projects/{pid}/items:import", files={"file": ("bomb.zip", data, "application/zip")}, headers=admin
    )
    assert r.status_code in (413, 422), r.text
    assert "limit" in r.text or "large" in r.text or "bytes" in r.text, r.text
    assert count(db, "items") == 0 and count(db, "jobs", "kind != 'pretrain'") == 0


def test_non_image_files_in_a_zip_are_reported_and_a_zip_of_only_those_writes_nothing(client, admin, db):
    pid = _empty_project(client, admin)
    data = _zip({"notes.txt": b"hello", "script.png": b"#!/bin/sh\necho pwned\n", "x.pdf": b"%PDF-1.4"})
    r = client.post(
        f"/api/v1/projects/{pid}/items:import", files={"file": ("x.zip", data, "application/zip")}, headers=admin
    )
    assert r.status_code == 422, r.text
    assert "image" in r.text.lower()
    assert count(db, "items") == 0


@pytest.mark.parametrize(
    "blob, fragment",
    [
        (b"just some text, not an archive", "zip"),
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "zip"),
        (b"PK\x03\x04" + bytes(30), "zip"),
    ],
)
def test_an_upload_that_is_neither_a_zip_nor_embeddings_is_refused(client, admin, db, blob, fragment):
    pid = _empty_project(client, admin)
    r = client.post(
        f"/api/v1/projects/{pid}/items:import",
        files={"file": ("f.bin", blob, "application/octet-stream")},
        headers=admin,
    )
    assert r.status_code == 422, r.text
    assert fragment in r.text.lower() and "file" in r.text
    assert count(db, "items") == 0


def test_embeddings_with_absurd_shape_or_non_finite_values_are_refused(client, admin, db):
    pid = _empty_project(client, admin)
    for arr, fragment in [(np.zeros((3, 4, 5), np.float32), "2-d"), (np.array([[np.nan, 1.0]], np.float32), "finite")]:
        buf = io.BytesIO()
        np.save(buf, arr)
        r = client.post(
            f"/api/v1/projects/{pid}/items:import",
            files={"file": ("z.npy", buf.getvalue(), "application/octet-stream")},
            headers=admin,
        )
        assert r.status_code == 422 and fragment in r.text.lower(), r.text
    assert count(db, "items") == 0
