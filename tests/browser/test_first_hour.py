"""What a new expert, admin and viewer meet first: skip that sticks, empty figures that say why, chance on
the curves, the chosen vs designated dimension explained, and an eval counter that means something."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.browser.conftest import Server, login
from tests.browser.test_ui import READY, item_shown, project_id

pytestmark = pytest.mark.browser

SHOWING = "() => document.getElementById('labeller').dataset.state === 'ready'"
SHOWN_LOG = """() => {
  const r = document.getElementById('labeller');
  window.shownItems = [];
  new MutationObserver(() => { if (r.dataset.itemId) window.shownItems.push(Number(r.dataset.itemId)); })
    .observe(r, { attributes: true, attributeFilter: ['data-item-id'] });
}"""


def test_a_skipped_item_does_not_come_back_to_that_expert_and_goes_to_another(browser: Any, server: Server):
    from tests.browser import seed

    pid = seed.tiny_project(server, name="tiny-skip", n=3)
    page = login(browser, server, "ada")
    page.goto(f"/projects/{pid}/label")
    page.wait_for_function(READY)
    page.evaluate(SHOWN_LOG)
    skipped = item_shown(page)
    page.keyboard.press("s")
    page.wait_for_function(f"() => document.getElementById('labeller').dataset.itemId !== '{skipped}'")
    assert "other experts get it" in page.inner_text("#message")
    # Label everything else: the queue then runs dry instead of handing the skipped item back.
    for key in ("3", "4"):
        page.wait_for_function(SHOWING)
        shown_now = item_shown(page)
        page.keyboard.press(key)
        page.keyboard.press("Enter")
        page.wait_for_function(f"() => document.getElementById('labeller').dataset.itemId !== '{shown_now}'")
    page.wait_for_function("() => document.getElementById('labeller').dataset.state === 'empty'")
    shown = page.evaluate("window.shownItems")
    assert skipped not in shown, shown
    note = page.inner_text("#stage-note")
    assert "1 you skipped" in note and "comes back to you" in note, note
    page.context.close()

    # Another expert gets it; when they skip it too, the admin sees it listed.
    other = login(browser, server, "bob")
    other.goto(f"/projects/{pid}/label")
    other.wait_for_function(SHOWING)
    assert item_shown(other) == skipped
    other.keyboard.press("s")
    other.wait_for_function("() => document.getElementById('labeller').dataset.state === 'empty'")
    other.context.close()
    with server.session(write=False) as s:
        assert s.scalar(sa.text("SELECT skip_count FROM items WHERE id = :i"), {"i": skipped}) == 2
    admin = login(browser, server, "admin")
    admin.goto(f"/admin/projects/{pid}")
    listed = admin.locator("#skipped-by-all li")
    assert listed.count() == 1 and listed.first.get_attribute("data-item-id") == str(skipped)
    assert "skipped 2×" in listed.first.inner_text()
    admin.context.close()


def test_empty_metrics_say_why_before_the_first_evaluable_retrain(browser: Any, server: Server):
    from tests.browser import seed

    info = seed.unscored_project(server)
    pid = info["project_id"]
    assert info["metrics"]["overall"] is None  # what the evaluation itself found: 3 eval labels are too few
    page = login(browser, server, "admin")
    page.goto(f"/projects/{pid}/insights")
    curve = page.locator("[data-chart=metrics][data-metric=score]")
    page.wait_for_function(
        "() => document.querySelector('[data-chart=metrics][data-metric=score]').dataset.empty === 'true'"
    )
    text = curve.inner_text()
    assert "No score yet" in text and "shape: 3 eval labels" in text and "needs 10 eval labels" in text, text
    assert "1 in 10 items" in text
    why_rows = page.locator("[data-role=why-unscored]")
    assert why_rows.count() == 2 and "not scored yet" in why_rows.first.inner_text()
    assert "No test log-likelihood yet" in page.inner_text("[data-chart=metrics][data-metric=test_ll]")

    page.goto(f"/admin/projects/{pid}/jobs")
    cell = page.locator("#models-table [data-role=why-unscored]")
    assert cell.count() == 1 and "not scored: shape: 3 eval labels" in cell.inner_text()
    page.goto("/projects")
    row = page.locator("table.projects tr", has_text="shapes-unscored")
    assert "not scored at 40 labels: shape: 3 eval labels" in row.inner_text()
    page.context.close()


def test_metric_curve_draws_chance_and_the_table_flags_a_dimension_mismatch(
    browser: Any, server: Server, model_project: dict[str, Any]
):
    pid = model_project["project_id"]
    page = login(browser, server, "vera")
    page.goto(f"/projects/{pid}/insights")
    page.wait_for_function(
        "() => document.querySelector('[data-chart=metrics][data-metric=score]').dataset.chance === 'true'"
    )
    legend = page.inner_text("[data-chart=metrics][data-metric=score]")
    assert "chance (overall)" in legend
    assert "designated dims" in page.inner_text("[data-role=dims-explained]")
    # The flags match the active model: the metric's chosen dim against the lens's designated dims.
    scatter = page.request.get(f"/api/v1/projects/{pid}/scatter").json()
    with server.session(write=False) as s:
        raw = s.scalar(sa.text("SELECT metrics FROM model_versions WHERE project_id = :p AND active"), {"p": pid})
    import json

    metrics = json.loads(raw) if isinstance(raw, str) else raw
    expected = sorted(
        name
        for name, m in metrics["attributes"].items()
        if m.get("dim") is not None
        and scatter["attribute_dims"].get(name)
        and m["dim"] not in scatter["attribute_dims"][name]
    )
    print(f"\nchosen dims not designated: {expected or 'none'}")
    flagged = page.locator("[data-role=mismatch]")
    assert flagged.count() == len(expected)
    if expected:
        assert ", ".join(expected) in page.inner_text("[data-role=mismatch-note]")
    page.context.close()


def test_eval_counter_counts_labels_and_says_how_items_are_held_out(browser: Any, server: Server):
    pid = project_id(server, "digits")  # eval fraction 0.2
    page = login(browser, server, "bob")
    page.goto(f"/projects/{pid}/label")
    page.wait_for_function(READY)
    assert page.locator("#c-eval-items").count() == 0  # no denominator that grows with the labels
    assert page.inner_text("#c-eval-hint") == "(1 in 5 items is held out)"
    assert "held-out eval set" in page.get_attribute("#eval-badge", "title")
    page.context.close()


def test_opening_the_address_after_creating_a_token_shows_the_users_page_not_raw_json(browser: Any, server: Server):
    page = login(browser, server, "admin")
    page.goto("/admin/users")
    page.fill("#token-name", "reload check")
    page.get_by_role("button", name="Create token").click()
    page.wait_for_selector("code.secret")
    assert page.url.endswith("/admin/tokens")
    page.goto(page.url)  # Enter in the address bar: a GET of /admin/tokens
    page.wait_for_url("**/admin/users")
    assert "Method Not Allowed" not in page.content()
    assert page.locator("h1", has_text="Users & API tokens").count() == 1
    assert page.locator("code.secret").count() == 0  # the secret is shown once, never again
    page.context.close()
