"""32 concurrent clients against a real uvicorn server: no item under two live leases, no label lost."""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict

import httpx
import pytest
import sqlalchemy as sa

CLIENTS = 32
ROUNDS = 4


@pytest.fixture
def arranged(app, settings):
    """A shapes project and 32 experts with tokens, written straight to the test database."""
    from app.services import imports, projects, tokens, users

    with app.state.db.session() as s:
        admin = users.create(session=s, username="admin", password="admin password", role="admin")
        p = projects.create(
            session=s,
            name="race",
            attributes=[{"name": "shape", "levels": ["a", "b", "c"]}],
            representation={"source": "vae"},
            strategy="bald",
            settings={"eval_fraction": 0.1},
            created_by_id=admin.id,
            loaded=imports.load_spec({"source": "shapes", "n": 300, "size": 16}, settings),
        )
        heads = []
        for k in range(CLIENTS):
            u = users.create(session=s, username=f"e{k}", password="expert password", role="expert")
            heads.append({"Authorization": f"Bearer {tokens.create(session=s, user=u, name='t')[1]}"})
        return p.id, heads


@pytest.fixture
def server(settings, arranged, tmp_path):
    from app.bench.server import uvicorn_server

    env = {
        "LENSLAB_DATABASE_URL": settings.database_url,
        "LENSLAB_SECRET_KEY": settings.secret_key,
        "LENSLAB_DATA_DIR": str(settings.data_dir),
        "LENSLAB_ENV": "development",
    }
    with uvicorn_server(env, log_path=tmp_path / "server.log") as base:
        yield base


def test_32_clients_never_share_a_live_lease_and_every_acknowledged_label_survives(server, arranged, db):
    pid, heads = arranged
    barrier = threading.Barrier(CLIENTS)
    acknowledged: dict[int, dict] = {}
    handed: list[tuple[str, int, str]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=server, headers=heads[k], timeout=30) as c:
            barrier.wait()
            for rnd in range(ROUNDS):
                r = c.post(f"/api/v1/projects/{pid}/queue/next", params={"n": 2})
                if r.status_code != 200:
                    with lock:
                        errors.append(f"next {r.status_code} {r.text}")
                    continue
                items = r.json()["items"]
                with lock:
                    handed.extend((f"e{k}", i["item_id"], i["lease_id"]) for i in items)
                for j, it in enumerate(items):
                    if j == 0:
                        values = {"shape": "abc"[(k + rnd) % 3]}
                        r = c.post(
                            f"/api/v1/items/{it['item_id']}/labels",
                            json={"values": values, "lease_id": it["lease_id"], "idempotency_key": f"e{k}-{rnd}"},
                        )
                        if r.status_code in (200, 201):
                            with lock:
                                acknowledged[r.json()["id"]] = {"item_id": it["item_id"], "values": values}
                        else:
                            with lock:
                                errors.append(f"label {r.status_code} {r.text}")
                    else:
                        r = c.post(f"/api/v1/leases/{it['lease_id']}/release")
                        if r.status_code != 200:
                            with lock:
                                errors.append(f"release {r.status_code} {r.text}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(handed) == CLIENTS * ROUNDS * 2 and len({lid for _, _, lid in handed}) == len(handed)
    assert len(acknowledged) == CLIENTS * ROUNDS

    db.rollback()
    from app.db.models import Label, Lease

    leases = db.execute(sa.select(Lease.id, Lease.item_id, Lease.created_at, Lease.expires_at, Lease.ended_at)).all()
    assert len(leases) == len(handed)
    by_item = defaultdict(list)
    for lease in leases:
        by_item[lease.item_id].append(lease)
    for item_id, rows in by_item.items():
        rows.sort(key=lambda r: r.created_at)
        for a, b in itertools.pairwise(rows):
            end = a.ended_at or a.expires_at
            assert end <= b.created_at, f"item {item_id}: lease {a.id} still live when {b.id} began"
    stored = {row.id: row for row in db.execute(sa.select(Label.id, Label.item_id, Label.values)).all()}
    for lid, want in acknowledged.items():
        assert lid in stored and stored[lid].item_id == want["item_id"]
        assert stored[lid].values == want["values"]
    labelled = {want["item_id"] for want in acknowledged.values()}
    assert len(labelled) == len(acknowledged)  # a labelled item is never handed out again
