"""The Jinja2 environment of the pages: template and static directories, filters, the htmx partial switch."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _number(value: Any, digits: int = 1) -> str:
    """A metric for a table cell: rounded, or an em dash when missing or not finite."""
    if value is None or isinstance(value, bool):
        return "—"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return "—"
    return f"{f:.{digits}f}"


def _when(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM UTC' (stored times are naive UTC)."""
    if not isinstance(value, datetime):
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: Any) -> str:
    """Seconds as '1 h 05 min', '3 min 20 s' or '12 s'."""
    if seconds is None:
        return "—"
    s = max(0, round(float(seconds)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _percent(part: Any, whole: Any) -> float:
    """part / whole in percent (0 when whole is 0), for progress bars."""
    try:
        return 100.0 * float(part) / float(whole) if whole else 0.0
    except (TypeError, ValueError):
        return 0.0


templates.env.filters["num"] = _number
templates.env.filters["when"] = _when
templates.env.filters["duration"] = _duration
templates.env.globals["percent"] = _percent


def is_htmx(request: Request) -> bool:
    """Whether htmx sent the request (then a handler answers with the partial only)."""
    return request.headers.get("HX-Request") == "true"


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Any:
    """A TemplateResponse of ``name`` with the request's user and CSRF token in the context."""
    ctx = {
        "user": getattr(request.state, "user", None),
        "csrf_token": getattr(request.state, "csrf_token", None),
        **(context or {}),
    }
    resp = templates.TemplateResponse(request, name, ctx, status_code=status_code, headers=headers)
    # Pages carry a per-session CSRF token and personal data: never cached by shared caches.
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp
