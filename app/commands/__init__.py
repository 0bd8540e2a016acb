"""Command groups of the ``lenslab`` CLI; each module exposes ``register(subparsers)``."""
