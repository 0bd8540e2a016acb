"""Every APIRouter of the app, collected in one place."""

from __future__ import annotations

from fastapi import APIRouter

from app.routes import auth, items, jobs, labels, models, projects, queue, tokens

ROUTERS: tuple[APIRouter, ...] = (
    auth.router,
    tokens.router,
    projects.router,
    items.router,
    labels.router,
    queue.router,
    jobs.router,
    models.router,
)
