"""The API docs and every page render with no internet: every asset is served by lenslab itself."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import Server

pytestmark = pytest.mark.browser


def _offline_page(browser: Any, server: Server) -> tuple[Any, list[str], list[tuple[str, int]]]:
    """A page whose requests to any host but the server are aborted (as with no internet)."""
    ctx = browser.new_context(base_url=server.url)
    ctx.set_default_timeout(15_000)
    blocked: list[str] = []
    failed: list[tuple[str, int]] = []
    own = urlsplit(server.url).netloc

    def route(r: Any) -> None:
        if urlsplit(r.request.url).netloc == own:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.on("response", lambda resp: resp.status >= 400 and failed.append((resp.url, resp.status)))
    return page, blocked, failed


def test_api_docs_render_with_outside_requests_blocked(browser, server):
    page, blocked, failed = _offline_page(browser, server)
    page.goto("/docs")
    # Swagger UI builds the operation list from /openapi.json: with a CDN script the body stays empty.
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/projects/{pid}/queue/next" in p for p in paths), paths[:10]
    assert blocked == [] and failed == [], (blocked, failed)
    page.context.close()


def test_pages_ask_for_nothing_outside_and_no_asset_is_missing(browser, server):
    page, blocked, failed = _offline_page(browser, server)
    page.goto("/login")
    page.wait_for_load_state("networkidle")
    assert page.evaluate("() => document.querySelector('link[rel=icon]').href").endswith("/static/favicon.svg")
    assert page.request.get("/favicon.ico").status == 200  # a redirect to the icon, never a 404
    assert blocked == [] and failed == [], (blocked, failed)
    page.context.close()
