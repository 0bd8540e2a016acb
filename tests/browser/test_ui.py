"""The browser UI end to end: keyboard labelling, two experts, page weight, Enter→paint, admin jobs, insights."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.browser.conftest import Server, login, worker_present

pytestmark = pytest.mark.browser

READY = (
    "() => { const r = document.getElementById('labeller'); "
    "return r && r.dataset.state === 'ready' && r.dataset.prefetched === 'true'; }"
)
# Layout shifts (CLS entries) since `since`, whether or not they followed input.
SHIFTS = """(since) => new Promise((resolve) => {
  let total = 0;
  const po = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (e.startTime > since) total += e.value;
  });
  po.observe({ type: 'layout-shift', buffered: true });
  setTimeout(() => { po.disconnect(); resolve(total); }, 300);
})"""


def project_id(server: Server, name: str) -> int:
    with server.session(write=False) as s:
        return int(s.scalar(sa.text("SELECT id FROM projects WHERE name = :n"), {"n": name}))


def screenshot(page: Any, artifacts: Path, name: str, *, full_page: bool = False) -> None:
    """Write a screenshot to the artifacts dir (the README's come from the demo: scripts/screenshots.py)."""
    page.screenshot(path=str(artifacts / name), full_page=full_page)


def item_shown(page: Any) -> int | None:
    raw = page.get_attribute("#labeller", "data-item-id")
    return int(raw) if raw else None


def label_by_keys(page: Any, *keys: str) -> int:
    """Type ``keys`` then Enter on the shown item; returns its id once the next item is on screen."""
    page.wait_for_function(READY)
    shown = item_shown(page)
    for k in keys:
        page.keyboard.press(k)
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.getElementById('labeller').dataset.itemId !== '{shown}'")
    assert shown is not None
    return shown


def counters(page: Any) -> dict[str, int]:
    return {k: int(page.inner_text(f"#c-{k}")) for k in ("mine", "labelled", "items", "eval-labelled")}


def db_counts(server: Server, pid: int, username: str) -> dict[str, int]:
    with server.session(write=False) as s:
        q = lambda sql: int(s.scalar(sa.text(sql), {"p": pid, "u": username}))  # noqa: E731
        return {
            "labelled": q("SELECT count(*) FROM items WHERE project_id = :p AND labelled"),
            "eval-labelled": q("SELECT count(*) FROM items WHERE project_id = :p AND labelled AND split = 'eval'"),
            "mine": q(
                "SELECT count(*) FROM labels l WHERE l.project_id = :p AND l.kind = 'label' AND l.user_id = "
                "(SELECT id FROM users WHERE username = :u) AND NOT EXISTS "
                "(SELECT 1 FROM labels r WHERE r.retracts_id = l.id)"
            ),
        }


def wait_counters(page: Any, **expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while True:
        got = counters(page)
        if all(got[k.replace("_", "-")] == v for k, v in expected.items()) or time.monotonic() > deadline:
            return got
        page.wait_for_timeout(100)


def test_login_page_signs_in_by_keyboard_and_lists_projects_with_progress(browser, server):
    page = login(browser, server, "vera")
    rows = page.locator("table.projects tbody tr")
    assert rows.count() >= 2
    text = page.inner_text("table.projects")
    assert "digits" in text and "0 / 1797" in text
    # A viewer sees no Label button; signing out ends the session.
    assert page.locator("a", has_text="Label").count() == 0
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.goto("/projects")
    assert "/login" in page.url
    page.context.close()


def test_expert_labels_ten_items_by_keyboard_undoes_one_skips_one_and_counters_match(browser, server, artifacts_dir):
    from tests.browser import seed

    # A project of its own: the counts below are exact, whatever the other tests labelled, in any order.
    pid = seed.labelling_project(server, name="digits-keyboard", eval_fraction=0.2)
    page = login(browser, server, "ada")
    page.goto(f"/projects/{pid}/label")
    page.wait_for_function(READY)
    ready_at = page.evaluate("performance.now()")
    labelled = [label_by_keys(page, str(i % 10), str(1 + i % 5)) for i in range(10)]
    assert len(set(labelled)) == 10
    got = wait_counters(page, mine=10, labelled=10)
    assert got["mine"] == 10 and got["labelled"] == 10

    # Undo: the last label is retracted and its item comes back on screen.
    page.wait_for_function(READY)
    after_ten = item_shown(page)
    page.keyboard.press("z")
    page.wait_for_function(f"() => document.getElementById('labeller').dataset.itemId === '{labelled[-1]}'")
    assert "Undone" in page.inner_text("#message")
    got = wait_counters(page, mine=9, labelled=9)
    assert got["mine"] == 9 and got["labelled"] == 9

    # Skip the undone item (no lease), then skip a leased one: its lease is released.
    page.keyboard.press("s")
    page.wait_for_function(f"() => document.getElementById('labeller').dataset.itemId === '{after_ten}'")
    page.wait_for_function(READY)
    page.keyboard.press("s")
    page.wait_for_function(f"() => document.getElementById('labeller').dataset.itemId !== '{after_ten}'")
    assert "Skipped" in page.inner_text("#message")
    page.wait_for_timeout(500)

    with server.session(write=False) as s:
        reason = s.scalar(
            sa.text("SELECT end_reason FROM leases WHERE item_id = :i ORDER BY created_at DESC LIMIT 1"),
            {"i": after_ten},
        )
        undone = s.execute(sa.text("SELECT labelled, label_count FROM items WHERE id = :i"), {"i": labelled[-1]}).one()
        rows = s.execute(
            sa.text("SELECT kind, count(*) FROM labels WHERE project_id = :p GROUP BY kind"), {"p": pid}
        ).all()
    assert reason == "released"
    assert tuple(undone) == (0, 0)
    assert dict(rows) == {"label": 10, "retraction": 1}
    truth = db_counts(server, pid, "ada")
    shown = wait_counters(page, **{k.replace("-", "_"): v for k, v in truth.items()})
    assert {k: shown[k] for k in truth} == truth == {"labelled": 9, "eval-labelled": truth["eval-labelled"], "mine": 9}
    assert shown["items"] == 1797
    shift = page.evaluate(SHIFTS, ready_at)
    print(f"\nlabelling page layout shift over 10 submits, an undo and 2 skips: {shift:.4f}")
    assert shift < 0.01
    screenshot(page, artifacts_dir, "labelling.png")

    # Readable at 768 px: nothing wider than the viewport.
    page.set_viewport_size({"width": 768, "height": 1000})
    assert page.evaluate("document.documentElement.scrollWidth") <= 768
    page.context.close()


def test_two_experts_never_see_the_same_item_at_the_same_time(browser, server):
    pid = project_id(server, "digits")
    pages = {name: login(browser, server, name) for name in ("ada", "bob")}
    for p in pages.values():
        p.goto(f"/projects/{pid}/label")
        p.wait_for_function(READY)
    seen: dict[str, list[int]] = {"ada": [], "bob": []}
    for step in range(6):
        for name, p in pages.items():
            p.wait_for_function(READY)
            assert item_shown(pages["ada"]) != item_shown(pages["bob"])
            seen[name].append(label_by_keys(p, str(step % 10), "3"))
    assert not set(seen["ada"]) & set(seen["bob"])
    with server.session(write=False) as s:
        live = s.execute(
            sa.text(
                "SELECT item_id, count(DISTINCT user_id) FROM leases WHERE ended_at IS NULL "
                "GROUP BY item_id HAVING count(DISTINCT user_id) > 1"
            )
        ).all()
    assert live == []
    for p in pages.values():
        p.context.close()


def test_labelling_page_weight_and_enter_to_paint_latency(browser, server, artifacts_dir):
    pid = project_id(server, "digits-speed")
    page = login(browser, server, "bob")
    sizes: list[tuple[str, str, int]] = []

    def record(resp: Any) -> None:
        try:
            body = resp.body()
        except Exception:  # redirects and aborted requests have no body
            return
        sizes.append((resp.url, resp.headers.get("content-type", ""), len(body)))

    page.on("response", record)
    page.goto(f"/projects/{pid}/label")
    page.wait_for_function(READY)
    page.remove_listener("response", record)
    weight = sum(n for _, ctype, n in sizes if not ctype.startswith("image/png"))
    print(
        f"\nlabelling page weight (HTML+JS+CSS+JSON, no images): {weight / 1024:.1f} KiB in "
        f"{sum(1 for _, c, _ in sizes if not c.startswith('image/png'))} responses"
    )
    assert weight < 150 * 1024

    for i in range(50):
        label_by_keys(page, str(i % 10), str(1 + i % 5))
    page.wait_for_function("() => window.lenslabLabelling.timings.length >= 50")
    timings = page.evaluate("window.lenslabLabelling.timings")[:50]
    q = statistics.quantiles(timings, n=20)
    p50, p95 = statistics.median(timings), q[18]
    print(f"Enter→next image painted over 50 submits: p50 {p50:.1f} ms, p95 {p95:.1f} ms (max {max(timings):.1f})")
    (artifacts_dir / "enter_to_paint.json").write_text(
        json.dumps({"p50_ms": p50, "p95_ms": p95, "timings_ms": timings, "page_weight_bytes": weight})
    )
    assert len(timings) == 50 and all(t > 0 for t in timings)
    page.context.close()


def test_admin_starts_and_cancels_a_job_and_sees_model_versions(browser, server, model_project, artifacts_dir):
    pid = model_project["project_id"]
    page = login(browser, server, "admin")
    page.goto(f"/admin/projects/{pid}/jobs")
    with server.session(write=False) as s:  # v1 and v2, plus any version another test's retrain added
        n_versions = s.scalar(sa.text("SELECT count(*) FROM model_versions WHERE project_id = :p"), {"p": pid})
    assert n_versions >= 2 and page.locator("#models-table tbody tr").count() == n_versions
    assert page.locator("#models-table", has_text="Roll back to v1").count() == 1
    page.select_option("#job-kind", "evaluate")
    page.get_by_role("button", name="Start job").click()
    row = page.locator("tr[data-job-row]").first
    row.wait_for()
    assert row.get_attribute("data-job-status") in ("queued", "running", "succeeded")
    if not worker_present():
        assert row.locator("progress").count() == 1
        row.get_by_role("button", name="Cancel").click()
        page.wait_for_function("() => document.querySelector('tr[data-job-row]').dataset.jobStatus === 'cancelled'")
    screenshot(page, artifacts_dir, "jobs.png")
    page.context.close()


@pytest.mark.skipif(not worker_present(), reason="worker not present (app/worker/ is being built)")
def test_admin_starts_a_retrain_and_its_progress_bar_reaches_done(browser, server, model_project, artifacts_dir):
    pid = model_project["project_id"]
    page = login(browser, server, "admin")
    page.goto(f"/admin/projects/{pid}/jobs")
    page.select_option("#job-kind", "retrain")
    page.get_by_role("button", name="Start job").click()
    row = page.locator("tr[data-job-row]").first
    row.wait_for()
    page.wait_for_function(
        "() => ['succeeded', 'failed'].includes(document.querySelector('tr[data-job-row]').dataset.jobStatus)",
        timeout=150_000,
    )
    row = page.locator("tr[data-job-row]").first
    assert row.get_attribute("data-job-status") == "succeeded", row.inner_text()
    assert row.locator("progress").get_attribute("value") == "100"
    screenshot(page, artifacts_dir, "jobs.png")
    page.context.close()


def test_insights_show_traversals_curves_scatter_and_follow_activation(browser, server, model_project, artifacts_dir):
    pid = model_project["project_id"]
    page = login(browser, server, "vera")
    page.goto(f"/projects/{pid}/insights")
    curve = page.locator("[data-chart=metrics][data-metric=score]")
    page.wait_for_function(
        "() => Number(document.querySelector('[data-chart=metrics][data-metric=score]').dataset.points || 0) >= 2"
    )
    assert curve.locator("canvas").count() >= 1
    # Every traversal grid decodes to a non-blank image (pixel spread well above zero).
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.traversal')].every(i => i.complete && i.naturalWidth > 0)"
    )
    spreads = page.evaluate("""() => [...document.querySelectorAll('img.traversal')].map((img) => {
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let s = 0, s2 = 0, n = 0;
        for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; n++; }
        return Math.sqrt(s2 / n - (s / n) ** 2); })""")
    assert len(spreads) == 2 and min(spreads) > 5, spreads
    page.wait_for_function("() => Number(document.querySelector('[data-chart=scatter]').dataset.points || 0) > 0")
    assert page.get_attribute("[data-chart=scatter]", "data-points") == "320"
    with server.session(write=False) as s:
        active = s.scalar(sa.text("SELECT version FROM model_versions WHERE project_id = :p AND active"), {"p": pid})
    assert f"v{active}" in page.inner_text(".model-line")
    screenshot(page, artifacts_dir, "insights.png", full_page=True)

    # Activating v1 (a roll-back) reaches the open page without a reload.
    with server.session() as s:
        s.execute(sa.text("UPDATE model_versions SET active = 0 WHERE project_id = :p"), {"p": pid})
        s.execute(sa.text("UPDATE model_versions SET active = 1 WHERE project_id = :p AND version = 1"), {"p": pid})
        s.commit()
    page.wait_for_function("() => document.querySelector('.model-line').innerText.includes('v1')", timeout=12_000)
    page.wait_for_function("() => Number(document.querySelector('[data-chart=scatter]').dataset.points || 0) > 0")
    page.context.close()
