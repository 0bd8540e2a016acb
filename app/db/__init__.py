"""Storage: SQLAlchemy models, the engine/session factory and the Alembic entry points."""
