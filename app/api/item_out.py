"""The public JSON shape of an item, shared by the project's item list and the item's own route."""

from __future__ import annotations

from typing import Any

from app.db.models import Item


def item_out(item: Item, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public fields of an item, with its current label values."""
    return {
        "id": item.id,
        "project_id": item.project_id,
        "split": item.split,
        "external_id": item.external_id,
        "source_index": item.source_index,
        "labels": current or {},
        "label_count": item.label_count,
        "labelled": item.labelled,
        "width": item.width,
        "height": item.height,
        "channels": item.channels,
        "image_url": f"/api/v1/items/{item.id}/image.png" if item.content_hash else None,
    }
