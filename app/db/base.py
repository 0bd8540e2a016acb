"""The declarative base with named constraints, so Alembic migrations are identical on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, time

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        # SQLite compares timestamps as text: store one format without offset so comparisons hold.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def start_of_utc_day(now: datetime) -> datetime:
    """Midnight (UTC) that began ``now``'s day: the day of "my labels today" and of a skip's default length."""
    return datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: the only clock the app uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base for every lenslab table."""

    metadata = metadata
    type_annotation_map = {datetime: UTCDateTime()}
