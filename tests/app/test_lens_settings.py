"""Lens settings of a project: refused with a named 422 when bad; k dims per attribute end to end.

The end-to-end test runs the in-process worker on a small shapes project with a tiny VAE and lens
(2 designated z* dims per attribute), then reads the k-dim metric from the REST API and the pages,
the flow family from the model versions, and a 2-D traversal grid whose pixel size is measured.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from tests.app.worker_support import wait_job
from tests.conftest import create_project

SHAPE = [{"name": "shape", "kind": "categorical", "levels": ["square", "ellipse", "heart"]}]
# Tiny on purpose: the tests check what the app does with the lens, not the lens's quality.
TINY_K2_LENS = {"dims_per_attribute": 2, "epochs": 3, "n_flows": 2, "hidden": 16}


@pytest.mark.parametrize(
    ("lens", "named"),
    [
        ({"flow": "bogus"}, ["settings.lens.flow", "'bogus'"]),
        ({"alpha": "sometimes"}, ["settings.lens.alpha", "'sometimes'"]),
        ({"consistency_weight": -1}, ["settings.lens.consistency_weight", "-1"]),
        ({"mixup_weight": "lots"}, ["settings.lens.mixup_weight", "'lots'"]),
        ({"selection_folds": 1}, ["settings.lens.selection_folds", "1"]),
        ({"dims_per_attribute": 0}, ["settings.lens.dims_per_attribute", "0"]),
        ({"pseudo_label_threshold": 1.5}, ["settings.lens.pseudo_label_threshold", "1.5"]),
        ({"flows": 3}, ["settings.lens", "'flows'"]),
    ],
)
def test_a_bad_lens_setting_is_a_422_naming_the_field_and_value(client, admin, lens, named):
    body = {"name": "bad-lens", "dataset": {"source": "digits"}, "attributes": SHAPE, "settings": {"lens": lens}}
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert all(part in detail for part in named), detail
    assert client.get("/api/v1/projects", headers=admin).json()["projects"] == []  # nothing was created


def test_new_lens_settings_are_accepted_and_bad_ones_refused_on_patch_and_job(client, admin):
    good = {
        "flow": "auto",
        "alpha": "auto",
        "dims_per_attribute": 2,
        "pseudo_label_threshold": 0.9,
        "pseudo_label_weight": 5.0,
        "consistency_weight": 0.5,
        "mixup_weight": 0.1,
        "selection_folds": 3,
    }
    p = create_project(client, admin, name="good-lens", attributes=SHAPE, settings={"lens": good})
    assert p["settings"]["lens"] == good
    r = client.patch(
        f"/api/v1/projects/{p['id']}", json={"settings": {"lens": {**good, "flow": "coupling"}}}, headers=admin
    )
    assert r.status_code == 200 and r.json()["settings"]["lens"]["flow"] == "coupling", r.text
    r = client.patch(f"/api/v1/projects/{p['id']}", json={"settings": {"lens": {"flow": "bogus"}}}, headers=admin)
    assert r.status_code == 422 and "settings.lens.flow" in r.json()["detail"] and "bogus" in r.json()["detail"]
    assert client.get(f"/api/v1/projects/{p['id']}", headers=admin).json()["settings"]["lens"]["flow"] == "coupling"
    r = client.patch(f"/api/v1/projects/{p['id']}", json={"settings": {"lens": "planar"}}, headers=admin)
    assert r.status_code == 422  # not an object: pydantic names settings.lens
    r = client.post(
        f"/api/v1/projects/{p['id']}/jobs", json={"kind": "retrain", "params": {"lens": {"alpha": -2}}}, headers=admin
    )
    assert r.status_code == 422 and "params.lens.alpha" in r.json()["detail"], r.text


# --------------------------------------------------------------------------- end to end, k = 2


def _sign_in(client: Any, username: str, password: str = "correct horse battery") -> None:
    page = client.get("/login?next=/projects")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/login",
        data={"username": username, "password": password, "login_token": token, "next": "/projects"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text


def test_two_dims_per_attribute_retrain_reports_score_k_and_serves_a_2d_traversal(served):
    from PIL import Image

    from ml.data import make_shapes
    from tests.conftest import Accounts

    client = served
    admin = Accounts(client.app).add("admin", "admin")
    n, size, steps = 120, 16, 5
    body = {
        "name": "k2",
        "dataset": {"source": "shapes", "n": n, "size": size},
        "attributes": SHAPE,
        "representation": {"source": "vae", "latent_dim": 4, "epochs": 2, "hidden": 32, "channels": [8, 8]},
        # A 3-epoch lens need not beat raw z: this test reads the k-dim figures, so it always goes live.
        "settings": {"retrain_every": 100_000, "eval_fraction": 0.0, "lens": TINY_K2_LENS, "activation_margin": -100},
    }
    r = client.post("/api/v1/projects", json=body, headers=admin)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    wait_job(client, admin, r.json()["job"]["id"], timeout=180)

    shape = make_shapes(n=n, seed=0, size=size).factors["shape"]
    levels = SHAPE[0]["levels"]
    rows = [{"source_index": i, "values": {"shape": levels[int(shape[i])]}, "eval": i >= 60} for i in range(n)]
    r = client.post(f"/api/v1/projects/{pid}/labels:import", json={"labels": rows}, headers=admin)
    assert r.status_code in (200, 201), r.text
    r = client.post(f"/api/v1/projects/{pid}/jobs", json={"kind": "retrain"}, headers=admin)
    assert r.status_code == 202, r.text
    job = wait_job(client, admin, r.json()["id"], timeout=180)
    assert job["result"]["overall_k"] is not None and job["result"]["flow"] == "planar"

    # The k-dim metric beside the 1-dim headline, in the REST metrics payload.
    point = client.get(f"/api/v1/projects/{pid}/metrics", headers=admin).json()["points"][-1]
    assert point["dims_per_attribute"] == 2
    entry = point["attributes"]["shape"]
    assert 0.0 < entry["score"] <= 100.0 and 0.0 < entry["score_k"] <= 100.0
    assert 0.0 <= entry["accuracy_k"] <= 1.0 and len(entry["dims_k"]) == 2
    assert point["overall_k"] == pytest.approx(entry["score_k"])  # one attribute: its score is the mean
    assert point["k_dims"]["2"] == pytest.approx(point["overall_k"])

    # The model version says how its lens was fitted.
    version = client.get(f"/api/v1/projects/{pid}/models", headers=admin).json()["models"][0]
    assert version["lens"]["flow"] == "planar" and version["lens"]["dims_per_attribute"] == 2
    assert version["lens"]["epochs"] == 3 and version["lens"]["selected"] is None
    assert version["metrics"]["attributes"]["shape"]["score_k"] == pytest.approx(entry["score_k"])

    # One item: a steps × steps grid of 16-pixel tiles with 1-pixel padding.
    item = client.get(f"/api/v1/projects/{pid}/items?limit=1", headers=admin).json()["items"][0]["id"]
    r = client.get(
        f"/api/v1/projects/{pid}/traversals/shape.png",
        params={"items": str(item), "steps": steps, "scale": 1},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    side = steps * size + steps + 1
    assert Image.open(io.BytesIO(r.content)).size == (side, side)
    # Two items: their grids stacked top to bottom with a 4-pixel band (× scale) between them.
    items = [it["id"] for it in client.get(f"/api/v1/projects/{pid}/items?limit=2", headers=admin).json()["items"]]
    r = client.get(
        f"/api/v1/projects/{pid}/traversals/shape.png",
        params={"items": ",".join(map(str, items)), "steps": steps, "scale": 2},
        headers=admin,
    )
    w, h = Image.open(io.BytesIO(r.content)).size
    assert (w, h) == (steps * size * 2 + steps + 1, 2 * steps * size * 2 + 2 * steps + 1 + 4 * 2)
    r = client.get(f"/api/v1/projects/{pid}/traversals/shape.png", params={"steps": steps, "scale": 1}, headers=admin)
    assert Image.open(io.BytesIO(r.content)).size == (side, 2 * steps * size + 2 * steps + 1 + 4)  # default: 2 items

    # The pages show the k-dim score and the grid; the models table the flow family.
    _sign_in(client, "admin")
    html = client.get(f"/projects/{pid}/insights").text
    assert "Score (2 dims)" in html and 'data-role="score-k"' in html and "traversal-grid" in html
    table = client.get(f"/admin/projects/{pid}/models").text
    assert 'data-flow="planar"' in table and "2 dims/attribute" in table and "(2 dims:" in table


# --------------------------------------------------------------------------- warm starts (the retrain's fit)


def _digits_z(n: int = 150) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    import numpy as np

    from tests.app.worker_support import DIGIT_ATTR, digits_pca

    Z, y = digits_pca(n)
    return Z, {"digit": np.where(np.arange(n) < 80, y, -1)}, DIGIT_ATTR


def test_warm_start_keeps_the_networks_and_a_changed_architecture_fits_cold():
    from ml import steps

    Z, S, attrs = _digits_z()
    tiny = {"epochs": 2, "warm_epochs": 2, "n_flows": 2, "hidden": 16}
    blob, stats = steps.fit_lens(Z, S, attrs, params=tiny, device="cpu")
    assert stats["flow"] == "planar" and stats["dims_per_attribute"] == 1 and "selection" not in stats
    _, warm = steps.fit_lens(Z, S, attrs, warm_start_bytes=blob, params=tiny, device="cpu")
    assert warm["warm_start"] is True and "note" not in warm
    _, cold = steps.fit_lens(Z, S, attrs, warm_start_bytes=blob, params={**tiny, "dims_per_attribute": 2}, device="cpu")
    assert cold["warm_start"] is False and "dims_per_attribute" in cold["note"] and "cold fit" in cold["note"]
    assert cold["dims_per_attribute"] == 2 and all(len(d) == 2 for d in cold["attribute_dims"].values())


def test_a_requested_flow_family_other_than_the_previous_one_means_a_cold_fit():
    from types import SimpleNamespace

    from ml import steps

    prev = SimpleNamespace(config_=SimpleNamespace(flow="coupling", n_flows=2, hidden=16, dims_per_attribute=1))
    same = {"n_flows": 2, "hidden": 16}
    assert "flow" in steps._architecture_change(prev, {**same, "flow": "spline"})
    assert steps._architecture_change(prev, {**same, "flow": "coupling"}) is None
    # Switching a fixed family to "auto" selects again; "auto" asked again keeps what was chosen.
    assert "flow" in steps._architecture_change(prev, {**same, "flow": "auto"})
    chose = SimpleNamespace(
        flow="auto",
        n_flows=32,
        hidden=16,
        dims_per_attribute=1,
        config_=SimpleNamespace(flow="coupling", n_flows=8, hidden=16, dims_per_attribute=1),
    )
    assert steps._architecture_change(chose, {"flow": "auto", "n_flows": 32, "hidden": 16}) is None
    assert "'coupling' → 'planar'" in steps._architecture_change(prev, same)  # the default asks planar
    older = SimpleNamespace(config_=SimpleNamespace(n_flows=2, hidden=16, dims_per_attribute=1))  # before families
    assert steps._architecture_change(older, {**same, "flow": "planar"}) is None


def test_flow_change_fits_cold_and_auto_selection_is_summarised_for_the_models_table():
    from app.services.models import lens_summary
    from ml import steps

    Z, S, attrs = _digits_z()
    tiny = {"epochs": 2, "warm_epochs": 2, "n_flows": 2, "hidden": 16}
    blob, _ = steps.fit_lens(Z, S, attrs, params=tiny, device="cpu")
    coupling, stats = steps.fit_lens(
        Z, S, attrs, warm_start_bytes=blob, params={**tiny, "flow": "coupling"}, device="cpu"
    )
    assert stats["flow"] == "coupling" and stats["warm_start"] is False and "flow" in stats["note"]
    _, stats = steps.fit_lens(Z, S, attrs, warm_start_bytes=coupling, params={**tiny, "flow": "auto"}, device="cpu")
    assert stats["warm_start"] is False and stats["selection"] is not None  # a fixed family → "auto": select
    auto = {**tiny, "flow": "auto", "alpha": "auto", "selection_folds": 2}
    auto_blob, stats = steps.fit_lens(Z, S, attrs, params=auto, device="cpu")
    _, again = steps.fit_lens(Z, S, attrs, warm_start_bytes=auto_blob, params=auto, device="cpu")
    assert again["warm_start"] is True and again["flow"] == stats["flow"]  # "auto" again keeps the choice
    chosen = stats["selection"]["chosen"]
    assert chosen["flow"] == stats["flow"] and chosen["alpha"] == stats["alpha"]
    summary = lens_summary(stats)
    assert summary["selected"] == chosen and summary["selection_folds"] == 2 and summary["flow"] == stats["flow"]
    assert lens_summary(None)["flow"] is None and lens_summary({"epochs": 3})["flow"] == "planar"


def test_models_table_shows_the_flow_family_and_what_selection_chose():
    from datetime import datetime
    from types import SimpleNamespace

    from app.services.models import lens_summary
    from app.web.templating import templates

    stats = {
        "flow": "coupling",
        "dims_per_attribute": 2,
        "alpha": 30.0,
        "epochs": 12,
        "warm_start": False,
        "selection": {"chosen": {"flow": "coupling", "alpha": 30.0, "epochs": 12}, "folds": 3},
    }
    metrics = {
        "overall": 20.0,
        "overall_k": 35.5,
        "dims_per_attribute": 2,
        "attributes": {"digit": {"score": 20.0, "score_k": 35.5}},
    }
    v = SimpleNamespace(
        id=7, version=3, active=True, n_labels=80, metrics=metrics, stats=stats, created_at=datetime(2024, 1, 1)
    )
    html = templates.env.get_template("partials/models_table.html").render(
        project=SimpleNamespace(id=1, name="p"),
        versions=[v],
        lens_of={7: lens_summary(stats)},
        unscored_of={},
        active_version=v,
        csrf_token="t",
    )
    text = " ".join(html.split())
    assert 'data-flow="coupling"' in html and "2 dims/attribute" in text and "α 30" in text
    assert "chosen by 3-fold selection: flow coupling, alpha 30, epochs 12" in text
    assert "(2 dims: 35.5)" in text and "digit 20.0/35.5" in text
