"""A Python client for a lenslab server's REST API, for notebooks and scripts.

Needs only httpx, pydantic, NumPy and Pillow (pandas for ``frame``): never torch. Request bodies are
checked with the server's own pydantic models (``app.schemas``) before they are sent.

    from lenslab_client import Lenslab

    lab = Lenslab()  # LENSLAB_URL (default http://127.0.0.1:8000) and LENSLAB_TOKEN from the environment
    for item in lab.queue(project_id, limit=10):
        lab.label(item["id"], {"digit": "3"}, lease_id=item["lease_id"])
"""

from lenslab_client.client import JobFailed, Lenslab, Representations, Scores, Transformed
from lenslab_client.errors import AuthError, Conflict, Invalid, LenslabError, NotFound, Unavailable

__all__ = [
    "AuthError",
    "Conflict",
    "Invalid",
    "JobFailed",
    "Lenslab",
    "LenslabError",
    "NotFound",
    "Representations",
    "Scores",
    "Transformed",
    "Unavailable",
]
