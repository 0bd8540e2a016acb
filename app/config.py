"""lenslab's settings: one object read from ``LENSLAB_*`` environment variables or ``.env``."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SECRET_KEY = "lenslab-development-secret-change-me"


class Settings(BaseSettings):
    """Every knob of the app; validated once at start so a bad value fails loudly, naming the variable."""

    model_config = SettingsConfigDict(env_prefix="LENSLAB_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./lenslab.db"
    data_dir: Path = Path("./data")
    secret_key: str = DEFAULT_SECRET_KEY
    device: Literal["auto", "cpu", "cuda"] = "auto"
    lease_seconds: int = Field(600, ge=5, le=7 * 24 * 3600)
    retrain_every: int = Field(50, ge=1)
    eval_fraction: float = Field(0.1, ge=0.0, le=1.0)
    # How long a skipped item stays away from the expert who skipped it, in hours (0: it may come straight
    # back); unset means the rest of the day (UTC, the day of the labelling page's "mine today" counter).
    skip_hours: float | None = Field(None, ge=0, le=30 * 24)
    # A retrained version goes live only when its metric reaches raw z's and the live version's plus this
    # many points (on the same eval items); below 0 tolerates a small loss, above 0 asks for a clear gain.
    activation_margin: float = Field(0.0, ge=-100, le=100)
    # Several experts per item: each item goes to `overlap` different experts; the lens trains on the
    # `consensus` of their labels (ml.annotators: dawid_skene | vote | last).
    overlap: int = Field(1, ge=1, le=20)
    consensus: Literal["dawid_skene", "vote", "last"] = "dawid_skene"
    max_upload_mb: float = Field(200.0, gt=0)
    # Server-side import paths must lie under DATA_DIR or one of these roots (comma-separated).
    import_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    cookie_secure: bool = False
    session_days: float = Field(14.0, gt=0)
    login_max_failures: int = Field(10, ge=1)
    login_window_seconds: int = Field(300, ge=1)
    # SQLite waits this long for a write lock before answering 503 (never a 500).
    sqlite_busy_timeout_ms: int = Field(10_000, ge=0)
    db_pool_size: int = Field(10, ge=1)
    # Requests inside the app at once (the rest wait their turn on the event loop, holding nothing).
    # None: a measured default for the database (app.main.admission_limits).
    request_concurrency: int | None = Field(None, ge=1, le=1000)
    # Background jobs. A running job whose heartbeat is older than heartbeat_timeout_s is requeued (at most
    # job_max_attempts runs in all, then failed); idle workers look for work every worker_poll_s.
    heartbeat_timeout_s: float = Field(30.0, gt=0)
    worker_poll_s: float = Field(1.0, gt=0)
    job_max_attempts: int = Field(3, ge=1, le=100)
    # torch threads of a worker, standalone (`lenslab worker`) or inside `lenslab serve` (None: every core).
    worker_threads: int | None = Field(None, ge=1)
    # Set by `lenslab serve` (on SQLite unless --no-worker): run a worker thread inside the web process.
    serve_worker: bool = False

    @field_validator("database_url")
    @classmethod
    def _upgrade_postgres_scheme(cls, v: str) -> str:
        # Heroku-style URLs name no driver; SQLAlchemy 2 needs psycopg 3 spelled out.
        for prefix in ("postgres://", "postgresql://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        if not (v.startswith("sqlite") or v.startswith("postgresql+")):
            raise ValueError(f"LENSLAB_DATABASE_URL must be a sqlite:// or postgresql:// URL, got {v!r}")
        return v

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            return [p for p in (s.strip() for s in v.replace(os.pathsep, ",").split(",")) if p]
        return v

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.env != "development" and self.secret_key == DEFAULT_SECRET_KEY:
            raise ValueError("LENSLAB_SECRET_KEY must be set to a private value outside development")
        if self.env != "development" and len(self.secret_key) < 16:
            raise ValueError("LENSLAB_SECRET_KEY must be at least 16 characters")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a running job's heartbeat is written: a sixth of the timeout, at most every 5 s."""
        return max(0.05, min(5.0, self.heartbeat_timeout_s / 6))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def allowed_import_roots(self) -> list[Path]:
        """Directories under which server-side dataset paths may lie, resolved."""
        return [Path(p).expanduser().resolve() for p in [self.data_dir, *self.import_roots]]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings`` instead)."""
    return Settings()


settings = get_settings()
